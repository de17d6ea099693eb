//! One-off containers (`rctl run`, issue 9): the Scheduler RPCs that create, start, stop,
//! restart, kill, remove, rename, list and inspect them.
//!
//! A container is a [`Task`] without a service, stored at `containers/{id}` next to its
//! name's key `container-names/{name}` (both written in one transaction, so names are
//! unique). Unlike service tasks they are not reconciled: the API places one on a node,
//! sends the agent its commands directly and waits for what the user expects to see (as
//! `docker stop` returns once the container stopped). A lost host's containers are not
//! replaced elsewhere, as with Docker; restart policies are the agent's.

use std::time::Duration;

use rctl_api::pb::*;
use tonic::Code;

use futures::StreamExt;

use crate::agents::{Agents, Client};
use crate::grpc::ApiError;
use crate::images::PullStream;
use crate::placement::Ask;
use crate::store::{Loaded, Store, StoreError};
use crate::targets::{candidates, resolve, Accept, Resolved};

/// How long `start`/`restart` wait to see the container started.
const START_WAIT: Duration = Duration::from_secs(15);
/// Beyond the stop timeout, how long `stop` waits for the agent to report it stopped.
const STOP_SLACK: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

/// The containers side of the API: the store, and the agents to command.
#[derive(Clone)]
pub struct Containers {
    pub store: Store,
    pub agents: Agents,
}

/// The advertised IP of `node` ("" when it is down).
pub fn node_ip(loaded: &Loaded, node: &str) -> String {
    loaded
        .nodes
        .iter()
        .find(|n| n.name == node)
        .map(|n| n.advertise_ip.clone())
        .unwrap_or_default()
}

/// Whether a container name is one Docker accepts: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn valid_container_name(name: &str) -> bool {
    let mut b = name.bytes();
    name.len() <= 128
        && b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// What a create request may not carry, before anything is written.
pub fn validate(task: &Task) -> Result<(), String> {
    if task.image.trim().is_empty() {
        return Err("no image given".into());
    }
    // The same grammar as `apply`: the agent would refuse the pull anyway, after the
    // container was written.
    crate::spec::check_reference(&task.image)?;
    if !task.container_name.is_empty() && !valid_container_name(&task.container_name) {
        return Err(format!(
            "invalid container name {:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
            task.container_name
        ));
    }
    for (k, v) in &task.env {
        rctl_api::runnable::check_env(k, v).map_err(|e| e.to_string())?;
    }
    let mut seen = Vec::new();
    for p in &task.ports {
        if !(1..=65535).contains(&p.host_port) || !(1..=65535).contains(&p.container_port) {
            return Err(format!(
                "invalid port binding {}:{}: ports are 1-65535",
                p.host_port, p.container_port
            ));
        }
        if !matches!(p.protocol.as_str(), "" | "tcp" | "udp") {
            return Err(format!("invalid protocol {:?}: tcp or udp", p.protocol));
        }
        let key = (p.host_port, proto(p));
        if seen.contains(&key) {
            return Err(format!("host port {} is published twice", p.host_port));
        }
        seen.push(key);
    }
    for m in &task.mounts {
        if !m.target.starts_with('/') {
            return Err(format!(
                "mount target {:?} is not an absolute path",
                m.target
            ));
        }
        if m.kind == "bind" && !m.source.starts_with('/') {
            return Err(format!(
                "bind mount source {:?} is not an absolute path",
                m.source
            ));
        }
    }
    Ok(())
}

/// The names of every service in `loaded`.
fn service_names(loaded: &Loaded) -> impl Iterator<Item = &str> {
    loaded
        .services
        .iter()
        .filter_map(|s| s.spec.as_ref().map(|sp| sp.name.as_str()))
}

fn proto(p: &PortBinding) -> &str {
    if p.protocol.is_empty() {
        "tcp"
    } else {
        &p.protocol
    }
}

/// The first host port of `wanted` that a desired-running container on `node` publishes.
pub fn port_conflict(wanted: &[PortBinding], node: &str, existing: &[Task]) -> Option<u32> {
    wanted.iter().find_map(|w| {
        existing
            .iter()
            .filter(|t| t.node == node && t.desired_state() == DesiredState::Running)
            .flat_map(|t| t.ports.iter())
            .any(|p| p.host_port == w.host_port && proto(p) == proto(w))
            .then_some(w.host_port)
    })
}

