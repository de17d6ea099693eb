//! rctl-scheduler: the control plane. It serves the Scheduler gRPC API the CLI talks to and
//! runs the reconcile loop that keeps every service at its desired scale.
//!
//! # Layout
//! - [`api`]: gRPC handlers (validate, write desired state, read views).
//! - [`grpc`]: error → `tonic::Status`, once.
//! - [`spec`]: validation of service specs and revisions.
//! - [`image_check`]: a new image is resolved in its registry before it is written.
//! - [`store`]: etcd reads and guarded writes.
//! - [`snapshot`]: the plain-data view every decision reads (services, tasks, one-off
//!   containers, nodes, rollouts, kept revisions, LB stats).
//! - [`reconcile`]: the pure plan of a pass: task actions, unplaced reasons, and (through
//!   [`progress`]) automatic rollbacks and canary steps; also where a one-off container goes.
//! - [`placement`]: filters and scores; [`drain`]: the drain gate of retired tasks.
//! - [`revisions`]: the next revision of a service (apply, rollback, automatic rollback),
//!   history and rollback targets.
//! - [`rollout`] and [`canary`]: pure rollout judgement and the canary step machine.
//! - [`leader`]: election among replicas; only the leader runs the controller.
//! - [`controller`]: the loop that loads, plans ([`reconcile`]) and commits.
//! - [`containers`]: one-off containers (`rctl run`), placed at once by reconcile's
//!   placement over the same snapshot and commanded on their agent.
//! - [`ids`]: new task and container ids, for the controller and [`containers`].
//! - [`agents`]: the gRPC edge towards agents.
//! - [`streams`]: logs, attach, exec, stats and top, proxied to the container's agent.
#![forbid(unsafe_code)]

pub mod agents;
pub mod api;
pub mod canary;
pub mod containers;
pub mod controller;
pub mod drain;
pub mod grpc;
pub mod ids;
pub mod image_check;
pub mod images;
pub mod leader;
pub mod names;
pub mod placement;
pub mod progress;
pub mod reconcile;
pub mod revisions;
pub mod rollout;
pub mod snapshot;
pub mod spec;
pub mod store;
pub mod streams;
pub mod targets;

use std::net::SocketAddr;

use rctl_api::pb::scheduler_server::SchedulerServer;
use rctl_api::tls::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone)]
pub struct Config {
    pub etcd: Vec<String>,
    pub listen: SocketAddr,
    /// The API address followers hand to clients while this replica leads; defaults to
    /// `https://{listen}` (`http://` with `--insecure`).
    pub advertise_addr: Option<String>,
    pub metrics_addr: Option<SocketAddr>,
    /// TLS on the API, towards agents and etcd; or explicit plaintext.
    pub security: rctl_api::tls::Security,
}

/// Why the scheduler could not start, or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// etcd could not be reached.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The leader election could not be joined.
    #[error(transparent)]
    Election(#[from] leader::LeaderError),
    /// The API's TLS configuration does not load.
    #[error(transparent)]
    Tls(#[from] rctl_api::tls::TlsError),
    #[error("bind the API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serve the API: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Runs the API server and the controller until `shutdown` is cancelled.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let store = store::Store::connect(&cfg.etcd, &cfg.security).await?;
    let agents = agents::Agents::new(cfg.security.clone());
    let tasks = TaskTracker::new();

    let candidate = leader::Candidate {
        id: leader::default_node_id(),
        addr: cfg
            .advertise_addr
            .clone()
            .unwrap_or_else(|| format!("{}://{}", cfg.security.scheme(), cfg.listen)),
    };
    let election = leader::Election::connect(&cfg.etcd, &cfg.security, candidate.encode()).await?;
    let leadership = election.leadership();
    let images = images::Images {
        store: store.clone(),
        agents: agents.clone(),
    };
    tasks.spawn(controller::run(
        store.clone(),
        agents,
        election,
        shutdown.child_token(),
    ));
    if let Some(addr) = cfg.metrics_addr {
        let leadership = leadership.clone();
        let token = shutdown.child_token();
        tasks.spawn(async move {
            let render = move || {
                use rctl_api::metrics::{Kind, Text};
                let mut t = Text::new();
                t.family("rctl_scheduler_up", Kind::Gauge, "")
                    .sample("rctl_scheduler_up", &[], 1)
                    .family("rctl_scheduler_info", Kind::Gauge, "")
                    .sample(
                        "rctl_scheduler_info",
                        &[("version", &env!("CARGO_PKG_VERSION"))],
                        1,
                    )
                    .family(
                        "rctl_scheduler_leader",
                        Kind::Gauge,
                        "1 while this replica is the elected leader.",
                    )
                    .sample(
                        "rctl_scheduler_leader",
                        &[],
                        u8::from(leadership.is_leader()),
                    );
                t.finish()
            };
            if let Err(e) = rctl_api::metrics::serve(addr, render, token.cancelled_owned()).await {
                tracing::error!(error = %e, %addr, "metrics endpoint failed");
            }
        });
    }

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: cfg.listen,
            source,
        })?;
    tracing::info!(addr = %cfg.listen, "scheduler API listening");
    // TCP_NODELAY, which tonic sets only for listeners it binds itself: without it a reply
    // whose trailers go out in a second small write waits for the client's delayed ACK
    // (40 ms), on every unary call (`rctl ps` took 55 ms instead of 13) and on `run`.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // The CLI holds client certificates; other replicas may forward to this one.
    let roles = cfg
        .security
        .role_check(&[Role::Client, Role::Scheduler], "scheduler");
    let server = cfg
        .security
        .server()?
        .add_service(SchedulerServer::with_interceptor(
            api::Api {
                store,
                leadership,
                images,
            },
            roles,
        ))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    let res = server.await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    res?;
    Ok(())
}
