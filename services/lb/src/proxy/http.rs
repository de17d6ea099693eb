//! The L7 proxy: HTTP/1.1 and HTTP/2 from clients (h2c by prior knowledge, or over TLS
//! by ALPN, see [`super::tls`]), HTTP/1.1 with keep-alive to backends, one backend chosen
//! per request. A plaintext connection is HTTP/2 when it opens with the h2 preface, which
//! is told by peeking at the socket. Plain HTTP/1.1 GET and HEAD requests take the fast
//! path in [`super::h1`]; a connection goes to hyper's HTTP/1.1 server (with the bytes
//! already read) at its first request that is anything else. `Upgrade: h2c` is not
//! honoured (the request is served as HTTP/1.1, as RFC 9113 allows); CONNECT is answered
//! 405 (not a forward proxy).
//! `Connection: upgrade` requests (WebSocket and the like) go through with their Upgrade
//! header; after the backend's 101 the two connections are spliced byte for byte.
//!
//! Bodies stream in both directions; nothing buffers a whole body. A request is retried on
//! another backend when connecting failed (nothing of it was sent), and a GET or HEAD once
//! more when the backend failed before any byte of its answer (a crash, a kept-alive
//! connection closed under it); a POST never is. The request body is handed to the client
//! through [`ReclaimBody`], which takes it out of a shared slot only when first polled, so
//! while the body is still in the slot it can go to the next backend. Every outcome feeds
//! the backend's passive health ([`crate::health`]).
//!
//! Timeouts: a backend has the service's request timeout to send response headers, else
//! the client gets 504 (not retried); a client has the header timeout to send a request
//! head, which is also how long an idle keep-alive connection stays open.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::pool::{Lease, Pool};
use super::MAX_RETRIES;
use crate::routes::{InFlight, RoutesRx, TlsCert};
use crate::stats::{ServiceCounters, Stats};

/// The body of every response the proxy sends: a backend's, streamed, or its own short one.
pub type ProxyBody = Either<Tracked, Full<Bytes>>;

/// Headers that describe one connection, not the message, and so must not be forwarded
/// (RFC 9110 §7.6.1), plus the widespread non-standard `Proxy-Connection`.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // This runs on every request and every response. Most requests carry no hop-by-hop
    // header and most responses just `Connection: keep-alive`, so find the few names
    // present with passes over the map's keys and remove only those, rather than parse
    // `Connection` into new names and hash every hop-by-hop name for every message.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    // `Connection` goes last: the other passes read the names it lists.
    loop {
        let doomed = {
            let named = headers.get_all(header::CONNECTION);
            headers
                .keys()
                .find(|k| {
                    *k != header::CONNECTION
                        && (HOP_BY_HOP.contains(k) || connection_names(&named, k))
                })
                .cloned()
        };
        match doomed {
            Some(name) => {
                headers.remove(&name);
            }
            None => break,
        }
    }
    headers.remove(header::CONNECTION);
}

/// Whether the `Connection` header values list `name` (comma-separated, any case).
fn connection_names(values: &http::header::GetAll<'_, HeaderValue>, name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    values.iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(name))
    })
}

const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's address as an `X-Forwarded-For` value: formatted once per connection,
/// since every request on it carries the same one.
pub fn forwarded_for(client: IpAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(client.to_string()))
        .expect("an IP address is a valid header value")
}

/// Appends `client` (from [`forwarded_for`]) to `X-Forwarded-For`, keeping what earlier
/// proxies put there, and sets `X-Forwarded-Proto` (`"http"` or `"https"`).
pub fn set_forwarded(headers: &mut HeaderMap, client: &HeaderValue, proto: &'static str) {
    let mut earlier = headers.get_all(&XFF).iter().peekable();
    if earlier.peek().is_none() {
        // The common case: the first proxy. A clone of the per-connection value is a
        // reference count, not a copy.
        headers.insert(XFF, client.clone());
    } else {
        let mut chain = Vec::with_capacity(64);
        for v in earlier {
            chain.extend_from_slice(v.as_bytes());
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(client.as_bytes());
        // Bytes of valid header values joined by ", " are a valid header value.
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(chain)) {
            headers.insert(XFF, v);
        }
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(proto),
    );
}

