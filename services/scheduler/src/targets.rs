//! What a user typed (`rctl logs web`, `exec 3fa2 sh`, `stop web.2`) → the containers it
//! means: one rule, Docker's, for every command that takes a container, task or service.
//!
//! Vocabulary: a *candidate* is one container the cluster knows, a service task or a
//! one-off container from `rctl run`; its *name* is the task's display name (`web.1`) or the
//! `--name` of a one-off container. Order of matching: exact id, exact name, service name
//! (where the command accepts a whole service), then a unique id prefix. A name several
//! retired tasks share (`web.1` after a restart) means the running one, else the newest.

use std::cmp::Reverse;

use rctl_api::pb::{DesiredState, Task};

use crate::store::Loaded;

/// One container a target may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Task id (= container id on the agent).
    pub id: String,
    /// `service.slot` for a service task, the `--name` of a one-off container.
    pub name: String,
    /// Empty for a one-off container.
    pub service: String,
    pub node: String,
    /// Desired running (not retired or stopped by a user).
    pub running: bool,
    pub created_unix_ms: i64,
}

/// What a target resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    One(Candidate),
    /// A service name: its desired-running tasks (retired ones too when none run), ordered by
    /// name.
    Service {
        service: String,
        tasks: Vec<Candidate>,
    },
}

/// Which kinds of target a command accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// One container only (exec, stop, rm, ...).
    Container,
    /// A container or a whole service (logs).
    ContainerOrService,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("no container, task or service is called {0:?} (see: rctl ps -a)")]
    NotFound(String),
    #[error("{target:?} is a service; name one of its tasks: {}", .tasks.join(", "))]
    IsService { target: String, tasks: Vec<String> },
    #[error("id prefix {target:?} matches {} containers ({}); type more of the id", .ids.len(), .ids.join(", "))]
    Ambiguous { target: String, ids: Vec<String> },
    #[error("no target given")]
    Empty,
}

/// Resolves `target` over `all` (see the module doc for the order).
pub fn resolve(target: &str, all: &[Candidate], accept: Accept) -> Result<Resolved, TargetError> {
    if target.is_empty() {
        return Err(TargetError::Empty);
    }
    if let Some(c) = all.iter().find(|c| c.id == target) {
        return Ok(Resolved::One(c.clone()));
    }
    if let Some(c) = preferred(all.iter().filter(|c| c.name == target)) {
        return Ok(Resolved::One(c.clone()));
    }
    let of_service: Vec<&Candidate> = all.iter().filter(|c| c.service == target).collect();
    if !of_service.is_empty() {
        let running: Vec<&Candidate> = of_service.iter().copied().filter(|c| c.running).collect();
        let mut tasks: Vec<Candidate> = if running.is_empty() {
            of_service.into_iter().cloned().collect()
        } else {
            running.into_iter().cloned().collect()
        };
        tasks.sort_by(|a, b| {
            (&a.name, Reverse(a.created_unix_ms)).cmp(&(&b.name, Reverse(b.created_unix_ms)))
        });
        return match accept {
            Accept::ContainerOrService => Ok(Resolved::Service {
                service: target.to_string(),
                tasks,
            }),
            Accept::Container => Err(TargetError::IsService {
                target: target.to_string(),
                tasks: tasks.into_iter().map(|t| t.name).collect(),
            }),
        };
    }
    let mut by_prefix: Vec<&Candidate> = all.iter().filter(|c| c.id.starts_with(target)).collect();
    match by_prefix.len() {
        0 => Err(TargetError::NotFound(target.to_string())),
        1 => Ok(Resolved::One(by_prefix[0].clone())),
        _ => {
            by_prefix.sort_by(|a, b| a.id.cmp(&b.id));
            Err(TargetError::Ambiguous {
                target: target.to_string(),
                ids: by_prefix.iter().map(|c| c.id.clone()).collect(),
            })
        }
    }
}

/// Of several candidates with one name: the running one, else the newest.
fn preferred<'a>(it: impl Iterator<Item = &'a Candidate>) -> Option<&'a Candidate> {
    it.max_by_key(|c| (c.running, c.created_unix_ms))
}

