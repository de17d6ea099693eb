//! Endpoint selection: power-of-two-choices on least outstanding requests.
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
    let n = loads.len();
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
            Some(if loads[j] < loads[i] { j } else { i })
        }
    }
}

/// The backends of `route` that may get a new request: healthy and not in `tried` (the
/// ones that already refused a connection for this request).
pub fn eligible<'a>(route: &'a ServiceRoute, tried: &[SocketAddr]) -> Vec<&'a Arc<Backend>> {
    route
        .backends
        .iter()
        .filter(|b| b.healthy && !tried.contains(&b.address))
        .collect()
}

/// Picks a backend of `route` for one request or connection, skipping `tried`.
pub fn pick(route: &ServiceRoute, tried: &[SocketAddr]) -> Option<Arc<Backend>> {
    let candidates = eligible(route, tried);
    let loads: Vec<usize> = candidates.iter().map(|b| b.load()).collect();
    let i = choose(&loads, rand::random(), rand::random())?;
    Some(candidates[i].clone())
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
            let b = pick(&route, &[addr(3)]).unwrap();
            assert_eq!(b.task_id, "t2");
        }
        assert!(pick(&route, &[addr(2), addr(3)]).is_none());
    }

    #[test]
    fn pick_prefers_the_idle_backend() {
        let route = ServiceRoute::new("web", Protocol::Http, None)
            .with_backend(Backend::new("t1", addr(1), true))
            .with_backend(Backend::new("t2", addr(2), true));
        let _busy = route.backends[0].start();
        for _ in 0..100 {
            assert_eq!(pick(&route, &[]).unwrap().task_id, "t2");
        }
    }

    #[test]
    fn removed_backend_is_never_picked() {
        let route = ServiceRoute::new("web", Protocol::Http, None).with_backend(Backend::new(
            "t2",
            addr(2),
            true,
        ));
        for _ in 0..100 {
            assert_eq!(pick(&route, &[]).unwrap().address, addr(2));
        }
    }
}
