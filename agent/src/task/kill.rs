//! Signalling a container: a stop request to its actor, a signal to PID 1, and the stop
//! itself (the stop signal, then SIGKILL after the timeout).

use std::time::Duration;

use tokio::time::Instant;

use super::{Cmd, Inner, Stop, TaskError, Tasks};
use crate::runtime::state::{ContainerDir, PidRecord};

impl Tasks {
    /// Asks the container of `task_id` to stop (idempotent; unknown ids succeed); with
    /// `remove` to remove it, and with `volumes` its anonymous volumes too.
    pub fn stop_task(&self, task_id: &str, timeout: Option<Duration>, remove: bool, volumes: bool) {
        self.inner.stop(
            task_id,
            Stop {
                timeout,
                remove,
                forget: false,
                volumes,
            },
        );
    }

    /// Signals PID 1 of the running container `task_id`.
    pub fn kill_task(&self, task_id: &str, sig: nix::sys::signal::Signal) -> Result<(), TaskError> {
        if !self.dir(task_id).is_running() {
            return Err(TaskError::NotRunning(task_id.to_string()));
        }
        if !self.inner.send(task_id, Cmd::Kill(sig)) {
            return Err(TaskError::NotFound(task_id.to_string()));
        }
        Ok(())
    }
}

impl Inner {
    /// `sig` (the stop signal), then SIGKILL after `timeout`; returns the exit status once
    /// known.
    pub(super) async fn kill(
        &self,
        dir: &ContainerDir,
        pid: Option<PidRecord>,
        sig: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> Option<i32> {
        let wait = |limit: Duration| async move {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                match pid {
                    Some(p) if !self.runtime.finished(dir, &p) => {}
                    _ => return,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if let Some(p) = pid {
            self.runtime.signal(dir, &p, sig);
            wait(timeout).await;
            self.runtime
                .signal(dir, &p, nix::sys::signal::Signal::SIGKILL);
            wait(Duration::from_secs(5)).await;
        }
        self.exit_code(dir).await
    }

    /// The shim writes the exit file right after reaping, so give it a moment.
    pub(super) async fn exit_code(&self, dir: &ContainerDir) -> Option<i32> {
        for _ in 0..20 {
            if let Some(c) = dir.read_exit() {
                return Some(c);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}
