//! End-to-end: what a careless or hostile user does to the agent's containers (issue 22),
//! on a real cluster. Removal ends every process of a container, however early it comes
//! (`service rm` right after `apply`, `run --rm` of a command that cannot start), and
//! leaves no directory, cgroup or process behind. A `run` that cannot start fails at once
//! with the reason and Docker's code (125, 126, 127). `logs -f` follows a one-off container
//! until it exits. A node below its disk reserve refuses new containers.

use std::path::PathBuf;
use std::time::Duration;

use rctl_tests::cluster::Cluster;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every v1 hierarchy (or the v2 root) that holds container cgroups.
fn cgroup_roots() -> Vec<PathBuf> {
    ["pids", "memory", "cpu", "cpuacct", "unified"]
        .iter()
        .map(|h| PathBuf::from("/sys/fs/cgroup").join(h))
        .filter(|p| p.is_dir())
        .collect()
}

/// The pids in `dir`'s cgroup and every cgroup below it.
fn pids_below(dir: &std::path::Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    pids
}

/// What containers of host `host` left behind: entries of its containers directory,
/// container cgroups, and processes of the container images (the test server, busybox
/// applets) anywhere in the host's cgroup tree. Empty when nothing is left.
fn leftovers(c: &Cluster, host: &str) -> Vec<String> {
    let mut left = Vec::new();
    let containers = c.state.join(host).join("containers");
    if let Ok(rd) = std::fs::read_dir(&containers) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name != ".trash" {
                left.push(format!("directory {name}"));
            }
        }
    }
    let host_cg = format!("rctl-local/{}-{host}", c.name);
    for root in cgroup_roots() {
        let parent = root.join(&host_cg).join("containers");
        if let Ok(rd) = std::fs::read_dir(&parent) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                left.push(format!("cgroup {}", e.path().display()));
            }
        }
        for pid in pids_below(&root.join(&host_cg)) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let Ok(root_of) = std::fs::read_link(format!("/proc/{pid}/root")) else {
                continue; // gone meanwhile
            };
            // The agent, its shims and the tools it runs share the host's root; a
            // container's processes have their own (and the test server its name).
            let entry = format!("process {pid} ({})", comm.trim());
            if (comm.trim() == "testserver" || root_of != std::path::Path::new("/"))
                && !left.contains(&entry)
            {
                left.push(entry);
            }
        }
    }
    left
}

/// Waits until host `host` has nothing left of any container.
fn nothing_left(c: &Cluster, host: &str, what: &str) {
    rctl_tests::cluster::eventually(
        WAIT,
        what,
        || leftovers(c, host).is_empty().then_some(()),
        || format!("left: {:?}\n{}", leftovers(c, host), c.logs()),
    );
}

fn all_containers(c: &Cluster) -> Vec<Value> {
    c.ps(&["-a"])
        .into_iter()
        .filter(|v| v["kind"] == "container")
        .collect()
}

#[test]
fn removal_ends_every_process_of_a_container_however_early_it_comes() {
    let c = Cluster::start(1);
    let ts = format!("{}/rctl/testserver:v1", c.registry());
    let bb = format!("{}/rctl/busybox:latest", c.registry());
    // Pull once, so every create below is quick and removals land mid-start.
    c.rctl_ok(&["run", "--rm", &bb, "true"]);
    nothing_left(&c, "h1", "the first --rm container gone");

    // `apply` then `service rm` at once and at growing distances: the removal lands in the
    // create, in the start and in supervision.
    let file = c.service_file("web.toml", &c.web_service(2, "v1"));
    let file = file.to_str().unwrap();
    for pause_ms in [
        0u64, 0, 50, 100, 150, 200, 300, 400, 500, 700, 900, 1200, 1500,
    ] {
        c.rctl_ok(&["apply", "-f", file]);
        std::thread::sleep(Duration::from_millis(pause_ms));
        c.rctl_ok(&["service", "rm", "web"]);
    }
    c.eventually(WAIT, "every task gone from ps -a", || {
        c.ps(&["-a"]).is_empty().then_some(())
    });
    nothing_left(&c, "h1", "service rm soon after apply leaves nothing");

    // A container whose command cannot start, with --rm: nothing is left. Without --rm it
    // stays (exited, with its reason) until `rm`, which then leaves nothing.
    for argv in [
        vec![ts.as_str(), "/nonexistent-cmd"],
        vec!["--user", "nosuchuser", ts.as_str()],
        vec![bb.as_str(), "/etc/passwd"],
    ] {
        let mut args = vec!["run", "--rm"];
        args.extend(&argv);
        let out = c.rctl(&args);
        assert_ne!(out.status.code(), Some(0), "{argv:?}: {}", stderr(&out));
        nothing_left(&c, "h1", &format!("run --rm {argv:?} leaves nothing"));
        assert!(all_containers(&c).is_empty(), "{argv:?}");

        let mut args = vec!["run", "-d", "--name", "failed"];
        args.extend(&argv);
        let _ = c.rctl(&args);
        c.eventually(WAIT, "the failed container listed", || {
            (all_containers(&c).len() == 1).then_some(())
        });
        c.rctl_ok(&["rm", "-f", "failed"]);
        nothing_left(&c, "h1", &format!("rm of {argv:?} leaves nothing"));
    }

    // Stopped (without rm) right after run: no process of it keeps running.
    for _ in 0..3 {
        c.rctl_ok(&["run", "-d", "--name", "early", &ts]);
        c.rctl_ok(&["stop", "early"]);
        c.rctl_ok(&["rm", "early"]);
    }
    nothing_left(&c, "h1", "stop right after run leaves nothing");
    c.down_leaving_nothing();
}

