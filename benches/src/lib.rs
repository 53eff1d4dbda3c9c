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
