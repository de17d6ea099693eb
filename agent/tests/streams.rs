//! The agent's stream RPCs over real containers (namespaces, overlayfs over busybox, the
//! real shim and `__exec`), the way the Agent API serves them: attach before start (a
//! container that waits for its first client loses no output) and exec with a pty (prompt,
//! arithmetic, window size, exit code), plus the refusals a user sees. Runs as root.

mod common;

use std::time::Duration;

use common::TestRuntime;
use futures::StreamExt;
use prost::Message;
use rctl_agent::runtime::container::Container;
use rctl_agent::streams::{self, InputStream, OutputStream, StreamError};
use rctl_api::pb::{self, stream_input, stream_output};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A client's input side: what the test sends, as the stream the RPC reads.
fn client() -> (mpsc::Sender<pb::StreamInput>, InputStream) {
    let (tx, rx) = mpsc::channel(16);
    (tx, Box::pin(ReceiverStream::new(rx)))
}

fn send(kind: stream_input::Kind) -> pb::StreamInput {
    pb::StreamInput { kind: Some(kind) }
}

/// Everything a stream sends until its exit code (10 s at most): (stdout, stderr, code).
async fn collect(mut out: OutputStream) -> (String, String, Option<i32>) {
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, out.next()).await {
        match m.expect("stream item").kind {
            Some(stream_output::Kind::Stdout(d)) => o.extend(d),
            Some(stream_output::Kind::Stderr(d)) => e.extend(d),
            Some(stream_output::Kind::ExitCode(c)) => {
                return (
                    String::from_utf8_lossy(&o).into(),
                    String::from_utf8_lossy(&e).into(),
                    Some(c),
                )
            }
            None => {}
        }
    }
    (
        String::from_utf8_lossy(&o).into(),
        String::from_utf8_lossy(&e).into(),
        None,
    )
}