/// A generated name, Docker-style ("adjective_noun"), that no container has.
pub fn generate_name(id: &str, taken: impl Fn(&str) -> bool) -> String {
    const ADJ: &[&str] = &[
        "brave", "calm", "eager", "fond", "keen", "lucid", "merry", "nimble", "quiet", "swift",
        "tender", "witty",
    ];
    const NOUN: &[&str] = &[
        "babbage", "curie", "darwin", "euler", "gauss", "hopper", "lovelace", "noether", "pascal",
        "ritchie", "turing", "wozniak",
    ];
    let seed = u64::from_str_radix(&id[..id.len().min(12)], 16).unwrap_or(0);
    let base = format!(
        "{}_{}",
        ADJ[(seed % ADJ.len() as u64) as usize],
        NOUN[((seed / 16) % NOUN.len() as u64) as usize]
    );
    if !taken(&base) {
        return base;
    }
    (2..)
        .map(|n| format!("{base}{n}"))
        .find(|n| !taken(n))
        .expect("an unbounded range finds a free name")
}

/// One container as the API shows it.
fn view(loaded: &Loaded, t: &Task) -> TaskView {
    TaskView {
        task: Some(t.clone()),
        status: loaded.statuses.get(&t.id).cloned(),
        node_ip: node_ip(loaded, &t.node),
    }
}

/// Whether a listing without `-a` shows it: running or on its way there.
fn is_up(v: &TaskView) -> bool {
    let t = v.task.as_ref().expect("views carry their task");
    match &v.status {
        None => t.desired_state() == DesiredState::Running,
        Some(s) => matches!(
            s.state(),
            TaskState::Pending | TaskState::Starting | TaskState::Running | TaskState::Stopping
        ),
    }
}

fn agent_err(s: tonic::Status) -> ApiError {
    ApiError::Container {
        code: s.code(),
        message: s.message().to_string(),
    }
}

impl Containers {
    fn client(&self, loaded: &Loaded, t: &Task) -> Result<Client, ApiError> {
        let down = || ApiError::Container {
            code: Code::Unavailable,
            message: format!(
                "node {} of container {} is not up (see: rctl nodes)",
                t.node, t.container_name
            ),
        };
        let node = loaded
            .nodes
            .iter()
            .find(|n| n.name == t.node)
            .ok_or_else(down)?;
        self.agents
            .client(&node.name, &node.address)
            .ok_or_else(down)
    }

