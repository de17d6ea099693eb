//! Endpoint selection: first the revision (see [`crate::split`]), then, among that
//! revision's endpoints, power-of-two-choices on least outstanding requests.
//!
//! Two candidates are drawn at random and the one with fewer requests in flight wins. This
//! is nearly as good as scanning for the least loaded backend, but needs no global view and
//! does not herd every new request onto the one backend that just became idle (the
//! "thundering herd" of plain least-connections across many balancers).
//!
//! The decision is [`choose`], a pure function of the loads and two random numbers; [`pick`]
//! only adds the random numbers.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::routes::{Backend, ServiceRoute};

/// Given the in-flight `loads` of the eligible candidates and two random numbers, returns
/// the index of the chosen candidate, or `None` when there is none. Ties go to the first
/// draw, so the choice stays random among equally loaded backends.
pub fn choose(loads: &[usize], r1: u64, r2: u64) -> Option<usize> {
    choose_by(loads.len(), |i| loads[i], r1, r2)
}

/// [`choose`] over `n` candidates whose loads `load(i)` gives, read only for the two drawn:
/// the per-request path needs no list of loads.
pub fn choose_by(n: usize, load: impl Fn(usize) -> usize, r1: u64, r2: u64) -> Option<usize> {
    match n {
        0 => None,
        1 => Some(0),
        _ => {
            let i = (r1 % n as u64) as usize;
            // Draw the second from the other n-1 so the two are always distinct.
            let mut j = (r2 % (n as u64 - 1)) as usize;
            if j >= i {
                j += 1;
            }
            Some(if load(j) < load(i) { j } else { i })
        }
    }
}

/// The backends of `route` that may get a new request meant for `revision`: healthy, not
/// ejected nor failing the LB's active check ([`crate::health`]), not in `tried` (the ones that already failed this request),
/// and of `revision`. When that revision has none, its share goes to the other revisions of
/// the split, and failing those to any healthy backend: serving an old revision beats a
/// 503. When every candidate is ejected, ejection is ignored, for the same reason.
pub fn eligible<'a>(
    route: &'a ServiceRoute,
    revision: u64,
    tried: &[SocketAddr],
) -> Vec<&'a Arc<Backend>> {
    match tier(route, revision, tried) {
        Some(in_tier) => route.backends.iter().filter(|b| in_tier(b)).collect(),
        None => Vec::new(),
    }
}

/// The first non-empty tier of [`eligible`], as a test of membership, so that the
/// per-request path walks the backends without collecting them.
fn tier<'a>(
    route: &'a ServiceRoute,
    revision: u64,
    tried: &'a [SocketAddr],
) -> Option<impl Fn(&Backend) -> bool + 'a> {
    let usable = move |b: &Backend, skip_ejected: bool| {
        b.healthy
            && !tried.contains(&b.address)
            && !(skip_ejected && (!b.is_up() || b.is_ejected()))
    };
    let mut tiers = [true, false].into_iter().flat_map(move |skip_ejected| {
        [0u8, 1, 2].into_iter().map(move |level| {
            move |b: &Backend| {
                usable(b, skip_ejected)
                    && match level {
                        0 => b.revision == revision,
                        1 => route.in_split(b.revision),
                        _ => true,
                    }
            }
        })
    });
    tiers.find(|in_tier| route.backends.iter().any(|b| in_tier(b)))
}

