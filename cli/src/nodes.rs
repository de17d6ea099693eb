//! `rctl nodes [-o json]`, `rctl node drain NODE` and `rctl node activate NODE`.

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
    /// Take no new tasks on NODE and move its tasks elsewhere (surge-first).
    Drain { name: String },
    /// Let NODE take new tasks again; running tasks stay where they are.
    Activate { name: String },
}

impl NodeCommand {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        let conn = &mut g.connect().await?;
        match self {
            NodeCommand::Drain { name } => drain(conn, &name).await,
            NodeCommand::Activate { name } => activate(conn, &name).await,
        }
    }
}

#[derive(Debug, Serialize)]
struct NetworkJson {
    /// "host-gw" or "vxlan" (empty from an agent that predates the field).
    mode: String,
    subnet: String,
}

#[derive(Debug, Serialize)]
struct NodeJson {
    name: String,
    address: String,
    state: String,
    tasks: u32,
    cpus: f64,
    memory: u64,
    labels: BTreeMap<String, String>,
    subnet: String,
    /// How the node reaches other nodes' containers, and its container subnet.
    network: NetworkJson,
    /// RFC 3339 time of the agent's last lease renewal; null when the node is down.
    last_heartbeat: Option<String>,
    #[serde(skip)]
    last_heartbeat_unix_ms: i64,
}

async fn list(conn: &mut Conn, format: Format) -> Result<(), CliError> {
    let nodes = conn
        .client
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(|s| conn.err(s))?
        .into_inner()
        .nodes;
    let rows: Vec<NodeJson> = nodes
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
        .collect();
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
