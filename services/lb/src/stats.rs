//! Traffic counters and the Prometheus `/metrics` endpoint.
//!
//! Counters are plain atomics per service, looked up once per listener rather than per
//! request, and formatted by hand: the exposition format is simple and this keeps the data
//! path free of locks and of a metrics framework.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::routes::{Routes, RoutesRx};

/// Response classes counted per service, indexed by `status / 100 - 1`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Counters of one service.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// HTTP responses sent to clients, by class (including the LB's own 502/503).
    responses: [AtomicU64; 5],
    /// TCP connections accepted.
    connections: AtomicU64,
}

impl ServiceCounters {
    pub fn record_response(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
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
#[derive(Debug, Default)]
pub struct Stats {
    services: Mutex<BTreeMap<String, Arc<ServiceCounters>>>,
}

impl Stats {
    /// The counters of `service`, created on first use.
    pub fn service(&self, service: &str) -> Arc<ServiceCounters> {
        let mut map = self.services.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(service.to_string()).or_default().clone()
    }

    /// The Prometheus text exposition of the counters and of the endpoints in `routes`.
    pub fn render(&self, routes: &Routes) -> String {
        let mut out = String::new();
        let map = self.services.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str(
            "# HELP rctl_lb_requests_total HTTP responses sent, by service and status class.\n",
        );
        out.push_str("# TYPE rctl_lb_requests_total counter\n");
        for (name, c) in map.iter() {
            for (i, class) in CLASSES.iter().enumerate() {
                let n = c.responses[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "rctl_lb_requests_total{{service=\"{name}\",class=\"{class}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP rctl_lb_connections_total TCP connections accepted, by service.\n");
        out.push_str("# TYPE rctl_lb_connections_total counter\n");
        for (name, c) in map.iter() {
            let _ = writeln!(
                out,
                "rctl_lb_connections_total{{service=\"{name}\"}} {}",
                c.connections()
            );
        }
        drop(map);
        out.push_str("# HELP rctl_lb_endpoints Registered endpoints, by service and health.\n");
        out.push_str("# TYPE rctl_lb_endpoints gauge\n");
        for svc in routes.services() {
            let healthy = svc.healthy_count();
            let unhealthy = svc.backends.len() - healthy;
            let name = &svc.name;
            let _ = writeln!(
                out,
                "rctl_lb_endpoints{{service=\"{name}\",state=\"healthy\"}} {healthy}"
            );
            let _ = writeln!(
                out,
                "rctl_lb_endpoints{{service=\"{name}\",state=\"unhealthy\"}} {unhealthy}"
            );
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{Backend, Protocol, ServiceRoute};

    #[test]
    fn renders_counters_and_endpoints() {
        let stats = Stats::default();
        let web = stats.service("web");
        web.record_response(StatusCode::OK);
        web.record_response(StatusCode::OK);
        web.record_response(StatusCode::SERVICE_UNAVAILABLE);
        let routes = Routes::from_services([ServiceRoute::new("web", Protocol::Http, None)
            .with_backend(Backend::new("t1", "127.0.0.1:1".parse().unwrap(), true))
            .with_backend(Backend::new("t2", "127.0.0.1:2".parse().unwrap(), false))]);
        let text = stats.render(&routes);
        assert!(text.contains("rctl_lb_requests_total{service=\"web\",class=\"2xx\"} 2\n"));
        assert!(text.contains("rctl_lb_requests_total{service=\"web\",class=\"5xx\"} 1\n"));
        assert!(text.contains("rctl_lb_endpoints{service=\"web\",state=\"healthy\"} 1\n"));
        assert!(text.contains("rctl_lb_endpoints{service=\"web\",state=\"unhealthy\"} 1\n"));
    }
}
