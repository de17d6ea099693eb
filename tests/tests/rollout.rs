//! Rollouts end to end (issue 8): a rolling update under constant load through rctl-lb (old
//! tasks drained by the LB before they are stopped), revision history with who/why, rollback
//! through the same path, canaries (bad, good, slow, starved, unstartable, leader killed
//! mid-step), and bad input.
//! Each test owns its cluster (namespaces, etcd, registry, scheduler, agents, rctl-lb).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use rctl_api::{codec, keys, pb};
use rctl_tests::cluster::{http_get, Cluster};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);
/// Bounds of the load loop: at most this many requests, and at most this long.
const LOAD_MAX_REQUESTS: usize = 12_000;
const LOAD_MAX_TIME: Duration = Duration::from_secs(120);

/// `web` with `[update]` and quick health checks, so the rollout is short.
fn web(c: &Cluster, replicas: u32, version: &str) -> String {
    format!(
        "{}\n[health]\nhttp = \"/\"\ninterval = \"200ms\"\ntimeout = \"1s\"\n\n[update]\nmax_surge = 1\nmax_unavailable = 0\ndrain = \"5s\"\n",
        c.web_service(replicas, version)
    )
}

/// What the load loop saw: the version of every answer in order, and every failure.
#[derive(Default)]
struct Seen {
    versions: Vec<String>,
    failures: Vec<String>,
}

/// Sends about 100 requests a second through rctl-lb until `stop` (or the bounds).
fn load(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let mut seen = Seen::default();
        let started = Instant::now();
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed)
            && seen.versions.len() + seen.failures.len() < LOAD_MAX_REQUESTS
            && started.elapsed() < LOAD_MAX_TIME
        {
            match http_get(addr, "/") {
                Ok(r) if r.status == 200 => {
                    let v = r
                        .body
                        .strip_prefix("version=")
                        .and_then(|b| b.split_whitespace().next())
                        .unwrap_or("?")
                        .to_string();
                    seen.versions.push(v);
                }
                Ok(r) => seen
                    .failures
                    .push(format!("{} {}", r.status, r.body.trim())),
                Err(e) => seen.failures.push(e.to_string()),
            }
            next += Duration::from_millis(10);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        seen
    })
}

/// Every etcd change under `/rctl/v1/` while it lives, recorded by an `etcdctl watch` child
/// (stopped by its pid on drop, so a failing test leaves no watcher behind).
struct EtcdEvents {
    child: Child,
    out: tempfile::NamedTempFile,
}

/// One recorded change: etcd revision, key, value (empty for a delete).
struct Event {
    rev: i64,
    key: String,
    value: Vec<u8>,
}

impl EtcdEvents {
    fn start(c: &Cluster) -> EtcdEvents {
        let out = tempfile::NamedTempFile::new().expect("temp file");
        let child = Command::new("etcdctl")
            .args([
                "--endpoints",
                &c.etcd_url(),
                "watch",
                "--prefix",
                keys::ROOT,
            ])
            .args(["-w", "json"])
            .stdout(out.reopen().expect("reopen"))
            .stderr(Stdio::null())
            .spawn()
            .expect("etcdctl watch");
        // Wait until the watch is established: it prints the change we make next.
        let mark = format!("{}test-mark", keys::ROOT);
        let mut ev = EtcdEvents { child, out };
        c.eventually(WAIT, "etcdctl watch to be ready", || {
            Command::new("etcdctl")
                .args(["--endpoints", &c.etcd_url(), "put", &mark, "x"])
                .output()
                .ok()?;
            ev.events().iter().any(|e| e.key == mark).then_some(())
        });
        Command::new("etcdctl")
            .args(["--endpoints", &c.etcd_url(), "del", &mark])
            .output()
            .expect("etcdctl del");
        ev
    }

    /// The changes recorded so far, in etcd revision order.
    fn events(&mut self) -> Vec<Event> {
        let text = std::fs::read_to_string(self.out.path()).unwrap_or_default();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = Vec::new();
        for resp in serde_json::Deserializer::from_str(&text).into_iter::<Value>() {
            // A partly written last response is read again next time.
            let Ok(resp) = resp else { break };
            for e in resp["Events"].as_array().into_iter().flatten() {
                let kv = &e["kv"];
                let field = |f: &str| {
                    b64.decode(kv[f].as_str().unwrap_or_default())
                        .unwrap_or_default()
                };
                out.push(Event {
                    rev: kv["mod_revision"].as_i64().unwrap_or(0),
                    key: String::from_utf8_lossy(&field("key")).into_owned(),
                    value: field("value"),
                });
            }
        }
        out.sort_by_key(|e| e.rev);
        out
    }
}

