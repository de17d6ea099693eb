//! Health checks the agent runs against its containers, and the rule that turns their results
//! into a verdict. The verdict decides whether the container's endpoint is published, which is
//! what makes rctl-lb send it traffic.
//!
//! # Vocabulary
//! - *probe*: one attempt — an HTTP/1.1 `GET` of the spec's `http` path (2xx/3xx passes) or a
//!   TCP connect — against the container's own address and port, bounded by the timeout.
//! - *check*: the probe plus its cadence and thresholds, from the task's [`pb::HealthSpec`];
//!   no spec means a TCP connect every second.
//! - *verdict*: `starting` until the first one, then `healthy` after `healthy_after`
//!   consecutive passes and `unhealthy` after `unhealthy_after` consecutive failures.

use std::net::SocketAddr;
use std::time::Duration;

use rctl_api::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Probe cadence when the spec leaves `interval` unset.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// How long one probe may take when the spec leaves `timeout` unset.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive passes that make a container healthy when the spec leaves it unset.
pub const DEFAULT_HEALTHY_AFTER: u32 = 1;
/// Consecutive failures that make a container unhealthy when the spec leaves it unset.
pub const DEFAULT_UNHEALTHY_AFTER: u32 = 3;
/// The most of an HTTP response a probe reads looking for the status line.
const MAX_STATUS_LINE: usize = 1024;

/// What one probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Tcp,
    /// `GET path`; the path was checked by the scheduler, and is checked again before use.
    Http {
        path: String,
    },
}

/// A task's health check, with the spec's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub thresholds: Thresholds,
    /// The spec asked for a `cmd` check only; those are not implemented, so TCP runs instead.
    pub cmd_unsupported: bool,
}

/// How many consecutive results change a verdict (both at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub healthy_after: u32,
    pub unhealthy_after: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            healthy_after: DEFAULT_HEALTHY_AFTER,
            unhealthy_after: DEFAULT_UNHEALTHY_AFTER,
        }
    }
}

// === impl Check ===

impl Check {
    /// The check for a task's `health` spec; `None` (or `tcp = true`) is a TCP connect check.
    /// An `http` path wins over `tcp` and `cmd`.
    pub fn from_spec(spec: Option<&pb::HealthSpec>) -> Check {
        let or = |ms: u64, d: Duration| {
            if ms == 0 {
                d
            } else {
                Duration::from_millis(ms)
            }
        };
        let at_least_one = |n: u32, d: u32| if n == 0 { d } else { n };
        let Some(h) = spec else {
            return Check {
                probe: Probe::Tcp,
                interval: DEFAULT_INTERVAL,
                timeout: DEFAULT_TIMEOUT,
                thresholds: Thresholds::default(),
                cmd_unsupported: false,
            };
        };
        let probe = if h.http.is_empty() {
            Probe::Tcp
        } else {
            Probe::Http {
                path: h.http.clone(),
            }
        };
        Check {
            cmd_unsupported: probe == Probe::Tcp && !h.tcp && !h.cmd.is_empty(),
            probe,
            interval: or(h.interval_ms, DEFAULT_INTERVAL),
            timeout: or(h.timeout_ms, DEFAULT_TIMEOUT),
            thresholds: Thresholds {
                healthy_after: at_least_one(h.healthy_after, DEFAULT_HEALTHY_AFTER),
                unhealthy_after: at_least_one(h.unhealthy_after, DEFAULT_UNHEALTHY_AFTER),
            },
        }
    }

    /// Runs one probe against `addr`; true if it passed within the timeout.
    pub async fn probe(&self, addr: SocketAddr) -> bool {
        match &self.probe {
            Probe::Tcp => tcp(addr, self.timeout).await,
            Probe::Http { path } => http(addr, path, self.timeout).await,
        }
    }
}

/// Whether `addr` accepts a TCP connection within `timeout`.
pub async fn tcp(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Whether `GET path` on `addr` answers 2xx or 3xx within `timeout`.
pub async fn http(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    if !valid_path(path) {
        return false;
    }
    matches!(
        tokio::time::timeout(timeout, http_status(addr, path)).await,
        Ok(Some(code)) if (200..400).contains(&code)
    )
}

/// An origin-form path that cannot smuggle anything into the request line.
pub fn valid_path(path: &str) -> bool {
    path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic())
}

/// The status code of `GET path`, read from the status line only.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: rctl-agent\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < MAX_STATUS_LINE {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    status_code(&buf)
}

/// The code of an HTTP/1.x status line at the start of `buf` (`HTTP/1.1 200 OK\r\n...`).
pub fn status_code(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.trim_end_matches('\r').splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

// === impl Health ===

/// A container's health verdict.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No verdict yet.
    #[default]
    Starting,
    Healthy,
    Unhealthy,
}

impl Verdict {
    /// As reported in `TaskStatus.health`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Starting => "starting",
            Verdict::Healthy => "healthy",
            Verdict::Unhealthy => "unhealthy",
        }
    }
}

/// Health of one container as seen by consecutive probes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub verdict: Verdict,
    thresholds: Thresholds,
    /// Consecutive passes (reset by a failure).
    passes: u32,
    /// Consecutive failures (reset by a pass).
    fails: u32,
}

/// What a probe result changes.
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    BecameHealthy,
    BecameUnhealthy,
}

