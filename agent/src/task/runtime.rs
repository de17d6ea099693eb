//! The kernel and the shim as the task logic sees them: one narrow [`Runtime`] trait over a
//! container directory and the host network. [`HostRuntime`] is the real one (cgroups,
//! confinement profile, the shim, veth and published ports); [`SimRuntime`] runs nothing
//! and records what a real one would, so the lifecycle is tested without root.
//!
//! Vocabulary: *prepare* makes what the container is confined by (profile, cgroup);
//! *start* launches PID 1 (through a new shim, with its network attached and its ports
//! published) and returns its record once it reached exec; *finished* says whether PID 1
//! is gone; *exited* waits for that (the simulation wakes its waiter, the host is polled);
//! *probe* is one health check; *teardown* gives back what it held on the host network.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::watch;

use super::TaskError;
use crate::health;
use crate::network::{Network, Subnet};
use crate::runtime::container::ContainerSpec;
use crate::runtime::state::{proc_stat, write_atomic, ContainerConfig, ContainerDir, PidRecord};
use crate::runtime::{self, userns::IdMap, Shim};

/// What the task logic asks of the host to run one container.
#[tonic::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// The container network's addresses.
    fn subnet(&self) -> Subnet;
    /// The host address published ports are reached on.
    fn advertise_ip(&self) -> std::net::Ipv4Addr;
    /// The node's own IPv4 addresses: the advertised one and those on its interfaces,
    /// the only ones a `-p IP:…` binding may name.
    fn addresses(&self) -> Vec<std::net::Ipv4Addr>;
    /// Whether the node's disk has room for a new container (its reserve kept free).
    fn disk_room(&self, _node: &str) -> Result<(), TaskError> {
        Ok(())
    }
    /// Writes the confinement profile of `spec` into `dir` and makes its cgroup.
    async fn prepare(&self, dir: &ContainerDir, spec: &ContainerSpec) -> Result<(), TaskError>;
    /// Starts PID 1 of the container of `cfg` and waits up to `limit` for it to reach exec.
    async fn start(
        &self,
        dir: &ContainerDir,
        cfg: &ContainerConfig,
        limit: Duration,
    ) -> Result<PidRecord, TaskError>;
    /// Sends `sig` to PID 1 if it is still the recorded process.
    fn signal(&self, dir: &ContainerDir, pid: &PidRecord, sig: Signal);
    /// Whether PID 1 is gone (its exit status recorded or the process gone).
    fn finished(&self, dir: &ContainerDir, pid: &PidRecord) -> bool;
    /// Resolves once PID 1 is gone: what supervision waits on, so a runtime that knows when
    /// a container exits wakes its actor rather than being polled by ten thousand of them.
    async fn exited(&self, dir: &ContainerDir, pid: &PidRecord);
    /// Runs one health probe of `check` against the container at `addr`.
    async fn probe(&self, check: &health::Check, addr: SocketAddr) -> bool;
    /// Ends every process of the container in `dir` (a start that failed or was
    /// abandoned: nothing of it may keep running); its cgroup stays for a later start.
    async fn end_processes(&self, _dir: &ContainerDir) {}
    /// The ids of the containers that have a cgroup on this host, known to the agent or not.
    fn container_cgroups(&self) -> Vec<String> {
        Vec::new()
    }
    /// Ends the processes of container `id`'s cgroup and removes it (one the agent does not
    /// know: no directory says what it was).
    async fn end_cgroup(&self, _id: &str) -> Result<(), TaskError> {
        Ok(())
    }
    /// Gives back what the container of `cfg` holds on the host network.
    async fn teardown(&self, cfg: &ContainerConfig);
    /// Gives back the network of container `id`, whose config is unknown.
    async fn detach(&self, id: &str);
}

// === impl HostRuntime ===

/// How often the host runtime checks a running container for its exit.
const POLL: Duration = Duration::from_millis(500);

/// This host's kernel and shims.
#[derive(Debug, Clone)]
pub struct HostRuntime {
    /// Writes each container's confinement profile and makes its cgroup.
    containers: runtime::container::ContainerRuntime,
    net: Network,
    /// The containers' disk (the agent root).
    root: PathBuf,
    /// Bytes that must stay free there for a new container to be accepted.
    disk_reserve: u64,
}

impl HostRuntime {
    /// Containers under `root`, their cgroups under `cgroup_parent` in each hierarchy.
    pub fn new(root: PathBuf, cgroup_parent: PathBuf, net: Network) -> Self {
        Self {
            containers: runtime::container::ContainerRuntime::new(root.clone())
                .with_cgroup_parent(cgroup_parent),
            net,
            root,
            disk_reserve: runtime::disk::DEFAULT_RESERVE,
        }
    }

