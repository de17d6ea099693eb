//! The plain HTTP/1.1 fast path: GET and HEAD requests without a body, read with httparse
//! and forwarded by this connection's own task to a kept-alive backend connection, the
//! answer streamed back by content length, chunked framing or until the backend closes.
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
//! Retries follow [`super::http`]'s rules for GET and HEAD: a connection that could not
//! be made is retried on another endpoint; a failure before a whole response head, once
//! more on another endpoint. A kept-alive connection that turns out closed (the backend
//! timed it out while idle) is first replaced by a new one to the same backend, as hyper's
//! pool did, without counting against the backend.
//!
//! Timers: instead of a timer per request (hyper's header-read timer, the request
//! timeout), each connection has one [`Alarm`] that may fire early and is then re-armed,
//! so a busy connection re-registers a timer about once per timeout, not per request.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, warn};

use super::http::{ConnInfo, Listener, MAX_HEADER_SIZE};
use super::{CONNECT_TIMEOUT, MAX_RETRIES};
use crate::routes::Routes;

/// Most header lines in a head the fast path parses; more go to hyper.
const MAX_HEADERS: usize = 64;
/// Size of each connection's read buffers (client and backend side).
const BUF_SIZE: usize = 16 * 1024;
/// How long a backend connection may sit idle in the shared pool.
const POOL_IDLE: Duration = super::pool::IDLE_TIMEOUT;
/// Most idle connections kept per backend.
const MAX_IDLE_PER_BACKEND: usize = 256;

/// How the fast path left a client connection.
pub(super) enum Outcome {
    /// The connection is done (closed by either side, shut down, or broken).
    Closed,
    /// Hand the connection to hyper; these bytes were received and not consumed.
    Handoff(TcpStream, Bytes),
}

// === request heads ===

/// What the fast path needs from a client's request head, or why it is not one of ours.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// A plain request: the head is `len` bytes; `upstream` is the head to send a backend
    /// (hop-by-hop headers dropped, forwarding headers set, Host ensured).
    Plain {
        len: usize,
        head: bool,
        close: bool,
        /// Where the sticky key is, when the route asked: the request's headers.
        sticky: Option<http::HeaderMap>,
    },
    /// Not complete yet.
    Partial,
    /// Anything else: hyper's.
    Other,
}

/// Hop-by-hop request and response headers (RFC 9110 §7.6.1) and `Proxy-Connection`,
/// never forwarded; see [`super::http::strip_hop_by_hop`].
fn hop_by_hop(name: &str) -> bool {
    const NAMES: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Whether a comma-separated header value lists `token` (any case).
fn lists(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether the `Connection` values name `name`, which is then hop-by-hop too.
fn named_by(connection: &[&[u8]], name: &str) -> bool {
    connection.iter().any(|v| lists(v, name))
}

/// Parses the request head at the start of `buf` and, for a plain GET or HEAD, writes the
/// head to send upstream to `up` (cleared first). `forwarded_for` is the client's address;
/// `with_sticky` asks for the headers as a map (for a sticky canary's key).
pub(crate) fn parse_request(
    buf: &[u8],
    forwarded_for: &[u8],
    proto: &str,
    with_sticky: bool,
    up: &mut Vec<u8>,
) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEADER_SIZE => return Head::Partial,
        // Malformed, too many headers, too big: hyper answers those (400, 431).
        _ => return Head::Other,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Head::Other;
    };
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Head::Other,
    };
    if !path.starts_with('/') {
        return Head::Other;
    }
    let mut connection: [&[u8]; 4] = [b""; 4];
    let mut n_connection = 0;
    let mut xff: [&[u8]; 4] = [b""; 4];
    let mut n_xff = 0;
    let mut host = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if h.value.trim_ascii() != b"0" {
                return Head::Other;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Head::Other;
        } else if name.eq_ignore_ascii_case("connection") {
            if n_connection == connection.len() {
                return Head::Other;
            }
            connection[n_connection] = h.value;
            n_connection += 1;
        } else if name.eq_ignore_ascii_case("host") {
            host = true;
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            if n_xff == xff.len() {
                return Head::Other;
            }
            xff[n_xff] = h.value;
            n_xff += 1;
        }
    }
    if !host {
        // HTTP/1.1 requires one; hyper's path fills it in.
        return Head::Other;
    }
    let connection = &connection[..n_connection];
    let close = connection.iter().any(|v| lists(v, "close"));

    up.clear();
    up.extend_from_slice(method.as_bytes());
    up.push(b' ');
    up.extend_from_slice(path.as_bytes());
    up.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("x-forwarded-for")
            || name.eq_ignore_ascii_case("x-forwarded-proto")
            || hop_by_hop(name)
            || named_by(connection, name)
        {
            continue;
        }
        up.extend_from_slice(name.as_bytes());
        up.extend_from_slice(b": ");
        up.extend_from_slice(h.value);
        up.extend_from_slice(b"\r\n");
    }
    // Earlier proxies' entries first, then the client's address, on one line.
    up.extend_from_slice(b"x-forwarded-for: ");
    for v in &xff[..n_xff] {
        up.extend_from_slice(v);
        up.extend_from_slice(b", ");
    }
    up.extend_from_slice(forwarded_for);
    up.extend_from_slice(b"\r\nx-forwarded-proto: ");
    up.extend_from_slice(proto.as_bytes());
    up.extend_from_slice(b"\r\n");
    up.extend_from_slice(b"\r\n");

    let sticky = with_sticky.then(|| {
        let mut map = http::HeaderMap::new();
        for h in req.headers.iter() {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(h.name.as_bytes()),
                http::HeaderValue::from_bytes(h.value),
            ) {
                map.append(n, v);
            }
        }
        map
    });
    Head::Plain {
        len,
        head,
        close,
        sticky,
    }
}

