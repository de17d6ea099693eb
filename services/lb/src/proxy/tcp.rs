//! The L4 proxy: each accepted connection goes to one backend, bytes copied both ways,
//! after a PROXY protocol v2 header when the service asks for one. A connection that
//! moves no byte either way for the service's idle timeout is closed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::pool::{self, ConnectError};
use super::MAX_RETRIES;
use crate::balance;
use crate::routes::RoutesRx;
use crate::stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("no healthy endpoint for service {0:?}")]
    NoEndpoint(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("send PROXY protocol header to {addr}")]
    ProxyHeader {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("idle for {timeout:?}, closed (backend {addr})")]
    Idle { addr: SocketAddr, timeout: Duration },
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
                Err(e @ (TcpError::Copy { .. } | TcpError::Idle { .. })) => {
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
    let idle = route
        .idle_timeout
        .unwrap_or(crate::routes::TCP_IDLE_TIMEOUT);
    let header = match route.proxy_protocol {
        true => inbound
            .peer_addr()
            .and_then(|peer| Ok(super::proxy_protocol::encode(peer, inbound.local_addr()?)))
            .ok(),
        false => None,
    };
    let mut tried = Vec::new();
    loop {
        let backend = balance::pick(route, revision, &tried)
            .ok_or_else(|| TcpError::NoEndpoint(service.to_string()))?;
        let _inflight = backend.start();
        let addr = backend.address;
        // The PROXY header goes after the backend counts as up: a failure to send it is
        // the connection's, not the backend's health.
        match pool::connect(addr, None).await {
            Ok(mut outbound) => {
                backend.record(true);
                if let Some(header) = &header {
                    outbound
                        .write_all(header)
                        .await
                        .map_err(|source| TcpError::ProxyHeader { addr, source })?;
                }
                return copy_until_idle(&mut inbound, &mut outbound, idle)
                    .await
                    .map_err(|source| match source.kind() {
                        io::ErrorKind::TimedOut => TcpError::Idle {
                            addr,
                            timeout: idle,
                        },
                        _ => TcpError::Copy { addr, source },
                    });
            }
            Err(e) if tried.len() < MAX_RETRIES => {
                backend.record(false);
                warn!(service, %addr, error = %crate::Chain(&e), "connect failed; trying another endpoint");
                tried.push(addr);
            }
            Err(e) => {
                backend.record(false);
                return Err(e.into());
            }
        }
    }
}

/// Copies both ways until either side closes, or fails with `TimedOut` once no byte moved
/// for `idle` (checked every quarter of it, so closed between 1 and 1.25 × `idle`).
async fn copy_until_idle(a: &mut TcpStream, b: &mut TcpStream, idle: Duration) -> io::Result<()> {
    let moved = AtomicU64::new(0);
    let mut a = Activity {
        io: a,
        moved: &moved,
    };
    let mut b = Activity {
        io: b,
        moved: &moved,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let tick = idle / 4;
    let mut seen = 0;
    let mut quiet = Duration::ZERO;
    loop {
        tokio::select! {
            res = &mut copy => return res.map(|_| ()),
            _ = tokio::time::sleep(tick) => {
                let now = moved.load(Ordering::Relaxed);
                if now == seen {
                    quiet += tick;
                    if quiet >= idle {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                } else {
                    seen = now;
                    quiet = Duration::ZERO;
                }
            }
        }
    }
}

/// A stream that counts the reads that returned bytes, for [`copy_until_idle`].
struct Activity<'a> {
    io: &'a mut TcpStream,
    moved: &'a AtomicU64,
}

impl AsyncRead for Activity<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut *this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.moved.fetch_add(1, Ordering::Relaxed);
        }
        res
    }
}

impl AsyncWrite for Activity<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}
