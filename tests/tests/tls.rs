//! End-to-end: a cluster whose every link is mutual TLS (issue 6, the mTLS part), and agent
//! identity: certificates from another CA, the wrong role, plaintext, garbage, an agent
//! posing as another node.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rctl_api::pb::agent_client::AgentClient;
use rctl_api::pb::StopTaskRequest;
use rctl_api::tls::{Tls, TlsFiles};
use rctl_tests::cluster::{http_get, Cluster};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `rctl ARGS` with the given environment on top of a clean one (no cluster defaults).
fn rctl_with(c: &Cluster, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(c.bin().join("rctl"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("RCTL_INSECURE")
        .env_remove("RCTL_TLS_DIR")
        .env_remove("RCTL_TLS_NAME")
        .env_remove("RCTL_ADDR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run rctl")
}

/// A refused command: the exit code, and one `error:` line on stderr (no panic, no trace).
fn assert_refused(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.starts_with("error: "), "one error line: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one error line: {err}");
    assert!(err.contains(needle), "{needle:?} in {err}");
}

/// A server refusing to start after logging: its last stderr line is the one error.
fn assert_exit_last_line(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "error line last: {err}");
    assert!(last.contains(needle), "{needle:?} in {last}");
}

fn running_on(c: &Cluster, node: &str) -> Vec<String> {
    c.ps(&["--node", node])
        .iter()
        .filter(|t| t["state"] == "running")
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

fn send_garbage(addr: SocketAddr, bytes: &[u8]) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = s.write_all(bytes);
}

/// Calls StopTask on node `node`'s agent presenting certificate `name` from `dir`, checking
/// that the agent's certificate is for `node`.
fn agent_stop_task(
    node_ip: &str,
    node: &str,
    dir: &Path,
    name: &str,
    task: &str,
) -> Result<(), tonic::Status> {
    let tls = Tls::load(&TlsFiles::in_dir(dir, name)).expect("load test certificate");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ep = tonic::transport::Endpoint::from_shared(format!("https://{node_ip}:7700"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .tls_config(tls.client_config(Some(node)))
            .unwrap();
        let ch = ep
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
        AgentClient::new(ch)
            .stop_task(StopTaskRequest {
                task_id: task.to_string(),
                service: "web".into(),
                timeout_ms: 0,
                remove: true,
                remove_volumes: false,
            })
            .await
            .map(drop)
    })
}

