//! The plain HTTP/1.1 fast path's connection driver: GET and HEAD requests without a
//! body, read and rewritten by [`super::codec`] and forwarded by this connection's own
//! task to a kept-alive backend connection from [`super::pool`], the answer streamed back
//! by content length, chunked framing or until the backend closes.
//!
//! Why: with hyper on both sides a proxied request went through two HTTP codecs, header
//! maps, two tasks and a channel between them; that was most of rctl-lb's cost per
//! request against HAProxy (issue 7). The common request is small and plain, so it gets a
//! path of its own; everything else stays with hyper, which already handles it right:
//! as soon as a request is not plainly one of ours (another method, a body, `Expect`,
//! `Upgrade`, HTTP/1.0, an absolute URI, a partial or malformed or oversized head, a
//! PROXY protocol or sticky service), the connection with every byte not yet consumed is
//! handed to hyper's server ([`Outcome::Handoff`]) and stays there. So 400, 431, 405,
//! the slowloris timeout, bodies, upgrades and POST's no-retry rule keep their one
//! implementation; the fast path never buffers a body (it has none to read, and answers
//! are streamed through a fixed buffer).
//!
//! Retries follow [`super::forward`]'s rules for GET and HEAD: a connection that could not
//! be made is retried on another endpoint; a failure before a whole response head, once
//! more on another endpoint. A kept-alive connection that turns out closed (the backend
//! timed it out while idle) is first replaced by a new one to the same backend, as hyper's
//! pool did, without counting against the backend.
//!
//! Timers: instead of a timer per request (hyper's header-read timer, the request
//! timeout), each connection has one [`Alarm`] that may fire early and is then re-armed,
//! so a busy connection re-registers a timer about once per timeout, not per request.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, warn};

use super::codec::{
    parse_request, parse_response, BadChunk, Chunked, Framing, Head, ParsedResp, RespHead,
};
use super::context::{ConnInfo, Listener};
use super::pool::{self, ConnectError, Key};
use super::MAX_RETRIES;
use crate::routes::Routes;

/// Size of each connection's read buffers (client and backend side).
const BUF_SIZE: usize = 16 * 1024;

/// How the fast path left a client connection.
pub(super) enum Outcome {
    /// The connection is done (closed by either side, shut down, or broken).
    Closed,
    /// Hand the connection to hyper; these bytes were received and not consumed.
    Handoff(TcpStream, Bytes),
}

// === the alarm ===

/// One timer per connection for all its deadlines. It is armed no later than the current
/// deadline; when it fires early (the deadline moved on since), it is re-armed.
struct Alarm {
    sleep: Pin<Box<Sleep>>,
}

