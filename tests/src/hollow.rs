//! A scale-test cluster on loopback: a [`TestEtcd`], one real `rctl-scheduler` and one
//! `rctl-agent hollow` process simulating many nodes. No namespaces, no containers, no root;
//! every process is killed by pid on drop, even when the test fails.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::cluster::bin_dir;
use crate::etcd::{free_port, TestEtcd};

/// A child process killed (by pid) and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct HollowCluster {
    /// Dropped after the processes that use it (fields drop in order).
    scheduler: Proc,
    hollow: Proc,
    /// The hollow nodes' `--root`.
    _scratch: tempfile::TempDir,
    pub etcd: TestEtcd,
    /// Scheduler API, `http://127.0.0.1:PORT`.
    pub addr: String,
    /// Node `i` (from 1) serves its Agent API on `127.0.0.1:port_base + i - 1`.
    pub port_base: u16,
    pub nodes: usize,
    logs: tempfile::TempDir,
}

/// The first of `n` (at most 100) consecutive loopback ports that are free now, in
/// 24000..30000: below the kernel's ephemeral range, where outgoing connections would
/// take them, and below the local clusters' 30000+.
pub fn free_port_range(n: usize) -> u16 {
    assert!(n <= 100, "at most 100 ports");
    let first = (std::process::id() % 60) as usize;
    for k in 0..60 {
        let base = 24_000 + ((first + k) % 60) * 100;
        let held: Vec<_> = (0..n)
            .map_while(|i| TcpListener::bind(("127.0.0.1", (base + i) as u16)).ok())
            .collect();
        if held.len() == n {
            return base as u16;
        }
    }
    panic!("no {n} consecutive free loopback ports");
}

impl HollowCluster {
    /// Starts etcd, `nodes` hollow nodes and a scheduler, and waits until the scheduler
    /// lists every node.
    pub fn start(nodes: usize) -> HollowCluster {
        let etcd = TestEtcd::start();
        let logs = tempfile::tempdir().expect("tempdir");
        // The hollow nodes' container directories: in memory when there is a tmpfs, and
        // removed on drop even when the process is killed.
        let scratch = match std::path::Path::new("/dev/shm") {
            shm if shm.is_dir() => tempfile::tempdir_in(shm),
            _ => tempfile::tempdir(),
        }
        .expect("tempdir");
        let bin = bin_dir();
        let log =
            |name: &str| std::fs::File::create(logs.path().join(name)).expect("create log file");
        let port_base = free_port_range(nodes);
        let hollow = Command::new(bin.join("rctl-agent"))
            .args(["hollow", "--etcd", &etcd.url])
            .args(["--nodes", &nodes.to_string()])
            .args(["--port-base", &port_base.to_string()])
            .args(["--cpus", "4", "--memory", "8589934592"])
            .arg("--root")
            .arg(scratch.path())
            .stdout(Stdio::null())
            .stderr(log("hollow.log"))
            .spawn()
            .expect("spawn rctl-agent hollow");
        let addr = format!("127.0.0.1:{}", free_port());
        let scheduler = Command::new(bin.join("rctl-scheduler"))
            .args(["--etcd", &etcd.url, "--listen", &addr, "--insecure"])
            .stdout(Stdio::null())
            .stderr(log("scheduler.log"))
            .spawn()
            .expect("spawn rctl-scheduler");
        let c = HollowCluster {
            scheduler: Proc(scheduler),
            hollow: Proc(hollow),
            _scratch: scratch,
            etcd,
            addr: format!("http://{addr}"),
            port_base,
            nodes,
            logs,
        };
        c.eventually(Duration::from_secs(20), "every hollow node listed", || {
            let out = c.rctl(&["nodes", "-o", "json"]);
            let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
            (v.len() == nodes).then_some(())
        });
        c
    }

    /// Runs `rctl ARGS` against this cluster's scheduler.
    pub fn rctl(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("rctl"))
            .args(args)
            .env("RCTL_ADDR", &self.addr)
            .env("RCTL_INSECURE", "1")
            .env_remove("RUST_LOG")
            .output()
            .expect("run rctl")
    }

    /// Runs `rctl ARGS`, asserts exit 0, returns stdout.
    pub fn rctl_ok(&self, args: &[&str]) -> String {
        let out = self.rctl(args);
        assert!(
            out.status.success(),
            "rctl {args:?} exited {:?}: {}{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `rctl ps -o json [extra]`, parsed.
    pub fn ps(&self, extra: &[&str]) -> Vec<serde_json::Value> {
        let mut args = vec!["ps", "-o", "json"];
        args.extend_from_slice(extra);
        serde_json::from_str(&self.rctl_ok(&args)).expect("ps -o json is JSON")
    }

    /// Writes a service file into the log dir and returns its path.
    pub fn service_file(&self, name: &str, toml: &str) -> PathBuf {
        let p = self.logs.path().join(name);
        std::fs::write(&p, toml).expect("write service file");
        p
    }

    /// Whether the scheduler and the hollow nodes are still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.scheduler.0.try_wait(), Ok(None))
            && matches!(self.hollow.0.try_wait(), Ok(None))
    }

    /// The last lines of every log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["scheduler.log", "hollow.log"] {
            let text = std::fs::read_to_string(self.logs.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            out.push_str(&format!("--- {name} (last {} lines)\n", tail.len()));
            for l in tail {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Polls `f` every 200 ms until it returns `Some`, or panics with `what` and the logs.
    pub fn eventually<T>(&self, timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
        crate::cluster::eventually(timeout, what, f, || self.logs())
    }
}
