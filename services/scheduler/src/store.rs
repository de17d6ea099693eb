//! etcd access for the scheduler: one consistent read of everything, and the guarded writes
//! that claim or change work. Every write that depends on what was read compares the key's
//! mod revision, so a stale view cannot clobber newer state; every controller write is also
//! fenced by the leader key (see [`crate::leader`]), so a deposed leader cannot place anything.

use std::collections::{HashMap, HashSet};

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LeaderKey, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use rctl_api::codec::{decode, encode};
use rctl_api::keys;
use rctl_api::pb::{Node, NodeDrain, Revision, Service, Task, TaskStatus};

use crate::revisions::ServiceWrite;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd {op}: {source}")]
    Etcd {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("{0} changed concurrently; retry")]
    Conflict(String),
    #[error("container name {0:?} is already in use (remove or rename that container first)")]
    NameTaken(String),
    /// The leader key a controller write was fenced with is gone: leadership moved.
    #[error("not the leader any more (fenced write to {0} refused)")]
    NotLeader(String),
}

/// Largest answer [`Store::load`] accepts.
const MAX_READ_BYTES: usize = 256 << 20;

fn etcd(op: &'static str) -> impl FnOnce(etcd_client::Error) -> StoreError {
    move |source| StoreError::Etcd { op, source }
}

/// Everything under `/rctl/v1/` at one etcd revision.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    pub revision: i64,
    pub services: Vec<Service>,
    pub tasks: Vec<Task>,
    /// One-off containers (`containers/{id}`), not reconciled.
    pub containers: Vec<Task>,
    pub statuses: HashMap<String, TaskStatus>,
    pub nodes: Vec<Node>,
    /// The lease each live node's key is held under, by node name.
    pub node_leases: HashMap<String, i64>,
    /// Names of the nodes with a drain mark (`drain/{name}`), live or not.
    pub draining: HashSet<String>,
    /// Names of the live load balancers (`lbs/{name}`).
    pub lbs: HashSet<String>,
    /// LBs that reported a task drained, by task id (`drained/{svc}/{task}/{lb}`).
    pub drained: HashMap<String, HashSet<String>>,
    /// Ids of the tasks with an endpoint (`endpoints/{svc}/{task}`).
    pub endpoints: HashSet<String>,
    /// Canary rollouts (`rollouts/{svc}`), by service.
    pub rollouts: HashMap<String, rctl_api::pb::CanaryRollout>,
    /// Every LB's stats of each service (`stats/{svc}/{lb}`), by service.
    pub stats: HashMap<String, Vec<rctl_api::pb::LbStats>>,
    /// Kept revisions of each service (`revisions/{svc}/{n}`), oldest first, by service.
    pub revisions: HashMap<String, Vec<Revision>>,
    /// Mod revision of every key read, for guarded writes.
    pub mod_revisions: HashMap<String, i64>,
}

impl Loaded {
    pub fn mod_revision(&self, key: &str) -> i64 {
        self.mod_revisions.get(key).copied().unwrap_or(0)
    }

    /// The view the decisions are made on, at wall-clock time `now_ms`.
    pub fn snapshot(&self, now_ms: i64) -> crate::snapshot::Snapshot<'_> {
        crate::snapshot::Snapshot {
            services: &self.services,
            tasks: &self.tasks,
            containers: &self.containers,
            statuses: &self.statuses,
            nodes: &self.nodes,
            draining: &self.draining,
            lbs: &self.lbs,
            drained: &self.drained,
            endpoints: &self.endpoints,
            rollouts: &self.rollouts,
            revisions: &self.revisions,
            stats: &self.stats,
            now_ms,
        }
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.spec.as_ref().is_some_and(|sp| sp.name == name))
    }

    /// The kept revisions of `service`, oldest first.
    pub fn history(&self, service: &str) -> &[Revision] {
        self.revisions
            .get(service)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The tasks of `service`.
    pub fn tasks_of(&self, service: &str) -> Vec<&Task> {
        self.tasks.iter().filter(|t| t.service == service).collect()
    }
}

/// etcd's default `--max-txn-ops`: it refuses a transaction with more compares or more
/// operations than this, at any level of nesting.
pub const MAX_TXN_OPS: usize = 128;
/// What the fence leaves the transaction it wraps: the outer compare on the leader key
/// counts against the same limit.
const FENCED_TXN_OPS: usize = MAX_TXN_OPS - 1;

