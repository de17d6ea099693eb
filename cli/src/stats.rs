//! `rctl stats [--no-stream] [-o json] [TARGET...]`: CPU, memory, pids and network I/O of
//! containers on every host (default: every running one), refreshed every second until ^C
//! unless --no-stream.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use rctl_api::pb::{ContainerStats, StatsRequest};
use serde::Serialize;

use crate::attach::stream_err;
use crate::client::Conn;
use crate::error::CliError;
use crate::global::Global;
use crate::output::{self, print_json, print_table, ByteStyle, ByteUnits, Format};

/// The window CPU % is measured over; also the refresh period.
const SAMPLE_MS: u32 = 1000;

/// One container in `-o json` (stable field names).
#[derive(Debug, Serialize)]
pub struct StatsJson {
    pub id: String,
    pub name: String,
    pub node: String,
    pub cpu_percent: f64,
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    pub memory_limit: u64,
    pub memory_percent: f64,
    pub pids: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

fn mem_percent(s: &ContainerStats) -> f64 {
    if s.memory_limit == 0 {
        0.0
    } else {
        s.memory_bytes as f64 / s.memory_limit as f64 * 100.0
    }
}

impl StatsJson {
    pub fn from_pb(s: &ContainerStats) -> Self {
        Self {
            id: s.task_id.clone(),
            name: s.name.clone(),
            node: s.node.clone(),
            cpu_percent: s.cpu_percent,
            cpu_ns: s.cpu_ns,
            memory_bytes: s.memory_bytes,
            memory_limit: s.memory_limit,
            memory_percent: mem_percent(s),
            pids: s.pids,
            net_rx_bytes: s.net_rx_bytes,
            net_tx_bytes: s.net_tx_bytes,
        }
    }
}

/// Bytes the way `docker stats` shows memory: binary units, `1.5MiB`.
pub fn binary_bytes(n: u64) -> String {
    output::bytes(n, ByteUnits::Binary, ByteStyle::Compact)
}

/// Bytes the way `docker stats` shows network I/O: decimal units, `1.2kB`.
pub fn decimal_bytes(n: u64) -> String {
    output::bytes(n, ByteUnits::Decimal, ByteStyle::Compact)
}

pub fn rows(stats: &[ContainerStats]) -> Vec<Vec<String>> {
    stats
        .iter()
        .map(|s| {
            vec![
                s.task_id.chars().take(12).collect(),
                s.name.clone(),
                format!("{:.2}%", s.cpu_percent),
                format!(
                    "{} / {}",
                    binary_bytes(s.memory_bytes),
                    binary_bytes(s.memory_limit)
                ),
                format!("{:.2}%", mem_percent(s)),
                format!(
                    "{} / {}",
                    decimal_bytes(s.net_rx_bytes),
                    decimal_bytes(s.net_tx_bytes)
                ),
                s.pids.to_string(),
                s.node.clone(),
            ]
        })
        .collect()
}

const HEADER: [&str; 8] = [
    "CONTAINER",
    "NAME",
    "CPU %",
    "MEM USAGE / LIMIT",
    "MEM %",
    "NET I/O",
    "PIDS",
    "NODE",
];

/// `rctl stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Print one sample and exit.
    #[arg(long)]
    pub no_stream: bool,
    /// Output format: table (default) or json.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Format,
    /// Containers or tasks, by name or id (default: every running one).
    pub targets: Vec<String>,
}

impl StatsArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        let conn = g.connect().await?;
        show(&conn, self.targets, self.no_stream, self.output).await
    }
}

async fn show(
    conn: &Conn,
    targets: Vec<String>,
    no_stream: bool,
    format: Format,
) -> Result<(), CliError> {
    let terminal = std::io::stdout().is_terminal();
    loop {
        let req = StatsRequest {
            targets: targets.clone(),
            sample_ms: SAMPLE_MS,
        };
        let stats = conn
            .client
            .clone()
            .stats(req)
            .await
            .map_err(|s| stream_err(conn, s))?
            .into_inner()
            .stats;
        if terminal && !no_stream {
            // Clear the screen and go home, like `docker stats`.
            print!("\x1b[2J\x1b[H");
        }
        match format {
            Format::Json => print_json(&stats.iter().map(StatsJson::from_pb).collect::<Vec<_>>()),
            Format::Table => print_table(&HEADER, &rows(&stats)),
        }
        if no_stream {
            return Ok(());
        }
        // The sample itself took a second; ask again at once.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker_stats() {
        assert_eq!(binary_bytes(512), "512B");
        assert_eq!(binary_bytes(1536 * 1024), "1.5MiB");
        assert_eq!(binary_bytes(8 << 30), "8GiB");
        assert_eq!(decimal_bytes(1200), "1.2kB");
        assert_eq!(decimal_bytes(0), "0B");
    }

    #[test]
    fn a_row_has_every_column() {
        let s = ContainerStats {
            task_id: "0123456789abcdef".into(),
            name: "web.1".into(),
            node: "h2".into(),
            cpu_percent: 12.345,
            memory_bytes: 1 << 20,
            memory_limit: 4 << 20,
            pids: 3,
            net_rx_bytes: 1000,
            net_tx_bytes: 2000,
            ..Default::default()
        };
        assert_eq!(
            rows(&[s])[0],
            [
                "0123456789ab",
                "web.1",
                "12.35%",
                "1MiB / 4MiB",
                "25.00%",
                "1kB / 2kB",
                "3",
                "h2"
            ]
        );
    }
}
