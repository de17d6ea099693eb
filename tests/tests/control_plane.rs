//! End-to-end: the control plane survives losing its parts (issue 6's acceptance): a leader
//! killed or paused mid-change, etcd restarted and compacted, and a pending task placed as
//! soon as room frees up (from another service or a one-off container). Each test owns its
//! cluster.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rctl_tests::cluster::Cluster;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// A service of test servers that nothing routes to (no `[port]`): cheap, many fit a host.
fn plain_service(c: &Cluster, name: &str, replicas: u32, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nimage = \"{}/rctl/testserver:v1\"\nreplicas = {replicas}\n{extra}",
        c.registry()
    )
}

/// Tasks of `service` the scheduler wants running (retired ones excluded).
fn tasks_of(c: &Cluster, service: &str) -> Vec<Value> {
    tasks_via(c, &c.addr(), service)
}

/// [`tasks_of`], asking only the replicas in `addr`.
fn tasks_via(c: &Cluster, addr: &str, service: &str) -> Vec<Value> {
    let out = c.rctl_via(addr, &["ps", "-o", "json", "--service", service]);
    assert!(
        out.status.success(),
        "ps: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ps -o json is JSON")
}

fn ids(tasks: &[Value]) -> BTreeSet<String> {
    tasks
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect()
}

/// Waits until exactly `n` tasks of `service` exist and all run; returns them.
fn exactly_running(c: &Cluster, service: &str, n: usize) -> Vec<Value> {
    exactly_running_via(c, &c.addr(), service, n)
}

fn exactly_running_via(c: &Cluster, addr: &str, service: &str, n: usize) -> Vec<Value> {
    c.eventually(WAIT, &format!("{n} running tasks of {service}"), || {
        let t = tasks_via(c, addr, service);
        (t.len() == n && t.iter().all(|t| t["state"] == "running")).then_some(t)
    })
}

/// Asserts no slot of `service` is held by two tasks (a doubled placement would).
fn assert_no_duplicates(tasks: &[Value]) {
    let mut names = BTreeSet::new();
    for t in tasks {
        let name = t["name"].as_str().expect("name").to_string();
        assert!(
            names.insert(name.clone()),
            "two tasks named {name}: {tasks:#?}"
        );
    }
}

/// Memory of the smallest node, in bytes, as `rctl nodes` reports it.
fn smallest_node_memory(c: &Cluster) -> u64 {
    let nodes: Vec<Value> = serde_json::from_str(&c.rctl_ok(&["nodes", "-o", "json"])).unwrap();
    nodes
        .iter()
        .map(|n| n["memory"].as_u64().expect("node memory in bytes"))
        .min()
        .unwrap()
}

fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
}

