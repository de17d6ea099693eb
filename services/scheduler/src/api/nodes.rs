//! Node RPCs: the listing (with nodes that went away but still hold tasks), drain and
//! activate.

use std::collections::{BTreeSet, HashSet};

use rctl_api::pb::*;

use super::Api;
use crate::grpc::ApiError;

impl Api {
    pub(super) async fn list_nodes(&self) -> Result<ListNodesResponse, ApiError> {
        let loaded = self.store.load().await?;
        let now = rctl_api::clock::now_unix_ms();
        let tasks_on = |node: &str| {
            loaded
                .tasks
                .iter()
                .filter(|t| t.node == node && t.desired_state() == DesiredState::Running)
                .count() as u32
        };
        let ages = futures::future::join_all(loaded.nodes.iter().map(|n| async {
            match loaded.node_leases.get(&n.name) {
                Some(&lease) => self.store.lease_age(lease).await,
                None => None,
            }
        }))
        .await;
        let mut nodes: Vec<NodeView> = loaded
            .nodes
            .iter()
            .zip(ages)
            .map(|(n, age)| NodeView {
                node: Some(n.clone()),
                state: if loaded.draining.contains(&n.name) {
                    "draining"
                } else {
                    "ready"
                }
                .into(),
                tasks: tasks_on(&n.name),
                last_heartbeat_unix_ms: age.map_or(0, |a| now - a.as_millis() as i64),
            })
            .collect();
        // A node whose agent is gone (its lease expired) but that still has tasks or a drain
        // mark is listed as down, so it does not silently vanish from the listing.
        let live: HashSet<&str> = loaded.nodes.iter().map(|n| n.name.as_str()).collect();
        let gone: BTreeSet<&str> = loaded
            .tasks
            .iter()
            .filter(|t| t.desired_state() == DesiredState::Running)
            .map(|t| t.node.as_str())
            .chain(loaded.draining.iter().map(String::as_str))
            .filter(|n| !n.is_empty() && !live.contains(n))
            .collect();
        nodes.extend(gone.into_iter().map(|name| NodeView {
            node: Some(Node {
                name: name.to_string(),
                ..Default::default()
            }),
            state: "down".into(),
            tasks: tasks_on(name),
            last_heartbeat_unix_ms: 0,
        }));
        nodes.sort_by(|a, b| {
            a.node
                .as_ref()
                .map(|n| &n.name)
                .cmp(&b.node.as_ref().map(|n| &n.name))
        });
        Ok(ListNodesResponse { nodes })
    }

    pub(super) async fn drain_node(&self, node: &str) -> Result<DrainNodeResponse, ApiError> {
        self.require_leader().await?;
        let loaded = self.store.load().await?;
        if !loaded.nodes.iter().any(|n| n.name == node) {
            return Err(ApiError::NodeNotFound(node.into()));
        }
        let drain = NodeDrain {
            since_unix_ms: rctl_api::clock::now_unix_ms(),
        };
        self.store.put_drain(node, &drain).await?;
        tracing::info!(node = %node, "drain");
        Ok(DrainNodeResponse {})
    }

    pub(super) async fn activate_node(&self, node: &str) -> Result<ActivateNodeResponse, ApiError> {
        self.require_leader().await?;
        let loaded = self.store.load().await?;
        let live = loaded.nodes.iter().any(|n| n.name == node);
        // A drained node whose agent is away may still be activated.
        if !self.store.delete_drain(node).await? && !live {
            return Err(ApiError::NodeNotFound(node.into()));
        }
        tracing::info!(node = %node, "activate");
        Ok(ActivateNodeResponse {})
    }
}
