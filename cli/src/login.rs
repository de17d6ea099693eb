//! `rctl login REGISTRY [-u USER] [-p PASS | --password-stdin]` and `rctl logout REGISTRY`:
//! the credentials are checked against the registry (basic, or the bearer-token challenge)
//! before they are stored (see [`crate::registry_auth`]).

use std::io::{IsTerminal, Read};

use clap::Args;

use crate::error::CliError;
use crate::global::Global;
use crate::registry_auth;

/// `rctl login`.
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// HOST[:PORT]
    pub registry: String,
    /// The user name to log in as.
    #[arg(short = 'u', long = "username")]
    pub username: Option<String>,
    /// The password (visible in the process list: prefer --password-stdin).
    #[arg(short = 'p', long = "password")]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Check the login over plain HTTP (a registry the agents reach with
    /// --insecure-registry); registries on this host always are.
    #[arg(long)]
    pub plain_http: bool,
}

impl LoginArgs {
    /// Talks to the registry, not the scheduler.
    pub async fn run(self, _: &Global) -> Result<(), CliError> {
        login(
            &self.registry,
            self.username,
            self.password,
            self.password_stdin,
            self.plain_http,
        )
        .await
    }
}

/// `rctl logout`.
#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// The registry: HOST[:PORT].
    pub registry: String,
}

impl LogoutArgs {
    /// Local files only.
    pub async fn run(self, _: &Global) -> Result<(), CliError> {
        logout(&self.registry)
    }
}

/// How the registry asks for credentials on `/v2/` (its `WWW-Authenticate` header).
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    for part in params.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_string();
        match k.trim() {
            "realm" => realm = Some(v),
            "service" => service = Some(v),
            _ => {}
        }
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
    })
}

/// Plain HTTP for a registry on this host (as docker does for localhost) or when asked.
fn scheme(registry: &str, plain_http: bool) -> &'static str {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    let loopback =
        host == "localhost" || host.starts_with("127.") || host.trim_matches(['[', ']']) == "::1";
    if loopback || plain_http {
        "http"
    } else {
        "https"
    }
}

fn http_err(registry: &str, e: reqwest::Error) -> CliError {
    let mut cause: &dyn std::error::Error = &e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    CliError::Failed(format!("cannot reach the registry {registry}: {cause}"))
}

/// Checks `user`/`password` against `registry`.
pub async fn verify(
    registry: &str,
    user: &str,
    password: &str,
    plain_http: bool,
) -> Result<(), CliError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .map_err(|e| http_err(registry, e))?;
    let base = format!("{}://{registry}/v2/", scheme(registry, plain_http));
    let wrong = || {
        CliError::Failed(format!(
            "unauthorized: the registry {registry} refused user {user:?} (wrong username or password)"
        ))
    };
    let first = client
        .get(&base)
        .send()
        .await
        .map_err(|e| http_err(registry, e))?;
    if first.status().is_success() {
        // An open registry: nothing to check, docker stores the login all the same.
        return Ok(());
    }
    if first.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Err(CliError::Failed(format!(
            "the registry {registry} answered HTTP {} on /v2/",
            first.status().as_u16()
        )));
    }
    let challenge = first
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(parse_challenge);
    let answer = match challenge {
        Some(Challenge::Bearer { realm, service }) => {
            let mut req = client.get(&realm).basic_auth(user, Some(password));
            if let Some(s) = service {
                req = req.query(&[("service", s), ("account", user.to_string())]);
            }
            req.send().await.map_err(|e| http_err(registry, e))?
        }
        _ => client
            .get(&base)
            .basic_auth(user, Some(password))
            .send()
            .await
            .map_err(|e| http_err(registry, e))?,
    };
    match answer.status() {
        s if s.is_success() => Ok(()),
        reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN => Err(wrong()),
        s => Err(CliError::Failed(format!(
            "the registry {registry} answered HTTP {} to the login",
            s.as_u16()
        ))),
    }
}

async fn login(
    registry: &str,
    user: Option<String>,
    password: Option<String>,
    password_stdin: bool,
    plain_http: bool,
) -> Result<(), CliError> {
    let registry = registry
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if registry.is_empty() || registry.contains(['/', ' ']) {
        return Err(CliError::Usage(format!(
            "invalid registry {registry:?} (expected HOST[:PORT])"
        )));
    }
    let user = user.ok_or_else(|| CliError::Usage("give the user name with -u USER".into()))?;
    let password = match (password, password_stdin) {
        (Some(_), true) => {
            return Err(CliError::Usage(
                "-p and --password-stdin exclude each other".into(),
            ))
        }
        (Some(p), false) => p,
        (None, true) => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| CliError::Failed(format!("read the password from stdin: {e}")))?;
            s.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) if !std::io::stdin().is_terminal() => {
            return Err(CliError::Usage(
                "give the password with -p PASS or --password-stdin".into(),
            ))
        }
        (None, false) => {
            return Err(CliError::Usage(
                "give the password with --password-stdin (or -p PASS)".into(),
            ))
        }
    };
    if password.is_empty() {
        return Err(CliError::Usage("the password is empty".into()));
    }
    verify(registry, &user, &password, plain_http).await?;
    registry_auth::update(|cfg| registry_auth::set_login(cfg, registry, Some((&user, &password))))?;
    println!(
        "Login succeeded ({} for {registry})",
        registry_auth::config_path().display()
    );
    Ok(())
}

fn logout(registry: &str) -> Result<(), CliError> {
    if registry_auth::update(|cfg| registry_auth::set_login(cfg, registry, None))? {
        println!("Removed login credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_challenges_are_read() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="x:y""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn only_registries_on_this_host_are_spoken_to_in_plain_http() {
        assert_eq!(scheme("127.0.0.1:5000", false), "http");
        assert_eq!(scheme("localhost:5000", false), "http");
        assert_eq!(scheme("[::1]:5000", false), "http");
        assert_eq!(scheme("ghcr.io", false), "https");
        assert_eq!(scheme("10.0.0.1:5000", false), "https");
        assert_eq!(scheme("10.0.0.1:5000", true), "http");
    }
}
