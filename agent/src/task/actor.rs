//! The actor of one container: the one owner of its transitions, from how it begins
//! ([`Start`]) through supervision and restarts to its removal.

use std::sync::Arc;
use std::time::Duration;

use rctl_api::pb;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use super::create::{cleanup_failed_start, ImageSource};
use super::launch::relaunch;
use super::remove::remove;
use super::restart::{restart, Restarted};
use super::status::{exit_reason, finish};
use super::supervise::{supervise, Ended};
use super::{Cmd, Inner, Stop};
use crate::lifecycle::{self, RestartPolicy};
use crate::runtime::state::{ContainerConfig, PidRecord};

/// How an actor begins.
pub(super) enum Start {
    /// Create the container from its image.
    New(ImageSource),
    Running(Box<ContainerConfig>, PidRecord),
    Finished(Option<i32>, String),
    /// Exited while no agent watched it and its restart policy restarts it after `delay`.
    Restart {
        cfg: Box<ContainerConfig>,
        code: Option<i32>,
        delay: Duration,
    },
}

/// The one owner of a container's transitions.
pub(super) async fn actor(
    inner: Arc<Inner>,
    task: pb::Task,
    mut status: pb::TaskStatus,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    start: Start,
) {
    let dir = inner.dir(&task.id);
    let running = match start {
        Start::New(source) => {
            status.state = pb::TaskState::Pending as i32;
            inner.report(&mut status).await;
            let outcome = {
                let create = inner.create(&task, &mut status, source);
                tokio::pin!(create);
                // Only a stop interrupts a create; a start or a kill has nothing to act on yet.
                loop {
                    tokio::select! {
                        r = &mut create => break Ok(r),
                        cmd = rx.recv() => match cmd {
                            Some(Cmd::Stop(stop)) => break Err(Some(stop)),
                            None => break Err(None),
                            Some(_) => {}
                        },
                    }
                }
            };
            match outcome {
                Ok(Ok((cfg, pid))) => Some((cfg, pid)),
                Ok(Err(e)) => {
                    warn!(task = %task.id, error = %e, "task failed to start");
                    cleanup_failed_start(&inner, &dir).await;
                    if dir.0.exists() {
                        let _ = dir.mark_failed(&e.to_string()).await;
                    }
                    // The code `run` exits with: the one recorded (126/127: the command
                    // cannot be invoked or is not there), else 125 (not started).
                    let code = dir.read_exit().unwrap_or(125);
                    finish(&mut status, Some(code), false, e.to_string());
                    inner.report(&mut status).await;
                    None
                }
                Err(stop) => {
                    // Stopped while being created: undo whatever got done.
                    let pid = dir.read_pid();
                    let code = inner
                        .kill(&dir, pid, nix::sys::signal::Signal::SIGKILL, Duration::ZERO)
                        .await;
                    cleanup_failed_start(&inner, &dir).await;
                    finish(&mut status, code, true, String::new());
                    inner.report(&mut status).await;
                    if let Some(stop) = stop {
                        if stop.remove {
                            remove(&inner, &task, &dir, stop).await;
                            return;
                        }
                    }
                    None
                }
            }
        }
        Start::Running(cfg, pid) => Some((*cfg, pid)),
        Start::Finished(code, why) => {
            // The previous agent's lease may still hold this container's endpoint.
            inner.drop_endpoint(&task).await;
            status.pid = dir.read_pid().map(|p| p.pid as u32).unwrap_or(0);
            status.started_unix_ms = dir.started_unix_ms().unwrap_or(0);
            finish(&mut status, code, dir.stopped().exists(), why);
            inner.report(&mut status).await;
            None
        }
        Start::Restart { cfg, code, delay } => {
            inner.drop_endpoint(&task).await;
            let restarts = dir.read_restarts();
            match restart(
                &inner,
                &task,
                &mut status,
                &dir,
                *cfg,
                code,
                delay,
                restarts,
                &mut rx,
            )
            .await
            {
                Restarted::Running(cfg, pid) => Some((*cfg, pid)),
                Restarted::Finished => None,
                Restarted::Removed => return,
            }
        }
    };
    // Validated when the task was accepted; a task from an older agent has no policy.
    let policy =
        RestartPolicy::parse(&task.restart_policy, task.restart_max_attempts).unwrap_or_default();
    let mut running = running;
    'life: loop {
        while let Some((cfg, pid)) = running.take() {
            let since = Instant::now();
            let code = match supervise(&inner, &task, &mut status, &dir, &cfg, pid, &mut rx).await {
                Ended::Stopped(stop) if stop.remove => {
                    remove(&inner, &task, &dir, stop).await;
                    return;
                }
                Ended::Stopped(_) => break,
                Ended::Exited(code) => code,
            };
            let why = exit_reason(&dir, code);
            // Read back rather than kept: an earlier agent may have counted attempts already.
            let mut restarts = dir.read_restarts();
            let Some(delay) = lifecycle::after_exit(policy, code, since.elapsed(), &mut restarts)
            else {
                finish(&mut status, code, false, why);
                inner.report(&mut status).await;
                break;
            };
            inner.record_restart(&dir, restarts, delay).await;
            match restart(
                &inner,
                &task,
                &mut status,
                &dir,
                cfg,
                code,
                delay,
                restarts,
                &mut rx,
            )
            .await
            {
                Restarted::Running(cfg, pid) => running = Some((*cfg, pid)),
                Restarted::Finished => break,
                Restarted::Removed => return,
            }
        }
        // Finished. `--rm`: nothing is kept once the exit status is written.
        if task.auto_remove {
            // As Docker's --rm: the anonymous volumes go with it.
            let stop = Stop {
                timeout: None,
                remove: true,
                forget: true,
                volumes: true,
            };
            remove(&inner, &task, &dir, stop).await;
            if let Err(e) = inner.cluster.delete_container(&task).await {
                warn!(task = %task.id, error = %e, "cannot delete the removed container's keys");
            }
            return;
        }
        // Otherwise keep the container (logs, exit code) until asked to start or remove it.
        loop {
            match rx.recv().await {
                None => return,
                Some(Cmd::Stop(stop)) if stop.remove => {
                    remove(&inner, &task, &dir, stop).await;
                    return;
                }
                Some(Cmd::Start) => match relaunch(&inner, &dir).await {
                    Ok(r) => {
                        status.started_unix_ms = 0;
                        status.finished_unix_ms = 0;
                        status.exit_code = 0;
                        // A start by hand begins a fresh count of restarts.
                        dir.reset_restarts().await;
                        running = Some(r);
                        continue 'life;
                    }
                    Err(e) => {
                        warn!(task = %task.id, error = %e, "start failed");
                        finish(&mut status, None, false, format!("start failed: {e}"));
                        inner.report(&mut status).await;
                    }
                },
                Some(_) => {}
            }
        }
    }
}
