//! The accept loop, one thread per connection, and graceful shutdown.
//!
//! Shutdown: SIGTERM/SIGINT set a flag and write to a self-pipe; the accept loop polls the
//! listener and the pipe together, so it stops accepting at once without a busy loop. Each
//! connection finishes the request it is serving (answering `Connection: close`), idle
//! keep-alive connections notice the flag within [`IDLE_TICK`], and the process exits once
//! no connection is left (or after [`DRAIN_LIMIT`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::{error_response, parse_head, respond, sys, Config, FailGate};

/// How often an idle connection wakes to check for shutdown.
pub const IDLE_TICK: Duration = Duration::from_millis(100);
/// Longest we wait for in-flight requests after SIGTERM; the runtime SIGKILLs us later anyway.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// State every connection thread shares.
struct Shared {
    cfg: Config,
    hostname: String,
    gate: FailGate,
    /// Live connection threads, so shutdown can wait for them.
    active: AtomicUsize,
}

/// Decrements the live-connection count however the thread ends.
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether SIGTERM/SIGINT has arrived.
pub fn shutting_down() -> bool {
    sys::SHUTDOWN.load(Ordering::SeqCst)
}

/// Binds `0.0.0.0:cfg.port` and serves until SIGTERM or SIGINT.
pub fn run(cfg: Config) -> io::Result<()> {
    let wake = sys::shutdown_pipe()?;
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], cfg.port)))?;
    eprintln!(
        "testserver: listening on {} version={}",
        listener.local_addr()?,
        cfg.version
    );
    serve(listener, cfg, wake)
}

/// Serves `listener` until the shutdown pipe `wake` becomes readable, then drains.
pub fn serve(listener: TcpListener, cfg: Config, wake: RawFd) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let shared = Arc::new(Shared {
        gate: FailGate::new(cfg.fail_rate),
        hostname: crate::hostname(),
        cfg,
        active: AtomicUsize::new(0),
    });
    while !shutting_down() {
        let ready = sys::wait_readable(&[listener.as_raw_fd(), wake])?;
        if ready[1] {
            break;
        }
        // Accept everything queued: poll is level-triggered, but draining saves syscalls.
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    shared.active.fetch_add(1, Ordering::SeqCst);
                    let guard = ActiveGuard(shared.clone());
                    thread::spawn(move || {
                        let _ = connection(stream, &guard.0);
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Per-connection failures (ECONNABORTED, EMFILE) must not stop the server.
                Err(e) => {
                    eprintln!("testserver: accept: {e}");
                    thread::sleep(Duration::from_millis(10));
                    break;
                }
            }
        }
    }
    // Closing the listener first makes new connections fail fast instead of queueing.
    drop(listener);
    eprintln!("testserver: shutting down, draining connections");
    let deadline = Instant::now() + DRAIN_LIMIT;
    while shared.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn connection(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    // Accepted sockets do not inherit the listener's nonblocking flag on Linux, but be sure.
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE_TICK))?;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    loop {
        // Answer every complete request already buffered (pipelining).
        loop {
            match parse_head(&buf) {
                Ok(Some((req, used))) => {
                    let need = used + req.content_length;
                    while buf.len() < need {
                        match read_some(&mut stream, &mut chunk)? {
                            Some(0) => return Ok(()),
                            Some(n) => buf.extend_from_slice(&chunk[..n]),
                            None => {}
                        }
                    }
                    buf.drain(..need);
                    if !shared.cfg.latency.is_zero() {
                        thread::sleep(shared.cfg.latency);
                    }
                    let resp = respond(&req, &shared.cfg, &shared.hostname, &shared.gate);
                    let keep = req.keep_alive && !shutting_down();
                    stream.write_all(&resp.to_bytes(keep))?;
                    if !keep {
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    stream.write_all(&error_response(&e).to_bytes(false))?;
                    return Ok(());
                }
            }
        }
        match read_some(&mut stream, &mut chunk)? {
            Some(0) => return Ok(()),
            Some(n) => buf.extend_from_slice(&chunk[..n]),
            // Idle between requests: the moment to leave if we are shutting down.
            None if buf.is_empty() && shutting_down() => return Ok(()),
            None => {}
        }
    }
}

/// One read; `None` on timeout or EINTR (the caller decides whether to keep waiting).
fn read_some(stream: &mut TcpStream, chunk: &mut [u8]) -> io::Result<Option<usize>> {
    match stream.read(chunk) {
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    fn read_response(r: &mut io::BufReader<TcpStream>) -> (String, String) {
        let mut head = String::new();
        let mut len = 0;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if let Some(v) = line.strip_prefix("Content-Length: ") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        (head, String::from_utf8(body).unwrap())
    }

    /// The whole server in-process: keep-alive, fail share, then graceful shutdown with a
    /// request in flight. One test, because the shutdown flag is process-wide.
    #[test]
    fn serves_keepalive_and_drains_on_shutdown() {
        let wake = sys::shutdown_pipe().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = Config {
            version: "v9".into(),
            fail_rate: 0.5,
            latency: Duration::from_millis(300),
            ..Config::default()
        };
        let server = thread::spawn(move || serve(listener, cfg, wake));

        let stream = TcpStream::connect(addr).unwrap();
        let mut w = stream.try_clone().unwrap();
        let mut r = io::BufReader::new(stream);
        let mut statuses = Vec::new();
        for _ in 0..4 {
            w.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let (head, body) = read_response(&mut r);
            statuses.push(head[9..12].to_string());
            assert!(head.contains("Connection: keep-alive"), "{head}");
            assert!(body.starts_with("version=v9 host="), "{body}");
        }
        assert_eq!(statuses, ["200", "500", "200", "500"]);

        // A request in flight when SIGTERM arrives still gets its answer, then close.
        w.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
        thread::sleep(Duration::from_millis(50));
        // SAFETY: raising a signal we installed a handler for; the handler is signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            libc::raise(libc::SIGTERM)
        };
        let (head, body) = read_response(&mut r);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("Connection: close"), "{head}");
        assert_eq!(body, "ok\n");
        server.join().unwrap().unwrap();
        assert!(TcpStream::connect(addr).is_err());
    }
}
