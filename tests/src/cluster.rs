//! The real-cluster harness: one `deploy/local/cluster` per test, with a unique name, subnet
//! slice and port range, so tests run in parallel; torn down on drop, even when the test fails.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Slots 1..=MAX_SLOT: slot N owns 198.18.N.0/24 and ports 30000+20N .. 30000+20N+19.
const MAX_SLOT: u8 = 90;
const LOCK_DIR: &str = "/run/rctl-tests";

/// An exclusive claim on one slot, held (flock) for the life of the cluster.
struct Slot {
    n: u8,
    _lock: nix::fcntl::Flock<File>,
}

impl Slot {
    fn claim() -> Slot {
        std::fs::create_dir_all(LOCK_DIR).expect("create lock dir");
        // Start at a pid-dependent slot so parallel test processes rarely contend.
        let start = (std::process::id() % MAX_SLOT as u32) as u8;
        for i in 0..MAX_SLOT {
            let n = (start + i) % MAX_SLOT + 1;
            let f = File::create(format!("{LOCK_DIR}/slot-{n}.lock")).expect("create slot lock");
            if let Ok(lock) =
                nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
            {
                // Something outside the harness (a benchmark, a dev cluster) may hold ports
                // of this slot's range: skip it rather than fail at `cluster up`.
                if slot_ports(n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
                    return Slot { n, _lock: lock };
                }
            }
        }
        panic!("no free test slot in {LOCK_DIR}");
    }
}

/// Slot `n`'s loopback ports.
fn slot_ports(n: u8) -> std::ops::Range<u16> {
    let base = 30000 + 20 * n as u16;
    base..base + 20
}

/// The repository root (this crate lives in `tests/`). Cargo and nextest set
/// `CARGO_MANIFEST_DIR` when they run a test; it is preferred over the compile-time value
/// because the shared target dir may hold a test binary built from another clone.
pub fn repo_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().expect("repo root").to_path_buf()
}

/// Where cargo put the binaries: next to the test executable's `deps/` dir.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RCTL_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A running local cluster owned by one test.
pub struct Cluster {
    pub name: String,
    pub net: u8,
    pub hosts: u32,
    /// Scheduler replicas; replica 1 serves on `port_base` (docs/local-cluster.md).
    pub schedulers: u32,
    pub port_base: u16,
    pub state: PathBuf,
    /// Started with `up --tls`: every link is mutual TLS, certificates in `STATE/tls`.
    pub tls: bool,
    bin: PathBuf,
    /// Set once `down` has run, so drop does not run it again.
    torn_down: bool,
    /// More registries the agents reach over plain HTTP (a test's own, e.g. with auth).
    insecure_registries: Vec<String>,
    /// Every agent's `--userns-remap` (START:COUNT), if any.
    userns_remap: Option<String>,
    /// Every agent's `--net-mode` (`host-gw`, the default, or `vxlan`).
    pub net_mode: String,
    /// Every agent's `--disk-reserve` (SIZE), if not the default.
    disk_reserve: Option<String>,
    _slot: Slot,
}

impl Cluster {
    /// Starts a cluster with `hosts` hosts; panics (after tearing down) with the logs if it
    /// does not come up.
    pub fn start(hosts: u32) -> Cluster {
        Self::launch(hosts, 1, false)
    }

    /// Starts a cluster with `hosts` hosts and `schedulers` scheduler replicas.
    pub fn start_with(hosts: u32, schedulers: u32) -> Cluster {
        Self::launch(hosts, schedulers, false)
    }

    /// Starts a cluster whose every link (CLI, scheduler, agents, lb, etcd) is mutual TLS.
    pub fn start_tls(hosts: u32) -> Cluster {
        Self::launch(hosts, 1, true)
    }

    /// Starts a one-scheduler cluster whose agents also reach [`Cluster::private_registry`]
    /// over plain HTTP, for a test that runs a registry of its own there.
    pub fn start_with_private_registry(hosts: u32) -> Cluster {
        Self::launch_with(hosts, 1, false, true, None)
    }

    /// Starts a one-scheduler cluster whose agents run every container in a user
    /// namespace (`--userns-remap remap`, e.g. `100000:65536`).
    pub fn start_userns(hosts: u32, remap: &str) -> Cluster {
        Self::launch_with(hosts, 1, false, false, Some(remap.to_string()))
    }

    /// Starts a one-scheduler cluster whose agents reach each other's containers in
    /// network mode `mode` (`host-gw` or `vxlan`: `up --net-mode`).
    pub fn start_net_mode(hosts: u32, mode: &str) -> Cluster {
        let mut c = Self::prepare(hosts, 1, false, false, None);
        c.net_mode = mode.to_string();
        c.up()
    }

