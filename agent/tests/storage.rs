//! Storage seen from inside a container: bind mounts (read-only or not), named volumes
//! that outlive their container, tmpfs, and the generated /etc/hostname and /etc/hosts.

mod common;

use common::TestRuntime;
use rctl_agent::runtime::mounts::{self, parse_volume, MountKind, MountSpec};

#[tokio::test]
async fn bind_mounts_read_only_and_read_write() {
    let t = TestRuntime::new();
    let ro = t.tmp.path().join("ro-src");
    let rw = t.tmp.path().join("rw-src");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("f"), "from host").unwrap();
    let mut spec = t.spec(
        "bind1",
        "cat /ro/f > /tmp/out; echo; \
         if echo x > /ro/g; then echo ro=writable; else echo ro=refused; fi >> /tmp/out; \
         echo from container > /rw/h; echo rw=ok >> /tmp/out",
    );
    spec.mounts = vec![
        parse_volume(&format!("{}:/ro:ro", ro.display())).unwrap(),
        parse_volume(&format!("{}:/rw", rw.display())).unwrap(),
    ];
    let (exit, out, running) = t.run(&spec).await;
    assert_eq!(exit.code, 0, "{out}");
    assert!(out.starts_with("from host"), "{out}");
    assert!(out.contains("ro=refused"), "{out}");
    assert!(out.contains("rw=ok"), "{out}");
    assert!(!ro.join("g").exists());
    assert_eq!(
        std::fs::read_to_string(rw.join("h")).unwrap(),
        "from container\n"
    );
    running.delete().await;
    assert_eq!(std::fs::read_to_string(ro.join("f")).unwrap(), "from host");
}

#[tokio::test]
async fn volumes_outlive_their_container() {
    let t = TestRuntime::new();
    let mut spec = t.spec("vol1", "echo kept > /v/f; echo ok > /tmp/out");
    spec.mounts = vec![parse_volume("data1:/v").unwrap()];
    let (exit, out, running) = t.run(&spec).await;
    assert_eq!(exit.code, 0, "{out}");
    running.delete().await;
    let root = t.tmp.path().join("root");
    let data = mounts::volume_dir(&root, "data1");
    assert_eq!(std::fs::read_to_string(data.join("f")).unwrap(), "kept\n");
    let mut spec = t.spec("vol2", "cat /v/f > /tmp/out");
    spec.mounts = vec![parse_volume("data1:/v:ro").unwrap()];
    let (exit, out, running) = t.run(&spec).await;
    assert_eq!((exit.code, out.as_str()), (0, "kept\n"));
    running.delete().await;
}

#[tokio::test]
async fn tmpfs_and_identity_files() {
    let t = TestRuntime::new();
    let mut spec = t.spec(
        "files1",
        "grep ' /scratch ' /proc/mounts | cut -d' ' -f3 > /tmp/out; \
         cat /etc/hostname >> /tmp/out; grep -c 'web1$' /etc/hosts >> /tmp/out",
    );
    spec.hostname = Some("web1".into());
    spec.mounts = vec![MountSpec {
        source: String::new(),
        target: "/scratch".into(),
        readonly: false,
        kind: MountKind::Tmpfs,
    }];
    let (exit, out, running) = t.run(&spec).await;
    assert_eq!(exit.code, 0, "{out}");
    assert_eq!(out, "tmpfs\nweb1\n1\n");
    running.delete().await;
}

#[tokio::test]
async fn missing_bind_source_is_refused_and_leaves_nothing() {
    let t = TestRuntime::new();
    let mut spec = t.spec("nosrc", "true");
    let missing = t.tmp.path().join("does-not-exist");
    spec.mounts = vec![parse_volume(&format!("{}:/x", missing.display())).unwrap()];
    let e =
        t.rt.create(&spec)
            .await
            .err()
            .expect("create must fail")
            .to_string();
    assert!(
        e.contains("bind source") && e.contains("does not exist"),
        "{e}"
    );
    assert!(!t.rt.dir("nosrc").0.exists());
    let layout = rctl_agent::runtime::cgroups::host_layout().unwrap();
    for d in rctl_agent::runtime::cgroups::dirs(
        &layout,
        std::path::Path::new(rctl_agent::runtime::cgroups::PARENT),
        "nosrc",
    ) {
        assert!(!d.exists());
    }
}
