//! End-to-end: one-off containers (`rctl run`, issue 9) on a real 2-host cluster: run -d on
//! each host, ps (table, json, -q, --filter), logs and exec through the scheduler, a
//! published port, stop/start/restart/kill -s/rename/port/inspect, rm -f, the foreground
//! `run --rm` exit code, `run -it` in a real terminal (tmux), `run --rm -p` leaving nothing
//! behind, and bad input (name conflict, port taken, bad port spec, relative
//! -v, unknown flag, exec into a stopped container) refused with one line, changing nothing;
//! `run` of an image its node lacks shows the pull first, and a failed pull leaves nothing;
//! `-v /DST` makes an anonymous volume that `rm -v` and `--rm` remove, a named one stays.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use rctl_tests::cluster::{http_get, Cluster};
use rctl_tests::tmux::Tmux;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The one-off containers `ps ARGS -o json` lists, by name.
fn containers(c: &Cluster, extra: &[&str]) -> Vec<Value> {
    c.ps(extra)
        .into_iter()
        .filter(|v| v["kind"] == "container")
        .collect()
}

fn find<'a>(all: &'a [Value], name: &str) -> Option<&'a Value> {
    all.iter().find(|v| v["name"] == name)
}

/// Waits until container `name` is in `state` (`ps -a`).
fn wait_state(c: &Cluster, name: &str, state: &str) -> Value {
    c.eventually(WAIT, &format!("{name} {state}"), || {
        find(&containers(c, &["-a"]), name)
            .filter(|v| v["state"] == state)
            .cloned()
    })
}

/// Asserts a refusal: exit `code`, exactly one line on stderr containing `what`.
fn refused(out: &std::process::Output, code: i32, what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(what), "{err:?} should say {what:?}");
}

