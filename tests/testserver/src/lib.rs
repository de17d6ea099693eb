//! The fixture test server: a tiny HTTP/1.1 server baked into rctl's test images.
//!
//! It exists so end-to-end tests, the demo and the benchmarks have a workload whose behaviour
//! they control entirely (version, failure share, latency, health) without the internet. It
//! uses std and libc only, so it builds as a static binary in seconds.
//!
//! # Layout
//! * [`Config`]: what the server does, from env and argv (`VERSION`, `FAIL_RATE`, …).
//! * [`parse_head`] / [`Request`]: the request line and the few headers we care about.
//! * [`FailGate`]: which requests to `/` answer 500 — a counter, not a RNG, so tests can
//!   predict exactly which requests fail.
//! * [`respond`] / [`Response`]: the answer to one request, serialised with `Content-Length`
//!   so connections can be kept alive.
//! * [`server`]: the accept loop, the per-connection threads and graceful SIGTERM handling.

#![deny(unsafe_code)]

pub mod server;
#[allow(unsafe_code)]
mod sys;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Largest request head we accept; a test client never sends more, and a bound keeps a
/// misbehaving client from growing our buffer forever.
pub const MAX_HEAD: usize = 16 * 1024;

/// What the server does. Built from the environment, then argv flags (an explicit command
/// in a service file beats the image's baked env).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// TCP port on 0.0.0.0 (`PORT`, `--port`).
    pub port: u16,
    /// Reported in every `/` body as `version=V` (`VERSION`, `--version`).
    pub version: String,
    /// Share of `/` requests that answer 500, 0..=1 (`FAIL_RATE`, `--fail-rate`).
    pub fail_rate: f64,
    /// Added before every response (`LATENCY_MS`, `--latency-ms`).
    pub latency: Duration,
    /// Whether `/healthz` answers 200 (`HEALTHZ=off` makes it 404).
    pub healthz: bool,
    /// Exit at start with this status instead of serving (`EXIT_AT_START`, `--exit-code`):
    /// the `broken` image.
    pub exit_at_start: Option<i32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 8080,
            version: "dev".to_string(),
            fail_rate: 0.0,
            latency: Duration::ZERO,
            healthz: true,
            exit_at_start: None,
        }
    }
}

/// A configuration value that could not be understood.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

pub const USAGE: &str = "usage: testserver [--port N] [--version V] [--fail-rate F] \
[--latency-ms MS] [--healthz on|off] [--exit-code N]\n\
env: PORT VERSION FAIL_RATE LATENCY_MS HEALTHZ=off EXIT_AT_START";

impl Config {
    /// Builds the configuration from `env` (name → value lookup) and then `args` (without
    /// argv[0]). Taking both as inputs keeps this testable without touching the process.
    pub fn from_sources(
        env: impl Fn(&str) -> Option<String>,
        args: &[String],
    ) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        if let Some(v) = env("PORT") {
            c.port = parse_port(&v)?;
        }
        if let Some(v) = env("VERSION") {
            c.version = v;
        }
        if let Some(v) = env("FAIL_RATE") {
            c.fail_rate = parse_rate(&v)?;
        }
        if let Some(v) = env("LATENCY_MS") {
            c.latency = parse_ms(&v)?;
        }
        if let Some(v) = env("HEALTHZ") {
            c.healthz = parse_switch(&v)?;
        }
        if let Some(v) = env("EXIT_AT_START") {
            c.exit_at_start = Some(parse_code(&v)?);
        }
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            // Accept both `--flag value` and `--flag=value`, as most CLIs do.
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
                _ => (flag.as_str(), None),
            };
            if name == "-h" || name == "--help" {
                return Err(ConfigError(USAGE.to_string()));
            }
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .ok_or_else(|| ConfigError(format!("{name} needs a value\n{USAGE}")))
            };
            match name {
                "--port" => c.port = parse_port(&value()?)?,
                "--version" => c.version = value()?,
                "--fail-rate" => c.fail_rate = parse_rate(&value()?)?,
                "--latency-ms" => c.latency = parse_ms(&value()?)?,
                "--healthz" => c.healthz = parse_switch(&value()?)?,
                "--exit-code" => c.exit_at_start = Some(parse_code(&value()?)?),
                other => return Err(ConfigError(format!("unknown argument {other:?}\n{USAGE}"))),
            }
        }
        Ok(c)
    }
}

fn parse_port(v: &str) -> Result<u16, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| ConfigError(format!("bad port {v:?}: want 0..65535")))
}

fn parse_rate(v: &str) -> Result<f64, ConfigError> {
    match v.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(ConfigError(format!("bad fail rate {v:?}: want 0..1"))),
    }
}

fn parse_ms(v: &str) -> Result<Duration, ConfigError> {
    v.trim()
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| ConfigError(format!("bad latency {v:?}: want milliseconds")))
}

