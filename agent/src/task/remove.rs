//! Removing a container: its directory (and cgroup), its anonymous volumes when asked or
//! when it was a service task's, its status key when it is no longer this node's.

use rctl_api::pb;
use tracing::{info, warn};

use super::{Inner, Stop};
use crate::runtime;
use crate::runtime::state::ContainerDir;

pub(super) async fn remove(inner: &Inner, task: &pb::Task, dir: &ContainerDir, stop: Stop) {
    // Read before the directory goes. A service task's are removed with it always: its
    // replacement gets fresh ones, so keeping them would only pile them up.
    let volumes = if stop.volumes || !task.service.is_empty() {
        dir.read_config()
            .map(|c| c.anonymous_volumes)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    // Every process of it is ended before it counts as removed; what could not be is
    // left to the orphan sweep, which finds the cgroup no actor claims.
    let clean = match runtime::remove_dir(&dir.0).await {
        Ok(()) => true,
        Err(e) => {
            warn!(task = %task.id, error = %e, "container not removed cleanly; the orphan sweep retries");
            false
        }
    };
    for name in volumes {
        let path = inner.root.join("volumes").join(&name);
        match tokio::fs::remove_dir_all(&path).await {
            Ok(()) => info!(task = %task.id, volume = %name, "anonymous volume removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(task = %task.id, volume = %name, error = %e, "cannot remove volume"),
        }
    }
    if stop.forget {
        if let Err(e) = inner.cluster.delete_status(&task.id).await {
            warn!(task = %task.id, error = %e, "cannot delete task status");
        }
    }
    inner
        .actors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&task.id);
    if clean {
        info!(task = %task.id, "container removed");
    }
}
