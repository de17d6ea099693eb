//! The container runtime: container state on disk, starting a container through its shim,
//! and signalling it. The shim itself lives in `crate::shim`; what happens inside the new
//! namespaces before exec lives in `rootfs`.

pub mod cgroups;
pub mod confine;
pub mod container;
pub mod disk;
pub mod exec;
pub mod mounts;
pub mod rootfs;
pub mod seccomp;
pub mod security;
pub mod spec;
pub mod state;
pub mod userns;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;

use state::{ContainerDir, PidRecord};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("open log {path}: {source}")]
    Log {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spawn shim: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("release shim: {0}")]
    Release(#[source] std::io::Error),
    #[error("container did not start: {0}")]
    NoStart(String),
}

/// Namespaces the shim enters at exec; its child is the container's PID 1. The child adds
/// a cgroup namespace of its own once it has joined the container's cgroup (`rootfs`).
pub const NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWNS
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWNET)
    .union(CloneFlags::CLONE_NEWPID);

/// A shim that has been started and waits for [`Shim::release`] before it creates the
/// container (so networking can be set up in its namespace first).
pub struct Shim {
    child: Child,
}

impl Shim {
    /// Starts `/proc/self/exe __shim DIR` in fresh namespaces, its own diagnostics going to
    /// `shim.log` (the container's output goes to `log.json`, written by the shim).
    pub fn spawn(dir: &ContainerDir) -> Result<Self, RuntimeError> {
        Self::spawn_with(Path::new("/proc/self/exe"), dir)
    }

