//! `rctl nodes [-o json]`, `rctl node inspect NODE [-o json]`, `rctl node drain NODE` and
//! `rctl node activate NODE`.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use rctl_api::pb::{ActivateNodeRequest, DrainNodeRequest, ListNodesRequest};
use serde::Serialize;

use crate::client::Conn;
use crate::error::CliError;
use crate::global::Global;
use crate::output::{ago, print_json, print_table, rfc3339, Format};

/// `rctl nodes`.
#[derive(Args, Debug)]
pub struct NodesArgs {
    /// Output format: table (default) or json.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Format,
}

impl NodesArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        list(&mut g.connect().await?, self.output).await
    }
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// One node: address, state, tasks, resources, labels and last heartbeat.
    Inspect {
        /// The node.
        name: String,
        /// Output format: table (default) or json.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Take no new tasks on NODE and move its tasks elsewhere (surge-first).
    Drain {
        /// The node.
        name: String,
    },
    /// Let NODE take new tasks again; running tasks stay where they are.
    Activate {
        /// The node.
        name: String,
    },
}

impl NodeCommand {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        let conn = &mut g.connect().await?;
        match self {
            NodeCommand::Inspect { name, output } => inspect(conn, &name, output).await,
            NodeCommand::Drain { name } => drain(conn, &name).await,
            NodeCommand::Activate { name } => activate(conn, &name).await,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct NetworkJson {
    /// "host-gw" or "vxlan" (empty from an agent that predates the field).
    pub(crate) mode: String,
    pub(crate) subnet: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct NodeJson {
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) state: String,
    pub(crate) tasks: u32,
    pub(crate) cpus: f64,
    pub(crate) memory: u64,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) subnet: String,
    /// How the node reaches other nodes' containers, and its container subnet.
    pub(crate) network: NetworkJson,
    /// RFC 3339 time of the agent's last lease renewal; null when the node is down.
    pub(crate) last_heartbeat: Option<String>,
    #[serde(skip)]
    pub(crate) last_heartbeat_unix_ms: i64,
}

/// Every node the scheduler lists, as `nodes -o json` shows them.
async fn nodes(conn: &mut Conn) -> Result<Vec<NodeJson>, CliError> {
    let nodes = conn
        .client
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(|s| conn.err(s))?
        .into_inner()
        .nodes;
    Ok(nodes
        .into_iter()
        .map(|v| {
            let n = v.node.unwrap_or_default();
            NodeJson {
                name: n.name,
                address: n.address,
                state: v.state,
                tasks: v.tasks,
                cpus: n.cpus,
                memory: n.memory_bytes,
                labels: n.labels.into_iter().collect(),
                network: NetworkJson {
                    mode: n.network_mode,
                    subnet: n.subnet.clone(),
                },
                subnet: n.subnet,
                last_heartbeat: (v.last_heartbeat_unix_ms > 0)
                    .then(|| rfc3339(v.last_heartbeat_unix_ms)),
                last_heartbeat_unix_ms: v.last_heartbeat_unix_ms,
            }
        })
        .collect())
}

async fn list(conn: &mut Conn, format: Format) -> Result<(), CliError> {
    let rows = nodes(conn).await?;
    match format {
        Format::Json => print_json(&rows),
        Format::Table => {
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|n| {
                    vec![
                        n.name.clone(),
                        n.address.clone(),
                        n.state.clone(),
                        n.tasks.to_string(),
                        format!("{}", n.cpus),
                        format!("{:.1}GiB", n.memory as f64 / (1u64 << 30) as f64),
                        n.labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                        if n.last_heartbeat_unix_ms > 0 {
                            ago(n.last_heartbeat_unix_ms)
                        } else {
                            "-".to_string()
                        },
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME",
                    "ADDRESS",
                    "STATE",
                    "TASKS",
                    "CPUS",
                    "MEMORY",
                    "LABELS",
                    "HEARTBEAT",
                ],
                &table,
            );
        }
    }
    Ok(())
}

/// `rctl node inspect NAME`: one object with `nodes -o json`'s fields, or `Key: value`
/// lines.
async fn inspect(conn: &mut Conn, name: &str, format: Format) -> Result<(), CliError> {
    let Some(n) = nodes(conn).await?.into_iter().find(|n| n.name == name) else {
        return Err(CliError::Failed(format!(
            "node {name:?} not found (see: rctl nodes)"
        )));
    };
    match format {
        Format::Json => print_json(&n),
        Format::Table => {
            for line in inspect_lines(&n) {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// The human `node inspect`: `Key: value` lines, aligned. Values go through
/// `output::cell` like every table cell, so a stored value cannot forge a line.
pub(crate) fn inspect_lines(n: &NodeJson) -> Vec<String> {
    let labels = n
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let heartbeat = match &n.last_heartbeat {
        Some(at) => format!("{at} ({})", ago(n.last_heartbeat_unix_ms)),
        None => "-".to_string(),
    };
    [
        ("Name", n.name.clone()),
        ("Address", n.address.clone()),
        ("State", n.state.clone()),
        ("Tasks", n.tasks.to_string()),
        ("CPUs", format!("{}", n.cpus)),
        (
            "Memory",
            format!("{:.1}GiB", n.memory as f64 / (1u64 << 30) as f64),
        ),
        (
            "Labels",
            if labels.is_empty() {
                "-".into()
            } else {
                labels
            },
        ),
        ("Subnet", n.subnet.clone()),
        ("Network", n.network.mode.clone()),
        ("Heartbeat", heartbeat),
    ]
    .into_iter()
    .map(|(k, v)| format!("{:<10} {}", format!("{k}:"), crate::output::cell(&v)))
    .collect()
}

/// Marks `name` draining; prints the node's name.
async fn drain(conn: &mut Conn, name: &str) -> Result<(), CliError> {
    conn.write(|mut c| async move { c.drain_node(DrainNodeRequest { node: name.into() }).await })
        .await?;
    println!("{name}");
    Ok(())
}

/// Clears `name`'s drain mark; prints the node's name.
async fn activate(conn: &mut Conn, name: &str) -> Result<(), CliError> {
    conn.write(|mut c| async move {
        c.activate_node(ActivateNodeRequest { node: name.into() })
            .await
    })
    .await?;
    println!("{name}");
    Ok(())
}