impl Drop for EtcdEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Names of the rctl-lbs registered in etcd (`lbs/{name}`).
fn live_lbs(c: &Cluster) -> Vec<String> {
    let out = Command::new("etcdctl")
        .args([
            "--endpoints",
            &c.etcd_url(),
            "get",
            "--prefix",
            "--keys-only",
        ])
        .arg(keys::lbs_prefix())
        .output()
        .expect("etcdctl get");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(&keys::lbs_prefix()).map(str::to_string))
        .collect()
}

/// Tasks of `web` the agents were told to stop, each checked to have been reported drained
/// by the LB `lb` in etcd BEFORE its agent marked it stopping (drain gating); returns them.
fn stopped_only_after_drained(events: &[Event], lb: &str) -> Vec<String> {
    let mut stopped = Vec::new();
    for e in events {
        if !e.key.starts_with(&keys::status_prefix()) || e.value.is_empty() {
            continue;
        }
        let Ok(st) = codec::decode::<pb::TaskStatus>(e.key.as_bytes(), &e.value) else {
            continue;
        };
        if st.service != "web"
            || st.state() != pb::TaskState::Stopping
            || stopped.contains(&st.task_id)
        {
            continue;
        }
        let drained = keys::drained("web", &st.task_id, lb);
        assert!(
            events
                .iter()
                .any(|d| d.key == drained && d.rev < e.rev && !d.value.is_empty()),
            "task {} was stopped (etcd rev {}) before {lb} reported it drained",
            st.task_id,
            e.rev
        );
        stopped.push(st.task_id);
    }
    stopped
}

/// Waits (90 s at most) until `rollout status` says done.
fn wait_done(c: &Cluster) {
    c.eventually(WAIT, "the rollout to finish", || {
        let s: Value =
            serde_json::from_str(&c.rctl_ok(&["rollout", "status", "web", "-o", "json"])).ok()?;
        (s["state"] == "done").then_some(())
    });
}

fn history(c: &Cluster) -> Vec<Value> {
    serde_json::from_str(&c.rctl_ok(&["rollout", "history", "web", "-o", "json"]))
        .expect("history -o json is JSON")
}

/// Applies `file` (revision 1 of web) as web.toml, waits for it, and returns the LB address
/// once rctl-lb serves it.
fn serve_v1(c: &Cluster, file: &str) -> SocketAddr {
    let v1 = c.service_file("web.toml", file);
    c.apply_and_wait(&v1);
    let addr: SocketAddr = format!("127.0.0.1:{}", c.service_port(0)).parse().unwrap();
    c.eventually(WAIT, "rctl-lb to serve web", || {
        http_get(addr, "/").ok().filter(|r| r.status == 200)
    });
    addr
}

