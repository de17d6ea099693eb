//! The canary step machine, pure: from the stored `rollouts/{svc}` record ([`CanaryRollout`]),
//! the service's `[canary]` settings and what the leader observes now (ready canary tasks,
//! the LBs' stats, the clock), the record and traffic split to write next. Judging uses
//! [`crate::rollout`]'s window, rules and step order; the window start snapshot lives in the
//! record, so a new leader judges the very same window after a failover.

use rctl_api::pb::{
    CanaryRollout, CanarySpec, CanaryState, CanaryStepRecord, LbStats, TrafficSplit,
};

use crate::rollout::{self, AnalysisError, Figures, Next, Verdict};

/// Time an LB is given to apply a new split after it is written: stats published later than
/// this count only requests sent at the step's weight.
pub const APPLY_MARGIN_MS: i64 = 200;

/// How long a rollback waits for every LB to confirm weight 0 before its canary tasks stop
/// anyway. An LB publishes stats only when requests arrive, so with no traffic it never
/// confirms; with no traffic there is also nothing to protect by waiting.
pub const ROLLBACK_CONFIRM_MS: i64 = 5_000;

/// What the leader sees of a canary rollout's service this pass.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// Ready (running, healthy) tasks of the canary revision.
    pub canary_ready: usize,
    /// Finishing: every task runs the canary revision and the update is over.
    pub replaced: bool,
    /// Every LB's current `stats/{svc}/{lb}`.
    pub stats: &'a [LbStats],
    /// Why the canary's tasks cannot start, when they keep failing.
    pub failed: Option<&'a str>,
    pub now_ms: i64,
}

/// What to do with the service's traffic split.
#[derive(Debug, Clone, PartialEq)]
pub enum Traffic {
    Keep,
    Set(TrafficSplit),
    /// Everything to the service's revision again.
    Clear,
}

/// One transition: the record and the split, written together in one fenced transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Advance {
    pub rollout: CanaryRollout,
    pub traffic: Traffic,
}

/// The steps of `spec`, or one step of 100 % when none are set.
pub fn steps(spec: &CanarySpec) -> Vec<u32> {
    if spec.steps.is_empty() {
        vec![100]
    } else {
        spec.steps.clone()
    }
}

/// The record of a canary of revision `canary` next to `stable`, started at `now_ms`: the
/// new revision starts at weight 0 and the leader takes it on.
pub fn start(stable: u64, canary: u64, now_ms: i64) -> CanaryRollout {
    let mut r = CanaryRollout {
        stable_revision: stable,
        canary_revision: canary,
        step_started_unix_ms: now_ms,
        started_unix_ms: now_ms,
        ..Default::default()
    };
    r.set_state(CanaryState::Starting);
    r
}

/// Whether the rollout still needs the leader.
pub fn in_progress(r: &CanaryRollout) -> bool {
    !matches!(
        r.state(),
        CanaryState::Done | CanaryState::RolledBack | CanaryState::Unspecified
    )
}

