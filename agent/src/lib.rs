//! rctl-agent: the per-host agent. It registers its node in etcd under a lease, serves the
//! Agent gRPC API, pulls images, runs each container through a small per-container shim,
//! wires container networking, health-checks containers and reports status and endpoints.
//!
//! # Layout
//! - [`image`]: registry client, verified content store, layer unpacking.
//! - [`runtime`]: container state on disk, the shim launch, rootfs and exec inside.
//! - [`shim`]: the `__shim` subcommand that parents each container and owns its output.
//! - [`attach`]: the attach socket protocol and its client (`attach::connect`).
//! - [`lifecycle`]: stop signal and timeout, restart policy and backoff (pure decisions).
//! - [`logs`]: the json-file container log: encoding, rotation, reading and following.
//! - [`network`]: bridge, veth, address/port allocation, published ports.
//! - [`store`]: etcd (lease, node, status, endpoints, desired tasks).
//! - [`task`]: per-container lifecycle actors, one file per verb; adoption, orphan sweep.
//! - [`health`]: container health probes.
//! - [`streams`]: logs, attach, exec, stats and top over one container (issue 9).
//! - [`grpc`]: the Agent API: requests into tasks, images and streams, errors to `Status`.
//! - [`hollow`]: many simulated nodes in one process, for scale tests (no containers).
#![deny(unsafe_code)]

pub mod attach;
pub mod dirwatch;
pub mod grpc;
pub mod health;
pub mod hollow;
pub mod image;
pub mod lifecycle;
pub mod logs;
pub mod network;
pub mod runtime;
pub mod shim;
pub mod store;
pub mod streams;
#[allow(unsafe_code)]
mod sys;
pub mod task;

/// Bounds the agent's malloc (arenas, thresholds) for a long run next to its containers;
/// call at start-up, before any thread exists.
pub fn tune_malloc() {
    sys::tune_malloc()
}

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use rctl_api::{clock, codec, keys, pb};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use network::Subnet;
pub use task::Tasks;

