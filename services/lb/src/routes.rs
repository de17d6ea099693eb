//! The routing table: for each service, its protocol, its listen address and its endpoints.
//!
//! A [`Routes`] is an immutable snapshot. Discovery builds a new one from etcd values on every
//! change and publishes it whole through a [`tokio::sync::watch`] channel; the data path reads
//! the current `Arc<Routes>` once per request or connection, so a removed endpoint stops
//! getting new traffic as soon as the new snapshot is published, while requests already
//! running on the old snapshot finish undisturbed.
//!
//! Vocabulary: a *service* is `services/{name}` in etcd; an *endpoint* is
//! `endpoints/{service}/{task}`; a [`Backend`] is an endpoint as the proxy sees it, with its
//! in-flight load counter.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rctl_api::routing::{ProxyProtocol, Sticky, StickyError};
use rctl_api::{codec, keys, pb};
use tokio::sync::watch;

use crate::health::{Check, Outlier};
use crate::split::{hash, Split, SplitError, Weights};

/// Sends new routing tables to every listener and proxy.
pub type RoutesTx = watch::Sender<Arc<Routes>>;
/// Reads the current routing table; cheap to clone.
pub type RoutesRx = watch::Receiver<Arc<Routes>>;

/// A channel carrying routing tables, starting with `initial`.
pub fn channel(initial: Routes) -> (RoutesTx, RoutesRx) {
    watch::channel(Arc::new(initial))
}

#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("service {service:?}: unknown protocol {protocol:?} (want \"http\" or \"tcp\")")]
    UnknownProtocol { service: String, protocol: String },
    #[error("service {service:?}: listen address {listen:?} is not IP:PORT")]
    BadListen {
        service: String,
        listen: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("endpoint {service}/{task}: address {address:?} is not IP:PORT")]
    BadEndpointAddress {
        service: String,
        task: String,
        address: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("service {service:?}: ignoring its traffic split")]
    Split {
        service: String,
        #[source]
        source: SplitError,
    },
    #[error("service {service:?}: unknown proxy_protocol {value:?} (want \"v2\")")]
    UnknownProxyProtocol { service: String, value: String },
    #[error("service {service:?}: ignoring its sticky setting")]
    Sticky {
        service: String,
        #[source]
        source: StickyError,
    },
    #[error(transparent)]
    Decode(#[from] codec::DecodeError),
}

/// Default time a backend has to send response headers (HAProxy's usual `timeout server`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default idle time of a TCP (L4) connection before it is closed (HAProxy's usual
/// `timeout client`/`server` pair is 30–60 s; long enough for chatty protocols' pauses).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One certificate to serve, as files on this host; see [`crate::proxy::tls`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SNI names it answers; none: the default certificate.
    pub server_names: Vec<String>,
}

pub use rctl_api::routing::Protocol;

/// One endpoint of a service as the proxy sees it.
#[derive(Debug)]
pub struct Backend {
    /// The task this endpoint belongs to (the last segment of its etcd key).
    pub task_id: String,
    /// Host the task runs on, for logs.
    pub node: String,
    /// Where to connect.
    pub address: SocketAddr,
    /// The service revision the task runs.
    pub revision: u64,
    /// Only healthy backends get traffic.
    pub healthy: bool,
    /// Requests (HTTP) or connections (TCP) in flight. Shared with the snapshot this one
    /// replaced ([`Routes::inherit_load`]) so a rebuild does not forget the current load.
    load: Arc<AtomicUsize>,
    /// Passive health, shared across rebuilds like `load`.
    outlier: Arc<Mutex<Outlier>>,
    /// The LB's own active check passes; shared across rebuilds like `load`.
    up: Arc<AtomicBool>,
}

impl Backend {
    pub fn new(task_id: impl Into<String>, address: SocketAddr, healthy: bool) -> Self {
        Self {
            task_id: task_id.into(),
            node: String::new(),
            address,
            revision: 0,
            healthy,
            load: Arc::default(),
            outlier: Arc::default(),
            up: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Whether the LB's active check lets this backend take traffic.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    /// Records the outcome of a request or connection attempt (see [`crate::health`]).
    pub fn record(&self, ok: bool) {
        let mut outlier = self.outlier.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            outlier.record_ok();
            return;
        }
        let ejected = outlier.record(false, tokio::time::Instant::now());
        drop(outlier);
        if ejected {
            tracing::warn!(task = self.task_id, address = %self.address, "ejected after consecutive failures");
        }
    }

    /// Whether passive health took this backend out of rotation for now.
    pub fn is_ejected(&self) -> bool {
        let outlier = self.outlier.lock().unwrap_or_else(|e| e.into_inner());
        outlier.ever_ejected() && outlier.is_ejected(tokio::time::Instant::now())
    }

    /// Requests or connections currently in flight to this backend.
    pub fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    /// Counts one request or connection in flight until the returned guard is dropped.
    pub fn start(&self) -> InFlight {
        self.load.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load: self.load.clone(),
        }
    }
}

