//! Placement: which node a new task goes to. Pure functions over plain data.
//!
//! As in Nomad's feasibility stack and the Kubernetes scheduler framework, a task first goes
//! through [`FILTERS`], each of which rejects a node with a named reason; the feasible nodes
//! are then scored by spread:
//! - by node (default): the node with the fewest tasks of the same service wins, then the
//!   node with the fewest tasks overall, then the name (deterministic and testable);
//! - by a label (e.g. `zone`): first the label value whose nodes hold the fewest tasks of the
//!   service, then the node-level order above.
//!
//! When no node fits, [`summary`] explains why, e.g. `0/3 nodes: 2 insufficient memory,
//! 1 constraint not met`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use rctl_api::placement::{Constraint, SPREAD_NODE, STRATEGY_BINPACK};

/// Why nothing is placed when there is no node at all.
pub const NO_NODES: &str = "no nodes available";

// Each reason reads after a count of nodes: "0/3 nodes: 2 draining, 1 not ready".
pub const FILTER_NODE_STATE: &str = "not ready";
pub const FILTER_NODE_DRAINING: &str = "draining";
pub const FILTER_CONSTRAINT: &str = "constraint not met";
pub const FILTER_CPU: &str = "insufficient cpu";
pub const FILTER_MEMORY: &str = "insufficient memory";

/// What a task asks of a node. CPUs in thousandths, so sums are exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    pub millicpus: u64,
    pub memory_bytes: u64,
}

impl Ask {
    /// From the spec's resources; no resources asks nothing.
    pub fn of(r: Option<&rctl_api::pb::Resources>) -> Ask {
        r.map(|r| Ask {
            millicpus: millicpus(r.cpus),
            memory_bytes: r.memory_bytes,
        })
        .unwrap_or_default()
    }

    fn add(&mut self, o: Ask) {
        self.millicpus += o.millicpus;
        self.memory_bytes += o.memory_bytes;
    }
}

pub fn millicpus(cpus: f64) -> u64 {
    if cpus.is_finite() && cpus > 0.0 {
        (cpus * 1000.0).round() as u64
    } else {
        0
    }
}

/// What placement knows of a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Candidate {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Every node in a snapshot holds its lease, so this is true for now; the slot is kept
    /// for unhealthy nodes (draining has its own flag).
    pub ready: bool,
    /// Drained by an operator (`rctl node drain`): takes no new tasks.
    pub draining: bool,
    pub capacity: Ask,
    /// Sum of the asks of the active tasks on this node.
    pub used: Ask,
    /// Active tasks of the service being placed on this node.
    pub service_tasks: u32,
    /// Active tasks of every service on this node.
    pub total_tasks: u32,
}

/// What is being placed.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub ask: Ask,
    /// Parsed constraints; `None` for one that does not parse (matches no node).
    pub constraints: Vec<Option<Constraint>>,
    /// "" or "node", or a label name.
    pub spread: String,
    /// Fill the fullest fitting node first instead of spreading.
    pub binpack: bool,
}

impl Request {
    pub fn of(spec: &rctl_api::pb::ServiceSpec) -> Request {
        let p = spec.placement.clone().unwrap_or_default();
        Request {
            ask: Ask::of(spec.resources.as_ref()),
            constraints: p
                .constraints
                .iter()
                .map(|c| Constraint::parse(c).ok())
                .collect(),
            spread: p.spread,
            binpack: p.strategy == STRATEGY_BINPACK,
        }
    }
}

/// A filter passes a node or names why not.
pub type Filter = fn(&Candidate, &Request) -> Result<(), &'static str>;

/// The filters, in order; a node is rejected with the reason of the first that fails.
pub const FILTERS: &[Filter] = &[node_state, constraints, cpu, memory];

pub fn node_state(c: &Candidate, _: &Request) -> Result<(), &'static str> {
    if !c.ready {
        Err(FILTER_NODE_STATE)
    } else if c.draining {
        Err(FILTER_NODE_DRAINING)
    } else {
        Ok(())
    }
}

