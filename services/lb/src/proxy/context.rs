//! What the parts of the HTTP data path share: the backend pools and counters of every
//! HTTP listener ([`Forwarder`]), one listener's service and routes ([`Listener`]), and
//! what a request's handling needs to know about its client connection ([`ConnInfo`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::warn;

use super::client::Client;
use super::pool::Pool;
use crate::routes::{RoutesRx, TlsCert};
use crate::stats::{ServiceCounters, Stats};

/// What every HTTP listener shares: the pooled backend connections and the counters.
#[derive(Clone)]
pub struct Forwarder {
    /// hyper's backend connections ([`super::client`]).
    pub(super) client: Arc<Client>,
    /// Backend connections of the HTTP/1.1 fast path ([`super::h1`]).
    pub(super) raw: Arc<Pool<TcpStream>>,
    stats: Arc<Stats>,
    /// How long a client may take to send a request's head (slowloris protection).
    pub(super) header_timeout: std::time::Duration,
}

/// Default time a client has to send a request's head before the connection is closed.
/// hyper runs this timer from the end of the previous response, so it is also the idle
/// timeout of client keep-alive connections; 30 s is hyper's default and nginx-like.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Forwarder {
    pub fn new(stats: Arc<Stats>) -> Self {
        Self {
            client: Arc::default(),
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
    pub(super) fn new(service: String, routes: RoutesRx, forwarder: Forwarder) -> Self {
        Self {
            counters: forwarder.stats.service(&service),
            service,
            routes,
            forwarder,
            tls: Mutex::new(None),
        }
    }

    /// The acceptor for `certs`, loading them if they are new. `Err` when they cannot be
    /// loaded (logged once per change): such a service's connections are closed rather
    /// than served in plaintext on a port meant for TLS.
    pub(super) fn acceptor(&self, certs: &[TlsCert]) -> Result<TlsAcceptor, ()> {
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
    pub(super) local: Option<SocketAddr>,
    /// The peer's address as an `X-Forwarded-For` value ([`super::codec::forwarded_for`]).
    pub(super) forwarded_for: HeaderValue,
}
