//! Churn under load, end to end: a real etcd, the LB library and real test server processes,
//! with a constant 200 GETs/s running while endpoints are removed (and reported drained),
//! added, killed, flap in etcd and crash-loop. Not one GET may fail.

mod common;

use std::time::Duration;

use common::*;
use rctl_api::{codec, keys, pb};
use rctl_tests::etcd::TestEtcd;
use rctl_tests::testserver::TestServer;
use tokio::time::{sleep, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_get_fails_while_endpoints_come_go_crash_and_flap() {
    let etcd = TestEtcd::start();
    let mut kv = connect(&etcd.url).await;
    let web = loopback();
    // Some latency, so every event catches requests in flight.
    let slow = ["--latency-ms", "20"];
    let removed = TestServer::start("removed", &slow);
    let mut killed = TestServer::start("killed", &slow);
    let flapping = TestServer::start("flapping", &slow);
    let stable = TestServer::start("stable", &slow);
    let mut crashing = TestServer::start("crashing", &slow);
    let crash_port = crashing.addr.port();

    put(&mut kv, keys::service("web"), service("web", web, 1, &[])).await;
    for (task, s) in [
        ("removed", &removed),
        ("killed", &killed),
        ("flapping", &flapping),
        ("stable", &stable),
        ("crashing", &crashing),
    ] {
        put_endpoint(&mut kv, "web", task, s.addr, 1).await;
    }
    let lb = Lb::start(&etcd.url, None);
    eventually("the lb serves", || async {
        match Conn::open(web).await {
            Ok(mut c) => c.get("/").await.is_ok_and(|(s, _)| s == 200),
            Err(_) => false,
        }
    })
    .await;

    let started = Instant::now();
    let traffic = tokio::spawn(load(web, 200, Duration::from_secs(20)));
    let at = |secs: u64| sleep_until(started, secs);

    // Removed from etcd: drained, then reported drained.
    at(2).await;
    kv.delete(keys::endpoint("web", "removed"), None)
        .await
        .unwrap();
    let removed_at = started.elapsed();

    // Added: gets traffic within a second.
    at(4).await;
    let added = TestServer::start("added", &slow);
    put_endpoint(&mut kv, "web", "added", added.addr, 1).await;
    let added_at = started.elapsed();

    // Killed mid-traffic while etcd still lists it (its agent has not noticed yet).
    at(6).await;
    killed.kill();

    // Health flaps in etcd (as an agent's check would), and another backend crash-loops.
    at(8).await;
    for i in 0..16u64 {
        let mut ep: pb::Endpoint =
            codec::decode(b"endpoint", &pb_endpoint(&mut kv, "flapping").await).unwrap();
        ep.healthy = i % 2 == 1;
        put(
            &mut kv,
            keys::endpoint("web", "flapping"),
            codec::encode(&ep),
        )
        .await;
        if i % 4 == 0 {
            crashing.kill();
        } else if i % 4 == 2 {
            crashing = TestServer::start_on(crash_port, "crashing", &slow);
        }
        sleep(Duration::from_millis(300)).await;
    }

    let report = traffic.await.unwrap();
    assert!(
        report.failed.is_empty(),
        "failed GETs: {:#?}",
        report.failed
    );
    assert!(
        report.ok.len() >= 3_900,
        "only {} GETs ran",
        report.ok.len()
    );

    // Nothing new reached the removed endpoint once the table without it was out.
    let last = report.last("version=removed").unwrap();
    assert!(
        last < removed_at + Duration::from_secs(1),
        "removed served at {last:?}"
    );
    let drained = kv
        .get(keys::drained("web", "removed", "lb1"), None)
        .await
        .unwrap();
    let drained: pb::Drained = codec::decode(
        b"drained",
        drained.kvs().first().expect("drained report").value(),
    )
    .unwrap();
    assert_eq!((drained.lb.as_str(), drained.abandoned), ("lb1", 0));
    // The live endpoints were not reported.
    for task in ["stable", "added"] {
        let got = kv
            .get(keys::drained("web", task, "lb1"), None)
            .await
            .unwrap();
        assert!(got.kvs().is_empty(), "{task} reported drained");
    }

    let first = report.first("version=added").expect("added got traffic");
    assert!(
        first <= added_at + Duration::from_secs(1),
        "added got its first request {:?} after it was added",
        first - added_at
    );
    lb.stop().await;
}

async fn sleep_until(started: Instant, secs: u64) {
    tokio::time::sleep_until(started + Duration::from_secs(secs)).await;
}

async fn pb_endpoint(kv: &mut etcd_client::Client, task: &str) -> Vec<u8> {
    let resp = kv.get(keys::endpoint("web", task), None).await.unwrap();
    resp.kvs()[0].value().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_is_reported_only_after_in_flight_requests_end() {
    let etcd = TestEtcd::start();
    let mut kv = connect(&etcd.url).await;
    let web = loopback();
    let slow = TestServer::start("slow", &["--latency-ms", "1500"]);
    put(&mut kv, keys::service("web"), service("web", web, 1, &[])).await;
    put_endpoint(&mut kv, "web", "slow", slow.addr, 1).await;
    let lb = Lb::start(&etcd.url, None);
    eventually("the lb listens", || async { Conn::open(web).await.is_ok() }).await;

    let in_flight = tokio::spawn(request(web, "GET"));
    sleep(Duration::from_millis(300)).await;
    kv.delete(keys::endpoint("web", "slow"), None)
        .await
        .unwrap();
    sleep(Duration::from_millis(300)).await;
    assert!(!in_flight.is_finished());
    let key = keys::drained("web", "slow", "lb1");
    assert!(
        kv.get(key.as_str(), None).await.unwrap().kvs().is_empty(),
        "reported drained with a request still in flight"
    );
    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!(
        (status.as_u16(), body.split_whitespace().next()),
        (200, Some("version=slow"))
    );
    eventually("drained reported", || {
        let mut kv = kv.clone();
        let key = key.clone();
        async move { !kv.get(key, None).await.unwrap().kvs().is_empty() }
    })
    .await;
    // The LB registers itself so a scheduler knows whose reports to wait for.
    let me = kv.get(keys::lb("lb1"), None).await.unwrap();
    assert_eq!(me.kvs().len(), 1);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_request_retries_a_get_but_never_a_post() {
    let etcd = TestEtcd::start();
    let mut kv = connect(&etcd.url).await;
    let web = loopback();
    let mut dying = TestServer::start("dying", &["--latency-ms", "1000"]);
    let fine = TestServer::start("fine", &[]);
    put(&mut kv, keys::service("web"), service("web", web, 1, &[])).await;
    put_endpoint(&mut kv, "web", "dying", dying.addr, 1).await;
    let lb = Lb::start(&etcd.url, None);
    eventually("the lb listens", || async { Conn::open(web).await.is_ok() }).await;

    // Both requests reach the only endpoint; then a second one appears and the first dies
    // before answering.
    let get = tokio::spawn(request(web, "GET"));
    let post = tokio::spawn(request(web, "POST"));
    sleep(Duration::from_millis(200)).await;
    put_endpoint(&mut kv, "web", "fine", fine.addr, 1).await;
    sleep(Duration::from_millis(300)).await;
    dying.kill();

    let (status, body) = get.await.unwrap().unwrap();
    assert_eq!(status.as_u16(), 200, "{body}");
    assert!(body.starts_with("version=fine"), "{body}");
    let (status, _) = post.await.unwrap().unwrap();
    assert_eq!(status.as_u16(), 502, "a POST must not be sent twice");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_failing_backend_out_and_bring_it_back() {
    let etcd = TestEtcd::start();
    let mut kv = connect(&etcd.url).await;
    let web = loopback();
    // Its /healthz answers 404, though `/` works and etcd says healthy: only the LB's own
    // check can tell.
    let mut sick = TestServer::start("sick", &["--healthz", "off"]);
    let port = sick.addr.port();
    let well = TestServer::start("well", &[]);
    let mut svc: pb::Service = codec::decode(b"svc", &service("web", web, 1, &[])).unwrap();
    svc.spec.as_mut().unwrap().health = Some(pb::HealthSpec {
        http: "/healthz".into(),
        interval_ms: 200,
        ..Default::default()
    });
    put(&mut kv, keys::service("web"), codec::encode(&svc)).await;
    put_endpoint(&mut kv, "web", "sick", sick.addr, 1).await;
    put_endpoint(&mut kv, "web", "well", well.addr, 1).await;
    let lb = Lb::start(&etcd.url, None);

    let only = |word: &'static str| async move {
        let Ok(mut c) = Conn::open(web).await else {
            return false;
        };
        for _ in 0..50 {
            match c.get("/").await {
                Ok((_, body)) if body.starts_with(word) => {}
                _ => return false,
            }
        }
        true
    };
    eventually("the sick backend is out of rotation", || {
        only("version=well")
    })
    .await;

    // It recovers: after `rise` passing checks it serves again.
    sick.kill();
    sick = TestServer::start_on(port, "sick", &[]);
    eventually("the recovered backend gets traffic", || async {
        let Ok(mut c) = Conn::open(web).await else {
            return false;
        };
        for _ in 0..50 {
            if let Ok((_, body)) = c.get("/").await {
                if body.starts_with("version=sick") {
                    return true;
                }
            }
        }
        false
    })
    .await;
    drop(sick);
    lb.stop().await;
}
