//! End-to-end: the CLI's exit codes and error wording follow one table (docs/exit-codes.md,
//! issue 22 defect 13), checked the way a script sees them on a real 2-host cluster: "not
//! found" exits 1 for every kind of target, a refusal because of state exits 1 whichever
//! command meets it, bad input exits 2, `exec` gives Docker's 126/127 and `exec -w` of a
//! missing directory fails without creating it; every error is one plain line. And the two
//! commands PRODUCT.md lists that were missing: `node inspect` and `rollout status --wait`.

use std::time::Duration;

use rctl_tests::cluster::Cluster;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts `rctl args` exits `code` with exactly one plain `error:` line containing each
/// of `needles`.
fn assert_fails(c: &Cluster, args: &[&str], code: i32, needles: &[&str]) {
    let out = c.rctl(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "rctl {args:?}: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "rctl {args:?}: one line: {err:?}");
    assert!(lines[0].starts_with("error: "), "rctl {args:?}: {err:?}");
    for bad in ["bad request:", "status:", "Status {", "u32", "u64", "i64"] {
        assert!(!lines[0].contains(bad), "rctl {args:?}: {bad:?} in {err:?}");
    }
    for n in needles {
        assert!(lines[0].contains(n), "rctl {args:?}: {n:?} not in {err:?}");
    }
}

#[test]
fn exit_codes_and_wording_follow_one_table() {
    let c = Cluster::start(2);
    let bb = format!("{}/rctl/busybox:latest", c.registry());
    let file = c.service_file("web.toml", &c.web_service(1, "v1"));
    c.apply_and_wait(&file);
    c.rctl_ok(&["run", "-d", "--name", "c1", &bb, "sleep", "1000"]);
    c.rctl_ok(&["run", "-d", "--name", "c2", &bb, "sleep", "1000"]);

    // Not found: 1, for every kind of target.
    const SERVICE: &str = "service \"nosuch\" not found (see: rctl service ls)";
    const CONTAINER: &str = "no container, task or service is called \"nosuch\"";
    const NODE: &str = "node \"nosuch\" not found (see: rctl nodes)";
    let not_found: &[(&[&str], &str)] = &[
        // services
        (&["service", "inspect", "nosuch"], SERVICE),
        (&["service", "rm", "nosuch"], SERVICE),
        (&["scale", "nosuch=2"], SERVICE),
        (&["rollout", "status", "nosuch"], SERVICE),
        (&["rollout", "history", "nosuch"], SERVICE),
        (&["rollout", "abort", "nosuch"], SERVICE),
        (&["rollback", "nosuch"], SERVICE),
        // containers
        (&["stop", "nosuch"], CONTAINER),
        (&["start", "nosuch"], CONTAINER),
        (&["kill", "nosuch"], CONTAINER),
        (&["rm", "nosuch"], CONTAINER),
        (&["rename", "nosuch", "other"], CONTAINER),
        (&["port", "nosuch"], "nosuch"),
        (&["exec", "nosuch", "true"], "nosuch"),
        // tasks
        (&["stop", "web.7"], "\"web.7\""),
        (&["logs", "web.7"], "web.7"),
        // nodes
        (&["node", "inspect", "nosuch"], NODE),
        (&["node", "drain", "nosuch"], NODE),
        (&["node", "activate", "nosuch"], NODE),
        (&["run", "-d", "--node", "nosuch", &bb], NODE),
        // images
        (&["image", "inspect", "nosuch:1"], "no such image: nosuch:1"),
        (&["rmi", "nosuch:1"], "nosuch:1"),
        // revisions
        (&["rollback", "web", "--to", "99"], "has no revision 99"),
        // anything
        (&["inspect", "nosuch"], "no such object: nosuch"),
    ];
    for (args, needle) in not_found {
        assert_fails(&c, args, 1, &[needle]);
    }

    // Refused because of state: 1, whichever command meets it.
    let refused: &[(&[&str], &str)] = &[
        (&["rename", "c1", "c2"], "already in use"),
        (&["rm", "c1"], "c1"),
        (&["rollback", "web", "--to", "1"], "already runs revision 1"),
        (
            &[
                "rollout",
                "start",
                "web",
                "--image",
                &format!("{}/rctl/testserver:v1", c.registry()),
            ],
            "already runs",
        ),
        (&["rollout", "promote", "web"], "no canary rollout running"),
        (&["rollout", "explain", "web"], "never had a canary rollout"),
    ];
    for (args, needle) in refused {
        assert_fails(&c, args, 1, &[needle]);
    }
    // `run` exits 125 for every refusal to create, a taken name included (as Docker's run).
    assert_fails(
        &c,
        &["run", "-d", "--name", "c2", &bb],
        125,
        &["already in use"],
    );
    c.rctl_ok(&["stop", "-t", "0", "c2"]);
    assert_fails(&c, &["kill", "c2"], 1, &["c2"]);

    // Bad input: 2, worded for people, with no `bad request:` prefix.
    assert_fails(
        &c,
        &["rename", "c1", "bad/name"],
        2,
        &["error: invalid container name \"bad/name\""],
    );
    assert_fails(&c, &["rename", "web.1", "x"], 2, &["task of service web"]);
    assert_fails(&c, &["stop", "-t", "x", "c1"], 2, &["not a whole number"]);
    let wrong = c.service_file(
        "wrong.toml",
        "name = \"web\"\nimage = \"x\"\nreplicas = \"three\"\n",
    );
    assert_fails(
        &c,
        &["apply", "-f", wrong.to_str().unwrap()],
        2,
        &["wrong.toml:3: key `replicas`", "expected a whole number"],
    );

    // exec: 127 not found, 126 cannot be invoked; -w of a missing directory is 126 and
    // makes nothing.
    for (cmd, code) in [
        (&["nosuch"][..], 127),
        (&["/etc/passwd"][..], 126),
        (&["/etc"][..], 126),
        (&["sh", "-c", "exit 7"][..], 7),
    ] {
        let mut args = vec!["exec", "c1"];
        args.extend_from_slice(cmd);
        let out = c.rctl(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
    }
    let out = c.rctl(&["exec", "-w", "/nonexistent", "c1", "true"]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(stderr(&out).contains("/nonexistent"), "{}", stderr(&out));
    let out = c.rctl(&["exec", "c1", "test", "-e", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(1), "exec -w created the directory");
    c.rctl_ok(&["exec", "-w", "/tmp", "c1", "true"]);

    // Placement reasons read after a count of nodes: "2 draining", not "2 node draining".
    c.rctl_ok(&["node", "drain", "h1"]);
    c.rctl_ok(&["node", "drain", "h2"]);
    c.eventually(WAIT, "web unplaced on drained nodes", || {
        let inspect: Value =
            serde_json::from_str(&c.rctl_ok(&["service", "inspect", "web", "-o", "json"])).ok()?;
        (inspect["unplaced"] == "1 task: 0/2 nodes: 2 draining").then_some(())
    });
    c.rctl_ok(&["node", "activate", "h1"]);
    c.rctl_ok(&["node", "activate", "h2"]);

    c.rctl_ok(&["rm", "-f", "c1", "c2"]);
    c.rctl_ok(&["service", "rm", "web"]);
    c.down_leaving_nothing();
}

#[test]
fn node_inspect_and_rollout_status_wait() {
    let c = Cluster::start(2);

    // node inspect: the same fields as `nodes -o json`, for one node; a table otherwise.
    let nodes: Vec<Value> = serde_json::from_str(&c.rctl_ok(&["nodes", "-o", "json"])).unwrap();
    let h1 = nodes.iter().find(|n| n["name"] == "h1").expect("h1 listed");
    let one: Value =
        serde_json::from_str(&c.rctl_ok(&["node", "inspect", "h1", "-o", "json"])).unwrap();
    assert!(one.is_object(), "{one}");
    for key in [
        "name", "address", "state", "cpus", "memory", "labels", "subnet",
    ] {
        assert_eq!(one[key], h1[key], "{key}: {one}");
    }
    let table = c.rctl_ok(&["node", "inspect", "h1"]);
    let line = |key: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{key}:")))
            .map(|l| l.split_once(':').unwrap().1.trim().to_string())
            .unwrap_or_else(|| panic!("no {key}: in {table}"))
    };
    assert_eq!(line("Name"), "h1");
    assert_eq!(line("State"), "ready");
    assert_eq!(line("Address"), h1["address"].as_str().unwrap());
    c.rctl_ok(&["node", "drain", "h2"]);
    assert_eq!(
        serde_json::from_str::<Value>(&c.rctl_ok(&["node", "inspect", "h2", "-o", "json"]))
            .unwrap()["state"],
        "draining"
    );
    c.rctl_ok(&["node", "activate", "h2"]);

    // rollout status --wait: 0 once the latest change is done.
    let file = c.service_file("web.toml", &c.web_service(2, "v1"));
    c.apply_and_wait(&file);
    let reg = c.registry();
    c.rctl_ok(&[
        "rollout",
        "start",
        "web",
        "--image",
        &format!("{reg}/rctl/testserver:v2"),
    ]);
    let out = c.rctl(&["rollout", "status", "web", "--wait", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (status["revision"].as_u64(), status["state"].as_str()),
        (Some(2), Some("done")),
        "{status}"
    );

    // A revision that never turns healthy: 3 once the scheduler has rolled it back, with
    // the status on stdout all the same.
    c.rctl_ok(&[
        "rollout",
        "start",
        "web",
        "--image",
        &format!("{reg}/rctl/testserver:broken"),
    ]);
    // With no time to wait, it times out at its first look (4), the rollout going on.
    let out = c.rctl(&["rollout", "status", "web", "--wait", "--timeout", "0s"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the rollout goes on"),
        "{}",
        stderr(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("web: revision 3 rolling"));
    let out = c.rctl(&[
        "rollout",
        "status",
        "web",
        "--wait",
        "--timeout",
        "180s",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["state"], "rolled_back", "{status}");
    assert!(
        stderr(&out).contains("web was rolled back"),
        "{}",
        stderr(&out)
    );

    let out = c.rctl(&["rollout", "status", "nosuch", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    c.rctl_ok(&["service", "rm", "web"]);
    c.down_leaving_nothing();
}

#[test]
fn port_inspect_who_and_plain_daemon_logs() {
    let c = Cluster::start(1);
    let reg = c.registry();
    let file = c.service_file("web.toml", &c.web_service(1, "v1"));
    c.apply_and_wait(&file);

    // port of a task: its port and the endpoint the load balancer uses.
    let task = c
        .ps(&[])
        .into_iter()
        .find(|t| t["service"] == "web")
        .expect("web.1");
    let endpoint = task["endpoint"].as_str().unwrap().to_string();
    assert!(!endpoint.is_empty(), "{task}");
    assert_eq!(
        c.rctl_ok(&["port", "web.1"]),
        format!("8080/tcp -> {endpoint}\n")
    );

    // inspect of a task that runs its image's command shows that command.
    let v: Value = serde_json::from_str(&c.rctl_ok(&["inspect", "web.1"])).unwrap();
    assert_eq!(v[0]["Path"], "/app/testserver", "{v}");
    assert_eq!(v[0]["Config"]["Entrypoint"][0], "/app/testserver", "{v}");
    // ... and of a container that runs its image's default Cmd.
    c.rctl_ok(&[
        "run",
        "-d",
        "--name",
        "b1",
        &format!("{reg}/rctl/busybox:latest"),
    ]);
    let v: Value = serde_json::from_str(&c.rctl_ok(&["inspect", "b1"])).unwrap();
    assert_eq!(v[0]["Config"]["Cmd"], serde_json::json!(["sh"]), "{v}");
    assert_eq!(v[0]["Path"], "sh", "{v}");
    c.rctl_ok(&["rm", "-f", "b1"]);

    // Who made a revision when $USER (and $LOGNAME) are unset: the login name, not "unknown".
    let out = c.rctl_env(
        &c.addr(),
        &[
            "rollout",
            "start",
            "web",
            "--image",
            &format!("{reg}/rctl/testserver:v2"),
        ],
        &[("USER", ""), ("LOGNAME", "")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let h: Vec<Value> =
        serde_json::from_str(&c.rctl_ok(&["rollout", "history", "web", "-o", "json"])).unwrap();
    let account = String::from_utf8_lossy(
        &std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    assert_eq!(h.last().unwrap()["who"], account.as_str(), "{h:#?}");

    // The daemons' logs go to files: plain text, no colour codes.
    let logs = c.logs();
    assert!(logs.contains("--- "), "no daemon logs found");
    assert!(
        !logs.contains('\u{1b}'),
        "ANSI codes in daemon logs:\n{logs}"
    );

    c.rctl_ok(&["service", "rm", "web"]);
    c.down_leaving_nothing();
}
