//! rctl-lb: the load balancer in front of every rctl service.
//!
//! It watches services and endpoints in etcd, keeps an immutable routing table that it
//! rebuilds and swaps whole on every change, opens one listener per exposed service, and
//! proxies HTTP/1.1 and HTTP/2, optionally over TLS (L7), or raw TCP (L4) to the healthy
//! endpoints of that service, picking one per request by power-of-two-choices on least
//! outstanding requests.
//!
//! # Layout
//! - [`routes`]: the routing table ([`Routes`]) built from etcd values, and its channel.
//! - [`split`]: the exact weighted split of requests between revisions.
//! - [`balance`]: endpoint selection (pure functions plus a thin random wrapper).
//! - [`health`]: passive outlier ejection and the active checks' verdicts (pure).
//! - [`checks`]: the active check probes, one loop per backend.
//! - [`discovery`]: lists and watches etcd, publishes a new [`Routes`] on every change.
//! - [`drain`]: waits out removed endpoints' requests and reports them drained to etcd.
//! - [`handover`]: passes the listening sockets from an old LB to its replacement.
//! - [`listeners`]: opens and closes one listener per exposed service.
//! - [`proxy`]: the HTTP ([`proxy::http`]) and TCP ([`proxy::tcp`]) data paths.
//! - [`stats`]: per-revision counters and latency histograms, on `/metrics` and in etcd.
#![forbid(unsafe_code)]

pub mod balance;
pub mod checks;
pub mod discovery;
pub mod drain;
pub mod handover;
pub mod health;
pub mod listeners;
pub mod proxy;
pub mod routes;
pub mod split;
pub mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use proxy::http::Forwarder;
pub use routes::{Backend, Protocol, Routes, ServiceRoute};
pub use stats::Stats;

/// How long shutdown waits for in-flight requests and connections before giving up.
const GRACE: Duration = Duration::from_secs(10);

/// What the binary was started with.
#[derive(Debug, Clone)]
pub struct Config {
    /// etcd endpoint, e.g. `http://127.0.0.1:2379`.
    pub etcd: String,
    /// Where to serve Prometheus `/metrics`; not served when `None`.
    pub metrics_addr: Option<SocketAddr>,
    /// TLS towards etcd; or explicit plaintext.
    pub security: rctl_api::tls::Security,
    /// This LB's name in etcd (`lbs/{name}`, `drained/…/{name}`); unique per LB.
    pub name: String,
    /// How long a removed endpoint's in-flight requests may run before it is reported
    /// drained anyway.
    pub drain_timeout: Duration,
    /// Unix socket for restarts without refused connections ([`handover`]): take the
    /// listeners of the LB serving it, if any, then serve it for the next one.
    pub handover: Option<PathBuf>,
}

impl Config {
    /// A config with the defaults for everything but etcd and the name (plaintext etcd).
    pub fn new(etcd: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            etcd: etcd.into(),
            metrics_addr: None,
            security: rctl_api::tls::Security::Insecure,
            name: name.into(),
            drain_timeout: DRAIN_TIMEOUT,
            handover: None,
        }
    }
}

/// The default drain timeout: HAProxy-like patience for slow downloads, short enough
/// that a rollout does not stall on one stuck client.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error(transparent)]
    Handover(#[from] handover::HandoverError),
    #[error("bind metrics address {addr}")]
    BindMetrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the load balancer until `shutdown` is cancelled, then drains for up to [`GRACE`].
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), LbError> {
    let (routes_tx, mut routes_rx) = routes::channel(Routes::default());
    let stats = Arc::new(Stats::default());
    let forwarder = Forwarder::new(stats.clone());
    let tasks = TaskTracker::new();
    let sockets = Arc::new(handover::Sockets::default());
    // Cancelled by the signal, or by handing our sockets to a new LB.
    let stop = shutdown.child_token();

    tasks.spawn(discovery::run(
        config.etcd.clone(),
        config.security.clone(),
        routes_tx,
        stop.child_token(),
    ));
    if let Some(path) = &config.handover {
        // Take over only once there are routes to serve: until then the old LB serves
        // better than we could (etcd may be down).
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = routes_rx.changed() => {}
        }
        let n = handover::take(path, &sockets).await?;
        if n > 0 {
            info!(sockets = n, "took over listeners from the previous LB");
        }
    }

    if let Some(addr) = config.metrics_addr {
        // A metrics address the operator asked for but cannot have is a startup error,
        // unlike service listeners, which come and go with etcd and are retried.
        let listener = match sockets.take_inherited(addr) {
            Some(l) => l,
            None => tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| LbError::BindMetrics { addr, source })?,
        };
        sockets.register(addr, std::os::fd::AsFd::as_fd(&listener));
        info!(%addr, "serving metrics");
        tasks.spawn(stats::serve(
            listener,
            stats.clone(),
            routes_rx.clone(),
            stop.child_token(),
        ));
    }
    tasks.spawn(checks::run(routes_rx.clone(), stop.child_token()));
    tasks.spawn(stats::publish(
        config.etcd.clone(),
        config.security.clone(),
        config.name.clone(),
        stats.clone(),
        stop.child_token(),
    ));
    tasks.spawn(drain::run(
        config.etcd.clone(),
        config.security.clone(),
        config.name.clone(),
        routes_rx.clone(),
        config.drain_timeout,
        stop.child_token(),
    ));
    tasks.spawn(listeners::run(
        routes_rx,
        forwarder,
        stats,
        sockets.clone(),
        stop.child_token(),
    ));
    if let Some(path) = config.handover.clone() {
        let handed_over = stop.clone();
        let done = stop.child_token();
        tasks.spawn(async move {
            if let Err(e) = handover::serve(path, sockets, handed_over, done).await {
                warn!(error = %Chain(&e), "restarts will refuse connections");
            }
        });
    }

    stop.cancelled().await;
    info!("shutting down");
    tasks.close();
    if tokio::time::timeout(GRACE, tasks.wait()).await.is_err() {
        warn!(grace = ?GRACE, "grace period elapsed with connections still open");
    }
    info!("stopped");
    Ok(())
}

/// Displays an error with its chain of causes ("list …: transport error: connection
/// refused"), since `Display` of a wrapping error shows only the outermost step.
pub(crate) struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
