//! The protocol pieces of the L7 and L4 proxies, each through the real proxy in-process
//! on 127.0.0.1:0 in front of real loopback backends: HTTP/2 by prior knowledge (h2c),
//! TLS with certificates chosen by SNI and HTTP/2 by ALPN, PROXY protocol v2 to HTTP and
//! TCP backends, the request timeout (504, POST not retried), the idle timeouts of client
//! connections, CONNECT refused, a TCP line echo, and the sticky canary.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rctl_lb::proxy::proxy_protocol::{self, Header};
use rctl_lb::routes::{self, RoutesTx, TlsCert};
use rctl_lb::split::{Sticky, Weights};
use rctl_lb::{Backend, Forwarder, Protocol, Routes, ServiceRoute, Stats};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A backend answering every request with what it saw, one `key=value` per line:
/// `rev`, `method`, `host`, `proto` (X-Forwarded-Proto), `client` (from the PROXY header
/// when `proxied`, else `-`). `/slow` answers after 3 s. Counts requests in `hits`.
async fn backend(revision: u64, proxied: bool, hits: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let hits = hits.clone();
            tokio::spawn(async move {
                let client = if proxied {
                    match read_proxy_header(&mut s).await {
                        Some(Header::Proxy { source, .. }) => source.to_string(),
                        _ => return, // no valid header: hang up, as a strict backend does
                    }
                } else {
                    "-".to_string()
                };
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let hits = hits.clone();
                    let client = client.clone();
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                        }
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string()
                        };
                        let body = format!(
                            "rev={revision}\nmethod={}\nhost={}\nproto={}\nclient={client}\n",
                            req.method(),
                            h("host"),
                            h("x-forwarded-proto"),
                        );
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Reads a PROXY v2 header off `s` with the crate's parser, as a backend would.
async fn read_proxy_header(s: &mut TcpStream) -> Option<Header> {
    let mut buf = vec![0u8; 16];
    s.read_exact(&mut buf).await.ok()?;
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    buf.resize(16 + len, 0);
    s.read_exact(&mut buf[16..]).await.ok()?;
    proxy_protocol::parse(&buf).ok().map(|(h, _)| h)
}

/// A TCP backend echoing lines, after a PROXY header when `proxied` (it then first writes
/// `client=ADDR\n`).
async fn echo_backend(proxied: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if proxied {
                    let Some(Header::Proxy { source, .. }) = read_proxy_header(&mut s).await else {
                        return;
                    };
                    let _ = s.write_all(format!("client={source}\n").as_bytes()).await;
                }
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The proxy serving `route` (named "web") on a fresh loopback port; stopped on drop.
struct Proxy {
    addr: SocketAddr,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    _routes: RoutesTx,
}

impl Proxy {
    async fn start(route: ServiceRoute) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let protocol = route.protocol;
        let (tx, rx) = routes::channel(Routes::from_services([route]));
        let stats = Arc::new(Stats::default());
        let shutdown = CancellationToken::new();
        match protocol {
            Protocol::Http => tokio::spawn(rctl_lb::proxy::http::serve(
                listener,
                "web".into(),
                rx,
                Forwarder::new(stats.clone()),
                shutdown.clone(),
            )),
            Protocol::Tcp => tokio::spawn(rctl_lb::proxy::tcp::serve(
                listener,
                "web".into(),
                rx,
                stats.clone(),
                shutdown.clone(),
            )),
        };
        Self {
            addr,
            stats,
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

fn route_to(backends: &[(SocketAddr, u64)]) -> ServiceRoute {
    let mut route = ServiceRoute::new("web", Protocol::Http, None).with_revision(1);
    for (i, (addr, rev)) in backends.iter().enumerate() {
        let mut b = Backend::new(format!("t{i}"), *addr, true);
        b.revision = *rev;
        route = route.with_backend(b);
    }
    route
}

/// One HTTP/2 connection over `io`; GETs return (status, body).
struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
}

impl H2 {
    async fn handshake<I>(io: I) -> Self
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        Self { sender }
    }

    async fn get(&mut self, uri: &str) -> (StatusCode, String) {
        let req = Request::get(uri).body(Empty::new()).unwrap();
        let resp = self.sender.send_request(req).await.expect("h2 response");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Sends one raw HTTP/1.1 request with `Connection: close` and returns the whole answer.
async fn raw(addr: SocketAddr, head: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("answer within 10 s")
        .unwrap();
    out
}

#[tokio::test]
async fn http2_prior_knowledge_round_trip() {
    let backend = backend(1, false, Arc::default()).await;
    let proxy = Proxy::start(route_to(&[(backend, 1)])).await;
    let mut h2 = H2::handshake(TcpStream::connect(proxy.addr).await.unwrap()).await;
    for _ in 0..3 {
        let (status, body) = h2.get("http://web.test/hello").await;
        assert_eq!(status, StatusCode::OK);
        // The backend got HTTP/1.1 with the :authority as Host.
        assert!(body.contains("host=web.test\n"), "{body}");
        assert!(body.contains("proto=http\n"), "{body}");
    }
    // Streams of one connection run concurrently.
    let (a, b) = tokio::join!(
        {
            let mut c = H2 {
                sender: h2.sender.clone(),
            };
            async move { c.get("http://web.test/a").await }
        },
        h2.get("http://web.test/b")
    );
    assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
    // HTTP/1.1 on the same listener still works, and `Upgrade: h2c` is ignored.
    let out = raw(
        proxy.addr,
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 "), "{out}");
    assert!(!out.starts_with("HTTP/1.1 101"), "{out}");
}

/// A self-signed certificate for `names` written to `dir`: (config entry, DER).
fn cert(dir: &std::path::Path, file: &str, names: &[&str], sni: &[&str]) -> (TlsCert, Vec<u8>) {
    let c =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = dir.join(format!("{file}.pem"));
    let key = dir.join(format!("{file}.key"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
    (
        TlsCert {
            cert,
            key,
            server_names: sni.iter().map(|s| s.to_string()).collect(),
        },
        c.cert.der().to_vec(),
    )
}

#[tokio::test]
async fn tls_picks_the_certificate_by_sni_and_speaks_h2_by_alpn() {
    use rustls::pki_types::{CertificateDer, ServerName};
    let dir = tempfile::tempdir().unwrap();
    let (default, default_der) = cert(dir.path(), "default", &["127.0.0.1"], &[]);
    let (a, a_der) = cert(dir.path(), "a", &["a.test"], &["a.test"]);
    let (b, b_der) = cert(dir.path(), "b", &["x.b.test"], &["*.b.test"]);
    let backend = backend(1, false, Arc::default()).await;
    let mut route = route_to(&[(backend, 1)]);
    route.tls = vec![a, default, b];
    let proxy = Proxy::start(route).await;

    let mut roots = rustls::RootCertStore::empty();
    for der in [&default_der, &a_der, &b_der] {
        roots.add(CertificateDer::from(der.clone())).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = |alpn: &[&[u8]]| {
        let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(c))
    };
    // The server name also decides whether SNI is sent: an IP address sends none.
    let cases = [
        (ServerName::try_from("a.test").unwrap(), &a_der),
        (ServerName::try_from("x.b.test").unwrap(), &b_der),
        (ServerName::try_from("127.0.0.1").unwrap(), &default_der),
    ];
    for (name, want) in cases {
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let tls = client(&[b"h2", b"http/1.1"])
            .connect(name.clone(), tcp)
            .await
            .unwrap_or_else(|e| panic!("handshake for {name:?}: {e}"));
        let (_, conn) = tls.get_ref();
        assert_eq!(
            conn.peer_certificates().unwrap()[0].as_ref(),
            want.as_slice(),
            "certificate served for {name:?}"
        );
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        let mut h2 = H2::handshake(tls).await;
        let (status, body) = h2.get("https://a.test/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("proto=https\n"), "{body}");
    }

    // A client offering only HTTP/1.1 gets HTTP/1.1 over TLS.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let mut tls = client(&[b"http/1.1"])
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("proto=https\n"), "{out}");

    // Plaintext on the TLS port is not served.
    let mut plain = TcpStream::connect(proxy.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut out)).await;
    assert!(
        !String::from_utf8_lossy(&out).contains("rev="),
        "served plaintext"
    );
}

#[tokio::test]
async fn proxy_protocol_v2_carries_the_client_address_to_http_backends() {
    let backend = backend(1, true, Arc::default()).await;
    let mut route = route_to(&[(backend, 1)]);
    route.proxy_protocol = true;
    let proxy = Proxy::start(route).await;
    // Two client connections from different source ports: each backend connection
    // carries its own client's address, kept-alive requests included.
    for _ in 0..2 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let me = s.local_addr().unwrap();
        let mut s_buf = Vec::new();
        for _ in 0..2 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            s_buf.clear();
            let mut chunk = [0u8; 4096];
            while !String::from_utf8_lossy(&s_buf).contains("client=") {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&s_buf));
                s_buf.extend_from_slice(&chunk[..n]);
            }
            // Read to the end of the body (the last line).
            while !String::from_utf8_lossy(&s_buf).ends_with('\n') {
                let n = s.read(&mut chunk).await.unwrap();
                s_buf.extend_from_slice(&chunk[..n]);
            }
            let out = String::from_utf8_lossy(&s_buf);
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
            assert!(out.contains(&format!("client={me}\n")), "{out}");
        }
    }
}

#[tokio::test]
async fn tcp_line_echo_with_proxy_protocol_and_idle_timeout() {
    let plain = echo_backend(false).await;
    let mut route =
        ServiceRoute::new("web", Protocol::Tcp, None).with_backend(Backend::new("t1", plain, true));
    route.idle_timeout = Some(Duration::from_millis(400));
    let proxy = Proxy::start(route).await;
    let s = TcpStream::connect(proxy.addr).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    for msg in ["hello", "a second line"] {
        w.write_all(format!("{msg}\n").as_bytes()).await.unwrap();
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("echo within 5 s")
            .unwrap();
        assert_eq!(line.as_deref(), Some(msg));
    }
    // Quiet from now on: the LB closes the connection (EOF), well before 10 s.
    let end = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("closed when idle");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");

    let proxied = echo_backend(true).await;
    let mut route = ServiceRoute::new("web", Protocol::Tcp, None)
        .with_backend(Backend::new("t1", proxied, true));
    route.proxy_protocol = true;
    let proxy = Proxy::start(route).await;
    let s = TcpStream::connect(proxy.addr).await.unwrap();
    let me = s.local_addr().unwrap();
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    assert_eq!(
        lines.next_line().await.unwrap(),
        Some(format!("client={me}"))
    );
    w.write_all(b"ping\n").await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ping"));
}

#[tokio::test]
async fn a_slow_backend_gets_504_and_a_post_is_not_retried() {
    let hits = Arc::new(AtomicUsize::new(0));
    let a = backend(1, false, hits.clone()).await;
    let b = backend(1, false, hits.clone()).await;
    let mut route = route_to(&[(a, 1), (b, 1)]);
    route.request_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(route).await;
    for method in ["GET", "POST"] {
        let before = hits.load(Ordering::SeqCst);
        let out = raw(
            proxy.addr,
            &format!("{method} /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 504"), "{method}: {out}");
        assert_eq!(
            hits.load(Ordering::SeqCst) - before,
            1,
            "{method} sent to one backend only"
        );
    }
    assert_eq!(proxy.stats.service("web").responses("5xx"), 2);
    // A fast request on the same service is unaffected.
    let out = raw(
        proxy.addr,
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test]
async fn an_idle_keep_alive_client_is_closed() {
    let backend = backend(1, false, Arc::default()).await;
    let mut route = route_to(&[(backend, 1)]);
    route.idle_timeout = Some(Duration::from_millis(300));
    let proxy = Proxy::start(route).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive after the answer, then closed once idle (EOF), well before 10 s.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle connection still open after 10 s");
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    let hits = Arc::new(AtomicUsize::new(0));
    let backend = backend(1, false, hits.clone()).await;
    let proxy = Proxy::start(route_to(&[(backend, 1)])).await;
    let out = raw(
        proxy.addr,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert!(out.to_ascii_lowercase().contains("allow: "), "{out}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "CONNECT reached a backend");
}

#[tokio::test]
async fn sticky_canary_keeps_a_key_on_one_revision_and_shares_follow_the_weights() {
    let v1 = backend(1, false, Arc::default()).await;
    let v2 = backend(2, false, Arc::default()).await;
    let mut route = route_to(&[(v1, 1), (v2, 2)])
        .with_revision(2)
        .with_split(Weights::new([(1, 80), (2, 20)]).unwrap());
    route.sticky = Some(Sticky::parse("header:X-Canary-Key").unwrap());
    let proxy = Proxy::start(route).await;
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    let (r, mut w) = conn.split();
    let mut r = BufReader::new(r);
    let mut get = async |key: Option<&str>| -> u64 {
        let key = key
            .map(|k| format!("X-Canary-Key: {k}\r\n"))
            .unwrap_or_default();
        w.write_all(format!("GET / HTTP/1.1\r\nHost: t\r\n{key}\r\n").as_bytes())
            .await
            .unwrap();
        let mut len = 0;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await.unwrap();
        let body = String::from_utf8(body).unwrap();
        body.lines()
            .next()
            .unwrap()
            .strip_prefix("rev=")
            .unwrap()
            .parse()
            .unwrap()
    };
    // One key: one revision, every time.
    for key in ["alice", "bob", "carol"] {
        let first = get(Some(key)).await;
        for _ in 0..10 {
            assert_eq!(get(Some(key)).await, first, "key {key} moved");
        }
    }
    // Many keys: the canary's share follows its 20% weight.
    let mut canary = 0;
    for i in 0..2_000 {
        if get(Some(&format!("user-{i}"))).await == 2 {
            canary += 1;
        }
    }
    assert!(
        (340..=460).contains(&canary),
        "canary got {canary} of 2000 keys"
    );
    // Without the key: the exact split, 20 of 100.
    let mut canary = 0;
    for _ in 0..100 {
        if get(None).await == 2 {
            canary += 1;
        }
    }
    assert_eq!(canary, 20);
}
