//! End-to-end test of the whole library against a real etcd (Debian's `etcd-server`):
//! services and endpoints written to etcd become listeners and routes; deleting an endpoint
//! stops its traffic; the watch survives an etcd restart; TCP and `/metrics` work.
//!
//! Needs Debian's `etcd-server` (installed by `make deps`); fails without it.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rctl_api::codec::encode;
use rctl_api::{keys, pb};
use rctl_tests::etcd::{free_port, TestEtcd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use common::{connect, eventually};

/// A tiny HTTP/1.1 backend that answers its name and counts requests.
async fn http_backend(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            bytes::Bytes::from(name),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

/// A TCP echo server.
async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn service(name: &str, protocol: &str, listen: SocketAddr) -> Vec<u8> {
    encode(&pb::Service {
        spec: Some(pb::ServiceSpec {
            name: name.into(),
            port: Some(pb::PortSpec {
                container: 8080,
                protocol: protocol.into(),
                listen: listen.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        revision: 1,
        ..Default::default()
    })
}

fn endpoint(svc: &str, task: &str, address: SocketAddr) -> Vec<u8> {
    encode(&pb::Endpoint {
        service: svc.into(),
        task_id: task.into(),
        node: "h1".into(),
        address: address.to_string(),
        revision: 1,
        healthy: true,
    })
}

/// GETs `path` from `addr` on a fresh connection; `None` when nothing answers.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1)?.to_string();
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_etcd() {
    // A missing etcd is a broken set-up, not a pass: `make deps` installs it.
    let mut etcd = TestEtcd::start();
    let mut kv = connect(&etcd.url).await;
    let (a, hits_a) = http_backend("a").await;
    let (b, hits_b) = http_backend("b").await;
    let echo = echo_backend().await;
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let db: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();

    kv.put(keys::service("web"), service("web", "", web), None)
        .await
        .unwrap();
    kv.put(keys::endpoint("web", "t1"), endpoint("web", "t1", a), None)
        .await
        .unwrap();

    let shutdown = CancellationToken::new();
    let lb = tokio::spawn(rctl_lb::run(
        rctl_lb::Config {
            metrics_addr: Some(metrics),
            ..rctl_lb::Config::new(etcd.url.clone(), "lb1")
        },
        shutdown.clone(),
    ));

    // Listed at start.
    eventually("web serves a", || async {
        get(web, "/").await == Some((200, "a".into()))
    })
    .await;

    // Watched: a new endpoint gets traffic, a deleted one stops getting it.
    kv.put(keys::endpoint("web", "t2"), endpoint("web", "t2", b), None)
        .await
        .unwrap();
    eventually("b gets traffic", || async {
        get(web, "/").await;
        hits_b.load(Ordering::SeqCst) > 0
    })
    .await;
    kv.delete(keys::endpoint("web", "t1"), None).await.unwrap();
    eventually("only b", || async {
        let before = hits_a.load(Ordering::SeqCst);
        for _ in 0..10 {
            get(web, "/").await;
        }
        hits_a.load(Ordering::SeqCst) == before
    })
    .await;

    // etcd crashes and comes back; meanwhile nothing changes for clients, and afterwards
    // the resumed watch sees new writes.
    etcd.restart();
    assert_eq!(get(web, "/").await, Some((200, "b".into())));
    let mut kv = connect(&etcd.url).await;
    kv.put(keys::service("db"), service("db", "tcp", db), None)
        .await
        .unwrap();
    kv.put(keys::endpoint("db", "t3"), endpoint("db", "t3", echo), None)
        .await
        .unwrap();
    eventually("db echoes over TCP", || async {
        let Ok(mut s) = TcpStream::connect(db).await else {
            return false;
        };
        if s.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) && &buf == b"ping"
    })
    .await;

    let (status, text) = get(metrics, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        text.contains("rctl_lb_requests_total{service=\"web\",class=\"2xx\"}"),
        "{text}"
    );
    assert!(
        text.contains("rctl_lb_endpoints{service=\"web\",state=\"healthy\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("rctl_lb_endpoints{service=\"db\",state=\"healthy\"} 1"),
        "{text}"
    );

    // The service goes away: its listener closes.
    kv.delete(keys::service("web"), None).await.unwrap();
    eventually("web listener closed", || async {
        TcpStream::connect(web).await.is_err()
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), lb)
        .await
        .expect("lb stopped")
        .unwrap()
        .unwrap();
}
