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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let security = args.tls.security_or_exit();
    if let Err(e) = security.check_url(&args.etcd, "--etcd") {
        rctl_api::tls::usage_exit(&e.to_string());
    }
    let _telemetry = rctl_api::telemetry::init("rctl-lb", "info");
    let config = rctl_lb::Config {
        etcd: args.etcd,
        metrics_addr: args.metrics_addr,
        security,
    };

    let token = CancellationToken::new();
    let mut lb = tokio::spawn(rctl_lb::run(config, token.clone()));
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        // The library only returns early on a startup error.
        res = &mut lb => return Ok(res.context("load balancer task")??),
    }
    token.cancel();
    lb.await.context("load balancer task")??;
    Ok(())
}
