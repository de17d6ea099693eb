//! The image lifecycle on one agent against a real `docker-registry`: two images sharing a
//! base layer (stored once, counted once by disk usage), progress events, removal refused
//! while a container uses the image, GC freeing exactly the unreferenced, GC running while a
//! pull is in flight, prune, and a pull waiting for another of the same image showing its
//! download.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{gz, push, put_image, TestRegistry};
use rctl_agent::image::lifecycle::LifecycleError;
use rctl_agent::image::{ImageStore, LayerPhase, PullOptions};

fn store(root: &Path, registry: &str) -> ImageStore {
    common::install_crypto();
    ImageStore::new(root, vec![registry.to_string()])
}

/// Name → bytes of every blob and layer dir (each file once per inode).
fn on_disk(root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (kind, dir) in [("blob", "blobs/sha256"), ("layer", "layers")] {
        for e in std::fs::read_dir(root.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = format!("{kind} sha256:{}", e.file_name().to_string_lossy());
            out.insert(name, rctl_agent::image::index::dir_size(&e.path()));
        }
    }
    out
}

/// Two images `shared:a` and `shared:b`: one base layer, and an own layer each.
fn shared_images(registry: &TestRegistry) -> tempfile::TempDir {
    let layout = tempfile::tempdir().unwrap();
    let base: &[(&str, &[u8])] = &[("etc/base", &[7u8; 100_000])];
    let a = put_image(
        layout.path(),
        "amd64",
        &[gz(base), gz(&[("app/a", b"a\n")])],
    );
    push(layout.path(), "a", a, &registry.host(), "shared");
    let b = put_image(
        layout.path(),
        "amd64",
        &[gz(base), gz(&[("app/b", b"bb\n")])],
    );
    push(layout.path(), "b", b, &registry.host(), "shared");
    layout
}

#[tokio::test]
async fn a_pull_waiting_for_another_of_the_same_image_shows_its_download() {
    let registry = TestRegistry::start();
    let _layout = shared_images(&registry);
    let root = tempfile::tempdir().unwrap();
    let s = store(root.path(), &registry.host());
    let r = format!("{}/shared:a", registry.host());
    let (t1, mut r1) = tokio::sync::mpsc::unbounded_channel();
    let (t2, mut r2) = tokio::sync::mpsc::unbounded_channel();
    let (o1, o2) = (
        PullOptions::new(Some(t1), None),
        PullOptions::new(Some(t2), None),
    );
    let (a, b) = tokio::join!(s.pull(&r, &o1), s.pull(&r, &o2));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.manifest_digest, b.manifest_digest);
    drop((o1, o2));
    // Both saw every layer downloaded to the end; the one that waited saw the other's
    // download rather than "already exists" once it was over.
    for rx in [&mut r1, &mut r2] {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        for blob in &a.blobs {
            assert_eq!(
                events
                    .iter()
                    .rfind(|e| e.digest == blob.digest)
                    .map(|e| e.phase),
                Some(LayerPhase::Done),
                "{events:?}"
            );
        }
        assert!(
            !events.iter().any(|e| e.phase == LayerPhase::AlreadyExists),
            "{events:?}"
        );
    }
}

