//! The image RPCs of the Scheduler API (issue 5): each request goes to the agent of one
//! node (`request.node`) or of every live node, through [`Agents`] (mTLS, the agent's
//! certificate checked against the node name), and the answers come back merged, each
//! tagged with its node. Registry credentials in a pull request pass through untouched and
//! are never logged.

use std::pin::Pin;

use futures::StreamExt;
use rctl_api::pb::*;
use tonic::{Code, Status};

use crate::agents::{Agents, Client};
use crate::grpc::ApiError;
use crate::store::Store;

pub type PullStream =
    Pin<Box<dyn futures::Stream<Item = Result<PullEvent, Status>> + Send + 'static>>;

/// The image side of the API: the store to find nodes, the agents to ask.
#[derive(Clone)]
pub struct Images {
    pub store: Store,
    pub agents: Agents,
}

/// The nodes a request goes to: `node` if named (it must be live), else every live node
/// (`pulling`: every live node that is not draining), sorted by name.
pub fn pick<'a>(
    nodes: &'a [Node],
    draining: &std::collections::HashSet<String>,
    node: &str,
    pulling: bool,
) -> Result<Vec<&'a Node>, ApiError> {
    if !node.is_empty() {
        return match nodes.iter().find(|n| n.name == node) {
            Some(n) => Ok(vec![n]),
            None => Err(ApiError::NodeNotFound(node.to_string())),
        };
    }
    let mut out: Vec<&Node> = nodes
        .iter()
        .filter(|n| !pulling || !draining.contains(&n.name))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// An agent's refusal, said by the scheduler with the node's name in front.
fn from_agent(node: &str, s: Status) -> ApiError {
    ApiError::Agent {
        node: node.to_string(),
        code: s.code(),
        message: s.message().to_string(),
    }
}

/// Of the per-node failures, the one to report: a refusal (in use) beats not-found.
fn worst(errors: Vec<ApiError>) -> Option<ApiError> {
    let rank = |e: &ApiError| match e {
        ApiError::Agent { code, .. } if *code == Code::NotFound => 0,
        _ => 1,
    };
    errors.into_iter().max_by_key(rank)
}

impl Images {
    async fn targets(&self, node: &str, pulling: bool) -> Result<Vec<(String, Client)>, ApiError> {
        let loaded = self.store.load().await?;
        let picked = pick(&loaded.nodes, &loaded.draining, node, pulling)?;
        Ok(picked
            .into_iter()
            .filter_map(|n| {
                let c = self.agents.client(&n.name, &n.address)?;
                Some((n.name.clone(), c))
            })
            .collect())
    }