    /// Starts a one-scheduler cluster whose agents keep `reserve` free on their disk
    /// (`--disk-reserve`, e.g. `1000TiB` to refuse every new container).
    pub fn start_with_disk_reserve(hosts: u32, reserve: &str) -> Cluster {
        let mut c = Self::prepare(hosts, 1, false, false, None);
        c.disk_reserve = Some(reserve.to_string());
        c.up()
    }

    fn launch(hosts: u32, schedulers: u32, tls: bool) -> Cluster {
        Self::launch_with(hosts, schedulers, tls, false, None)
    }

    fn launch_with(
        hosts: u32,
        schedulers: u32,
        tls: bool,
        private: bool,
        userns_remap: Option<String>,
    ) -> Cluster {
        Self::prepare(hosts, schedulers, tls, private, userns_remap).up()
    }

    /// The cluster `launch_with` starts, not started yet.
    fn prepare(
        hosts: u32,
        schedulers: u32,
        tls: bool,
        private: bool,
        userns_remap: Option<String>,
    ) -> Cluster {
        let slot = Slot::claim();
        let n = slot.n;
        let insecure_registries = if private {
            vec![format!("198.18.{n}.1:{}", slot_ports(n).start + 19)]
        } else {
            Vec::new()
        };
        Cluster {
            name: format!("rt{n}"),
            net: n,
            hosts,
            schedulers,
            port_base: slot_ports(n).start,
            state: PathBuf::from(format!("/var/tmp/rctl-tests/rt{n}")),
            tls,
            bin: bin_dir(),
            torn_down: false,
            insecure_registries,
            userns_remap,
            net_mode: "host-gw".to_string(),
            disk_reserve: None,
            _slot: slot,
        }
    }

    /// Brings the cluster up; panics (after tearing down) with the logs if it does not come up.
    fn up(self) -> Cluster {
        let c = self;
        let (hosts, schedulers, tls) = (c.hosts, c.schedulers, c.tls);
        // A previous run killed hard may have left this slot's resources behind.
        let _ = c.script(&["down"]);
        let (hosts_arg, schedulers_arg) = (hosts.to_string(), schedulers.to_string());
        let mut up = vec![
            "up",
            "--hosts",
            hosts_arg.as_str(),
            "--schedulers",
            schedulers_arg.as_str(),
        ];
        if tls {
            up.push("--tls");
        }
        let out = c.script(&up);
        if !out.status.success() {
            panic!(
                "cluster up failed:\n{}\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                c.logs()
            );
        }
        c
    }

    fn script(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(repo_root().join("deploy/local/cluster"));
        cmd.args(args)
            .arg("--name")
            .arg(&self.name)
            .arg("--net")
            .arg(self.net.to_string())
            .arg("--port-base")
            .arg(self.port_base.to_string())
            .arg("--state")
            .arg(&self.state)
            .arg("--bin")
            .arg(&self.bin)
            .env(
                "RCTL_CLUSTER_INSECURE_REGISTRIES",
                self.insecure_registries.join(","),
            )
            .env(
                "RCTL_CLUSTER_USERNS_REMAP",
                self.userns_remap.as_deref().unwrap_or_default(),
            )
            .env("RCTL_CLUSTER_NET_MODE", &self.net_mode)
            .env(
                "RCTL_CLUSTER_DISK_RESERVE",
                self.disk_reserve.as_deref().unwrap_or_default(),
            );
        cmd.output().expect("run deploy/local/cluster")
    }

