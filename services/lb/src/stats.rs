//! Traffic counters, the Prometheus `/metrics` endpoint, and the per-revision stats the
//! rollout controller reads from etcd.
//!
//! Per service: response classes and TCP connections as plain atomics, looked up once per
//! listener rather than per request. Per service and revision: requests, responses by
//! class, connect failures and an HDR latency histogram ([`RevisionCounters`]), behind one
//! short lock per request. [`publish`] writes them to `stats/{svc}/{lb}` every second as
//! [`pb::LbStats`], cumulative since the LB started. The Prometheus text is formatted by
//! hand: the exposition format is simple and needs no metrics framework.

use rctl_api::tls::Security;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::serialization::{Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use rctl_api::codec::encode;
use rctl_api::metrics::{Kind, Text};
use rctl_api::{keys, pb};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::routes::{Routes, RoutesRx};

/// Response classes counted per service, indexed by `status / 100 - 1`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Latencies are recorded in microseconds up to this (a minute); longer ones count as it.
const MAX_LATENCY_US: u64 = 60_000_000;
/// How often [`publish`] writes to etcd.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

fn class_index(status: StatusCode) -> usize {
    (status.as_u16() / 100).clamp(1, 5) as usize - 1
}

/// What one revision of a service saw.
#[derive(Debug, Clone)]
pub struct RevisionCounters {
    pub requests: u64,
    /// By class, indexed like [`CLASSES`].
    pub responses: [u64; 5],
    pub connect_failures: u64,
    /// Request received → response headers, in microseconds.
    pub latency: Histogram<u64>,
}

impl Default for RevisionCounters {
    fn default() -> Self {
        Self {
            requests: 0,
            responses: [0; 5],
            connect_failures: 0,
            // Two significant digits: 1% precision in about 30 KiB per revision.
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 2)
                .expect("valid histogram bounds"),
        }
    }
}

impl RevisionCounters {
    /// As stored in etcd.
    pub fn to_pb(&self, revision: u64) -> pb::RevisionStats {
        let mut histogram = Vec::new();
        if let Err(e) = V2Serializer::new().serialize(&self.latency, &mut histogram) {
            warn!(error = %e, "cannot serialise a latency histogram");
            histogram.clear();
        }
        let h = &self.latency;
        pb::RevisionStats {
            revision,
            requests: self.requests,
            responses_1xx: self.responses[0],
            responses_2xx: self.responses[1],
            responses_3xx: self.responses[2],
            responses_4xx: self.responses[3],
            responses_5xx: self.responses[4],
            connect_failures: self.connect_failures,
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            histogram,
        }
    }
}

/// Counters of one service.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// HTTP responses sent to clients, by class (including the LB's own 502/503).
    responses: [AtomicU64; 5],
    /// TCP connections accepted.
    connections: AtomicU64,
    /// Per revision, HTTP only.
    revisions: Mutex<BTreeMap<u64, RevisionCounters>>,
}

impl ServiceCounters {
    /// Counts one HTTP request answered with `status` after `latency`, for `revision`.
    pub fn record_request(&self, revision: u64, status: StatusCode, latency: Duration) {
        let class = class_index(status);
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_US);
        let mut revs = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
        let r = revs.entry(revision).or_default();
        r.requests += 1;
        r.responses[class] += 1;
        r.latency.saturating_record(us);
    }

    /// Counts one failed connection attempt to an endpoint of `revision`.
    pub fn record_connect_failure(&self, revision: u64) {
        let mut revs = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
        revs.entry(revision).or_default().connect_failures += 1;
    }

    /// A copy of the per-revision counters.
    pub fn revisions(&self) -> BTreeMap<u64, RevisionCounters> {
        self.revisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn record_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Responses of class `class` ("2xx", ...) sent so far.
    pub fn responses(&self, class: &str) -> u64 {
        CLASSES
            .iter()
            .position(|c| *c == class)
            .map_or(0, |i| self.responses[i].load(Ordering::Relaxed))
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Every service's counters, kept for the life of the process so counters stay monotonic
/// when a listener is closed and reopened.
#[derive(Debug)]
pub struct Stats {
    services: Mutex<BTreeMap<String, Arc<ServiceCounters>>>,
    /// When the counters started, for readers that diff snapshots.
    pub started_unix_ms: i64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            services: Mutex::default(),
            started_unix_ms: rctl_api::clock::now_unix_ms(),
        }
    }
}

