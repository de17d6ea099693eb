//! Running another process inside a running container (`rctl exec`).
//!
//! [`exec`] (agent side, async) writes the request to the container directory and starts
//! `rctl-agent __exec DIR REQUEST` with the caller's stdio fds. That helper ([`main`]) is a
//! fresh single-threaded process: it makes itself non-dumpable (so a container process
//! cannot open its /proc/PID/exe, the agent binary: CVE-2019-5736), joins the container's
//! cgroup, enters its namespaces (cgroup, ipc, uts, net, pid, then mnt, which also moves
//! it to the container's root), and forks: the child is inside the pid namespace, enters
//! the container's user namespace if it has one (last), takes the container's profile
//! (user, rlimits, capabilities, no-new-privileges, seccomp, no inherited fds) and execs.
//! The helper exits with the child's status.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use serde::{Deserialize, Serialize};

use super::state::{write_atomic, ContainerDir};
use super::{confine, mounts, rootfs, security, spec};
use crate::sys::{self, Forked};

/// What to run in the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    /// `K=V` added to (and overriding) the container's environment.
    pub env: Vec<String>,
    /// Overrides the container's user.
    pub user: Option<String>,
    /// Overrides the container's working dir.
    pub workdir: Option<String>,
    /// Stdio is a pty slave: the process gets a session of its own with it as its
    /// controlling terminal (job control, SIGWINCH on resize).
    #[serde(default)]
    pub tty: bool,
}

/// The process's stdin, stdout and stderr (pipes or a pty slave).
pub struct ExecStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("no command to exec")]
    NoCommand,
    #[error("container is not running")]
    NotRunning,
    #[error("exec request {path}: {source}")]
    Request {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("start exec helper: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Runs `spec` in the container of `dir`; returns its exit code (128 + signal when
/// killed; 126/127 when it could not be started, with the reason on its stderr).
pub async fn exec(
    dir: &ContainerDir,
    agent_exe: &Path,
    spec: &ExecSpec,
    stdio: ExecStdio,
) -> Result<i32, ExecError> {
    if spec.argv.first().is_none_or(|a| a.is_empty()) {
        return Err(ExecError::NoCommand);
    }
    if !dir.read_pid().is_some_and(|p| p.alive()) || dir.exit().exists() {
        return Err(ExecError::NotRunning);
    }
    // A container that is (re)starting is joined only once PID 1 finished its setup.
    super::wait_started(dir, STARTING_WAIT)
        .await
        .map_err(|_| ExecError::NotRunning)?;
    let req = dir
        .0
        .join(format!("exec-{:016x}.json", rand::random::<u64>()));
    let json = serde_json::to_vec(spec).map_err(|e| ExecError::Request {
        path: req.clone(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&req, &json)
        .await
        .map_err(|source| ExecError::Request {
            path: req.clone(),
            source,
        })?;
    let child = tokio::process::Command::new(agent_exe)
        .arg("__exec")
        .arg(&dir.0)
        .arg(&req)
        .stdin(Stdio::from(stdio.stdin))
        .stdout(Stdio::from(stdio.stdout))
        .stderr(Stdio::from(stdio.stderr))
        .env_clear()
        .kill_on_drop(true)
        .spawn();
    let status = match child {
        Ok(mut c) => c.wait().await.map_err(ExecError::Spawn),
        Err(e) => Err(ExecError::Spawn(e)),
    };
    let _ = tokio::fs::remove_file(&req).await;
    let status = status?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// How long an exec waits for a container that is (re)starting to finish its setup.
const STARTING_WAIT: Duration = Duration::from_secs(10);

/// The namespaces an exec enters, in order: mnt last, since it changes the root and so
/// what /proc/PID/ns paths mean.
const JOIN_ORDER: [(&str, CloneFlags); 6] = [
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// `rctl-agent __exec DIR REQUEST`: returns the helper's exit code.
pub fn main(dir: &Path, request: &Path) -> i32 {
    match run(&ContainerDir(dir.to_path_buf()), request) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rctl exec: {e}");
            126
        }
    }
}

fn run(dir: &ContainerDir, request: &Path) -> Result<i32, String> {
    // Before anything of the container can see us.
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("set non-dumpable: {e}"))?;
    let spec: ExecSpec = std::fs::read(request)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("read request {}: {e}", request.display()))?;
    let cfg = dir
        .read_config()
        .map_err(|e| format!("read {}: {e}", dir.config().display()))?;
    let mut profile = dir
        .read_profile()
        .map_err(|e| format!("read {}: {e}", dir.profile().display()))?;
    let pid = dir
        .read_pid()
        .filter(|p| p.alive())
        .ok_or("container is not running")?;
    // Never join a PID 1 still setting up: its namespaces are not all the container's yet.
    if dir.read_start() != Ok(true) {
        return Err("container is still starting".into());
    }
    // Open every namespace first: once in the mount namespace, /proc is the container's.
    let mut ns: Vec<(OwnedFd, CloneFlags)> = Vec::new();
    for (name, flag) in JOIN_ORDER {
        let path = format!("/proc/{}/ns/{name}", pid.pid);
        let fd = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        ns.push((fd.into(), flag));
    }
    // The user namespace is entered last, by the child, right before it takes the
    // container's user: the others belong to the host's user namespace, and entering
    // them needs the host root's capabilities.
    let userns: Option<OwnedFd> = match profile.userns {
        None => None,
        Some(_) => {
            let path = format!("/proc/{}/ns/user", pid.pid);
            let fd = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            Some(fd.into())
        }
    };
    if let Some(cg) = &profile.cgroup {
        cg.join_self().map_err(|e| e.to_string())?;
    }
    // The pid record could name a reused pid only if the container died meanwhile.
    if !pid.alive() {
        return Err("container is not running".into());
    }
    for (fd, flag) in &ns {
        nix::sched::setns(fd.as_fd(), *flag).map_err(|e| format!("enter {flag:?}: {e}"))?;
    }
    drop(ns);
    match sys::fork().map_err(|e| format!("fork: {e}"))? {
        Forked::Child => {
            let (code, e) = child(&cfg.env, &cfg.workdir, &spec, &mut profile, userns.as_ref());
            eprintln!("rctl exec: {e}");
            std::process::exit(code);
        }
        Forked::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("wait: {e}")),
            }
        },
    }
}

