//! Lifecycle decisions, as Docker makes them: which signal stops a container and how long
//! it gets before SIGKILL, and whether (and after what delay) an exited container is
//! restarted by the agent. Pure functions over plain data; `tasks` acts on them.

use std::time::Duration;

use nix::sys::signal::Signal;

/// Grace period between the stop signal and SIGKILL when neither the stop request nor the
/// task gives one (Docker's default).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// First restart delay; it doubles with each restart that follows a short run.
pub const RESTART_BACKOFF_START: Duration = Duration::from_millis(100);
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A container that ran at least this long starts the backoff (and on-failure's attempt
/// count) afresh when it exits.
pub const RESTART_RESET_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LifecycleError {
    #[error("unknown stop signal {0:?} (use e.g. SIGTERM, TERM or 15)")]
    Signal(String),
    #[error("unknown restart policy {0:?} (use no, on-failure[:MAX], always or unless-stopped)")]
    Policy(String),
}

/// `SIGQUIT`, `QUIT`, `quit` or `3`, as `docker run --stop-signal` takes it.
pub fn parse_signal(s: &str) -> Result<Signal, LifecycleError> {
    let bad = || LifecycleError::Signal(s.to_string());
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let up = t.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse().map_err(|_| bad())
}

/// The signal a stop sends first: the task's, else the image's `StopSignal`, else SIGTERM.
/// An image with an unusable StopSignal falls back to SIGTERM rather than failing the stop.
pub fn stop_signal(task: &str, image: &str) -> Result<Signal, LifecycleError> {
    if !task.trim().is_empty() {
        return parse_signal(task);
    }
    Ok(parse_signal(image).unwrap_or(Signal::SIGTERM))
}

/// The stop request's timeout, else the task's (`stop_timeout_ms`, 0 = unset), else 10 s.
pub fn stop_timeout(request: Option<Duration>, task_ms: u64) -> Duration {
    request.unwrap_or(if task_ms == 0 {
        DEFAULT_STOP_TIMEOUT
    } else {
        Duration::from_millis(task_ms)
    })
}

/// Docker's restart policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    #[default]
    No,
    /// Restart after a non-zero exit, at most `max` times in a row (0 = no limit).
    OnFailure {
        max: u32,
    },
    Always,
    /// As `Always`, except that a container its user stopped stays stopped when the agent
    /// starts up (see [`revive_stopped`]).
    UnlessStopped,
}

