//! The agent's side of etcd: the node lease (and everything that lives under it: the node
//! key and healthy endpoints), task status, and reading desired tasks.
//!
//! Leased keys are also kept in memory, so when the lease is lost (etcd restart, long
//! partition) a fresh lease is granted and every leased key is put again under it.
//!
//! The node key is claimed, not just put: a transaction creates it only if absent, or takes
//! it over when the record there carries this host's id (the same agent restarting after a
//! crash, before its old lease expired). Another live agent's record is never overwritten.
//!
//! Hollow nodes ([`crate::hollow`]) share one etcd client between many `Store`s (one per
//! simulated node, each with its own lease) and write status in batches ([`write_batch`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use rctl_api::{codec, keys, pb};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd {op} {key}: {source}")]
    Etcd {
        op: &'static str,
        key: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd lease {0} expired")]
    LeaseExpired(i64),
    #[error("node {node:?} is already registered by another live agent ({holder}); stop that agent or pick another --node-name")]
    NodeTaken { node: String, holder: String },
}

/// etcd's default `--max-txn-ops`: the most operations one transaction may carry.
pub const MAX_TXN_OPS: usize = 128;

/// Largest etcd answer read (a range read of every task).
const MAX_READ_BYTES: usize = 256 << 20;

/// One write of a batch ([`write_batch`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Put, under `lease` if it is not 0.
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: String,
    },
}

impl Write {
    pub fn key(&self) -> &str {
        match self {
            Write::Put { key, .. } | Write::Delete { key } => key,
        }
    }
}

/// Connects to etcd the way every agent does: bounded requests, so a partitioned etcd fails
/// a status write instead of hanging the actor that makes it, and HTTP/2 pings that notice
/// a dead connection under the lease stream.
pub async fn connect_client(
    endpoint: &str,
    security: &rctl_api::tls::Security,
) -> Result<Client, StoreError> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_require_leader(true);
    security
        .etcd_connect(&[endpoint], opts)
        .await
        .map_err(etcd_err("connect", endpoint))
}

/// Writes `writes` (distinct keys) in one transaction. At most [`MAX_TXN_OPS`] of them: the
/// caller splits, since it also decides what a failed chunk means.
pub async fn write_batch(client: &Client, writes: &[Write]) -> Result<(), StoreError> {
    debug_assert!(writes.len() <= MAX_TXN_OPS);
    let ops: Vec<TxnOp> = writes
        .iter()
        .map(|w| match w {
            Write::Put { key, value, lease } => {
                let opts = (*lease != 0).then(|| PutOptions::new().with_lease(*lease));
                TxnOp::put(key.as_str(), value.clone(), opts)
            }
            Write::Delete { key } => TxnOp::delete(key.as_str(), None),
        })
        .collect();
    let first = writes.first().map(Write::key).unwrap_or_default();
    client
        .kv_client()
        .txn(Txn::new().and_then(ops))
        .await
        .map_err(etcd_err("txn", first))?;
    Ok(())
}

fn etcd_err(op: &'static str, key: &str) -> impl FnOnce(etcd_client::Error) -> StoreError {
    let key = key.to_string();
    move |source| StoreError::Etcd { op, key, source }
}

/// The current lease and what must live under it.
#[derive(Default)]
struct Leased {
    /// 0 until the first grant.
    id: i64,
    /// Granted by [`Store::register`] and not yet kept alive by the lease loop.
    pending: Option<i64>,
    kvs: BTreeMap<String, Vec<u8>>,
    /// The node key and this host's id: put only through [`claim_node`].
    node_claim: Option<(String, String)>,
}

#[derive(Clone)]
pub struct Store {
    client: Client,
    node: String,
    /// Held across a re-grant and its re-puts, so a concurrent put cannot land on a lease
    /// that is about to be replaced.
    leased: Arc<tokio::sync::Mutex<Leased>>,
}

impl Store {
    pub async fn connect(
        endpoint: &str,
        node: &str,
        security: &rctl_api::tls::Security,
    ) -> Result<Self, StoreError> {
        Ok(Self::with_client(
            connect_client(endpoint, security).await?,
            node,
        ))
    }

