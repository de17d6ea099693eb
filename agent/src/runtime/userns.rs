//! User namespaces, as Docker's `userns-remap`: with `--userns-remap START:COUNT` every
//! container of the agent (unless its task asks for `userns = "host"`) runs in a user
//! namespace where its uids and gids 0..COUNT are the host's START..START+COUNT, so root
//! inside is an unprivileged user outside.
//!
//! # How a container gets one
//! The container's PID 1 builds the root filesystem as host root, as without a user
//! namespace, then enters the namespace last, right before it drops to the container's
//! user. The namespace exists before that, made by a short-lived helper process
//! ([`create`]), because the rootfs needs it first: the image layers are idmapped mounts
//! through it ([`idmap_layers`]), so a file owned by 0 in a layer is owned by START on
//! the host side and by 0 inside. Plain overlayfs mounted from inside the namespace does
//! not work: the layers' files belong to the host's root, unmapped there (EPERM on /etc).
//! The other namespaces (mount, pid, net, ...) stay owned by the host's user namespace,
//! as Docker's network namespace is: the container's capabilities apply to its own files
//! and processes, and give it nothing over its mounts or network devices.
//!
//! Vocabulary: a *map* is one `uid_map`/`gid_map` line, container id 0 → host `START`,
//! `COUNT` ids long; the *mapped root* is host uid/gid `START`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use crate::sys::{self, Forked};

/// The one range container ids map to (the same for uids and gids, as Docker's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// Host id of the container's id 0 (the mapped root).
    pub host_start: u32,
    /// How many ids are mapped: container ids 0..count.
    pub count: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsernsError {
    #[error("bad --userns-remap {0:?}: expected START:COUNT, e.g. 100000:65536")]
    Syntax(String),
    #[error(
        "bad --userns-remap {0:?}: START must not be 0 (the container's root would be the host's)"
    )]
    HostRoot(String),
    #[error("bad --userns-remap {0:?}: COUNT must be at least 1 and START+COUNT at most 2^32-1")]
    Range(String),
    #[error("bad userns {0:?}: expected \"host\", or empty for the agent's setting")]
    Mode(String),
}

impl IdMap {
    /// Parses `START:COUNT` (the agent's `--userns-remap`).
    pub fn parse(s: &str) -> Result<Self, UsernsError> {
        let syntax = || UsernsError::Syntax(s.to_string());
        let (start, count) = s.split_once(':').ok_or_else(syntax)?;
        let num = |v: &str| {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            v.parse::<u32>()
                .map_err(|_| UsernsError::Range(s.to_string()))
        };
        let (host_start, count) = (num(start)?, num(count)?);
        if host_start == 0 {
            return Err(UsernsError::HostRoot(s.to_string()));
        }
        // The kernel refuses a map that wraps around; u32::MAX itself is "no id".
        if count == 0 || host_start.checked_add(count).is_none() {
            return Err(UsernsError::Range(s.to_string()));
        }
        Ok(Self { host_start, count })
    }

    /// The line written to `/proc/PID/uid_map` and `gid_map`.
    pub fn line(&self) -> String {
        format!("0 {} {}\n", self.host_start, self.count)
    }
}

/// Whether a task's `userns` field asks for the host's user namespace (Docker's
/// `--userns=host`); empty means the agent's setting.
pub fn host_requested(mode: &str) -> Result<bool, UsernsError> {
    match mode {
        "" => Ok(false),
        "host" => Ok(true),
        other => Err(UsernsError::Mode(other.to_string())),
    }
}

/// The overlayfs options over idmapped layers `idmapped/0..n` (bottom-first on disk,
/// listed top-first), relative to the container directory like the plain ones.
pub fn overlay_options(n: usize) -> String {
    let lower: Vec<String> = (0..n).rev().map(|i| format!("{IDMAPPED}/{i}")).collect();
    format!("lowerdir={},upperdir=upper,workdir=work", lower.join(":"))
}

/// Where, in the container directory, the idmapped layers are attached while the rootfs
/// is built (only in PID 1's mount namespace; they go with the old root at pivot_root).
pub const IDMAPPED: &str = "idmapped";

// === effects: run as host root in a single-threaded process (PID 1, the exec helper) ===

#[derive(Debug, thiserror::Error)]
#[error("user namespace: {step}: {source}")]
pub struct NsError {
    step: &'static str,
    #[source]
    source: std::io::Error,
}

