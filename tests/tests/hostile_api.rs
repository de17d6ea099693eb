//! End-to-end: what a careless or hostile user sends the API (issue 22), on a real 2-host
//! cluster. Image references are checked by the same grammar on every path (apply, rollout
//! start, rollback, run), and no stored value breaks a listing; service files that could
//! never run are refused at apply with file:line:key, and by the scheduler itself for
//! clients that skip the CLI.

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
    assert_eq!(history_images(&c, "web"), [v1.clone()]);

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
            [v1.clone()],
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
