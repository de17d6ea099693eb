//! Active health checks, HAProxy-style: [`run`] probes every backend from the LB itself, an
//! HTTP GET of the service's health path (any 2xx or 3xx passes) or, without one, a TCP
//! connect, every `interval`, and takes a backend out of rotation or brings it back as its
//! [`Verdict`] flips. It catches what the agent on the backend's host cannot see: the path
//! from the LB to the backend. A backend starts up — the agent already found it healthy — so
//! a new endpoint gets traffic at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::health::{Check, Verdict};
use crate::routes::{Backend, RoutesRx};

/// Probes every backend of every service until `shutdown`, following the routing table:
/// one probe loop per (service, task, address, check), started and stopped as it changes.
pub async fn run(mut routes: RoutesRx, shutdown: CancellationToken) {
    type Key = (String, String, SocketAddr, Check);
    let mut probes: BTreeMap<Key, CancellationToken> = BTreeMap::new();
    loop {
        let current = routes.borrow_and_update().clone();
        let mut wanted: BTreeMap<Key, Arc<Backend>> = BTreeMap::new();
        for route in current.services() {
            for b in &route.backends {
                let key = (
                    route.name.clone(),
                    b.task_id.clone(),
                    b.address,
                    route.check.clone(),
                );
                wanted.insert(key, b.clone());
            }
        }
        probes.retain(|key, stop| {
            let keep = wanted.contains_key(key);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (key, backend) in wanted {
            if probes.contains_key(&key) {
                continue;
            }
            let stop = shutdown.child_token();
            tokio::spawn(probe_loop(
                key.0.clone(),
                backend,
                key.3.clone(),
                stop.clone(),
            ));
            probes.insert(key, stop);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = routes.changed() => if changed.is_err() { break },
        }
    }
    for stop in probes.values() {
        stop.cancel();
    }
}

async fn probe_loop(service: String, backend: Arc<Backend>, check: Check, stop: CancellationToken) {
    let mut verdict = Verdict::starting(backend.is_up());
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ok = tokio::select! {
            _ = stop.cancelled() => return,
            ok = tokio::time::timeout(check.timeout, probe(backend.address, check.path.as_deref())) => ok.unwrap_or(false),
        };
        if verdict.observe(ok, check.rise, check.fall) {
            backend.set_up(verdict.up);
            if verdict.up {
                info!(service, task = backend.task_id, address = %backend.address, "active check passes again");
            } else {
                warn!(service, task = backend.task_id, address = %backend.address, "active check failing; out of rotation");
            }
        }
    }
}

/// One probe: a TCP connect, or an HTTP/1.1 GET of `path` answered 2xx or 3xx.
async fn probe(addr: SocketAddr, path: Option<&str>) -> bool {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let Some(path) = path else {
        return true;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(TokioIo::new(stream))
    .await
    else {
        return false;
    };
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "rctl-lb-check")
        .body(http_body_util::Empty::new());
    let Ok(req) = req else { return false };
    match sender.send_request(req).await {
        Ok(resp) => {
            let ok = resp.status().is_success() || resp.status().is_redirection();
            // Read the body so the backend sees a complete exchange, not a reset.
            let _ = resp.into_body().collect().await;
            ok
        }
        Err(_) => false,
    }
}