/// What every HTTP listener shares: the pooled backend connections and the counters.
#[derive(Clone)]
pub struct Forwarder {
    pool: Arc<Pool>,
    /// Backend connections of the HTTP/1.1 fast path ([`super::h1`]).
    pub(super) raw: Arc<super::h1::RawPool>,
    stats: Arc<Stats>,
    /// How long a client may take to send a request's head (slowloris protection).
    header_timeout: std::time::Duration,
}

/// Largest request head (request line and headers) accepted; a bigger one is answered 431.
/// Between nginx's 8 KiB and HAProxy's 16 KiB buffers, rounded up for large cookies.
pub const MAX_HEADER_SIZE: usize = 32 * 1024;
/// Default time a client has to send a request's head before the connection is closed.
/// hyper runs this timer from the end of the previous response, so it is also the idle
/// timeout of client keep-alive connections; 30 s is hyper's default and nginx-like.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Forwarder {
    pub fn new(stats: Arc<Stats>) -> Self {
        Self {
            pool: Arc::default(),
            raw: Arc::default(),
            stats,
            header_timeout: HEADER_TIMEOUT,
        }
    }

    /// Sets how long a client may take to send a request's head.
    pub fn with_header_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.header_timeout = timeout;
        self
    }
}

/// Per-listener context of the request handler.
pub(super) struct Listener {
    pub(super) service: String,
    pub(super) routes: RoutesRx,
    pub(super) forwarder: Forwarder,
    pub(super) counters: Arc<ServiceCounters>,
    /// The TLS acceptor and the certificates it was built from, rebuilt when the
    /// service's certificates change (`None` inside: they failed to load).
    tls: Mutex<Option<(Vec<TlsCert>, Option<TlsAcceptor>)>>,
}

impl Listener {
    /// The acceptor for `certs`, loading them if they are new. `Err` when they cannot be
    /// loaded (logged once per change): such a service's connections are closed rather
    /// than served in plaintext on a port meant for TLS.
    fn acceptor(&self, certs: &[TlsCert]) -> Result<TlsAcceptor, ()> {
        let mut cache = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((loaded, acceptor)) = cache.as_ref() {
            if loaded == certs {
                return acceptor.clone().ok_or(());
            }
        }
        let acceptor = match super::tls::acceptor(certs) {
            Ok(a) => Some(a),
            Err(e) => {
                warn!(service = self.service, error = %crate::Chain(&e), "cannot load TLS certificates; closing TLS connections");
                None
            }
        };
        *cache = Some((certs.to_vec(), acceptor.clone()));
        acceptor.ok_or(())
    }
}

