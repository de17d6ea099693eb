//! Revisions of services, pure: what a change of spec writes ([`next`]: the revision
//! number, the service value, its history record and the canary it may start), what a
//! change is called ("image: a → b"), which records a new revision pushes out, and which
//! spec a rollback restores. `apply`, `rollback` and the leader's automatic rollback all
//! go through [`next`]; the store writes its [`ServiceWrite`] in one transaction.

use std::collections::BTreeSet;

use rctl_api::pb::{CanaryRollout, Revision, RevisionCause, Service, ServiceSpec};

use crate::spec::changes_revision;

/// Revisions kept per service, like Kubernetes' default revisionHistoryLimit.
pub const HISTORY_LIMIT: usize = 10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RevisionError {
    #[error(
        "service {0:?} has no earlier revision to roll back to (see: rctl rollout history {0})"
    )]
    NoPrevious(String),
    #[error("service {service:?} has no revision {to} in its history (kept: {kept}; see: rctl rollout history {service})")]
    NotKept {
        service: String,
        to: u64,
        kept: String,
    },
    #[error("service {service:?} already runs revision {to}")]
    IsCurrent { service: String, to: u64 },
    #[error("revision {revision} of {service:?} is still rolling out; wait for it (rctl rollout status {service} --wait) or change it with apply")]
    RolloutRunning { service: String, revision: u64 },
    #[error("a canary needs a running service whose image, command or env changes; {service:?} {}", if *.exists { "would not change revision" } else { "does not exist" })]
    CanaryNeedsChange { service: String, exists: bool },
}

/// A write of `services/{name}`: its new value and what goes in the same transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceWrite {
    pub service: Service,
    /// The record of the service's new revision, when it gets one.
    pub record: Option<Revision>,
    /// Revision records the new one pushes out of the history.
    pub prune: Vec<u64>,
    /// The canary record written with it (`rollouts/{svc}`), guarded by its own mod revision.
    pub rollout: Option<CanaryRollout>,
}

/// What a spec change does to its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// The same spec again: nothing is written.
    Unchanged,
    Updated,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Unchanged => "unchanged",
            Outcome::Updated => "updated",
        }
    }
}

/// Who changes a spec, and how.
#[derive(Debug, Clone, Copy, Default)]
pub struct Change<'a> {
    /// Recorded as the revision's author.
    pub who: &'a str,
    /// Recorded as the reason; "" records a summary of what changed.
    pub message: &'a str,
    /// Refused while the current revision still rolls out (`apply --exclusive`).
    pub exclusive: bool,
    /// Start a canary of the new revision next to the current one (at weight 0).
    pub canary: bool,
    /// Made by the leader, not a person (an automatic rollback).
    pub automatic: bool,
}

/// The service as it is before a change.
#[derive(Debug, Clone, Copy, Default)]
pub struct Current<'a> {
    pub service: Option<&'a Service>,
    /// Its kept revisions.
    pub history: &'a [Revision],
    /// Whether its current revision still rolls out ([`crate::rollout::rolling`]).
    pub rolling: bool,
}

