//! Restarting rctl-lb under load, end to end: the real `rctl-lb` binary against a real etcd
//! and real test servers; a second LB started with the same `--handover` socket takes the
//! listeners, the first drains and exits, and no GET fails — each on its own connection, so
//! every one of them goes through accept during the restart.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use rctl_api::keys;
use rctl_tests::etcd::TestEtcd;
use rctl_tests::testserver::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

/// A running `rctl-lb` process, killed by pid on drop.
struct LbProcess(Child);

impl LbProcess {
    fn start(etcd: &str, handover: &std::path::Path, metrics: std::net::SocketAddr) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_rctl-lb"))
            .args(["--etcd", etcd, "--insecure", "--name", "lb1", "--handover"])
            .arg(handover)
            .args(["--metrics-addr", &metrics.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rctl-lb");
        Self(child)
    }
}

impl Drop for LbProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_refuses_no_connection() {
    let etcd = TestEtcd::start();
    let mut kv = connect(&etcd.url).await;
    let dir = tempfile::tempdir().unwrap();
    let handover = dir.path().join("lb.sock");
    let web = loopback();
    let metrics = loopback();
    let a = TestServer::start("a", &["--latency-ms", "10"]);
    let b = TestServer::start("b", &["--latency-ms", "10"]);
    put(&mut kv, keys::service("web"), service("web", web, 1, &[])).await;
    put_endpoint(&mut kv, "web", "a", a.addr, 1).await;
    put_endpoint(&mut kv, "web", "b", b.addr, 1).await;

    let mut old = LbProcess::start(&etcd.url, &handover, metrics);
    eventually("the first LB serves", || async {
        match Conn::open(web).await {
            Ok(mut c) => c.get("/").await.is_ok_and(|(s, _)| s == 200),
            Err(_) => false,
        }
    })
    .await;
    assert!(handover.exists());

    let started = Instant::now();
    let traffic = tokio::spawn(load_with(web, 200, Duration::from_secs(10), true));
    sleep(Duration::from_secs(2)).await;
    let new = LbProcess::start(&etcd.url, &handover, metrics);
    // The old LB hands over, drains and exits by itself.
    let deadline = Instant::now() + Duration::from_secs(15);
    let exited_at = loop {
        if let Some(status) = old.0.try_wait().unwrap() {
            assert!(status.success(), "old LB: {status}");
            break started.elapsed();
        }
        assert!(Instant::now() < deadline, "the old LB did not exit");
        sleep(Duration::from_millis(50)).await;
    };

    let report = traffic.await.unwrap();
    assert!(
        report.failed.is_empty(),
        "failed GETs: {:#?}",
        report.failed
    );
    assert!(
        report.ok.len() >= 1_900,
        "only {} GETs ran",
        report.ok.len()
    );
    let after = report.ok.iter().filter(|(t, _)| *t > exited_at).count();
    assert!(
        after > 100,
        "only {after} GETs after the old LB exited at {exited_at:?}"
    );
    // The new LB also took the metrics listener, and serves hand-overs itself.
    let mut m = Conn::open(metrics).await.unwrap();
    let (status, text) = m.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("rctl_lb_requests_total"), "{text}");
    assert!(handover.exists());
    drop(new);
}

/// A client that connected just before the LB began to stop still gets its first request
/// answered: the client of a fresh connection does not retry, so closing it unanswered
/// fails a request during every restart (seen as one failed GET in the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_accepted_before_a_stop_gets_its_first_answer() {
    let etcd = TestEtcd::start();
    let mut kv = connect(&etcd.url).await;
    let web = loopback();
    let a = TestServer::start("a", &[]);
    put(&mut kv, keys::service("web"), service("web", web, 1, &[])).await;
    put_endpoint(&mut kv, "web", "a", a.addr, 1).await;
    let lb = Lb::start(&etcd.url, None);
    eventually("the LB serves", || async {
        match Conn::open(web).await {
            Ok(mut c) => c.get("/").await.is_ok_and(|(s, _)| s == 200),
            Err(_) => false,
        }
    })
    .await;

    let mut client = TcpStream::connect(web).await.unwrap();
    // Not a timing under test: it only orders the LB's accept before the stop.
    sleep(Duration::from_millis(500)).await;
    lb.begin_stop();
    sleep(Duration::from_millis(100)).await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = timeout(Duration::from_secs(10), client.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        matches!(read, Ok(Ok(_))) && answer.starts_with("HTTP/1.1 200"),
        "the first request of a connection accepted before the stop: {read:?} {answer:?}"
    );
    lb.stop().await;
}
