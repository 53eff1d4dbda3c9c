//! What the benchmark binaries share: how a recorded run names its machine and commit.

/// The short commit hash of the working tree, or "unknown".
pub fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Today's date, `YYYY-MM-DD` (UTC), or empty.
pub fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The CPU model and core count, from `/proc/cpuinfo`.
pub fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    format!("{model}, {cores} vCPU")
}

/// Appends `section` to `benches/RESULTS.md`.
///
/// # Errors
///
/// The file cannot be read or written.
pub fn record(section: &str) -> std::io::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md");
    let mut text = std::fs::read_to_string(path)?;
    text.push_str(section);
    std::fs::write(path, text)
}

/// Fields of /proc/PID/stat the benchmarks use: (ppid, utime + stime in clock ticks).
///
/// # Errors
///
/// The file cannot be read or does not parse.
pub fn proc_stat(pid: u32) -> anyhow::Result<(u32, u64)> {
    use anyhow::Context;
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    let after = s.rfind(')').context("malformed stat")?;
    let rest: Vec<&str> = s
        .get(after + 1..)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    // rest[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
    let field = |n: usize| -> anyhow::Result<u64> {
        rest.get(n - 3)
            .context("short stat")?
            .parse::<u64>()
            .context("stat field")
    };
    let ppid = u32::try_from(field(4)?)?;
    Ok((ppid, field(14)? + field(15)?))
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
pub fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}

/// CPU time (user + system) a process has used so far, in seconds; 0 when it cannot be read.
pub fn cpu_seconds(pid: u32) -> f64 {
    proc_stat(pid).map_or(0.0, |(_, ticks)| ticks as f64 / clk_tck())
}

/// The disk's sync latency where `dir` is: `samples` 4 KiB writes each followed by
/// `fdatasync`, as a database commit does; p50 and p99. A setup path that commits is bounded
/// below by it.
///
/// # Errors
///
/// The file could not be written.
pub fn sync_latency(
    dir: &std::path::Path,
    samples: usize,
) -> std::io::Result<(std::time::Duration, std::time::Duration)> {
    use std::io::Write;
    let path = dir.join("sync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples.max(1) {
        let started = std::time::Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        took.push(started.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    took.sort();
    Ok((percentile(&took, 0.50), percentile(&took, 0.99)))
}

/// The `p` quantile (0 to 1) of `sorted`, which is sorted and not empty.
///
/// # Panics
///
/// When `sorted` is empty.
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}
