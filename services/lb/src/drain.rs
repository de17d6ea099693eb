//! Draining: the handshake that lets a task stop without failing a request.
//!
//! When an endpoint leaves etcd, discovery publishes a table without it, so it gets no new
//! requests; the ones already running finish on the snapshot they started on. This module
//! watches for such removals, waits until the removed backend has nothing in flight (or the
//! drain timeout passes), and then writes `drained/{svc}/{task}/{lb}` ([`pb::Drained`]) —
//! the signal the scheduler waits for before it sends SIGTERM. It also keeps `lbs/{lb}`, so
//! the scheduler knows which LBs to wait for. Both keys live under this LB's lease: an LB
//! that dies stops holding a stop back.
//!
//! [`changes`] is the pure part: which endpoints a new table removed or brought back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, PutOptions};
use rctl_api::codec::encode;
use rctl_api::tls::Security;
use rctl_api::{keys, pb};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::routes::{Backend, Routes, RoutesRx};

/// TTL of the LB's lease: how long `lbs/{lb}` and its drain reports outlive a dead LB.
const LEASE_TTL: i64 = 10;
/// How often the lease is renewed.
const KEEP_ALIVE: Duration = Duration::from_secs(3);
/// How often a draining backend's in-flight count is looked at.
const POLL: Duration = Duration::from_millis(50);
/// Pause before reconnecting to etcd after a failure.
const RECONNECT: Duration = Duration::from_secs(1);
/// How long a drain report is kept: long enough for any scheduler to act on it.
const KEEP_REPORT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("connect to etcd at {url}")]
    Connect {
        url: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("grant the LB's lease")]
    Grant(#[source] etcd_client::Error),
    #[error("renew the LB's lease")]
    KeepAlive(#[source] etcd_client::Error),
    #[error("the LB's lease expired")]
    LeaseExpired,
    #[error("write {key}")]
    Put {
        key: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("delete {key}")]
    Delete {
        key: String,
        #[source]
        source: etcd_client::Error,
    },
}

/// One endpoint, as `(service, task)`.
pub type EndpointId = (String, String);

/// What a new routing table changed, for draining.
#[derive(Debug, Default)]
pub struct Changes {
    /// Backends that are gone from the new table (by service, task and address).
    pub removed: Vec<(String, Arc<Backend>)>,
    /// Endpoints in the new table that were not in the old one.
    pub added: Vec<EndpointId>,
}

/// Compares two tables. An endpoint that moved to a new address counts as removed (its old
/// address drains) and added.
pub fn changes(prev: &Routes, next: &Routes) -> Changes {
    let present = |routes: &Routes, svc: &str, b: &Backend| {
        routes.service(svc).is_some_and(|r| {
            r.backends
                .iter()
                .any(|o| o.task_id == b.task_id && o.address == b.address)
        })
    };
    let mut out = Changes::default();
    for route in prev.services() {
        for b in &route.backends {
            if !present(next, &route.name, b) {
                out.removed.push((route.name.clone(), b.clone()));
            }
        }
    }
    for route in next.services() {
        for b in &route.backends {
            if !present(prev, &route.name, b) {
                out.added.push((route.name.clone(), b.task_id.clone()));
            }
        }
    }
    out
}

/// A message to the etcd writer.
#[derive(Debug)]
enum Report {
    Drained { id: EndpointId, abandoned: usize },
    Back(EndpointId),
}

/// Runs until `shutdown`: drains every endpoint a new table removes and reports it to etcd
/// at `url` as LB `name`.
pub async fn run(
    url: String,
    security: Security,
    name: String,
    mut routes: RoutesRx,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tasks = TaskTracker::new();
    tasks.spawn(writer(
        url,
        security,
        name,
        rx,
        routes.clone(),
        shutdown.child_token(),
    ));
    let mut prev = routes.borrow_and_update().clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = routes.changed() => if changed.is_err() { break },
        }
        let next = routes.borrow_and_update().clone();
        let Changes { removed, added } = changes(&prev, &next);
        for id in added {
            let _ = tx.send(Report::Back(id));
        }
        for (service, backend) in removed {
            let tx = tx.clone();
            let stop = shutdown.child_token();
            tasks.spawn(async move {
                let id = (service, backend.task_id.clone());
                let abandoned = tokio::select! {
                    _ = stop.cancelled() => return,
                    n = wait_idle(&backend, timeout) => n,
                };
                let _ = tx.send(Report::Drained { id, abandoned });
            });
        }
        prev = next;
    }
    drop(tx);
    tasks.close();
    tasks.wait().await;
}