    /// Runs a cluster script subcommand that must succeed (e.g. `kill-host h2`).
    pub fn cluster(&self, args: &[&str]) {
        let out = self.script(args);
        assert!(
            out.status.success(),
            "cluster {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every scheduler replica's API address, as `RCTL_ADDR` takes them.
    pub fn addr(&self) -> String {
        (1..=self.schedulers)
            .map(|j| self.scheduler_addr(j))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Scheduler replica `j`'s API address.
    pub fn scheduler_addr(&self, j: u32) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.scheduler_port(j))
    }

    /// Scheduler replica `j`'s API port (1-based; the cluster script's layout).
    pub fn scheduler_port(&self, j: u32) -> u16 {
        if j == 1 {
            self.port_base
        } else {
            self.port_base + 2 * j as u16 + 2
        }
    }

    fn scheduler_metrics(&self, j: u32) -> SocketAddr {
        let port = if j == 1 {
            self.port_base + 4
        } else {
            self.port_base + 2 * j as u16 + 3
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The pid of scheduler replica `j`, from the cluster's pid file.
    pub fn scheduler_pid(&self, j: u32) -> i32 {
        let name = if j == 1 {
            "scheduler".to_string()
        } else {
            format!("scheduler-{j}")
        };
        self.pid_file(&name)
    }

    /// Whether replica `j` says (on its /metrics) that it leads; `None` if it does not answer.
    pub fn scheduler_leads(&self, j: u32) -> Option<bool> {
        let r = http_get(self.scheduler_metrics(j), "/metrics").ok()?;
        r.body
            .lines()
            .find_map(|l| l.strip_prefix("rctl_scheduler_leader "))
            .map(|v| v.trim() == "1")
    }

    /// The replica that leads now, if exactly one says so.
    pub fn leader(&self) -> Option<u32> {
        let leaders: Vec<u32> = (1..=self.schedulers)
            .filter(|&j| self.scheduler_leads(j) == Some(true))
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Where a TLS cluster keeps its CA and certificates (`rctl cluster` layout).
    pub fn tls_dir(&self) -> PathBuf {
        self.state.join("tls")
    }

    /// The etcd client URL, as components take it.
    pub fn etcd_url(&self) -> String {
        format!(
            "{}://198.18.{}.1:{}",
            self.scheme(),
            self.net,
            self.port_base + 1
        )
    }

    /// Writes `value` (raw bytes) under `key` through etcd's JSON gateway, behind every
    /// component's back: for tests that plant state (a task the scheduler does not know,
    /// garbage). Plaintext clusters only.
    pub fn etcd_put(&self, key: &str, value: &[u8]) {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64(key.as_bytes()),
            b64(value)
        );
        let out = Command::new("curl")
            .args([
                "-sf",
                "-X",
                "POST",
                &format!("{}/v3/kv/put", self.etcd_url()),
                "-d",
                &body,
            ])
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "etcd put {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Where the binaries under test are.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The registry, as `host:port`, reachable from every host.
    pub fn registry(&self) -> String {
        format!("198.18.{}.1:{}", self.net, self.port_base + 3)
    }

    /// The service file of `web`: `replicas` test servers reporting `version`, behind rctl-lb
    /// on [`Cluster::service_port`]`(0)`.
    pub fn web_service(&self, replicas: u32, version: &str) -> String {
        format!(
            r#"name = "web"
image = "{reg}/rctl/testserver:{version}"
replicas = {replicas}

[port]
container = 8080
protocol = "http"
listen = "127.0.0.1:{port}"
"#,
            reg = self.registry(),
            port = self.service_port(0)
        )
    }

    /// Where a test started with [`Cluster::start_with_private_registry`] may run a registry
    /// of its own (on the hosts' side of the cluster network, the last service port: such a
    /// test must not use `service_port(9)`).
    pub fn private_registry(&self) -> String {
        format!("198.18.{}.1:{}", self.net, self.port_base + 19)
    }

    /// A loopback port of this test's range for services to listen on (i in 0..10).
    pub fn service_port(&self, i: u16) -> u16 {
        assert!(i < 10);
        self.port_base + 10 + i
    }

    /// Runs `args` inside host `host`'s network namespace; its stdout.
    pub fn in_host(&self, host: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("{}-{host}", self.name)])
            .args(args)
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pid of host `host`'s agent, from the cluster's pid file.
    pub fn agent_pid(&self, host: &str) -> i32 {
        self.pid_file(&format!("agent-{host}"))
    }

    /// SIGKILLs host `host`'s agent and waits until it is gone; returns its pid. Its
    /// containers (children of their shims) keep running.
    pub fn kill_agent(&self, host: &str) -> i32 {
        let pid = self.agent_pid(host);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill agent");
        self.eventually(
            Duration::from_secs(10),
            "the killed agent to be gone",
            || {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next());
                matches!(state, None | Some("Z") | Some("X")).then_some(())
            },
        );
        pid
    }

    /// Starts host `host`'s agent again (after [`Cluster::kill_agent`]) and waits until it
    /// registered its node; returns the new pid.
    pub fn restart_agent(&self, host: &str) -> i32 {
        self.cluster(&["start-agent", host]);
        self.agent_pid(host)
    }

    /// Host `host`'s container directory for task `task_id` (`STATE/HOST/containers/ID`).
    pub fn container_dir(&self, host: &str, task_id: &str) -> PathBuf {
        self.state.join(host).join("containers").join(task_id)
    }

    /// The pid in the cluster's pid file `NAME.pid` (e.g. `etcd`, `scheduler-2`).
    pub fn pid_file(&self, name: &str) -> i32 {
        let p = self.state.join("pids").join(format!("{name}.pid"));
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
            .trim()
            .parse()
            .expect("pid")
    }

    /// Runs `rctl ARGS` against this cluster (every scheduler replica in `RCTL_ADDR`).
    pub fn rctl(&self, args: &[&str]) -> Output {
        self.rctl_via(&self.addr(), args)
    }

    /// Runs `rctl ARGS` with `RCTL_ADDR=addr`, e.g. one chosen replica.
    pub fn rctl_via(&self, addr: &str, args: &[&str]) -> Output {
        self.rctl_env(addr, args, &[])
    }

    /// Runs `rctl ARGS` with `RCTL_ADDR=addr` and more environment (e.g. `RCTL_CONFIG`).
    pub fn rctl_env(&self, addr: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(self.bin.join("rctl"));
        cmd.envs(env.iter().copied());
        cmd.args(args)
            .env("RCTL_ADDR", addr)
            .env_remove("RUST_LOG")
            .env_remove("RCTL_TLS_NAME");
        if self.tls {
            cmd.env("RCTL_TLS_DIR", self.tls_dir())
                .env_remove("RCTL_INSECURE");
        } else {
            cmd.env("RCTL_INSECURE", "1");
        }
        cmd.output().expect("run rctl")
    }

    /// Runs `rctl ARGS`, asserts exit 0, returns stdout.
    pub fn rctl_ok(&self, args: &[&str]) -> String {
        let out = self.rctl(args);
        assert!(
            out.status.success(),
            "rctl {args:?} exited {:?}: {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `rctl apply -f FILE --wait` (90 s at most), asserting exit 0; returns stdout.
    pub fn apply_and_wait(&self, file: &Path) -> String {
        let file = file.to_str().expect("utf-8 path");
        self.rctl_ok(&["apply", "-f", file, "--wait", "--timeout", "90s"])
    }

    /// `rctl ps -o json [extra]` parsed.
    pub fn ps(&self, extra: &[&str]) -> Vec<serde_json::Value> {
        let mut args = vec!["ps", "-o", "json"];
        args.extend_from_slice(extra);
        serde_json::from_str(&self.rctl_ok(&args)).expect("ps -o json is JSON")
    }

    /// Writes a service file into the cluster's state dir and returns its path.
    pub fn service_file(&self, file: &str, toml: &str) -> PathBuf {
        let dir = self.state.join("services");
        std::fs::create_dir_all(&dir).expect("mkdir services");
        let p = dir.join(file);
        std::fs::write(&p, toml).expect("write service file");
        p
    }

    /// The tail of every log of the cluster, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let dir = self.state.join("logs");
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                out.push_str(&format!("--- {} ---\n", e.path().display()));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Polls `f` every 200 ms until it returns `Some`, or panics with `what` and the logs.
    pub fn eventually<T>(&self, timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
        eventually(timeout, what, f, || self.logs())
    }
}

/// Polls `f` every 200 ms until it returns `Some`, or panics with `what` and `context()`
/// (the logs of whatever the test started).
pub fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Cluster {
    /// Tears the cluster down and asserts it left no namespace, link, mount, cgroup or
    /// state behind.
    pub fn down_leaving_nothing(mut self) {
        let out = self.script(&["down"]);
        self.torn_down = true;
        assert!(
            out.status.success(),
            "cluster down failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let run = |cmd: &str, args: &[&str]| {
            let out = Command::new(cmd).args(args).output().expect("run");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let prefix = format!("{}-", self.name);
        let netns = run("ip", &["netns", "list"]);
        assert!(
            !netns.lines().any(|l| l.starts_with(&prefix)),
            "namespaces left: {netns}"
        );
        let links = run("ip", &["-o", "link"]);
        assert!(!links.contains(&prefix), "links left: {links}");
        let mounts = std::fs::read_to_string("/proc/mounts").expect("read mounts");
        assert!(
            !mounts.contains(self.state.to_str().expect("utf-8")),
            "mounts left"
        );
        assert!(!self.state.exists(), "state dir left");
        let cgroups = run(
            "sh",
            &[
                "-c",
                &format!("ls -d /sys/fs/cgroup/*/rctl-local/{prefix}* 2>/dev/null"),
            ],
        );
        assert!(cgroups.trim().is_empty(), "cgroups left: {cgroups}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        let out = self.script(&["down"]);
        if !out.status.success() {
            eprintln!(
                "cluster down failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A minimal HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One GET over a fresh connection (`Connection: close`), with a 5 s timeout.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    // One write: a server may answer (and close) as soon as it has the request line.
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&raw)))
    })
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_response() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nX-Served-By: abc\r\nContent-Length: 5\r\n\r\nhello",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-served-by"), Some("abc"));
        assert_eq!(r.body, "hello");
    }
}
