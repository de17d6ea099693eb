//! Rollout progress, pure: the service changes the leader makes before it reconciles tasks.
//! A rolling update whose new revision never turns healthy ([`rollout::stalled`]) goes back
//! to the revision still running — a new revision with that spec, made by
//! [`revisions::next`] as `rctl rollout undo` would — and every running canary takes its
//! next transition ([`canary::advance`]): its record and the service's split, and once
//! rolled back the stable revision itself again. The leader writes each [`ServiceWrite`]
//! guarded by the mod revisions it read, so a failover or a concurrent `apply`, `promote`
//! or `abort` can neither skip nor repeat a step.

use std::collections::{BTreeMap, HashMap};

use rctl_api::pb::{CanaryState, DesiredState, Service, Task};

use crate::drain::needs_drain;
use crate::revisions::{self, Change, Current, Outcome, ServiceWrite};
use crate::snapshot::Snapshot;
use crate::{canary, rollout};

/// The service changes of one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Automatic rollbacks. Written first; the next pass reconciles towards them.
    pub rollbacks: Vec<Rollback>,
    /// Canary transitions, each with its `rollouts/{svc}` record.
    pub canaries: Vec<ServiceWrite>,
    /// Steps that cannot be taken this pass, and why.
    pub stuck: Vec<Stuck>,
}

impl Progress {
    pub fn is_empty(&self) -> bool {
        self.rollbacks.is_empty() && self.canaries.is_empty() && self.stuck.is_empty()
    }
}

/// A rolling update going back.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    pub write: ServiceWrite,
    /// "automatic rollback to revision N: ...", as recorded.
    pub why: String,
}

/// A step the leader cannot take, for its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    pub service: String,
    pub reason: String,
}

/// The rollbacks and canary steps `s` calls for.
pub fn progress(s: &Snapshot<'_>) -> Progress {
    let mut out = Progress::default();
    let mut by_service: HashMap<&str, Vec<&Task>> = HashMap::new();
    for t in s.tasks {
        by_service.entry(t.service.as_str()).or_default().push(t);
    }
    let tasks_of = |name: &str| by_service.get(name).map(Vec::as_slice).unwrap_or(&[]);
    for svc in s.services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        match roll_back(s, svc, tasks_of(&spec.name)) {
            Some(Ok(r)) => out.rollbacks.push(r),
            Some(Err(stuck)) => out.stuck.push(stuck),
            None => {}
        }
    }
    // In name order, so a plan is the same every time.
    let rollouts: BTreeMap<&String, _> = s.rollouts.iter().collect();
    for (name, r) in rollouts {
        if !canary::in_progress(r) {
            continue;
        }
        let Some(svc) = s.service(name) else {
            continue;
        };
        match canary_step(s, svc, r, tasks_of(name)) {
            Some(Ok(w)) => out.canaries.push(w),
            Some(Err(stuck)) => out.stuck.push(stuck),
            None => {}
        }
    }
    out
}

/// The automatic rollback of `svc`, if its update stalled. `tasks` are the service's.
fn roll_back(s: &Snapshot<'_>, svc: &Service, tasks: &[&Task]) -> Option<Result<Rollback, Stuck>> {
    let spec = svc.spec.as_ref()?;
    let stuck = |reason: String| {
        Some(Err(Stuck {
            service: spec.name.clone(),
            reason,
        }))
    };
    // A canary that cannot start is rolled back by its own step machine, stable untouched;
    // once finishing it is an ordinary update.
    if s.rollouts.get(&spec.name).is_some_and(|r| {
        canary::in_progress(r)
            && r.state() != CanaryState::Finishing
            && r.canary_revision == svc.revision
    }) {
        return None;
    }
    let stalled = rollout::stalled(svc, tasks, s.statuses)?;
    let history = s.history(&spec.name);
    let Ok((restored, _)) = revisions::rollback(svc, history, stalled.back_to) else {
        return stuck(format!(
            "revision {} to roll back to is not kept",
            stalled.back_to
        ));
    };
    let why = format!(
        "automatic rollback to revision {}: {}",
        stalled.back_to, stalled.reason
    );
    let change = Change {
        who: rollout::SCHEDULER,
        message: &why,
        automatic: true,
        ..Default::default()
    };
    let current = Current {
        service: Some(svc),
        history,
        rolling: true,
    };
    match revisions::next(current, restored, &change, s.now_ms) {
        Ok((Outcome::Unchanged, _)) => None,
        Ok((_, write)) => Some(Ok(Rollback { write, why })),
        Err(e) => stuck(e.to_string()),
    }
}

