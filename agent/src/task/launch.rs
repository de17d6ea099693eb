//! Launching a container through a new shim (first start, a restart, `rctl start`): the
//! network is attached and ports published before the shim releases PID 1; teardown gives
//! them back.

use std::time::Duration;

use super::Cmd;
use super::{Inner, TaskError, Tasks};
use crate::runtime::state::{ContainerConfig, ContainerDir, PidRecord};

impl Tasks {
    /// Starts the exited or stopped container `task_id` again (a running one is left).
    pub fn start_task(&self, task_id: &str) -> Result<(), TaskError> {
        if !self.inner.send(task_id, Cmd::Start) {
            return Err(TaskError::NotFound(task_id.to_string()));
        }
        Ok(())
    }
}

impl Inner {
    /// Removes what the container holds on the host network.
    pub(super) async fn teardown(&self, cfg: &ContainerConfig) {
        self.runtime.teardown(cfg).await;
    }

    /// Starts the container of `cfg` through the runtime: first start, or a restart of an
    /// exited container (same directory, same writable layer, the log continues).
    pub(super) async fn launch(
        &self,
        dir: &ContainerDir,
        cfg: &ContainerConfig,
    ) -> Result<PidRecord, TaskError> {
        dir.clear_run()
            .await
            .map_err(|(path, source)| TaskError::State { path, source })?;
        // A container waiting for its attach client records its pid only once it starts.
        let attach_wait = dir
            .read_task()
            .attach_wait_ms
            .min(crate::shim::MAX_ATTACH_WAIT_MS);
        let limit = Duration::from_secs(10) + Duration::from_millis(attach_wait as u64);
        let started = self.runtime.start(dir, cfg, limit).await;
        if started.is_err() {
            // A shim that never reported, a setup that hung: none of it may keep running.
            self.runtime.end_processes(dir).await;
        }
        started
    }
}

/// Starts a finished container again from its directory (`rctl start`).
pub(super) async fn relaunch(
    inner: &Inner,
    dir: &ContainerDir,
) -> Result<(ContainerConfig, PidRecord), TaskError> {
    let cfg = dir.read_config().map_err(|source| TaskError::State {
        path: dir.config(),
        source,
    })?;
    match inner.launch(dir, &cfg).await {
        Ok(pid) => Ok((cfg, pid)),
        Err(e) => {
            inner.teardown(&cfg).await;
            Err(e)
        }
    }
}
