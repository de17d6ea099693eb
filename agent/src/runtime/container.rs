//! A container on this host without the cluster around it: [`ContainerRuntime::create`]
//! (directory, config, confinement profile, cgroup), [`ContainerRuntime::start`] (the shim,
//! the container's PID 1), [`ContainerRuntime::wait`], [`Container::signal`] and
//! [`ContainerRuntime::delete`] (every cgroup directory and the container directory). No
//! network is attached: the container gets its own network namespace with only `lo`. Agent
//! integration tests and benchmarks use this; the task actors add networking, etcd status and
//! restart policy on top (through `task::HostRuntime`, which wraps it behind the
//! `task::Runtime` trait).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::cgroups::{self, Cgroup, CgroupError, Limits};
use super::mounts::{self, MountError, MountSpec};
use super::security::Profile;
use super::spec::{self, SpecError};
use super::state::{write_atomic, ContainerConfig, ContainerDir, PidRecord};
use super::userns::IdMap;
use super::{RuntimeError, Shim};
use crate::image::RunConfig;

/// How long a delete waits for the container's processes to go before giving up on the
/// cgroup directories.
pub const DELETE_WAIT: Duration = Duration::from_secs(10);
/// How long a start that failed may take to exit by itself before it is killed.
const FAILED_START_GRACE: Duration = Duration::from_secs(2);
/// How long one orphan sweep spends ending one unknown cgroup before the next sweep retries.
const ORPHAN_WAIT: Duration = Duration::from_secs(2);
/// How long the shim and the container's setup may take before start gives up.
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("bad container id {0:?}")]
    BadId(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("container state {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("remove cgroup {path}: {source}")]
    RemoveCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to run: an image (its unpacked layers and config) plus the task's overrides.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub id: String,
    /// Unpacked layers, bottom-first.
    pub layers: Vec<PathBuf>,
    pub image: RunConfig,
    /// Replaces Entrypoint + Cmd when not empty.
    pub command: Vec<String>,
    pub env: HashMap<String, String>,
    /// Overrides the image's User.
    pub user: Option<String>,
    /// Overrides the image's WorkingDir.
    pub workdir: Option<String>,
    /// Defaults to the first 12 characters of the id.
    pub hostname: Option<String>,
    pub limits: Limits,
    /// Bind mounts, volumes and tmpfs.
    pub mounts: Vec<MountSpec>,
    /// Stay in the host's user namespace even when the runtime remaps (Docker's
    /// `--userns=host`).
    pub host_userns: bool,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + signal.
    pub code: i32,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
}

impl Exit {
    /// The task status message for this exit, if it needs one ("OOMKilled: ...").
    pub fn reason(&self, memory_limit: Option<u64>) -> Option<String> {
        match (self.oom_killed, memory_limit) {
            (true, Some(l)) => Some(format!("OOMKilled: memory limit {} MiB reached", l >> 20)),
            (true, None) => Some("OOMKilled: out of memory".into()),
            (false, _) => None,
        }
    }
}

/// One container made by [`ContainerRuntime::create`].
pub struct Container {
    pub dir: ContainerDir,
    pub cgroup: Option<Cgroup>,
    pub limits: Limits,
    pid: Option<PidRecord>,
}

impl Container {
    /// PID 1's record once started.
    pub fn pid(&self) -> Option<PidRecord> {
        self.pid
    }

    /// Sends `sig` to the container's PID 1.
    pub fn signal(&self, sig: Signal) {
        if let Some(p) = &self.pid {
            super::signal(p, sig);
        }
    }

    /// CPU, memory and pids of the container now.
    pub fn stats(&self) -> cgroups::Stats {
        self.cgroup.as_ref().map(Cgroup::stats).unwrap_or_default()
    }
}

/// Containers under `ROOT/containers/`.
#[derive(Debug, Clone)]
pub struct ContainerRuntime {
    root: PathBuf,
    /// The agent binary, re-executed as each container's shim.
    agent_exe: PathBuf,
    /// Where container cgroups go, relative to each hierarchy's root.
    cgroup_parent: PathBuf,
    /// Every container's user namespace map (`--userns-remap`); None: the host's.
    userns: Option<IdMap>,
}

impl ContainerRuntime {
    /// A runtime whose shims are this process's own binary (the agent).
    pub fn new(root: PathBuf) -> Self {
        Self::with_agent_exe(root, PathBuf::from("/proc/self/exe"))
    }

    /// A runtime whose shims are `agent_exe` (for tests and benchmarks, which are not
    /// the agent binary themselves).
    pub fn with_agent_exe(root: PathBuf, agent_exe: PathBuf) -> Self {
        Self {
            root,
            agent_exe,
            cgroup_parent: PathBuf::from(cgroups::PARENT),
            userns: None,
        }
    }

    /// Runs containers in a user namespace mapping their ids 0..count to the host's
    /// `map.host_start..` (Docker's `userns-remap`), unless their spec asks for the host's.
    pub fn with_userns_remap(mut self, map: Option<IdMap>) -> Self {
        self.userns = map;
        self
    }

    /// Container cgroups under `parent` (relative to each hierarchy's root) instead of
    /// [`cgroups::PARENT`].
    pub fn with_cgroup_parent(mut self, parent: PathBuf) -> Self {
        self.cgroup_parent = parent;
        self
    }

    pub fn dir(&self, id: &str) -> ContainerDir {
        ContainerDir(self.root.join("containers").join(id))
    }

    /// Writes the container's state and makes its cgroup. Nothing runs yet. On error
    /// nothing is left behind.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<Container, ContainerError> {
        if !super::state::valid_id(&spec.id) {
            return Err(ContainerError::BadId(spec.id.clone()));
        }
        let dir = self.dir(&spec.id);
        if dir.0.exists() {
            return Err(ContainerError::Exists(spec.id.clone()));
        }
        let argv = spec::resolve_argv(&spec.command, &spec.image)?;
        let hostname = spec
            .hostname
            .clone()
            .unwrap_or_else(|| spec.id.chars().take(12).collect());
        let env = spec::resolve_env(
            spec.image.env.as_deref().unwrap_or_default(),
            &spec.env,
            &hostname,
        );
        let workdir = match &spec.workdir {
            Some(w) if !w.is_empty() => w.clone(),
            _ => spec::resolve_workdir(&spec.image),
        };
        let cfg = ContainerConfig {
            id: spec.id.clone(),
            hostname,
            layers: spec.layers.clone(),
            argv,
            env,
            workdir,
            stop_signal: spec.image.stop_signal.clone().unwrap_or_default(),
            ip: Ipv4Addr::LOCALHOST,
            prefix_len: 8,
            gateway: Ipv4Addr::LOCALHOST,
            container_port: 0,
            host_port: 0,
            ports: Vec::new(),
            anonymous_volumes: Vec::new(),
            task_pb: String::new(),
            created_unix_ms: rctl_api::clock::now_unix_ms(),
        };
        let (profile, cgroup) = self.profile(spec)?;
        let res = write_state(&dir, &cfg, &profile).await;
        if let Err(e) = res {
            cgroup.remove();
            let _ = super::remove_dir(&dir.0).await;
            return Err(e);
        }
        Ok(Container {
            dir,
            cgroup: Some(cgroup),
            limits: spec.limits,
            pid: None,
        })
    }

    /// The confinement profile of `spec`, its mounts resolved and its cgroup made.
    fn profile(&self, spec: &ContainerSpec) -> Result<(Profile, Cgroup), ContainerError> {
        let user = spec
            .user
            .clone()
            .or_else(|| spec.image.user.clone())
            .unwrap_or_default();
        cgroups::validate(&spec.limits, cgroups::host_memory()?)?;
        let mut profile = Profile::docker_default(&user);
        profile.mounts = mounts::resolve(&spec.mounts, &self.root)?;
        let cgroup = Cgroup::create(
            &cgroups::host_layout()?,
            &self.cgroup_parent,
            &spec.id,
            &spec.limits,
        )?;
        profile.cgroup = Some(cgroup.clone());
        profile.userns = self.userns.filter(|_| !spec.host_userns);
        Ok((profile, cgroup))
    }

    /// For callers that write the container's config themselves (the task actors, which
    /// add networking): resolves `spec`'s mounts, makes its cgroup and writes
    /// `profile.json` into `dir`, which the shim's child then applies. Undo with
    /// [`end_and_release`].
    pub async fn write_profile(
        &self,
        dir: &ContainerDir,
        spec: &ContainerSpec,
    ) -> Result<Cgroup, ContainerError> {
        let (profile, cgroup) = self.profile(spec)?;
        let res = serde_json::to_vec_pretty(&profile)
            .map_err(std::io::Error::other)
            .map(|p| (p, dir.profile()));
        let res = match res {
            Ok((p, path)) => write_atomic(&path, &p).await,
            Err(e) => Err(e),
        };
        res.map_err(|source| {
            cgroup.remove();
            ContainerError::State {
                path: dir.profile(),
                source,
            }
        })?;
        Ok(cgroup)
    }

    /// The ids of the containers with a cgroup under this runtime's cgroup parent.
    pub fn cgroups(&self) -> Vec<String> {
        let Ok(layout) = cgroups::host_layout() else {
            return Vec::new();
        };
        cgroups::children(&layout, &self.cgroup_parent)
            .into_iter()
            .filter(|id| super::state::valid_id(id))
            .collect()
    }

    /// Ends the processes of container `id`'s cgroup and removes it, found by its id alone
    /// (for one whose directory is gone: a removal that could not end them all, a container
    /// an older agent lost track of).
    pub async fn end_cgroup(&self, id: &str) -> Result<(), ContainerError> {
        let cg = Cgroup::of(&cgroups::host_layout()?, &self.cgroup_parent, id);
        destroy_cgroup(&cg, ORPHAN_WAIT).await
    }

    /// Starts the container's shim and PID 1. A container that cannot start (bad user,
    /// missing executable, ...) is deleted and the error says why.
    pub async fn start(&self, c: &mut Container) -> Result<PidRecord, ContainerError> {
        let res = async {
            let shim = Shim::spawn_with(&self.agent_exe, &c.dir)?;
            shim.release()?;
            super::wait_started(&c.dir, START_TIMEOUT).await
        }
        .await;
        match res {
            Ok(p) => {
                c.pid = Some(p);
                Ok(p)
            }
            Err(e) => {
                // Wait for the shim to record the exit so the cgroup is empty.
                for _ in 0..100 {
                    if c.dir.exit().exists() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = self.delete(c).await;
                Err(e.into())
            }
        }
    }

    /// Waits for the container to exit.
    pub async fn wait(&self, c: &Container) -> Exit {
        loop {
            if let Some(code) = c.dir.read_exit() {
                return Exit {
                    code,
                    oom_killed: c.cgroup.as_ref().is_some_and(Cgroup::oom_killed),
                };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kills what still runs, then removes the cgroup and the container directory.
    pub async fn delete(&self, c: &Container) -> Result<(), ContainerError> {
        let deadline = tokio::time::Instant::now() + DELETE_WAIT;
        if let Some(p) = c.pid {
            super::signal(&p, Signal::SIGKILL);
            // The shim writes the exit file after reaping PID 1: wait for it, so it does
            // not write into a directory being removed.
            while !c.dir.exit().exists() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if let Some(cg) = &c.cgroup {
            destroy_cgroup(
                cg,
                deadline.saturating_duration_since(tokio::time::Instant::now()),
            )
            .await?;
        }
        super::remove_dir(&c.dir.0).await.map_err(|e| match e {
            super::RemoveError::Processes(e) => e,
            super::RemoveError::Dir(source) => ContainerError::State {
                path: c.dir.0.clone(),
                source,
            },
        })
    }
}

/// Ends every process of `cg` and removes its directories: SIGKILL to whatever is in it,
/// again until it is empty and every directory is gone, for at most `limit`. Killing PID 1
/// alone is not enough: a process may join or fork while it dies, the kernel reaps the
/// rest of the pid namespace asynchronously, and a container stopped before its pid was
/// recorded has no PID 1 to kill.
pub async fn destroy_cgroup(cg: &Cgroup, limit: Duration) -> Result<(), ContainerError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        cg.kill_all();
        match cg.remove().into_iter().next() {
            None => return Ok(()),
            Some((path, source)) if tokio::time::Instant::now() >= deadline => {
                return Err(ContainerError::RemoveCgroup { path, source });
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Ends every process in the cgroup of the container in `dir` and removes it, for at most
/// `limit`: what a removal does before the directory goes. (PID 1 was signalled through
/// the task runtime already; the cgroup holds it and everything else.)
pub async fn end_and_release(dir: &ContainerDir, limit: Duration) -> Result<(), ContainerError> {
    match dir.read_profile().map(|p| p.cgroup) {
        Ok(Some(cg)) => destroy_cgroup(&cg, limit).await,
        _ => Ok(()),
    }
}

/// Ends every process of the container in `dir` and waits (at most `limit`) until its
/// cgroup is empty; the cgroup stays, for a later start. For a start that failed or was
/// abandoned: nothing of it may keep running.
pub async fn end_processes(dir: &ContainerDir, limit: Duration) -> bool {
    if let Some(p) = dir.read_pid() {
        // A setup that failed is exiting by itself, saying why on its stderr: let it
        // finish (the shim records the exit once it did) before killing what is left.
        let grace = tokio::time::Instant::now() + FAILED_START_GRACE;
        while !super::finished(dir, &p) && tokio::time::Instant::now() < grace {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        super::signal(&p, Signal::SIGKILL);
    }
    let Ok(Some(cg)) = dir.read_profile().map(|p| p.cgroup) else {
        return true;
    };
    let deadline = tokio::time::Instant::now() + limit;
    while !cg.kill_all().is_empty() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Why the container of `dir` ended, for the task status: "OOMKilled: ..." when the
/// kernel's OOM killer struck, else None.
pub fn oom_reason(dir: &ContainerDir) -> Option<String> {
    let cg = dir.read_profile().ok()?.cgroup?;
    Exit {
        code: 137,
        oom_killed: cg.oom_killed(),
    }
    .reason(cg.memory_limit())
}

/// CPU, memory and pids of the container of `dir` now (for `rctl stats`); None when it
/// has no cgroup.
pub fn stats_of(dir: &ContainerDir) -> Option<cgroups::Stats> {
    Some(dir.read_profile().ok()?.cgroup?.stats())
}

/// The limits of a task's resources (0 means unlimited there).
pub fn limits_of(r: Option<&rctl_api::pb::Resources>) -> Limits {
    let nonzero = |v: u64| (v > 0).then_some(v);
    match r {
        None => Limits::default(),
        Some(r) => Limits {
            memory_bytes: nonzero(r.memory_bytes),
            cpu_millis: (r.cpus.is_finite() && r.cpus > 0.0)
                .then(|| ((r.cpus * 1000.0).round() as u64).max(1)),
            cpu_shares: None,
            pids: nonzero(r.pids),
        },
    }
}

/// A task's mounts as the runtime takes them.
pub fn mounts_of(task: &rctl_api::pb::Task) -> Result<Vec<MountSpec>, MountError> {
    task.mounts
        .iter()
        .map(|m| {
            let kind = match m.kind.as_str() {
                "bind" => mounts::MountKind::Bind,
                "volume" => mounts::MountKind::Volume,
                "tmpfs" => mounts::MountKind::Tmpfs,
                other => return Err(MountError::Kind(other.to_string())),
            };
            let spec = MountSpec {
                source: m.source.clone(),
                target: m.target.clone(),
                readonly: m.readonly,
                kind,
            };
            mounts::validate(&spec)?;
            Ok(spec)
        })
        .collect()
}

/// What a task asks of its container, with `image` and `layers` from the pulled image.
pub fn spec_of(
    task: &rctl_api::pb::Task,
    image: &RunConfig,
    layers: Vec<PathBuf>,
) -> Result<ContainerSpec, MountError> {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(ContainerSpec {
        id: task.id.clone(),
        layers,
        image: image.clone(),
        command: task.command.clone(),
        env: task.env.clone(),
        user: some(&task.user),
        workdir: some(&task.workdir),
        hostname: some(&task.hostname),
        limits: limits_of(task.resources.as_ref()),
        mounts: mounts_of(task)?,
        // RunTask refused anything but "" and "host" (task::validate).
        host_userns: task.userns == "host",
    })
}

async fn write_state(
    dir: &ContainerDir,
    cfg: &ContainerConfig,
    profile: &Profile,
) -> Result<(), ContainerError> {
    let state_err = |path: PathBuf| move |source| ContainerError::State { path, source };
    for d in [dir.upper(), dir.work(), dir.rootfs()] {
        tokio::fs::create_dir_all(&d)
            .await
            .map_err(state_err(d.clone()))?;
    }
    let json = |v: serde_json::Result<Vec<u8>>, p: PathBuf| {
        v.map_err(|e| state_err(p)(std::io::Error::other(e)))
    };
    let c = json(serde_json::to_vec_pretty(cfg), dir.config())?;
    let p = json(serde_json::to_vec_pretty(profile), dir.profile())?;
    write_atomic(&dir.profile(), &p)
        .await
        .map_err(state_err(dir.profile()))?;
    // The config last: its presence is what marks a complete container.
    write_atomic(&dir.config(), &c)
        .await
        .map_err(state_err(dir.config()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rctl_api::pb;

    #[test]
    fn tasks_map_to_container_specs() {
        let task = pb::Task {
            id: "t1".into(),
            user: "app:video".into(),
            workdir: "/srv".into(),
            resources: Some(pb::Resources {
                cpus: 1.5,
                memory_bytes: 64 << 20,
                pids: 0,
            }),
            mounts: vec![
                pb::Mount {
                    source: "data".into(),
                    target: "/data".into(),
                    readonly: true,
                    kind: "volume".into(),
                },
                pb::Mount {
                    target: "/scratch".into(),
                    kind: "tmpfs".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let s = spec_of(&task, &RunConfig::default(), vec![]).unwrap();
        assert_eq!(s.user.as_deref(), Some("app:video"));
        assert_eq!(s.workdir.as_deref(), Some("/srv"));
        assert_eq!(s.hostname, None);
        assert_eq!(
            s.limits,
            Limits {
                memory_bytes: Some(64 << 20),
                cpu_millis: Some(1500),
                cpu_shares: None,
                pids: None
            }
        );
        assert_eq!(s.mounts[0].kind, mounts::MountKind::Volume);
        assert!(s.mounts[0].readonly);
        assert_eq!(s.mounts[1].kind, mounts::MountKind::Tmpfs);
        let mut bad = task.clone();
        bad.mounts[0].kind = "nfs".into();
        assert!(matches!(
            spec_of(&bad, &RunConfig::default(), vec![]),
            Err(MountError::Kind(_))
        ));
        bad.mounts[0].kind = "bind".into();
        bad.mounts[0].source = "relative".into();
        assert!(spec_of(&bad, &RunConfig::default(), vec![]).is_err());
    }

    #[test]
    fn oom_exit_names_the_limit() {
        let e = Exit {
            code: 137,
            oom_killed: true,
        };
        assert_eq!(
            e.reason(Some(32 << 20)).unwrap(),
            "OOMKilled: memory limit 32 MiB reached"
        );
        assert!(Exit {
            code: 137,
            oom_killed: false
        }
        .reason(Some(1))
        .is_none());
    }
}
