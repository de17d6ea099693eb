//! The stream RPCs of the Agent API: logs, attach, exec, stats and top over one container
//! directory (the work is `crate::streams`'); their errors, in the stream too, become
//! `Status` here.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rctl_api::pb;
use tonic::{Response, Status};

use super::status;
use crate::runtime::state::ContainerDir;
use crate::streams::{self, InputStream, StreamError};
use crate::task::Tasks;

pub type OutputStream = Pin<Box<dyn Stream<Item = Result<pb::StreamOutput, Status>> + Send>>;
pub type LogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogsResponse, Status>> + Send>>;

/// The directory of container `id`, which must be a valid id (it may not exist).
fn dir(tasks: &Tasks, id: &str) -> Result<ContainerDir, Status> {
    tasks
        .container_dir(id)
        .ok_or_else(|| status(StreamError::NotFound(id.to_string())))
}

/// A stream of the streams module as gRPC sends it.
fn reply<T: Send + 'static>(
    s: Pin<Box<dyn Stream<Item = Result<T, StreamError>> + Send>>,
) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>> {
    Box::pin(s.map(|r| r.map_err(status)))
}

/// The first message of a client stream (which says what the stream is for), and the rest
/// (up to the client's first error).
async fn first_message(
    mut s: tonic::Streaming<pb::StreamInput>,
) -> Result<(pb::stream_input::Kind, InputStream), Status> {
    let first = s
        .message()
        .await?
        .and_then(|m| m.kind)
        .ok_or_else(|| Status::invalid_argument("the stream must start with exec or attach"))?;
    let rest = s
        .take_while(|m| std::future::ready(m.is_ok()))
        .filter_map(|m| std::future::ready(m.ok()));
    Ok((first, Box::pin(rest)))
}

pub fn logs(tasks: &Tasks, r: pb::LogsRequest) -> Result<Response<LogsStream>, Status> {
    let dir = dir(tasks, &r.target)?;
    let lines = streams::logs(dir, &r).map_err(status)?;
    Ok(Response::new(reply(lines)))
}

pub async fn attach(
    tasks: &Tasks,
    input: tonic::Streaming<pb::StreamInput>,
) -> Result<Response<OutputStream>, Status> {
    let (first, rest) = first_message(input).await?;
    let pb::stream_input::Kind::Attach(start) = first else {
        return Err(Status::invalid_argument(
            "an attach stream starts with attach",
        ));
    };
    let id = start.target.clone();
    let dir = dir(tasks, &id)?;
    let out = streams::attach(dir, &id, start, rest)
        .await
        .map_err(status)?;
    Ok(Response::new(reply(out)))
}

pub async fn exec(
    tasks: &Tasks,
    input: tonic::Streaming<pb::StreamInput>,
) -> Result<Response<OutputStream>, Status> {
    let (first, rest) = first_message(input).await?;
    let pb::stream_input::Kind::Exec(start) = first else {
        return Err(Status::invalid_argument("an exec stream starts with exec"));
    };
    let id = start.target.clone();
    let dir = dir(tasks, &id)?;
    // The running agent binary: `__exec` must be this version's.
    let exe = std::path::PathBuf::from("/proc/self/exe");
    let out = streams::exec(dir, &id, exe, start, rest)
        .await
        .map_err(status)?;
    Ok(Response::new(reply(out)))
}

pub async fn stats(
    tasks: &Tasks,
    r: pb::StatsRequest,
) -> Result<Response<pb::StatsResponse>, Status> {
    let root = tasks.containers_root();
    let ids = if r.targets.is_empty() {
        streams::running_ids(&root)
    } else {
        for id in &r.targets {
            dir(tasks, id)?;
        }
        r.targets
    };
    let window = Duration::from_millis(r.sample_ms as u64);
    let stats = streams::stats(root, ids, window).await.map_err(status)?;
    Ok(Response::new(pb::StatsResponse { stats }))
}

pub async fn top(tasks: &Tasks, r: pb::TopRequest) -> Result<Response<pb::TopResponse>, Status> {
    let dir = dir(tasks, &r.target)?;
    let processes = streams::top(dir, &r.target).await.map_err(status)?;
    Ok(Response::new(pb::TopResponse {
        processes,
        task_id: r.target,
        node: String::new(),
    }))
}