/// Docker's exit codes for a command that could not be run: 127 when it is not found, 126
/// when it cannot be invoked (not executable, no such working directory, ...).
const NOT_FOUND: i32 = 127;
const CANNOT_INVOKE: i32 = 126;

/// Inside the pid namespace: the container's profile, then exec. Returns only on error,
/// with the exit code that says why.
fn child(
    base_env: &[String],
    base_workdir: &str,
    spec: &ExecSpec,
    profile: &mut security::Profile,
    userns: Option<&OwnedFd>,
) -> (i32, String) {
    let mut go = || -> Result<std::convert::Infallible, (i32, String)> {
        let invoke = |e: String| (CANNOT_INVOKE, e);
        if spec.tty {
            nix::unistd::setsid().map_err(|e| invoke(format!("setsid: {e}")))?;
            rustix::process::ioctl_tiocsctty(std::io::stdin())
                .map_err(|e| invoke(format!("make the pty the controlling terminal: {e}")))?;
        }
        // `-w` must exist (Docker fails, it does not create it); the container's own
        // working directory was made when it started.
        super::userns::as_mapped_root(profile.userns.as_ref(), || match spec.workdir.as_deref() {
            Some(dir) => mounts::chdir_existing_in_root(dir),
            None => mounts::chdir_in_root(base_workdir),
        })
        .map_err(|e| invoke(e.to_string()))?;
        if let Some(u) = &spec.user {
            profile.user = u.clone();
        }
        let id = confine::identity(profile).map_err(|e| invoke(e.to_string()))?;
        let env = security::with_home(merge_env(base_env, &spec.env), &id);
        if let Some(map) = &profile.userns {
            super::userns::give_stdio_to_root(map);
        }
        confine::apply_process(profile, &id, userns).map_err(|e| invoke(e.to_string()))?;
        rootfs::exec(&spec.argv, &env, || {}).map_err(|e| {
            let code = match e {
                rootfs::RootfsError::Spec(spec::SpecError::NotFound(_)) => NOT_FOUND,
                _ => CANNOT_INVOKE,
            };
            (code, e.to_string())
        })
    };
    match go() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// The container's environment with `extra` (`K=V`) replacing or adding variables.
pub fn merge_env(base: &[String], extra: &[String]) -> Vec<String> {
    let key = |kv: &str| {
        kv.split_once('=')
            .map(|(k, _)| k.to_string())
            .unwrap_or_else(|| kv.to_string())
    };
    let mut out: Vec<String> = base
        .iter()
        .filter(|kv| !extra.iter().any(|e| key(e) == key(kv)))
        .cloned()
        .collect();
    out.extend(extra.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_env_overrides_the_containers() {
        let base = vec!["PATH=/bin".to_string(), "A=1".into(), "HOSTNAME=h".into()];
        assert_eq!(
            merge_env(&base, &["A=2".into(), "B=3".into()]),
            ["PATH=/bin", "HOSTNAME=h", "A=2", "B=3"]
        );
        assert_eq!(merge_env(&base, &[]), base);
    }

    #[test]
    fn mount_namespace_is_entered_last() {
        assert_eq!(JOIN_ORDER.last().unwrap().1, CloneFlags::CLONE_NEWNS);
        assert!(JOIN_ORDER
            .iter()
            .any(|(_, f)| *f == CloneFlags::CLONE_NEWPID));
    }
}
