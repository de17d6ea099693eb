//! Checking a change's image before it is written (issue 8): a new or changed image is
//! resolved in its registry by one live ready node's agent (`ResolveImage`: the manifest
//! only, no layers), so `apply`, `rollout start` and `rollback` naming an image that does
//! not exist fail at once, with nothing changed, instead of leaving failed tasks behind.
//!
//! The agent asks, not the scheduler, because the agents hold the registry credentials and
//! the route to the registry that the tasks' pulls will use. With no node to ask, the
//! change goes through unchecked and the answer carries a warning: a cluster whose agents
//! are all down must still take desired state.

use std::collections::HashSet;
use std::time::Duration;

use rctl_api::pb::{Node, ResolveImageRequest, ServiceSpec};
use rctl_api::reference::registry_of;
use tonic::Code;

use crate::agents::Agents;

/// How many ready nodes are tried, in turn, when one cannot be reached.
const MAX_ASKED: usize = 3;
/// An agent retries a registry that resets connections; past this it is unreachable.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why an image was refused; each says what to do and that nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageCheckError {
    #[error("image {image:?} not found in registry {registry} (push it first or fix the tag); nothing changed")]
    NotFound { image: String, registry: String },
    #[error("registry {registry} refused image {image:?} to node {node} ({reason}); log the nodes in (rctl login) or fix the image; nothing changed")]
    Refused {
        image: String,
        registry: String,
        node: String,
        reason: String,
    },
    #[error("registry {registry} of image {image:?} cannot be reached from node {node} ({reason}); check the registry or the image name; nothing changed")]
    Unreachable {
        image: String,
        registry: String,
        node: String,
        reason: String,
    },
    #[error("invalid image reference {image:?}: {reason}")]
    Invalid { image: String, reason: String },
}

/// What a check came to when the image was not refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Not a new image: nothing to check.
    Unneeded,
    /// The registry has it; the manifest digest it names.
    Found(String),
    /// No node could be asked; the warning for the answer.
    Unchecked(String),
}

impl Checked {
    pub fn warning(&self) -> Option<String> {
        match self {
            Checked::Unchecked(w) => Some(w.clone()),
            _ => None,
        }
    }
}

/// Whether writing `new` over `old` makes tasks pull an image they have not pulled yet.
pub fn needs_check(old: Option<&ServiceSpec>, new: &ServiceSpec) -> bool {
    old.is_none_or(|o| o.image != new.image)
}

/// The nodes to ask, in order: live and not draining, by name (a deterministic choice keeps
/// a flaky registry route from answering differently on every try).
pub fn askable<'a>(nodes: &'a [Node], draining: &HashSet<String>) -> Vec<&'a Node> {
    let mut out: Vec<&Node> = nodes
        .iter()
        .filter(|n| !draining.contains(&n.name))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.truncate(MAX_ASKED);
    out
}

/// An agent's answer, judged: `Ok(Some(digest))` found, `Err` refused, `Ok(None)` the agent
/// itself could not be asked (try another node). The agent prefixes its own refusals with
/// "resolve ", which tells them from a transport failure carrying the same code.
pub fn judge(
    image: &str,
    node: &str,
    answer: Result<String, (Code, String)>,
) -> Result<Option<String>, ImageCheckError> {
    let (code, message) = match answer {
        Ok(digest) => return Ok(Some(digest)),
        Err(e) => e,
    };
    let registry = registry_of(image).to_string();
    let from_agent = message.starts_with("resolve ");
    // The agent's message repeats the reference; keep only its reason.
    let reason = message
        .strip_prefix(&format!("resolve {image}: "))
        .unwrap_or(&message)
        .to_string();
    let image = image.to_string();
    let node = node.to_string();
    match code {
        Code::NotFound => Err(ImageCheckError::NotFound { image, registry }),
        Code::PermissionDenied | Code::Unauthenticated => Err(ImageCheckError::Refused {
            image,
            registry,
            node,
            reason,
        }),
        Code::InvalidArgument => Err(ImageCheckError::Invalid { image, reason }),
        Code::DeadlineExceeded => Err(ImageCheckError::Unreachable {
            image,
            registry,
            node,
            reason: format!("no answer in {}s", RESOLVE_TIMEOUT.as_secs()),
        }),
        _ if from_agent => Err(ImageCheckError::Unreachable {
            image,
            registry,
            node,
            reason,
        }),
        _ => Ok(None),
    }
}

