//! The per-container shim: `rctl-agent __shim DIR`, started by the agent already inside the
//! container's new namespaces. It waits for the agent's go (networking ready), forks the
//! container's PID 1, records its pid, owns its stdio (pipes, or a pty for a TTY task),
//! writes the output to the json-file log (`crate::logs`), serves attach clients on
//! `DIR/attach.sock` (`crate::attach`), and records the exit status once the output is
//! drained. Because the shim, not the agent, is the container's parent and log writer, the
//! container keeps running and logging while the agent is down.
//!
//! The shim is a fresh single-threaded process: it never starts a tokio runtime, which is
//! what makes `fork` here sound. Everything it waits on (output, clients, SIGCHLD through a
//! signalfd) is one `poll` loop.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::SystemTime;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use rctl_api::pb;
use rustix::event::{PollFd, PollFlags};

use crate::attach::{self, Request};
use crate::logs::{self, LineSplitter, LogWriter, Rotation, Stream};
use crate::runtime::rootfs;
use crate::runtime::state::{proc_stat, write_atomic_sync, ContainerDir, PidRecord};
use crate::sys::{self, Forked};

/// Bytes read from the container per read call.
const READ_CHUNK: usize = 64 * 1024;
/// Output queued for one slow attach client before the shim drops that client; the
/// container must never wait on a client.
const CLIENT_BACKLOG: usize = 1 << 20;
/// Stdin queued for the container; beyond it new input is dropped.
const STDIN_BACKLOG: usize = 1 << 20;
/// Once PID 1 exited, how long to wait for output still in flight (from processes that
/// outlived it or were exec'd in) before closing the log.
const DRAIN_MS: i64 = 1000;
/// A TTY's size before any client sets one.
const DEFAULT_WINSIZE: (u16, u16) = (24, 80);
/// The longest a container waits for its first attach client before it starts anyway.
pub const MAX_ATTACH_WAIT_MS: u32 = 60_000;

/// Runs the shim for the container in `dir`; returns the shim's own exit code.
pub fn main(dir: &Path) -> i32 {
    let dir = ContainerDir(dir.to_path_buf());
    match run(&dir) {
        Ok(()) => 0,
        Err(e) => {
            // Empty: already reported where it happened.
            if !e.is_empty() {
                eprintln!("rctl-shim: {e}");
            }
            1
        }
    }
}

/// What the shim reads from the task: how to wire PID 1's stdio and rotate its log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stdio {
    pub tty: bool,
    pub stdin_open: bool,
    pub rotation: Rotation,
    /// Wait this long for the first attach client before starting PID 1 (0: don't).
    pub attach_wait_ms: u32,
}

impl Stdio {
    pub fn from_task(t: &pb::Task) -> Self {
        Self {
            tty: t.tty,
            stdin_open: t.stdin_open,
            rotation: Rotation::from_task(t.log_max_size, t.log_max_files),
            attach_wait_ms: t.attach_wait_ms.min(MAX_ATTACH_WAIT_MS),
        }
    }
}

fn run(dir: &ContainerDir) -> Result<(), String> {
    let cfg = dir
        .read_config()
        .map_err(|e| format!("read {}: {e}", dir.config().display()))?;
    let task = cfg.task().unwrap_or_default();
    let opts = Stdio::from_task(&task);
    // One byte from the agent means go; EOF means the agent gave up on this container.
    let mut go = [0u8; 1];
    if !matches!(std::io::stdin().read(&mut go), Ok(1)) {
        return Err("agent did not release the container; not starting it".into());
    }
    // The sync pipe is the agent's: drop it for /dev/null (also PID 1's stdin when closed).
    let Err(e) = start_and_serve(dir, &cfg, &opts) else {
        return Ok(());
    };
    // Released but failed: say why (shim.log), then record an exit the way a container
    // that failed to exec does, so the agent reports the reason at once instead of timing
    // out waiting for a pid.
    eprintln!("rctl-shim: {e}");
    if !dir.exit().exists() {
        let _ = record_exit(dir, 127);
    }
    Err(String::new())
}

