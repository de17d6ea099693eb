//! The data paths: [`http`] proxies HTTP/1.1 and HTTP/2 per request (L7, TLS termination
//! in [`tls`]), [`tcp`] proxies raw TCP per connection (L4); either may open backend
//! connections with a PROXY protocol v2 header ([`proxy_protocol`]). Both pick backends with [`crate::balance`] from the current
//! [`crate::Routes`] and retry another backend when the connection was refused, i.e.
//! before anything of the client's was sent (HTTP also retries a GET or HEAD once more
//! after a failure before any response byte).

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