// === response heads ===

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes (no length, not chunked).
    Close,
}

/// A backend's response head, ready for the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RespHead {
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// Whether the backend connection may carry another request after this answer.
    pub reusable: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ParsedResp {
    Head(RespHead),
    /// An interim 1xx answer of this many bytes: skipped.
    Interim(usize),
    Partial,
    Invalid,
}

/// Parses a backend's response head to a request (`head`: a HEAD request) and writes the
/// head for the client to `out` (cleared first): hop-by-hop headers dropped,
/// `Transfer-Encoding: chunked` kept when the body is forwarded chunked, `Connection:
/// close` when `close_client`, or when the body ends with the backend's connection.
pub(crate) fn parse_response(
    buf: &[u8],
    head: bool,
    close_client: bool,
    out: &mut Vec<u8>,
) -> ParsedResp {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEADER_SIZE => return ParsedResp::Partial,
        _ => return ParsedResp::Invalid,
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return ParsedResp::Invalid;
    };
    if status == 101 || !(100..=999).contains(&status) {
        // Nothing asked to switch protocols on this path.
        return ParsedResp::Invalid;
    }
    if status < 200 {
        return ParsedResp::Interim(len);
    }
    let mut connection: [&[u8]; 4] = [b""; 4];
    let mut n_connection = 0;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut encoded = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            else {
                return ParsedResp::Invalid;
            };
            if length.is_some_and(|l| l != n) {
                return ParsedResp::Invalid;
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            if n_connection == connection.len() {
                return ParsedResp::Invalid;
            }
            connection[n_connection] = h.value;
            n_connection += 1;
        }
    }
    let connection = &connection[..n_connection];
    let framing = if head || status == 204 || status == 304 {
        Framing::Empty
    } else if encoded {
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    let reusable =
        version == 1 && framing != Framing::Close && !connection.iter().any(|v| lists(v, "close"));

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    // 100..=999: three digits.
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        if hop_by_hop(h.name) || named_by(connection, h.name) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        // Forwarded with its chunked framing as received.
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close_client || framing == Framing::Close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ParsedResp::Head(RespHead {
        len,
        status,
        framing,
        reusable,
    })
}

// === chunked framing ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size { size: u64, digits: bool },
    Ext { size: u64 },
    SizeLf { size: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    FinalLf,
}

/// Follows chunked framing (RFC 9112 §7.1) through bytes forwarded as they are, to tell
/// where the message ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunked(ChunkState);

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadChunk;

impl Default for Chunked {
    fn default() -> Self {
        Self(ChunkState::Size {
            size: 0,
            digits: false,
        })
    }
}

