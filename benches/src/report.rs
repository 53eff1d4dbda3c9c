//! Collected values and the Markdown report.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::targets::Target;

/// One reported quantity.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Metric {
    pub(crate) key: &'static str,
    pub(crate) section: &'static str,
    pub(crate) title: &'static str,
    pub(crate) unit: &'static str,
    pub(crate) higher_is_better: bool,
}

const fn m(
    key: &'static str,
    section: &'static str,
    title: &'static str,
    unit: &'static str,
    higher_is_better: bool,
) -> Metric {
    Metric {
        key,
        section,
        title,
        unit,
        higher_is_better,
    }
}

pub(crate) const TPUT: &str = "a. Throughput, client → backend (64 KiB writes)";
pub(crate) const RATE: &str = "b. Connection rate (connect, hello, first byte, close)";
pub(crate) const ECHO: &str = "c. Echo latency (one connection, 64-byte round trips)";
pub(crate) const COST: &str = "d. Proxy CPU and memory";
pub(crate) const IDLE: &str = "e. Idle passthrough connections";

pub(crate) const METRICS: &[Metric] = &[
    m("tput1", TPUT, "1 stream", "Gbit/s", true),
    m("tput8", TPUT, "8 streams", "Gbit/s", true),
    m("rate", RATE, "Connections per second", "conn/s", true),
    m("rate_p50", RATE, "Connect to first byte, p50", "µs", false),
    m("rate_p99", RATE, "Connect to first byte, p99", "µs", false),
    m("echo_p50", ECHO, "Round trip, p50", "µs", false),
    m("echo_p99", ECHO, "Round trip, p99", "µs", false),
    m(
        "cpu_gb1",
        COST,
        "CPU per GB moved, 1 stream",
        "CPU s/GB",
        false,
    ),
    m(
        "cpu_gb8",
        COST,
        "CPU per GB moved, 8 streams",
        "CPU s/GB",
        false,
    ),
    m(
        "cpu_kconn",
        COST,
        "CPU per 1000 connections",
        "CPU s",
        false,
    ),
    m("rss_end", COST, "VmRSS after all workloads", "MiB", false),
    m(
        "hwm_end",
        COST,
        "VmHWM (peak RSS) after all workloads",
        "MiB",
        false,
    ),
    m(
        "idle_per_conn",
        IDLE,
        "Memory per idle connection (RSS delta ÷ N)",
        "bytes",
        false,
    ),
    m("idle_base", IDLE, "VmRSS before opening them", "MiB", false),
    m(
        "idle_loaded",
        IDLE,
        "VmRSS with all of them open",
        "MiB",
        false,
    ),
];

/// Values per (metric key, target), one per run.
#[derive(Debug, Default)]
pub(crate) struct Results {
    values: HashMap<(&'static str, Target), Vec<f64>>,
}

impl Results {
    pub(crate) fn add(&mut self, target: Target, key: &'static str, v: f64) {
        debug_assert!(METRICS.iter().any(|m| m.key == key), "unknown metric {key}");
        self.values.entry((key, target)).or_default().push(v);
    }

    fn get(&self, key: &'static str, target: Target) -> Option<&[f64]> {
        self.values
            .get(&(key, target))
            .map(Vec::as_slice)
            .filter(|v| !v.is_empty())
    }
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    let hi = s.get(n / 2).copied().unwrap_or(f64::NAN);
    if n % 2 == 1 {
        hi
    } else {
        (s.get(n / 2 - 1).copied().unwrap_or(f64::NAN) + hi) / 2.0
    }
}

pub(crate) fn num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "n/a".to_owned()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Renders the tables, one per metric, grouped by workload.
pub(crate) fn tables(results: &Results, targets: &[Target]) -> String {
    let mut out = String::new();
    let has_bamf = targets.contains(&Target::Bamf);
    let mut section = "";
    for metric in METRICS {
        if !targets
            .iter()
            .any(|t| results.get(metric.key, *t).is_some())
        {
            continue;
        }
        if metric.section != section {
            section = metric.section;
            let _ = writeln!(out, "### {section}\n");
        }
        let better = if metric.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        let _ = writeln!(out, "**{}** — {} ({better})\n", metric.title, metric.unit);
        let _ = writeln!(out, "| target | median | range (min–max) | bamf ÷ target |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        let bamf = results.get(metric.key, Target::Bamf).map(median);
        for &t in targets {
            let Some(v) = results.get(metric.key, t) else {
                let why = if t == Target::Direct {
                    "no proxy"
                } else {
                    "no data"
                };
                let _ = writeln!(out, "| {t} | {why} | | |");
                continue;
            };
            let med = median(v);
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let ratio = match bamf {
                _ if t == Target::Bamf => "—".to_owned(),
                Some(b) if has_bamf && med != 0.0 => format!("{:.2}×", b / med),
                _ => "n/a".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {t} | {} | {}–{} | {ratio} |",
                num(med),
                num(lo),
                num(hi)
            );
        }
        out.push('\n');
    }
    out
}

/// UTC date and time as `YYYY-MM-DD HH:MM`, from the system clock.
pub(crate) fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn table_has_ratio() {
        let mut r = Results::default();
        r.add(Target::Bamf, "tput1", 10.0);
        r.add(Target::Haproxy, "tput1", 5.0);
        let t = tables(&r, &[Target::Direct, Target::Bamf, Target::Haproxy]);
        assert!(t.contains("| haproxy | 5.00 | 5.00–5.00 | 2.00× |"), "{t}");
        assert!(t.contains("| direct | no proxy | | |"), "{t}");
    }
}