fn images_running(c: &Cluster) -> Vec<String> {
    c.ps(&["--service", "web"])
        .iter()
        .filter(|t| t["state"] == "running")
        .map(|t| t["image"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn rolling_update_under_load_loses_nothing_and_rollback_returns_through_the_same_path() {
    let c = Cluster::start(2);
    let addr = serve_v1(&c, &web(&c, 4, "v1"));

    // v1 → v2 under ~100 rps.
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(addr, stop.clone());
    let mut watch = EtcdEvents::start(&c);
    std::thread::sleep(Duration::from_secs(1));
    let v2 = c.service_file("web.toml", &web(&c, 4, "v2"));
    let v2 = v2.to_str().unwrap();
    c.rctl_ok(&[
        "apply",
        "-f",
        v2,
        "--wait",
        "--timeout",
        "90s",
        "-m",
        "ship v2",
    ]);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let seen = loader.join().expect("load thread");
    // Every v1 task was drained by the LB before its agent was told to stop it.
    let lbs = live_lbs(&c);
    assert_eq!(lbs.len(), 1, "one rctl-lb: {lbs:?}");
    let stopped = stopped_only_after_drained(&watch.events(), &lbs[0]);
    assert_eq!(stopped.len(), 4, "the 4 v1 tasks stopped: {stopped:?}");
    drop(watch);
    assert!(
        seen.failures.is_empty(),
        "{} of {} requests failed during the rolling update: {:?}\n{}",
        seen.failures.len(),
        seen.failures.len() + seen.versions.len(),
        &seen.failures[..seen.failures.len().min(10)],
        c.logs()
    );
    eprintln!(
        "rolling update under load: {} requests, all answered 200",
        seen.versions.len()
    );
    let first_v2 = seen
        .versions
        .iter()
        .position(|v| v == "v2")
        .expect("some answers from v2");
    assert!(
        seen.versions[..first_v2].iter().all(|v| v == "v1"),
        "before v2, only v1 answered"
    );
    assert_eq!(
        seen.versions.last().map(String::as_str),
        Some("v2"),
        "v2 answers at the end"
    );
    let images = images_running(&c);
    assert_eq!(images.len(), 4, "{images:?}");
    assert!(images.iter().all(|i| i.ends_with(":v2")), "{images:?}");

    // History: two revisions, who and why recorded, the current one marked.
    let h = history(&c);
    assert_eq!(h.len(), 2, "{h:#?}");
    assert_eq!(h[0]["revision"], 1);
    assert_eq!(h[0]["why"], "created");
    assert_eq!(h[1]["revision"], 2);
    assert_eq!(h[1]["why"], "ship v2");
    assert_eq!(h[1]["current"], true);
    assert!(!h[1]["who"].as_str().unwrap().is_empty(), "{h:#?}");

    // Rollback: a new revision 3 with revision 1's spec, rolled out surge-first.
    let out = c.rctl_ok(&["rollback", "web", "--wait", "--timeout", "90s"]);
    assert!(
        out.contains("rolled back to revision 1 (as revision 3)"),
        "{out}"
    );
    let images = images_running(&c);
    assert_eq!(images.len(), 4, "{images:?}");
    assert!(images.iter().all(|i| i.ends_with(":v1")), "{images:?}");
    let h = history(&c);
    assert_eq!(h.len(), 3, "{h:#?}");
    assert_eq!(h[2]["why"], "rollback to revision 1");
    assert_eq!(h[2]["current"], true);
    assert!(h[2]["image"].as_str().unwrap().ends_with(":v1"));

    // `rollout start --image`: the same path for an image change without a file; a second
    // one while it runs is refused with the running revision, and changes nothing.
    let v2_image = format!("{}/rctl/testserver:v2", c.registry());
    let v1_image = format!("{}/rctl/testserver:v1", c.registry());
    c.rctl_ok(&["rollout", "start", "web", "--image", &v2_image]);
    let out = c.rctl(&["rollout", "start", "web", "--image", &v1_image]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: revision 4 of \"web\" is still rolling out; wait for it (rctl rollout status web --wait) or change it with apply"
    );
    wait_done(&c);
    let images = images_running(&c);
    assert!(
        images.len() == 4 && images.iter().all(|i| *i == v2_image),
        "{images:?}"
    );
    let h = history(&c);
    assert_eq!(h.len(), 4, "{h:#?}");
    assert!(
        h[3]["why"]
            .as_str()
            .unwrap()
            .ends_with(&format!("→ {v2_image}")),
        "{h:#?}"
    );
    let status: Value =
        serde_json::from_str(&c.rctl_ok(&["rollout", "status", "web", "-o", "json"])).unwrap();
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["revision"], 4, "{status}");

    // A revision not kept is "not found" (exit 1); one line, nothing changed.
    let out = c.rctl(&["rollback", "web", "--to", "99"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim()
            == "error: service \"web\" has no revision 99 in its history (kept: 1, 2, 3, 4; see: rctl rollout history web)",
        "{err}"
    );
    // Already there: a refusal because of state, exit 1 (docs/exit-codes.md).
    let out = c.rctl(&["rollback", "web", "--to", "4"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = c.rctl(&["rollout", "start", "web", "--image", &v2_image]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // An image the registry does not have fails fast, exit 1, rolling or canary alike.
    let missing = format!("{}/rctl/testserver:v9", c.registry());
    for canary in [false, true] {
        let mut args = vec!["rollout", "start", "web", "--image", &missing, "--wait"];
        if canary {
            args.push("--canary");
        }
        let out = c.rctl(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            format!(
                "error: image \"{missing}\" not found in registry {} (push it first or fix the tag); nothing changed",
                c.registry()
            ),
            "{args:?}"
        );
    }
    let status: Value =
        serde_json::from_str(&c.rctl_ok(&["rollout", "status", "web", "-o", "json"])).unwrap();
    assert_eq!(status["revision"], 4, "{status}");
    assert_eq!(images_running(&c).len(), 4);
    assert_eq!(history(&c).len(), 4, "refused changes make no revision");
    for args in [
        &["rollback", "nope"][..],
        &["rollout", "history", "nope"][..],
        &["rollout", "status", "nope"][..],
        &["rollout", "start", "nope", "--image", "x:1"][..],
    ] {
        let out = c.rctl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim(),
            "error: service \"nope\" not found (see: rctl service ls)",
            "{args:?}"
        );
    }
    c.down_leaving_nothing();
}

/// Healthy running tasks of `web` now, from `rctl ps -o json` run as a user would.
fn healthy_now(rctl: &std::path::Path, addr: &str) -> Option<usize> {
    let out = std::process::Command::new(rctl)
        .args(["ps", "--service", "web", "-o", "json"])
        .env("RCTL_ADDR", addr)
        .env("RCTL_INSECURE", "1")
        .env_remove("RUST_LOG")
        .output()
        .ok()?;
    let tasks: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        tasks
            .iter()
            .filter(|t| t["state"] == "running" && t["health"] == "healthy")
            .count(),
    )
}

#[test]
fn a_revision_that_never_turns_healthy_is_rolled_back_by_itself() {
    let c = Cluster::start(2);
    let file = |v: &str| {
        let toml = web(&c, 3, v).replace("max_unavailable = 0", "max_unavailable = 1");
        c.service_file("web.toml", &toml)
    };
    c.apply_and_wait(&file("v1"));

    // Sample the healthy count the whole time (bounded: at most 600 samples).
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (rctl, addr, stop) = (c.bin().join("rctl"), c.addr(), stop.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) && samples.len() < 600 {
                if let Some(n) = healthy_now(&rctl, &addr) {
                    samples.push(n);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        })
    };
    let broken = file("broken");
    let out = c.rctl(&[
        "apply",
        "-f",
        broken.to_str().unwrap(),
        "--wait",
        "--timeout",
        "120s",
        "-o",
        "json",
    ]);
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}\n{}", c.logs());
    // A CI job reads the outcome from stdout, one JSON document, next to exit code 3.
    let result: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(result["state"], "rolled_back", "{result}");
    assert_eq!(result["service"], "web", "{result}");
    assert!(
        err.contains("automatic rollback to revision 1: revision 2 never became healthy"),
        "{err}"
    );
    let images = images_running(&c);
    assert_eq!(images.len(), 3, "{images:?}");
    assert!(images.iter().all(|i| i.ends_with(":v1")), "{images:?}");
    let h = history(&c);
    assert_eq!(h.len(), 3, "{h:#?}");
    assert_eq!(h[2]["who"], "rctl-scheduler");
    let status: Value =
        serde_json::from_str(&c.rctl_ok(&["rollout", "status", "web", "-o", "json"])).unwrap();
    assert_eq!(status["state"], "rolled_back", "{status}");
    assert_eq!(status["revision"], 3);
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .contains("revision 2 never became healthy"),
        "{status}"
    );
    assert!(h[2]["image"].as_str().unwrap().ends_with(":v1"));
    // replicas 3 - max_unavailable 1: never fewer than 2 healthy.
    assert!(samples.len() >= 3, "sampled while it ran: {samples:?}");
    assert!(samples.iter().all(|n| *n >= 2), "{samples:?}");
    c.down_leaving_nothing();
}

#[test]
fn over_mutual_tls_the_revision_is_made_by_the_certificates_name() {
    let c = Cluster::start_tls(1);
    let v1 = c.service_file("web.toml", &web(&c, 1, "v1"));
    c.apply_and_wait(&v1);
    let h = history(&c);
    assert_eq!(h.len(), 1, "{h:#?}");
    // The harness's client certificate is issued to "client"; $USER does not count.
    assert_eq!(h[0]["who"], "client", "{h:#?}");
    c.down_leaving_nothing();
}

/// `web` with quick health checks, a short drain and a fast `[canary]`: steps 10/50/100 %,
/// judged after 1 s and 100 canary requests. The p99 limit is 3x: a good canary's p99 came
/// out at 2.0-2.1x the stable one's on a machine loaded to 10 (a few ms each), while the slow
/// canary's 200 ms is far above 3x (stable p99 would have to reach 67 ms).
fn canary_web(c: &Cluster, replicas: u32, version: &str) -> String {
    format!(
        "{}\n[health]\nhttp = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"1s\"\n\n[update]\nmax_surge = 1\ndrain = \"2s\"\n\n[canary]\nreplicas = 1\nsteps = [10, 50, 100]\nstep_duration = \"1s\"\nmin_requests = 100\nmax_error_rate = 0.05\nmax_p99_ratio = 3.0\n",
        c.web_service(replicas, version)
    )
}

/// Ids of the running tasks of `web`.
fn running_ids(c: &Cluster) -> Vec<String> {
    let mut ids: Vec<String> = c
        .ps(&["--service", "web"])
        .iter()
        .filter(|t| t["state"] == "running")
        .map(|t| t["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_bad_canary_is_rolled_back_by_its_error_rate_having_had_only_its_first_share() {
    let c = Cluster::start(2);
    let addr = serve_v1(&c, &canary_web(&c, 2, "v1"));
    let stable = running_ids(&c);
    assert_eq!(stable.len(), 2, "{stable:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(addr, stop.clone());
    let bad = format!("{}/rctl/testserver:bad", c.registry());
    let out = c.rctl(&[
        "rollout",
        "start",
        "web",
        "--image",
        &bad,
        "--canary",
        "--wait",
        "--timeout",
        "90s",
    ]);
    stop.store(true, Ordering::Relaxed);
    let seen = loader.join().expect("load thread");
    assert_eq!(
        out.status.code(),
        Some(3),
        "rolled back: exit 3\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );

    // Every answer in order: which ones the canary gave (its 200s and its injected 500s).
    let answers: Vec<bool> = seen
        .versions
        .iter()
        .map(|v| v == "bad")
        .chain(seen.failures.iter().map(|f| f.contains("version=bad")))
        .collect();
    let from_canary = answers.iter().filter(|b| **b).count();
    assert!(from_canary > 0, "the canary got traffic");
    // Only the failures come from the canary: stable answered every other request.
    assert!(
        seen.failures.iter().all(|f| f.contains("version=bad")),
        "only the canary failed: {:?}",
        &seen.failures[..seen.failures.len().min(5)]
    );
    // The versions list holds the 200s in order; the canary's 200s are ~half its share.
    // Its whole share (200s + 500s) over the span it was in the split stays at the first
    // step's 10 % (smooth weighted round robin: one in ten, give or take one request).
    let first = seen.versions.iter().position(|v| v == "bad");
    let last = seen.versions.iter().rposition(|v| v == "bad");
    if let (Some(first), Some(last)) = (first, last) {
        let span = &seen.versions[first..=last];
        let ok_bad = span.iter().filter(|v| *v == "bad").count();
        let total = span.len() + seen.failures.len();
        assert!(
            (ok_bad + seen.failures.len()) * 100 <= total * 10 + 200,
            "canary share {} of {total} exceeds the first step's 10 %",
            ok_bad + seen.failures.len()
        );
    }

    // Stable untouched: the same two tasks run, and all traffic is back on them.
    c.eventually(WAIT, "the canary task to stop", || {
        (running_ids(&c) == stable).then_some(())
    });
    let status: Value =
        serde_json::from_str(&c.rctl_ok(&["rollout", "status", "web", "-o", "json"])).unwrap();
    assert_eq!(status["state"], "rolled_back", "{status}");
    assert_eq!(status["revision"], 1, "{status}");
    assert!(
        status["reason"].as_str().unwrap().contains("error rate"),
        "{status}"
    );
    for _ in 0..20 {
        let r = http_get(addr, "/").expect("answer after the rollback");
        assert!(
            r.status == 200 && r.body.starts_with("version=v1"),
            "{}",
            r.body
        );
    }

    // explain: the step's figures and the rule that decided.
    let steps: Vec<Value> =
        serde_json::from_str(&c.rctl_ok(&["rollout", "explain", "web", "-o", "json"])).unwrap();
    let last = steps.last().expect("a judged step");
    assert_eq!(
        (last["percent"].as_u64(), last["verdict"].as_str()),
        (Some(10), Some("fail")),
        "{steps:#?}"
    );
    assert!(
        last["canary_error_rate"].as_f64().unwrap() > 0.05,
        "{steps:#?}"
    );
    assert!(
        last["canary_requests"].as_u64().unwrap() >= 100,
        "{steps:#?}"
    );
    assert!(
        last["rule"].as_str().unwrap().contains("max_error_rate"),
        "{steps:#?}"
    );
    let table = c.rctl_ok(&["rollout", "explain", "web"]);
    assert!(
        table.contains("ERROR RATE") && table.contains("fail"),
        "{table}"
    );
    c.down_leaving_nothing();
}

#[test]
fn a_good_canary_steps_through_every_weight_with_matching_shares_and_finishes() {
    let c = Cluster::start(2);
    let addr = serve_v1(&c, &canary_web(&c, 2, "v1"));

    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(addr, stop.clone());
    let v2 = format!("{}/rctl/testserver:v2", c.registry());
    let out = c.rctl(&[
        "rollout",
        "start",
        "web",
        "--image",
        &v2,
        "--canary",
        "--wait",
        "--timeout",
        "90s",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let seen = loader.join().expect("load thread");
    assert_eq!(
        out.status.code(),
        Some(0),
        "finished: exit 0\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    assert!(
        seen.failures.is_empty(),
        "no request failed: {:?}",
        &seen.failures[..seen.failures.len().min(5)]
    );

    // Each step's window, as the LBs counted it, split requests as the weights said.
    let steps: Vec<Value> =
        serde_json::from_str(&c.rctl_ok(&["rollout", "explain", "web", "-o", "json"])).unwrap();
    let percents: Vec<u64> = steps
        .iter()
        .map(|s| s["percent"].as_u64().unwrap())
        .collect();
    assert_eq!(percents, vec![10, 50, 100], "{steps:#?}");
    for s in &steps {
        assert_eq!(s["verdict"], "pass", "{s}");
        let canary = s["canary_requests"].as_f64().unwrap();
        let stable = s["stable_requests"].as_f64().unwrap();
        let share = 100.0 * canary / (canary + stable);
        let want = s["percent"].as_f64().unwrap();
        assert!(
            (share - want).abs() <= 1.0,
            "step at {want}%: canary share {share:.2}% of {} requests\n{steps:#?}",
            canary + stable
        );
        eprintln!("step {want}%: canary {canary} / stable {stable} requests = {share:.2}%");
    }

    // Finished: every task runs v2, the split is gone, v2 answers.
    let images = images_running(&c);
    assert!(
        images.len() == 2 && images.iter().all(|i| *i == v2),
        "{images:?}"
    );
    let status: Value =
        serde_json::from_str(&c.rctl_ok(&["rollout", "status", "web", "-o", "json"])).unwrap();
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["weights"], serde_json::json!([]), "{status}");
    assert_eq!(seen.versions.last().map(String::as_str), Some("v2"));
    c.down_leaving_nothing();
}

#[test]
fn a_slow_canary_is_rolled_back_by_the_p99_rule() {
    let c = Cluster::start(2);
    let addr = serve_v1(&c, &canary_web(&c, 2, "v1"));
    let stable = running_ids(&c);

    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(addr, stop.clone());
    let slow = format!("{}/rctl/testserver:slow", c.registry());
    let out = c.rctl(&[
        "rollout",
        "start",
        "web",
        "--image",
        &slow,
        "--canary",
        "--wait",
        "--timeout",
        "90s",
    ]);
    stop.store(true, Ordering::Relaxed);
    let seen = loader.join().expect("load thread");
    assert_eq!(
        out.status.code(),
        Some(3),
        "rolled back: exit 3\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    assert!(seen.failures.is_empty(), "{:?}", seen.failures);
    let steps: Vec<Value> =
        serde_json::from_str(&c.rctl_ok(&["rollout", "explain", "web", "-o", "json"])).unwrap();
    let last = steps.last().expect("a judged step");
    assert_eq!(last["verdict"], "fail", "{steps:#?}");
    assert!(
        last["rule"].as_str().unwrap().contains("max_p99_ratio"),
        "{steps:#?}"
    );
    // 200 ms added: far past twice stable's p99 (floored at 5 ms).
    assert!(
        last["canary_p99_us"].as_u64().unwrap() >= 200_000,
        "{steps:#?}"
    );
    c.eventually(WAIT, "the canary task to stop", || {
        (running_ids(&c) == stable).then_some(())
    });
    c.down_leaving_nothing();
}

#[test]
fn a_leader_killed_mid_step_leaves_the_canary_to_the_next_which_ends_it_the_same_way() {
    let c = Cluster::start_with(2, 2);
    let addr = serve_v1(&c, &canary_web(&c, 2, "v1"));
    let stable = running_ids(&c);

    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(addr, stop.clone());
    let bad = format!("{}/rctl/testserver:bad", c.registry());
    c.rctl_ok(&["rollout", "start", "web", "--image", &bad, "--canary"]);
    let status = |c: &Cluster| -> Option<Value> {
        let out = c.rctl(&["rollout", "status", "web", "-o", "json"]);
        serde_json::from_slice(&out.stdout).ok()
    };
    // Mid-step: the canary has its first weight and has had some, not yet enough, requests.
    c.eventually(WAIT, "the canary's first step", || {
        status(&c).filter(|s| s["state"] == "canary" && s["step"] == 0)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let first = c.eventually(WAIT, "a scheduler leader", || c.leader());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.scheduler_pid(first)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the leader");
    c.eventually(WAIT, "a new leader", || c.leader().filter(|&j| j != first));

    let end = c.eventually(WAIT, "the canary to end", || {
        status(&c).filter(|s| s["state"] == "rolled_back" || s["state"] == "done")
    });
    stop.store(true, Ordering::Relaxed);
    let seen = loader.join().expect("load thread");
    assert_eq!(end["state"], "rolled_back", "{end}\n{}", c.logs());
    assert!(
        end["reason"].as_str().unwrap().contains("error rate"),
        "{end}"
    );
    let steps: Vec<Value> =
        serde_json::from_str(&c.rctl_ok(&["rollout", "explain", "web", "-o", "json"])).unwrap();
    assert_eq!(steps.len(), 1, "one judged step, not restarted: {steps:#?}");
    assert_eq!(
        (steps[0]["percent"].as_u64(), steps[0]["verdict"].as_str()),
        (Some(10), Some("fail")),
        "{steps:#?}"
    );
    // Only the canary ever failed a request, and never above its first step's share.
    assert!(seen.failures.iter().all(|f| f.contains("version=bad")));
    let canary = seen.versions.iter().filter(|v| *v == "bad").count() + seen.failures.len();
    let total = seen.versions.len() + seen.failures.len();
    assert!(
        canary > 0 && canary * 100 <= total * 10 + 200,
        "{canary} of {total}"
    );
    c.eventually(WAIT, "the canary task to stop", || {
        (running_ids(&c) == stable).then_some(())
    });
    c.down_leaving_nothing();
}

#[test]
fn a_canary_that_cannot_start_is_rolled_back_and_bad_canary_input_is_refused() {
    let c = Cluster::start(2);
    let v1 = c.service_file("web.toml", &canary_web(&c, 2, "v1"));
    c.apply_and_wait(&v1);
    let stable = running_ids(&c);

    // Nothing to promote, abort or explain yet: one line each, nothing changed.
    let out = c.rctl(&["rollout", "promote", "web"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: service \"web\" has no canary rollout running (see: rctl rollout status web)"
    );
    let out = c.rctl(&["rollout", "explain", "web"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = c.rctl(&["rollout", "abort", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = c.rctl(&["rollout", "start", "nope", "--image", "x:1", "--canary"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(history(&c).len(), 1, "refused requests make no revision");

    // A canary whose tasks exit at start: rolled back by itself, stable untouched.
    let broken = format!("{}/rctl/testserver:broken", c.registry());
    let out = c.rctl(&[
        "rollout",
        "start",
        "web",
        "--image",
        &broken,
        "--canary",
        "--wait",
        "--timeout",
        "90s",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    let status: Value =
        serde_json::from_str(&c.rctl_ok(&["rollout", "status", "web", "-o", "json"])).unwrap();
    assert_eq!(
        (&status["state"], &status["revision"]),
        (&"rolled_back".into(), &1.into()),
        "{status}"
    );
    c.eventually(WAIT, "only the stable tasks to run", || {
        (running_ids(&c) == stable).then_some(())
    });
    // The next change gets a number past the rolled-back canary's.
    c.rctl_ok(&[
        "rollout",
        "start",
        "web",
        "--image",
        &format!("{}/rctl/testserver:v2", c.registry()),
        "--wait",
        "--timeout",
        "90s",
    ]);
    let h = history(&c);
    assert_eq!(
        h.iter()
            .map(|r| r["revision"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3],
        "{h:#?}"
    );
    c.down_leaving_nothing();
}

#[test]
fn a_canary_waiting_for_requests_times_out_with_exit_4_and_is_promoted_by_hand() {
    let c = Cluster::start(2);
    let v1 = c.service_file("web.toml", &canary_web(&c, 2, "v1"));
    c.apply_and_wait(&v1);
    let stable = running_ids(&c);
    // No load: the first step never gets its 100 requests.
    let v2 = format!("{}/rctl/testserver:v2", c.registry());
    let out = c.rctl(&[
        "rollout",
        "start",
        "web",
        "--image",
        &v2,
        "--canary",
        "--wait",
        "--timeout",
        "5s",
    ]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let status = |c: &Cluster| -> Value {
        serde_json::from_str(&c.rctl_ok(&["rollout", "status", "web", "-o", "json"])).unwrap()
    };
    let s = c.eventually(WAIT, "the first step", || {
        Some(status(&c)).filter(|s| s["step"] == 0)
    });
    assert_eq!(s["state"], "canary", "{s}");
    assert_eq!(
        s["weights"],
        serde_json::json!([{"revision": 1, "weight": 90}, {"revision": 2, "weight": 10}]),
        "{s}"
    );
    // Each promote passes one step by hand; the last one finishes the rollout.
    for next in [1, 2] {
        c.rctl_ok(&["rollout", "promote", "web"]);
        c.eventually(WAIT, "the next step", || {
            Some(status(&c)).filter(|s| s["step"] == next)
        });
    }
    c.rctl_ok(&["rollout", "promote", "web"]);
    c.eventually(WAIT, "the canary to finish", || {
        Some(status(&c)).filter(|s| s["state"] == "done")
    });
    let steps: Vec<Value> =
        serde_json::from_str(&c.rctl_ok(&["rollout", "explain", "web", "-o", "json"])).unwrap();
    assert!(
        steps.len() == 3 && steps.iter().all(|s| s["verdict"] == "promoted"),
        "{steps:#?}"
    );
    c.eventually(WAIT, "v2 everywhere", || {
        let images = images_running(&c);
        (images.len() == 2 && images.iter().all(|i| *i == v2)).then_some(())
    });
    assert!(running_ids(&c).iter().all(|id| !stable.contains(id)));
    c.down_leaving_nothing();
}

/// Runs `deploy/ci/canary-pipeline.sh web IMAGE` against `c` as a CI job would, its build
/// step pushing the fixture images with the project's own tooling (rctl has no push).
fn pipeline(c: &Cluster, image: &str) -> std::process::Output {
    let script = rctl_tests::cluster::repo_root().join("deploy/ci/canary-pipeline.sh");
    let build = format!(
        "{} push --registry {} >/dev/null",
        c.bin().join("rctl-fixtures").display(),
        c.registry()
    );
    std::process::Command::new(script)
        .args(["web", image])
        .env("RCTL", c.bin().join("rctl"))
        .env("RCTL_ADDR", c.addr())
        .env("RCTL_INSECURE", "1")
        .env("BUILD_CMD", build)
        .env("TIMEOUT", "90s")
        .env("RESULT", c.state.join("canary-result.json"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run canary-pipeline.sh")
}

#[test]
fn the_ci_canary_pipeline_fails_a_bad_image_with_its_explanation_and_ships_a_good_one() {
    let c = Cluster::start(2);
    let addr = serve_v1(&c, &canary_web(&c, 2, "v1"));
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(addr, stop.clone());

    // A bad image: the job fails with 3 and its log holds the figures that decided.
    let bad = format!("{}/rctl/testserver:bad", c.registry());
    let out = pipeline(&c, &bad);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3), "{log}\n{}", c.logs());
    assert!(log.contains("rolled back by rctl"), "{log}");
    assert!(
        log.contains("error rate"),
        "rollout explain in the job log: {log}"
    );
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(c.state.join("canary-result.json")).unwrap())
            .unwrap();
    assert_eq!(result["state"], "rolled_back", "{result}");
    stop.store(true, Ordering::Relaxed);
    let _ = loader.join().expect("load thread");

    // A good image: the job passes and production runs it.
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(addr, stop.clone());
    let v2 = format!("{}/rctl/testserver:v2", c.registry());
    let out = pipeline(&c, &v2);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{log}\n{}", c.logs());
    assert!(log.contains("released: web runs"), "{log}");
    stop.store(true, Ordering::Relaxed);
    let _ = loader.join().expect("load thread");
    wait_done(&c);
    let images = images_running(&c);
    assert!(
        images.len() == 2 && images.iter().all(|i| *i == v2),
        "{images:?}"
    );
    c.down_leaving_nothing();
}
