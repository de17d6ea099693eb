//! Rendering: the `-o json` documents (stable field names) and the human tables.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rctl_api::pb::{self, TaskState};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

pub fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

/// Prints rows as left-aligned columns.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", table(header, rows));
}

/// A cell wider than this is written whole but not padded to, so one long stored value
/// (a 100,000-character image reference) neither widens every row nor reaches a padding
/// width `format!` cannot take.
const CELL_MAX: usize = 80;

/// One stored value as a human output writes it: control characters escaped, so it can
/// neither forge a line nor drive the terminal.
pub fn cell(c: &str) -> String {
    if c.chars().any(char::is_control) {
        c.chars()
            .map(|ch| {
                if ch.is_control() {
                    ch.escape_default().to_string()
                } else {
                    ch.to_string()
                }
            })
            .collect()
    } else {
        c.to_string()
    }
}

/// The lines [`print_table`] prints: cells left-aligned in columns three spaces apart, each
/// line trimmed at its end. Total over any strings: control characters are written escaped
/// (a stored value cannot forge rows or drive the terminal), rows may be ragged.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let lines: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| cell(h)).collect())
        .chain(rows.iter().map(|r| r.iter().map(|c| cell(c)).collect()))
        .collect();
    let mut width: Vec<usize> = Vec::new();
    for l in &lines {
        for (i, c) in l.iter().enumerate() {
            let w = c.chars().count();
            if width.len() <= i {
                width.push(0);
            }
            if w <= CELL_MAX {
                width[i] = width[i].max(w);
            }
        }
    }
    let mut out = String::new();
    for l in lines {
        let mut line = String::new();
        let n = l.len();
        for (i, c) in l.into_iter().enumerate() {
            let w = c.chars().count();
            line.push_str(&c);
            if i + 1 < n {
                line.extend(std::iter::repeat_n(' ', width[i].saturating_sub(w) + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The last millisecond RFC 3339's four-digit year can write (9999-12-31T23:59:59.999Z).
const RFC3339_MAX_MS: i64 = 253_402_300_799_999;

pub fn rfc3339(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return String::new();
    }
    if unix_ms > RFC3339_MAX_MS {
        // humantime's Display fails past year 9999 (a panic in `to_string`): a stored
        // value this large is shown as it is.
        return format!("{unix_ms}ms since 1970");
    }
    let t = UNIX_EPOCH + Duration::from_millis(unix_ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn ago(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return String::new();
    }
    let now = rctl_api::clock::to_unix_ms(SystemTime::now());
    let s = ((now - unix_ms).max(0) / 1000) as u64;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// The units [`bytes`] counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteUnits {
    /// Powers of 1000 (`kB`, `MB`): docker's image sizes, pull progress and network I/O.
    Decimal,
    /// Powers of 1024 (`KiB`, `MiB`): `docker stats` memory.
    Binary,
}

/// How [`bytes`] writes the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteStyle {
    /// One decimal and a space, `1.5 MB`, `999 B` (`docker pull`, `docker images`).
    Spaced,
    /// Up to three decimals without trailing zeros, no space, `1.5MiB`, `8GiB`, `512B`
    /// (`docker stats`).
    Compact,
}

/// `n` bytes in the largest unit that keeps the number at 1 or more, as docker prints them.
pub fn bytes(n: u64, units: ByteUnits, style: ByteStyle) -> String {
    let (base, names) = match units {
        ByteUnits::Decimal => (1000.0, ["B", "kB", "MB", "GB", "TB"]),
        ByteUnits::Binary => (1024.0, ["B", "KiB", "MiB", "GiB", "TiB"]),
    };
    let mut v = n as f64;
    let mut u = 0;
    while v >= base && u + 1 < names.len() {
        v /= base;
        u += 1;
    }
    let number = match style {
        _ if u == 0 => n.to_string(),
        ByteStyle::Spaced => format!("{v:.1}"),
        ByteStyle::Compact => format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string(),
    };
    let space = if style == ByteStyle::Spaced { " " } else { "" };
    format!("{number}{space}{}", names[u])
}

pub fn state_name(s: TaskState) -> &'static str {
    match s {
        TaskState::Unspecified | TaskState::Pending => "pending",
        TaskState::Starting => "starting",
        TaskState::Running => "running",
        TaskState::Stopping => "stopping",
        TaskState::Exited => "exited",
        TaskState::Failed => "failed",
    }
}

/// One task as `ps -o json` shows it.
#[derive(Debug, Serialize)]
pub struct TaskJson {
    pub id: String,
    pub name: String,
    pub service: String,
    pub node: String,
    pub image: String,
    pub revision: u64,
    pub desired: &'static str,
    pub state: &'static str,
    pub health: String,
    pub endpoint: String,
    pub ports: Vec<String>,
    pub created: String,
    pub message: String,
    pub exit_code: Option<i32>,
}

impl TaskJson {
    pub fn from_view(v: &pb::TaskView) -> Self {
        let t = v.task.clone().unwrap_or_default();
        let st = v.status.clone();
        let state = st.as_ref().map(|s| s.state()).unwrap_or(TaskState::Pending);
        let endpoint = st.as_ref().map(|s| s.endpoint.clone()).unwrap_or_default();
        let ports = if t.container_port > 0 && !endpoint.is_empty() {
            vec![format!("{endpoint}->{}/tcp", t.container_port)]
        } else {
            vec![]
        };
        TaskJson {
            name: format!("{}.{}", t.service, t.slot),
            service: t.service.clone(),
            node: t.node.clone(),
            image: t.image.clone(),
            revision: t.revision,
            desired: if t.desired_state() == pb::DesiredState::Running {
                "running"
            } else {
                "shutdown"
            },
            state: state_name(state),
            health: st.as_ref().map(|s| s.health.clone()).unwrap_or_default(),
            endpoint,
            ports,
            created: rfc3339(t.created_unix_ms),
            message: st.as_ref().map(|s| s.message.clone()).unwrap_or_default(),
            exit_code: st
                .as_ref()
                .filter(|s| matches!(s.state(), TaskState::Exited | TaskState::Failed))
                .map(|s| s.exit_code),
            id: t.id,
        }
    }
}

pub fn print_tasks(views: &[pb::TaskView]) {
    print_table(&TASK_HEADER, &task_rows(views));
}

pub const TASK_HEADER: [&str; 9] = [
    "ID", "NAME", "NODE", "IMAGE", "STATE", "HEALTH", "ENDPOINT", "CREATED", "MESSAGE",
];

/// The rows of [`print_tasks`], one per task.
pub fn task_rows(views: &[pb::TaskView]) -> Vec<Vec<String>> {
    views
        .iter()
        .map(|v| {
            let j = TaskJson::from_view(v);
            let created = v
                .task
                .as_ref()
                .map(|t| ago(t.created_unix_ms))
                .unwrap_or_default();
            let state = if j.desired == "shutdown" && !matches!(j.state, "exited" | "failed") {
                format!("{} (shutdown)", j.state)
            } else {
                j.state.to_string()
            };
            vec![
                j.id.chars().take(12).collect(),
                j.name,
                j.node,
                j.image,
                state,
                j.health,
                j.endpoint,
                created,
                j.message,
            ]
        })
        .collect()
}

/// Strings a stored value may hold, for the tests of every writer: empty, longer than any
/// padding `format!` takes, control characters, NUL, multi-byte and wide characters.
#[cfg(test)]
pub fn hostile_strings() -> Vec<String> {
    vec![
        String::new(),
        "b".repeat(100_000),
        format!("198.18.0.1:7603/rctl/testserver:{}", "b".repeat(100_000)),
        "line\nbreak\r\ttab\u{1b}[31mred\u{7}".into(),
        "nul\0byte".into(),
        "é漢字🦀\u{200d}\u{301}".repeat(20_000),
        "\u{feff}\u{202e}rtl".into(),
        " ".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_take_any_string_without_panic_and_stay_one_line_per_row() {
        let hostile = hostile_strings();
        for s in &hostile {
            for (header, rows) in [
                (
                    vec!["A", "B", "C"],
                    vec![vec![s.clone(), s.clone(), s.clone()]],
                ),
                (
                    vec!["A", "B"],
                    vec![vec!["x".into(), s.clone()], vec![s.clone()]],
                ),
                // Ragged: more cells than the header.
                (vec!["A"], vec![vec![s.clone(), s.clone(), "z".into()]]),
                (vec![], vec![vec![]]),
            ] {
                let out = table(&header, &rows);
                assert_eq!(out.lines().count(), rows.len() + 1, "{out:.200}");
            }
        }
        // Short cells still line up; a cell over the limit is not padded to.
        let long = "b".repeat(100_000);
        let out = table(
            &["NAME", "IMAGE", "STATE"],
            &[
                vec!["web".into(), long.clone(), "running".into()],
                vec!["api".into(), "app:1".into(), "running".into()],
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "NAME   IMAGE   STATE");
        assert_eq!(lines[1], format!("web    {long}   running"));
        assert_eq!(lines[2], "api    app:1   running");
    }

    #[test]
    fn tasks_render_any_stored_string_as_table_and_json() {
        for s in hostile_strings() {
            let view = pb::TaskView {
                task: Some(pb::Task {
                    id: s.clone(),
                    service: s.clone(),
                    node: s.clone(),
                    image: s.clone(),
                    container_port: 8080,
                    created_unix_ms: i64::MAX,
                    ..Default::default()
                }),
                status: Some(pb::TaskStatus {
                    health: s.clone(),
                    endpoint: s.clone(),
                    message: s.clone(),
                    exit_code: i32::MIN,
                    ..Default::default()
                }),
                node_ip: s.clone(),
            };
            let _ = table(&TASK_HEADER, &task_rows(std::slice::from_ref(&view)));
            serde_json::to_string_pretty(&TaskJson::from_view(&view)).unwrap();
        }
    }

    #[test]
    fn bytes_are_written_as_docker_writes_them() {
        use ByteStyle::*;
        use ByteUnits::*;
        for (n, units, style, want) in [
            (0, Decimal, Compact, "0B"),
            (512, Binary, Compact, "512B"),
            (1536 * 1024, Binary, Compact, "1.5MiB"),
            (8 << 30, Binary, Compact, "8GiB"),
            (1200, Decimal, Compact, "1.2kB"),
            (1_234_567, Decimal, Compact, "1.235MB"),
            (999, Decimal, Spaced, "999 B"),
            (1_500, Decimal, Spaced, "1.5 kB"),
            (40_100_000, Decimal, Spaced, "40.1 MB"),
            (2_000_000_000_000_000, Decimal, Spaced, "2000.0 TB"),
            (1024, Binary, Spaced, "1.0 KiB"),
        ] {
            assert_eq!(bytes(n, units, style), want, "{n} {units:?} {style:?}");
        }
    }

    #[test]
    fn times_past_year_9999_are_written_as_numbers() {
        assert_eq!(rfc3339(RFC3339_MAX_MS), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(i64::MAX), format!("{}ms since 1970", i64::MAX));
        assert_eq!(rfc3339(i64::MIN), "");
        assert_eq!(ago(i64::MAX), "0s ago");
    }
}
