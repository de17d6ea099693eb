//! End-to-end: a cluster whose agent runs with `--userns-remap 100000:65536` (issue 4).
//! `rctl run` gets a container whose root is uid 100000 on the host and root inside (the
//! image's files root's, /etc writable), `rctl exec` joins the same user namespace,
//! `--userns host` opts out, and a bad `--userns` is refused with one line.

use std::time::Duration;

use rctl_tests::cluster::Cluster;

const WAIT: Duration = Duration::from_secs(90);

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `0 100000 65536`: uid_map's columns with the padding squeezed.
const UID_MAP: &str = "tr -s ' ' < /proc/self/uid_map | sed 's/^ //'";

#[test]
fn a_remapping_agents_containers_run_in_a_user_namespace() {
    let c = Cluster::start_userns(1, "100000:65536");
    let bb = format!("{}/rctl/busybox:latest", c.registry());

    let script = format!("{UID_MAP}; stat -L -c %u /bin/sh; echo hi > /etc/x && echo wrote");
    let out = c.rctl(&["run", "--rm", &bb, "sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "0 100000 65536\n0\nwrote\n");

    c.rctl_ok(&["run", "-d", "--name", "remapped", &bb, "sleep", "300"]);
    let id = c.eventually(WAIT, "remapped running", || {
        c.ps(&["-a"])
            .into_iter()
            .find(|v| v["name"] == "remapped" && v["state"] == "running")
            .and_then(|v| v["id"].as_str().map(str::to_string))
    });
    let out = c.rctl(&["exec", "remapped", "sh", "-c", &format!("{UID_MAP}; id -u")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "0 100000 65536\n0\n");
    // The host sees PID 1 as the mapped root.
    let pid_file = std::fs::read_to_string(c.container_dir("h1", &id).join("pid")).unwrap();
    let pid = pid_file.split_whitespace().next().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>(),
        ["Uid:", "100000", "100000", "100000", "100000"]
    );
    c.rctl_ok(&["rm", "-f", "remapped"]);

    let out = c.rctl(&["run", "--rm", "--userns", "host", &bb, "sh", "-c", UID_MAP]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "0 0 4294967295\n");

    let out = c.rctl(&["run", "--rm", "--userns", "private", &bb, "true"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("invalid --userns \"private\""), "{err}");
}
