//! The shim as a user of `rctl logs` / `rctl attach` sees it: real containers (namespaces,
//! overlayfs over a busybox layer) started through `rctl-agent __shim` the way the agent
//! starts them, without etcd. Output lands in `log.json` in Docker's json-file format with
//! the right stream; a TTY container is driven over the attach socket. Runs as root.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use rctl_agent::attach;
use rctl_agent::logs::{self, Filter};
use rctl_agent::runtime::state::{ContainerConfig, ContainerDir, PidRecord};
use rctl_agent::runtime::{self, Shim};
use rctl_api::pb;

/// A busybox layer with the applets the tests use.
fn busybox_layer(root: &Path) -> PathBuf {
    let layer = root.join("layer");
    let bin = layer.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/usr/bin/busybox", bin.join("busybox")).unwrap();
    for applet in [
        "sh", "echo", "stty", "sleep", "cat", "true", "seq", "printf", "head",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    layer
}

/// One container run by its shim; dropping it kills whatever still runs and removes the
/// directory (the container's mounts live in its own mount namespace and go with it).
struct Container {
    _tmp: tempfile::TempDir,
    dir: ContainerDir,
    pid: PidRecord,
}

impl Container {
    fn start(argv: &[&str], task: pb::Task) -> Container {
        let tmp = tempfile::tempdir().unwrap();
        let layer = busybox_layer(tmp.path());
        let dir = ContainerDir(tmp.path().join("c"));
        for d in [dir.upper(), dir.work(), dir.rootfs()] {
            std::fs::create_dir_all(d).unwrap();
        }
        let cfg = ContainerConfig {
            id: "shimtest".into(),
            hostname: "shimtest".into(),
            layers: vec![layer],
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into(), "HOME=/".into()],
            workdir: "/".into(),
            stop_signal: String::new(),
            ip: "198.18.0.2".parse().unwrap(),
            prefix_len: 24,
            gateway: "198.18.0.1".parse().unwrap(),
            container_port: 0,
            host_port: 0,
            ports: vec![],
            anonymous_volumes: Vec::new(),
            task_pb: hex::encode(task.encode_to_vec()),
            created_unix_ms: 0,
        };
        std::fs::write(dir.config(), serde_json::to_vec(&cfg).unwrap()).unwrap();
        let shim = Shim::spawn_with(Path::new(env!("CARGO_BIN_EXE_rctl-agent")), &dir).unwrap();
        shim.release().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // A container whose start fails (a missing entrypoint) still has its pid recorded.
        let pid = rt
            .block_on(runtime::wait_started(&dir, Duration::from_secs(10)))
            .ok()
            .or_else(|| dir.read_pid())
            .expect("the shim records PID 1's pid");
        Container {
            _tmp: tmp,
            dir,
            pid,
        }
    }

    /// The exit status the shim records, once it has.
    fn wait_exit(&self) -> i32 {
        eventually(Duration::from_secs(20), "container exit", || {
            self.dir.read_exit()
        })
    }

    fn logs(&self) -> Vec<logs::Entry> {
        logs::read(&self.dir.log_json(), 3, &Filter::default()).unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        runtime::signal(&self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = eventually_opt(Duration::from_secs(10), || self.dir.read_exit());
    }
}

fn eventually_opt<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn eventually<T>(limit: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_opt(limit, f).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

#[test]
fn output_goes_to_the_json_log_by_stream() {
    let c = Container::start(
        &[
            "sh",
            "-c",
            // The pause puts the last line last: stdout and stderr are two pipes, read
            // concurrently, so lines written at once may land in either order.
            "echo out1; echo err1 >&2; sleep 0.3; printf 'no newline'; exit 7",
        ],
        pb::Task::default(),
    );
    assert_eq!(c.wait_exit(), 7);
    let entries = c.logs();
    let seen: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.stream.as_str(), e.log.as_str()))
        .collect();
    assert!(seen.contains(&("stdout", "out1\n")), "{seen:?}");
    assert!(seen.contains(&("stderr", "err1\n")), "{seen:?}");
    assert!(seen.contains(&("stdout", "no newline")), "{seen:?}");
    assert!(entries.iter().all(|e| e.timestamp().is_some()));
    // The raw file is one JSON object per line, as `docker logs` tooling expects.
    let raw = std::fs::read_to_string(c.dir.log_json()).unwrap();
    for line in raw.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["log"].is_string() && v["stream"].is_string() && v["time"].is_string());
    }
    assert_eq!(c.dir.last_log_line().as_deref(), Some("no newline"));
}