/// The next transition of the canary `r` of `svc`, as the service write that carries it.
fn canary_step(
    s: &Snapshot<'_>,
    svc: &Service,
    r: &rctl_api::pb::CanaryRollout,
    tasks: &[&Task],
) -> Option<Result<ServiceWrite, Stuck>> {
    let spec = svc.spec.as_ref()?;
    let name = &spec.name;
    let stuck = |reason: String| {
        Some(Err(Stuck {
            service: name.clone(),
            reason,
        }))
    };
    let step = if svc.revision != r.canary_revision && svc.revision != r.stable_revision {
        // Another apply took over: the canary is over, its tasks go with the update.
        let mut next = r.clone();
        next.set_state(CanaryState::RolledBack);
        next.reason = format!("superseded by revision {}", svc.revision);
        canary::Advance {
            rollout: next,
            traffic: canary::Traffic::Keep,
        }
    } else {
        let ready = tasks
            .iter()
            .filter(|t| {
                t.revision == r.canary_revision
                    && t.desired_state() == DesiredState::Running
                    && needs_drain(t, s.statuses.get(&t.id))
            })
            .count();
        let stats = s.stats.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let stalled = rollout::stalled(svc, tasks, s.statuses);
        let observed = canary::Observed {
            canary_ready: ready,
            replaced: !rollout::rolling(svc, tasks, s.statuses),
            stats,
            failed: stalled.as_ref().map(|s| s.reason.as_str()),
            now_ms: s.now_ms,
        };
        match canary::advance(r, &spec.canary.clone().unwrap_or_default(), &observed) {
            Ok(Some(step)) => step,
            Ok(None) => return None,
            Err(e) => return stuck(format!("canary window unreadable: {e}")),
        }
    };
    let mut next = svc.clone();
    match &step.traffic {
        canary::Traffic::Keep => {}
        canary::Traffic::Set(t) => next.traffic = Some(t.clone()),
        canary::Traffic::Clear => next.traffic = None,
    }
    if step.rollout.state() == CanaryState::RolledBack && svc.revision == r.canary_revision {
        // Back to the stable revision itself: its tasks stay, the canary's retire (drained
        // first), and all traffic goes to stable again.
        let Some(stable) = s
            .history(name)
            .iter()
            .find(|h| h.revision == r.stable_revision)
        else {
            return stuck(format!(
                "stable revision {} not kept; cannot roll back",
                r.stable_revision
            ));
        };
        let mut restored = stable.spec.clone().unwrap_or_default();
        // Scaling and rollout settings made during the canary stay.
        restored.replicas = spec.replicas;
        restored.update = spec.update;
        restored.canary = spec.canary.clone();
        next.spec = Some(restored);
        next.revision = r.stable_revision;
        next.traffic = None;
        next.cause = stable.cause.clone();
        next.updated_unix_ms = s.now_ms;
    }
    Some(Ok(ServiceWrite {
        service: next,
        record: None,
        prune: Vec::new(),
        rollout: Some(step.rollout),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    use rctl_api::pb::{
        CanaryRollout, CanarySpec, LbStats, Revision, ServiceSpec, TaskState, TaskStatus,
    };

    /// Owned state to take snapshots of.
    #[derive(Default)]
    struct World {
        services: Vec<Service>,
        tasks: Vec<Task>,
        statuses: HashMap<String, TaskStatus>,
        rollouts: HashMap<String, CanaryRollout>,
        revisions: HashMap<String, Vec<Revision>>,
        stats: HashMap<String, Vec<LbStats>>,
        now_ms: i64,
    }

    impl World {
        fn progress(&self) -> Progress {
            let (empty_set, empty_map) = (HashSet::new(), HashMap::new());
            progress(&Snapshot {
                services: &self.services,
                tasks: &self.tasks,
                containers: &[],
                statuses: &self.statuses,
                nodes: &[],
                draining: &empty_set,
                lbs: &empty_set,
                drained: &empty_map,
                endpoints: &empty_set,
                rollouts: &self.rollouts,
                revisions: &self.revisions,
                stats: &self.stats,
                now_ms: self.now_ms,
            })
        }

        /// A task of `web` at `revision`, in `state`.
        fn task(&mut self, id: &str, revision: u64, state: TaskState, desired: DesiredState) {
            let mut t = Task {
                id: id.into(),
                service: "web".into(),
                node: "h1".into(),
                revision,
                container_port: 80,
                ..Default::default()
            };
            t.set_desired_state(desired);
            let mut st = TaskStatus {
                task_id: id.into(),
                health: "healthy".into(),
                message: if state == TaskState::Failed {
                    "exec failed".into()
                } else {
                    String::new()
                },
                ..Default::default()
            };
            st.set_state(state);
            self.statuses.insert(id.into(), st);
            self.tasks.push(t);
        }
    }

    fn spec(image: &str, replicas: u32) -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            image: image.into(),
            replicas,
            canary: Some(CanarySpec {
                replicas: 1,
                steps: vec![10, 100],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn revision(n: u64, image: &str) -> Revision {
        revisions::record(&spec(image, 2), n, "ann", &format!("to {image}"), n as i64)
    }

    fn rollout(stable: u64, canary: u64, state: CanaryState) -> CanaryRollout {
        let mut r = canary::start(stable, canary, 1_000);
        r.set_state(state);
        r
    }

    /// `web` at revision 2 (image v2, 2 replicas) with revisions 1 and 2 kept, two tasks of
    /// revision 1 running and `failed` tasks of revision 2 failed.
    fn updating(failed: usize) -> World {
        let mut w = World {
            services: vec![Service {
                spec: Some(spec("v2", 2)),
                revision: 2,
                ..Default::default()
            }],
            revisions: [("web".into(), vec![revision(1, "v1"), revision(2, "v2")])].into(),
            now_ms: 10_000,
            ..Default::default()
        };
        w.task("o1", 1, TaskState::Running, DesiredState::Running);
        w.task("o2", 1, TaskState::Running, DesiredState::Running);
        for i in 0..failed {
            w.task(
                &format!("n{i}"),
                2,
                TaskState::Failed,
                DesiredState::Shutdown,
            );
        }
        w
    }

    fn states(p: &Progress) -> Vec<(CanaryState, String)> {
        p.canaries
            .iter()
            .map(|w| {
                let r = w.rollout.as_ref().unwrap();
                (r.state(), r.reason.clone())
            })
            .collect()
    }

    #[test]
    fn a_stalled_update_goes_back_to_the_revision_still_running() {
        assert_eq!(
            updating(2).progress(),
            Progress::default(),
            "two failures: wait"
        );

        let p = updating(3).progress();
        assert_eq!(p.rollbacks.len(), 1, "{p:?}");
        let Rollback { write, why } = &p.rollbacks[0];
        assert_eq!(
            why,
            "automatic rollback to revision 1: revision 2 never became healthy: 3 tasks failed (last: exec failed)"
        );
        assert_eq!(
            write.service.revision, 3,
            "a new revision, past every kept one"
        );
        let restored = write.service.spec.as_ref().unwrap();
        assert_eq!((restored.image.as_str(), restored.replicas), ("v1", 2));
        let cause = write.service.cause.as_ref().unwrap();
        assert!(cause.automatic);
        assert_eq!(
            (cause.who.as_str(), cause.why.as_str()),
            ("rctl-scheduler", why.as_str())
        );
        assert_eq!(write.record.as_ref().map(|r| r.revision), Some(3));
        assert!(write.rollout.is_none());
        assert!(p.canaries.is_empty() && p.stuck.is_empty());

        let mut lost = updating(3);
        lost.revisions.get_mut("web").unwrap().remove(0);
        assert_eq!(
            lost.progress().stuck,
            vec![Stuck {
                service: "web".into(),
                reason: "revision 1 to roll back to is not kept".into()
            }]
        );
    }

    #[test]
    fn a_canary_that_cannot_start_is_rolled_back_by_its_own_steps() {
        let mut w = updating(3);
        w.rollouts
            .insert("web".into(), rollout(1, 2, CanaryState::Starting));
        let p = w.progress();
        assert!(p.rollbacks.is_empty(), "stable stays: {p:?}");
        assert_eq!(
            states(&p),
            vec![(
                CanaryState::RollingBack,
                "revision 2 never became healthy: 3 tasks failed (last: exec failed)".into()
            )]
        );
        let traffic = p.canaries[0].service.traffic.as_ref().unwrap();
        assert_eq!(
            traffic,
            &rollout::split(1, 2, 0),
            "the canary leaves the split first"
        );
        assert_eq!(
            p.canaries[0].service.revision, 2,
            "its tasks stop once drained"
        );

        // Finishing, it is an ordinary update and rolls back like one.
        w.rollouts
            .insert("web".into(), rollout(1, 2, CanaryState::Finishing));
        let p = w.progress();
        assert_eq!(p.rollbacks.len(), 1, "{p:?}");
    }

    #[test]
    fn canary_steps_table() {
        struct Case {
            name: &'static str,
            /// The service's revision (the canary is 2 next to stable 1).
            revision: u64,
            state: CanaryState,
            /// Ready tasks of the canary revision.
            ready: usize,
            now_ms: i64,
            keep_stable: bool,
            /// The canary's state and reason written, or what is stuck.
            want: Option<Result<(CanaryState, &'static str), &'static str>>,
            /// Revision, image and split (stable, canary, canary %) of the service written.
            service: Option<(u64, &'static str, Option<u32>)>,
        }
        let cases = [
            Case {
                name: "starting waits for a ready canary task",
                revision: 2,
                state: CanaryState::Starting,
                ready: 0,
                now_ms: 2_000,
                keep_stable: true,
                want: None,
                service: None,
            },
            Case {
                name: "starting steps to the first weight once the canary is ready",
                revision: 2,
                state: CanaryState::Starting,
                ready: 1,
                now_ms: 2_000,
                keep_stable: true,
                want: Some(Ok((CanaryState::Stepping, ""))),
                service: Some((2, "v2", Some(10))),
            },
            Case {
                name: "a newer apply supersedes the canary",
                revision: 3,
                state: CanaryState::Stepping,
                ready: 1,
                now_ms: 2_000,
                keep_stable: true,
                want: Some(Ok((CanaryState::RolledBack, "superseded by revision 3"))),
                service: Some((3, "v2", Some(0))),
            },
            Case {
                name: "rolling back waits for the LBs to confirm weight 0",
                revision: 2,
                state: CanaryState::RollingBack,
                ready: 1,
                now_ms: 2_000,
                keep_stable: true,
                want: None,
                service: None,
            },
            Case {
                name: "rolled back, the service runs its stable revision again",
                revision: 2,
                state: CanaryState::RollingBack,
                ready: 1,
                now_ms: 1_000 + canary::ROLLBACK_CONFIRM_MS,
                keep_stable: true,
                want: Some(Ok((CanaryState::RolledBack, ""))),
                service: Some((1, "v1", None)),
            },
            Case {
                name: "a stable revision no longer kept cannot be restored",
                revision: 2,
                state: CanaryState::RollingBack,
                ready: 1,
                now_ms: 1_000 + canary::ROLLBACK_CONFIRM_MS,
                keep_stable: false,
                want: Some(Err("stable revision 1 not kept; cannot roll back")),
                service: None,
            },
            Case {
                name: "a finished canary needs nothing",
                revision: 2,
                state: CanaryState::Done,
                ready: 1,
                now_ms: 2_000,
                keep_stable: true,
                want: None,
                service: None,
            },
        ];
        for c in cases {
            let mut w = World {
                services: vec![Service {
                    spec: Some(spec("v2", 3)),
                    revision: c.revision,
                    traffic: Some(rollout::split(1, 2, 0)),
                    ..Default::default()
                }],
                rollouts: [("web".into(), rollout(1, 2, c.state))].into(),
                revisions: [("web".into(), vec![revision(1, "v1"), revision(2, "v2")])].into(),
                // One LB, last heard from before the canary started.
                stats: [(
                    "web".into(),
                    vec![LbStats {
                        lb: "lb1".into(),
                        service: "web".into(),
                        unix_ms: 900,
                        ..Default::default()
                    }],
                )]
                .into(),
                now_ms: c.now_ms,
                ..Default::default()
            };
            if !c.keep_stable {
                w.revisions.get_mut("web").unwrap().remove(0);
            }
            for i in 0..3 {
                w.task(
                    &format!("s{i}"),
                    1,
                    TaskState::Running,
                    DesiredState::Running,
                );
            }
            for i in 0..c.ready {
                w.task(
                    &format!("c{i}"),
                    2,
                    TaskState::Running,
                    DesiredState::Running,
                );
            }
            let p = w.progress();
            assert!(p.rollbacks.is_empty(), "{}: {p:?}", c.name);
            let got = match (p.canaries.first(), p.stuck.first()) {
                (None, None) => None,
                (Some(_), None) => Some(Ok(states(&p)[0].clone())),
                (None, Some(s)) => Some(Err(s.reason.clone())),
                (Some(_), Some(_)) => panic!("{}: both {p:?}", c.name),
            };
            let want = c.want.map(|r| {
                r.map(|(st, why)| (st, why.to_string()))
                    .map_err(str::to_string)
            });
            assert_eq!(got, want, "{}", c.name);
            let service = p.canaries.first().map(|w| {
                let s = &w.service;
                let canary = s.traffic.as_ref().map(|t| t.weights[1].weight);
                (s.revision, s.spec.as_ref().unwrap().image.as_str(), canary)
            });
            assert_eq!(service, c.service, "{}", c.name);
            if let Some(w) = p
                .canaries
                .first()
                .filter(|_| c.service.is_some_and(|s| s.0 == 1))
            {
                let spec = w.service.spec.as_ref().unwrap();
                assert_eq!(
                    spec.replicas, 3,
                    "{}: scaling made during the canary stays",
                    c.name
                );
                assert_eq!(w.service.cause.as_ref().unwrap().why, "to v1", "{}", c.name);
            }
        }
    }
}
