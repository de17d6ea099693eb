//! Canary judgement, pure: the figures of one step's window from the load balancers'
//! cumulative per-revision stats (`stats/{svc}/{lb}`, summed over every LB), the rules that
//! pass or fail the canary against stable, and the step machine (next weight, finish, or
//! roll back). The controller stores the window start snapshot with the step so that a new
//! leader judges the same window.

use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use std::collections::HashMap;

use rctl_api::pb::{
    CanarySpec, DesiredState, LbStats, RevisionStats, RevisionWeight, Service, Task, TaskState,
    TaskStatus, TrafficSplit,
};

/// Failed tasks of a new revision after which a rolling update gives up and goes back.
pub const MAX_FAILED_STARTS: usize = 3;
/// Who automatic rollbacks are recorded as.
pub const SCHEDULER: &str = "rctl-scheduler";

/// A rolling update to return from: the revision still running in old tasks, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    pub back_to: u64,
    pub reason: String,
}

/// Whether `svc`'s current revision is still rolling out: an active task of another revision
/// remains, or fewer than `replicas` of its own run healthy. `tasks` are the service's.
pub fn rolling(svc: &Service, tasks: &[&Task], statuses: &HashMap<String, TaskStatus>) -> bool {
    let want = svc.spec.as_ref().map(|s| s.replicas).unwrap_or(0) as usize;
    let active: Vec<&&Task> = tasks
        .iter()
        .filter(|t| t.desired_state() == DesiredState::Running)
        .collect();
    let ready = active
        .iter()
        .filter(|t| t.revision == svc.revision)
        .filter(|t| {
            statuses.get(&t.id).is_some_and(|s| {
                s.state() == TaskState::Running && (t.container_port == 0 || s.health == "healthy")
            })
        })
        .count();
    active.iter().any(|t| t.revision != svc.revision) || ready < want
}

/// Whether `svc`'s current revision never turns healthy while an update to it runs: at
/// least [`MAX_FAILED_STARTS`] of its tasks (active or retired) failed, and old-revision
/// tasks are still active to return to. `tasks` are the service's.
pub fn stalled(
    svc: &Service,
    tasks: &[&Task],
    statuses: &HashMap<String, TaskStatus>,
) -> Option<Stalled> {
    let back_to = tasks
        .iter()
        .filter(|t| t.desired_state() == DesiredState::Running && t.revision < svc.revision)
        .filter(|t| {
            statuses
                .get(&t.id)
                .is_some_and(|s| s.state() == TaskState::Running)
        })
        .map(|t| t.revision)
        .max()?;
    let failed: Vec<&TaskStatus> = tasks
        .iter()
        .filter(|t| t.revision == svc.revision)
        .filter_map(|t| statuses.get(&t.id))
        .filter(|s| s.state() == TaskState::Failed)
        .collect();
    if failed.len() < MAX_FAILED_STARTS {
        return None;
    }
    let last = failed
        .iter()
        .max_by_key(|s| s.finished_unix_ms)
        .map(|s| {
            if s.message.is_empty() {
                format!("exit code {}", s.exit_code)
            } else {
                s.message.clone()
            }
        })
        .unwrap_or_default();
    Some(Stalled {
        back_to,
        reason: format!(
            "revision {} never became healthy: {} tasks failed (last: {last})",
            svc.revision,
            failed.len()
        ),
    })
}

/// Below this stable p99 the latency rule compares against the floor instead: on a quiet
/// loopback a p99 of 300 µs vs 500 µs is noise, not a regression.
pub const P99_FLOOR_US: u64 = 5_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnalysisError {
    #[error("LB {lb}: latency histogram of revision {revision} unreadable: {reason}")]
    Histogram {
        lb: String,
        revision: u64,
        reason: String,
    },
}

/// What one revision saw in a window, summed over the LBs.
#[derive(Debug, Clone, Default)]
pub struct RevisionWindow {
    pub requests: u64,
    /// 5xx answers, the LB's own 502/503 included.
    pub errors: u64,
    pub latency: Option<Histogram<u64>>,
}

