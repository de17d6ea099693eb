//! End-to-end: the byte streams between a user's terminal and containers on any host of a
//! real 2-host cluster (issue 9): `logs` of a task and of a whole service (merged, prefixed,
//! --tail/--since/--timestamps), `logs -f` while an agent restarts, `exec` on the other host
//! (output, exit code, refusals), `exec -it` driven in tmux, `stats` and `top`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rctl_tests::cluster::Cluster;
use rctl_tests::tmux::Tmux;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// Three busybox replicas, each printing `n=0`, `n=1`, ... every 0.2 s.
fn tick_service(c: &Cluster) -> std::path::PathBuf {
    c.service_file(
        "tick.toml",
        &format!(
            r#"name = "tick"
image = "{reg}/rctl/busybox:latest"
replicas = 3
command = ["sh", "-c", "i=0; while true; do echo n=$i; i=$((i+1)); sleep 0.2; done"]
"#,
            reg = c.registry()
        ),
    )
}

/// The running tasks of `service`: (id, name, node), by name.
fn tasks(c: &Cluster, service: &str) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = c
        .ps(&["--service", service])
        .iter()
        .filter(|t| t["state"] == "running")
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
            (s("id"), s("name"), s("node"))
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// The counter of a `n=K` line.
fn counter(line: &str) -> Option<u64> {
    line.trim().strip_prefix("n=")?.parse().ok()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn logs_exec_stats_and_top_reach_containers_on_both_hosts() {
    let c = Cluster::start(2);
    c.apply_and_wait(&tick_service(&c));
    let ts = tasks(&c, "tick");
    assert_eq!(ts.len(), 3, "{ts:?}");
    let (remote_id, remote_name, _) = ts
        .iter()
        .find(|t| t.2 == "h2")
        .cloned()
        .expect("a task on h2");
    // Let every replica write a few lines.
    c.eventually(WAIT, "five lines from every replica", || {
        ts.iter()
            .all(|t| stdout(&c.rctl(&["logs", &t.0])).lines().count() >= 5)
            .then_some(())
    });

    // One task by name: its own lines, no prefix, counting from 0 without a gap.
    let one = c.rctl_ok(&["logs", &remote_name]);
    let nums: Vec<u64> = one.lines().map(|l| counter(l).expect(l)).collect();
    assert_eq!(nums[..5], [0, 1, 2, 3, 4], "{one}");
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{one}");

    // The whole service: all three, each line prefixed `NAME.ID@NODE | `.
    let all = c.rctl_ok(&["logs", "tick"]);
    let mut per: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for l in all.lines() {
        let (prefix, text) = l.split_once(" | ").unwrap_or_else(|| panic!("{l:?}"));
        per.entry(prefix.to_string())
            .or_default()
            .push(counter(text).expect(text));
    }
    let want: Vec<String> = ts
        .iter()
        .map(|(id, name, node)| format!("{name}.{}@{node}", &id[..12.min(id.len())]))
        .collect();
    assert_eq!(
        per.keys().cloned().collect::<Vec<_>>(),
        want,
        "prefixes: {all}"
    );
    for (p, nums) in &per {
        assert!(nums.len() >= 5 && nums[0] == 0, "{p}: {nums:?}");
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{p}: {nums:?}");
    }

    // --tail, --timestamps and --since.
    let tail = c.rctl_ok(&["logs", "--tail", "2", &remote_id]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    let stamped = c.rctl_ok(&["logs", "-t", &remote_id]);
    let lines: Vec<(String, u64)> = stamped
        .lines()
        .map(|l| {
            let (t, text) = l.split_once(' ').expect(l);
            humantime::parse_rfc3339(t).unwrap_or_else(|e| panic!("{t}: {e}"));
            (t.to_string(), counter(text).expect(text))
        })
        .collect();
    let (since, from) = lines[3].clone();
    let after = c.rctl_ok(&["logs", "--since", &since, &remote_id]);
    assert_eq!(
        after.lines().next().and_then(counter),
        Some(from),
        "--since {since}: {after}"
    );
    let recent = c.rctl_ok(&["logs", "--since", "1h", &remote_id]);
    assert_eq!(recent.lines().next().and_then(counter), Some(0));

    // exec on the other host: output and exit code come back.
    let out = c.rctl(&[
        "exec",
        &remote_name,
        "sh",
        "-c",
        "echo on $(hostname); exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("on {}", &remote_id[..12.min(remote_id.len())])
    );
    let out = c.rctl(&["exec", &remote_id, "nosuchcommand"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    // stdin with -i.
    let mut child = Command::new(c.bin().join("rctl"))
        .args(["exec", "-i", &remote_name, "cat"])
        .env("RCTL_ADDR", c.addr())
        .env("RCTL_INSECURE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"through stdin\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(0), "through stdin\n")
    );

    // attach on the other host: the container's output from now on.
    let attach = Follow::run(&c, &["attach", &remote_name]);
    c.eventually(WAIT, "attached output", || {
        let lines = attach.lines.lock().unwrap().clone();
        let nums: Vec<u64> = lines.iter().filter_map(|l| counter(l)).collect();
        (nums.len() >= 3).then_some(nums)
    });
    let seen: Vec<u64> = attach
        .lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| counter(l).unwrap_or_else(|| panic!("{l:?}")))
        .collect();
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
    drop(attach);

    // stats: every running container, memory and pids as a user sees them.
    let stats: Vec<Value> =
        serde_json::from_str(&c.rctl_ok(&["stats", "--no-stream", "-o", "json"])).unwrap();
    assert_eq!(stats.len(), 3, "{stats:#?}");
    for (id, name, node) in &ts {
        let s = stats
            .iter()
            .find(|s| s["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} in {stats:#?}"));
        assert_eq!(
            (s["name"].as_str(), s["node"].as_str()),
            (Some(name.as_str()), Some(node.as_str()))
        );
        assert!(s["memory_bytes"].as_u64().unwrap() > 0, "{s}");
        assert!(s["memory_limit"].as_u64().unwrap() > 0, "{s}");
        assert!(s["pids"].as_u64().unwrap() >= 1, "{s}");
    }
    let table = c.rctl_ok(&["stats", "--no-stream", &remote_name]);
    assert!(table.starts_with("CONTAINER"), "{table}");
    assert!(
        table.contains(&remote_name) && table.contains("h2"),
        "{table}"
    );

    // top: the container's processes.
    let top = c.rctl_ok(&["top", &remote_name]);
    assert!(top.starts_with("PID"), "{top}");
    assert!(top.contains("sh -c i=0"), "{top}");
    assert!(top.contains("root"), "{top}");

    // Bad input: one clear line, the right exit code.
    let out = c.rctl(&["exec", &remote_name]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = c.rctl(&["exec", "nosuch", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no container"), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let out = c.rctl(&["logs", "nosuch"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let out = c.rctl(&["logs", "--tail", "x", "tick"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = c.rctl(&["exec", "tick", "true"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a service is not a container: {}",
        stderr(&out)
    );

    // A task retired by a scale-down is not running: exec is refused, in one line.
    c.rctl_ok(&["scale", "tick=2", "--wait", "--timeout", "90s"]);
    let retired = c
        .ps(&["-a", "--service", "tick"])
        .into_iter()
        .find(|t| t["desired"] == "shutdown")
        .expect("a retired task");
    let out = c.rctl(&["exec", retired["id"].as_str().unwrap(), "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not running"), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    c.down_leaving_nothing();
}

/// `rctl logs -f` run in the background, its lines collected by a thread.
struct Follow {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Follow {
    fn start(c: &Cluster, target: &str) -> Follow {
        Follow::run(c, &["logs", "-f", target])
    }

    /// `rctl ARGS` in the background, stdin closed.
    fn run(c: &Cluster, args: &[&str]) -> Follow {
        let mut child = Command::new(c.bin().join("rctl"))
            .args(args)
            .stdin(Stdio::null())
            .env("RCTL_ADDR", c.addr())
            .env("RCTL_INSECURE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rctl logs -f");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        Follow { child, lines }
    }

    /// Counters seen so far, per task prefix.
    fn per_task(&self) -> BTreeMap<String, Vec<u64>> {
        let mut per: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for l in self.lines.lock().unwrap().iter() {
            if let Some((p, text)) = l.split_once(" | ") {
                if let Some(n) = counter(text) {
                    per.entry(p.to_string()).or_default().push(n);
                }
            }
        }
        per
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        // Our own child, by pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn logs_follow_of_a_service_keeps_every_replica_through_an_agent_restart_and_picks_up_new_ones() {
    let c = Cluster::start(2);
    c.apply_and_wait(&tick_service(&c));
    let ts = tasks(&c, "tick");
    assert_eq!(ts.len(), 3, "{ts:?}");
    let follow = Follow::start(&c, "tick");
    c.eventually(WAIT, "lines from all three replicas", || {
        let per = follow.per_task();
        (per.len() == 3 && per.values().all(|v| v.len() >= 3)).then_some(())
    });
    let host = ts[0].2.clone();
    c.kill_agent(&host);
    std::thread::sleep(Duration::from_secs(2));
    c.restart_agent(&host);
    let at_restart: BTreeMap<String, u64> = follow
        .per_task()
        .into_iter()
        .map(|(p, v)| (p, *v.last().unwrap()))
        .collect();
    // Every replica, on both hosts, keeps coming: 15 more lines (3 s) each.
    c.eventually(
        WAIT,
        "new lines from every replica after the restart",
        || {
            let per = follow.per_task();
            at_restart
                .iter()
                .all(|(p, last)| {
                    per.get(p)
                        .and_then(|v| v.last())
                        .is_some_and(|n| *n >= last + 15)
                })
                .then_some(())
        },
    );
    // A task placed while following (scale-up) is picked up from its first line.
    c.rctl_ok(&["scale", "tick=4", "--wait", "--timeout", "90s"]);
    c.eventually(WAIT, "lines from the fourth replica", || {
        let per = follow.per_task();
        (per.len() == 4 && per.values().all(|v| v.len() >= 3)).then_some(())
    });
    let per = follow.per_task();
    assert_eq!(per.len(), 4, "{per:?}");
    for (p, nums) in &per {
        // Not one line twice, not one lost: the counter goes up by one, line after line.
        assert_eq!(nums[0], 0, "{p}");
        assert!(
            nums.windows(2).all(|w| w[1] == w[0] + 1),
            "{p} has a repeat or a gap: {nums:?}"
        );
    }
    drop(follow);
    c.down_leaving_nothing();
}

#[test]
fn exec_it_in_tmux_is_a_real_terminal() {
    let c = Cluster::start(2);
    c.apply_and_wait(&tick_service(&c));
    let ts = tasks(&c, "tick");
    let (_, name, _) = ts
        .iter()
        .find(|t| t.2 == "h2")
        .cloned()
        .expect("a task on h2");
    let command = format!(
        "env RCTL_ADDR='{addr}' RCTL_INSECURE=1 '{rctl}' exec -it {name} sh",
        addr = c.addr(),
        rctl = c.bin().join("rctl").display(),
    );
    let tmux = Tmux::start("streams", &command);
    assert_eq!(tmux.drive_shell(), 3);
    drop(tmux);
    c.down_leaving_nothing();
}
