//! Health as the LB sees it: passive outlier ejection and active checks.
//!
//! *Passive.* Every response and every connection attempt is an observation of its backend.
//! After [`EJECT_AFTER`] failures in a row (5xx answers, refused or reset connections) the
//! backend is ejected — no new requests — for a backoff that starts at [`BASE_EJECTION`] and
//! doubles with each ejection that follows without a success in between, up to
//! [`MAX_EJECTION`]. [`Outlier`] is the pure state machine (time is an input); the proxy
//! records into it through [`crate::Backend`].
//!
//! *Active.* [`run`] probes every backend from the LB itself, HAProxy-style: an HTTP GET of
//! the service's health path (any 2xx or 3xx passes) or, without one, a TCP connect, every
//! `interval`; `fall` failures in a row take the backend out, `rise` passes bring it back
//! ([`Check`] holds the parameters, [`Verdict`] is the pure state). It catches what the
//! agent on the backend's host cannot see: the path from the LB to the backend. A backend
//! starts up — the agent already found it healthy — so a new endpoint gets traffic at once.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rctl_api::pb;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::routes::{Backend, RoutesRx};

/// Consecutive failures that eject a backend.
pub const EJECT_AFTER: u32 = 5;
/// The first ejection's length.
pub const BASE_EJECTION: Duration = Duration::from_secs(1);
/// The longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(30);

/// Outlier state of one backend.
#[derive(Debug, Default, Clone)]
pub struct Outlier {
    /// Failures since the last success.
    failures: u32,
    /// Ejections since the last success: each one doubles the next one's length.
    ejections: u32,
    /// Ejected until then.
    ejected_until: Option<Instant>,
}

impl Outlier {
    /// Records one observation at `now`; returns true when this one ejected the backend.
    pub fn record(&mut self, ok: bool, now: Instant) -> bool {
        if ok {
            self.record_ok();
            return false;
        }
        self.failures += 1;
        if self.failures < EJECT_AFTER || self.is_ejected(now) {
            return false;
        }
        let factor = 1u32 << self.ejections.min(5);
        self.ejected_until = Some(now + (BASE_EJECTION * factor).min(MAX_EJECTION));
        self.ejections += 1;
        self.failures = 0;
        true
    }

    /// Records one success; unlike a failure it needs no clock (the per-request common case).
    pub fn record_ok(&mut self) {
        self.failures = 0;
        self.ejections = 0;
    }

    /// Whether the backend was ever ejected; if not, [`Outlier::is_ejected`] is false at
    /// any time, so callers can skip reading the clock.
    pub fn ever_ejected(&self) -> bool {
        self.ejected_until.is_some()
    }

    /// Whether the backend is out of rotation at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }
}

/// How one service's backends are probed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Check {
    /// HTTP path to GET; `None` means a TCP connect.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Passes in a row that bring a down backend back.
    pub rise: u32,
    /// Failures in a row that take an up backend out.
    pub fall: u32,
}

impl Check {
    /// HAProxy's defaults (`inter 2s rise 2 fall 3`) with a 1 s timeout.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

    /// The check for a service: its health spec's HTTP path and timings where set (a
    /// command check cannot run from the LB, so it becomes a TCP connect), else defaults.
    pub fn from_spec(spec: Option<&pb::HealthSpec>) -> Self {
        let h = spec.cloned().unwrap_or_default();
        let ms = |v: u64, default: Duration| {
            if v == 0 {
                default
            } else {
                Duration::from_millis(v)
            }
        };
        let count = |v: u32, default: u32| if v == 0 { default } else { v };
        Self {
            path: (!h.http.is_empty()).then(|| {
                if h.http.starts_with('/') {
                    h.http.clone()
                } else {
                    format!("/{}", h.http)
                }
            }),
            interval: ms(h.interval_ms, Self::DEFAULT_INTERVAL),
            timeout: ms(h.timeout_ms, Duration::from_secs(1)),
            rise: count(h.healthy_after, 2),
            fall: count(h.unhealthy_after, 3),
        }
    }
}

impl Default for Check {
    fn default() -> Self {
        Self::from_spec(None)
    }
}