/// The next transition of `r`, or `None` when nothing changes this pass.
pub fn advance(
    r: &CanaryRollout,
    spec: &CanarySpec,
    o: &Observed<'_>,
) -> Result<Option<Advance>, AnalysisError> {
    let steps = steps(spec);
    let mut next = r.clone();
    next.promote = false;
    next.abort = false;
    let roll_back = |mut next: CanaryRollout, reason: String| {
        next.set_state(CanaryState::RollingBack);
        next.reason = reason;
        next.step_started_unix_ms = o.now_ms;
        Advance {
            // The canary leaves the split before any of its tasks stop.
            traffic: Traffic::Set(rollout::split(r.stable_revision, r.canary_revision, 0)),
            rollout: next,
        }
    };
    match r.state() {
        CanaryState::Starting => {
            if r.abort {
                return Ok(Some(roll_back(next, "aborted".into())));
            }
            if let Some(why) = o.failed {
                return Ok(Some(roll_back(next, why.into())));
            }
            if o.canary_ready < spec.replicas.max(1) as usize {
                return Ok(None);
            }
            next.set_state(CanaryState::Stepping);
            next.step = 0;
            Ok(Some(enter_step(next, &steps, 0, o)))
        }
        CanaryState::Stepping if !window_is_clean(r) && !r.abort && !r.promote => {
            // The snapshot taken when the step began may predate the new weight reaching
            // the LBs: start the window again at the first stats every LB published after.
            let fresh = !o.stats.is_empty()
                && o.stats
                    .iter()
                    .all(|s| s.unix_ms > r.step_started_unix_ms + APPLY_MARGIN_MS);
            if !fresh {
                return Ok(None);
            }
            next.window_start = o.stats.to_vec();
            Ok(Some(Advance {
                rollout: next,
                traffic: Traffic::Keep,
            }))
        }
        CanaryState::Stepping => {
            let step = r.step as usize;
            let percent = steps.get(step).copied().unwrap_or(100);
            let figures = figures(r, o)?;
            if r.abort {
                next.steps
                    .push(record(percent, &figures, "aborted", "aborted by hand"));
                return Ok(Some(roll_back(next, "aborted by hand".into())));
            }
            let (verdict, word) = if r.promote {
                (Verdict::Pass("promoted by hand".into()), "promoted")
            } else {
                let v = rollout::judge(&figures, spec);
                let w = match v {
                    Verdict::Fail(_) => "fail",
                    _ => "pass",
                };
                (v, w)
            };
            let rule = match &verdict {
                Verdict::Wait(_) => return Ok(None),
                Verdict::Pass(s) | Verdict::Fail(s) => s.clone(),
            };
            next.steps.push(record(percent, &figures, word, &rule));
            Ok(Some(match rollout::next(&steps, step, &verdict) {
                Next::Stay => return Ok(None),
                Next::Step { index, .. } => enter_step(next, &steps, index, o),
                Next::Finish => {
                    next.set_state(CanaryState::Finishing);
                    next.step_started_unix_ms = o.now_ms;
                    Advance {
                        traffic: Traffic::Set(rollout::split(
                            r.stable_revision,
                            r.canary_revision,
                            100,
                        )),
                        rollout: next,
                    }
                }
                Next::RollBack(why) => roll_back(next, why),
            }))
        }
        CanaryState::Finishing if o.replaced => {
            next.set_state(CanaryState::Done);
            next.step_started_unix_ms = o.now_ms;
            Ok(Some(Advance {
                rollout: next,
                traffic: Traffic::Clear,
            }))
        }
        CanaryState::RollingBack
            if every_lb_published_since(o.stats, r.step_started_unix_ms)
                || o.now_ms - r.step_started_unix_ms >= ROLLBACK_CONFIRM_MS =>
        {
            next.set_state(CanaryState::RolledBack);
            Ok(Some(Advance {
                rollout: next,
                traffic: Traffic::Keep,
            }))
        }
        _ => Ok(None),
    }
}

/// The figures of the current step's window.
pub fn figures(r: &CanaryRollout, o: &Observed<'_>) -> Result<Figures, AnalysisError> {
    let canary = rollout::window(&r.window_start, o.stats, r.canary_revision)?;
    let stable = rollout::window(&r.window_start, o.stats, r.stable_revision)?;
    let elapsed = (o.now_ms - r.step_started_unix_ms).max(0) as u64;
    Ok(Figures::of(&canary, &stable, elapsed))
}

/// Whether the window start snapshot holds only stats published after the step's weight
/// reached the LBs (none at all: no LB saw the service yet, nothing to exclude).
fn window_is_clean(r: &CanaryRollout) -> bool {
    r.window_start
        .iter()
        .all(|s| s.unix_ms > r.step_started_unix_ms + APPLY_MARGIN_MS)
}

/// Weight 0 counts as seen once every LB has published stats after it was written: an LB
/// publishes from the same loop that applies etcd changes, in order.
fn every_lb_published_since(stats: &[LbStats], since_ms: i64) -> bool {
    stats.iter().all(|s| s.unix_ms > since_ms)
}

fn enter_step(mut next: CanaryRollout, steps: &[u32], index: usize, o: &Observed<'_>) -> Advance {
    let percent = steps.get(index).copied().unwrap_or(100);
    next.step = index as u32;
    next.step_started_unix_ms = o.now_ms;
    next.window_start = o.stats.to_vec();
    Advance {
        traffic: Traffic::Set(rollout::split(
            next.stable_revision,
            next.canary_revision,
            percent,
        )),
        rollout: next,
    }
}

