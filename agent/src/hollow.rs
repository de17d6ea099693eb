//! Hollow nodes: one process simulating many agents for scale tests and benchmarks
//! (`rctl-agent hollow --nodes 1000 ...`), like Kubernetes' hollow kubelets.
//!
//! A hollow node is a real agent minus the containers: each node runs the agent's own task
//! code ([`Tasks`]: the actors, stops, restarts, removal and the orphan sweep) over a
//! [`SimRuntime`], which starts nothing and answers every probe, with its container
//! directories under a scratch root. This module is only the wiring: the node key under its
//! own lease kept alive by [`Store::run_lease`], the Agent gRPC API on its own address
//! (`crate::grpc::hollow`), and [`NodeCluster`], the [`task::Cluster`] of one node.
//!
//! The nodes share one etcd connection. Their writes go through one [`Batch`] that keeps
//! the last write per key and commits in transactions of at most
//! [`MAX_TXN_OPS`](crate::store::MAX_TXN_OPS), so ten thousand acknowledgements take about
//! a hundred round trips, not ten thousand; and their orphan sweeps share one read of the
//! desired tasks per round ([`Desired`]).

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
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

use crate::grpc::hollow::HollowAgent;
use crate::image::{Image, ImageStore, RunConfig};
use crate::network::Subnet;
use crate::store::{self, Store, StoreError, Write, MAX_TXN_OPS};
use crate::task::{self, SimRuntime, Tasks};

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
    /// Scratch directory: the process keeps its nodes' container directories in a fresh
    /// `hollow-{pid}` under it and removes that when it stops.
    pub root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum HollowError {
    #[error("--nodes {0}: must be between 1 and {MAX_NODES}")]
    Count(usize),
    #[error("ports {0}..{0}+{1} run past 65535")]
    Ports(u16, usize),
    #[error("invalid node name {0:?} (lowercase letters, digits and '-'; check --name-prefix)")]
    NodeName(String),
    #[error("scratch directory {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

/// The one image every hollow node has: nothing to unpack, a command to "run".
pub fn image() -> Image {
    Image {
        reference: "hollow".into(),
        manifest_digest: String::new(),
        config_digest: String::new(),
        layers: Vec::new(),
        config: RunConfig {
            cmd: Some(vec!["hollow".into()]),
            ..RunConfig::default()
        },
        blobs: Vec::new(),
        created: None,
        architecture: None,
        os: None,
        pulled_unix_ms: 0,
    }
}

/// The desired tasks placed on each node.
type ByNode = HashMap<String, Arc<[pb::Task]>>;

/// The desired tasks of every node, read once per sweep round for all the nodes' sweeps.
struct Desired {
    store: Store,
    /// When it was read, and what.
    read: tokio::sync::Mutex<Option<(Instant, ByNode)>>,
}

impl Desired {
    /// The desired tasks placed on `node`, read again when older than half a sweep round.
    async fn on(&self, node: &str) -> Result<Arc<[pb::Task]>, StoreError> {
        let mut read = self.read.lock().await;
        let fresh = read
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < task::SWEEP_INTERVAL / 2);
        if !fresh {
            let mut all = self.store.tasks().await?;
            all.extend(self.store.containers().await?);
            let mut by_node: HashMap<String, Vec<pb::Task>> = HashMap::new();
            for t in all {
                by_node.entry(t.node.clone()).or_default().push(t);
            }
            let by_node = by_node.into_iter().map(|(n, t)| (n, t.into())).collect();
            *read = Some((Instant::now(), by_node));
        }
        let by_node = &read.as_ref().expect("read above").1;
        Ok(by_node
            .get(node)
            .cloned()
            .unwrap_or_else(|| Vec::new().into()))
    }
}

/// The cluster as one hollow node's task code sees it: writes go to the shared batch,
/// the desired tasks come from the shared read.
struct NodeCluster {
    /// This node's number, for the batch writer to find its lease.
    index: usize,
    store: Store,
    writes: Writes,
    desired: Arc<Desired>,
    /// Ids of the statuses this node has written and not deleted: the process started
    /// with none, so it need not read them back.
    statuses: Mutex<BTreeSet<String>>,
}

