//! `rctl rollout start|promote|abort|explain|status|history NAME`: rolling a service out to
//! another image (surge-first or as a canary), a service's kept revisions and where its
//! latest change stands; and what every change prints (`warn`, `confirm`, `report`), which
//! `apply` and `rollback` share.

use std::time::Duration;

use clap::Subcommand;
use rctl_api::pb::{
    ApplyRequest, CanaryRollout, CanaryState, ControlRolloutRequest, InspectServiceResponse,
    Revision, RevisionHistoryRequest,
};
use serde::Serialize;

use crate::client::Conn;
use crate::error::CliError;
use crate::global::Global;
use crate::output::{print_json, print_table, rfc3339, Format};
use crate::values;

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Roll the service out to another image (surge-first per [update]); exit 3 if rctl
    /// rolls it back by itself because the new revision never turns healthy.
    Start {
        /// The service.
        name: String,
        /// The image to roll out: NAME[:TAG] or NAME@sha256:DIGEST.
        #[arg(long)]
        image: String,
        /// Why, recorded with the new revision (default: "image: OLD → NEW").
        #[arg(short = 'm', long)]
        message: Option<String>,
        /// Block until every task runs the new revision, healthy (or it is rolled back).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits before it gives up (exit 4; the change stays in place).
        #[arg(long, default_value = "5m", value_parser = values::duration)]
        timeout: Duration,
        /// Roll out as a canary per [canary]: canary.replicas new tasks next to the stable
        /// ones, traffic moved step by step while the LB's figures pass the rules, then
        /// finished (exit 0) or rolled back by itself (exit 3).
        #[arg(long)]
        canary: bool,
        /// `json`: the result as `rollout status -o json` prints it, once the change is
        /// written (or, with --wait, once it ended); progress goes to stderr.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Pass the running canary's current step now (at the last step: finish it).
    Promote {
        /// The service.
        name: String,
    },
    /// Roll the running canary back (its weight to 0 first, then its tasks stop).
    Abort {
        /// The service.
        name: String,
    },
    /// Each judged canary step's figures (requests, 5xx, error rate, p99 canary vs stable)
    /// and the rule that decided.
    Explain {
        /// The service.
        name: String,
        /// Output format: table (default) or json.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Where the service's latest change stands: rolling, done or rolled_back (and why).
    Status {
        /// The service.
        name: String,
        /// Block until the latest change is done (exit 0) or rolled back (exit 3).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits before it gives up (exit 4; the rollout goes on).
        #[arg(long, default_value = "5m", value_parser = values::duration)]
        timeout: Duration,
        /// Output format: table (default) or json.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// The kept revisions of a service (newest 10), with who made each and why.
    History {
        /// The service.
        name: String,
        /// Output format: table (default) or json.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
}

impl RolloutCommand {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        let conn = &mut g.connect().await?;
        match self {
            RolloutCommand::Start {
                name,
                image,
                message,
                wait,
                timeout,
                canary,
                output,
            } => {
                let res = start(conn, &name, &image, message, canary, wait, timeout, output).await;
                report(conn, &name, output, res).await
            }
            RolloutCommand::Promote { name } => control(conn, &name, "promote").await,
            RolloutCommand::Abort { name } => control(conn, &name, "abort").await,
            RolloutCommand::Explain { name, output } => explain(conn, &name, output).await,
            RolloutCommand::Status {
                name,
                wait,
                timeout,
                output,
            } => {
                let waited = match wait {
                    true => wait_status(conn, &name, timeout).await,
                    false => Ok(()),
                };
                // Rolled back (3) or timed out (4): the status is printed all the same,
                // as `rollout start -o json` does.
                match waited {
                    Ok(()) | Err(CliError::RolledBack(_) | CliError::Timeout(_)) => {
                        status(conn, &name, output).await?;
                        waited
                    }
                    Err(e) => Err(e),
                }
            }
            RolloutCommand::History { name, output } => history(conn, &name, output).await,
        }
    }
}

/// One entry of `rollout history -o json` (stable field names).
#[derive(Debug, Serialize, PartialEq)]
pub struct RevisionJson {
    pub revision: u64,
    pub image: String,
    pub who: String,
    pub why: String,
    pub created: String,
    /// True for the revision the service runs (or rolls to) now.
    pub current: bool,
}

pub fn revision_json(r: &Revision, current: u64) -> RevisionJson {
    let cause = r.cause.clone().unwrap_or_default();
    RevisionJson {
        revision: r.revision,
        image: r.spec.as_ref().map(|s| s.image.clone()).unwrap_or_default(),
        who: cause.who,
        why: cause.why,
        created: rfc3339(cause.unix_ms),
        current: r.revision == current,
    }
}

/// `rollout status -o json` (PRODUCT.md's field names).
#[derive(Debug, Serialize, PartialEq)]
pub struct StatusJson {
    pub service: String,
    pub revision: u64,
    /// "rolling", "done" or "rolled_back".
    pub state: &'static str,
    /// The canary step (index into `canary.steps`); null outside a canary.
    pub step: Option<u32>,
    pub weights: Vec<WeightJson>,
    pub started: String,
    pub finished: String,
    pub reason: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct WeightJson {
    pub revision: u64,
    pub weight: u32,
}

/// Where the service's latest revision stands: rolling while tasks of another revision or
/// not yet healthy ones remain; rolled back when the scheduler made it by going back.
pub fn status_json(resp: &InspectServiceResponse) -> StatusJson {
    let svc = resp.service.clone().unwrap_or_default();
    let cause = svc.cause.clone().unwrap_or_default();
    let progress = crate::wait::progress(resp);
    // The service's canary, while it runs or when it decided the revision it is on now.
    let canary = resp.canary.as_ref().filter(|r| {
        r.canary_revision == svc.revision
            || (r.stable_revision == svc.revision && r.state() == CanaryState::RolledBack)
    });
    let state = match canary.map(|r| r.state()) {
        Some(CanaryState::RolledBack) => "rolled_back",
        Some(CanaryState::Starting | CanaryState::Stepping) => "canary",
        Some(CanaryState::RollingBack) => "rolling_back",
        Some(CanaryState::Finishing) => "rolling",
        _ => match (cause.automatic, progress.done()) {
            (true, _) => "rolled_back",
            (false, true) => "done",
            (false, false) => "rolling",
        },
    };
    // Done when the last task of the revision came up.
    let finished = resp
        .tasks
        .iter()
        .filter(|v| v.task.as_ref().is_some_and(|t| t.revision == svc.revision))
        .filter_map(|v| v.status.as_ref().map(|s| s.started_unix_ms))
        .max()
        .filter(|_| progress.done())
        .unwrap_or(0);
    StatusJson {
        service: svc
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        revision: svc.revision,
        state,
        step: canary
            .filter(|r| r.state() == CanaryState::Stepping)
            .map(|r| r.step),
        weights: svc
            .traffic
            .map(|t| {
                t.weights
                    .into_iter()
                    .map(|w| WeightJson {
                        revision: w.revision,
                        weight: w.weight,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        started: rfc3339(cause.unix_ms),
        finished: rfc3339(finished),
        reason: match canary {
            Some(r) if !r.reason.is_empty() => r.reason.clone(),
            _ if cause.automatic => cause.why,
            _ => String::new(),
        },
    }
}

pub async fn status(conn: &mut Conn, name: &str, format: Format) -> Result<(), CliError> {
    let resp = conn.inspect_service(name).await?;
    let s = status_json(&resp);
    match format {
        Format::Json => print_json(&s),
        Format::Table => status_lines(&s),
    }
    Ok(())
}

/// The human `rollout status`: one line, and the reason when there is one.
fn status_lines(s: &StatusJson) {
    println!("{}: revision {} {}", s.service, s.revision, s.state);
    if !s.reason.is_empty() {
        println!("reason: {}", s.reason);
    }
}

/// How often `rollout status --wait` looks again.
const STATUS_POLL: Duration = Duration::from_millis(500);

/// What `rollout status --wait` does with a state: keep waiting, or end with this result.
pub fn settled(state: &str, name: &str, reason: &str) -> Option<Result<(), CliError>> {
    match state {
        "done" => Some(Ok(())),
        "rolled_back" => Some(Err(CliError::RolledBack(format!(
            "{name} was rolled back: {reason}"
        )))),
        _ => None,
    }
}

/// `rollout status --wait`: polls until the latest change is done or rolled back, or the
/// timeout passes (exit 4, the rollout goes on). Prints each new state on stderr.
async fn wait_status(conn: &mut Conn, name: &str, timeout: Duration) -> Result<(), CliError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let s = status_json(&conn.inspect_service(name).await?);
        let line = format!("{}: revision {} {}", s.service, s.revision, s.state);
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        // The status itself is printed by the caller, as without --wait.
        if let Some(result) = settled(s.state, name, &s.reason) {
            return result;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Timeout(format!(
                "timed out after {} waiting for {name} (revision {} is {}); the rollout goes on (see: rctl rollout status {name})",
                humantime::format_duration(timeout),
                s.revision,
                s.state
            )));
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
}

/// Who the CLI says makes a change; a client certificate's CN overrides it on the server
/// (over mutual TLS the server takes the certificate's name, whatever this says).
pub fn who() -> String {
    let account = || {
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
    };
    who_of(
        std::env::var("USER").ok(),
        std::env::var("LOGNAME").ok(),
        account,
    )
}

/// `$USER`, else `$LOGNAME`, else the account name of the process's uid: the first that
/// is not blank.
pub fn who_of(
    user: Option<String>,
    logname: Option<String>,
    account: impl FnOnce() -> Option<String>,
) -> String {
    let given = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    given(user)
        .or_else(|| given(logname))
        .or_else(|| given(account()))
        .unwrap_or_default()
}

pub async fn history(conn: &mut Conn, name: &str, format: Format) -> Result<(), CliError> {
    let svc = conn
        .inspect_service(name)
        .await?
        .service
        .unwrap_or_default();
    let revisions = conn
        .client
        .revision_history(RevisionHistoryRequest {
            service: name.into(),
        })
        .await
        .map_err(|s| conn.err(s))?
        .into_inner()
        .revisions;
    let rows: Vec<RevisionJson> = revisions
        .iter()
        .map(|r| revision_json(r, svc.revision))
        .collect();
    match format {
        Format::Json => print_json(&rows),
        Format::Table => print_table(
            &["REVISION", "IMAGE", "CREATED", "BY", "CHANGE"],
            &rows
                .iter()
                .map(|r| {
                    let mark = if r.current { " *" } else { "" };
                    vec![
                        format!("{}{mark}", r.revision),
                        r.image.clone(),
                        r.created.clone(),
                        r.who.clone(),
                        r.why.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

/// `rollout start NAME --image IMG [--canary]`: the service's current spec with another
/// image, written like `apply`. Rolling: a new revision, rolled surge-first per `[update]`.
/// Canary: the new revision next to the stable tasks; the scheduler leader steps it (see
/// `rollout status`/`explain`).
#[allow(clippy::too_many_arguments)]
pub async fn start(
    conn: &mut Conn,
    name: &str,
    image: &str,
    message: Option<String>,
    canary: bool,
    wait: bool,
    timeout: Duration,
    format: Format,
) -> Result<(), CliError> {
    let svc = conn
        .inspect_service(name)
        .await?
        .service
        .unwrap_or_default();
    let stable = svc.revision;
    let mut spec = svc.spec.unwrap_or_default();
    if spec.image == image {
        return Err(CliError::Failed(format!(
            "service {name:?} already runs {image} (revision {stable}); nothing to roll out"
        )));
    }
    spec.image = image.to_string();
    let req = ApplyRequest {
        spec: Some(spec),
        who: who(),
        message: message.unwrap_or_default(),
        // A second rollout while one runs is refused, naming the running revision.
        exclusive: true,
        canary,
    };
    let resp = conn
        .write(|mut c| {
            let req = req.clone();
            async move { c.apply(req).await }
        })
        .await?;
    warn(&resp.warning);
    let rev = resp.service.map(|s| s.revision).unwrap_or(0);
    if canary {
        confirm(
            format,
            &format!(
                "service {name}: canary of {image} (revision {rev}) next to revision {stable}"
            ),
        );
        if wait {
            wait_canary(conn, name, rev, timeout).await?;
        }
    } else {
        confirm(
            format,
            &format!("service {name} rolling out {image} (revision {rev})"),
        );
        if wait {
            crate::wait::services_from(conn, &[name.to_string()], &[rev], timeout).await?;
        }
    }
    Ok(())
}

/// Polls until the canary of revision `canary` is done (Ok), rolled back (exit 3) or
/// `timeout` passed (exit 4), printing each state or step change.
async fn wait_canary(
    conn: &mut Conn,
    name: &str,
    canary: u64,
    timeout: Duration,
) -> Result<(), CliError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let resp = conn.inspect_service_until(name, deadline).await?;
        let svc = resp.service.unwrap_or_default();
        // A rollback of the canary is the scheduler's (automatic): judged below.
        if let Some(why) = crate::wait::overtaken(name, &svc, canary) {
            return Err(CliError::Failed(why));
        }
        let r = resp.canary.unwrap_or_default();
        if r.canary_revision == canary {
            let line = canary_line(name, &r);
            if line != last {
                eprintln!("{line}");
                last = line;
            }
            match r.state() {
                CanaryState::Done => return Ok(()),
                CanaryState::RolledBack => {
                    return Err(CliError::RolledBack(format!(
                        "{name}: canary revision {canary} rolled back: {}",
                        r.reason
                    )))
                }
                _ => {}
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Timeout(format!(
                "{name}: canary revision {canary} still running after {}s ({last}); it goes on (rctl rollout status {name})",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One progress line of a canary: its state, step and weight.
pub fn canary_line(name: &str, r: &CanaryRollout) -> String {
    let state = canary_state(r.state());
    match r.state() {
        CanaryState::Stepping => format!(
            "{name}: canary revision {} step {} ({} judged)",
            r.canary_revision,
            r.step + 1,
            r.steps.len()
        ),
        CanaryState::RollingBack | CanaryState::RolledBack => format!(
            "{name}: canary revision {} {state}: {}",
            r.canary_revision, r.reason
        ),
        _ => format!("{name}: canary revision {} {state}", r.canary_revision),
    }
}

/// The words `rollout status` uses for a canary's state.
pub fn canary_state(s: CanaryState) -> &'static str {
    match s {
        CanaryState::Unspecified => "unknown",
        CanaryState::Starting => "canary starting",
        CanaryState::Stepping => "canary",
        CanaryState::Finishing => "finishing",
        CanaryState::Done => "done",
        CanaryState::RollingBack => "rolling_back",
        CanaryState::RolledBack => "rolled_back",
    }
}

/// `rollout promote|abort NAME`.
pub async fn control(conn: &mut Conn, name: &str, action: &str) -> Result<(), CliError> {
    let req = ControlRolloutRequest {
        service: name.into(),
        action: action.into(),
    };
    conn.write(|mut c| {
        let req = req.clone();
        async move { c.control_rollout(req).await }
    })
    .await?;
    let done = if action == "promote" {
        "promoted"
    } else {
        "aborted"
    };
    println!("service {name}: canary {done} (the scheduler acts within a second)");
    Ok(())
}

/// One judged step of `rollout explain -o json`.
#[derive(Debug, Serialize, PartialEq)]
pub struct StepJson {
    pub step: usize,
    pub percent: u32,
    pub canary_requests: u64,
    pub canary_5xx: u64,
    pub canary_error_rate: f64,
    pub stable_requests: u64,
    pub stable_5xx: u64,
    pub canary_p99_us: u64,
    pub stable_p99_us: u64,
    /// Canary p99 / stable p99; null without stable traffic.
    pub p99_ratio: Option<f64>,
    pub verdict: String,
    pub rule: String,
}

pub fn steps_json(r: &CanaryRollout) -> Vec<StepJson> {
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    r.steps
        .iter()
        .enumerate()
        .map(|(i, s)| StepJson {
            step: i + 1,
            percent: s.percent,
            canary_requests: s.canary_requests,
            canary_5xx: s.canary_errors,
            canary_error_rate: ratio(s.canary_errors, s.canary_requests),
            stable_requests: s.stable_requests,
            stable_5xx: s.stable_errors,
            canary_p99_us: s.canary_p99_us,
            stable_p99_us: s.stable_p99_us,
            p99_ratio: (s.stable_requests > 0 && s.stable_p99_us > 0)
                .then(|| ratio(s.canary_p99_us, s.stable_p99_us)),
            verdict: s.verdict.clone(),
            rule: s.rule.clone(),
        })
        .collect()
}

pub async fn explain(conn: &mut Conn, name: &str, format: Format) -> Result<(), CliError> {
    let resp = conn.inspect_service(name).await?;
    let Some(r) = resp.canary else {
        return Err(CliError::Failed(format!(
            "service {name:?} never had a canary rollout (see: rctl rollout start {name} --image IMG --canary)"
        )));
    };
    let steps = steps_json(&r);
    match format {
        Format::Json => print_json(&steps),
        Format::Table => {
            println!("{}", canary_line(name, &r));
            print_table(
                &[
                    "STEP",
                    "WEIGHT",
                    "CANARY REQ",
                    "5XX",
                    "ERROR RATE",
                    "P99 CANARY",
                    "P99 STABLE",
                    "RATIO",
                    "VERDICT",
                    "RULE",
                ],
                &steps
                    .iter()
                    .map(|s| {
                        vec![
                            s.step.to_string(),
                            format!("{}%", s.percent),
                            s.canary_requests.to_string(),
                            s.canary_5xx.to_string(),
                            format!("{:.2}%", s.canary_error_rate * 100.0),
                            format!("{} µs", s.canary_p99_us),
                            format!("{} µs", s.stable_p99_us),
                            s.p99_ratio
                                .map(|r| format!("{r:.2}"))
                                .unwrap_or_else(|| "n/a".into()),
                            s.verdict.clone(),
                            s.rule.clone(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
        }
    }
    Ok(())
}

/// A change the scheduler took with a caveat (e.g. its image could not be checked): one
/// `warning:` line on stderr, so stdout stays the change's own output.
pub fn warn(warning: &str) {
    if !warning.is_empty() {
        eprintln!("warning: {warning}");
    }
}

/// The line saying what a change did: on stdout, or on stderr when stdout is the JSON
/// document's alone (`-o json`).
pub fn confirm(format: Format, line: &str) {
    match format {
        Format::Json => eprintln!("{line}"),
        Format::Table => println!("{line}"),
    }
}

/// After a change (and its wait, if any) ended with `res`: with `-o json`, the service's
/// rollout status as one JSON document on stdout — also when the wait failed, so a CI job
/// reads the state next to the exit code (3 rolled back, 4 timed out).
pub async fn report(
    conn: &mut Conn,
    name: &str,
    format: Format,
    res: Result<(), CliError>,
) -> Result<(), CliError> {
    if format == Format::Json {
        // The change's own outcome decides the exit code; a failed status read only
        // matters when the change itself went through.
        match (conn.inspect_service(name).await, &res) {
            (Ok(r), _) => print_json(&status_json(&r)),
            (Err(e), Ok(())) => return Err(e),
            (Err(_), Err(_)) => {}
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_is_user_else_logname_else_the_account() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(who_of(s("ann"), s("bob"), || s("root")), "ann");
        assert_eq!(who_of(None, s("bob"), || s("root")), "bob");
        assert_eq!(who_of(s(" "), None, || s("root")), "root");
        assert_eq!(who_of(None, None, || None), "");
    }

    #[test]
    fn status_wait_ends_on_done_or_rolled_back_only() {
        assert!(matches!(settled("done", "web", ""), Some(Ok(()))));
        let e = settled("rolled_back", "web", "canary 5xx")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert_eq!(e.to_string(), "web was rolled back: canary 5xx");
        for state in ["rolling", "canary", "rolling_back"] {
            assert!(settled(state, "web", "").is_none(), "{state}");
        }
    }
    use rctl_api::pb::{RevisionCause, ServiceSpec};

    #[test]
    fn history_rows_carry_who_why_and_the_current_mark() {
        let r = Revision {
            service: "web".into(),
            revision: 2,
            spec: Some(ServiceSpec {
                image: "web:2".into(),
                ..Default::default()
            }),
            cause: Some(RevisionCause {
                who: "ann".into(),
                why: "image: web:1 → web:2".into(),
                unix_ms: 1_700_000_000_000,
                automatic: false,
            }),
        };
        let j = revision_json(&r, 2);
        assert_eq!(
            j,
            RevisionJson {
                revision: 2,
                image: "web:2".into(),
                who: "ann".into(),
                why: "image: web:1 → web:2".into(),
                created: "2023-11-14T22:13:20Z".into(),
                current: true,
            }
        );
        assert!(!revision_json(&r, 3).current);
    }

    #[test]
    fn status_says_rolling_done_or_rolled_back() {
        use rctl_api::pb::{DesiredState, Service, Task, TaskState, TaskStatus, TaskView};
        let view = |rev: u64, state: TaskState, started: i64| {
            let mut t = Task {
                id: format!("t{rev}{started}"),
                revision: rev,
                ..Default::default()
            };
            t.set_desired_state(DesiredState::Running);
            let mut s = TaskStatus {
                started_unix_ms: started,
                ..Default::default()
            };
            s.set_state(state);
            TaskView {
                task: Some(t),
                status: Some(s),
                ..Default::default()
            }
        };
        let mut resp = InspectServiceResponse {
            service: Some(Service {
                spec: Some(ServiceSpec {
                    name: "web".into(),
                    replicas: 2,
                    ..Default::default()
                }),
                revision: 2,
                cause: Some(RevisionCause {
                    unix_ms: 1_700_000_000_000,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            tasks: vec![
                view(1, TaskState::Running, 1),
                view(2, TaskState::Running, 1_700_000_001_000),
            ],
            unplaced: String::new(),
            canary: None,
        };
        let s = status_json(&resp);
        assert_eq!((s.state, s.finished.as_str()), ("rolling", ""));
        assert_eq!(s.started, "2023-11-14T22:13:20Z");
        resp.tasks[0] = view(2, TaskState::Running, 1_700_000_002_000);
        let s = status_json(&resp);
        assert_eq!(
            (s.state, s.finished.as_str()),
            ("done", "2023-11-14T22:13:22Z")
        );
        let svc = resp.service.as_mut().unwrap();
        svc.cause = Some(RevisionCause {
            why: "automatic rollback to revision 1: ...".into(),
            automatic: true,
            ..Default::default()
        });
        let s = status_json(&resp);
        assert_eq!(s.state, "rolled_back");
        assert_eq!(s.reason, "automatic rollback to revision 1: ...");
        assert_eq!(s.step, None);
    }

    #[test]
    fn a_canary_shows_its_state_step_and_reason() {
        let mut r = CanaryRollout {
            stable_revision: 1,
            canary_revision: 2,
            step: 1,
            ..Default::default()
        };
        r.set_state(CanaryState::Stepping);
        let mut resp = InspectServiceResponse {
            service: Some(rctl_api::pb::Service {
                revision: 2,
                traffic: Some(rctl_api::pb::TrafficSplit {
                    weights: vec![rctl_api::pb::RevisionWeight {
                        revision: 2,
                        weight: 50,
                    }],
                }),
                ..Default::default()
            }),
            canary: Some(r.clone()),
            ..Default::default()
        };
        let s = status_json(&resp);
        assert_eq!((s.state, s.step), ("canary", Some(1)));
        assert_eq!(
            s.weights,
            vec![WeightJson {
                revision: 2,
                weight: 50
            }]
        );
        // Rolled back: the service is on its stable revision again, with the reason.
        r.set_state(CanaryState::RolledBack);
        r.reason = "error rate 50.00% > max_error_rate 5.00%".into();
        resp.canary = Some(r);
        resp.service.as_mut().unwrap().revision = 1;
        let s = status_json(&resp);
        assert_eq!((s.state, s.step), ("rolled_back", None));
        assert!(s.reason.starts_with("error rate 50.00%"), "{}", s.reason);
    }
}
