//! Child processes (killed on drop) and /proc sampling of CPU time and memory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A child process that is terminated (SIGTERM, then SIGKILL) when dropped,
/// together with any of its own children (nginx workers).
#[derive(Debug)]
pub(crate) struct Guard {
    name: String,
    child: Child,
    log: Option<PathBuf>,
}

impl Guard {
    /// Spawns `cmd` with stdout and stderr sent to `log` (or inherited stderr when `None`).
    pub(crate) fn spawn(name: &str, mut cmd: Command, log: Option<&Path>) -> Result<Self> {
        cmd.stdin(Stdio::null());
        if let Some(log) = log {
            let f = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
            cmd.stdout(f.try_clone()?);
            cmd.stderr(f);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.map(Path::to_path_buf),
        })
    }

    /// Wraps an already spawned child.
    pub(crate) fn from_child(name: &str, child: Child) -> Self {
        Self {
            name: name.to_owned(),
            child,
            log: None,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited, with the tail of its log.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}){}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// The last lines of the child's log, formatted for an error message.
    pub(crate) fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines
            .get(lines.len().saturating_sub(15)..)
            .unwrap_or_default();
        if tail.is_empty() {
            String::new()
        } else {
            format!("; log {}:\n  {}", log.display(), tail.join("\n  "))
        }
    }
}

fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id();
        let kids = children_of(pid);
        signal("TERM", &[pid]);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Workers that outlived their master (re-parented, so check they still exist).
        let left: Vec<u32> = kids
            .into_iter()
            .filter(|k| Path::new(&format!("/proc/{k}")).exists())
            .collect();
        signal("KILL", &left);
    }
}

use bamf_benches::proc_stat as stat;

/// (VmRSS, VmHWM) in KiB.
fn status_mem(pid: u32) -> Result<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let get = |key: &str| -> Result<u64> {
        let line = s
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("{key} missing"))?;
        line.split_whitespace()
            .nth(1)
            .context("value")?
            .parse()
            .context("parse")
    };
    Ok((get("VmRSS:")?, get("VmHWM:")?))
}

/// PIDs whose parent is `pid`.
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| matches!(stat(p), Ok((ppid, _)) if ppid == pid))
        .collect()
}

/// What to measure for a target: the process itself, or its children (nginx workers).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Measure {
    Process(u32),
    Children(u32),
}

/// One sample of the measured processes (summed).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    pub(crate) cpu_ticks: u64,
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
}

impl Measure {
    pub(crate) fn pids(self) -> Vec<u32> {
        match self {
            Self::Process(p) => vec![p],
            Self::Children(p) => children_of(p),
        }
    }

    pub(crate) fn sample(self) -> Result<Sample> {
        let pids = self.pids();
        if pids.is_empty() {
            bail!("no process to measure");
        }
        let mut s = Sample::default();
        for p in pids {
            let (_, ticks) = stat(p)?;
            let (rss, hwm) = status_mem(p)?;
            s.cpu_ticks += ticks;
            s.rss_kib += rss;
            s.hwm_kib += hwm;
        }
        Ok(s)
    }
}

pub(crate) use bamf_benches::clk_tck;

/// First line of a command's combined output, if it ran.
pub(crate) fn command_line(prog: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(prog).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(prefix: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("FRONTDOOR_KEEP_TMP").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}
