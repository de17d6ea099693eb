//! The weighted split between revisions, end to end: a real etcd, the LB library, and two
//! revisions of the real test server as separate processes. Counts which revision answered
//! each of 10,000 requests.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use rctl_api::{codec, keys, pb};
use rctl_tests::etcd::TestEtcd;
use rctl_tests::testserver::TestServer;

/// Sends `n` GETs over `conns` keep-alive connections and counts the answering versions.
async fn versions(lb: SocketAddr, n: usize, conns: usize) -> BTreeMap<String, usize> {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(lb).await.unwrap();
            let mut seen = BTreeMap::<String, usize>::new();
            for _ in 0..n / conns {
                let (status, body) = c.get("/").await.unwrap();
                assert_eq!(status, 200, "{body}");
                let version = body.split_whitespace().next().unwrap_or("").to_string();
                *seen.entry(version).or_default() += 1;
            }
            seen
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        for (v, n) in t.await.unwrap() {
            *all.entry(v).or_default() += n;
        }
    }
    all
}

fn share(seen: &BTreeMap<String, usize>, version: &str) -> f64 {
    let total: usize = seen.values().sum();
    seen.get(version).copied().unwrap_or(0) as f64 / total as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_requests_between_revisions_by_weight() {
    let etcd = TestEtcd::start();
    let mut kv = connect(&etcd.url).await;
    let stable = [TestServer::start("v1", &[]), TestServer::start("v1", &[])];
    let canary = TestServer::start("v2", &[]);
    let web = loopback();

    put(
        &mut kv,
        keys::service("web"),
        service("web", web, 2, &[(1, 95), (2, 5)]),
    )
    .await;
    put_endpoint(&mut kv, "web", "a", stable[0].addr, 1).await;
    put_endpoint(&mut kv, "web", "b", stable[1].addr, 1).await;
    put_endpoint(&mut kv, "web", "c", canary.addr, 2).await;
    let lb = Lb::start(&etcd.url, None);
    eventually("the lb serves both revisions", || async {
        let Ok(mut c) = Conn::open(web).await else {
            return false;
        };
        let mut seen = BTreeMap::new();
        for _ in 0..40 {
            let Ok((_, body)) = c.get("/").await else {
                return false;
            };
            *seen
                .entry(body.split_whitespace().next().unwrap_or("").to_string())
                .or_insert(0) += 1;
        }
        seen.len() == 2
    })
    .await;

    let seen = versions(web, 10_000, 4).await;
    let canary_share = share(&seen, "version=v2");
    assert!(
        (0.045..=0.055).contains(&canary_share),
        "95/5: canary share {canary_share} ({seen:?})"
    );

    // The LB reports what each revision saw to etcd, for the rollout controller.
    let stats = |kv: etcd_client::Client| async move {
        let mut kv = kv;
        let resp = kv.get(keys::stats("web", "lb1"), None).await.unwrap();
        resp.kvs()
            .first()
            .map(|kv| codec::decode::<pb::LbStats>(kv.key(), kv.value()).unwrap())
    };
    eventually("stats in etcd cover the 10,000 requests", || {
        let kv = kv.clone();
        async move {
            stats(kv)
                .await
                .is_some_and(|s| s.revisions.iter().map(|r| r.requests).sum::<u64>() >= 10_000)
        }
    })
    .await;
    let snap = stats(kv.clone()).await.unwrap();
    let rev = |n: u64| snap.revisions.iter().find(|r| r.revision == n).unwrap();
    let (stable_rev, canary_rev) = (rev(1), rev(2));
    assert_eq!(stable_rev.responses_2xx, stable_rev.requests);
    assert_eq!(canary_rev.responses_5xx + canary_rev.connect_failures, 0);
    let canary_counted =
        canary_rev.requests as f64 / (stable_rev.requests + canary_rev.requests) as f64;
    assert!((0.045..=0.055).contains(&canary_counted), "{snap:?}");
    assert!(
        canary_rev.p50_us > 0 && canary_rev.p50_us <= canary_rev.p99_us,
        "{canary_rev:?}"
    );
    assert!(!canary_rev.histogram.is_empty());

    // The rollout moves to 50/50: in force within a second of the etcd write.
    put(
        &mut kv,
        keys::service("web"),
        service("web", web, 2, &[(1, 50), (2, 50)]),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = versions(web, 10_000, 4).await;
    let canary_share = share(&seen, "version=v2");
    assert!(
        (0.49..=0.51).contains(&canary_share),
        "50/50: canary share {canary_share} ({seen:?})"
    );

    // No split: everything goes to the service's current revision.
    put(&mut kv, keys::service("web"), service("web", web, 2, &[])).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = versions(web, 1_000, 2).await;
    assert_eq!(seen, BTreeMap::from([("version=v2".to_string(), 1_000)]));

    lb.stop().await;
}