fn parse_switch(v: &str) -> Result<bool, ConfigError> {
    match v.trim() {
        "off" | "0" | "false" | "no" => Ok(false),
        "on" | "1" | "true" | "yes" | "" => Ok(true),
        _ => Err(ConfigError(format!("bad switch {v:?}: want on or off"))),
    }
}

fn parse_code(v: &str) -> Result<i32, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| ConfigError(format!("bad exit code {v:?}")))
}

/// Decides which requests to `/` fail. Request n (from 0) fails when
/// `floor((n+1)·rate) > floor(n·rate)`: exactly `rate` of every window, spread evenly
/// (0.5 fails every second request), and the same sequence on every run.
#[derive(Debug)]
pub struct FailGate {
    rate: f64,
    count: AtomicU64,
}

impl FailGate {
    pub fn new(rate: f64) -> Self {
        FailGate {
            rate,
            count: AtomicU64::new(0),
        }
    }

    /// Counts one request and says whether it must fail.
    pub fn next_fails(&self) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        let n = self.count.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.rate).floor() > (n * self.rate).floor()
    }
}

/// The parts of a request the server looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// Whether the client wants the connection kept after this response.
    pub keep_alive: bool,
    /// Bytes of body that follow the head (we read and discard them).
    pub content_length: usize,
}

