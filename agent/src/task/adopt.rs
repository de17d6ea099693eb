//! Adoption at start-up: the actors are rebuilt from the container directories an earlier
//! agent left. Live containers are supervised again, finished ones reported, and exits
//! missed while no agent ran go to the restart policy.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::actor::{actor, Start};
use super::status::exit_reason;
use super::{Actor, Tasks};
use crate::lifecycle::{self, RestartPolicy, Restarts};
use crate::runtime;
use crate::runtime::state::valid_id;

impl Tasks {
    /// Rebuilds the view of local containers after a start: adopts live ones, reports
    /// finished ones.
    pub async fn adopt(&self) {
        let dir = self.inner.root.join("containers");
        runtime::empty_trash(&dir).await;
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
            return;
        };
        while let Ok(Some(e)) = entries.next_entry().await {
            let id = e.file_name().to_string_lossy().into_owned();
            if !valid_id(&id) {
                continue;
            }
            let cdir = self.dir(&id);
            let cfg = match cdir.read_config() {
                Ok(c) => c,
                Err(_) => {
                    // Created up to the directory only: nothing ran, nothing to report.
                    warn!(container = %id, "removing container without config");
                    self.inner.runtime.detach(&id).await;
                    let _ = runtime::remove_dir(&cdir.0).await;
                    continue;
                }
            };
            let Some(task) = cfg.task() else {
                warn!(container = %id, "container config has no readable task; leaving it");
                continue;
            };
            let start = match (cdir.read_exit(), cdir.read_pid()) {
                _ if cdir.failed().exists() => {
                    Start::Finished(None, cdir.read_failed().unwrap_or_default())
                }
                (Some(code), _) => Start::Finished(Some(code), exit_reason(&cdir, Some(code))),
                (None, Some(p)) if p.alive() => Start::Running(Box::new(cfg.clone()), p),
                (None, Some(_)) => Start::Finished(None, "container lost: its shim is gone".into()),
                (None, None) => Start::Finished(
                    None,
                    "agent restarted while the container was being created".into(),
                ),
            };
            let policy = RestartPolicy::parse(&task.restart_policy, task.restart_max_attempts)
                .unwrap_or_default();
            let start = match start {
                // Stopped by its user: only `always` brings it back when the agent starts.
                Start::Finished(Some(code), _)
                    if cdir.stopped().exists() && lifecycle::revive_stopped(policy) =>
                {
                    // As a start by hand: a fresh restart count, at once.
                    self.inner
                        .record_restart(&cdir, Restarts::default(), Duration::ZERO)
                        .await;
                    Start::Restart {
                        cfg: Box::new(cfg.clone()),
                        code: Some(code),
                        delay: Duration::ZERO,
                    }
                }
                Start::Finished(Some(code), why) if !cdir.stopped().exists() => {
                    match self.inner.missed_restart(&cdir, &task, code).await {
                        Some(delay) => Start::Restart {
                            cfg: Box::new(cfg.clone()),
                            code: Some(code),
                            delay,
                        },
                        None => Start::Finished(Some(code), why),
                    }
                }
                s => s,
            };
            match start {
                Start::Finished(..) | Start::Restart { .. } => self.inner.teardown(&cfg).await,
                _ => info!(container = %id, "adopted running container"),
            }
            let (tx, rx) = mpsc::unbounded_channel();
            self.inner
                .actors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    id.clone(),
                    Actor {
                        tx,
                        accepted: None,
                        pull: None,
                    },
                );
            let status = self.inner.base_status(&task);
            tokio::spawn(actor(self.inner.clone(), task, status, rx, start));
        }
    }
}
