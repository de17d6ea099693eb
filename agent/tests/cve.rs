//! Regression tests for the runc CVE classes, each showing the attack fails:
//! CVE-2019-19921 / CVE-2021-30465 (symlinked mount targets), CVE-2018-15664 (symlink
//! race on a path being resolved), CVE-2024-21626 (leaked fd, working dir via
//! /proc/self/fd), CVE-2019-5736 (overwriting the runtime binary through /proc/PID/exe).

mod common;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::TestRuntime;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use rctl_agent::runtime::mounts::{self, parse_volume};

/// A layer holding only symlinks `(path, target)`.
fn symlink_layer(dir: &Path, links: &[(&str, &str)]) -> PathBuf {
    let layer = dir.join("links-layer");
    for (path, target) in links {
        let p = layer.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, &p).unwrap();
    }
    layer
}

fn empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[tokio::test]
async fn symlinked_mount_targets_stay_in_the_rootfs() {
    let t = TestRuntime::new();
    // Host directories the image's symlinks point at.
    let victim = t.tmp.path().join("host-victim");
    std::fs::create_dir_all(&victim).unwrap();
    let victim_s = victim.display().to_string();
    let layer = symlink_layer(
        t.tmp.path(),
        &[
            ("data", &victim_s),
            ("up", "../../../../../.."),
            ("etc2", &victim_s),
        ],
    );
    let vol = t.tmp.path().join("vol-src");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("marker"), "volume").unwrap();
    let mut spec = t.spec(
        "cve19921",
        "{ cat /data/marker; echo; cat /up/deep/marker; } > /tmp/out",
    );
    spec.layers.push(layer);
    spec.mounts = vec![
        parse_volume(&format!("{}:/data", vol.display())).unwrap(),
        parse_volume(&format!("{}:/up/deep:ro", vol.display())).unwrap(),
        parse_volume("scratchvol:/etc2/x").unwrap(),
    ];
    let (exit, out, running) = t.run(&spec).await;
    // The mounts land inside the container (where the links resolve in its root), so the
    // container still sees its volume ...
    assert_eq!(exit.code, 0, "{out}");
    assert_eq!(out, "volume\nvolume");
    running.delete().await;
    // ... and nothing was mounted on or created in the host directory.
    assert!(empty(&victim), "host dir written: {victim_s}");
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mi.contains(&victim_s), "mount on the host: {mi}");
}

#[tokio::test]
async fn symlinked_etc_cannot_redirect_identity_files() {
    let t = TestRuntime::new();
    let victim = t.tmp.path().join("host-etc");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("hosts"), "host's own\n").unwrap();
    let layer = symlink_layer(
        t.tmp.path(),
        &[("etc/hosts", &format!("{}/hosts", victim.display()))],
    );
    let mut spec = t.spec("cveetc", "grep -c localhost /etc/hosts > /tmp/out");
    spec.layers.push(layer);
    let (exit, out, running) = t.run(&spec).await;
    assert_eq!(exit.code, 0, "{out}");
    assert_eq!(out, "2\n", "the container got its generated hosts file");
    running.delete().await;
    assert_eq!(
        std::fs::read_to_string(victim.join("hosts")).unwrap(),
        "host's own\n"
    );
}

