//! Task lifecycle on this host. Each container has one actor (a tokio task) that owns all of
//! its transitions, so they never interleave; the gRPC server and the orphan sweep only send
//! it commands ([`Cmd`]). States reported to etcd: PENDING → STARTING → RUNNING → STOPPING →
//! EXITED | FAILED.
//!
//! # Layout (one file per verb, as youki's libcontainer `container_*.rs`)
//! - [`actor`]: the actor of one container, from how it begins to its removal.
//! - [`accept`]: RunTask's acceptance (port check, pull feed), which starts the actor.
//! - [`create`]: a new container's pull, address allocation, config and profile.
//! - [`launch`]: starting a container's shim (first start, restart, `rctl start`) and
//!   tearing down its network.
//! - [`supervise`]: watching a running container: exit, health probes, endpoint.
//! - [`kill`]: signals, and a stop's signal-then-SIGKILL.
//! - [`restart`]: waiting out a restart backoff; restarts missed while no agent ran.
//! - [`status`]: what a status says: the status before anything happened, a finished one.
//! - [`remove`]: deleting a container's directory, volumes and status.
//! - [`adopt`]: rebuilding the actors from the container directories at start-up.
//! - [`sweep`]: the orphan sweep (its decision is pure).
//! - [`runtime`]: the [`Runtime`] trait, the one edge to the kernel and the shims, and
//!   its real ([`HostRuntime`]) and simulated ([`SimRuntime`]) implementations.
//! - [`cluster`]: the [`Cluster`] trait, the one edge to etcd ([`crate::store::Store`]),
//!   and an in-memory [`Recorder`] for tests.
//!
//! A container's files are read and written through [`ContainerDir`] only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rctl_api::{clock, pb};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use crate::image::feed::PullFeed;
use crate::image::{ImageError, ImageStore};
use crate::lifecycle::{self, LifecycleError, RestartPolicy};
use crate::network::{ipam, NetworkError};
use crate::runtime::spec::SpecError;
use crate::runtime::state::ContainerDir;
use crate::runtime::RuntimeError;

mod accept;
mod actor;
mod adopt;
mod cluster;
mod create;
mod kill;
mod launch;
mod remove;
mod restart;
mod runtime;
#[cfg(test)]
mod sim_tests;
mod status;
mod supervise;
mod sweep;

