//! Plain HTTP/1.1 through the proxy (its fast path, see `proxy::h1`) against a scripted
//! backend: pipelined requests answered in order, answers framed by length, by chunks
//! (trailers included) and by the backend closing, HEAD without a body, hop-by-hop headers
//! dropped and X-Forwarded-For appended, and a kept-alive backend connection that the
//! backend closed while idle replaced without the client noticing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rctl_lb::routes::{self, RoutesTx};
use rctl_lb::{Backend, Forwarder, Protocol, Routes, ServiceRoute, Stats};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A backend answering by path: `/len` (5 bytes, with a hop-by-hop header), `/chunked`
/// (two chunks and a trailer), `/close` (no length: the body ends when it closes), `/bye`
/// (a kept-alive answer, then it closes the connection anyway), `/xff` (echoes the
/// forwarding headers and whether a hop-by-hop one arrived). Counts connections.
async fn backend(conns: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            conns.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                loop {
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push(line.trim_end().to_string());
                    }
                    let path = head[0].split(' ').nth(1).unwrap_or("").to_string();
                    let header = |name: &str| {
                        head.iter()
                            .find_map(|l| {
                                let (n, v) = l.split_once(':')?;
                                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                            })
                            .unwrap_or_else(|| "-".into())
                    };
                    let answer = match path.as_str() {
                        "/len" => "HTTP/1.1 200 Fine\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\r\nhello".to_string(),
                        "/chunked" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n".to_string(),
                        "/close" => "HTTP/1.1 200 OK\r\n\r\nuntil close".to_string(),
                        "/bye" => "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye".to_string(),
                        _ => {
                            let body = format!(
                                "xff={} proto={} secret={}",
                                header("x-forwarded-for"),
                                header("x-forwarded-proto"),
                                header("x-secret")
                            );
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                        }
                    };
                    let answer = if head[0].starts_with("HEAD ") {
                        // The same head, no body.
                        let end = answer.find("\r\n\r\n").unwrap() + 4;
                        answer[..end].to_string()
                    } else {
                        answer
                    };
                    if s.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    if path == "/close" || path == "/bye" {
                        return;
                    }
                }
            });
        }
    });
    addr
}

struct Proxy {
    addr: SocketAddr,
    shutdown: CancellationToken,
    _routes: RoutesTx,
}

impl Proxy {
    async fn start(backend: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let route = ServiceRoute::new("web", Protocol::Http, None)
            .with_revision(1)
            .with_backend(Backend::new("t1", backend, true));
        let (tx, rx) = routes::channel(Routes::from_services([route]));
        let shutdown = CancellationToken::new();
        tokio::spawn(rctl_lb::proxy::http::serve(
            listener,
            "web".into(),
            rx,
            Forwarder::new(Arc::new(Stats::default())),
            shutdown.clone(),
        ));
        Self {
            addr,
            shutdown,
            _routes: tx,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Reads from `s` until `want` bytes arrived (or 10 s passed).
async fn read_n(s: &mut TcpStream, want: usize) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while out.len() < want {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn pipelined_requests_get_their_answers_in_order_whatever_the_framing() {
    let b = backend(Arc::default()).await;
    let proxy = Proxy::start(b).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /len HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n\
          HEAD /len HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /xff HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 198.18.0.9\r\nConnection: keep-alive, x-secret\r\nX-Secret: s\r\n\r\n",
    )
    .await
    .unwrap();
    let len = "HTTP/1.1 200 Fine\r\ncontent-length: 5\r\n\r\nhello";
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    let head = "HTTP/1.1 200 Fine\r\ncontent-length: 5\r\n\r\n";
    let xff_body = "xff=198.18.0.9, 127.0.0.1 proto=http secret=-";
    let xff = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{xff_body}",
        xff_body.len()
    );
    let want = len.len() + chunked.len() + head.len() + xff.len();
    let got = read_n(&mut s, want).await;
    // Header names as the backend sent them, compared without case.
    let got_lower = got.to_ascii_lowercase();
    let expected = format!("{len}{chunked}{head}{xff}").to_ascii_lowercase();
    assert_eq!(got_lower, expected, "{got}");

    // An answer without a length ends with the backend's connection, and so does the
    // client's (nothing else could tell where it ends).
    s.write_all(b"GET /close HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let rest = read_n(&mut s, usize::MAX).await;
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
    assert!(rest.ends_with("\r\n\r\nuntil close"), "{rest}");
    assert!(
        rest.to_ascii_lowercase().contains("connection: close"),
        "{rest}"
    );
}

#[tokio::test]
async fn a_backend_connection_closed_while_kept_alive_is_replaced() {
    let conns = Arc::new(AtomicUsize::new(0));
    let b = backend(conns.clone()).await;
    let proxy = Proxy::start(b).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    // `/bye` leaves the backend connection looking reusable, then the backend closes it.
    s.write_all(b"GET /bye HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let first = read_n(
        &mut s,
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye".len(),
    )
    .await;
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
    assert!(first.ends_with("bye"), "{first}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"GET /len HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let second = read_n(
        &mut s,
        "HTTP/1.1 200 Fine\r\nContent-Length: 5\r\n\r\nhello".len(),
    )
    .await;
    assert!(second.starts_with("HTTP/1.1 200 Fine"), "{second}");
    assert!(second.ends_with("hello"), "{second}");
    assert_eq!(conns.load(Ordering::SeqCst), 2, "a new backend connection");
}