/// Resolves `image` through the first of `nodes` whose agent answers.
pub async fn check(
    agents: &Agents,
    nodes: &[&Node],
    image: &str,
) -> Result<Checked, ImageCheckError> {
    for n in nodes {
        let Some(mut client) = agents.client(&n.name, &n.address) else {
            continue;
        };
        let mut req = tonic::Request::new(ResolveImageRequest {
            reference: image.to_string(),
            auth: Vec::new(),
        });
        req.set_timeout(RESOLVE_TIMEOUT);
        let answer = match tokio::time::timeout(RESOLVE_TIMEOUT, client.resolve_image(req)).await {
            Ok(Ok(r)) => Ok(r.into_inner().manifest_digest),
            Ok(Err(s)) => Err((s.code(), s.message().to_string())),
            Err(_) => Err((Code::DeadlineExceeded, String::new())),
        };
        match judge(image, &n.name, answer) {
            Ok(Some(digest)) => return Ok(Checked::Found(digest)),
            Ok(None) => {
                tracing::warn!(node = %n.name, image, "could not ask the agent to resolve the image")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Checked::Unchecked(format!(
        "image {image:?} was not checked in its registry: no ready node answered; its tasks will fail to start if it does not exist"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_new_or_changed_image_is_checked() {
        let spec = |image: &str, replicas| ServiceSpec {
            image: image.into(),
            replicas,
            ..Default::default()
        };
        assert!(needs_check(None, &spec("r:5000/a:1", 1)));
        assert!(needs_check(
            Some(&spec("r:5000/a:1", 1)),
            &spec("r:5000/a:2", 1)
        ));
        assert!(!needs_check(
            Some(&spec("r:5000/a:1", 1)),
            &spec("r:5000/a:1", 5)
        ));
    }

    #[test]
    fn ready_nodes_are_asked_by_name_and_draining_ones_not_at_all() {
        let nodes = [node("h3"), node("h1"), node("h2"), node("h4"), node("h0")];
        let draining: HashSet<String> = ["h0".to_string()].into();
        let names: Vec<&str> = askable(&nodes, &draining)
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(names, ["h1", "h2", "h3"]);
        let all: HashSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
        assert!(askable(&nodes, &all).is_empty());
    }

    #[test]
    fn answers_become_found_refused_or_ask_another_node() {
        let img = "127.0.0.1:5000/rctl/nope:v1";
        assert_eq!(
            judge(img, "h1", Ok("sha256:ab".into())),
            Ok(Some("sha256:ab".into()))
        );
        let missing = judge(
            img,
            "h1",
            Err((Code::NotFound, format!("resolve {img}: manifest unknown"))),
        )
        .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "image \"127.0.0.1:5000/rctl/nope:v1\" not found in registry 127.0.0.1:5000 (push it first or fix the tag); nothing changed"
        );
        let refused = judge(
            img,
            "h1",
            Err((
                Code::PermissionDenied,
                format!("resolve {img}: unauthorized: run rctl login 127.0.0.1:5000"),
            )),
        )
        .unwrap_err();
        assert!(
            matches!(&refused, ImageCheckError::Refused { reason, node, .. }
                if reason == "unauthorized: run rctl login 127.0.0.1:5000" && node == "h1"),
            "{refused:?}"
        );
        let down = judge(
            img,
            "h2",
            Err((
                Code::Unavailable,
                format!("resolve {img}: connection refused"),
            )),
        )
        .unwrap_err();
        assert!(
            matches!(down, ImageCheckError::Unreachable { .. }),
            "{down:?}"
        );
        // The agent itself unreachable, or too old to know the RPC: ask another node.
        assert_eq!(
            judge(
                img,
                "h1",
                Err((Code::Unavailable, "transport error".into()))
            ),
            Ok(None)
        );
        assert_eq!(
            judge(img, "h1", Err((Code::Unimplemented, String::new()))),
            Ok(None)
        );
    }
}