    /// Refuses new containers while less than `bytes` are free on the agent root.
    pub fn with_disk_reserve(mut self, bytes: u64) -> Self {
        self.disk_reserve = bytes;
        self
    }

    /// Runs every container in a user namespace with `map` (the agent's
    /// `--userns-remap`), except tasks that ask for the host's.
    pub fn with_userns_remap(mut self, map: Option<IdMap>) -> Self {
        self.containers = self.containers.with_userns_remap(map);
        self
    }
}

#[tonic::async_trait]
impl Runtime for HostRuntime {
    fn subnet(&self) -> Subnet {
        self.net.subnet
    }

    fn advertise_ip(&self) -> std::net::Ipv4Addr {
        self.net.advertise_ip
    }

    fn addresses(&self) -> Vec<std::net::Ipv4Addr> {
        let mut own = vec![self.net.advertise_ip];
        own.extend(crate::network::interface_addresses());
        own
    }

    fn disk_room(&self, node: &str) -> Result<(), TaskError> {
        // Unreadable: not a reason to refuse (the create reports real I/O errors).
        match runtime::disk::free_bytes(&self.root) {
            Ok(free) => Ok(runtime::disk::check(node, free, self.disk_reserve)?),
            Err(_) => Ok(()),
        }
    }

    async fn prepare(&self, dir: &ContainerDir, spec: &ContainerSpec) -> Result<(), TaskError> {
        self.containers.write_profile(dir, spec).await?;
        Ok(())
    }

    async fn start(
        &self,
        dir: &ContainerDir,
        cfg: &ContainerConfig,
        limit: Duration,
    ) -> Result<PidRecord, TaskError> {
        let shim = Shim::spawn(dir)?;
        if cfg.task().is_some_and(|t| t.network == "none") {
            // Docker's --network none: its own namespace with loopback up, nothing else.
            self.net.loopback_only(shim.pid()).await?;
            shim.release()?;
            return Ok(runtime::wait_started(dir, limit).await?);
        }
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
        Ok(runtime::wait_started(dir, limit).await?)
    }

    fn signal(&self, _dir: &ContainerDir, pid: &PidRecord, sig: Signal) {
        runtime::signal(pid, sig);
    }

    fn finished(&self, dir: &ContainerDir, pid: &PidRecord) -> bool {
        runtime::finished(dir, pid)
    }

    async fn exited(&self, dir: &ContainerDir, pid: &PidRecord) {
        // The shim's exit file and the process table give no wake-up: polled.
        while !runtime::finished(dir, pid) {
            tokio::time::sleep(POLL).await;
        }
    }

    async fn probe(&self, check: &health::Check, addr: SocketAddr) -> bool {
        check.probe(addr).await
    }

    async fn end_processes(&self, dir: &ContainerDir) {
        if !runtime::container::end_processes(dir, runtime::container::DELETE_WAIT).await {
            tracing::warn!(container = %dir.id(), "processes of a failed start remain");
        }
    }

    fn container_cgroups(&self) -> Vec<String> {
        self.containers.cgroups()
    }

    async fn end_cgroup(&self, id: &str) -> Result<(), TaskError> {
        Ok(self.containers.end_cgroup(id).await?)
    }

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

    async fn detach(&self, id: &str) {
        self.net.detach(id).await;
    }
}

// === impl SimRuntime ===

/// How a simulated container's PID 1 behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Runs until signalled; a signal ends it with 128 + the signal.
    #[default]
    Serve,
    /// Exits with this code as soon as it started.
    Exit(i32),
    /// Never reaches exec: start fails.
    FailStart,
}

/// A runtime that runs nothing: a started container is its recorded files only (a pid
/// record naming this process, so it reads as alive, and an exit file once it "exits"),
/// so every other reader of the directory sees what it would see of a real container.
/// Its containers answer every health probe. The hollow nodes (`crate::hollow`) run the
/// task logic over it.
#[derive(Debug)]
pub struct SimRuntime {
    subnet: Subnet,
    advertise_ip: std::net::Ipv4Addr,
    /// The pid record every started container gets: this process, alive as long as the
    /// simulation runs (read once: ten thousand starts need not read /proc each).
    me: PidRecord,
    /// How each container id behaves (default: [`Behaviour::Serve`]).
    behaviour: Mutex<HashMap<String, Behaviour>>,
    /// Per container id started and not torn down: whether it has exited, which wakes
    /// [`Runtime::exited`].
    exits: Mutex<HashMap<String, Arc<watch::Sender<bool>>>>,
    /// Every call, in order, as `verb id` (e.g. `start t1`, `signal t1 SIGTERM`); None when
    /// not recorded (a long-running simulation would only pile them up).
    calls: Option<Mutex<Vec<String>>>,
}

