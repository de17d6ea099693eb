//! Task lifecycle on this host. Each container has one actor (a tokio task) that owns all of
//! its transitions — create, supervise (exit watch, health, endpoint), stop, remove — so
//! they never interleave. The gRPC server and the orphan sweep only send it commands.
//!
//! States reported to etcd: PENDING → STARTING → RUNNING → STOPPING → EXITED | FAILED.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use rctl_api::{clock, keys, pb};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::health::{self, Health, Transition};
use crate::image::feed::PullFeed;
use crate::image::registry::Credentials;
use crate::image::{ImageError, ImageStore};
use crate::lifecycle::{self, LifecycleError, RestartPolicy, Restarts};
use crate::network::{ipam, Network, NetworkError};
use crate::runtime::spec::{self, SpecError};
use crate::runtime::state::{write_atomic, ContainerConfig, ContainerDir, PidRecord};
use crate::runtime::{self, RuntimeError, Shim};
use crate::store::Store;

pub use crate::lifecycle::DEFAULT_STOP_TIMEOUT;
/// How often the orphan sweep compares local containers with desired tasks.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// A task accepted this recently is never swept: its key may not be visible to us yet.
const SWEEP_GRACE: Duration = Duration::from_secs(10);
/// A task retired this recently is left to the scheduler, which stops it only once the load
/// balancers drained it (`[update] drain`); the sweep is the fallback if it never does.
pub const SWEEP_DRAIN_GRACE_MS: i64 = 120_000;
const POLL: Duration = Duration::from_millis(500);

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
    Container(#[from] runtime::container::ContainerError),
    #[error(transparent)]
    Mount(#[from] runtime::mounts::MountError),
    #[error("no container {0} on this node")]
    NotFound(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("container {0} is not pulling its image (its node had it)")]
    NotPulling(String),
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

/// Ids become directory, interface and hostname parts: keep them to a safe alphabet.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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
    runtime::userns::host_requested(&task.userns).map_err(|e| TaskError::Invalid(e.to_string()))?;
    Ok(())
}

/// The status a node reports for `task` before anything happened to it.
pub fn base_status(task: &pb::Task, node: &str) -> pb::TaskStatus {
    pb::TaskStatus {
        task_id: task.id.clone(),
        service: task.service.clone(),
        node: node.to_string(),
        container_id: task.id.clone(),
        ..Default::default()
    }
}

struct Actor {
    tx: mpsc::UnboundedSender<Cmd>,
    /// When RunTask accepted it; None for containers adopted at start-up.
    accepted: Option<Instant>,
    /// The pull RunTask started for it (its image was missing), for FollowTaskPull; kept
    /// while the actor lives, so a follower that comes late still sees how it went.
    pull: Option<Arc<PullFeed>>,
}

/// Where a new container's image comes from, as RunTask found it.
enum ImageSource {
    /// On this host already.
    Here(Box<crate::image::Image>),
    /// Missing: pulled with its progress in this feed, which `rctl run` follows, with the
    /// logins RunTask carried (besides the agent's own).
    Pull(Arc<PullFeed>, Option<Credentials>),
}

/// How an actor begins.
enum Start {
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

struct Inner {
    root: PathBuf,
    /// Writes each container's confinement profile and makes its cgroup (under the
    /// agent's `--cgroup-parent`).
    runtime: runtime::container::Runtime,
    store: Store,
    images: ImageStore,
    net: Network,
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
    /// Containers under `root`, their cgroups under `cgroup_parent` in each hierarchy.
    pub fn new(
        root: PathBuf,
        cgroup_parent: PathBuf,
        store: Store,
        images: ImageStore,
        net: Network,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                runtime: runtime::container::Runtime::new(root.clone())
                    .with_cgroup_parent(cgroup_parent),
                root,
                store,
                images,
                net,
                alloc: tokio::sync::Mutex::new(()),
                actors: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Runs every container in a user namespace with `map` (the agent's
    /// `--userns-remap`), except tasks that ask for the host's. Call before the tasks are
    /// shared (right after [`Tasks::new`]).
    pub fn with_userns_remap(mut self, map: Option<runtime::userns::IdMap>) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("configured before it is shared");
        inner.runtime = inner.runtime.clone().with_userns_remap(map);
        self
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

    /// Accepts `task` (idempotent by id) and starts it in the background; true when its
    /// image is not here and is being pulled first (see [`Tasks::follow_pull`]).
    pub async fn run_task(
        &self,
        task: pb::Task,
        credentials: Option<Credentials>,
    ) -> Result<bool, TaskError> {
        validate(&task)?;
        if !task.ports.is_empty() && !self.dir(&task.id).0.exists() {
            let (_, held) = self.inner.used().await;
            if let Some(port) = taken_port(&task.ports, &held, listening) {
                return Err(TaskError::PortAllocated {
                    port,
                    node: self.inner.store.node().to_string(),
                });
            }
        }
        // Known already: nothing to start, nothing pulled for this request.
        let known = |actors: &HashMap<String, Actor>| {
            actors.contains_key(&task.id) || self.dir(&task.id).0.exists()
        };
        if known(&self.inner.actors.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(false);
        }
        // Asked before the actor exists so the answer can say so, and the feed is there
        // before anyone can ask to follow it. The image found here is the one created from.
        let source = match self.inner.images.cached(&task.image).await {
            Some(image) => ImageSource::Here(Box::new(image)),
            None => ImageSource::Pull(Arc::default(), credentials),
        };
        let feed = match &source {
            ImageSource::Pull(feed, _) => Some(feed.clone()),
            ImageSource::Here(_) => None,
        };
        let pulling = feed.is_some();
        {
            let mut actors = self.inner.actors.lock().unwrap_or_else(|e| e.into_inner());
            if known(&actors) {
                return Ok(false);
            }
            let (tx, rx) = mpsc::unbounded_channel();
            actors.insert(
                task.id.clone(),
                Actor {
                    tx,
                    accepted: Some(Instant::now()),
                    pull: feed,
                },
            );
            let status = self.inner.base_status(&task);
            tokio::spawn(actor(
                self.inner.clone(),
                task,
                status,
                rx,
                Start::New(source),
            ));
        }
        Ok(pulling)
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

    /// Starts the exited or stopped container `task_id` again (a running one is left).
    pub fn start_task(&self, task_id: &str) -> Result<(), TaskError> {
        if !self.inner.send(task_id, Cmd::Start) {
            return Err(TaskError::NotFound(task_id.to_string()));
        }
        Ok(())
    }

    /// Signals PID 1 of the running container `task_id`.
    pub fn kill_task(&self, task_id: &str, sig: nix::sys::signal::Signal) -> Result<(), TaskError> {
        if !crate::streams::is_running(&self.dir(task_id)) {
            return Err(TaskError::NotRunning(task_id.to_string()));
        }
        if !self.inner.send(task_id, Cmd::Kill(sig)) {
            return Err(TaskError::NotFound(task_id.to_string()));
        }
        Ok(())
    }

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
                    self.inner.net.detach(&id).await;
                    let _ = runtime::remove_dir(&cdir.0).await;
                    continue;
                }
            };
            let Some(task) = hex::decode(&cfg.task_pb)
                .ok()
                .and_then(|b| pb::Task::decode(b.as_slice()).ok())
            else {
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

    /// One orphan sweep: stops and removes local containers whose task is gone, moved to
    /// another node or retired. This is what keeps a host that comes back after being
    /// declared lost from running duplicates.
    pub async fn sweep(&self) -> Result<(), crate::store::StoreError> {
        let mut tasks = self.inner.store.tasks().await?;
        tasks.extend(self.inner.store.containers().await?);
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
            if let Some(stop) = sweep_decision(task, self.inner.store.node(), clock::now_unix_ms())
            {
                info!(container = %id, remove = stop.remove, "orphan sweep stops container");
                self.inner.stop(&id, stop);
            }
        }
        // Statuses of tasks that are gone and left no container here (e.g. a failed pull).
        let local: Vec<String> = {
            let actors = self.inner.actors.lock().unwrap_or_else(|e| e.into_inner());
            actors.keys().cloned().collect()
        };
        for id in self.inner.store.status_ids().await? {
            if !by_id.contains_key(id.as_str()) && !local.contains(&id) {
                self.inner.store.delete_status(&id).await?;
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

impl Inner {
    fn dir(&self, id: &str) -> ContainerDir {
        ContainerDir(self.root.join("containers").join(id))
    }

    fn stop(&self, id: &str, stop: Stop) {
        self.send(id, Cmd::Stop(stop));
    }

    /// Hands `cmd` to the actor of `id`; false when there is none.
    fn send(&self, id: &str, cmd: Cmd) -> bool {
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

    fn base_status(&self, task: &pb::Task) -> pb::TaskStatus {
        base_status(task, self.store.node())
    }

    async fn report(&self, status: &mut pb::TaskStatus) {
        status.updated_unix_ms = clock::now_unix_ms();
        if let Err(e) = self.store.put_status(status).await {
            warn!(task = %status.task_id, error = %e, "cannot write task status");
        }
    }

    fn endpoint_address(&self, cfg: &ContainerConfig) -> String {
        format!("{}:{}", self.net.advertise_ip, cfg.host_port)
    }

    /// Removes what the container holds on the host network.
    async fn teardown(&self, cfg: &ContainerConfig) {
        if cfg.host_port != 0 {
            self.net
                .unpublish(&cfg.id, cfg.host_port, cfg.ip, cfg.container_port)
                .await;
        }
        for b in &cfg.ports {
            self.net.unpublish_binding(&cfg.id, b).await;
        }
        self.net.detach(&cfg.id).await;
    }

    /// Addresses and host ports held by containers that are starting, running or waiting
    /// for their restart ([`lifecycle::holds_address`]); a container finished for good
    /// gave its rules back, so its address and port are free again.
    async fn used(&self) -> (Vec<Ipv4Addr>, Vec<(u16, String)>) {
        let (mut ips, mut ports) = (Vec::new(), Vec::new());
        if let Ok(mut rd) = tokio::fs::read_dir(self.root.join("containers")).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                let cdir = ContainerDir(e.path());
                if !lifecycle::holds_address(cdir.markers()) {
                    continue;
                }
                if let Ok(c) = cdir.read_config() {
                    ips.push(c.ip);
                    // A service task's published port is TCP (the load balancer's).
                    if c.host_port != 0 {
                        ports.push((c.host_port, "tcp".to_string()));
                    }
                    ports.extend(c.ports.iter().map(|b| (b.host_port, b.protocol.clone())));
                }
            }
        }
        (ips, ports)
    }

    /// Whether container `dir` of `task`, found exited with `code` at start-up (not stopped
    /// on request), is restarted, and after what delay: a restart the previous agent had
    /// already decided keeps its due time; otherwise the restart policy decides on the
    /// missed exit, with the attempts counted so far. A restart is recorded before the
    /// actor waits for it, so its address stays reserved.
    async fn missed_restart(
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
    async fn record_restart(&self, dir: &ContainerDir, restarts: Restarts, delay: Duration) {
        let due = clock::now_unix_ms() + delay.as_millis() as i64;
        for (path, data) in [
            (dir.restarts(), restarts.render()),
            (dir.restart(), format!("{due}\n")),
        ] {
            if let Err(e) = write_atomic(&path, data.as_bytes()).await {
                warn!(path = %path.display(), error = %e, "cannot record restart");
            }
        }
    }

    /// Pulls the image if RunTask found it missing, prepares the container and starts it
    /// through its shim.
    async fn create(
        &self,
        task: &pb::Task,
        status: &mut pb::TaskStatus,
        source: ImageSource,
    ) -> Result<(ContainerConfig, PidRecord), TaskError> {
        status.state = pb::TaskState::Starting as i32;
        // An image already on the host starts at once without interim statuses: each is an
        // etcd write (a WAL fsync, ~10 ms) on `run`'s path, and "running" follows within
        // milliseconds anyway. A missing one is pulled into the feed `rctl run` follows,
        // which `pull` ends either way.
        let image = match source {
            ImageSource::Here(image) => *image,
            ImageSource::Pull(feed, credentials) => {
                status.message = "pulling image".into();
                self.report(status).await;
                let image = self.pull(&task.image, &feed, credentials).await?;
                status.message = "creating container".into();
                self.report(status).await;
                image
            }
        };

        // Anonymous volumes get their names here, where they live; the task as written to
        // the config carries them, so a restart mounts the same ones.
        let mut named = task.clone();
        let image_volumes: Vec<String> = image
            .config
            .volumes
            .iter()
            .flat_map(|v| v.keys().cloned())
            .collect();
        let anonymous_volumes = runtime::mounts::name_anonymous(
            &mut named.mounts,
            &image_volumes,
            runtime::mounts::anonymous_name,
        );
        let task = &named;
        let confinement = runtime::container::spec_of(task, &image.config, image.layers.clone())?;
        let hostname: String = match task.hostname.as_str() {
            "" => task.id.chars().take(12).collect(),
            h => h.to_string(),
        };
        let argv = spec::resolve_task_argv(task, &image.config)?;
        let env = spec::resolve_env(
            image.config.env.as_deref().unwrap_or_default(),
            &task.env,
            &hostname,
        );
        let dir = self.dir(&task.id);
        let state_err = |path: PathBuf| move |source| TaskError::State { path, source };
        let cfg = {
            let _g = self.alloc.lock().await;
            let (ips, held) = self.used().await;
            let ports: Vec<u16> = held.iter().map(|(p, _)| *p).collect();
            let ip = self.net.subnet.allocate(&ips)?;
            let host_port = if task.container_port != 0 {
                ipam::allocate_port(&ports)?
            } else {
                0
            };
            let cfg = ContainerConfig {
                id: task.id.clone(),
                hostname,
                layers: image.layers.clone(),
                argv,
                env,
                workdir: match task.workdir.as_str() {
                    "" => spec::resolve_workdir(&image.config),
                    w => w.to_string(),
                },
                stop_signal: image.config.stop_signal.clone().unwrap_or_default(),
                ip,
                prefix_len: self.net.subnet.prefix_len,
                gateway: self.net.subnet.gateway(),
                container_port: task.container_port as u16,
                host_port,
                ports: task
                    .ports
                    .iter()
                    .map(|b| crate::network::PortRule {
                        host_ip: b
                            .host_ip
                            .parse::<Ipv4Addr>()
                            .ok()
                            .filter(|ip| !ip.is_unspecified()),
                        host_port: b.host_port as u16,
                        container_ip: ip,
                        container_port: b.container_port as u16,
                        protocol: if b.protocol.is_empty() {
                            "tcp".into()
                        } else {
                            b.protocol.clone()
                        },
                    })
                    .collect(),
                task_pb: hex::encode(task.encode_to_vec()),
                created_unix_ms: clock::now_unix_ms(),
                anonymous_volumes,
            };
            for d in [dir.upper(), dir.work(), dir.rootfs()] {
                tokio::fs::create_dir_all(&d)
                    .await
                    .map_err(state_err(d.clone()))?;
            }
            let json = serde_json::to_vec_pretty(&cfg)
                .map_err(|e| state_err(dir.config())(std::io::Error::other(e)))?;
            write_atomic(&dir.config(), &json)
                .await
                .map_err(state_err(dir.config()))?;
            cfg
        };
        // Capabilities, seccomp, masked paths, user, mounts and the cgroup with the task's
        // limits: written for the shim's child to apply before exec.
        self.runtime.write_profile(&dir, &confinement).await?;
        let pid = self.launch(&dir, &cfg).await?;
        Ok((cfg, pid))
    }

    /// Makes `reference` available here, its progress and end going to `feed`.
    async fn pull(
        &self,
        reference: &str,
        feed: &PullFeed,
        credentials: Option<Credentials>,
    ) -> Result<crate::image::Image, TaskError> {
        let failed = |source| TaskError::Pull {
            image: reference.to_string(),
            source,
        };
        let (ptx, mut prx) = mpsc::unbounded_channel();
        let opts = crate::image::PullOptions::new(Some(ptx), credentials);
        let pulling = self.images.pull(reference, &opts);
        tokio::pin!(pulling);
        let r = loop {
            tokio::select! {
                r = &mut pulling => break r,
                Some(e) = prx.recv() => feed.layer(e),
            }
        };
        while let Ok(e) = prx.try_recv() {
            feed.layer(e);
        }
        let r = r.map_err(failed);
        feed.end(match &r {
            Ok(img) => Ok(pb::PullResult {
                reference: img.reference.clone(),
                manifest_digest: img.manifest_digest.clone(),
                config_digest: img.config_digest.clone(),
            }),
            Err(e) => Err(e.to_string()),
        });
        r
    }

    /// Starts the container of `cfg` through a new shim: first start, or a restart of an
    /// exited container (same directory, same writable layer, the log continues).
    async fn launch(
        &self,
        dir: &ContainerDir,
        cfg: &ContainerConfig,
    ) -> Result<PidRecord, TaskError> {
        // The start file too: the last run's `exec` note must not pass this one as started.
        for f in [
            dir.pid(),
            dir.exit(),
            dir.stopped(),
            dir.restart(),
            dir.start(),
        ] {
            match tokio::fs::remove_file(&f).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(TaskError::State { path: f, source: e })
                }
                _ => {}
            }
        }
        let shim = Shim::spawn(dir)?;
        self.net.attach(&cfg.id, shim.pid(), cfg.ip).await?;
        if cfg.host_port != 0 {
            self.net
                .publish(&cfg.id, cfg.host_port, cfg.ip, cfg.container_port)
                .await?;
        }
        for b in &cfg.ports {
            self.net.publish_binding(&cfg.id, b).await?;
        }
        shim.release()?;
        // A container waiting for its attach client records its pid only once it starts.
        let attach_wait = crate::streams::task_of(dir)
            .attach_wait_ms
            .min(crate::shim::MAX_ATTACH_WAIT_MS);
        let limit = Duration::from_secs(10) + Duration::from_millis(attach_wait as u64);
        Ok(runtime::wait_started(dir, limit).await?)
    }

    /// `sig` (the stop signal), then SIGKILL after `timeout`; returns the exit status once
    /// known.
    async fn kill(
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
                    Some(p) if !runtime::finished(dir, &p) => {}
                    _ => return,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if let Some(p) = pid {
            runtime::signal(&p, sig);
            wait(timeout).await;
            runtime::signal(&p, nix::sys::signal::Signal::SIGKILL);
            wait(Duration::from_secs(5)).await;
        }
        self.exit_code(dir).await
    }

    /// The shim writes the exit file right after reaping, so give it a moment.
    async fn exit_code(&self, dir: &ContainerDir) -> Option<i32> {
        for _ in 0..20 {
            if let Some(c) = dir.read_exit() {
                return Some(c);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    async fn drop_endpoint(&self, task: &pb::Task) {
        if task.container_port != 0 {
            let key = keys::endpoint(&task.service, &task.id);
            if let Err(e) = self.store.delete_leased(&key).await {
                warn!(task = %task.id, error = %e, "cannot delete endpoint");
            }
        }
    }
}

/// The failure message of a container that exited by itself: its code and last log line.
fn exit_reason(dir: &ContainerDir, code: Option<i32>) -> String {
    if let Some(oom) = runtime::container::oom_reason(dir) {
        return oom;
    }
    match code {
        Some(0) | None => String::new(),
        Some(c) => match dir.last_log_line() {
            Some(line) => format!("exited with code {c}: {line}"),
            None => format!("exited with code {c}"),
        },
    }
}

/// Marks `status` finished: exited when stopped or exited 0, failed otherwise, with why.
pub fn finish(status: &mut pb::TaskStatus, code: Option<i32>, stopped: bool, why: String) {
    status.finished_unix_ms = clock::now_unix_ms();
    status.health = String::new();
    status.exit_code = code.unwrap_or(-1);
    let ok = stopped || code == Some(0);
    status.state = if ok {
        pb::TaskState::Exited
    } else {
        pb::TaskState::Failed
    } as i32;
    status.message = if stopped {
        "stopped".into()
    } else if !why.is_empty() {
        why
    } else {
        match code {
            Some(c) => format!("exited with code {c}"),
            None => "container lost".into(),
        }
    };
}

/// The one owner of a container's transitions.
async fn actor(
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
                        let _ = write_atomic(&dir.failed(), e.to_string().as_bytes()).await;
                    }
                    finish(&mut status, None, false, e.to_string());
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
            if let Err(e) = inner.store.delete_container(&task).await {
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
                        let _ = tokio::fs::remove_file(dir.restarts()).await;
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

/// Starts a finished container again from its directory (`rctl start`).
async fn relaunch(
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

/// How waiting out a restart backoff ended.
enum Restarted {
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
async fn restart(
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
        let _ = write_atomic(&dir.stopped(), b"").await;
        let _ = tokio::fs::remove_file(dir.restart()).await;
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
            let _ = write_atomic(&dir.failed(), why.as_bytes()).await;
            finish(status, code, false, why);
            inner.report(status).await;
            Restarted::Finished
        }
    }
}

/// The first of `ports` whose host port a local container holds already (`held`: port and
/// protocol) or a socket of this host holds (`listening`), each binding checked with its own
/// protocol: 8080/tcp and 8080/udp are two different ports.
fn taken_port(
    ports: &[pb::PortBinding],
    held: &[(u16, String)],
    listening: impl Fn(u16, &str) -> bool,
) -> Option<u32> {
    ports.iter().find_map(|b| {
        let proto = if b.protocol.is_empty() {
            "tcp"
        } else {
            b.protocol.as_str()
        };
        let Ok(port) = u16::try_from(b.host_port) else {
            return Some(b.host_port);
        };
        let taken = held.iter().any(|(p, q)| *p == port && q == proto) || listening(port, proto);
        taken.then_some(b.host_port)
    })
}

/// Whether a socket of this host holds `port` for `proto`: binding it fails.
fn listening(port: u16, proto: &str) -> bool {
    match proto {
        "udp" => std::net::UdpSocket::bind(("0.0.0.0", port)).is_err(),
        _ => std::net::TcpListener::bind(("0.0.0.0", port)).is_err(),
    }
}

async fn cleanup_failed_start(inner: &Inner, dir: &ContainerDir) {
    match dir.read_config() {
        Ok(cfg) => inner.teardown(&cfg).await,
        Err(_) => inner.net.detach(&dir_id(dir)).await,
    }
}

fn dir_id(dir: &ContainerDir) -> String {
    dir.0
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

async fn remove(inner: &Inner, task: &pb::Task, dir: &ContainerDir, stop: Stop) {
    // Read before the directory goes. A service task's are removed with it always: its
    // replacement gets fresh ones, so keeping them would only pile them up.
    let volumes = if stop.volumes || !task.service.is_empty() {
        dir.read_config()
            .map(|c| c.anonymous_volumes)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    if let Err(e) = runtime::remove_dir(&dir.0).await {
        warn!(task = %task.id, error = %e, "cannot remove container directory");
    }
    for name in volumes {
        let path = inner.root.join("volumes").join(&name);
        match tokio::fs::remove_dir_all(&path).await {
            Ok(()) => info!(task = %task.id, volume = %name, "anonymous volume removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(task = %task.id, volume = %name, error = %e, "cannot remove volume"),
        }
    }
    if stop.forget {
        if let Err(e) = inner.store.delete_status(&task.id).await {
            warn!(task = %task.id, error = %e, "cannot delete task status");
        }
    }
    inner
        .actors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&task.id);
    info!(task = %task.id, "container removed");
}

/// How supervision of a running container ended.
enum Ended {
    /// Stopped on request (status reported).
    Stopped(Stop),
    /// Exited by itself with this status (network torn down, status not yet reported: the
    /// restart policy decides what to report).
    Exited(Option<i32>),
}

/// Watches a running container until it exits or is stopped.
async fn supervise(
    inner: &Inner,
    task: &pb::Task,
    status: &mut pb::TaskStatus,
    dir: &ContainerDir,
    cfg: &ContainerConfig,
    pid: PidRecord,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
) -> Ended {
    status.state = pb::TaskState::Running as i32;
    status.pid = pid.pid as u32;
    status.message = String::new();
    if status.started_unix_ms == 0 {
        status.started_unix_ms = dir.started_unix_ms().unwrap_or_else(clock::now_unix_ms);
    }
    if cfg.host_port != 0 {
        status.endpoint = inner.endpoint_address(cfg);
        status.health = health::Verdict::Starting.as_str().into();
    }
    inner.report(status).await;
    info!(task = %task.id, pid = pid.pid, "container running");

    let probe_addr = SocketAddr::from((cfg.ip, cfg.container_port));
    let check = health::Check::from_spec(task.health.as_ref());
    let probing = cfg.container_port != 0;
    if probing && check.cmd_unsupported {
        warn!(task = %task.id, "cmd health checks are not implemented; checking TCP connect instead");
    }
    let mut health = Health::new(check.thresholds);
    let mut next_probe = Instant::now();
    // The probe in flight, if any: it runs alongside the stop and exit watch, so a slow
    // probe never delays a stop.
    let mut inflight: Option<Pin<Box<dyn Future<Output = bool> + Send + '_>>> = None;
    loop {
        if probing && inflight.is_none() && Instant::now() >= next_probe {
            next_probe = Instant::now() + check.interval;
            inflight = Some(Box::pin(check.probe(probe_addr)));
        }
        let wake = if inflight.is_none() && probing {
            (Instant::now() + POLL).min(next_probe)
        } else {
            Instant::now() + POLL
        };
        let mut probed = None;
        tokio::select! {
            cmd = rx.recv() => {
                // Every sender gone means the agent is shutting down: leave it running.
                let stop = match cmd {
                    None => return Ended::Exited(None),
                    Some(Cmd::Stop(stop)) => stop,
                    Some(Cmd::Start) => continue,
                    Some(Cmd::Kill(sig)) => {
                        runtime::signal(&pid, sig);
                        continue;
                    }
                };
                let _ = write_atomic(&dir.stopped(), b"").await;
                // The load balancer must stop sending before the container is signalled.
                inner.drop_endpoint(task).await;
                status.state = pb::TaskState::Stopping as i32;
                inner.report(status).await;
                let sig = lifecycle::stop_signal(&task.stop_signal, &cfg.stop_signal)
                    .unwrap_or(nix::sys::signal::Signal::SIGTERM);
                let timeout = lifecycle::stop_timeout(stop.timeout, task.stop_timeout_ms);
                let code = inner.kill(dir, Some(pid), sig, timeout).await;
                inner.teardown(cfg).await;
                finish(status, code, true, String::new());
                inner.report(status).await;
                return Ended::Stopped(stop);
            }
            ok = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                probed = Some(ok);
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
        if runtime::finished(dir, &pid) {
            inner.drop_endpoint(task).await;
            let code = inner.exit_code(dir).await;
            inner.teardown(cfg).await;
            info!(task = %task.id, code = ?code, "container exited");
            return Ended::Exited(code);
        }
        let Some(ok) = probed else { continue };
        inflight = None;
        match health.observe(ok) {
            Transition::None => {}
            Transition::BecameHealthy => {
                let ep = pb::Endpoint {
                    service: task.service.clone(),
                    task_id: task.id.clone(),
                    node: inner.store.node().to_string(),
                    address: inner.endpoint_address(cfg),
                    revision: task.revision,
                    healthy: true,
                };
                let key = keys::endpoint(&task.service, &task.id);
                if let Err(e) = inner
                    .store
                    .put_leased(key, rctl_api::codec::encode(&ep))
                    .await
                {
                    warn!(task = %task.id, error = %e, "cannot publish endpoint");
                }
                status.health = health.verdict.as_str().into();
                inner.report(status).await;
            }
            Transition::BecameUnhealthy => {
                inner.drop_endpoint(task).await;
                status.health = health.verdict.as_str().into();
                inner.report(status).await;
                info!(task = %task.id, "container unhealthy; endpoint withdrawn");
            }
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

    #[test]
    fn a_port_is_taken_per_protocol() {
        let b = |port, proto: &str| pb::PortBinding {
            host_port: port,
            container_port: 80,
            protocol: proto.into(),
            ..Default::default()
        };
        let free = |_: u16, _: &str| false;
        // -p 8080:80/tcp -p 8080:80/udp on a free host: both go through.
        assert_eq!(
            taken_port(&[b(8080, "tcp"), b(8080, "udp")], &[], free),
            None
        );
        // A local container holding 8080/udp takes only the UDP binding.
        let held = [(8080, "udp".to_string())];
        assert_eq!(taken_port(&[b(8080, "")], &held, free), None);
        assert_eq!(
            taken_port(&[b(8080, "tcp"), b(8080, "udp")], &held, free),
            Some(8080)
        );
        // A UDP socket listening is checked as UDP, not as TCP.
        let udp_only = |_: u16, proto: &str| proto == "udp";
        assert_eq!(taken_port(&[b(53, "tcp")], &[], udp_only), None);
        assert_eq!(
            taken_port(&[b(53, "tcp"), b(53, "udp")], &[], udp_only),
            Some(53)
        );
        assert_eq!(taken_port(&[b(70_000, "tcp")], &[], free), Some(70_000));
    }

    #[test]
    fn ids_are_path_and_interface_safe() {
        assert!(valid_id("web-1_abc"));
        assert!(!valid_id("../x"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(""));
    }

    #[test]
    fn stopped_containers_exit_cleanly_and_crashes_fail() {
        let mut s = pb::TaskStatus::default();
        finish(&mut s, Some(137), true, String::new());
        assert_eq!(s.state, pb::TaskState::Exited as i32);
        assert_eq!(s.exit_code, 137);
        finish(&mut s, Some(1), false, String::new());
        assert_eq!(s.state, pb::TaskState::Failed as i32);
        assert_eq!(s.message, "exited with code 1");
        finish(&mut s, Some(0), false, String::new());
        assert_eq!(s.state, pb::TaskState::Exited as i32);
    }
}
