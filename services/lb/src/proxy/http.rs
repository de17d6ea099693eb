//! The L7 listener: HTTP/1.1 and HTTP/2 from clients (h2c by prior knowledge, or over
//! TLS by ALPN, see [`super::tls`]), HTTP/1.1 with keep-alive to backends, one backend
//! chosen per request. A plaintext connection is HTTP/2 when it opens with the h2
//! preface, which is told by peeking at the socket. Plain HTTP/1.1 GET and HEAD requests
//! take the fast path in [`super::h1`]; a connection goes to hyper's HTTP/1.1 server (with
//! the bytes already read) at its first request that is anything else, and hyper's
//! requests are proxied by [`super::forward`]. `Upgrade: h2c` is not honoured (the
//! request is served as HTTP/1.1, as RFC 9113 allows).
//!
//! A client has the header timeout to send a request head, which is also how long an idle
//! keep-alive connection stays open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::codec::forwarded_for;
pub use super::codec::MAX_HEADER_SIZE;
use super::context::{ConnInfo, Listener};
pub use super::context::{Forwarder, HEADER_TIMEOUT};
use super::forward::forward;
pub use super::forward::ProxyBody;
use crate::routes::RoutesRx;

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
    let ctx = Arc::new(Listener::new(service, routes, forwarder));
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
        // Shutting down: the client connected and will not retry a fresh connection, so
        // its first request is still taken if it comes soon (sniff only peeks: nothing lost).
        _ = shutdown.cancelled() => sniff(&stream, header_timeout.min(super::FIRST_REQUEST_GRACE)).await,
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

#[cfg(test)]
mod tests {
    use super::*;

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