impl SimRuntime {
    pub fn new(subnet: Subnet, advertise_ip: std::net::Ipv4Addr) -> Self {
        let pid = std::process::id() as i32;
        Self {
            subnet,
            advertise_ip,
            me: PidRecord {
                pid,
                start_time: proc_stat(pid).map(|(_, t)| t).unwrap_or_default(),
            },
            behaviour: Mutex::default(),
            exits: Mutex::default(),
            calls: Some(Mutex::default()),
        }
    }

    /// Records no calls ([`SimRuntime::calls`] stays empty).
    pub fn unrecorded(mut self) -> Self {
        self.calls = None;
        self
    }

    /// Container `id` behaves as `b` from its next start on.
    pub fn set(&self, id: &str, b: Behaviour) {
        lock(&self.behaviour).insert(id.to_string(), b);
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls
            .as_ref()
            .map(|c| lock(c).clone())
            .unwrap_or_default()
    }

    fn record(&self, call: impl FnOnce() -> String) {
        if let Some(calls) = &self.calls {
            lock(calls).push(call());
        }
    }

    /// Whether container `id` has exited, as a channel its supervisor waits on.
    fn exit_flag(&self, id: &str) -> Arc<watch::Sender<bool>> {
        lock(&self.exits)
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(watch::channel(false).0))
            .clone()
    }

    /// PID 1 of `dir` exits with `code` (the first exit counts), waking its supervisor.
    fn exit(&self, dir: &ContainerDir, code: i32) {
        if !dir.exit().exists() {
            let _ = crate::runtime::state::write_atomic_sync(
                &dir.exit(),
                format!("{code}\n").as_bytes(),
            );
        }
        self.exit_flag(&dir.id()).send_replace(true);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[tonic::async_trait]
impl Runtime for SimRuntime {
    fn subnet(&self) -> Subnet {
        self.subnet
    }

    fn advertise_ip(&self) -> std::net::Ipv4Addr {
        self.advertise_ip
    }

    fn addresses(&self) -> Vec<std::net::Ipv4Addr> {
        vec![
            self.advertise_ip,
            std::net::Ipv4Addr::LOCALHOST,
            self.subnet.gateway(),
        ]
    }

    async fn prepare(&self, dir: &ContainerDir, _spec: &ContainerSpec) -> Result<(), TaskError> {
        self.record(|| format!("prepare {}", dir.id()));
        Ok(())
    }

    async fn start(
        &self,
        dir: &ContainerDir,
        cfg: &ContainerConfig,
        _limit: Duration,
    ) -> Result<PidRecord, TaskError> {
        self.record(|| format!("start {}", cfg.id));
        let b = lock(&self.behaviour)
            .get(&cfg.id)
            .copied()
            .unwrap_or_default();
        if b == Behaviour::FailStart {
            return Err(runtime::RuntimeError::NoStart("simulated start failure".into()).into());
        }
        let pid = self.me;
        let state = |source| TaskError::State {
            path: dir.pid(),
            source,
        };
        write_atomic(&dir.pid(), pid.render().as_bytes())
            .await
            .map_err(state)?;
        // A restart: running again until its next exit.
        self.exit_flag(&cfg.id).send_replace(false);
        if let Behaviour::Exit(code) = b {
            self.exit(dir, code);
        }
        Ok(pid)
    }

    fn signal(&self, dir: &ContainerDir, _pid: &PidRecord, sig: Signal) {
        self.record(|| format!("signal {} {sig}", dir.id()));
        self.exit(dir, 128 + sig as i32);
    }

    fn finished(&self, dir: &ContainerDir, _pid: &PidRecord) -> bool {
        dir.exit().exists()
    }

    async fn exited(&self, dir: &ContainerDir, pid: &PidRecord) {
        // Subscribed before looking, so an exit in between still wakes us.
        let mut rx = self.exit_flag(&dir.id()).subscribe();
        if self.finished(dir, pid) {
            return;
        }
        if rx.wait_for(|gone| *gone).await.is_err() {
            // Torn down while watched: only an exit file can say more, and none came.
            std::future::pending::<()>().await;
        }
    }

    async fn probe(&self, _check: &health::Check, _addr: SocketAddr) -> bool {
        true
    }

    async fn teardown(&self, cfg: &ContainerConfig) {
        self.record(|| format!("teardown {}", cfg.id));
        lock(&self.exits).remove(&cfg.id);
    }

    async fn detach(&self, id: &str) {
        self.record(|| format!("detach {id}"));
        lock(&self.exits).remove(id);
    }
}