impl Health {
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            ..Default::default()
        }
    }

    pub fn healthy(&self) -> bool {
        self.verdict == Verdict::Healthy
    }

    /// Counts one probe result; returns how the verdict changed.
    pub fn observe(&mut self, ok: bool) -> Transition {
        let t = self.thresholds;
        if ok {
            self.fails = 0;
            self.passes = self.passes.saturating_add(1);
            if self.verdict != Verdict::Healthy && self.passes >= t.healthy_after.max(1) {
                self.verdict = Verdict::Healthy;
                return Transition::BecameHealthy;
            }
        } else {
            self.passes = 0;
            self.fails = self.fails.saturating_add(1);
            if self.verdict != Verdict::Unhealthy && self.fails >= t.unhealthy_after.max(1) {
                self.verdict = Verdict::Unhealthy;
                return Transition::BecameUnhealthy;
            }
        }
        Transition::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(h: &mut Health, results: &[bool]) -> Vec<Transition> {
        results.iter().map(|&ok| h.observe(ok)).collect()
    }

    #[test]
    fn defaults_one_pass_makes_healthy_and_three_failures_unhealthy() {
        use Transition::*;
        let mut h = Health::new(Thresholds::default());
        assert_eq!(h.verdict, Verdict::Starting);
        assert_eq!(run(&mut h, &[false, true]), [None, BecameHealthy]);
        assert_eq!(
            run(&mut h, &[false, true, false, false, false]),
            [None, None, None, None, BecameUnhealthy]
        );
        assert!(!h.healthy());
        assert_eq!(run(&mut h, &[false, true]), [None, BecameHealthy]);
    }

    #[test]
    fn starting_ends_in_a_verdict_either_way() {
        let mut h = Health::new(Thresholds::default());
        assert_eq!(
            run(&mut h, &[false, false, false]),
            [
                Transition::None,
                Transition::None,
                Transition::BecameUnhealthy
            ]
        );
        assert_eq!(h.verdict, Verdict::Unhealthy);
        assert_eq!(h.observe(false), Transition::None, "reported once");
    }

    #[test]
    fn thresholds_count_consecutive_results_only() {
        use Transition::*;
        let mut h = Health::new(Thresholds {
            healthy_after: 3,
            unhealthy_after: 2,
        });
        assert_eq!(
            run(&mut h, &[true, true, false, true, true, true]),
            [None, None, None, None, None, BecameHealthy]
        );
        assert_eq!(
            run(&mut h, &[false, true, false, false]),
            [None, None, None, BecameUnhealthy]
        );
        assert_eq!(
            run(&mut h, &[true, true, true, true]),
            [None, None, BecameHealthy, None]
        );
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut h = Health::new(Thresholds {
            healthy_after: 0,
            unhealthy_after: 0,
        });
        assert_eq!(h.observe(true), Transition::BecameHealthy);
        assert_eq!(h.observe(false), Transition::BecameUnhealthy);
    }

    #[test]
    fn spec_defaults_and_probe_choice() {
        let tcp = Check::from_spec(None);
        assert_eq!(tcp.probe, Probe::Tcp);
        assert_eq!(tcp.interval, DEFAULT_INTERVAL);
        assert_eq!(tcp.timeout, DEFAULT_TIMEOUT);
        assert_eq!(tcp.thresholds, Thresholds::default());
        assert!(!tcp.cmd_unsupported);

        let http = Check::from_spec(Some(&pb::HealthSpec {
            http: "/healthz".into(),
            interval_ms: 500,
            timeout_ms: 200,
            healthy_after: 2,
            ..Default::default()
        }));
        assert_eq!(
            http.probe,
            Probe::Http {
                path: "/healthz".into()
            }
        );
        assert_eq!(http.interval, Duration::from_millis(500));
        assert_eq!(http.timeout, Duration::from_millis(200));
        assert_eq!(http.thresholds.healthy_after, 2);
        assert_eq!(http.thresholds.unhealthy_after, DEFAULT_UNHEALTHY_AFTER);

        let explicit_tcp = Check::from_spec(Some(&pb::HealthSpec {
            tcp: true,
            ..Default::default()
        }));
        assert_eq!(explicit_tcp.probe, Probe::Tcp);
        assert!(!explicit_tcp.cmd_unsupported);
    }

    #[test]
    fn a_cmd_only_spec_falls_back_to_tcp_and_says_so() {
        let c = Check::from_spec(Some(&pb::HealthSpec {
            cmd: vec!["true".into()],
            ..Default::default()
        }));
        assert_eq!(c.probe, Probe::Tcp);
        assert!(c.cmd_unsupported);
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\nA: b\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 404 Not Found\r\n"), Some(404));
        assert_eq!(status_code(b"HTTP/1.1 302\r\n"), Some(302));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(status_code(b""), None);
    }

    #[test]
    fn paths_cannot_inject() {
        assert!(valid_path("/healthz?deep=1"));
        assert!(!valid_path("healthz"));
        assert!(!valid_path("/a b"));
        assert!(!valid_path("/a\r\nX: y"));
    }

    /// Serves one canned response per connection on 127.0.0.1.
    async fn server(response: &'static [u8]) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(response).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_probe_passes_on_2xx_and_3xx_only() {
        let t = Duration::from_secs(2);
        let ok = server(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let moved = server(b"HTTP/1.1 301 Moved\r\nLocation: /\r\n\r\n").await;
        let missing = server(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
        let garbage = server(b"hello\n").await;
        assert!(http(ok, "/healthz", t).await);
        assert!(http(moved, "/healthz", t).await);
        assert!(!http(missing, "/healthz", t).await);
        assert!(!http(garbage, "/healthz", t).await);
        assert!(!http(ok, "bad path", t).await);
    }

    #[tokio::test]
    async fn http_probe_times_out_on_a_silent_server() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // Accepts (the kernel does) but never answers.
        assert!(!http(addr, "/", Duration::from_millis(100)).await);
        drop(l);
    }
}