#[test]
fn containers_run_on_either_host_and_follow_their_lifecycle() {
    let c = Cluster::start(2);
    let bb = format!("{}/rctl/busybox:latest", c.registry());
    let ts = format!("{}/rctl/testserver:v1", c.registry());

    let a1 = c.rctl_ok(&[
        "run",
        "-d",
        "--name",
        "sleeper",
        "--node",
        "h1",
        &bb,
        "sh",
        "-c",
        "trap 'exit 42' TERM; echo hello-sleeper; while true; do sleep 0.2; done",
    ]);
    let a1 = a1.trim().to_string();
    assert!(
        a1.len() >= 12 && a1.bytes().all(|b| b.is_ascii_hexdigit()),
        "{a1:?}"
    );
    c.rctl_ok(&[
        "run",
        "-d",
        "--name",
        "talker",
        "--node",
        "h2",
        &bb,
        "sh",
        "-c",
        "echo hello-talker; exec sleep 1000",
    ]);
    c.rctl_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--node",
        "h2",
        "-p",
        "18080:8080",
        &ts,
    ]);
    for n in ["sleeper", "talker", "web"] {
        wait_state(&c, n, "running");
    }

    // ps: json, table, -q, --filter.
    let all = containers(&c, &[]);
    assert_eq!(find(&all, "sleeper").unwrap()["node"], "h1");
    assert_eq!(find(&all, "talker").unwrap()["node"], "h2");
    assert_eq!(
        find(&all, "web").unwrap()["ports"][0],
        "0.0.0.0:18080->8080/tcp"
    );
    assert!(find(&all, "sleeper").unwrap()["status"]
        .as_str()
        .unwrap()
        .starts_with("Up "));
    let table = c.rctl_ok(&["ps"]);
    assert!(table.starts_with("CONTAINER ID"), "{table}");
    assert!(
        table.contains("NAMES") && table.contains("talker") && table.contains("Up "),
        "{table}"
    );
    let quiet = c.rctl_ok(&["ps", "-q"]);
    assert!(quiet.lines().any(|l| a1.starts_with(l.trim())), "{quiet}");
    let only = containers(&c, &["--filter", "name=talker"]);
    assert_eq!(only.len(), 1, "{only:?}");
    let on_h2 = containers(&c, &["--filter", "node=h2"]);
    assert_eq!(on_h2.len(), 2, "{on_h2:?}");

    // logs and exec, through the scheduler, on the other host.
    c.eventually(WAIT, "talker's first line", || {
        stdout(&c.rctl(&["logs", "talker"]))
            .contains("hello-talker")
            .then_some(())
    });
    let out = c.rctl(&["exec", "talker", "sh", "-c", "echo in-talker; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(stdout(&out), "in-talker\n");

    // The published port answers on h2's address.
    let addr: SocketAddr = format!("198.18.{}.12:18080", c.net).parse().unwrap();
    let r = c.eventually(WAIT, "web answers on the published port", || {
        http_get(addr, "/").ok()
    });
    assert_eq!(r.status, 200);
    assert!(r.body.contains("version=v1"), "{}", r.body);
    assert_eq!(
        c.rctl_ok(&["port", "web"]).trim(),
        "8080/tcp -> 0.0.0.0:18080"
    );

    // inspect: Docker's shape.
    let v: Value = serde_json::from_str(&c.rctl_ok(&["inspect", "talker"])).unwrap();
    let v = &v[0];
    assert_eq!(v["Name"], "talker");
    assert_eq!(v["Node"], "h2");
    assert_eq!(v["State"]["Running"], true);
    assert_eq!(v["Config"]["Image"], bb.as_str());
    assert_eq!(v["Args"][0], "-c");

    // stop: exited, gone from ps without -a; exec refused; start again, the log continues.
    assert_eq!(c.rctl_ok(&["stop", "-t", "1", "talker"]).trim(), "talker");
    let st = wait_state(&c, "talker", "exited");
    assert!(
        st["status"].as_str().unwrap().starts_with("Exited ("),
        "{st}"
    );
    assert!(find(&containers(&c, &[]), "talker").is_none());
    refused(&c.rctl(&["exec", "talker", "true"]), 1, "not running");
    assert_eq!(c.rctl_ok(&["start", "talker"]).trim(), "talker");
    wait_state(&c, "talker", "running");
    c.eventually(WAIT, "talker's second start in its log", || {
        (stdout(&c.rctl(&["logs", "talker"]))
            .matches("hello-talker")
            .count()
            == 2)
            .then_some(())
    });
    assert_eq!(
        c.rctl_ok(&["restart", "-t", "1", "talker"]).trim(),
        "talker"
    );
    wait_state(&c, "talker", "running");

    // kill -s TERM reaches PID 1 (its trap exits 42).
    c.rctl_ok(&["kill", "-s", "TERM", "sleeper"]);
    let k = c.eventually(WAIT, "sleeper killed", || {
        find(&containers(&c, &["-a"]), "sleeper")
            .filter(|v| v["state"] == "exited" || v["state"] == "failed")
            .cloned()
    });
    assert_eq!(k["exit_code"], 42, "{k}");
    refused(&c.rctl(&["kill", "sleeper"]), 1, "not running");

    // rename: the new name works, the old one names nothing.
    c.rctl_ok(&["rename", "sleeper", "sleepy"]);
    assert_eq!(
        find(&containers(&c, &["-a"]), "sleepy").unwrap()["id"],
        a1.as_str()
    );
    refused(&c.rctl(&["stop", "sleeper"]), 1, "\"sleeper\"");

    // Refused (a name in use: run's 125, as Docker's) or bad input (exit 2): one line,
    // nothing created.
    let before = containers(&c, &["-a"]).len();
    refused(
        &c.rctl(&["run", "-d", "--name", "talker", &bb, "true"]),
        125,
        "already in use",
    );
    refused(
        &c.rctl(&[
            "run", "-d", "--node", "h2", "-p", "18080:80", &bb, "sleep", "9",
        ]),
        125,
        "port 18080 is already allocated on node h2",
    );
    refused(
        &c.rctl(&["run", "-d", "-p", "80", &bb]),
        2,
        "invalid port spec",
    );
    refused(
        &c.rctl(&["run", "-d", "-v", "./data:/data", &bb]),
        2,
        "absolute path",
    );
    refused(&c.rctl(&["run", "--bogus", &bb]), 2, "--bogus");
    assert_eq!(containers(&c, &["-a"]).len(), before);

    // rm: a running one needs -f; each target is done or reported, exit 1 if any failed.
    refused(&c.rctl(&["rm", "talker"]), 1, "stop it first");
    let out = c.rctl(&["rm", "-f", "talker", "nosuch", "sleepy", "web"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out), "talker\nsleepy\nweb\n");
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));
    assert!(containers(&c, &["-a"]).is_empty());
    c.eventually(WAIT, "the published port closed", || {
        http_get(addr, "/").is_err().then_some(())
    });
    c.eventually(WAIT, "sleeper's directory removed", || {
        (!c.container_dir("h1", &a1).exists()).then_some(())
    });
}

