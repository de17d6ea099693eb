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
    /// Data-path threads, each serving its share of the connections on its own
    /// single-threaded runtime (like HAProxy's nbthread) [default: the number of CPUs].
    #[arg(long, env = "RCTL_LB_WORKERS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The control plane (etcd, health checks, stats, accepting) is light work for one
    // thread; with one worker the data path runs on that same thread too.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let workers = match args.workers {
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let security = args.tls.security_or_exit();
    if let Err(e) = security.check_url(&args.etcd, "--etcd") {
        rctl_api::tls::usage_exit(&e.to_string());
    }
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
        workers,
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
