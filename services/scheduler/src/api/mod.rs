//! The Scheduler gRPC API: validates requests, writes desired state to etcd, and reads
//! views for the CLI. Service RPCs never act on agents themselves: the controller does, on
//! the next pass (apply only asks one agent whether a change's new image exists, see
//! [`crate::image_check`]). One-off containers, images and streams are passed on to the
//! agents by [`crate::containers`], [`crate::images`] and [`crate::streams`].
//!
//! # Layout
//! - this file: the [`Api`] handle, the leader check, conflict retries, and the tonic
//!   trait, whose methods only unwrap requests and call the handlers below;
//! - [`services`]: apply, scale, list, inspect, remove, tasks;
//! - [`rollouts`]: history, rollback, promote/abort;
//! - [`nodes`]: list, drain, activate.

mod nodes;
mod rollouts;
mod services;

use rctl_api::pb::scheduler_server::Scheduler;
use rctl_api::pb::*;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::grpc::ApiError;
use crate::leader::Leadership;
use crate::store::{Store, StoreError};

/// How often a write that lost a race is retried against fresh state.
const CONFLICT_RETRIES: usize = 5;

pub struct Api {
    pub store: Store,
    /// Writes are taken only while this replica leads; followers point the client at the leader.
    pub leadership: Leadership,
    /// Image requests, passed on to the agents.
    pub images: crate::images::Images,
}

fn span<T>(req: &Request<T>, name: &'static str) -> tracing::Span {
    let span = tracing::info_span!("api", method = name);
    rctl_api::telemetry::accept(req, &span);
    span
}

/// Who makes a change: the client certificate's CN when the call came over mutual TLS,
/// else what the client says (the CLI sends $USER), else "unknown".
fn caller<T>(req: &Request<T>, claimed: &str) -> String {
    let cn = req
        .peer_certs()
        .and_then(|certs| certs.first().cloned())
        .and_then(|c| rctl_api::tls::identity_of(c.as_ref()).ok())
        .map(|p| p.name);
    match cn {
        Some(name) => name,
        None if !claimed.trim().is_empty() => claimed.trim().to_string(),
        None => "unknown".into(),
    }
}

/// Runs `f` again while it loses optimistic-concurrency races.
async fn retrying<T, F, Fut>(mut f: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let mut n = 0;
    loop {
        match f().await {
            Err(ApiError::Store(StoreError::Conflict(_))) if n < CONFLICT_RETRIES => n += 1,
            other => return other,
        }
    }
}

impl Api {
    /// The stream RPCs' handle: the same store and agent channels as the image RPCs.
    fn streams(&self) -> crate::streams::Streams {
        crate::streams::Streams {
            store: self.store.clone(),
            agents: self.images.agents.clone(),
        }
    }

    /// The one-off containers' handle: the same store and agent channels.
    fn containers(&self) -> crate::containers::Containers {
        crate::containers::Containers {
            store: self.store.clone(),
            agents: self.images.agents.clone(),
        }
    }

    /// Refuses a write on a follower, naming the leader's address when one is known.
    async fn require_leader(&self) -> Result<(), ApiError> {
        if self.leadership.is_leader() {
            return Ok(());
        }
        let leader = self
            .leadership
            .leader()
            .await
            .map(|c| c.addr)
            .filter(|a| !a.is_empty());
        Err(ApiError::NotLeader(leader))
    }
}

