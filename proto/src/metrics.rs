//! A minimal Prometheus `/metrics` endpoint every binary serves on `--metrics-addr`: the
//! caller renders the text exposition format; this only answers HTTP/1.x GETs with it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Reads until the end of an HTTP request head (a blank line), EOF, or 8 KiB; the content
/// is ignored, since every path gets the same answer.
async fn read_head(sock: &mut tokio::net::TcpStream) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while head.len() < 8192 {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return;
        }
    }
}

/// Serves `render()` at any path until `shutdown` completes.
pub async fn serve<F>(
    addr: SocketAddr,
    render: F,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()>
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let render = Arc::new(render);
    tokio::pin!(shutdown);
    loop {
        let (mut sock, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
        };
        let render = render.clone();
        tokio::spawn(async move {
            // Read the whole request head before answering: closing with unread bytes would
            // reset the connection under a client still writing its request.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), read_head(&mut sock)).await;
            let body = render();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}