    /// A store for `node` on an existing connection (hollow nodes share one).
    pub fn with_client(client: Client, node: &str) -> Self {
        Self {
            client,
            node: node.to_string(),
            leased: Arc::default(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Puts `key` under the agent's lease, now and after every re-grant.
    pub async fn put_leased(&self, key: String, value: Vec<u8>) -> Result<(), StoreError> {
        let mut l = self.leased.lock().await;
        l.kvs.insert(key.clone(), value.clone());
        if l.id == 0 {
            return Ok(()); // the lease loop puts it once granted
        }
        let opts = PutOptions::new().with_lease(l.id);
        self.client
            .clone()
            .put(key.as_str(), value, Some(opts))
            .await
            .map_err(etcd_err("put", &key))?;
        Ok(())
    }

    /// Remembers `key` as leased (put again after every re-grant) without writing it, and
    /// returns the lease to write it under now; 0 before the first grant, which puts it.
    pub async fn hold_leased(&self, key: String, value: Vec<u8>) -> i64 {
        let mut l = self.leased.lock().await;
        l.kvs.insert(key, value);
        l.id
    }

    /// The current lease (0 before the first grant).
    pub async fn lease_id(&self) -> i64 {
        self.leased.lock().await.id
    }

    /// Forgets a leased key without deleting it (the caller deletes it, e.g. in a batch).
    pub async fn release_leased(&self, key: &str) {
        self.leased.lock().await.kvs.remove(key);
    }

    /// Deletes a leased key and forgets it.
    pub async fn delete_leased(&self, key: &str) -> Result<(), StoreError> {
        let mut l = self.leased.lock().await;
        l.kvs.remove(key);
        self.client
            .clone()
            .delete(key, None)
            .await
            .map_err(etcd_err("delete", key))?;
        Ok(())
    }

    /// The key and value [`Store::put_status`] writes, for writers that batch.
    pub fn status_write(&self, status: &pb::TaskStatus) -> Write {
        Write::Put {
            key: keys::status(&self.node, &status.task_id),
            value: codec::encode(status),
            lease: 0,
        }
    }

    pub async fn put_status(&self, status: &pb::TaskStatus) -> Result<(), StoreError> {
        let key = keys::status(&self.node, &status.task_id);
        self.client
            .clone()
            .put(key.as_str(), codec::encode(status), None)
            .await
            .map_err(etcd_err("put", &key))?;
        Ok(())
    }

    pub async fn delete_status(&self, task_id: &str) -> Result<(), StoreError> {
        let key = keys::status(&self.node, task_id);
        self.client
            .clone()
            .delete(key.as_str(), None)
            .await
            .map_err(etcd_err("delete", &key))?;
        Ok(())
    }

    /// Ids of the task statuses this node has written.
    pub async fn status_ids(&self) -> Result<Vec<String>, StoreError> {
        let prefix = keys::node_status_prefix(&self.node);
        let resp = self
            .client
            .clone()
            .get(
                prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(etcd_err("get", &prefix))?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok().map(|k| keys::leaf(k).to_string()))
            .collect())
    }

    /// Every task in etcd (all services, all nodes).
    pub async fn tasks(&self) -> Result<Vec<pb::Task>, StoreError> {
        self.tasks_under(keys::tasks_prefix()).await
    }

    /// Every one-off container in etcd (`containers/`, all nodes).
    pub async fn containers(&self) -> Result<Vec<pb::Task>, StoreError> {
        self.tasks_under(keys::containers_prefix()).await
    }

    /// Every task under `prefix`.
    async fn tasks_under(&self, prefix: String) -> Result<Vec<pb::Task>, StoreError> {
        // Every task of a large cluster can exceed tonic's 4 MiB default answer size.
        let resp = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_READ_BYTES)
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_err("get", &prefix))?;
        Ok(codec::decode_all(resp.kvs()))
    }

    /// Forgets a removed one-off container (`--rm`): its key, its name (while the name
    /// still points at it) and its status, in one transaction.
    pub async fn delete_container(&self, task: &pb::Task) -> Result<(), StoreError> {
        let key = keys::container(&task.id);
        let name_key = keys::container_name(&task.container_name);
        let status_key = keys::status(&self.node, &task.id);
        let txn = Txn::new()
            .when([Compare::value(
                name_key.as_str(),
                CompareOp::Equal,
                task.id.as_bytes(),
            )])
            .and_then([
                TxnOp::delete(name_key.as_str(), None),
                TxnOp::delete(key.as_str(), None),
                TxnOp::delete(status_key.as_str(), None),
            ])
            .or_else([
                TxnOp::delete(key.as_str(), None),
                TxnOp::delete(status_key.as_str(), None),
            ]);
        self.client
            .clone()
            .txn(txn)
            .await
            .map_err(etcd_err("delete", &key))?;
        Ok(())
    }

    /// Registers the node: grants the lease and claims `key` for this host (see the module
    /// doc). Fails with [`StoreError::NodeTaken`] while another live agent holds the name.
    pub async fn register(
        &self,
        key: String,
        value: Vec<u8>,
        host_id: &str,
        ttl: i64,
    ) -> Result<(), StoreError> {
        {
            let mut l = self.leased.lock().await;
            l.kvs.insert(key.clone(), value);
            l.node_claim = Some((key, host_id.to_string()));
        }
        let id = self.grant(ttl.max(2)).await?;
        self.leased.lock().await.pending = Some(id);
        Ok(())
    }