impl RevisionWindow {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// 99th percentile latency in µs; 0 without samples.
    pub fn p99_us(&self) -> u64 {
        self.latency
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(0.99))
            .unwrap_or(0)
    }
}

fn histogram(lb: &str, r: &RevisionStats) -> Result<Option<Histogram<u64>>, AnalysisError> {
    if r.histogram.is_empty() {
        return Ok(None);
    }
    Deserializer::new()
        .deserialize(&mut r.histogram.as_slice())
        .map(Some)
        .map_err(|e| AnalysisError::Histogram {
            lb: lb.into(),
            revision: r.revision,
            reason: format!("{e:?}"),
        })
}

/// `revision`'s figures between two sets of snapshots (`start` taken when the step began,
/// `now` the latest). An LB whose counters restarted (another started_unix_ms) or that was
/// not there at the start counts from zero: everything it saw is inside the window.
pub fn window(
    start: &[LbStats],
    now: &[LbStats],
    revision: u64,
) -> Result<RevisionWindow, AnalysisError> {
    let mut out = RevisionWindow::default();
    for after in now {
        let Some(a) = after.revisions.iter().find(|r| r.revision == revision) else {
            continue;
        };
        let b = start
            .iter()
            .find(|s| s.lb == after.lb && s.started_unix_ms == after.started_unix_ms)
            .and_then(|s| s.revisions.iter().find(|r| r.revision == revision));
        let (b_req, b_err) = b.map(|b| (b.requests, b.responses_5xx)).unwrap_or((0, 0));
        out.requests += a.requests.saturating_sub(b_req);
        out.errors += a.responses_5xx.saturating_sub(b_err);
        let Some(mut h) = histogram(&after.lb, a)? else {
            continue;
        };
        if let Some(before) = b.map(|b| histogram(&after.lb, b)).transpose()?.flatten() {
            // Counts only grow, so subtracting the earlier snapshot cannot underflow unless
            // the LB reset; then the window keeps the whole histogram.
            if h.subtract(&before).is_err() {
                tracing::debug!(lb = %after.lb, revision, "histogram did not subtract");
            }
        }
        match out.latency.as_mut() {
            Some(sum) => {
                if sum.add(&h).is_err() {
                    tracing::debug!(lb = %after.lb, revision, "histogram did not add");
                }
            }
            None => out.latency = Some(h),
        }
    }
    Ok(out)
}

/// The figures a step was judged on, as `rollout explain` prints them.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub canary_requests: u64,
    pub canary_errors: u64,
    pub stable_requests: u64,
    pub stable_errors: u64,
    pub canary_p99_us: u64,
    pub stable_p99_us: u64,
    pub elapsed_ms: u64,
}

impl Figures {
    pub fn of(canary: &RevisionWindow, stable: &RevisionWindow, elapsed_ms: u64) -> Self {
        Self {
            canary_requests: canary.requests,
            canary_errors: canary.errors,
            stable_requests: stable.requests,
            stable_errors: stable.errors,
            canary_p99_us: canary.p99_us(),
            stable_p99_us: stable.p99_us(),
            elapsed_ms,
        }
    }

    pub fn canary_error_rate(&self) -> f64 {
        ratio(self.canary_errors, self.canary_requests)
    }

