//! The service file (TOML, PRODUCT.md "Service file"): parsed strictly, so unknown keys,
//! wrong types and impossible values are rejected with the file, line and key.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rctl_api::pb;
use rctl_api::placement::{validate_spread, validate_strategy, Constraint};
use rctl_api::routing::{Protocol, ProxyProtocol, Sticky};
use serde::Deserialize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}:{line}: {message}")]
    Parse {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub name: String,
    pub image: String,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub port: Option<Port>,
    pub health: Option<Health>,
    pub resources: Option<Resources>,
    pub placement: Option<Placement>,
    pub update: Option<Update>,
    pub canary: Option<Canary>,
    /// More certificates for `[port]`'s TLS, chosen by SNI (`[[tls]]` tables).
    #[serde(default)]
    pub tls: Vec<Tls>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub container: u16,
    #[serde(default = "http")]
    pub protocol: String,
    #[serde(default)]
    pub listen: String,
    /// PEM certificate chain: rctl-lb terminates TLS (HTTP/1.1 and HTTP/2 by ALPN).
    pub tls_cert: Option<String>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<String>,
    /// "v2": send a PROXY protocol v2 header to the backend on each connection.
    pub proxy_protocol: Option<String>,
    /// How long the backend has to answer with headers before the client gets 504.
    pub request_timeout: Option<String>,
    /// How long an idle client connection is kept open.
    pub idle_timeout: Option<String>,
}

/// One more certificate for the service's TLS port, served to clients asking for one of
/// `server_names` by SNI.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub server_names: Vec<String>,
}

fn http() -> String {
    "http".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub http: Option<String>,
    #[serde(default)]
    pub tcp: bool,
    #[serde(default)]
    pub cmd: Vec<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_after: Option<u32>,
    pub unhealthy_after: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpus: Option<f64>,
    pub memory: Option<String>,
    pub pids: Option<u64>,
}

/// Where tasks may go (`KEY == VALUE` / `KEY != VALUE` constraints) and how they spread.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub spread: Option<String>,
    /// "spread" (default) or "binpack".
    pub strategy: Option<String>,
    #[serde(default)]
    pub constraints: Vec<String>,
}

/// Parsed and checked now; acted upon by rolling updates (issue 8).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    pub max_surge: Option<u32>,
    pub max_unavailable: Option<u32>,
    pub drain: Option<String>,
}

/// Parsed and checked now; acted upon by canary rollouts (issue 8).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    pub replicas: Option<u32>,
    pub steps: Option<Vec<u32>>,
    pub step_duration: Option<String>,
    pub min_requests: Option<u64>,
    pub max_error_rate: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    /// "header:NAME" or "cookie:NAME": requests with that key stick to one revision.
    pub sticky: Option<String>,
}

