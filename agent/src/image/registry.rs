//! The registry client edge: manifests (Docker v2 schema 2 or OCI; an index resolves to the
//! agent's platform, linux/amd64) and blobs over the OCI distribution API. Credentials come
//! from a docker-style `config.json` (basic auth; the client turns it into a bearer token
//! when the registry asks for one), plain HTTP only for registries the operator listed as
//! insecure, and transient failures (5xx, 429, resets, timeouts) are retried with backoff.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use rctl_api::reference::registry_of_auth_key;
use sha2::Digest;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference: {0}")]
    Reference(String),
    /// `reason` is what the registry said (e.g. "manifest unknown"): it ends up in `rctl ps`.
    #[error("{reason}")]
    Registry { reason: String, transient: bool },
    #[error("write blob: {0}")]
    Write(#[source] std::io::Error),
    #[error("registry credentials {path}: {reason}")]
    Credentials { path: String, reason: String },
}

impl RegistryError {
    /// Whether trying again could succeed (a server error or a broken connection, not an
    /// answer like "manifest unknown" or a digest mismatch).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RegistryError::Registry {
                transient: true,
                ..
            }
        )
    }
}

/// How often and how patiently a transient failure is retried.
#[derive(Debug, Clone)]
pub struct Retry {
    pub attempts: u32,
    pub first_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 4,
            first_backoff: Duration::from_millis(250),
        }
    }
}

impl Retry {
    /// The pause before attempt `n` (1-based retries): doubling, with up to 25% jitter so
    /// agents that failed together do not retry together.
    pub fn backoff(&self, n: u32) -> Duration {
        let base = self.first_backoff * 2u32.saturating_pow(n.saturating_sub(1));
        base + base.mul_f64(rand::random::<f64>() * 0.25)
    }

    /// Runs `op` until it succeeds, fails permanently, or runs out of attempts.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let mut n = 1;
        loop {
            match op().await {
                Err(e) if e.is_transient() && n < self.attempts => {
                    tracing::warn!(%e, attempt = n, "{what}: retrying");
                    tokio::time::sleep(self.backoff(n)).await;
                    n += 1;
                }
                Err(RegistryError::Registry { reason, transient }) if n > 1 => {
                    Err(RegistryError::Registry {
                        reason: format!("{reason} (after {n} attempts)"),
                        transient,
                    })?
                }
                r => return r,
            }
        }
    }
}

/// Registry credentials by host, from a docker-style `config.json`
/// (`{"auths": {"HOST": {"auth": base64("user:password")}}}`).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_host: HashMap<String, (String, String)>,
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
}

#[derive(serde::Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl Credentials {
    /// Reads `path`; a missing file means no credentials, a malformed one is an error.
    pub fn load(path: &Path) -> Result<Credentials, RegistryError> {
        let err = |reason: String| RegistryError::Credentials {
            path: path.display().to_string(),
            reason,
        };
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(err(e.to_string())),
        };
        Self::parse(&data).map_err(err)
    }

    /// Adds (or replaces) the login for `registry` (`host[:port]`).
    pub fn insert(&mut self, registry: &str, username: &str, password: &str) {
        self.by_host.insert(
            registry_of_auth_key(registry).to_string(),
            (username.to_string(), password.to_string()),
        );
    }

    pub fn parse(data: &[u8]) -> Result<Credentials, String> {
        let cfg: DockerConfig = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        let mut by_host = HashMap::new();
        for (key, a) in cfg.auths {
            let pair = match (a.auth, a.username, a.password) {
                (Some(b64), _, _) if !b64.is_empty() => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .map_err(|e| format!("{key}: auth is not base64: {e}"))?;
                    let s =
                        String::from_utf8(raw).map_err(|_| format!("{key}: auth is not UTF-8"))?;
                    let (u, p) = s
                        .split_once(':')
                        .ok_or_else(|| format!("{key}: auth is not user:password"))?;
                    (u.to_string(), p.to_string())
                }
                (_, Some(u), Some(p)) => (u, p),
                _ => continue,
            };
            by_host.insert(registry_of_auth_key(&key).to_string(), pair);
        }
        Ok(Credentials { by_host })
    }

    /// The auth to use for `registry` (as `Reference::resolve_registry` names it).
    pub fn auth_for(&self, registry: &str) -> RegistryAuth {
        match self
            .by_host
            .get(rctl_api::reference::canonical_registry(registry))
        {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

/// A pull-only registry client shared by every pull.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    credentials: Credentials,
    pub retry: Retry,
    insecure: Vec<String>,
    /// One client per login sent with requests: oci-client keeps the first auth it sees
    /// per registry (and the tokens it got with it), so a login must not share a client
    /// with anonymous pulls or with another login.
    by_login: Arc<std::sync::Mutex<HashMap<String, Client>>>,
}

fn new_client(insecure: &[String]) -> Client {
    Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::HttpsExcept(insecure.to_vec()),
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    })
}

impl Registry {
    pub fn new(insecure: Vec<String>) -> Self {
        Self {
            client: new_client(&insecure),
            credentials: Credentials::default(),
            retry: Retry::default(),
            insecure,
            by_login: Arc::default(),
        }
    }

