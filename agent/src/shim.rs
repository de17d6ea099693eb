//! The per-container shim: `rctl-agent __shim DIR`, started by the agent already inside the
//! container's new namespaces. It waits for the agent's go (networking ready), forks the
//! container's PID 1, records its pid, waits for it and records its exit status. Because the
//! shim, not the agent, is the container's parent, the exit code survives an agent crash.
//!
//! The shim is a fresh single-threaded process: it never starts a tokio runtime, which is
//! what makes `fork` here sound.

use std::io::Read;
use std::path::Path;

use nix::sys::wait::{waitpid, WaitStatus};

use crate::runtime::rootfs;
use crate::runtime::state::{proc_stat, write_atomic_sync, ContainerDir, PidRecord};
use crate::sys::{self, Forked};

/// Runs the shim for the container in `dir`; returns the shim's own exit code.
pub fn main(dir: &Path) -> i32 {
    let dir = ContainerDir(dir.to_path_buf());
    let cfg = match dir.read_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rctl-shim: read {}: {e}", dir.config().display());
            return 1;
        }
    };
    // One byte from the agent means go; EOF means the agent gave up on this container.
    let mut go = [0u8; 1];
    if !matches!(std::io::stdin().read(&mut go), Ok(1)) {
        eprintln!("rctl-shim: agent did not release the container; not starting it");
        return 1;
    }
    match std::fs::File::open("/dev/null").map(nix::unistd::dup2_stdin) {
        Ok(Ok(())) => {}
        _ => {
            eprintln!("rctl-shim: cannot point stdin at /dev/null");
            return 1;
        }
    }
    let child = match sys::fork() {
        Ok(Forked::Child) => {
            let e = rootfs::enter_and_exec(&cfg, &dir);
            eprintln!("rctl-shim: start container: {e}");
            std::process::exit(127);
        }
        Ok(Forked::Parent { child }) => child,
        Err(e) => {
            eprintln!("rctl-shim: fork: {e}");
            return 1;
        }
    };
    let record = PidRecord {
        pid: child.as_raw(),
        start_time: proc_stat(child.as_raw()).map(|s| s.1).unwrap_or(0),
    };
    if let Err(e) = write_atomic_sync(&dir.pid(), record.render().as_bytes()) {
        eprintln!("rctl-shim: write pid file: {e}");
    }
    let code = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("rctl-shim: wait for container: {e}");
                break 255;
            }
        }
    };
    if let Err(e) = write_atomic_sync(&dir.exit(), format!("{code}\n").as_bytes()) {
        eprintln!("rctl-shim: write exit file: {e}");
        return 1;
    }
    0
}
