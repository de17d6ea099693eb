//! Hollow nodes: one process simulating many agents for scale tests and benchmarks
//! (`rctl-agent hollow --nodes 1000 ...`), like Kubernetes' hollow kubelets.
//!
//! A hollow node is what the scheduler sees of a real agent, minus the containers: its node
//! key under its own lease kept alive by the agent's own [`Store::run_lease`], the Agent gRPC
//! API on its own address (`crate::grpc::hollow`; RunTask is validated by the agent's own
//! [`tasks::validate`]),
//! task statuses as the agent writes them, endpoints under the node's lease, and the orphan
//! sweep's [`tasks::sweep_decision`]. A hollow task goes starting → running (healthy, if it
//! publishes a port) at once; StopTask makes it exited.
//!
//! The nodes share one etcd connection, and their writes go through one [`Batch`] that
//! keeps the last write per key and commits in transactions of at most
//! [`MAX_TXN_OPS`](crate::store::MAX_TXN_OPS), so ten thousand acknowledgements take about
//! a hundred round trips, not ten thousand.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::Client;
use futures::StreamExt;
use rctl_api::{clock, codec, keys, pb};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::grpc::hollow::{HollowAgent, HollowTasks};
use crate::network::ipam;
use crate::store::{self, Store, StoreError, Write, MAX_TXN_OPS};
use crate::task::{self as tasks, TaskError};

/// Most nodes one process simulates.
pub const MAX_NODES: usize = 10_000;
/// Transactions in flight at once from the batch writer.
const IN_FLIGHT: usize = 8;
/// Pause before retrying writes etcd refused.
const RETRY: Duration = Duration::from_millis(500);

