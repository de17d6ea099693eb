//! `rctl-agent`: parses flags and runs the agent library; `rctl-agent __shim DIR` is the
//! hidden per-container shim the agent starts for itself.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// The rctl per-host agent: runs the tasks the scheduler places on this host.
#[derive(Parser, Debug)]
#[command(name = "rctl-agent", version)]
struct Args {
    /// etcd endpoint.
    #[arg(long, default_value = rctl_api::DEFAULT_ETCD, env = "RCTL_ETCD")]
    etcd: String,
    /// State directory (images, layers, containers).
    #[arg(long, default_value = "/var/lib/rctl")]
    root: PathBuf,
    /// This node's name in the cluster.
    #[arg(long)]
    node_name: String,
    /// The host IP the scheduler reaches this agent on and published ports are bound to.
    #[arg(long)]
    advertise_ip: Ipv4Addr,
    /// gRPC listen address (default ADVERTISE_IP:7700).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Container subnet of this host, e.g. 198.19.1.0/24; the bridge gets its first address.
    #[arg(long)]
    subnet: String,
    /// Bridge the containers are attached to.
    #[arg(long, default_value = "rctl0")]
    bridge: String,
    /// Registry (HOST:PORT) to reach over plain HTTP; repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registry: Vec<String>,
    /// TTL of the node lease, in seconds: how long after a host dies its tasks are replaced.
    #[arg(long, default_value_t = 5)]
    lease_ttl: u64,
    /// Node labels, k=v (repeatable or comma-separated).
    #[arg(long = "labels", value_delimiter = ',')]
    labels: Vec<String>,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    tls: rctl_api::tls::TlsArgs,
}

fn main() -> anyhow::Result<()> {
    // The shim must stay single-threaded: dispatch before any runtime exists.
    let argv: Vec<_> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "__shim") {
        let dir = argv.get(2).context("usage: rctl-agent __shim DIR")?;
        std::process::exit(rctl_agent::shim::main(std::path::Path::new(dir)));
    }
    let args = Args::parse();
    let security = args.tls.security_or_exit();
    if let Err(e) = security.check_url(&args.etcd, "--etcd") {
        rctl_api::tls::usage_exit(&e.to_string());
    }
    if let Some(tls) = security.tls() {
        if let Err(why) = rctl_agent::check_identity(tls.identity(), &args.node_name) {
            rctl_api::tls::usage_exit(&why);
        }
    }
    let mut labels = HashMap::new();
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("label {l:?} is not k=v"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let cfg = rctl_agent::AgentConfig {
        etcd: args.etcd,
        root: args.root,
        listen: args.listen.unwrap_or(SocketAddr::from((
            args.advertise_ip,
            rctl_api::DEFAULT_AGENT_PORT,
        ))),
        node_name: args.node_name,
        advertise_ip: args.advertise_ip,
        subnet: rctl_agent::Subnet::parse(&args.subnet)?,
        bridge: args.bridge,
        insecure_registries: args.insecure_registry,
        lease_ttl: args.lease_ttl,
        labels,
        metrics_addr: args.metrics_addr,
        security,
    };
    let res = tokio::runtime::Runtime::new()?.block_on(async move {
        let _telemetry = rctl_api::telemetry::init("rctl-agent", "info");
        let token = tokio_util::sync::CancellationToken::new();
        let mut agent = tokio::spawn(rctl_agent::run(cfg, token.clone()));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            r = &mut agent => return r?.map_err(anyhow::Error::from),
        }
        tracing::info!("shutting down; containers keep running");
        token.cancel();
        match tokio::time::timeout(std::time::Duration::from_secs(10), agent).await {
            Ok(r) => r?.map_err(anyhow::Error::from),
            Err(_) => anyhow::bail!("agent did not stop within 10s"),
        }
    });
    // One line, as every rctl binary reports a fatal error.
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}