impl Chunked {
    /// Reads `bytes`; `Ok(Some(n))` when the message ends after its first `n` bytes.
    pub(crate) fn advance(&mut self, bytes: &[u8]) -> Result<Option<usize>, BadChunk> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.0 = match self.0 {
                Data(n) => {
                    let take = n.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.0 = if take == n { DataCr } else { Data(n - take) };
                    continue;
                }
                Size { size, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        let size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(d))
                            .ok_or(BadChunk)?;
                        Size { size, digits: true }
                    }
                    _ if !digits => return Err(BadChunk),
                    b';' | b' ' | b'\t' => Ext { size },
                    b'\r' => SizeLf { size },
                    b'\n' => Self::after_size(size),
                    _ => return Err(BadChunk),
                },
                Ext { size } => match b {
                    b'\r' => SizeLf { size },
                    b'\n' => Self::after_size(size),
                    _ => Ext { size },
                },
                SizeLf { size } if b == b'\n' => Self::after_size(size),
                DataCr if b == b'\r' => DataLf,
                DataCr | DataLf if b == b'\n' => Size {
                    size: 0,
                    digits: false,
                },
                TrailerStart => match b {
                    b'\r' => FinalLf,
                    b'\n' => return Ok(Some(i + 1)),
                    _ => TrailerLine,
                },
                TrailerLine if b == b'\n' => TrailerStart,
                TrailerLine => TrailerLine,
                FinalLf if b == b'\n' => return Ok(Some(i + 1)),
                _ => return Err(BadChunk),
            };
            i += 1;
        }
        Ok(None)
    }

    fn after_size(size: u64) -> ChunkState {
        if size == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data(size)
        }
    }
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

/// Idle backend connections of the fast path, per backend address. A client connection
/// keeps the one it used last and gives it back when it ends or goes elsewhere.
#[derive(Default)]
pub(super) struct RawPool {
    idle: Mutex<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>>,
}

impl RawPool {
    fn checkout(&self, addr: SocketAddr, now: Instant) -> Option<Upstream> {
        let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.get_mut(&addr)?;
        while let Some((stream, since)) = list.pop() {
            if now.duration_since(since) < POOL_IDLE {
                return Some(Upstream {
                    stream,
                    addr,
                    reused: true,
                });
            }
        }
        None
    }

    fn checkin(&self, up: Upstream) {
        let now = Instant::now();
        let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Connections that idled out are dropped (closed) on the way.
        for list in map.values_mut() {
            list.retain(|(_, since)| now.duration_since(*since) < POOL_IDLE);
        }
        map.retain(|_, l| !l.is_empty());
        let list = map.entry(up.addr).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push((up.stream, now));
        }
    }
}

