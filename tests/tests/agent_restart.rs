//! Issue 4's acceptance for agent restarts: SIGKILL the agent of a host running 20
//! containers; while it is gone they keep running and logging (their shims own them and
//! their logs), and a container that exits meanwhile has its exit code reported by the
//! restarted agent — and its restart policy applied to it, as if the agent had watched.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rctl_api::pb;
use rctl_api::pb::agent_client::AgentClient;
use rctl_tests::cluster::Cluster;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);
const REPLICAS: usize = 20;

/// (pid, start time) from a container's `pid` file: a pid alone could be reused.
fn pid_record(c: &Cluster, id: &str) -> Option<(i32, u64)> {
    let s = std::fs::read_to_string(c.container_dir("h1", id).join("pid")).ok()?;
    let mut it = s.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Whether the process of `rec` still runs (same start time, not a zombie).
fn alive(rec: (i32, u64)) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", rec.0)) else {
        return false;
    };
    let rest: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    rest.first().is_some_and(|s| *s != "Z" && *s != "X")
        && rest.get(19).and_then(|s| s.parse().ok()) == Some(rec.1)
}

/// The counter values in a container's json-file log (current file and rotations), with
/// the time of the last one.
fn counters(c: &Cluster, id: &str) -> (Vec<u64>, SystemTime) {
    let dir = c.container_dir("h1", id);
    let mut nums = Vec::new();
    let mut last = SystemTime::UNIX_EPOCH;
    for f in ["log.json.2", "log.json.1", "log.json"] {
        let Ok(text) = std::fs::read_to_string(dir.join(f)) else {
            continue;
        };
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("log line is JSON");
            assert_eq!(v["stream"], "stdout", "{line}");
            let n = v["log"]
                .as_str()
                .unwrap()
                .trim()
                .parse()
                .expect("a counter");
            nums.push(n);
            last = humantime::parse_rfc3339(v["time"].as_str().unwrap()).expect("RFC 3339 time");
        }
    }
    (nums, last)
}

#[test]
fn agent_sigkill_with_20_containers_keeps_them_running_and_logging() {
    let c = Cluster::start(1);
    let reg = c.registry();
    let count = c.service_file(
        "count.toml",
        &format!(
            r#"name = "count"
image = "{reg}/rctl/busybox:latest"
replicas = {REPLICAS}
command = ["sh", "-c", "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done"]
"#
        ),
    );
    // Exits with 42 on SIGUSR1, which the test sends while the agent is down.
    let quit = c.service_file(
        "quit.toml",
        &format!(
            r#"name = "quit"
image = "{reg}/rctl/busybox:latest"
replicas = 1
command = ["sh", "-c", "trap 'exit 42' USR1; while true; do sleep 0.1; done"]
"#
        ),
    );
    c.apply_and_wait(&count);
    c.apply_and_wait(&quit);
    let tasks = c.ps(&[]);
    let id_of = |t: &Value| t["id"].as_str().unwrap().to_string();
    let counting: Vec<String> = tasks
        .iter()
        .filter(|t| t["service"] == "count" && t["state"] == "running")
        .map(id_of)
        .collect();
    assert_eq!(counting.len(), REPLICAS, "{tasks:#?}");
    let quit_id = tasks
        .iter()
        .find(|t| t["service"] == "quit")
        .map(id_of)
        .expect("quit task");
    let pids: BTreeMap<String, (i32, u64)> = counting
        .iter()
        .map(|id| (id.clone(), pid_record(&c, id).expect("pid file")))
        .collect();
    let quit_pid = c.eventually(WAIT, "quit's pid file", || pid_record(&c, &quit_id));

    let old = c.kill_agent("h1");
    let killed_at = SystemTime::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(quit_pid.0),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .expect("signal quit");
    let exit_file = c.container_dir("h1", &quit_id).join("exit");
    let code = c.eventually(Duration::from_secs(10), "quit to exit", || {
        std::fs::read_to_string(&exit_file).ok()
    });
    assert_eq!(
        code.trim(),
        "42",
        "the shim recorded the exit without an agent"
    );
    // Let the counters run for a while with no agent at all.
    std::thread::sleep(Duration::from_secs(1));
    for (id, rec) in &pids {
        assert!(alive(*rec), "{id} runs while the agent is down");
    }

    let new = c.restart_agent("h1");
    assert_ne!(new, old, "a new agent runs");
    let restarted_at = SystemTime::now();
    let reported = c.eventually(WAIT, "quit's exit code reported", || {
        c.ps(&["-a"])
            .into_iter()
            .find(|t| t["id"] == quit_id.as_str() && t["exit_code"] == 42)
    });
    assert_eq!(reported["state"], "failed", "{reported:#}");

    let tasks = c.ps(&[]);
    for id in &counting {
        let t = tasks
            .iter()
            .find(|t| t["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} still listed: {tasks:#?}"));
        assert_eq!(t["state"], "running", "{t:#}");
        assert_eq!(
            pid_record(&c, id),
            Some(pids[id]),
            "{id} is the same process"
        );
        assert!(alive(pids[id]), "{id} still runs after the restart");
    }
    // Every log runs on without a gap from before the kill to after the restart.
    for id in &counting {
        let (nums, last) = c.eventually(Duration::from_secs(10), "log past the restart", || {
            let (nums, last) = counters(&c, id);
            (last > restarted_at).then_some((nums, last))
        });
        assert!(last > killed_at);
        let first = nums[0];
        let want: Vec<u64> = (first..first + nums.len() as u64).collect();
        assert_eq!(nums, want, "{id}: counter sequence has a gap or a repeat");
    }
}

