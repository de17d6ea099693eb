//! Upgrade passthrough (what WebSocket uses): the real proxy in-process on 127.0.0.1:0 in
//! front of a backend that switches protocols to a line echo after its 101. The handshake
//! reaches the backend with its Upgrade headers, and bytes flow both ways afterwards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rctl_lb::proxy::http::{serve, Forwarder};
use rctl_lb::routes;
use rctl_lb::{Backend, Protocol, Routes, ServiceRoute, Stats};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Reads an HTTP head (up to the blank line).
async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap() == 0 || line == "\r\n" {
            return head;
        }
        head.push_str(&line);
    }
}

/// Answers an `Upgrade: echo` request with 101, then echoes what it gets.
async fn upgrading_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let head = read_head(&mut s).await.to_ascii_lowercase();
                if !(head.contains("upgrade: echo") && head.contains("connection: upgrade")) {
                    let _ = s
                        .get_mut()
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                s.get_mut()
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
                    .await
                    .unwrap();
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => s.get_mut().write_all(&buf[..n]).await.unwrap(),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn upgraded_connections_are_spliced_to_the_backend() {
    let backend = upgrading_backend().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = listener.local_addr().unwrap();
    let route = ServiceRoute::new("web", Protocol::Http, None)
        .with_backend(Backend::new("t1", backend, true));
    let (tx, rx) = routes::channel(Routes::from_services([route]));
    let shutdown = CancellationToken::new();
    let proxy = tokio::spawn(serve(
        listener,
        "web".into(),
        rx,
        Forwarder::new(Arc::new(Stats::default())),
        shutdown.clone(),
    ));

    let s = TcpStream::connect(lb).await.unwrap();
    let mut s = BufReader::new(s);
    s.get_mut()
        .write_all(b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    for msg in ["ping\n", "a second message\n"] {
        s.get_mut().write_all(msg.as_bytes()).await.unwrap();
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_line(&mut line))
            .await
            .expect("echo within 5 s")
            .unwrap();
        assert_eq!(line, msg);
    }

    // A plain request on another connection is unaffected.
    let mut plain = TcpStream::connect(lb).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    plain.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 400"),
        "the backend saw no upgrade: {out}"
    );

    drop(s);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), proxy)
        .await
        .expect("proxy stopped")
        .unwrap();
    drop(tx);
}