impl Alarm {
    fn new(deadline: Instant) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Ready when `deadline` has passed.
    fn poll(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        if self.sleep.deadline() > deadline {
            self.sleep.as_mut().reset(deadline);
        }
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.sleep.deadline() >= deadline || Instant::now() >= deadline {
                return Poll::Ready(());
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

// === the backend pool ===

/// A kept-alive backend connection.
struct Upstream {
    stream: TcpStream,
    addr: SocketAddr,
    /// It carried a request before (so a close found on it may be its idle timeout).
    reused: bool,
}

impl Upstream {
    /// An idle connection to `addr` from the fast path's pool.
    fn checkout(ctx: &Listener, addr: SocketAddr, now: Instant) -> Option<Self> {
        let stream = ctx.forwarder.raw.checkout(Key::shared(addr), now)?;
        Some(Self {
            stream,
            addr,
            reused: true,
        })
    }

    /// A new connection to `addr` (fast-path services send no PROXY header).
    async fn connect(addr: SocketAddr) -> Result<Self, ConnectError> {
        let stream = pool::connect(addr, None).await?;
        Ok(Self {
            stream,
            addr,
            reused: false,
        })
    }

    /// Puts the connection back in the pool for the next client connection.
    fn checkin(self, ctx: &Listener) {
        ctx.forwarder
            .raw
            .checkin(Key::shared(self.addr), self.stream);
    }
}

// === the connection ===

/// A read buffer: bytes `start..end` of `data` are received and not consumed.
struct Buf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buf {
    fn new() -> Self {
        Self {
            data: vec![0; BUF_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room to read into, moving unconsumed bytes to the front first if that makes room.
    fn spare(&mut self) -> &mut [u8] {
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }
}

/// Reads what `stream` has into `buf`'s free room; `Ok(0)`: the peer closed.
fn poll_read_into(
    cx: &mut Context<'_>,
    stream: &mut TcpStream,
    buf: &mut Buf,
) -> Poll<io::Result<usize>> {
    let spare = buf.spare();
    if spare.is_empty() {
        return Poll::Ready(Err(io::Error::other("buffer full")));
    }
    let mut rb = ReadBuf::new(spare);
    match Pin::new(stream).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            buf.end += n;
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// What waiting for a client's next request ended with.
enum Wait {
    Read(io::Result<usize>),
    Idle,
    Shutdown,
}

/// How one forwarded request ended, for the connection loop.
enum Served {
    /// Keep serving the client.
    KeepAlive,
    /// Close the client connection (asked for, or the answer ended with the backend's).
    Close,
}

/// Serves a plaintext HTTP/1.1 client connection on the fast path until it closes or
/// needs hyper.
pub(super) async fn serve(
    mut stream: TcpStream,
    info: &ConnInfo,
    ctx: &Listener,
    idle: Duration,
    shutdown: &CancellationToken,
) -> Outcome {
    let mut conn = Conn {
        info,
        ctx,
        inbuf: Buf::new(),
        upbuf: None,
        upstream: None,
        alarm: Alarm::new(Instant::now() + idle),
        request: Vec::with_capacity(1024),
        out: Vec::with_capacity(BUF_SIZE),
    };
    let outcome = conn.run(&mut stream, idle, shutdown).await;
    if let Some(up) = conn.upstream.take() {
        up.checkin(ctx);
    }
    match outcome {
        Some(rest) => Outcome::Handoff(stream, rest),
        None => {
            let _ = stream.shutdown().await;
            Outcome::Closed
        }
    }
}

struct Conn<'a> {
    info: &'a ConnInfo,
    ctx: &'a Listener,
    inbuf: Buf,
    /// The backend side's read buffer, made on the first request.
    upbuf: Option<Buf>,
    /// The backend connection this client used last, kept alive.
    upstream: Option<Upstream>,
    alarm: Alarm,
    /// The request head for the backend, reused by every request.
    request: Vec<u8>,
    /// What goes to the client next (response head, body bytes), reused likewise.
    out: Vec<u8>,
}

impl Conn<'_> {
    /// Serves requests; `Some(bytes)` to hand the connection to hyper with those bytes.
    async fn run(
        &mut self,
        stream: &mut TcpStream,
        idle: Duration,
        shutdown: &CancellationToken,
    ) -> Option<Bytes> {
        let mut cancelled: Pin<Box<WaitForCancellationFutureOwned>> =
            Box::pin(shutdown.clone().cancelled_owned());
        let mut idle_deadline = Instant::now() + idle;
        let mut served = false;
        loop {
            if self.inbuf.filled().is_empty() {
                let draining = shutdown.is_cancelled();
                if draining {
                    if served {
                        return None;
                    }
                    // Accepted before the shutdown, nothing asked yet: the client of a fresh
                    // connection does not retry, so its first request is still answered if
                    // it comes soon.
                    idle_deadline = idle_deadline.min(Instant::now() + super::FIRST_REQUEST_GRACE);
                }
                let alarm = &mut self.alarm;
                let inbuf = &mut self.inbuf;
                let waited = poll_fn(|cx| {
                    if let Poll::Ready(r) = poll_read_into(cx, stream, inbuf) {
                        return Poll::Ready(Wait::Read(r));
                    }
                    if !draining && cancelled.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wait::Shutdown);
                    }
                    if alarm.poll(cx, idle_deadline).is_ready() {
                        return Poll::Ready(Wait::Idle);
                    }
                    Poll::Pending
                })
                .await;
                match waited {
                    Wait::Read(Ok(0)) | Wait::Read(Err(_)) => return None,
                    Wait::Read(Ok(_)) => {}
                    Wait::Idle => {
                        debug!(peer = %self.info.peer, "idle client connection closed");
                        return None;
                    }
                    Wait::Shutdown => continue,
                }
            }
            let start = Instant::now();
            let answer = self.serve_one(stream, start).await;
            served = true;
            match answer {
                Ok(Served::KeepAlive) => {}
                Ok(Served::Close) => return None,
                Err(Handoff) => return Some(Bytes::copy_from_slice(self.inbuf.filled())),
            }
            // The idle time counts from the end of the answer.
            idle_deadline = Instant::now() + idle;
        }
    }

    /// Forwards the request at the start of the input buffer. `Err(Handoff)` when it is
    /// not ours (nothing consumed, nothing sent); `Ok(Close)` also when the client or the
    /// backend failed mid-answer.
    async fn serve_one(
        &mut self,
        stream: &mut TcpStream,
        start: Instant,
    ) -> Result<Served, Handoff> {
        let ctx = self.ctx;
        let service = ctx.service.as_str();
        let current = ctx.routes.borrow().clone();
        let Some(route) = current.service(service) else {
            return Err(Handoff);
        };
        if route.proxy_protocol {
            return Err(Handoff);
        }
        let mut request = std::mem::take(&mut self.request);
        let parsed = parse_request(
            self.inbuf.filled(),
            self.info.forwarded_for.as_bytes(),
            self.info.proto,
            route.sticky.is_some(),
            &mut request,
        );
        let served = self.forward(stream, start, current, parsed, &request).await;
        self.request = request;
        served
    }

    /// Forwards the request `parsed` (its head for the backend in `request`).
    async fn forward(
        &mut self,
        stream: &mut TcpStream,
        start: Instant,
        mut current: Arc<Routes>,
        parsed: Head,
        request: &[u8],
    ) -> Result<Served, Handoff> {
        let ctx = self.ctx;
        let service = ctx.service.as_str();
        let Some(route) = current.service(service) else {
            return Err(Handoff);
        };
        let Head::Plain {
            len,
            head,
            close,
            sticky,
        } = parsed
        else {
            return Err(Handoff);
        };
        self.inbuf.consume(len);
        let revision = match &sticky {
            Some(headers) => route.revision_for(headers),
            None => route.next_revision(),
        };
        let request_timeout = route.request_timeout;
        let deadline = start + request_timeout;

        let mut served = revision;
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut retried = false;
        loop {
            let backend = super::pick_attempt(&ctx.routes, &mut current, service, revision, &tried);
            let Some(backend) = backend else {
                let (status, body) = super::unserved(service, !tried.is_empty());
                return Ok(self
                    .short(stream, start, served, status, &body, close)
                    .await);
            };
            let inflight = backend.start();
            let addr = backend.address;
            served = backend.revision;

            // A kept-alive connection, or a new one.
            let mut up = match self.upstream.take() {
                Some(up) if up.addr == addr => Some(up),
                Some(other) => {
                    other.checkin(ctx);
                    None
                }
                None => None,
            };
            if up.is_none() {
                up = Upstream::checkout(ctx, addr, start);
            }
            let attempt = self
                .exchange(up, addr, request, head, close, deadline)
                .await;
            match attempt {
                Attempt::Answered(mut up, resp) => {
                    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::OK);
                    backend.record(!status.is_server_error());
                    ctx.counters.record_request(served, status, start.elapsed());
                    let relayed = self.relay(stream, &mut up, &resp).await;
                    drop(inflight);
                    return Ok(match relayed {
                        Relayed::Done { reuse } => {
                            if reuse && resp.reusable {
                                up.reused = true;
                                self.upstream = Some(up);
                            }
                            if close || resp.framing == Framing::Close {
                                Served::Close
                            } else {
                                Served::KeepAlive
                            }
                        }
                        Relayed::Broken => Served::Close,
                    });
                }
                Attempt::ConnectFailed(e) if tried.len() < MAX_RETRIES => {
                    backend.record(false);
                    ctx.counters.record_connect_failure(backend.revision);
                    warn!(service, %addr, task = backend.task_id, error = %crate::Chain(&e), "connect failed; trying another endpoint");
                    tried.push(addr);
                }
                Attempt::TimedOut => {
                    backend.record(false);
                    warn!(service, %addr, task = backend.task_id, timeout = ?request_timeout, "backend sent no response headers in time");
                    return Ok(self
                        .short(
                            stream,
                            start,
                            served,
                            StatusCode::GATEWAY_TIMEOUT,
                            "gateway timeout\n",
                            close,
                        )
                        .await);
                }
                // GET and HEAD only here: sending one again cannot do harm.
                Attempt::Failed(e) if !retried => {
                    backend.record(false);
                    warn!(service, %addr, task = backend.task_id, error = %e, "request failed before any response; retrying once on another endpoint");
                    tried.push(addr);
                    retried = true;
                }
                // Out of endpoints to try, or already retried once.
                Attempt::ConnectFailed(e) => {
                    ctx.counters.record_connect_failure(backend.revision);
                    backend.record(false);
                    warn!(service, %addr, task = backend.task_id, error = %crate::Chain(&e), "backend request failed");
                    return Ok(self.bad_gateway(stream, start, served, close).await);
                }
                Attempt::Failed(e) => {
                    backend.record(false);
                    warn!(service, %addr, task = backend.task_id, error = %e, "backend request failed");
                    return Ok(self.bad_gateway(stream, start, served, close).await);
                }
            }
        }
    }

    /// Sends `request` on `up` (or a new connection to `addr`) and reads the answer's
    /// head. A kept-alive connection found closed is replaced by a new one, once.
    async fn exchange(
        &mut self,
        mut up: Option<Upstream>,
        addr: SocketAddr,
        request: &[u8],
        head: bool,
        close: bool,
        deadline: Instant,
    ) -> Attempt {
        loop {
            let mut conn = match up.take() {
                Some(c) => c,
                None => match Upstream::connect(addr).await {
                    Ok(c) => c,
                    Err(e) => return Attempt::ConnectFailed(e),
                },
            };
            let reused = conn.reused;
            let upbuf = self.upbuf.get_or_insert_with(Buf::new);
            upbuf.clear();
            if let Err(e) = conn.stream.write_all(request).await {
                if reused {
                    debug!(%addr, error = %e, "pooled connection unusable; reconnecting");
                    continue;
                }
                return Attempt::Failed(e);
            }
            loop {
                let alarm = &mut self.alarm;
                let stream = &mut conn.stream;
                let read = poll_fn(|cx| {
                    if let Poll::Ready(r) = poll_read_into(cx, stream, upbuf) {
                        return Poll::Ready(Some(r));
                    }
                    if alarm.poll(cx, deadline).is_ready() {
                        return Poll::Ready(None);
                    }
                    Poll::Pending
                })
                .await;
                let n = match read {
                    None => return Attempt::TimedOut,
                    Some(Ok(n)) => n,
                    Some(Err(e)) => {
                        if reused && upbuf.filled().is_empty() {
                            break;
                        }
                        return Attempt::Failed(e);
                    }
                };
                if n == 0 {
                    if reused && upbuf.filled().is_empty() {
                        // Closed while idle in the pool (or as the request arrived).
                        break;
                    }
                    return Attempt::Failed(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "backend closed the connection before a whole response head",
                    ));
                }
                loop {
                    match parse_response(upbuf.filled(), head, close, &mut self.out) {
                        ParsedResp::Head(resp) => {
                            upbuf.consume(resp.len);
                            return Attempt::Answered(conn, resp);
                        }
                        ParsedResp::Interim(len) => upbuf.consume(len),
                        ParsedResp::Partial => break,
                        ParsedResp::Invalid => {
                            return Attempt::Failed(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "invalid response head",
                            ))
                        }
                    }
                }
            }
            debug!(%addr, "pooled connection closed; reconnecting");
        }
    }

