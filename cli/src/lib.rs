//! rctl, the command-line client: one module per command group, all talking to the
//! scheduler's gRPC API. `run` returns the process exit code (PRODUCT.md "CLI").
//!
//! # Layout
//!
//! Each command's module owns its clap arguments (an `Args` struct, or a `Subcommand` enum
//! for a group such as `rollout`) and runs them: `run(self, &Global)` checks the local input
//! (bad input fails with exit 2 before any network use), opens the connection if it needs
//! one, and returns `Ok` or a [`CliError`] that decides the exit code. This file only lists
//! the commands: to add one, write its module and add a variant to [`Command`] and a line
//! to [`Command::run`]. The options every command takes are in [`global`], value parsers
//! shared by several commands in [`values`].
#![forbid(unsafe_code)]

pub mod apply;
pub mod attach;
pub mod client;
pub mod cluster;
pub mod container;
pub mod error;
pub mod exec;
pub mod global;
pub mod images;
pub mod inspect;
pub mod login;
pub mod logs;
pub mod nodes;
pub mod output;
pub mod progress;
pub mod registry_auth;
#[cfg(test)]
mod render_props;
pub mod rollback;
pub mod rollout;
pub mod run;
pub mod scale;
pub mod service;
pub mod service_file;
pub mod stats;
pub mod system;
pub mod top;
pub mod values;
pub mod wait;

use std::future::Future;

use clap::{Parser, Subcommand};
use tracing::Instrument;

use crate::error::CliError;
use crate::global::Global;

#[derive(Parser, Debug)]
#[command(
    name = "rctl",
    version,
    about = "rctl: containers on one host, services across many"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Every command, in the order `rctl --help` lists them; the doc line is the command's
/// summary there.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create or update a service from a service file.
    Apply(apply::ApplyArgs),
    /// Set the number of replicas of services: NAME=N ...
    Scale(scale::ScaleArgs),
    /// Revisions and rollouts of a service.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Return a service to an earlier revision (default: the previous one); it rolls out
    /// surge-first like any change, as a new revision.
    Rollback(rollback::RollbackArgs),
    /// List containers: one-off ones (rctl run) and service tasks.
    Ps(container::PsArgs),
    /// List nodes.
    Nodes(nodes::NodesArgs),
    /// Manage services.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Manage nodes.
    #[command(subcommand)]
    Node(nodes::NodeCommand),
    /// Cluster CA and certificates (local files; no scheduler needed).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    // === images (issue 5) ===
    /// List the images on the nodes.
    Images(images::ImagesArgs),
    /// Pull an image onto every ready node (or --node): NAME[:TAG] or NAME@sha256:DIGEST.
    Pull(images::PullArgs),
    /// Remove images (refused while a container uses one, unless -f).
    Rmi(images::RmiArgs),
    /// Manage images.
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Show what TARGET names (an image) as JSON.
    Inspect(inspect::InspectArgs),
    /// Disk usage and clean-up on the nodes.
    #[command(subcommand)]
    System(system::SystemCommand),
    /// Check and store credentials for a registry (in $RCTL_CONFIG/config.json).
    Login(login::LoginArgs),
    /// Forget the stored credentials for a registry.
    Logout(login::LogoutArgs),
    // === streams (issue 9): proxied by the scheduler to the container's agent ===
    /// Show the log of a container, a task or a whole service (replicas merged by time).
    Logs(logs::LogsArgs),
    /// Run a command in a running container; exits with the command's code.
    Exec(exec::ExecArgs),
    /// Attach the local terminal to a running container's stdio.
    Attach(attach::AttachArgs),
    /// Live CPU, memory, network and pids of containers (default: every running one).
    Stats(stats::StatsArgs),
    /// The processes running in a container.
    Top(top::TopArgs),
    // === containers (issue 9) ===
    /// Run a command in a new container, on any node (or --node).
    Run(Box<run::RunArgs>),
    /// Start stopped or exited containers.
    Start(container::StartArgs),
    /// Stop running containers (stop signal, then SIGKILL after the timeout).
    Stop(container::StopArgs),
    /// Restart containers.
    Restart(container::StopArgs),
    /// Send a signal (default KILL) to running containers.
    Kill(container::KillArgs),
    /// Remove containers (-f: also running ones).
    Rm(container::RmArgs),
    /// Rename a container.
    Rename(container::RenameArgs),
    /// The published ports of a container.
    Port(container::PortArgs),
}

impl Command {
    /// Runs the command inside the root span of its distributed trace (when OTLP export
    /// is on), named as typed.
    async fn run(self, g: &Global) -> Result<(), CliError> {
        match self {
            Command::Apply(a) => traced("apply", a.run(g)).await,
            Command::Scale(a) => traced("scale", a.run(g)).await,
            Command::Rollout(c) => traced("rollout", c.run(g)).await,
            Command::Rollback(a) => traced("rollback", a.run(g)).await,
            Command::Ps(a) => traced("ps", a.run(g)).await,
            Command::Nodes(a) => traced("nodes", a.run(g)).await,
            Command::Service(c) => traced("service", c.run(g)).await,
            Command::Node(c) => traced("node", c.run(g)).await,
            Command::Cluster(c) => traced("cluster", c.run(g)).await,
            Command::Images(a) => traced("images", a.run(g)).await,
            Command::Pull(a) => traced("pull", a.run(g)).await,
            Command::Rmi(a) => traced("rmi", a.run(g)).await,
            Command::Image(c) => traced("image", c.run(g)).await,
            Command::Inspect(a) => traced("inspect", a.run(g)).await,
            Command::System(c) => traced("system", c.run(g)).await,
            Command::Login(a) => traced("login", a.run(g)).await,
            Command::Logout(a) => traced("logout", a.run(g)).await,
            Command::Logs(a) => traced("logs", a.run(g)).await,
            Command::Exec(a) => traced("exec", a.run(g)).await,
            Command::Attach(a) => traced("attach", a.run(g)).await,
            Command::Stats(a) => traced("stats", a.run(g)).await,
            Command::Top(a) => traced("top", a.run(g)).await,
            Command::Run(a) => traced("run", a.run(g)).await,
            Command::Start(a) => traced("start", a.run(g)).await,
            Command::Stop(a) => traced("stop", a.stop(g)).await,
            Command::Restart(a) => traced("restart", a.restart(g)).await,
            Command::Kill(a) => traced("kill", a.run(g)).await,
            Command::Rm(a) => traced("rm", a.run(g)).await,
            Command::Rename(a) => traced("rename", a.run(g)).await,
            Command::Port(a) => traced("port", a.run(g)).await,
        }
    }
}