/// Everything `rctl-agent hollow` takes.
#[derive(Debug, Clone)]
pub struct HollowConfig {
    pub etcd: String,
    /// How many nodes to simulate.
    pub nodes: usize,
    /// Node `i` (from 1) is named `{prefix}{i}`, zero-padded to the width of `nodes`.
    pub name_prefix: String,
    /// Every node's Agent API listens on this IP, node `i` on port `port_base + i - 1`.
    pub listen_ip: Ipv4Addr,
    pub port_base: u16,
    /// Resources each node announces.
    pub cpus: f64,
    pub memory_bytes: u64,
    pub labels: HashMap<String, String>,
    pub lease_ttl: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HollowError {
    #[error("--nodes {0}: must be between 1 and {MAX_NODES}")]
    Count(usize),
    #[error("ports {0}..{0}+{1} run past 65535")]
    Ports(u16, usize),
    #[error("invalid node name {0:?} (lowercase letters, digits and '-'; check --name-prefix)")]
    NodeName(String),
    #[error("listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd: {0}")]
    Store(#[from] StoreError),
}

/// The name of node `i` (from 1) of `n`.
pub fn node_name(prefix: &str, i: usize, n: usize) -> String {
    let width = n.to_string().len();
    format!("{prefix}{i:0width$}")
}

/// A write waiting for the batch writer. Leased puts learn their lease when they are sent,
/// so a put queued across a re-grant goes out under the new lease.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Write(Write),
    Leased {
        node: usize,
        key: String,
        value: Vec<u8>,
    },
}

impl Item {
    fn key(&self) -> &str {
        match self {
            Item::Write(w) => w.key(),
            Item::Leased { key, .. } => key,
        }
    }
}

/// Writes waiting to be sent, at most one per key: a later write to a key replaces the
/// earlier one in place (starting then running is sent as running), so a transaction never
/// names a key twice, which etcd refuses.
#[derive(Debug, Default)]
struct Batch {
    items: Vec<Item>,
    index: HashMap<String, usize>,
}

impl Batch {
    fn add(&mut self, item: Item) {
        match self.index.get(item.key()) {
            Some(&i) => self.items[i] = item,
            None => {
                self.index.insert(item.key().to_string(), self.items.len());
                self.items.push(item);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn take(&mut self) -> Vec<Item> {
        self.index.clear();
        std::mem::take(&mut self.items)
    }
}

/// The queue into the batch writer.
#[derive(Clone)]
struct Writes(mpsc::UnboundedSender<Item>);

impl Writes {
    fn send(&self, item: Item) {
        // Closed only on shutdown, when nothing is written any more anyway.
        let _ = self.0.send(item);
    }
}

/// Sends queued writes until `shutdown`: everything queued so far goes out at once, in
/// transactions of at most [`MAX_TXN_OPS`], [`IN_FLIGHT`] of them at a time. A transaction
/// etcd refuses is retried with whatever was written to its keys since.
async fn write_loop(
    client: Client,
    stores: Vec<Store>,
    mut rx: mpsc::UnboundedReceiver<Item>,
    shutdown: CancellationToken,
) {
    let mut batch = Batch::default();
    loop {
        if batch.is_empty() {
            let item = tokio::select! {
                _ = shutdown.cancelled() => return,
                i = rx.recv() => i,
            };
            match item {
                Some(i) => batch.add(i),
                None => return,
            }
        }
        while let Ok(i) = rx.try_recv() {
            batch.add(i);
        }
        let items = batch.take();
        let mut writes = Vec::with_capacity(items.len());
        let mut sent = Vec::with_capacity(items.len());
        for item in items {
            let w = match &item {
                Item::Write(w) => w.clone(),
                Item::Leased { node, key, value } => {
                    let lease = stores[*node].lease_id().await;
                    if lease == 0 {
                        continue; // the first grant puts every leased key
                    }
                    Write::Put {
                        key: key.clone(),
                        value: value.clone(),
                        lease,
                    }
                }
            };
            writes.push(w);
            sent.push(item);
        }
        let chunks: Vec<Vec<Write>> = writes.chunks(MAX_TXN_OPS).map(<[_]>::to_vec).collect();
        let results: Vec<(usize, Result<(), StoreError>)> =
            futures::stream::iter(chunks.into_iter().enumerate())
                .map(|(i, chunk)| {
                    let client = client.clone();
                    async move { (i, store::write_batch(&client, &chunk).await) }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
        let mut failed = false;
        for (i, res) in results {
            if let Err(e) = res {
                warn!(error = %e, "batched status write failed; retrying");
                failed = true;
                let end = ((i + 1) * MAX_TXN_OPS).min(sent.len());
                for item in &sent[i * MAX_TXN_OPS..end] {
                    batch.add(item.clone());
                }
            }
        }
        if failed {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

/// A task a hollow node holds.
struct Hosted {
    task: pb::Task,
    status: pb::TaskStatus,
    /// When RunTask accepted it, for the sweep's grace period.
    accepted: Instant,
    /// The host port its endpoint names (0: publishes none).
    host_port: u16,
}

/// One simulated node.
struct Node {
    index: usize,
    store: Store,
    advertise_ip: Ipv4Addr,
    writes: Writes,
    tasks: Mutex<HashMap<String, Hosted>>,
}

impl Node {
    fn name(&self) -> &str {
        self.store.node()
    }

    /// Accepts `task` (idempotent by id) and reports it running at once.
    async fn run(&self, task: pb::Task) -> Result<(), TaskError> {
        tasks::validate(&task)?;
        let endpoint = {
            let mut hosted = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            if hosted.contains_key(&task.id) {
                return Ok(());
            }
            let now = clock::now_unix_ms();
            let mut status = tasks::base_status(&task, self.name());
            status.state = pb::TaskState::Starting as i32;
            status.updated_unix_ms = now;
            self.writes
                .send(Item::Write(self.store.status_write(&status)));

            let mut host_port = 0;
            if task.container_port != 0 {
                let used: Vec<u16> = hosted
                    .values()
                    .filter(|h| h.status.state() == pb::TaskState::Running)
                    .map(|h| h.host_port)
                    .collect();
                match ipam::allocate_port(&used) {
                    Ok(p) => host_port = p,
                    Err(e) => tasks::finish(&mut status, None, false, e.to_string()),
                }
            }
            if status.state() == pb::TaskState::Starting {
                status.state = pb::TaskState::Running as i32;
                status.started_unix_ms = now;
                if host_port != 0 {
                    status.endpoint = format!("{}:{host_port}", self.advertise_ip);
                    status.health = crate::health::Verdict::Healthy.as_str().into();
                }
            }
            self.writes
                .send(Item::Write(self.store.status_write(&status)));
            let endpoint = (host_port != 0).then(|| pb::Endpoint {
                service: task.service.clone(),
                task_id: task.id.clone(),
                node: self.name().to_string(),
                address: status.endpoint.clone(),
                revision: task.revision,
                healthy: true,
            });
            hosted.insert(
                task.id.clone(),
                Hosted {
                    task,
                    status,
                    accepted: Instant::now(),
                    host_port,
                },
            );
            endpoint
        };
        if let Some(ep) = endpoint {
            let key = keys::endpoint(&ep.service, &ep.task_id);
            let value = codec::encode(&ep);
            self.store.hold_leased(key.clone(), value.clone()).await;
            self.writes.send(Item::Leased {
                node: self.index,
                key,
                value,
            });
        }
        Ok(())
    }

    /// Stops a task (idempotent; unknown ids succeed): its endpoint goes, it reports exited.
    /// `remove` forgets it; `forget` also deletes its status (it is no longer ours).
    async fn stop(&self, id: &str, remove: bool, forget: bool) {
        let endpoint = {
            let mut hosted = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            let Some(h) = hosted.get_mut(id) else {
                return;
            };
            let endpoint = (h.host_port != 0).then(|| keys::endpoint(&h.task.service, id));
            let live = matches!(
                h.status.state(),
                pb::TaskState::Starting | pb::TaskState::Running
            );
            if live {
                tasks::finish(&mut h.status, Some(0), true, String::new());
                h.status.updated_unix_ms = clock::now_unix_ms();
                h.host_port = 0;
                self.writes
                    .send(Item::Write(self.store.status_write(&h.status)));
            }
            if forget {
                self.writes.send(Item::Write(Write::Delete {
                    key: keys::status(self.name(), id),
                }));
            }
            if remove {
                hosted.remove(id);
            }
            endpoint
        };
        if let Some(key) = endpoint {
            self.store.release_leased(&key).await;
            self.writes.send(Item::Write(Write::Delete { key }));
        }
    }

    /// Ids and acceptance times of the tasks held, for the sweep.
    fn held(&self) -> Vec<(String, Instant)> {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, h)| (id.clone(), h.accepted))
            .collect()
    }
}

#[tonic::async_trait]
impl HollowTasks for Node {
    async fn run(&self, task: pb::Task) -> Result<(), TaskError> {
        Node::run(self, task).await
    }

    async fn stop(&self, id: &str, remove: bool) {
        Node::stop(self, id, remove, false).await
    }
}

/// One orphan sweep over every node with one read of the tasks: what a real agent's sweep
/// decides, for each hollow node.
async fn sweep(nodes: &[Arc<Node>], store: &Store) -> Result<(), StoreError> {
    let all = store.tasks().await?;
    let by_id: HashMap<&str, &pb::Task> = all.iter().map(|t| (t.id.as_str(), t)).collect();
    for node in nodes {
        for (id, accepted) in node.held() {
            let task = by_id.get(id.as_str()).copied();
            if task.is_none() && accepted.elapsed() < tasks::SWEEP_GRACE {
                continue;
            }
            if let Some(stop) =
                tasks::sweep_decision(task, node.name(), rctl_api::clock::now_unix_ms())
            {
                node.stop(&id, stop.remove, stop.forget).await;
            }
        }
    }
    Ok(())
}

async fn sweep_loop(nodes: Arc<[Arc<Node>]>, store: Store, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(tasks::SWEEP_INTERVAL) => {}
        }
        if let Err(e) = sweep(&nodes, &store).await {
            warn!(error = %e, "hollow orphan sweep failed");
        }
    }
}

/// Runs `cfg.nodes` hollow nodes until `shutdown`.
pub async fn run(cfg: HollowConfig, shutdown: CancellationToken) -> Result<(), HollowError> {
    if cfg.nodes == 0 || cfg.nodes > MAX_NODES {
        return Err(HollowError::Count(cfg.nodes));
    }
    if cfg.port_base as usize + cfg.nodes - 1 > u16::MAX as usize {
        return Err(HollowError::Ports(cfg.port_base, cfg.nodes));
    }
    let names: Vec<String> = (1..=cfg.nodes)
        .map(|i| node_name(&cfg.name_prefix, i, cfg.nodes))
        .collect();
    if let Some(bad) = names.iter().find(|n| !keys::valid_name(n)) {
        return Err(HollowError::NodeName(bad.clone()));
    }
    // Bind every port before announcing any node, so a taken port fails the start.
    let mut listeners = Vec::with_capacity(cfg.nodes);
    for i in 0..cfg.nodes {
        let addr = SocketAddr::from((cfg.listen_ip, cfg.port_base + i as u16));
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| HollowError::Bind { addr, source })?;
        listeners.push((addr, l));
    }
    let client = loop {
        // Hollow nodes are a scale-test tool: plaintext only (the scheduler under test runs
        // with --insecure too).
        match store::connect_client(&cfg.etcd, &rctl_api::tls::Security::Insecure).await {
            Ok(c) => break c,
            Err(e) => warn!(error = %e, "etcd not reachable yet"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };

    let tracker = TaskTracker::new();
    let (tx, rx) = mpsc::unbounded_channel();
    let writes = Writes(tx);
    let started = clock::now_unix_ms();
    let mut nodes = Vec::with_capacity(cfg.nodes);
    for (i, (name, (addr, _))) in names.iter().zip(&listeners).enumerate() {
        let store = Store::with_client(client.clone(), name);
        let node = pb::Node {
            name: name.clone(),
            address: addr.to_string(),
            advertise_ip: cfg.listen_ip.to_string(),
            cpus: cfg.cpus,
            memory_bytes: cfg.memory_bytes,
            labels: cfg.labels.clone(),
            // No container network on a hollow node.
            subnet: String::new(),
            started_unix_ms: started,
            // Unique per simulated node and process: a second hollow process cannot pass for it.
            host_id: format!("hollow-{}-{i}", std::process::id()),
            network_mode: String::new(),
        };
        // Put by the lease loop once its lease is granted, like a real agent's node key.
        store
            .put_leased(keys::node(name), codec::encode(&node))
            .await?;
        tracker.spawn(
            store
                .clone()
                .run_lease(cfg.lease_ttl as i64, shutdown.child_token()),
        );
        nodes.push(Arc::new(Node {
            index: i,
            store,
            advertise_ip: cfg.listen_ip,
            writes: writes.clone(),
            tasks: Mutex::new(HashMap::new()),
        }));
    }
    drop(writes);
    let stores = nodes.iter().map(|n| n.store.clone()).collect();
    tracker.spawn(write_loop(
        client.clone(),
        stores,
        rx,
        shutdown.child_token(),
    ));
    let nodes: Arc<[Arc<Node>]> = nodes.into();
    tracker.spawn(sweep_loop(
        nodes.clone(),
        Store::with_client(client, "hollow-sweep"),
        shutdown.child_token(),
    ));

    for (node, (addr, listener)) in nodes.iter().zip(listeners) {
        let token = shutdown.child_token();
        let svc = pb::agent_server::AgentServer::new(HollowAgent(node.clone()));
        tracker.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                .await
            {
                warn!(error = %e, %addr, "hollow node's Agent API failed");
            }
        });
    }
    info!(
        nodes = cfg.nodes,
        first = %names[0],
        port_base = cfg.port_base,
        "hollow nodes serving"
    );
    shutdown.cancelled().await;
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        warn!("hollow nodes did not stop in time");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, v: u8) -> Item {
        Item::Write(Write::Put {
            key: key.into(),
            value: vec![v],
            lease: 0,
        })
    }

    #[test]
    fn a_batch_keeps_the_last_write_per_key_in_first_seen_order() {
        let mut b = Batch::default();
        b.add(put("a", 1));
        b.add(put("b", 1));
        b.add(put("a", 2));
        b.add(Item::Write(Write::Delete { key: "b".into() }));
        b.add(put("c", 1));
        assert_eq!(
            b.take(),
            vec![
                put("a", 2),
                Item::Write(Write::Delete { key: "b".into() }),
                put("c", 1)
            ]
        );
        assert!(b.is_empty());
        b.add(put("a", 3));
        assert_eq!(b.take(), vec![put("a", 3)], "take forgets the old index");
    }

    #[test]
    fn node_names_are_zero_padded_and_valid() {
        assert_eq!(node_name("hollow-", 7, 1000), "hollow-0007");
        assert_eq!(node_name("h", 12, 12), "h12");
        assert!(keys::valid_name(&node_name("hollow-", 1000, 1000)));
    }
}