/// What a request's handling needs to know about its client connection.
#[derive(Debug, Clone)]
pub(super) struct ConnInfo {
    pub(super) peer: SocketAddr,
    /// `"https"` when the LB terminated TLS.
    pub(super) proto: &'static str,
    /// The address the client connected to, for PROXY protocol headers (read only when
    /// the service sends them).
    local: Option<SocketAddr>,
    /// The peer's address as an `X-Forwarded-For` value ([`forwarded_for`]).
    pub(super) forwarded_for: HeaderValue,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How the first bytes of a plaintext connection read.
#[derive(Debug, PartialEq, Eq)]
enum Preface {
    Http2,
    Http1,
    /// A prefix of the h2 preface so far: wait for more.
    Undecided,
}

/// Tells h2c prior knowledge from HTTP/1.x by the bytes received so far.
fn preface(peeked: &[u8]) -> Preface {
    let n = peeked.len().min(H2_PREFACE.len());
    if peeked[..n] != H2_PREFACE[..n] {
        Preface::Http1
    } else if n == H2_PREFACE.len() {
        Preface::Http2
    } else {
        Preface::Undecided
    }
}

/// Waits until the connection's first bytes tell its protocol; `None` if it closed or
/// sent nothing telling within `limit`.
async fn sniff(stream: &TcpStream, limit: Duration) -> Option<Preface> {
    let mut buf = [0u8; 24];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        match preface(&buf[..n]) {
            Preface::Undecided => {
                // peek returns at once while bytes wait unread: pause instead of spinning
                // until the rest of a preface split over packets arrives.
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            decided => return Some(decided),
        }
    }
}

/// Serves HTTP/1.1 for `service` on `listener` until `shutdown`, then lets each connection
/// finish the request it is on and waits for them.
pub async fn serve(
    listener: TcpListener,
    service: String,
    routes: RoutesRx,
    forwarder: Forwarder,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(Listener {
        counters: forwarder.stats.service(&service),
        service,
        routes,
        forwarder,
        tls: Mutex::new(None),
    });
    let service = ctx.service.clone();
    super::accept_loop(listener, &service, &shutdown, |stream, peer| {
        serve_connection(stream, peer, ctx.clone(), shutdown.clone())
    })
    .await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Listener>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    // What this connection needs from the service, read once (TLS, idle, PROXY header).
    let (certs, idle, proxied) = {
        let routes = ctx.routes.borrow();
        match routes.service(&ctx.service) {
            Some(r) => (
                (!r.tls.is_empty()).then(|| r.tls.clone()),
                r.idle_timeout,
                r.proxy_protocol,
            ),
            None => (None, None, false),
        }
    };
    let header_timeout = idle.unwrap_or(ctx.forwarder.header_timeout);
    let local = if proxied {
        stream.local_addr().ok()
    } else {
        None
    };
    let mut info = ConnInfo {
        peer,
        proto: "http",
        local,
        forwarded_for: forwarded_for(peer.ip()),
    };
    if let Some(certs) = certs {
        let Ok(acceptor) = ctx.acceptor(&certs) else {
            return;
        };
        let handshake = tokio::select! {
            res = tokio::time::timeout(header_timeout, acceptor.accept(stream)) => res,
            // Shutting down: a connection that sent no request yet has nothing to finish.
            _ = shutdown.cancelled() => return,
        };
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        info.proto = "https";
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        if h2 {
            serve_h2(tls, info, ctx, header_timeout, shutdown).await;
        } else {
            serve_h1(tls, info, ctx, header_timeout, shutdown).await;
        }
        return;
    }
    let sniffed = tokio::select! {
        p = sniff(&stream, header_timeout) => p,
        _ = shutdown.cancelled() => return,
    };
    match sniffed {
        Some(Preface::Http2) => serve_h2(stream, info, ctx, header_timeout, shutdown).await,
        // Plain requests take the fast path; the connection goes to hyper at the first
        // request that is not plain (PROXY protocol services never take it).
        Some(_) if !proxied => {
            match super::h1::serve(stream, &info, &ctx, header_timeout, &shutdown).await {
                super::h1::Outcome::Closed => {}
                super::h1::Outcome::Handoff(stream, rest) => {
                    let io = super::h1::Prefixed::new(stream, rest);
                    serve_h1(io, info, ctx, header_timeout, shutdown).await;
                }
            }
        }
        Some(_) => serve_h1(stream, info, ctx, header_timeout, shutdown).await,
        None => debug!(%peer, "client sent no request"),
    }
}

async fn serve_h1<I>(
    io: I,
    info: ConnInfo,
    ctx: Arc<Listener>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let conn = Arc::new((info, ctx));
    let svc = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, std::convert::Infallible>(forward(req, &conn.0, &conn.1).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // Head and body in one buffer, one write(2) per response, rather than a writev of
        // separate buffers (small answers are the common case).
        .writev(false)
        .keep_alive(true)
        .max_header_size(MAX_HEADER_SIZE)
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let res = tokio::select! {
        res = conn.as_mut() => res,
        _ = shutdown.cancelled() => {
            // Finish the request in progress, if any, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        debug!(%peer, error = %e, "client connection ended");
    }
}

async fn serve_h2<I>(
    io: I,
    info: ConnInfo,
    ctx: Arc<Listener>,
    idle: Duration,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let conn = Arc::new((info, ctx));
    let svc = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, std::convert::Infallible>(forward(req, &conn.0, &conn.1).await) }
    });
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_SIZE as u32)
        // A client that stops answering pings is gone: close its connection within the
        // idle timeout rather than keep its streams forever.
        .keep_alive_interval(idle)
        .keep_alive_timeout(Duration::from_secs(20).min(idle))
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let res = tokio::select! {
        res = conn.as_mut() => res,
        _ = shutdown.cancelled() => {
            // GOAWAY: finish the streams in progress, take no new ones.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        debug!(%peer, error = %e, "HTTP/2 client connection ended");
    }
}

