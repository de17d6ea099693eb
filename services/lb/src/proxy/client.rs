//! hyper's HTTP/1.1 client to backends, for the requests the fast path leaves to hyper
//! (bodies, upgrades, HTTP/2 and TLS clients): a request goes out on a pooled connection
//! ([`super::pool`]) or a new one, and borrows it as a [`Lease`] that travels with the
//! response body and puts the connection back when the body is dropped (a connection
//! whose answer was not read to the end is closed by hyper and so is not reused).
//!
//! This replaces hyper-util's legacy `Client`, which spawned a task per request to wait
//! for the connection to become reusable and hashed a scheme/authority key on every
//! checkout.
//!
//! The request body is a [`ReclaimBody`]: it stays in a shared slot until the backend
//! connection first polls it, so while it is still there a failed request can go to the
//! next backend with it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tracing::debug;

use super::pool::{self, ConnectError, Key, Pool, Pooled};

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP/1.1 handshake with {addr}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("request to {addr}")]
    Request {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

impl SendError {
    /// Whether no connection to the backend could be made (so nothing of the request went out).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Handshake { .. })
    }
}

/// The sending half of a backend connection; its connection runs on a task of its own.
type Sender = SendRequest<ReclaimBody>;

impl Pooled for Sender {
    fn is_closed(&self) -> bool {
        SendRequest::is_closed(self)
    }
}

/// hyper's pooled connections to every backend.
#[derive(Default)]
pub struct Client {
    pool: Pool<Sender>,
}

impl Client {
    /// Sends `req` (origin-form URI) to `addr` on an idle connection, or a new one; with
    /// `client`, on a connection opened with a PROXY v2 header for that client.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        client: Option<(SocketAddr, SocketAddr)>,
        mut req: Request<ReclaimBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let key = Key {
            backend: addr,
            client,
        };
        if let Some(mut sender) = self.checkout(key).await {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(key, sender))),
                Err(mut e) => match e.take_message() {
                    // The connection closed before the request went out: use a new one,
                    // as the legacy client did.
                    Some(back) => {
                        debug!(%addr, error = %e.error(), "pooled connection unusable; reconnecting");
                        req = back;
                    }
                    None => {
                        return Err(SendError::Request {
                            addr,
                            source: e.into_error(),
                        })
                    }
                },
            }
        }
        let mut sender = connect(addr, client).await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, self.lease(key, sender))),
            Err(source) => Err(SendError::Request { addr, source }),
        }
    }

    fn lease(self: &Arc<Self>, key: Key, sender: Sender) -> Lease {
        Lease {
            client: self.clone(),
            key,
            sender: Some(sender),
        }
    }

    /// The most recently used live idle connection for `key`, ready for a request.
    async fn checkout(&self, key: Key) -> Option<Sender> {
        loop {
            let mut idle = self.pool.checkout(key, Instant::now())?;
            if idle.is_ready() {
                return Some(idle);
            }
            // Back in the pool just before its previous answer was fully read: it becomes
            // ready as soon as its connection task sees the end, or fails if it closed.
            if idle.ready().await.is_ok() {
                return Some(idle);
            }
        }
    }
}

/// Opens a connection to `addr` (with the PROXY header for `client`, if any) and runs it
/// on its own task.
async fn connect(
    addr: SocketAddr,
    client: Option<(SocketAddr, SocketAddr)>,
) -> Result<Sender, SendError> {
    let stream = pool::connect(addr, client).await?;
    // One write(2) per request (head and body flattened), as on the client side.
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| SendError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(%addr, error = %e, "backend connection ended");
        }
    });
    Ok(sender)
}

// === impl Lease ===

/// A pooled connection lent to one request; it goes back to the pool on drop.
pub struct Lease {
    client: Arc<Client>,
    key: Key,
    sender: Option<Sender>,
}

impl Lease {
    /// Drops the connection instead of pooling it (it was upgraded to another protocol).
    pub fn discard(mut self) {
        self.sender = None;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            if !sender.is_closed() {
                self.client.pool.checkin(self.key, sender);
            }
        }
    }
}

// === impl ReclaimBody ===

/// Where a request's body waits until a backend connection takes it; `None`: no body.
pub type BodySlot = Option<Arc<Mutex<Option<Incoming>>>>;

/// Whether the request's body, if any, is still ours to send to another backend.
pub fn untouched(slot: &BodySlot) -> bool {
    slot.as_ref()
        .is_none_or(|s| s.lock().unwrap_or_else(|e| e.into_inner()).is_some())
}

/// A request body that stays in a shared slot until the backend connection first polls
/// it; see the module docs.
pub struct ReclaimBody {
    slot: BodySlot,
    taken: Option<Incoming>,
}

impl ReclaimBody {
    pub fn new(slot: BodySlot) -> Self {
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
