//! The L4 proxy: each accepted connection goes to one backend, bytes copied both ways.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{CONNECT_TIMEOUT, MAX_RETRIES};
use crate::balance;
use crate::routes::RoutesRx;
use crate::stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("no healthy endpoint for service {0:?}")]
    NoEndpoint(String),
    #[error("connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("copy between client and {addr}")]
    Copy {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Accepts connections for `service` on `listener` until `shutdown`, then waits for the
/// connections already accepted to end by themselves.
pub async fn serve(
    listener: TcpListener,
    service: String,
    routes: RoutesRx,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let counters = stats.service(&service);
    super::accept_loop(listener, &service, &shutdown, |stream, peer| {
        counters.record_connection();
        let routes = routes.clone();
        let service = service.clone();
        async move {
            match proxy(stream, &service, &routes).await {
                Ok(()) => {}
                // The client's or the backend's closing mid-stream is normal life for TCP.
                Err(e @ TcpError::Copy { .. }) => {
                    debug!(service, %peer, error = %crate::Chain(&e), "connection ended")
                }
                Err(e) => warn!(service, %peer, error = %crate::Chain(&e), "connection dropped"),
            }
        }
    })
    .await;
}

async fn proxy(mut inbound: TcpStream, service: &str, routes: &RoutesRx) -> Result<(), TcpError> {
    let current = routes.borrow().clone();
    let route = current
        .service(service)
        .ok_or_else(|| TcpError::NoEndpoint(service.to_string()))?;
    let revision = route.next_revision();
    let mut tried = Vec::new();
    loop {
        let backend = balance::pick(route, revision, &tried)
            .ok_or_else(|| TcpError::NoEndpoint(service.to_string()))?;
        let _inflight = backend.start();
        let addr = backend.address;
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
        match connected {
            Ok(mut outbound) => {
                backend.record(true);
                let _ = outbound.set_nodelay(true);
                return tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                    .await
                    .map(|_| ())
                    .map_err(|source| TcpError::Copy { addr, source });
            }
            Err(source) if tried.len() < MAX_RETRIES => {
                backend.record(false);
                warn!(service, %addr, error = %source, "connect failed; trying another endpoint");
                tried.push(addr);
            }
            Err(source) => {
                backend.record(false);
                return Err(TcpError::Connect { addr, source });
            }
        }
    }
}
