//! The reconcile loop: read everything, decide with [`reconcile`], write the decisions to
//! etcd (guarded), then tell agents. Woken by any etcd change under `/rctl/v1/` and by a
//! periodic tick, so it is level-triggered: a missed event only delays the next pass.
//!
//! Only the elected leader ([`crate::leader`]) runs passes. A term ends, and the pass in
//! flight is dropped at once, when the lease is lost or a fenced write is refused; the
//! replica then campaigns again. On shutdown the leader resigns so a follower takes over.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::LeaderKey;
use futures::StreamExt;
use rctl_api::pb::{DesiredState, Task};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agents::Agents;
use crate::leader::{Election, Term};
use crate::reconcile::{self, reconcile, Action};
use crate::store::{split, Change, Store, StoreError};
use crate::{canary, revisions, rollout};

const TICK: Duration = Duration::from_secs(1);

/// Why a term ended.
enum TermEnd {
    Shutdown,
    Lost(&'static str),
}

/// Campaigns, reconciles while leading, and campaigns again after losing, until `shutdown`.
pub async fn run(store: Store, agents: Agents, election: Election, shutdown: CancellationToken) {
    let wake = Arc::new(Notify::new());
    tokio::spawn(watch(store.clone(), wake.clone(), shutdown.clone()));
    let node = election.value().to_string();
    loop {
        let Some(term) = election.campaign(&shutdown).await else {
            return;
        };
        tracing::info!(node = %node, rev = term.key().rev(), "became leader");
        election.set_leading(true);
        let end = lead(&store, &agents, &term, &wake, &shutdown).await;
        // Stop taking writes before resigning, so none lands after a successor leads.
        election.set_leading(false);
        term.resign().await;
        match end {
            TermEnd::Shutdown => {
                tracing::info!(node = %node, "resigned leadership on shutdown");
                return;
            }
            TermEnd::Lost(why) => tracing::warn!(node = %node, reason = why, "lost leadership"),
        }
    }
}

/// Runs passes for one term; a pass in flight is dropped the moment the term ends.
async fn lead(
    store: &Store,
    agents: &Agents,
    term: &Term,
    wake: &Notify,
    shutdown: &CancellationToken,
) -> TermEnd {
    let lost = term.lost();
    loop {
        let res = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return TermEnd::Shutdown,
            _ = lost.cancelled() => return TermEnd::Lost("lease lost"),
            r = pass(store, agents, term.key()) => r,
        };
        match res {
            Ok(()) => {}
            Err(StoreError::NotLeader(_)) => return TermEnd::Lost("fenced write refused"),
            Err(e) => tracing::warn!(error = %e, "reconcile pass failed; retrying"),
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return TermEnd::Shutdown,
            _ = lost.cancelled() => return TermEnd::Lost("lease lost"),
            _ = wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// etcd transactions of one pass in flight at once.
const TXNS_IN_FLIGHT: usize = 16;

/// A task change the plan asks for, waiting to be written.
struct Pending {
    task: Task,
    kind: Kind,
    reason: &'static str,
}

enum Kind {
    Create { service_mod_rev: i64 },
    Retire { mod_rev: i64 },
    Delete,
}

impl Pending {
    fn change(&self) -> Change<'_> {
        match self.kind {
            Kind::Create { service_mod_rev } => Change::Create {
                task: &self.task,
                service_mod_rev,
            },
            Kind::Retire { mod_rev } => Change::Update {
                task: &self.task,
                mod_rev,
            },
            Kind::Delete => Change::Delete { task: &self.task },
        }
    }
}

/// A batch of changes being written, resolving to the batch and its outcome.
type Commit<'a> =
    Pin<Box<dyn Future<Output = (&'a [Pending], Result<(), StoreError>)> + Send + 'a>>;

/// Writes one batch; returns it with the outcome.
fn commit<'a>(store: &'a Store, leader: &'a LeaderKey, chunk: &'a [Pending]) -> Commit<'a> {
    Box::pin(async move {
        let changes: Vec<Change<'_>> = chunk.iter().map(Pending::change).collect();
        (chunk, store.commit_changes(leader, &changes).await)
    })
}

/// Rolling updates whose new revision never turns healthy ([`rollout::stalled`]) go back:
/// a new revision with the spec of the one still running, written like `rollback` (with
/// its history record) but fenced by `leader`. True if anything was written.
async fn roll_back_stalled(
    store: &Store,
    leader: &LeaderKey,
    loaded: &crate::store::Loaded,
) -> Result<bool, StoreError> {
    let mut wrote = false;
    for svc in &loaded.services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let tasks: Vec<&Task> = loaded
            .tasks
            .iter()
            .filter(|t| t.service == spec.name)
            .collect();
        // A canary that cannot start is rolled back by its own controller, stable untouched;
        // once finishing it is an ordinary update.
        if loaded.rollouts.get(&spec.name).is_some_and(|r| {
            canary::in_progress(r)
                && r.state() != rctl_api::pb::CanaryState::Finishing
                && r.canary_revision == svc.revision
        }) {
            continue;
        }
        let Some(stalled) = rollout::stalled(svc, &tasks, &loaded.statuses) else {
            continue;
        };
        let history = store.revisions(&spec.name).await?;
        let Ok(target) =
            revisions::rollback_target(&spec.name, &history, svc.revision, stalled.back_to)
        else {
            tracing::warn!(service = %spec.name, back_to = stalled.back_to, "revision to roll back to is not kept");
            continue;
        };
        let restored = revisions::rollback_spec(spec, target.spec.as_ref().unwrap_or(spec));
        let now = rctl_api::clock::now_unix_ms();
        let why = format!(
            "automatic rollback to revision {}: {}",
            stalled.back_to, stalled.reason
        );
        let mut record =
            revisions::record(&restored, svc.revision + 1, rollout::SCHEDULER, &why, now);
        if let Some(c) = record.cause.as_mut() {
            c.automatic = true;
        }
        let next = rctl_api::pb::Service {
            spec: Some(restored),
            revision: svc.revision + 1,
            created_unix_ms: svc.created_unix_ms,
            updated_unix_ms: now,
            traffic: None,
            cause: record.cause.clone(),
        };
        let kept: Vec<u64> = history.iter().map(|r| r.revision).collect();
        let key = rctl_api::keys::service(&spec.name);
        match store
            .put_service_revision_if(
                Some(leader),
                &next,
                loaded.mod_revision(&key),
                Some(&record),
                &revisions::to_prune(&kept, next.revision),
                None,
            )
            .await
        {
            Ok(()) => {
                tracing::warn!(service = %spec.name, revision = next.revision, reason = %why, "rolled back");
                wrote = true;
            }
            Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(wrote)
}

/// Advances every running canary one transition ([`canary::advance`]): the record and the
/// service's split in one transaction fenced by `leader` and guarded by both keys' mod
/// revisions, so a failover or a concurrent `promote`/`abort` can neither skip nor repeat a
/// step. A canary rolled back returns the service to its stable revision (same spec, same
/// tasks). True if anything was written.
async fn advance_canaries(
    store: &Store,
    leader: &LeaderKey,
    loaded: &crate::store::Loaded,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let mut wrote = false;
    for (name, r) in &loaded.rollouts {
        if !canary::in_progress(r) {
            continue;
        }
        let Some(svc) = loaded.service(name) else {
            continue;
        };
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let tasks: Vec<&Task> = loaded.tasks.iter().filter(|t| &t.service == name).collect();
        let step = if svc.revision != r.canary_revision && svc.revision != r.stable_revision {
            // Another apply took over: the canary is over, its tasks go with the update.
            let mut next = r.clone();
            next.set_state(rctl_api::pb::CanaryState::RolledBack);
            next.reason = format!("superseded by revision {}", svc.revision);
            Some(canary::Advance {
                rollout: next,
                traffic: canary::Traffic::Keep,
            })
        } else {
            let ready = tasks
                .iter()
                .filter(|t| {
                    t.revision == r.canary_revision
                        && t.desired_state() == DesiredState::Running
                        && reconcile::needs_drain(t, loaded.statuses.get(&t.id))
                })
                .count();
            let stats = loaded.stats.get(name).map(Vec::as_slice).unwrap_or(&[]);
            let stalled = rollout::stalled(svc, &tasks, &loaded.statuses);
            let observed = canary::Observed {
                canary_ready: ready,
                replaced: !rollout::rolling(svc, &tasks, &loaded.statuses),
                stats,
                failed: stalled.as_ref().map(|s| s.reason.as_str()),
                now_ms,
            };
            match canary::advance(r, &spec.canary.clone().unwrap_or_default(), &observed) {
                Ok(step) => step,
                Err(e) => {
                    tracing::warn!(service = %name, error = %e, "canary window unreadable");
                    None
                }
            }
        };
        let Some(step) = step else { continue };
        let mut next_svc = svc.clone();
        match &step.traffic {
            canary::Traffic::Keep => {}
            canary::Traffic::Set(t) => next_svc.traffic = Some(t.clone()),
            canary::Traffic::Clear => next_svc.traffic = None,
        }
        if step.rollout.state() == rctl_api::pb::CanaryState::RolledBack
            && svc.revision == r.canary_revision
        {
            // Back to the stable revision itself: its tasks stay, the canary's retire
            // (drained first), and all traffic goes to stable again.
            let history = store.revisions(name).await?;
            let Some(stable) = history.iter().find(|h| h.revision == r.stable_revision) else {
                tracing::warn!(service = %name, revision = r.stable_revision, "stable revision not kept; cannot roll back");
                continue;
            };
            let mut restored = stable.spec.clone().unwrap_or_default();
            // Scaling and rollout settings made during the canary stay.
            restored.replicas = spec.replicas;
            restored.update = spec.update;
            restored.canary = spec.canary.clone();
            next_svc.spec = Some(restored);
            next_svc.revision = r.stable_revision;
            next_svc.traffic = None;
            next_svc.cause = stable.cause.clone();
            next_svc.updated_unix_ms = now_ms;
        }
        let key = rctl_api::keys::service(name);
        let rkey = rctl_api::keys::rollout(name);
        match store
            .put_service_revision_if(
                Some(leader),
                &next_svc,
                loaded.mod_revision(&key),
                None,
                &[],
                Some((&step.rollout, loaded.mod_revision(&rkey))),
            )
            .await
        {
            Ok(()) => {
                tracing::info!(
                    service = %name,
                    state = ?step.rollout.state(),
                    step = step.rollout.step,
                    reason = %step.rollout.reason,
                    "canary advanced"
                );
                wrote = true;
            }
            Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(wrote)
}

/// One read → decide → act pass, every write fenced by `leader`. Task changes are written in
/// batches ([`Store::commit_changes`]), a few transactions at a time, and each batch's
/// agents are told as soon as it is written. Returns once etcd writes are done (RPCs run
/// on); [`StoreError::NotLeader`] ends the pass early.
pub async fn pass(store: &Store, agents: &Agents, leader: &LeaderKey) -> Result<(), StoreError> {
    let started = Instant::now();
    let loaded = store.load().await?;
    if roll_back_stalled(store, leader, &loaded).await? {
        // The next pass reconciles towards the restored revision.
        return Ok(());
    }
    if advance_canaries(store, leader, &loaded, rctl_api::clock::now_unix_ms()).await? {
        // The next pass reconciles with the new record and split.
        return Ok(());
    }
    let read = started.elapsed();
    let now_ms = rctl_api::clock::now_unix_ms();
    let plan = reconcile(&loaded.snapshot(now_ms));
    let decided = started.elapsed();
    for u in &plan.unplaced {
        tracing::debug!(service = %u.service, missing = u.missing, reason = %u.reason, "cannot place");
    }
    let addr: HashMap<&str, &str> = loaded
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.address.as_str()))
        .collect();
    let mut pending = Vec::new();
    // Specs of earlier revisions, read once per pass: a stable task lost mid-canary is
    // replaced with the stable revision, whose spec only the history keeps.
    let mut earlier: HashMap<String, Vec<rctl_api::pb::Revision>> = HashMap::new();
    for action in plan.actions {
        match action {
            Action::Place {
                service,
                node,
                slot,
                revision,
            } => {
                let Some(svc) = loaded.service(&service) else {
                    continue;
                };
                let spec = if revision == svc.revision {
                    svc.spec.clone().unwrap_or_default()
                } else {
                    if let std::collections::hash_map::Entry::Vacant(e) =
                        earlier.entry(service.clone())
                    {
                        e.insert(store.revisions(&service).await?);
                    }
                    match earlier[&service]
                        .iter()
                        .find(|r| r.revision == revision)
                        .and_then(|r| r.spec.clone())
                    {
                        Some(spec) => spec,
                        None => {
                            tracing::warn!(%service, revision, "no spec kept for the revision; not placing");
                            continue;
                        }
                    }
                };
                let service_mod_rev = loaded.mod_revision(&rctl_api::keys::service(&service));
                let task = Task {
                    id: new_task_id(),
                    service,
                    node,
                    revision,
                    image: spec.image,
                    command: spec.command,
                    env: spec.env,
                    container_port: spec.port.map(|p| p.container).unwrap_or(0),
                    desired_state: DesiredState::Running as i32,
                    created_unix_ms: rctl_api::clock::now_unix_ms(),
                    resources: spec.resources,
                    slot,
                    health: spec.health,
                    // tty, stdin, restart policy, stop signal and log rotation: the
                    // agent's defaults until service specs carry them.
                    ..Default::default()
                };
                pending.push(Pending {
                    task,
                    kind: Kind::Create { service_mod_rev },
                    reason: "placed",
                });
            }
            Action::Retire { mut task, reason } => {
                let mod_rev = loaded.mod_revision(&rctl_api::keys::task(&task.service, &task.id));
                task.set_desired_state(DesiredState::Shutdown);
                task.retired_unix_ms = now_ms;
                pending.push(Pending {
                    task,
                    kind: Kind::Retire { mod_rev },
                    reason,
                });
            }
            Action::Delete { task, reason } => pending.push(Pending {
                task,
                kind: Kind::Delete,
                reason,
            }),
            Action::EnsureRunning { task } => {
                if let Some(a) = addr.get(task.node.as_str()) {
                    agents.run(a, &task, false);
                }
            }
            Action::EnsureStopped { task } => {
                if let Some(a) = addr.get(task.node.as_str()) {
                    agents.stop(a, &task, false);
                }
            }
            Action::Withdraw { task } => match store.withdraw_endpoint(leader, &task).await {
                Ok(()) => {
                    tracing::debug!(service = %task.service, task = %task.id, "endpoint withdrawn for drain")
                }
                Err(e @ StoreError::NotLeader(_)) => return Err(e),
                Err(e) => tracing::warn!(error = %e, task = %task.id, "cannot withdraw endpoint"),
            },
        }
    }

    // Built up front: a stream holding a closure over these borrows is not provably Send.
    let changes: Vec<Change<'_>> = pending.iter().map(Pending::change).collect();
    let batches: Vec<_> = split(&changes)
        .into_iter()
        .map(|run| commit(store, leader, &pending[run]))
        .collect();
    let mut written = futures::stream::iter(batches).buffer_unordered(TXNS_IN_FLIGHT);
    let (mut placed, mut retired, mut deleted) = (0usize, 0usize, 0usize);
    // Agents are told once every batch is written: their status writes would otherwise
    // compete with the placements for etcd (measured: placing 10,000 took 2.7-4.5 s while
    // acknowledgements streamed in).
    let mut written_ok: Vec<&[Pending]> = Vec::new();
    while let Some((chunk, res)) = written.next().await {
        match res {
            Ok(()) => {}
            Err(e @ StoreError::NotLeader(_)) => return Err(e),
            // A conflict means our view is stale; the next pass sees the new state.
            Err(e) => {
                tracing::debug!(error = %e, changes = chunk.len(), "batch skipped");
                continue;
            }
        }
        written_ok.push(chunk);
    }
    let write_ms = (started.elapsed() - decided).as_millis() as u64;
    for p in written_ok.into_iter().flatten() {
        let t = &p.task;
        tracing::debug!(service = %t.service, task = %t.id, node = %t.node, slot = t.slot, reason = p.reason, "task written");
        let a = addr.get(t.node.as_str());
        match p.kind {
            Kind::Create { .. } => {
                placed += 1;
                if let Some(a) = a {
                    agents.run(a, t, true);
                }
            }
            Kind::Retire { .. } => {
                retired += 1;
                // One serving traffic is stopped by a later pass, once drained (reconcile's
                // drain gate); the write wakes that pass.
                let serving = reconcile::needs_drain(t, loaded.statuses.get(&t.id));
                if let (Some(a), false) = (a, serving) {
                    agents.stop(a, t, true);
                }
            }
            Kind::Delete => deleted += 1,
        }
    }
    if placed + retired + deleted > 0 {
        tracing::info!(
            placed,
            retired,
            deleted,
            tasks = loaded.tasks.len(),
            read_ms = read.as_millis() as u64,
            decide_ms = (decided - read).as_millis() as u64,
            write_ms,
            "tasks written"
        );
    }
    let live: HashSet<&str> = loaded.tasks.iter().map(|t| t.id.as_str()).collect();
    agents.retain(|id| live.contains(id));
    Ok(())
}

/// A 16-hex-digit random id; its first 12 digits are the container's short id and hostname.
pub fn new_task_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Wakes the loop on every change; resumes after errors from the last revision seen and
/// re-lists (by waking the loop, which reads everything) after compaction.
async fn watch(store: Store, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut from = 0i64;
    loop {
        if from == 0 {
            match store.load().await {
                Ok(l) => from = l.revision + 1,
                Err(e) => {
                    tracing::warn!(error = %e, "watch: initial read failed");
                    tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(TICK) => continue }
                }
            }
        }
        let mut stream = match store.watch(from).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "watch failed; retrying");
                tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(TICK) => continue }
            }
        };
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = stream.next() => m,
            };
            match msg {
                Some(Ok(resp)) => {
                    if resp.compact_revision() > 0 {
                        from = 0;
                        wake.notify_one();
                        break;
                    }
                    if let Some(h) = resp.header() {
                        from = from.max(h.revision() + 1);
                    }
                    if !resp.events().is_empty() {
                        wake.notify_one();
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watch broke; resuming");
                    break;
                }
                None => break,
            }
        }
        wake.notify_one();
    }
}
