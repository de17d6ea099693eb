//! Service RPCs: apply (and the image check before it), scale, list, inspect, remove, and
//! the task listing with each service's placement reason.

use std::collections::HashMap;

use rctl_api::pb::*;

use super::{retrying, Api};
use crate::grpc::ApiError;
use crate::image_check;
use crate::reconcile::reconcile;
use crate::revisions::{self, Change, Current, Outcome};
use crate::rollout;
use crate::spec::{validate, validate_replicas};
use crate::store::Loaded;

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
    /// Writes `spec` as its service's next revision ([`revisions::next`] decides what that
    /// is), after checking its image; `rollback` comes through here too.
    pub(super) async fn apply(
        &self,
        spec: ServiceSpec,
        who: &str,
        message: &str,
        exclusive: bool,
        canary: bool,
    ) -> Result<ApplyResponse, ApiError> {
        validate(&spec)?;
        self.require_leader().await?;
        let checked = self.check_image(&spec).await?;
        let change = Change {
            who,
            message,
            exclusive,
            canary,
            automatic: false,
        };
        retrying(|| async {
            let loaded = self.store.load().await?;
            if let Some(owner) = crate::names::for_service(&spec.name, &loaded.containers) {
                return Err(ApiError::ServiceNameTaken {
                    service: spec.name.clone(),
                    owner,
                });
            }
            let specs = loaded.services.iter().filter_map(|s| s.spec.as_ref());
            if let Some(owner) = crate::spec::listen_owner(&spec, specs) {
                return Err(ApiError::ListenTaken {
                    listen: spec.port.as_ref().map(|p| p.listen.clone()).unwrap_or_default(),
                    owner: owner.name.clone(),
                });
            }
            let old = loaded.service(&spec.name);
            // Only an exclusive change asks; it costs a look at every task of the service.
            let rolling = (exclusive || canary)
                && old.is_some_and(|old| {
                    rollout::rolling(old, &loaded.tasks_of(&spec.name), &loaded.statuses)
                });
            let current = Current {
                service: old,
                history: loaded.history(&spec.name),
                rolling,
            };
            let now = rctl_api::clock::now_unix_ms();
            let (outcome, write) =
                revisions::next(current, spec.clone(), &change, now)?;
            if outcome != Outcome::Unchanged {
                self.store.write_service(None, &write, &loaded).await?;
            }
            let outcome = outcome.as_str();
            tracing::info!(service = %spec.name, revision = write.service.revision, outcome, canary, "apply");
            Ok(ApplyResponse {
                service: Some(write.service),
                outcome: outcome.into(),
                warning: checked.warning().unwrap_or_default(),
            })
        })
        .await
    }

    /// Refuses a spec whose new image its registry does not have, before anything is
    /// written (issue 8); asks a ready node's agent, which holds the registry credentials.
    pub(super) async fn check_image(
        &self,
        spec: &ServiceSpec,
    ) -> Result<image_check::Checked, ApiError> {
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

    pub(super) async fn scale(&self, targets: Vec<ScaleTarget>) -> Result<ScaleResponse, ApiError> {
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
                let grows = svc
                    .spec
                    .as_ref()
                    .is_some_and(|s| t.replicas > i64::from(s.replicas));
                if let Some(owner) =
                    crate::names::for_service(&t.service, &loaded.containers).filter(|_| grows)
                {
                    return Err(ApiError::ServiceNameTaken {
                        service: t.service.clone(),
                        owner,
                    });
                }
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

    pub(super) async fn list_services(&self) -> Result<ListServicesResponse, ApiError> {
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

    pub(super) async fn inspect(&self, name: &str) -> Result<InspectServiceResponse, ApiError> {
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

    pub(super) async fn remove(&self, name: &str) -> Result<RemoveServiceResponse, ApiError> {
        self.require_leader().await?;
        if !self.store.delete_service(name).await? {
            return Err(ApiError::ServiceNotFound(name.into()));
        }
        tracing::info!(service = %name, "removed");
        Ok(RemoveServiceResponse {})
    }

    pub(super) async fn list_tasks(
        &self,
        r: ListTasksRequest,
    ) -> Result<ListTasksResponse, ApiError> {
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
}