/// The active-check state of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub up: bool,
    /// Results in a row that disagree with `up`.
    streak: u32,
}

impl Default for Verdict {
    fn default() -> Self {
        Self {
            up: true,
            streak: 0,
        }
    }
}

impl Verdict {
    /// Records one probe; returns true when the verdict flipped.
    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> bool {
        if ok == self.up {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        if self.streak >= if self.up { fall } else { rise } {
            self.up = ok;
            self.streak = 0;
            return true;
        }
        false
    }
}

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
    let mut verdict = Verdict {
        up: backend.is_up(),
        streak: 0,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(o: &mut Outlier, n: u32, now: Instant) -> bool {
        (0..n)
            .map(|_| o.record(false, now))
            .fold(false, |a, b| a | b)
    }

    #[test]
    fn a_failure_streak_ejects_and_the_backoff_doubles() {
        let t0 = Instant::now();
        let mut o = Outlier::default();
        assert!(!fail(&mut o, EJECT_AFTER - 1, t0));
        assert!(!o.is_ejected(t0));
        assert!(o.record(false, t0));
        assert!(o.is_ejected(t0 + BASE_EJECTION - Duration::from_millis(1)));
        assert!(!o.is_ejected(t0 + BASE_EJECTION));

        // Back in rotation and failing again: out for twice as long.
        let t1 = t0 + BASE_EJECTION;
        assert!(fail(&mut o, EJECT_AFTER, t1));
        assert!(o.is_ejected(t1 + BASE_EJECTION));
        assert!(!o.is_ejected(t1 + BASE_EJECTION * 2));

        // The backoff is capped.
        let mut t = t1 + BASE_EJECTION * 2;
        for _ in 0..10 {
            assert!(fail(&mut o, EJECT_AFTER, t));
            t += MAX_EJECTION;
        }
        assert!(!o.is_ejected(t));
    }

    #[test]
    fn a_success_resets_the_streak_and_the_backoff() {
        let t0 = Instant::now();
        let mut o = Outlier::default();
        fail(&mut o, EJECT_AFTER - 1, t0);
        o.record(true, t0);
        assert!(!fail(&mut o, EJECT_AFTER - 1, t0));

        assert!(o.record(false, t0));
        let t1 = t0 + BASE_EJECTION;
        o.record(true, t1);
        assert!(fail(&mut o, EJECT_AFTER, t1));
        assert!(!o.is_ejected(t1 + BASE_EJECTION), "backoff started over");
    }

    #[test]
    fn active_verdict_needs_fall_failures_to_go_down_and_rise_passes_to_come_back() {
        let mut v = Verdict::default();
        assert!(v.up);
        assert!(!v.observe(false, 2, 3));
        assert!(!v.observe(false, 2, 3));
        assert!(!v.observe(true, 2, 3), "a pass resets the streak");
        assert!(!v.observe(false, 2, 3));
        assert!(!v.observe(false, 2, 3));
        assert!(v.observe(false, 2, 3));
        assert!(!v.up);
        assert!(!v.observe(true, 2, 3));
        assert!(v.observe(true, 2, 3));
        assert!(v.up);
    }

    #[test]
    fn check_comes_from_the_health_spec() {
        assert_eq!(
            Check::from_spec(None),
            Check {
                path: None,
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                rise: 2,
                fall: 3
            }
        );
        let spec = pb::HealthSpec {
            http: "healthz".into(),
            interval_ms: 500,
            unhealthy_after: 2,
            ..Default::default()
        };
        let c = Check::from_spec(Some(&spec));
        assert_eq!(c.path.as_deref(), Some("/healthz"));
        assert_eq!(
            (c.interval, c.rise, c.fall),
            (Duration::from_millis(500), 2, 2)
        );
    }

    #[test]
    fn failures_while_ejected_do_not_extend_it() {
        // Requests already in flight when the backend was ejected still report in.
        let t0 = Instant::now();
        let mut o = Outlier::default();
        fail(&mut o, EJECT_AFTER, t0);
        assert!(!fail(
            &mut o,
            3 * EJECT_AFTER,
            t0 + Duration::from_millis(500)
        ));
        assert!(!o.is_ejected(t0 + BASE_EJECTION));
    }
}
