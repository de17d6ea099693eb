//! The Agent gRPC API (the scheduler's handle on this host), and the one place task errors
//! become `tonic::Status`.

use std::time::Duration;

use rctl_api::pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::image::ImageStore;
use crate::runtime::state::ContainerDir;
use crate::streams::{self, StreamError};
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

impl AgentService {
    fn dir(&self, id: &str) -> Result<ContainerDir, Status> {
        self.tasks
            .container_dir(id)
            .ok_or_else(|| Status::not_found(format!("no container {id} on this node")))
    }
}

/// The one mapping of stream errors to gRPC status.
pub(crate) fn stream_status(e: StreamError) -> Status {
    match e {
        StreamError::NotFound(_) => Status::not_found(e.to_string()),
        StreamError::NotRunning(_) => Status::failed_precondition(e.to_string()),
        StreamError::Invalid(_) => Status::invalid_argument(e.to_string()),
        StreamError::Exec(crate::runtime::exec::ExecError::NoCommand) => {
            Status::invalid_argument(e.to_string())
        }
        _ => Status::internal(e.to_string()),
    }
}

/// The first message of a client stream (which says what the stream is for), and the rest.
async fn first_message(
    mut s: tonic::Streaming<pb::StreamInput>,
) -> Result<(pb::stream_input::Kind, streams::InputStream), Status> {
    let first = s
        .message()
        .await?
        .and_then(|m| m.kind)
        .ok_or_else(|| Status::invalid_argument("the stream must start with exec or attach"))?;
    Ok((first, Box::pin(s)))
}

/// The one mapping of task errors to gRPC status, shared with the hollow nodes.
pub(crate) fn to_status(e: TaskError) -> Status {
    match e {
        TaskError::Invalid(_) | TaskError::Lifecycle(_) => Status::invalid_argument(e.to_string()),
        TaskError::NotFound(_) => Status::not_found(e.to_string()),
        TaskError::NotRunning(_) | TaskError::NotPulling(_) | TaskError::PortAllocated { .. } => {
            Status::failed_precondition(e.to_string())
        }
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
            let req = req.into_inner();
            let credentials = crate::image_api::credentials(&req.auth);
            let task = req
                .task
                .ok_or_else(|| Status::invalid_argument("missing task"))?;
            tracing::Span::current().record("task", task.id.as_str());
            let pulling = tasks.run_task(task, credentials).await.map_err(to_status)?;
            Ok(Response::new(pb::RunTaskResponse { pulling }))
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
        self.tasks
            .stop_task(&r.task_id, timeout, r.remove, r.remove_volumes);
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

    // === streams (issue 9): crate::streams does the work ===

    type LogsStream = streams::LogsStream;

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = req.into_inner();
        let dir = self.dir(&r.target)?;
        streams::logs(dir, &r)
            .map(Response::new)
            .map_err(stream_status)
    }

    type AttachStream = streams::OutputStream;

    async fn attach(
        &self,
        req: Request<tonic::Streaming<pb::StreamInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let (first, rest) = first_message(req.into_inner()).await?;
        let pb::stream_input::Kind::Attach(start) = first else {
            return Err(Status::invalid_argument(
                "an attach stream starts with attach",
            ));
        };
        let id = start.target.clone();
        let dir = self.dir(&id)?;
        streams::attach(dir, &id, start, rest)
            .await
            .map(Response::new)
            .map_err(stream_status)
    }

    type ExecStream = streams::OutputStream;

    async fn exec(
        &self,
        req: Request<tonic::Streaming<pb::StreamInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let (first, rest) = first_message(req.into_inner()).await?;
        let pb::stream_input::Kind::Exec(start) = first else {
            return Err(Status::invalid_argument("an exec stream starts with exec"));
        };
        let id = start.target.clone();
        let dir = self.dir(&id)?;
        // The running agent binary: `__exec` must be this version's.
        let exe = std::path::PathBuf::from("/proc/self/exe");
        streams::exec(dir, &id, exe, start, rest)
            .await
            .map(Response::new)
            .map_err(stream_status)
    }

    async fn stats(
        &self,
        req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let r = req.into_inner();
        let root = self.tasks.containers_root();
        let ids = if r.targets.is_empty() {
            streams::running_ids(&root)
        } else {
            for id in &r.targets {
                self.dir(id)?;
            }
            r.targets
        };
        let window = Duration::from_millis(r.sample_ms as u64);
        let stats = streams::stats(root, ids, window)
            .await
            .map_err(stream_status)?;
        Ok(Response::new(pb::StatsResponse { stats }))
    }

    async fn top(&self, req: Request<pb::TopRequest>) -> Result<Response<pb::TopResponse>, Status> {
        let r = req.into_inner();
        let dir = self.dir(&r.target)?;
        let processes = streams::top(dir, &r.target).await.map_err(stream_status)?;
        Ok(Response::new(pb::TopResponse {
            processes,
            task_id: r.target,
            node: String::new(),
        }))
    }

    // === rollout (issue 8) ===

    async fn resolve_image(
        &self,
        req: Request<pb::ResolveImageRequest>,
    ) -> Result<Response<pb::ResolveImageResponse>, Status> {
        crate::image_api::resolve(&self.images, req.into_inner()).await
    }

    // === containers (issue 9) ===

    async fn start_task(
        &self,
        req: Request<pb::StartTaskRequest>,
    ) -> Result<Response<pb::StartTaskResponse>, Status> {
        let r = req.into_inner();
        self.tasks.start_task(&r.task_id).map_err(to_status)?;
        Ok(Response::new(pb::StartTaskResponse {}))
    }

    async fn kill_task(
        &self,
        req: Request<pb::KillTaskRequest>,
    ) -> Result<Response<pb::KillTaskResponse>, Status> {
        let r = req.into_inner();
        let sig = nix::sys::signal::Signal::try_from(r.signal)
            .map_err(|_| Status::invalid_argument(format!("invalid signal {}", r.signal)))?;
        self.tasks.kill_task(&r.task_id, sig).map_err(to_status)?;
        Ok(Response::new(pb::KillTaskResponse {}))
    }

    // === pull on run (issue 9) ===

    type FollowTaskPullStream = crate::image_api::PullStream;

    async fn follow_task_pull(
        &self,
        req: Request<pb::FollowTaskPullRequest>,
    ) -> Result<Response<Self::FollowTaskPullStream>, Status> {
        let feed = self
            .tasks
            .follow_pull(&req.into_inner().task_id)
            .map_err(to_status)?;
        Ok(crate::image_api::follow(&feed))
    }
}
