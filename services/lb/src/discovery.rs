//! Discovery: keeps [`Routes`] in step with the services and endpoints in etcd.
//!
//! It lists `services/` and `endpoints/` at one etcd revision, publishes the table, then
//! watches from the next revision and publishes a new table after every batch of changes.
//! The raw key/values are kept in memory so that after a disconnect the watch resumes from
//! the last revision seen, with no re-list and no gap; only when etcd has compacted that
//! revision away does it list again. While etcd is unreachable the last table stays in
//! force: stale routes serve traffic, an empty table would not.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use rctl_api::keys;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::routes::{Routes, RoutesTx};

/// Pause before the first attempt to reach etcd again, doubled after each failure.
const RECONNECT: Duration = Duration::from_millis(500);
/// The longest pause between attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(8);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("connect to etcd at {url}")]
    Connect {
        url: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("list {prefix}")]
    List {
        prefix: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("watch from revision {revision}")]
    Watch {
        revision: i64,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd closed the watch stream")]
    WatchClosed,
    #[error("etcd canceled the watch: {reason}")]
    WatchCanceled { reason: String },
}

/// What discovery knows: the raw values of every relevant key, and the revision they
/// reflect.
#[derive(Debug, Default)]
struct Mirror {
    kvs: BTreeMap<String, Vec<u8>>,
    /// Every change up to and including this revision is in `kvs`.
    revision: i64,
}

/// How a watch session ended without an error.
enum SessionEnd {
    /// The resume revision was compacted: list again, right away.
    Compacted,
}

/// Runs until `shutdown`, publishing every new table to `tx`.
pub async fn run(
    url: String,
    security: rctl_api::tls::Security,
    tx: RoutesTx,
    shutdown: CancellationToken,
) {
    let mut mirror: Option<Mirror> = None;
    let mut backoff = RECONNECT;
    loop {
        let mut watching = false;
        let ended = tokio::select! {
            _ = shutdown.cancelled() => return,
            ended = session(&url, &security, &mut mirror, &tx, &mut watching) => ended,
        };
        if watching {
            // The connection worked for a while: the next failure starts a fresh backoff.
            backoff = RECONNECT;
        }
        match ended {
            Ok(SessionEnd::Compacted) => {
                info!("watch revision compacted; listing again");
                mirror = None;
                continue;
            }
            Err(e) => warn!(
                error = %crate::Chain(&e),
                retry_in = ?backoff,
                "etcd unavailable; keeping the last routes"
            ),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// One connection to etcd: list if needed, then watch until something breaks. Sets
/// `watching` once the watch is established.
async fn session(
    url: &str,
    security: &rctl_api::tls::Security,
    mirror: &mut Option<Mirror>,
    tx: &RoutesTx,
    watching: &mut bool,
) -> Result<SessionEnd, DiscoveryError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        // Keep-alive pings make a dead etcd or a cut network end the watch stream instead
        // of leaving it silently stuck.
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true);
    let mut client = security
        .etcd_connect(&[url], options)
        .await
        .map_err(|source| DiscoveryError::Connect {
            url: url.to_string(),
            source,
        })?;

    let mirror = match mirror {
        Some(m) => m,
        None => {
            let listed = list(&mut client).await?;
            info!(
                revision = listed.revision,
                keys = listed.kvs.len(),
                "listed services and endpoints"
            );
            publish(&listed, tx);
            mirror.insert(listed)
        }
    };

    // One watch over [endpoints/, services/ + 1): it covers both prefixes and, by key order,
    // only `leader` and `nodes/` besides, leaving out the busy `status/` and `tasks/`.
    let revision = mirror.revision + 1;
    let options = WatchOptions::new()
        .with_range(prefix_end(&keys::services_prefix()))
        .with_start_revision(revision);
    let mut stream = client
        .watch(keys::endpoints_prefix(), Some(options))
        .await
        .map_err(|source| DiscoveryError::Watch { revision, source })?;
    debug!(revision, "watching");
    *watching = true;
    loop {
        let resp = stream
            .message()
            .await
            .map_err(|source| DiscoveryError::Watch {
                revision: mirror.revision + 1,
                source,
            })?
            .ok_or(DiscoveryError::WatchClosed)?;
        if resp.compact_revision() > 0 {
            return Ok(SessionEnd::Compacted);
        }
        if resp.canceled() {
            return Err(DiscoveryError::WatchCanceled {
                reason: resp.cancel_reason().to_string(),
            });
        }
        let mut changed = false;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            // Only event revisions advance the mirror: a header revision may run ahead of
            // events still to come while the watch catches up.
            mirror.revision = mirror.revision.max(kv.mod_revision());
            let Ok(key) = kv.key_str() else { continue };
            if !relevant(key) {
                continue;
            }
            changed = true;
            match event.event_type() {
                EventType::Put => {
                    mirror.kvs.insert(key.to_string(), kv.value().to_vec());
                }
                EventType::Delete => {
                    mirror.kvs.remove(key);
                }
            }
        }
        if changed {
            publish(mirror, tx);
        }
    }
}

/// Reads both prefixes at one revision so the table never mixes two points in time.
async fn list(client: &mut Client) -> Result<Mirror, DiscoveryError> {
    let mut mirror = Mirror::default();
    let mut at = None;
    for prefix in [keys::services_prefix(), keys::endpoints_prefix()] {
        let mut options = GetOptions::new().with_prefix();
        if let Some(rev) = at {
            options = options.with_revision(rev);
        }
        let resp = client
            .get(prefix.as_str(), Some(options))
            .await
            .map_err(|source| DiscoveryError::List {
                prefix: prefix.clone(),
                source,
            })?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let rev = *at.get_or_insert(rev);
        mirror.revision = rev;
        for kv in resp.kvs() {
            if let Ok(key) = kv.key_str() {
                mirror.kvs.insert(key.to_string(), kv.value().to_vec());
            }
        }
    }
    Ok(mirror)
}

fn relevant(key: &str) -> bool {
    key.starts_with(&keys::services_prefix()) || key.starts_with(&keys::endpoints_prefix())
}

/// Builds a table from `mirror` and swaps it in, keeping the in-flight counts.
fn publish(mirror: &Mirror, tx: &RoutesTx) {
    let (mut routes, errors) =
        Routes::from_kvs(mirror.kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    for e in &errors {
        warn!(error = %crate::Chain(e), "ignoring bad value");
    }
    routes.revision = mirror.revision;
    routes.inherit_load(&tx.borrow());
    let summary: Vec<String> = routes
        .services()
        .map(|s| format!("{}={}/{}", s.name, s.healthy_count(), s.backends.len()))
        .collect();
    info!(revision = mirror.revision, services = ?summary, "routes updated");
    tx.send_replace(Arc::new(routes));
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_covers_the_prefix() {
        assert_eq!(prefix_end("/rctl/v1/services/"), b"/rctl/v1/services0");
        let end = prefix_end(&keys::services_prefix());
        let start = keys::endpoints_prefix();
        for key in [keys::service("web"), keys::endpoint("web", "t1")] {
            assert!(key.as_bytes() >= start.as_bytes() && key.as_bytes() < end.as_slice());
        }
        for key in [keys::status("h1", "t1"), keys::task("web", "t1")] {
            assert!(key.as_bytes() >= end.as_slice());
        }
    }
}
