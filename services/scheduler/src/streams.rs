//! The stream RPCs of the Scheduler API (issue 9): logs, attach, exec, stats and top, keyed
//! by what the user typed. The target is resolved with [`crate::targets`] to a task id and
//! its node, and the call is passed to that node's agent; bytes flow through as they come
//! (nothing buffers a whole stream, except the history of a service's logs, which is merged
//! by time before it is sent).
//!
//! Logs of a service (`rctl logs web`) read every replica: the histories are merged by
//! timestamp, each line tagged with its task and node (the CLI prefixes it the way `docker
//! service logs` does). With follow, each task has a follower of its own that reopens its
//! agent's stream when it breaks (an agent restart), asking for lines since the last one it
//! passed on and dropping the repeats ([`LogCursor`]), and new tasks of the service are
//! picked up as they are placed. A follower ends when its container is removed.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rctl_api::logcursor::LogCursor;
use rctl_api::pb::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::agents::{Agents, Client};
use crate::grpc::ApiError;
use crate::store::{Loaded, Store};
use crate::targets::{candidates, resolve, Accept, Candidate, Resolved};

pub type LogsStream = Pin<Box<dyn Stream<Item = Result<LogsResponse, Status>> + Send + 'static>>;
pub type OutputStream = Pin<Box<dyn Stream<Item = Result<StreamOutput, Status>> + Send + 'static>>;

/// Lines per response message.
const LOG_BATCH: usize = 256;
/// Pause before a broken log stream is opened again.
const RECONNECT: Duration = Duration::from_secs(1);
/// How often `logs -f` of a service looks for new tasks.
const NEW_TASKS: Duration = Duration::from_secs(1);

/// The stream side of the API: the store to resolve targets, the agents to ask.
#[derive(Clone)]
pub struct Streams {
    pub store: Store,
    pub agents: Agents,
}

/// An agent's answer about one container, passed on with its code and message as they are
/// ("container web.1 is not running").
fn from_agent(s: Status) -> ApiError {
    ApiError::Container {
        code: s.code(),
        message: s.message().to_string(),
    }
}

/// Tags an agent's line with the container it came from.
fn tag(mut l: LogLine, c: &Candidate) -> LogLine {
    l.task_id = c.id.clone();
    l.task_name = c.name.clone();
    l.node = c.node.clone();
    l
}

/// The histories of several containers as one, by time; lines of one time keep their
/// container's order.
pub fn merge_by_time(histories: Vec<Vec<LogLine>>) -> Vec<LogLine> {
    let mut all: Vec<LogLine> = histories.into_iter().flatten().collect();
    all.sort_by(|a, b| a.time.cmp(&b.time));
    all
}

async fn send_lines(
    tx: &mpsc::Sender<Result<LogsResponse, Status>>,
    lines: Vec<LogLine>,
    service: bool,
) -> Result<(), ()> {
    let mut it = lines.into_iter().peekable();
    while it.peek().is_some() {
        let lines: Vec<LogLine> = it.by_ref().take(LOG_BATCH).collect();
        tx.send(Ok(LogsResponse { lines, service }))
            .await
            .map_err(drop)?;
    }
    Ok(())
}

impl Streams {
    /// The agent client of the node `c` is on; an error when the node is not live.
    fn client(&self, loaded: &Loaded, c: &Candidate) -> Result<Client, ApiError> {
        let down = || ApiError::Container {
            code: Code::Unavailable,
            message: format!("node {} of {} is not up (see: rctl nodes)", c.node, c.name),
        };
        let node = loaded
            .nodes
            .iter()
            .find(|n| n.name == c.node)
            .ok_or_else(down)?;
        self.agents
            .client(&node.name, &node.address)
            .ok_or_else(down)
    }