/// Proxies one request to a backend of the listener's service.
async fn forward(req: Request<Incoming>, info: &ConnInfo, ctx: &Listener) -> Response<ProxyBody> {
    let start = tokio::time::Instant::now();
    let mut revision = 0;
    let resp = route(req, info, ctx, start, &mut revision).await;
    ctx.counters
        .record_request(revision, resp.status(), start.elapsed());
    resp
}

/// Proxies one request; sets `served` to the revision the answer is counted for: the one
/// that answered, else the one the request was meant for.
async fn route(
    mut req: Request<Incoming>,
    info: &ConnInfo,
    ctx: &Listener,
    start: tokio::time::Instant,
    served: &mut u64,
) -> Response<ProxyBody> {
    let service = ctx.service.as_str();
    if req.method() == http::Method::CONNECT {
        // Not a forward proxy: tunnelling to whatever the client names is not ours to do
        // (HAProxy answers such requests with an error too).
        let mut resp = short(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported\n".into(),
        );
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),
        );
        if req.version() < Version::HTTP_2 {
            // What follows a CONNECT may be tunnel bytes, not a request: close.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return resp;
    }
    let mut current = ctx.routes.borrow().clone();
    let Some(route) = current.service(service) else {
        return no_endpoint(service);
    };
    let revision = route.revision_for(req.headers());
    let request_timeout = route.request_timeout;
    // From the request's start (already read for the latency stats: no second clock read).
    let deadline = start + request_timeout;
    let proxied = info
        .local
        .filter(|_| route.proxy_protocol)
        .map(|local| (info.peer, local));
    *served = revision;
    // An Upgrade (WebSocket, …) is the one hop-by-hop exchange passed through: the
    // backend must see it, and after its 101 the two connections are spliced.
    let upgrade = upgrade_protocol(req.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = &upgrade {
        parts.headers.insert(header::UPGRADE, protocol.clone());
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    set_forwarded(&mut parts.headers, &info.forwarded_for, info.proto);
    let mut client_upgrade = client_upgrade; // taken on the 101
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // A request without a body (most GETs) needs no slot to reclaim it from.
    let slot = (!body.is_end_stream()).then(|| Arc::new(Mutex::new(Some(body))));

    let mut tried = Vec::new();
    let mut retried = false;
    loop {
        let backend = super::pick_attempt(&ctx.routes, &mut current, service, revision, &tried);
        let Some(backend) = backend else {
            let (status, body) = unserved(service, !tried.is_empty());
            return short(status, body);
        };
        let inflight = backend.start();
        let addr = backend.address;
        *served = backend.revision;
        let mut out = Request::new(ReclaimBody::new(slot.clone()));
        *out.method_mut() = parts.method.clone();
        // Origin-form: the connection already names the backend.
        *out.uri_mut() = Uri::from(path.clone());
        // Always HTTP/1.1 upstream so backend connections are pooled even for 1.0 clients.
        *out.version_mut() = Version::HTTP_11;
        *out.headers_mut() = parts.headers.clone();
        if !out.headers().contains_key(header::HOST) {
            // HTTP/2 carries the host as :authority; an HTTP/1.0 client may send none;
            // HTTP/1.1 requires one.
            let host = match parts.uri.authority() {
                Some(a) => HeaderValue::from_str(a.as_str()),
                None => HeaderValue::from_str(&addr.to_string()),
            };
            if let Ok(host) = host {
                out.headers_mut().insert(header::HOST, host);
            }
        }

        let sent =
            tokio::time::timeout_at(deadline, ctx.forwarder.pool.send(addr, proxied, out)).await;
        let Ok(sent) = sent else {
            // Not retried: the backend may be working on it (and a POST must not run twice).
            backend.record(false);
            warn!(service, %addr, task = backend.task_id, timeout = ?request_timeout, "backend sent no response headers in time");
            return short(StatusCode::GATEWAY_TIMEOUT, "gateway timeout\n".into());
        };
        match sent {
            Ok((mut resp, lease)) => {
                backend.record(!resp.status().is_server_error());
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client) = client_upgrade.take() {
                        let backend_upgrade = hyper::upgrade::on(&mut resp);
                        lease.discard();
                        let service = service.to_string();
                        tokio::spawn(async move {
                            splice(client, backend_upgrade, &service, addr).await;
                            drop(inflight);
                        });
                        let (mut rparts, _) = resp.into_parts();
                        let protocol = rparts.headers.get(header::UPGRADE).cloned();
                        strip_hop_by_hop(&mut rparts.headers);
                        if let Some(p) = protocol {
                            rparts.headers.insert(header::UPGRADE, p);
                        }
                        rparts
                            .headers
                            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                        return Response::from_parts(
                            rparts,
                            Either::Right(Full::new(Bytes::new())),
                        );
                    }
                }
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers);
                // Answer in the client's HTTP version, not the backend's: an HTTP/1.0
                // backend must not turn a keep-alive HTTP/1.1 client connection into 1.0.
                rparts.version = parts.version;
                let body = Tracked {
                    inner: rbody,
                    _inflight: inflight,
                    _lease: lease,
                };
                return Response::from_parts(rparts, Either::Left(body));
            }
            Err(e) if e.is_connect() && untouched(&slot) && tried.len() < MAX_RETRIES => {
                backend.record(false);
                ctx.counters.record_connect_failure(backend.revision);
                warn!(service, %addr, task = backend.task_id, error = %crate::Chain(&e), "connect failed; trying another endpoint");
                tried.push(addr);
            }
            // The backend failed before sending a byte of its answer (it crashed, or closed
            // a kept-alive connection as the request went out). Sending a GET or HEAD again
            // cannot do harm, and the client's body, if any, is still ours to resend.
            Err(e) if idempotent(&parts.method) && untouched(&slot) && !retried => {
                backend.record(false);
                warn!(service, %addr, task = backend.task_id, error = %crate::Chain(&e), "request failed before any response; retrying once on another endpoint");
                tried.push(addr);
                retried = true;
            }
            Err(e) => {
                backend.record(false);
                if e.is_connect() {
                    ctx.counters.record_connect_failure(backend.revision);
                }
                warn!(service, %addr, task = backend.task_id, error = %crate::Chain(&e), "backend request failed");
                return short(StatusCode::BAD_GATEWAY, "bad gateway\n".into());
            }
        }
    }
}