/// Waits until nothing is in flight to `backend`, for at most `timeout`; returns how many
/// requests or connections were still in flight when it gave up.
async fn wait_idle(backend: &Backend, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let load = backend.load();
        if load == 0 {
            return 0;
        }
        if Instant::now() >= deadline {
            warn!(task = backend.task_id, address = %backend.address, in_flight = load, "drain timeout passed");
            return load;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Owns the lease and the keys under it. Keeps every report in memory so that after a lost
/// lease (etcd down longer than the TTL) a new lease gets them all again.
async fn writer(
    url: String,
    security: Security,
    name: String,
    mut rx: mpsc::UnboundedReceiver<Report>,
    routes: RoutesRx,
    shutdown: CancellationToken,
) {
    let mut reports: BTreeMap<EndpointId, (pb::Drained, Instant)> = BTreeMap::new();
    let started_unix_ms = rctl_api::clock::now_unix_ms();
    loop {
        let ended = tokio::select! {
            _ = shutdown.cancelled() => return,
            ended = session(&url, &security, &name, started_unix_ms, &mut rx, &routes, &mut reports) => ended,
        };
        match ended {
            // The channel closed: the LB is stopping.
            Ok(()) => return,
            Err(e) => warn!(error = %crate::Chain(&e), "cannot report drains to etcd; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT) => {}
        }
    }
}

async fn session(
    url: &str,
    security: &Security,
    name: &str,
    started_unix_ms: i64,
    rx: &mut mpsc::UnboundedReceiver<Report>,
    routes: &RoutesRx,
    reports: &mut BTreeMap<EndpointId, (pb::Drained, Instant)>,
) -> Result<(), DrainError> {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(3));
    let mut client = security
        .etcd_connect(&[url], options)
        .await
        .map_err(|source| DrainError::Connect {
            url: url.to_string(),
            source,
        })?;
    let lease = client
        .lease_grant(LEASE_TTL, None)
        .await
        .map_err(DrainError::Grant)?
        .id();
    let (mut keeper, mut acks) = client
        .lease_keep_alive(lease)
        .await
        .map_err(DrainError::KeepAlive)?;
    put(
        &mut client,
        lease,
        keys::lb(name),
        encode(&pb::LoadBalancer {
            name: name.to_string(),
            started_unix_ms,
        }),
    )
    .await?;
    for ((svc, task), (drained, _)) in reports.iter() {
        put(
            &mut client,
            lease,
            keys::drained(svc, task, name),
            encode(drained),
        )
        .await?;
    }
    debug!(lease, "reporting drains");
    let mut renew = tokio::time::interval(KEEP_ALIVE);
    loop {
        tokio::select! {
            _ = renew.tick() => {
                keeper.keep_alive().await.map_err(DrainError::KeepAlive)?;
                let ack = acks.message().await.map_err(DrainError::KeepAlive)?;
                if ack.is_none_or(|a| a.ttl() <= 0) {
                    return Err(DrainError::LeaseExpired);
                }
                let now = Instant::now();
                let old: Vec<EndpointId> = reports
                    .iter()
                    .filter(|(_, (_, at))| now.duration_since(*at) > KEEP_REPORT)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in old {
                    delete(&mut client, &id, name).await?;
                    reports.remove(&id);
                }
            }
            report = rx.recv() => match report {
                None => return Ok(()),
                Some(Report::Drained { id, abandoned }) => {
                    // Back in the table while it drained (a flapping endpoint): not drained.
                    let back = routes.borrow().service(&id.0).is_some_and(|r| {
                        r.backends.iter().any(|b| b.task_id == id.1)
                    });
                    if back {
                        continue;
                    }
                    let drained = pb::Drained {
                        lb: name.to_string(),
                        unix_ms: rctl_api::clock::now_unix_ms(),
                        abandoned: abandoned as u64,
                    };
                    put(&mut client, lease, keys::drained(&id.0, &id.1, name), encode(&drained)).await?;
                    info!(service = id.0, task = id.1, abandoned, "drained");
                    reports.insert(id, (drained, Instant::now()));
                }
                Some(Report::Back(id)) => {
                    if reports.contains_key(&id) {
                        delete(&mut client, &id, name).await?;
                        reports.remove(&id);
                    }
                }
            },
        }
    }
}

async fn put(
    client: &mut Client,
    lease: i64,
    key: String,
    value: Vec<u8>,
) -> Result<(), DrainError> {
    client
        .put(
            key.clone(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map(|_| ())
        .map_err(|source| DrainError::Put { key, source })
}

async fn delete(client: &mut Client, id: &EndpointId, lb: &str) -> Result<(), DrainError> {
    let key = keys::drained(&id.0, &id.1, lb);
    client
        .delete(key.clone(), None)
        .await
        .map(|_| ())
        .map_err(|source| DrainError::Delete { key, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{Protocol, ServiceRoute};

    fn table(backends: &[(&str, u16)]) -> Routes {
        let mut route = ServiceRoute::new("web", Protocol::Http, None);
        for (task, port) in backends {
            route = route.with_backend(Backend::new(*task, ([127, 0, 0, 1], *port).into(), true));
        }
        Routes::from_services([route])
    }

    fn ids(c: &Changes) -> (Vec<String>, Vec<String>) {
        (
            c.removed.iter().map(|(_, b)| b.task_id.clone()).collect(),
            c.added.iter().map(|(_, t)| t.clone()).collect(),
        )
    }

    #[test]
    fn finds_removed_and_added_endpoints() {
        let a = table(&[("t1", 1), ("t2", 2), ("t3", 3)]);
        let b = table(&[("t2", 2), ("t3", 30), ("t4", 4)]);
        let c = changes(&a, &b);
        assert_eq!(
            ids(&c),
            (
                vec!["t1".into(), "t3".into()],
                vec!["t3".into(), "t4".into()]
            )
        );
        // A whole service going away drains all of its endpoints.
        let c = changes(&a, &Routes::default());
        assert_eq!(ids(&c).0.len(), 3);
        assert!(changes(&a, &a).removed.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_in_flight_requests_up_to_the_timeout() {
        let b = Backend::new("t1", ([127, 0, 0, 1], 1).into(), true);
        assert_eq!(wait_idle(&b, Duration::from_secs(5)).await, 0);

        let first = b.start();
        let _second = b.start();
        let release = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(first);
        };
        let (abandoned, ()) = tokio::join!(wait_idle(&b, Duration::from_secs(3)), release);
        assert_eq!(abandoned, 1, "one request outlived the drain timeout");
    }
}