pub fn constraints(c: &Candidate, r: &Request) -> Result<(), &'static str> {
    let ok = r.constraints.iter().all(|k| {
        k.as_ref()
            .is_some_and(|k| k.matches(&c.name, |key| c.labels.get(key).map(String::as_str)))
    });
    if ok {
        Ok(())
    } else {
        Err(FILTER_CONSTRAINT)
    }
}

pub fn cpu(c: &Candidate, r: &Request) -> Result<(), &'static str> {
    if c.used.millicpus + r.ask.millicpus <= c.capacity.millicpus || r.ask.millicpus == 0 {
        Ok(())
    } else {
        Err(FILTER_CPU)
    }
}

pub fn memory(c: &Candidate, r: &Request) -> Result<(), &'static str> {
    if c.used.memory_bytes + r.ask.memory_bytes <= c.capacity.memory_bytes
        || r.ask.memory_bytes == 0
    {
        Ok(())
    } else {
        Err(FILTER_MEMORY)
    }
}

/// Runs the filters on one node.
pub fn feasible(c: &Candidate, r: &Request) -> Result<(), &'static str> {
    FILTERS.iter().try_for_each(|f| f(c, r))
}

/// "0/3 nodes: 2 insufficient memory, 1 constraint not met": most frequent reason first.
pub fn summary(total: usize, reasons: &[&'static str]) -> String {
    if total == 0 {
        return NO_NODES.into();
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reasons {
        *counts.entry(r).or_default() += 1;
    }
    let mut counts: Vec<(&str, usize)> = counts.into_iter().collect();
    counts.sort_by_key(|(r, n)| (std::cmp::Reverse(*n), *r));
    let parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    let fit = total.saturating_sub(reasons.len());
    format!("{fit}/{total} nodes: {}", parts.join(", "))
}

/// Picks the node for one more task, or `Err(summary)` when no node passes the filters.
pub fn pick<'a>(candidates: &'a [Candidate], r: &Request) -> Result<&'a Candidate, String> {
    let mut rejected = Vec::new();
    let mut fit = Vec::new();
    for c in candidates {
        match feasible(c, r) {
            Ok(()) => fit.push(c),
            Err(why) => rejected.push(why),
        }
    }
    let by_label = spreads_by_label(r);
    let mut group: HashMap<&str, u32> = HashMap::new();
    if by_label {
        for c in candidates {
            *group.entry(label_value(c, &r.spread)).or_default() += c.service_tasks;
        }
    }
    let key = |c: &'a Candidate| {
        let g = if by_label {
            group[label_value(c, &r.spread)]
        } else {
            0
        };
        (g, score(c, r), c.name.as_str())
    };
    fit.into_iter()
        .min_by_key(|c| key(c))
        .ok_or_else(|| summary(candidates.len(), &rejected))
}

/// Whether tasks spread over the values of a label (then nodes), not over nodes only.
fn spreads_by_label(r: &Request) -> bool {
    !(r.binpack || r.spread.is_empty() || r.spread == SPREAD_NODE)
}

/// A node's rank for one more task, lower first (the name breaks ties). Spread: fewest of
/// the service's tasks, then fewest overall. Binpack: least memory left, then least CPU
/// left, then most tasks, so one node fills before the next is used.
fn score(c: &Candidate, r: &Request) -> (u64, u64, u64) {
    if r.binpack {
        (
            c.capacity.memory_bytes.saturating_sub(c.used.memory_bytes),
            c.capacity.millicpus.saturating_sub(c.used.millicpus),
            u64::from(u32::MAX - c.total_tasks),
        )
    } else {
        (u64::from(c.service_tasks), u64::from(c.total_tasks), 0)
    }
}

/// A node without the label forms the "" group.
fn label_value<'a>(c: &'a Candidate, label: &str) -> &'a str {
    c.labels.get(label).map(String::as_str).unwrap_or("")
}