/// Writes the exit file, unless the container was removed meanwhile: writing would make
/// its directory again (holding only this file) after the agent removed it.
fn record_exit(dir: &ContainerDir, code: i32) -> std::io::Result<()> {
    if !dir.0.is_dir() {
        return Ok(());
    }
    write_atomic_sync(&dir.exit(), format!("{code}\n").as_bytes())
}

fn start_and_serve(
    dir: &ContainerDir,
    cfg: &crate::runtime::state::ContainerConfig,
    opts: &Stdio,
) -> Result<(), String> {
    File::open("/dev/null")
        .and_then(|f| nix::unistd::dup2_stdin(f).map_err(Into::into))
        .map_err(|e| format!("cannot point stdin at /dev/null: {e}"))?;

    let wiring = Wiring::new(opts).map_err(|e| format!("create container stdio: {e}"))?;
    // SIGCHLD arrives on a signalfd so one poll covers output, clients and the exit.
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    chld.thread_block()
        .map_err(|e| format!("block SIGCHLD: {e}"))?;
    let sigfd = SignalFd::with_flags(&chld, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| format!("signalfd: {e}"))?;
    // Listen before the fork: an attach right after start must find the socket.
    let listener = listen(dir).map_err(|e| format!("attach socket: {e}"))?;
    // `run` without -d: its client attaches before PID 1 starts, so it sees all output. Only
    // the first start waits (a restart continues the log, which then exists).
    if opts.attach_wait_ms > 0 && !dir.log_json().exists() {
        wait_for_client(&listener, opts.attach_wait_ms);
    }

    let child = match sys::fork().map_err(|e| format!("fork: {e}"))? {
        Forked::Child => {
            // The mask survives exec: PID 1 must see its children's SIGCHLD.
            let _ = chld.thread_unblock();
            if let Err(e) = wiring.enter_child() {
                eprintln!("rctl-shim: container stdio: {e}");
                std::process::exit(127);
            }
            let e = rootfs::enter_and_exec(cfg, dir);
            eprintln!("rctl-shim: start container: {e}");
            std::process::exit(e.exit_code());
        }
        Forked::Parent { child } => child,
    };
    let record = PidRecord {
        pid: child.as_raw(),
        start_time: proc_stat(child.as_raw()).map(|s| s.1).unwrap_or(0),
    };
    if let Err(e) = write_atomic_sync(&dir.pid(), record.render().as_bytes()) {
        eprintln!("rctl-shim: write pid file: {e}");
    }
    let mut lp = Loop::new(
        wiring.into_parent(),
        LogWriter::open(dir.log_json(), opts.rotation),
        listener,
        opts.tty,
    );
    // A client that connected before the fork is served from PID 1's first byte on.
    lp.accept();
    let code = lp.run(child, &sigfd);
    if lp.log.dropped > 0 {
        eprintln!(
            "rctl-shim: {} log entries dropped (write errors)",
            lp.log.dropped
        );
    }
    let _ = std::fs::remove_file(dir.attach_sock());
    record_exit(dir, code).map_err(|e| format!("write exit file: {e}"))
}

/// Returns once a client is waiting to be accepted on `listener`, or after `ms`.
fn wait_for_client(listener: &UnixListener, ms: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms as u64);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        let mut fds = [PollFd::new(listener, PollFlags::IN)];
        let ts = rustix::event::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos() as i64,
        };
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Err(rustix::io::Errno::INTR) => continue,
            _ => return,
        }
    }
}

