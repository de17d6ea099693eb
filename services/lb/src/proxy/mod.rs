//! The data paths: [`http`] proxies HTTP/1.1 and HTTP/2 per request (L7, TLS termination
//! in [`tls`]), [`tcp`] proxies raw TCP per connection (L4); either may open backend
//! connections with a PROXY protocol v2 header ([`proxy_protocol`]). Both pick backends
//! with [`crate::balance`] from the current [`crate::Routes`] and retry another backend
//! when the connection was refused, i.e. before anything of the client's was sent (HTTP
//! also retries a GET or HEAD once more after a failure before any response byte).
//!
//! The HTTP path's rooms, each using only those listed before it (no module imports one
//! that imports it back):
//! - [`codec`]: the HTTP/1 codec and header rules (hop-by-hop, forwarding), pure.
//! - [`pool`]: the upstream pool of kept-alive backend connections, and connecting.
//! - [`client`]: hyper's HTTP/1.1 client over the pool, with the reclaimable request body.
//! - [`context`]: what a listener and a client connection give every request.
//! - [`h1`]: the HTTP/1.1 fast path, a connection driver over the codec and the pool.
//! - [`forward`]: hyper's per-request path (retries, upgrades) over the client.
//! - [`http`]: the listener: TLS, h2c sniffing, the fast path, then hyper's servers.
//!
//! This module holds what both paths share: the accept loop, the retry limits and the
//! pick of an HTTP request's next backend.

mod client;
mod codec;
mod context;
mod forward;
mod h1;
pub mod http;
mod pool;
pub mod proxy_protocol;
pub mod tcp;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::http::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::balance;
use crate::routes::{Backend, Routes, RoutesRx};

/// At most this many extra backends are tried after a connection failure.
pub const MAX_RETRIES: usize = 2;

/// How long a connection attempt to a backend may take before another is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a connection accepted before a shutdown (a restart's hand-over) may take to send
/// its first request and still get it answered.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections for `service` until `shutdown`, running `handle` on each as its own
/// task; then closes the listener and waits for the accepted connections to end by themselves.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    service: &str,
    shutdown: &CancellationToken,
    mut handle: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let conns = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(service, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        conns.spawn(handle(stream, peer));
    }
    drop(listener);
    conns.close();
    conns.wait().await;
}

/// The backend for one attempt at an HTTP request of `service` meant for `revision`,
/// skipping `tried` (the endpoints that already failed it). A retry first takes the newest
/// table into `current`: the failure may be what changed it.
pub(crate) fn pick_attempt(
    routes: &RoutesRx,
    current: &mut Arc<Routes>,
    service: &str,
    revision: u64,
    tried: &[SocketAddr],
) -> Option<Arc<Backend>> {
    if !tried.is_empty() {
        *current = routes.borrow().clone();
    }
    current
        .service(service)
        .and_then(|route| balance::pick(route, revision, tried))
}

/// The LB's own answer when no endpoint is left to pick: 503 if none was healthy, 502 if
/// every one tried refused the connection.
pub(crate) fn unserved(service: &str, tried_any: bool) -> (StatusCode, String) {
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