/// One request or connection in flight to a backend; dropping it ends it.
#[derive(Debug)]
pub struct InFlight {
    load: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One service in the routing table.
#[derive(Debug)]
pub struct ServiceRoute {
    pub name: String,
    pub protocol: Protocol,
    /// Where the load balancer serves this service; `None` means not exposed.
    pub listen: Option<SocketAddr>,
    /// Every registered endpoint, healthy or not, ordered by task id.
    pub backends: Vec<Arc<Backend>>,
    /// The service's current revision: it gets every request when there is no split.
    pub revision: u64,
    /// The traffic split between revisions, if a rollout set one.
    split: Option<Arc<Mutex<Split>>>,
    /// How the LB probes the backends.
    pub check: Check,
    /// Certificates when the LB terminates TLS (HTTP only); empty: plaintext.
    pub tls: Vec<TlsCert>,
    /// Whether each backend connection opens with a PROXY protocol v2 header.
    pub proxy_protocol: bool,
    /// Time a backend has to answer with headers (HTTP) before the client gets 504.
    pub request_timeout: Duration,
    /// Idle time before a client connection is closed; `None`: the protocol's default
    /// (HTTP: the header timeout; TCP: [`TCP_IDLE_TIMEOUT`]).
    pub idle_timeout: Option<Duration>,
    /// Where a sticky canary finds a request's key, if the service has one.
    pub sticky: Option<Sticky>,
}

impl ServiceRoute {
    pub fn new(name: impl Into<String>, protocol: Protocol, listen: Option<SocketAddr>) -> Self {
        Self {
            name: name.into(),
            protocol,
            listen,
            backends: Vec::new(),
            revision: 0,
            split: None,
            check: Check::default(),
            tls: Vec::new(),
            proxy_protocol: false,
            request_timeout: REQUEST_TIMEOUT,
            idle_timeout: None,
            sticky: None,
        }
    }

    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backends.push(Arc::new(backend));
        self
    }

    pub fn with_revision(mut self, revision: u64) -> Self {
        self.revision = revision;
        self
    }

    pub fn with_split(mut self, weights: Weights) -> Self {
        self.split = Some(Arc::new(Mutex::new(Split::new(weights))));
        self
    }

    /// The revision the next request or connection should go to: the split's next pick,
    /// or the current revision when there is no split.
    pub fn next_revision(&self) -> u64 {
        match &self.split {
            Some(split) => split.lock().unwrap_or_else(|e| e.into_inner()).pick(),
            None => self.revision,
        }
    }

    /// The revision a request goes to: by the hash of its sticky key when the service has
    /// a sticky canary, a split, and the request carries the key; else [`Self::next_revision`].
    pub fn revision_for(&self, headers: &http::HeaderMap) -> u64 {
        if let (Some(sticky), Some(split)) = (&self.sticky, &self.split) {
            if let Some(h) = sticky.key(headers).map(hash) {
                return split
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .weights()
                    .by_hash(h);
            }
        }
        self.next_revision()
    }

    /// Whether `revision` has a share of the split (false when there is no split).
    pub fn in_split(&self, revision: u64) -> bool {
        self.split.as_ref().is_some_and(|s| {
            s.lock()
                .unwrap_or_else(|e| e.into_inner())
                .weights()
                .contains(revision)
        })
    }

    /// The split's weights, if there is a split.
    pub fn weights(&self) -> Option<Weights> {
        self.split.as_ref().map(|s| {
            s.lock()
                .unwrap_or_else(|e| e.into_inner())
                .weights()
                .clone()
        })
    }

    pub fn healthy_count(&self) -> usize {
        self.backends.iter().filter(|b| b.healthy).count()
    }
}

/// An immutable routing table; see the module docs.
#[derive(Debug, Default)]
pub struct Routes {
    services: BTreeMap<String, ServiceRoute>,
    /// The etcd revision this table reflects (0 when not built from etcd).
    pub revision: i64,
}

impl Routes {
    /// A table of exactly these services.
    pub fn from_services(services: impl IntoIterator<Item = ServiceRoute>) -> Self {
        Self {
            services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
            revision: 0,
        }
    }

