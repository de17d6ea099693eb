//! rctl, the command-line client: one module per command group, all talking to the
//! scheduler's gRPC API. `run` returns the process exit code (PRODUCT.md "CLI").
#![forbid(unsafe_code)]

pub mod apply;
pub mod attach;
pub mod client;
pub mod cluster;
pub mod container;
pub mod error;
pub mod exec;
pub mod images;
pub mod inspect;
pub mod login;
pub mod logs;
pub mod nodes;
pub mod output;
pub mod progress;
pub mod registry_auth;
pub mod rollout;
pub mod run;
pub mod scale;
pub mod service;
pub mod service_file;
pub mod stats;
pub mod system;
pub mod top;
pub mod wait;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing::Instrument;

use crate::client::{Conn, Target};
use crate::error::CliError;
use crate::output::Format;

#[derive(Parser, Debug)]
#[command(
    name = "rctl",
    version,
    about = "rctl: containers on one host, services across many"
)]
pub struct Cli {
    /// Scheduler API address; several replicas comma-separated (writes follow the leader).
    /// https:// is mutual TLS with the files in --tls-dir; http:// is plaintext and needs
    /// --insecure.
    #[arg(
        long,
        global = true,
        env = "RCTL_ADDR",
        default_value = "https://127.0.0.1:7600"
    )]
    pub addr: String,
    /// Directory holding ca.crt and this client's NAME.crt/NAME.key [default: ~/.rctl/tls]
    #[arg(long, global = true, env = "RCTL_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Which certificate in --tls-dir to present.
    #[arg(long, global = true, env = "RCTL_TLS_NAME", default_value = "client")]
    pub tls_name: String,
    /// Allow a plaintext http:// scheduler address (local development only).
    #[arg(long, global = true, env = "RCTL_INSECURE",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
    #[command(subcommand)]
    pub command: Command,
}

