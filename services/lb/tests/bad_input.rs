//! Bad input against the HTTP proxy: the real proxy in-process on 127.0.0.1:0 in front of a
//! real test server and a backend that answers garbage. Each bad client gets the right
//! status or is closed, the proxy survives, and a well-behaved client is served throughout.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::Conn;
use rctl_lb::proxy::http::{serve, Forwarder};
use rctl_lb::routes;
use rctl_lb::{Backend, Protocol, Routes, ServiceRoute, Stats};
use rctl_tests::testserver::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A proxy for one backend; returns its address.
async fn proxy(backend: SocketAddr, shutdown: &CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let route = ServiceRoute::new("web", Protocol::Http, None)
        .with_backend(Backend::new("t1", backend, true));
    let (_tx, rx) = routes::channel(Routes::from_services([route]));
    let forwarder =
        Forwarder::new(Arc::new(Stats::default())).with_header_timeout(Duration::from_secs(1));
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let _tx = _tx; // keep the table alive
        serve(listener, "web".into(), rx, forwarder, shutdown).await;
    });
    addr
}

/// Writes `raw` and reads until the proxy closes (or 5 s pass); returns what came back.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status(reply: &str) -> &str {
    reply.split(' ').nth(1).unwrap_or("")
}

/// A backend that answers every connection with bytes that are not HTTP.
async fn garbage_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\x00\x01\x02").await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_and_backends_get_errors_and_others_are_unaffected() {
    let shutdown = CancellationToken::new();
    let good = TestServer::start("good", &[]);
    let lb = proxy(good.addr, &shutdown).await;
    let bad_lb = proxy(garbage_backend().await, &shutdown).await;
    // Another client, served between every bad one.
    let check_bystander = async || {
        let mut c = Conn::open(lb).await.unwrap();
        let (s, body) = c.get("/").await.unwrap();
        assert_eq!(s, 200);
        assert!(body.starts_with("version=good"), "{body}");
    };
    check_bystander().await;

    // Oversized headers: 431.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(rctl_lb::proxy::http::MAX_HEADER_SIZE)
    );
    assert_eq!(status(&exchange(lb, big.as_bytes()).await), "431");
    check_bystander().await;

    // A malformed request line: 400.
    let reply = exchange(lb, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert_eq!(status(&reply), "400", "{reply:?}");
    check_bystander().await;

    // Slowloris: half a head, then nothing; closed after the header timeout, not kept
    // forever (exchange gives up after 5 s and would return with the socket still open).
    let mut slow = TcpStream::connect(lb).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "slowloris connection still open after 5 s");
    check_bystander().await;

    // A backend answering garbage: 502.
    let reply = exchange(
        bad_lb,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&reply), "502", "{reply:?}");
    check_bystander().await;

    shutdown.cancel();
}