    /// Builds the table from decoded etcd values. Bad values are skipped and returned as
    /// errors so one broken service or endpoint cannot take the others down.
    pub fn from_pb(
        services: &[pb::Service],
        endpoints: &[pb::Endpoint],
    ) -> (Self, Vec<RoutesError>) {
        let mut errors = Vec::new();
        let mut table = BTreeMap::new();
        for svc in services {
            let Some(spec) = svc.spec.as_ref() else {
                continue;
            };
            let port = spec.port.clone().unwrap_or_default();
            let Some(protocol) = Protocol::parse(&port.protocol) else {
                errors.push(RoutesError::UnknownProtocol {
                    service: spec.name.clone(),
                    protocol: port.protocol,
                });
                continue;
            };
            let listen = if port.listen.is_empty() {
                None
            } else {
                match port.listen.parse() {
                    Ok(addr) => Some(addr),
                    Err(source) => {
                        errors.push(RoutesError::BadListen {
                            service: spec.name.clone(),
                            listen: port.listen,
                            source,
                        });
                        None
                    }
                }
            };
            let proxy_protocol = match ProxyProtocol::parse(&port.proxy_protocol) {
                Some(p) => p == ProxyProtocol::V2,
                None => {
                    // Sending plain connections to backends that expect a PROXY header
                    // (or the reverse) would fail every request: leave the service out.
                    errors.push(RoutesError::UnknownProxyProtocol {
                        service: spec.name.clone(),
                        value: port.proxy_protocol.clone(),
                    });
                    continue;
                }
            };
            let mut route =
                ServiceRoute::new(spec.name.clone(), protocol, listen).with_revision(svc.revision);
            route.check = Check::from_spec(spec.health.as_ref());
            route.proxy_protocol = proxy_protocol;
            route.tls = port
                .tls
                .iter()
                .map(|t| TlsCert {
                    cert: t.cert.clone().into(),
                    key: t.key.clone().into(),
                    server_names: t.server_names.clone(),
                })
                .collect();
            if port.request_timeout_ms > 0 {
                route.request_timeout = Duration::from_millis(port.request_timeout_ms);
            }
            route.idle_timeout =
                (port.idle_timeout_ms > 0).then(|| Duration::from_millis(port.idle_timeout_ms));
            if !spec.sticky.is_empty() {
                match Sticky::parse(&spec.sticky) {
                    Ok(s) => route.sticky = Some(s),
                    Err(source) => errors.push(RoutesError::Sticky {
                        service: spec.name.clone(),
                        source,
                    }),
                }
            }
            let pairs = svc
                .traffic
                .iter()
                .flat_map(|t| &t.weights)
                .map(|w| (w.revision, w.weight));
            match Weights::new(pairs) {
                Ok(weights) => route = route.with_split(weights),
                // No split at all is the normal case, not an error.
                Err(SplitError::Empty)
                    if svc.traffic.as_ref().is_none_or(|t| t.weights.is_empty()) => {}
                Err(source) => errors.push(RoutesError::Split {
                    service: spec.name.clone(),
                    source,
                }),
            }
            table.insert(spec.name.clone(), route);
        }
        for ep in endpoints {
            // Endpoints of a service that does not exist (yet, or any more) have nowhere
            // to be served from; dropping them is not an error.
            let Some(route) = table.get_mut(&ep.service) else {
                continue;
            };
            let address = match ep.address.parse() {
                Ok(a) => a,
                Err(source) => {
                    errors.push(RoutesError::BadEndpointAddress {
                        service: ep.service.clone(),
                        task: ep.task_id.clone(),
                        address: ep.address.clone(),
                        source,
                    });
                    continue;
                }
            };
            route.backends.push(Arc::new(Backend {
                task_id: ep.task_id.clone(),
                node: ep.node.clone(),
                address,
                revision: ep.revision,
                healthy: ep.healthy,
                load: Arc::default(),
                outlier: Arc::default(),
                up: Arc::new(AtomicBool::new(true)),
            }));
        }
        for route in table.values_mut() {
            route.backends.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        }
        (
            Self {
                services: table,
                revision: 0,
            },
            errors,
        )
    }

