//! Tables and times for people.

use std::io::IsTerminal as _;

use crate::{duration::format_secs_short, time::WallMs};

/// `s` safe to print on a terminal: control characters (escape sequences that retitle the
/// window or recolour it, a carriage return that overwrites the line, C1 controls) are shown as
/// Rust escapes (`\u{1b}`, `\r`). Reasons, comments and LAPI errors come from other parties.
pub(super) fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Prints rows as an aligned table (first row is the header); cells are [`printable`].
pub(super) fn table(rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c).into_owned()).collect())
        .collect();
    let rows = &rows[..];
    let Some(header) = rows.first() else { return };
    let mut widths = vec![0; header.len()];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let bold = std::io::stdout().is_terminal();
    for (n, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        let line = line.trim_end();
        if n == 0 && bold {
            println!("\x1b[1m{line}\x1b[0m");
        } else {
            println!("{line}");
        }
    }
}

/// "in 9m58s", "permanent", "expired".
pub(super) fn time_left(expires_ms: Option<WallMs>) -> String {
    match expires_ms {
        None => "permanent".into(),
        Some(e) => {
            let now = WallMs::now();
            if e <= now {
                "expired".into()
            } else {
                format_secs_short(e.saturating_since(now).as_millis().div_ceil(1000) as u64)
            }
        }
    }
}

/// "3s ago", "never".
pub(super) fn ago(ms: Option<WallMs>) -> String {
    match ms {
        None => "never".into(),
        Some(t) => {
            let now = WallMs::now();
            format!(
                "{} ago",
                format_secs_short(now.saturating_since(t).as_secs())
            )
        }
    }
}

/// RFC 3339 UTC, seconds precision.
pub(super) fn timestamp(ms: WallMs) -> String {
    humantime::format_rfc3339_seconds(ms.to_system_time()).to_string()
}

/// 1234567 -> "1.2M".
pub(super) fn count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

/// Bytes with a binary unit.
pub(super) fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n}B"),
        1024..1_048_576 => format!("{:.1}KiB", n as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1}MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.1}GiB", n as f64 / 1_073_741_824.0),
    }
}

/// Prints a value as pretty JSON.
pub(super) fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(super::printable("plain text"), "plain text");
        assert_eq!(
            super::printable("a\u{1b}]0;t\u{7}b\u{1b}[31m\rc\u{9b}d"),
            "a\\u{1b}]0;t\\u{7}b\\u{1b}[31m\\rc\\u{9b}d"
        );
    }
}
