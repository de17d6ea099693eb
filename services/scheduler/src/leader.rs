//! Leader election among scheduler replicas, on etcd's election API at [`keys::leader()`].
//!
//! Vocabulary:
//! - **candidate value**: this replica's name ([`default_node_id`]) and the address its API
//!   is reached at ([`Candidate`]), so followers can tell the CLI where the leader is.
//! - **term**: one stretch of leadership. It holds the [`LeaderKey`] etcd returned from
//!   `campaign`, whose create revision fences every controller write (see
//!   [`Store::create_task`](crate::store::Store::create_task)), and a lease kept alive in the
//!   background. A term ends when the lease cannot be renewed, a fenced write fails, or the
//!   replica resigns on shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, LeaderKey, ResignOptions};
use rctl_api::keys;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Lease TTL of a term: how long a dead leader blocks the others. Short, so a follower
/// leads within about this long after a leader dies; a false loss only costs a handover.
pub const LEASE_TTL_SECS: i64 = 2;
/// Bound on the calls made while stepping down, so shutdown never hangs on etcd.
const RESIGN_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on connecting and granting a lease.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before campaigning again after an etcd error.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("etcd {op}: {source}")]
    Etcd {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd {0}: timed out")]
    Timeout(&'static str),
    #[error("lease lost while campaigning")]
    LeaseLost,
    #[error("campaign returned no leader key")]
    NoLeaderKey,
}

fn etcd(op: &'static str) -> impl FnOnce(etcd_client::Error) -> LeaderError {
    move |source| LeaderError::Etcd { op, source }
}

/// This replica's default candidate value: hostname and pid, unique per process on a host.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() { "scheduler" } else { &host };
    format!("{host}-{}", std::process::id())
}

/// What a replica puts up for election: who it is and where its API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Unique per process ([`default_node_id`]); only for logs.
    pub id: String,
    /// The API address clients are sent to while this replica leads (e.g. `http://10.0.0.5:7600`).
    pub addr: String,
}

impl Candidate {
    /// The election value: `ID ADDR` (ids hold no spaces).
    pub fn encode(&self) -> String {
        format!("{} {}", self.id, self.addr)
    }

    /// Reads a value written by [`Candidate::encode`]; a bare id (no address) is accepted.
    pub fn decode(value: &str) -> Self {
        let (id, addr) = value.split_once(' ').unwrap_or((value, ""));
        Self {
            id: id.to_string(),
            addr: addr.trim().to_string(),
        }
    }
}

/// One replica's candidacy in the scheduler election.
#[derive(Clone)]
pub struct Election {
    client: Client,
    /// Election name: the etcd key prefix candidates queue under.
    name: String,
    /// This replica's candidate value ([`Candidate::encode`]).
    value: String,
    ttl_secs: i64,
    /// Whether this replica leads right now; set by the controller, read by the API.
    leading: Arc<AtomicBool>,
}

/// What the API needs to know about the election: whether this replica leads, and else
/// where the leader is.
#[derive(Clone)]
pub struct Leadership {
    client: Client,
    name: String,
    /// This replica's candidate value, to recognise its own stale key.
    value: String,
    leading: Arc<AtomicBool>,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// The current leader as etcd sees it; `None` while no one leads, etcd is unreachable,
    /// or the key is this replica's own from a term that just ended (it expires with its lease).
    pub async fn leader(&self) -> Option<Candidate> {
        let mut election = self.client.election_client();
        let resp = tokio::time::timeout(CALL_TIMEOUT, election.leader(self.name.as_str()))
            .await
            .ok()?
            .ok()?;
        let value = resp.kv()?.value_str().ok()?;
        (value != self.value).then(|| Candidate::decode(value))
    }
}

impl Election {
    /// Connects a client of its own: a campaign blocks for as long as another replica leads,
    /// so it must not share the store's per-request timeout. Every call here that can hang
    /// on an unreachable etcd is bounded explicitly instead.
    pub async fn connect(
        endpoints: &[String],
        security: &rctl_api::tls::Security,
        value: impl Into<String>,
    ) -> Result<Self, LeaderError> {
        let opts = etcd_client::ConnectOptions::new().with_connect_timeout(CALL_TIMEOUT);
        let client = security
            .etcd_connect(endpoints, opts)
            .await
            .map_err(etcd("connect"))?;
        Ok(Self::new(client, value))
    }

    pub fn new(client: Client, value: impl Into<String>) -> Self {
        Self {
            client,
            name: keys::leader(),
            value: value.into(),
            ttl_secs: LEASE_TTL_SECS,
            leading: Arc::new(AtomicBool::new(false)),
        }
    }

    /// This replica's candidate value.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// A view of this candidacy for the API.
    pub fn leadership(&self) -> Leadership {
        Leadership {
            client: self.client.clone(),
            name: self.name.clone(),
            value: self.value.clone(),
            leading: self.leading.clone(),
        }
    }

