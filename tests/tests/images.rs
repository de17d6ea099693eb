//! End-to-end: the image lifecycle from the CLI (issue 5): `pull` (by tag and by digest,
//! progress lines), `images`, `system df` with a shared base counted once, `rmi` refused
//! while a container uses the image and forced with -f, `system prune -a -f` freeing
//! exactly what nothing references, and failed pulls leaving nothing behind. The fixture
//! images share a base: `rctl/busybox:latest` is the busybox layer, `rctl/testserver:*`
//! are that layer plus the testserver layer.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rctl_tests::cluster::Cluster;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// Name → size of the blobs and layer dirs (temp entries included: none may be left) under
/// an agent root, sizes as the agent counts them (files once per inode).
fn store_files(root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (kind, dir) in [("blob", "blobs/sha256"), ("layer", "layers")] {
        for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            let name = format!("{kind} {}", e.file_name().to_string_lossy());
            out.insert(name, du(&e.path()));
        }
    }
    out
}

fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![path.to_path_buf()];
    let mut total = 0;
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        } else if md.is_file() && seen.insert(md.ino()) {
            total += md.len();
        }
    }
    total
}

fn json(c: &Cluster, args: &[&str]) -> Value {
    serde_json::from_str(&c.rctl_ok(args)).expect("JSON output")
}

