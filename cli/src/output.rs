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
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let s: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == n {
                    c
                } else {
                    format!("{c:<w$}", w = width[i])
                }
            })
            .collect();
        println!("{}", s.join("   ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

pub fn rfc3339(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return String::new();
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
    let rows: Vec<Vec<String>> = views
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
        .collect();
    print_table(
        &[
            "ID", "NAME", "NODE", "IMAGE", "STATE", "HEALTH", "ENDPOINT", "CREATED", "MESSAGE",
        ],
        &rows,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
