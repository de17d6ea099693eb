//! The Agent gRPC API of one hollow node (`crate::hollow`): the task RPCs go to the node's
//! real [`Tasks`] as on an agent, with every image already here; a hollow node has no
//! images to list and no processes to stream from, so those RPCs answer as for an empty
//! host or refuse.

use std::sync::Arc;

use rctl_api::pb;
use tonic::{Request, Response, Status};

use super::{status, tasks, LogsStream, OutputStream, PullStream};
use crate::image::Image;
use crate::task::Tasks;

/// The Agent gRPC API of one hollow node.
pub struct HollowAgent {
    /// The node's tasks, over a simulated runtime.
    pub tasks: Tasks,
    /// What every image reference is on this node (`crate::hollow::image`).
    pub image: Arc<Image>,
}

#[tonic::async_trait]
impl pb::agent_server::Agent for HollowAgent {
    async fn run_task(
        &self,
        req: Request<pb::RunTaskRequest>,
    ) -> Result<Response<pb::RunTaskResponse>, Status> {
        let task = req
            .into_inner()
            .task
            .ok_or_else(|| Status::invalid_argument("missing task"))?;
        self.tasks
            .run_task_here(task, (*self.image).clone())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RunTaskResponse::default()))
    }

    async fn stop_task(
        &self,
        req: Request<pb::StopTaskRequest>,
    ) -> Result<Response<pb::StopTaskResponse>, Status> {
        Ok(tasks::stop(&self.tasks, req))
    }

    // === images: a hollow node has none and pulls none ===

    async fn list_images(
        &self,
        _req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        Ok(Response::new(pb::ListImagesResponse::default()))
    }

    type PullImageStream = PullStream;

    async fn pull_image(
        &self,
        _req: Request<pb::PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        Err(Status::unimplemented("a hollow node does not pull images"))
    }

    async fn remove_image(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        Err(Status::not_found(format!(
            "no such image: {}",
            req.into_inner().reference
        )))
    }

    async fn inspect_image(
        &self,
        req: Request<pb::InspectImageRequest>,
    ) -> Result<Response<pb::InspectImageResponse>, Status> {
        Err(Status::not_found(format!(
            "no such image: {}",
            req.into_inner().reference
        )))
    }

    async fn disk_usage(
        &self,
        _req: Request<pb::DiskUsageRequest>,
    ) -> Result<Response<pb::DiskUsageResponse>, Status> {
        Ok(Response::new(pb::DiskUsageResponse {
            nodes: vec![pb::DiskUsage::default()],
        }))
    }

    async fn prune(
        &self,
        _req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        Ok(Response::new(pb::PruneResponse {
            nodes: vec![pb::PruneReport::default()],
        }))
    }

    // === streams (issue 9): a hollow node runs no containers ===

    type LogsStream = LogsStream;

    async fn logs(
        &self,
        _req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        Err(Status::unimplemented("a hollow node has no containers"))
    }

    type AttachStream = OutputStream;

    async fn attach(
        &self,
        _req: Request<tonic::Streaming<pb::StreamInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        Err(Status::unimplemented("a hollow node has no containers"))
    }

    type ExecStream = OutputStream;

    async fn exec(
        &self,
        _req: Request<tonic::Streaming<pb::StreamInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        Err(Status::unimplemented("a hollow node has no containers"))
    }

    async fn stats(
        &self,
        _req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        Ok(Response::new(pb::StatsResponse::default()))
    }

    async fn top(
        &self,
        _req: Request<pb::TopRequest>,
    ) -> Result<Response<pb::TopResponse>, Status> {
        Err(Status::unimplemented("a hollow node has no containers"))
    }

    /// Every image exists for a hollow node: it runs no containers, and a hollow cluster
    /// has no registry to ask.
    async fn resolve_image(
        &self,
        _req: Request<pb::ResolveImageRequest>,
    ) -> Result<Response<pb::ResolveImageResponse>, Status> {
        Ok(Response::new(pb::ResolveImageResponse::default()))
    }

    async fn start_task(
        &self,
        req: Request<pb::StartTaskRequest>,
    ) -> Result<Response<pb::StartTaskResponse>, Status> {
        tasks::start(&self.tasks, req.into_inner())
    }

    async fn kill_task(
        &self,
        req: Request<pb::KillTaskRequest>,
    ) -> Result<Response<pb::KillTaskResponse>, Status> {
        tasks::kill(&self.tasks, req.into_inner())
    }

    type FollowTaskPullStream = PullStream;

    async fn follow_task_pull(
        &self,
        _req: Request<pb::FollowTaskPullRequest>,
    ) -> Result<Response<Self::FollowTaskPullStream>, Status> {
        Err(Status::failed_precondition("a hollow node pulls no image"))
    }
}
