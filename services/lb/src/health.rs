//! Passive health: outlier ejection from what real requests see.
//!
//! Every response and every connection attempt is an observation of its backend. After
//! [`EJECT_AFTER`] failures in a row (5xx answers, refused or reset connections) the backend
//! is ejected — no new requests — for a backoff that starts at [`BASE_EJECTION`] and doubles
//! with each ejection that follows without a success in between, up to [`MAX_EJECTION`].
//! When the ejection ends the backend gets traffic again; one more failure streak ejects it
//! for longer. [`Outlier`] is the pure state machine (time is an input); the proxy records
//! into it through [`crate::Backend`].

use std::time::Duration;

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
            self.failures = 0;
            self.ejections = 0;
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

    /// Whether the backend is out of rotation at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
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
