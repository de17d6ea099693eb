//! The drain gate, pure: a retired task that serves traffic is stopped only after its
//! endpoint is withdrawn and every live rctl-lb reported it drained, or `[update] drain`
//! passed, so no request in flight through an LB meets a SIGTERM. [`crate::reconcile`]
//! gates retired tasks with it; the controller and the canary step count tasks that serve
//! with [`needs_drain`].

use std::collections::HashSet;

use rctl_api::pb::{Service, Task, TaskState, TaskStatus};

/// How long a retired task waits for the LBs to drain it when `[update] drain` is unset.
pub const DEFAULT_DRAIN_MS: i64 = 5_000;

/// The next step for a retired task that is still alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Delete its endpoint first.
    Withdraw,
    /// Endpoint gone; LBs still draining it.
    Wait,
    /// Send StopTask (SIGTERM).
    Stop,
}

/// Whether a task must be drained by the LBs before it stops: it serves traffic (a port
/// and a healthy, running status). Others stop at once.
pub fn needs_drain(task: &Task, status: Option<&TaskStatus>) -> bool {
    task.container_port != 0
        && status.is_some_and(|st| st.state() == TaskState::Running && st.health == "healthy")
}

/// Decides the drain step of a retired task that needs draining: withdraw its endpoint,
/// then wait until every live LB in `lbs` reported it drained (`drained_by`) or `drain_ms`
/// passed since it was retired. A task retired with no time recorded does not wait.
pub fn drain_gate(
    has_endpoint: bool,
    lbs: &HashSet<String>,
    drained_by: Option<&HashSet<String>>,
    retired_unix_ms: i64,
    drain_ms: i64,
    now_ms: i64,
) -> Drain {
    let timed_out = retired_unix_ms <= 0 || now_ms - retired_unix_ms >= drain_ms;
    if timed_out {
        // The agent withdraws the endpoint itself when it stops the task.
        return Drain::Stop;
    }
    if has_endpoint {
        return Drain::Withdraw;
    }
    let all_drained = lbs
        .iter()
        .all(|lb| drained_by.is_some_and(|d| d.contains(lb)));
    if all_drained {
        Drain::Stop
    } else {
        Drain::Wait
    }
}

/// `[update] drain` of a service in ms, or the default.
pub fn drain_ms(svc: Option<&Service>) -> i64 {
    svc.and_then(|s| s.spec.as_ref())
        .and_then(|sp| sp.update.as_ref())
        .map(|u| u.drain_ms as i64)
        .filter(|&ms| ms > 0)
        .unwrap_or(DEFAULT_DRAIN_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn drain_gate_withdraws_then_waits_for_every_lb_or_the_timeout() {
        let lbs = set(&["lb1", "lb2"]);
        let one = set(&["lb1"]);
        let both = set(&["lb1", "lb2", "gone-lb"]);
        // Retired at 1 s with a 5 s drain.
        let gate = |ep, by, now| drain_gate(ep, &lbs, by, 1_000, 5_000, now);
        assert_eq!(gate(true, None, 1_000), Drain::Withdraw);
        assert_eq!(gate(false, None, 2_000), Drain::Wait);
        assert_eq!(gate(false, Some(&one), 2_000), Drain::Wait);
        assert_eq!(gate(false, Some(&both), 2_000), Drain::Stop);
        // Timed out: stop whatever the LBs said (an LB may have died mid-drain).
        assert_eq!(gate(false, Some(&one), 6_000), Drain::Stop);
        assert_eq!(gate(true, None, 6_000), Drain::Stop);
        // No LB running: nothing to wait for once the endpoint is gone.
        assert_eq!(
            drain_gate(false, &HashSet::new(), None, 1_000, 5_000, 1_000),
            Drain::Stop
        );
        // Retired before retirement times were recorded: no wait.
        assert_eq!(drain_gate(true, &lbs, None, 0, 5_000, 1_000), Drain::Stop);
    }
}