#[test]
fn resolving_races_with_a_swapped_symlink_never_leave_the_root() {
    // CVE-2018-15664: while the path is resolved, a component flips between a directory
    // and a symlink to the host. Every resolution must stay under the root.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::create_dir_all(outside.join("b")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (root, outside, stop) = (root.clone(), outside.clone(), stop.clone());
        std::thread::spawn(move || {
            let (a, a_dir, a_link) = (root.join("a"), root.join("a-dir"), root.join("a-link"));
            std::os::unix::fs::symlink(&outside, &a_link).unwrap();
            let mut flips = 0u32;
            while !stop.load(Ordering::Relaxed) && flips < 200_000 {
                // a <-> a-dir, then a <-> a-link: `a` is a dir, then a symlink out.
                let _ = std::fs::rename(&a, &a_dir);
                let _ = std::fs::rename(&a_link, &a);
                let _ = std::fs::rename(&a, &a_link);
                let _ = std::fs::rename(&a_dir, &a);
                flips += 1;
            }
        })
    };
    let rfd = nix::fcntl::open(&root, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    let root_s = root.display().to_string();
    for i in 0..2000 {
        if let Ok(fd) = mounts::open_in_root(&rfd, &format!("/a/b/t{}", i % 7), false) {
            let at = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
            assert!(
                at.starts_with(&root_s),
                "resolved outside the root: {}",
                at.display()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
    assert_eq!(
        std::fs::read_dir(outside.join("b")).unwrap().count(),
        0,
        "nothing created outside"
    );
}

#[tokio::test]
async fn workdir_through_proc_self_fd_cannot_reach_the_host() {
    // CVE-2024-21626: fds the runtime still holds during setup point at the host; a
    // working dir of /proc/self/fd/N must not follow them.
    let t = TestRuntime::new();
    let host = t.tmp.path().display().to_string();
    for n in 3..8 {
        let id = format!("cwd{n}");
        let mut spec = t.spec(&id, "readlink /proc/self/cwd > /tmp/out; ls -a >> /tmp/out");
        spec.workdir = Some(format!("/proc/self/fd/{n}"));
        let mut c = t.rt.create(&spec).await.unwrap();
        match t.rt.start(&mut c).await {
            Err(e) => assert!(e.to_string().contains("working dir"), "{e}"),
            Ok(_) => {
                let exit = t.rt.wait(&c).await;
                let out =
                    std::fs::read_to_string(c.dir.upper().join("tmp/out")).unwrap_or_default();
                t.rt.delete(&c).await.unwrap();
                assert_eq!(exit.code, 0);
                assert!(!out.contains(&host), "cwd on the host: {out}");
            }
        }
        assert!(!t.rt.dir(&id).0.exists());
    }
}

#[tokio::test]
async fn container_cannot_overwrite_the_runtime_binary() {
    // CVE-2019-5736: the container looks for a runtime process's /proc/PID/exe and opens
    // it for writing. The shim lives outside the container's pid namespace and PID 1 has
    // exec'd the container's own program, so no /proc/PID/exe in reach is the agent.
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_rctl-agent"));
    let before = std::fs::read(&agent).unwrap();
    let t = TestRuntime::new();
    let script = "for e in /proc/[0-9]*/exe /proc/self/exe; do \
        if echo pwned >> $e; then echo wrote $e; fi; done > /tmp/out 2>/dev/null; \
        echo tried >> /tmp/out";
    let (exit, out, running) = t.run(&t.spec("cve5736", script)).await;
    assert_eq!(exit.code, 0, "{out}");
    assert!(out.ends_with("tried\n"), "{out}");
    assert!(!out.contains("wrote"), "{out}");
    running.delete().await;
    assert!(
        std::fs::read(&agent).unwrap() == before,
        "agent binary changed"
    );
}

#[tokio::test]
async fn symlinked_proc_or_dev_in_the_image_is_refused() {
    // CVE-2019-19921's /proc variant: an image whose /proc (or /dev) is a symlink to a
    // host path would get the kernel's proc, or our device nodes, mounted there.
    let t = TestRuntime::new();
    let victim = t.tmp.path().join("host-proc");
    std::fs::create_dir_all(&victim).unwrap();
    for (id, dir) in [("symproc", "proc"), ("symdev", "dev")] {
        let layers = t.tmp.path().join(id);
        std::fs::create_dir_all(&layers).unwrap();
        let layer = symlink_layer(&layers, &[(dir, &victim.display().to_string())]);
        let mut spec = t.spec(id, "true");
        spec.layers.push(layer);
        let mut c = t.rt.create(&spec).await.unwrap();
        let e =
            t.rt.start(&mut c)
                .await
                .expect_err("must not start")
                .to_string();
        assert!(e.contains("symlink or file at"), "{e}");
        assert!(empty(&victim), "host dir touched");
        assert!(!t.rt.dir(id).0.exists());
    }
}
