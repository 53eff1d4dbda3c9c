//! Everything the CLI shows: tables, JSON, notes and errors, and whether they are coloured.
//!
//! This module owns all printing. A CLI legitimately writes to stdout and stderr, so the
//! workspace's print lints are allowed here and nowhere else. Writes go through `writeln!` and
//! their errors are ignored: `bamf ls | head` must end quietly, not panic on a closed pipe.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

/// How a table cell or a word is shown when colours are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// As is.
    Plain,
    /// Headers.
    Bold,
    /// Good news: online, allowed.
    Green,
    /// Bad news: offline, denied, revoked.
    Red,
    /// Warnings: draining, pending.
    Yellow,
    /// Less important detail.
    Dim,
}

impl Style {
    fn code(self) -> Option<&'static str> {
        match self {
            Self::Plain => None,
            Self::Bold => Some("1"),
            Self::Green => Some("32"),
            Self::Red => Some("31"),
            Self::Yellow => Some("33"),
            Self::Dim => Some("2"),
        }
    }
}

/// Whether a stream gets colours: never with `NO_COLOR` set (non-empty), always with
/// `CLICOLOR_FORCE` set (non-empty, not `0`), otherwise only on a terminal.
fn colour_for(is_terminal: bool) -> bool {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0");
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        return false;
    }
    set("CLICOLOR_FORCE") || is_terminal
}

fn stdout_colour() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| colour_for(std::io::stdout().is_terminal()))
}

fn stderr_colour() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| colour_for(std::io::stderr().is_terminal()))
}

fn paint(text: &str, style: Style, on: bool) -> String {
    match style.code() {
        Some(code) if on => format!("\x1b[{code}m{text}\x1b[0m"),
        _ => text.to_owned(),
    }
}

/// One line on stdout.
pub fn line(text: impl Display) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Raw text on stdout (completion scripts, generated documents).
pub fn raw(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// A JSON value on stdout, pretty-printed.
pub fn json(value: &serde_json::Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    line(text);
}

/// An informational line on stderr (progress, hints): stdout stays parseable.
pub fn note(text: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// A warning on stderr.
pub fn warn(text: impl Display) {
    let label = paint("warning:", Style::Yellow, stderr_colour());
    let _ = writeln!(std::io::stderr().lock(), "{label} {text}");
}

/// An error on stderr (the process then exits non-zero).
pub fn error(text: impl Display) {
    let label = paint("error:", Style::Red, stderr_colour());
    let _ = writeln!(std::io::stderr().lock(), "{label} {text}");
}

/// A failed command on stderr: its message and the API's request id; with `--json`, one
/// JSON object (`{"error": {"kind", "message", "exit_status", "request_id"}}`).
pub fn failure(e: &crate::error::Error, json: bool) {
    if json {
        let value = serde_json::json!({"error": {
            "kind": e.kind(),
            "message": e.to_string(),
            "exit_status": e.status(),
            "request_id": e.request_id(),
        }});
        let _ = writeln!(std::io::stderr().lock(), "{value}");
        return;
    }
    match e.request_id() {
        Some(id) => error(format!("{e} (request id {id})")),
        None => error(e),
    }
}

/// A `--debug` line on stderr.
pub fn debug(text: impl Display) {
    let label = paint("debug:", Style::Dim, stderr_colour());
    let _ = writeln!(std::io::stderr().lock(), "{label} {text}");
}

/// A question on stderr, without a newline: the answer is typed after it.
pub fn prompt(text: impl Display) {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{text}");
    let _ = err.flush();
}

/// A cell of a [`Table`].
#[derive(Debug, Clone)]
pub struct Cell {
    text: String,
    style: Style,
}

impl Cell {
    /// A plain cell.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            style: Style::Plain,
        }
    }

    /// A styled cell.
    pub fn styled(text: impl Into<String>, style: Style) -> Self {
        Self {
            text: text.into(),
            style,
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

/// A table with a header row, columns padded to their widest cell.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty).
    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// The table as text, coloured when `colour`.
    pub fn render(&self, colour: bool) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.text.chars().count());
                }
            }
        }
        let mut out = String::new();
        let mut put = |cells: Vec<(String, Style)>| {
            let mut line = String::new();
            for (i, (text, style)) in cells.iter().enumerate() {
                let last = i + 1 == cells.len();
                let width = widths.get(i).copied().unwrap_or(0);
                let pad = if last {
                    0
                } else {
                    width.saturating_sub(text.chars().count()) + 2
                };
                line.push_str(&paint(text, *style, colour));
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        };
        put(self
            .headers
            .iter()
            .map(|h| ((*h).to_owned(), Style::Bold))
            .collect());
        for row in &self.rows {
            put((0..columns)
                .map(|i| {
                    row.get(i)
                        .map_or((String::new(), Style::Plain), |c| (c.text.clone(), c.style))
                })
                .collect());
        }
        out
    }

    /// Prints the table on stdout, or `empty` on stderr when it has no rows.
    pub fn print(&self, empty: &str) {
        if self.rows.is_empty() {
            note(empty);
            return;
        }
        raw(&self.render(stdout_colour()));
    }
}

/// `label: value` lines with the labels aligned, on stdout.
pub fn fields(pairs: &[(&str, String)]) {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let on = stdout_colour();
    for (key, value) in pairs {
        let label = format!("{key}:");
        let pad = " ".repeat(width - label.len() + 1);
        line(format!("{}{pad}{value}", paint(&label, Style::Bold, on)));
    }
}

/// `text` in `style` when stdout is coloured (for single words inside [`fields`]).
pub fn styled(text: &str, style: Style) -> String {
    paint(text, style, stdout_colour())
}

/// A Unix time as `YYYY-MM-DD HH:MM:SSZ` (UTC); `-` when absent or out of range.
pub fn time(unix: Option<i64>) -> String {
    let Some(t) = unix.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok()) else {
        return "-".into();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// How far `unix` is from now: `in 11h 59m`, `3m ago`.
pub fn relative(unix: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let delta = unix - now;
    let span = delta.unsigned_abs();
    // Minutes are precise enough for expiries; seconds only when under a minute.
    let rounded = if span >= 60 { span - span % 60 } else { span };
    let text = humantime::format_duration(std::time::Duration::from_secs(rounded)).to_string();
    if delta >= 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `20.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    #[allow(clippy::cast_precision_loss)] // a display value
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_by_characters_and_colour_only_when_asked() {
        let mut t = Table::new(&["NAME", "STATE"]);
        t.row(vec![
            Cell::new("db-1"),
            Cell::styled("online", Style::Green),
        ]);
        t.row(vec![Cell::new("a-much-longer-name")]);
        let plain = t.render(false);
        assert_eq!(
            plain,
            "NAME                STATE\ndb-1                online\na-much-longer-name\n"
        );
        assert!(!plain.contains('\x1b'));
        let coloured = t.render(true);
        assert!(coloured.contains("\x1b[32monline\x1b[0m"));
        assert!(coloured.contains("\x1b[1mNAME\x1b[0m"));
    }

    #[test]
    fn times_and_sizes_read_well() {
        assert_eq!(time(Some(0)), "1970-01-01 00:00:00Z");
        assert_eq!(time(None), "-");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert_eq!(relative(now + 3600 + 30), "in 1h");
        assert_eq!(relative(now - 180), "3m ago");
    }
}