    /// The one-off container `target` names (a service task is refused: services own them).
    async fn one(&self, target: &str) -> Result<(Loaded, Task), ApiError> {
        let loaded = self.store.load().await?;
        let Resolved::One(c) = resolve(target, &candidates(&loaded), Accept::Container)? else {
            unreachable!("Accept::Container resolves to one container");
        };
        if !c.service.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "{} is a task of service {}; change it with rctl scale, rollout or service rm",
                c.name, c.service
            )));
        }
        let t = loaded
            .containers
            .iter()
            .find(|t| t.id == c.id)
            .cloned()
            .expect("candidates come from the loaded containers");
        Ok((loaded, t))
    }

    /// Sets the desired state of `t` (guarded by its mod revision).
    async fn set_desired(
        &self,
        loaded: &Loaded,
        t: &Task,
        d: DesiredState,
    ) -> Result<(), ApiError> {
        if t.desired_state() == d {
            return Ok(());
        }
        let mut nt = t.clone();
        nt.set_desired_state(d);
        let rev = loaded.mod_revision(&rctl_api::keys::container(&t.id));
        Ok(self.store.put_container_if(&nt, rev).await?)
    }

    /// Polls the status of `t` until `done` holds or `limit` passes; the last status seen.
    async fn wait_status(
        &self,
        t: &Task,
        limit: Duration,
        done: impl Fn(&TaskStatus) -> bool,
    ) -> Result<Option<TaskStatus>, ApiError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let s = self.store.status(&t.node, &t.id).await?;
            if s.as_ref().is_some_and(&done) || tokio::time::Instant::now() >= deadline {
                return Ok(s);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn respond(&self, id: &str) -> Result<ContainerResponse, ApiError> {
        let loaded = self.store.load().await?;
        let container = loaded
            .containers
            .iter()
            .chain(loaded.tasks.iter())
            .find(|t| t.id == id)
            .map(|t| view(&loaded, t));
        Ok(ContainerResponse { container })
    }

    // === create (rctl run) ===

    pub async fn create(
        &self,
        req: CreateContainerRequest,
    ) -> Result<CreateContainerResponse, ApiError> {
        let mut task = req
            .task
            .ok_or_else(|| ApiError::BadRequest("missing container".into()))?;
        validate(&task).map_err(ApiError::BadRequest)?;
        let loaded = self.store.load().await?;
        let taken = |n: &str| loaded.containers.iter().any(|t| t.container_name == n);
        if let Some(holder) = loaded
            .containers
            .iter()
            .find(|t| !task.container_name.is_empty() && t.container_name == task.container_name)
        {
            return Err(ApiError::NameInUse {
                name: task.container_name.clone(),
                id: holder.id.clone(),
            });
        }
        if let Some(owner) =
            crate::names::for_container(&task.container_name, service_names(&loaded))
        {
            return Err(ApiError::NameTaken {
                name: task.container_name.clone(),
                owner,
            });
        }
        let id = crate::ids::new_task_id();
        if task.container_name.is_empty() {
            task.container_name = generate_name(&id, taken);
        }
        let node = if req.node.is_empty() {
            place(&loaded, &task)?
        } else if loaded.nodes.iter().any(|n| n.name == req.node) {
            req.node.clone()
        } else {
            return Err(ApiError::NodeNotFound(req.node));
        };
        if let Some(port) = port_conflict(&task.ports, &node, &loaded.containers) {
            return Err(ApiError::PortAllocated { port, node });
        }
        task.id = id;
        task.service = String::new();
        task.slot = 0;
        task.node = node;
        task.revision = 0;
        task.set_desired_state(DesiredState::Running);
        task.created_unix_ms = rctl_api::clock::now_unix_ms();
        let mut client = self.client(&loaded, &task)?;
        match self.store.create_container(&task).await {
            Err(StoreError::NameTaken(name)) => {
                let again = self.store.load().await?;
                let id = again
                    .containers
                    .iter()
                    .find(|t| t.container_name == name)
                    .map(|t| t.id.clone())
                    .unwrap_or_default();
                return Err(ApiError::NameInUse { name, id });
            }
            other => other?,
        }
        // The agent refuses what only it can know (a host port a socket holds): then the
        // container is forgotten again, so a refused run leaves nothing behind.
        let sent = client
            .run_task(RunTaskRequest {
                task: Some(task.clone()),
                auth: req.auth,
            })
            .await;
        let pulling = match sent {
            Ok(r) => r.into_inner().pulling,
            Err(s) => {
                if let Err(e) = self.store.delete_container(&task).await {
                    tracing::warn!(container = %task.id, error = %e, "cannot forget a refused container");
                }
                return Err(agent_err(s));
            }
        };
        let mut loaded = loaded;
        loaded.containers.push(task.clone());
        Ok(CreateContainerResponse {
            container: Some(view(&loaded, &task)),
            pulling,
        })
    }

    /// FollowPull: the container's agent's pull of its image, tagged with the node. A
    /// failed pull removes the container (keys, then the agent's leftovers) before the
    /// error goes out, so `rctl run` of a missing image leaves nothing, as `docker run`
    /// creates nothing.
    pub async fn follow_pull(&self, r: FollowPullRequest) -> Result<PullStream, ApiError> {
        let (loaded, t) = self.one(&r.target).await?;
        let mut client = self.client(&loaded, &t)?;
        let mut stream = client
            .follow_task_pull(FollowTaskPullRequest {
                task_id: t.id.clone(),
            })
            .await
            .map_err(|s| match s.code() {
                Code::FailedPrecondition => ApiError::Container {
                    code: Code::FailedPrecondition,
                    message: format!("container {} is not pulling its image", t.container_name),
                },
                _ => agent_err(s),
            })?
            .into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            let node = t.node.clone();
            while let Some(e) = stream.next().await {
                // (event, whether the agent's pull failed)
                let (mut e, failed) = match e {
                    Ok(e) => {
                        let failed = matches!(e.event, Some(pull_event::Event::Error(_)));
                        (e, failed)
                    }
                    // The agent went away mid-pull: the pull may still finish there, so
                    // the container is left as it is.
                    Err(s) => (
                        PullEvent {
                            node: String::new(),
                            event: Some(pull_event::Event::Error(format!(
                                "node {node}: {}",
                                s.message()
                            ))),
                        },
                        false,
                    ),
                };
                e.node = node.clone();
                let ended = e.event.as_ref().is_some_and(is_end);
                if failed {
                    this.forget_failed(&t).await;
                }
                if tx.send(Ok(e)).await.is_err() || ended {
                    return;
                }
            }
            let _ = tx
                .send(Ok(PullEvent {
                    node: node.clone(),
                    event: Some(pull_event::Event::Error(format!(
                        "node {node}: the agent stopped answering mid-pull"
                    ))),
                }))
                .await;
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// Removes container `t`, whose image could not be pulled.
    async fn forget_failed(&self, t: &Task) {
        let r = ContainerRequest {
            target: t.id.clone(),
            force: true,
            ..Default::default()
        };
        if let Err(e) = self.remove(r).await {
            tracing::warn!(container = %t.id, error = %e, "cannot remove a container whose pull failed");
        }
    }

    // === lifecycle ===

    pub async fn start(&self, r: ContainerRequest) -> Result<ContainerResponse, ApiError> {
        let (loaded, t) = self.one(&r.target).await?;
        let mut client = self.client(&loaded, &t)?;
        self.set_desired(&loaded, &t, DesiredState::Running).await?;
        let t0 = rctl_api::clock::now_unix_ms();
        client
            .start_task(StartTaskRequest {
                task_id: t.id.clone(),
            })
            .await
            .map_err(agent_err)?;
        self.await_start(&t, t0).await?;
        self.respond(&t.id).await
    }

    /// Waits until the agent reports `t` started since `t0` (it may have exited already),
    /// or that it could not start.
    async fn await_start(&self, t: &Task, t0: i64) -> Result<(), ApiError> {
        let s = self
            .wait_status(t, START_WAIT, |s| {
                s.started_unix_ms >= t0
                    || (s.updated_unix_ms >= t0 && s.message.starts_with("start failed"))
            })
            .await?;
        match s {
            Some(s) if s.started_unix_ms < t0 && s.message.starts_with("start failed") => {
                Err(ApiError::Container {
                    code: Code::FailedPrecondition,
                    message: format!("container {}: {}", t.container_name, s.message),
                })
            }
            _ => Ok(()),
        }
    }

    pub async fn stop(&self, r: ContainerRequest) -> Result<ContainerResponse, ApiError> {
        let (loaded, t) = self.one(&r.target).await?;
        let mut client = self.client(&loaded, &t)?;
        self.set_desired(&loaded, &t, DesiredState::Stopped).await?;
        stop_on_agent(&mut client, &t, r.timeout_ms).await?;
        let grace = Duration::from_millis(match r.timeout_ms {
            0 => stop_grace_ms(&t),
            ms => ms,
        });
        self.wait_status(&t, grace + STOP_SLACK, |s| {
            matches!(s.state(), TaskState::Exited | TaskState::Failed)
        })
        .await?;
        self.respond(&t.id).await
    }

    pub async fn restart(&self, r: ContainerRequest) -> Result<ContainerResponse, ApiError> {
        let (loaded, t) = self.one(&r.target).await?;
        let mut client = self.client(&loaded, &t)?;
        self.set_desired(&loaded, &t, DesiredState::Running).await?;
        let t0 = rctl_api::clock::now_unix_ms();
        // One actor per container takes both in order: the start follows the stop.
        stop_on_agent(&mut client, &t, r.timeout_ms).await?;
        client
            .start_task(StartTaskRequest {
                task_id: t.id.clone(),
            })
            .await
            .map_err(agent_err)?;
        self.await_start(&t, t0).await?;
        self.respond(&t.id).await
    }

    pub async fn kill(&self, r: ContainerRequest) -> Result<ContainerResponse, ApiError> {
        let (loaded, t) = self.one(&r.target).await?;
        let mut client = self.client(&loaded, &t)?;
        let signal = if r.signal == 0 { 9 } else { r.signal };
        client
            .kill_task(KillTaskRequest {
                task_id: t.id.clone(),
                signal,
            })
            .await
            .map_err(|s| match s.code() {
                Code::FailedPrecondition => ApiError::Container {
                    code: Code::FailedPrecondition,
                    message: format!("container {} is not running", t.container_name),
                },
                _ => agent_err(s),
            })?;
        self.respond(&t.id).await
    }

    pub async fn remove(&self, r: ContainerRequest) -> Result<ContainerResponse, ApiError> {
        let (loaded, t) = self.one(&r.target).await?;
        let v = view(&loaded, &t);
        // Desired STOPPED yet running: an `always` container its agent started again at
        // start-up, as Docker's daemon does.
        let running = v
            .status
            .as_ref()
            .is_some_and(|s| s.state() == TaskState::Running);
        if is_up(&v) && (t.desired_state() == DesiredState::Running || running) && !r.force {
            return Err(ApiError::Container {
                code: Code::FailedPrecondition,
                message: format!(
                    "container {} is running: stop it first or use rm -f",
                    t.container_name
                ),
            });
        }
        self.store.delete_container(&t).await?;
        // The agent removes what is on the host; if it cannot be told now (node down), its
        // orphan sweep does once it is back, as the container's key is gone.
        match self.client(&loaded, &t) {
            Ok(mut client) => {
                let sent = client
                    .stop_task(StopTaskRequest {
                        task_id: t.id.clone(),
                        service: String::new(),
                        timeout_ms: 1,
                        remove: true,
                        remove_volumes: r.volumes,
                    })
                    .await;
                if let Err(e) = sent {
                    tracing::warn!(container = %t.id, error = %e.message(), "remove: agent not told; its sweep will");
                }
            }
            Err(e) => tracing::warn!(container = %t.id, error = %e, "remove: agent not told"),
        }
        Ok(ContainerResponse { container: Some(v) })
    }

    /// `system prune`: removes every one-off container that is not running (on `node`, or
    /// on every node), keys first, as `rm` does; returns (node, id) of each.
    pub async fn prune(&self, node: &str) -> Result<Vec<(String, String)>, ApiError> {
        let loaded = self.store.load().await?;
        let mut removed = Vec::new();
        for t in loaded
            .containers
            .iter()
            .filter(|t| node.is_empty() || t.node == node)
        {
            if is_up(&view(&loaded, t)) {
                continue;
            }
            let r = ContainerRequest {
                target: t.id.clone(),
                ..Default::default()
            };
            match self.remove(r).await {
                Ok(_) => removed.push((t.node.clone(), t.id.clone())),
                // Removed meanwhile (its --rm, another prune): nothing left to do.
                Err(e) => tracing::warn!(container = %t.id, error = %e, "prune"),
            }
        }
        Ok(removed)
    }

    pub async fn rename(&self, r: RenameContainerRequest) -> Result<ContainerResponse, ApiError> {
        if !valid_container_name(&r.new_name) {
            return Err(ApiError::BadRequest(format!(
                "invalid container name {:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
                r.new_name
            )));
        }
        let (loaded, t) = self.one(&r.target).await?;
        if let Some(holder) = loaded
            .containers
            .iter()
            .find(|c| c.container_name == r.new_name)
        {
            return Err(ApiError::NameInUse {
                name: r.new_name,
                id: holder.id.clone(),
            });
        }
        if let Some(owner) = crate::names::for_container(&r.new_name, service_names(&loaded)) {
            return Err(ApiError::NameTaken {
                name: r.new_name,
                owner,
            });
        }
        let mut nt = t.clone();
        nt.container_name = r.new_name.clone();
        let rev = loaded.mod_revision(&rctl_api::keys::container(&t.id));
        match self
            .store
            .rename_container(&nt, &t.container_name, rev)
            .await
        {
            Err(StoreError::NameTaken(name)) => {
                return Err(ApiError::NameInUse {
                    name,
                    id: String::new(),
                })
            }
            other => other?,
        }
        self.respond(&t.id).await
    }

    // === views ===

    pub async fn list(&self, r: ListContainersRequest) -> Result<ListContainersResponse, ApiError> {
        let loaded = self.store.load().await?;
        let mut containers: Vec<TaskView> = loaded
            .containers
            .iter()
            .filter(|_| r.service.is_empty())
            .map(|t| view(&loaded, t))
            .filter(|v| r.all || is_up(v))
            .chain(
                loaded
                    .tasks
                    .iter()
                    .filter(|t| r.all || t.desired_state() == DesiredState::Running)
                    .filter(|t| r.service.is_empty() || t.service == r.service)
                    .map(|t| view(&loaded, t)),
            )
            .filter(|v| r.node.is_empty() || v.task.as_ref().is_some_and(|t| t.node == r.node))
            .collect();
        // Newest first, as `docker ps`.
        containers.sort_by_key(|v| {
            std::cmp::Reverse(v.task.as_ref().map(|t| t.created_unix_ms).unwrap_or(0))
        });
        Ok(ListContainersResponse { containers })
    }

    pub async fn inspect(&self, r: ContainerRequest) -> Result<ContainerResponse, ApiError> {
        let loaded = self.store.load().await?;
        let Resolved::One(c) = resolve(&r.target, &candidates(&loaded), Accept::Container)? else {
            unreachable!("Accept::Container resolves to one container");
        };
        let container = loaded
            .containers
            .iter()
            .chain(loaded.tasks.iter())
            .find(|t| t.id == c.id)
            .map(|t| view(&loaded, t));
        Ok(ContainerResponse { container })
    }
}

/// Whether a pull event is the last of its pull.
fn is_end(e: &pull_event::Event) -> bool {
    matches!(e, pull_event::Event::Done(_) | pull_event::Event::Error(_))
}

/// Asks `t`'s agent to stop it (stop signal, then SIGKILL after `timeout_ms` or the
/// container's own stop timeout), keeping it.
async fn stop_on_agent(client: &mut Client, t: &Task, timeout_ms: u64) -> Result<(), ApiError> {
    client
        .stop_task(StopTaskRequest {
            task_id: t.id.clone(),
            service: String::new(),
            timeout_ms,
            remove: false,
            remove_volumes: false,
        })
        .await
        .map_err(agent_err)?;
    Ok(())
}

fn stop_grace_ms(t: &Task) -> u64 {
    match t.stop_timeout_ms {
        0 => 10_000,
        ms => ms,
    }
}

/// The node for one new container: reconcile's placement over the same snapshot, so a
/// container and a service task never count each other's room twice.
fn place(loaded: &Loaded, task: &Task) -> Result<String, ApiError> {
    let snapshot = loaded.snapshot(rctl_api::clock::now_unix_ms());
    crate::reconcile::place_container(&snapshot, Ask::of(task.resources.as_ref())).map_err(|why| {
        ApiError::Container {
            code: Code::ResourceExhausted,
            message: format!("no node can run the container: {why}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(host: u32, proto: &str) -> PortBinding {
        PortBinding {
            host_ip: String::new(),
            host_port: host,
            container_port: 80,
            protocol: proto.into(),
        }
    }

    #[test]
    fn names_follow_dockers_alphabet() {
        assert!(valid_container_name("web_1.a-b"));
        assert!(!valid_container_name("_web"));
        assert!(!valid_container_name(""));
        assert!(!valid_container_name("a/b"));
    }

    #[test]
    fn a_port_is_taken_only_by_a_running_container_on_that_node_and_protocol() {
        let t = |node: &str, d: DesiredState| {
            let mut t = Task {
                node: node.into(),
                ports: vec![binding(8080, "tcp")],
                ..Default::default()
            };
            t.set_desired_state(d);
            t
        };
        let existing = [
            t("h1", DesiredState::Running),
            t("h2", DesiredState::Stopped),
        ];
        assert_eq!(
            port_conflict(&[binding(8080, "")], "h1", &existing),
            Some(8080)
        );
        assert_eq!(
            port_conflict(&[binding(8080, "udp")], "h1", &existing),
            None
        );
        assert_eq!(
            port_conflict(&[binding(8080, "tcp")], "h2", &existing),
            None
        );
    }

    #[test]
    fn bad_requests_are_refused_before_anything_is_written() {
        let ok = Task {
            image: "busybox".into(),
            ..Default::default()
        };
        assert!(validate(&ok).is_ok());
        let mut twice = ok.clone();
        twice.ports = vec![binding(80, "tcp"), binding(80, "")];
        assert!(validate(&twice).unwrap_err().contains("published twice"));
        let mut rel = ok.clone();
        rel.mounts = vec![Mount {
            source: "data".into(),
            target: "/data".into(),
            readonly: false,
            kind: "bind".into(),
        }];
        assert!(validate(&rel).unwrap_err().contains("not an absolute path"));
        let mut long_tag = ok.clone();
        long_tag.image = format!("busybox:{}", "b".repeat(100_000));
        let e = validate(&long_tag).unwrap_err();
        assert!(
            e.starts_with("invalid image reference \"busybox:b"),
            "{e:.200}"
        );
        assert!(e.len() < 300, "{e:.200}");
    }

    #[test]
    fn generated_names_avoid_taken_ones() {
        let first = generate_name("00000000000000aa", |_| false);
        let second = generate_name("00000000000000aa", |n| n == first);
        assert_ne!(first, second);
        assert!(second.starts_with(&first));
        assert!(valid_container_name(&first));
    }
}