/// A container made from `layers`, as the runtime records it; `exited` adds its exit file.
fn fake_container(root: &Path, id: &str, layers: &[std::path::PathBuf], exited: bool) {
    let dir = root.join("containers").join(id);
    std::fs::create_dir_all(dir.join("upper")).unwrap();
    std::fs::write(dir.join("upper/scratch"), vec![1u8; 1234]).unwrap();
    let cfg = serde_json::json!({
        "id": id, "hostname": id, "layers": layers, "argv": ["sh"], "env": [],
        "workdir": "/", "ip": "198.19.1.2", "prefix_len": 24, "gateway": "198.19.1.1",
        "container_port": 0, "host_port": 0, "task_pb": "", "created_unix_ms": 0,
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    if exited {
        std::fs::write(dir.join("exit"), "0").unwrap();
    }
}

#[tokio::test]
async fn two_images_sharing_a_base_through_pull_df_rmi_gc_and_prune() {
    let registry = TestRegistry::start();
    let _layout = shared_images(&registry);
    let root = tempfile::tempdir().unwrap();
    let s = store(root.path(), &registry.host());
    let (ra, rb) = (
        format!("{}/shared:a", registry.host()),
        format!("{}/shared:b", registry.host()),
    );

    let a = s.ensure(&ra).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = PullOptions::new(Some(tx), None);
    let b = s.pull(&rb, &opts).await.unwrap();
    drop(opts);
    let mut events = Vec::new();
    while let Some(e) = rx.recv().await {
        events.push(e);
    }
    let base = &a.blobs[0].digest;
    assert_eq!(&b.blobs[0].digest, base);
    assert!(
        events
            .iter()
            .any(|e| &e.digest == base && e.phase == LayerPhase::AlreadyExists),
        "{events:?}"
    );
    let own = &b.blobs[1].digest;
    assert_eq!(
        events.iter().rfind(|e| &e.digest == own).map(|e| e.phase),
        Some(LayerPhase::Done),
        "{events:?}"
    );

    // Stored once: base + two own layers; disk usage counts each once.
    let disk = on_disk(root.path());
    assert_eq!(disk.keys().filter(|k| k.starts_with("layer")).count(), 3);
    let u = s.usage().await;
    assert_eq!(u.images.total, 2);
    assert_eq!(u.images.bytes, disk.values().sum::<u64>());
    assert_eq!(u.images.reclaimable, u.images.bytes, "nothing in use yet");

    // A container made from a: removing a is refused, naming it; df sees it active.
    fake_container(root.path(), "c1", &a.layers, false);
    match s.remove(&ra, false).await {
        Err(e @ LifecycleError::InUse { .. }) => {
            assert!(e.to_string().contains("c1"), "{e}")
        }
        other => panic!("rmi of an image in use: {other:?}"),
    }
    let u = s.usage().await;
    assert_eq!(
        (u.images.active, u.containers.total, u.containers.active),
        (1, 1, 1)
    );

    // Removing b frees exactly what only b used: its config, its own blob and layer dir.
    let before = on_disk(root.path());
    let r = s.remove(&rb, false).await.unwrap();
    let after = on_disk(root.path());
    let gone: BTreeMap<String, u64> = before
        .iter()
        .filter(|(k, _)| !after.contains_key(*k))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let mut deleted = r.gc.deleted.clone();
    deleted.sort();
    assert_eq!(deleted, gone.keys().cloned().collect::<Vec<_>>());
    assert_eq!(gone.len(), 3, "{gone:?}");
    assert_eq!(r.gc.bytes_freed, gone.values().sum::<u64>());
    assert!(a.layers.iter().all(|l| l.is_dir()), "a stays whole");
    assert_eq!(s.list().await.len(), 1);

    // Forced: a is untagged; the container keeps its layer dirs, the blobs go.
    let r = s.remove(&ra, true).await.unwrap();
    assert_eq!(r.untagged, vec![ra.clone()]);
    assert!(a.layers.iter().all(|l| l.is_dir()));
    assert!(root
        .path()
        .join("blobs/sha256")
        .read_dir()
        .unwrap()
        .next()
        .is_none());

    // Prune: the container has exited and runs no service, so it goes, then its layers.
    std::fs::write(root.path().join("containers/c1/exit"), "0").unwrap();
    let before: u64 = on_disk(root.path()).values().sum::<u64>()
        + rctl_agent::image::index::dir_size(&root.path().join("containers/c1"));
    let p = s.prune(true, false).await;
    assert_eq!(p.containers, vec!["c1".to_string()]);
    assert_eq!(p.bytes_freed, before);
    assert!(
        on_disk(root.path()).is_empty(),
        "{:?}",
        on_disk(root.path())
    );
}

#[tokio::test]
async fn a_gc_during_a_pull_leaves_the_pulled_image_whole() {
    let registry = TestRegistry::start();
    let _layout = shared_images(&registry);
    let root = tempfile::tempdir().unwrap();
    let s = store(root.path(), &registry.host());
    let reference = format!("{}/shared:a", registry.host());
    for _ in 0..5 {
        let pulling = {
            let s = s.clone();
            let r = reference.clone();
            tokio::spawn(async move { s.ensure(&r).await })
        };
        let gcs = {
            let s = s.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    s.gc().await;
                    tokio::task::yield_now().await;
                }
            })
        };
        let img = pulling.await.unwrap().unwrap();
        gcs.await.unwrap();
        assert!(
            img.layers.iter().all(|l| l.is_dir()),
            "a layer was collected"
        );
        for b in &img.blobs {
            let hex = b.digest.trim_start_matches("sha256:");
            assert!(root.path().join("blobs/sha256").join(hex).is_file());
        }
        // Untag and collect, so the next round pulls from scratch.
        s.remove(&reference, false).await.unwrap();
        assert!(on_disk(root.path()).is_empty());
    }
}

#[tokio::test]
async fn removing_an_unknown_image_says_so() {
    let root = tempfile::tempdir().unwrap();
    let s = store(root.path(), "127.0.0.1:1");
    let e = s.remove("127.0.0.1:1/nope:1", false).await.unwrap_err();
    assert_eq!(e.to_string(), "no such image: 127.0.0.1:1/nope:1");
}

#[tokio::test]
async fn a_login_sent_with_a_pull_is_used_for_it_after_an_anonymous_refusal() {
    use rctl_agent::image::registry::Credentials;
    let registry = TestRegistry::start();
    let _layout = shared_images(&registry);
    let policy: common::Policy = std::sync::Arc::new(|_: &str, _| common::Fault::Forward);
    let proxy = common::FaultProxy::start(
        registry.addr,
        policy,
        Some(("alice".to_string(), "s3cret".to_string())),
    )
    .await;
    let root = tempfile::tempdir().unwrap();
    // No agent-wide logins: only what the request brings.
    let s = store(root.path(), &proxy.host()).with_credentials(Credentials::default());
    let reference = format!("{}/shared:a", proxy.host());

    let e = s.ensure(&reference).await.unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("unauthorized: run rctl login {}", proxy.host())),
        "{e}"
    );
    let mut wrong = Credentials::default();
    wrong.insert(&proxy.host(), "alice", "nope");
    let opts = |c: Credentials| PullOptions::new(None, Some(c));
    let e = s.pull(&reference, &opts(wrong)).await.unwrap_err();
    assert!(e.to_string().contains("unauthorized"), "{e}");
    let mut right = Credentials::default();
    right.insert(&proxy.host(), "alice", "s3cret");
    let img = s.pull(&reference, &opts(right)).await.unwrap();
    assert!(img.layers.iter().all(|l| l.is_dir()));
}
