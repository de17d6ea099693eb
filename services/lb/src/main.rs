//! `rctl-lb`: parses flags and runs the load balancer library until SIGTERM or SIGINT.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// rctl's load balancer: serves each service on its `listen` address and proxies to its
/// healthy endpoints, as registered in etcd.
#[derive(Debug, Parser)]
#[command(name = "rctl-lb", version)]
struct Args {
    /// etcd endpoint holding rctl's state.
    #[arg(long, env = "RCTL_ETCD", default_value = rctl_api::DEFAULT_ETCD)]
    etcd: String,
    /// Serve Prometheus metrics at http://ADDR/metrics (IP:PORT).
    #[arg(long, value_name = "IP:PORT")]
    metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    tls: rctl_api::tls::TlsArgs,
    /// This LB's name in etcd, unique among LBs [default: the host name].
    #[arg(long, env = "RCTL_LB_NAME")]
    name: Option<String>,
    /// Seconds a removed endpoint's in-flight requests may run before it counts as drained.
    #[arg(long, value_name = "SECONDS", default_value_t = rctl_lb::DRAIN_TIMEOUT.as_secs())]
    drain_timeout: u64,
    /// Unix socket for restarts that refuse no connection: a new LB started with the same
    /// path takes this one's listening sockets, and this one drains and exits.
    #[arg(long, value_name = "PATH")]
    handover: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    // One worker asked for (TOKIO_WORKER_THREADS=1, as on a pinned core): the
    // current-thread scheduler runs the same tasks without the work-stealing machinery
    // and cross-thread wake-ups of a one-worker multi-thread runtime.
    let one_worker = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1");
    let mut builder = if one_worker {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let security = args
        .tls
        .security_for_etcd([args.etcd.as_str()])
        .unwrap_or_else(|e| usage_exit(e));
    let _telemetry = rctl_api::telemetry::init("rctl-lb", "info");
    let name = match args.name {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("read the host name (or pass --name)")?
            .trim()
            .to_string(),
    };
    let config = rctl_lb::Config {
        metrics_addr: args.metrics_addr,
        drain_timeout: std::time::Duration::from_secs(args.drain_timeout),
        handover: args.handover,
        security,
        ..rctl_lb::Config::new(args.etcd, name)
    };

    let token = CancellationToken::new();
    let mut lb = tokio::spawn(rctl_lb::run(config, token.clone()));
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        // The library returns early on a startup error, or after handing its listeners
        // to a new LB and draining.
        res = &mut lb => return Ok(res.context("load balancer task")??),
    }
    token.cancel();
    lb.await.context("load balancer task")??;
    Ok(())
}

/// A bad flag or TLS configuration: one line and exit status 2 (bad usage), as clap does.
fn usage_exit(msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}
