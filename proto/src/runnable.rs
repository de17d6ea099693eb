//! Whether a service spec can ever run: what the agent's runtime, its health checker and
//! rctl-lb would otherwise refuse only after the spec was stored (a task that crash-loops
//! on "below the minimum of 6 MiB" or on a NUL in its environment, an env key that becomes
//! `BAD=KEY=x`, a listener on port 0). One rule for the CLI (which shows the key's
//! file:line), the scheduler (which refuses any client's spec at apply) and the agent.

use std::net::SocketAddr;

use crate::pb::{HealthSpec, ServiceSpec};

/// The smallest memory limit a container can start with (Docker refuses less too: the
/// runtime itself needs some).
pub const MIN_MEMORY: u64 = 6 << 20;

/// Why a spec could never run; [`Unrunnable::key`] is the service file key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unrunnable {
    #[error("memory limit {0} bytes is below the minimum of 6 MiB")]
    MemoryTooLow(u64),
    #[error("cpus must be a positive number, got {0}")]
    Cpus(String),
    #[error("env key {0:?} must be a non-empty name without '=' or NUL")]
    EnvKey(String),
    #[error("env {0}: a value cannot hold a NUL character")]
    EnvValue(String),
    #[error("an argument cannot hold a NUL character")]
    CommandNul,
    #[error("health: choose one check of http, tcp and cmd, not {0}")]
    HealthKinds(&'static str),
    #[error("health.http must be a path starting with '/' without spaces, got {0:?}")]
    HealthPath(String),
    #[error("port.listen must be IP:PORT, got {0:?}")]
    Listen(String),
    #[error("port.listen {0}: port 0 is no port to serve on (name one, e.g. 127.0.0.1:8080)")]
    ListenPortZero(String),
}

impl Unrunnable {
    /// The dotted service file key this refusal is about (`env.NAME`, `resources.memory`).
    pub fn key(&self) -> String {
        match self {
            Self::MemoryTooLow(_) => "resources.memory".into(),
            Self::Cpus(_) => "resources.cpus".into(),
            Self::EnvKey(_) => "env".into(),
            Self::EnvValue(k) => format!("env.{k}"),
            Self::CommandNul => "command".into(),
            Self::HealthKinds(_) => "health".into(),
            Self::HealthPath(_) => "health.http".into(),
            Self::Listen(_) | Self::ListenPortZero(_) => "port.listen".into(),
        }
    }
}

/// Checks everything in `spec` that a task or rctl-lb would refuse later.
pub fn check(spec: &ServiceSpec) -> Result<(), Unrunnable> {
    for (k, v) in &spec.env {
        check_env(k, v)?;
    }
    if spec.command.iter().any(|a| a.contains('\0')) {
        return Err(Unrunnable::CommandNul);
    }
    if let Some(r) = &spec.resources {
        check_memory(r.memory_bytes)?;
        if !(r.cpus >= 0.0 && r.cpus.is_finite()) {
            return Err(Unrunnable::Cpus(r.cpus.to_string()));
        }
    }
    if let Some(h) = &spec.health {
        check_health(h)?;
    }
    if let Some(p) = &spec.port {
        listen(&p.listen)?;
    }
    Ok(())
}

/// A memory limit (0: none) a container can start with.
pub fn check_memory(bytes: u64) -> Result<(), Unrunnable> {
    if bytes != 0 && bytes < MIN_MEMORY {
        return Err(Unrunnable::MemoryTooLow(bytes));
    }
    Ok(())
}

/// One environment variable as `execve` takes it: `KEY=VALUE`, so the key can hold no `=`,
/// and neither can hold a NUL (it would end the string).
pub fn check_env(key: &str, value: &str) -> Result<(), Unrunnable> {
    if key.is_empty() || key.contains(['=', '\0']) {
        return Err(Unrunnable::EnvKey(key.into()));
    }
    if value.contains('\0') {
        return Err(Unrunnable::EnvValue(key.into()));
    }
    Ok(())
}