fn fail(c: &Cluster, args: &[&str]) -> (i32, String) {
    let out = c.rctl(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn image_lifecycle_from_pull_to_prune() {
    let c = Cluster::start(1);
    let reg = c.registry();
    let root = c.state.join("h1");
    let busybox = format!("{reg}/rctl/busybox:latest");
    let v1 = format!("{reg}/rctl/testserver:v1");

    // Pull in plain mode (not a terminal): one line per layer state, then the result.
    let out = c.rctl_ok(&["pull", &busybox]);
    assert!(out.contains("h1: pulled "), "{out}");
    assert!(out.contains(": pull complete"), "{out}");
    let out = c.rctl_ok(&["pull", &v1]);
    assert!(
        out.contains(": already exists"),
        "the shared base moves once: {out}"
    );

    let images = json(&c, &["images", "-o", "json"]);
    let images = images.as_array().unwrap();
    assert_eq!(images.len(), 2, "{images:#?}");
    assert!(images.iter().all(|i| i["node"] == "h1"));
    let table = c.rctl_ok(&["images"]);
    assert!(table.starts_with("REPOSITORY"), "{table}");
    assert!(table.contains(&format!("{reg}/rctl/testserver")), "{table}");

    // The base layer is stored once: 2 layer dirs (base, testserver), and df's image size is
    // exactly what is on disk.
    let files = store_files(&root);
    assert_eq!(
        files.keys().filter(|k| k.starts_with("layer ")).count(),
        2,
        "{files:#?}"
    );
    let on_disk: u64 = files.values().sum();
    let df = json(&c, &["system", "df", "-o", "json"]);
    assert_eq!(df[0]["node"], "h1");
    assert_eq!(df[0]["images"]["total"], 2);
    assert_eq!(df[0]["images"]["size"].as_u64().unwrap(), on_disk, "{df:#}");
    let table = c.rctl_ok(&["system", "df", "-v"]);
    assert!(table.starts_with("TYPE"), "{table}");
    assert!(table.contains("Images space usage:"), "{table}");
    let ids = c.rctl_ok(&["images", "-q"]);
    assert_eq!(ids.lines().count(), 2, "{ids}");
    assert!(ids.lines().all(|l| l.len() == 12), "{ids}");

    // inspect: config, layers with digests and sizes, platform; `inspect` resolves images.
    let detail = json(&c, &["image", "inspect", &v1]);
    let d = &detail[0];
    assert_eq!(
        (d["node"].as_str(), d["architecture"].as_str()),
        (Some("h1"), Some("amd64"))
    );
    assert_eq!(d["os"], "linux");
    let layers = d["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert!(layers
        .iter()
        .all(|l| l["digest"].as_str().unwrap().starts_with("sha256:")
            && l["size"].as_u64().unwrap() > 0
            && l["unpacked_size"].as_u64().unwrap() > 0));
    assert_eq!(d["config"]["config"]["Env"][1], "VERSION=v1");
    assert_eq!(json(&c, &["inspect", &v1]), detail);
    let (code, err) = fail(&c, &["inspect", "nothing-by-that-name"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no such object: nothing-by-that-name"),
        "{err}"
    );

    // Pull by digest; an unknown digest and an unknown tag fail with one line and leave
    // nothing behind.
    let digest = images
        .iter()
        .find(|i| i["reference"] == busybox.as_str())
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let by_digest = format!("{reg}/rctl/busybox@{digest}");
    let out = c.rctl_ok(&["pull", &by_digest]);
    assert!(out.contains(&format!("h1: pulled {by_digest}")), "{out}");
    let before = store_files(&root);
    let records = std::fs::read_dir(root.join("images")).unwrap().count();
    for bad in [
        format!("{reg}/rctl/busybox@sha256:{}", "0".repeat(64)),
        format!("{reg}/rctl/busybox:no-such-tag"),
    ] {
        let (code, err) = fail(&c, &["pull", &bad]);
        assert_eq!(code, 1, "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: h1: pull "), "{err}");
        assert_eq!(store_files(&root), before, "a failed pull left something");
        assert_eq!(
            std::fs::read_dir(root.join("images")).unwrap().count(),
            records
        );
    }
    let (code, err) = fail(&c, &["pull", "Not A Reference"]);
    assert_eq!(code, 2, "{err}");

    // A service runs testserver:v1: rmi is refused, naming the container.
    let file = c.service_file("web.toml", &c.web_service(1, "v1"));
    c.apply_and_wait(&file);
    let (code, err) = fail(&c, &["rmi", &v1]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is used by container"), "{err}");
    assert!(root.join("images").read_dir().unwrap().count() == 3);

    // rmi of the other image sharing the base keeps the service's image runnable.
    let out = c.rctl_ok(&["rmi", &busybox, &by_digest]);
    assert!(out.contains(&format!("Untagged: {busybox}")), "{out}");
    let after_rmi = store_files(&root);
    assert_eq!(
        after_rmi.keys().filter(|k| k.starts_with("layer ")).count(),
        2,
        "the shared base stays: {after_rmi:#?}"
    );
    c.rctl_ok(&["scale", "web=2", "--wait", "--timeout", "90s"]);

    // Forced removal while in use: untagged, the running containers keep their layers.
    let out = c.rctl_ok(&["rmi", "-f", &v1]);
    assert!(out.contains(&format!("Untagged: {v1}")), "{out}");
    assert_eq!(
        store_files(&root)
            .keys()
            .filter(|k| k.starts_with("layer "))
            .count(),
        2
    );

    // Prune with an unused image (v2: the same layers as v1, its own config) and the
    // service still running: exactly v2's config blob and the blobs only images referenced
    // go, the layers the containers use stay, and the bytes reported are theirs.
    c.rctl_ok(&["pull", &format!("{reg}/rctl/testserver:v2")]);
    let before = store_files(&root);
    let (code, err) = fail(&c, &["system", "prune", "-a"]);
    assert_eq!(code, 2, "plain mode needs -f: {err}");
    assert_eq!(store_files(&root), before);
    let report = c.rctl_ok(&["system", "prune", "-a", "-f"]);
    let after = store_files(&root);
    let gone: Vec<(&String, &u64)> = before
        .iter()
        .filter(|(k, _)| !after.contains_key(*k))
        .collect();
    assert!(
        gone.iter().all(|(k, _)| k.starts_with("blob ")),
        "{gone:#?}"
    );
    assert_eq!(after.keys().filter(|k| k.starts_with("layer ")).count(), 2);
    let freed: u64 = gone.iter().map(|(_, b)| **b).sum();
    assert!(!gone.is_empty());
    assert!(
        report.contains("Total reclaimed space: ") && report.contains(&format!("({freed} bytes)")),
        "reported vs removed {freed}: {report}"
    );
    assert_eq!(json(&c, &["images", "-o", "json"]), serde_json::json!([]));

    // Once the service is gone, prune frees everything that is left.
    c.rctl_ok(&["service", "rm", "web"]);
    c.eventually(WAIT, "the containers to be removed", || {
        // `.trash` holds removed containers while their files are deleted.
        let left = std::fs::read_dir(root.join("containers"))
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count();
        (left == 0).then_some(())
    });
    let before = store_files(&root);
    let total: u64 = before.values().sum();
    let report = c.rctl_ok(&["system", "prune", "-a", "-f"]);
    assert!(store_files(&root).is_empty(), "{:#?}", store_files(&root));
    assert!(
        report.contains(&format!("({total} bytes)")),
        "{total}: {report}"
    );
    c.down_leaving_nothing();
}

/// A `docker-registry` with htpasswd auth (alice / s3cret), stopped (by pid) on drop.
struct PrivateRegistry {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl PrivateRegistry {
    fn start(addr: &str) -> PrivateRegistry {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("s3cret", 5).unwrap();
        std::fs::write(dir.path().join("htpasswd"), format!("alice:{hash}\n")).unwrap();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n\
             http:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: rctl-test\n    path: {root}/htpasswd\n",
            root = dir.path().display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let r = PrivateRegistry { child, _dir: dir };
        rctl_tests::cluster::eventually(
            Duration::from_secs(20),
            "the private registry",
            || std::net::TcpStream::connect(addr).ok(),
            String::new,
        );
        r
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn login_then_pull_a_private_image() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::start_with_private_registry(1);
    let private = c.private_registry();
    let registry = PrivateRegistry::start(&private);
    // :1 for `pull`, :run for `run`, which pulls what the node does not have.
    for tag in ["1", "run"] {
        let out = std::process::Command::new("skopeo")
            .args([
                "copy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--dest-creds",
                "alice:s3cret",
                &format!("docker://{}/rctl/busybox:latest", c.registry()),
                &format!("docker://{private}/private/busybox:{tag}"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Logins go to RCTL_CONFIG; HOME is empty so no ~/.docker/config.json is read.
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("rctl");
    let env = [
        ("HOME", home.path().to_str().unwrap()),
        ("RCTL_CONFIG", config.to_str().unwrap()),
    ];
    let rctl = |args: &[&str]| c.rctl_env(&c.addr(), args, &env);
    let image = format!("{private}/private/busybox:1");

    let out = rctl(&["pull", &image]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("unauthorized: run rctl login {private}")),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let run_image = format!("{private}/private/busybox:run");
    let out = rctl(&["run", "--rm", &run_image, "echo", "from-private"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("unauthorized"), "{err}");
    assert!(c.ps(&["-a"]).is_empty(), "a refused pull left a container");

    let out = rctl(&[
        "login",
        &private,
        "--plain-http",
        "-u",
        "alice",
        "-p",
        "wrong",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("unauthorized"), "{err}");
    assert!(
        !config.join("config.json").exists(),
        "a refused login was stored"
    );

    let out = rctl(&[
        "login",
        &private,
        "--plain-http",
        "-u",
        "alice",
        "-p",
        "s3cret",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = config.join("config.json");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let stored: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(stored["auths"][&private]["auth"], "YWxpY2U6czNjcmV0");

    // `run` pulls the missing image with the stored login, as `pull` does.
    let out = rctl(&["run", "--rm", &run_image, "echo", "from-private"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-private\n");

    let out = rctl(&["pull", &image]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("h1: pulled {image}")), "{stdout}");

    // The registry goes away: a pull fails with one line after its retries, and leaves
    // nothing in the store.
    let root = c.state.join("h1");
    let records = std::fs::read_dir(root.join("images")).unwrap().count();
    let blobs = std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .count();
    drop(registry);
    let out = rctl(&["pull", &format!("{private}/private/busybox:2")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: h1: pull "), "{err}");
    assert_eq!(
        std::fs::read_dir(root.join("images")).unwrap().count(),
        records
    );
    assert_eq!(
        std::fs::read_dir(root.join("blobs/sha256"))
            .unwrap()
            .count(),
        blobs
    );
    assert!(std::fs::read_dir(root.join("layers"))
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp")));

    let out = rctl(&["logout", &private]);
    assert!(out.status.success());
    let stored: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(stored["auths"].get(&private).is_none(), "{stored}");
    c.down_leaving_nothing();
}

#[test]
fn image_requests_fan_out_to_every_node_or_the_one_named() {
    let c = Cluster::start(2);
    let busybox = format!("{}/rctl/busybox:latest", c.registry());
    let nodes_with = |extra: &[&str]| {
        let mut args = vec!["images", "-o", "json"];
        args.extend_from_slice(extra);
        let v = json(&c, &args);
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i["node"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };

    let out = c.rctl_ok(&["pull", "--node", "h2", &busybox]);
    assert!(out.contains("h2: pulled") && !out.contains("h1:"), "{out}");
    assert_eq!(nodes_with(&[]), ["h2"]);
    let out = c.rctl_ok(&["pull", &busybox]);
    assert!(
        out.contains("h1: pulled") && out.contains("h2: pulled"),
        "{out}"
    );
    assert!(
        out.contains("h2: ") && out.contains(": already exists"),
        "{out}"
    );
    assert_eq!(nodes_with(&[]), ["h1", "h2"]);
    assert_eq!(nodes_with(&["--node", "h1"]), ["h1"]);
    let df = json(&c, &["system", "df", "-o", "json"]);
    let df_nodes: Vec<&str> = df
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["node"].as_str().unwrap())
        .collect();
    assert_eq!(df_nodes, ["h1", "h2"]);

    let out = c.rctl_ok(&["rmi", &busybox]);
    assert!(
        out.contains(&format!("Untagged: {busybox} (h1,h2)")),
        "{out}"
    );
    assert_eq!(nodes_with(&[]), Vec::<String>::new());
    let (code, err) = fail(&c, &["rmi", &busybox]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no such image"), "{err}");
    let (code, err) = fail(&c, &["pull", "--node", "h9", &busybox]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("node \"h9\" not found"), "{err}");
    c.down_leaving_nothing();
}
