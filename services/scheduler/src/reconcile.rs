//! The reconcile function: desired state (services) + actual state (nodes, tasks, statuses)
//! in, a [`Plan`] of actions out. Pure: no I/O, no clock (time is an input), no randomness
//! (the controller names new tasks). Running it again on the result of its own plan yields
//! an empty plan.
//!
//! # Vocabulary
//! - *active* task: desired state running. *Retired*: desired state shutdown, kept as history.
//! - *live* active task: on a node that still holds its lease and not finished (exited/failed).
//! - *finished* active task: exited or failed; it keeps its slot until its restart delay is
//!   over, then it is retired and a replacement takes the slot.
//! - *draining* node: marked by an operator; nothing new is placed there and its tasks are
//!   replaced elsewhere exactly like old-revision tasks (surge first, retired once a
//!   replacement is ready).
//! - *drain gate*: a retired task that serves traffic is stopped only after its endpoint is
//!   withdrawn and every live rctl-lb reported it drained, or `[update] drain` passed
//!   ([`crate::drain`]), so no request in flight through an LB meets a SIGTERM.

use std::collections::{BTreeSet, HashMap, HashSet};

use rctl_api::pb::{CanaryState, DesiredState, Service, Task, TaskState};

use crate::drain::{drain_gate, drain_ms, needs_drain, Drain, DEFAULT_DRAIN_MS};
use crate::placement;
use crate::progress::{progress, Progress};
use crate::snapshot::Snapshot;

/// How many retired tasks of a service are kept for `ps -a`.
pub const HISTORY_PER_SERVICE: usize = 5;
/// First restart delay of a finished task; doubles with each recent failure of the service.
pub const RESTART_DELAY_MS: i64 = 1_000;
/// Upper bound of the restart delay.
pub const MAX_RESTART_DELAY_MS: i64 = 30_000;

/// One thing to do. Task-changing actions are applied to etcd first; RPCs follow.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create a new task (the controller assigns its id) and send it to its node.
    Place {
        service: String,
        node: String,
        slot: u32,
        revision: u64,
    },
    /// Set the task's desired state to shutdown and stop it on its node.
    Retire { task: Task, reason: &'static str },
    /// Forget the task: its task and status keys go.
    Delete { task: Task, reason: &'static str },
    /// The task should run but its node has not reported it yet: (re)send RunTask.
    EnsureRunning { task: Task },
    /// The task is retired but its node still reports it alive: (re)send StopTask.
    EnsureStopped { task: Task },
    /// The task is retired but still has an endpoint: delete it so the LBs drain the task
    /// before it is stopped.
    Withdraw { task: Task },
}

/// Why a service has fewer tasks than it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    pub service: String,
    pub missing: u32,
    /// E.g. "0/3 nodes: 2 insufficient memory, 1 constraint not met".
    pub reason: String,
}

impl Unplaced {
    /// "2 tasks: 0/3 nodes: ...", as `service inspect` shows it.
    pub fn describe(&self) -> String {
        let s = if self.missing == 1 { "" } else { "s" };
        format!("{} task{s}: {}", self.missing, self.reason)
    }
}

/// What one pass does. The leader writes `progress` first; when any of it is written the
/// pass ends there, and the next one reconciles tasks against the changed services.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Service changes: automatic rollbacks and canary steps.
    pub progress: Progress,
    pub actions: Vec<Action>,
    pub unplaced: Vec<Unplaced>,
}

impl Plan {
    /// True when nothing changes state in etcd (resending RPCs does not count).
    pub fn is_quiet(&self) -> bool {
        self.progress.rollbacks.is_empty()
            && self.progress.canaries.is_empty()
            && self.actions.iter().all(|a| {
                matches!(
                    a,
                    Action::EnsureRunning { .. } | Action::EnsureStopped { .. }
                )
            })
    }
}

pub const REASON_NODE_LOST: &str = "node lost";
pub const REASON_SCALED_DOWN: &str = "scaled down";
pub const REASON_REPLACED: &str = "replaced by a newer revision";
pub const REASON_DRAINED: &str = "node draining";
pub const REASON_FINISHED: &str = "task finished; restarting";
pub const REASON_SERVICE_REMOVED: &str = "service removed";
pub const REASON_HISTORY: &str = "history limit";
pub const REASON_NO_NODES: &str = placement::NO_NODES;

/// While a canary runs (starting, stepping, rolling back), the service's stable tasks stay as
/// they are and `[canary] replicas` tasks of the canary revision run next to them: returns
/// (stable revision, canary revision, canary tasks wanted). Finishing is an ordinary
/// surge-first update to the canary revision.
fn canary_of(s: &Snapshot<'_>, svc: &Service) -> Option<(u64, u64, usize)> {
    let spec = svc.spec.as_ref()?;
    let r = s.rollouts.get(&spec.name)?;
    let running = matches!(
        r.state(),
        CanaryState::Starting | CanaryState::Stepping | CanaryState::RollingBack
    );
    let replicas = spec.canary.as_ref().map(|c| c.replicas).unwrap_or(1).max(1);
    (running && r.canary_revision == svc.revision && r.stable_revision != svc.revision).then_some((
        r.stable_revision,
        r.canary_revision,
        replicas as usize,
    ))
}
/// The action for a retired task still alive on its node, through the drain gate.
fn stop_retired(s: &Snapshot<'_>, t: &Task, drain_ms: i64, plan: &mut Plan) {
    let step = if needs_drain(t, s.statuses.get(&t.id)) {
        drain_gate(
            s.endpoints.contains(&t.id),
            s.lbs,
            s.drained.get(&t.id),
            t.retired_unix_ms,
            drain_ms,
            s.now_ms,
        )
    } else {
        Drain::Stop
    };
    match step {
        Drain::Withdraw => plan.actions.push(Action::Withdraw { task: t.clone() }),
        Drain::Wait => {}
        Drain::Stop => plan.actions.push(Action::EnsureStopped { task: t.clone() }),
    }
}

fn state_of(s: &Snapshot<'_>, t: &Task) -> Option<TaskState> {
    s.statuses.get(&t.id).map(|st| st.state())
}

fn is_finished(state: Option<TaskState>) -> bool {
    matches!(state, Some(TaskState::Exited | TaskState::Failed))
}

fn is_ready(s: &Snapshot<'_>, t: &Task) -> bool {
    s.statuses.get(&t.id).is_some_and(|st| {
        st.state() == TaskState::Running && (t.container_port == 0 || st.health == "healthy")
    })
}