async fn connect(addr: SocketAddr) -> io::Result<Upstream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(Upstream {
        stream,
        addr,
        reused: false,
    })
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
        ctx.forwarder.raw.checkin(up);
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
        loop {
            if self.inbuf.filled().is_empty() {
                if shutdown.is_cancelled() {
                    return None;
                }
                let alarm = &mut self.alarm;
                let inbuf = &mut self.inbuf;
                let waited = poll_fn(|cx| {
                    if let Poll::Ready(r) = poll_read_into(cx, stream, inbuf) {
                        return Poll::Ready(Wait::Read(r));
                    }
                    if cancelled.as_mut().poll(cx).is_ready() {
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
                    Wait::Shutdown => return None,
                }
            }
            let start = Instant::now();
            match self.serve_one(stream, start).await {
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
                let (status, body) = super::http::unserved(service, !tried.is_empty());
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
                    ctx.forwarder.raw.checkin(other);
                    None
                }
                None => None,
            };
            if up.is_none() {
                up = ctx.forwarder.raw.checkout(addr, start);
            }
            let attempt = self
                .exchange(up, addr, request, head, close, deadline)
                .await;
            let connect_failed = matches!(attempt, Attempt::ConnectFailed(_));
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
                    warn!(service, %addr, task = backend.task_id, error = %e, "connect failed; trying another endpoint");
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
                Attempt::ConnectFailed(e) | Attempt::Failed(e) => {
                    if connect_failed {
                        ctx.counters.record_connect_failure(backend.revision);
                    }
                    backend.record(false);
                    warn!(service, %addr, task = backend.task_id, error = %e, "backend request failed");
                    return Ok(self
                        .short(
                            stream,
                            start,
                            served,
                            StatusCode::BAD_GATEWAY,
                            "bad gateway\n",
                            close,
                        )
                        .await);
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
                None => match connect(addr).await {
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
    ConnectFailed(io::Error),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &[u8], sticky: bool) -> (Head, String) {
        let mut up = Vec::new();
        let head = parse_request(raw, b"10.0.0.1", "http", sticky, &mut up);
        (head, String::from_utf8(up).unwrap())
    }

    #[test]
    fn a_plain_get_goes_upstream_without_hop_by_hop_headers() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: web\r\nConnection: keep-alive, X-Private\r\n\
                    X-Private: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 198.18.0.1\r\n\
                    X-Forwarded-Proto: https\r\nAccept: */*\r\n\r\nGET /next";
        let (head, up) = request(raw, false);
        let len = raw.len() - b"GET /next".len();
        assert_eq!(
            head,
            Head::Plain {
                len,
                head: false,
                close: false,
                sticky: None
            }
        );
        assert_eq!(
            up,
            "GET /a?b=1 HTTP/1.1\r\nHost: web\r\nAccept: */*\r\n\
             x-forwarded-for: 198.18.0.1, 10.0.0.1\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    #[test]
    fn head_and_close_are_noted_and_sticky_gets_the_headers() {
        let (head, _) = request(
            b"HEAD / HTTP/1.1\r\nhost: w\r\nconnection: Close\r\ncookie: k=v\r\n\r\n",
            true,
        );
        let Head::Plain {
            head,
            close,
            sticky,
            ..
        } = head
        else {
            panic!("not plain: {head:?}");
        };
        assert!(head && close);
        assert_eq!(sticky.unwrap()["cookie"], "k=v");
    }

    #[test]
    fn anything_but_a_plain_bodiless_get_or_head_is_left_to_hyper() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: w\r\nContent-Length: 0\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: w\r\nContent-Length: 3\r\n\r\nabc",
            b"GET / HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: w\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: w\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: w\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET http://w/ HTTP/1.1\r\nHost: w\r\n\r\n",
            b"CONNECT w:443 HTTP/1.1\r\nHost: w\r\n\r\n",
            b"THIS IS NOT HTTP\r\n\r\n",
        ] {
            assert_eq!(
                request(raw, false).0,
                Head::Other,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(
            request(b"GET / HTTP/1.1\r\nHost: w\r\nX-Slow: ", false).0,
            Head::Partial
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: w\r\nX: {}",
            "a".repeat(MAX_HEADER_SIZE)
        );
        assert_eq!(request(big.as_bytes(), false).0, Head::Other);
        // A GET may say its empty body's length.
        let (head, _) = request(
            b"GET / HTTP/1.1\r\nHost: w\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(matches!(head, Head::Plain { .. }));
    }

    fn response(raw: &[u8], head: bool, close: bool) -> (ParsedResp, String) {
        let mut out = Vec::new();
        let parsed = parse_response(raw, head, close, &mut out);
        (parsed, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_framing_and_reuse_follow_the_head() {
        let cases: [(&[u8], bool, Framing, bool); 7] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                false,
                Framing::Length(3),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                true,
                Framing::Empty,
                true,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
                false,
                Framing::Chunked,
                true,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", false, Framing::Close, false),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
                false,
                Framing::Length(3),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
                false,
                Framing::Length(3),
                false,
            ),
        ];
        for (raw, head, framing, reusable) in cases {
            let (parsed, _) = response(raw, head, false);
            let ParsedResp::Head(r) = parsed else {
                panic!("{parsed:?}");
            };
            assert_eq!(
                (r.framing, r.reusable),
                (framing, reusable),
                "{}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(r.len, raw.len());
        }
    }

    #[test]
    fn the_client_gets_the_head_without_hop_by_hop_headers() {
        let (_, out) = response(
            b"HTTP/1.1 200 Fine\r\nServer: b\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
              Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            false,
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 Fine\r\nServer: b\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let (_, out) = response(b"HTTP/1.0 404 Nope\r\n\r\n", false, true);
        assert_eq!(out, "HTTP/1.1 404 Nope\r\nconnection: close\r\n\r\n");
    }

    #[test]
    fn interim_partial_and_bad_response_heads() {
        let (parsed, _) = response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200", false, false);
        assert_eq!(parsed, ParsedResp::Interim(25));
        assert_eq!(
            response(b"HTTP/1.1 200 OK\r\nServ", false, false).0,
            ParsedResp::Partial
        );
        for bad in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        ] {
            assert_eq!(response(bad, false, false).0, ParsedResp::Invalid);
        }
    }

    #[test]
    fn chunked_framing_ends_after_the_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        // Whole, and fed one byte at a time.
        assert_eq!(Chunked::default().advance(body), Ok(Some(end)));
        let mut c = Chunked::default();
        for (i, b) in body.iter().enumerate() {
            match c.advance(std::slice::from_ref(b)) {
                Ok(None) => assert!(i < end - 1),
                Ok(Some(1)) => {
                    assert_eq!(i, end - 1);
                    break;
                }
                other => panic!("at {i}: {other:?}"),
            }
        }
        assert_eq!(Chunked::default().advance(b"0\r\n\r\n"), Ok(Some(5)));
        assert_eq!(Chunked::default().advance(b"A\r\n0123456789"), Ok(None));
        assert_eq!(Chunked::default().advance(b"x\r\n"), Err(BadChunk));
        assert_eq!(Chunked::default().advance(b"1\r\nab"), Err(BadChunk));
        assert_eq!(
            Chunked::default().advance(b"ffffffffffffffffff\r\n"),
            Err(BadChunk)
        );
    }
}