/// The protocol a request asks to switch to, if it does (`Connection: upgrade` and an
/// `Upgrade` header).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Copies bytes both ways between an upgraded client connection and its backend until
/// either side closes.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    service: &str,
    addr: SocketAddr,
) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(e) => {
            debug!(service, %addr, error = %e, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        debug!(service, %addr, error = %e, "upgraded connection ended");
    }
}

/// Methods safe to send twice (RFC 9110 §9.2.2) that we retry: the ones without a body in
/// practice. PUT and DELETE are idempotent too but change state; a retry is not worth it.
fn idempotent(method: &http::Method) -> bool {
    matches!(*method, http::Method::GET | http::Method::HEAD)
}

/// Where a request's body waits until a backend connection takes it; `None`: no body.
type BodySlot = Option<Arc<Mutex<Option<Incoming>>>>;

/// Whether the request's body, if any, is still ours to send to another backend.
fn untouched(slot: &BodySlot) -> bool {
    slot.as_ref()
        .is_none_or(|s| s.lock().unwrap_or_else(|e| e.into_inner()).is_some())
}

fn no_endpoint(service: &str) -> Response<ProxyBody> {
    let (status, body) = unserved(service, false);
    short(status, body)
}

/// The LB's own answer when no endpoint is left to pick: 503 if none was healthy, 502 if
/// every one tried refused the connection. Shared with the HTTP/1.1 fast path.
pub(super) fn unserved(service: &str, tried_any: bool) -> (StatusCode, String) {
    if tried_any {
        (
            StatusCode::BAD_GATEWAY,
            format!("no endpoint of service {service:?} accepted a connection\n"),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no healthy endpoint for service {service:?}\n"),
        )
    }
}