/// Delay before a finished task is replaced, growing with the service's recent failures.
pub fn restart_delay_ms(recent_failures: usize) -> i64 {
    let shift = recent_failures.min(16) as u32;
    (RESTART_DELAY_MS << shift).min(MAX_RESTART_DELAY_MS)
}

/// The plan for `s`: rollout progress ([`crate::progress`]), then the task actions that
/// bring every service to its desired tasks.
pub fn reconcile(s: &Snapshot<'_>) -> Plan {
    let mut plan = Plan {
        progress: progress(s),
        ..Default::default()
    };
    let live_nodes: HashSet<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
    let services: HashMap<&str, &Service> = s
        .services
        .iter()
        .filter_map(|svc| svc.spec.as_ref().map(|spec| (spec.name.as_str(), svc)))
        .collect();

    let mut by_service: HashMap<&str, Vec<&Task>> = HashMap::new();
    for t in s.tasks {
        by_service.entry(t.service.as_str()).or_default().push(t);
    }

    // What runs on every live node, service tasks and one-off containers alike: what
    // placement spreads against and what it finds free.
    let mut usage = s.usage();

    let mut names: BTreeSet<&str> = by_service.keys().copied().collect();
    names.extend(services.keys().copied());
    for name in names {
        let tasks = by_service.get(name).map(Vec::as_slice).unwrap_or(&[]);
        match services.get(name) {
            Some(svc) => reconcile_service(s, svc, tasks, &live_nodes, &mut usage, &mut plan),
            None => reconcile_removed(s, tasks, &live_nodes, &mut plan),
        }
    }
    plan
}

/// The task an [`Action::Place`] creates, running what `spec` (its revision's) runs. The
/// caller names it (`id`) and dates it: randomness and the clock stay outside.
pub fn new_task(
    spec: &rctl_api::pb::ServiceSpec,
    node: String,
    slot: u32,
    revision: u64,
    id: String,
    now_ms: i64,
) -> Task {
    Task {
        id,
        service: spec.name.clone(),
        node,
        revision,
        image: spec.image.clone(),
        command: spec.command.clone(),
        env: spec.env.clone(),
        container_port: spec.port.as_ref().map(|p| p.container).unwrap_or(0),
        desired_state: DesiredState::Running as i32,
        created_unix_ms: now_ms,
        resources: spec.resources,
        slot,
        health: spec.health.clone(),
        // tty, stdin, restart policy, stop signal and log rotation: the agent's defaults
        // until service specs carry them.
        ..Default::default()
    }
}

/// The node for one new one-off container asking `ask`: the filters and scores service
/// tasks go through, over what every task and container on each node asks
/// ([`Snapshot::usage`]). `Err` carries the summary ("0/3 nodes: ...").
pub fn place_container(s: &Snapshot<'_>, ask: placement::Ask) -> Result<String, String> {
    let usage = s.usage();
    let mut candidates = placement::candidates(s.nodes, s.draining, &usage, []);
    let request = placement::Request {
        ask,
        ..Default::default()
    };
    match placement::place(&mut candidates, &request, 1) {
        (chosen, None) => Ok(chosen.into_iter().next().expect("one placed")),
        (_, Some(why)) => Err(why),
    }
}

fn reconcile_removed(s: &Snapshot<'_>, tasks: &[&Task], live: &HashSet<&str>, plan: &mut Plan) {
    for t in tasks {
        let on_live = live.contains(t.node.as_str());
        if t.desired_state() == DesiredState::Running && on_live {
            plan.actions.push(Action::Retire {
                task: (*t).clone(),
                reason: REASON_SERVICE_REMOVED,
            });
        } else if !on_live || is_finished(state_of(s, t)) || state_of(s, t).is_none() {
            plan.actions.push(Action::Delete {
                task: (*t).clone(),
                reason: REASON_SERVICE_REMOVED,
            });
        } else {
            stop_retired(s, t, DEFAULT_DRAIN_MS, plan);
        }
    }
}

