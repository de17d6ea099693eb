//! Revision history of services: what a change is called ("image: a → b"), which records a
//! new revision pushes out, and which spec a rollback restores. Pure; the API stores the
//! records (`revisions/{svc}/{n}`) in the same transaction as the service.

use std::collections::BTreeSet;

use rctl_api::pb::{Revision, RevisionCause, ServiceSpec};

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
}
