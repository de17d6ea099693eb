//! Rollout RPCs: revision history, rollback (a new revision through `apply`) and the
//! promote/abort marks a running canary's leader acts on.

use rctl_api::pb::*;

use super::{retrying, Api};
use crate::grpc::ApiError;
use crate::revisions;

impl Api {
    pub(super) async fn history(&self, name: &str) -> Result<RevisionHistoryResponse, ApiError> {
        let loaded = self.store.load().await?;
        if loaded.service(name).is_none() {
            return Err(ApiError::ServiceNotFound(name.into()));
        }
        Ok(RevisionHistoryResponse {
            revisions: loaded.history(name).to_vec(),
        })
    }

    /// A new revision with an earlier one's spec, written exactly as `apply` writes a change,
    /// so it rolls out through the same path.
    pub(super) async fn rollback(
        &self,
        r: RollbackRequest,
        who: &str,
    ) -> Result<RollbackResponse, ApiError> {
        self.require_leader().await?;
        let (spec, from) = {
            let loaded = self.store.load().await?;
            let svc = loaded
                .service(&r.service)
                .ok_or_else(|| ApiError::ServiceNotFound(r.service.clone()))?;
            revisions::rollback(svc, loaded.history(&r.service), r.to)?
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

    /// Marks the running canary of `name` to be promoted or aborted by the leader.
    pub(super) async fn control_rollout(
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
}