impl Stats {
    /// The snapshot of `service` for etcd, as LB `lb`; `None` before its first request.
    pub fn snapshot(&self, service: &str, lb: &str) -> Option<pb::LbStats> {
        let counters = self
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)?
            .clone();
        let revisions = counters.revisions();
        if revisions.is_empty() {
            return None;
        }
        Some(pb::LbStats {
            lb: lb.to_string(),
            service: service.to_string(),
            started_unix_ms: self.started_unix_ms,
            unix_ms: rctl_api::clock::now_unix_ms(),
            revisions: revisions.iter().map(|(rev, c)| c.to_pb(*rev)).collect(),
        })
    }

    fn names(&self) -> Vec<String> {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// The counters of `service`, created on first use.
    pub fn service(&self, service: &str) -> Arc<ServiceCounters> {
        let mut map = self.services.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(service.to_string()).or_default().clone()
    }

    /// The Prometheus text exposition of the counters and of the endpoints in `routes`.
    pub fn render(&self, routes: &Routes) -> String {
        let mut out = Text::new();
        let map = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let family = "rctl_lb_requests_total";
        out.family(
            family,
            Kind::Counter,
            "HTTP responses sent, by service and status class.",
        );
        for (name, c) in map.iter() {
            for (i, class) in CLASSES.iter().enumerate() {
                let n = c.responses[i].load(Ordering::Relaxed);
                out.sample(family, &[("service", name), ("class", class)], n);
            }
        }
        let family = "rctl_lb_connections_total";
        out.family(
            family,
            Kind::Counter,
            "TCP connections accepted, by service.",
        );
        for (name, c) in map.iter() {
            out.sample(family, &[("service", name)], c.connections());
        }
        let per_service: Vec<(String, BTreeMap<u64, RevisionCounters>)> = map
            .iter()
            .map(|(name, c)| (name.clone(), c.revisions()))
            .collect();
        drop(map);
        let family = "rctl_lb_revision_responses_total";
        out.family(
            family,
            Kind::Counter,
            "HTTP responses, by service, revision and class.",
        );
        for (name, revs) in &per_service {
            for (rev, c) in revs {
                for (i, class) in CLASSES.iter().enumerate() {
                    out.sample(
                        family,
                        &[("service", name), ("revision", rev), ("class", class)],
                        c.responses[i],
                    );
                }
            }
        }
        let family = "rctl_lb_revision_connect_failures_total";
        out.family(
            family,
            Kind::Counter,
            "Failed connections to endpoints, by service and revision.",
        );
        for (name, revs) in &per_service {
            for (rev, c) in revs {
                out.sample(
                    family,
                    &[("service", name), ("revision", rev)],
                    c.connect_failures,
                );
            }
        }
        let family = "rctl_lb_request_duration_seconds";
        out.family(
            family,
            Kind::Summary,
            "Request received to response headers, by service and revision, since start.",
        );
        for (name, revs) in &per_service {
            for (rev, c) in revs {
                for q in [0.5, 0.9, 0.99] {
                    let v = c.latency.value_at_quantile(q) as f64 / 1e6;
                    out.sample(
                        family,
                        &[("service", name), ("revision", rev), ("quantile", &q)],
                        v,
                    );
                }
                let sum = c.latency.mean() * c.latency.len() as f64 / 1e6;
                let labels: [(&str, &dyn Display); 2] = [("service", name), ("revision", rev)];
                out.sample("rctl_lb_request_duration_seconds_sum", &labels, sum);
                out.sample(
                    "rctl_lb_request_duration_seconds_count",
                    &labels,
                    c.latency.len(),
                );
            }
        }
        let family = "rctl_lb_endpoints";
        out.family(
            family,
            Kind::Gauge,
            "Registered endpoints, by service and health.",
        );
        for svc in routes.services() {
            let healthy = svc.healthy_count();
            let unhealthy = svc.backends.len() - healthy;
            let name = &svc.name;
            out.sample(family, &[("service", name), ("state", &"healthy")], healthy);
            out.sample(
                family,
                &[("service", name), ("state", &"unhealthy")],
                unhealthy,
            );
        }
        out.finish()
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    stats: Arc<Stats>,
    routes: RoutesRx,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let stats = stats.clone();
        let routes = routes.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let body = if req.method() == Method::GET && req.uri().path() == "/metrics" {
                    let current = routes.borrow().clone();
                    Response::builder()
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(stats.render(&current))))
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"not found\n")))
                };
                async move { Ok::<_, Infallible>(body.unwrap_or_default()) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("connect to etcd at {url}")]
    Connect {
        url: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("write {key}")]
    Put {
        key: String,
        #[source]
        source: etcd_client::Error,
    },
}