    /// Sends the response head and streams the body from the backend to the client.
    async fn relay(
        &mut self,
        stream: &mut TcpStream,
        up: &mut Upstream,
        resp: &RespHead,
    ) -> Relayed {
        let upbuf = self.upbuf.as_mut().expect("exchange made the buffer");
        let out = &mut self.out;
        let mut chunked = Chunked::default();
        let mut left = match resp.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        // The body bytes already here go out with the head: one write for small answers.
        let mut done = self::take_body(resp.framing, upbuf, out, &mut left, &mut chunked);
        loop {
            let done_now = match done {
                Ok(d) => d,
                Err(BadChunk) => {
                    debug!(addr = %up.addr, "invalid chunked body from backend");
                    let _ = stream.write_all(out).await;
                    return Relayed::Broken;
                }
            };
            if stream.write_all(out).await.is_err() {
                return Relayed::Broken;
            }
            if done_now {
                // Bytes beyond the answer: the backend is out of step; do not reuse it.
                return Relayed::Done {
                    reuse: upbuf.filled().is_empty(),
                };
            }
            out.clear();
            upbuf.clear();
            match poll_fn(|cx| poll_read_into(cx, &mut up.stream, upbuf)).await {
                Ok(0) if resp.framing == Framing::Close => {
                    return Relayed::Done { reuse: false };
                }
                Ok(0) | Err(_) => return Relayed::Broken,
                Ok(_) => {}
            }
            done = self::take_body(resp.framing, upbuf, out, &mut left, &mut chunked);
        }
    }

