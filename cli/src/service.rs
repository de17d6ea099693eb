//! `rctl service ls | inspect NAME | rm NAME`.

use std::collections::BTreeMap;

use clap::Subcommand;
use rctl_api::pb::{self, ListServicesRequest, RemoveServiceRequest};
use serde::Serialize;

use crate::client::Conn;
use crate::error::CliError;
use crate::global::Global;
use crate::output::{print_json, print_table, print_tasks, rfc3339, Format, TaskJson};

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// List services.
    Ls {
        /// Output format: table (default) or json.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Show a service and its tasks.
    Inspect {
        /// The service.
        name: String,
        /// Output format: table (default) or json.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Remove services (their tasks are stopped).
    Rm {
        /// The services to remove.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

impl ServiceCommand {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        let conn = &mut g.connect().await?;
        match self {
            ServiceCommand::Ls { output } => ls(conn, output).await,
            ServiceCommand::Inspect { name, output } => inspect(conn, &name, output).await,
            ServiceCommand::Rm { names } => rm(conn, &names).await,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct ServiceJson {
    name: String,
    image: String,
    replicas: u32,
    running: u32,
    revision: u64,
    command: Vec<String>,
    env: BTreeMap<String, String>,
    port: Option<PortJson>,
    /// Why fewer tasks than desired are placed, e.g. "2 tasks: 0/3 nodes: 2 insufficient
    /// memory, 1 constraint not met"; "" when all are placed.
    unplaced: String,
    created: String,
    updated: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct PortJson {
    container: u32,
    protocol: String,
    listen: String,
}

pub(crate) fn service_json(s: &pb::Service, running: u32, unplaced: &str) -> ServiceJson {
    let spec = s.spec.clone().unwrap_or_default();
    ServiceJson {
        name: spec.name,
        image: spec.image,
        replicas: spec.replicas,
        running,
        revision: s.revision,
        command: spec.command,
        env: spec.env.into_iter().collect(),
        port: spec.port.map(|p| PortJson {
            container: p.container,
            protocol: p.protocol,
            listen: p.listen,
        }),
        unplaced: unplaced.to_string(),
        created: rfc3339(s.created_unix_ms),
        updated: rfc3339(s.updated_unix_ms),
    }
}

async fn ls(conn: &mut Conn, format: Format) -> Result<(), CliError> {
    let list = conn
        .client
        .list_services(ListServicesRequest {})
        .await
        .map_err(|s| conn.err(s))?
        .into_inner()
        .services;
    let rows: Vec<ServiceJson> = list
        .iter()
        .map(|s| {
            service_json(
                s.service.as_ref().unwrap_or(&Default::default()),
                s.running,
                &s.unplaced,
            )
        })
        .collect();
    match format {
        Format::Json => print_json(&rows),
        Format::Table => print_table(
            &["NAME", "IMAGE", "REPLICAS", "REVISION", "LISTEN"],
            &rows
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.image.clone(),
                        format!("{}/{}", s.running, s.replicas),
                        s.revision.to_string(),
                        s.port
                            .as_ref()
                            .map(|p| format!("{} ({})", p.listen, p.protocol))
                            .unwrap_or_default(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct InspectJson {
    #[serde(flatten)]
    service: ServiceJson,
    tasks: Vec<TaskJson>,
}

async fn inspect(conn: &mut Conn, name: &str, format: Format) -> Result<(), CliError> {
    let resp = conn.inspect_service(name).await?;
    let progress = crate::wait::progress(&resp);
    let svc = service_json(
        resp.service.as_ref().unwrap_or(&Default::default()),
        progress.ready,
        &resp.unplaced,
    );
    match format {
        Format::Json => print_json(&InspectJson {
            service: svc,
            tasks: resp.tasks.iter().map(TaskJson::from_view).collect(),
        }),
        Format::Table => {
            println!("Name:      {}", svc.name);
            println!("Image:     {}", svc.image);
            println!(
                "Replicas:  {} desired, {} running",
                svc.replicas, svc.running
            );
            if !svc.unplaced.is_empty() {
                println!("Unplaced:  {}", svc.unplaced);
            }
            println!("Revision:  {}", svc.revision);
            if !svc.command.is_empty() {
                println!("Command:   {}", svc.command.join(" "));
            }
            for (k, v) in &svc.env {
                println!("Env:       {k}={v}");
            }
            if let Some(p) = &svc.port {
                println!(
                    "Port:      {} ({}), served on {}",
                    p.container,
                    p.protocol,
                    if p.listen.is_empty() { "-" } else { &p.listen }
                );
            }
            println!("Created:   {}", svc.created);
            println!("Updated:   {}", svc.updated);
            println!();
            print_tasks(&resp.tasks);
        }
    }
    Ok(())
}

async fn rm(conn: &mut Conn, names: &[String]) -> Result<(), CliError> {
    for name in names {
        conn.write(|mut c| async move {
            c.remove_service(RemoveServiceRequest { name: name.clone() })
                .await
        })
        .await?;
        println!("{name}");
    }
    Ok(())
}