    /// Canary p99 over stable p99 (floored at [`P99_FLOOR_US`]); `None` when stable had no
    /// traffic in the window (the last step sends it none).
    pub fn p99_ratio(&self) -> Option<f64> {
        (self.stable_requests > 0)
            .then(|| self.canary_p99_us as f64 / self.stable_p99_us.max(P99_FLOOR_US) as f64)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// What the rules say about one step.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not enough requests or time yet.
    Wait(String),
    /// Every rule held.
    Pass(String),
    /// A rule broke: roll back.
    Fail(String),
}

/// Judges a step's figures by the `[canary]` rules: first enough canary requests and time,
/// then the error rate, then the p99 ratio.
pub fn judge(f: &Figures, c: &CanarySpec) -> Verdict {
    let rate = f.canary_error_rate();
    if f.canary_requests < c.min_requests.max(1) {
        return Verdict::Wait(format!(
            "{}/{} canary requests",
            f.canary_requests, c.min_requests
        ));
    }
    // With the minimum in, an error rate past the limit fails without waiting out the
    // step: every further request would be another failure.
    if rate > c.max_error_rate {
        return Verdict::Fail(format!(
            "error rate {:.2}% > max_error_rate {:.2}% ({} of {} canary requests failed)",
            rate * 100.0,
            c.max_error_rate * 100.0,
            f.canary_errors,
            f.canary_requests
        ));
    }
    if f.elapsed_ms < c.step_duration_ms {
        return Verdict::Wait(format!(
            "{} of {} ms of the step",
            f.elapsed_ms, c.step_duration_ms
        ));
    }
    if let Some(r) = f.p99_ratio() {
        if r > c.max_p99_ratio {
            return Verdict::Fail(format!(
                "p99 {} µs vs stable {} µs: ratio {r:.2} > max_p99_ratio {:.2}",
                f.canary_p99_us, f.stable_p99_us, c.max_p99_ratio
            ));
        }
    }
    Verdict::Pass(format!(
        "error rate {:.2}% <= {:.2}%; p99 ratio {} <= {:.2}",
        rate * 100.0,
        c.max_error_rate * 100.0,
        f.p99_ratio()
            .map(|r| format!("{r:.2}"))
            .unwrap_or_else(|| "n/a (no stable traffic)".into()),
        c.max_p99_ratio
    ))
}

/// Where a canary goes from step `step` (index into `steps`) after a verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Stay,
    /// Go to step `index`, weight `percent`.
    Step {
        index: usize,
        percent: u32,
    },
    /// The last step passed: replace the stable tasks, then clear the split.
    Finish,
    RollBack(String),
}

pub fn next(steps: &[u32], step: usize, verdict: &Verdict) -> Next {
    match verdict {
        Verdict::Wait(_) => Next::Stay,
        Verdict::Fail(why) => Next::RollBack(why.clone()),
        Verdict::Pass(_) => match steps.get(step + 1) {
            Some(p) => Next::Step {
                index: step + 1,
                percent: *p,
            },
            None => Next::Finish,
        },
    }
}

