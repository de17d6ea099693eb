//! End-to-end: the walking skeleton on a real multi-host cluster (issue 3's acceptance).
//! Each test owns its cluster (namespaces, etcd, registry, scheduler, agents, rctl-lb).

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use rctl_tests::cluster::{http_get, Cluster};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

fn running(tasks: &[Value]) -> Vec<&Value> {
    tasks.iter().filter(|t| t["state"] == "running").collect()
}

/// Sends `n` GETs through rctl-lb; returns the X-Served-By of each, panicking on any failure
/// or on an answer from another version.
fn get_many(c: &Cluster, n: usize, version: &str) -> Vec<String> {
    let addr: SocketAddr = format!("127.0.0.1:{}", c.service_port(0)).parse().unwrap();
    (0..n)
        .map(|i| {
            let r = http_get(addr, "/")
                .unwrap_or_else(|e| panic!("request {i} failed: {e}\n{}", c.logs()));
            assert_eq!(r.status, 200, "request {i}: {r:?}");
            assert!(
                r.body.starts_with(&format!("version={version} host=")),
                "request {i}: {:?}",
                r.body
            );
            r.header("X-Served-By").expect("X-Served-By").to_string()
        })
        .collect()
}

/// Waits until rctl-lb answers 200 on the service (endpoints registered and routed).
fn wait_for_lb(c: &Cluster) {
    let addr: SocketAddr = format!("127.0.0.1:{}", c.service_port(0)).parse().unwrap();
    c.eventually(WAIT, "rctl-lb to serve web", || {
        http_get(addr, "/").ok().filter(|r| r.status == 200)
    });
}

#[test]
fn scale_across_two_hosts_through_the_lb() {
    let c = Cluster::start(2);
    let file = c.service_file("web.toml", &c.web_service(2, "v1"));
    c.apply_and_wait(&file);
    assert_eq!(running(&c.ps(&[])).len(), 2);

    c.rctl_ok(&["scale", "web=5", "--wait", "--timeout", "90s"]);
    let tasks = c.ps(&[]);
    let up = running(&tasks);
    assert_eq!(up.len(), 5, "{tasks:#?}");
    let nodes: BTreeSet<&str> = up.iter().map(|t| t["node"].as_str().unwrap()).collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["h1", "h2"]),
        "spread over both hosts"
    );
    for t in &up {
        assert_eq!(t["health"], "healthy");
        assert!(
            t["endpoint"]
                .as_str()
                .unwrap()
                .starts_with(&format!("198.18.{}.", c.net)),
            "{t}"
        );
    }
    let names: BTreeSet<String> = up
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 5, "task names are unique: {names:?}");

    // Every container answers as its short id; 200 requests reach all five.
    let hostnames: HashSet<String> = up
        .iter()
        .map(|t| t["id"].as_str().unwrap()[..12].to_string())
        .collect();
    wait_for_lb(&c);
    let served: HashSet<String> = get_many(&c, 200, "v1").into_iter().collect();
    assert_eq!(served, hostnames, "all five replicas served, and only they");

    c.rctl_ok(&["scale", "web=1", "--wait", "--timeout", "90s"]);
    let tasks = c.ps(&[]);
    let up = running(&tasks);
    assert_eq!(up.len(), 1, "{tasks:#?}");
    assert_eq!(
        tasks.len(),
        1,
        "only the remaining task is active: {tasks:#?}"
    );
    let last = up[0]["id"].as_str().unwrap()[..12].to_string();
    // Removed endpoints leave the LB; the survivor serves everything.
    let served: HashSet<String> =
        c.eventually(WAIT, "LB to route only to the remaining task", || {
            let s: HashSet<String> = get_many(&c, 20, "v1").into_iter().collect();
            (s == HashSet::from([last.clone()])).then_some(s)
        });
    assert_eq!(served.len(), 1);
    let served: HashSet<String> = get_many(&c, 200, "v1").into_iter().collect();
    assert_eq!(served, HashSet::from([last]));

    // Every component serves Prometheus metrics.
    for addr in [
        format!("127.0.0.1:{}", c.port_base + 4),
        format!("127.0.0.1:{}", c.port_base + 5),
        format!("198.18.{}.11:9100", c.net),
    ] {
        let r = http_get(addr.parse().unwrap(), "/metrics")
            .unwrap_or_else(|e| panic!("metrics endpoint {addr}: {e}\n{}", c.logs()));
        assert_eq!(r.status, 200, "{addr}");
        assert!(r.body.contains("# TYPE rctl_"), "{addr}: {}", r.body);
    }
    let lb = http_get(
        format!("127.0.0.1:{}", c.port_base + 5).parse().unwrap(),
        "/metrics",
    )
    .unwrap();
    assert!(lb.body.contains("service=\"web\""), "{}", lb.body);

    let ls: Vec<Value> =
        serde_json::from_str(&c.rctl_ok(&["service", "ls", "-o", "json"])).unwrap();
    assert_eq!(ls.len(), 1, "{ls:#?}");
    assert_eq!(
        (
            ls[0]["name"].as_str(),
            ls[0]["replicas"].as_u64(),
            ls[0]["running"].as_u64()
        ),
        (Some("web"), Some(1), Some(1))
    );

    // Removing the service stops its tasks and closes its listener on rctl-lb.
    c.rctl_ok(&["service", "rm", "web"]);
    assert_not_found(c.rctl(&["service", "rm", "web"]), "\"web\" not found");
    c.eventually(WAIT, "web's tasks to be gone", || {
        c.ps(&["-a"]).is_empty().then_some(())
    });
    let addr: SocketAddr = format!("127.0.0.1:{}", c.service_port(0)).parse().unwrap();
    c.eventually(WAIT, "rctl-lb to stop serving web", || {
        http_get(addr, "/").is_err().then_some(())
    });
}

