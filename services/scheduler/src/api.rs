//! The Scheduler gRPC API: validates requests, writes desired state to etcd, and reads
//! views for the CLI. It never acts on agents itself: the controller does, on the next pass
//! (it only asks one agent whether a change's new image exists, see [`crate::image_check`]).

use std::collections::{BTreeSet, HashMap, HashSet};

use rctl_api::pb::scheduler_server::Scheduler;
use rctl_api::pb::*;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::grpc::ApiError;
use crate::image_check;
use crate::leader::Leadership;
use crate::reconcile::reconcile;
use crate::revisions::{self, change_summary, rollback_spec, rollback_target, to_prune};
use crate::spec::{changes_revision, validate, validate_replicas};
use crate::store::{Loaded, Store, StoreError};

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

fn views(loaded: &Loaded, keep: impl Fn(&Task) -> bool) -> Vec<TaskView> {
    let mut v: Vec<TaskView> = loaded
        .tasks
        .iter()
        .filter(|t| keep(t))
        .map(|t| TaskView {
            task: Some(t.clone()),
            status: loaded.statuses.get(&t.id).cloned(),
            node_ip: crate::containers::node_ip(loaded, &t.node),
        })
        .collect();
    v.sort_by(|a, b| {
        let (a, b) = (a.task.as_ref().unwrap(), b.task.as_ref().unwrap());
        (&a.service, a.slot, std::cmp::Reverse(a.created_unix_ms)).cmp(&(
            &b.service,
            b.slot,
            std::cmp::Reverse(b.created_unix_ms),
        ))
    });
    v
}

fn is_running(loaded: &Loaded, t: &Task) -> bool {
    t.desired_state() == DesiredState::Running
        && loaded
            .statuses
            .get(&t.id)
            .is_some_and(|s| s.state() == TaskState::Running)
}

