//! hyper's side of the L7 proxy, one request at a time: whatever the fast path
//! ([`super::h1`]) leaves to hyper's HTTP/1.1 and HTTP/2 servers comes here, is rewritten
//! (hop-by-hop headers dropped, forwarding headers set) and sent with hyper's client
//! ([`super::client`]) to a backend picked per request ([`super::pick_attempt`]).
//! CONNECT is answered 405 (not a forward proxy). `Connection: upgrade` requests
//! (WebSocket and the like) go through with their Upgrade header; after the backend's 101
//! the two connections are spliced byte for byte.
//!
//! Bodies stream in both directions; nothing buffers a whole body. A request is retried on
//! another backend when connecting failed (nothing of it was sent), and a GET or HEAD once
//! more when the backend failed before any byte of its answer (a crash, a kept-alive
//! connection closed under it); a POST never is. Every outcome feeds the backend's passive
//! health ([`crate::health`]). A backend has the service's request timeout to send
//! response headers, else the client gets 504 (not retried).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use super::client::{untouched, Lease, ReclaimBody};
use super::codec::{set_forwarded, strip_hop_by_hop};
use super::context::{ConnInfo, Listener};
use super::MAX_RETRIES;
use crate::routes::InFlight;

/// The body of every response the proxy sends: a backend's, streamed, or its own short one.
pub type ProxyBody = Either<Tracked, Full<Bytes>>;

/// Proxies one request to a backend of the listener's service.
pub(super) async fn forward(
    req: Request<Incoming>,
    info: &ConnInfo,
    ctx: &Listener,
) -> Response<ProxyBody> {
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
            let (status, body) = super::unserved(service, !tried.is_empty());
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
            tokio::time::timeout_at(deadline, ctx.forwarder.client.send(addr, proxied, out)).await;
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

fn no_endpoint(service: &str) -> Response<ProxyBody> {
    let (status, body) = super::unserved(service, false);
    short(status, body)
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
