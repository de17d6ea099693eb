//! The Agent gRPC API (the scheduler's handle on this host), and the one place task errors
//! become `tonic::Status`.

use std::time::Duration;

use rctl_api::pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::tasks::{TaskError, Tasks};

pub struct AgentService {
    tasks: Tasks,
}

impl AgentService {
    pub fn new(tasks: Tasks) -> Self {
        Self { tasks }
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
}