fn duration(s: &str) -> Result<Duration, String> {
    service_file::parse_duration(s)
        .ok_or_else(|| format!("cannot read {s:?} as a duration (e.g. 90s, 5m)"))
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create or update a service from a service file.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Block until the service is at its desired state and healthy.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "5m", value_parser = duration)]
        timeout: Duration,
        /// Why, recorded with the new revision (default: a summary of the change).
        #[arg(short = 'm', long)]
        message: Option<String>,
        /// `json`: the result as `rollout status -o json` prints it, once the change is
        /// written (or, with --wait, once it ended); progress goes to stderr.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Set the number of replicas of services: NAME=N ...
    Scale {
        #[arg(required = true, value_name = "NAME=N")]
        targets: Vec<String>,
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "5m", value_parser = duration)]
        timeout: Duration,
    },
    /// Revisions and rollouts of a service.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Return a service to an earlier revision (default: the previous one); it rolls out
    /// surge-first like any change, as a new revision.
    Rollback {
        name: String,
        /// The revision to return to (see: rctl rollout history NAME).
        #[arg(long)]
        to: Option<u64>,
        /// Why, recorded with the new revision.
        #[arg(short = 'm', long)]
        message: Option<String>,
        /// Block until the service runs the restored spec and is healthy.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "5m", value_parser = duration)]
        timeout: Duration,
        /// `json`: the result as `rollout status -o json` prints it, once the change is
        /// written (or, with --wait, once it ended); progress goes to stderr.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// List containers: one-off ones (rctl run) and service tasks.
    Ps {
        /// Include exited containers and retired tasks.
        #[arg(short = 'a', long)]
        all: bool,
        /// Only short ids.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// name=, status=, node=, service= or id= (repeatable).
        #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        node: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// List nodes.
    Nodes {
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Manage services.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Manage nodes.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Cluster CA and certificates (local files; no scheduler needed).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    // === images (issue 5) ===
    /// List the images on the nodes.
    Images(ImagesArgs),
    /// Pull an image onto every ready node (or --node): NAME[:TAG] or NAME@sha256:DIGEST.
    Pull(PullArgs),
    /// Remove images (refused while a container uses one, unless -f).
    Rmi(RmiArgs),
    /// Manage images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Show what TARGET names (an image) as JSON.
    Inspect {
        target: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Disk usage and clean-up on the nodes.
    System {
        #[command(subcommand)]
        command: SystemCommand,
    },
    /// Check and store credentials for a registry (in $RCTL_CONFIG/config.json).
    Login {
        /// HOST[:PORT]
        registry: String,
        #[arg(short = 'u', long = "username")]
        username: Option<String>,
        #[arg(short = 'p', long = "password")]
        password: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Check the login over plain HTTP (a registry the agents reach with
        /// --insecure-registry); registries on this host always are.
        #[arg(long)]
        plain_http: bool,
    },
    /// Forget the stored credentials for a registry.
    Logout { registry: String },
    // === streams (issue 9): proxied by the scheduler to the container's agent ===
    /// Show the log of a container, a task or a whole service (replicas merged by time).
    Logs {
        /// Keep following new lines (across restarts) until ^C or the container is removed.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines (of each replica), or "all".
        #[arg(short = 'n', long, value_name = "N")]
        tail: Option<String>,
        /// Only lines since a duration ago (10m) or a time (RFC 3339).
        #[arg(long, value_name = "DUR|TIME")]
        since: Option<String>,
        /// Show each line's timestamp.
        #[arg(short = 't', long)]
        timestamps: bool,
        target: String,
    },
    /// Run a command in a running container; exits with the command's code.
    Exec {
        /// Keep stdin open and stream it to the command.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Allocate a terminal (the local one goes into raw mode).
        #[arg(short = 't', long)]
        tty: bool,
        /// Set an environment variable (NAME=VALUE, or NAME for this side's value).
        #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Run as this user (name, uid or uid:gid).
        #[arg(short = 'u', long)]
        user: Option<String>,
        /// Working directory inside the container.
        #[arg(short = 'w', long)]
        workdir: Option<String>,
        target: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Attach the local terminal to a running container's stdio.
    Attach { target: String },
    /// Live CPU, memory, network and pids of containers (default: every running one).
    Stats {
        /// Print one sample and exit.
        #[arg(long)]
        no_stream: bool,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
        targets: Vec<String>,
    },
    /// The processes running in a container.
    Top { target: String },
    // === containers (issue 9) ===
    /// Run a command in a new container, on any node (or --node).
    Run(Box<run::RunArgs>),
    /// Start stopped or exited containers.
    Start {
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Stop running containers (stop signal, then SIGKILL after the timeout).
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short = 't', long = "time")]
        time: Option<u64>,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Restart containers.
    Restart {
        /// Seconds to wait before SIGKILL.
        #[arg(short = 't', long = "time")]
        time: Option<u64>,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Send a signal (default KILL) to running containers.
    Kill {
        #[arg(short = 's', long = "signal", default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Remove containers (-f: also running ones).
    Rm {
        #[arg(short = 'f', long)]
        force: bool,
        /// Also remove the container's anonymous volumes (named volumes and bind mounts stay).
        #[arg(short = 'v', long)]
        volumes: bool,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Rename a container.
    Rename { old: String, new: String },
    /// The published ports of a container.
    Port { target: String },
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Show an image's config, layers and sizes as JSON.
    Inspect {
        image: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Same as `rctl images`.
    Ls(ImagesArgs),
    /// Same as `rctl pull`.
    Pull(PullArgs),
    /// Same as `rctl rmi`.
    Rm(RmiArgs),
}

/// `rctl images` and `rctl image ls`.
#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Show all images (there are no intermediate images: same as without).
    #[arg(short = 'a', long)]
    all: bool,
    /// Only image ids.
    #[arg(short = 'q', long)]
    quiet: bool,
    #[arg(long)]
    node: Option<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    output: Format,
}

/// `rctl pull` and `rctl image pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    image: String,
    #[arg(long)]
    node: Option<String>,
}

/// `rctl rmi` and `rctl image rm`.
#[derive(Args, Debug)]
pub struct RmiArgs {
    #[arg(required = true)]
    images: Vec<String>,
    #[arg(short = 'f', long)]
    force: bool,
    #[arg(long)]
    node: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum SystemCommand {
    /// Space used by images, containers and volumes, and what could be reclaimed.
    Df {
        /// Also list the images.
        #[arg(short = 'v', long)]
        verbose: bool,
        #[arg(long)]
        node: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Remove stopped containers (not service tasks), unused data and, with -a, every
    /// image no container uses.
    Prune {
        #[arg(short = 'a', long)]
        all: bool,
        /// Also remove volumes no container uses.
        #[arg(long)]
        volumes: bool,
        /// Do not ask (required when not on a terminal).
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Certificates signed by the cluster CA.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Make a new cluster CA (ca.crt, ca.key) in --dir.
    Init {
        /// TLS directory [default: $RCTL_TLS_DIR, else ~/.rctl/tls]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Cluster name, shown in the CA's subject.
        #[arg(long, default_value = "rctl")]
        name: String,
        /// Replace an existing CA (every certificate it issued stops being trusted).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Issue NAME.crt and NAME.key for a component or user, signed by the CA in --dir.
    Issue {
        /// What the certificate may do: scheduler, agent, lb, client or etcd.
        #[arg(long, value_parser = parse_role)]
        role: rctl_api::tls::Role,
        /// Who holds it (CN and DNS SAN); for an agent, its node name.
        name: String,
        /// IP address SANs (repeatable or comma-separated), e.g. the address servers listen on.
        #[arg(long, value_delimiter = ',')]
        ip: Vec<std::net::IpAddr>,
        /// Extra DNS SANs (repeatable or comma-separated).
        #[arg(long, value_delimiter = ',')]
        dns: Vec<String>,
        /// TLS directory [default: $RCTL_TLS_DIR, else ~/.rctl/tls]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Replace an existing certificate of that name.
        #[arg(long)]
        force: bool,
    },
}

fn parse_role(s: &str) -> Result<rctl_api::tls::Role, String> {
    s.parse()
        .map_err(|e: rctl_api::tls::TlsError| e.to_string())
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Take no new tasks on NODE and move its tasks elsewhere (surge-first).
    Drain { name: String },
    /// Let NODE take new tasks again; running tasks stay where they are.
    Activate { name: String },
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Roll the service out to another image (surge-first per [update]); exit 3 if rctl
    /// rolls it back by itself because the new revision never turns healthy.
    Start {
        name: String,
        #[arg(long)]
        image: String,
        /// Why, recorded with the new revision (default: "image: OLD → NEW").
        #[arg(short = 'm', long)]
        message: Option<String>,
        /// Block until every task runs the new revision, healthy (or it is rolled back).
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "5m", value_parser = duration)]
        timeout: Duration,
        /// Roll out as a canary per [canary]: canary.replicas new tasks next to the stable
        /// ones, traffic moved step by step while the LB's figures pass the rules, then
        /// finished (exit 0) or rolled back by itself (exit 3).
        #[arg(long)]
        canary: bool,
        /// `json`: the result as `rollout status -o json` prints it, once the change is
        /// written (or, with --wait, once it ended); progress goes to stderr.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Pass the running canary's current step now (at the last step: finish it).
    Promote { name: String },
    /// Roll the running canary back (its weight to 0 first, then its tasks stop).
    Abort { name: String },
    /// Each judged canary step's figures (requests, 5xx, error rate, p99 canary vs stable)
    /// and the rule that decided.
    Explain {
        name: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Where the service's latest change stands: rolling, done or rolled_back (and why).
    Status {
        name: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// The kept revisions of a service (newest 10), with who made each and why.
    History {
        name: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// List services.
    Ls {
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Show a service and its tasks.
    Inspect {
        name: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Remove services (their tasks are stopped).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

impl Command {
    /// The command's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Apply { .. } => "apply",
            Command::Scale { .. } => "scale",
            Command::Rollout { .. } => "rollout",
            Command::Rollback { .. } => "rollback",
            Command::Ps { .. } => "ps",
            Command::Nodes { .. } => "nodes",
            Command::Service { .. } => "service",
            Command::Node { .. } => "node",
            Command::Cluster { .. } => "cluster",
            Command::Images(_) => "images",
            Command::Pull(_) => "pull",
            Command::Rmi(_) => "rmi",
            Command::Image { .. } => "image",
            Command::Inspect { .. } => "inspect",
            Command::System { .. } => "system",
            Command::Login { .. } => "login",
            Command::Logout { .. } => "logout",
            Command::Logs { .. } => "logs",
            Command::Exec { .. } => "exec",
            Command::Attach { .. } => "attach",
            Command::Stats { .. } => "stats",
            Command::Top { .. } => "top",
            Command::Run(_) => "run",
            Command::Start { .. } => "start",
            Command::Stop { .. } => "stop",
            Command::Restart { .. } => "restart",
            Command::Kill { .. } => "kill",
            Command::Rm { .. } => "rm",
            Command::Rename { .. } => "rename",
            Command::Port { .. } => "port",
        }
    }
}

/// Runs one parsed command line; prints errors as one line and returns the exit code.
pub async fn run(cli: Cli) -> i32 {
    // The root span of the command's distributed trace (when OTLP export is on).
    let span = tracing::info_span!("rctl", command = cli.command.name());
    match dispatch(cli).instrument(span).await {
        Ok(()) => 0,
        Err(CliError::Exit(code)) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), CliError> {
    // Validate local input before touching the network, so bad input fails fast with exit 2.
    match &cli.command {
        Command::Apply { file, .. } => {
            service_file::load(file).map_err(|e| CliError::Usage(e.to_string()))?;
        }
        Command::Scale { targets, .. } => {
            for t in targets {
                scale::parse_target(t)?;
            }
        }
        Command::Cluster { command } => return run_cluster(command, cli.tls_dir.as_deref()),
        Command::Login {
            registry,
            username,
            password,
            password_stdin,
            plain_http,
        } => {
            return login::login(
                registry,
                username.clone(),
                password.clone(),
                *password_stdin,
                *plain_http,
            )
            .await
        }
        Command::Logout { registry } => return login::logout(registry),
        Command::Pull(PullArgs { image, .. })
        | Command::Image {
            command: ImageCommand::Pull(PullArgs { image, .. }),
        } => registry_auth::check_reference(image).map_err(CliError::Usage)?,
        Command::Logs {
            tail,
            since,
            target,
            ..
        } => {
            let a = logs::LogsArgs {
                target: target.clone(),
                tail: tail.clone(),
                since: since.clone(),
                ..Default::default()
            };
            logs::request(&a, std::time::SystemTime::now())?;
        }
        Command::Run(a) => {
            run::build(a)?;
        }
        Command::Kill { signal, .. } => {
            container::parse_signal(signal).map_err(CliError::Usage)?;
        }
        Command::Ps { filter, .. } => {
            container::parse_filters(filter).map_err(CliError::Usage)?;
        }
        Command::Exec { cmd, env, .. } => exec::validate(&exec::ExecArgs {
            cmd: cmd.clone(),
            env: env.clone(),
            ..Default::default()
        })?,
        _ => {}
    }
    let target = Target {
        addr: cli.addr.clone(),
        tls_dir: cli.tls_dir.clone().unwrap_or_else(client::default_tls_dir),
        tls_name: cli.tls_name.clone(),
        insecure: cli.insecure,
    };
    let mut conn = Conn::open(&target).await?;
    match cli.command {
        Command::Apply {
            file,
            wait,
            timeout,
            message,
            output,
        } => apply::run(&mut conn, &file, wait, timeout, message, output).await,
        Command::Rollout { command } => match command {
            RolloutCommand::Start {
                name,
                image,
                message,
                wait,
                timeout,
                canary,
                output,
            } => {
                let res = rollout::start(
                    &mut conn, &name, &image, message, canary, wait, timeout, output,
                )
                .await;
                rollout::report(&mut conn, &name, output, res).await
            }
            RolloutCommand::Promote { name } => rollout::control(&mut conn, &name, "promote").await,
            RolloutCommand::Abort { name } => rollout::control(&mut conn, &name, "abort").await,
            RolloutCommand::Explain { name, output } => {
                rollout::explain(&mut conn, &name, output).await
            }
            RolloutCommand::Status { name, output } => {
                rollout::status(&mut conn, &name, output).await
            }
            RolloutCommand::History { name, output } => {
                rollout::history(&mut conn, &name, output).await
            }
        },
        Command::Rollback {
            name,
            to,
            message,
            wait,
            timeout,
            output,
        } => {
            let res = rollout::rollback(&mut conn, &name, to, message, wait, timeout, output).await;
            rollout::report(&mut conn, &name, output, res).await
        }
        Command::Scale {
            targets,
            wait,
            timeout,
        } => scale::run(&mut conn, &targets, wait, timeout).await,
        Command::Ps {
            all,
            quiet,
            filter,
            service,
            node,
            output,
        } => container::ps(&mut conn, all, quiet, filter, service, node, output).await,
        Command::Nodes { output } => nodes::run(&mut conn, output).await,
        Command::Service { command } => match command {
            ServiceCommand::Ls { output } => service::ls(&mut conn, output).await,
            ServiceCommand::Inspect { name, output } => {
                service::inspect(&mut conn, &name, output).await
            }
            ServiceCommand::Rm { names } => service::rm(&mut conn, &names).await,
        },
        Command::Node { command } => match command {
            NodeCommand::Drain { name } => nodes::drain(&mut conn, &name).await,
            NodeCommand::Activate { name } => nodes::activate(&mut conn, &name).await,
        },
        Command::Images(a)
        | Command::Image {
            command: ImageCommand::Ls(a),
        } => images::list(&mut conn, a.all, a.quiet, a.node, a.output).await,
        Command::Pull(a)
        | Command::Image {
            command: ImageCommand::Pull(a),
        } => images::pull(&mut conn, &a.image, a.node).await,
        Command::Rmi(a)
        | Command::Image {
            command: ImageCommand::Rm(a),
        } => images::rmi(&mut conn, &a.images, a.force, a.node).await,
        Command::Image {
            command: ImageCommand::Inspect { image, node },
        } => images::inspect_image(&mut conn, &image, node).await,
        Command::Inspect { target, node } => inspect::run(&mut conn, &target, node).await,
        Command::System { command } => match command {
            SystemCommand::Df {
                verbose,
                node,
                output,
            } => system::df(&mut conn, verbose, node, output).await,
            SystemCommand::Prune {
                all,
                volumes,
                force,
                node,
            } => system::prune(&mut conn, all, volumes, force, node).await,
        },
        Command::Cluster { .. } | Command::Login { .. } | Command::Logout { .. } => {
            unreachable!("handled before connecting")
        }
        // === streams (issue 9) ===
        Command::Logs {
            follow,
            tail,
            since,
            timestamps,
            target,
        } => {
            let a = logs::LogsArgs {
                target,
                follow,
                tail,
                since,
                timestamps,
            };
            logs::run(&conn, a).await
        }
        Command::Exec {
            interactive,
            tty,
            env,
            user,
            workdir,
            target,
            cmd,
        } => {
            let a = exec::ExecArgs {
                target,
                cmd,
                env,
                user,
                workdir,
                interactive,
                tty,
            };
            Err(CliError::Exit(exec::run(&conn, a).await?))
        }
        Command::Attach { target } => Err(CliError::Exit(attach::run(&conn, &target).await?)),
        Command::Stats {
            no_stream,
            output,
            targets,
        } => stats::run(&conn, targets, no_stream, output).await,
        Command::Top { target } => top::run(&conn, &target).await,
        // === containers (issue 9) ===
        Command::Run(a) => run::run(&mut conn, *a).await,
        Command::Start { targets } => {
            let req = Default::default();
            container::each(&mut conn, container::Verb::Start, &targets, req).await
        }
        Command::Stop { time, targets } => {
            let req = rctl_api::pb::ContainerRequest {
                timeout_ms: time.map(stop_timeout_ms).unwrap_or(0),
                ..Default::default()
            };
            container::each(&mut conn, container::Verb::Stop, &targets, req).await
        }
        Command::Restart { time, targets } => {
            let req = rctl_api::pb::ContainerRequest {
                timeout_ms: time.map(stop_timeout_ms).unwrap_or(0),
                ..Default::default()
            };
            container::each(&mut conn, container::Verb::Restart, &targets, req).await
        }
        Command::Kill { signal, targets } => {
            let req = rctl_api::pb::ContainerRequest {
                signal: container::parse_signal(&signal).map_err(CliError::Usage)?,
                ..Default::default()
            };
            container::each(&mut conn, container::Verb::Kill, &targets, req).await
        }
        Command::Rm {
            force,
            volumes,
            targets,
        } => {
            let req = rctl_api::pb::ContainerRequest {
                force,
                volumes,
                ..Default::default()
            };
            container::each(&mut conn, container::Verb::Remove, &targets, req).await
        }
        Command::Rename { old, new } => container::rename(&mut conn, &old, &new).await,
        Command::Port { target } => container::port(&mut conn, &target).await,
    }
}

/// `-t SECONDS` as the API's grace period; 0 ms means "the default" there, so `-t 0`
/// (kill at once) is sent as 1 ms.
fn stop_timeout_ms(secs: u64) -> u64 {
    (secs * 1000).max(1)
}

/// The `cluster` commands work on local files only.
fn run_cluster(
    command: &ClusterCommand,
    tls_dir: Option<&std::path::Path>,
) -> Result<(), CliError> {
    let dir = |d: &Option<PathBuf>| {
        d.clone()
            .or_else(|| tls_dir.map(PathBuf::from))
            .unwrap_or_else(client::default_tls_dir)
    };
    match command {
        ClusterCommand::Ca {
            command:
                CaCommand::Init {
                    dir: d,
                    name,
                    force,
                },
        } => cluster::ca_init(&dir(d), name, *force),
        ClusterCommand::Cert {
            command:
                CertCommand::Issue {
                    role,
                    name,
                    ip,
                    dns,
                    dir: d,
                    force,
                },
        } => cluster::cert_issue(&dir(d), *role, name, ip, dns, *force),
    }
}