/// Reads stdout until it contains `want` (10 s at most); returns what was read.
async fn read_until(out: &mut OutputStream, want: &str) -> String {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains(want) {
        match tokio::time::timeout_at(deadline, out.next()).await {
            Ok(Some(Ok(pb::StreamOutput {
                kind: Some(stream_output::Kind::Stdout(d)),
            }))) => seen.extend(d),
            other => panic!(
                "waiting for {want:?}: {other:?}; got {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Makes the container's task ask its shim to wait `ms` for an attach client.
fn set_attach_wait(c: &Container, ms: u32) {
    set_task(
        c,
        pb::Task {
            attach_wait_ms: ms,
            ..Default::default()
        },
    );
}

/// Gives the container a task (what the shim reads its stdio and log options from).
fn set_task(c: &Container, task: pb::Task) {
    let mut cfg = c.dir.read_config().unwrap();
    cfg.task_pb = hex::encode(task.encode_to_vec());
    std::fs::write(c.dir.config(), serde_json::to_vec(&cfg).unwrap()).unwrap();
}

#[tokio::test]
async fn an_attach_before_start_sees_the_first_line_and_the_exit_code() {
    let t = TestRuntime::new();
    let c =
        t.rt.create(&t.spec("aw1", "echo first; echo oops >&2; exit 5"))
            .await
            .unwrap();
    set_attach_wait(&c, 20_000);
    let dir = c.dir.clone();
    let mut guard = common::Running {
        rt: &t.rt,
        c: Some(c),
    };
    let mut c = guard.c.take().unwrap();
    let rt = t.rt.clone();
    // The start returns only once PID 1 runs, which it does once the attach is connected.
    let started = tokio::spawn(async move {
        let r = rt.start(&mut c).await;
        (c, r)
    });
    let (_tx, input) = client();
    let start = pb::AttachStart {
        target: "aw1".into(),
        stdin: false,
        ..Default::default()
    };
    let out = streams::attach(dir, "aw1", start, input).await.unwrap();
    let (stdout, stderr, code) = collect(out).await;
    let (c, r) = started.await.unwrap();
    guard.c = Some(c);
    r.expect("the container started once attached");
    assert_eq!(stdout, "first\n");
    assert_eq!(stderr, "oops\n");
    assert_eq!(code, Some(5));
    guard.delete().await;
}

#[tokio::test]
async fn with_no_client_the_container_starts_when_the_wait_runs_out() {
    let t = TestRuntime::new();
    let mut c = t.rt.create(&t.spec("aw2", "echo alone")).await.unwrap();
    set_attach_wait(&c, 300);
    t.rt.start(&mut c).await.expect("started after the wait");
    let guard = common::Running {
        rt: &t.rt,
        c: Some(c),
    };
    assert_eq!(t.rt.wait(guard.container()).await.code, 0);
    let log = std::fs::read_to_string(guard.container().dir.log_json()).unwrap();
    assert!(log.contains("alone"), "{log}");
    guard.delete().await;
}

#[tokio::test]
async fn exec_with_a_pty_is_a_real_terminal() {
    let t = TestRuntime::new();
    let mut c = t.rt.create(&t.spec("ex1", "exec sleep 60")).await.unwrap();
    t.rt.start(&mut c).await.unwrap();
    let guard = common::Running {
        rt: &t.rt,
        c: Some(c),
    };
    let dir = guard.container().dir.clone();
    let (tx, input) = client();
    let start = pb::ExecStart {
        target: "ex1".into(),
        cmd: vec!["sh".into()],
        tty: true,
        stdin: true,
        rows: 24,
        cols: 80,
        ..Default::default()
    };
    let agent = std::path::PathBuf::from(env!("CARGO_BIN_EXE_rctl-agent"));
    let mut out = streams::exec(dir, "ex1", agent, start, input)
        .await
        .unwrap();
    tx.send(send(stream_input::Kind::Stdin(b"echo $((6*7))\n".to_vec())))
        .await
        .unwrap();
    read_until(&mut out, "42").await;
    // A terminal of its own: the shell is a session leader with the pty as its terminal.
    tx.send(send(stream_input::Kind::Stdin(
        b"tty; stty size\n".to_vec(),
    )))
    .await
    .unwrap();
    read_until(&mut out, "24 80").await;
    tx.send(send(stream_input::Kind::Resize(pb::Resize {
        rows: 33,
        cols: 111,
    })))
    .await
    .unwrap();
    tx.send(send(stream_input::Kind::Stdin(b"stty size\n".to_vec())))
        .await
        .unwrap();
    read_until(&mut out, "33 111").await;
    tx.send(send(stream_input::Kind::Stdin(b"exit 3\n".to_vec())))
        .await
        .unwrap();
    let (_, _, code) = collect(out).await;
    assert_eq!(code, Some(3));
    guard.delete().await;
}

#[tokio::test]
async fn exec_without_a_pty_streams_stdin_and_both_outputs() {
    let t = TestRuntime::new();
    let mut c = t.rt.create(&t.spec("ex2", "exec sleep 60")).await.unwrap();
    t.rt.start(&mut c).await.unwrap();
    let guard = common::Running {
        rt: &t.rt,
        c: Some(c),
    };
    let dir = guard.container().dir.clone();
    let (tx, input) = client();
    let start = pb::ExecStart {
        target: "ex2".into(),
        cmd: vec!["sh".into(), "-c".into(), "cat; echo err >&2; exit 7".into()],
        stdin: true,
        ..Default::default()
    };
    let agent = std::path::PathBuf::from(env!("CARGO_BIN_EXE_rctl-agent"));
    let out = streams::exec(dir.clone(), "ex2", agent.clone(), start, input)
        .await
        .unwrap();
    tx.send(send(stream_input::Kind::Stdin(b"from stdin\n".to_vec())))
        .await
        .unwrap();
    tx.send(send(stream_input::Kind::CloseStdin(true)))
        .await
        .unwrap();
    assert_eq!(
        collect(out).await,
        ("from stdin\n".into(), "err\n".into(), Some(7))
    );
    // A command that is not there: 127, with the reason on stderr.
    let (_tx, input) = client();
    let start = pb::ExecStart {
        target: "ex2".into(),
        cmd: vec!["nosuch".into()],
        ..Default::default()
    };
    let (_, err, code) = collect(
        streams::exec(dir, "ex2", agent, start, input)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, Some(127), "{err}");
    guard.delete().await;
}

#[tokio::test]
async fn exec_into_an_exited_container_is_refused_by_name() {
    let t = TestRuntime::new();
    let (exit, _, guard) = t.run(&t.spec("ex3", "true")).await;
    assert_eq!(exit.code, 0);
    let dir = guard.container().dir.clone();
    let agent = std::path::PathBuf::from(env!("CARGO_BIN_EXE_rctl-agent"));
    let (_tx, input) = client();
    let start = pb::ExecStart {
        target: "ex3".into(),
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    let err = streams::exec(dir, "ex3", agent, start, input)
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, StreamError::NotRunning(_)), "{err}");
    assert_eq!(err.to_string(), "container ex3 is not running");
    guard.delete().await;
}

#[tokio::test]
async fn logs_follow_across_rotation_without_a_gap_or_a_repeat_and_end_on_removal() {
    let t = TestRuntime::new();
    let script = "for i in $(seq 1 60); do echo line$i; sleep 0.02; done; exec sleep 60";
    let mut c = t.rt.create(&t.spec("lg1", script)).await.unwrap();
    // ~70-byte entries in files of 400 bytes: the log rotates every few lines.
    set_task(
        &c,
        pb::Task {
            log_max_size: 400,
            log_max_files: 3,
            ..Default::default()
        },
    );
    t.rt.start(&mut c).await.unwrap();
    let guard = common::Running {
        rt: &t.rt,
        c: Some(c),
    };
    let dir = guard.container().dir.clone();
    let req = pb::LogsRequest {
        target: "lg1".into(),
        tail: Some(2),
        follow: true,
        ..Default::default()
    };
    let mut s = streams::logs(dir, &req).unwrap();
    let mut nums: Vec<u32> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while nums.last() != Some(&60) {
        let batch = tokio::time::timeout_at(deadline, s.next())
            .await
            .unwrap_or_else(|_| panic!("timed out; got {nums:?}"))
            .expect("the stream runs while the container exists")
            .unwrap();
        for l in batch.lines {
            nums.push(l.log.trim().trim_start_matches("line").parse().unwrap());
        }
    }
    // History (at most the last 2 lines), then every line after it exactly once.
    let first = nums[0];
    assert_eq!(nums, (first..=60).collect::<Vec<_>>(), "{nums:?}");
    // Removing the container ends the follow.
    guard.delete().await;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(b) = s.next().await {
            assert!(b.unwrap().lines.is_empty());
        }
    })
    .await;
    assert!(end.is_ok(), "the follow ends once the container is removed");
}