/// Picks a backend of `route` for one request or connection meant for `revision`
/// ([`ServiceRoute::next_revision`]), skipping `tried`.
pub fn pick(route: &ServiceRoute, revision: u64, tried: &[SocketAddr]) -> Option<Arc<Backend>> {
    let in_tier = tier(route, revision, tried)?;
    let nth = |i: usize| route.backends.iter().filter(|b| in_tier(b)).nth(i);
    let n = route.backends.iter().filter(|b| in_tier(b)).count();
    // One candidate (a service with one endpoint, or one of its revision) needs no draw.
    let (r1, r2) = if n > 1 {
        (rand::random(), rand::random())
    } else {
        (0, 0)
    };
    let i = choose_by(n, |i| nth(i).map_or(usize::MAX, |b| b.load()), r1, r2)?;
    nth(i).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{Backend, Protocol, ServiceRoute};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn picks_the_less_loaded_of_the_two_draws() {
        let loads = [5, 1, 9];
        // Draws 0 and 1 (r2 % 2 = 0 → 0, bumped past i=0 → 1).
        assert_eq!(choose(&loads, 0, 0), Some(1));
        // Draws 2 and 0.
        assert_eq!(choose(&loads, 2, 0), Some(0));
        // Draws 2 and 1.
        assert_eq!(choose(&loads, 2, 1), Some(1));
    }

    #[test]
    fn never_draws_the_same_candidate_twice() {
        // With two candidates, every pair of draws compares both: the idle one always wins.
        for r1 in 0..20 {
            for r2 in 0..20 {
                assert_eq!(choose(&[3, 0], r1, r2), Some(1));
                assert_eq!(choose(&[0, 3], r1, r2), Some(0));
            }
        }
    }

    #[test]
    fn ties_are_spread() {
        let picks: std::collections::BTreeSet<_> = (0..10)
            .map(|r| choose(&[1, 1, 1], r, r + 1).unwrap())
            .collect();
        assert_eq!(picks.len(), 3);
    }

    #[test]
    fn one_candidate_always_wins_and_none_gives_none() {
        assert_eq!(choose(&[], 7, 8), None);
        for r in 0..10 {
            assert_eq!(choose(&[100], r, r * 3), Some(0));
        }
    }

    #[test]
    fn pick_skips_unhealthy_and_tried_backends() {
        let route = ServiceRoute::new("web", Protocol::Http, None)
            .with_backend(Backend::new("t1", addr(1), false))
            .with_backend(Backend::new("t2", addr(2), true))
            .with_backend(Backend::new("t3", addr(3), true));
        for _ in 0..100 {
            let b = pick(&route, 0, &[addr(3)]).unwrap();
            assert_eq!(b.task_id, "t2");
        }
        assert!(pick(&route, 0, &[addr(2), addr(3)]).is_none());
    }

    #[test]
    fn pick_prefers_the_idle_backend() {
        let route = ServiceRoute::new("web", Protocol::Http, None)
            .with_backend(Backend::new("t1", addr(1), true))
            .with_backend(Backend::new("t2", addr(2), true));
        let _busy = route.backends[0].start();
        for _ in 0..100 {
            assert_eq!(pick(&route, 0, &[]).unwrap().task_id, "t2");
        }
    }

    fn versioned(task: &str, port: u16, revision: u64, healthy: bool) -> Backend {
        let mut b = Backend::new(task, addr(port), healthy);
        b.revision = revision;
        b
    }

    fn tasks(route: &ServiceRoute, revision: u64, tried: &[SocketAddr]) -> Vec<String> {
        eligible(route, revision, tried)
            .iter()
            .map(|b| b.task_id.clone())
            .collect()
    }

    #[test]
    fn requests_go_to_their_revision_and_fall_back_when_it_has_no_endpoint() {
        let route = ServiceRoute::new("web", Protocol::Http, None)
            .with_revision(3)
            .with_split(crate::split::Weights::new([(2, 90), (3, 10)]).unwrap())
            .with_backend(versioned("t1", 1, 1, true))
            .with_backend(versioned("t2", 2, 2, true))
            .with_backend(versioned("t3", 3, 2, true))
            .with_backend(versioned("t4", 4, 3, true))
            .with_backend(versioned("t5", 5, 3, false));
        assert_eq!(tasks(&route, 2, &[]), ["t2", "t3"]);
        assert_eq!(tasks(&route, 3, &[]), ["t4"]);
        // t4 refused: the canary's request goes to the other revision of the split, not
        // to revision 1, which has no share.
        assert_eq!(tasks(&route, 3, &[addr(4)]), ["t2", "t3"]);
        // Nothing of the split left: any healthy endpoint.
        assert_eq!(tasks(&route, 3, &[addr(2), addr(3), addr(4)]), ["t1"]);
    }

    #[test]
    fn without_a_split_the_current_revision_gets_everything() {
        let route = ServiceRoute::new("web", Protocol::Http, None)
            .with_revision(2)
            .with_backend(versioned("t1", 1, 1, true))
            .with_backend(versioned("t2", 2, 2, true));
        for _ in 0..50 {
            let rev = route.next_revision();
            assert_eq!(pick(&route, rev, &[]).unwrap().task_id, "t2");
        }
        // No endpoint of the current revision yet (a rollout just started): every
        // endpoint serves, as before revisions were told apart.
        let route = ServiceRoute::new("web", Protocol::Http, None)
            .with_revision(2)
            .with_backend(versioned("t1", 1, 1, true));
        assert_eq!(tasks(&route, route.next_revision(), &[]), ["t1"]);
    }

    #[test]
    fn ejected_backends_get_nothing_unless_nothing_else_is_left() {
        let route = ServiceRoute::new("web", Protocol::Http, None)
            .with_backend(Backend::new("t1", addr(1), true))
            .with_backend(Backend::new("t2", addr(2), true));
        for _ in 0..crate::health::EJECT_AFTER {
            route.backends[0].record(false);
        }
        assert_eq!(tasks(&route, 0, &[]), ["t2"]);
        assert_eq!(tasks(&route, 0, &[addr(2)]), ["t1"]);
    }

    #[test]
    fn removed_backend_is_never_picked() {
        let route = ServiceRoute::new("web", Protocol::Http, None).with_backend(Backend::new(
            "t2",
            addr(2),
            true,
        ));
        for _ in 0..100 {
            assert_eq!(pick(&route, 0, &[]).unwrap().address, addr(2));
        }
    }
}