/// One kind of check: the agent runs one probe, so two kinds would silently drop one.
fn check_health(h: &HealthSpec) -> Result<(), Unrunnable> {
    let http = !h.http.is_empty();
    let cmd = !h.cmd.is_empty();
    let both = match (http, h.tcp, cmd) {
        (true, true, true) => Some("http, tcp and cmd"),
        (true, true, false) => Some("http and tcp"),
        (true, false, true) => Some("http and cmd"),
        (false, true, true) => Some("tcp and cmd"),
        _ => None,
    };
    if let Some(both) = both {
        return Err(Unrunnable::HealthKinds(both));
    }
    // The agent puts this path into a request line verbatim.
    if http && !(h.http.starts_with('/') && h.http.bytes().all(|b| b.is_ascii_graphic())) {
        return Err(Unrunnable::HealthPath(h.http.clone()));
    }
    if h.cmd.iter().any(|a| a.contains('\0')) {
        return Err(Unrunnable::CommandNul);
    }
    Ok(())
}

/// Where rctl-lb serves a service: `IP:PORT` with a real port, or None for "" (not exposed).
pub fn listen(s: &str) -> Result<Option<SocketAddr>, Unrunnable> {
    if s.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = s.parse().map_err(|_| Unrunnable::Listen(s.into()))?;
    if addr.port() == 0 {
        return Err(Unrunnable::ListenPortZero(s.into()));
    }
    Ok(Some(addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{PortSpec, Resources};

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            image: "h:5000/a:v1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn what_could_never_run_is_refused_with_its_key() {
        let health = |http: &str, tcp: bool, cmd: &[&str]| ServiceSpec {
            health: Some(HealthSpec {
                http: http.into(),
                tcp,
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..spec()
        };
        let env = |k: &str, v: &str| ServiceSpec {
            env: [(k.to_string(), v.to_string())].into(),
            ..spec()
        };
        let resources = |memory_bytes: u64, cpus: f64| ServiceSpec {
            resources: Some(Resources {
                memory_bytes,
                cpus,
                pids: 0,
            }),
            ..spec()
        };
        let listen = |l: &str| ServiceSpec {
            port: Some(PortSpec {
                container: 8080,
                listen: l.into(),
                ..Default::default()
            }),
            ..spec()
        };
        let table: Vec<(ServiceSpec, Option<&str>)> = vec![
            (spec(), None),
            (resources(1, 0.0), Some("resources.memory")),
            (resources(MIN_MEMORY - 1, 0.0), Some("resources.memory")),
            (resources(MIN_MEMORY, 0.5), None),
            (resources(0, 0.0), None),
            (resources(0, f64::NAN), Some("resources.cpus")),
            (resources(0, -1.0), Some("resources.cpus")),
            (env("A", "x\0y"), Some("env.A")),
            (env("BAD=KEY", "x"), Some("env")),
            (env("", "x"), Some("env")),
            (env("A\0", "x"), Some("env")),
            (env("A", "x=y"), None),
            (
                ServiceSpec {
                    command: vec!["a\0".into()],
                    ..spec()
                },
                Some("command"),
            ),
            (health("/h", true, &[]), Some("health")),
            (health("/h", false, &["true"]), Some("health")),
            (health("", true, &["true"]), Some("health")),
            (health("/h", false, &[]), None),
            (health("", true, &[]), None),
            (health("h", false, &[]), Some("health.http")),
            (health("/a b", false, &[]), Some("health.http")),
            (listen("127.0.0.1:0"), Some("port.listen")),
            (listen("localhost:80"), Some("port.listen")),
            (listen("127.0.0.1:8080"), None),
            (listen(""), None),
        ];
        for (s, key) in table {
            assert_eq!(check(&s).err().map(|e| e.key()).as_deref(), key, "{s:?}");
        }
    }
}