    /// [`Shim::spawn`] with an explicit agent binary: for tests and benchmarks, whose own
    /// executable is not the agent.
    pub fn spawn_with(agent: &Path, dir: &ContainerDir) -> Result<Self, RuntimeError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.shim_log())
            .map_err(|source| RuntimeError::Log {
                path: dir.shim_log(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| RuntimeError::Log {
            path: dir.shim_log(),
            source,
        })?;
        let mut cmd = std::process::Command::new(agent);
        cmd.arg("__shim")
            .arg(&dir.0)
            // stdin is the sync pipe: one byte means "go", EOF means "give up". The shim
            // swaps it for /dev/null before the container starts. Rust opens every other
            // fd with O_CLOEXEC, so nothing else of the agent leaks into the shim.
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log2)
            .env_clear()
            .env("PATH", spec::DEFAULT_PATH);
        crate::sys::isolate_on_exec(&mut cmd, NAMESPACES);
        let child = cmd.spawn().map_err(RuntimeError::Spawn)?;
        Ok(Self { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the shim start the container, then reaps the shim in the background when it
    /// exits (it is our child until the agent restarts).
    pub fn release(mut self) -> Result<(), RuntimeError> {
        let res = self
            .child
            .stdin
            .take()
            .map(|mut s| s.write_all(b"g"))
            .unwrap_or(Ok(()));
        reap(self.child);
        res.map_err(RuntimeError::Release)
    }

    /// Gives up: the shim sees EOF and exits without starting anything.
    pub fn abort(mut self) {
        drop(self.child.stdin.take());
        reap(self.child);
    }
}

/// Reaps the shim `child` once it exits. In the agent that is a tokio task waiting on the
/// shim's pidfd (no thread per shim: 50 containers used to cost 50 blocked threads);
/// outside a runtime (tools, benchmarks) a thread waits instead.
fn reap(mut child: std::process::Child) {
    // Inside the agent's runtime (try_current succeeds only in its context).
    if tokio::runtime::Handle::try_current().is_ok() {
        if let Ok(fd) = crate::sys::watch_exit(child.id()) {
            tokio::spawn(async move {
                let _ = fd.readable().await;
                // A readable pidfd means the shim exited: this reaps without blocking.
                let _ = child.try_wait();
            });
            return;
        }
    }
    std::thread::spawn(move || {
        let _ = child.wait();
    });
}

/// Waits until the container has started: the shim recorded PID 1's pid, and PID 1 got
/// through its setup (namespaces, root, user, confinement) to execve. Only then is it
/// running: an `exec` before that would join namespaces PID 1 has not entered yet (its
/// mount namespace, then still the host's view; its user namespace). A container whose
/// setup failed, or that exited at once, is an error saying why.
pub async fn wait_started(
    dir: &ContainerDir,
    timeout: Duration,
) -> Result<PidRecord, RuntimeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    // The shim usually records the pid within a millisecond or two: poll fast at first,
    // then back off, so a start is not rounded up to a fixed poll interval.
    let mut pause = Duration::from_micros(100);
    loop {
        match dir.read_start() {
            Err(why) => return Err(RuntimeError::NoStart(why)),
            Ok(true) => {
                if let Some(p) = dir.read_pid() {
                    return Ok(p);
                }
            }
            Ok(false) => {}
        }
        if let Some(code) = dir.read_exit() {
            let why = dir.last_log_line().unwrap_or_default();
            return Err(RuntimeError::NoStart(format!("exit code {code}: {why}")));
        }
        if tokio::time::Instant::now() > deadline {
            let what = match dir.read_pid() {
                Some(_) => "container setup did not finish",
                None => "shim did not report a pid",
            };
            return Err(RuntimeError::NoStart(what.into()));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Sends `sig` to the container's PID 1 if it is still the recorded process.
pub fn signal(p: &PidRecord, sig: Signal) {
    if p.alive() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig);
    }
}

/// Whether the container has finished: the shim wrote its exit status or it is gone.
pub fn finished(dir: &ContainerDir, p: &PidRecord) -> bool {
    dir.exit().exists() || !p.alive()
}

/// Where removed container directories wait to be deleted: `.trash` under the directory
/// that holds the containers (not a valid container id, so adoption skips it).
pub fn trash_dir(dir: &Path) -> Option<std::path::PathBuf> {
    Some(dir.parent()?.join(".trash"))
}

/// Removes the container directory (the mounts lived in the container's own mount
/// namespace and vanished with it). The directory is renamed away at once, so its id is
/// free and nothing of it is visible; its files are deleted in the background, since
/// unlinking a writable layer can take tens of milliseconds on a disk mounted with
/// `discard`.
///
/// Every process of the container is ended first and its cgroup removed. If some could
/// not be ended in time the directory goes all the same and the error says so; the orphan
/// sweep ends them later ([`container::ContainerRuntime::end_orphans`]).
pub async fn remove_dir(dir: &Path) -> Result<(), RemoveError> {
    let ended =
        container::end_and_release(&ContainerDir(dir.to_path_buf()), container::DELETE_WAIT).await;
    move_and_delete(dir).await.map_err(RemoveError::Dir)?;
    ended.map_err(RemoveError::Processes)
}

/// Why a container directory's removal was not clean.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("processes of the container remain: {0}")]
    Processes(#[source] container::ContainerError),
    #[error("remove directory: {0}")]
    Dir(#[source] std::io::Error),
}

async fn move_and_delete(dir: &Path) -> std::io::Result<()> {
    let gone = match trash_dir(dir) {
        Some(trash) => {
            let name = format!(
                "{}-{}",
                dir.file_name().unwrap_or_default().to_string_lossy(),
                rand::random::<u64>()
            );
            let to = trash.join(name);
            match tokio::fs::create_dir_all(&trash).await {
                Ok(()) => tokio::fs::rename(dir, &to).await.map(|()| to),
                Err(e) => Err(e),
            }
        }
        None => Err(std::io::Error::other("no parent")),
    };
    match gone {
        Ok(to) => {
            tokio::task::spawn_blocking(move || std::fs::remove_dir_all(to));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        // Another filesystem or no room for the trash: delete in place.
        Err(_) => match tokio::fs::remove_dir_all(dir).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

/// Deletes whatever an earlier agent left in the trash (it died mid-delete).
pub async fn empty_trash(containers: &Path) {
    let trash = containers.join(".trash");
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(trash)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_container_is_started_only_once_pid_1_reached_exec() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ContainerDir(tmp.path().to_path_buf());
        let me = PidRecord {
            pid: std::process::id() as i32,
            start_time: 0,
        };
        std::fs::write(dir.pid(), me.render()).unwrap();
        // Forked, still setting up: not started.
        std::fs::write(dir.start(), "").unwrap();
        let err = wait_started(&dir, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("setup did not finish"), "{err}");
        // A start file left by an earlier run of the container is removed before a restart;
        // here the current run reaches exec.
        std::fs::write(dir.start(), "exec\n").unwrap();
        assert_eq!(
            wait_started(&dir, Duration::from_millis(50)).await.unwrap(),
            me
        );
        // Setup failed: the reason, not a pid.
        std::fs::write(dir.start(), "error: no such user: nobody2\n").unwrap();
        let err = wait_started(&dir, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no such user: nobody2"), "{err}");
    }
}