pub use crate::lifecycle::DEFAULT_STOP_TIMEOUT;
pub use crate::runtime::state::valid_id;
pub use cluster::{Cluster, Recorder};
pub use runtime::{Behaviour, HostRuntime, Runtime, SimRuntime};
pub use status::{base_status, finish};
pub use sweep::{sweep_decision, SWEEP_DRAIN_GRACE_MS, SWEEP_GRACE, SWEEP_INTERVAL};

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("invalid task: {0}")]
    Invalid(String),
    #[error("pull {image}: {source}")]
    Pull {
        image: String,
        #[source]
        source: ImageError,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Ipam(#[from] ipam::IpamError),
    #[error("network: {0}")]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Container(#[from] crate::runtime::container::ContainerError),
    #[error(transparent)]
    Mount(#[from] crate::runtime::mounts::MountError),
    /// The node's disk is below its reserve (RunTask refuses new containers then).
    #[error(transparent)]
    Disk(#[from] crate::runtime::disk::DiskError),
    /// Limits the kernel would refuse (RunTask checks them before anything is made).
    #[error(transparent)]
    Limits(crate::runtime::cgroups::CgroupError),
    #[error("no container {0} on this node")]
    NotFound(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("container {0} is not pulling its image (its node had it)")]
    NotPulling(String),
    #[error(transparent)]
    HostIp(#[from] crate::network::host_ip::HostIpError),
    #[error("port {port} is already allocated on node {node}")]
    PortAllocated { port: u32, node: String },
    #[error("container state {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A request to stop a container.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stop {
    /// None: the task's stop timeout, else [`DEFAULT_STOP_TIMEOUT`].
    pub timeout: Option<Duration>,
    /// Delete the container directory once stopped.
    pub remove: bool,
    /// Also delete the task's status key (the task no longer belongs to this node).
    pub forget: bool,
    /// With `remove`: also delete the container's anonymous volumes (`rm -v`, `--rm`).
    pub volumes: bool,
}

/// What an actor is asked to do (one channel, so requests apply in the order they came:
/// a restart is a stop then a start).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cmd {
    Stop(Stop),
    /// Start an exited or stopped container again; nothing if it runs.
    Start,
    /// Signal PID 1 of a running container.
    Kill(nix::sys::signal::Signal),
}

/// What RunTask refuses, before anything is done.
pub fn validate(task: &pb::Task) -> Result<(), TaskError> {
    if !valid_id(&task.id) {
        return Err(TaskError::Invalid(format!("bad task id {:?}", task.id)));
    }
    if task.image.is_empty() {
        return Err(TaskError::Invalid("no image".into()));
    }
    if task.container_port > u16::MAX as u32 {
        return Err(TaskError::Invalid("container port out of range".into()));
    }
    lifecycle::stop_signal(&task.stop_signal, "")?;
    RestartPolicy::parse(&task.restart_policy, task.restart_max_attempts)?;
    crate::runtime::userns::host_requested(&task.userns)
        .map_err(|e| TaskError::Invalid(e.to_string()))?;
    Ok(())
}

struct Actor {
    tx: mpsc::UnboundedSender<Cmd>,
    /// When RunTask accepted it; None for containers adopted at start-up.
    accepted: Option<Instant>,
    /// The pull RunTask started for it (its image was missing), for FollowTaskPull; kept
    /// while the actor lives, so a follower that comes late still sees how it went.
    pull: Option<Arc<PullFeed>>,
}

struct Inner {
    root: PathBuf,
    /// The kernel and the shims (or a simulation of them).
    runtime: Arc<dyn Runtime>,
    /// etcd (or a recording of it).
    cluster: Arc<dyn Cluster>,
    images: ImageStore,
    /// Serialises address/port allocation with writing the config that records it.
    alloc: tokio::sync::Mutex<()>,
    actors: Mutex<HashMap<String, Actor>>,
}

/// The tasks of this node.
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

impl Tasks {
    /// Containers under `root/containers`, run by `runtime`, reported to `cluster`.
    pub fn new(
        root: PathBuf,
        cluster: Arc<dyn Cluster>,
        images: ImageStore,
        runtime: Arc<dyn Runtime>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                runtime,
                root,
                cluster,
                images,
                alloc: tokio::sync::Mutex::new(()),
                actors: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn dir(&self, id: &str) -> ContainerDir {
        self.inner.dir(id)
    }

    /// The directory of container `id` (exists or not); None for an id that cannot be one.
    pub fn container_dir(&self, id: &str) -> Option<ContainerDir> {
        valid_id(id).then(|| self.dir(id))
    }

    /// Where every container's directory lives.
    pub fn containers_root(&self) -> PathBuf {
        self.inner.root.join("containers")
    }

    /// The pull RunTask started for `task_id`, to follow.
    pub fn follow_pull(&self, task_id: &str) -> Result<Arc<PullFeed>, TaskError> {
        let actors = self.inner.actors.lock().unwrap_or_else(|e| e.into_inner());
        let a = actors
            .get(task_id)
            .ok_or_else(|| TaskError::NotFound(task_id.to_string()))?;
        a.pull
            .clone()
            .ok_or_else(|| TaskError::NotPulling(task_id.to_string()))
    }
}

impl Inner {
    pub(super) fn dir(&self, id: &str) -> ContainerDir {
        ContainerDir(self.root.join("containers").join(id))
    }

    pub(super) fn stop(&self, id: &str, stop: Stop) {
        self.send(id, Cmd::Stop(stop));
    }

    /// Hands `cmd` to the actor of `id`; false when there is none.
    pub(super) fn send(&self, id: &str, cmd: Cmd) -> bool {
        match self
            .actors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            Some(a) => a.tx.send(cmd).is_ok(),
            None => false,
        }
    }

    pub(super) fn base_status(&self, task: &pb::Task) -> pb::TaskStatus {
        base_status(task, self.cluster.node())
    }

    pub(super) async fn report(&self, status: &mut pb::TaskStatus) {
        status.updated_unix_ms = clock::now_unix_ms();
        if let Err(e) = self.cluster.put_status(status).await {
            warn!(task = %status.task_id, error = %e, "cannot write task status");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_task_takes_userns_host_or_nothing() {
        let mut t = pb::Task {
            id: "t1".into(),
            image: "busybox".into(),
            ..Default::default()
        };
        assert!(validate(&t).is_ok());
        t.userns = "host".into();
        assert!(validate(&t).is_ok());
        t.userns = "private".into();
        let e = validate(&t).unwrap_err();
        assert!(matches!(e, TaskError::Invalid(_)), "{e}");
        assert!(e.to_string().contains("bad userns \"private\""), "{e}");
    }
}
