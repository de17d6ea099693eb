//! `rctl attach TARGET`, and the terminal session that `attach`, `exec` and `run` (without
//! -d) share: the local stdin, window size and signals go up the stream, the container's
//! output comes down to stdout/stderr, and the last message is the exit code.
//!
//! With a TTY the local terminal is put in raw mode (keys, ^C included, go to the container
//! as typed) and restored on every way out: a normal end, an error, a panic (the guard's
//! drop runs on unwind) and SIGTERM/SIGHUP (caught here, ending the session). The window
//! size goes up at the start and on every SIGWINCH. Without a TTY, attach passes SIGINT and
//! SIGTERM on to the container (Docker's sig-proxy).

use std::io::{IsTerminal, Write};

use clap::Args;
use rctl_api::pb::{stream_input, stream_output, AttachStart, Resize, StreamInput};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Conn;
use crate::error::CliError;
use crate::global::Global;

/// Stdin bytes read per message.
const STDIN_CHUNK: usize = 16 * 1024;

/// The local terminal in raw mode; dropping it restores the mode it had.
pub struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    /// Raw mode on stdin if it is a terminal (None otherwise).
    pub fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = rustix::termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// The local terminal's size as (rows, cols), if stdout (or stdin) is a terminal.
pub fn window_size() -> Option<(u32, u32)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout())
        .or_else(|_| rustix::termios::tcgetwinsize(std::io::stdin()))
        .ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row as u32, ws.ws_col as u32))
}

fn input(kind: stream_input::Kind) -> StreamInput {
    StreamInput { kind: Some(kind) }
}

/// Maps a refused stream call: an unknown container is an error (exit 1), as in Docker.
pub fn stream_err(conn: &Conn, s: tonic::Status) -> CliError {
    match s.code() {
        tonic::Code::NotFound | tonic::Code::FailedPrecondition => {
            CliError::Failed(s.message().to_string())
        }
        _ => conn.err(s),
    }
}

/// Runs one exec or attach stream (`first` says which) and returns the process's exit code.
pub async fn session(
    conn: &Conn,
    first: stream_input::Kind,
    tty: bool,
    stdin: bool,
) -> Result<i32, CliError> {
    let exec = matches!(first, stream_input::Kind::Exec(_));
    let (tx, rx) = mpsc::channel::<StreamInput>(16);
    tx.send(input(first))
        .await
        .map_err(|_| CliError::Failed("stream closed".into()))?;
    let mut client = conn.client.clone();
    let resp = if exec {
        client.exec(ReceiverStream::new(rx)).await
    } else {
        client.attach(ReceiverStream::new(rx)).await
    };
    let mut out = resp.map_err(|s| stream_err(conn, s))?.into_inner();
    // Raw only once the stream is up, so an error above prints on a sane terminal.
    let raw = if tty { RawMode::enter() } else { None };
    if stdin {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut s = tokio::io::stdin();
            let mut buf = vec![0u8; STDIN_CHUNK];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let m = input(stream_input::Kind::Stdin(buf[..n].to_vec()));
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(input(stream_input::Kind::CloseStdin(true))).await;
        });
    }
    let mut winch = signal(SignalKind::window_change()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    let mut hup = signal(SignalKind::hangup()).ok();
    // Without a TTY, ^C reaches us as SIGINT: attach hands it to the container.
    let mut int = (!tty && !exec)
        .then(|| signal(SignalKind::interrupt()).ok())
        .flatten();
    let code = loop {
        tokio::select! {
            m = out.message() => match m {
                Ok(Some(m)) => match m.kind {
                    Some(stream_output::Kind::Stdout(d)) => {
                        let mut o = std::io::stdout().lock();
                        let _ = o.write_all(&d);
                        let _ = o.flush();
                    }
                    Some(stream_output::Kind::Stderr(d)) => {
                        let mut e = std::io::stderr().lock();
                        let _ = e.write_all(&d);
                        let _ = e.flush();
                    }
                    Some(stream_output::Kind::ExitCode(c)) => break Ok(c),
                    None => {}
                },
                Ok(None) => break Err(CliError::Failed(
                    "the stream ended without an exit code (did the node go away?)".into(),
                )),
                Err(s) => break Err(stream_err(conn, s)),
            },
            Some(_) = async { winch.as_mut()?.recv().await }, if tty => {
                if let Some((rows, cols)) = window_size() {
                    let _ = tx.send(input(stream_input::Kind::Resize(Resize { rows, cols }))).await;
                }
            }
            Some(_) = async { int.as_mut()?.recv().await } => {
                let _ = tx.send(input(stream_input::Kind::Signal(2))).await;
            }
            Some(_) = async { term.as_mut()?.recv().await } => {
                if !tty && !exec {
                    let _ = tx.send(input(stream_input::Kind::Signal(15))).await;
                } else {
                    break Ok(143);
                }
            }
            Some(_) = async { hup.as_mut()?.recv().await } => break Ok(129),
        }
    };
    drop(raw);
    code
}

/// `rctl attach TARGET`: the container's output from now on, stdin when it has one open.
#[derive(Args, Debug)]
pub struct AttachArgs {
    /// The running container or task (web.1), by name or id.
    pub target: String,
}

impl AttachArgs {
    /// Ends with the container's exit code, which becomes rctl's.
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        let conn = g.connect().await?;
        let tty = std::io::stdin().is_terminal();
        Err(CliError::Exit(
            attach_target(&conn, &self.target, tty, true).await?,
        ))
    }
}

async fn attach_target(conn: &Conn, target: &str, tty: bool, stdin: bool) -> Result<i32, CliError> {
    let (rows, cols) = window_size().unwrap_or((0, 0));
    let start = AttachStart {
        target: target.to_string(),
        stdin,
        rows,
        cols,
    };
    session(conn, stream_input::Kind::Attach(start), tty, stdin).await
}

/// For `rctl run` without -d: attaches to the container `id` (created with
/// `attach_wait_ms`, so it starts once this is connected) and returns its exit code.
pub async fn run_attached(conn: &Conn, id: &str, tty: bool, stdin: bool) -> anyhow::Result<i32> {
    Ok(attach_target(conn, id, tty, stdin).await?)
}
