//! The fixture test server (`rctl-testserver`, built by `make testserver`) run as a plain
//! process on a loopback-reachable port, for component tests of the LB: a real server in
//! its own process, so tests can kill it, without a cluster. Killed by pid on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::etcd::free_port;

/// Where `make testserver` puts the static binary (`RCTL_TESTSERVER` overrides it).
pub fn testserver_bin() -> PathBuf {
    std::env::var_os("RCTL_TESTSERVER").map_or_else(
        || PathBuf::from("/var/cache/rctl/static/x86_64-unknown-linux-gnu/release/rctl-testserver"),
        PathBuf::from,
    )
}

pub struct TestServer {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: SocketAddr,
}

impl TestServer {
    /// Starts a server answering `version=VERSION …` on `/`, with `args` added (e.g.
    /// `--latency-ms 50`), and waits until it accepts connections.
    pub fn start(version: &str, args: &[&str]) -> Self {
        let port = free_port();
        Self::start_on(port, version, args)
    }

    /// Like [`TestServer::start`] on a given port (to bring a killed server back).
    pub fn start_on(port: u16, version: &str, args: &[&str]) -> Self {
        let bin = testserver_bin();
        let child = Command::new(&bin)
            .args(["--port", &port.to_string(), "--version", version])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} (make testserver builds it): {e}", bin.display()));
        let server = Self {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(server.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "testserver on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the server (a crash: in-flight requests are cut) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}
