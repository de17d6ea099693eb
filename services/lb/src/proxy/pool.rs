//! The upstream pool: kept-alive connections to backends, idle between requests, and how a
//! new one is opened (for the TCP proxy too, [`connect`]). One implementation with one set
//! of limits for both HTTP paths: the fast path ([`super::h1`]) pools raw TCP streams,
//! hyper's path ([`super::client`]) the request senders of its HTTP/1.1 client
//! connections; each is a [`Pool`] of its own connection type (generic, so no dynamic
//! dispatch).
//!
//! A service that sends PROXY protocol headers gets connections private to one client
//! connection: the header, written first, names the client, so the pool key holds the
//! client's address pair too ([`Key`]).
//!
//! Vocabulary: an *idle* connection is one in the pool, not lent; a *closed* one can take
//! no request ever again; an *expired* one sat idle longer than [`IDLE_TIMEOUT`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::CONNECT_TIMEOUT;

/// How long a connection may sit idle in the pool before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most idle connections kept per backend; more are closed when they come back.
const MAX_IDLE_PER_BACKEND: usize = 256;

/// How often closed and expired connections are swept from every backend's list (a
/// checkout skips them anyway; the sweep closes those of backends no longer used).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A connection the pool can hold.
pub trait Pooled {
    /// Whether the connection is known to be closed (then it is dropped, not lent).
    fn is_closed(&self) -> bool;
}

impl Pooled for TcpStream {
    /// A raw stream's close is found when it is next used.
    fn is_closed(&self) -> bool {
        false
    }
}

/// Which connections can serve a request: to this backend, and (PROXY protocol) for this
/// client connection, `(client, address it connected to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub backend: SocketAddr,
    pub client: Option<(SocketAddr, SocketAddr)>,
}

impl Key {
    /// Connections to `backend` shared by every client (no PROXY header).
    pub fn shared(backend: SocketAddr) -> Self {
        Self {
            backend,
            client: None,
        }
    }
}

/// Hashes pool keys with a multiply-rotate per word (FxHash's) instead of SipHash: the
/// keys are addresses from our own routing table, not attacker-chosen, and the map may be
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
struct Idle<C> {
    conn: C,
    /// When it came back, for [`IDLE_TIMEOUT`].
    since: Instant,
}

impl<C: Pooled> Idle<C> {
    fn usable(&self, now: Instant) -> bool {
        !self.conn.is_closed() && now.duration_since(self.since) < IDLE_TIMEOUT
    }
}

struct Lists<C> {
    /// Idle connections per key, most recently used last.
    idle: KeyMap<Vec<Idle<C>>>,
    /// When closed and expired connections were last swept from every list.
    last_sweep: Option<Instant>,
}

/// The idle connections of every backend.
pub struct Pool<C> {
    lists: Mutex<Lists<C>>,
}

impl<C> Default for Pool<C> {
    fn default() -> Self {
        Self {
            lists: Mutex::new(Lists {
                idle: KeyMap::default(),
                last_sweep: None,
            }),
        }
    }
}

impl<C: Pooled> Pool<C> {
    /// The most recently used idle connection for `key` that is neither closed nor
    /// expired at `now`; those passed over are dropped (closed).
    pub fn checkout(&self, key: Key, now: Instant) -> Option<C> {
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        let list = lists.idle.get_mut(&key)?;
        while let Some(idle) = list.pop() {
            if idle.usable(now) {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Puts `conn` back for `key` (or closes it, when the backend has enough idle ones).
    pub fn checkin(&self, key: Key, conn: C) {
        let now = Instant::now();
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        let list = lists.idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle { conn, since: now });
        }
        if lists
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= SWEEP_INTERVAL)
        {
            lists.last_sweep = Some(now);
            // Dropping a connection closes it.
            lists.idle.retain(|_, list| {
                list.retain(|i| i.usable(now));
                !list.is_empty()
            });
        }
    }
}

/// Why no connection to a backend could be made (so nothing of a request went out).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {addr}: timed out after {CONNECT_TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
    #[error("send PROXY protocol header to {addr}")]
    ProxyHeader {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Opens a connection to `addr` within [`CONNECT_TIMEOUT`], with Nagle off (requests and
/// answers are written whole), first sending the PROXY v2 header for `client`, if any.
pub async fn connect(
    addr: SocketAddr,
    client: Option<(SocketAddr, SocketAddr)>,
) -> Result<TcpStream, ConnectError> {
    let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ConnectError::Connect { addr, source }),
        Err(_) => return Err(ConnectError::Timeout { addr }),
    };
    let _ = stream.set_nodelay(true);
    if let Some((source, destination)) = client {
        let header = super::proxy_protocol::encode(source, destination);
        stream
            .write_all(&header)
            .await
            .map_err(|source| ConnectError::ProxyHeader { addr, source })?;
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in connection: its number, and whether it is closed.
    struct Fake(u32, bool);

    impl Pooled for Fake {
        fn is_closed(&self) -> bool {
            self.1
        }
    }

    fn key(port: u16) -> Key {
        Key::shared(SocketAddr::from(([198, 18, 0, 1], port)))
    }

    #[tokio::test(start_paused = true)]
    async fn checkout_takes_the_latest_live_connection_of_its_key() {
        let pool = Pool::default();
        pool.checkin(key(1), Fake(1, false));
        pool.checkin(key(1), Fake(2, false));
        pool.checkin(key(1), Fake(3, true));
        pool.checkin(key(2), Fake(4, false));
        let now = Instant::now();
        assert_eq!(pool.checkout(key(1), now).map(|c| c.0), Some(2));
        assert_eq!(pool.checkout(key(1), now).map(|c| c.0), Some(1));
        assert!(pool.checkout(key(1), now).is_none());
        let proxied = Key {
            client: Some((key(9).backend, key(10).backend)),
            ..key(2)
        };
        assert!(pool.checkout(proxied, now).is_none());
        assert_eq!(pool.checkout(key(2), now).map(|c| c.0), Some(4));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_expire_and_each_backend_keeps_a_bounded_number() {
        let pool = Pool::default();
        for n in 0..MAX_IDLE_PER_BACKEND as u32 + 5 {
            pool.checkin(key(1), Fake(n, false));
        }
        let now = Instant::now();
        let mut kept = 0;
        while pool.checkout(key(1), now).is_some() {
            kept += 1;
        }
        assert_eq!(kept, MAX_IDLE_PER_BACKEND);

        pool.checkin(key(1), Fake(1, false));
        tokio::time::advance(IDLE_TIMEOUT).await;
        assert!(pool.checkout(key(1), Instant::now()).is_none());
    }
}