/// Places `count` tasks one after the other, each choice seeing the previous ones (counts
/// and resources), and returns the chosen node names in order, plus why the rest could
/// not be placed.
///
/// Each choice is exactly [`pick`]'s, without scanning every node each time: the feasible
/// nodes sit in a min-heap per spread group, keyed like `pick`'s order. A choice only
/// changes the chosen node (and its group's count), so only that node moves in its heap,
/// and a node that stops fitting never fits again in this call (asks only grow). Ten
/// thousand tasks on a thousand nodes cost ten thousand heap operations, not ten million
/// filter runs.
pub fn place(
    candidates: &mut [Candidate],
    r: &Request,
    count: usize,
) -> (Vec<String>, Option<String>) {
    let mut out = Vec::with_capacity(count);
    if count == 0 {
        return (out, None);
    }
    // The name breaks the last tie; its rank stands in for it in the heap keys.
    let mut by_name: Vec<usize> = (0..candidates.len()).collect();
    by_name.sort_by(|a, b| candidates[*a].name.cmp(&candidates[*b].name));
    let mut rank = vec![0usize; candidates.len()];
    for (k, &i) in by_name.iter().enumerate() {
        rank[i] = k;
    }
    // Spread by node is one group; by label, one group per label value, whose count of the
    // service's tasks (over every node, fitting or not) is compared first.
    let by_label = spreads_by_label(r);
    let mut group_ids: HashMap<&str, usize> = HashMap::new();
    let mut group_of = Vec::with_capacity(candidates.len());
    let mut group_tasks: Vec<u32> = Vec::new();
    for c in candidates.iter() {
        let value = if by_label {
            label_value(c, &r.spread)
        } else {
            ""
        };
        let next = group_ids.len();
        let g = *group_ids.entry(value).or_insert(next);
        if g == group_tasks.len() {
            group_tasks.push(0);
        }
        if by_label {
            group_tasks[g] += c.service_tasks;
        }
        group_of.push(g);
    }
    drop(group_ids);
    type Key = Reverse<((u64, u64, u64), usize, usize)>;
    let key = |c: &Candidate, i: usize| Reverse((score(c, r), rank[i], i));
    let mut heaps: Vec<BinaryHeap<Key>> = vec![BinaryHeap::new(); group_tasks.len()];
    for (i, c) in candidates.iter().enumerate() {
        if feasible(c, r).is_ok() {
            heaps[group_of[i]].push(key(c, i));
        }
    }
    for _ in 0..count {
        let best = heaps
            .iter()
            .enumerate()
            .filter_map(|(g, h)| h.peek().map(|Reverse(k)| ((group_tasks[g], *k), g)))
            .min()
            .map(|(_, g)| g);
        let Some(g) = best else {
            let rejected: Vec<&'static str> = candidates
                .iter()
                .filter_map(|c| feasible(c, r).err())
                .collect();
            return (out, Some(summary(candidates.len(), &rejected)));
        };
        let Reverse((_, _, i)) = heaps[g].pop().expect("the chosen group has a top");
        let c = &mut candidates[i];
        c.service_tasks += 1;
        c.total_tasks += 1;
        c.used.add(r.ask);
        group_tasks[g] += u32::from(by_label);
        if feasible(c, r).is_ok() {
            heaps[g].push(key(c, i));
        }
        out.push(c.name.clone());
    }
    (out, None)
}

/// What is already on a node: counts and resources of its active tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub tasks: u32,
    pub used: Ask,
}

impl Usage {
    pub fn add(&mut self, ask: Ask) {
        self.tasks += 1;
        self.used.add(ask);
    }
}