fn reconcile_service(
    s: &Snapshot<'_>,
    svc: &Service,
    tasks: &[&Task],
    live_nodes: &HashSet<&str>,
    usage: &mut HashMap<String, placement::Usage>,
    plan: &mut Plan,
) {
    let spec = svc
        .spec
        .as_ref()
        .expect("services without spec are filtered out");
    let want = spec.replicas as usize;
    let (active, retired): (Vec<&Task>, Vec<&Task>) = tasks
        .iter()
        .partition(|t| t.desired_state() == DesiredState::Running);

    let recent_failures = retired
        .iter()
        .filter(|t| state_of(s, t) == Some(TaskState::Failed))
        .count();
    let delay = restart_delay_ms(recent_failures);

    // Tasks that hold a slot: live ones and finished ones still in their restart delay.
    let mut holding: Vec<&Task> = Vec::new();
    for t in &active {
        if !live_nodes.contains(t.node.as_str()) {
            plan.actions.push(Action::Delete {
                task: (*t).clone(),
                reason: REASON_NODE_LOST,
            });
            continue;
        }
        let state = state_of(s, t);
        if is_finished(state) {
            let finished = s
                .statuses
                .get(&t.id)
                .map(|st| st.finished_unix_ms)
                .unwrap_or(0);
            if s.now_ms - finished >= delay {
                plan.actions.push(Action::Retire {
                    task: (*t).clone(),
                    reason: REASON_FINISHED,
                });
                continue;
            }
        } else if state.is_none() {
            plan.actions
                .push(Action::EnsureRunning { task: (*t).clone() });
        }
        holding.push(t);
    }

    let canary = canary_of(s, svc);
    let current_revision = canary.map(|(stable, _, _)| stable).unwrap_or(svc.revision);
    let canary_tasks: Vec<&Task> = match canary {
        Some((_, c, _)) => {
            let (c_tasks, rest): (Vec<&Task>, Vec<&Task>) =
                holding.iter().partition(|t| t.revision == c);
            holding = rest;
            c_tasks
        }
        None => Vec::new(),
    };

    // Tasks on a draining node are outdated just like old-revision ones: the same rolling
    // replacement moves them.
    let (current, old): (Vec<&Task>, Vec<&Task>) = holding
        .iter()
        .partition(|t| t.revision == current_revision && !s.draining.contains(&t.node));
    let mut to_place = 0usize;
    let mut to_retire: Vec<(&Task, &'static str)> = Vec::new();
    if old.is_empty() {
        if current.len() < want {
            to_place = want - current.len();
        } else {
            let extra = current.len() - want;
            to_retire.extend(
                scale_down_order(s, &current)
                    .into_iter()
                    .take(extra)
                    .map(|t| (t, REASON_SCALED_DOWN)),
            );
        }
    } else {
        // Rolling replacement per [update], surge first: at most `surge` new tasks beyond
        // the desired count at a time; an old task goes once a new one is ready in its
        // place, or earlier only while `unavailable` allows (never below
        // replicas - max_unavailable ready tasks).
        let (surge, unavailable) = update_limits(spec);
        let total = current.len() + old.len();
        if current.len() < want && total < want + surge {
            to_place = (want - current.len()).min(want + surge - total);
        }
        let ready_new = current.iter().filter(|t| is_ready(s, t)).count();
        let excess = (ready_new + old.len()).saturating_sub(want);
        let min_ready = want.saturating_sub(unavailable);
        let mut ready_now = ready_new + old.iter().filter(|t| is_ready(s, t)).count();
        let mut total_now = total;
        for (i, t) in scale_down_order(s, &old).into_iter().enumerate() {
            let ready = is_ready(s, t);
            let by_budget =
                unavailable > 0 && total_now > min_ready && (!ready || ready_now > min_ready);
            if i >= excess && !by_budget {
                break;
            }
            total_now -= 1;
            ready_now -= usize::from(ready);
            let reason = if t.revision == current_revision {
                REASON_DRAINED
            } else {
                REASON_REPLACED
            };
            to_retire.push((t, reason));
        }
        if current.len() > want {
            let extra = current.len() - want;
            to_retire.extend(
                scale_down_order(s, &current)
                    .into_iter()
                    .take(extra)
                    .map(|t| (t, REASON_SCALED_DOWN)),
            );
        }
    }

    for (t, reason) in to_retire {
        plan.actions.push(Action::Retire {
            task: t.clone(),
            reason,
        });
    }

    // What to place, by revision: the service's own, or during a canary the stable
    // revision's lost tasks (so `replicas` stable tasks keep serving next to the canary)
    // followed by the canary's missing ones.
    let mut placements = vec![(to_place, svc.revision)];
    if let Some((stable_revision, canary_revision, canary_want)) = canary {
        placements[0].1 = stable_revision;
        for t in scale_down_order(s, &canary_tasks)
            .into_iter()
            .skip(canary_want)
        {
            plan.actions.push(Action::Retire {
                task: t.clone(),
                reason: REASON_SCALED_DOWN,
            });
        }
        placements.push((
            canary_want.saturating_sub(canary_tasks.len()),
            canary_revision,
        ));
        holding.extend(canary_tasks.iter().copied());
    }

    let wanted: usize = placements.iter().map(|(n, _)| n).sum();
    if wanted > 0 {
        let service_nodes = holding.iter().map(|t| t.node.as_str());
        let mut candidates = placement::candidates(s.nodes, s.draining, usage, service_nodes);
        let request = placement::Request::of(spec);
        let (chosen, why) = placement::place(&mut candidates, &request, wanted);
        if let Some(reason) = why {
            plan.unplaced.push(Unplaced {
                service: spec.name.clone(),
                missing: (wanted - chosen.len()) as u32,
                reason,
            });
        }
        // A replacement takes over the slot of an old-revision task (web.2 stays web.2, as
        // in Docker); beyond those, the lowest slots no task holds.
        let taken: HashSet<u32> = holding.iter().map(|t| t.slot).collect();
        let current_slots: HashSet<u32> = current.iter().map(|t| t.slot).collect();
        let mut old_slots: Vec<u32> = old
            .iter()
            .map(|t| t.slot)
            .filter(|n| !current_slots.contains(n))
            .collect();
        old_slots.sort_unstable();
        old_slots.dedup();
        let mut free_slots = old_slots
            .into_iter()
            .chain((1u32..).filter(|n| !taken.contains(n)));
        for node in &chosen {
            usage.entry(node.clone()).or_default().add(request.ask);
        }
        // Stable replacements first: with too little room, the stable count matters more
        // than the canary's.
        let revisions = placements
            .iter()
            .flat_map(|&(n, revision)| std::iter::repeat_n(revision, n));
        for (node, revision) in chosen.into_iter().zip(revisions) {
            let slot = free_slots.next().expect("slots are unbounded");
            plan.actions.push(Action::Place {
                service: spec.name.clone(),
                node,
                slot,
                revision,
            });
        }
    }

    reconcile_history(s, svc, &retired, live_nodes, plan);
}

/// Retired tasks: make sure they stop (drained first), and keep only the newest few
/// finished ones.
fn reconcile_history(
    s: &Snapshot<'_>,
    svc: &Service,
    retired: &[&Task],
    live: &HashSet<&str>,
    plan: &mut Plan,
) {
    let mut done: Vec<&Task> = Vec::new();
    for t in retired {
        if !live.contains(t.node.as_str())
            || is_finished(state_of(s, t))
            || state_of(s, t).is_none()
        {
            done.push(t);
        } else {
            stop_retired(s, t, drain_ms(Some(svc)), plan);
        }
    }
    done.sort_by_key(|t| std::cmp::Reverse((t.created_unix_ms, t.id.clone())));
    for t in done.into_iter().skip(HISTORY_PER_SERVICE) {
        plan.actions.push(Action::Delete {
            task: t.clone(),
            reason: REASON_HISTORY,
        });
    }
}

/// (max_surge, max_unavailable) of a service's `[update]`: default 1 and 0; when both are
/// 0 nothing could ever move, so surge is 1.
pub fn update_limits(spec: &rctl_api::pb::ServiceSpec) -> (usize, usize) {
    let u = spec.update.unwrap_or(rctl_api::pb::UpdateSpec {
        max_surge: 1,
        ..Default::default()
    });
    let surge = if u.max_surge == 0 && u.max_unavailable == 0 {
        1
    } else {
        u.max_surge as usize
    };
    (surge, u.max_unavailable as usize)
}

/// Which tasks to stop first when there are too many: those not yet running, then those on
/// the nodes holding most of the service, then the highest slots.
fn scale_down_order<'a>(s: &Snapshot<'_>, tasks: &[&'a Task]) -> Vec<&'a Task> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for t in tasks {
        *per_node.entry(t.node.as_str()).or_default() += 1;
    }
    let mut v: Vec<&Task> = tasks.to_vec();
    v.sort_by_key(|t| {
        let running = state_of(s, t) == Some(TaskState::Running);
        (
            running,
            std::cmp::Reverse(per_node[t.node.as_str()]),
            std::cmp::Reverse(t.slot),
        )
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Loaded;
    use rctl_api::pb::{CanaryRollout, Node, ServiceSpec, TaskStatus};

    fn plan(
        services: &[Service],
        tasks: &[Task],
        statuses: &HashMap<String, TaskStatus>,
        nodes: &[Node],
        now_ms: i64,
    ) -> Plan {
        drained_plan(services, tasks, statuses, nodes, &[], now_ms)
    }

    fn drained_plan(
        services: &[Service],
        tasks: &[Task],
        statuses: &HashMap<String, TaskStatus>,
        nodes: &[Node],
        draining: &[&str],
        now_ms: i64,
    ) -> Plan {
        reconcile(&Snapshot {
            services,
            tasks,
            containers: &[],
            statuses,
            nodes,
            draining: &draining.iter().map(|n| n.to_string()).collect(),
            lbs: &HashSet::new(),
            drained: &HashMap::new(),
            endpoints: &HashSet::new(),
            rollouts: &HashMap::new(),
            revisions: &HashMap::new(),
            stats: &HashMap::new(),
            now_ms,
        })
    }

    fn service(name: &str, replicas: u32, revision: u64) -> Service {
        Service {
            spec: Some(ServiceSpec {
                name: name.into(),
                image: "img".into(),
                replicas,
                ..Default::default()
            }),
            revision,
            ..Default::default()
        }
    }

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            ..Default::default()
        }
    }

    fn task(id: &str, svc: &str, node: &str, slot: u32) -> Task {
        Task {
            id: id.into(),
            service: svc.into(),
            node: node.into(),
            slot,
            revision: 1,
            desired_state: DesiredState::Running as i32,
            ..Default::default()
        }
    }

    fn status(t: &Task, state: TaskState) -> (String, TaskStatus) {
        let mut st = TaskStatus {
            task_id: t.id.clone(),
            node: t.node.clone(),
            ..Default::default()
        };
        st.set_state(state);
        (t.id.clone(), st)
    }

    fn running(tasks: &[Task]) -> HashMap<String, TaskStatus> {
        tasks
            .iter()
            .map(|t| status(t, TaskState::Running))
            .collect()
    }

    fn places(p: &Plan) -> Vec<(String, u32)> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::Place { node, slot, .. } => Some((node.clone(), *slot)),
                _ => None,
            })
            .collect()
    }

    /// (revision, slot) of every placement.
    fn placed_revisions(p: &Plan) -> Vec<(u64, u32)> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::Place { revision, slot, .. } => Some((*revision, *slot)),
                _ => None,
            })
            .collect()
    }

    fn retired(p: &Plan) -> Vec<String> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::Retire { task, .. } => Some(task.id.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn scale_up_spreads_over_nodes_with_fresh_slots() {
        let svcs = [service("web", 5, 1)];
        let tasks = [task("a", "web", "h1", 1), task("b", "web", "h2", 2)];
        let st = running(&tasks);
        let nodes = [node("h1"), node("h2")];
        let p = plan(&svcs, &tasks, &st, &nodes, 0);
        assert_eq!(
            places(&p),
            vec![("h1".into(), 3), ("h2".into(), 4), ("h1".into(), 5)]
        );
        assert!(retired(&p).is_empty());
    }

    #[test]
    fn scale_down_retires_from_the_busiest_node_highest_slot_first() {
        let svcs = [service("web", 1, 1)];
        let tasks = [
            task("a", "web", "h1", 1),
            task("b", "web", "h2", 2),
            task("c", "web", "h1", 3),
        ];
        let st = running(&tasks);
        let nodes = [node("h1"), node("h2")];
        let p = plan(&svcs, &tasks, &st, &nodes, 0);
        assert_eq!(retired(&p), vec!["c".to_string(), "a".to_string()]);
        assert!(places(&p).is_empty());
    }

    #[test]
    fn scale_down_prefers_tasks_not_yet_running() {
        let svcs = [service("web", 1, 1)];
        let tasks = [task("a", "web", "h1", 1), task("b", "web", "h2", 2)];
        let st: HashMap<_, _> = [
            status(&tasks[0], TaskState::Running),
            status(&tasks[1], TaskState::Starting),
        ]
        .into();
        let nodes = [node("h1"), node("h2")];
        let p = plan(&svcs, &tasks, &st, &nodes, 0);
        assert_eq!(retired(&p), vec!["b".to_string()]);
    }

    #[test]
    fn tasks_of_a_lost_node_are_deleted_and_replaced_elsewhere() {
        let svcs = [service("web", 2, 1)];
        let tasks = [task("a", "web", "h1", 1), task("b", "web", "h2", 2)];
        let st = running(&tasks);
        let nodes = [node("h1"), node("h3")];
        let p = plan(&svcs, &tasks, &st, &nodes, 0);
        assert!(p.actions.contains(&Action::Delete {
            task: tasks[1].clone(),
            reason: REASON_NODE_LOST
        }));
        assert_eq!(places(&p), vec![("h3".into(), 2)]);
    }

    #[test]
    fn nothing_to_do_gives_no_actions() {
        let svcs = [service("web", 2, 1)];
        let tasks = [task("a", "web", "h1", 1), task("b", "web", "h2", 2)];
        let st = running(&tasks);
        let nodes = [node("h1"), node("h2")];
        let p = plan(&svcs, &tasks, &st, &nodes, 0);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn no_nodes_places_nothing_and_says_why() {
        let svcs = [service("web", 2, 1)];
        let st = HashMap::new();
        let p = plan(&svcs, &[], &st, &[], 0);
        assert!(places(&p).is_empty());
        assert_eq!(
            p.unplaced,
            vec![Unplaced {
                service: "web".into(),
                missing: 2,
                reason: REASON_NO_NODES.into()
            }]
        );
    }

    #[test]
    fn scale_to_zero_retires_everything_and_places_nothing() {
        let svcs = [service("web", 0, 1)];
        let tasks = [task("a", "web", "h1", 1), task("b", "web", "h2", 2)];
        let st = running(&tasks);
        let nodes = [node("h1"), node("h2")];
        let p = plan(&svcs, &tasks, &st, &nodes, 0);
        assert_eq!(retired(&p).len(), 2);
        assert!(places(&p).is_empty());
    }

    #[test]
    fn a_failed_task_keeps_its_slot_until_the_restart_delay_then_is_replaced_in_place() {
        let svcs = [service("web", 1, 1)];
        let tasks = [task("a", "web", "h1", 1)];
        let mut st: HashMap<_, _> = [status(&tasks[0], TaskState::Failed)].into();
        st.get_mut("a").unwrap().finished_unix_ms = 10_000;
        let nodes = [node("h1")];
        let early = plan(&svcs, &tasks, &st, &nodes, 10_500);
        assert_eq!(early, Plan::default());
        let later = plan(&svcs, &tasks, &st, &nodes, 11_000);
        assert_eq!(retired(&later), vec!["a".to_string()]);
        assert_eq!(places(&later), vec![("h1".into(), 1)]);
    }

    #[test]
    fn restart_delay_doubles_and_is_capped() {
        assert_eq!(restart_delay_ms(0), 1_000);
        assert_eq!(restart_delay_ms(2), 4_000);
        assert_eq!(restart_delay_ms(10), MAX_RESTART_DELAY_MS);
    }

    #[test]
    fn unreported_tasks_are_resent_to_their_node() {
        let svcs = [service("web", 1, 1)];
        let tasks = [task("a", "web", "h1", 1)];
        let st = HashMap::new();
        let nodes = [node("h1")];
        let p = plan(&svcs, &tasks, &st, &nodes, 0);
        assert_eq!(
            p.actions,
            vec![Action::EnsureRunning {
                task: tasks[0].clone()
            }]
        );
        assert!(p.is_quiet());
    }

    #[test]
    fn removed_service_tasks_are_retired_then_deleted_once_stopped() {
        let tasks = [task("a", "web", "h1", 1)];
        let st = running(&tasks);
        let nodes = [node("h1")];
        let p = plan(&[], &tasks, &st, &nodes, 0);
        assert_eq!(retired(&p), vec!["a".to_string()]);

        let mut gone = tasks[0].clone();
        gone.set_desired_state(DesiredState::Shutdown);
        let st: HashMap<_, _> = [status(&gone, TaskState::Exited)].into();
        let p = plan(&[], &[gone.clone()], &st, &nodes, 0);
        assert_eq!(
            p.actions,
            vec![Action::Delete {
                task: gone,
                reason: REASON_SERVICE_REMOVED
            }]
        );
    }

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_retired_serving_task_is_stopped_only_after_its_drain() {
        let svcs = [service("web", 0, 1)];
        let mut t = task("a", "web", "h1", 1);
        t.container_port = 80;
        t.set_desired_state(DesiredState::Shutdown);
        t.retired_unix_ms = 1_000;
        let mut st = running(std::slice::from_ref(&t));
        st.get_mut("a").unwrap().health = "healthy".into();
        let nodes = [node("h1")];
        let (lbs, endpoints) = (set(&["lb1"]), set(&["a"]));
        let mut drained = HashMap::new();
        let tasks = [t.clone()];
        let at = |endpoints: &HashSet<String>, drained: &HashMap<String, HashSet<String>>, now| {
            reconcile(&Snapshot {
                services: &svcs,
                tasks: &tasks,
                containers: &[],
                statuses: &st,
                nodes: &nodes,
                draining: &HashSet::new(),
                lbs: &lbs,
                drained,
                endpoints,
                rollouts: &HashMap::new(),
                revisions: &HashMap::new(),
                stats: &HashMap::new(),
                now_ms: now,
            })
            .actions
        };
        assert_eq!(
            at(&endpoints, &drained, 1_100),
            vec![Action::Withdraw { task: t.clone() }]
        );
        assert_eq!(at(&HashSet::new(), &drained, 1_200), vec![]);
        drained.insert("a".to_string(), set(&["lb1"]));
        assert_eq!(
            at(&HashSet::new(), &drained, 1_300),
            vec![Action::EnsureStopped { task: t.clone() }]
        );
        // Not serving (no port): stopped at once, no drain.
        let mut plain = t.clone();
        plain.container_port = 0;
        assert!(!needs_drain(&plain, st.get("a")));
        assert!(needs_drain(&t, st.get("a")));
    }

    #[test]
    fn a_canary_runs_next_to_untouched_stable_tasks_and_leaves_after_a_rollback() {
        let mut svc = service("web", 2, 2);
        svc.spec.as_mut().unwrap().canary = Some(rctl_api::pb::CanarySpec {
            replicas: 1,
            ..Default::default()
        });
        let stable = [task("a", "web", "h1", 1), task("b", "web", "h2", 2)];
        let st = running(&stable);
        let nodes = [node("h1"), node("h2")];
        let mut r = CanaryRollout {
            stable_revision: 1,
            canary_revision: 2,
            ..Default::default()
        };
        r.set_state(CanaryState::Starting);
        let rollouts: HashMap<String, CanaryRollout> = [("web".to_string(), r.clone())].into();
        let at = |svcs: &[Service], tasks: &[Task], st: &HashMap<String, TaskStatus>, rollouts| {
            reconcile(&Snapshot {
                services: svcs,
                tasks,
                containers: &[],
                statuses: st,
                nodes: &nodes,
                draining: &HashSet::new(),
                lbs: &HashSet::new(),
                drained: &HashMap::new(),
                endpoints: &HashSet::new(),
                rollouts,
                revisions: &HashMap::new(),
                stats: &HashMap::new(),
                now_ms: 0,
            })
        };
        let p = at(std::slice::from_ref(&svc), &stable, &st, &rollouts);
        assert_eq!(retired(&p), Vec::<String>::new(), "stable tasks stay");
        let placed = placed_revisions(&p);
        assert_eq!(placed, vec![(2, 3)], "one canary task, in a fresh slot");

        // With the canary task running, nothing changes.
        let mut c = task("c", "web", "h1", 3);
        c.revision = 2;
        let all = [stable[0].clone(), stable[1].clone(), c.clone()];
        let p = at(std::slice::from_ref(&svc), &all, &running(&all), &rollouts);
        assert_eq!(p.actions, vec![]);

        // A stable task lost mid-canary (its node gone, task deleted): replaced at once
        // with the STABLE revision in its slot, so `replicas` stable tasks keep serving
        // next to the canary's; the canary task stays as it is.
        let mut stepping = rollouts["web"].clone();
        stepping.set_state(CanaryState::Stepping);
        let stepping: HashMap<String, CanaryRollout> = [("web".to_string(), stepping)].into();
        let left = [stable[0].clone(), c.clone()];
        let p = at(
            std::slice::from_ref(&svc),
            &left,
            &running(&left),
            &stepping,
        );
        let placed = placed_revisions(&p);
        assert_eq!(placed, vec![(1, 2)], "{:?}", p.actions);
        assert_eq!(retired(&p), Vec::<String>::new());
        assert!(p.unplaced.is_empty(), "{:?}", p.unplaced);
        // Both missing at once (stable and canary): stable first, then the canary.
        let p = at(
            std::slice::from_ref(&svc),
            &stable[..1],
            &running(&stable[..1]),
            &stepping,
        );
        let placed: Vec<_> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Place { revision, .. } => Some(*revision),
                _ => None,
            })
            .collect();
        assert_eq!(placed, vec![1, 2], "{:?}", p.actions);

        // Rolled back: the service is on revision 1 again; the canary task retires.
        let mut back = service("web", 2, 1);
        back.spec.as_mut().unwrap().canary = svc.spec.as_ref().unwrap().canary.clone();
        r.set_state(CanaryState::RolledBack);
        let rollouts: HashMap<String, CanaryRollout> = [("web".to_string(), r)].into();
        let p = at(&[back], &all, &running(&all), &rollouts);
        assert_eq!(retired(&p), vec!["c".to_string()]);
        assert_eq!(places(&p), vec![]);
    }

    #[test]
    fn new_revision_rolls_surge_first() {
        let svcs = [service("web", 2, 2)];
        let tasks = [task("a", "web", "h1", 1), task("b", "web", "h2", 2)];
        let st = running(&tasks);
        let nodes = [node("h1"), node("h2")];
        let p = plan(&svcs, &tasks, &st, &nodes, 0);
        // One new task beyond the desired count, in the first old task's slot; no old task
        // goes before a new one is ready.
        assert_eq!(places(&p), vec![("h1".to_string(), 1)]);
        assert!(retired(&p).is_empty());

        let mut new = task("c", "web", "h1", 3);
        new.revision = 2;
        let all = [tasks[0].clone(), tasks[1].clone(), new];
        let mut st = running(&all);
        let p = plan(&svcs, &all, &st, &nodes, 0);
        assert_eq!(
            retired(&p).len(),
            1,
            "the ready new task replaces one old task"
        );
        st.get_mut("c").unwrap().set_state(TaskState::Starting);
        let p = plan(&svcs, &all, &st, &nodes, 0);
        assert!(
            retired(&p).is_empty(),
            "a new task that is not ready replaces nothing"
        );
    }

    fn with_update(mut svc: Service, max_surge: u32, max_unavailable: u32) -> Service {
        svc.spec.as_mut().unwrap().update = Some(rctl_api::pb::UpdateSpec {
            max_surge,
            max_unavailable,
            drain_ms: 0,
        });
        svc
    }

    #[test]
    fn update_limits_default_to_surge_one_and_never_stall() {
        let mut spec = service("web", 4, 1).spec.unwrap();
        assert_eq!(update_limits(&spec), (1, 0));
        spec.update = Some(Default::default());
        assert_eq!(update_limits(&spec), (1, 0), "0/0 would never move");
        spec.update = Some(rctl_api::pb::UpdateSpec {
            max_surge: 0,
            max_unavailable: 2,
            drain_ms: 0,
        });
        assert_eq!(update_limits(&spec), (0, 2));
    }

    #[test]
    fn max_surge_starts_that_many_new_tasks_at_once() {
        let svcs = [with_update(service("web", 4, 2), 2, 0)];
        let tasks: Vec<Task> = (1..=4)
            .map(|i| task(&format!("o{i}"), "web", "h1", i))
            .collect();
        let nodes = [node("h1")];
        let p = plan(&svcs, &tasks, &running(&tasks), &nodes, 0);
        assert_eq!(places(&p).len(), 2);
        assert!(
            retired(&p).is_empty(),
            "max_unavailable 0 keeps every old task"
        );
    }

    #[test]
    fn max_unavailable_stops_old_tasks_early_but_never_below_the_floor() {
        // replicas 4, surge 0, unavailable 1: one old task goes at once, the others wait.
        let svcs = [with_update(service("web", 4, 2), 0, 1)];
        let tasks: Vec<Task> = (1..=4)
            .map(|i| task(&format!("o{i}"), "web", "h1", i))
            .collect();
        let nodes = [node("h1")];
        let st = running(&tasks);
        let p = plan(&svcs, &tasks, &st, &nodes, 0);
        assert_eq!(retired(&p).len(), 1, "{p:?}");
        assert!(places(&p).is_empty(), "no surge: the slot frees first");

        // One old task already retired (gone from the active set) and its replacement
        // starting: 3 ready = the floor, so nothing else goes.
        let mut new = task("n1", "web", "h1", 1);
        new.revision = 2;
        let all = [
            tasks[1].clone(),
            tasks[2].clone(),
            tasks[3].clone(),
            new.clone(),
        ];
        let mut st = running(&all);
        st.get_mut("n1").unwrap().set_state(TaskState::Starting);
        let p = plan(&svcs, &all, &st, &nodes, 0);
        assert!(retired(&p).is_empty(), "{p:?}");

        // An old task that is not ready costs nothing to stop.
        st.get_mut("o2").unwrap().set_state(TaskState::Starting);
        let p = plan(&svcs, &all, &st, &nodes, 0);
        assert_eq!(retired(&p), vec!["o2".to_string()]);
    }

    #[test]
    fn draining_moves_tasks_surge_first_and_retires_only_behind_ready_replacements() {
        let svcs = [service("web", 2, 1)];
        let tasks = [task("a", "web", "h1", 1), task("b", "web", "h2", 2)];
        let st = running(&tasks);
        let nodes = [node("h1"), node("h2"), node("h3")];
        let p = drained_plan(&svcs, &tasks, &st, &nodes, &["h1"], 0);
        // One replacement beyond the desired count, in the drained task's slot, never on h1;
        // nothing retired yet.
        assert_eq!(places(&p), vec![("h3".to_string(), 1)]);
        assert!(retired(&p).is_empty());

        let all = [
            tasks[0].clone(),
            tasks[1].clone(),
            task("c", "web", "h3", 1),
        ];
        let mut st = running(&all);
        st.get_mut("c").unwrap().set_state(TaskState::Starting);
        let p = drained_plan(&svcs, &all, &st, &nodes, &["h1"], 0);
        assert_eq!(
            p,
            Plan::default(),
            "a replacement not ready retires nothing"
        );

        st.get_mut("c").unwrap().set_state(TaskState::Running);
        let p = drained_plan(&svcs, &all, &st, &nodes, &["h1"], 0);
        assert_eq!(
            p.actions,
            vec![Action::Retire {
                task: tasks[0].clone(),
                reason: REASON_DRAINED
            }]
        );
    }

    #[test]
    fn nothing_is_placed_on_a_draining_node() {
        let svcs = [service("web", 3, 1)];
        let nodes = [node("h1"), node("h2")];
        let p = drained_plan(&svcs, &[], &HashMap::new(), &nodes, &["h1"], 0);
        assert_eq!(
            places(&p),
            vec![("h2".into(), 1), ("h2".into(), 2), ("h2".into(), 3)]
        );

        // With every node draining the tasks stay where they are and the reason is named.
        let tasks = [task("a", "web", "h1", 1)];
        let svcs = [service("web", 1, 1)];
        let p = drained_plan(&svcs, &tasks, &running(&tasks), &nodes, &["h1", "h2"], 0);
        assert!(p.actions.is_empty(), "{p:?}");
        assert_eq!(p.unplaced[0].describe(), "1 task: 0/2 nodes: 2 draining");
    }

    #[test]
    fn activating_a_node_lets_new_tasks_go_there_without_rebalancing() {
        let svcs = [service("web", 2, 1)];
        let tasks = [task("a", "web", "h2", 1), task("b", "web", "h2", 2)];
        let st = running(&tasks);
        let nodes = [node("h1"), node("h2")];
        assert_eq!(plan(&svcs, &tasks, &st, &nodes, 0), Plan::default());
        let more = [service("web", 3, 1)];
        let p = plan(&more, &tasks, &st, &nodes, 0);
        assert_eq!(places(&p), vec![("h1".to_string(), 3)]);
        assert!(retired(&p).is_empty());
    }

    #[test]
    fn history_keeps_only_the_newest_retired_tasks() {
        let svcs = [service("web", 0, 1)];
        let tasks: Vec<Task> = (0..8)
            .map(|i| {
                let mut t = task(&format!("t{i}"), "web", "h1", 1);
                t.created_unix_ms = i;
                t.set_desired_state(DesiredState::Shutdown);
                t
            })
            .collect();
        let st: HashMap<_, _> = tasks.iter().map(|t| status(t, TaskState::Exited)).collect();
        let nodes = [node("h1")];
        let p = plan(&svcs, &tasks, &st, &nodes, 0);
        let deleted: Vec<_> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Delete { task, .. } => Some(task.id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, vec!["t2", "t1", "t0"]);
    }

    const GI: u64 = 1 << 30;

    fn sized_node(name: &str, memory_gi: u64, labels: &[(&str, &str)]) -> Node {
        Node {
            name: name.into(),
            cpus: 2.0,
            memory_bytes: memory_gi * GI,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn placed(svc: &Service, memory_gi: u64, spread: &str, constraints: &[&str]) -> Service {
        let mut svc = svc.clone();
        let spec = svc.spec.as_mut().unwrap();
        if memory_gi > 0 {
            spec.resources = Some(rctl_api::pb::Resources {
                memory_bytes: memory_gi * GI,
                ..Default::default()
            });
        }
        spec.placement = Some(rctl_api::pb::Placement {
            spread: spread.into(),
            constraints: constraints.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        });
        svc
    }

    fn sized_task(id: &str, svc: &str, node: &str, slot: u32, memory_gi: u64) -> Task {
        Task {
            resources: Some(rctl_api::pb::Resources {
                memory_bytes: memory_gi * GI,
                ..Default::default()
            }),
            ..task(id, svc, node, slot)
        }
    }

    /// Feasibility and spread, one row per case: the service to place (replicas, memory
    /// asked in GiB, spread, constraints), what already runs, the nodes, and the expected
    /// placements and unplaced reason.
    #[test]
    fn placement_table() {
        struct Case {
            name: &'static str,
            replicas: u32,
            memory_gi: u64,
            spread: &'static str,
            constraints: &'static [&'static str],
            /// (id, service, node, memory GiB) of tasks already running.
            existing: &'static [(&'static str, &'static str, &'static str, u64)],
            nodes: Vec<Node>,
            places: &'static [&'static str],
            unplaced: Option<&'static str>,
        }
        let zones = || {
            vec![
                sized_node("h1", 8, &[("zone", "a")]),
                sized_node("h2", 8, &[("zone", "a")]),
                sized_node("h3", 8, &[("zone", "b")]),
                sized_node("h4", 8, &[("zone", "b")]),
            ]
        };
        let cases = [
            Case {
                name: "memory-full node is skipped",
                replicas: 2,
                memory_gi: 2,
                spread: "",
                constraints: &[],
                existing: &[("db", "db", "h1", 3)],
                nodes: vec![sized_node("h1", 4, &[]), sized_node("h2", 4, &[])],
                places: &["h2", "h2"],
                unplaced: None,
            },
            Case {
                name: "tasks without resources ask nothing",
                replicas: 2,
                memory_gi: 0,
                spread: "",
                constraints: &[],
                existing: &[("db", "db", "h1", 4)],
                nodes: vec![sized_node("h1", 4, &[])],
                places: &["h1", "h1"],
                unplaced: None,
            },
            Case {
                name: "constraints filter nodes",
                replicas: 3,
                memory_gi: 0,
                spread: "",
                constraints: &["role == web", "node.name != h3"],
                existing: &[],
                nodes: vec![
                    sized_node("h1", 4, &[("role", "web")]),
                    sized_node("h2", 4, &[("role", "db")]),
                    sized_node("h3", 4, &[("role", "web")]),
                ],
                places: &["h1", "h1", "h1"],
                unplaced: None,
            },
            Case {
                name: "label spread alternates zones",
                replicas: 4,
                memory_gi: 0,
                spread: "zone",
                constraints: &[],
                existing: &[("x", "web", "h1", 0)],
                nodes: zones(),
                places: &["h3", "h2", "h4"],
                unplaced: None,
            },
            Case {
                name: "node spread ignores zones",
                replicas: 4,
                memory_gi: 0,
                spread: "node",
                constraints: &[],
                existing: &[("x", "web", "h1", 0)],
                nodes: zones(),
                places: &["h2", "h3", "h4"],
                unplaced: None,
            },
            Case {
                name: "summary names every node's reason",
                replicas: 2,
                memory_gi: 2,
                spread: "",
                constraints: &["role == web"],
                existing: &[("db1", "db", "h1", 3), ("db2", "db", "h2", 3)],
                nodes: vec![
                    sized_node("h1", 4, &[("role", "web")]),
                    sized_node("h2", 4, &[("role", "web")]),
                    sized_node("h3", 4, &[("role", "db")]),
                ],
                places: &[],
                unplaced: Some("0/3 nodes: 2 insufficient memory, 1 constraint not met"),
            },
            Case {
                name: "placing fills a node, then the rest is unplaced",
                replicas: 3,
                memory_gi: 2,
                spread: "",
                constraints: &[],
                existing: &[],
                nodes: vec![sized_node("h1", 4, &[])],
                places: &["h1", "h1"],
                unplaced: Some("0/1 nodes: 1 insufficient memory"),
            },
        ];
        for c in cases {
            let web = placed(
                &service("web", c.replicas, 1),
                c.memory_gi,
                c.spread,
                c.constraints,
            );
            let tasks: Vec<Task> = c
                .existing
                .iter()
                .enumerate()
                .map(|(i, (id, svc, node, mem))| sized_task(id, svc, node, i as u32 + 1, *mem))
                .collect();
            let st = running(&tasks);
            // db wants what it has, so its tasks stay and take their room.
            let db_tasks = tasks.iter().filter(|t| t.service == "db").count();
            let db = service("db", db_tasks as u32, 1);
            let p = plan(&[web, db], &tasks, &st, &c.nodes, 0);
            let got: Vec<String> = places(&p).into_iter().map(|(n, _)| n).collect();
            assert_eq!(got, c.places, "{}", c.name);
            let why = p.unplaced.first().map(|u| u.reason.as_str());
            assert_eq!(why, c.unplaced, "{}", c.name);
            if let Some(u) = p.unplaced.first() {
                let missing = c.replicas as usize
                    - c.places.len()
                    - tasks.iter().filter(|t| t.service == "web").count();
                assert_eq!(u.missing as usize, missing, "{}", c.name);
                assert!(
                    u.describe().starts_with(&format!("{missing} task")),
                    "{}",
                    c.name
                );
            }
        }
    }

    /// A snapshot of `tasks` (all running) and `containers` on `nodes`.
    fn with_containers(tasks: &[Task], containers: &[Task], nodes: &[Node]) -> Loaded {
        Loaded {
            tasks: tasks.to_vec(),
            containers: containers.to_vec(),
            statuses: running(tasks),
            nodes: nodes.to_vec(),
            ..Default::default()
        }
    }

    /// Reconcile over `containers` next to the services' tasks.
    fn plan_with_containers(
        services: &[Service],
        tasks: &[Task],
        containers: &[Task],
        nodes: &[Node],
    ) -> Plan {
        let mut loaded = with_containers(tasks, containers, nodes);
        loaded.services = services.to_vec();
        reconcile(&loaded.snapshot(0))
    }

    #[test]
    fn one_off_containers_take_room_from_service_tasks() {
        // A container holding 3 of h1's 4 GiB: a 2 GiB task goes to h2; once h2 holds one
        // too, nowhere, and the reason says so.
        let web = [placed(&service("web", 1, 1), 2, "", &[])];
        let nodes = [sized_node("h1", 4, &[]), sized_node("h2", 4, &[])];
        let mut c1 = sized_task("c1", "", "h1", 0, 3);
        let p = plan_with_containers(&web, &[], std::slice::from_ref(&c1), &nodes);
        assert_eq!(places(&p), vec![("h2".to_string(), 1)]);
        let c2 = sized_task("c2", "", "h2", 0, 3);
        let p = plan_with_containers(&web, &[], &[c1.clone(), c2], &nodes);
        assert!(places(&p).is_empty(), "{p:?}");
        assert_eq!(
            p.unplaced[0].describe(),
            "1 task: 0/2 nodes: 2 insufficient memory"
        );
        assert!(p.actions.is_empty(), "containers are not reconciled: {p:?}");
        // A stopped container holds nothing.
        c1.set_desired_state(DesiredState::Stopped);
        let p = plan_with_containers(&web, &[], &[c1], &nodes);
        assert_eq!(places(&p), vec![("h1".to_string(), 1)]);
    }

    #[test]
    fn a_container_is_placed_by_the_same_filters_over_tasks_and_containers() {
        let nodes = [sized_node("h1", 4, &[]), sized_node("h2", 4, &[])];
        let ask = |gi: u64| placement::Ask {
            memory_bytes: gi * GI,
            ..Default::default()
        };
        let db = [sized_task("db", "db", "h1", 1, 3)];
        let c = [sized_task("c", "", "h2", 0, 2)];
        let place = |tasks: &[Task], containers: &[Task], gi| {
            place_container(
                &with_containers(tasks, containers, &nodes).snapshot(0),
                ask(gi),
            )
        };
        // Fewest tasks first, then the name.
        assert_eq!(place(&[], &[], 1).as_deref(), Ok("h1"));
        assert_eq!(place(&db, &[], 0).as_deref(), Ok("h2"));
        assert_eq!(place(&[], &c, 0).as_deref(), Ok("h1"));
        // Room left: h1 1 GiB (a service task), h2 2 GiB (a container).
        assert_eq!(place(&db, &c, 2).as_deref(), Ok("h2"));
        assert_eq!(
            place(&db, &c, 3),
            Err("0/2 nodes: 2 insufficient memory".to_string())
        );
    }

    #[test]
    fn tasks_placed_earlier_in_a_pass_use_up_the_node() {
        let mut a = placed(&service("a", 1, 1), 3, "", &[]);
        a.spec.as_mut().unwrap().name = "a".into();
        let b = placed(&service("b", 1, 1), 3, "", &[]);
        let nodes = [sized_node("h1", 4, &[])];
        let p = plan(&[a, b], &[], &HashMap::new(), &nodes, 0);
        assert_eq!(places(&p), vec![("h1".to_string(), 1)]);
        assert_eq!(p.unplaced.len(), 1);
        assert_eq!(
            p.unplaced[0].describe(),
            "1 task: 0/1 nodes: 1 insufficient memory"
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Safety: never more active tasks placed than wanted, and applying the plan's
            /// placements reaches the desired count when nodes exist.
            #[test]
            fn never_overplaces(replicas in 0u32..12, existing in 0usize..12, nodes_n in 0usize..5) {
                let svcs = [service("web", replicas, 1)];
                let nodes: Vec<Node> = (1..=nodes_n).map(|i| node(&format!("h{i}"))).collect();
                let tasks: Vec<Task> = (0..existing)
                    .map(|i| task(&format!("t{i}"), "web", &format!("h{}", i % nodes_n.max(1) + 1), i as u32 + 1))
                    .collect();
                let st = running(&tasks);
                let p = plan(&svcs, &tasks, &st, &nodes, 0);
                let live = tasks.iter().filter(|t| nodes.iter().any(|n| n.name == t.node)).count();
                let after = live + places(&p).len() - retired(&p).len();
                if nodes_n > 0 {
                    prop_assert_eq!(after, replicas as usize);
                } else {
                    prop_assert!(places(&p).is_empty());
                }
            }
        }
    }
}