    /// Builds the table from raw etcd key/values under [`keys::ROOT`]; keys other than
    /// services and endpoints are ignored.
    pub fn from_kvs<'a>(
        kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> (Self, Vec<RoutesError>) {
        let services_prefix = keys::services_prefix();
        let endpoints_prefix = keys::endpoints_prefix();
        let mut errors = Vec::new();
        let mut services = Vec::new();
        let mut endpoints = Vec::new();
        for (key, value) in kvs {
            if let Some(rest) = key.strip_prefix(&services_prefix) {
                match codec::decode::<pb::Service>(key.as_bytes(), value) {
                    Ok(mut svc) => {
                        // The key is authoritative for the name; the spec may omit it.
                        let spec = svc.spec.get_or_insert_with(Default::default);
                        if spec.name.is_empty() {
                            spec.name = rest.to_string();
                        }
                        services.push(svc);
                    }
                    Err(e) => errors.push(e.into()),
                }
            } else if let Some(rest) = key.strip_prefix(&endpoints_prefix) {
                match codec::decode::<pb::Endpoint>(key.as_bytes(), value) {
                    Ok(mut ep) => {
                        let (svc, task) = rest.split_once('/').unwrap_or((rest, ""));
                        if ep.service.is_empty() {
                            ep.service = svc.to_string();
                        }
                        if ep.task_id.is_empty() {
                            ep.task_id = task.to_string();
                        }
                        endpoints.push(ep);
                    }
                    Err(e) => errors.push(e.into()),
                }
            }
        }
        let (routes, mut more) = Self::from_pb(&services, &endpoints);
        errors.append(&mut more);
        (routes, errors)
    }

    /// Carries the in-flight counters of backends that are still present (same service,
    /// task and address) over from `prev`, so least-outstanding-requests keeps working
    /// across rebuilds, and an unchanged split's position, so endpoint churn does not
    /// restart its sequence. Must be called before `self` is published.
    pub fn inherit_load(&mut self, prev: &Routes) {
        for (name, route) in &mut self.services {
            let Some(old) = prev.services.get(name) else {
                continue;
            };
            if route.split.is_some() && route.weights() == old.weights() {
                route.split = old.split.clone();
            }
            for backend in &mut route.backends {
                let same = old
                    .backends
                    .iter()
                    .find(|o| o.task_id == backend.task_id && o.address == backend.address);
                if let (Some(o), Some(b)) = (same, Arc::get_mut(backend)) {
                    b.load = o.load.clone();
                    b.outlier = o.outlier.clone();
                    b.up = o.up.clone();
                }
            }
        }
    }

    pub fn service(&self, name: &str) -> Option<&ServiceRoute> {
        self.services.get(name)
    }

    /// Every service, ordered by name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceRoute> {
        self.services.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rctl_api::codec::encode;