/// The split that sends `percent` % of requests to `canary` and the rest to `stable`.
/// Rolling back is `percent` 0: the canary leaves the split before its tasks stop.
pub fn split(stable: u64, canary: u64, percent: u32) -> TrafficSplit {
    let percent = percent.min(100);
    TrafficSplit {
        weights: vec![
            RevisionWeight {
                revision: stable,
                weight: 100 - percent,
            },
            RevisionWeight {
                revision: canary,
                weight: percent,
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::{Serializer as _, V2Serializer};

    fn hist(samples_us: &[(u64, u64)]) -> Vec<u8> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for (v, n) in samples_us {
            h.record_n(*v, *n).unwrap();
        }
        let mut out = Vec::new();
        V2Serializer::new().serialize(&h, &mut out).unwrap();
        out
    }

    fn stats(lb: &str, started: i64, revs: Vec<RevisionStats>) -> LbStats {
        LbStats {
            lb: lb.into(),
            service: "web".into(),
            started_unix_ms: started,
            unix_ms: 0,
            revisions: revs,
        }
    }

    fn rev(revision: u64, requests: u64, e5: u64, samples: &[(u64, u64)]) -> RevisionStats {
        RevisionStats {
            revision,
            requests,
            responses_5xx: e5,
            histogram: hist(samples),
            ..Default::default()
        }
    }

    fn task(id: &str, revision: u64, desired: DesiredState) -> Task {
        let mut t = Task {
            id: id.into(),
            service: "web".into(),
            revision,
            ..Default::default()
        };
        t.set_desired_state(desired);
        t
    }

    fn st(id: &str, state: TaskState, finished: i64, message: &str) -> (String, TaskStatus) {
        let mut s = TaskStatus {
            task_id: id.into(),
            finished_unix_ms: finished,
            message: message.into(),
            exit_code: 1,
            ..Default::default()
        };
        s.set_state(state);
        (id.into(), s)
    }

    #[test]
    fn an_update_whose_tasks_keep_failing_goes_back_to_the_running_revision() {
        let svc = Service {
            revision: 3,
            ..Default::default()
        };
        let tasks = [
            task("old1", 2, DesiredState::Running),
            task("old2", 2, DesiredState::Running),
            task("n1", 3, DesiredState::Shutdown),
            task("n2", 3, DesiredState::Shutdown),
            task("n3", 3, DesiredState::Running),
        ];
        let refs: Vec<&Task> = tasks.iter().collect();
        let mut statuses: HashMap<String, TaskStatus> = [
            st("old1", TaskState::Running, 0, ""),
            st("old2", TaskState::Running, 0, ""),
            st("n1", TaskState::Failed, 10, ""),
            st("n2", TaskState::Failed, 20, "exec: no such file"),
        ]
        .into();
        assert_eq!(
            stalled(&svc, &refs, &statuses),
            None,
            "two failures: keep trying"
        );
        statuses.extend([st("n3", TaskState::Failed, 15, "")]);
        assert_eq!(
            stalled(&svc, &refs, &statuses),
            Some(Stalled {
                back_to: 2,
                reason:
                    "revision 3 never became healthy: 3 tasks failed (last: exec: no such file)"
                        .into()
            })
        );
        // Nothing old left running: nothing to return to (restarts go on as usual).
        for id in ["old1", "old2"] {
            statuses.insert(id.into(), st(id, TaskState::Exited, 0, "").1);
        }
        assert_eq!(stalled(&svc, &refs, &statuses), None);
    }

    #[test]
    fn a_revision_rolls_until_all_its_tasks_are_healthy_and_no_other_is_left() {
        let svc = Service {
            spec: Some(rctl_api::pb::ServiceSpec {
                replicas: 2,
                ..Default::default()
            }),
            revision: 2,
            ..Default::default()
        };
        let tasks = [
            task("old", 1, DesiredState::Running),
            task("n1", 2, DesiredState::Running),
            task("n2", 2, DesiredState::Running),
            task("gone", 1, DesiredState::Shutdown),
        ];
        let refs: Vec<&Task> = tasks.iter().collect();
        let mut statuses: HashMap<String, TaskStatus> = [
            st("old", TaskState::Running, 0, ""),
            st("n1", TaskState::Running, 0, ""),
            st("n2", TaskState::Starting, 0, ""),
        ]
        .into();
        assert!(rolling(&svc, &refs, &statuses));
        statuses.insert("n2".into(), st("n2", TaskState::Running, 0, "").1);
        assert!(
            rolling(&svc, &refs, &statuses),
            "an old task is still active"
        );
        assert!(
            !rolling(&svc, &refs[1..], &statuses),
            "retired ones do not count"
        );
    }

    fn canary() -> CanarySpec {
        CanarySpec {
            replicas: 1,
            steps: vec![10, 50, 100],
            step_duration_ms: 1000,
            min_requests: 200,
            max_error_rate: 0.01,
            max_p99_ratio: 1.5,
        }
    }

    #[test]
    fn a_window_subtracts_its_start_and_sums_the_lbs() {
        let start = [
            stats("lb1", 1, vec![rev(2, 100, 10, &[(1_000, 100)])]),
            stats("lb2", 1, vec![rev(2, 50, 0, &[(1_000, 50)])]),
        ];
        let now = [
            // lb1: 200 more requests, 20 of them 5xx, all slow.
            stats(
                "lb1",
                1,
                vec![rev(2, 300, 30, &[(1_000, 100), (200_000, 200)])],
            ),
            // lb2 restarted: everything it saw since counts.
            stats("lb2", 7, vec![rev(2, 100, 0, &[(200_000, 100)])]),
            // lb3 is new.
            stats("lb3", 1, vec![rev(2, 10, 10, &[(200_000, 10)])]),
        ];
        let w = window(&start, &now, 2).unwrap();
        assert_eq!(w.requests, 310);
        assert_eq!(w.errors, 30);
        assert_eq!(w.latency.as_ref().unwrap().len(), 310);
        // The 1 ms samples before the window are gone: the window is all 200 ms.
        assert!(w.p99_us() >= 199_000, "{}", w.p99_us());
        let other = window(&start, &now, 9).unwrap();
        assert_eq!((other.requests, other.p99_us()), (0, 0));
    }

    #[test]
    fn an_unreadable_histogram_is_named() {
        let mut bad = rev(2, 1, 0, &[]);
        bad.histogram = vec![1, 2, 3];
        let e = window(&[], &[stats("lb1", 1, vec![bad])], 2).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("LB lb1: latency histogram of revision 2"));
    }

    fn figures(cr: u64, ce: u64, cp99: u64, sr: u64, sp99: u64, ms: u64) -> Figures {
        Figures {
            canary_requests: cr,
            canary_errors: ce,
            stable_requests: sr,
            stable_errors: 0,
            canary_p99_us: cp99,
            stable_p99_us: sp99,
            elapsed_ms: ms,
        }
    }

    #[test]
    fn a_step_waits_for_its_requests_and_its_time() {
        let c = canary();
        assert!(
            matches!(judge(&figures(199, 0, 1, 2000, 1, 5000), &c), Verdict::Wait(w) if w == "199/200 canary requests")
        );
        assert!(matches!(
            judge(&figures(200, 0, 1, 2000, 1, 999), &c),
            Verdict::Wait(_)
        ));
        assert!(matches!(
            judge(&figures(200, 0, 1, 2000, 1, 1000), &c),
            Verdict::Pass(_)
        ));
    }

    #[test]
    fn the_error_rate_rule_fails_a_bad_canary_at_once() {
        let c = canary();
        // Half the canary's requests failed: no need to wait out the step.
        let v = judge(&figures(200, 100, 1, 2000, 1, 10), &c);
        assert_eq!(
            v,
            Verdict::Fail(
                "error rate 50.00% > max_error_rate 1.00% (100 of 200 canary requests failed)"
                    .into()
            )
        );
        // Exactly at the limit passes.
        assert!(matches!(
            judge(&figures(200, 2, 1, 2000, 1, 1000), &c),
            Verdict::Pass(_)
        ));
    }

    #[test]
    fn the_p99_rule_fails_a_slow_canary_but_ignores_loopback_noise() {
        let c = canary();
        let slow = judge(&figures(200, 0, 201_000, 2000, 900, 1000), &c);
        assert!(
            matches!(&slow, Verdict::Fail(w) if w.contains("max_p99_ratio")),
            "{slow:?}"
        );
        // 0.9 ms vs 0.3 ms: both under the floor.
        assert!(matches!(
            judge(&figures(200, 0, 900, 2000, 300, 1000), &c),
            Verdict::Pass(_)
        ));
        // Above the floor the ratio decides.
        assert!(matches!(
            judge(&figures(200, 0, 16_000, 2000, 10_000, 1000), &c),
            Verdict::Fail(_)
        ));
        // At 100 % stable gets nothing: the latency rule cannot apply.
        assert!(matches!(
            judge(&figures(200, 0, 16_000, 0, 0, 1000), &c),
            Verdict::Pass(w) if w.contains("n/a")
        ));
    }

    #[test]
    fn steps_advance_finish_or_roll_back() {
        let steps = [10, 50, 100];
        let pass = Verdict::Pass(String::new());
        assert_eq!(
            next(&steps, 0, &pass),
            Next::Step {
                index: 1,
                percent: 50
            }
        );
        assert_eq!(next(&steps, 2, &pass), Next::Finish);
        assert_eq!(next(&steps, 1, &Verdict::Wait(String::new())), Next::Stay);
        assert_eq!(
            next(&steps, 1, &Verdict::Fail("x".into())),
            Next::RollBack("x".into())
        );
    }

    #[test]
    fn splits_are_percentages_and_rollback_zeroes_the_canary() {
        let s = split(1, 2, 10);
        assert_eq!(
            s.weights
                .iter()
                .map(|w| (w.revision, w.weight))
                .collect::<Vec<_>>(),
            vec![(1, 90), (2, 10)]
        );
        assert_eq!(split(1, 2, 0).weights[1].weight, 0);
        assert_eq!(split(1, 2, 150).weights[0].weight, 0, "clamped at 100");
    }
}