impl RestartPolicy {
    /// From the task: `restart_policy` ("on-failure:3" or "on-failure" with
    /// `restart_max_attempts`).
    pub fn parse(s: &str, max_attempts: u32) -> Result<Self, LifecycleError> {
        let bad = || LifecycleError::Policy(s.to_string());
        let (name, max) = match s.trim().split_once(':') {
            Some((n, m)) => (n, Some(m.parse::<u32>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        match (name, max) {
            ("" | "no", None) => Ok(Self::No),
            ("always", None) => Ok(Self::Always),
            ("unless-stopped", None) => Ok(Self::UnlessStopped),
            ("on-failure", m) => Ok(Self::OnFailure {
                max: m.unwrap_or(max_attempts),
            }),
            _ => Err(bad()),
        }
    }
}

/// The restart bookkeeping the agent keeps for a container, in its directory (`restarts`)
/// so that on-failure's attempt count and the backoff survive an agent restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restarts {
    /// Restarts since the last run that lasted [`RESTART_RESET_AFTER`].
    pub streak: u32,
}

impl Restarts {
    /// The counter file's text; anything unreadable counts as no restart yet.
    pub fn parse(s: &str) -> Self {
        Self {
            streak: s.trim().parse().unwrap_or(0),
        }
    }

    pub fn render(&self) -> String {
        format!("{}\n", self.streak)
    }
}

/// What to do with a container that exited by itself with `code` after running for `ran`:
/// `Some(delay)` restarts it after the delay (and `r.streak` is advanced), `None` leaves it
/// finished. A stop requested by the user never gets here.
pub fn after_exit(
    policy: RestartPolicy,
    code: Option<i32>,
    ran: Duration,
    r: &mut Restarts,
) -> Option<Duration> {
    if ran >= RESTART_RESET_AFTER {
        r.streak = 0;
    }
    let restart = match policy {
        RestartPolicy::No => false,
        RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        RestartPolicy::OnFailure { max } => code != Some(0) && (max == 0 || r.streak < max),
    };
    if !restart {
        return None;
    }
    let delay = RESTART_BACKOFF_START
        .saturating_mul(1u32 << r.streak.min(20))
        .min(RESTART_BACKOFF_MAX);
    r.streak += 1;
    Some(delay)
}

/// What to do with a container that exited by itself while no agent watched it (found
/// finished at start-up): the same decision as [`after_exit`], with the time it has been
/// dead (`since_exit`) already served from the backoff. A container the agent was asked to
/// stop, or that never started, never gets here.
pub fn missed_exit(
    policy: RestartPolicy,
    code: Option<i32>,
    ran: Duration,
    since_exit: Duration,
    r: &mut Restarts,
) -> Option<Duration> {
    after_exit(policy, code, ran, r).map(|d| d.saturating_sub(since_exit))
}

/// Whether a container its user stopped (`rctl stop`, its `stopped` marker) is started again
/// when the agent starts up. Docker restarts an `always` container stopped by hand when the
/// daemon restarts, and `unless-stopped` exists precisely not to; no other policy restarts
/// a stopped container. (Our agent restarting is the daemon restarting: the containers'
/// shims outlive it, but what it decides at start-up is what dockerd decides.)
pub fn revive_stopped(policy: RestartPolicy) -> bool {
    policy == RestartPolicy::Always
}

/// What a container directory says about the container, for [`holds_address`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Markers {
    /// The shim recorded an exit status.
    pub exited: bool,
    /// It never started (the agent recorded why).
    pub failed: bool,
    /// The agent decided to restart it and waits out the backoff.
    pub restart_pending: bool,
    /// Whether the recorded PID 1 still runs; None before the shim recorded it.
    pub alive: Option<bool>,
}

/// Whether a container keeps its IP address and host port: while it is being created,
/// runs, or waits for its restart (it comes back on the same address and port, which the
/// endpoint and the user's `-p` point at). Only a container that is finished for good gave
/// them back.
pub fn holds_address(m: Markers) -> bool {
    if m.failed {
        return false;
    }
    if m.restart_pending {
        return true;
    }
    !m.exited && m.alive != Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_like_docker() {
        assert_eq!(parse_signal("SIGQUIT"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal("quit"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("999").is_err());
        assert_eq!(stop_signal("", "SIGINT"), Ok(Signal::SIGINT));
        assert_eq!(stop_signal("USR1", "SIGINT"), Ok(Signal::SIGUSR1));
        assert_eq!(stop_signal("", ""), Ok(Signal::SIGTERM));
        assert_eq!(stop_signal("", "garbage"), Ok(Signal::SIGTERM));
        assert!(stop_signal("garbage", "").is_err());
    }

    #[test]
    fn stop_timeout_precedence() {
        let s = Duration::from_secs(3);
        assert_eq!(stop_timeout(Some(s), 5000), s);
        assert_eq!(stop_timeout(None, 5000), Duration::from_secs(5));
        assert_eq!(stop_timeout(None, 0), DEFAULT_STOP_TIMEOUT);
    }

    #[test]
    fn policies_parse() {
        assert_eq!(RestartPolicy::parse("", 0), Ok(RestartPolicy::No));
        assert_eq!(RestartPolicy::parse("always", 0), Ok(RestartPolicy::Always));
        assert_eq!(
            RestartPolicy::parse("on-failure:3", 0),
            Ok(RestartPolicy::OnFailure { max: 3 })
        );
        assert_eq!(
            RestartPolicy::parse("on-failure", 5),
            Ok(RestartPolicy::OnFailure { max: 5 })
        );
        assert_eq!(
            RestartPolicy::parse("unless-stopped", 0),
            Ok(RestartPolicy::UnlessStopped)
        );
        assert!(RestartPolicy::parse("unless-stopped:2", 0).is_err());
        assert!(RestartPolicy::parse("sometimes", 0).is_err());
        assert!(RestartPolicy::parse("always:2", 0).is_err());
        assert!(RestartPolicy::parse("on-failure:x", 0).is_err());
    }

    #[test]
    fn on_failure_backs_off_and_gives_up_after_max() {
        let p = RestartPolicy::OnFailure { max: 3 };
        let mut r = Restarts::default();
        let short = Duration::from_millis(50);
        let delays: Vec<_> = (0..4)
            .map(|_| after_exit(p, Some(1), short, &mut r))
            .collect();
        assert_eq!(
            delays,
            vec![
                Some(Duration::from_millis(100)),
                Some(Duration::from_millis(200)),
                Some(Duration::from_millis(400)),
                None
            ]
        );
        assert_eq!(
            after_exit(p, Some(0), short, &mut Restarts::default()),
            None
        );
        // A long run resets the streak.
        assert_eq!(
            after_exit(p, Some(1), RESTART_RESET_AFTER, &mut r),
            Some(Duration::from_millis(100))
        );
    }

    #[test]
    fn always_restarts_even_on_success_with_a_capped_delay() {
        let mut r = Restarts { streak: 30 };
        assert_eq!(
            after_exit(RestartPolicy::Always, Some(0), Duration::ZERO, &mut r),
            Some(RESTART_BACKOFF_MAX)
        );
        assert_eq!(
            after_exit(RestartPolicy::No, Some(1), Duration::ZERO, &mut r),
            None
        );
    }

    #[test]
    fn a_missed_exit_follows_the_policy_with_the_dead_time_served() {
        let p = RestartPolicy::OnFailure { max: 2 };
        let short = Duration::from_millis(50);
        let mut r = Restarts::default();
        // Dead for 30 ms of a 100 ms backoff: 70 ms left.
        assert_eq!(
            missed_exit(p, Some(3), short, Duration::from_millis(30), &mut r),
            Some(Duration::from_millis(70))
        );
        // Dead for longer than the backoff: restart at once.
        assert_eq!(
            missed_exit(p, Some(3), short, Duration::from_secs(60), &mut r),
            Some(Duration::ZERO)
        );
        // The missed exits counted: on-failure:2 is used up.
        assert_eq!(r.streak, 2);
        assert_eq!(missed_exit(p, Some(3), short, Duration::ZERO, &mut r), None);
        // A clean exit under on-failure, and anything under "no", stays finished.
        let mut fresh = Restarts::default();
        assert_eq!(
            missed_exit(p, Some(0), short, Duration::ZERO, &mut fresh),
            None
        );
        assert_eq!(
            missed_exit(
                RestartPolicy::No,
                Some(1),
                short,
                Duration::ZERO,
                &mut fresh
            ),
            None
        );
        assert_eq!(
            missed_exit(
                RestartPolicy::Always,
                Some(0),
                short,
                Duration::ZERO,
                &mut fresh
            ),
            Some(RESTART_BACKOFF_START)
        );
    }

    #[test]
    fn unless_stopped_restarts_like_always_but_a_user_stop_survives_an_agent_restart() {
        let mut r = Restarts::default();
        assert_eq!(
            after_exit(
                RestartPolicy::UnlessStopped,
                Some(0),
                Duration::ZERO,
                &mut r
            ),
            Some(RESTART_BACKOFF_START)
        );
        assert!(revive_stopped(RestartPolicy::Always));
        for p in [
            RestartPolicy::UnlessStopped,
            RestartPolicy::No,
            RestartPolicy::OnFailure { max: 0 },
        ] {
            assert!(!revive_stopped(p), "{p:?}");
        }
    }

    #[test]
    fn the_restart_counter_round_trips_and_tolerates_garbage() {
        let r = Restarts { streak: 7 };
        assert_eq!(Restarts::parse(&r.render()), r);
        assert_eq!(Restarts::parse("garbage"), Restarts::default());
        assert_eq!(Restarts::parse(""), Restarts::default());
    }

    #[test]
    fn only_a_container_finished_for_good_gives_its_address_back() {
        let m = |exited, failed, restart_pending, alive| Markers {
            exited,
            failed,
            restart_pending,
            alive,
        };
        // Being created (no pid yet), running.
        assert!(holds_address(m(false, false, false, None)));
        assert!(holds_address(m(false, false, false, Some(true))));
        // Exited and waiting out its restart backoff: the address is still its.
        assert!(holds_address(m(true, false, true, Some(false))));
        assert!(holds_address(m(true, false, true, None)));
        // Finished for good, lost, or never started.
        assert!(!holds_address(m(true, false, false, Some(false))));
        assert!(!holds_address(m(false, false, false, Some(false))));
        assert!(!holds_address(m(false, true, false, None)));
        assert!(!holds_address(m(false, true, true, None)));
    }
}
