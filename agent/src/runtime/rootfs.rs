//! Inside the container, before exec: the mounts that make its root filesystem (overlayfs of
//! the image layers, fresh /proc, minimal /dev, read-only /sys), its identity files, and the
//! `pivot_root` into it. Runs in the shim's child, PID 1 of the new pid namespace.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};

use super::security::Profile;
use super::state::{ContainerConfig, ContainerDir};
use super::{confine, mounts, security, spec, userns};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mount {what} at {target}: {source}")]
    Mount {
        what: &'static str,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: {source}")]
    Sys {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error("bad string for exec: {0}")]
    Nul(String),
    #[error("the image has a symlink or file at {0}, where a directory must be")]
    NotADir(PathBuf),
    #[error(transparent)]
    UserMount(#[from] mounts::MountError),
    #[error(transparent)]
    Cgroup(#[from] super::cgroups::CgroupError),
    #[error(transparent)]
    Confine(#[from] super::confine::ConfineError),
    #[error(transparent)]
    Userns(#[from] userns::NsError),
    #[error("read {path}: {source}")]
    Profile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn do_mount(
    what: &'static str,
    src: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    mount(Some(src), target, Some(fstype), flags, data).map_err(|source| RootfsError::Mount {
        what,
        target: target.to_path_buf(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(path).map_err(|source| RootfsError::Io {
        step: "create dir",
        path: path.to_path_buf(),
        source,
    })
}

/// Makes sure `path` (a direct child of the rootfs) is a directory and not a symlink,
/// which would send the kernel filesystems mounted on it, and the device nodes made in
/// it, to wherever it points on the host (CVE-2019-19921's /proc variant).
fn real_dir(path: &Path) -> Result<(), RootfsError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
            Err(RootfsError::NotADir(path.to_path_buf()))
        }
        Ok(_) => Ok(()),
        Err(_) => mkdir(path),
    }
}

/// The overlayfs mount options for `cfg`: lower layers are listed top-first, every path
/// relative to the container directory (the mount is made from there). The kernel shows
/// these strings in the container's /proc/self/mountinfo, so relative paths keep the
/// host's directory layout out of it (as Docker's short `l/` links do).
pub fn overlay_options(cfg: &ContainerConfig, dir: &ContainerDir) -> String {
    let lower: Vec<String> = cfg
        .layers
        .iter()
        .rev()
        .map(|p| relative_to(p, &dir.0).display().to_string())
        .collect();
    format!("lowerdir={},upperdir=upper,workdir=work", lower.join(":"),)
}

/// `path` relative to directory `base` (both absolute, already normalised).
pub fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let p: Vec<_> = path.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

impl RootfsError {
    /// The exit status a container that failed this way records, as Docker's `run` exits:
    /// 127 the command was not found, 126 it cannot be invoked, 125 the container could
    /// not be set up to run it.
    pub fn exit_code(&self) -> i32 {
        use nix::errno::Errno;
        match self {
            RootfsError::Spec(spec::SpecError::NotFound(_)) => 127,
            RootfsError::Spec(spec::SpecError::NotExecutable(_)) => 126,
            RootfsError::Sys {
                step: "execve",
                source,
            } => match source {
                Errno::ENOENT => 127,
                Errno::EACCES | Errno::ENOEXEC | Errno::EISDIR | Errno::EPERM => 126,
                _ => 125,
            },
            _ => 125,
        }
    }
}

/// Builds the container's root, enters it and execs the command. Returns only on error.
///
/// The outcome goes to the container's start file (see [`ContainerDir::start`]) through
/// an fd opened while the host's filesystem is still reachable: `exec` right before
/// execve, or `error: WHY` when setup or execve fails.
pub fn enter_and_exec(cfg: &ContainerConfig, dir: &ContainerDir) -> RootfsError {
    use std::io::Write;
    let mut start = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.start())
        .ok();
    let mut note = |line: &str| {
        if let Some(f) = start.as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
    };
    let err = match enter(cfg, dir) {
        Ok(env) => exec(&cfg.argv, &env, || note("exec\n")).unwrap_err(),
        Err(e) => e,
    };
    note(&format!("error: {err}\n"));
    err
}

/// Everything up to execve; returns the environment to exec with.
fn enter(cfg: &ContainerConfig, dir: &ContainerDir) -> Result<Vec<String>, RootfsError> {
    let profile = dir.read_profile().map_err(|source| RootfsError::Profile {
        path: dir.profile(),
        source,
    })?;
    if let Some(cg) = &profile.cgroup {
        cg.join_self()?;
    }
    // After joining (so not among the shim's NAMESPACES): the namespace's root is the
    // container's own cgroup.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP).map_err(|source| {
        RootfsError::Sys {
            step: "unshare cgroup namespace",
            source,
        }
    })?;
    let ns = prepare(cfg, dir, &profile)?;
    confine::apply_paths(&profile)?;
    // The user is resolved after pivot_root: /etc/passwd is the container's, and any
    // symlink in its path resolves inside the container's root.
    let id = confine::identity(&profile)?;
    let env = security::with_home(cfg.env.clone(), &id);
    if let Some(map) = &profile.userns {
        userns::give_stdio_to_root(map);
    }
    confine::apply_process(&profile, &id, ns.as_ref())?;
    Ok(env)
}

/// Builds the root and enters it; returns the container's user namespace, if it has one,
/// for the process to enter last.
fn prepare(
    cfg: &ContainerConfig,
    dir: &ContainerDir,
    profile: &Profile,
) -> Result<Option<OwnedFd>, RootfsError> {
    // A mount namespace of our own: pivot_root moves the root of every process in the
    // namespace, and the shim must keep seeing the host's filesystem to write pid and exit.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|source| {
        RootfsError::Sys {
            step: "unshare mount namespace",
            source,
        }
    })?;
    // Our mounts must not propagate back to the host's mount namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|source| RootfsError::Sys {
        step: "make / private",
        source,
    })?;
    let root = dir.rootfs();
    nix::unistd::chdir(&dir.0).map_err(|source| RootfsError::Sys {
        step: "chdir container dir",
        source,
    })?;
    // With a user namespace the layers are idmapped through it first (see `userns`), and
    // the writable layer is its root's.
    let ns = match &profile.userns {
        None => None,
        Some(map) => {
            let ns = userns::create(map)?;
            userns::idmap_layers(&cfg.layers, &dir.0.join(userns::IDMAPPED), &ns)?;
            userns::give_to_root(&dir.upper(), map)?;
            userns::give_to_root(&dir.work(), map)?;
            userns::open_network_sysctls()?;
            Some(ns)
        }
    };
    let options = match ns {
        Some(_) => userns::overlay_options(cfg.layers.len()),
        None => overlay_options(cfg, dir),
    };
    do_mount(
        "overlay",
        "overlay",
        &root,
        "overlay",
        MsFlags::empty(),
        Some(&options),
    )?;
    let mapped_root = profile.userns.map(|m| m.host_start);
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;

    // Identity files and user mounts first, while /proc, /dev and /sys are still plain
    // directories of the image: a symlink pointing into them cannot reach the kernel's
    // files. Both resolve inside the root (an image's /etc/hosts -> /host/file lands in
    // the container), and the files are written in place, so no host path shows in the
    // container's mountinfo.
    let task = cfg.task().unwrap_or_default();
    let (hosts, resolv) =
        crate::network::names::files(cfg.ip, &cfg.hostname, &task.extra_hosts, &task.dns);
    for (name, data) in [
        ("hostname", format!("{}\n", cfg.hostname)),
        ("hosts", hosts),
        ("resolv.conf", resolv),
    ] {
        mounts::write_in_root(&root, "/etc", name, data.as_bytes(), mapped_root)?;
    }
    for m in &profile.mounts {
        mounts::mount_in_root(&root, m, ns.as_ref())?;
    }

    let proc_dir = root.join("proc");
    real_dir(&proc_dir)?;
    do_mount("proc", "proc", &proc_dir, "proc", nodev, None)?;

    let dev = root.join("dev");
    real_dir(&dev)?;
    // The container's root owns its /dev (the nodes in it stay the host's root's: mknod
    // runs here, before the user namespace, where it is allowed).
    let dev_options = match mapped_root {
        Some(id) => format!("mode=755,size=65536k,uid={id},gid={id}"),
        None => "mode=755,size=65536k".to_string(),
    };
    do_mount(
        "tmpfs /dev",
        "tmpfs",
        &dev,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some(&dev_options),
    )?;
    for (name, major, minor) in [
        ("null", 1u64, 3u64),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            (major << 8) | minor,
        )
        .map_err(|source| RootfsError::Sys {
            step: "mknod /dev node",
            source,
        })?;
        // mknod's mode is filtered by the umask.
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666));
    }
    let pts = dev.join("pts");
    mkdir(&pts)?;
    do_mount(
        "devpts",
        "devpts",
        &pts,
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    mkdir(&shm)?;
    do_mount(
        "tmpfs /dev/shm",
        "shm",
        &shm,
        "tmpfs",
        nodev,
        Some("mode=1777,size=65536k"),
    )?;
    let mqueue = dev.join("mqueue");
    mkdir(&mqueue)?;
    do_mount("mqueue", "mqueue", &mqueue, "mqueue", nodev, None)?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, dev.join(link));
    }

    let sys = root.join("sys");
    real_dir(&sys)?;
    do_mount(
        "sysfs",
        "sysfs",
        &sys,
        "sysfs",
        nodev | MsFlags::MS_RDONLY,
        None,
    )?;

    nix::unistd::sethostname(&cfg.hostname).map_err(|source| RootfsError::Sys {
        step: "sethostname",
        source,
    })?;

    // pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves
    // the container with no path back to the host's filesystem.
    nix::unistd::chdir(&root).map_err(|source| RootfsError::Sys {
        step: "chdir rootfs",
        source,
    })?;
    nix::unistd::pivot_root(".", ".").map_err(|source| RootfsError::Sys {
        step: "pivot_root",
        source,
    })?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|source| RootfsError::Sys {
        step: "detach old root",
        source,
    })?;
    nix::unistd::chdir("/").map_err(|source| RootfsError::Sys {
        step: "chdir /",
        source,
    })?;
    // CVE-2024-21626: resolved in the new root without magic links, so a working dir
    // like /proc/self/fd/N cannot reach an fd that still points at the host.
    userns::as_mapped_root(profile.userns.as_ref(), || {
        mounts::chdir_in_root(&cfg.workdir)
    })?;
    Ok(ns)
}