#[test]
fn run_in_the_foreground_returns_the_exit_code_and_rm_leaves_nothing() {
    let c = Cluster::start(2);
    let bb = format!("{}/rctl/busybox:latest", c.registry());

    let out = c.rctl(&["run", "--rm", &bb, "sh", "-c", "echo out-line; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(stdout(&out), "out-line\n");
    c.eventually(WAIT, "the --rm container gone", || {
        containers(&c, &["-a"]).is_empty().then_some(())
    });

    // Without --rm it stays, exited with its code.
    let out = c.rctl(&[
        "run", "--name", "fg", "--node", "h2", &bb, "sh", "-c", "exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let v = wait_state(&c, "fg", "failed");
    assert!(
        v["status"].as_str().unwrap().starts_with("Exited (3)"),
        "{v}"
    );
    // system prune removes a stopped container everywhere: its keys, its name, its dir.
    let fg_id = v["id"].as_str().unwrap().to_string();
    let out = c.rctl_ok(&["system", "prune", "-f"]);
    assert!(
        out.contains(&format!("h2: deleted container: {fg_id}")),
        "{out}"
    );
    assert!(containers(&c, &["-a"]).is_empty());
    c.eventually(WAIT, "the pruned container's directory removed", || {
        (!c.container_dir("h2", &fg_id).exists()).then_some(())
    });
    let out = c.rctl(&["inspect", "fg"]);
    assert_ne!(out.status.code(), Some(0), "fg is gone: {}", stdout(&out));

    // run -it: a real terminal on the other host's container (prompt, 42, resize, exit 3).
    let tmux = Tmux::start(
        "containers",
        &format!(
            "env RCTL_ADDR='{addr}' RCTL_INSECURE=1 '{rctl}' run -it --rm --node h2 {bb} sh",
            addr = c.addr(),
            rctl = c.bin().join("rctl").display(),
        ),
    );
    assert_eq!(tmux.drive_shell(), 3);
    drop(tmux);
    c.eventually(WAIT, "the run -it --rm container gone", || {
        containers(&c, &["-a"]).is_empty().then_some(())
    });

    // run --rm -p in the foreground: it answers on the published port (the host's address,
    // and 127.0.0.1 inside that host); SIGTERM to rctl stops it; then nothing is left.
    let in_h1 = |args: &[&str]| c.in_host("h1", args);
    let veths = in_h1(&["ip", "-o", "link", "show", "type", "veth"]);
    let ts = format!("{}/rctl/testserver:v1", c.registry());
    let mut fg = Command::new(c.bin().join("rctl"))
        .args(["run", "--rm", "--node", "h1", "-p", "18081:8080", &ts])
        .env("RCTL_ADDR", c.addr())
        .env("RCTL_INSECURE", "1")
        .stdout(Stdio::null())
        .spawn()
        .expect("start rctl run");
    let addr: SocketAddr = format!("198.18.{}.11:18081", c.net).parse().unwrap();
    let r = c.eventually(
        WAIT,
        "the foreground container on its published port",
        || http_get(addr, "/").ok(),
    );
    assert_eq!(r.status, 200);
    let loopback = c.eventually(WAIT, "127.0.0.1:18081 inside h1", || {
        let body = in_h1(&["curl", "-fsS", "-m", "5", "http://127.0.0.1:18081/"]);
        body.contains("version=v1").then_some(body)
    });
    assert!(loopback.starts_with("version=v1"), "{loopback}");
    let id = containers(&c, &[])[0]["id"].as_str().unwrap().to_string();
    assert!(c.container_dir("h1", &id).exists());
    // Ends only the rctl process this test started, by its pid.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(fg.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = fg.wait().unwrap();
    assert_eq!(status.code(), Some(0), "the test server exits 0 on SIGTERM");
    c.eventually(WAIT, "the foreground --rm container gone", || {
        containers(&c, &["-a"]).is_empty().then_some(())
    });
    c.eventually(
        WAIT,
        "its directory, veth, port rule and mounts gone",
        || {
            let dir = c.container_dir("h1", &id);
            let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
            (!dir.exists()
                && in_h1(&["ip", "-o", "link", "show", "type", "veth"]) == veths
                && !in_h1(&["iptables", "-t", "nat", "-S"]).contains("18081")
                && !mounts.contains(dir.to_str().unwrap()))
            .then_some(())
        },
    );
    assert!(http_get(addr, "/").is_err());
    c.down_leaving_nothing();
}

#[test]
fn run_pulls_a_missing_image_with_progress_and_a_failed_pull_leaves_nothing() {
    let c = Cluster::start(1);
    let bb = format!("{}/rctl/busybox:latest", c.registry());

    // Not on h1 yet: Docker's lines and the layers' plain lines (stderr is not a
    // terminal here) come before the container runs; its output alone is on stdout.
    let out = c.rctl(&["run", "--rm", &bb, "echo", "ran-after-pull"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "stderr: {err}");
    assert_eq!(stdout(&out), "ran-after-pull\n");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("Unable to find image '{bb}' locally").as_str()),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(": pull complete")),
        "a layer line: {err}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("Digest: sha256:")),
        "{err}"
    );
    assert_eq!(
        lines.last().copied(),
        Some(format!("Status: Downloaded newer image for {bb}").as_str()),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "no terminal codes: {err:?}");

    // On the node now: nothing is pulled or said, -d prints the id alone.
    let out = c.rctl(&["run", "-d", "--name", "second", &bb, "true"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let id = stdout(&out);
    assert!(
        id.trim().len() >= 12 && id.trim().bytes().all(|b| b.is_ascii_hexdigit()),
        "{id:?}"
    );

    // Not in the registry: Docker's first line, then one error, exit 1, and no container.
    let missing = format!("{}/rctl/nope:1", c.registry());
    let out = c.rctl(&["run", "-d", "--name", "ghost", &missing, "true"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(stdout(&out), "", "no id for a container that is not there");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert_eq!(
        lines[0],
        format!("Unable to find image '{missing}' locally")
    );
    assert!(
        lines[1].starts_with("error: ") && lines[1].contains("rctl/nope"),
        "{err}"
    );
    assert!(
        find(&containers(&c, &["-a"]), "ghost").is_none(),
        "nothing left: {:?}",
        containers(&c, &["-a"])
    );
    assert!(find(&containers(&c, &["-a"]), "second").is_some());
}

/// `ROOT/volumes` of host `host`'s agent.
fn volumes_root(c: &Cluster, host: &str) -> std::path::PathBuf {
    let containers = c.container_dir(host, "x");
    let root = containers
        .parent()
        .and_then(|p| p.parent())
        .expect("ROOT/containers/x");
    root.join("volumes")
}

/// The volumes under host `host`'s agent root, by name.
fn volumes(c: &Cluster, host: &str) -> std::collections::BTreeSet<String> {
    let dir = volumes_root(c, host);
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn anonymous_volumes_go_with_rm_v_and_named_ones_stay() {
    let c = Cluster::start(1);
    let bb = format!("{}/rctl/busybox:latest", c.registry());
    let volume_dir = |name: &str| volumes_root(&c, "h1").join(name);
    let run = |name: &str, args: &[&str]| {
        let mut all = vec!["run", "-d", "--name", name];
        all.extend_from_slice(args);
        let id = c.rctl_ok(&all).trim().to_string();
        wait_state(&c, name, "exited");
        id
    };
    let script = "echo a > /data/f; echo n > /keep/g";

    // -v /data: a volume of its own, named like Docker's (64 hex digits).
    let kept = run(
        "kept",
        &["-v", "/data", "-v", "named:/keep", &bb, "sh", "-c", script],
    );
    let after_first = volumes(&c, "h1");
    let anon: Vec<&String> = after_first.iter().filter(|v| *v != "named").collect();
    assert_eq!(anon.len(), 1, "{after_first:?}");
    let first = anon[0].clone();
    assert!(
        first.len() == 64 && first.bytes().all(|b| b.is_ascii_hexdigit()),
        "{first}"
    );
    assert_eq!(
        std::fs::read_to_string(volume_dir(&first).join("_data/f")).unwrap(),
        "a\n"
    );
    // rm without -v keeps it.
    c.rctl_ok(&["rm", "kept"]);
    c.eventually(WAIT, "kept's directory removed", || {
        (!c.container_dir("h1", &kept).exists()).then_some(())
    });
    assert!(
        volume_dir(&first).join("_data/f").exists(),
        "rm keeps volumes"
    );

    // rm -v removes the anonymous one; the named one stays, with what was written.
    run(
        "gone",
        &["-v", "/data", "-v", "named:/keep", &bb, "sh", "-c", script],
    );
    let second: Vec<String> = volumes(&c, "h1")
        .difference(&after_first)
        .cloned()
        .collect();
    assert_eq!(second.len(), 1, "one new anonymous volume: {second:?}");
    c.rctl_ok(&["rm", "-v", "gone"]);
    c.eventually(WAIT, "the anonymous volume removed", || {
        (!volume_dir(&second[0]).exists()).then_some(())
    });
    assert!(
        volume_dir(&first).exists(),
        "another container's volume stays"
    );
    assert_eq!(
        std::fs::read_to_string(volume_dir("named").join("_data/g")).unwrap(),
        "n\n"
    );

    // --rm takes its anonymous volume with it, as Docker's does.
    let before = volumes(&c, "h1");
    let out = c.rctl_ok(&[
        "run",
        "--rm",
        "-v",
        "/data",
        &bb,
        "sh",
        "-c",
        "echo r > /data/f; echo ok",
    ]);
    assert_eq!(out, "ok\n");
    c.eventually(WAIT, "--rm's anonymous volume removed", || {
        (volumes(&c, "h1") == before).then_some(())
    });
}
