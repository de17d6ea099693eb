//! The Agent gRPC API (the scheduler's and the CLI's handle on this host): requests become
//! calls into the task actors, the image store and the container streams, results become
//! protobuf messages, and domain errors become `tonic::Status` once, in [`status`].
//!
//! # Layout
//! - this file: [`AgentService`] (the Agent trait, each RPC one line into a room) and
//!   [`status`], the one mapping of [`Error`] to gRPC.
//! - [`tasks`]: RunTask, StopTask, StartTask, KillTask, FollowTaskPull.
//! - [`images`]: the image RPCs.
//! - [`streams`]: logs, attach, exec, stats and top.
//! - [`hollow`]: the Agent API of a hollow node (`crate::hollow`).

use rctl_api::pb;
use tonic::{Code, Request, Response, Status};

use crate::image::lifecycle::LifecycleError;
use crate::image::registry::RegistryError;
use crate::image::ImageStore;
use crate::streams::StreamError;
use crate::task::{TaskError, Tasks};

pub mod hollow;
pub mod images;
pub mod streams;
pub mod tasks;

pub use images::PullStream;
pub use streams::{LogsStream, OutputStream};

/// The Agent API of this host.
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

/// A domain error on its way to a gRPC client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Image(#[from] LifecycleError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// An image reference that does not parse.
    #[error("{0}")]
    Reference(RegistryError),
    /// A manifest lookup that failed (see [`images::resolve_code`]).
    #[error("resolve {reference}: {source}")]
    Resolve {
        reference: String,
        #[source]
        source: RegistryError,
    },
}

/// The one mapping of domain errors to gRPC status.
pub fn status(e: impl Into<Error>) -> Status {
    let e = e.into();
    let code = match &e {
        Error::Task(t) => match t {
            TaskError::Invalid(_) | TaskError::Lifecycle(_) => Code::InvalidArgument,
            TaskError::NotFound(_) => Code::NotFound,
            TaskError::NotRunning(_)
            | TaskError::NotPulling(_)
            | TaskError::PortAllocated { .. }
            | TaskError::HostIp(_)
            | TaskError::Limits(_)
            | TaskError::Disk(_)
            | TaskError::Mount(_) => Code::FailedPrecondition,
            _ => Code::Internal,
        },
        Error::Image(i) => match i {
            LifecycleError::NotFound(_) => Code::NotFound,
            LifecycleError::InUse { .. } => Code::FailedPrecondition,
            LifecycleError::Io { .. } => Code::Internal,
        },
        Error::Stream(s) => match s {
            StreamError::NotFound(_) => Code::NotFound,
            StreamError::NotRunning(_) => Code::FailedPrecondition,
            StreamError::Invalid(_) => Code::InvalidArgument,
            StreamError::Exec(crate::runtime::exec::ExecError::NoCommand) => Code::InvalidArgument,
            StreamError::NoExitStatus => Code::Unavailable,
            _ => Code::Internal,
        },
        Error::Reference(_) => Code::InvalidArgument,
        Error::Resolve { source, .. } => images::resolve_code(source),
    };
    Status::new(code, e.to_string())
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    // === tasks: tasks.rs ===

    async fn run_task(
        &self,
        req: Request<pb::RunTaskRequest>,
    ) -> Result<Response<pb::RunTaskResponse>, Status> {
        tasks::run(&self.tasks, req).await
    }

    async fn stop_task(
        &self,
        req: Request<pb::StopTaskRequest>,
    ) -> Result<Response<pb::StopTaskResponse>, Status> {
        Ok(tasks::stop(&self.tasks, req))
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
        req: Request<pb::FollowTaskPullRequest>,
    ) -> Result<Response<Self::FollowTaskPullStream>, Status> {
        tasks::follow_pull(&self.tasks, req.into_inner())
    }

    // === images: images.rs ===

    async fn list_images(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        images::list(&self.images, req.into_inner()).await
    }

    type PullImageStream = PullStream;

    async fn pull_image(
        &self,
        req: Request<pb::PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        images::pull(&self.images, req.into_inner())
    }

    async fn remove_image(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        images::remove(&self.images, req.into_inner()).await
    }

    async fn inspect_image(
        &self,
        req: Request<pb::InspectImageRequest>,
    ) -> Result<Response<pb::InspectImageResponse>, Status> {
        images::inspect(&self.images, req.into_inner()).await
    }

    async fn disk_usage(
        &self,
        _req: Request<pb::DiskUsageRequest>,
    ) -> Result<Response<pb::DiskUsageResponse>, Status> {
        images::disk_usage(&self.images).await
    }

    async fn prune(
        &self,
        req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        images::prune(&self.images, req.into_inner()).await
    }

    async fn resolve_image(
        &self,
        req: Request<pb::ResolveImageRequest>,
    ) -> Result<Response<pb::ResolveImageResponse>, Status> {
        images::resolve(&self.images, req.into_inner()).await
    }

    // === streams: streams.rs ===

    type LogsStream = LogsStream;

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        streams::logs(&self.tasks, req.into_inner())
    }

    type AttachStream = OutputStream;

    async fn attach(
        &self,
        req: Request<tonic::Streaming<pb::StreamInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        streams::attach(&self.tasks, req.into_inner()).await
    }

    type ExecStream = OutputStream;

    async fn exec(
        &self,
        req: Request<tonic::Streaming<pb::StreamInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        streams::exec(&self.tasks, req.into_inner()).await
    }

    async fn stats(
        &self,
        req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        streams::stats(&self.tasks, req.into_inner()).await
    }

    async fn top(&self, req: Request<pb::TopRequest>) -> Result<Response<pb::TopResponse>, Status> {
        streams::top(&self.tasks, req.into_inner()).await
    }
}