/// `fut` inside the command's root span.
fn traced<F: Future>(command: &'static str, fut: F) -> tracing::instrument::Instrumented<F> {
    fut.instrument(tracing::info_span!("rctl", command))
}

/// Runs one parsed command line; prints errors as one line and returns the exit code.
pub async fn run(cli: Cli) -> i32 {
    match cli.command.run(&cli.global).await {
        Ok(()) => 0,
        Err(CliError::Exit(code)) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("rctl").chain(line.split_whitespace()))
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        // Panics on clashing names, a bad default, a positional after a var-arg, ...
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_is_listed_once_in_help_order() {
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        assert_eq!(
            names.join(" "),
            "apply scale rollout rollback ps nodes service node cluster images pull rmi image \
             inspect system login logout logs exec attach stats top run start stop restart \
             kill rm rename port"
        );
    }

    #[test]
    fn representative_command_lines_parse_into_their_modules_args() {
        let cli = parse("--addr http://h:1 --insecure apply -f svc.toml --wait -o json").unwrap();
        assert_eq!(cli.global.addr, "http://h:1");
        assert!(cli.global.insecure);
        let Command::Apply(a) = cli.command else {
            panic!("not apply")
        };
        assert_eq!(a.file, std::path::PathBuf::from("svc.toml"));
        assert!(a.wait);
        assert_eq!(a.timeout, std::time::Duration::from_secs(300));
        assert_eq!(a.output, output::Format::Json);

        // Global options go after the command too.
        let cli = parse("scale web=3 api=1 --timeout 90s --tls-name ops").unwrap();
        assert_eq!(cli.global.tls_name, "ops");
        let Command::Scale(a) = cli.command else {
            panic!("not scale")
        };
        assert_eq!(a.targets, ["web=3", "api=1"]);
        assert_eq!(a.timeout, std::time::Duration::from_secs(90));

        let cli = parse("rollout start web --image app:2 --canary").unwrap();
        assert!(matches!(
            cli.command,
            Command::Rollout(rollout::RolloutCommand::Start { canary: true, ref image, .. })
                if image == "app:2"
        ));

        let cli = parse("image ls -q").unwrap();
        assert!(matches!(cli.command, Command::Image(images::ImageCommand::Ls(ref a)) if a.quiet));

        let cli = parse("stop -t 0 a b").unwrap();
        let Command::Stop(a) = cli.command else {
            panic!("not stop")
        };
        assert_eq!((a.time, a.targets.len()), (Some(0), 2));

        // Everything after the target is the command, flags included.
        let cli = parse("exec -it web.1 ls -la").unwrap();
        let Command::Exec(a) = cli.command else {
            panic!("not exec")
        };
        assert!(a.interactive && a.tty);
        assert_eq!(
            (a.target.as_str(), a.cmd.join(" ")),
            ("web.1", "ls -la".into())
        );

        let cli = parse("run -d -p 8080:80 alpine sleep 1").unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert!(a.detach);
        assert_eq!(a.publish, ["8080:80"]);
        assert_eq!((a.image.as_str(), a.cmd.len()), ("alpine", 2));

        let cli = parse("cluster cert issue --role agent h1 --ip 10.0.0.1,10.0.0.2").unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster(cluster::ClusterCommand::Cert { .. })
        ));
    }

    /// Every argument of every command, as `command path: --long/-s/NAME`, that has no help
    /// text (`rctl CMD --help` would show it bare).
    fn arguments_without_help(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if matches!(id, "help" | "version") || a.is_hide_set() {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                let name = match (a.get_long(), a.get_short()) {
                    (Some(l), _) => format!("--{l}"),
                    (None, Some(s)) => format!("-{s}"),
                    _ => id.to_uppercase(),
                };
                out.push(format!("{path}: {name}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            if sub.get_about().is_none() {
                out.push(format!("{path} {}: (no summary)", sub.get_name()));
            }
            arguments_without_help(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_and_command_has_help() {
        let mut missing = Vec::new();
        arguments_without_help(&Cli::command(), "rctl", &mut missing);
        assert!(
            missing.is_empty(),
            "{} without help:\n{}",
            missing.len(),
            missing.join("\n")
        );
    }

    #[test]
    fn bad_command_lines_are_refused_by_the_parser() {
        for line in [
            "",
            "bogus",
            "apply",
            "apply -f x --timeout 5x",
            "scale",
            "rollout",
            "rollout status web -o yaml",
            "rollback web --to x",
            "exec web.1",
            "kill",
            "cluster cert issue --role nope x",
            "--insecure=maybe ps",
        ] {
            assert!(parse(line).is_err(), "{line:?} parsed");
        }
    }
}