#[test]
fn a_killed_leader_mid_scale_up_is_replaced_and_exactly_the_count_is_placed() {
    let c = Cluster::start_with(2, 3);
    let first = c.eventually(WAIT, "a scheduler leader", || c.leader());
    let file = c.service_file("many.toml", &plain_service(&c, "many", 1, ""));
    c.apply_and_wait(&file);

    // A follower refuses writes but names the leader, and rctl follows it.
    let follower = (1..=3).find(|&j| j != first).unwrap();
    let via = c.scheduler_addr(follower);
    let out = c.rctl_via(&via, &["scale", "many=20"]);
    assert!(
        out.status.success(),
        "scale through a follower: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let killed_at = Instant::now();
    signal(c.scheduler_pid(first), Signal::SIGKILL);
    let second = c.eventually(Duration::from_secs(10), "a new leader", || {
        c.leader().filter(|&j| j != first)
    });
    let took = killed_at.elapsed();
    eprintln!("new leader {took:?} after the kill");
    // Issue 6: a new leader within 3 s (the leader lease is 2 s, etcd's minimum).
    assert!(
        took <= Duration::from_secs(3),
        "replica {second} led only {took:?} after replica {first} was killed"
    );

    let tasks = exactly_running(&c, "many", 20);
    assert_no_duplicates(&tasks);
    // Writes keep working with the old leader gone (rctl skips the dead replica).
    c.rctl_ok(&["scale", "many=3", "--wait", "--timeout", "60s"]);
    let tasks = exactly_running(&c, "many", 3);
    assert_no_duplicates(&tasks);
    c.down_leaving_nothing();
}

#[test]
fn a_paused_leader_places_nothing_when_it_resumes_and_steps_down() {
    let c = Cluster::start_with(2, 3);
    let old = c.eventually(WAIT, "a scheduler leader", || c.leader());
    let file = c.service_file("svc.toml", &plain_service(&c, "svc", 2, ""));
    c.apply_and_wait(&file);
    let before = ids(&exactly_running(&c, "svc", 2));

    signal(c.scheduler_pid(old), Signal::SIGSTOP);
    // The paused replica still accepts TCP connections (and would hang a client until its
    // timeout), so talk to the others only while it is stopped.
    let others = (1..=3)
        .filter(|&j| j != old)
        .map(|j| c.scheduler_addr(j))
        .collect::<Vec<_>>()
        .join(",");
    let new = c.eventually(Duration::from_secs(15), "a new leader", || {
        (1..=3u32)
            .filter(|&j| j != old)
            .find(|&j| c.scheduler_leads(j) == Some(true))
    });
    let out = c.rctl_via(&others, &["scale", "svc=4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let during = exactly_running_via(&c, &others, "svc", 4);
    assert!(
        ids(&during).is_superset(&before),
        "running tasks were replaced"
    );

    signal(c.scheduler_pid(old), Signal::SIGCONT);
    c.eventually(
        Duration::from_secs(15),
        "the resumed replica to step down",
        || (c.scheduler_leads(old) == Some(false)).then_some(()),
    );
    assert_eq!(c.leader(), Some(new), "leadership moved again");
    // Whatever the resumed replica had in flight was fenced: nothing added or doubled.
    for _ in 0..10 {
        let t = tasks_of(&c, "svc");
        assert_eq!(
            ids(&t),
            ids(&during),
            "tasks changed after the old leader resumed"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    c.down_leaving_nothing();
}

/// etcd's current revision, through its JSON gateway.
fn etcd_revision(c: &Cluster) -> i64 {
    let v = etcd_json(c, "range", r#"{"key":"AA=="}"#);
    v["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {v}"))
}

fn etcd_json(c: &Cluster, call: &str, body: &str) -> Value {
    let url = format!("http://198.18.{}.1:{}/v3/kv/{call}", c.net, c.port_base + 1);
    let out = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "5", "-X", "POST", &url, "-d", body])
        .output()
        .expect("curl");
    assert!(out.status.success(), "etcd {call} failed");
    serde_json::from_slice(&out.stdout).expect("etcd answers JSON")
}

#[test]
fn an_etcd_restart_and_a_compaction_lose_and_double_nothing() {
    let c = Cluster::start_with(2, 1);
    let file = c.service_file("svc.toml", &plain_service(&c, "svc", 4, ""));
    c.apply_and_wait(&file);
    let before = ids(&exactly_running(&c, "svc", 4));

    // Compact everything so far: every watcher's next resume point is gone and must re-list.
    let rev = etcd_revision(&c);
    etcd_json(
        &c,
        "compaction",
        &format!(r#"{{"revision":"{rev}","physical":true}}"#),
    );
    c.rctl_ok(&["scale", "svc=5", "--wait", "--timeout", "60s"]);
    let after_compaction = ids(&exactly_running(&c, "svc", 5));
    assert!(
        after_compaction.is_superset(&before),
        "tasks replaced by the compaction"
    );

    // etcd crashes and comes back on the same data (`cluster up` repairs what is down).
    signal(c.pid_file("etcd"), Signal::SIGKILL);
    std::thread::sleep(Duration::from_secs(2));
    c.cluster(&["up"]);
    c.rctl_ok(&["scale", "svc=6", "--wait", "--timeout", "60s"]);
    let tasks = exactly_running(&c, "svc", 6);
    assert_no_duplicates(&tasks);
    assert!(
        ids(&tasks).is_superset(&after_compaction),
        "tasks lost across the etcd restart: {tasks:#?}"
    );
    let nodes: Vec<Value> = serde_json::from_str(&c.rctl_ok(&["nodes", "-o", "json"])).unwrap();
    assert!(
        nodes.iter().all(|n| n["state"] == "ready"),
        "a node did not come back: {nodes:#?}"
    );
    c.down_leaving_nothing();
}

#[test]
fn a_task_that_fits_nowhere_is_placed_as_soon_as_a_node_frees_up() {
    let c = Cluster::start(2);
    let memory = smallest_node_memory(&c);
    // Each task takes 60% of a node: one per node, and no room for a third.
    let big = format!(
        "\n[resources]\nmemory = \"{}Mi\"\n",
        (memory * 6 / 10) >> 20
    );
    let hog = c.service_file("hog.toml", &plain_service(&c, "hog", 2, &big));
    c.apply_and_wait(&hog);
    let late = c.service_file("late.toml", &plain_service(&c, "late", 1, &big));
    c.rctl_ok(&["apply", "-f", late.to_str().unwrap()]);
    let inspect: Value =
        serde_json::from_str(&c.rctl_ok(&["service", "inspect", "late", "-o", "json"])).unwrap();
    assert_eq!(
        inspect["unplaced"], "1 task: 0/2 nodes: 2 insufficient memory",
        "{inspect:#}"
    );

    c.rctl_ok(&["scale", "hog=1"]);
    exactly_running(&c, "late", 1);
    let inspect: Value =
        serde_json::from_str(&c.rctl_ok(&["service", "inspect", "late", "-o", "json"])).unwrap();
    assert!(
        inspect["unplaced"].as_str().unwrap_or("").is_empty(),
        "{inspect:#}"
    );
    c.down_leaving_nothing();
}

#[test]
fn a_one_off_container_takes_room_from_service_tasks() {
    let c = Cluster::start(2);
    let memory = smallest_node_memory(&c);
    // 60% of a node: one such task or container per node.
    let big_mi = (memory * 6 / 10) >> 20;
    let bb = format!("{}/rctl/busybox:latest", c.registry());
    c.rctl_ok(&[
        "run",
        "-d",
        "--name",
        "hog",
        "--node",
        "h1",
        "--memory",
        &format!("{big_mi}m"),
        &bb,
        "sleep",
        "3600",
    ]);
    let big = format!("\n[resources]\nmemory = \"{big_mi}Mi\"\n");
    let file = c.service_file("late.toml", &plain_service(&c, "late", 2, &big));
    c.rctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    let tasks = exactly_running(&c, "late", 1);
    assert_eq!(
        tasks[0]["node"], "h2",
        "h1 is taken by the container: {tasks:#?}"
    );
    let inspect: Value =
        serde_json::from_str(&c.rctl_ok(&["service", "inspect", "late", "-o", "json"])).unwrap();
    assert_eq!(
        inspect["unplaced"], "1 task: 0/2 nodes: 2 insufficient memory",
        "{inspect:#}"
    );

    // Removing the container frees h1 for the second task.
    c.rctl_ok(&["rm", "-f", "hog"]);
    let tasks = exactly_running(&c, "late", 2);
    let on: BTreeSet<&str> = tasks.iter().filter_map(|t| t["node"].as_str()).collect();
    assert_eq!(on, BTreeSet::from(["h1", "h2"]), "{tasks:#?}");
    c.down_leaving_nothing();
}

#[test]
fn a_joining_node_takes_new_tasks_and_running_ones_stay_put() {
    let c = Cluster::start(2);
    let file = c.service_file("svc.toml", &plain_service(&c, "svc", 4, ""));
    c.apply_and_wait(&file);
    let before = ids(&exactly_running(&c, "svc", 4));

    // h3 joins (`up` with more hosts adds them; what runs is left alone).
    c.cluster(&["up", "--hosts", "3"]);
    c.eventually(WAIT, "h3 to be ready", || {
        let nodes: Vec<Value> = serde_json::from_str(&c.rctl_ok(&["nodes", "-o", "json"])).ok()?;
        nodes
            .iter()
            .any(|n| n["name"] == "h3" && n["state"] == "ready")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        ids(&tasks_of(&c, "svc")),
        before,
        "running tasks were moved"
    );

    c.rctl_ok(&["scale", "svc=6", "--wait", "--timeout", "60s"]);
    let tasks = exactly_running(&c, "svc", 6);
    assert!(ids(&tasks).is_superset(&before));
    let on_h3 = tasks.iter().filter(|t| t["node"] == "h3").count();
    assert_eq!(
        on_h3, 2,
        "spread sends both new tasks to the empty node: {tasks:#?}"
    );
    c.down_leaving_nothing();
}