/// What writing `spec` does to the service: a new revision when what runs changes
/// ([`changes_revision`]) — numbered past every kept one, so a rolled-back canary's number
/// is not reused, with all traffic on it, recorded and pruned — otherwise the same revision
/// with the new scale and rollout settings, keeping a running split.
pub fn next(
    current: Current<'_>,
    spec: ServiceSpec,
    change: &Change<'_>,
    now_ms: i64,
) -> Result<(Outcome, ServiceWrite), RevisionError> {
    let exclusive = change.exclusive || change.canary;
    if let (true, true, Some(old)) = (exclusive, current.rolling, current.service) {
        return Err(RevisionError::RolloutRunning {
            service: spec.name.clone(),
            revision: old.revision,
        });
    }
    let (mut svc, outcome) = match current.service {
        None => (
            Service {
                spec: Some(spec.clone()),
                revision: 1,
                created_unix_ms: now_ms,
                updated_unix_ms: now_ms,
                ..Default::default()
            },
            Outcome::Created,
        ),
        Some(old) if old.spec.as_ref() == Some(&spec) => (old.clone(), Outcome::Unchanged),
        Some(old) => {
            let bump = old.spec.as_ref().is_none_or(|o| changes_revision(o, &spec));
            let newest = current.history.iter().map(|r| r.revision).max();
            (
                Service {
                    spec: Some(spec.clone()),
                    revision: if bump {
                        old.revision.max(newest.unwrap_or(0)) + 1
                    } else {
                        old.revision
                    },
                    created_unix_ms: old.created_unix_ms,
                    updated_unix_ms: now_ms,
                    // Scaling alone keeps a running split.
                    traffic: if bump { None } else { old.traffic.clone() },
                    cause: old.cause.clone(),
                },
                Outcome::Updated,
            )
        }
    };
    let previous = current.service;
    let new_revision = previous.is_none_or(|p| p.revision != svc.revision);
    let rollout = match (change.canary, previous) {
        (false, _) => None,
        (true, Some(p)) if new_revision => {
            svc.traffic = Some(crate::rollout::split(p.revision, svc.revision, 0));
            Some(crate::canary::start(p.revision, svc.revision, now_ms))
        }
        (true, _) => {
            return Err(RevisionError::CanaryNeedsChange {
                service: spec.name.clone(),
                exists: previous.is_some(),
            })
        }
    };
    let (mut record, mut prune) = (None, Vec::new());
    if outcome != Outcome::Unchanged && new_revision {
        let why = if change.message.is_empty() {
            change_summary(previous.and_then(|p| p.spec.as_ref()), &spec)
        } else {
            change.message.to_string()
        };
        let mut r = self::record(&spec, svc.revision, change.who, &why, now_ms);
        if let Some(c) = r.cause.as_mut() {
            c.automatic = change.automatic;
        }
        svc.cause = r.cause.clone();
        let kept: Vec<u64> = current.history.iter().map(|r| r.revision).collect();
        prune = to_prune(&kept, svc.revision);
        record = Some(r);
    }
    Ok((
        outcome,
        ServiceWrite {
            service: svc,
            record,
            prune,
            rollout,
        },
    ))
}

/// The spec `rollback --to` (0: the previous revision) applies to `svc`, and the revision
/// it comes from ([`rollback_target`], [`rollback_spec`]).
pub fn rollback(
    svc: &Service,
    history: &[Revision],
    to: u64,
) -> Result<(ServiceSpec, u64), RevisionError> {
    let current = svc.spec.clone().unwrap_or_default();
    let target = rollback_target(&current.name, history, svc.revision, to)?;
    let spec = rollback_spec(&current, target.spec.as_ref().unwrap_or(&current));
    Ok((spec, target.revision))
}

/// The spec revision `revision` of `svc` runs: the service's own for its current revision,
/// else the kept record's (a stable task lost mid-canary is replaced with it).
pub fn spec_of<'a>(
    svc: &'a Service,
    history: &'a [Revision],
    revision: u64,
) -> Option<&'a ServiceSpec> {
    if revision == svc.revision {
        return svc.spec.as_ref();
    }
    history
        .iter()
        .find(|r| r.revision == revision)
        .and_then(|r| r.spec.as_ref())
}

/// A short, human summary of what changed between two specs, e.g.
/// `image: web:1 → web:2; env: +DEBUG`. Replicas and rollout settings do not make a
/// revision, so they are not named.
pub fn change_summary(old: Option<&ServiceSpec>, new: &ServiceSpec) -> String {
    let Some(old) = old else {
        return "created".into();
    };
    let mut parts = Vec::new();
    if old.image != new.image {
        parts.push(format!("image: {} → {}", old.image, new.image));
    }
    if old.command != new.command {
        parts.push(format!(
            "command: {:?} → {:?}",
            old.command.join(" "),
            new.command.join(" ")
        ));
    }
    if old.env != new.env {
        let keys: BTreeSet<&String> = old.env.keys().chain(new.env.keys()).collect();
        let env: Vec<String> = keys
            .into_iter()
            .filter_map(|k| match (old.env.get(k), new.env.get(k)) {
                (None, Some(_)) => Some(format!("+{k}")),
                (Some(_), None) => Some(format!("-{k}")),
                (Some(a), Some(b)) if a != b => Some(format!("~{k}")),
                _ => None,
            })
            .collect();
        parts.push(format!("env: {}", env.join(" ")));
    }
    for (name, changed) in [
        ("port", old.port != new.port),
        ("health", old.health != new.health),
        ("resources", old.resources != new.resources),
        ("placement", old.placement != new.placement),
    ] {
        if changed {
            parts.push(format!("{name} changed"));
        }
    }
    if parts.is_empty() {
        "no change".into()
    } else {
        parts.join("; ")
    }
}

