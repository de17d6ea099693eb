//! The Agent's stream RPCs (issue 9), each over one container directory: logs (history, then
//! follow across rotation and restarts until the container is removed), attach (through the
//! shim's `attach.sock`), exec (through `__exec`, with pipes or a pty), stats (the cgroup's
//! counters plus the container's network namespace) and top (the cgroup's processes).
//!
//! Nothing here blocks an async worker: sockets and pipes are tokio's, pty and log files are
//! read on the blocking pool. Output is passed on as it comes, in bounded channels, so a slow
//! client slows only its own stream. Errors are [`StreamError`], in the streams too, mapped
//! to gRPC once in `crate::grpc`; the decisions over /proc and cgroup text are pure
//! functions with unit tests.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use rctl_api::logcursor::LogCursor;
use rctl_api::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::attach::{self, Request};
use crate::dirwatch::DirWatch;
use crate::logs::{self, Filter, Follower, Rotation};
use crate::runtime::exec::{self, ExecSpec, ExecStdio};
use crate::runtime::state::ContainerDir;
use crate::shim::set_winsize;

pub type OutputStream = Pin<Box<dyn Stream<Item = Result<pb::StreamOutput, StreamError>> + Send>>;
pub type LogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogsResponse, StreamError>> + Send>>;
/// What a client sends after its first message.
/// It ends at the client's first error.
pub type InputStream = Pin<Box<dyn Stream<Item = pb::StreamInput> + Send>>;

/// Log lines per response message.
const LOG_BATCH: usize = 256;
/// How often a followed log is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// After an exec'd process exited, how long output still in flight (from children that
/// outlived it) is awaited before the exit code is sent.
const DRAIN: Duration = Duration::from_secs(1);
/// How long an attach waits for a container that is still being created (image pull).
const ATTACH_WAIT: Duration = Duration::from_secs(60);
/// How often an attach waiting for a container checks that it was not removed meanwhile
/// (the directory watch sees what appears in the directory, not the directory going).
const GONE_POLL: Duration = Duration::from_millis(250);
/// How long the exit status is awaited once the shim closed the attach connection.
const EXIT_WAIT: Duration = Duration::from_secs(2);
/// CPU % window when the request names none.
const DEFAULT_SAMPLE: Duration = Duration::from_millis(500);
/// A pty's size before the client sends one.
const DEFAULT_WINSIZE: (u16, u16) = (24, 80);
/// Bytes read from a process per message.
const READ_CHUNK: usize = 32 * 1024;
/// `sysconf(_SC_CLK_TCK)` on every Linux architecture rctl runs on.
const CLK_TCK: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("no container {0} on this node")]
    NotFound(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{step}: {source}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Exec(#[from] exec::ExecError),
    /// An exec'd process that could not be run or waited for, after its stream began.
    #[error(transparent)]
    Run(exec::ExecError),
    #[error(
        "the attach connection closed but the container has no exit status (was the shim killed?)"
    )]
    NoExitStatus,
}

fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> StreamError {
    move |source| StreamError::Io { step, source }
}

/// What users call the container: `web.1` for a service task, else its id.
pub fn display_name(task: &pb::Task, id: &str) -> String {
    if task.service.is_empty() {
        id.to_string()
    } else {
        format!("{}.{}", task.service, task.slot)
    }
}

mod stats;
pub use stats::{
    cpu_percent, format_cpu_time, net_io, parse_stat, parse_uid, running_ids, stats, top, user_name,
};

// === logs ===

fn line_of(e: logs::Entry) -> pb::LogLine {
    pb::LogLine {
        time: e.time,
        stream: e.stream,
        log: e.log,
        ..Default::default()
    }
}

async fn send_lines(
    tx: &mpsc::Sender<Result<pb::LogsResponse, StreamError>>,
    entries: Vec<logs::Entry>,
) -> Result<(), ()> {
    let mut it = entries.into_iter().peekable();
    while it.peek().is_some() {
        let lines: Vec<pb::LogLine> = it.by_ref().take(LOG_BATCH).map(line_of).collect();
        tx.send(Ok(pb::LogsResponse {
            lines,
            service: false,
        }))
        .await
        .map_err(drop)?;
    }
    Ok(())
}

