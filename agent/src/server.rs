//! The Agent gRPC API (the scheduler's handle on this host), and the one place task errors
//! become `tonic::Status`.

use std::time::Duration;

use rctl_api::pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::image::ImageStore;
use crate::tasks::{TaskError, Tasks};

pub struct AgentService {
    tasks: Tasks,
    /// The same store the tasks pull through (clones share leases and locks).
    images: ImageStore,
}

impl AgentService {
    pub fn new(tasks: Tasks, images: ImageStore) -> Self {
        Self { tasks, images }
    }
}

/// The one mapping of task errors to gRPC status, shared with the hollow nodes.
pub(crate) fn to_status(e: TaskError) -> Status {
    match e {
        TaskError::Invalid(_) | TaskError::Lifecycle(_) => Status::invalid_argument(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn run_task(
        &self,
        req: Request<pb::RunTaskRequest>,
    ) -> Result<Response<pb::RunTaskResponse>, Status> {
        let span = tracing::info_span!("run_task", task = tracing::field::Empty);
        rctl_api::telemetry::accept(&req, &span);
        let tasks = self.tasks.clone();
        async move {
            let task = req
                .into_inner()
                .task
                .ok_or_else(|| Status::invalid_argument("missing task"))?;
            tracing::Span::current().record("task", task.id.as_str());
            tasks.run_task(task).await.map_err(to_status)?;
            Ok(Response::new(pb::RunTaskResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn stop_task(
        &self,
        req: Request<pb::StopTaskRequest>,
    ) -> Result<Response<pb::StopTaskResponse>, Status> {
        let span = tracing::info_span!("stop_task", task = tracing::field::Empty);
        rctl_api::telemetry::accept(&req, &span);
        let _enter = span.enter();
        let r = req.into_inner();
        span.record("task", r.task_id.as_str());
        let timeout = (r.timeout_ms != 0).then(|| Duration::from_millis(r.timeout_ms));
        self.tasks.stop_task(&r.task_id, timeout, r.remove);
        Ok(Response::new(pb::StopTaskResponse {}))
    }

    // === images (issue 5): the conversions live in image_api.rs ===

    async fn list_images(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        crate::image_api::list(&self.images, req.into_inner()).await
    }

    type PullImageStream = crate::image_api::PullStream;

    async fn pull_image(
        &self,
        req: Request<pb::PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        crate::image_api::pull(&self.images, req.into_inner())
    }

    async fn remove_image(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        crate::image_api::remove(&self.images, req.into_inner()).await
    }

    async fn inspect_image(
        &self,
        req: Request<pb::InspectImageRequest>,
    ) -> Result<Response<pb::InspectImageResponse>, Status> {
        crate::image_api::inspect(&self.images, req.into_inner()).await
    }

    async fn disk_usage(
        &self,
        _req: Request<pb::DiskUsageRequest>,
    ) -> Result<Response<pb::DiskUsageResponse>, Status> {
        crate::image_api::disk_usage(&self.images).await
    }

    async fn prune(
        &self,
        req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        crate::image_api::prune(&self.images, req.into_inner()).await
    }
}
