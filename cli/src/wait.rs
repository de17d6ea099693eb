//! `--wait`: block until services have exactly their desired number of tasks of their current
//! revision, all running and healthy — or the timeout passes (exit 4, change left in place).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use rctl_api::pb::{DesiredState, TaskState};

use crate::client::Conn;
use crate::error::CliError;

const POLL: Duration = Duration::from_millis(250);

/// Progress of one service towards its desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub ready: u32,
    pub desired: u32,
    /// Active tasks beyond the ready ones of the current revision (starting, old revision, extra).
    pub other: u32,
    /// Messages of failed tasks of the current revision.
    pub failures: Vec<(String, String)>,
    /// Why tasks wait for a node ("2 tasks: 0/3 nodes: ..."), "" when none does.
    pub unplaced: String,
}

impl Progress {
    pub fn done(&self) -> bool {
        self.ready == self.desired && self.other == 0
    }
}

pub fn progress(resp: &rctl_api::pb::InspectServiceResponse) -> Progress {
    let svc = resp.service.clone().unwrap_or_default();
    let desired = svc.spec.as_ref().map(|s| s.replicas).unwrap_or(0);
    let mut p = Progress {
        ready: 0,
        desired,
        other: 0,
        failures: vec![],
        unplaced: resp.unplaced.clone(),
    };
    for v in &resp.tasks {
        let Some(t) = &v.task else { continue };
        let st = v.status.as_ref();
        let state = st.map(|s| s.state()).unwrap_or(TaskState::Pending);
        if t.revision == svc.revision && state == TaskState::Failed {
            let msg = st.map(|s| s.message.clone()).unwrap_or_default();
            p.failures.push((
                format!(
                    "{}.{} ({})",
                    t.service,
                    t.slot,
                    t.id.chars().take(12).collect::<String>()
                ),
                msg,
            ));
        }
        if t.desired_state() != DesiredState::Running {
            continue;
        }
        let healthy = t.container_port == 0 || st.is_some_and(|s| s.health == "healthy");
        if t.revision == svc.revision && state == TaskState::Running && healthy {
            p.ready += 1;
        } else {
            p.other += 1;
        }
    }
    // More ready than desired means the extra ones are still being retired.
    if p.ready > p.desired {
        p.other += p.ready - p.desired;
        p.ready = p.desired;
    }
    p
}

/// "web: 1/3 running, 1 changing (unplaced: 2 tasks: 0/3 nodes: 3 insufficient memory)".
pub fn progress_line(name: &str, p: &Progress) -> String {
    let mut line = format!("{name}: {}/{} running", p.ready, p.desired);
    if p.other > 0 {
        line.push_str(&format!(", {} changing", p.other));
    }
    if !p.unplaced.is_empty() {
        line.push_str(&format!(" (unplaced: {})", p.unplaced));
    }
    line
}

pub async fn services(
    conn: &mut Conn,
    names: &[String],
    timeout: Duration,
) -> Result<(), CliError> {
    services_from(conn, names, &[], timeout).await
}

/// Why the scheduler rolled `svc` back by itself after revision `from` (the one the caller
/// wrote), if it did.
pub fn rolled_back(svc: &rctl_api::pb::Service, from: u64) -> Option<String> {
    let cause = svc.cause.as_ref()?;
    (cause.automatic && svc.revision > from).then(|| cause.why.clone())
}

/// The later change that replaced revision `from` (the one the caller wrote) before it
/// finished, if a user made one: then `from` is not what runs, and waiting for it would
/// report someone else's revision as a success.
pub fn overtaken(name: &str, svc: &rctl_api::pb::Service, from: u64) -> Option<String> {
    let cause = svc.cause.clone().unwrap_or_default();
    (svc.revision > from && !cause.automatic).then(|| {
        let by = if cause.who.is_empty() {
            String::new()
        } else {
            format!(" by {}", cause.who)
        };
        format!(
            "{name}: revision {from} was replaced by revision {}{by} before it finished; revision {from} does not run (see: rctl rollout history {name})",
            svc.revision
        )
    })
}