    /// Calls every target with `call`, in parallel; answers in node order.
    async fn each<T, F, Fut>(
        &self,
        node: &str,
        call: F,
    ) -> Result<Vec<(String, Result<T, Status>)>, ApiError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let targets = self.targets(node, false).await?;
        let answers = futures::future::join_all(targets.into_iter().map(|(name, c)| {
            let fut = call(c);
            async move { (name, fut.await.map(tonic::Response::into_inner)) }
        }))
        .await;
        Ok(answers)
    }

    pub async fn list(&self, req: ListImagesRequest) -> Result<ListImagesResponse, ApiError> {
        let node = req.node.clone();
        let answers = self
            .each(&node, |mut c| {
                let r = req.clone();
                async move { c.list_images(r).await }
            })
            .await?;
        let mut images = Vec::new();
        for (name, a) in answers {
            match a {
                Ok(r) => images.extend(r.images.into_iter().map(|mut i| {
                    i.node = name.clone();
                    i
                })),
                // One unreachable node must not hide the others' images.
                Err(s) if node.is_empty() => {
                    tracing::warn!(node = %name, error = %s.message(), "list images")
                }
                Err(s) => return Err(from_agent(&name, s)),
            }
        }
        Ok(ListImagesResponse { images })
    }

    pub async fn remove(&self, req: RemoveImageRequest) -> Result<RemoveImageResponse, ApiError> {
        let answers = self
            .each(&req.node, |mut c| {
                let r = req.clone();
                async move { c.remove_image(r).await }
            })
            .await?;
        let mut out = RemoveImageResponse::default();
        let mut errors = Vec::new();
        for (name, a) in answers {
            match a {
                Ok(r) => {
                    out.nodes.push(name);
                    out.untagged.extend(r.untagged);
                    out.deleted.extend(r.deleted);
                    out.bytes_freed += r.bytes_freed;
                }
                Err(s) => errors.push(from_agent(&name, s)),
            }
        }
        out.untagged.sort();
        out.untagged.dedup();
        // Removed somewhere and absent elsewhere is success; a refusal anywhere is not.
        let refused = errors
            .iter()
            .any(|e| matches!(e, ApiError::Agent { code, .. } if *code != Code::NotFound));
        if out.nodes.is_empty() || refused {
            return Err(worst(errors).unwrap_or(ApiError::ImageNotFound(format!(
                "{} (no node is up)",
                req.reference
            ))));
        }
        Ok(out)
    }

    pub async fn inspect(
        &self,
        req: InspectImageRequest,
    ) -> Result<InspectImageResponse, ApiError> {
        let answers = self
            .each(&req.node, |mut c| {
                let r = req.clone();
                async move { c.inspect_image(r).await }
            })
            .await?;
        let mut images = Vec::new();
        let mut errors = Vec::new();
        for (name, a) in answers {
            match a {
                Ok(r) => images.extend(r.images.into_iter().map(|mut i| {
                    i.node = name.clone();
                    if let Some(s) = &mut i.summary {
                        s.node = name.clone();
                    }
                    i
                })),
                Err(s) => errors.push(from_agent(&name, s)),
            }
        }
        if images.is_empty() {
            return Err(worst(errors).unwrap_or(ApiError::ImageNotFound(req.reference.clone())));
        }
        Ok(InspectImageResponse { images })
    }

    pub async fn disk_usage(&self, req: DiskUsageRequest) -> Result<DiskUsageResponse, ApiError> {
        let answers = self
            .each(&req.node, |mut c| {
                let r = req.clone();
                async move { c.disk_usage(r).await }
            })
            .await?;
        let mut nodes = Vec::new();
        for (name, a) in answers {
            let r = a.map_err(|s| from_agent(&name, s))?;
            nodes.extend(r.nodes.into_iter().map(|mut u| {
                u.node = name.clone();
                for i in &mut u.image_list {
                    i.node = name.clone();
                }
                u
            }));
        }
        Ok(DiskUsageResponse { nodes })
    }

    pub async fn prune(&self, req: PruneRequest) -> Result<PruneResponse, ApiError> {
        let answers = self
            .each(&req.node, |mut c| {
                let r = req.clone();
                async move { c.prune(r).await }
            })
            .await?;
        let mut nodes = Vec::new();
        for (name, a) in answers {
            let r = a.map_err(|s| from_agent(&name, s))?;
            nodes.extend(r.nodes.into_iter().map(|mut p| {
                p.node = name.clone();
                p
            }));
        }
        Ok(PruneResponse { nodes })
    }

    /// Starts the pull on every target and merges their progress streams; a node that
    /// cannot be reached or fails ends with an `error` event, the others go on.
    pub async fn pull(&self, req: PullImageRequest) -> Result<PullStream, ApiError> {
        let targets = self.targets(&req.node, true).await?;
        if targets.is_empty() {
            return Err(ApiError::BadRequest("no node to pull on".into()));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        for (name, mut c) in targets {
            let (tx, r) = (tx.clone(), req.clone());
            tokio::spawn(async move {
                let tag = |mut e: PullEvent| {
                    e.node = name.clone();
                    e
                };
                let failed = |msg: String| PullEvent {
                    node: name.clone(),
                    event: Some(pull_event::Event::Error(msg)),
                };
                match c.pull_image(r).await {
                    Ok(stream) => {
                        let mut stream = stream.into_inner();
                        let mut finished = false;
                        while let Some(e) = stream.next().await {
                            let e = match e {
                                Ok(e) => {
                                    finished |= matches!(
                                        e.event,
                                        Some(
                                            pull_event::Event::Done(_)
                                                | pull_event::Event::Error(_)
                                        )
                                    );
                                    tag(e)
                                }
                                Err(s) => {
                                    finished = true;
                                    failed(s.message().to_string())
                                }
                            };
                            if tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                        if !finished {
                            let _ = tx
                                .send(Ok(failed("the agent stopped answering mid-pull".into())))
                                .await;
                        }
                    }
                    Err(s) => {
                        let _ = tx.send(Ok(failed(s.message().to_string()))).await;
                    }
                }
            });
        }
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_named_node_must_exist_and_pulls_skip_draining_nodes() {
        let nodes = [node("h2"), node("h1"), node("h3")];
        let draining: HashSet<String> = ["h3".to_string()].into();
        let names = |v: Vec<&Node>| v.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(pick(&nodes, &draining, "", false).unwrap()),
            ["h1", "h2", "h3"]
        );
        assert_eq!(
            names(pick(&nodes, &draining, "", true).unwrap()),
            ["h1", "h2"]
        );
        assert_eq!(names(pick(&nodes, &draining, "h3", true).unwrap()), ["h3"]);
        assert!(matches!(
            pick(&nodes, &draining, "h9", false),
            Err(ApiError::NodeNotFound(n)) if n == "h9"
        ));
    }

    #[test]
    fn a_refusal_on_one_node_wins_over_not_found_on_another() {
        let e = |code| ApiError::Agent {
            node: "h".into(),
            code,
            message: "m".into(),
        };
        let w = worst(vec![
            e(Code::NotFound),
            e(Code::FailedPrecondition),
            e(Code::NotFound),
        ]);
        assert!(matches!(
            w,
            Some(ApiError::Agent {
                code: Code::FailedPrecondition,
                ..
            })
        ));
    }
}
