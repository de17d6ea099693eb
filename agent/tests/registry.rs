//! The agent's image store against a real `docker-registry`, with a fault-injecting proxy in
//! front of it where a test needs the registry to misbehave: multi-arch indexes, pulls by
//! digest, tampered manifests and blobs, 500s, connections cut mid-blob, bearer-token auth.
//! After every failed pull nothing partial is visible in the store.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{gz, push, put_image, put_index, Fault, FaultProxy, TestRegistry};
use rctl_agent::image::registry::{Credentials, Retry};
use rctl_agent::image::ImageStore;

fn fast_retry() -> Retry {
    Retry {
        attempts: 3,
        first_backoff: Duration::from_millis(20),
    }
}

fn store(root: &Path, registry: &str) -> ImageStore {
    common::install_crypto();
    ImageStore::new(root, vec![registry.to_string()]).with_retry(fast_retry())
}

/// Names left in the store's dirs other than complete blobs, layers and image records:
/// temp files or dirs, and for a failed pull, any layer or image record at all.
fn leftovers(root: &Path, failed: bool) -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["blobs/sha256", "layers", "images"] {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in rd {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp") || (failed && dir != "blobs/sha256") {
                out.push(format!("{dir}/{name}"));
            }
        }
    }
    out
}

/// A one-layer image `repo:1` with file `hello`, pushed to `registry`.
fn simple_image(registry: &TestRegistry, repo: &str) -> tempfile::TempDir {
    let layout = tempfile::tempdir().unwrap();
    let desc = put_image(
        layout.path(),
        "amd64",
        &[gz(&[("hello", b"hello from the layer\n")])],
    );
    push(layout.path(), "1", desc, &registry.host(), repo);
    layout
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(i) = src {
        s.push_str(&format!(": {i}"));
        src = i.source();
    }
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multi_arch_index_pulls_the_amd64_image() {
    let registry = TestRegistry::start();
    let layout = tempfile::tempdir().unwrap();
    let arm = put_image(layout.path(), "arm64", &[gz(&[("arch", b"arm64\n")])]);
    let amd = put_image(layout.path(), "amd64", &[gz(&[("arch", b"amd64\n")])]);
    let index = put_index(layout.path(), vec![arm, amd.clone()]);
    push(layout.path(), "multi", index, &registry.host(), "multi");

    let root = tempfile::tempdir().unwrap();
    let img = store(root.path(), &registry.host())
        .ensure(&format!("{}/multi:multi", registry.host()))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(img.layers[0].join("arch")).unwrap(),
        b"amd64\n"
    );
    assert_eq!(img.manifest_digest, amd["digest"].as_str().unwrap());
    assert_eq!(img.config.env, Some(vec!["ARCH=amd64".to_string()]));
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_by_digest_works_and_a_tampered_manifest_is_rejected() {
    let registry = TestRegistry::start();
    let layout = tempfile::tempdir().unwrap();
    let desc = put_image(layout.path(), "amd64", &[gz(&[("f", b"by digest\n")])]);
    let digest = desc["digest"].as_str().unwrap().to_string();
    push(layout.path(), "1", desc, &registry.host(), "bydigest");

    let root = tempfile::tempdir().unwrap();
    let img = store(root.path(), &registry.host())
        .ensure(&format!("{}/bydigest@{digest}", registry.host()))
        .await
        .unwrap();
    assert_eq!(img.manifest_digest, digest);
    assert_eq!(
        std::fs::read(img.layers[0].join("f")).unwrap(),
        b"by digest\n"
    );

    // The registry (through the proxy) serves a manifest that does not hash to the digest.
    let policy: common::Policy = Arc::new(|req: &str, _| {
        if req.contains("/manifests/") {
            Fault::Corrupt
        } else {
            Fault::Forward
        }
    });
    let proxy = FaultProxy::start(registry.addr, policy, None).await;
    let root = tempfile::tempdir().unwrap();
    let err = store(root.path(), &proxy.host())
        .ensure(&format!("{}/bydigest@{digest}", proxy.host()))
        .await
        .expect_err("tampered manifest accepted");
    let msg = chain(&err);
    assert!(msg.to_lowercase().contains("digest"), "{msg}");
    assert!(proxy.faults() >= 1);
    assert_eq!(leftovers(root.path(), true), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_layer_blob_is_rejected_and_nothing_partial_remains() {
    let registry = TestRegistry::start();
    let _layout = simple_image(&registry, "tampered");
    let policy: common::Policy = Arc::new(|req: &str, _| {
        if req.contains("/blobs/") {
            Fault::Corrupt
        } else {
            Fault::Forward
        }
    });
    let proxy = FaultProxy::start(registry.addr, policy, None).await;
    let root = tempfile::tempdir().unwrap();
    let err = store(root.path(), &proxy.host())
        .ensure(&format!("{}/tampered:1", proxy.host()))
        .await
        .expect_err("tampered blob accepted");
    let msg = chain(&err);
    assert!(msg.contains("sha256:"), "{msg}");
    assert_eq!(leftovers(root.path(), true), Vec::<String>::new());
    assert_eq!(
        std::fs::read_dir(root.path().join("blobs/sha256"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_500_then_200_is_retried() {
    let registry = TestRegistry::start();
    let _layout = simple_image(&registry, "flaky");
    // The first request for the manifest and for every blob gets a 500.
    let policy: common::Policy = Arc::new(|req: &str, n| {
        if n == 0 && (req.contains("/manifests/") || req.contains("/blobs/")) {
            Fault::Status(500)
        } else {
            Fault::Forward
        }
    });
    let proxy = FaultProxy::start(registry.addr, policy, None).await;
    let root = tempfile::tempdir().unwrap();
    let img = store(root.path(), &proxy.host())
        .ensure(&format!("{}/flaky:1", proxy.host()))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(img.layers[0].join("hello")).unwrap(),
        b"hello from the layer\n"
    );
    // manifest + config + layer each failed once.
    assert_eq!(proxy.faults(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_dies_mid_blob_gives_a_clear_error_and_no_partial_state() {
    let registry = TestRegistry::start();
    let layout = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let layer = gz(&[("big", &big)]);
    let layer_digest = common::sha256(&layer.blob);
    let desc = put_image(layout.path(), "amd64", &[layer]);
    push(layout.path(), "1", desc, &registry.host(), "dying");
    let cut = layer_digest.clone();
    let policy: common::Policy = Arc::new(move |req: &str, _| {
        if req.contains(&cut) {
            Fault::Truncate
        } else {
            Fault::Forward
        }
    });
    let proxy = FaultProxy::start(registry.addr, policy, None).await;
    let root = tempfile::tempdir().unwrap();
    let err = store(root.path(), &proxy.host())
        .ensure(&format!("{}/dying:1", proxy.host()))
        .await
        .expect_err("a truncated blob was accepted");
    let msg = chain(&err);
    assert!(
        msg.contains(&layer_digest),
        "error does not name the blob: {msg}"
    );
    assert!(msg.contains("after 3 attempts"), "{msg}");
    assert_eq!(proxy.faults(), 3, "retried {} times", proxy.faults());
    assert_eq!(leftovers(root.path(), true), Vec::<String>::new());
    let blobs: Vec<_> = std::fs::read_dir(root.path().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!blobs.contains(&layer_digest.trim_start_matches("sha256:").to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_credentials_from_a_docker_config_get_a_bearer_token() {
    let registry = TestRegistry::start();
    let _layout = simple_image(&registry, "private");
    let policy: common::Policy = Arc::new(|_: &str, _| Fault::Forward);
    let proxy = FaultProxy::start(
        registry.addr,
        policy,
        Some(("alice".to_string(), "s3cret".to_string())),
    )
    .await;
    let reference = format!("{}/private:1", proxy.host());

    let anon = tempfile::tempdir().unwrap();
    let err = store(anon.path(), &proxy.host())
        .with_credentials(Credentials::default())
        .ensure(&reference)
        .await
        .expect_err("anonymous pull of a private image succeeded");
    assert!(
        chain(&err).to_lowercase().contains("auth"),
        "{}",
        chain(&err)
    );

    let config = format!(
        r#"{{"auths": {{"{}": {{"auth": "YWxpY2U6czNjcmV0"}}}}}}"#,
        proxy.host()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let creds = Credentials::load(&dir.path().join("config.json")).unwrap();
    let root = tempfile::tempdir().unwrap();
    let img = store(root.path(), &proxy.host())
        .with_credentials(creds)
        .ensure(&reference)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(img.layers[0].join("hello")).unwrap(),
        b"hello from the layer\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_zstd_and_uncompressed_layers_stack() {
    let registry = TestRegistry::start();
    let layout = tempfile::tempdir().unwrap();
    let desc = put_image(
        layout.path(),
        "amd64",
        &[
            gz(&[("a", b"gzip\n")]),
            common::zst(&[("b", b"zstd\n")]),
            common::plain(&[("c", b"plain\n")]),
        ],
    );
    push(layout.path(), "1", desc, &registry.host(), "mixed");
    let root = tempfile::tempdir().unwrap();
    let img = store(root.path(), &registry.host())
        .ensure(&format!("{}/mixed:1", registry.host()))
        .await
        .unwrap();
    let read = |i: usize, f: &str| std::fs::read(img.layers[i].join(f)).unwrap();
    assert_eq!(
        (read(0, "a"), read(1, "b"), read(2, "c")),
        (b"gzip\n".to_vec(), b"zstd\n".to_vec(), b"plain\n".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_sharing_a_base_fetch_each_blob_once() {
    let registry = TestRegistry::start();
    let layout = tempfile::tempdir().unwrap();
    let base = || {
        [
            gz(&[("base1", &[1u8; 200_000][..])]),
            gz(&[("base2", &[2u8; 200_000][..])]),
        ]
    };
    let [b1, b2] = base();
    let a = put_image(layout.path(), "amd64", &[b1, b2, gz(&[("app", b"a\n")])]);
    push(layout.path(), "a", a, &registry.host(), "shared");
    let [b1, b2] = base();
    let b = put_image(layout.path(), "amd64", &[b1, b2, gz(&[("app", b"b\n")])]);
    push(layout.path(), "b", b, &registry.host(), "shared");

    let policy: common::Policy = Arc::new(|_: &str, _| Fault::Forward);
    let proxy = FaultProxy::start(registry.addr, policy, None).await;
    let root = tempfile::tempdir().unwrap();
    let s = store(root.path(), &proxy.host());
    let (ra, rb) = (
        format!("{}/shared:a", proxy.host()),
        format!("{}/shared:b", proxy.host()),
    );
    let (ia, ib) = tokio::join!(s.ensure(&ra), s.ensure(&rb));
    let (ia, ib) = (ia.unwrap(), ib.unwrap());
    assert_eq!(ia.layers[..2], ib.layers[..2], "base layers not shared");
    assert_ne!(ia.layers[2], ib.layers[2]);
    assert_eq!(std::fs::read(ib.layers[2].join("app")).unwrap(), b"b\n");

    let log = proxy.log.lock().unwrap().clone();
    let mut blob_gets: Vec<&String> = log
        .iter()
        .map(|(r, _)| r)
        .filter(|r| r.contains("/blobs/"))
        .collect();
    blob_gets.sort();
    let n = blob_gets.len();
    blob_gets.dedup();
    assert_eq!(n, blob_gets.len(), "a blob was fetched twice: {log:?}");
    // Two base layers, two app layers, two configs.
    assert_eq!(n, 6, "{log:?}");
    assert_eq!(
        std::fs::read_dir(root.path().join("layers"))
            .unwrap()
            .count(),
        4
    );
}