fn step(step: &'static str) -> impl FnOnce(std::io::Error) -> NsError {
    move |source| NsError { step, source }
}

/// Makes a user namespace with `map` for uids and gids and returns an fd of it.
///
/// A forked helper unshares it and waits; this process writes the maps (as root in the
/// parent namespace it may map any range, and gid_map needs no `setgroups` deny, so the
/// container keeps setgroups), opens the namespace, and lets the helper exit.
pub fn create(map: &IdMap) -> Result<OwnedFd, NsError> {
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from);
    let (ready_r, ready_w) = pipe().map_err(step("pipe"))?;
    let (done_r, done_w) = pipe().map_err(step("pipe"))?;
    match sys::fork().map_err(step("fork helper"))? {
        Forked::Child => {
            drop((ready_r, done_w));
            // Our pid as the host's /proc knows it: our parent may be in a pid namespace
            // of its own (PID 1), where fork returned a different number.
            let pid = std::fs::read_link("/proc/self")
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let msg = match nix::sched::unshare(CloneFlags::CLONE_NEWUSER) {
                Ok(()) => pid,
                Err(e) => format!("error {e}"),
            };
            let _ = std::fs::File::from(ready_w).write_all(msg.as_bytes());
            // Wait for EOF: the parent is done with our namespace.
            let _ = std::fs::File::from(done_r).read(&mut [0u8; 1]);
            std::process::exit(0);
        }
        Forked::Parent { child } => {
            drop((ready_w, done_r));
            let mut msg = String::new();
            let res = std::fs::File::from(ready_r)
                .read_to_string(&mut msg)
                .map_err(step("read helper"))
                .and_then(|_| open_helper_ns(&msg, map));
            drop(done_w);
            let _ = nix::sys::wait::waitpid(child, None);
            res
        }
    }
}

fn open_helper_ns(msg: &str, map: &IdMap) -> Result<OwnedFd, NsError> {
    let pid: u32 = match msg.parse() {
        Ok(p) => p,
        Err(_) => {
            return Err(NsError {
                step: "unshare",
                source: std::io::Error::other(msg.to_string()),
            })
        }
    };
    let write = |file: &str, what| {
        std::fs::write(format!("/proc/{pid}/{file}"), map.line()).map_err(step(what))
    };
    write("uid_map", "write uid_map")?;
    write("gid_map", "write gid_map")?;
    std::fs::File::open(format!("/proc/{pid}/ns/user"))
        .map(OwnedFd::from)
        .map_err(step("open the namespace"))
}

/// Checks, at agent start, that this kernel and the filesystem holding `root` (or its
/// nearest existing ancestor) can do what every remapped container needs: make a user
/// namespace with `map` and idmap a mount of `root` through it. Nothing is mounted: the
/// idmapped clone stays detached and goes with its fd. Must run before the process has
/// threads (it forks).
pub fn probe(map: &IdMap, root: &Path) -> Result<(), NsError> {
    let ns = create(map)?;
    let dir = root
        .ancestors()
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("/"));
    let mnt = sys::open_tree_clone(dir).map_err(step("open_tree"))?;
    sys::idmap_mount(&mnt, &ns).map_err(|source| NsError {
        step: "idmap a mount of the agent root (does its filesystem support idmapped mounts?)",
        source,
    })
}

/// Attaches each of `layers` (bottom-first) at `at/0`, `at/1`, ... as a detached clone
/// idmapped through `userns`; [`overlay_options`] then stacks them.
pub fn idmap_layers(layers: &[PathBuf], at: &Path, userns: &OwnedFd) -> Result<(), NsError> {
    for (i, layer) in layers.iter().enumerate() {
        let target = at.join(i.to_string());
        std::fs::create_dir_all(&target).map_err(step("create layer mount point"))?;
        let mnt = sys::open_tree_clone(layer).map_err(step("open_tree layer"))?;
        sys::idmap_mount(&mnt, userns).map_err(step("idmap layer (mount_setattr)"))?;
        sys::move_mount_to(&mnt, &target).map_err(step("attach idmapped layer"))?;
    }
    Ok(())
}

/// Gives `path` (not following a symlink) to the mapped root: the writable layer's
/// directories, so `/` and what the container creates belong to its root.
pub fn give_to_root(path: &Path, map: &IdMap) -> Result<(), NsError> {
    std::os::unix::fs::lchown(path, Some(map.host_start), Some(map.host_start))
        .map_err(step("chown to the mapped root"))
}