/// Splits `changes` into consecutive runs that each fit one fenced transaction (see
/// [`Store::commit_changes`]): a creation or an update costs one compare and one operation,
/// a deletion two operations, and every service created for one compare per run. Ten
/// thousand creations for one service make 80 transactions.
pub fn split(changes: &[Change<'_>]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut services: HashSet<&str> = HashSet::new();
    let (mut cmps, mut ops) = (0usize, 0usize);
    for (i, c) in changes.iter().enumerate() {
        let (dc, dops, service) = match c {
            Change::Create { task, .. } => (1, 1, Some(task.service.as_str())),
            Change::Update { .. } => (1, 1, None),
            Change::Delete { .. } => (0, 2, None),
        };
        let new_service = service.is_some_and(|s| !services.contains(s));
        if cmps + dc + usize::from(new_service) > FENCED_TXN_OPS || ops + dops > FENCED_TXN_OPS {
            out.push(start..i);
            start = i;
            services.clear();
            (cmps, ops) = (0, 0);
        }
        if let Some(s) = service {
            if services.insert(s) {
                cmps += 1;
            }
        }
        cmps += dc;
        ops += dops;
    }
    if start < changes.len() {
        out.push(start..changes.len());
    }
    out
}

/// One guarded change to a task, written by the leader.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Create `task` if its key is new and its service is still at `service_mod_rev`.
    Create {
        task: &'a Task,
        service_mod_rev: i64,
    },
    /// Rewrite `task` if its key is still at `mod_rev`.
    Update { task: &'a Task, mod_rev: i64 },
    /// Remove `task` and its last status.
    Delete { task: &'a Task },
}

impl Change<'_> {
    fn describe(&self) -> (&'static str, String) {
        let (op, t) = match self {
            Change::Create { task, .. } => ("create task", task),
            Change::Update { task, .. } => ("update task", task),
            Change::Delete { task } => ("delete task", task),
        };
        (op, keys::task(&t.service, &t.id))
    }
}

#[derive(Clone)]
pub struct Store {
    client: Client,
}

impl Store {
    pub async fn connect(
        endpoints: &[String],
        security: &rctl_api::tls::Security,
    ) -> Result<Self, StoreError> {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_timeout(std::time::Duration::from_secs(10));
        let client = security
            .etcd_connect(endpoints, opts)
            .await
            .map_err(etcd("connect"))?;
        Ok(Self { client })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// How long ago the holder of `lease` last renewed it, to the second; `None` if the
    /// lease is gone. etcd keeps no renewal time, but the remaining TTL tells it.
    pub async fn lease_age(&self, lease: i64) -> Option<std::time::Duration> {
        let r = self
            .client
            .lease_client()
            .time_to_live(lease, None)
            .await
            .ok()?;
        (r.ttl() >= 0)
            .then(|| std::time::Duration::from_secs((r.granted_ttl() - r.ttl()).max(0) as u64))
    }

    /// One range read of the whole schema, so the view is consistent at one revision.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        // Ten thousand tasks and their statuses are more than tonic's 4 MiB default answer.
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_READ_BYTES);
        let resp = kv
            .get(keys::ROOT, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd("load"))?;
        let mut out = Loaded {
            revision: resp.header().map(|h| h.revision()).unwrap_or(0),
            ..Default::default()
        };
        let (svc_p, task_p, status_p, node_p, drain_p) = (
            keys::services_prefix(),
            keys::tasks_prefix(),
            keys::status_prefix(),
            keys::nodes_prefix(),
            keys::drain_prefix(),
        );
        let (lbs_p, drained_p, endpoints_p) = (
            keys::lbs_prefix(),
            keys::drained_prefix(),
            keys::endpoints_prefix(),
        );
        let (rollouts_p, stats_p) = (keys::rollouts_prefix(), keys::stats_prefix());
        let containers_p = keys::containers_prefix();
        let revisions_p = keys::revisions_prefix();
        for kv in resp.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            out.mod_revisions.insert(key.to_string(), kv.mod_revision());
            let v = kv.value();
            let res = if key.starts_with(&svc_p) {
                decode::<Service>(kv.key(), v).map(|s| out.services.push(s))
            } else if key.starts_with(&containers_p) {
                decode::<Task>(kv.key(), v).map(|t| out.containers.push(t))
            } else if key.starts_with(&task_p) {
                decode::<Task>(kv.key(), v).map(|t| out.tasks.push(t))
            } else if key.starts_with(&status_p) {
                decode::<TaskStatus>(kv.key(), v).map(|s| {
                    out.statuses.insert(s.task_id.clone(), s);
                })
            } else if key.starts_with(&node_p) {
                decode::<Node>(kv.key(), v).map(|n| {
                    out.node_leases.insert(n.name.clone(), kv.lease());
                    out.nodes.push(n)
                })
            } else if key.starts_with(&rollouts_p) {
                decode::<rctl_api::pb::CanaryRollout>(kv.key(), v).map(|r| {
                    out.rollouts.insert(keys::leaf(key).to_string(), r);
                })
            } else if let Some(rest) = key.strip_prefix(&revisions_p) {
                // {svc}/{n}: the service is the key's, as `Store::revisions` reads it.
                let service = rest.split('/').next().unwrap_or_default().to_string();
                decode::<Revision>(kv.key(), v).map(|r| {
                    out.revisions.entry(service).or_default().push(r);
                })
            } else if key.starts_with(&stats_p) {
                decode::<rctl_api::pb::LbStats>(kv.key(), v).map(|st| {
                    out.stats.entry(st.service.clone()).or_default().push(st);
                })
            } else if key.starts_with(&lbs_p) {
                out.lbs.insert(keys::leaf(key).to_string());
                Ok(())
            } else if let Some(rest) = key.strip_prefix(&drained_p) {
                // {svc}/{task}/{lb}: the report's presence is what counts.
                let mut parts = rest.split('/');
                if let (Some(_), Some(task), Some(lb)) = (parts.next(), parts.next(), parts.next())
                {
                    out.drained
                        .entry(task.to_string())
                        .or_default()
                        .insert(lb.to_string());
                }
                Ok(())
            } else if key.starts_with(&endpoints_p) {
                out.endpoints.insert(keys::leaf(key).to_string());
                Ok(())
            } else if key.starts_with(&drain_p) {
                decode::<NodeDrain>(kv.key(), v).map(|_| {
                    out.draining.insert(keys::leaf(key).to_string());
                })
            } else {
                Ok(())
            };
            if let Err(e) = res {
                tracing::warn!(error = %e, "skipping undecodable value");
            }
        }
        // Keys are zero-padded, so this is already in order; sorting keeps it so whatever
        // the key schema does.
        for history in out.revisions.values_mut() {
            history.sort_by_key(|r| r.revision);
        }
        Ok(out)
    }

    /// Writes `svc` if its key is still at `expect_mod_rev` (0: must not exist).
    pub async fn put_service_if(
        &self,
        svc: &Service,
        expect_mod_rev: i64,
    ) -> Result<(), StoreError> {
        let name = svc
            .spec
            .as_ref()
            .map(|s| s.name.as_str())
            .unwrap_or_default();
        self.put_if(
            &keys::service(name),
            encode(svc),
            expect_mod_rev,
            "put service",
        )
        .await
    }

    /// Creates the one-off container `task` and its name's key in one transaction; a name
    /// in use makes it [`StoreError::NameTaken`] and writes nothing.
    pub async fn create_container(&self, task: &Task) -> Result<(), StoreError> {
        let key = keys::container(&task.id);
        let name_key = keys::container_name(&task.container_name);
        let txn = Txn::new()
            .when([
                Compare::create_revision(name_key.as_str(), CompareOp::Equal, 0),
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(key.as_str(), encode(task), None),
                TxnOp::put(name_key.as_str(), task.id.as_bytes().to_vec(), None),
            ]);
        self.commit(txn, "create container", &key)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => StoreError::NameTaken(task.container_name.clone()),
                e => e,
            })
    }

    /// Rewrites the one-off container `task` if its key is still at `expect_mod_rev`.
    pub async fn put_container_if(
        &self,
        task: &Task,
        expect_mod_rev: i64,
    ) -> Result<(), StoreError> {
        self.put_if(
            &keys::container(&task.id),
            encode(task),
            expect_mod_rev,
            "put container",
        )
        .await
    }

    /// Renames the one-off container `task` (already carrying its new name) from `old`:
    /// the new name's key is claimed, the old one's dropped and the container rewritten in
    /// one transaction.
    pub async fn rename_container(
        &self,
        task: &Task,
        old: &str,
        expect_mod_rev: i64,
    ) -> Result<(), StoreError> {
        let key = keys::container(&task.id);
        let name_key = keys::container_name(&task.container_name);
        let txn = Txn::new()
            .when([
                Compare::create_revision(name_key.as_str(), CompareOp::Equal, 0),
                Compare::mod_revision(key.as_str(), CompareOp::Equal, expect_mod_rev),
            ])
            .and_then([
                TxnOp::put(key.as_str(), encode(task), None),
                TxnOp::put(name_key.as_str(), task.id.as_bytes().to_vec(), None),
                TxnOp::delete(keys::container_name(old), None),
            ]);
        self.commit(txn, "rename container", &key)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => StoreError::NameTaken(task.container_name.clone()),
                e => e,
            })
    }

    /// The last status `node` reported for `id`, if any.
    pub async fn status(&self, node: &str, id: &str) -> Result<Option<TaskStatus>, StoreError> {
        let key = keys::status(node, id);
        let resp = self
            .client
            .kv_client()
            .get(key.as_str(), None)
            .await
            .map_err(etcd("read status"))?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| decode::<TaskStatus>(kv.key(), kv.value()).ok()))
    }

    /// Deletes the one-off container `task`: its key, its name's key and its status.
    pub async fn delete_container(&self, task: &Task) -> Result<(), StoreError> {
        let key = keys::container(&task.id);
        let txn = Txn::new().and_then([
            TxnOp::delete(key.as_str(), None),
            TxnOp::delete(keys::container_name(&task.container_name), None),
            TxnOp::delete(keys::status(&task.node, &task.id), None),
        ]);
        self.commit(txn, "delete container", &key).await
    }

    /// Writes `value` at `key` if the key is still at `expect_mod_rev` (0: must not exist).
    async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        expect_mod_rev: i64,
        op: &'static str,
    ) -> Result<(), StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expect_mod_rev)])
            .and_then([TxnOp::put(key, value, None)]);
        self.commit(txn, op, key).await
    }

    /// Writes `svc` if its key is still at `expect_mod_rev` (0: must not exist), together
    /// with the record of its new revision (if any) and the removal of the records `prune`
    /// pushes out of the history: one transaction, so history never disagrees with the service.
    /// The controller's writes pass `leader` to fence them.
    pub async fn put_service_revision_if(
        &self,
        leader: Option<&LeaderKey>,
        svc: &Service,
        expect_mod_rev: i64,
        record: Option<&Revision>,
        prune: &[u64],
        rollout: Option<(&rctl_api::pb::CanaryRollout, i64)>,
    ) -> Result<(), StoreError> {
        let name = svc
            .spec
            .as_ref()
            .map(|s| s.name.as_str())
            .unwrap_or_default();
        let key = keys::service(name);
        let mut ops = vec![TxnOp::put(key.as_str(), encode(svc), None)];
        if let Some(r) = record {
            ops.push(TxnOp::put(
                keys::revision(name, r.revision),
                encode(r),
                None,
            ));
        }
        for n in prune {
            ops.push(TxnOp::delete(keys::revision(name, *n), None));
        }
        let mut cmps = vec![Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            expect_mod_rev,
        )];
        // A canary's record (rollouts/{svc}) goes with the service it steers, guarded too.
        if let Some((r, rollout_mod_rev)) = rollout {
            let rkey = keys::rollout(name);
            cmps.push(Compare::mod_revision(
                rkey.as_str(),
                CompareOp::Equal,
                rollout_mod_rev,
            ));
            ops.push(TxnOp::put(rkey, encode(r), None));
        }
        let txn = Txn::new().when(cmps).and_then(ops);
        match leader {
            Some(leader) => self.commit_fenced(leader, txn, "put service", &key).await,
            None => self.commit(txn, "put service", &key).await,
        }
    }

    /// Writes a service change ([`ServiceWrite`]) in one transaction, guarded by the mod
    /// revisions of the service key and, when it carries a canary record, the rollout key,
    /// as `loaded` read them. The controller's writes pass `leader` to fence them.
    pub async fn write_service(
        &self,
        leader: Option<&LeaderKey>,
        w: &ServiceWrite,
        loaded: &Loaded,
    ) -> Result<(), StoreError> {
        let name = w
            .service
            .spec
            .as_ref()
            .map(|s| s.name.as_str())
            .unwrap_or_default();
        let rollout = w
            .rollout
            .as_ref()
            .map(|r| (r, loaded.mod_revision(&keys::rollout(name))));
        self.put_service_revision_if(
            leader,
            &w.service,
            loaded.mod_revision(&keys::service(name)),
            w.record.as_ref(),
            &w.prune,
            rollout,
        )
        .await
    }

    /// Writes `service`'s canary record if its key is still at `expect_mod_rev`.
    pub async fn put_rollout_if(
        &self,
        r: &rctl_api::pb::CanaryRollout,
        service: &str,
        expect_mod_rev: i64,
    ) -> Result<(), StoreError> {
        self.put_if(
            &keys::rollout(service),
            encode(r),
            expect_mod_rev,
            "put rollout",
        )
        .await
    }

    /// Writes several services at once, each guarded by its mod revision.
    pub async fn put_services_if(&self, updates: &[(Service, i64)]) -> Result<(), StoreError> {
        let mut cmps = Vec::new();
        let mut ops = Vec::new();
        for (svc, rev) in updates {
            let key = keys::service(
                svc.spec
                    .as_ref()
                    .map(|s| s.name.as_str())
                    .unwrap_or_default(),
            );
            cmps.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev));
            ops.push(TxnOp::put(key.as_str(), encode(svc), None));
        }
        self.commit(Txn::new().when(cmps).and_then(ops), "scale", "services")
            .await
    }

    /// Marks `node` draining unless it already is (an existing mark keeps its time).
    pub async fn put_drain(&self, node: &str, drain: &NodeDrain) -> Result<(), StoreError> {
        let key = keys::node_drain(node);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), encode(drain), None)]);
        match self.commit(txn, "drain node", &key).await {
            Err(StoreError::Conflict(_)) => Ok(()),
            other => other,
        }
    }

    /// Clears `node`'s drain mark; true if there was one.
    pub async fn delete_drain(&self, node: &str) -> Result<bool, StoreError> {
        let resp = self
            .client
            .kv_client()
            .delete(keys::node_drain(node), None)
            .await
            .map_err(etcd("activate node"))?;
        Ok(resp.deleted() > 0)
    }

    /// Removes the service and its revision history (a service created again under the
    /// same name starts a new history at revision 1).
    pub async fn delete_service(&self, name: &str) -> Result<bool, StoreError> {
        let key = keys::service(name);
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.as_str(),
                CompareOp::Greater,
                0,
            )])
            .and_then([
                TxnOp::delete(key.as_str(), None),
                TxnOp::delete(
                    keys::service_revisions_prefix(name),
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                ),
            ]);
        match self.commit(txn, "delete service", &key).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates `task` if its service is still at `service_mod_rev`, the task key is new and
    /// `leader` still holds the election.
    pub async fn create_task(
        &self,
        leader: &LeaderKey,
        task: &Task,
        service_mod_rev: i64,
    ) -> Result<(), StoreError> {
        self.commit_changes(
            leader,
            &[Change::Create {
                task,
                service_mod_rev,
            }],
        )
        .await
    }

    /// Rewrites `task` if it is still at `expect_mod_rev` and `leader` still holds the election.
    pub async fn update_task(
        &self,
        leader: &LeaderKey,
        task: &Task,
        expect_mod_rev: i64,
    ) -> Result<(), StoreError> {
        self.commit_changes(
            leader,
            &[Change::Update {
                task,
                mod_rev: expect_mod_rev,
            }],
        )
        .await
    }

    /// Removes a task and its last status, together, if `leader` still holds the election.
    pub async fn delete_task(&self, leader: &LeaderKey, task: &Task) -> Result<(), StoreError> {
        self.commit_changes(leader, &[Change::Delete { task }])
            .await
    }

    /// Deletes `task`'s endpoint so the LBs drain it, if `leader` still holds the election.
    pub async fn withdraw_endpoint(
        &self,
        leader: &LeaderKey,
        task: &Task,
    ) -> Result<(), StoreError> {
        let key = keys::endpoint(&task.service, &task.id);
        let txn = Txn::new().and_then([TxnOp::delete(key.as_str(), None)]);
        self.commit_fenced(leader, txn, "withdraw endpoint", &key)
            .await
    }

    /// Applies `changes` in one transaction fenced by `leader`: all of them, or none if any
    /// guard fails. They must fit one transaction ([`split`] makes runs that do); batching
    /// is what lets one pass place ten thousand tasks in 80 round trips.
    pub async fn commit_changes(
        &self,
        leader: &LeaderKey,
        changes: &[Change<'_>],
    ) -> Result<(), StoreError> {
        let Some(first) = changes.first() else {
            return Ok(());
        };
        debug_assert_eq!(
            split(changes).len(),
            1,
            "{} changes do not fit",
            changes.len()
        );
        let (op, what) = first.describe();
        let what = if changes.len() > 1 {
            format!("{what} and {} more", changes.len() - 1)
        } else {
            what
        };
        // A service guards every task created for it: compare it once per transaction.
        let mut services: HashMap<String, i64> = HashMap::new();
        let mut cmps = Vec::new();
        let mut ops = Vec::new();
        for c in changes {
            match c {
                Change::Create {
                    task,
                    service_mod_rev,
                } => {
                    let tkey = keys::task(&task.service, &task.id);
                    services.insert(keys::service(&task.service), *service_mod_rev);
                    cmps.push(Compare::create_revision(tkey.as_str(), CompareOp::Equal, 0));
                    ops.push(TxnOp::put(tkey.as_str(), encode(*task), None));
                }
                Change::Update { task, mod_rev } => {
                    let key = keys::task(&task.service, &task.id);
                    cmps.push(Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        *mod_rev,
                    ));
                    ops.push(TxnOp::put(key.as_str(), encode(*task), None));
                }
                Change::Delete { task } => {
                    ops.push(TxnOp::delete(keys::task(&task.service, &task.id), None));
                    ops.push(TxnOp::delete(keys::status(&task.node, &task.id), None));
                }
            }
        }
        for (key, rev) in services {
            cmps.push(Compare::mod_revision(key, CompareOp::Equal, rev));
        }
        self.commit_fenced(leader, Txn::new().when(cmps).and_then(ops), op, &what)
            .await
    }

    async fn commit(&self, txn: Txn, op: &'static str, what: &str) -> Result<(), StoreError> {
        let resp = self.client.kv_client().txn(txn).await.map_err(etcd(op))?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(StoreError::Conflict(what.to_string()))
        }
    }

    /// Runs `txn` nested inside a transaction that first checks the leader key still exists
    /// at the revision it was created with. The nesting tells a lost election
    /// ([`StoreError::NotLeader`]) apart from an ordinary conflict in one round trip.
    async fn commit_fenced(
        &self,
        leader: &LeaderKey,
        txn: Txn,
        op: &'static str,
        what: &str,
    ) -> Result<(), StoreError> {
        let fenced = Txn::new()
            .when([Compare::create_revision(
                leader.key(),
                CompareOp::Equal,
                leader.rev(),
            )])
            .and_then([TxnOp::txn(txn)]);
        let resp = self
            .client
            .kv_client()
            .txn(fenced)
            .await
            .map_err(etcd(op))?;
        if !resp.succeeded() {
            return Err(StoreError::NotLeader(what.to_string()));
        }
        match resp.op_responses().first() {
            Some(TxnOpResponse::Txn(inner)) if inner.succeeded() => Ok(()),
            _ => Err(StoreError::Conflict(what.to_string())),
        }
    }

    /// Watches every rctl key from `from_rev`.
    pub async fn watch(&self, from_rev: i64) -> Result<etcd_client::WatchStream, StoreError> {
        self.client
            .watch_client()
            .watch(
                keys::ROOT,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(from_rev),
                ),
            )
            .await
            .map_err(etcd("watch"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(service: &str, id: usize) -> Task {
        Task {
            id: format!("t{id}"),
            service: service.into(),
            ..Default::default()
        }
    }

    #[test]
    fn split_fills_transactions_to_etcds_limit_and_keeps_order() {
        let tasks: Vec<Task> = (0..10_000).map(|i| task("web", i)).collect();
        let creates: Vec<Change<'_>> = tasks
            .iter()
            .map(|task| Change::Create {
                task,
                service_mod_rev: 1,
            })
            .collect();
        let runs = split(&creates);
        assert_eq!(
            runs.len(),
            80,
            "126 creations and their service compare per txn"
        );
        assert_eq!(runs[0], 0..126);
        assert_eq!(runs.last().unwrap().end, 10_000);
        assert!(runs.windows(2).all(|w| w[0].end == w[1].start));

        // Deletions cost two operations; a second service one more compare.
        let other = task("db", 0);
        let mut mixed: Vec<Change<'_>> = tasks[..100]
            .iter()
            .map(|task| Change::Delete { task })
            .collect();
        mixed.push(Change::Create {
            task: &other,
            service_mod_rev: 1,
        });
        assert_eq!(split(&mixed), vec![0..63, 63..101]);
        assert!(split(&[]).is_empty());
    }
}