    /// The registry to pull `r` with when a request carries `extra` logins: when one is
    /// for `r`'s registry, a client of that login's own, else this one.
    pub fn for_request(&self, r: &Reference, extra: Option<&Credentials>) -> Registry {
        let host = r.resolve_registry();
        let Some(RegistryAuth::Basic(user, password)) = extra.map(|c| c.auth_for(host)) else {
            return self.clone();
        };
        let key = format!(
            "{host}\0{user}\0{}",
            hex::encode(sha2::Sha256::digest(password.as_bytes()))
        );
        let client = self
            .by_login
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert_with(|| new_client(&self.insecure))
            .clone();
        let mut credentials = self.credentials.clone();
        credentials.insert(host, &user, &password);
        Registry {
            client,
            credentials,
            ..self.clone()
        }
    }

    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    pub fn set_credentials(&mut self, credentials: Credentials) {
        self.credentials = credentials;
    }

    /// `image` by Docker's grammar (`rctl_api::reference`), as oci-client's `Reference`.
    pub fn parse(image: &str) -> Result<Reference, RegistryError> {
        let r = rctl_api::reference::parse(image)
            .map_err(|e| RegistryError::Reference(format!("{image}: {e}")))?;
        let (registry, repository) = (r.registry().to_string(), r.repository().to_string());
        Ok(match (r.tag(), r.digest()) {
            (Some(t), Some(d)) => {
                Reference::with_tag_and_digest(registry, repository, t.into(), d.into())
            }
            (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
            (t, None) => Reference::with_tag(registry, repository, t.unwrap_or_default().into()),
        })
    }

    /// The image manifest (an index resolves to linux/amd64, the client's platform) and
    /// its digest; when `r` names a digest, the manifest must hash to it.
    pub async fn manifest(
        &self,
        r: &Reference,
    ) -> Result<(OciImageManifest, String), RegistryError> {
        let auth = self.credentials.auth_for(r.resolve_registry());
        let anonymous = auth == RegistryAuth::Anonymous;
        self.retry
            .run("pull manifest", || async {
                self.client
                    .pull_image_manifest(r, &auth)
                    .await
                    .map_err(registry_error)
            })
            .await
            .map_err(|e| match e {
                RegistryError::Registry { reason, transient } if is_unauthorized(&reason) => {
                    let hint = if anonymous {
                        format!("run rctl login {}", r.registry())
                    } else {
                        format!("check the credentials for {} (rctl login)", r.registry())
                    };
                    RegistryError::Registry {
                        reason: format!("unauthorized: {hint}"),
                        transient,
                    }
                }
                e => e,
            })
    }

    /// Starts downloading blob `desc` (one attempt: the caller owns the data and retries).
    pub async fn blob_stream(
        &self,
        r: &Reference,
        desc: &OciDescriptor,
    ) -> Result<oci_client::client::SizedStream, RegistryError> {
        self.client
            .pull_blob_stream(r, desc)
            .await
            .map_err(registry_error)
    }
}

/// Whether a registry error reason means the registry wants (other) credentials.
pub fn is_unauthorized(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("unauthorized") || r.contains("authentication required") || r.contains("http 401")
}

/// Extracts the registry's own words from a client error, falling back to the error chain,
/// and whether the failure is worth retrying.
fn registry_error(e: OciDistributionError) -> RegistryError {
    let (reason, transient) = match &e {
        OciDistributionError::RegistryError { envelope, .. } => {
            let mut transient = false;
            let msgs: Vec<String> = envelope
                .errors
                .iter()
                .map(|err| {
                    transient |=
                        matches!(err.code, oci_client::errors::OciErrorCode::Toomanyrequests);
                    if err.message.is_empty() {
                        format!("{:?}", err.code)
                    } else {
                        err.message.clone()
                    }
                })
                .collect();
            (msgs.join("; "), transient)
        }
        OciDistributionError::ServerError { code, message, .. } => (
            format!("registry answered HTTP {code}: {message}"),
            *code >= 500 || *code == 429,
        ),
        OciDistributionError::UnauthorizedError { .. } => ("unauthorized".to_string(), false),
        other => {
            let transient = matches!(
                other,
                OciDistributionError::RequestError(_) | OciDistributionError::IoError(_)
            );
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            (s, transient)
        }
    };
    RegistryError::Registry { reason, transient }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_auths_are_read_by_host() {
        let cfg = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
            "reg.example:5000": {"username": "u2", "password": "p:2"},
            "empty.example": {}
        }}"#;
        let c = Credentials::parse(cfg).unwrap();
        assert_eq!(
            c.auth_for("index.docker.io"),
            RegistryAuth::Basic("user".into(), "pass".into())
        );
        assert_eq!(
            c.auth_for("reg.example:5000"),
            RegistryAuth::Basic("u2".into(), "p:2".into())
        );
        assert_eq!(c.auth_for("empty.example"), RegistryAuth::Anonymous);
        assert_eq!(c.auth_for("other"), RegistryAuth::Anonymous);
        assert!(Credentials::parse(br#"{"auths": {"h": {"auth": "!!"}}}"#).is_err());
        assert!(Credentials::parse(b"not json").is_err());
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let r = Retry {
            attempts: 4,
            first_backoff: Duration::from_millis(100),
        };
        for (n, base) in [(1, 100), (2, 200), (3, 400)] {
            let b = r.backoff(n).as_millis() as u64;
            assert!((base..=base * 5 / 4).contains(&b), "attempt {n}: {b} ms");
        }
    }
}
