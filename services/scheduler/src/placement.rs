//! Placement: which node a new task goes to. Pure functions over plain data.
//!
//! Spread is the only strategy so far: the node with the fewest tasks of the same service
//! wins, then the node with the fewest tasks overall, then the name (so the choice is
//! deterministic and testable).

use std::collections::HashMap;

/// What placement knows of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    /// Active tasks of the service being placed on this node.
    pub service_tasks: u32,
    /// Active tasks of every service on this node.
    pub total_tasks: u32,
}

/// Picks the node for one more task, or `None` if there is no node at all.
pub fn pick(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates.iter().min_by(|a, b| {
        (a.service_tasks, a.total_tasks, &a.name).cmp(&(b.service_tasks, b.total_tasks, &b.name))
    })
}

/// Places `count` tasks one after the other, each choice seeing the previous ones,
/// and returns the chosen node names in order.
pub fn spread(candidates: &[Candidate], count: usize) -> Vec<String> {
    let mut c = candidates.to_vec();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let Some(best) = pick(&c).map(|b| b.name.clone()) else {
            break;
        };
        if let Some(n) = c.iter_mut().find(|n| n.name == best) {
            n.service_tasks += 1;
            n.total_tasks += 1;
        }
        out.push(best);
    }
    out
}

/// Builds candidates from node names and the nodes of the active tasks.
pub fn candidates<'a>(
    nodes: impl IntoIterator<Item = &'a str>,
    service_task_nodes: impl IntoIterator<Item = &'a str>,
    all_task_nodes: impl IntoIterator<Item = &'a str>,
) -> Vec<Candidate> {
    let count = |it: &mut dyn Iterator<Item = &'a str>| {
        let mut m: HashMap<&str, u32> = HashMap::new();
        for n in it {
            *m.entry(n).or_default() += 1;
        }
        m
    };
    let per_service = count(&mut service_task_nodes.into_iter());
    let total = count(&mut all_task_nodes.into_iter());
    nodes
        .into_iter()
        .map(|n| Candidate {
            name: n.to_string(),
            service_tasks: per_service.get(n).copied().unwrap_or(0),
            total_tasks: total.get(n).copied().unwrap_or(0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, s: u32, t: u32) -> Candidate {
        Candidate {
            name: name.into(),
            service_tasks: s,
            total_tasks: t,
        }
    }

    #[test]
    fn no_nodes_places_nothing() {
        assert!(pick(&[]).is_none());
        assert!(spread(&[], 3).is_empty());
    }

    #[test]
    fn fewest_of_the_service_wins_over_fewest_overall() {
        let c = [cand("h1", 2, 2), cand("h2", 1, 9)];
        assert_eq!(pick(&c).unwrap().name, "h2");
    }

    #[test]
    fn ties_break_on_total_then_name() {
        assert_eq!(
            pick(&[cand("h2", 0, 1), cand("h1", 0, 3)]).unwrap().name,
            "h2"
        );
        assert_eq!(
            pick(&[cand("h2", 0, 0), cand("h1", 0, 0)]).unwrap().name,
            "h1"
        );
    }

    #[test]
    fn spread_evens_out_over_nodes() {
        let c = [cand("h1", 1, 1), cand("h2", 0, 0), cand("h3", 0, 0)];
        let got = spread(&c, 5);
        let count = |n: &str| got.iter().filter(|x| *x == n).count() + usize::from(n == "h1");
        assert_eq!((count("h1"), count("h2"), count("h3")), (2, 2, 2));
    }

    #[test]
    fn candidates_count_tasks_per_node() {
        let c = candidates(["h1", "h2"], ["h1", "h1"], ["h1", "h1", "h2", "gone"]);
        assert_eq!(c, vec![cand("h1", 2, 2), cand("h2", 0, 1)]);
    }
}
