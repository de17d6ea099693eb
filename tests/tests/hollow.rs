//! Scale on loopback: a real etcd, the real scheduler binary and `rctl-agent hollow` nodes
//! (real node leases, Agent gRPC API and status writes; no containers). What a user sees
//! through `rctl`: exactly the asked number of tasks, every one acknowledged running, spread
//! evenly, and exactly the asked number left after scaling down. Plus bad input at the
//! hollow nodes' flags and gRPC port.

use std::collections::HashMap;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

use rctl_api::pb;
use rctl_tests::cluster::bin_dir;
use rctl_tests::hollow::{free_port_range, HollowCluster};
use serde_json::Value;

/// The issue's own bound for these scales on a shared 2-core machine.
const WITHIN: Duration = Duration::from_secs(20);

/// Tasks per node of `tasks`; panics if any is not running.
fn per_node(tasks: &[Value]) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for t in tasks {
        *out.entry(t["node"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    out
}

/// Waits until `ps` shows exactly `n` tasks, all running; returns them.
fn wait_running(c: &HollowCluster, n: usize) -> Vec<Value> {
    c.eventually(WITHIN, &format!("{n} tasks running"), || {
        let tasks = c.ps(&[]);
        (tasks.len() == n && tasks.iter().all(|t| t["state"] == "running")).then_some(tasks)
    })
}

#[test]
fn scale_to_500_on_50_hollow_nodes_then_down_to_100() {
    let mut c = HollowCluster::start(50);
    let file = c.service_file(
        "web.toml",
        "name = \"web\"\nimage = \"rctl/busybox:latest\"\nreplicas = 0\n",
    );
    c.rctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    c.rctl_ok(&["scale", "web=500"]);

    let tasks = wait_running(&c, 500);
    let spread = per_node(&tasks);
    assert_eq!(spread.len(), 50, "every node got tasks: {spread:?}");
    let (min, max) = (spread.values().min(), spread.values().max());
    assert_eq!((min, max), (Some(&10), Some(&10)), "{spread:?}");
    // Still exactly 500 a moment later: nothing placed twice by a later pass.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.ps(&["-a"]).len(), 500);

    c.rctl_ok(&["scale", "web=100"]);
    let tasks = wait_running(&c, 100);
    let spread = per_node(&tasks);
    let (min, max) = (spread.values().min(), spread.values().max());
    assert!(
        max.unwrap() - min.unwrap() <= 1,
        "scale-down keeps the spread: {spread:?}"
    );
    // The hollow nodes acknowledge the stops: every retired task still listed has exited.
    c.eventually(WITHIN, "retired tasks to be reported exited", || {
        let all = c.ps(&["-a"]);
        let retired: Vec<&Value> = all.iter().filter(|t| t["state"] != "running").collect();
        (all.len() > 100 && retired.iter().all(|t| t["state"] == "exited")).then_some(())
    });
    assert_eq!(c.ps(&[]).len(), 100);
    assert!(c.alive(), "a process died\n{}", c.logs());
}

#[test]
fn hollow_nodes_refuse_bad_input_and_keep_serving() {
    let agent = bin_dir().join("rctl-agent");
    let out = Command::new(&agent)
        .args(["hollow", "--nodes", "0", "--port-base", "1"])
        .output()
        .expect("run rctl-agent hollow");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--nodes 0: must be between 1 and"), "{err}");

    let base = free_port_range(2);
    let _taken = std::net::TcpListener::bind(("127.0.0.1", base + 1)).unwrap();
    let out = Command::new(&agent)
        .args(["hollow", "--nodes", "2", "--port-base", &base.to_string()])
        .args(["--etcd", "http://127.0.0.1:1"])
        .output()
        .expect("run rctl-agent hollow");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("listen on 127.0.0.1:{}", base + 1)),
        "{err}"
    );

    let mut c = HollowCluster::start(3);
    let node = format!("http://127.0.0.1:{}", c.port_base);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Noise on the gRPC port first: the node must shrug it off.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", c.port_base)).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\x01\x02garbage");
        drop(s);

        let mut client = pb::agent_client::AgentClient::connect(node).await.unwrap();
        let bad = |id: &str, image: &str| pb::RunTaskRequest {
            task: Some(pb::Task {
                id: id.into(),
                service: "web".into(),
                image: image.into(),
                ..Default::default()
            }),
            auth: Vec::new(),
        };
        for (req, why) in [
            (bad("../etc", "img"), "bad task id"),
            (bad("t1", ""), "no image"),
            (pb::RunTaskRequest::default(), "missing task"),
        ] {
            let e = client.run_task(req).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains(why), "{e:?}");
        }
        // Stopping an unknown task succeeds, as on a real agent.
        client
            .stop_task(pb::StopTaskRequest {
                task_id: "nope".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    });
    // Still serving: a real placement through the scheduler is acknowledged.
    let file = c.service_file(
        "one.toml",
        "name = \"one\"\nimage = \"rctl/busybox:latest\"\nreplicas = 3\n",
    );
    c.rctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    let tasks = wait_running(&c, 3);
    assert_eq!(per_node(&tasks).len(), 3);
    assert!(c.alive(), "a process died\n{}", c.logs());
}