/// Finds `argv[0]` in the container's PATH and execs it; `before` runs right before
/// execve. Returns only on error.
pub(crate) fn exec(
    argv: &[String],
    env: &[String],
    before: impl FnOnce(),
) -> Result<std::convert::Infallible, RootfsError> {
    let kind = |p: &Path| match std::fs::metadata(p) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => spec::FileKind::Executable,
        Ok(_) => spec::FileKind::Other,
        Err(_) => spec::FileKind::Missing,
    };
    let first = argv.first().map(String::as_str).unwrap_or_default();
    let path = spec::find_executable(first, env, kind)?;
    let cstr =
        |s: &[u8]| CString::new(s).map_err(|_| RootfsError::Nul(String::from_utf8_lossy(s).into()));
    let prog = cstr(path.as_os_str().as_bytes())?;
    let argv = argv
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let env = env
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    crate::sys::default_sigpipe().map_err(|source| RootfsError::Io {
        step: "reset SIGPIPE",
        path: PathBuf::new(),
        source,
    })?;
    before();
    nix::unistd::execve(&prog, &argv, &env).map_err(|source| RootfsError::Sys {
        step: "execve",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_cannot_run_records_dockers_codes() {
        let spec = |e| RootfsError::Spec(e);
        assert_eq!(spec(spec::SpecError::NotFound("x".into())).exit_code(), 127);
        assert_eq!(
            spec(spec::SpecError::NotExecutable("/etc/passwd".into())).exit_code(),
            126
        );
        assert_eq!(RootfsError::Nul("a\0b".into()).exit_code(), 125);
    }

    #[test]
    fn layer_paths_are_relative_to_the_container_dir() {
        let r = |p: &str, b: &str| relative_to(Path::new(p), Path::new(b));
        assert_eq!(
            r("/var/lib/rctl/layers/abc", "/var/lib/rctl/containers/c1"),
            PathBuf::from("../../layers/abc")
        );
        assert_eq!(r("/a/b/c", "/a/b"), PathBuf::from("c"));
        assert_eq!(r("/a", "/a"), PathBuf::from("."));
        assert_eq!(r("/x/y", "/a/b"), PathBuf::from("../../x/y"));
    }
}