/// Like [`services`], for changes that made revisions `from[i]` of `names[i]`: if the
/// scheduler rolls one back by itself, waits for the restored revision, then fails with
/// exit 3 and the reason; if a later change replaces one, fails at once (exit 1).
pub async fn services_from(
    conn: &mut Conn,
    names: &[String],
    from: &[u64],
    timeout: Duration,
) -> Result<(), CliError> {
    let mut rollbacks: Vec<Option<String>> = vec![None; names.len()];
    let tty = std::io::stderr().is_terminal();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: Vec<Option<Progress>> = vec![None; names.len()];
    let mut reported: std::collections::HashSet<String> = Default::default();
    loop {
        let mut all_done = true;
        for (i, name) in names.iter().enumerate() {
            let resp = conn.inspect_service_until(name, deadline).await?;
            let p = progress(&resp);
            if let (Some(svc), Some(from)) = (resp.service.as_ref(), from.get(i)) {
                if let Some(why) = overtaken(name, svc, *from).filter(|_| rollbacks[i].is_none()) {
                    if tty {
                        eprintln!();
                    }
                    return Err(CliError::Failed(why));
                }
                if rollbacks[i].is_none() {
                    if let Some(why) = rolled_back(svc, *from) {
                        if tty {
                            eprintln!();
                        }
                        eprintln!("{name}: {why}");
                        rollbacks[i] = Some(format!("{name}: {why}"));
                    }
                }
            }
            for (task, msg) in &p.failures {
                if reported.insert(format!("{task}{msg}")) {
                    if tty {
                        eprintln!();
                    }
                    eprintln!("{name}: task {task} failed: {msg}");
                }
            }
            if last[i].as_ref() != Some(&p) {
                let line = progress_line(name, &p);
                if tty {
                    eprint!("\r\x1b[2K{line}");
                    let _ = std::io::stderr().flush();
                } else {
                    eprintln!("{line}");
                }
                last[i] = Some(p.clone());
            }
            all_done &= p.done();
        }
        if all_done {
            if tty {
                eprintln!();
            }
            let rolled: Vec<String> = rollbacks.into_iter().flatten().collect();
            if !rolled.is_empty() {
                return Err(CliError::RolledBack(rolled.join("; ")));
            }
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            if tty {
                eprintln!();
            }
            let state: Vec<String> = names
                .iter()
                .zip(&last)
                .map(|(n, p)| {
                    p.as_ref()
                        .map(|p| format!("{n} {}/{} running", p.ready, p.desired))
                        .unwrap_or_default()
                })
                .collect();
            return Err(CliError::Timeout(format!(
                "timed out after {} waiting ({}); the change stays in place (see: rctl ps)",
                humantime::format_duration(timeout),
                state.join(", ")
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rctl_api::pb::*;

    #[test]
    fn only_an_automatic_revision_after_ours_is_a_rollback() {
        let mut svc = Service {
            revision: 3,
            cause: Some(RevisionCause {
                who: "rctl-scheduler".into(),
                why: "automatic rollback to revision 1: ...".into(),
                unix_ms: 0,
                automatic: true,
            }),
            ..Default::default()
        };
        assert_eq!(
            overtaken("web", &svc, 2),
            None,
            "a rollback is no overtaking"
        );
        assert_eq!(
            rolled_back(&svc, 2).as_deref(),
            Some("automatic rollback to revision 1: ...")
        );
        assert_eq!(rolled_back(&svc, 3), None, "our own revision");
        svc.cause.as_mut().unwrap().automatic = false;
        assert_eq!(rolled_back(&svc, 2), None, "a person's newer change");
        let why = overtaken("web", &svc, 2).expect("overtaken by a person's change");
        assert!(
            why.starts_with("web: revision 2 was replaced by revision 3 by rctl-scheduler"),
            "{why}"
        );
        assert_eq!(overtaken("web", &svc, 3), None, "our own revision");
    }

    fn view(id: &str, rev: u64, desired: DesiredState, state: TaskState, health: &str) -> TaskView {
        let mut t = Task {
            id: id.into(),
            service: "web".into(),
            revision: rev,
            container_port: 8080,
            ..Default::default()
        };
        t.set_desired_state(desired);
        let mut s = TaskStatus {
            health: health.into(),
            ..Default::default()
        };
        s.set_state(state);
        TaskView {
            task: Some(t),
            status: Some(s),
            ..Default::default()
        }
    }

    fn resp(replicas: u32, tasks: Vec<TaskView>) -> InspectServiceResponse {
        InspectServiceResponse {
            service: Some(Service {
                spec: Some(ServiceSpec {
                    replicas,
                    ..Default::default()
                }),
                revision: 2,
                ..Default::default()
            }),
            tasks,
            unplaced: String::new(),
            canary: None,
        }
    }

    #[test]
    fn done_only_when_exactly_the_desired_tasks_are_ready() {
        let ready = || view("a", 2, DesiredState::Running, TaskState::Running, "healthy");
        assert!(progress(&resp(1, vec![ready()])).done());
        assert!(!progress(&resp(2, vec![ready()])).done());
        let starting = view(
            "b",
            2,
            DesiredState::Running,
            TaskState::Running,
            "starting",
        );
        assert!(!progress(&resp(2, vec![ready(), starting])).done());
        let old = view("c", 1, DesiredState::Running, TaskState::Running, "healthy");
        assert!(!progress(&resp(1, vec![ready(), old])).done());
        let stopping = view(
            "d",
            2,
            DesiredState::Shutdown,
            TaskState::Running,
            "healthy",
        );
        assert!(
            progress(&resp(1, vec![ready(), stopping])).done(),
            "retired tasks do not count"
        );
        assert!(
            !progress(&resp(1, vec![ready(), ready()])).done(),
            "an extra ready task is still being retired"
        );
    }

    #[test]
    fn progress_lines_say_why_tasks_are_unplaced() {
        let mut r = resp(3, vec![]);
        assert_eq!(progress_line("web", &progress(&r)), "web: 0/3 running");
        r.unplaced = "3 tasks: 0/2 nodes: 2 insufficient memory".into();
        assert_eq!(
            progress_line("web", &progress(&r)),
            "web: 0/3 running (unplaced: 3 tasks: 0/2 nodes: 2 insufficient memory)"
        );
    }

    #[test]
    fn failures_of_the_current_revision_are_reported() {
        let failed = {
            let mut v = view(
                "abcdef0123456789",
                2,
                DesiredState::Running,
                TaskState::Failed,
                "",
            );
            v.status.as_mut().unwrap().message = "manifest unknown".into();
            v
        };
        let p = progress(&resp(1, vec![failed]));
        assert_eq!(p.failures.len(), 1);
        assert!(p.failures[0].1.contains("manifest unknown"));
    }
}