/// Reads and converts the file at `path` into the API's spec.
pub fn load(path: &Path) -> Result<pb::ServiceSpec, FileError> {
    let file = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| FileError::Read {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    parse(&file, &src)
}

pub fn parse(file: &str, src: &str) -> Result<pb::ServiceSpec, FileError> {
    let parsed: ServiceFile = toml::from_str(src).map_err(|e| parse_error(file, src, &e))?;
    to_spec(parsed).map_err(|message| {
        // A check names its key as "key `a.b`: ..."; point at the line that sets it.
        let line = message
            .strip_prefix("key `")
            .and_then(|m| m.split_once('`'))
            .and_then(|(key, _)| line_of(src, key));
        match line {
            Some(line) => FileError::Parse {
                file: file.to_string(),
                line,
                message,
            },
            None => FileError::Invalid {
                file: file.to_string(),
                message,
            },
        }
    })
}

/// The 1-based line that sets the dotted `key` (the inverse of [`key_at`]); else the line
/// of the nearest key or `[table]` above it (`env.A` set in an inline `env = { .. }`, or
/// `health` for its whole table).
fn line_of(src: &str, key: &str) -> Option<usize> {
    let mut key = key;
    loop {
        let set = (1..=src.lines().count()).find(|&line| key_at(src, line).as_deref() == Some(key));
        let header = || {
            src.lines()
                .position(|l| l.trim() == format!("[{key}]") || l.trim() == format!("[[{key}]]"))
                .map(|i| i + 1)
        };
        if let Some(line) = set.or_else(header) {
            return Some(line);
        }
        // `tls[1]` is the second `[[tls]]` table.
        if let Some((table, i)) = key.strip_suffix(']').and_then(|k| k.split_once('[')) {
            let i: usize = i.parse().ok()?;
            let header = format!("[[{table}]]");
            return src
                .lines()
                .enumerate()
                .filter(|(_, l)| l.trim() == header)
                .nth(i)
                .map(|(n, _)| n + 1);
        }
        key = &key[..key.rfind(['.', '['])?];
    }
}

fn parse_error(file: &str, src: &str, e: &toml::de::Error) -> FileError {
    let message = crate::values::human_types(e.message().trim());
    // A missing key has no line of its own; its span is the whole table.
    let Some(span) = e.span().filter(|_| !message.starts_with("missing field")) else {
        return FileError::Invalid {
            file: file.to_string(),
            message,
        };
    };
    let start = span.start.min(src.len());
    let line = src[..start].matches('\n').count() + 1;
    let message = match key_at(src, line) {
        Some(key) if !message.contains(&format!("`{}`", leaf(&key))) => {
            format!("key `{key}`: {message}")
        }
        _ => message,
    };
    FileError::Parse {
        file: file.to_string(),
        line,
        message,
    }
}

fn leaf(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

/// The dotted key defined on `line` (1-based), prefixed by its `[table]`, if any.
fn key_at(src: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    for (i, l) in src.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') && !t.starts_with("[[") {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
        if i + 1 == line {
            let (k, _) = t.split_once('=')?;
            let k = k.trim().trim_matches('"');
            return Some(if table.is_empty() {
                k.to_string()
            } else {
                format!("{table}.{k}")
            });
        }
    }
    None
}

fn to_spec(f: ServiceFile) -> Result<pb::ServiceSpec, String> {
    if f.image.trim().is_empty() {
        return Err("key `image`: must not be empty".into());
    }
    let port = match f.port {
        Some(p) => {
            if p.container == 0 {
                return Err("key `port.container`: must be between 1 and 65535".into());
            }
            // Empty means HTTP in a spec, but a file that writes the key names one.
            if p.protocol.is_empty() || Protocol::parse(&p.protocol).is_none() {
                return Err(format!(
                    "key `port.protocol`: must be {}, got {:?}",
                    Protocol::ONE_OF,
                    p.protocol
                ));
            }
            let mut tls = Vec::new();
            match (p.tls_cert, p.tls_key) {
                (Some(cert), Some(key)) => tls.push(pb::TlsCertificate {
                    cert,
                    key,
                    server_names: Vec::new(),
                }),
                (None, None) => {}
                (Some(_), None) => {
                    return Err("key `port.tls_key`: needed with `port.tls_cert`".into())
                }
                (None, Some(_)) => {
                    return Err("key `port.tls_cert`: needed with `port.tls_key`".into())
                }
            }
            for (i, t) in f.tls.into_iter().enumerate() {
                if t.cert.trim().is_empty() || t.key.trim().is_empty() {
                    return Err(format!(
                        "key `tls[{i}]`: `cert` and `key` must not be empty"
                    ));
                }
                if t.server_names.is_empty() {
                    return Err(format!(
                        "key `tls[{i}].server_names`: must name at least one host (the default certificate is `port.tls_cert`)"
                    ));
                }
                if let Some(bad) = t.server_names.iter().find(|n| !valid_server_name(n)) {
                    return Err(format!(
                        "key `tls[{i}].server_names`: {bad:?} is not a host name (e.g. \"www.example.com\" or \"*.example.com\")"
                    ));
                }
                tls.push(pb::TlsCertificate {
                    cert: t.cert,
                    key: t.key,
                    server_names: t.server_names,
                });
            }
            if !tls.is_empty() && p.protocol != "http" {
                return Err("key `port.tls_cert`: TLS termination needs protocol \"http\"".into());
            }
            if !tls.is_empty() && tls.iter().all(|t| !t.server_names.is_empty()) {
                return Err(
                    "key `port.tls_cert`: needed as the default certificate when `[[tls]]` is used"
                        .into(),
                );
            }
            let proxy_protocol = p.proxy_protocol.unwrap_or_default();
            if ProxyProtocol::parse(&proxy_protocol).is_none() {
                return Err(format!(
                    "key `port.proxy_protocol`: must be \"v2\", got {proxy_protocol:?}"
                ));
            }
            Some(pb::PortSpec {
                container: p.container.into(),
                protocol: p.protocol,
                listen: p.listen,
                tls,
                proxy_protocol,
                request_timeout_ms: duration_ms(
                    "port.request_timeout",
                    p.request_timeout.as_deref(),
                )?,
                idle_timeout_ms: duration_ms("port.idle_timeout", p.idle_timeout.as_deref())?,
            })
        }
        None if !f.tls.is_empty() => {
            return Err("key `tls`: needs a `[port]` with `tls_cert`".into())
        }
        None => None,
    };
    let health = match f.health {
        Some(h) => Some(pb::HealthSpec {
            http: h.http.unwrap_or_default(),
            tcp: h.tcp,
            cmd: h.cmd,
            interval_ms: duration_ms("health.interval", h.interval.as_deref())?,
            timeout_ms: duration_ms("health.timeout", h.timeout.as_deref())?,
            healthy_after: h.healthy_after.unwrap_or(0),
            unhealthy_after: h.unhealthy_after.unwrap_or(0),
        }),
        None => None,
    };
    let resources = match f.resources {
        Some(r) => {
            if r.cpus.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
                return Err("key `resources.cpus`: must be a positive number".into());
            }
            Some(pb::Resources {
                cpus: r.cpus.unwrap_or(0.0),
                memory_bytes: match r.memory.as_deref() {
                    Some(m) => parse_bytes(m).ok_or_else(|| {
                        format!(
                            "key `resources.memory`: cannot read {m:?} as a size (e.g. \"128Mi\")"
                        )
                    })?,
                    None => 0,
                },
                pids: r.pids.unwrap_or(0),
            })
        }
        None => None,
    };
    let placement = match f.placement {
        Some(p) => {
            for c in &p.constraints {
                Constraint::parse(c).map_err(|e| format!("key `placement.constraints`: {e}"))?;
            }
            let spread = p.spread.unwrap_or_default();
            validate_spread(&spread).map_err(|e| format!("key `placement.spread`: {e}"))?;
            let strategy = p.strategy.unwrap_or_default();
            validate_strategy(&strategy, &spread)
                .map_err(|e| format!("key `placement.strategy`: {e}"))?;
            Some(pb::Placement {
                spread,
                constraints: p.constraints,
                strategy,
            })
        }
        None => None,
    };
    let sticky = f
        .canary
        .as_ref()
        .and_then(|c| c.sticky.clone())
        .unwrap_or_default();
    if !sticky.is_empty() && Sticky::parse(&sticky).is_err() {
        return Err(format!(
            "key `canary.sticky`: must be \"header:NAME\" or \"cookie:NAME\", got {sticky:?}"
        ));
    }
    let update = match f.update {
        Some(u) => Some(pb::UpdateSpec {
            max_surge: u.max_surge.unwrap_or(1),
            max_unavailable: u.max_unavailable.unwrap_or(0),
            drain_ms: duration_ms("update.drain", u.drain.as_deref())?,
        }),
        None => None,
    };
    let canary = match f.canary {
        Some(c) => {
            let step_duration_ms = duration_ms("canary.step_duration", c.step_duration.as_deref())?;
            // Unset is one step of 100 %, sent as such: the API refuses an empty list.
            let steps = c.steps.unwrap_or_else(|| vec![100]);
            if steps.is_empty() {
                return Err("key `canary.steps`: must list at least one percentage".into());
            }
            if steps.iter().any(|s| *s == 0 || *s > 100) || steps.windows(2).any(|w| w[0] >= w[1]) {
                return Err(
                    "key `canary.steps`: must be increasing percentages between 1 and 100".into(),
                );
            }
            let max_error_rate = c.max_error_rate.unwrap_or(0.01);
            if !(0.0..=1.0).contains(&max_error_rate) {
                return Err(format!(
                    "key `canary.max_error_rate`: must be between 0 and 1, got {max_error_rate}"
                ));
            }
            let max_p99_ratio = c.max_p99_ratio.unwrap_or(1.5);
            if !(max_p99_ratio.is_finite() && max_p99_ratio > 0.0) {
                return Err(format!(
                    "key `canary.max_p99_ratio`: must be a positive number, got {max_p99_ratio}"
                ));
            }
            let replicas = c.replicas.unwrap_or(1);
            if replicas == 0 {
                return Err("key `canary.replicas`: must be at least 1, got 0".into());
            }
            Some(pb::CanarySpec {
                replicas,
                steps,
                step_duration_ms,
                min_requests: c.min_requests.unwrap_or(200),
                max_error_rate,
                max_p99_ratio,
            })
        }
        None => None,
    };
    if !rctl_api::keys::valid_name(&f.name) {
        return Err(format!(
            "key `name`: {:?} is not a service name (lowercase letters, digits and '-', at most 63)",
            f.name
        ));
    }
    rctl_api::reference::check(&f.image).map_err(|e| format!("key `image`: {e}"))?;
    let spec = pb::ServiceSpec {
        name: f.name,
        image: f.image,
        replicas: f.replicas,
        command: f.command,
        env: f.env.into_iter().collect(),
        port,
        health,
        resources,
        placement,
        update,
        canary,
        sticky,
    };
    // What a task or rctl-lb would refuse later, by the rule the scheduler applies too.
    rctl_api::runnable::check(&spec).map_err(|e| format!("key `{}`: {e}", e.key()))?;
    Ok(spec)
}