#[test]
fn agent_sigkill_and_restart_keeps_the_service_at_scale() {
    let c = Cluster::start(2);
    let file = c.service_file("web.toml", &c.web_service(4, "v1"));
    c.apply_and_wait(&file);
    let before: BTreeSet<String> = c
        .ps(&[])
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(before.len(), 4);

    let pid = c.agent_pid("h1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill agent");
    // Containers are not children of the agent: traffic keeps flowing while it is gone.
    wait_for_lb(&c);
    get_many(&c, 50, "v1");

    c.cluster(&["start-agent", "h1"]);
    assert_ne!(c.agent_pid("h1"), pid, "a new agent runs");
    c.eventually(WAIT, "h1 to be ready again", || {
        let nodes: Vec<Value> = serde_json::from_str(&c.rctl_ok(&["nodes", "-o", "json"])).ok()?;
        nodes
            .iter()
            .any(|n| n["name"] == "h1" && n["state"] == "ready")
            .then_some(())
    });
    // Outlive the dead agent's lease (10 s): its keys must have moved to the new lease.
    std::thread::sleep(Duration::from_secs(12));
    let tasks = c.ps(&[]);
    let after: BTreeSet<String> = tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(after, before, "same tasks, no duplicates: {tasks:#?}");
    assert_eq!(running(&tasks).len(), 4, "{tasks:#?}");
    let served: HashSet<String> = get_many(&c, 100, "v1").into_iter().collect();
    assert_eq!(served.len(), 4, "every replica still serves, h1's included");
    c.rctl_ok(&["scale", "web=4", "--wait", "--timeout", "30s"]);
}

/// The web service with an HTTP health check on `/healthz`; `healthz_off` makes the test
/// server answer it with 404.
fn checked_web_service(c: &Cluster, healthz_off: bool) -> String {
    let env = if healthz_off {
        "env = { HEALTHZ = \"off\" }\n"
    } else {
        ""
    };
    format!(
        r#"name = "web"
image = "{reg}/rctl/testserver:v1"
replicas = 1
{env}
[port]
container = 8080
protocol = "http"
listen = "127.0.0.1:{port}"

[health]
http = "/healthz"
interval = "500ms"
"#,
        reg = c.registry(),
        port = c.service_port(0)
    )
}

