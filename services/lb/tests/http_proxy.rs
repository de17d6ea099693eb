//! Component test of the HTTP proxy: the real proxy in-process on 127.0.0.1:0 in front of
//! two tiny hyper backends, with routing tables built by hand instead of from etcd.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rctl_lb::proxy::http::{serve, Forwarder};
use rctl_lb::routes::{self, RoutesTx};
use rctl_lb::{Backend, Protocol, Routes, ServiceRoute, Stats};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A backend that answers its name, echoes request bodies, and counts what it saw.
struct TestBackend {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

async fn backend(name: &'static str) -> TestBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (reqs, conns) = (requests.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            conns.fetch_add(1, Ordering::SeqCst);
            let reqs = reqs.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    reqs.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let xff = req
                            .headers()
                            .get("x-forwarded-for")
                            .cloned()
                            .unwrap_or_else(|| http::HeaderValue::from_static("none"));
                        let body = if req.method() == http::Method::POST {
                            req.into_body().collect().await.unwrap().to_bytes()
                        } else {
                            Bytes::from(name)
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("x-served-by", name)
                                .header("x-saw-xff", xff)
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    TestBackend {
        addr,
        requests,
        connections,
    }
}

fn table(backends: &[(&str, SocketAddr, bool)]) -> Routes {
    let mut route = ServiceRoute::new("web", Protocol::Http, None);
    for (task, addr, healthy) in backends {
        route = route.with_backend(Backend::new(*task, *addr, *healthy));
    }
    Routes::from_services([route])
}

/// One client connection to the proxy, kept alive across requests.
async fn client(proxy: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get(sender: &mut SendRequest<Full<Bytes>>) -> (StatusCode, String, String) {
    sender
        .ready()
        .await
        .expect("proxy kept the connection open");
    let req = Request::get("/hello?x=1")
        .header("host", "web.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let served_by = resp
        .headers()
        .get("x-served-by")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, served_by, String::from_utf8(body.to_vec()).unwrap())
}

struct Proxy {
    addr: SocketAddr,
    tx: RoutesTx,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn proxy(initial: Routes) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = routes::channel(initial);
    let stats = Arc::new(Stats::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        "web".into(),
        rx,
        Forwarder::new(stats.clone()),
        shutdown.clone(),
    ));
    Proxy {
        addr,
        tx,
        stats,
        shutdown,
        task,
    }
}

#[tokio::test]
async fn balances_keeps_alive_follows_routes_and_fails_cleanly() {
    let a = backend("a").await;
    let b = backend("b").await;
    let lb = proxy(table(&[("t1", a.addr, true), ("t2", b.addr, true)])).await;
    let mut c = client(lb.addr).await;

    // 100 requests over one client connection: both backends get traffic.
    for _ in 0..100 {
        let (status, served_by, body) = get(&mut c).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(served_by, body);
    }
    let (ra, rb) = (
        a.requests.load(Ordering::SeqCst),
        b.requests.load(Ordering::SeqCst),
    );
    assert_eq!(ra + rb, 100);
    assert!(ra > 10 && rb > 10, "traffic split a={ra} b={rb}");
    // Backend connections are pooled: sequential requests reuse one per backend.
    let conns = a.connections.load(Ordering::SeqCst) + b.connections.load(Ordering::SeqCst);
    assert!(conns <= 4, "backend connections: {conns}");
    assert_eq!(lb.stats.service("web").responses("2xx"), 100);

    // Backend "a" leaves the table: it gets nothing more, from the very next request.
    lb.tx.send_replace(Arc::new(table(&[("t2", b.addr, true)])));
    for _ in 0..30 {
        let (status, served_by, _) = get(&mut c).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(served_by, "b");
    }
    assert_eq!(a.requests.load(Ordering::SeqCst), ra);

    // Only an unhealthy endpoint, then none at all: 503 with a short reason.
    for routes in [table(&[("t2", b.addr, false)]), table(&[])] {
        lb.tx.send_replace(Arc::new(routes));
        let (status, _, body) = get(&mut c).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "no healthy endpoint for service \"web\"\n");
    }
    lb.tx.send_replace(Arc::new(Routes::default()));
    assert_eq!(get(&mut c).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(lb.stats.service("web").responses("5xx"), 3);

    // Shutdown closes the idle keep-alive connection and returns.
    lb.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), lb.task)
        .await
        .expect("proxy drained")
        .unwrap();
}

#[tokio::test]
async fn retries_refused_connections_on_another_endpoint() {
    let b = backend("b").await;
    // A port nobody listens on: bind, note the address, close.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let lb = proxy(table(&[("t1", dead, true), ("t2", b.addr, true)])).await;
    let mut c = client(lb.addr).await;
    for _ in 0..20 {
        let (status, served_by, _) = get(&mut c).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(served_by, "b");
    }

    // With only the dead endpoint left, the client gets a 502, not a hang.
    lb.tx.send_replace(Arc::new(table(&[("t1", dead, true)])));
    assert_eq!(get(&mut c).await.0, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn streams_bodies_and_sets_forwarded_headers() {
    let b = backend("b").await;
    let lb = proxy(table(&[("t2", b.addr, true)])).await;
    let mut c = client(lb.addr).await;

    let payload: Bytes = (0..2_000_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    c.ready().await.unwrap();
    let resp = c
        .send_request(
            Request::post("/upload")
                .header("host", "web.test")
                .header("connection", "keep-alive, x-private")
                .header("x-private", "secret")
                .body(Full::new(payload.clone()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-saw-xff"], "127.0.0.1");
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_leave_no_request_counted_in_flight() {
    let a = backend("a").await;
    let b = backend("b").await;
    let lb = proxy(table(&[("t1", a.addr, true), ("t2", b.addr, true)])).await;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let addr = lb.addr;
            tokio::spawn(async move {
                let mut c = client(addr).await;
                for _ in 0..50 {
                    assert_eq!(get(&mut c).await.0, StatusCode::OK);
                }
            })
        })
        .collect();
    for c in clients {
        tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("bounded run")
            .unwrap();
    }
    assert_eq!(
        a.requests.load(Ordering::SeqCst) + b.requests.load(Ordering::SeqCst),
        400
    );
    // The proxy releases a request's count when it drops the response body, which may be a
    // moment after the client has read the last byte.
    let current = lb.tx.borrow().clone();
    let route = current.service("web").unwrap();
    for _ in 0..100 {
        if route.backends.iter().all(|b| b.load() == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("requests still counted in flight: {:?}", route.backends);
}
