//! Restarting an exited container under its restart policy: waiting out the backoff (a
//! stop or `rctl start` cuts it short), and restarts an earlier agent missed or decided.

use std::time::Duration;

use rctl_api::{clock, pb};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::remove::remove;
use super::status::finish;
use super::{Cmd, Inner};
use crate::lifecycle::{self, RestartPolicy, Restarts};
use crate::runtime::state::{ContainerConfig, ContainerDir, PidRecord};

impl Inner {
    /// Whether container `dir` of `task`, found exited with `code` at start-up (not stopped
    /// on request), is restarted, and after what delay: a restart the previous agent had
    /// already decided keeps its due time; otherwise the restart policy decides on the
    /// missed exit, with the attempts counted so far. A restart is recorded before the
    /// actor waits for it, so its address stays reserved.
    pub(super) async fn missed_restart(
        &self,
        dir: &ContainerDir,
        task: &pb::Task,
        code: i32,
    ) -> Option<Duration> {
        let now = clock::now_unix_ms();
        let ms = |d: i64| Duration::from_millis(d.max(0) as u64);
        if let Some(due) = dir.read_restart_due() {
            return Some(ms(due - now));
        }
        let policy = RestartPolicy::parse(&task.restart_policy, task.restart_max_attempts)
            .unwrap_or_default();
        let exited = dir.exited_unix_ms().unwrap_or(now);
        let ran = ms(exited - dir.started_unix_ms().unwrap_or(exited));
        let mut restarts = dir.read_restarts();
        let delay =
            lifecycle::missed_exit(policy, Some(code), ran, ms(now - exited), &mut restarts)?;
        self.record_restart(dir, restarts, delay).await;
        Some(delay)
    }

    /// Persists the restart counter and that a restart is due after `delay`.
    pub(super) async fn record_restart(
        &self,
        dir: &ContainerDir,
        restarts: Restarts,
        delay: Duration,
    ) {
        let due = clock::now_unix_ms() + delay.as_millis() as i64;
        if let Err(e) = dir.record_restart(restarts, due).await {
            warn!(dir = %dir.0.display(), error = %e, "cannot record restart");
        }
    }
}

/// How waiting out a restart backoff ended.
pub(super) enum Restarted {
    /// Running again.
    Running(Box<ContainerConfig>, PidRecord),
    /// Stopped on request, or the restart failed (status reported).
    Finished,
    /// Stopped and removed on request.
    Removed,
}

/// Restarts the exited container of `cfg` after `delay` (its restart already recorded in
/// its directory), unless a stop comes first.
#[allow(clippy::too_many_arguments)]
pub(super) async fn restart(
    inner: &Inner,
    task: &pb::Task,
    status: &mut pb::TaskStatus,
    dir: &ContainerDir,
    cfg: ContainerConfig,
    code: Option<i32>,
    delay: Duration,
    restarts: Restarts,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
) -> Restarted {
    // Not failed: the task is still meant to run here, the agent restarts it.
    status.state = pb::TaskState::Starting as i32;
    status.exit_code = code.unwrap_or(-1);
    status.message = format!(
        "restart {} in {delay:?} after exit code {}",
        restarts.streak,
        code.unwrap_or(-1)
    );
    inner.report(status).await;
    info!(task = %task.id, ?delay, "restarting container");
    let backoff = tokio::time::sleep(delay);
    tokio::pin!(backoff);
    let stop = loop {
        tokio::select! {
            _ = &mut backoff => break None,
            cmd = rx.recv() => match cmd {
                // `rctl start` (or restart) does not wait for the backoff.
                Some(Cmd::Start) => break None,
                Some(Cmd::Kill(_)) => {}
                Some(Cmd::Stop(stop)) => break Some(stop),
                // Every sender gone means the agent is shutting down: the next one restarts it.
                None => return Restarted::Finished,
            },
        }
    };
    if let Some(stop) = stop {
        let _ = dir.mark_stopped().await;
        dir.cancel_restart().await;
        finish(status, code, true, String::new());
        inner.report(status).await;
        if stop.remove {
            remove(inner, task, dir, stop).await;
            return Restarted::Removed;
        }
        return Restarted::Finished;
    }
    match inner.launch(dir, &cfg).await {
        Ok(pid) => {
            status.started_unix_ms = 0;
            status.finished_unix_ms = 0;
            Restarted::Running(Box::new(cfg), pid)
        }
        Err(e) => {
            warn!(task = %task.id, error = %e, "restart failed");
            inner.teardown(&cfg).await;
            let why = format!("restart failed: {e}");
            // Finished for good: its address is free and a later agent reports it failed.
            let _ = dir.mark_failed(&why).await;
            finish(status, code, false, why);
            inner.report(status).await;
            Restarted::Finished
        }
    }
}
