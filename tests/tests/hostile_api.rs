//! End-to-end: what a careless or hostile user sends the API (issue 22), on a real 2-host
//! cluster. Image references are checked by the same grammar on every path (apply, rollout
//! start, rollback, run), and no stored value breaks a listing; service files that could
//! never run are refused at apply with file:line:key, and by the scheduler itself for
//! clients that skip the CLI.

use std::time::Duration;

use rctl_api::pb;
use rctl_api::pb::scheduler_client::SchedulerClient;
use rctl_tests::cluster::Cluster;
use serde_json::Value;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts `out` exited `code` with one short `error:` line, and returns that line.
fn refused(out: &std::process::Output, code: i32, what: &str) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{what}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
    assert!(err.starts_with("error: "), "{what}: {err}");
    assert!(
        err.len() < 400,
        "{what}: a short line, got {} bytes",
        err.len()
    );
    err
}

/// The images `rollout history NAME -o json` lists, oldest first.
fn history_images(c: &Cluster, name: &str) -> Vec<String> {
    let v: Vec<Value> =
        serde_json::from_str(&c.rctl_ok(&["rollout", "history", name, "-o", "json"])).unwrap();
    let mut v: Vec<(u64, String)> = v
        .iter()
        .map(|r| {
            (
                r["revision"].as_u64().unwrap(),
                r["image"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, i)| i).collect()
}

/// The 1-based line of `text` that sets the dotted `key`'s leaf (the last such line).
fn line_of(text: &str, key: &str) -> usize {
    let leaf = key.rsplit('.').next().unwrap();
    text.lines()
        .collect::<Vec<_>>()
        .iter()
        .rposition(|l| l.split('=').next().unwrap().trim() == leaf)
        .expect("key in text")
        + 1
}

/// Every listing a user reads after a refused change still works (exit 0).
fn listings_work(c: &Cluster, what: &str) {
    for args in [
        &["service", "ls"][..],
        &["ps", "-a"],
        &["rollout", "history", "web"],
        &["service", "inspect", "web"],
        &["rollout", "status", "web"],
    ] {
        let out = c.rctl(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{what}: rctl {args:?}: {}",
            stderr(&out)
        );
    }
}

/// `Apply` straight to the scheduler's API, as a client that skips the CLI would: the
/// status code and message of the refusal, or None if it was accepted.
fn api_apply(c: &Cluster, spec: pb::ServiceSpec) -> Option<(tonic::Code, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = c.scheduler_addr(1);
    rt.block_on(async move {
        let mut client = SchedulerClient::connect(addr).await.expect("connect");
        let req = pb::ApplyRequest {
            spec: Some(spec),
            who: "test".into(),
            ..Default::default()
        };
        match client.apply(req).await {
            Ok(_) => None,
            Err(s) => Some((s.code(), s.message().to_string())),
        }
    })
}

#[test]
fn an_image_reference_of_any_length_is_refused_on_every_path_and_breaks_no_listing() {
    let c = Cluster::start(2);
    let reg = c.registry();
    let file = c.service_file("web.toml", &c.web_service(1, "v1"));
    c.apply_and_wait(&file);
    let v1 = format!("{reg}/rctl/testserver:v1");
    assert_eq!(history_images(&c, "web"), [v1.as_str()]);

    let long = format!("{reg}/rctl/testserver:{}", "b".repeat(100_000));
    let long_file = c.service_file("long.toml", &c.web_service(1, "v1").replace(&v1, &long));
    let long_file = long_file.to_str().unwrap();
    for (what, args) in [
        (
            "rollout start",
            vec!["rollout", "start", "web", "--image", &long],
        ),
        (
            "rollout start --wait",
            vec!["rollout", "start", "web", "--image", &long, "--wait"],
        ),
        (
            "rollout start --canary",
            vec!["rollout", "start", "web", "--image", &long, "--canary"],
        ),
        ("apply", vec!["apply", "-f", long_file]),
        ("run", vec!["run", "-d", &long]),
        ("run --name", vec!["run", "-d", "--name", "long", &long]),
    ] {
        let err = refused(&c.rctl(&args), 2, what);
        assert!(err.contains(" characters): "), "{what}: {err}");
        assert_eq!(
            history_images(&c, "web"),
            [v1.as_str()],
            "{what}: nothing stored"
        );
        listings_work(&c, what);
    }
    assert!(
        c.ps(&["-a"]).iter().all(|v| v["kind"] != "container"),
        "no container was made"
    );

    // A revision planted behind the API's back with such an image (written by an older
    // version; 50,000 characters, as etcd_put passes it in one argument): every listing
    // still works, and rolling back to it is refused.
    let long = format!("{reg}/rctl/testserver:{}", "b".repeat(50_000));
    let planted = pb::Revision {
        service: "web".into(),
        revision: 9,
        spec: Some(pb::ServiceSpec {
            name: "web".into(),
            image: long.clone(),
            replicas: 1,
            ..Default::default()
        }),
        cause: Some(pb::RevisionCause {
            who: "w".repeat(20_000),
            why: "\u{1b}[2J\nforged row".into(),
            ..Default::default()
        }),
    };
    c.etcd_put(
        &rctl_api::keys::revision("web", 9),
        &rctl_api::codec::encode(&planted),
    );
    listings_work(&c, "planted revision");
    assert_eq!(history_images(&c, "web").len(), 2);
    let err = refused(
        &c.rctl(&["rollback", "web", "--to", "9"]),
        2,
        "rollback to the planted revision",
    );
    assert!(err.contains(" characters): "), "{err}");
    assert_eq!(
        history_images(&c, "web").len(),
        2,
        "rollback stored nothing"
    );

    // The same refusal from the API itself, for a client that skips the CLI.
    let spec = pb::ServiceSpec {
        name: "web".into(),
        image: long.clone(),
        replicas: 1,
        ..Default::default()
    };
    let (code, msg) = api_apply(&c, spec).expect("refused");
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    assert!(msg.len() < 400, "{msg}");
    c.down_leaving_nothing();
}

/// A `[canary]` that would send all traffic at once or silently run one canary is refused
/// with the file, the line and the key, by the CLI and by the API.
#[test]
fn canary_steps_empty_and_zero_replicas_are_refused_with_file_line_and_key() {
    let c = Cluster::start(1);
    let base = c.web_service(1, "v1");
    for (key, toml) in [
        ("canary.steps", "[canary]\nsteps = []\n"),
        (
            "canary.replicas",
            "[canary]\nsteps = [10, 100]\nreplicas = 0\n",
        ),
    ] {
        let text = format!("{base}{toml}");
        let line = line_of(&text, key);
        let file = c.service_file("canary.toml", &text);
        let f = file.to_str().unwrap();
        let err = refused(&c.rctl(&["apply", "-f", f]), 2, key);
        assert!(err.contains(&format!("{f}:{line}:")), "{key}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
    }
    let out = c.rctl(&["service", "ls", "-o", "json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");

    for canary in [
        pb::CanarySpec {
            replicas: 1,
            ..Default::default()
        },
        pb::CanarySpec {
            replicas: 0,
            steps: vec![100],
            ..Default::default()
        },
    ] {
        let spec = pb::ServiceSpec {
            name: "web".into(),
            image: format!("{}/rctl/testserver:v1", c.registry()),
            replicas: 1,
            canary: Some(canary.clone()),
            ..Default::default()
        };
        let (code, msg) = api_apply(&c, spec).expect("refused");
        assert_eq!(code, tonic::Code::InvalidArgument, "{canary:?}: {msg}");
        assert!(msg.contains("canary."), "{msg}");
    }
    c.down_leaving_nothing();
}

/// A service file for `web` with `top` keys, `listen`, and `tables` after `[port]`.
fn web_file(c: &Cluster, name: &str, image: &str, top: &str, listen: &str, tables: &str) -> String {
    format!(
        "name = \"{name}\"\nimage = \"{image}\"\nreplicas = 1\n{top}\n[port]\ncontainer = 8080\nlisten = \"{listen}\"\n{tables}",
        image = image.replace("REG", &c.registry()),
    )
}

/// What a task or rctl-lb would refuse later (a crash loop, a dropped env var, a listener
/// that never opens) is refused at apply: by the CLI with file:line:key, by the scheduler
/// for a client that skips the CLI; nothing is stored.
#[test]
fn a_service_that_could_never_run_is_refused_at_apply_with_file_line_and_key() {
    let c = Cluster::start(1);
    let ts = "REG/rctl/testserver:v1";
    let listen = format!("127.0.0.1:{}", c.service_port(0));
    type Mutate = fn(&mut pb::ServiceSpec);
    type Row<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        Mutate,
    );
    // (what, name, image, top keys, listen, tables, key, line marker, the same spec by API)
    let table: Vec<Row> = vec![
        (
            "memory below 6 MiB",
            "web",
            ts,
            "",
            &listen,
            "[resources]\nmemory = \"1\"\n",
            "resources.memory",
            "memory =",
            |s| {
                s.resources = Some(pb::Resources {
                    memory_bytes: 1,
                    ..Default::default()
                })
            },
        ),
        (
            "NUL in an env value",
            "web",
            ts,
            "env = { A = \"x\\u0000y\" }",
            &listen,
            "",
            "env.A",
            "env =",
            |s| {
                s.env.insert("A".into(), "x\0y".into());
            },
        ),
        (
            "'=' in an env key",
            "web",
            ts,
            "env = { \"BAD=KEY\" = \"x\" }",
            &listen,
            "",
            "env",
            "env =",
            |s| {
                s.env.insert("BAD=KEY".into(), "x".into());
            },
        ),
        (
            "an empty env key",
            "web",
            ts,
            "env = { \"\" = \"x\" }",
            &listen,
            "",
            "env",
            "env =",
            |s| {
                s.env.insert(String::new(), "x".into());
            },
        ),
        (
            "NUL in the command",
            "web",
            ts,
            "command = [\"/app/testserver\", \"\\u0000\"]",
            &listen,
            "",
            "command",
            "command =",
            |s| s.command = vec!["/app/testserver".into(), "\0".into()],
        ),
        (
            "http and tcp health",
            "web",
            ts,
            "",
            &listen,
            "[health]\nhttp = \"/\"\ntcp = true\n",
            "health",
            "[health]",
            |s| {
                s.health = Some(pb::HealthSpec {
                    http: "/".into(),
                    tcp: true,
                    ..Default::default()
                })
            },
        ),
        (
            "listen on port 0",
            "web",
            ts,
            "",
            "127.0.0.1:0",
            "",
            "port.listen",
            "listen =",
            |s| s.port.as_mut().unwrap().listen = "127.0.0.1:0".into(),
        ),
        (
            "a bad service name",
            "Web_1",
            ts,
            "",
            &listen,
            "",
            "name",
            "name =",
            |s| s.name = "Web_1".into(),
        ),
        (
            "a bad image reference",
            "web",
            "REG/Rctl/testserver:v1",
            "",
            &listen,
            "",
            "image",
            "image =",
            |s| s.image = s.image.replace("/rctl/", "/Rctl/"),
        ),
    ];
    for (what, name, image, top, listen, tables, key, marker, mutate) in table {
        let text = web_file(&c, name, image, top, listen, tables);
        let line = text.lines().position(|l| l.starts_with(marker)).unwrap() + 1;
        let file = c.service_file("bad.toml", &text);
        let f = file.to_str().unwrap();
        let err = refused(&c.rctl(&["apply", "-f", f]), 2, what);
        assert!(
            err.contains(&format!("{f}:{line}: key `{key}`")),
            "{what}: {err}"
        );

        let mut spec = pb::ServiceSpec {
            name: "web".into(),
            image: ts.replace("REG", &c.registry()),
            replicas: 1,
            port: Some(pb::PortSpec {
                container: 8080,
                protocol: "http".into(),
                listen: listen.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        mutate(&mut spec);
        let (code, msg) =
            api_apply(&c, spec).unwrap_or_else(|| panic!("{what}: accepted by the API"));
        assert_eq!(code, tonic::Code::InvalidArgument, "{what}: {msg}");
        let out = c.rctl_ok(&["service", "ls", "-o", "json"]);
        assert_eq!(out.trim(), "[]", "{what}: nothing stored");
    }
    c.down_leaving_nothing();
}

/// Services, their tasks (`SERVICE.N`) and one-off containers share one namespace: `run`
/// and `rename` refuse a service's name or task name, and `apply` refuses a service whose
/// names a container holds, each with exit 1 naming the owner.
#[test]
fn services_tasks_and_containers_share_one_namespace() {
    let c = Cluster::start(1);
    let ts = format!("{}/rctl/testserver:v1", c.registry());
    let file = c.service_file("web.toml", &c.web_service(2, "v1"));
    c.apply_and_wait(&file);
    let containers = |c: &Cluster| -> Vec<String> {
        c.ps(&["-a"])
            .into_iter()
            .filter(|v| v["kind"] == "container")
            .map(|v| v["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };

    for (name, owner) in [
        ("web.1", "service web"),
        ("web", "service web"),
        ("web.5", "service web"),
    ] {
        // run exits 125 for every refusal to create (Docker's run says 125 for a name conflict).
        let err = refused(&c.rctl(&["run", "-d", "--name", name, &ts]), 125, name);
        assert!(
            err.contains(&format!("{name:?}")) && err.contains(owner),
            "{name}: {err}"
        );
        assert!(containers(&c).is_empty(), "{name}: no container made");
    }

    c.rctl_ok(&["run", "-d", "--name", "q1", &ts]);
    for name in ["web.5", "web"] {
        let err = refused(&c.rctl(&["rename", "q1", name]), 1, name);
        assert!(err.contains("service web"), "{name}: {err}");
    }
    assert_eq!(containers(&c), ["q1"]);

    // A container that took a name first keeps it: a service that would share it is refused.
    c.rctl_ok(&["run", "-d", "--name", "api.3", &ts]);
    let api = c.service_file(
        "api.toml",
        &format!("name = \"api\"\nimage = \"{ts}\"\nreplicas = 3\n"),
    );
    let err = refused(
        &c.rctl(&["apply", "-f", api.to_str().unwrap()]),
        1,
        "apply api",
    );
    assert!(err.contains("container api.3"), "{err}");
    let out = c.rctl_ok(&["service", "ls", "-o", "json"]);
    let names: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(names.len(), 1, "only web: {out}");

    // web's tasks are still its own: scale and exec reach them.
    c.rctl_ok(&["scale", "web=3", "--wait", "--timeout", "90s"]);
    c.rctl_ok(&["exec", "web.1", "true"]);
    c.rctl_ok(&["rm", "-f", "q1", "api.3"]);
    c.down_leaving_nothing();
}

/// A listen address has one owner: a second service on the same address (or on the same
/// port of the unspecified address) is refused at apply with exit 1, naming the owner.
#[test]
fn a_listen_address_belongs_to_one_service() {
    let c = Cluster::start(1);
    let ts = format!("{}/rctl/testserver:v1", c.registry());
    let port = c.service_port(0);
    let file = c.service_file("web.toml", &c.web_service(1, "v1"));
    c.apply_and_wait(&file);
    for listen in [format!("127.0.0.1:{port}"), format!("0.0.0.0:{port}")] {
        let api = c.service_file(
            "api.toml",
            &format!("name = \"api\"\nimage = \"{ts}\"\n[port]\ncontainer = 8080\nlisten = \"{listen}\"\n"),
        );
        let err = refused(&c.rctl(&["apply", "-f", api.to_str().unwrap()]), 1, &listen);
        assert!(
            err.contains(&listen) && err.contains("service web"),
            "{listen}: {err}"
        );
        let out = c.rctl_ok(&["service", "ls", "-o", "json"]);
        let names: Vec<Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(names.len(), 1, "{listen}: only web: {out}");
    }
    // web itself keeps its address when applied again.
    c.apply_and_wait(&file);
    c.down_leaving_nothing();
}

/// `rollout start --wait` succeeds only if the revision it started is the one that runs:
/// a later apply that replaces it makes the wait fail (exit 1) naming the newer revision.
#[test]
fn a_rollout_overtaken_by_a_later_apply_is_no_success() {
    let c = Cluster::start(1);
    let memory = node_memory(&c);
    // One task fits and its surge replacement does not: the rollout cannot finish by itself.
    let big = web_file(
        &c,
        "web",
        "REG/rctl/testserver:v1",
        "",
        &format!("127.0.0.1:{}", c.service_port(0)),
        &format!("[resources]\nmemory = \"{}\"\n", memory / 10 * 6),
    );
    let file = c.service_file("web.toml", &big);
    c.apply_and_wait(&file);

    let v2 = format!("{}/rctl/testserver:v2", c.registry());
    let rollout = spawn_rctl(
        &c,
        &[
            "rollout",
            "start",
            "web",
            "--image",
            &v2,
            "--wait",
            "--timeout",
            "90s",
        ],
    );
    c.eventually(Duration::from_secs(60), "revision 2 written", || {
        (history_len(&c) == 2).then_some(())
    });
    // The later change: back to v1 at a size that fits.
    let small = big.replace(&format!("{}\"", memory / 10 * 6), "64Mi\"");
    std::fs::write(&file, small).unwrap();
    c.apply_and_wait(&file);

    let out = rollout.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: web: revision 2 was replaced by revision 3"),
        "{err}"
    );
    c.down_leaving_nothing();
}

/// Starts `rctl ARGS` against `c` in the background, its output captured.
fn spawn_rctl(c: &Cluster, args: &[&str]) -> std::process::Child {
    std::process::Command::new(c.bin().join("rctl"))
        .args(args)
        .env("RCTL_ADDR", c.addr())
        .env("RCTL_INSECURE", "1")
        .env_remove("RCTL_TLS_NAME")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn rctl")
}

/// The memory of the cluster's (first) node, in bytes.
fn node_memory(c: &Cluster) -> u64 {
    let nodes: Vec<Value> = serde_json::from_str(&c.rctl_ok(&["nodes", "-o", "json"])).unwrap();
    nodes[0]["memory"].as_u64().expect("node memory")
}

fn history_len(c: &Cluster) -> usize {
    history_images(c, "web").len()
}

/// `scale --wait` outlives the scheduler it asked: when that replica dies, the wait asks
/// the others within `--timeout` and succeeds once the change completes.
#[test]
fn a_wait_outlives_the_scheduler_it_asked() {
    let c = Cluster::start_with(1, 3);
    c.eventually(Duration::from_secs(60), "a scheduler leader", || c.leader());
    let memory = node_memory(&c);
    let big = format!("{}\"", memory / 10 * 6);
    // One task fits and a second does not: the scale cannot finish by itself.
    let text = web_file(
        &c,
        "web",
        "REG/rctl/testserver:v1",
        "",
        &format!("127.0.0.1:{}", c.service_port(0)),
        &format!("[resources]\nmemory = \"{big}\n"),
    );
    let file = c.service_file("web.toml", &text);
    c.apply_and_wait(&file);

    // rctl asks the first replica it reaches: scheduler 1.
    let scale = spawn_rctl(&c, &["scale", "web=2", "--wait", "--timeout", "90s"]);
    c.eventually(Duration::from_secs(60), "web wants 2 tasks", || {
        let out = c.rctl_ok(&["service", "ls", "-o", "json"]);
        let v: Vec<Value> = serde_json::from_str(&out).ok()?;
        (v.first()?["replicas"] == 2).then_some(())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.scheduler_pid(1)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The repair: a size at which both tasks fit.
    std::fs::write(
        &file,
        text.replace(&big, "64Mi\"")
            .replace("replicas = 1", "replicas = 2"),
    )
    .unwrap();
    c.apply_and_wait(&file);

    let out = scale.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    c.down_leaving_nothing();
}
