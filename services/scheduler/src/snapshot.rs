//! What the scheduler's decisions read: desired and actual state at one etcd revision, as
//! plain data borrowed from a store read ([`crate::store::Loaded::snapshot`]). Reconcile,
//! rollout progress and the placement of one-off containers all decide over it; time is an
//! input (`now_ms`), so every decision is a pure function of a snapshot.

use std::collections::{HashMap, HashSet};

use rctl_api::pb::{
    CanaryRollout, DesiredState, LbStats, Node, Revision, Service, Task, TaskStatus,
};

use crate::placement::{Ask, Usage};

/// Everything the decisions read.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    pub services: &'a [Service],
    /// Tasks of services (`tasks/{svc}/{task}`).
    pub tasks: &'a [Task],
    /// One-off containers (`containers/{id}`): not reconciled, but they take room on their
    /// node like any task.
    pub containers: &'a [Task],
    /// Last reported status, by task id.
    pub statuses: &'a HashMap<String, TaskStatus>,
    /// Nodes that hold a lease now.
    pub nodes: &'a [Node],
    /// Names of the nodes being drained.
    pub draining: &'a HashSet<String>,
    /// Names of the live load balancers (`lbs/{name}`).
    pub lbs: &'a HashSet<String>,
    /// LBs that reported a task drained (`drained/{svc}/{task}/{lb}`), by task id.
    pub drained: &'a HashMap<String, HashSet<String>>,
    /// Ids of the tasks with an endpoint in etcd (`endpoints/{svc}/{task}`).
    pub endpoints: &'a HashSet<String>,
    /// Canary rollouts (`rollouts/{svc}`), by service name.
    pub rollouts: &'a HashMap<String, CanaryRollout>,
    /// Kept revisions (`revisions/{svc}/{n}`), oldest first, by service name.
    pub revisions: &'a HashMap<String, Vec<Revision>>,
    /// Every LB's stats (`stats/{svc}/{lb}`), by service name.
    pub stats: &'a HashMap<String, Vec<LbStats>>,
    pub now_ms: i64,
}

impl<'a> Snapshot<'a> {
    pub fn service(&self, name: &str) -> Option<&'a Service> {
        self.services
            .iter()
            .find(|s| s.spec.as_ref().is_some_and(|sp| sp.name == name))
    }

    /// The kept revisions of `service`, oldest first.
    pub fn history(&self, service: &str) -> &'a [Revision] {
        self.revisions
            .get(service)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Count and resources of what runs on every live node: the active tasks of every
    /// service and the one-off containers meant to run, each asking what its own spec
    /// asked. This is what placement spreads against and what it finds free, for service
    /// tasks and containers alike.
    pub fn usage(&self) -> HashMap<String, Usage> {
        let live: HashSet<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        let mut usage: HashMap<String, Usage> = HashMap::new();
        for t in self.tasks.iter().chain(self.containers) {
            if t.desired_state() == DesiredState::Running && live.contains(t.node.as_str()) {
                usage
                    .entry(t.node.clone())
                    .or_default()
                    .add(Ask::of(t.resources.as_ref()));
            }
        }
        usage
    }
}