    /// Answers 502: the backend failed before a whole response head.
    async fn bad_gateway(
        &mut self,
        stream: &mut TcpStream,
        start: Instant,
        revision: u64,
        close: bool,
    ) -> Served {
        let status = StatusCode::BAD_GATEWAY;
        self.short(stream, start, revision, status, "bad gateway\n", close)
            .await
    }

    /// Answers the client with a short plain-text response of our own.
    async fn short(
        &mut self,
        stream: &mut TcpStream,
        start: Instant,
        revision: u64,
        status: StatusCode,
        body: &str,
        close: bool,
    ) -> Served {
        self.ctx
            .counters
            .record_request(revision, status, start.elapsed());
        let mut out = Vec::with_capacity(160 + body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        if close {
            out.extend_from_slice(b"\r\nconnection: close");
        }
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body.as_bytes());
        if stream.write_all(&out).await.is_err() || close {
            Served::Close
        } else {
            Served::KeepAlive
        }
    }
}

/// Moves the body bytes in `upbuf` (as far as the answer goes) to `out`; `Ok(true)` when
/// the answer is complete.
fn take_body(
    framing: Framing,
    upbuf: &mut Buf,
    out: &mut Vec<u8>,
    left: &mut u64,
    chunked: &mut Chunked,
) -> Result<bool, BadChunk> {
    let here = upbuf.filled();
    match framing {
        Framing::Empty => Ok(true),
        Framing::Length(_) => {
            let n = (*left).min(here.len() as u64) as usize;
            out.extend_from_slice(&here[..n]);
            upbuf.consume(n);
            *left -= n as u64;
            Ok(*left == 0)
        }
        Framing::Chunked => {
            let (n, done) = match chunked.advance(here)? {
                Some(n) => (n, true),
                None => (here.len(), false),
            };
            out.extend_from_slice(&here[..n]);
            upbuf.consume(n);
            Ok(done)
        }
        Framing::Close => {
            out.extend_from_slice(here);
            let n = here.len();
            upbuf.consume(n);
            Ok(false)
        }
    }
}

/// The request is not for the fast path: hand the connection to hyper.
struct Handoff;

enum Attempt {
    Answered(Upstream, RespHead),
    ConnectFailed(ConnectError),
    /// Failed before a whole response head.
    Failed(io::Error),
    TimedOut,
}

enum Relayed {
    /// The whole answer went to the client; `reuse`: the backend connection is clean.
    Done { reuse: bool },
    /// The client or the backend failed mid-answer.
    Broken,
}

// === hand-off ===

/// A client connection handed to hyper: the bytes already received come first.
pub(super) struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl Prefixed {
    pub(super) fn new(io: TcpStream, prefix: Bytes) -> Self {
        Self { prefix, io }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