/// A service task as a candidate.
pub fn of_task(t: &Task) -> Candidate {
    Candidate {
        id: t.id.clone(),
        name: format!("{}.{}", t.service, t.slot),
        service: t.service.clone(),
        node: t.node.clone(),
        running: t.desired_state() == DesiredState::Running,
        created_unix_ms: t.created_unix_ms,
    }
}

/// A one-off container (`rctl run`) as a candidate: its name is its `--name`.
pub fn of_container(t: &Task) -> Candidate {
    Candidate {
        id: t.id.clone(),
        name: t.container_name.clone(),
        service: String::new(),
        node: t.node.clone(),
        running: t.desired_state() == DesiredState::Running,
        created_unix_ms: t.created_unix_ms,
    }
}

/// Every container the loaded state knows, as candidates.
pub fn candidates(loaded: &Loaded) -> Vec<Candidate> {
    loaded
        .tasks
        .iter()
        .map(of_task)
        .chain(loaded.containers.iter().map(of_container))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, name: &str, service: &str, running: bool, created: i64) -> Candidate {
        Candidate {
            id: id.into(),
            name: name.into(),
            service: service.into(),
            node: "h1".into(),
            running,
            created_unix_ms: created,
        }
    }

    fn cluster() -> Vec<Candidate> {
        vec![
            c("3fa2b1", "web.1", "web", false, 1),
            c("3fa2c9", "web.1", "web", true, 2),
            c("77aa01", "web.2", "web", true, 3),
            c("9b0001", "db", "", true, 4),
        ]
    }

    fn one(r: Result<Resolved, TargetError>) -> String {
        match r {
            Ok(Resolved::One(c)) => c.id,
            other => panic!("expected one container, got {other:?}"),
        }
    }

    #[test]
    fn exact_id_then_name_then_prefix() {
        let all = cluster();
        assert_eq!(one(resolve("3fa2b1", &all, Accept::Container)), "3fa2b1");
        assert_eq!(one(resolve("db", &all, Accept::Container)), "9b0001");
        assert_eq!(one(resolve("77", &all, Accept::Container)), "77aa01");
    }

    #[test]
    fn a_shared_task_name_means_the_running_task() {
        assert_eq!(
            one(resolve("web.1", &cluster(), Accept::Container)),
            "3fa2c9"
        );
        let retired = vec![
            c("a1", "web.1", "web", false, 1),
            c("a2", "web.1", "web", false, 5),
        ];
        assert_eq!(one(resolve("web.1", &retired, Accept::Container)), "a2");
    }

    #[test]
    fn ambiguous_prefix_names_every_match() {
        let err = resolve("3fa2", &cluster(), Accept::Container).unwrap_err();
        assert_eq!(
            err,
            TargetError::Ambiguous {
                target: "3fa2".into(),
                ids: vec!["3fa2b1".into(), "3fa2c9".into()]
            }
        );
        assert!(err.to_string().contains("matches 2 containers"));
    }

    #[test]
    fn a_service_name_means_its_running_tasks_where_accepted() {
        let all = cluster();
        match resolve("web", &all, Accept::ContainerOrService).unwrap() {
            Resolved::Service { service, tasks } => {
                assert_eq!(service, "web");
                let ids: Vec<_> = tasks.iter().map(|t| t.id.as_str()).collect();
                assert_eq!(ids, ["3fa2c9", "77aa01"]);
            }
            other => panic!("expected a service, got {other:?}"),
        }
        let err = resolve("web", &all, Accept::Container).unwrap_err();
        assert!(err.to_string().contains("web.1, web.2"), "{err}");
    }

    #[test]
    fn unknown_and_empty_targets_are_errors() {
        assert_eq!(
            resolve("nope", &cluster(), Accept::Container),
            Err(TargetError::NotFound("nope".into()))
        );
        assert_eq!(
            resolve("", &cluster(), Accept::Container),
            Err(TargetError::Empty)
        );
    }
}