impl NodeCluster {
    fn statuses(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[tonic::async_trait]
impl task::Cluster for NodeCluster {
    fn node(&self) -> &str {
        self.store.node()
    }

    async fn put_status(&self, status: &pb::TaskStatus) -> Result<(), StoreError> {
        self.statuses().insert(status.task_id.clone());
        self.writes
            .send(Item::Write(self.store.status_write(status)));
        Ok(())
    }

    async fn delete_status(&self, task_id: &str) -> Result<(), StoreError> {
        self.statuses().remove(task_id);
        self.writes.send(Item::Write(Write::Delete {
            key: keys::status(self.store.node(), task_id),
        }));
        Ok(())
    }

    async fn put_endpoint(&self, ep: &pb::Endpoint) -> Result<(), StoreError> {
        let key = keys::endpoint(&ep.service, &ep.task_id);
        let value = codec::encode(ep);
        // Held for a re-granted lease, and put by the batch writer under the current one.
        self.store.hold_leased(key.clone(), value.clone()).await;
        self.writes.send(Item::Leased {
            node: self.index,
            key,
            value,
        });
        Ok(())
    }

    async fn delete_endpoint(&self, service: &str, task_id: &str) -> Result<(), StoreError> {
        let key = keys::endpoint(service, task_id);
        self.store.release_leased(&key).await;
        self.writes.send(Item::Write(Write::Delete { key }));
        Ok(())
    }

    async fn delete_container(&self, task: &pb::Task) -> Result<(), StoreError> {
        // The status through the batch, so it replaces a status write still queued there.
        task::Cluster::delete_status(self, &task.id).await?;
        self.store.delete_container(task).await
    }

    async fn desired(&self) -> Result<Arc<[pb::Task]>, StoreError> {
        self.desired.on(self.store.node()).await
    }

    async fn status_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.statuses().iter().cloned().collect())
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

    // Fresh per process, so two hollow processes never share container directories.
    let root = cfg.root.join(format!("hollow-{}", std::process::id()));
    std::fs::create_dir_all(&root).map_err(|source| HollowError::Root {
        path: root.clone(),
        source,
    })?;
    // Never pulled from (every node has `image()`), but the task code holds one, and its
    // registry client needs the crypto provider the agent installs at start-up too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let images = ImageStore::new(&root.join("images"), Vec::new());
    // No container network on a hollow node: addresses are only recorded.
    let subnet = Subnet::parse("10.0.0.0/16").expect("a valid subnet");
    let runtime = Arc::new(SimRuntime::new(subnet, cfg.listen_ip).unrecorded());
    let desired = Arc::new(Desired {
        store: Store::with_client(client.clone(), "hollow-sweep"),
        read: tokio::sync::Mutex::new(None),
    });
    let image = Arc::new(image());

    let tracker = TaskTracker::new();
    let (tx, rx) = mpsc::unbounded_channel();
    let writes = Writes(tx);
    let started = clock::now_unix_ms();
    let mut stores = Vec::with_capacity(cfg.nodes);
    for (i, (name, (addr, listener))) in names.iter().zip(listeners).enumerate() {
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
        let cluster = Arc::new(NodeCluster {
            index: i,
            store: store.clone(),
            writes: writes.clone(),
            desired: desired.clone(),
            statuses: Mutex::default(),
        });
        stores.push(store);
        let tasks = Tasks::new(root.join(name), cluster, images.clone(), runtime.clone());
        tracker.spawn(tasks.clone().run_sweeper(shutdown.child_token()));

        let token = shutdown.child_token();
        let svc = pb::agent_server::AgentServer::new(HollowAgent {
            tasks,
            image: image.clone(),
        });
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
    drop(writes);
    tracker.spawn(write_loop(client, stores, rx, shutdown.child_token()));
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
    // The actors may still hold files there: whatever is left goes anyway.
    if let Err(e) = std::fs::remove_dir_all(&root) {
        warn!(error = %e, root = %root.display(), "cannot remove the hollow nodes' scratch directory");
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