    /// One container `target` names (a service name is refused with its tasks listed).
    async fn one(&self, target: &str) -> Result<(Candidate, Client), ApiError> {
        let loaded = self.store.load().await?;
        let Resolved::One(c) = resolve(target, &candidates(&loaded), Accept::Container)? else {
            unreachable!("Accept::Container resolves to one container");
        };
        // Retired (or not placed yet): whatever is left of it on a node is not running.
        if c.node.is_empty() || !c.running {
            return Err(ApiError::Container {
                code: Code::FailedPrecondition,
                message: format!("container {} is not running", c.name),
            });
        }
        let client = self.client(&loaded, &c)?;
        Ok((c, client))
    }

    // === logs ===

    pub async fn logs(&self, req: LogsRequest) -> Result<LogsStream, ApiError> {
        let loaded = self.store.load().await?;
        let (service, tasks) = match resolve(
            &req.target,
            &candidates(&loaded),
            Accept::ContainerOrService,
        )? {
            Resolved::One(c) => (None, vec![c]),
            Resolved::Service { service, tasks } => (Some(service), tasks),
        };
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let histories = futures::future::join_all(tasks.iter().map(|c| {
            let loaded = &loaded;
            let mut r = req.clone();
            r.target = c.id.clone();
            r.follow = false;
            async move {
                let mut client = self.client(loaded, c)?;
                let mut s = client.logs(r).await.map_err(from_agent)?.into_inner();
                let mut lines = Vec::new();
                while let Some(batch) = s.message().await.map_err(from_agent)? {
                    lines.extend(batch.lines.into_iter().map(|l| tag(l, c)));
                }
                Ok::<_, ApiError>(lines)
            }
        }))
        .await;
        let mut cursors = Vec::new();
        let mut ok = Vec::new();
        let mut first_err = None;
        for (c, h) in tasks.iter().zip(histories) {
            match h {
                Ok(lines) => {
                    let mut cur = LogCursor::default();
                    {
                        let mut r = cur.replay();
                        for l in &lines {
                            r.admit(&l.time);
                        }
                    }
                    cursors.push((c.clone(), cur));
                    ok.push(lines);
                }
                // A service's task whose node is away: its lines come once it is back.
                Err(e) if service.is_some() => {
                    tracing::warn!(task = %c.id, error = %e, "logs of one task");
                    cursors.push((c.clone(), LogCursor::default()));
                    first_err.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        if ok.is_empty() && !req.follow {
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            if send_lines(&tx, merge_by_time(ok), service.is_some())
                .await
                .is_err()
                || !req.follow
            {
                return;
            }
            // Lines of a task with no history yet count from when this request began.
            let floor = req.since_unix_nanos.max(started);
            this.follow(service, cursors, floor, tx).await;
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// Follows every task in `cursors` (and, for a service, every new task) until the client
    /// goes away, or, for one container, until it is removed.
    async fn follow(
        self,
        service: Option<String>,
        cursors: Vec<(Candidate, LogCursor)>,
        floor: i64,
        tx: mpsc::Sender<Result<LogsResponse, Status>>,
    ) {
        let (ltx, mut lrx) = mpsc::channel::<Vec<LogLine>>(64);
        let mut followers = tokio::task::JoinSet::new();
        let mut followed: HashSet<String> = HashSet::new();
        for (c, cur) in cursors {
            followed.insert(c.id.clone());
            followers.spawn(self.clone().follow_task(c, cur, floor, ltx.clone()));
        }
        let mut tick = tokio::time::interval(NEW_TASKS);
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                Some(lines) = lrx.recv() => {
                    if send_lines(&tx, lines, service.is_some()).await.is_err() {
                        return;
                    }
                }
                Some(_) = followers.join_next(), if service.is_none() => {
                    if followers.is_empty() {
                        // Its container was removed: drain what is queued, then end.
                        while let Ok(lines) = lrx.try_recv() {
                            let _ = send_lines(&tx, lines, false).await;
                        }
                        return;
                    }
                }
                _ = tick.tick(), if service.is_some() => {
                    let Ok(loaded) = self.store.load().await else { continue };
                    let name = service.as_deref().unwrap_or_default();
                    for c in candidates(&loaded) {
                        if c.service == name && c.running && !c.node.is_empty()
                            && followed.insert(c.id.clone())
                        {
                            // A new task: its whole log is new.
                            let since = floor.min(c.created_unix_ms.saturating_mul(1_000_000));
                            followers.spawn(
                                self.clone().follow_task(c, LogCursor::default(), since, ltx.clone()),
                            );
                        }
                    }
                    // Reap followers that ended (their containers were removed).
                    while followers.try_join_next().is_some() {}
                }
            }
        }
    }

    /// Follows one task's log, reopening the stream whenever it breaks, until its container
    /// is removed or the task leaves the store.
    async fn follow_task(
        self,
        c: Candidate,
        mut cursor: LogCursor,
        floor: i64,
        out: mpsc::Sender<Vec<LogLine>>,
    ) {
        loop {
            let since = if cursor.time.is_empty() {
                floor
            } else {
                cursor.since_unix_nanos()
            };
            let loaded = match self.store.load().await {
                Ok(l) => l,
                Err(_) => {
                    tokio::time::sleep(RECONNECT).await;
                    continue;
                }
            };
            // A service's task or a one-off container: gone from both, nothing to follow.
            let known = |ts: &[rctl_api::pb::Task]| ts.iter().any(|t| t.id == c.id);
            if !known(&loaded.tasks) && !known(&loaded.containers) {
                return;
            }
            if let Ok(mut client) = self.client(&loaded, &c) {
                let req = LogsRequest {
                    target: c.id.clone(),
                    tail: None,
                    since_unix_nanos: since,
                    follow: true,
                };
                match client.logs(req).await {
                    Ok(s) => {
                        let mut s = s.into_inner();
                        let mut replay = cursor.replay();
                        loop {
                            match s.message().await {
                                Ok(Some(batch)) => {
                                    let fresh: Vec<LogLine> = batch
                                        .lines
                                        .into_iter()
                                        .filter(|l| replay.admit(&l.time))
                                        .map(|l| tag(l, &c))
                                        .collect();
                                    if !fresh.is_empty() && out.send(fresh).await.is_err() {
                                        return;
                                    }
                                }
                                // The agent ended it: the container was removed.
                                Ok(None) => return,
                                // Broken (agent restarted): open it again from the cursor.
                                Err(_) => break,
                            }
                        }
                    }
                    // Not created yet, or already removed: the store says which.
                    Err(s) if s.code() == Code::NotFound => {}
                    Err(_) => {}
                }
            }
            if out.is_closed() {
                return;
            }
            tokio::time::sleep(RECONNECT).await;
        }
    }

    // === attach and exec ===

    /// Passes a client's exec or attach stream to the agent of the container its first
    /// message names, and the agent's output back.
    pub async fn proxy(
        &self,
        mut input: tonic::Streaming<StreamInput>,
        exec: bool,
    ) -> Result<OutputStream, ApiError> {
        let first = input
            .message()
            .await
            .map_err(|s| ApiError::BadRequest(s.message().to_string()))?
            .and_then(|m| m.kind)
            .ok_or_else(|| {
                ApiError::BadRequest("the stream must start with exec or attach".into())
            })?;
        let (target, first) = match first {
            stream_input::Kind::Exec(s) if exec => (s.target.clone(), stream_input::Kind::Exec(s)),
            stream_input::Kind::Attach(s) if !exec => {
                (s.target.clone(), stream_input::Kind::Attach(s))
            }
            _ => {
                return Err(ApiError::BadRequest(
                    "the stream must start with exec (Exec) or attach (Attach)".into(),
                ))
            }
        };
        let (c, mut client) = self.one(&target).await?;
        let first = match first {
            stream_input::Kind::Exec(mut s) => {
                s.target = c.id.clone();
                stream_input::Kind::Exec(s)
            }
            stream_input::Kind::Attach(mut s) => {
                s.target = c.id.clone();
                stream_input::Kind::Attach(s)
            }
            other => other,
        };
        let outbound = futures::stream::once(async move { StreamInput { kind: Some(first) } })
            .chain(input.filter_map(|m| async move { m.ok() }));
        let resp = if exec {
            client.exec(outbound).await
        } else {
            client.attach(outbound).await
        };
        Ok(Box::pin(resp.map_err(from_agent)?.into_inner()))
    }

    // === stats and top ===

    pub async fn stats(&self, req: StatsRequest) -> Result<StatsResponse, ApiError> {
        let loaded = self.store.load().await?;
        let all = candidates(&loaded);
        let names: HashMap<&str, &Candidate> = all.iter().map(|c| (c.id.as_str(), c)).collect();
        // Per node: the task ids asked for (empty: every running container there).
        let mut by_node: Vec<(String, Vec<String>)> = Vec::new();
        if req.targets.is_empty() {
            let mut nodes: Vec<&Node> = loaded.nodes.iter().collect();
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            by_node = nodes.iter().map(|n| (n.name.clone(), Vec::new())).collect();
        } else {
            for t in &req.targets {
                let Resolved::One(c) = resolve(t, &all, Accept::Container)? else {
                    unreachable!("Accept::Container resolves to one container");
                };
                if c.node.is_empty() || !loaded.nodes.iter().any(|n| n.name == c.node) {
                    return Err(ApiError::Container {
                        code: Code::FailedPrecondition,
                        message: format!("container {} is not running", c.name),
                    });
                }
                match by_node.iter_mut().find(|(n, _)| *n == c.node) {
                    Some((_, ids)) => ids.push(c.id.clone()),
                    None => by_node.push((c.node.clone(), vec![c.id.clone()])),
                }
            }
        }
        let everything = req.targets.is_empty();
        let answers = futures::future::join_all(by_node.into_iter().map(|(node, ids)| {
            let loaded = &loaded;
            let sample_ms = req.sample_ms;
            async move {
                let n = loaded.nodes.iter().find(|n| n.name == node);
                let client = n.and_then(|n| self.agents.client(&n.name, &n.address));
                let Some(mut client) = client else {
                    return (node, Err(Status::unavailable("node is not up")));
                };
                let r = StatsRequest {
                    targets: ids,
                    sample_ms,
                };
                (node, client.stats(r).await.map(|r| r.into_inner()))
            }
        }))
        .await;
        let mut stats = Vec::new();
        for (node, a) in answers {
            match a {
                Ok(r) => stats.extend(r.stats.into_iter().map(|mut s| {
                    s.node = node.clone();
                    if let Some(c) = names.get(s.task_id.as_str()) {
                        s.name = c.name.clone();
                    }
                    s
                })),
                // One unreachable node must not hide the others' containers.
                Err(s) if everything => {
                    tracing::warn!(node = %node, error = %s.message(), "stats")
                }
                Err(s) => return Err(from_agent(s)),
            }
        }
        if everything {
            // Only the cluster's containers (a node may hold leftovers being swept).
            stats.retain(|s| names.contains_key(s.task_id.as_str()));
            stats.sort_by(|a, b| (&a.name, &a.task_id).cmp(&(&b.name, &b.task_id)));
        }
        Ok(StatsResponse { stats })
    }

    pub async fn top(&self, req: TopRequest) -> Result<TopResponse, ApiError> {
        let (c, mut client) = self.one(&req.target).await?;
        let mut r = client
            .top(TopRequest {
                target: c.id.clone(),
            })
            .await
            .map_err(from_agent)?
            .into_inner();
        r.node = c.node;
        r.task_id = c.id;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(time: &str, task: &str) -> LogLine {
        LogLine {
            time: time.into(),
            task_id: task.into(),
            ..Default::default()
        }
    }

    #[test]
    fn histories_merge_by_time_keeping_each_containers_order() {
        let a = vec![
            line("2026-01-01T00:00:01.000000000Z", "a"),
            line("2026-01-01T00:00:03.000000000Z", "a"),
        ];
        let b = vec![
            line("2026-01-01T00:00:02.000000000Z", "b"),
            line("2026-01-01T00:00:03.000000000Z", "b"),
        ];
        let got: Vec<String> = merge_by_time(vec![a, b])
            .iter()
            .map(|l| format!("{}{}", &l.time[18..19], l.task_id))
            .collect();
        assert_eq!(got, ["1a", "2b", "3a", "3b"]);
    }
}