#[tonic::async_trait]
impl Scheduler for Api {
    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let span = span(&req, "Apply");
        async move {
            let who = caller(&req, &req.get_ref().who);
            let r = req.into_inner();
            let spec = r
                .spec
                .ok_or_else(|| Status::invalid_argument("apply: missing spec"))?;
            Ok(Response::new(
                self.apply(spec, &who, &r.message, r.exclusive, r.canary)
                    .await?,
            ))
        }
        .instrument(span)
        .await
    }

    async fn scale(&self, req: Request<ScaleRequest>) -> Result<Response<ScaleResponse>, Status> {
        let span = span(&req, "Scale");
        async move { Ok(Response::new(self.scale(req.into_inner().targets).await?)) }
            .instrument(span)
            .await
    }

    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        let span = span(&req, "ListServices");
        async move { Ok(Response::new(self.list_services().await?)) }
            .instrument(span)
            .await
    }

    async fn control_rollout(
        &self,
        req: Request<ControlRolloutRequest>,
    ) -> Result<Response<ControlRolloutResponse>, Status> {
        let span = span(&req, "ControlRollout");
        async move {
            let r = req.into_inner();
            Ok(Response::new(
                self.control_rollout(&r.service, &r.action).await?,
            ))
        }
        .instrument(span)
        .await
    }

    async fn inspect_service(
        &self,
        req: Request<InspectServiceRequest>,
    ) -> Result<Response<InspectServiceResponse>, Status> {
        let span = span(&req, "InspectService");
        async move { Ok(Response::new(self.inspect(&req.into_inner().name).await?)) }
            .instrument(span)
            .await
    }

    async fn remove_service(
        &self,
        req: Request<RemoveServiceRequest>,
    ) -> Result<Response<RemoveServiceResponse>, Status> {
        let span = span(&req, "RemoveService");
        async move { Ok(Response::new(self.remove(&req.into_inner().name).await?)) }
            .instrument(span)
            .await
    }

    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let span = span(&req, "ListTasks");
        async move { Ok(Response::new(self.list_tasks(req.into_inner()).await?)) }
            .instrument(span)
            .await
    }

    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let span = span(&req, "ListNodes");
        async move { Ok(Response::new(self.list_nodes().await?)) }
            .instrument(span)
            .await
    }

    async fn drain_node(
        &self,
        req: Request<DrainNodeRequest>,
    ) -> Result<Response<DrainNodeResponse>, Status> {
        let span = span(&req, "DrainNode");
        async move {
            Ok(Response::new(
                self.drain_node(&req.into_inner().node).await?,
            ))
        }
        .instrument(span)
        .await
    }

    async fn activate_node(
        &self,
        req: Request<ActivateNodeRequest>,
    ) -> Result<Response<ActivateNodeResponse>, Status> {
        let span = span(&req, "ActivateNode");
        async move {
            Ok(Response::new(
                self.activate_node(&req.into_inner().node).await?,
            ))
        }
        .instrument(span)
        .await
    }

    // === images (issue 5): passed on to the agents by crate::images ===

    async fn list_images(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let span = span(&req, "ListImages");
        async move { Ok(Response::new(self.images.list(req.into_inner()).await?)) }
            .instrument(span)
            .await
    }

    type PullImageStream = crate::images::PullStream;

    async fn pull_image(
        &self,
        req: Request<PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        // Nothing of the request is logged: it may carry registry credentials.
        let span = span(&req, "PullImage");
        async move { Ok(Response::new(self.images.pull(req.into_inner()).await?)) }
            .instrument(span)
            .await
    }

    async fn remove_image(
        &self,
        req: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let span = span(&req, "RemoveImage");
        async move { Ok(Response::new(self.images.remove(req.into_inner()).await?)) }
            .instrument(span)
            .await
    }

    async fn inspect_image(
        &self,
        req: Request<InspectImageRequest>,
    ) -> Result<Response<InspectImageResponse>, Status> {
        let span = span(&req, "InspectImage");
        async move { Ok(Response::new(self.images.inspect(req.into_inner()).await?)) }
            .instrument(span)
            .await
    }

    async fn disk_usage(
        &self,
        req: Request<DiskUsageRequest>,
    ) -> Result<Response<DiskUsageResponse>, Status> {
        let span = span(&req, "DiskUsage");
        async move {
            Ok(Response::new(
                self.images.disk_usage(req.into_inner()).await?,
            ))
        }
        .instrument(span)
        .await
    }

    async fn prune(&self, req: Request<PruneRequest>) -> Result<Response<PruneResponse>, Status> {
        let span = span(&req, "Prune");
        async move {
            let req = req.into_inner();
            // One-off containers go through the scheduler (their keys and names), like rm;
            // the agents then prune what only they know.
            let gone = self.containers().prune(&req.node).await?;
            let mut resp = self.images.prune(req).await?;
            for (node, id) in gone {
                match resp.nodes.iter_mut().find(|n| n.node == node) {
                    Some(n) if !n.containers.contains(&id) => n.containers.push(id),
                    Some(_) => {}
                    None => resp.nodes.push(PruneReport {
                        node,
                        containers: vec![id],
                        ..Default::default()
                    }),
                }
            }
            Ok(Response::new(resp))
        }
        .instrument(span)
        .await
    }

    async fn revision_history(
        &self,
        req: Request<RevisionHistoryRequest>,
    ) -> Result<Response<RevisionHistoryResponse>, Status> {
        let span = span(&req, "RevisionHistory");
        async move { Ok(Response::new(self.history(&req.get_ref().service).await?)) }
            .instrument(span)
            .await
    }

    async fn rollback(
        &self,
        req: Request<RollbackRequest>,
    ) -> Result<Response<RollbackResponse>, Status> {
        let span = span(&req, "Rollback");
        async move {
            let who = caller(&req, &req.get_ref().who);
            Ok(Response::new(self.rollback(req.into_inner(), &who).await?))
        }
        .instrument(span)
        .await
    }

    // === streams (issue 9): resolved and passed on to the agents by crate::streams ===

    type LogsStream = crate::streams::LogsStream;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let span = span(&req, "Logs");
        async move { Ok(Response::new(self.streams().logs(req.into_inner()).await?)) }
            .instrument(span)
            .await
    }

    type AttachStream = crate::streams::OutputStream;

    async fn attach(
        &self,
        req: Request<tonic::Streaming<StreamInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let span = span(&req, "Attach");
        async move {
            Ok(Response::new(
                self.streams().proxy(req.into_inner(), false).await?,
            ))
        }
        .instrument(span)
        .await
    }

    type ExecStream = crate::streams::OutputStream;

    async fn exec(
        &self,
        req: Request<tonic::Streaming<StreamInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let span = span(&req, "Exec");
        async move {
            Ok(Response::new(
                self.streams().proxy(req.into_inner(), true).await?,
            ))
        }
        .instrument(span)
        .await
    }

    async fn stats(&self, req: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let span = span(&req, "Stats");
        async move { Ok(Response::new(self.streams().stats(req.into_inner()).await?)) }
            .instrument(span)
            .await
    }

    async fn top(&self, req: Request<TopRequest>) -> Result<Response<TopResponse>, Status> {
        let span = span(&req, "Top");
        async move { Ok(Response::new(self.streams().top(req.into_inner()).await?)) }
            .instrument(span)
            .await
    }

    // === containers (issue 9): crate::containers does the work ===

    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let span = span(&req, "CreateContainer");
        async move {
            Ok(Response::new(
                self.containers().create(req.into_inner()).await?,
            ))
        }
        .instrument(span)
        .await
    }

    async fn start_container(
        &self,
        req: Request<ContainerRequest>,
    ) -> Result<Response<ContainerResponse>, Status> {
        let span = span(&req, "StartContainer");
        async move {
            Ok(Response::new(
                self.containers().start(req.into_inner()).await?,
            ))
        }
        .instrument(span)
        .await
    }

    async fn stop_container(
        &self,
        req: Request<ContainerRequest>,
    ) -> Result<Response<ContainerResponse>, Status> {
        let span = span(&req, "StopContainer");
        async move {
            Ok(Response::new(
                self.containers().stop(req.into_inner()).await?,
            ))
        }
        .instrument(span)
        .await
    }

    async fn restart_container(
        &self,
        req: Request<ContainerRequest>,
    ) -> Result<Response<ContainerResponse>, Status> {
        let span = span(&req, "RestartContainer");
        async move {
            Ok(Response::new(
                self.containers().restart(req.into_inner()).await?,
            ))
        }
        .instrument(span)
        .await
    }

    async fn kill_container(
        &self,
        req: Request<ContainerRequest>,
    ) -> Result<Response<ContainerResponse>, Status> {
        let span = span(&req, "KillContainer");
        async move {
            Ok(Response::new(
                self.containers().kill(req.into_inner()).await?,
            ))
        }
        .instrument(span)
        .await
    }

    async fn remove_container(
        &self,
        req: Request<ContainerRequest>,
    ) -> Result<Response<ContainerResponse>, Status> {
        let span = span(&req, "RemoveContainer");
        async move {
            Ok(Response::new(
                self.containers().remove(req.into_inner()).await?,
            ))
        }
        .instrument(span)
        .await
    }

    async fn rename_container(
        &self,
        req: Request<RenameContainerRequest>,
    ) -> Result<Response<ContainerResponse>, Status> {
        let span = span(&req, "RenameContainer");
        async move {
            Ok(Response::new(
                self.containers().rename(req.into_inner()).await?,
            ))
        }
        .instrument(span)
        .await
    }

    async fn list_containers(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let span = span(&req, "ListContainers");
        async move {
            Ok(Response::new(
                self.containers().list(req.into_inner()).await?,
            ))
        }
        .instrument(span)
        .await
    }

    async fn inspect_container(
        &self,
        req: Request<ContainerRequest>,
    ) -> Result<Response<ContainerResponse>, Status> {
        let span = span(&req, "InspectContainer");
        async move {
            Ok(Response::new(
                self.containers().inspect(req.into_inner()).await?,
            ))
        }
        .instrument(span)
        .await
    }

    // === pull on run (issue 9) ===

    type FollowPullStream = crate::images::PullStream;

    async fn follow_pull(
        &self,
        req: Request<FollowPullRequest>,
    ) -> Result<Response<Self::FollowPullStream>, Status> {
        let span = span(&req, "FollowPull");
        async move {
            Ok(Response::new(
                self.containers().follow_pull(req.into_inner()).await?,
            ))
        }
        .instrument(span)
        .await
    }
}
