//! The few syscalls that need `unsafe`: kept in one small module so every unsafe block is easy
//! to audit. Everything else goes through `nix`'s safe wrappers.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use nix::sched::CloneFlags;

/// Makes `cmd`'s child enter new namespaces (`flags`) and a new session before it execs.
///
/// The work happens between fork and exec in the child, which is single-threaded, so
/// `unshare` there cannot race with the agent's tokio threads.
pub fn isolate_on_exec(cmd: &mut std::process::Command, flags: CloneFlags) {
    // SAFETY: the closure runs in the forked child before exec and only calls the
    // async-signal-safe syscalls close_range(2), unshare(2) and setsid(2); it allocates
    // nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Fds the agent inherited without O_CLOEXEC (from whoever started it) must not
            // reach the shim and the container. CLOEXEC rather than close: std's own
            // exec-error pipe is among them.
            if libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            nix::sched::unshare(flags).map_err(io::Error::from)?;
            nix::unistd::setsid().map_err(io::Error::from)?;
            Ok(())
        });
    }
}

/// Outcome of [`fork`] as seen by each side.
pub enum Forked {
    Parent { child: nix::unistd::Pid },
    Child,
}

/// Forks the current process. Only sound in a single-threaded process (the shim, the
/// exec helper).
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the only callers are the shim, the container's PID 1 it forks (making a user
    // namespace), the `__exec` helper, and the agent's main before its runtime starts
    // (probing --userns-remap): freshly exec'd processes, or their forks, with no thread
    // yet, so the child cannot inherit a lock held by another thread.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent { child }),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Restores the default SIGPIPE disposition: Rust ignores SIGPIPE at start-up and an ignored
/// signal stays ignored across execve, which would change how container programs behave.
pub fn default_sigpipe() -> io::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installing SIG_DFL runs no Rust code in signal context.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }
        .map(drop)
        .map_err(io::Error::from)
}

/// Sets extended attribute `name` on `path` without following a final symlink.
pub fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    let n = CString::new(name)?;
    // SAFETY: both strings are valid NUL-terminated C strings that outlive the call, and
    // value points to value.len() readable bytes.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads extended attribute `name` of `path` (not following a final symlink), up to 256 bytes.
pub fn lgetxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    let n = CString::new(name)?;
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are valid NUL-terminated C strings that outlive the call, and
    // buf has buf.len() writable bytes.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

/// Marks every fd from `first` up close-on-exec, so nothing the process inherited reaches
/// the program it execs next.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only sets a flag on open fds; it
    // touches no memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A pidfd for `pid` (pidfd_open(2)) registered with the current tokio runtime: readable
/// once the process exits, so the reactor watches every shim instead of a blocked thread
/// per shim. Must be called inside the runtime.
pub fn watch_exit(pid: u32) -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns the OwnedFd, which keeps the fd open (and the same
    // description) until the AsyncFd drops it; OwnedFd::as_raw_fd always returns it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// An inotify instance that tokio's reactor can watch ([`watch_inotify`]).
pub struct InotifyFd(pub nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

/// Registers `ino` (opened with IN_NONBLOCK) with the current tokio runtime, readable when
/// events are queued. Must be called inside the runtime.
pub fn watch_inotify(
    ino: nix::sys::inotify::Inotify,
) -> io::Result<tokio::io::unix::AsyncFd<InotifyFd>> {
    // SAFETY: InotifyFd owns the inotify fd (through Inotify's OwnedFd) until the AsyncFd
    // drops it, and as_raw_fd always returns that same fd.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            InotifyFd(ino),
            tokio::io::Interest::READABLE,
        )
    }
    .map_err(|e| e.into_parts().1)
}

/// Bounds glibc malloc's memory for a long-running agent: at most two arenas (glibc makes
/// up to 8 per core, one per thread that allocates, and each keeps freed memory), and fixed
/// mmap/trim thresholds (glibc's dynamic ones only grow, so freed buffers stay resident).
pub fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    tune_glibc_malloc();
}

#[cfg(target_env = "gnu")]
fn tune_glibc_malloc() {
    const M_TRIM_THRESHOLD: libc::c_int = -1;
    const M_MMAP_THRESHOLD: libc::c_int = -3;
    const M_ARENA_MAX: libc::c_int = -8;
    for (param, value) in [
        (M_ARENA_MAX, 2),
        (M_MMAP_THRESHOLD, 128 * 1024),
        (M_TRIM_THRESHOLD, 256 * 1024),
    ] {
        // SAFETY: mallopt only sets malloc tunables; it is called at start-up, before any
        // other thread exists.
        unsafe { libc::mallopt(param, value) };
    }
}

// === the new mount API, for idmapped mounts (user namespaces) ===

/// `open_tree(2)`: a detached clone of the mount tree.
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `mount_setattr(2)`: apply to the whole tree.
const AT_RECURSIVE: libc::c_uint = 0x8000;
/// `mount_setattr(2)`: map file owners through the user namespace in `userns_fd`.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
/// `move_mount(2)`: the source is the fd itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` of `<linux/mount.h>` (size version 0, 32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn path_cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// A detached clone of the mount tree at `path` (`open_tree(2)` with `OPEN_TREE_CLONE`):
/// it is attached nowhere until [`move_mount_to`], so its attributes can change first.
pub fn open_tree_clone(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let p = path_cstring(path)?;
    let flags = OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: p is a valid NUL-terminated path that outlives the call; the syscall only
    // reads it and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, p.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes the detached mount `mnt` idmapped through the user namespace `userns`
/// (`mount_setattr(2)` with `MOUNT_ATTR_IDMAP`): a file owned by uid N on disk is seen
/// as the host uid that N maps to in `userns`.
pub fn idmap_mount(
    mnt: &impl std::os::fd::AsRawFd,
    userns: &impl std::os::fd::AsRawFd,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: the path is a static empty C string, attr is a live, properly laid out
    // struct mount_attr whose size is passed along; the kernel only reads both.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `move_mount(2)`: the target is the fd itself.
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// Attaches the detached mount `mnt` onto the directory or file `target` is an fd of
/// (`O_PATH` is enough), so the target is exactly what was resolved, never a path looked
/// up again.
pub fn move_mount_onto(
    mnt: &impl std::os::fd::AsRawFd,
    target: &impl std::os::fd::AsRawFd,
) -> io::Result<()> {
    // SAFETY: both paths are static empty C strings; the kernel only reads them and the
    // two fds, which the caller keeps open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Attaches the detached mount `mnt` at `target` (`move_mount(2)`).
pub fn move_mount_to(mnt: &impl std::os::fd::AsRawFd, target: &Path) -> io::Result<()> {
    let t = path_cstring(target)?;
    // SAFETY: both paths are valid NUL-terminated C strings that outlive the call; the
    // kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