#[test]
fn a_tls_cluster_serves_end_to_end_and_refuses_strangers() {
    let c = Cluster::start_tls(2);
    let lb: SocketAddr = format!("127.0.0.1:{}", c.service_port(0)).parse().unwrap();

    // The whole path over mutual TLS: CLI → scheduler → agents, everyone → etcd.
    let file = c.service_file("web.toml", &c.web_service(2, "v1"));
    c.apply_and_wait(&file);
    let tasks = c.ps(&[]);
    assert_eq!(
        tasks.iter().filter(|t| t["state"] == "running").count(),
        2,
        "{tasks:#?}"
    );
    c.eventually(WAIT, "the service to answer through rctl-lb", || {
        http_get(lb, "/")
            .ok()
            .filter(|r| r.status == 200 && r.body.starts_with("version=v1 "))
    });
    let env = c.rctl_ok(&["nodes", "-o", "json"]);
    let nodes: Vec<Value> = serde_json::from_str(&env).unwrap();
    assert_eq!(nodes.len(), 2, "{nodes:#?}");

    // `cluster env` tells the CLI what it needs.
    let out = Command::new(rctl_tests::cluster::repo_root().join("deploy/local/cluster"))
        .args(["env", "--name", &c.name, "--net", &c.net.to_string()])
        .args(["--port-base", &c.port_base.to_string()])
        .arg("--state")
        .arg(&c.state)
        .output()
        .unwrap();
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(
        env.contains(&format!("export RCTL_ADDR={}", c.addr())) && c.addr().starts_with("https://"),
        "{env}"
    );
    assert!(
        env.contains(&format!("export RCTL_TLS_DIR={}", c.tls_dir().display())),
        "{env}"
    );

    let cluster_dir = c.tls_dir();
    let cluster_dir_s = cluster_dir.to_str().unwrap();
    let addr = c.addr();

    // A client certificate from another CA (trusting the real CA, so only the scheduler's
    // check can refuse it).
    let other = tempfile::tempdir().unwrap();
    let other_dir = other.path().join("other");
    let stranger = other.path().join("stranger");
    let o = other_dir.to_str().unwrap();
    for args in [
        vec!["cluster", "ca", "init", "--dir", o],
        vec![
            "cluster", "cert", "issue", "--dir", o, "--role", "client", "admin",
        ],
        vec![
            "cluster",
            "cert",
            "issue",
            "--dir",
            o,
            "--role",
            "scheduler",
            "h1",
        ],
    ] {
        let out = rctl_with(&c, &[], &args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    std::fs::create_dir_all(&stranger).unwrap();
    std::fs::copy(cluster_dir.join("ca.crt"), stranger.join("ca.crt")).unwrap();
    for f in ["admin.crt", "admin.key", "h1.crt", "h1.key"] {
        std::fs::copy(other_dir.join(f), stranger.join(f)).unwrap();
    }
    let out = rctl_with(
        &c,
        &[
            ("RCTL_ADDR", &addr),
            ("RCTL_TLS_DIR", stranger.to_str().unwrap()),
            ("RCTL_TLS_NAME", "admin"),
        ],
        &["ps"],
    );
    // The scheduler's alert (UnknownCA) may arrive, or only the closed connection.
    assert_refused(&out, 1, "cannot reach the scheduler");

    // The cluster's own certificate with a role the scheduler API does not admit.
    let out = rctl_with(
        &c,
        &[
            ("RCTL_ADDR", &addr),
            ("RCTL_TLS_DIR", cluster_dir_s),
            ("RCTL_TLS_NAME", "h1"),
        ],
        &["ps"],
    );
    assert_refused(&out, 1, "h1 (agent) may not call the scheduler API");

    // Plaintext against the TLS port fails cleanly; plaintext without --insecure is refused
    // before anything is sent.
    let plain = format!("http://127.0.0.1:{}", c.port_base);
    let out = rctl_with(
        &c,
        &[("RCTL_ADDR", &plain), ("RCTL_INSECURE", "1")],
        &["ps"],
    );
    assert_refused(&out, 1, "cannot reach the scheduler");
    let out = rctl_with(&c, &[("RCTL_ADDR", &plain)], &["ps"]);
    assert_refused(&out, 2, "--insecure");

    // The agent API: a foreign certificate, and a cluster certificate of the wrong role,
    // are both refused, and the task they tried to stop keeps running.
    let node_ip = format!("198.18.{}.11", c.net);
    let victim = running_on(&c, "h1");
    assert!(!victim.is_empty(), "a task runs on h1");
    let foreign = agent_stop_task(&node_ip, "h1", &stranger, "h1", &victim[0])
        .expect_err("a scheduler certificate from another CA is refused by the agent");
    assert_ne!(foreign.code(), tonic::Code::Ok);
    let wrong_role = agent_stop_task(&node_ip, "h1", &cluster_dir, "client", &victim[0])
        .expect_err("a client certificate may not drive an agent");
    assert_eq!(
        wrong_role.code(),
        tonic::Code::PermissionDenied,
        "{wrong_role:?}"
    );
    assert!(
        wrong_role.message().contains("client (client)"),
        "{wrong_role:?}"
    );
    // A host holding h2's certificate cannot pose as h1: the client checks the name.
    let h2_ip = format!("198.18.{}.12", c.net);
    let posing = agent_stop_task(&h2_ip, "h1", &cluster_dir, "scheduler", &victim[0])
        .expect_err("h2's agent does not pass for h1");
    assert!(
        format!("{posing:?}").contains("NotValidForName"),
        "{posing:?}"
    );

    // Garbage on every TLS gRPC port and on etcd: nobody crashes.
    let sched: SocketAddr = format!("127.0.0.1:{}", c.port_base).parse().unwrap();
    let agent: SocketAddr = format!("{node_ip}:7700").parse().unwrap();
    let etcd: SocketAddr = format!("198.18.{}.1:{}", c.net, c.port_base + 1)
        .parse()
        .unwrap();
    for target in [sched, agent, etcd] {
        send_garbage(target, b"\x16\x03\x01\x00\x05hello");
        send_garbage(target, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04");
        send_garbage(target, &[0xff; 4096]);
    }
    std::thread::sleep(Duration::from_secs(1));
    c.eventually(
        Duration::from_secs(30),
        "the cluster to keep working",
        || (running_on(&c, "h1") == victim).then_some(()),
    );
    c.rctl_ok(&["scale", "web=3", "--wait", "--timeout", "60s"]);
    assert_eq!(
        c.ps(&[]).iter().filter(|t| t["state"] == "running").count(),
        3
    );
    c.down_leaving_nothing();
}

/// Starts `rctl-agent` in the root namespace with `args` and waits for it to exit (30 s at
/// most, then it is killed by pid and the test fails).
fn run_rogue_agent(c: &Cluster, args: &[&str]) -> Output {
    let child = Command::new(c.bin().join("rctl-agent"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rctl-agent");
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiter = std::thread::spawn(move || child.wait_with_output().expect("wait"));
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let out = waiter.join().unwrap();
            panic!(
                "the rogue agent kept running: {}\n{}",
                stderr(&out),
                c.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    waiter.join().unwrap()
}

#[test]
fn an_agent_cannot_take_another_nodes_name() {
    let c = Cluster::start_tls(2);
    let file = c.service_file("web.toml", &c.web_service(2, "v1"));
    c.apply_and_wait(&file);
    let on_h2 = running_on(&c, "h2");
    assert!(!on_h2.is_empty(), "a task runs on h2");

    let dir = c.tls_dir();
    let root = tempfile::tempdir().unwrap();
    let etcd = c.etcd_url();
    let bridge = format!("{}-rg", c.name);
    let cert = |n: &str| dir.join(format!("{n}.crt")).to_str().unwrap().to_string();
    let key = |n: &str| dir.join(format!("{n}.key")).to_str().unwrap().to_string();
    let ca = dir.join("ca.crt").to_str().unwrap().to_string();
    let base = |node: &str| -> Vec<String> {
        [
            "--etcd",
            &etcd,
            "--root",
            root.path().to_str().unwrap(),
            "--node-name",
            node,
            "--advertise-ip",
            "127.0.0.1",
            "--listen",
            "127.0.0.1:0",
            "--subnet",
            "198.19.250.0/24",
            "--bridge",
            &bridge,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |node: &str, extra: &[String]| {
        let mut args = base(node);
        args.extend_from_slice(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_rogue_agent(&c, &args)
    };

    // h1's certificate with --node-name h2: refused before anything else happens.
    let out = run(
        "h2",
        &[
            "--tls-ca".into(),
            ca.clone(),
            "--tls-cert".into(),
            cert("h1"),
            "--tls-key".into(),
            key("h1"),
        ],
    );
    assert_refused(
        &out,
        2,
        r#"certificate is for node "h1" but --node-name is "h2""#,
    );

    // Neither TLS files nor --insecure: a usage error saying what to pass.
    let out = run("h2", &[]);
    assert_refused(&out, 2, "--insecure");

    // h2's own certificate on another host (another root, so another host id) while h2's
    // agent is alive: the registration is refused and the real node keeps its tasks.
    let out = run(
        "h2",
        &[
            "--tls-ca".into(),
            ca.clone(),
            "--tls-cert".into(),
            cert("h2"),
            "--tls-key".into(),
            key("h2"),
        ],
    );
    assert_exit_last_line(
        &out,
        1,
        r#"node "h2" is already registered by another live agent"#,
    );
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&bridge),
        "a refused agent touches no network"
    );
    // Outlive a lease period: had the rogue replaced h2's record, h2 would lose its tasks.
    std::thread::sleep(Duration::from_secs(3));
    let nodes: Vec<Value> = serde_json::from_str(&c.rctl_ok(&["nodes", "-o", "json"])).unwrap();
    let h2 = nodes.iter().find(|n| n["name"] == "h2").expect("h2 listed");
    assert_eq!(h2["state"], "ready", "{h2:#?}");
    assert_eq!(running_on(&c, "h2"), on_h2, "h2 keeps its tasks");

    // The real h2 agent SIGKILLed and started again on the same disk takes its node back
    // from its own still-live record (same host id) instead of being refused.
    let old = c.agent_pid("h2");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill h2's agent");
    c.cluster(&["start-agent", "h2"]);
    let new = c.agent_pid("h2");
    assert_ne!(new, old);
    let log = c.state.join("logs/agent-h2.log");
    c.eventually(
        Duration::from_secs(30),
        "h2's new agent to take its node record over",
        || {
            std::fs::read_to_string(&log)
                .ok()?
                .contains("took over this host's node record")
                .then_some(())
        },
    );
    // Outlive the killed agent's lease (10 s): the record now lives under the new one.
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        Path::new(&format!("/proc/{new}")).exists(),
        "the restarted agent runs\n{}",
        c.logs()
    );
    let nodes: Vec<Value> = serde_json::from_str(&c.rctl_ok(&["nodes", "-o", "json"])).unwrap();
    let h2 = nodes.iter().find(|n| n["name"] == "h2").expect("h2 listed");
    assert_eq!(h2["state"], "ready", "{h2:#?}");
    assert_eq!(running_on(&c, "h2"), on_h2, "h2 keeps its tasks");
    c.down_leaving_nothing();
}