#[test]
fn a_failing_http_health_check_keeps_the_task_out_of_the_lb() {
    let c = Cluster::start(1);
    let addr: SocketAddr = format!("127.0.0.1:{}", c.service_port(0)).parse().unwrap();
    let file = c.service_file("web.toml", &checked_web_service(&c, true));
    let path = file.to_str().unwrap();

    // The container runs and accepts connections, but /healthz answers 404: never ready.
    let timed_out = c.rctl(&["apply", "-f", path, "--wait", "--timeout", "8s"]);
    assert_eq!(timed_out.status.code(), Some(4), "{}", stderr(&timed_out));
    c.eventually(WAIT, "the task running and judged unhealthy", || {
        c.ps(&[])
            .into_iter()
            .find(|t| t["state"] == "running" && t["health"] == "unhealthy")
    });
    let r = c.eventually(WAIT, "rctl-lb to answer 503", || {
        http_get(addr, "/").ok().filter(|r| r.status == 503)
    });
    assert!(r.body.contains("no healthy endpoint"), "{r:?}");

    // The same service with a passing check rolls out and serves.
    c.service_file("web.toml", &checked_web_service(&c, false));
    c.rctl_ok(&["apply", "-f", path, "--wait", "--timeout", "60s"]);
    let tasks = c.ps(&[]);
    let up = running(&tasks);
    assert_eq!(up.len(), 1, "{tasks:#?}");
    assert_eq!(up[0]["health"], "healthy", "{tasks:#?}");
    wait_for_lb(&c);
    get_many(&c, 20, "v1");
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit 2 and one clear `error:` line containing `needle`.
fn assert_bad_input(o: std::process::Output, needle: &str) {
    assert_one_error_line(o, 2, needle);
}

/// Asserts exit 1, "not found" for any kind of target (docs/exit-codes.md), and one clear
/// `error:` line containing `needle`.
fn assert_not_found(o: std::process::Output, needle: &str) {
    assert_one_error_line(o, 1, needle);
}

fn assert_one_error_line(o: std::process::Output, code: i32, needle: &str) {
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "expected exit {code}, got {:?}: {err}",
        o.status.code()
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err:?}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{err:?} should mention {needle:?}"
    );
}

