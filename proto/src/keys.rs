//! The etcd key schema (ARCHITECTURE.md, "etcd schema"): every key rctl reads or writes is built here.

/// Root of every rctl key.
pub const ROOT: &str = "/rctl/v1/";

pub fn nodes_prefix() -> String {
    format!("{ROOT}nodes/")
}
pub fn node(name: &str) -> String {
    format!("{ROOT}nodes/{name}")
}

pub fn drain_prefix() -> String {
    format!("{ROOT}drain/")
}
/// A node's drain mark, written by the scheduler: unlike `nodes/{name}` it is under no
/// lease, so it survives the agent.
pub fn node_drain(name: &str) -> String {
    format!("{ROOT}drain/{name}")
}

pub fn services_prefix() -> String {
    format!("{ROOT}services/")
}
pub fn service(name: &str) -> String {
    format!("{ROOT}services/{name}")
}

pub fn tasks_prefix() -> String {
    format!("{ROOT}tasks/")
}
pub fn service_tasks_prefix(service: &str) -> String {
    format!("{ROOT}tasks/{service}/")
}
pub fn task(service: &str, task: &str) -> String {
    format!("{ROOT}tasks/{service}/{task}")
}

pub fn containers_prefix() -> String {
    format!("{ROOT}containers/")
}
/// A one-off container (`rctl run`): a [`crate::pb::Task`] with no service, written by the
/// scheduler API together with its name's key in one transaction.
pub fn container(id: &str) -> String {
    format!("{ROOT}containers/{id}")
}

pub fn container_names_prefix() -> String {
    format!("{ROOT}container-names/")
}
/// The id of the one-off container called `name`: the index that makes names unique.
pub fn container_name(name: &str) -> String {
    format!("{ROOT}container-names/{name}")
}

pub fn status_prefix() -> String {
    format!("{ROOT}status/")
}
pub fn node_status_prefix(node: &str) -> String {
    format!("{ROOT}status/{node}/")
}
pub fn status(node: &str, task: &str) -> String {
    format!("{ROOT}status/{node}/{task}")
}

pub fn endpoints_prefix() -> String {
    format!("{ROOT}endpoints/")
}
pub fn service_endpoints_prefix(service: &str) -> String {
    format!("{ROOT}endpoints/{service}/")
}
pub fn endpoint(service: &str, task: &str) -> String {
    format!("{ROOT}endpoints/{service}/{task}")
}

pub fn lbs_prefix() -> String {
    format!("{ROOT}lbs/")
}
/// A running rctl-lb, under its lease: the LBs whose `drained/` reports a stop waits for.
pub fn lb(name: &str) -> String {
    format!("{ROOT}lbs/{name}")
}

pub fn drained_prefix() -> String {
    format!("{ROOT}drained/")
}
pub fn task_drained_prefix(service: &str, task: &str) -> String {
    format!("{ROOT}drained/{service}/{task}/")
}
/// Written by LB `lb` under its lease once it has drained the endpoint of `task`.
pub fn drained(service: &str, task: &str, lb: &str) -> String {
    format!("{ROOT}drained/{service}/{task}/{lb}")
}

pub fn stats_prefix() -> String {
    format!("{ROOT}stats/")
}
/// LB `lb`'s per-revision counters of `service`.
pub fn stats(service: &str, lb: &str) -> String {
    format!("{ROOT}stats/{service}/{lb}")
}

pub fn revisions_prefix() -> String {
    format!("{ROOT}revisions/")
}
pub fn service_revisions_prefix(service: &str) -> String {
    format!("{ROOT}revisions/{service}/")
}
/// One kept revision of `service`; zero-padded so that key order is revision order.
pub fn revision(service: &str, revision: u64) -> String {
    format!("{ROOT}revisions/{service}/{revision:020}")
}

pub fn rollouts_prefix() -> String {
    format!("{ROOT}rollouts/")
}
/// `service`'s canary rollout state ([`crate::pb::CanaryRollout`]), written by the leader.
pub fn rollout(service: &str) -> String {
    format!("{ROOT}rollouts/{service}")
}

/// The key of the scheduler's leader election.
pub fn leader() -> String {
    format!("{ROOT}leader")
}

/// The last path segment of a key: the name of the thing it stores.
pub fn leaf(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Whether `name` may be used as a key segment: DNS-label-like, so names stay
/// valid as hostnames, interface suffixes and path components.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nest_under_their_prefixes() {
        assert!(task("web", "t1").starts_with(&service_tasks_prefix("web")));
        assert!(service_tasks_prefix("web").starts_with(&tasks_prefix()));
        assert!(status("h1", "t1").starts_with(&node_status_prefix("h1")));
        assert!(endpoint("web", "t1").starts_with(&service_endpoints_prefix("web")));
        assert_eq!(leaf(&task("web", "t1")), "t1");
        assert!(revision("web", 9).starts_with(&service_revisions_prefix("web")));
        assert!(
            revision("web", 9) < revision("web", 10),
            "key order is revision order"
        );
        assert!(!revision("web", 1).starts_with(&service_revisions_prefix("we")));
        assert!(node_drain("h1").starts_with(&drain_prefix()));
        assert!(!node_drain("h1").starts_with(&nodes_prefix()));
        assert!(container("c1").starts_with(&containers_prefix()));
        assert!(!container_name("c1").starts_with(&containers_prefix()));
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(valid_name("web-1"));
        assert!(!valid_name(""));
        assert!(!valid_name("Web"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("-a"));
        assert!(!valid_name(&"a".repeat(64)));
    }
}