fn record(percent: u32, f: &Figures, verdict: &str, rule: &str) -> CanaryStepRecord {
    CanaryStepRecord {
        percent,
        canary_requests: f.canary_requests,
        canary_errors: f.canary_errors,
        stable_requests: f.stable_requests,
        stable_errors: f.stable_errors,
        canary_p99_us: f.canary_p99_us,
        stable_p99_us: f.stable_p99_us,
        elapsed_ms: f.elapsed_ms,
        verdict: verdict.into(),
        rule: rule.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rctl_api::pb::RevisionStats;

    fn spec() -> CanarySpec {
        CanarySpec {
            replicas: 1,
            steps: vec![10, 50, 100],
            step_duration_ms: 1_000,
            min_requests: 100,
            max_error_rate: 0.05,
            max_p99_ratio: 2.0,
        }
    }

    fn stats(unix_ms: i64, stable: (u64, u64), canary: (u64, u64)) -> Vec<LbStats> {
        let rev = |revision, (requests, errors): (u64, u64)| RevisionStats {
            revision,
            requests,
            responses_5xx: errors,
            ..Default::default()
        };
        vec![LbStats {
            lb: "lb1".into(),
            service: "web".into(),
            started_unix_ms: 1,
            unix_ms,
            revisions: vec![rev(1, stable), rev(2, canary)],
        }]
    }

    fn starting() -> CanaryRollout {
        let mut r = CanaryRollout {
            stable_revision: 1,
            canary_revision: 2,
            ..Default::default()
        };
        r.set_state(CanaryState::Starting);
        r
    }

    fn obs(stats: &[LbStats], now_ms: i64, canary_ready: usize) -> Observed<'_> {
        Observed {
            canary_ready,
            replaced: false,
            stats,
            failed: None,
            now_ms,
        }
    }

    fn weights(t: &Traffic) -> Vec<(u64, u32)> {
        match t {
            Traffic::Set(s) => s.weights.iter().map(|w| (w.revision, w.weight)).collect(),
            other => panic!("expected a split, got {other:?}"),
        }
    }

    #[test]
    fn a_good_canary_steps_through_every_weight_then_finishes_and_clears() {
        let s0 = stats(1_000, (100, 0), (0, 0));
        assert_eq!(advance(&starting(), &spec(), &obs(&s0, 1_000, 0)), Ok(None));
        let a = advance(&starting(), &spec(), &obs(&s0, 1_000, 1))
            .unwrap()
            .unwrap();
        assert_eq!(a.rollout.state(), CanaryState::Stepping);
        assert_eq!(weights(&a.traffic), vec![(1, 90), (2, 10)]);
        assert_eq!(a.rollout.window_start, s0);

        // The step's window starts again at the first stats published after the LBs had
        // time to apply the weight: what came before was sent at the old weight.
        let early = stats(1_150, (100, 0), (0, 0));
        assert_eq!(
            advance(&a.rollout, &spec(), &obs(&early, 1_150, 1)),
            Ok(None)
        );
        let clean = stats(1_300, (100, 0), (0, 0));
        let a = advance(&a.rollout, &spec(), &obs(&clean, 1_300, 1))
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.rollout.window_start.clone(), a.traffic),
            (clean, Traffic::Keep)
        );

        // Enough requests but not enough time: wait; then pass to 50 %.
        let s1 = stats(1_500, (1_000, 0), (150, 0));
        assert_eq!(advance(&a.rollout, &spec(), &obs(&s1, 1_500, 1)), Ok(None));
        let s2 = stats(2_100, (1_000, 0), (150, 0));
        let b = advance(&a.rollout, &spec(), &obs(&s2, 2_100, 1))
            .unwrap()
            .unwrap();
        assert_eq!((b.rollout.step, b.rollout.steps.len()), (1, 1));
        assert_eq!(weights(&b.traffic), vec![(1, 50), (2, 50)]);
        let rec = &b.rollout.steps[0];
        assert_eq!(
            (rec.percent, rec.canary_requests, rec.stable_requests),
            (10, 150, 900)
        );
        assert_eq!(rec.verdict, "pass");

        // Promote skips the wait; at the last step it finishes with everything on the canary.
        let mut c = b.rollout.clone();
        c.promote = true;
        let c = advance(&c, &spec(), &obs(&s2, 2_200, 1)).unwrap().unwrap();
        assert_eq!(weights(&c.traffic), vec![(1, 0), (2, 100)]);
        let mut d = c.rollout.clone();
        d.promote = true;
        let d = advance(&d, &spec(), &obs(&s2, 2_300, 1)).unwrap().unwrap();
        assert_eq!(d.rollout.state(), CanaryState::Finishing);
        assert_eq!(d.rollout.steps.last().unwrap().verdict, "promoted");
        assert_eq!(advance(&d.rollout, &spec(), &obs(&s2, 2_400, 1)), Ok(None));
        let done = Observed {
            replaced: true,
            ..obs(&s2, 2_500, 1)
        };
        let e = advance(&d.rollout, &spec(), &done).unwrap().unwrap();
        assert_eq!(e.rollout.state(), CanaryState::Done);
        assert_eq!(e.traffic, Traffic::Clear);
        assert!(!in_progress(&e.rollout));
    }

    #[test]
    fn a_failing_canary_goes_to_weight_zero_first_then_rolled_back_once_lbs_saw_it() {
        let s0 = stats(1_000, (0, 0), (0, 0));
        let a = advance(&starting(), &spec(), &obs(&s0, 1_000, 1))
            .unwrap()
            .unwrap();
        let clean = stats(1_300, (0, 0), (0, 0));
        let a = advance(&a.rollout, &spec(), &obs(&clean, 1_300, 1))
            .unwrap()
            .unwrap();
        let bad = stats(1_200, (900, 0), (100, 50));
        let b = advance(&a.rollout, &spec(), &obs(&bad, 1_200, 1))
            .unwrap()
            .unwrap();
        assert_eq!(b.rollout.state(), CanaryState::RollingBack);
        assert_eq!(weights(&b.traffic), vec![(1, 100), (2, 0)]);
        assert!(
            b.rollout.reason.contains("error rate 50.00%"),
            "{}",
            b.rollout.reason
        );
        assert_eq!(b.rollout.steps[0].verdict, "fail");
        assert_eq!(b.rollout.steps[0].canary_errors, 50);
        // The LB has not published since the weight-0 write: not yet.
        assert_eq!(advance(&b.rollout, &spec(), &obs(&bad, 1_300, 1)), Ok(None));
        let later = stats(1_400, (900, 0), (100, 50));
        let c = advance(&b.rollout, &spec(), &obs(&later, 1_400, 1))
            .unwrap()
            .unwrap();
        assert_eq!(c.rollout.state(), CanaryState::RolledBack);
        assert_eq!(c.traffic, Traffic::Keep);
    }

    #[test]
    fn a_rollback_without_traffic_finishes_once_the_confirmation_wait_is_over() {
        // An abort of a canary no request reaches: the LB's stats predate weight 0 and it
        // publishes nothing new (it writes only when requests come in).
        let s0 = stats(1_000, (0, 0), (0, 0));
        let a = advance(&starting(), &spec(), &obs(&s0, 1_000, 1))
            .unwrap()
            .unwrap();
        let mut r = a.rollout;
        r.abort = true;
        let b = advance(&r, &spec(), &obs(&s0, 2_000, 1)).unwrap().unwrap();
        assert_eq!(b.rollout.state(), CanaryState::RollingBack);
        assert_eq!(weights(&b.traffic), vec![(1, 100), (2, 0)]);
        let waiting = 2_000 + ROLLBACK_CONFIRM_MS - 1;
        assert_eq!(
            advance(&b.rollout, &spec(), &obs(&s0, waiting, 1)),
            Ok(None)
        );
        let c = advance(&b.rollout, &spec(), &obs(&s0, waiting + 1, 1))
            .unwrap()
            .unwrap();
        assert_eq!(c.rollout.state(), CanaryState::RolledBack);
        assert_eq!(c.rollout.reason, "aborted by hand");
        assert_eq!(
            c.traffic,
            Traffic::Keep,
            "weight 0 stays until the split is cleared"
        );
        // No LB ever saw the service: nothing to wait for at all.
        let d = advance(&b.rollout, &spec(), &obs(&[], 2_001, 1))
            .unwrap()
            .unwrap();
        assert_eq!(d.rollout.state(), CanaryState::RolledBack);
    }

    #[test]
    fn abort_rolls_back_from_any_running_state() {
        let s0 = stats(1_000, (0, 0), (0, 0));
        let mut r = starting();
        r.abort = true;
        let a = advance(&r, &spec(), &obs(&s0, 1_000, 0)).unwrap().unwrap();
        assert_eq!(a.rollout.state(), CanaryState::RollingBack);
        assert_eq!(a.rollout.reason, "aborted");
        assert!(!a.rollout.abort, "the request is consumed");
        // Canary tasks that keep failing to start roll it back too, with why.
        let failing = Observed {
            failed: Some("3 tasks of revision 2 failed: exited with code 1"),
            ..obs(&s0, 1_000, 0)
        };
        let b = advance(&starting(), &spec(), &failing).unwrap().unwrap();
        assert_eq!(b.rollout.state(), CanaryState::RollingBack);
        assert!(
            b.rollout.reason.starts_with("3 tasks"),
            "{}",
            b.rollout.reason
        );
    }

    #[test]
    fn no_steps_means_one_step_of_everything() {
        let spec = CanarySpec {
            steps: vec![],
            ..spec()
        };
        assert_eq!(steps(&spec), vec![100]);
    }
}