    /// Grants a lease and puts every leased key under it.
    async fn grant(&self, ttl: i64) -> Result<i64, StoreError> {
        let mut client = self.client.clone();
        let mut l = self.leased.lock().await;
        let id = client
            .lease_grant(ttl, None)
            .await
            .map_err(etcd_err("lease grant", ""))?
            .id();
        // The node key first: if the name is taken, nothing else goes under this lease.
        if let Some((key, host_id)) = &l.node_claim {
            if let Some(v) = l.kvs.get(key) {
                let claimed = claim_node(&mut client, &self.node, key, v, host_id, id).await;
                if let Err(e) = claimed {
                    let _ = client.lease_revoke(id).await;
                    return Err(e);
                }
            }
        }
        l.id = id;
        for (k, v) in &l.kvs {
            if l.node_claim.as_ref().is_some_and(|(key, _)| key == k) {
                continue;
            }
            client
                .put(
                    k.as_str(),
                    v.clone(),
                    Some(PutOptions::new().with_lease(id)),
                )
                .await
                .map_err(etcd_err("put", k))?;
        }
        Ok(id)
    }

    /// Keeps the lease alive until `shutdown`; re-grants (and re-puts) when it is lost.
    pub async fn run_lease(self, ttl: i64, shutdown: CancellationToken) {
        let ttl = ttl.max(2);
        loop {
            let res = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.hold_lease(ttl) => r,
            };
            if let Err(e) = res {
                warn!(error = %e, "node lease lost; granting a new one");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn hold_lease(&self, ttl: i64) -> Result<(), StoreError> {
        let pending = self.leased.lock().await.pending.take();
        let id = match pending {
            Some(id) => id,
            None => self.grant(ttl).await?,
        };
        info!(lease = id, ttl, "node registered");
        let (mut keeper, mut stream) = self
            .client
            .clone()
            .lease_keep_alive(id)
            .await
            .map_err(etcd_err("lease keep-alive", ""))?;
        // Renew five times per TTL: a host is declared lost only after about five missed
        // renewals in a row, so a slow etcd round (fsync under load) costs nothing.
        let period = Duration::from_millis((ttl as u64 * 1000) / 5);
        loop {
            keeper
                .keep_alive()
                .await
                .map_err(etcd_err("lease keep-alive", ""))?;
            match stream.message().await {
                Ok(Some(resp)) if resp.ttl() > 0 => {}
                Ok(_) => return Err(StoreError::LeaseExpired(id)),
                Err(e) => return Err(etcd_err("lease keep-alive", "")(e)),
            }
            tokio::time::sleep(period).await;
        }
    }
}

/// Who holds a node record, for the refusal message.
fn describe_holder(held: &pb::Node, lease: i64) -> String {
    format!(
        "address {}, host id {}, lease {lease:x}",
        if held.address.is_empty() {
            "?"
        } else {
            held.address.as_str()
        },
        if held.host_id.is_empty() {
            "none"
        } else {
            held.host_id.as_str()
        },
    )
}

/// Whether this host may take over a node record held by `held` (decision only).
pub fn may_take_over(held: &pb::Node, host_id: &str) -> bool {
    !host_id.is_empty() && held.host_id == host_id
}

/// Puts the node record under `lease` if the key is absent, or if the record there is this
/// host's own (compare-and-swap on the revision that was read). Anything else is refused.
async fn claim_node(
    client: &mut Client,
    node: &str,
    key: &str,
    value: &[u8],
    host_id: &str,
    lease: i64,
) -> Result<(), StoreError> {
    let put = || {
        TxnOp::put(
            key,
            value.to_vec(),
            Some(PutOptions::new().with_lease(lease)),
        )
    };
    // A few rounds: the record may change between the read and the swap.
    for _ in 0..5 {
        let create = Txn::new()
            .when([Compare::version(key, CompareOp::Equal, 0)])
            .and_then([put()])
            .or_else([TxnOp::get(key, None)]);
        let resp = client.txn(create).await.map_err(etcd_err("txn", key))?;
        if resp.succeeded() {
            return Ok(());
        }
        let Some(kv) = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        }) else {
            continue; // deleted in between: try creating again
        };
        let held: pb::Node = codec::decode(kv.key(), kv.value()).unwrap_or_default();
        if !may_take_over(&held, host_id) {
            return Err(StoreError::NodeTaken {
                node: node.to_string(),
                holder: describe_holder(&held, kv.lease()),
            });
        }
        let swap = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([put()]);
        if client
            .txn(swap)
            .await
            .map_err(etcd_err("txn", key))?
            .succeeded()
        {
            info!(
                node,
                old_lease = kv.lease(),
                "took over this host's node record"
            );
            return Ok(());
        }
    }
    Err(StoreError::NodeTaken {
        node: node.to_string(),
        holder: "its record kept changing while being claimed".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_host_takes_a_node_over() {
        let held = pb::Node {
            host_id: "abc".into(),
            ..Default::default()
        };
        assert!(may_take_over(&held, "abc"));
        assert!(!may_take_over(&held, "def"));
        // A record without an id (older agent) is never someone's own.
        assert!(!may_take_over(&pb::Node::default(), ""));
    }
}