#[test]
fn a_missing_entrypoint_is_reported_from_the_log() {
    let c = Container::start(&["/nope"], pb::Task::default());
    assert_eq!(c.wait_exit(), 127);
    let why = c.dir.last_log_line().unwrap();
    assert!(why.contains("/nope"), "{why}");
}

#[test]
fn the_log_rotates_by_size_and_keeps_every_line_in_order() {
    let task = pb::Task {
        log_max_size: 4096,
        log_max_files: 3,
        ..Default::default()
    };
    // 300 entries of ~70 bytes each: 3 files of 4 KiB keep only the newest part.
    let c = Container::start(&["sh", "-c", "seq 1 300"], task);
    assert_eq!(c.wait_exit(), 0);
    assert!(logs::rotated_path(&c.dir.log_json(), 2).exists());
    assert!(!logs::rotated_path(&c.dir.log_json(), 3).exists());
    let nums: Vec<u32> = c
        .logs()
        .iter()
        .map(|e| e.log.trim().parse().unwrap())
        .collect();
    assert_eq!(nums.last(), Some(&300));
    // Whatever is kept is contiguous: no gap, no reordering.
    let first = nums[0];
    assert_eq!(nums, (first..=300).collect::<Vec<_>>());
    assert!(first > 1, "old entries rotated out");
}

fn read_until(a: &mut attach::Attach, want: &str) -> String {
    a.stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(want) {
        match a.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "reading for {want:?}: {e}; got {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    let s = String::from_utf8_lossy(&seen).into_owned();
    assert!(s.contains(want), "wanted {want:?} in {s:?}");
    s
}

#[test]
fn a_tty_container_is_driven_over_attach() {
    let task = pb::Task {
        tty: true,
        stdin_open: true,
        ..Default::default()
    };
    let c = Container::start(&["sh"], task);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(c.dir.attach_sock())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut a = attach::connect(&c.dir).unwrap();
    a.stdin(b"echo $((6*7))\n").unwrap();
    read_until(&mut a, "42");
    a.resize(33, 111).unwrap();
    a.stdin(b"stty size\n").unwrap();
    read_until(&mut a, "33 111");
    a.stdin(b"exit 3\n").unwrap();
    assert_eq!(c.wait_exit(), 3);
    // The session is in the log too (a TTY has one stream).
    let text: String = c.logs().iter().map(|e| e.log.clone()).collect();
    assert!(text.contains("42"), "{text}");
    assert!(c.logs().iter().all(|e| e.stream == "stdout"));
}

#[test]
fn stdin_without_tty_is_framed_and_closable() {
    let task = pb::Task {
        stdin_open: true,
        ..Default::default()
    };
    let c = Container::start(&["sh", "-c", "cat; echo done >&2"], task);
    let mut a = attach::connect(&c.dir).unwrap();
    a.stdin(b"hello\n").unwrap();
    a.close_stdin().unwrap();
    let mut wire = Vec::new();
    a.stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    a.stream().take(1 << 20).read_to_end(&mut wire).unwrap();
    assert_eq!(c.wait_exit(), 0);
    let mut frames = Vec::new();
    while let Some(f) = attach::decode_output(&mut wire) {
        frames.push(f);
    }
    assert!(
        frames.contains(&(logs::Stream::Stdout, b"hello\n".to_vec())),
        "{frames:?}"
    );
    assert!(
        frames.contains(&(logs::Stream::Stderr, b"done\n".to_vec())),
        "{frames:?}"
    );
}

#[test]
fn a_bad_attach_frame_drops_only_that_client() {
    let task = pb::Task {
        stdin_open: true,
        ..Default::default()
    };
    let c = Container::start(&["sh", "-c", "cat"], task);
    let mut bad = std::os::unix::net::UnixStream::connect(c.dir.attach_sock()).unwrap();
    std::io::Write::write_all(&mut bad, &[9, 0, 0, 0, 0]).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut sink = Vec::new();
    assert_eq!(bad.read_to_end(&mut sink).unwrap_or(0), 0);
    let mut good = attach::connect(&c.dir).unwrap();
    good.stdin(b"still here\n").unwrap();
    read_until(&mut good, "still here");
    good.close_stdin().unwrap();
    assert_eq!(c.wait_exit(), 0);
}