fn short(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

// === impl ReclaimBody ===

/// A request body that stays in a shared slot until the backend connection first polls
/// it; see the module docs.
pub struct ReclaimBody {
    slot: BodySlot,
    taken: Option<Incoming>,
}

impl ReclaimBody {
    fn new(slot: BodySlot) -> Self {
        Self { slot, taken: None }
    }

    fn peek<R>(&self, f: impl FnOnce(Option<&Incoming>) -> R) -> R {
        match (&self.taken, &self.slot) {
            (Some(b), _) => f(Some(b)),
            (None, Some(slot)) => f(slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref()),
            (None, None) => f(None),
        }
    }
}

impl Body for ReclaimBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if this.taken.is_none() {
            if let Some(slot) = &this.slot {
                this.taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            }
        }
        match this.taken.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.peek(|b| b.is_none_or(Body::is_end_stream))
    }

    fn size_hint(&self) -> SizeHint {
        self.peek(|b| b.map_or_else(|| SizeHint::with_exact(0), Body::size_hint))
    }
}

// === impl Tracked ===

/// A backend's response body that keeps its request counted in flight until the body is
/// done, so least-outstanding-requests sees slow downloads as load.
pub struct Tracked {
    inner: Incoming,
    _inflight: InFlight,
    /// Returns the backend connection to the pool once the body is done with.
    _lease: Lease,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_headers_and_those_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert(header::HOST, HeaderValue::from_static("web"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["host", "content-length"]);
    }

    #[test]
    fn strips_names_from_every_connection_header_line_and_keeps_the_rest() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.append(header::CONNECTION, HeaderValue::from_static(" X-A ,x-b"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("2"));
        h.insert("x-c", HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-c"]);

        // nginx's usual answer: only Connection goes.
        let mut h = HeaderMap::new();
        h.insert(header::SERVER, HeaderValue::from_static("nginx"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["server", "content-length"]);
    }

    #[test]
    fn forwarded_headers_append_to_the_chain() {
        let mut h = HeaderMap::new();
        set_forwarded(
            &mut h,
            &forwarded_for("198.18.0.1".parse().unwrap()),
            "http",
        );
        assert_eq!(h["x-forwarded-for"], "198.18.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        set_forwarded(&mut h, &forwarded_for("::1".parse().unwrap()), "https");
        assert_eq!(h["x-forwarded-for"], "198.18.0.1, ::1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn h2_prior_knowledge_is_told_from_http1_by_the_first_bytes() {
        assert_eq!(preface(H2_PREFACE), Preface::Http2);
        assert_eq!(
            preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"),
            Preface::Http2
        );
        assert_eq!(preface(b"PRI * HT"), Preface::Undecided);
        assert_eq!(preface(b"P"), Preface::Undecided);
        assert_eq!(preface(b"POST / HTTP/1.1\r\n"), Preface::Http1);
        assert_eq!(preface(b"GET / HTTP/1.1\r\n"), Preface::Http1);
        assert_eq!(preface(b"PRI * HTTP/1.1\r\n"), Preface::Http1);
    }
}