/// Why a request head was rejected; each answers 400 (or 431) and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The head grew past [`MAX_HEAD`] without ending.
    TooLarge,
    /// The request line or a header is not HTTP/1.x.
    Malformed(&'static str),
    /// `Transfer-Encoding: chunked` request bodies: no test sends one, so we refuse it
    /// rather than mis-frame the next request.
    Unsupported(&'static str),
}

/// Parses a request head from the start of `buf`. Returns `Ok(None)` until the blank line
/// that ends the head has arrived, else the request and the number of head bytes consumed.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
    let end = match find(buf, b"\r\n\r\n") {
        Some(i) => i + 4,
        None if buf.len() > MAX_HEAD => return Err(ParseError::TooLarge),
        None => return Ok(None),
    };
    let head = std::str::from_utf8(&buf[..end - 4])
        .map_err(|_| ParseError::Malformed("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && t.starts_with('/') => (m, t, v),
        _ => return Err(ParseError::Malformed("bad request line")),
    };
    // HTTP/1.1 keeps connections by default, HTTP/1.0 closes them (RFC 9112 §9.3).
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(ParseError::Malformed("unsupported HTTP version")),
    };
    let mut content_length = 0;
    for h in lines {
        let (name, value) = h
            .split_once(':')
            .ok_or(ParseError::Malformed("header without colon"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| ParseError::Malformed("bad Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ParseError::Unsupported("chunked request bodies"));
        }
    }
    let path = target.split('?').next().unwrap_or(target).to_string();
    Ok(Some((
        Request {
            method: method.to_string(),
            path,
            keep_alive,
            content_length,
        },
        end,
    )))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One response, ready to serialise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// Extra headers besides Content-Type, Content-Length and Connection.
    pub headers: Vec<(&'static str, String)>,
    /// Omit the body bytes (HEAD) while keeping its Content-Length.
    pub head_only: bool,
}

impl Response {
    /// Serialises the response; `keep_alive` decides the `Connection` header.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.body.len()
        );
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(if keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        if !self.head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

/// The answer to `req`. `gate` is consulted only for `/`, so health checks never count
/// toward (or suffer from) the failure share.
pub fn respond(req: &Request, cfg: &Config, hostname: &str, gate: &FailGate) -> Response {
    let served_by = vec![
        ("X-Served-By", hostname.to_string()),
        ("X-Version", cfg.version.clone()),
    ];
    let head_only = req.method == "HEAD";
    let (status, body) = match req.path.as_str() {
        "/" if gate.next_fails() => (
            500,
            format!("version={} host={hostname} error=injected\n", cfg.version),
        ),
        "/" => (200, format!("version={} host={hostname}\n", cfg.version)),
        "/healthz" if cfg.healthz => (200, "ok\n".to_string()),
        _ => (404, "not found\n".to_string()),
    };
    Response {
        status,
        body,
        headers: served_by,
        head_only,
    }
}

/// The answer to a head we could not parse.
pub fn error_response(err: &ParseError) -> Response {
    let (status, body) = match err {
        ParseError::TooLarge => (431, "request head too large\n".to_string()),
        ParseError::Malformed(why) => (400, format!("{why}\n")),
        ParseError::Unsupported(what) => (501, format!("{what} not supported\n")),
    };
    Response {
        status,
        body,
        headers: Vec::new(),
        head_only: false,
    }
}

/// The kernel's hostname (the container's, inside a UTS namespace).
pub fn hostname() -> String {
    sys::hostname().unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(env: &[(&str, &str)], args: &[&str]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Config::from_sources(|k| env.get(k).cloned(), &args)
    }

    #[test]
    fn config_defaults_env_and_args() {
        assert_eq!(cfg(&[], &[]).unwrap(), Config::default());
        let c = cfg(
            &[
                ("PORT", "9000"),
                ("VERSION", "v1"),
                ("FAIL_RATE", "0.5"),
                ("LATENCY_MS", "200"),
                ("HEALTHZ", "off"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.port, 9000);
        assert_eq!(c.version, "v1");
        assert_eq!(c.fail_rate, 0.5);
        assert_eq!(c.latency, Duration::from_millis(200));
        assert!(!c.healthz);
        // argv beats env: an explicit command overrides the image's baked env.
        let c = cfg(
            &[("VERSION", "v1")],
            &["--version", "v2", "--port=81", "--exit-code", "1"],
        )
        .unwrap();
        assert_eq!((c.version.as_str(), c.port), ("v2", 81));
        assert_eq!(c.exit_at_start, Some(1));
        assert_eq!(
            cfg(&[("EXIT_AT_START", "3")], &[]).unwrap().exit_at_start,
            Some(3)
        );
    }

    #[test]
    fn config_rejects_bad_values() {
        assert!(cfg(&[("FAIL_RATE", "1.5")], &[]).is_err());
        assert!(cfg(&[("PORT", "http")], &[]).is_err());
        assert!(cfg(&[], &["--port"]).is_err());
        assert!(cfg(&[], &["--bogus"]).is_err());
    }

    #[test]
    fn parse_waits_for_the_whole_head() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        let (req, used) = parse_head(b"GET /?a=1 HTTP/1.1\r\nHost: x\r\n\r\nNEXT")
            .unwrap()
            .unwrap();
        assert_eq!(used, 31);
        assert_eq!(req.path, "/");
        assert_eq!(req.method, "GET");
        assert!(req.keep_alive);
        assert_eq!(req.content_length, 0);
    }

    #[test]
    fn parse_connection_semantics() {
        let ka = |raw: &[u8]| parse_head(raw).unwrap().unwrap().0.keep_alive;
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n"));
        let (req, _) = parse_head(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(req.content_length, 5);
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(matches!(
            parse_head(b"hello\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            parse_head(b"GET / SPDY/3\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(ParseError::Unsupported(_))
        ));
        assert_eq!(
            parse_head(&vec![b'a'; MAX_HEAD + 1]),
            Err(ParseError::TooLarge)
        );
    }

    #[test]
    fn fail_gate_is_exact_and_deterministic() {
        let g = FailGate::new(0.5);
        let seq: Vec<bool> = (0..6).map(|_| g.next_fails()).collect();
        assert_eq!(seq, [false, true, false, true, false, true]);
        let g = FailGate::new(0.01);
        assert_eq!((0..1000).filter(|_| g.next_fails()).count(), 10);
        let g = FailGate::new(0.0);
        assert!((0..100).all(|_| !g.next_fails()));
        let g = FailGate::new(1.0);
        assert!((0..100).all(|_| g.next_fails()));
    }

    #[test]
    fn responses() {
        let c = Config {
            version: "v1".into(),
            fail_rate: 0.5,
            ..Config::default()
        };
        let gate = FailGate::new(c.fail_rate);
        let get = |path: &str| Request {
            method: "GET".into(),
            path: path.into(),
            keep_alive: true,
            content_length: 0,
        };
        let ok = respond(&get("/"), &c, "abc123", &gate);
        assert_eq!(ok.status, 200);
        assert_eq!(ok.body, "version=v1 host=abc123\n");
        let bytes = String::from_utf8(ok.to_bytes(true)).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 200 OK\r\n"), "{bytes}");
        assert!(bytes.contains("\r\nX-Served-By: abc123\r\n"));
        assert!(bytes.contains("\r\nContent-Length: 23\r\n"));
        assert!(bytes.contains("\r\nConnection: keep-alive\r\n\r\nversion=v1"));
        assert_eq!(respond(&get("/"), &c, "abc123", &gate).status, 500);
        // Health checks do not consume the failure counter.
        assert_eq!(respond(&get("/healthz"), &c, "h", &gate).status, 200);
        assert_eq!(respond(&get("/"), &c, "h", &gate).status, 200);
        assert_eq!(respond(&get("/nope"), &c, "h", &gate).status, 404);
        let off = Config {
            healthz: false,
            ..c.clone()
        };
        assert_eq!(respond(&get("/healthz"), &off, "h", &gate).status, 404);
        let head = Request {
            method: "HEAD".into(),
            ..get("/healthz")
        };
        let bytes = String::from_utf8(respond(&head, &c, "h", &gate).to_bytes(false)).unwrap();
        assert!(bytes.ends_with("Connection: close\r\n\r\n"), "{bytes}");
        assert!(bytes.contains("Content-Length: 3\r\n"));
    }
}
