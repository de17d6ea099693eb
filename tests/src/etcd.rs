//! A throwaway single-member etcd on loopback ports for component tests (Debian's
//! `etcd-server`, installed by `make deps`): its own data dir, killed by pid on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

pub struct TestEtcd {
    child: Child,
    dir: tempfile::TempDir,
    /// Client URL, `http://127.0.0.1:PORT`.
    pub url: String,
    peer: String,
}

impl TestEtcd {
    /// Starts etcd; panics if the binary is missing (a broken set-up, not a pass).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let child = spawn(dir.path(), &url, &peer);
        Self {
            child,
            dir,
            url,
            peer,
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        vec![self.url.clone()]
    }

    /// Kills etcd and starts it again on the same data and ports, like a crash and restart.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self.dir.path(), &self.url, &self.peer);
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, url: &str, peer: &str) -> Child {
    Command::new("etcd")
        .args(["--name", "test", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", url, "--advertise-client-urls", url])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .arg(format!("--initial-cluster=test={peer}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("no etcd binary on PATH (make deps installs etcd-server)")
}