    /// Marks whether this replica leads: true only between winning a campaign and resigning.
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Release);
    }

    /// Waits until this replica leads. `None` if `shutdown` fires first; etcd errors are
    /// retried here, since a follower has nothing better to do than campaign again.
    pub async fn campaign(&self, shutdown: &CancellationToken) -> Option<Term> {
        loop {
            // try_campaign watches `shutdown` itself, so an abandoned candidacy is revoked.
            match self.try_campaign(shutdown).await {
                Ok(Some(term)) => return Some(term),
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "campaign failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }

    /// One lease, campaigned on until elected, the lease dies, or shutdown.
    async fn try_campaign(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Term>, LeaderError> {
        let mut leases = self.client.lease_client();
        let grant = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            g = tokio::time::timeout(CALL_TIMEOUT, leases.grant(self.ttl_secs, None)) => g,
        };
        let lease = grant
            .map_err(|_| LeaderError::Timeout("grant lease"))?
            .map_err(etcd("grant lease"))?
            .id();
        // The lease must live while we queue behind the current leader, not only once elected.
        let lost = CancellationToken::new();
        let keepalive = tokio::spawn(keep_alive(
            self.client.clone(),
            lease,
            self.ttl_secs,
            lost.clone(),
        ));
        let mut pending = Pending {
            client: self.client.clone(),
            lease,
            keepalive: Some(keepalive),
        };
        let mut election = self.client.election_client();
        loop {
            // A broken connection ends the call; campaigning again on the same lease reuses
            // our candidate key if it survived, and fencing covers the rest.
            let resp = tokio::select! {
                _ = shutdown.cancelled() => {
                    pending.abandon().await;
                    return Ok(None);
                }
                _ = lost.cancelled() => {
                    pending.abandon().await;
                    return Err(LeaderError::LeaseLost);
                }
                r = election.campaign(self.name.as_str(), self.value.as_str(), lease) => r,
            };
            match resp {
                Ok(mut r) => {
                    let Some(key) = r.take_leader() else {
                        pending.abandon().await;
                        return Err(LeaderError::NoLeaderKey);
                    };
                    return Ok(Some(Term {
                        client: self.client.clone(),
                        key,
                        lease,
                        lost,
                        keepalive: pending.keepalive.take(),
                    }));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "campaign call ended; campaigning again");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }
}

/// A lease still campaigning; revoked if the campaign is abandoned.
struct Pending {
    client: Client,
    lease: i64,
    keepalive: Option<JoinHandle<()>>,
}

impl Pending {
    async fn abandon(&mut self) {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
        let mut leases = self.client.lease_client();
        let _ = tokio::time::timeout(RESIGN_TIMEOUT, leases.revoke(self.lease)).await;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Cancelled mid-campaign (the caller dropped the future): stop renewing, so the
        // candidate key expires with the lease.
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
    }
}

/// One stretch of leadership.
pub struct Term {
    client: Client,
    key: LeaderKey,
    lease: i64,
    lost: CancellationToken,
    keepalive: Option<JoinHandle<()>>,
}

impl Term {
    /// The leader key; its create revision fences controller writes.
    pub fn key(&self) -> &LeaderKey {
        &self.key
    }

    /// The lease the leader key lives under.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Cancelled as soon as the lease can no longer be trusted to be alive.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Steps down: resigns, so the next candidate leads at once, and revokes the lease.
    /// Best effort and bounded: if etcd is unreachable the lease simply expires.
    pub async fn resign(mut self) {
        self.stop_keepalive();
        let mut election = self.client.election_client();
        let opts = ResignOptions::new().with_leader(self.key.clone());
        if let Err(e) = tokio::time::timeout(RESIGN_TIMEOUT, election.resign(Some(opts))).await {
            tracing::debug!(error = %e, "resign timed out");
        }
        let mut leases = self.client.lease_client();
        let _ = tokio::time::timeout(RESIGN_TIMEOUT, leases.revoke(self.lease)).await;
    }

    fn stop_keepalive(&mut self) {
        self.lost.cancel();
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        self.stop_keepalive();
    }
}

/// Renews `lease` every third of its TTL; cancels `lost` when a renewal fails, is not
/// answered within a third of the TTL, or reports the lease gone. Declaring loss early is
/// safe (we only stop leading); declaring it late is what fencing is for.
async fn keep_alive(client: Client, lease: i64, ttl_secs: i64, lost: CancellationToken) {
    let period = Duration::from_millis((ttl_secs.max(1) as u64) * 1000 / 3);
    let res: Result<(), String> = async {
        let (mut keeper, mut stream) = client
            .lease_client()
            .keep_alive(lease)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            tokio::select! {
                _ = lost.cancelled() => return Ok(()),
                _ = tokio::time::sleep(period) => {}
            }
            keeper.keep_alive().await.map_err(|e| e.to_string())?;
            match tokio::time::timeout(period, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                Ok(Ok(Some(_))) => return Err("lease expired".to_string()),
                Ok(Ok(None)) => return Err("keep-alive stream closed".to_string()),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("keep-alive not answered in time".to_string()),
            }
        }
    }
    .await;
    if let Err(e) = res {
        if !lost.is_cancelled() {
            tracing::warn!(lease, error = %e, "lease keep-alive failed");
        }
    }
    lost.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_round_trips_and_a_bare_id_has_no_address() {
        let c = Candidate {
            id: "host-42".into(),
            addr: "http://127.0.0.1:7600".into(),
        };
        assert_eq!(Candidate::decode(&c.encode()), c);
        assert_eq!(
            Candidate::decode("old-replica"),
            Candidate {
                id: "old-replica".into(),
                addr: String::new()
            }
        );
    }
}
