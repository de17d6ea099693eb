//! Health as the LB sees it, as pure state: passive outlier ejection and the active checks'
//! verdicts (the probes themselves run in [`crate::checks`]).
//!
//! *Passive.* Every response and every connection attempt is an observation of its backend.
//! After [`EJECT_AFTER`] failures in a row (5xx answers, refused or reset connections) the
//! backend is ejected — no new requests — for a backoff that starts at [`BASE_EJECTION`] and
//! doubles with each ejection that follows without a success in between, up to
//! [`MAX_EJECTION`]. [`Outlier`] is the pure state machine (time is an input); the proxy
//! records into it through [`crate::Backend`].
//!
//! *Active.* [`Check`] holds how a service's backends are probed (path, timings, `rise` and
//! `fall`); [`Verdict`] is one backend's up/down state, flipped by `fall` failures or `rise`
//! passes in a row.
use std::time::Duration;

use rctl_api::pb;
use tokio::time::Instant;

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
    /// A backend's verdict before any probe: `up` as it is now.
    pub fn starting(up: bool) -> Self {
        Self { up, streak: 0 }
    }

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
