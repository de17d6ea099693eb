//! Helpers shared by the LB's tests against a real etcd: etcd values, a running LB, and a
//! keep-alive HTTP client.
#![allow(dead_code)] // each test file uses its own subset

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::Client;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rctl_api::codec::encode;
use rctl_api::{keys, pb};
use rctl_tests::etcd::free_port;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub async fn connect(url: &str) -> Client {
    for _ in 0..100 {
        if let Ok(mut c) = Client::connect([url], None).await {
            if c.get("probe", None).await.is_ok() {
                return c;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd at {url} did not come up");
}

pub fn loopback() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// `services/{name}` at `revision`, HTTP on `listen`, with an optional split.
pub fn service(name: &str, listen: SocketAddr, revision: u64, split: &[(u64, u32)]) -> Vec<u8> {
    let traffic = (!split.is_empty()).then(|| pb::TrafficSplit {
        weights: split
            .iter()
            .map(|(revision, weight)| pb::RevisionWeight {
                revision: *revision,
                weight: *weight,
            })
            .collect(),
    });
    encode(&pb::Service {
        spec: Some(pb::ServiceSpec {
            name: name.into(),
            port: Some(pb::PortSpec {
                container: 8080,
                protocol: "http".into(),
                listen: listen.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        revision,
        traffic,
        ..Default::default()
    })
}

pub fn endpoint(svc: &str, task: &str, address: SocketAddr, revision: u64) -> Vec<u8> {
    encode(&pb::Endpoint {
        service: svc.into(),
        task_id: task.into(),
        node: "h1".into(),
        address: address.to_string(),
        revision,
        healthy: true,
    })
}

pub async fn put(kv: &mut Client, key: String, value: Vec<u8>) {
    kv.put(key, value, None).await.unwrap();
}

pub async fn put_endpoint(kv: &mut Client, svc: &str, task: &str, addr: SocketAddr, rev: u64) {
    put(
        kv,
        keys::endpoint(svc, task),
        endpoint(svc, task, addr, rev),
    )
    .await;
}

/// The LB library running in-process against `etcd`, stopped on drop.
pub struct Lb {
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), rctl_lb::LbError>>>,
}

impl Lb {
    pub fn start(etcd: &str, metrics: Option<SocketAddr>) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(rctl_lb::run(
            rctl_lb::Config {
                metrics_addr: metrics,
                ..rctl_lb::Config::new(etcd, "lb1")
            },
            shutdown.clone(),
        ));
        Self {
            shutdown,
            task: Some(task),
        }
    }

    /// Tells the LB to stop (it drains), without waiting for it.
    pub fn begin_stop(&self) {
        self.shutdown.cancel();
    }

    /// Stops the LB and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("lb stopped")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One keep-alive client connection.
pub struct Conn {
    sender: SendRequest<Empty<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Self { sender })
    }

    /// GETs `path`; an error means the connection failed (open a new one).
    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, String), hyper::Error> {
        self.sender.ready().await?;
        let req = Request::get(path)
            .header("host", "web.test")
            .body(Empty::new())
            .unwrap();
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Polls until `check` holds, for at most 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// What a constant load saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Successful GETs: when (since the load started) and the first word of the body.
    pub ok: Vec<(Duration, String)>,
    /// Failed GETs: when and why.
    pub failed: Vec<(Duration, String)>,
}

impl LoadReport {
    /// When the first response whose body starts with `word` came.
    pub fn first(&self, word: &str) -> Option<Duration> {
        self.ok
            .iter()
            .filter(|(_, w)| w == word)
            .map(|(t, _)| *t)
            .min()
    }

    /// When the last response whose body starts with `word` came.
    pub fn last(&self, word: &str) -> Option<Duration> {
        self.ok
            .iter()
            .filter(|(_, w)| w == word)
            .map(|(t, _)| *t)
            .max()
    }
}

/// GETs `/` from `addr` at `rps` requests per second for `duration` over 8 keep-alive
/// connections (bounded: at most rps × duration requests), reopening a connection that
/// fails.
pub async fn load(addr: SocketAddr, rps: u32, duration: Duration) -> LoadReport {
    load_with(addr, rps, duration, false).await
}

/// Like [`load`]; with `fresh`, every GET opens its own connection.
pub async fn load_with(addr: SocketAddr, rps: u32, duration: Duration, fresh: bool) -> LoadReport {
    const WORKERS: u32 = 8;
    let start = tokio::time::Instant::now();
    let period = Duration::from_secs(1) * WORKERS / rps;
    let per_worker = (rps as u64 * duration.as_secs()) / WORKERS as u64;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        tasks.push(tokio::spawn(async move {
            // Spread the workers over one period so the load is even.
            tokio::time::sleep(period * w / WORKERS).await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut report = LoadReport::default();
            let mut conn: Option<Conn> = None;
            for _ in 0..per_worker {
                tick.tick().await;
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match Conn::open(addr).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            report
                                .failed
                                .push((start.elapsed(), format!("connect: {e}")));
                            continue;
                        }
                    },
                };
                let got = c.get("/").await;
                if fresh {
                    conn = None;
                }
                match got {
                    Ok((StatusCode::OK, body)) => {
                        let word = body.split_whitespace().next().unwrap_or("").to_string();
                        report.ok.push((start.elapsed(), word));
                    }
                    Ok((status, body)) => report
                        .failed
                        .push((start.elapsed(), format!("{status}: {}", body.trim()))),
                    Err(e) => {
                        report
                            .failed
                            .push((start.elapsed(), format!("request: {e}")));
                        conn = None;
                    }
                }
            }
            report
        }));
    }
    let mut all = LoadReport::default();
    for t in tasks {
        let mut r = t.await.unwrap();
        all.ok.append(&mut r.ok);
        all.failed.append(&mut r.failed);
    }
    all.failed.sort_by_key(|(t, _)| *t);
    all
}

/// Sends `method /` with an empty body on a fresh connection.
pub async fn request(addr: SocketAddr, method: &str) -> Result<(StatusCode, String), String> {
    let mut c = Conn::open(addr).await.map_err(|e| e.to_string())?;
    c.sender.ready().await.map_err(|e| e.to_string())?;
    let req = Request::builder()
        .method(method)
        .uri("/")
        .header("host", "web.test")
        .header("content-length", "0")
        .body(Empty::new())
        .unwrap();
    let resp = c
        .sender
        .send_request(req)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