#[test]
fn bad_input_exits_2_changes_nothing_and_a_missing_image_fails_fast() {
    let c = Cluster::start(1);
    let file = c.service_file("web.toml", &c.web_service(1, "v1"));
    c.rctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    let inspect = || -> Value {
        serde_json::from_str(&c.rctl_ok(&["service", "inspect", "web", "-o", "json"])).unwrap()
    };
    let before = inspect();

    // Not found is exit 1 (docs/exit-codes.md), bad input 2.
    let out = c.rctl(&["scale", "nope=3"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("\"nope\" not found"),
        "{}",
        stderr(&out)
    );
    assert_bad_input(c.rctl(&["scale", "web=-1"]), "web=-1");
    assert_bad_input(c.rctl(&["scale", "web=abc"]), "web=abc");

    let unknown = c.service_file(
        "unknown.toml",
        "name = \"web\"\nimage = \"x\"\nreplicaz = 3\n",
    );
    assert_bad_input(
        c.rctl(&["apply", "-f", unknown.to_str().unwrap()]),
        "unknown.toml:3: unknown field `replicaz`",
    );
    let wrong = c.service_file(
        "wrong.toml",
        "name = \"web\"\nimage = \"x\"\nreplicas = \"three\"\n",
    );
    assert_bad_input(
        c.rctl(&["apply", "-f", wrong.to_str().unwrap()]),
        "wrong.toml:3: key `replicas`: invalid type",
    );
    let noimage = c.service_file("noimage.toml", "name = \"web\"\nreplicas = 2\n");
    assert_bad_input(
        c.rctl(&["apply", "-f", noimage.to_str().unwrap()]),
        "missing field `image`",
    );

    let after = inspect();
    assert_eq!(after["replicas"], before["replicas"]);
    assert_eq!(after["revision"], before["revision"]);
    assert_eq!(after["updated"], before["updated"], "nothing was written");

    // An image the registry does not have (issue 8): refused at once, exit 1 (the file is
    // fine, the registry lacks the image), one line naming image and registry, no service.
    let ghost_image = format!("{}/rctl/nope:v1", c.registry());
    let ghost = c.service_file(
        "ghost.toml",
        &format!("name = \"ghost\"\nimage = \"{ghost_image}\"\nreplicas = 1\n"),
    );
    let out = c.rctl(&["apply", "-f", ghost.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "error: image \"{ghost_image}\" not found in registry {} (push it first or fix the tag); nothing changed",
            c.registry()
        )
    );
    assert_not_found(
        c.rctl(&["service", "inspect", "ghost"]),
        "\"ghost\" not found",
    );
    assert!(
        c.ps(&["-a"]).iter().all(|t| t["service"] != "ghost"),
        "no task was made"
    );

    c.down_leaving_nothing();
}

#[test]
fn applying_a_new_image_replaces_every_task_in_its_slot() {
    let c = Cluster::start(2);
    let file = c.service_file("web.toml", &c.web_service(3, "v1"));
    c.apply_and_wait(&file);
    let names = |tasks: &[Value]| -> BTreeSet<String> {
        tasks
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    let before = c.ps(&[]);
    assert_eq!(
        names(&before),
        BTreeSet::from(["web.1".into(), "web.2".into(), "web.3".into()])
    );

    let file = c.service_file("web.toml", &c.web_service(3, "v2"));
    let out = c.apply_and_wait(&file);
    assert!(out.contains("service web updated (revision 2)"), "{out}");
    let after = c.ps(&[]);
    assert_eq!(running(&after).len(), 3, "{after:#?}");
    assert_eq!(
        names(&after),
        names(&before),
        "replacements keep their slots"
    );
    for t in &after {
        assert_eq!(t["revision"], 2, "{t}");
        assert!(
            t["image"]
                .as_str()
                .unwrap()
                .ends_with("/rctl/testserver:v2"),
            "{t}"
        );
    }
    // The old tasks are history now, and rctl-lb no longer sends to them.
    let retired: Vec<Value> = c
        .ps(&["-a"])
        .into_iter()
        .filter(|t| t["revision"] == 1)
        .collect();
    assert_eq!(retired.len(), 3, "{retired:#?}");
    assert!(
        retired.iter().all(|t| t["desired"] == "shutdown"),
        "{retired:#?}"
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", c.service_port(0)).parse().unwrap();
    c.eventually(WAIT, "rctl-lb to serve only v2", || {
        (0..10)
            .all(|_| http_get(addr, "/").is_ok_and(|r| r.body.starts_with("version=v2 ")))
            .then_some(())
    });
    get_many(&c, 100, "v2");
}

#[test]
fn a_lost_host_is_replaced_elsewhere_and_comes_back_without_duplicates() {
    let c = Cluster::start(3);
    let file = c.service_file("web.toml", &c.web_service(6, "v1"));
    c.apply_and_wait(&file);
    let on = |tasks: &[Value], node: &str| -> BTreeSet<String> {
        tasks
            .iter()
            .filter(|t| t["node"] == node)
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    let lost = on(&c.ps(&[]), "h2");
    assert_eq!(lost.len(), 2, "spread puts two of six on each host");
    let lost_hosts: HashSet<String> = lost.iter().map(|id| id[..12].to_string()).collect();
    wait_for_lb(&c);

    // Requests keep flowing through rctl-lb across the power cut: one client, one GET at a
    // time, bounded to 60 s, stopped once the replacements serve.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let addr: SocketAddr = format!("127.0.0.1:{}", c.service_port(0)).parse().unwrap();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let until = std::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < until
            {
                match http_get(addr, "/") {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("status {}", r.status)),
                    Err(e) => failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    c.cluster(&["kill-host", "h2"]);
    // Issue 6: within 10 s of the power cut (h2's 5 s lease expiring), the lost tasks run
    // again on h1 and h3.
    c.eventually(Duration::from_secs(10), "six running tasks off h2", || {
        let tasks = c.ps(&[]);
        (running(&tasks).len() == 6 && on(&tasks, "h2").is_empty()).then_some(())
    });
    // Once h2's lease expires its tasks are replaced on h1 and h3.
    let tasks = c.eventually(WAIT, "six healthy tasks on the surviving hosts", || {
        let tasks = c.ps(&[]);
        let healthy = running(&tasks)
            .iter()
            .filter(|t| t["health"] == "healthy")
            .count();
        (healthy == 6 && on(&tasks, "h2").is_empty()).then_some(tasks)
    });
    assert!(tasks
        .iter()
        .all(|t| !lost.contains(t["id"].as_str().unwrap())));
    let nodes: Vec<Value> = serde_json::from_str(&c.rctl_ok(&["nodes", "-o", "json"])).unwrap();
    assert!(nodes.iter().all(|n| n["name"] != "h2"), "{nodes:#?}");
    // rctl-lb no longer sends to h2 and, once the replacements' endpoints reach it, spreads
    // over all six.
    c.eventually(WAIT, "rctl-lb to route to all six", || {
        let s: HashSet<String> = get_many(&c, 30, "v1").into_iter().collect();
        (s.len() == 6).then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().expect("load thread");
    // Only a request in flight to h2 at the cut may fail (one at a time: at most one); the
    // LB retries connect failures and unanswered GETs on another replica.
    assert!(
        failed.len() <= 1 && ok >= 10,
        "through the host loss: {ok} ok, failed: {failed:?}"
    );
    let served: HashSet<String> = get_many(&c, 100, "v1").into_iter().collect();
    assert!(
        served.is_disjoint(&lost_hosts),
        "served by lost containers: {served:?}"
    );
    assert_eq!(
        served.len(),
        6,
        "{served:?}\n{:#?}\n{}",
        c.ps(&["-a"]),
        c.logs()
    );

    // h2 comes back on the same disk: its old containers must not come back with it.
    c.cluster(&["restore-host", "h2"]);
    c.eventually(WAIT, "h2 to be ready again", || {
        let nodes: Vec<Value> = serde_json::from_str(&c.rctl_ok(&["nodes", "-o", "json"])).ok()?;
        nodes
            .iter()
            .any(|n| n["name"] == "h2" && n["state"] == "ready")
            .then_some(())
    });
    let before: BTreeSet<String> = tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    for _ in 0..10 {
        let now = c.ps(&[]);
        let ids: BTreeSet<String> = now
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, before, "no task added, moved or duplicated: {now:#?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let served: HashSet<String> = get_many(&c, 100, "v1").into_iter().collect();
    assert!(
        served.is_disjoint(&lost_hosts),
        "a lost container came back: {served:?}"
    );

    // A cluster with a host still powered off tears down cleanly too.
    c.cluster(&["kill-host", "h3"]);
    c.down_leaving_nothing();
}

/// Writes raw bytes to `addr` and closes: every server must shrug this off.
fn send_garbage(addr: &str, bytes: &[u8]) {
    use std::io::Write;
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = s.write_all(bytes);
}

#[test]
fn garbage_on_the_wire_and_in_etcd_breaks_no_server() {
    let c = Cluster::start(1);
    let file = c.service_file("web.toml", &c.web_service(1, "v1"));
    c.apply_and_wait(&file);

    // Truncated HTTP/2 and gRPC frames, and plain noise, at every listening server.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut truncated_grpc = preface.to_vec();
    truncated_grpc.extend_from_slice(&[0, 0, 0x40, 0x01, 0x04, 0, 0, 0, 1, 0x83]);
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let targets = [
        c.addr().trim_start_matches("http://").to_string(),
        format!("198.18.{}.11:7700", c.net),
        format!("127.0.0.1:{}", c.service_port(0)),
        format!("127.0.0.1:{}", c.port_base + 4),
        format!("127.0.0.1:{}", c.port_base + 5),
    ];
    for t in &targets {
        send_garbage(t, &preface[..10]);
        send_garbage(t, &truncated_grpc);
        send_garbage(t, &noise);
    }

    // Values that do not decode, under every prefix the components read.
    for key in [
        "services/junk",
        "tasks/web/junk",
        "status/h1/junk",
        "endpoints/web/junk",
        "nodes/junk",
    ] {
        c.etcd_put(&format!("/rctl/v1/{key}"), &noise[..64]);
    }

    // Everything still works: reads, a scale through the reconciler and agent, traffic.
    let ls: Vec<Value> =
        serde_json::from_str(&c.rctl_ok(&["service", "ls", "-o", "json"])).unwrap();
    assert!(ls.iter().any(|s| s["name"] == "web"), "{ls:#?}");
    c.rctl_ok(&["scale", "web=2", "--wait", "--timeout", "90s"]);
    assert_eq!(running(&c.ps(&[])).len(), 2);
    wait_for_lb(&c);
    let served: HashSet<String> = get_many(&c, 50, "v1").into_iter().collect();
    assert_eq!(served.len(), 2);
}

#[test]
fn a_task_that_fits_no_node_stays_unplaced_and_says_why() {
    let c = Cluster::start(2);
    let file = c.service_file(
        "big.toml",
        &format!(
            "name = \"big\"\nimage = \"{}/rctl/testserver:v1\"\nreplicas = 2\n\n[resources]\nmemory = \"1000Gi\"\n",
            c.registry()
        ),
    );
    let out = c.rctl(&[
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--wait",
        "--timeout",
        "3s",
    ]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0/2 nodes: 2 insufficient memory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect: Value =
        serde_json::from_str(&c.rctl_ok(&["service", "inspect", "big", "-o", "json"])).unwrap();
    assert_eq!(
        inspect["unplaced"], "2 tasks: 0/2 nodes: 2 insufficient memory",
        "{inspect:#}"
    );
    assert!(c.ps(&["-a"]).is_empty(), "nothing was placed");
    let table = c.rctl_ok(&["ps"]);
    assert!(
        table.contains("big: not placed: 2 tasks: 0/2 nodes: 2 insufficient memory"),
        "{table}"
    );

    let file = c.service_file(
        "picky.toml",
        &format!(
            "name = \"picky\"\nimage = \"{}/rctl/testserver:v1\"\n\n[placement]\nconstraints = [\"role == db\"]\n",
            c.registry()
        ),
    );
    c.rctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    let inspect: Value =
        serde_json::from_str(&c.rctl_ok(&["service", "inspect", "picky", "-o", "json"])).unwrap();
    assert_eq!(
        inspect["unplaced"], "1 task: 0/2 nodes: 2 constraint not met",
        "{inspect:#}"
    );
}

/// The state `rctl nodes -o json` reports for `node`.
fn node_state(c: &Cluster, node: &str) -> String {
    let nodes: Vec<Value> = serde_json::from_str(&c.rctl_ok(&["nodes", "-o", "json"])).unwrap();
    nodes
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["state"].as_str())
        .unwrap_or_else(|| panic!("{node} not in {nodes:#?}"))
        .to_string()
}

#[test]
fn draining_a_node_moves_its_tasks_and_activating_takes_new_ones_again() {
    let c = Cluster::start(2);
    let file = c.service_file("web.toml", &c.web_service(2, "v1"));
    c.apply_and_wait(&file);
    let tasks = c.ps(&[]);
    let nodes: BTreeSet<&str> = running(&tasks)
        .iter()
        .map(|t| t["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, BTreeSet::from(["h1", "h2"]), "{tasks:#?}");

    assert_eq!(c.rctl_ok(&["node", "drain", "h1"]).trim(), "h1");
    let tasks = c.eventually(WAIT, "both tasks running on h2", || {
        let tasks = c.ps(&[]);
        (tasks.len() == 2 && running(&tasks).len() == 2 && tasks.iter().all(|t| t["node"] == "h2"))
            .then_some(tasks)
    });
    assert_eq!(node_state(&c, "h1"), "draining");
    assert_eq!(node_state(&c, "h2"), "ready");
    let on_h2: HashSet<String> = tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap()[..12].to_string())
        .collect();
    // The retired task's endpoint leaves the LB; every request succeeds meanwhile.
    c.eventually(WAIT, "LB to route only to the tasks on h2", || {
        let s: HashSet<String> = get_many(&c, 20, "v1").into_iter().collect();
        (s == on_h2).then_some(())
    });
    let served: HashSet<String> = get_many(&c, 50, "v1").into_iter().collect();
    assert!(served.is_subset(&on_h2), "{served:?}");

    assert_eq!(c.rctl_ok(&["node", "activate", "h1"]).trim(), "h1");
    assert_eq!(node_state(&c, "h1"), "ready");
    c.rctl_ok(&["scale", "web=3", "--wait", "--timeout", "90s"]);
    let tasks = c.ps(&[]);
    let up = running(&tasks);
    assert_eq!(up.len(), 3, "{tasks:#?}");
    let on_h1: Vec<&&Value> = up.iter().filter(|t| t["node"] == "h1").collect();
    assert_eq!(
        on_h1.len(),
        1,
        "the new task goes to the emptier h1: {tasks:#?}"
    );
    assert!(
        on_h2
            .iter()
            .all(|id| up.iter().any(|t| t["id"].as_str().unwrap().starts_with(id))),
        "running tasks were not moved: {tasks:#?}"
    );

    // An unknown node is bad input.
    assert_not_found(c.rctl(&["node", "drain", "h9"]), "h9");
    assert_not_found(c.rctl(&["node", "activate", "h9"]), "h9");
}
