//! Applies a [`Profile`] to the calling process right before it execs the container's
//! program, in runc's order: masked and read-only paths → rlimits → user and groups →
//! capabilities → no-new-privileges → seccomp (last, so the steps before it may use
//! what it forbids) → close every inherited fd. Runs in a single-threaded process (the
//! shim's child or the `__exec` helper) inside the container's root.

use std::os::fd::OwnedFd;
use std::path::Path;

use caps::{CapSet, Capability, CapsHashSet};
use nix::mount::{mount, MsFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd::{Gid, Uid};

use super::seccomp::{self, SeccompError};
use super::security::{Identity, Profile, RlimitKind, UserError};

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("{step} {path}: {source}")]
    Path {
        step: &'static str,
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("{step}: {source}")]
    Sys {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("capabilities: {0}")]
    Caps(String),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Userns(#[from] super::userns::NsError),
    #[error("install seccomp filter: {0}")]
    SeccompInstall(String),
    #[error("read {path}: {source}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Masks and read-only paths, on the container's /proc and /sys (after pivot_root).
pub fn apply_paths(profile: &Profile) -> Result<(), ConfineError> {
    for p in &profile.masked_paths {
        let meta = match std::fs::symlink_metadata(p) {
            Ok(m) => m,
            // Absent on this kernel: nothing to hide.
            Err(_) => continue,
        };
        let res = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                p.as_str(),
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            mount(
                Some("/dev/null"),
                p.as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        res.map_err(|source| ConfineError::Path {
            step: "mask",
            path: p.clone(),
            source,
        })?;
    }
    for p in &profile.readonly_paths {
        if !Path::new(p).exists() {
            continue;
        }
        let step = |source| ConfineError::Path {
            step: "make read-only",
            path: p.clone(),
            source,
        };
        mount(
            Some(p.as_str()),
            p.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(step)?;
        mount(
            None::<&str>,
            p.as_str(),
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(step)?;
    }
    Ok(())
}

/// Resolves the profile's user against the container's own /etc/passwd and /etc/group.
/// Called after pivot_root (or setns + chroot for exec), so even a symlinked /etc/passwd
/// resolves inside the container's root; a missing file counts as empty.
pub fn identity(profile: &Profile) -> Result<Identity, ConfineError> {
    let read = |path: &'static str| match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(ConfineError::Read { path, source }),
    };
    let passwd = read("/etc/passwd")?;
    let group = read("/etc/group")?;
    Ok(super::security::resolve_user(
        &profile.user,
        &passwd,
        &group,
    )?)
}

fn cap_set(profile: &Profile) -> Result<CapsHashSet, ConfineError> {
    profile
        .capabilities
        .iter()
        .map(|c| {
            c.parse::<Capability>()
                .map_err(|e| ConfineError::Caps(format!("{c}: {e}")))
        })
        .collect()
}

/// Everything after the paths: rlimits, the user namespace (`userns`, entered after the
/// rlimits, which only the host's root may raise), user, capabilities, no-new-privileges,
/// seccomp, and the fds. After this only execve is left.
pub fn apply_process(
    profile: &Profile,
    id: &Identity,
    userns: Option<&OwnedFd>,
) -> Result<(), ConfineError> {
    let sys = |step| move |source| ConfineError::Sys { step, source };
    let caps_err = |e: caps::errors::CapsError| ConfineError::Caps(e.to_string());
    for r in &profile.rlimits {
        let res = match r.resource {
            RlimitKind::Nofile => Resource::RLIMIT_NOFILE,
            RlimitKind::Nproc => Resource::RLIMIT_NPROC,
            RlimitKind::Core => Resource::RLIMIT_CORE,
        };
        // Without CAP_SYS_RESOURCE (a confined agent) the hard limit cannot rise: then
        // the container inherits as much as the agent has, as Docker's default does.
        if setrlimit(res, r.soft, r.hard).is_err() {
            let (_, hard) = getrlimit(res).map_err(sys("getrlimit"))?;
            let (soft, hard) = super::security::clamp_rlimit(r, hard);
            setrlimit(res, soft, hard).map_err(sys("setrlimit"))?;
        }
    }
    if let Some(ns) = userns {
        // From here the ids below are the namespace's: 0 is the mapped root.
        super::userns::enter(ns)?;
    }
    let keep = cap_set(profile)?;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which we still hold.
    for c in caps::runtime::thread_all_supported() {
        if !keep.contains(&c) {
            caps::drop(None, CapSet::Bounding, c).map_err(caps_err)?;
        }
    }
    // Keep permitted caps across setuid so root-in-image keeps its set; for another uid we
    // empty the sets ourselves below (Docker gives non-root users no effective caps).
    nix::sys::prctl::set_keepcaps(true).map_err(sys("keep caps"))?;
    let gids: Vec<Gid> = id.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&gids).map_err(sys("setgroups"))?;
    nix::unistd::setresgid(
        Gid::from_raw(id.gid),
        Gid::from_raw(id.gid),
        Gid::from_raw(id.gid),
    )
    .map_err(sys("setgid"))?;
    nix::unistd::setresuid(
        Uid::from_raw(id.uid),
        Uid::from_raw(id.uid),
        Uid::from_raw(id.uid),
    )
    .map_err(sys("setuid"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(sys("clear keep caps"))?;
    let granted = if id.uid == 0 {
        keep
    } else {
        CapsHashSet::new()
    };
    caps::clear(None, CapSet::Ambient).map_err(caps_err)?;
    // Effective must shrink before permitted can (it must stay a subset).
    caps::set(None, CapSet::Effective, &granted).map_err(caps_err)?;
    caps::set(None, CapSet::Inheritable, &granted).map_err(caps_err)?;
    caps::set(None, CapSet::Permitted, &granted).map_err(caps_err)?;
    if profile.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(sys("no_new_privs"))?;
    }
    if profile.seccomp {
        let prog = seccomp::default_filter(&profile.capabilities)?;
        seccompiler::apply_filter(&prog)
            .map_err(|e| ConfineError::SeccompInstall(e.to_string()))?;
    }
    // CVE-2024-21626: no fd of the shim or agent may survive into the container. CLOEXEC
    // rather than close, so an execve failure can still be reported on stderr.
    crate::sys::cloexec_from(3).map_err(|e| ConfineError::Sys {
        step: "close inherited fds",
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)),
    })?;
    Ok(())
}