/// Puts `task` under its etcd key through etcd's JSON gateway, so the agent's orphan sweep
/// sees it as desired on this node.
fn put_task(c: &Cluster, task: &pb::Task) {
    c.etcd_put(
        &rctl_api::keys::task(&task.service, &task.id),
        &rctl_api::codec::encode(task),
    );
}

/// How many times a container printed `run` (once per start).
fn runs(c: &Cluster, id: &str) -> usize {
    let Ok(text) = std::fs::read_to_string(c.container_dir("h1", id).join("log.json")) else {
        return 0;
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["log"] == "run\n")
        .count()
}

fn exit_code(c: &Cluster, id: &str) -> Option<String> {
    std::fs::read_to_string(c.container_dir("h1", id).join("exit"))
        .ok()
        .map(|s| s.trim().to_string())
}

#[test]
fn restart_policy_applies_to_exits_while_the_agent_was_down() {
    let c = Cluster::start(1);
    // The agent's own API, as the scheduler drives it; the scheduler itself is stopped so
    // that it does not retire these tasks of a service it does not know.
    let sched = c.scheduler_pid(1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sched),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill scheduler");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = format!(
        "http://198.18.{}.11:{}",
        c.net,
        rctl_api::DEFAULT_AGENT_PORT
    );
    let task = |id: &str, policy: &str, script: &str| pb::Task {
        id: id.into(),
        service: "policy".into(),
        node: "h1".into(),
        image: format!("{}/rctl/busybox:latest", c.registry()),
        command: vec!["sh".into(), "-c".into(), script.into()],
        desired_state: pb::DesiredState::Running as i32,
        restart_policy: policy.into(),
        ..Default::default()
    };
    // Each waits for SIGUSR1 on its first run; a later run of `again` (its writable layer
    // kept across restarts) fails at once, so on-failure:2 ends after exactly three runs.
    let tasks = [
        task(
            "again",
            "on-failure:2",
            "echo run; [ -f /ran ] && exit 3; touch /ran; trap 'exit 3' USR1; while :; do sleep 0.1; done",
        ),
        task(
            "always",
            "always",
            "echo run; trap 'exit 0' USR1; while :; do sleep 0.1; done",
        ),
        task(
            "never",
            "",
            "echo run; trap 'exit 3' USR1; while :; do sleep 0.1; done",
        ),
        // Stopped by hand before the agent goes: Docker's `always` comes back when the
        // daemon restarts, `unless-stopped` stays stopped.
        task("kept", "always", "echo run; while :; do sleep 0.1; done"),
        task(
            "unless",
            "unless-stopped",
            "echo run; while :; do sleep 0.1; done",
        ),
    ];
    let stopped_by_hand = ["kept", "unless"];
    for t in &tasks {
        put_task(&c, t);
        let mut client = rt
            .block_on(AgentClient::connect(agent.clone()))
            .expect("agent API");
        rt.block_on(client.run_task(pb::RunTaskRequest {
            task: Some(t.clone()),
            ..Default::default()
        }))
        .expect("run task");
    }
    let first: BTreeMap<String, (i32, u64)> = tasks
        .iter()
        .map(|t| {
            let id = t.id.clone();
            let rec = c.eventually(WAIT, "first run", || {
                (runs(&c, &id) == 1).then_some(())?;
                pid_record(&c, &id)
            });
            (id, rec)
        })
        .collect();

    for id in stopped_by_hand {
        let mut client = rt
            .block_on(AgentClient::connect(agent.clone()))
            .expect("agent API");
        rt.block_on(client.stop_task(pb::StopTaskRequest {
            task_id: id.into(),
            service: "policy".into(),
            timeout_ms: 1,
            remove: false,
            remove_volumes: false,
        }))
        .expect("stop task");
        c.eventually(Duration::from_secs(10), "stopped by hand", || {
            exit_code(&c, id)
        });
    }
    c.kill_agent("h1");
    for (id, rec) in first
        .iter()
        .filter(|(id, _)| !stopped_by_hand.contains(&id.as_str()))
    {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(rec.0),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .expect("signal");
        c.eventually(Duration::from_secs(10), "exit without an agent", || {
            exit_code(&c, id)
        });
    }
    // Nothing restarts them while the agent is down.
    assert!(first.keys().all(|id| runs(&c, id) == 1));

    c.restart_agent("h1");
    // on-failure: the missed exit is restarted, and counts towards the maximum.
    c.eventually(WAIT, "again: three runs, then failed for good", || {
        (runs(&c, "again") == 3 && exit_code(&c, "again").as_deref() == Some("3")).then_some(())
    });
    // always: restarted after a clean exit too, and running.
    let second = c.eventually(WAIT, "always runs again", || {
        let rec = pid_record(&c, "always")?;
        (runs(&c, "always") == 2 && rec != first["always"] && alive(rec)).then_some(rec)
    });
    assert!(exit_code(&c, "always").is_none(), "always is running");
    // no: the exit code stays, nothing restarts.
    assert_eq!(exit_code(&c, "never").as_deref(), Some("3"));
    assert_eq!(runs(&c, "never"), 1);
    assert_eq!(runs(&c, "again"), 3, "no run beyond on-failure's maximum");
    assert!(alive(second));
    // always, stopped by hand: started again by the restarted agent.
    c.eventually(WAIT, "kept runs again", || {
        let rec = pid_record(&c, "kept")?;
        (runs(&c, "kept") == 2 && rec != first["kept"] && alive(rec)).then_some(())
    });
    // unless-stopped, stopped by hand: the same start-up pass left it stopped.
    assert_eq!(runs(&c, "unless"), 1);
    assert!(
        exit_code(&c, "unless").is_some(),
        "unless-stopped stays stopped"
    );
}
