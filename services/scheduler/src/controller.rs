//! The reconcile loop: read everything, decide with [`reconcile`], write the decisions to
//! etcd (guarded), then tell agents. Woken by any etcd change under `/rctl/v1/` and by a
//! periodic tick, so it is level-triggered: a missed event only delays the next pass.
//!
//! Only the elected leader ([`crate::leader`]) runs passes. A term ends, and the pass in
//! flight is dropped at once, when the lease is lost or a fenced write is refused; the
//! replica then campaigns again. On shutdown the leader resigns so a follower takes over.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::LeaderKey;
use futures::StreamExt;
use rctl_api::pb::{DesiredState, Task};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::agents::Agents;
use crate::leader::{Election, Term};
use crate::reconcile::{reconcile, Action};
use crate::store::{Loaded, Store, StoreError};

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

/// One read → decide → act pass, every write fenced by `leader`. Returns once etcd writes
/// are done (RPCs run on); [`StoreError::NotLeader`] ends the pass early.
pub async fn pass(store: &Store, agents: &Agents, leader: &LeaderKey) -> Result<(), StoreError> {
    let loaded = store.load().await?;
    let plan = reconcile(&loaded.snapshot(rctl_api::clock::now_unix_ms()));
    for u in &plan.unplaced {
        tracing::debug!(service = %u.service, missing = u.missing, reason = %u.reason, "cannot place");
    }
    let addr: HashMap<&str, &str> = loaded
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.address.as_str()))
        .collect();
    for action in plan.actions {
        match apply(store, agents, leader, &loaded, &addr, action).await {
            Ok(()) => {}
            Err(e @ StoreError::NotLeader(_)) => return Err(e),
            // A conflict means our view is stale; the next pass sees the new state.
            Err(e) => tracing::debug!(error = %e, "action skipped"),
        }
    }
    agents.retain(|id| loaded.tasks.iter().any(|t| t.id == id));
    Ok(())
}

async fn apply(
    store: &Store,
    agents: &Agents,
    leader: &LeaderKey,
    loaded: &Loaded,
    addr: &HashMap<&str, &str>,
    action: Action,
) -> Result<(), StoreError> {
    match action {
        Action::Place {
            service,
            node,
            slot,
            revision,
        } => {
            let Some(svc) = loaded.service(&service) else {
                return Ok(());
            };
            let spec = svc.spec.clone().unwrap_or_default();
            let task = Task {
                id: new_task_id(),
                service: service.clone(),
                node: node.clone(),
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
            };
            store
                .create_task(
                    leader,
                    &task,
                    loaded.mod_revision(&rctl_api::keys::service(&service)),
                )
                .await?;
            tracing::info!(service = %service, task = %task.id, node = %node, slot, "placed");
            if let Some(a) = addr.get(node.as_str()) {
                agents.run(a, &task, true);
            }
        }
        Action::Retire { mut task, reason } => {
            let rev = loaded.mod_revision(&rctl_api::keys::task(&task.service, &task.id));
            task.set_desired_state(DesiredState::Shutdown);
            store.update_task(leader, &task, rev).await?;
            tracing::info!(service = %task.service, task = %task.id, reason, "retired");
            if let Some(a) = addr.get(task.node.as_str()) {
                agents.stop(a, &task, true);
            }
        }
        Action::Delete { task, reason } => {
            store.delete_task(leader, &task).await?;
            tracing::info!(service = %task.service, task = %task.id, reason, "deleted");
        }
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
    }
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