/// Gives the pipes or terminal on fds 0-2 to the mapped root, so the container's root
/// can reopen them (`/dev/stdout`, `/proc/self/fd/1`), as runc does. /dev/null and
/// anything that refuses is left alone: the fds themselves stay usable either way.
pub fn give_stdio_to_root(map: &IdMap) {
    let null = nix::sys::stat::stat("/dev/null").ok().map(|s| s.st_rdev);
    for fd in [
        std::io::stdin().as_fd(),
        std::io::stdout().as_fd(),
        std::io::stderr().as_fd(),
    ] {
        let Ok(st) = nix::sys::stat::fstat(fd) else {
            continue;
        };
        let is_char = st.st_mode & libc::S_IFMT == libc::S_IFCHR;
        if is_char && Some(st.st_rdev) == null {
            continue;
        }
        let id = Some(map.host_start);
        let _ = nix::unistd::fchown(
            fd,
            id.map(nix::unistd::Uid::from_raw),
            id.map(nix::unistd::Gid::from_raw),
        );
    }
}

/// Lets the container's root bind ports below 1024 and open ping sockets in its network
/// namespace (Docker sets the same two sysctls). CAP_NET_BIND_SERVICE and CAP_NET_RAW
/// inside the user namespace count for nothing there: the network namespace is the host
/// user namespace's. Run in the container's network namespace: /proc/sys/net is the
/// caller's. A kernel without one of them (before 4.11) just keeps its default.
pub fn open_network_sysctls() -> Result<(), NsError> {
    for (path, value) in [
        ("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0"),
        ("/proc/sys/net/ipv4/ping_group_range", "0 2147483647"),
    ] {
        match std::fs::write(path, value) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(step("set network sysctl")(e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs `f` with the mapped root as the filesystem user (setfsuid/setfsgid), so what it
/// creates (a missing working directory) is the container's root's, not the host's. Without
/// a map it just runs `f`. The fs capabilities drop while the fsuid is not 0 and come back
/// with it.
pub fn as_mapped_root<T>(map: Option<&IdMap>, f: impl FnOnce() -> T) -> T {
    let Some(map) = map else {
        return f();
    };
    let uid = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(map.host_start));
    let gid = nix::unistd::setfsgid(nix::unistd::Gid::from_raw(map.host_start));
    let out = f();
    nix::unistd::setfsgid(gid);
    nix::unistd::setfsuid(uid);
    out
}

/// Enters the user namespace `userns`: the process keeps its (host root) ids, which are
/// unmapped there until it sets the container's, and holds every capability inside.
pub fn enter(userns: &OwnedFd) -> Result<(), NsError> {
    nix::sched::setns(userns.as_fd(), CloneFlags::CLONE_NEWUSER)
        .map_err(|e| step("setns")(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remap_ranges_parse_like_dockers() {
        let m = IdMap::parse("100000:65536").unwrap();
        assert_eq!(
            m,
            IdMap {
                host_start: 100000,
                count: 65536
            }
        );
        assert_eq!(m.line(), "0 100000 65536\n");
        for bad in [
            "", "100000", "100000:", ":65536", "a:b", "1:2:3", "-1:5", " 1:5",
        ] {
            assert!(
                matches!(IdMap::parse(bad), Err(UsernsError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            IdMap::parse("0:65536"),
            Err(UsernsError::HostRoot(_))
        ));
        for bad in [
            "100000:0",
            "4294967295:1",
            "4294901760:65536",
            "99999999999:1",
        ] {
            assert!(
                matches!(IdMap::parse(bad), Err(UsernsError::Range(_))),
                "{bad:?}"
            );
        }
        assert!(IdMap::parse("4294901759:65536").is_ok());
    }

    #[test]
    fn task_mode_is_empty_or_host() {
        assert_eq!(host_requested(""), Ok(false));
        assert_eq!(host_requested("host"), Ok(true));
        assert_eq!(
            host_requested("private"),
            Err(UsernsError::Mode("private".into()))
        );
    }

    #[test]
    fn overlay_lists_idmapped_layers_top_first() {
        assert_eq!(
            overlay_options(3),
            "lowerdir=idmapped/2:idmapped/1:idmapped/0,upperdir=upper,workdir=work"
        );
    }
}
