//! The orphan sweep: stops and removes local containers whose task is gone, moved to
//! another node or retired. [`sweep_decision`] is the pure rule, shared with the hollow nodes.

use std::collections::HashMap;
use std::time::Duration;

use rctl_api::{clock, pb};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Stop, Tasks};

/// How often the orphan sweep compares local containers with desired tasks.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// A task accepted this recently is never swept: its key may not be visible to us yet.
pub const SWEEP_GRACE: Duration = Duration::from_secs(10);
/// A task retired this recently is left to the scheduler, which stops it only once the load
/// balancers drained it (`[update] drain`); the sweep is the fallback if it never does.
pub const SWEEP_DRAIN_GRACE_MS: i64 = 120_000;

/// What the orphan sweep does with a local container, given its task in etcd (if any), at
/// wall-clock time `now_ms`.
pub fn sweep_decision(task: Option<&pb::Task>, node: &str, now_ms: i64) -> Option<Stop> {
    // A container whose key is gone: its volumes stay, as whether `rm -v` was asked is
    // not known.
    let stop = |forget| Stop {
        timeout: None,
        remove: true,
        forget,
        volumes: false,
    };
    match task {
        None => Some(stop(true)),
        Some(t) if t.node != node => Some(stop(true)),
        // A one-off container stopped by its user stays, with its log, until `rctl rm`.
        Some(t) if t.desired_state == pb::DesiredState::Stopped as i32 => None,
        Some(t) if t.desired_state != pb::DesiredState::Running as i32 => {
            let draining =
                t.retired_unix_ms > 0 && now_ms - t.retired_unix_ms < SWEEP_DRAIN_GRACE_MS;
            (!draining).then(|| stop(false))
        }
        Some(_) => None,
    }
}

impl Tasks {
    /// One orphan sweep: stops and removes local containers whose task is gone, moved to
    /// another node or retired. This is what keeps a host that comes back after being
    /// declared lost from running duplicates.
    pub async fn sweep(&self) -> Result<(), crate::store::StoreError> {
        let tasks = self.inner.cluster.desired().await?;
        let by_id: HashMap<&str, &pb::Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
        let candidates: Vec<(String, Option<Instant>)> = self
            .inner
            .actors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, a)| (id.clone(), a.accepted))
            .collect();
        for (id, accepted) in candidates {
            let task = by_id.get(id.as_str()).copied();
            if task.is_none() && accepted.is_some_and(|t| t.elapsed() < SWEEP_GRACE) {
                continue;
            }
            if let Some(stop) =
                sweep_decision(task, self.inner.cluster.node(), clock::now_unix_ms())
            {
                info!(container = %id, remove = stop.remove, "orphan sweep stops container");
                self.inner.stop(&id, stop);
            }
        }
        // Processes in container cgroups no actor claims: a removal that could not end them
        // all, or anything an earlier agent lost track of.
        // Listed first, claimed after: a container made meanwhile has its actor already.
        for id in self.inner.runtime.container_cgroups() {
            let known = self
                .inner
                .actors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&id)
                || self.inner.dir(&id).0.exists();
            if known {
                continue;
            }
            match self.inner.runtime.end_cgroup(&id).await {
                Ok(()) => {
                    warn!(container = %id, "orphan sweep ended an unknown container's processes")
                }
                Err(e) => {
                    warn!(container = %id, error = %e, "orphan sweep cannot end an unknown container")
                }
            }
        }
        // Statuses of tasks that are gone and left no container here (e.g. a failed pull).
        let local: Vec<String> = {
            let actors = self.inner.actors.lock().unwrap_or_else(|e| e.into_inner());
            actors.keys().cloned().collect()
        };
        for id in self.inner.cluster.status_ids().await? {
            if !by_id.contains_key(id.as_str()) && !local.contains(&id) {
                self.inner.cluster.delete_status(&id).await?;
            }
        }
        Ok(())
    }

    /// Sweeps every [`SWEEP_INTERVAL`] until `shutdown`.
    pub async fn run_sweeper(self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.sweep().await {
                warn!(error = %e, "orphan sweep failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(node: &str, desired: pb::DesiredState) -> pb::Task {
        pb::Task {
            id: "t1".into(),
            node: node.into(),
            desired_state: desired as i32,
            ..Default::default()
        }
    }

    #[test]
    fn sweep_keeps_only_tasks_desired_here() {
        assert_eq!(
            sweep_decision(Some(&task("h1", pb::DesiredState::Running)), "h1", 0),
            None
        );
        let gone = sweep_decision(None, "h1", 0).unwrap();
        assert!(gone.remove && gone.forget);
        let moved = sweep_decision(Some(&task("h2", pb::DesiredState::Running)), "h1", 0).unwrap();
        assert!(moved.remove && moved.forget);
        let retired =
            sweep_decision(Some(&task("h1", pb::DesiredState::Shutdown)), "h1", 0).unwrap();
        assert!(retired.remove && !retired.forget);
    }

    #[test]
    fn sweep_leaves_a_freshly_retired_task_to_the_schedulers_drain() {
        let mut t = task("h1", pb::DesiredState::Shutdown);
        t.retired_unix_ms = 1_000;
        assert_eq!(sweep_decision(Some(&t), "h1", 1_000 + 5_000), None);
        let late = sweep_decision(Some(&t), "h1", 1_000 + SWEEP_DRAIN_GRACE_MS).unwrap();
        assert!(late.remove && !late.forget);
    }
}