    fn service(name: &str, protocol: &str, listen: &str) -> pb::Service {
        pb::Service {
            spec: Some(pb::ServiceSpec {
                name: name.into(),
                port: Some(pb::PortSpec {
                    container: 8080,
                    protocol: protocol.into(),
                    listen: listen.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            revision: 1,
            ..Default::default()
        }
    }

    fn endpoint(svc: &str, task: &str, address: &str, healthy: bool) -> pb::Endpoint {
        pb::Endpoint {
            service: svc.into(),
            task_id: task.into(),
            node: "h1".into(),
            address: address.into(),
            revision: 1,
            healthy,
        }
    }

    #[test]
    fn builds_from_etcd_values() {
        let kvs = [
            (
                keys::service("web"),
                encode(&service("web", "", "127.0.0.1:8080")),
            ),
            (
                keys::service("db"),
                encode(&service("db", "tcp", "127.0.0.1:5432")),
            ),
            (
                keys::service("hidden"),
                encode(&service("hidden", "http", "")),
            ),
            (
                keys::endpoint("web", "t2"),
                encode(&endpoint("web", "t2", "198.18.0.11:30001", true)),
            ),
            (
                keys::endpoint("web", "t1"),
                encode(&endpoint("web", "t1", "198.18.0.12:30001", false)),
            ),
            (
                keys::endpoint("db", "t3"),
                encode(&endpoint("db", "t3", "198.18.0.11:30002", true)),
            ),
            // Not ours: ignored without error.
            (keys::node("h1"), b"whatever".to_vec()),
            // An orphan endpoint: no service to serve it from.
            (
                keys::endpoint("gone", "t9"),
                encode(&endpoint("gone", "t9", "198.18.0.11:1", true)),
            ),
        ];
        let (routes, errors) =
            Routes::from_kvs(kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(routes.services().count(), 3);

        let web = routes.service("web").unwrap();
        assert_eq!(web.protocol, Protocol::Http);
        assert_eq!(web.listen, Some("127.0.0.1:8080".parse().unwrap()));
        let tasks: Vec<_> = web.backends.iter().map(|b| b.task_id.as_str()).collect();
        assert_eq!(tasks, ["t1", "t2"]);
        assert!(!web.backends[0].healthy);
        assert_eq!(web.healthy_count(), 1);

        let db = routes.service("db").unwrap();
        assert_eq!(db.protocol, Protocol::Tcp);
        assert_eq!(db.backends.len(), 1);

        assert_eq!(routes.service("hidden").unwrap().listen, None);
        assert!(routes.service("gone").is_none());
    }

    #[test]
    fn bad_values_are_skipped_and_reported() {
        let kvs = [
            (
                keys::service("web"),
                encode(&service("web", "http", "nonsense")),
            ),
            (
                keys::service("odd"),
                encode(&service("odd", "udp", "127.0.0.1:1")),
            ),
            (keys::service("junk"), vec![0xff, 0xff, 0xff]),
            (
                keys::endpoint("web", "t1"),
                encode(&endpoint("web", "t1", "not-an-address", true)),
            ),
            (
                keys::endpoint("web", "t2"),
                encode(&endpoint("web", "t2", "127.0.0.1:9", true)),
            ),
        ];
        let (routes, errors) =
            Routes::from_kvs(kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        assert_eq!(errors.len(), 4, "{errors:?}");
        let web = routes.service("web").unwrap();
        assert_eq!(web.listen, None);
        assert_eq!(web.backends.len(), 1);
        assert!(routes.service("odd").is_none());
    }

    #[test]
    fn reads_the_traffic_split_and_keeps_its_position_across_rebuilds() {
        let mut svc = service("web", "http", "");
        svc.revision = 2;
        let split = |pairs: &[(u64, u32)]| pb::TrafficSplit {
            weights: pairs
                .iter()
                .map(|&(revision, weight)| pb::RevisionWeight { revision, weight })
                .collect(),
        };
        svc.traffic = Some(split(&[(1, 1), (2, 1)]));
        let (old, errors) = Routes::from_pb(std::slice::from_ref(&svc), &[]);
        assert!(errors.is_empty(), "{errors:?}");
        let web = old.service("web").unwrap();
        assert_eq!(web.revision, 2);
        assert_eq!(web.next_revision(), 1);

        // An endpoint change rebuilds the table; the split continues where it was.
        let (mut new, _) = Routes::from_pb(std::slice::from_ref(&svc), &[]);
        new.inherit_load(&old);
        assert_eq!(new.service("web").unwrap().next_revision(), 2);

        // A broken split is reported and ignored: the current revision gets everything.
        svc.traffic = Some(split(&[(1, 1), (1, 3)]));
        let (routes, errors) = Routes::from_pb(std::slice::from_ref(&svc), &[]);
        assert!(
            matches!(errors[..], [RoutesError::Split { .. }]),
            "{errors:?}"
        );
        assert!((0..5).all(|_| routes.service("web").unwrap().next_revision() == 2));
    }

    #[test]
    fn a_sticky_key_is_read_as_the_service_file_reads_it() {
        // The LB once took a cookie name with `/`, `:` or `"` that `rctl apply` refuses:
        // such a spec now gets no sticky canary (and an error) here too.
        let sticky = |key: &str| {
            let mut svc = service("web", "http", "");
            svc.spec.as_mut().unwrap().sticky = key.into();
            let (routes, errors) = Routes::from_pb(&[svc], &[]);
            let route = routes.service("web").unwrap();
            (route.sticky.clone(), errors)
        };
        let (s, errors) = sticky("cookie:uid");
        assert_eq!(s, Some(Sticky::Cookie("uid".into())));
        assert!(errors.is_empty(), "{errors:?}");
        for bad in ["cookie:a/b", "cookie:a:b", "cookie:\"uid\"", "cookie:üid"] {
            let (s, errors) = sticky(bad);
            assert_eq!(s, None, "{bad}");
            assert!(
                matches!(&errors[..], [RoutesError::Sticky { .. }]),
                "{bad}: {errors:?}"
            );
        }
    }

    #[test]
    fn load_survives_a_rebuild() {
        let services = [service("web", "http", "")];
        let eps = [endpoint("web", "t1", "127.0.0.1:9", true)];
        let (old, _) = Routes::from_pb(&services, &eps);
        let guard = old.service("web").unwrap().backends[0].start();
        let (mut new, _) = Routes::from_pb(&services, &eps);
        new.inherit_load(&old);
        assert_eq!(new.service("web").unwrap().backends[0].load(), 1);
        drop(guard);
        assert_eq!(new.service("web").unwrap().backends[0].load(), 0);
    }
}
