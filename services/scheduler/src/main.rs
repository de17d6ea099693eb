//! rctl-scheduler: parses flags and runs the control plane until SIGTERM.

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "rctl-scheduler",
    version,
    about = "rctl control plane: API and reconciler"
)]
struct Args {
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "RCTL_ETCD", default_value = rctl_api::DEFAULT_ETCD, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Address of the gRPC API.
    #[arg(long, default_value = "127.0.0.1:7600")]
    listen: std::net::SocketAddr,
    /// API address clients are sent to while this replica leads (default: https://LISTEN, or
    /// http://LISTEN with --insecure).
    #[arg(long)]
    advertise_addr: Option<String>,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    tls: rctl_api::tls::TlsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let security = args
        .tls
        .security_for_etcd(args.etcd.iter().map(String::as_str))
        .unwrap_or_else(|e| usage_exit(e));
    let _telemetry = rctl_api::telemetry::init("rctl-scheduler", "info");
    let token = CancellationToken::new();
    let signal_token = token.clone();
    tokio::spawn(async move {
        rctl_api::signal::shutdown().await;
        signal_token.cancel();
    });
    rctl_scheduler::run(
        rctl_scheduler::Config {
            etcd: args.etcd,
            listen: args.listen,
            advertise_addr: args.advertise_addr,
            metrics_addr: args.metrics_addr,
            security,
        },
        token,
    )
    .await?;
    Ok(())
}

/// A bad flag or TLS configuration: one line and exit status 2 (bad usage), as clap does.
fn usage_exit(msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}
