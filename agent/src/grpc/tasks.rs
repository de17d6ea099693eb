//! The task RPCs of the Agent API: RunTask, StopTask, StartTask, KillTask and
//! FollowTaskPull, each a call into [`Tasks`].

use std::time::Duration;

use rctl_api::pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{images, status, PullStream};
use crate::task::Tasks;

/// Accepts a task; the answer says whether its image is being pulled first.
pub async fn run(
    tasks: &Tasks,
    req: Request<pb::RunTaskRequest>,
) -> Result<Response<pb::RunTaskResponse>, Status> {
    let span = tracing::info_span!("run_task", task = tracing::field::Empty);
    rctl_api::telemetry::accept(&req, &span);
    let tasks = tasks.clone();
    async move {
        let req = req.into_inner();
        let credentials = images::credentials(&req.auth);
        let task = req
            .task
            .ok_or_else(|| Status::invalid_argument("missing task"))?;
        tracing::Span::current().record("task", task.id.as_str());
        let pulling = tasks.run_task(task, credentials).await.map_err(status)?;
        Ok(Response::new(pb::RunTaskResponse { pulling }))
    }
    .instrument(span)
    .await
}

/// Asks a task's actor to stop (and remove) its container; unknown ids succeed.
pub fn stop(tasks: &Tasks, req: Request<pb::StopTaskRequest>) -> Response<pb::StopTaskResponse> {
    let span = tracing::info_span!("stop_task", task = tracing::field::Empty);
    rctl_api::telemetry::accept(&req, &span);
    let _enter = span.enter();
    let r = req.into_inner();
    span.record("task", r.task_id.as_str());
    let timeout = (r.timeout_ms != 0).then(|| Duration::from_millis(r.timeout_ms));
    tasks.stop_task(&r.task_id, timeout, r.remove, r.remove_volumes);
    Response::new(pb::StopTaskResponse {})
}

pub fn start(
    tasks: &Tasks,
    r: pb::StartTaskRequest,
) -> Result<Response<pb::StartTaskResponse>, Status> {
    tasks.start_task(&r.task_id).map_err(status)?;
    Ok(Response::new(pb::StartTaskResponse {}))
}

pub fn kill(
    tasks: &Tasks,
    r: pb::KillTaskRequest,
) -> Result<Response<pb::KillTaskResponse>, Status> {
    let sig = nix::sys::signal::Signal::try_from(r.signal)
        .map_err(|_| Status::invalid_argument(format!("invalid signal {}", r.signal)))?;
    tasks.kill_task(&r.task_id, sig).map_err(status)?;
    Ok(Response::new(pb::KillTaskResponse {}))
}

pub fn follow_pull(
    tasks: &Tasks,
    r: pb::FollowTaskPullRequest,
) -> Result<Response<PullStream>, Status> {
    let feed = tasks.follow_pull(&r.task_id).map_err(status)?;
    Ok(images::follow(&feed))
}