/// The log filter of a request.
pub fn filter_of(req: &pb::LogsRequest) -> Filter {
    Filter {
        tail: req.tail.map(|n| n as usize),
        since: (req.since_unix_nanos > 0)
            .then(|| UNIX_EPOCH + Duration::from_nanos(req.since_unix_nanos as u64)),
    }
}

/// The log of the container in `dir`: its history as `req` filters it, then (follow) new
/// lines until the container is removed or the client goes away.
pub fn logs(dir: ContainerDir, req: &pb::LogsRequest) -> Result<LogsStream, StreamError> {
    if !dir.config().exists() {
        return Err(StreamError::NotFound(req.target.clone()));
    }
    let task = dir.read_task();
    let max_files = Rotation::from_task(task.log_max_size, task.log_max_files).max_files;
    let filter = filter_of(req);
    let follow = req.follow;
    let until_exit = task.service.is_empty();
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let path = dir.log_json();
        // The follower starts at the end before the history is read, so no line falls in
        // between; lines in both are dropped by the cursor.
        let read = tokio::task::spawn_blocking(move || {
            let f = follow.then(|| Follower::from_end(path.clone(), max_files));
            logs::read(&path, max_files, &filter).map(|e| (e, f))
        })
        .await;
        let (history, follower) = match read {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let _ = tx.send(Err(io("read log")(e))).await;
                return;
            }
            Err(_) => return,
        };
        let mut cursor = LogCursor::default();
        {
            let mut r = cursor.replay();
            for e in &history {
                r.admit(&e.time);
            }
        }
        if send_lines(&tx, history).await.is_err() {
            return;
        }
        let Some(mut follower) = follower else {
            return;
        };
        let mut replay = cursor.replay();
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
            }
            // Removed (moved to the trash, then deleted): what was written is still read
            // from the open file, then the stream ends. A one-off container's log ends with
            // it, as `docker logs -f` does (the shim records the exit only after its last
            // output is in the log); a service task's goes on across its restarts.
            let gone = !dir.config().exists() || (until_exit && dir.exit().exists());
            let Ok((res, f)) = tokio::task::spawn_blocking(move || {
                let r = follower.poll();
                (r, follower)
            })
            .await
            else {
                return;
            };
            follower = f;
            let fresh: Vec<logs::Entry> = res
                .unwrap_or_default()
                .into_iter()
                .filter(|e| replay.admit(&e.time))
                .collect();
            if send_lines(&tx, fresh).await.is_err() || gone {
                return;
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

// === attach ===

fn out(kind: pb::stream_output::Kind) -> Result<pb::StreamOutput, StreamError> {
    Ok(pb::StreamOutput { kind: Some(kind) })
}

/// What an attach finds once the container got past its start.
enum Reached {
    /// The shim listens: attach to it.
    Socket,
    /// It exited already (no socket will come).
    Exited,
    /// It could not be created or started: why, and the exit code `run` reports (the
    /// recorded one, else 125 as Docker's run for a container that cannot start).
    Failed(String, i32),
}

/// Waits until the container in `dir` has an attach socket, exited, or failed to start.
/// Woken by the directory's changes, not a poll interval: the socket is on `run`'s path
/// from create to the container's first instruction. A container removed meanwhile (its
/// start failed and it was `--rm`) is looked for every [`GONE_POLL`].
async fn await_socket(dir: &ContainerDir, id: &str) -> Result<Reached, StreamError> {
    let deadline = tokio::time::Instant::now() + ATTACH_WAIT;
    let mut watch = DirWatch::new(&dir.0).map_err(io("watch the container directory"))?;
    // Attach may come before the directory is made; once it existed, its absence is removal.
    let mut existed = false;
    loop {
        if dir.attach_sock().exists() {
            return Ok(Reached::Socket);
        }
        if let Some(why) = dir.read_failed() {
            return Ok(Reached::Failed(why, dir.read_exit().unwrap_or(125)));
        }
        if dir.exit().exists() {
            return Ok(Reached::Exited);
        }
        match dir.0.exists() {
            true => existed = true,
            false if existed => return Err(StreamError::NotFound(id.to_string())),
            false => {}
        }
        let wake = deadline.min(tokio::time::Instant::now() + GONE_POLL);
        match tokio::time::timeout_at(wake, watch.changed()).await {
            Ok(r) => r.map_err(io("watch the container directory"))?,
            Err(_) if tokio::time::Instant::now() < deadline => {}
            Err(_) => {
                return Err(if dir.0.exists() {
                    StreamError::NotRunning(display_name(&dir.read_task(), id))
                } else {
                    StreamError::NotFound(id.to_string())
                })
            }
        }
    }
}

/// The exit status the shim records right after the container's output is drained (it
/// writes it before it closes its attach clients, so it is usually there already).
async fn exit_status(dir: &ContainerDir) -> Option<i32> {
    let deadline = tokio::time::Instant::now() + EXIT_WAIT;
    let mut watch = DirWatch::new(&dir.0).ok()?;
    loop {
        if let Some(c) = dir.read_exit() {
            return Some(c);
        }
        match tokio::time::timeout_at(deadline, watch.changed()).await {
            Ok(Ok(())) => {}
            _ => return None,
        }
    }
}

/// Attaches to the container in `dir` (id `id`): output from now on, then its exit code.
/// A container still being created is waited for (a container created with
/// `attach_wait_ms` starts once this attach is connected, so no output is lost). The stream
/// is returned at once and the wait happens inside it, so callers' response deadlines do not
/// cover an image pull; failures arrive as the stream's error.
pub async fn attach(
    dir: ContainerDir,
    id: &str,
    start: pb::AttachStart,
    input: InputStream,
) -> Result<OutputStream, StreamError> {
    let (tx, rx) = mpsc::channel(16);
    let id = id.to_string();
    tokio::spawn(async move {
        if let Err(e) = serve_attach(dir, &id, start, input, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

async fn serve_attach(
    dir: ContainerDir,
    id: &str,
    start: pb::AttachStart,
    mut input: InputStream,
    tx: &mpsc::Sender<Result<pb::StreamOutput, StreamError>>,
) -> Result<(), StreamError> {
    match await_socket(&dir, id).await? {
        Reached::Socket => {}
        Reached::Exited => {
            let code = dir.read_exit().unwrap_or(255);
            let _ = tx.send(out(pb::stream_output::Kind::ExitCode(code))).await;
            return Ok(());
        }
        Reached::Failed(why, code) => {
            // Said where the container's own output goes, as a command that cannot be run
            // says it: one line, then the code `run` exits with.
            let line = format!("error: {}\n", why.trim_end());
            let _ = tx
                .send(out(pb::stream_output::Kind::Stderr(line.into_bytes())))
                .await;
            let _ = tx.send(out(pb::stream_output::Kind::ExitCode(code))).await;
            return Ok(());
        }
    }
    let sock = match tokio::net::UnixStream::connect(dir.attach_sock()).await {
        Ok(s) => s,
        // Gone between the check and the connect: it just exited.
        Err(_) if dir.exit().exists() => {
            let code = exit_status(&dir).await.unwrap_or(255);
            let _ = tx.send(out(pb::stream_output::Kind::ExitCode(code))).await;
            return Ok(());
        }
        Err(e) => return Err(io("connect to the container's attach socket")(e)),
    };
    let tty = dir.read_task().tty;
    let (mut rd, mut wr) = sock.into_split();
    if tty && start.rows > 0 && start.cols > 0 {
        let r = attach::encode_request(&Request::Resize {
            rows: start.rows as u16,
            cols: start.cols as u16,
        });
        wr.write_all(&r)
            .await
            .map_err(io("resize the container's terminal"))?;
    }
    let stdin = start.stdin;
    let pid_dir = dir.clone();
    tokio::spawn(async move {
        while let Some(msg) = input.next().await {
            let req = match msg.kind {
                Some(pb::stream_input::Kind::Stdin(d)) if stdin => Request::Stdin(d),
                Some(pb::stream_input::Kind::Resize(r)) => Request::Resize {
                    rows: r.rows as u16,
                    cols: r.cols as u16,
                },
                Some(pb::stream_input::Kind::CloseStdin(true)) if stdin => Request::CloseStdin,
                Some(pb::stream_input::Kind::Signal(n)) => {
                    if let (Ok(sig), Some(p)) =
                        (nix::sys::signal::Signal::try_from(n), pid_dir.read_pid())
                    {
                        crate::runtime::signal(&p, sig);
                    }
                    continue;
                }
                _ => continue,
            };
            if wr.write_all(&attach::encode_request(&req)).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; READ_CHUNK];
    let mut frames = Vec::new();
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut msgs = Vec::new();
        if tty {
            msgs.push(pb::stream_output::Kind::Stdout(buf[..n].to_vec()));
        } else {
            frames.extend_from_slice(&buf[..n]);
            while let Some((s, data)) = attach::decode_output(&mut frames) {
                msgs.push(match s {
                    logs::Stream::Stdout => pb::stream_output::Kind::Stdout(data),
                    logs::Stream::Stderr => pb::stream_output::Kind::Stderr(data),
                });
            }
        }
        for m in msgs {
            if tx.send(out(m)).await.is_err() {
                return Ok(());
            }
        }
    }
    // The shim closes every client once the container exited and its output drained.
    let msg = match exit_status(&dir).await {
        Some(code) => out(pb::stream_output::Kind::ExitCode(code)),
        None => Err(StreamError::NoExitStatus),
    };
    let _ = tx.send(msg).await;
    Ok(())
}

// === exec ===

/// Where an exec'd process's output is read from.
enum Source {
    Pipe(tokio::net::unix::pipe::Receiver),
    /// The pty master, read on the blocking pool.
    Pty(tokio::fs::File),
}

impl Source {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::Pipe(p) => p.read(buf).await,
            Source::Pty(f) => match f.read(buf).await {
                // EIO is how a pty master says every slave fd closed.
                Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => Ok(0),
                r => r,
            },
        }
    }
}

/// Where input goes.
enum Sink {
    Pipe(tokio::net::unix::pipe::Sender),
    Pty(tokio::fs::File),
}

impl Sink {
    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Pipe(p) => p.write_all(data).await,
            Sink::Pty(f) => {
                f.write_all(data).await?;
                f.flush().await
            }
        }
    }
}

/// The process's stdio as made here: its ends, and ours.
struct Wiring {
    theirs: ExecStdio,
    outputs: Vec<(Source, bool)>,
    stdin: Option<Sink>,
    /// The pty master, for window size changes.
    master: Option<OwnedFd>,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Into::into)
}

fn wiring(start: &pb::ExecStart) -> std::io::Result<Wiring> {
    if start.tty {
        use rustix::pty::OpenptFlags;
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        let master = rustix::pty::openpt(flags)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let slave = rustix::pty::ioctl_tiocgptpeer(&master, flags)?;
        let (rows, cols) = match (start.rows, start.cols) {
            (0, _) | (_, 0) => DEFAULT_WINSIZE,
            (r, c) => (r as u16, c as u16),
        };
        set_winsize(&master, rows, cols)?;
        let reader = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
        let writer = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
        return Ok(Wiring {
            theirs: ExecStdio {
                stdin: slave.try_clone()?,
                stdout: slave.try_clone()?,
                stderr: slave,
            },
            outputs: vec![(Source::Pty(reader), false)],
            stdin: Some(Sink::Pty(writer)),
            master: Some(master),
        });
    }
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (stdin_theirs, stdin): (OwnedFd, Option<Sink>) = if start.stdin {
        let (r, w) = pipe()?;
        (
            r,
            Some(Sink::Pipe(tokio::net::unix::pipe::Sender::from_owned_fd(
                w,
            )?)),
        )
    } else {
        (std::fs::File::open("/dev/null")?.into(), None)
    };
    Ok(Wiring {
        theirs: ExecStdio {
            stdin: stdin_theirs,
            stdout: out_w,
            stderr: err_w,
        },
        outputs: vec![
            (
                Source::Pipe(tokio::net::unix::pipe::Receiver::from_owned_fd(out_r)?),
                false,
            ),
            (
                Source::Pipe(tokio::net::unix::pipe::Receiver::from_owned_fd(err_r)?),
                true,
            ),
        ],
        stdin,
        master: None,
    })
}

/// Runs `start` in the container of `dir` (id `id`) with `agent_exe __exec`: its output as
/// it comes, then its exit code (126/127 when it cannot be started, like Docker).
pub async fn exec(
    dir: ContainerDir,
    id: &str,
    agent_exe: PathBuf,
    start: pb::ExecStart,
    mut input: InputStream,
) -> Result<OutputStream, StreamError> {
    if !dir.config().exists() {
        return Err(StreamError::NotFound(id.to_string()));
    }
    if start.cmd.first().is_none_or(|c| c.is_empty()) {
        return Err(StreamError::Invalid("no command to exec".into()));
    }
    if !dir.is_running() {
        return Err(StreamError::NotRunning(display_name(&dir.read_task(), id)));
    }
    let spec = ExecSpec {
        argv: start.cmd.clone(),
        env: start.env.clone(),
        user: (!start.user.is_empty()).then(|| start.user.clone()),
        workdir: (!start.workdir.is_empty()).then(|| start.workdir.clone()),
        tty: start.tty,
    };
    let w = wiring(&start).map_err(io("create the exec's stdio"))?;
    let (tx, rx) = mpsc::channel(16);
    // Every reader holds one: when all are gone, the output has been passed on.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    for (mut src, is_err) in w.outputs {
        let tx = tx.clone();
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                let n = match src.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let data = buf[..n].to_vec();
                let kind = if is_err {
                    pb::stream_output::Kind::Stderr(data)
                } else {
                    pb::stream_output::Kind::Stdout(data)
                };
                if tx.send(out(kind)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(alive_tx);
    let mut sink = w.stdin;
    let master = w.master;
    tokio::spawn(async move {
        while let Some(msg) = input.next().await {
            match msg.kind {
                Some(pb::stream_input::Kind::Stdin(d)) => {
                    if let Some(s) = sink.as_mut() {
                        if s.write(&d).await.is_err() {
                            sink = None;
                        }
                    }
                }
                Some(pb::stream_input::Kind::Resize(r)) => {
                    if let Some(m) = &master {
                        let _ = set_winsize(m, r.rows as u16, r.cols as u16);
                    }
                }
                // EOF for a pipe; a terminal has no EOF of its own (the user types ^D).
                Some(pb::stream_input::Kind::CloseStdin(true)) => {
                    if matches!(sink, Some(Sink::Pipe(_))) {
                        sink = None;
                    }
                }
                _ => {}
            }
        }
    });
    let stdio = w.theirs;
    tokio::spawn(async move {
        let res = exec::exec(&dir, &agent_exe, &spec, stdio).await;
        let code = match res {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(StreamError::Run(e))).await;
                return;
            }
        };
        let _ = tokio::time::timeout(DRAIN, alive_rx.recv()).await;
        let _ = tx.send(out(pb::stream_output::Kind::ExitCode(code))).await;
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_task_names_when_there_is_a_service() {
        let t = pb::Task {
            service: "web".into(),
            slot: 2,
            ..Default::default()
        };
        assert_eq!(display_name(&t, "abc"), "web.2");
        assert_eq!(display_name(&pb::Task::default(), "abc"), "abc");
    }
}
