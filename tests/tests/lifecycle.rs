//! Issue 4's lifecycle on a real host, driven through the agent's own API (RunTask /
//! StopTask, as the scheduler calls it): the restart policy is honoured by the agent, the
//! task's stop signal is what a stop sends, bad policies are refused, and remove leaves
//! nothing of the container on the host (mounts, veth, iptables rules, directory).

use std::time::Duration;

use rctl_api::pb;
use rctl_api::pb::agent_client::AgentClient;
use rctl_tests::cluster::Cluster;
use sha2::Digest;

const WAIT: Duration = Duration::from_secs(60);

fn agent(c: &Cluster) -> String {
    format!(
        "http://198.18.{}.11:{}",
        c.net,
        rctl_api::DEFAULT_AGENT_PORT
    )
}

fn task(c: &Cluster, id: &str, script: &str) -> pb::Task {
    pb::Task {
        id: id.into(),
        service: "lifecycle".into(),
        node: "h1".into(),
        image: format!("{}/rctl/busybox:latest", c.registry()),
        command: vec!["sh".into(), "-c".into(), script.into()],
        desired_state: pb::DesiredState::Running as i32,
        ..Default::default()
    }
}

/// The `log` fields of a container's json-file log, in order.
fn log_lines(c: &Cluster, id: &str) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(c.container_dir("h1", id).join("log.json")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["log"].as_str().map(str::to_string))
        .collect()
}

fn exit_code(c: &Cluster, id: &str) -> Option<String> {
    std::fs::read_to_string(c.container_dir("h1", id).join("exit"))
        .ok()
        .map(|s| s.trim().to_string())
}

#[test]
fn restart_policy_stop_signal_and_remove_as_docker_does() {
    let c = Cluster::start(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt
        .block_on(AgentClient::connect(agent(&c)))
        .expect("agent API");
    let run = |t: pb::Task| {
        let mut cl = client.clone();
        rt.block_on(cl.run_task(pb::RunTaskRequest {
            task: Some(t),
            ..Default::default()
        }))
    };

    // Bad input: refused before anything is created.
    for (field, t) in [
        ("restart policy", {
            let mut t = task(&c, "bad-policy", "true");
            t.restart_policy = "sometimes".into();
            t
        }),
        ("stop signal", {
            let mut t = task(&c, "bad-signal", "true");
            t.stop_signal = "SIGNOPE".into();
            t
        }),
    ] {
        let e = run(t).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().contains(field), "{e:?}");
    }
    assert!(!c.container_dir("h1", "bad-policy").exists());

    // on-failure:2: the first run and two restarts, then the exit code stays.
    let mut t = task(&c, "restarts", "echo run; exit 3");
    t.restart_policy = "on-failure:2".into();
    run(t).expect("run restarts");
    c.eventually(WAIT, "three runs", || {
        let runs = log_lines(&c, "restarts")
            .iter()
            .filter(|l| *l == "run\n")
            .count();
        (runs == 3 && exit_code(&c, "restarts").as_deref() == Some("3")).then_some(())
    });

    // The task's stop signal is what a stop sends first.
    let mut t = task(
        &c,
        "usr1",
        "trap 'echo got usr1; exit 0' USR1; echo ready; while :; do sleep 0.1; done",
    );
    t.stop_signal = "SIGUSR1".into();
    run(t).expect("run usr1");
    c.eventually(WAIT, "usr1 ready", || {
        log_lines(&c, "usr1")
            .contains(&"ready\n".to_string())
            .then_some(())
    });
    rt.block_on(client.clone().stop_task(pb::StopTaskRequest {
        task_id: "usr1".into(),
        service: "lifecycle".into(),
        timeout_ms: 30_000,
        remove: false,
        remove_volumes: false,
    }))
    .expect("stop usr1");
    c.eventually(WAIT, "usr1 stopped", || exit_code(&c, "usr1"));
    assert_eq!(exit_code(&c, "usr1").as_deref(), Some("0"));
    assert!(log_lines(&c, "usr1").contains(&"got usr1\n".to_string()));
    assert_eq!(
        log_lines(&c, "restarts")
            .iter()
            .filter(|l| *l == "run\n")
            .count(),
        3,
        "no restart beyond on-failure's maximum"
    );

    // A running container with a published port, then removed: nothing of it is left.
    let mut t = task(&c, "gone", "echo up; while :; do sleep 1; done");
    t.image = format!("{}/rctl/testserver:v1", c.registry());
    t.command = Vec::new();
    t.container_port = 8080;
    run(t).expect("run gone");
    let dir = c.container_dir("h1", "gone");
    c.eventually(WAIT, "gone running", || {
        dir.join("pid").exists().then_some(())
    });
    let veth = format!("veth{}", &hex::encode(sha2::Sha256::digest(b"gone"))[..8]);
    let netns = format!("{}-h1", c.name);
    let host_state = || {
        let links = String::from_utf8_lossy(
            &std::process::Command::new("ip")
                .args(["-n", &netns, "-o", "link"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        let rules = String::from_utf8_lossy(
            &std::process::Command::new("ip")
                .args(["netns", "exec", &netns, "iptables-save"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let prefix = dir.display().to_string();
        (
            links.contains(&veth),
            rules.contains("rctl:gone"),
            mounts.lines().any(|l| l.contains(&prefix)),
            dir.exists(),
        )
    };
    let (veth_up, rules_up, _, dir_up) = host_state();
    assert!(
        veth_up && rules_up && dir_up,
        "the container is wired before remove"
    );
    rt.block_on(client.clone().stop_task(pb::StopTaskRequest {
        task_id: "gone".into(),
        service: "lifecycle".into(),
        timeout_ms: 1_000,
        remove: true,
        remove_volumes: false,
    }))
    .expect("remove gone");
    c.eventually(WAIT, "nothing of the container left", || {
        (host_state() == (false, false, false, false)).then_some(())
    });
}