/// Builds candidates from the nodes, which of them drain, what all active tasks use per
/// node, and the nodes of the active tasks of the service being placed.
pub fn candidates<'a>(
    nodes: &[rctl_api::pb::Node],
    draining: &HashSet<String>,
    usage: &HashMap<String, Usage>,
    service_task_nodes: impl IntoIterator<Item = &'a str>,
) -> Vec<Candidate> {
    let mut per_service: HashMap<&str, u32> = HashMap::new();
    for n in service_task_nodes {
        *per_service.entry(n).or_default() += 1;
    }
    nodes
        .iter()
        .map(|n| {
            let u = usage.get(&n.name).copied().unwrap_or_default();
            Candidate {
                name: n.name.clone(),
                labels: n.labels.clone().into_iter().collect(),
                ready: true,
                draining: draining.contains(&n.name),
                capacity: Ask {
                    millicpus: millicpus(n.cpus),
                    memory_bytes: n.memory_bytes,
                },
                used: u.used,
                service_tasks: per_service.get(n.name.as_str()).copied().unwrap_or(0),
                total_tasks: u.tasks,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GI: u64 = 1 << 30;

    fn cand(name: &str, s: u32, t: u32) -> Candidate {
        Candidate {
            name: name.into(),
            ready: true,
            capacity: Ask {
                millicpus: 2000,
                memory_bytes: 4 * GI,
            },
            service_tasks: s,
            total_tasks: t,
            ..Default::default()
        }
    }

    fn label(mut c: Candidate, k: &str, v: &str) -> Candidate {
        c.labels.insert(k.into(), v.into());
        c
    }

    fn req() -> Request {
        Request::default()
    }

    fn with_constraints(cs: &[&str]) -> Request {
        Request {
            constraints: cs.iter().map(|c| Constraint::parse(c).ok()).collect(),
            ..req()
        }
    }

    fn name(r: Result<&Candidate, String>) -> String {
        r.map(|c| c.name.clone()).unwrap_or_else(|e| e)
    }

    #[test]
    fn no_nodes_places_nothing() {
        assert_eq!(name(pick(&[], &req())), NO_NODES);
        let (got, why) = place(&mut [], &req(), 3);
        assert!(got.is_empty());
        assert_eq!(why.as_deref(), Some(NO_NODES));
    }

    #[test]
    fn fewest_of_the_service_wins_over_fewest_overall() {
        let c = [cand("h1", 2, 2), cand("h2", 1, 9)];
        assert_eq!(name(pick(&c, &req())), "h2");
    }

    #[test]
    fn ties_break_on_total_then_name() {
        assert_eq!(
            name(pick(&[cand("h2", 0, 1), cand("h1", 0, 3)], &req())),
            "h2"
        );
        assert_eq!(
            name(pick(&[cand("h2", 0, 0), cand("h1", 0, 0)], &req())),
            "h1"
        );
    }

    #[test]
    fn spread_evens_out_over_nodes() {
        let mut c = [cand("h1", 1, 1), cand("h2", 0, 0), cand("h3", 0, 0)];
        let (got, why) = place(&mut c, &req(), 5);
        assert_eq!(why, None);
        let count = |n: &str| got.iter().filter(|x| *x == n).count() + usize::from(n == "h1");
        assert_eq!((count("h1"), count("h2"), count("h3")), (2, 2, 2));
    }

    #[test]
    fn filters_name_their_reason() {
        let mut full = cand("h1", 0, 0);
        full.used.memory_bytes = 4 * GI;
        let mut busy = cand("h2", 0, 0);
        busy.used.millicpus = 2000;
        let web = label(cand("h3", 0, 0), "role", "web");
        let mut not_ready = cand("h4", 0, 0);
        not_ready.ready = false;
        let mut draining = cand("h5", 0, 0);
        draining.draining = true;
        let r = Request {
            ask: Ask {
                millicpus: 500,
                memory_bytes: GI,
            },
            ..with_constraints(&["role == web"])
        };
        assert_eq!(feasible(&web, &r), Ok(()));
        assert_eq!(feasible(&not_ready, &r), Err(FILTER_NODE_STATE));
        assert_eq!(feasible(&draining, &req()), Err(FILTER_NODE_DRAINING));
        let r2 = Request {
            constraints: vec![],
            ..r.clone()
        };
        assert_eq!(feasible(&full, &r2), Err(FILTER_MEMORY));
        assert_eq!(feasible(&busy, &r2), Err(FILTER_CPU));
        assert_eq!(feasible(&full, &r), Err(FILTER_CONSTRAINT));
        assert_eq!(
            feasible(&full, &req()),
            Ok(()),
            "a task with no resources asks nothing"
        );
    }

    #[test]
    fn an_unparsable_constraint_matches_nothing() {
        let r = Request {
            constraints: vec![None],
            ..req()
        };
        assert_eq!(feasible(&cand("h1", 0, 0), &r), Err(FILTER_CONSTRAINT));
    }

    #[test]
    fn summary_counts_reasons_most_frequent_first() {
        assert_eq!(
            summary(3, &[FILTER_CONSTRAINT, FILTER_MEMORY, FILTER_MEMORY]),
            "0/3 nodes: 2 insufficient memory, 1 constraint not met"
        );
        assert_eq!(
            summary(2, &[FILTER_MEMORY, FILTER_CPU]),
            "0/2 nodes: 1 insufficient cpu, 1 insufficient memory"
        );
    }

    #[test]
    fn placing_consumes_resources() {
        let mut c = [cand("h1", 0, 0)];
        let r = Request {
            ask: Ask {
                millicpus: 0,
                memory_bytes: 3 * GI / 2,
            },
            ..req()
        };
        let (got, why) = place(&mut c, &r, 3);
        assert_eq!(got, vec!["h1", "h1"]);
        assert_eq!(why.as_deref(), Some("0/1 nodes: 1 insufficient memory"));
    }

    #[test]
    fn label_spread_balances_label_values_first() {
        // Zone a holds one task on h1; h2 (zone a) is emptier than h3 (zone b) overall, but
        // zone b has none of the service.
        let c = [
            label(cand("h1", 1, 1), "zone", "a"),
            label(cand("h2", 0, 0), "zone", "a"),
            label(cand("h3", 0, 5), "zone", "b"),
        ];
        let r = Request {
            spread: "zone".into(),
            ..req()
        };
        assert_eq!(name(pick(&c, &r)), "h3");
        assert_eq!(name(pick(&c, &req())), "h2", "node spread ignores zones");
    }

    /// The definition `place` must match: one full `pick` per task.
    fn place_by_pick(
        candidates: &mut [Candidate],
        r: &Request,
        count: usize,
    ) -> (Vec<String>, Option<String>) {
        let mut out = Vec::new();
        for _ in 0..count {
            let best = match pick(candidates, r) {
                Ok(b) => b.name.clone(),
                Err(why) => return (out, Some(why)),
            };
            let n = candidates.iter_mut().find(|n| n.name == best).unwrap();
            n.service_tasks += 1;
            n.total_tasks += 1;
            n.used.add(r.ask);
            out.push(best);
        }
        (out, None)
    }

    #[test]
    fn ten_thousand_tasks_on_a_thousand_nodes_spread_evenly() {
        let mut nodes: Vec<Candidate> = (0..1000)
            .map(|i| cand(&format!("n{i:04}"), 0, (i % 7) as u32))
            .collect();
        let (got, why) = place(&mut nodes, &req(), 10_000);
        assert_eq!(why, None);
        assert_eq!(got.len(), 10_000);
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for n in &got {
            *per_node.entry(n.as_str()).or_default() += 1;
        }
        assert_eq!(per_node.len(), 1000);
        let (min, max) = (per_node.values().min(), per_node.values().max());
        assert_eq!((min, max), (Some(&10), Some(&10)));

        // Resources run out part-way: exactly what fits is placed, and the rest is explained.
        let mut small: Vec<Candidate> =
            (0..1000).map(|i| cand(&format!("n{i:04}"), 0, 0)).collect();
        let r = Request {
            ask: Ask {
                millicpus: 300,
                memory_bytes: 0,
            },
            ..req()
        };
        let (got, why) = place(&mut small, &r, 10_000);
        assert_eq!(
            got.len(),
            6_000,
            "2000 millicpus hold 6 asks of 300 per node"
        );
        assert_eq!(why.as_deref(), Some("0/1000 nodes: 1000 insufficient cpu"));
    }

    #[test]
    fn binpack_fills_the_fullest_fitting_node_first() {
        let mut cs = vec![cand("h1", 0, 0), cand("h2", 0, 0), cand("h3", 0, 0)];
        cs[1].used.memory_bytes = GI; // h2 is the fullest
        cs[2].used.memory_bytes = 3 * GI + GI / 2; // h3 has no room for 1 GiB
        let r = Request {
            ask: Ask {
                millicpus: 100,
                memory_bytes: GI,
            },
            binpack: true,
            ..req()
        };
        let (placed, why) = place(&mut cs, &r, 5);
        // h2 takes three (4 GiB full), then h1; h3 never fits.
        assert_eq!(placed, ["h2", "h2", "h2", "h1", "h1"]);
        assert_eq!(why, None);
        // Without resources asked, binpack still piles onto the busiest node.
        let mut cs = vec![cand("a", 0, 1), cand("b", 0, 3)];
        let r = Request {
            binpack: true,
            ..req()
        };
        assert_eq!(place(&mut cs, &r, 2).0, ["b", "b"]);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn candidate() -> impl Strategy<Value = (u32, u32, u8, u64, u64)> {
            (0u32..4, 0u32..6, 0u8..4, 0u64..3000, 0u64..(4 * GI))
        }

        proptest! {
            /// The heap-based `place` chooses exactly what one `pick` per task chooses, for
            /// spread by node, by label and binpack, with filters that start or stop passing.
            #[test]
            fn place_matches_pick_per_task(
                nodes in proptest::collection::vec(candidate(), 0..12),
                count in 0usize..40,
                by_zone in any::<bool>(),
                binpack in any::<bool>(),
                millicpus in 0u64..800,
                memory in 0u64..GI,
            ) {
                let mut cs: Vec<Candidate> = nodes
                    .iter()
                    .enumerate()
                    .map(|(i, &(s, t, zone, cpu, mem))| {
                        let mut c = cand(&format!("h{}", (i * 7) % 12), s, s + t);
                        c.name.push_str(&i.to_string());
                        c.used = Ask { millicpus: cpu.min(2000), memory_bytes: mem };
                        if zone > 0 {
                            c = label(c, "zone", &format!("z{zone}"));
                        }
                        c.draining = zone == 3 && s == 3;
                        c
                    })
                    .collect();
                let r = Request {
                    ask: Ask { millicpus, memory_bytes: memory },
                    spread: if by_zone && !binpack { "zone".into() } else { String::new() },
                    binpack,
                    ..req()
                };
                let mut reference = cs.clone();
                let want = place_by_pick(&mut reference, &r, count);
                let got = place(&mut cs, &r, count);
                prop_assert_eq!(got, want);
                prop_assert_eq!(cs, reference);
            }
        }
    }

    #[test]
    fn candidates_sum_usage_per_node() {
        let nodes = [
            rctl_api::pb::Node {
                name: "h1".into(),
                cpus: 2.0,
                memory_bytes: 4 * GI,
                ..Default::default()
            },
            rctl_api::pb::Node {
                name: "h2".into(),
                ..Default::default()
            },
        ];
        let mut usage: HashMap<String, Usage> = HashMap::new();
        let ask = Ask {
            millicpus: 250,
            memory_bytes: GI,
        };
        usage.entry("h1".into()).or_default().add(ask);
        usage.entry("h1".into()).or_default().add(Ask::default());
        let draining = HashSet::from(["h2".to_string()]);
        let c = candidates(&nodes, &draining, &usage, ["h1"]);
        assert!(!c[0].draining && c[1].draining);
        assert_eq!(c[0].service_tasks, 1);
        assert_eq!(c[0].total_tasks, 2);
        assert_eq!(c[0].used, ask);
        assert_eq!(c[0].capacity.millicpus, 2000);
        assert_eq!((c[1].service_tasks, c[1].total_tasks), (0, 0));
    }
}