/// Writes every service's snapshot to `stats/{svc}/{lb}` every [`PUBLISH_EVERY`] until
/// `shutdown`. Only services with new requests since the last write are written. Failures
/// are logged and retried on the next tick: stats are a view, never worth blocking on.
pub async fn publish(
    url: String,
    security: Security,
    lb: String,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let mut client: Option<etcd_client::Client> = None;
    let mut written: BTreeMap<String, u64> = BTreeMap::new();
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let res = publish_once(&url, &security, &lb, &stats, &mut client, &mut written).await;
        match res {
            Ok(()) if failing => {
                failing = false;
                info!("writing stats to etcd again");
            }
            Ok(()) => {}
            Err(e) => {
                client = None;
                if !failing {
                    warn!(error = %crate::Chain(&e), "cannot write stats to etcd; retrying");
                }
                failing = true;
            }
        }
    }
}

async fn publish_once(
    url: &str,
    security: &Security,
    lb: &str,
    stats: &Stats,
    client: &mut Option<etcd_client::Client>,
    written: &mut BTreeMap<String, u64>,
) -> Result<(), PublishError> {
    for service in stats.names() {
        let Some(snap) = stats.snapshot(&service, lb) else {
            continue;
        };
        let total: u64 = snap
            .revisions
            .iter()
            .map(|r| r.requests + r.connect_failures)
            .sum();
        if written.get(&service) == Some(&total) {
            continue;
        }
        let c = match client {
            Some(c) => c,
            None => {
                let options =
                    etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(3));
                let c = security
                    .etcd_connect(&[url], options)
                    .await
                    .map_err(|source| PublishError::Connect {
                        url: url.to_string(),
                        source,
                    })?;
                client.insert(c)
            }
        };
        let key = keys::stats(&service, lb);
        c.put(key.clone(), encode(&snap), None)
            .await
            .map_err(|source| PublishError::Put { key, source })?;
        written.insert(service, total);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{Backend, Protocol, ServiceRoute};

    #[test]
    fn renders_counters_and_endpoints() {
        let stats = Stats::default();
        let web = stats.service("web");
        let ms = Duration::from_millis;
        web.record_request(1, StatusCode::OK, ms(10));
        web.record_request(2, StatusCode::OK, ms(30));
        web.record_request(2, StatusCode::SERVICE_UNAVAILABLE, ms(1));
        web.record_connect_failure(2);
        let routes = Routes::from_services([ServiceRoute::new("web", Protocol::Http, None)
            .with_backend(Backend::new("t1", "127.0.0.1:1".parse().unwrap(), true))
            .with_backend(Backend::new("t2", "127.0.0.1:2".parse().unwrap(), false))]);
        let text = stats.render(&routes);
        assert!(text.contains("rctl_lb_requests_total{service=\"web\",class=\"2xx\"} 2\n"));
        assert!(text.contains("rctl_lb_requests_total{service=\"web\",class=\"5xx\"} 1\n"));
        assert!(text.contains("rctl_lb_endpoints{service=\"web\",state=\"healthy\"} 1\n"));
        assert!(text.contains("rctl_lb_endpoints{service=\"web\",state=\"unhealthy\"} 1\n"));
        assert!(text.contains(
            "rctl_lb_revision_responses_total{service=\"web\",revision=\"2\",class=\"5xx\"} 1\n"
        ));
        assert!(text.contains(
            "rctl_lb_revision_connect_failures_total{service=\"web\",revision=\"2\"} 1\n"
        ));
        assert!(text.contains(
            "rctl_lb_request_duration_seconds_count{service=\"web\",revision=\"1\"} 1\n"
        ));
    }

    #[test]
    fn snapshots_count_per_revision_with_percentiles_and_the_histogram() {
        use hdrhistogram::serialization::Deserializer;
        let stats = Stats::default();
        assert!(stats.snapshot("web", "lb1").is_none());
        let web = stats.service("web");
        for ms in 1..=100u64 {
            web.record_request(1, StatusCode::OK, Duration::from_millis(ms));
        }
        web.record_request(
            2,
            StatusCode::INTERNAL_SERVER_ERROR,
            Duration::from_secs(120),
        );
        let snap = stats.snapshot("web", "lb1").unwrap();
        assert_eq!((snap.lb.as_str(), snap.service.as_str()), ("lb1", "web"));
        let [r1, r2] = &snap.revisions[..] else {
            panic!("{snap:?}")
        };
        assert_eq!((r1.revision, r1.requests, r1.responses_2xx), (1, 100, 100));
        // 1% precision of the histogram.
        let near = |got: u64, want: u64| got.abs_diff(want) * 100 <= want;
        assert!(near(r1.p50_us, 50_000), "{}", r1.p50_us);
        assert!(near(r1.p90_us, 90_000), "{}", r1.p90_us);
        assert!(near(r1.p99_us, 99_000), "{}", r1.p99_us);
        assert_eq!((r2.requests, r2.responses_5xx), (1, 1));
        assert!(near(r2.max_us, MAX_LATENCY_US), "capped: {}", r2.max_us);
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut r1.histogram.as_slice())
            .unwrap();
        assert_eq!(h.len(), 100);
    }
}