/// A DNS name or a `*.` wildcard over one, as SNI carries them.
fn valid_server_name(n: &str) -> bool {
    let n = n.strip_prefix("*.").unwrap_or(n);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn duration_ms(key: &str, v: Option<&str>) -> Result<u64, String> {
    match v {
        None => Ok(0),
        Some(s) => parse_duration(s)
            .map(|d| d.as_millis() as u64)
            .ok_or_else(|| {
                format!("key `{key}`: cannot read {s:?} as a duration (e.g. \"2s\", \"500ms\")")
            }),
    }
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    humantime::parse_duration(s.trim()).ok()
}

/// "128Mi", "1Gi", "512M", "1000": bytes.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "k" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "web"
image = "127.0.0.1:5000/demo/web:1"
replicas = 3
env = { GREETING = "hello" }

[port]
container = 8080
protocol = "http"
listen = "127.0.0.1:8080"

[health]
http = "/healthz"
interval = "2s"

[resources]
memory = "128Mi"
"#;

    #[test]
    fn the_documented_file_parses() {
        let s = parse("web.toml", GOOD).unwrap();
        assert_eq!(s.name, "web");
        assert_eq!(s.replicas, 3);
        assert_eq!(s.port.unwrap().container, 8080);
        assert_eq!(s.health.unwrap().interval_ms, 2000);
        assert_eq!(s.resources.unwrap().memory_bytes, 128 << 20);
        assert_eq!(s.env.get("GREETING").map(String::as_str), Some("hello"));
    }

    #[test]
    fn update_and_canary_are_carried_with_defaults_and_checked() {
        let src = format!(
            "{GOOD}\n[update]\nmax_surge = 2\ndrain = \"5s\"\n\n[canary]\nsteps = [10, 50, 100]\nstep_duration = \"1s\"\n"
        );
        let s = parse("web.toml", &src).unwrap();
        assert_eq!(
            s.update,
            Some(pb::UpdateSpec {
                max_surge: 2,
                max_unavailable: 0,
                drain_ms: 5000
            })
        );
        let c = s.canary.unwrap();
        assert_eq!(c.steps, vec![10, 50, 100]);
        assert_eq!(c.step_duration_ms, 1000);
        assert_eq!((c.replicas, c.min_requests), (1, 200));
        assert_eq!((c.max_error_rate, c.max_p99_ratio), (0.01, 1.5));

        for (bad, key) in [
            ("steps = [50, 10]", "canary.steps"),
            ("max_error_rate = 2.0", "canary.max_error_rate"),
            ("max_p99_ratio = -1.0", "canary.max_p99_ratio"),
            ("steps = []", "canary.steps"),
            ("replicas = 0", "canary.replicas"),
        ] {
            let src = format!("{GOOD}\n[canary]\n{bad}\n");
            let e = parse("web.toml", &src).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
            let line = GOOD.lines().count() + 3;
            assert!(e.starts_with(&format!("web.toml:{line}: ")), "{bad}: {e}");
        }
        // Unset steps are one step of 100 %, written out for the API.
        let src = format!("{GOOD}\n[canary]\nreplicas = 2\n");
        let c = parse("web.toml", &src).unwrap().canary.unwrap();
        assert_eq!((c.replicas, c.steps), (2, vec![100]));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let src = "name = \"web\"\nimage = \"x\"\nbogus = 1\n";
        let e = parse("web.toml", src).unwrap_err().to_string();
        assert!(e.starts_with("web.toml:3: "), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn wrong_type_names_file_line_and_key() {
        let src = "name = \"web\"\nimage = \"x\"\n\n[port]\ncontainer = \"eighty\"\n";
        let e = parse("web.toml", src).unwrap_err().to_string();
        assert!(e.starts_with("web.toml:5: key `port.container`"), "{e}");
    }

    #[test]
    fn missing_image_is_named() {
        let e = parse("web.toml", "name = \"web\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "web.toml: missing field `image`");
    }

    #[test]
    fn negative_replicas_are_rejected() {
        let e = parse("web.toml", "name = \"web\"\nimage = \"x\"\nreplicas = -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("web.toml:3: key `replicas`"), "{e}");
    }

    #[test]
    fn placement_is_carried_and_checked() {
        let src = "name = \"web\"\nimage = \"x\"\n\n[placement]\nspread = \"zone\"\nconstraints = [\"role == web\", \"node.name != h2\"]\n";
        let p = parse("web.toml", src).unwrap().placement.unwrap();
        assert_eq!(p.spread, "zone");
        assert_eq!(p.constraints, vec!["role == web", "node.name != h2"]);
        assert_eq!(p.strategy, "");
        let packed = "name = \"web\"\nimage = \"x\"\n\n[placement]\nstrategy = \"binpack\"\n";
        assert_eq!(
            parse("web.toml", packed)
                .unwrap()
                .placement
                .unwrap()
                .strategy,
            "binpack"
        );
        let e = parse("web.toml", &packed.replace("binpack", "pack"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `placement.strategy`"), "{e}");
        let bad = src.replace("role == web", "role = web");
        let e = parse("web.toml", &bad).unwrap_err().to_string();
        let line = bad.lines().position(|l| l.contains("constraints")).unwrap() + 1;
        assert!(
            e.starts_with(&format!("web.toml:{line}: key `placement.constraints`: ")),
            "{e}"
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("1Gi"), Some(1 << 30));
        assert_eq!(parse_bytes("512M"), Some(512_000_000));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn lb_keys_are_carried_and_checked() {
        let base = "name = \"web\"\nimage = \"x\"\n\n[port]\ncontainer = 8080\nlisten = \"127.0.0.1:8443\"\n";
        let good = format!(
            "{base}tls_cert = \"/etc/rctl/web.pem\"\ntls_key = \"/etc/rctl/web.key\"\nproxy_protocol = \"v2\"\nrequest_timeout = \"5s\"\nidle_timeout = \"1m\"\n\n[[tls]]\ncert = \"/etc/rctl/api.pem\"\nkey = \"/etc/rctl/api.key\"\nserver_names = [\"api.example.com\", \"*.api.example.com\"]\n\n[canary]\nsticky = \"header:X-Canary-Key\"\n"
        );
        let spec = parse("web.toml", &good).unwrap();
        let port = spec.port.unwrap();
        assert_eq!(port.tls.len(), 2);
        assert!(port.tls[0].server_names.is_empty());
        assert_eq!(
            port.tls[1].server_names,
            ["api.example.com", "*.api.example.com"]
        );
        assert_eq!(port.proxy_protocol, "v2");
        assert_eq!(port.request_timeout_ms, 5_000);
        assert_eq!(port.idle_timeout_ms, 60_000);
        assert_eq!(spec.sticky, "header:X-Canary-Key");

        let bad = |extra: &str| {
            parse("web.toml", &format!("{base}{extra}"))
                .unwrap_err()
                .to_string()
        };
        let e = bad("tls_cert = \"/c.pem\"\n");
        assert_eq!(
            e,
            // A missing key points at its table.
            "web.toml:4: key `port.tls_key`: needed with `port.tls_cert`"
        );
        let e = bad("proxy_protocol = \"v1\"\n");
        assert!(
            e.contains("key `port.proxy_protocol`: must be \"v2\""),
            "{e}"
        );
        let e = bad("request_timeout = \"soon\"\n");
        assert!(e.contains("key `port.request_timeout`: cannot read"), "{e}");
        let e = bad("protocol = \"tcp\"\ntls_cert = \"/c\"\ntls_key = \"/k\"\n");
        assert!(e.contains("TLS termination needs protocol \"http\""), "{e}");
        let e = bad("tls_cert = \"/c\"\ntls_key = \"/k\"\n[[tls]]\ncert = \"/c2\"\nkey = \"/k2\"\nserver_names = [\"no spaces\"]\n");
        assert!(
            e.contains("key `tls[0].server_names`: \"no spaces\" is not a host name"),
            "{e}"
        );
        let e = bad("[[tls]]\ncert = \"/c2\"\nkey = \"/k2\"\nserver_names = [\"a.example\"]\n");
        assert!(e.contains("needed as the default certificate"), "{e}");
        let e = bad("[canary]\nsticky = \"query:k\"\n");
        assert!(
            e.contains("key `canary.sticky`: must be \"header:NAME\" or \"cookie:NAME\""),
            "{e}"
        );
        let e = bad("[canary]\nsticky = \"cookie:\"\n");
        assert!(e.contains("key `canary.sticky`"), "{e}");
        // Read as rctl-lb reads it: a cookie name is a token.
        let e = bad("[canary]\nsticky = \"cookie:a/b\"\n");
        assert!(e.contains("key `canary.sticky`"), "{e}");
    }
}
