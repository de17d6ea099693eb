//! `rctl system df [-v] [-o json]` and `rctl system prune [-a] [--volumes] [-f]`, per node.

use std::io::{BufRead, IsTerminal, Write};

use clap::Subcommand;
use rctl_api::pb::{DiskUsageRequest, PruneRequest, UsageLine};
use serde::Serialize;

use crate::client::Conn;
use crate::error::CliError;
use crate::global::Global;
use crate::images::{image_rows, ImageJson, IMAGE_HEADER};
use crate::output::{print_json, print_table, Format};
use crate::progress::human;

#[derive(Subcommand, Debug)]
pub enum SystemCommand {
    /// Space used by images, containers and volumes, and what could be reclaimed.
    Df {
        /// Also list the images.
        #[arg(short = 'v', long)]
        verbose: bool,
        /// Only this node (default: every node).
        #[arg(long)]
        node: Option<String>,
        /// Output format: table (default) or json.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Remove stopped containers (not service tasks), unused data and, with -a, every
    /// image no container uses.
    Prune {
        /// Also remove every image no container uses (not only dangling ones).
        #[arg(short = 'a', long)]
        all: bool,
        /// Also remove volumes no container uses.
        #[arg(long)]
        volumes: bool,
        /// Do not ask (required when not on a terminal).
        #[arg(short = 'f', long)]
        force: bool,
        /// Only this node (default: every node).
        #[arg(long)]
        node: Option<String>,
    },
}

impl SystemCommand {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        let conn = &mut g.connect().await?;
        match self {
            SystemCommand::Df {
                verbose,
                node,
                output,
            } => df(conn, verbose, node, output).await,
            SystemCommand::Prune {
                all,
                volumes,
                force,
                node,
            } => prune(conn, all, volumes, force, node).await,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct LineJson {
    total: u32,
    active: u32,
    size: u64,
    reclaimable: u64,
}

#[derive(Debug, Serialize)]
struct NodeUsageJson {
    node: String,
    images: LineJson,
    containers: LineJson,
    volumes: LineJson,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    image_list: Vec<ImageJson>,
}

pub(crate) fn line_json(l: Option<UsageLine>) -> LineJson {
    let l = l.unwrap_or_default();
    LineJson {
        total: l.total,
        active: l.active,
        size: l.size_bytes,
        reclaimable: l.reclaimable_bytes,
    }
}

/// `1.2 GB (40%)`, docker's RECLAIMABLE column.
pub(crate) fn reclaimable(l: &LineJson) -> String {
    // In u128: a stored size near u64::MAX must not overflow the percentage.
    let pct = (u128::from(l.reclaimable) * 100)
        .checked_div(u128::from(l.size))
        .unwrap_or(0);
    format!("{} ({pct}%)", human(l.reclaimable))
}

async fn df(
    conn: &mut Conn,
    verbose: bool,
    node: Option<String>,
    format: Format,
) -> Result<(), CliError> {
    let resp = conn
        .client
        .disk_usage(DiskUsageRequest {
            node: node.unwrap_or_default(),
        })
        .await
        .map_err(|s| conn.err(s))?
        .into_inner();
    let nodes: Vec<NodeUsageJson> = resp
        .nodes
        .into_iter()
        .map(|u| NodeUsageJson {
            node: u.node,
            images: line_json(u.images),
            containers: line_json(u.containers),
            volumes: line_json(u.volumes),
            image_list: if verbose {
                u.image_list.iter().map(ImageJson::from_summary).collect()
            } else {
                Vec::new()
            },
        })
        .collect();
    if format == Format::Json {
        print_json(&nodes);
        return Ok(());
    }
    let mut rows = Vec::new();
    for n in &nodes {
        for (kind, l) in [
            ("Images", &n.images),
            ("Containers", &n.containers),
            ("Local Volumes", &n.volumes),
        ] {
            rows.push(vec![
                kind.to_string(),
                l.total.to_string(),
                l.active.to_string(),
                human(l.size),
                reclaimable(l),
                n.node.clone(),
            ]);
        }
    }
    print_table(
        &["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE", "NODE"],
        &rows,
    );
    if verbose {
        println!("\nImages space usage:\n");
        let mut images = Vec::new();
        for n in &nodes {
            images.extend(n.image_list.iter().map(|i| rctl_api::pb::ImageSummary {
                node: i.node.clone(),
                repository: i.repository.clone(),
                tag: i.tag.clone(),
                id: i.id.clone(),
                size_bytes: i.size,
                ..Default::default()
            }));
        }
        print_table(&IMAGE_HEADER, &image_rows(&images));
    }
    Ok(())
}

/// Asks on the terminal; anything but y/yes is no.
fn confirm(what: &str) -> bool {
    print!("WARNING! This will remove:\n{what}\nAre you sure you want to continue? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

async fn prune(
    conn: &mut Conn,
    all: bool,
    volumes: bool,
    force: bool,
    node: Option<String>,
) -> Result<(), CliError> {
    if !force {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::Usage(
                "system prune deletes data: confirm with -f when not on a terminal".into(),
            ));
        }
        let mut what = vec!["  - all stopped containers that are not service tasks"];
        if volumes {
            what.push("  - all volumes not used by at least one container");
        }
        what.push(if all {
            "  - all images without at least one container associated to them"
        } else {
            "  - all blobs and layers no image or container uses"
        });
        if !confirm(&what.join("\n")) {
            return Err(CliError::Failed("prune cancelled".into()));
        }
    }
    let resp = conn
        .client
        .prune(PruneRequest {
            node: node.unwrap_or_default(),
            all,
            volumes,
        })
        .await
        .map_err(|s| conn.err(s))?
        .into_inner();
    let mut total = 0;
    for n in &resp.nodes {
        for (kind, items) in [
            ("deleted container", &n.containers),
            ("untagged", &n.images),
            ("deleted volume", &n.volumes),
            ("deleted", &n.deleted),
        ] {
            for i in items {
                println!("{}: {kind}: {i}", n.node);
            }
        }
        println!("{}: reclaimed {}", n.node, human(n.bytes_freed));
        total += n.bytes_freed;
    }
    println!("Total reclaimed space: {} ({total} bytes)", human(total));
    Ok(())
}