fn listen(dir: &ContainerDir) -> std::io::Result<UnixListener> {
    let path = dir.attach_sock();
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

// === stdio wiring ===

/// PID 1's stdio as created before the fork: both ends of each pipe, or the pty pair.
enum Wiring {
    Pipes {
        stdin: Option<(OwnedFd, OwnedFd)>,
        stdout: (OwnedFd, OwnedFd),
        stderr: (OwnedFd, OwnedFd),
    },
    Pty {
        master: OwnedFd,
        slave: OwnedFd,
    },
}

/// The shim's ends.
struct ParentEnds {
    outputs: Vec<(File, Stream)>,
    stdin: Option<File>,
    /// The pty master, for window size changes.
    pty: Option<File>,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Into::into)
}

impl Wiring {
    fn new(opts: &Stdio) -> std::io::Result<Self> {
        if opts.tty {
            use rustix::pty::OpenptFlags;
            let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
            let master = rustix::pty::openpt(flags)?;
            rustix::pty::grantpt(&master)?;
            rustix::pty::unlockpt(&master)?;
            let slave = rustix::pty::ioctl_tiocgptpeer(&master, flags)?;
            set_winsize(&master, DEFAULT_WINSIZE.0, DEFAULT_WINSIZE.1)?;
            return Ok(Wiring::Pty { master, slave });
        }
        Ok(Wiring::Pipes {
            stdin: if opts.stdin_open { Some(pipe()?) } else { None },
            stdout: pipe()?,
            stderr: pipe()?,
        })
    }

    /// In the forked child: makes the container's ends fds 0-2 (dup2 clears CLOEXEC on
    /// them; every other fd of the shim is CLOEXEC and vanishes at exec).
    fn enter_child(&self) -> std::io::Result<()> {
        nix::unistd::setsid()?;
        match self {
            Wiring::Pty { slave, .. } => {
                rustix::process::ioctl_tiocsctty(slave)?;
                nix::unistd::dup2_stdin(slave)?;
                nix::unistd::dup2_stdout(slave)?;
                nix::unistd::dup2_stderr(slave)?;
            }
            Wiring::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                if let Some((r, _)) = stdin {
                    nix::unistd::dup2_stdin(r)?;
                }
                nix::unistd::dup2_stdout(&stdout.1)?;
                nix::unistd::dup2_stderr(&stderr.1)?;
            }
        }
        Ok(())
    }

    /// In the shim after the fork: keeps its own ends and closes the container's, so EOF
    /// comes when the container's side is gone.
    fn into_parent(self) -> ParentEnds {
        match self {
            Wiring::Pty { master, slave } => {
                drop(slave);
                let input = master.try_clone().ok().map(File::from);
                let pty = master.try_clone().ok().map(File::from);
                ParentEnds {
                    outputs: vec![(File::from(master), Stream::Stdout)],
                    stdin: input,
                    pty,
                }
            }
            Wiring::Pipes {
                stdin,
                stdout,
                stderr,
            } => ParentEnds {
                outputs: vec![
                    (File::from(stdout.0), Stream::Stdout),
                    (File::from(stderr.0), Stream::Stderr),
                ],
                stdin: stdin.map(|(_, w)| File::from(w)),
                pty: None,
            },
        }
    }
}

/// Sets a pty's window size (the shim's own pty, and an exec's).
pub(crate) fn set_winsize(fd: impl AsFd, rows: u16, cols: u16) -> std::io::Result<()> {
    rustix::termios::tcsetwinsize(
        fd,
        rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .map_err(Into::into)
}

fn set_nonblocking(fd: impl AsFd) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    if let Ok(bits) = fcntl(&fd, FcntlArg::F_GETFL) {
        let _ = fcntl(
            &fd,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(bits) | OFlag::O_NONBLOCK),
        );
    }
}

// === the loop ===

struct Output {
    file: File,
    stream: Stream,
    lines: LineSplitter,
}

struct Client {
    sock: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
}

struct Loop {
    outputs: Vec<Option<Output>>,
    stdin: Option<File>,
    stdin_buf: Vec<u8>,
    /// A client asked for EOF on stdin: close it once `stdin_buf` is written.
    stdin_eof: bool,
    pty: Option<File>,
    tty: bool,
    log: LogWriter,
    listener: UnixListener,
    clients: Vec<Client>,
}

