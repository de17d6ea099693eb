//! Kept-alive HTTP/1.1 connections to backends, pooled per backend address.
//!
//! Replaces hyper-util's legacy `Client`, which spawned a task per request to wait for the
//! connection to become reusable and hashed a scheme/authority key on every checkout. Here
//! a request borrows a connection as a [`Lease`]; the lease travels with the response body
//! and puts the connection back when the body is dropped (a connection whose answer was not
//! read to the end is closed by hyper and so is not reused).
//!
//! A service that sends PROXY protocol headers gets connections private to one client
//! connection: the header, written first, names the client, so the pool key holds the
//! client's address pair too ([`Key`]).
//!
//! Vocabulary: an *idle* connection is one in the pool, not lent; a *ready* one can take a
//! request now; a *closed* one can take none ever again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::http::ReclaimBody;
use super::CONNECT_TIMEOUT;

/// How long a connection may sit idle in the pool before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most idle connections kept per backend; more are closed when they come back.
const MAX_IDLE_PER_BACKEND: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {addr}: timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { addr: SocketAddr },
    #[error("send PROXY protocol header to {addr}")]
    ProxyHeader {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
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

impl PoolError {
    /// Whether no connection to the backend could be made (so nothing of the request went out).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::ConnectTimeout { .. }
                | Self::ProxyHeader { .. }
                | Self::Handshake { .. }
        )
    }
}

/// Which connections can serve a request: to this backend, and (PROXY protocol) for this
/// client connection, `(client, address it connected to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    backend: SocketAddr,
    client: Option<(SocketAddr, SocketAddr)>,
}

/// Hashes pool keys with a multiply-rotate per word (FxHash's) instead of SipHash: the
/// keys are addresses from our own routing table, not attacker-chosen, and the map is
/// looked up twice per request.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(n.into());
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(n.into());
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(n.into());
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type KeyMap<V> = HashMap<Key, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// A connection waiting in the pool.
struct Idle {
    sender: SendRequest<ReclaimBody>,
    /// When it came back, for [`IDLE_TIMEOUT`].
    since: Instant,
}

/// The idle connections of every backend.
#[derive(Default)]
pub struct Pool {
    /// Idle connections per backend address, most recently used last.
    idle: Mutex<KeyMap<Vec<Idle>>>,
    /// When expired connections were last swept from every backend's list.
    last_sweep: Mutex<Option<Instant>>,
}

impl Pool {
    /// Sends `req` (origin-form URI) to `addr` on an idle connection, or a new one; with
    /// `client`, on a connection opened with a PROXY v2 header for that client.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        client: Option<(SocketAddr, SocketAddr)>,
        mut req: Request<ReclaimBody>,
    ) -> Result<(Response<Incoming>, Lease), PoolError> {
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
                        return Err(PoolError::Request {
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
            Err(source) => Err(PoolError::Request { addr, source }),
        }
    }

    fn lease(self: &Arc<Self>, key: Key, sender: SendRequest<ReclaimBody>) -> Lease {
        Lease {
            pool: self.clone(),
            key,
            sender: Some(sender),
        }
    }

    /// The most recently used live idle connection to `addr`, ready for a request.
    async fn checkout(&self, key: Key) -> Option<SendRequest<ReclaimBody>> {
        loop {
            let mut idle = {
                let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                let list = map.get_mut(&key)?;
                let now = Instant::now();
                loop {
                    let i = list.pop()?;
                    if !i.sender.is_closed() && now.duration_since(i.since) < IDLE_TIMEOUT {
                        break i.sender;
                    }
                }
            };
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

    fn checkin(&self, key: Key, sender: SendRequest<ReclaimBody>) {
        let now = Instant::now();
        let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle { sender, since: now });
        }
        let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            *last = Some(now);
            // Dropping a sender closes its connection (its task ends).
            map.retain(|_, list| {
                list.retain(|i| {
                    !i.sender.is_closed() && now.duration_since(i.since) < IDLE_TIMEOUT
                });
                !list.is_empty()
            });
        }
    }
}

/// Opens a connection to `addr` (first sending the PROXY header for `client`, if any) and
/// runs it on its own task.
async fn connect(
    addr: SocketAddr,
    client: Option<(SocketAddr, SocketAddr)>,
) -> Result<SendRequest<ReclaimBody>, PoolError> {
    let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(PoolError::Connect { addr, source }),
        Err(_) => return Err(PoolError::ConnectTimeout { addr }),
    };
    let _ = stream.set_nodelay(true);
    if let Some((source, destination)) = client {
        let header = super::proxy_protocol::encode(source, destination);
        stream
            .write_all(&header)
            .await
            .map_err(|source| PoolError::ProxyHeader { addr, source })?;
    }
    // One write(2) per request (head and body flattened), as on the client side.
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| PoolError::Handshake { addr, source })?;
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
    pool: Arc<Pool>,
    key: Key,
    sender: Option<SendRequest<ReclaimBody>>,
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
                self.pool.checkin(self.key, sender);
            }
        }
    }
}