/// The revision numbers to delete once `newest` is recorded next to `kept`, so that the
/// newest [`HISTORY_LIMIT`] remain.
pub fn to_prune(kept: &[u64], newest: u64) -> Vec<u64> {
    let mut all: Vec<u64> = kept.iter().copied().filter(|n| *n != newest).collect();
    all.sort_unstable();
    all.dedup();
    let keep_old = HISTORY_LIMIT.saturating_sub(1);
    let drop = all.len().saturating_sub(keep_old);
    all.truncate(drop);
    all
}

/// Which kept revision `rollback --to` (0: the previous one) restores, given the service's
/// current revision.
pub fn rollback_target<'a>(
    service: &str,
    history: &'a [Revision],
    current: u64,
    to: u64,
) -> Result<&'a Revision, RevisionError> {
    if to == 0 {
        return history
            .iter()
            .filter(|r| r.revision < current)
            .max_by_key(|r| r.revision)
            .ok_or_else(|| RevisionError::NoPrevious(service.into()));
    }
    if to == current {
        return Err(RevisionError::IsCurrent {
            service: service.into(),
            to,
        });
    }
    history
        .iter()
        .find(|r| r.revision == to)
        .ok_or_else(|| RevisionError::NotKept {
            service: service.into(),
            to,
            kept: history
                .iter()
                .map(|r| r.revision.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The spec a rollback applies: what ran at `target`, at today's scale and with today's
/// rollout settings (those describe how to roll, not what runs).
pub fn rollback_spec(current: &ServiceSpec, target: &ServiceSpec) -> ServiceSpec {
    ServiceSpec {
        name: current.name.clone(),
        replicas: current.replicas,
        update: current.update,
        canary: current.canary.clone(),
        ..target.clone()
    }
}

/// The record of a new revision.
pub fn record(spec: &ServiceSpec, revision: u64, who: &str, why: &str, now_ms: i64) -> Revision {
    Revision {
        service: spec.name.clone(),
        revision,
        spec: Some(spec.clone()),
        cause: Some(RevisionCause {
            who: who.into(),
            why: why.into(),
            unix_ms: now_ms,
            automatic: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rctl_api::pb::{CanarySpec, UpdateSpec};

    fn spec(image: &str) -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            image: image.into(),
            replicas: 3,
            ..Default::default()
        }
    }

    fn rev(n: u64, image: &str) -> Revision {
        record(&spec(image), n, "ann", "test", n as i64)
    }

    #[test]
    fn summaries_name_what_changed() {
        assert_eq!(change_summary(None, &spec("a")), "created");
        assert_eq!(
            change_summary(Some(&spec("web:1")), &spec("web:2")),
            "image: web:1 → web:2"
        );
        let mut a = spec("x");
        a.env.insert("KEEP".into(), "1".into());
        a.env.insert("GONE".into(), "1".into());
        a.env.insert("EDIT".into(), "1".into());
        let mut b = a.clone();
        b.env.remove("GONE");
        b.env.insert("EDIT".into(), "2".into());
        b.env.insert("NEW".into(), "1".into());
        b.command = vec!["serve".into(), "--fast".into()];
        assert_eq!(
            change_summary(Some(&a), &b),
            "command: \"\" → \"serve --fast\"; env: ~EDIT -GONE +NEW"
        );
        b = a.clone();
        b.resources = Some(Default::default());
        assert_eq!(change_summary(Some(&a), &b), "resources changed");
    }

    #[test]
    fn history_keeps_the_newest_ten() {
        let kept: Vec<u64> = (1..=10).collect();
        assert_eq!(to_prune(&kept, 11), vec![1]);
        assert_eq!(to_prune(&(1..=3).collect::<Vec<_>>(), 4), Vec::<u64>::new());
        // After a gap (pruned or never recorded), still the oldest go first.
        let kept = [2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
        assert_eq!(to_prune(&kept, 16), vec![2, 5, 6]);
    }

    #[test]
    fn rollback_picks_the_previous_or_the_named_revision() {
        let history = [rev(1, "a"), rev(2, "b"), rev(3, "c")];
        assert_eq!(rollback_target("web", &history, 3, 0).unwrap().revision, 2);
        assert_eq!(rollback_target("web", &history, 3, 1).unwrap().revision, 1);
        assert_eq!(
            rollback_target("web", &history, 3, 3),
            Err(RevisionError::IsCurrent {
                service: "web".into(),
                to: 3
            })
        );
        let e = rollback_target("web", &history, 3, 9).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service \"web\" has no revision 9 in its history (kept: 1, 2, 3; see: rctl rollout history web)"
        );
        assert_eq!(
            rollback_target("web", &history[..1], 1, 0),
            Err(RevisionError::NoPrevious("web".into()))
        );
    }

    #[test]
    fn rollback_restores_what_ran_not_how_many_or_how_to_roll() {
        let mut now = spec("web:2");
        now.replicas = 7;
        now.update = Some(UpdateSpec {
            max_surge: 2,
            ..Default::default()
        });
        now.canary = Some(CanarySpec {
            replicas: 1,
            ..Default::default()
        });
        let mut then = spec("web:1");
        then.env.insert("A".into(), "1".into());
        let back = rollback_spec(&now, &then);
        assert_eq!(back.image, "web:1");
        assert_eq!(back.env, then.env);
        assert_eq!(back.replicas, 7);
        assert_eq!(back.update, now.update);
        assert_eq!(back.canary, now.canary);
    }

    fn service(spec: ServiceSpec, revision: u64) -> Service {
        Service {
            spec: Some(spec),
            revision,
            created_unix_ms: 5,
            updated_unix_ms: 5,
            cause: Some(RevisionCause {
                who: "bob".into(),
                why: "earlier".into(),
                unix_ms: 5,
                automatic: false,
            }),
            ..Default::default()
        }
    }

    fn split(stable: u64, canary: u64, percent: u32) -> rctl_api::pb::TrafficSplit {
        crate::rollout::split(stable, canary, percent)
    }

    /// What `apply` decides, one row per case: the service before (spec image and
    /// replicas, revision, a running split), the kept revisions, whether it still rolls
    /// out, the change, and the outcome, revision, record and canary written.
    #[test]
    fn next_revision_table() {
        struct Case {
            name: &'static str,
            /// (image, replicas, revision, split) of the service before; None: no service.
            before: Option<(&'static str, u32, u64, bool)>,
            history: &'static [u64],
            rolling: bool,
            /// (image, replicas) applied.
            spec: (&'static str, u32),
            change: Change<'static>,
            want: Result<(Outcome, u64), RevisionError>,
            /// Why the record says, when a record is written.
            why: Option<&'static str>,
            prune: &'static [u64],
            /// The split left on the service.
            traffic: Option<(u64, u64, u32)>,
            canary: Option<(u64, u64)>,
        }
        let by = |message| Change {
            who: "ann",
            message,
            ..Default::default()
        };
        let cases = [
            Case {
                name: "a new service is revision 1",
                before: None,
                history: &[],
                rolling: false,
                spec: ("web:1", 3),
                change: by(""),
                want: Ok((Outcome::Created, 1)),
                why: Some("created"),
                prune: &[],
                traffic: None,
                canary: None,
            },
            Case {
                name: "the same spec again writes nothing",
                before: Some(("web:1", 3, 4, false)),
                history: &[3, 4],
                rolling: true,
                spec: ("web:1", 3),
                change: by(""),
                want: Ok((Outcome::Unchanged, 4)),
                why: None,
                prune: &[],
                traffic: None,
                canary: None,
            },
            Case {
                name: "scaling keeps the revision and a running split",
                before: Some(("web:1", 3, 4, true)),
                history: &[3, 4],
                rolling: false,
                spec: ("web:1", 5),
                change: by(""),
                want: Ok((Outcome::Updated, 4)),
                why: None,
                prune: &[],
                traffic: Some((3, 4, 0)),
                canary: None,
            },
            Case {
                name: "a new image is the next revision, all traffic on it",
                before: Some(("web:1", 3, 4, true)),
                history: &[3, 4],
                rolling: true,
                spec: ("web:2", 3),
                change: by(""),
                want: Ok((Outcome::Updated, 5)),
                why: Some("image: web:1 → web:2"),
                prune: &[],
                traffic: None,
                canary: None,
            },
            Case {
                name: "a rolled-back canary's number is not reused",
                before: Some(("web:1", 3, 4, false)),
                history: &[3, 4, 5],
                rolling: false,
                spec: ("web:2", 3),
                change: by("try again"),
                want: Ok((Outcome::Updated, 6)),
                why: Some("try again"),
                prune: &[],
                traffic: None,
                canary: None,
            },
            Case {
                name: "the eleventh revision pushes out the oldest",
                before: Some(("web:1", 3, 10, false)),
                history: &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                rolling: false,
                spec: ("web:2", 3),
                change: by(""),
                want: Ok((Outcome::Updated, 11)),
                why: Some("image: web:1 → web:2"),
                prune: &[1],
                traffic: None,
                canary: None,
            },
            Case {
                name: "exclusive is refused while the revision rolls out",
                before: Some(("web:1", 3, 4, false)),
                history: &[4],
                rolling: true,
                spec: ("web:2", 3),
                change: Change {
                    exclusive: true,
                    ..by("")
                },
                want: Err(RevisionError::RolloutRunning {
                    service: "web".into(),
                    revision: 4,
                }),
                why: None,
                prune: &[],
                traffic: None,
                canary: None,
            },
            Case {
                name: "exclusive goes ahead once it rolled out",
                before: Some(("web:1", 3, 4, false)),
                history: &[4],
                rolling: false,
                spec: ("web:2", 3),
                change: Change {
                    exclusive: true,
                    ..by("")
                },
                want: Ok((Outcome::Updated, 5)),
                why: Some("image: web:1 → web:2"),
                prune: &[],
                traffic: None,
                canary: None,
            },
            Case {
                name: "a canary starts at weight 0 next to the current revision",
                before: Some(("web:1", 3, 4, false)),
                history: &[4],
                rolling: false,
                spec: ("web:2", 3),
                change: Change {
                    canary: true,
                    ..by("")
                },
                want: Ok((Outcome::Updated, 5)),
                why: Some("image: web:1 → web:2"),
                prune: &[],
                traffic: Some((4, 5, 0)),
                canary: Some((4, 5)),
            },
            Case {
                name: "a canary is exclusive",
                before: Some(("web:1", 3, 4, false)),
                history: &[4],
                rolling: true,
                spec: ("web:2", 3),
                change: Change {
                    canary: true,
                    ..by("")
                },
                want: Err(RevisionError::RolloutRunning {
                    service: "web".into(),
                    revision: 4,
                }),
                why: None,
                prune: &[],
                traffic: None,
                canary: None,
            },
            Case {
                name: "a canary needs a service",
                before: None,
                history: &[],
                rolling: false,
                spec: ("web:2", 3),
                change: Change {
                    canary: true,
                    ..by("")
                },
                want: Err(RevisionError::CanaryNeedsChange {
                    service: "web".into(),
                    exists: false,
                }),
                why: None,
                prune: &[],
                traffic: None,
                canary: None,
            },
            Case {
                name: "a canary needs a new revision",
                before: Some(("web:1", 3, 4, false)),
                history: &[4],
                rolling: false,
                spec: ("web:1", 5),
                change: Change {
                    canary: true,
                    ..by("")
                },
                want: Err(RevisionError::CanaryNeedsChange {
                    service: "web".into(),
                    exists: true,
                }),
                why: None,
                prune: &[],
                traffic: None,
                canary: None,
            },
        ];
        for c in cases {
            let before = c.before.map(|(image, replicas, revision, split_on)| {
                let mut s = spec(image);
                s.replicas = replicas;
                let mut svc = service(s, revision);
                if split_on {
                    svc.traffic = Some(split(revision - 1, revision, 0));
                }
                svc
            });
            let history: Vec<Revision> = c.history.iter().map(|n| rev(*n, "web:1")).collect();
            let mut new = spec(c.spec.0);
            new.replicas = c.spec.1;
            let current = Current {
                service: before.as_ref(),
                history: &history,
                rolling: c.rolling,
            };
            let got = next(current, new.clone(), &c.change, 1_000);
            let (outcome, w) = match (got, c.want) {
                (Err(e), Err(want)) => {
                    assert_eq!(e, want, "{}", c.name);
                    continue;
                }
                (Ok((outcome, w)), Ok((want, revision))) => {
                    assert_eq!(
                        (outcome, w.service.revision),
                        (want, revision),
                        "{}",
                        c.name
                    );
                    (outcome, w)
                }
                (got, want) => panic!("{}: got {got:?}, want {want:?}", c.name),
            };
            assert_eq!(w.service.spec.as_ref(), Some(&new), "{}", c.name);
            let why = w
                .record
                .as_ref()
                .and_then(|r| r.cause.as_ref())
                .map(|c| c.why.as_str());
            assert_eq!(why, c.why, "{}", c.name);
            if let Some(r) = &w.record {
                assert_eq!(r.revision, w.service.revision, "{}", c.name);
                assert_eq!(r.spec.as_ref(), Some(&new), "{}", c.name);
                assert_eq!(
                    w.service.cause, r.cause,
                    "{}: the service names its cause",
                    c.name
                );
                assert_eq!(r.cause.as_ref().unwrap().who, "ann", "{}", c.name);
            } else if outcome == Outcome::Updated {
                assert_eq!(
                    w.service.cause,
                    before.as_ref().unwrap().cause,
                    "{}",
                    c.name
                );
            }
            assert_eq!(w.prune, c.prune, "{}", c.name);
            let traffic = w.service.traffic.as_ref().map(|t| {
                let ws: Vec<(u64, u32)> =
                    t.weights.iter().map(|w| (w.revision, w.weight)).collect();
                (ws[0].0, ws[1].0, ws[1].1)
            });
            assert_eq!(traffic, c.traffic, "{}", c.name);
            let canary = w
                .rollout
                .as_ref()
                .map(|r| (r.stable_revision, r.canary_revision));
            assert_eq!(canary, c.canary, "{}", c.name);
            if let Some(r) = &w.rollout {
                assert_eq!(r.state(), rctl_api::pb::CanaryState::Starting);
                assert_eq!((r.started_unix_ms, r.step_started_unix_ms), (1_000, 1_000));
            }
            let created = if outcome == Outcome::Created {
                1_000
            } else {
                5
            };
            assert_eq!(w.service.created_unix_ms, created, "{}", c.name);
        }
    }

    #[test]
    fn an_automatic_rollback_is_a_new_revision_recorded_as_automatic() {
        let svc = service(spec("web:2"), 2);
        let history = [rev(1, "web:1"), rev(2, "web:2")];
        let (back, from) = rollback(&svc, &history, 0).unwrap();
        assert_eq!((back.image.as_str(), from), ("web:1", 1));
        let change = Change {
            who: crate::rollout::SCHEDULER,
            message: "automatic rollback to revision 1: never healthy",
            automatic: true,
            ..Default::default()
        };
        let current = Current {
            service: Some(&svc),
            history: &history,
            rolling: true,
        };
        let (outcome, w) = next(current, back, &change, 9).unwrap();
        assert_eq!((outcome, w.service.revision), (Outcome::Updated, 3));
        let cause = w.service.cause.unwrap();
        assert!(cause.automatic);
        assert_eq!(cause.who, "rctl-scheduler");
        assert_eq!(w.record.unwrap().spec.unwrap().image, "web:1");
    }

    #[test]
    fn a_revision_runs_its_own_spec_or_the_kept_one() {
        let svc = service(spec("web:3"), 3);
        let history = [rev(1, "web:1"), rev(3, "web:3")];
        let image = |n| spec_of(&svc, &history, n).map(|s| s.image.as_str());
        assert_eq!(image(3), Some("web:3"));
        assert_eq!(image(1), Some("web:1"));
        assert_eq!(image(2), None, "not kept");
    }
}