/// What one poll slot stands for.
#[derive(Clone, Copy)]
enum Slot {
    Signal,
    Listener,
    Output(usize),
    Stdin,
    Client(usize),
}

impl Loop {
    fn new(ends: ParentEnds, log: LogWriter, listener: UnixListener, tty: bool) -> Self {
        if let Some(s) = &ends.stdin {
            set_nonblocking(s);
        }
        Self {
            outputs: ends
                .outputs
                .into_iter()
                .map(|(file, stream)| {
                    Some(Output {
                        file,
                        stream,
                        lines: LineSplitter::default(),
                    })
                })
                .collect(),
            stdin: ends.stdin,
            stdin_buf: Vec::new(),
            stdin_eof: false,
            pty: ends.pty,
            tty,
            log,
            listener,
            clients: Vec::new(),
        }
    }

    /// Serves until PID 1 has exited and its output is drained; returns its exit status
    /// (the code, or 128 + signal).
    fn run(&mut self, child: Pid, sigfd: &SignalFd) -> i32 {
        let mut code: Option<i32> = None;
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            if code.is_some() && self.outputs.iter().all(Option::is_none) {
                break;
            }
            let mut slots = vec![Slot::Signal, Slot::Listener];
            let mut fds = vec![
                PollFd::new(sigfd, PollFlags::IN),
                PollFd::new(&self.listener, PollFlags::IN),
            ];
            for (i, o) in self.outputs.iter().enumerate() {
                if let Some(o) = o {
                    slots.push(Slot::Output(i));
                    fds.push(PollFd::new(&o.file, PollFlags::IN));
                }
            }
            if let Some(s) = &self.stdin {
                if !self.stdin_buf.is_empty() {
                    slots.push(Slot::Stdin);
                    fds.push(PollFd::new(s, PollFlags::OUT));
                }
            }
            for (i, c) in self.clients.iter().enumerate() {
                let mut ev = PollFlags::IN;
                if !c.outbuf.is_empty() {
                    ev |= PollFlags::OUT;
                }
                slots.push(Slot::Client(i));
                fds.push(PollFd::new(&c.sock, ev));
            }
            let timeout = code.map(|_| rustix::event::Timespec {
                tv_sec: DRAIN_MS / 1000,
                tv_nsec: (DRAIN_MS % 1000) * 1_000_000,
            });
            let n = match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    eprintln!("rctl-shim: poll: {e}");
                    0
                }
            };
            if n == 0 && code.is_some() {
                // Output still open a second after PID 1 died: something outside holds
                // the write end; the log ends here.
                break;
            }
            let ready: Vec<(Slot, PollFlags)> = slots
                .iter()
                .zip(fds.iter())
                .map(|(s, f)| (*s, f.revents()))
                .filter(|(_, r)| !r.is_empty())
                .collect();
            drop(fds);
            let mut dead_clients = Vec::new();
            for (slot, rev) in ready {
                match slot {
                    Slot::Signal => {
                        while let Ok(Some(_)) = sigfd.read_signal() {}
                        if code.is_none() {
                            code = reap(child);
                        }
                    }
                    Slot::Listener => self.accept(),
                    Slot::Output(i) => self.read_output(i, &mut buf),
                    Slot::Stdin => self.flush_stdin(),
                    Slot::Client(i) => {
                        if !self.serve_client(i, rev, &mut buf) {
                            dead_clients.push(i);
                        }
                    }
                }
            }
            for i in dead_clients.into_iter().rev() {
                self.clients.swap_remove(i);
            }
            // SIGCHLD may have been consumed before the child was waitable.
            if code.is_none() {
                code = reap(child);
            }
        }
        let log = &mut self.log;
        for o in self.outputs.iter_mut().flatten() {
            o.lines
                .finish(&mut |l| log.write(&logs::encode(l, o.stream, SystemTime::now())));
        }
        // Clients get what is queued, then EOF.
        for c in &mut self.clients {
            let _ = c.sock.set_nonblocking(false);
            let _ = c.sock.write_all(&c.outbuf);
        }
        code.unwrap_or(255)
    }

    fn accept(&mut self) {
        while let Ok((sock, _)) = self.listener.accept() {
            if sock.set_nonblocking(true).is_ok() {
                self.clients.push(Client {
                    sock,
                    inbuf: Vec::new(),
                    outbuf: Vec::new(),
                });
            }
        }
    }

    fn read_output(&mut self, i: usize, buf: &mut [u8]) {
        let Some(o) = self.outputs[i].as_mut() else {
            return;
        };
        let n = match o.file.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::WouldBlock => {
                return
            }
            // EIO is how a pty master reports that every slave fd closed.
            Err(_) => 0,
        };
        let now = SystemTime::now();
        let log = &mut self.log;
        if n == 0 {
            o.lines
                .finish(&mut |l| log.write(&logs::encode(l, o.stream, now)));
            self.outputs[i] = None;
            return;
        }
        let data = &buf[..n];
        o.lines
            .push(data, &mut |l| log.write(&logs::encode(l, o.stream, now)));
        let frame = if self.tty {
            data.to_vec()
        } else {
            attach::encode_output(o.stream, data)
        };
        for c in &mut self.clients {
            if c.outbuf.len() + frame.len() <= CLIENT_BACKLOG {
                c.outbuf.extend_from_slice(&frame);
            } else {
                // Too slow: it loses output rather than stalling the container; it is
                // dropped on its next write attempt.
                c.outbuf.clear();
                c.inbuf.clear();
                let _ = c.sock.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    fn flush_stdin(&mut self) {
        let Some(s) = self.stdin.as_mut() else {
            self.stdin_buf.clear();
            return;
        };
        match s.write(&self.stdin_buf) {
            Ok(n) => {
                self.stdin_buf.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            // EPIPE: the container closed its stdin; further input goes nowhere.
            Err(_) => {
                self.stdin_buf.clear();
                self.stdin = None;
            }
        }
        if self.stdin_buf.is_empty() && self.stdin_eof && !self.tty {
            self.stdin = None;
        }
    }

    /// Handles one client's readiness; false when it is gone.
    fn serve_client(&mut self, i: usize, rev: PollFlags, buf: &mut [u8]) -> bool {
        if rev.contains(PollFlags::OUT) {
            let c = &mut self.clients[i];
            match c.sock.write(&c.outbuf) {
                Ok(n) => {
                    c.outbuf.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return false,
            }
        }
        if rev.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            let n = match self.clients[i].sock.read(buf) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            };
            self.clients[i].inbuf.extend_from_slice(&buf[..n]);
            loop {
                match attach::decode_request(&mut self.clients[i].inbuf) {
                    Ok(Some(r)) => self.request(r),
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("rctl-shim: attach client dropped: {e}");
                        return false;
                    }
                }
            }
        }
        true
    }

    fn request(&mut self, r: Request) {
        match r {
            Request::Stdin(d) => {
                if self.stdin.is_some() && self.stdin_buf.len() + d.len() <= STDIN_BACKLOG {
                    self.stdin_buf.extend_from_slice(&d);
                    self.flush_stdin();
                }
            }
            Request::Resize { rows, cols } => {
                if let Some(p) = &self.pty {
                    if let Err(e) = set_winsize(p, rows, cols) {
                        eprintln!("rctl-shim: resize pty: {e}");
                    }
                }
            }
            Request::CloseStdin => {
                self.stdin_eof = true;
                self.flush_stdin();
            }
        }
    }
}

/// The exit status of `child` if it has ended.
fn reap(child: Pid) -> Option<i32> {
    loop {
        return match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => None,
            Err(e) => {
                eprintln!("rctl-shim: wait for container: {e}");
                Some(255)
            }
        };
    }
}