/// Why each service has fewer tasks than it wants, by service name: the same pure
/// reconcile the controller runs, on the same kind of snapshot, with its plan discarded.
fn unplaced(loaded: &Loaded) -> HashMap<String, String> {
    let plan = reconcile(&loaded.snapshot(rctl_api::clock::now_unix_ms()));
    plan.unplaced
        .iter()
        .map(|u| (u.service.clone(), u.describe()))
        .collect()
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

    async fn apply(
        &self,
        spec: ServiceSpec,
        who: &str,
        message: &str,
        exclusive: bool,
        canary: bool,
    ) -> Result<ApplyResponse, ApiError> {
        validate(&spec)?;
        let exclusive = exclusive || canary;
        self.require_leader().await?;
        let checked = self.check_image(&spec).await?;
        retrying(|| async {
            let loaded = self.store.load().await?;
            if let (true, Some(old)) = (exclusive, loaded.service(&spec.name)) {
                let tasks: Vec<&Task> = loaded
                    .tasks
                    .iter()
                    .filter(|t| t.service == spec.name)
                    .collect();
                if crate::rollout::rolling(old, &tasks, &loaded.statuses) {
                    return Err(ApiError::RolloutRunning {
                        service: spec.name.clone(),
                        revision: old.revision,
                    });
                }
            }
            let history = self.store.revisions(&spec.name).await?;
            let key = rctl_api::keys::service(&spec.name);
            let now = rctl_api::clock::now_unix_ms();
            let (svc, outcome) = match loaded.service(&spec.name) {
                None => (
                    Service {
                        spec: Some(spec.clone()),
                        revision: 1,
                        created_unix_ms: now,
                        updated_unix_ms: now,
                        ..Default::default()
                    },
                    "created",
                ),
                Some(old) if old.spec.as_ref() == Some(&spec) => (old.clone(), "unchanged"),
                Some(old) => {
                    let bump = old.spec.as_ref().is_none_or(|o| changes_revision(o, &spec));
                    (
                        Service {
                            spec: Some(spec.clone()),
                            // Past every kept revision: a rolled-back canary's number is
                            // not reused.
                            revision: if bump {
                                old.revision.max(history.iter().map(|r| r.revision).max().unwrap_or(0))
                                    + 1
                            } else {
                                old.revision
                            },
                            created_unix_ms: old.created_unix_ms,
                            updated_unix_ms: now,
                            // A new revision starts with all traffic on it (no split);
                            // scaling alone keeps a running split.
                            traffic: if bump { None } else { old.traffic.clone() },
                            cause: old.cause.clone(),
                        },
                        "updated",
                    )
                }
            };
            let mut svc = svc;
            let previous = loaded.service(&spec.name);
            let new_revision = previous.is_none_or(|p| p.revision != svc.revision);
            // A canary starts with the new revision at weight 0; the leader takes it on.
            let rollout = match (canary, previous) {
                (false, _) => None,
                (true, Some(p)) if new_revision => {
                    let r = canary_start(p.revision, svc.revision, now);
                    svc.traffic = Some(crate::rollout::split(p.revision, svc.revision, 0));
                    let rkey = rctl_api::keys::rollout(&spec.name);
                    Some((r, loaded.mod_revision(&rkey)))
                }
                (true, _) => {
                    return Err(ApiError::BadRequest(format!(
                        "a canary needs a running service whose image, command or env changes; \"{}\" {}",
                        spec.name,
                        if previous.is_none() { "does not exist" } else { "would not change revision" }
                    )))
                }
            };
            if outcome != "unchanged" {
                let (record, prune) = if new_revision {
                    let why = if message.is_empty() {
                        change_summary(previous.and_then(|p| p.spec.as_ref()), &spec)
                    } else {
                        message.to_string()
                    };
                    let record = revisions::record(&spec, svc.revision, who, &why, now);
                    svc.cause = record.cause.clone();
                    let kept: Vec<u64> = history.iter().map(|r| r.revision).collect();
                    (Some(record), to_prune(&kept, svc.revision))
                } else {
                    (None, Vec::new())
                };
                self.store
                    .put_service_revision_if(
                        None,
                        &svc,
                        loaded.mod_revision(&key),
                        record.as_ref(),
                        &prune,
                        rollout.as_ref().map(|(r, m)| (r, *m)),
                    )
                    .await?;
            }
            tracing::info!(service = %spec.name, revision = svc.revision, outcome, canary, "apply");
            Ok(ApplyResponse {
                service: Some(svc),
                outcome: outcome.into(),
                warning: checked.warning().unwrap_or_default(),
            })
        })
        .await
    }

    /// Refuses a spec whose new image its registry does not have, before anything is
    /// written (issue 8); asks a ready node's agent, which holds the registry credentials.
    async fn check_image(&self, spec: &ServiceSpec) -> Result<image_check::Checked, ApiError> {
        let loaded = self.store.load().await?;
        if !image_check::needs_check(
            loaded.service(&spec.name).and_then(|s| s.spec.as_ref()),
            spec,
        ) {
            return Ok(image_check::Checked::Unneeded);
        }
        let nodes = image_check::askable(&loaded.nodes, &loaded.draining);
        let checked = image_check::check(&self.images.agents, &nodes, &spec.image).await?;
        if let Some(w) = checked.warning() {
            tracing::warn!(service = %spec.name, "{w}");
        }
        Ok(checked)
    }

    async fn scale(&self, targets: Vec<ScaleTarget>) -> Result<ScaleResponse, ApiError> {
        self.require_leader().await?;
        if targets.is_empty() {
            return Err(ApiError::BadRequest(
                "nothing to scale (usage: rctl scale NAME=N)".into(),
            ));
        }
        for t in &targets {
            validate_replicas(t.replicas)?;
        }
        retrying(|| async {
            let loaded = self.store.load().await?;
            let mut updates = Vec::new();
            for t in &targets {
                let svc = loaded
                    .service(&t.service)
                    .ok_or_else(|| ApiError::ServiceNotFound(t.service.clone()))?;
                let mut svc = svc.clone();
                if let Some(spec) = svc.spec.as_mut() {
                    spec.replicas = t.replicas as u32;
                }
                svc.updated_unix_ms = rctl_api::clock::now_unix_ms();
                let rev = loaded.mod_revision(&rctl_api::keys::service(&t.service));
                updates.push((svc, rev));
            }
            self.store.put_services_if(&updates).await?;
            for t in &targets {
                tracing::info!(service = %t.service, replicas = t.replicas, "scale");
            }
            Ok(ScaleResponse {
                services: updates.into_iter().map(|(s, _)| s).collect(),
            })
        })
        .await
    }

    async fn history(&self, name: &str) -> Result<RevisionHistoryResponse, ApiError> {
        let loaded = self.store.load().await?;
        if loaded.service(name).is_none() {
            return Err(ApiError::ServiceNotFound(name.into()));
        }
        Ok(RevisionHistoryResponse {
            revisions: self.store.revisions(name).await?,
        })
    }

    /// A new revision with an earlier one's spec, written exactly as `apply` writes a change,
    /// so it rolls out through the same path.
    async fn rollback(&self, r: RollbackRequest, who: &str) -> Result<RollbackResponse, ApiError> {
        self.require_leader().await?;
        let (spec, from) = {
            let loaded = self.store.load().await?;
            let svc = loaded
                .service(&r.service)
                .ok_or_else(|| ApiError::ServiceNotFound(r.service.clone()))?;
            let history = self.store.revisions(&r.service).await?;
            let target = rollback_target(&r.service, &history, svc.revision, r.to)?;
            let current = svc.spec.clone().unwrap_or_default();
            let spec = rollback_spec(&current, target.spec.as_ref().unwrap_or(&current));
            (spec, target.revision)
        };
        let message = if r.message.is_empty() {
            format!("rollback to revision {from}")
        } else {
            r.message.clone()
        };
        let applied = self.apply(spec, who, &message, false, false).await?;
        Ok(RollbackResponse {
            service: applied.service,
            from_revision: from,
        })
    }

    async fn list_services(&self) -> Result<ListServicesResponse, ApiError> {
        let loaded = self.store.load().await?;
        let mut unplaced = unplaced(&loaded);
        let mut services: Vec<ServiceSummary> = loaded
            .services
            .iter()
            .map(|s| {
                let name = s
                    .spec
                    .as_ref()
                    .map(|sp| sp.name.as_str())
                    .unwrap_or_default();
                ServiceSummary {
                    service: Some(s.clone()),
                    running: loaded
                        .tasks
                        .iter()
                        .filter(|t| t.service == name && is_running(&loaded, t))
                        .count() as u32,
                    desired: s.spec.as_ref().map(|sp| sp.replicas).unwrap_or(0),
                    unplaced: unplaced.remove(name).unwrap_or_default(),
                }
            })
            .collect();
        services.sort_by(|a, b| {
            a.service
                .as_ref()
                .and_then(|s| s.spec.as_ref())
                .map(|s| &s.name)
                .cmp(
                    &b.service
                        .as_ref()
                        .and_then(|s| s.spec.as_ref())
                        .map(|s| &s.name),
                )
        });
        Ok(ListServicesResponse { services })
    }

    async fn inspect(&self, name: &str) -> Result<InspectServiceResponse, ApiError> {
        let loaded = self.store.load().await?;
        let svc = loaded
            .service(name)
            .ok_or_else(|| ApiError::ServiceNotFound(name.into()))?
            .clone();
        let tasks = views(&loaded, |t| t.service == name);
        Ok(InspectServiceResponse {
            service: Some(svc),
            tasks,
            unplaced: unplaced(&loaded).remove(name).unwrap_or_default(),
            canary: loaded.rollouts.get(name).cloned(),
        })
    }

    /// Marks the running canary of `name` to be promoted or aborted by the leader.
    async fn control_rollout(
        &self,
        name: &str,
        action: &str,
    ) -> Result<ControlRolloutResponse, ApiError> {
        if !matches!(action, "promote" | "abort") {
            return Err(ApiError::BadRequest(format!(
                "unknown rollout action {action:?} (promote or abort)"
            )));
        }
        self.require_leader().await?;
        retrying(|| async {
            let loaded = self.store.load().await?;
            if loaded.service(name).is_none() {
                return Err(ApiError::ServiceNotFound(name.into()));
            }
            let key = rctl_api::keys::rollout(name);
            let mut r = match loaded.rollouts.get(name) {
                Some(r) if crate::canary::in_progress(r) => r.clone(),
                _ => return Err(ApiError::NoCanary(name.into())),
            };
            match action {
                "promote" => r.promote = true,
                _ => r.abort = true,
            }
            self.store
                .put_rollout_if(&r, name, loaded.mod_revision(&key))
                .await?;
            tracing::info!(service = %name, action, "rollout control");
            Ok(ControlRolloutResponse { rollout: Some(r) })
        })
        .await
    }

    async fn remove(&self, name: &str) -> Result<RemoveServiceResponse, ApiError> {
        self.require_leader().await?;
        if !self.store.delete_service(name).await? {
            return Err(ApiError::ServiceNotFound(name.into()));
        }
        tracing::info!(service = %name, "removed");
        Ok(RemoveServiceResponse {})
    }

    async fn list_tasks(&self, r: ListTasksRequest) -> Result<ListTasksResponse, ApiError> {
        let loaded = self.store.load().await?;
        if !r.service.is_empty()
            && loaded.service(&r.service).is_none()
            && !loaded.tasks.iter().any(|t| t.service == r.service)
        {
            return Err(ApiError::ServiceNotFound(r.service));
        }
        let tasks = views(&loaded, |t| {
            (r.all || t.desired_state() == DesiredState::Running)
                && (r.service.is_empty() || t.service == r.service)
                && (r.node.is_empty() || t.node == r.node)
        });
        let unplaced = if r.node.is_empty() {
            unplaced(&loaded)
                .into_iter()
                .filter(|(svc, _)| r.service.is_empty() || *svc == r.service)
                .collect()
        } else {
            HashMap::new()
        };
        Ok(ListTasksResponse { tasks, unplaced })
    }

    async fn list_nodes(&self) -> Result<ListNodesResponse, ApiError> {
        let loaded = self.store.load().await?;
        let now = rctl_api::clock::now_unix_ms();
        let tasks_on = |node: &str| {
            loaded
                .tasks
                .iter()
                .filter(|t| t.node == node && t.desired_state() == DesiredState::Running)
                .count() as u32
        };
        let ages = futures::future::join_all(loaded.nodes.iter().map(|n| async {
            match loaded.node_leases.get(&n.name) {
                Some(&lease) => self.store.lease_age(lease).await,
                None => None,
            }
        }))
        .await;
        let mut nodes: Vec<NodeView> = loaded
            .nodes
            .iter()
            .zip(ages)
            .map(|(n, age)| NodeView {
                node: Some(n.clone()),
                state: if loaded.draining.contains(&n.name) {
                    "draining"
                } else {
                    "ready"
                }
                .into(),
                tasks: tasks_on(&n.name),
                last_heartbeat_unix_ms: age.map_or(0, |a| now - a.as_millis() as i64),
            })
            .collect();
        // A node whose agent is gone (its lease expired) but that still has tasks or a drain
        // mark is listed as down, so it does not silently vanish from the listing.
        let live: HashSet<&str> = loaded.nodes.iter().map(|n| n.name.as_str()).collect();
        let gone: BTreeSet<&str> = loaded
            .tasks
            .iter()
            .filter(|t| t.desired_state() == DesiredState::Running)
            .map(|t| t.node.as_str())
            .chain(loaded.draining.iter().map(String::as_str))
            .filter(|n| !n.is_empty() && !live.contains(n))
            .collect();
        nodes.extend(gone.into_iter().map(|name| NodeView {
            node: Some(Node {
                name: name.to_string(),
                ..Default::default()
            }),
            state: "down".into(),
            tasks: tasks_on(name),
            last_heartbeat_unix_ms: 0,
        }));
        nodes.sort_by(|a, b| {
            a.node
                .as_ref()
                .map(|n| &n.name)
                .cmp(&b.node.as_ref().map(|n| &n.name))
        });
        Ok(ListNodesResponse { nodes })
    }

    async fn drain_node(&self, node: &str) -> Result<DrainNodeResponse, ApiError> {
        self.require_leader().await?;
        let loaded = self.store.load().await?;
        if !loaded.nodes.iter().any(|n| n.name == node) {
            return Err(ApiError::NodeNotFound(node.into()));
        }
        let drain = NodeDrain {
            since_unix_ms: rctl_api::clock::now_unix_ms(),
        };
        self.store.put_drain(node, &drain).await?;
        tracing::info!(node = %node, "drain");
        Ok(DrainNodeResponse {})
    }

    async fn activate_node(&self, node: &str) -> Result<ActivateNodeResponse, ApiError> {
        self.require_leader().await?;
        let loaded = self.store.load().await?;
        let live = loaded.nodes.iter().any(|n| n.name == node);
        // A drained node whose agent is away may still be activated.
        if !self.store.delete_drain(node).await? && !live {
            return Err(ApiError::NodeNotFound(node.into()));
        }
        tracing::info!(node = %node, "activate");
        Ok(ActivateNodeResponse {})
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

/// The record of a canary of `canary` next to `stable`, started at `now_ms`.
fn canary_start(stable: u64, canary: u64, now_ms: i64) -> rctl_api::pb::CanaryRollout {
    let mut r = rctl_api::pb::CanaryRollout {
        stable_revision: stable,
        canary_revision: canary,
        step_started_unix_ms: now_ms,
        started_unix_ms: now_ms,
        ..Default::default()
    };
    r.set_state(rctl_api::pb::CanaryState::Starting);
    r
}