/// Everything the agent needs to run, as given on its command line.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub etcd: String,
    pub root: PathBuf,
    pub node_name: String,
    pub advertise_ip: Ipv4Addr,
    pub listen: SocketAddr,
    pub subnet: Subnet,
    pub bridge: String,
    /// How other nodes' container subnets are reached (`--net-mode`).
    pub net_mode: network::peers::Mode,
    /// Registries (`host:port`) spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub lease_ttl: u64,
    pub labels: HashMap<String, String>,
    /// Where to serve Prometheus `/metrics`, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// TLS for the Agent API and etcd; or explicit plaintext.
    pub security: rctl_api::tls::Security,
    /// Docker-style config.json with registry logins; None: the docker default.
    pub registry_config: Option<PathBuf>,
    /// What one image layer may cost to unpack.
    pub layer_limits: image::unpack::Limits,
    /// Where container cgroups go, relative to each cgroup hierarchy's root.
    pub cgroup_parent: PathBuf,
    /// `--userns-remap`: every container's user namespace map; None runs them in the
    /// host's user namespace.
    pub userns_remap: Option<runtime::userns::IdMap>,
    /// Bytes that must stay free on the agent root; below it new containers are refused.
    pub disk_reserve: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid node name {0:?} (lowercase letters, digits and '-')")]
    NodeName(String),
    #[error("create {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("set up container network: {0}")]
    Network(#[from] network::NetworkError),
    #[error("{0}")]
    NodeTaken(store::StoreError),
    #[error("register node: {0}")]
    Store(#[from] store::StoreError),
    #[error("host id {path}: {source}")]
    HostId {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--registry-config: {0}")]
    RegistryConfig(image::registry::RegistryError),
    #[error("TLS: {0}")]
    Tls(#[from] rctl_api::tls::TlsError),
    #[error("serve gRPC on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Refuses a certificate that is not this node's: the name the scheduler verifies when it
/// dials this agent must be the node name the agent registers.
pub fn check_identity(cert: &rctl_api::tls::PeerIdentity, node_name: &str) -> Result<(), String> {
    if cert.role != rctl_api::tls::Role::Agent {
        return Err(format!(
            "the TLS certificate is for {cert}, not an agent: issue one with `rctl cluster cert issue --role agent {node_name}`"
        ));
    }
    if cert.name != node_name {
        return Err(format!(
            "the TLS certificate is for node {:?} but --node-name is {node_name:?}: an agent may only register as the node its certificate names",
            cert.name
        ));
    }
    Ok(())
}

/// File in the agent's root holding this host's identity.
const HOST_ID_FILE: &str = "host-id";

/// This host's random identity, made once and kept in the root dir: it lets the same agent
/// restarting take its node record back, and tells it apart from another host.
fn host_id(root: &std::path::Path) -> Result<String, AgentError> {
    let path = root.join(HOST_ID_FILE);
    let err = |source| AgentError::HostId {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let id = hex::encode(rand::random::<[u8; 16]>());
    let tmp = root.join(format!("{HOST_ID_FILE}.tmp"));
    std::fs::write(&tmp, format!("{id}\n")).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(id)
}

/// Total memory of the host from /proc/meminfo.
fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Runs the agent until `shutdown` is cancelled. Containers keep running after it returns.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    if !keys::valid_name(&cfg.node_name) {
        return Err(AgentError::NodeName(cfg.node_name));
    }
    // A login file named on the command line must exist and parse: fail before registering.
    let credentials = match &cfg.registry_config {
        Some(path) if !path.is_file() => {
            return Err(AgentError::RegistryConfig(
                image::registry::RegistryError::Credentials {
                    path: path.display().to_string(),
                    reason: "no such file".into(),
                },
            ))
        }
        Some(path) => {
            Some(image::registry::Credentials::load(path).map_err(AgentError::RegistryConfig)?)
        }
        None => None,
    };
    // oci-client is built without a crypto provider choice; ring is ours.
    let _ = rustls::crypto::ring::default_provider().install_default();
    for sub in ["containers", "layers", "blobs/sha256", "images"] {
        let path = cfg.root.join(sub);
        tokio::fs::create_dir_all(&path)
            .await
            .map_err(|source| AgentError::StateDir { path, source })?;
    }
    let host_id = host_id(&cfg.root)?;

    // etcd may come up after us (host boot order): keep trying until shutdown.
    let store = loop {
        match store::Store::connect(&cfg.etcd, &cfg.node_name, &cfg.security).await {
            Ok(s) => break s,
            Err(e) => warn!(error = %e, "etcd not reachable yet"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let node = pb::Node {
        name: cfg.node_name.clone(),
        address: cfg.listen.to_string(),
        advertise_ip: cfg.advertise_ip.to_string(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0),
        memory_bytes: memory_bytes(),
        labels: cfg.labels.clone(),
        subnet: cfg.subnet.to_string(),
        started_unix_ms: clock::now_unix_ms(),
        host_id: host_id.clone(),
        network_mode: cfg.net_mode.as_str().to_string(),
    };
    // Claimed before touching the host's network: an agent refused the name changes nothing.
    // Only a refusal is final; etcd trouble is waited out like an unreachable etcd above.
    loop {
        let registered = store
            .register(
                keys::node(&cfg.node_name),
                codec::encode(&node),
                &host_id,
                cfg.lease_ttl as i64,
            )
            .await;
        match registered {
            Ok(()) => break,
            Err(e @ store::StoreError::NodeTaken { .. }) => return Err(AgentError::NodeTaken(e)),
            Err(e) => warn!(error = %e, "node registration failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    let net = network::Network {
        bridge: cfg.bridge.clone(),
        subnet: cfg.subnet,
        advertise_ip: cfg.advertise_ip,
    };
    net.ensure_bridge().await?;

    let tracker = TaskTracker::new();
    if let Some(addr) = cfg.metrics_addr {
        let containers = cfg.root.join("containers");
        let node = cfg.node_name.clone();
        let token = shutdown.child_token();
        tracker.spawn(async move {
            let render = move || {
                use rctl_api::metrics::{Kind, Text};
                let n = std::fs::read_dir(&containers)
                    .map(|d| d.count())
                    .unwrap_or(0);
                let mut t = Text::new();
                t.family("rctl_agent_up", Kind::Gauge, "")
                    .sample("rctl_agent_up", &[("node", &node)], 1)
                    .family("rctl_agent_containers", Kind::Gauge, "")
                    .sample("rctl_agent_containers", &[("node", &node)], n);
                t.finish()
            };
            if let Err(e) = rctl_api::metrics::serve(addr, render, token.cancelled_owned()).await {
                warn!(error = %e, %addr, "metrics endpoint failed");
            }
        });
    }
    // Egress NAT and the routes to other nodes' containers, from the node records.
    tracker.spawn(network::peers::run(
        store.client().clone(),
        cfg.node_name.clone(),
        net.clone(),
        cfg.net_mode,
        shutdown.child_token(),
    ));
    tracker.spawn(
        store
            .clone()
            .run_lease(cfg.lease_ttl as i64, shutdown.child_token()),
    );
    let mut images = image::ImageStore::new(&cfg.root, cfg.insecure_registries.clone())
        .with_limits(cfg.layer_limits.clone());
    if let Some(creds) = credentials {
        images = images.with_credentials(creds);
    }
    let runtime = task::HostRuntime::new(cfg.root.clone(), cfg.cgroup_parent.clone(), net)
        .with_userns_remap(cfg.userns_remap)
        .with_disk_reserve(cfg.disk_reserve);
    let tasks = Tasks::new(
        cfg.root.clone(),
        std::sync::Arc::new(store),
        images.clone(),
        std::sync::Arc::new(runtime),
    );
    tasks.adopt().await;
    tracker.spawn(tasks.clone().run_sweeper(shutdown.child_token()));

    info!(addr = %cfg.listen, node = %cfg.node_name, "serving Agent API");
    // Only the scheduler sends work to an agent.
    let roles = cfg
        .security
        .role_check(&[rctl_api::tls::Role::Scheduler], "agent");
    let served = cfg
        .security
        .server()?
        .add_service(pb::agent_server::AgentServer::with_interceptor(
            grpc::AgentService::new(tasks, images),
            roles,
        ))
        .serve_with_shutdown(cfg.listen, shutdown.cancelled())
        .await;
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        warn!("background tasks did not stop in time");
    }
    served.map_err(|source| AgentError::Serve {
        addr: cfg.listen,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rctl_api::tls::{PeerIdentity, Role};

    #[test]
    fn an_agent_runs_only_as_the_node_its_certificate_names() {
        let cert = |name: &str, role| PeerIdentity {
            name: name.into(),
            role,
        };
        assert!(check_identity(&cert("h2", Role::Agent), "h2").is_ok());
        let e = check_identity(&cert("h3", Role::Agent), "h2").unwrap_err();
        assert!(e.contains(r#"node "h3" but --node-name is "h2""#), "{e}");
        let e = check_identity(&cert("h2", Role::Scheduler), "h2").unwrap_err();
        assert!(e.contains("not an agent"), "{e}");
    }

    #[test]
    fn the_host_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = host_id(dir.path()).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(host_id(dir.path()).unwrap(), a);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(host_id(other.path()).unwrap(), a);
    }
}