/// A `run` that cannot create or start its container fails at once, in the foreground and
/// with -d, with the real reason on one line and Docker's codes: 125 cannot be created or
/// started, 126 the command cannot be invoked, 127 it is not found.
#[test]
fn run_that_cannot_start_fails_with_the_reason_and_dockers_code() {
    let c = Cluster::start(1);
    let ts = format!("{}/rctl/testserver:v1", c.registry());
    let bb = format!("{}/rctl/busybox:latest", c.registry());
    // Both images here, so what stderr says is only the failure.
    c.rctl_ok(&["pull", &bb]);
    c.rctl_ok(&["pull", &ts]);
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["-v", "/nonexistent:/data", &bb, "true"],
            125,
            "bind source /nonexistent does not exist",
        ),
        (
            &["-m", "1k", &bb, "true"],
            125,
            "below the minimum of 6 MiB",
        ),
        (&["--user", "nosuchuser", &ts], 125, "nosuchuser"),
        (&[&bb, "/nonexistent-cmd"], 127, "/nonexistent-cmd"),
        (&[&bb, "/etc/passwd"], 126, "/etc/passwd"),
    ];
    for (i, (args, code, why)) in cases.iter().enumerate() {
        for detach in [false, true] {
            let name = format!("f{i}{}", if detach { "d" } else { "" });
            let mut argv = vec!["run", "--name", name.as_str()];
            if detach {
                argv.push("-d");
            }
            argv.extend(args.iter());
            let out = c.rctl(&argv);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(*code), "{argv:?}: {err}");
            assert!(err.contains(why), "{argv:?}: the reason: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{argv:?}: one line: {err}");
            assert!(
                !err.contains("no container"),
                "{argv:?}: not an unrelated error: {err}"
            );
            if detach {
                assert!(
                    String::from_utf8_lossy(&out.stdout).trim().is_empty(),
                    "{argv:?}: no id for a container that did not start"
                );
            }
            let _ = c.rctl(&["rm", "-f", &name]);
        }
    }
    nothing_left(&c, "h1", "failed runs leave nothing once removed");
    c.down_leaving_nothing();
}

/// `logs -f` of a one-off container follows it until it exits, then ends with 0, as
/// `docker logs -f` does (it used to print what there was and end at once).
#[test]
fn logs_follow_a_one_off_container_until_it_exits() {
    use std::io::BufRead;
    let c = Cluster::start(1);
    let bb = format!("{}/rctl/busybox:latest", c.registry());
    // Prints one line, waits for the test's go, prints another and exits.
    c.rctl_ok(&[
        "run",
        "-d",
        "--name",
        "talker",
        &bb,
        "sh",
        "-c",
        "echo one; while [ ! -f /tmp/go ]; do sleep 0.1; done; echo two",
    ]);
    let mut logs = std::process::Command::new(c.bin().join("rctl"))
        .args(["logs", "-f", "talker"])
        .env("RCTL_ADDR", c.addr())
        .env("RCTL_INSECURE", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start rctl logs -f");
    let mut lines = std::io::BufReader::new(logs.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("one"));
    c.rctl_ok(&["exec", "talker", "touch", "/tmp/go"]);
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("two"),
        "logs -f still follows after the first line"
    );
    assert!(lines.next().is_none(), "nothing after the container exited");
    let status = logs.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "logs -f ends with 0 once the container exited"
    );

    // Of a container that exited already: its log, then the end.
    let out = c.rctl(&["logs", "-f", "talker"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    c.rctl_ok(&["rm", "-f", "talker"]);
    c.down_leaving_nothing();
}

/// A node whose disk is below its reserve refuses new containers with the reason (Docker's
/// 125 for `run`), and leaves nothing behind; what runs keeps running.
#[test]
fn a_node_below_its_disk_reserve_refuses_new_containers() {
    // More than any disk here has free: every new container is refused.
    let c = Cluster::start_with_disk_reserve(1, "1000TiB");
    let bb = format!("{}/rctl/busybox:latest", c.registry());
    for detach in [false, true] {
        let mut args = vec!["run"];
        if detach {
            args.push("-d");
        }
        args.extend([bb.as_str(), "true"]);
        let out = c.rctl(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(
            err.contains("node h1 has") && err.contains("below its reserve of 1000.0 TiB"),
            "{args:?}: {err}"
        );
        assert!(all_containers(&c).is_empty(), "{args:?}: nothing created");
    }
    nothing_left(&c, "h1", "a refused run leaves nothing");
    c.down_leaving_nothing();
}
