//! Registry credentials on the CLI side: the docker-style `config.json` (`auths.{registry}
//! .auth` = base64("user:password")) in `$RCTL_CONFIG` (default `~/.config/rctl`), with
//! `~/.docker/config.json` as fallback for reading; and whether a reference is well formed.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{json, Value};

use crate::error::CliError;

/// `$RCTL_CONFIG/config.json`, else `~/.config/rctl/config.json`.
pub fn config_path() -> PathBuf {
    match std::env::var_os("RCTL_CONFIG") {
        Some(d) => PathBuf::from(d).join("config.json"),
        None => home().join(".config/rctl/config.json"),
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// Whether `reference` is well formed, by the grammar the agent pulls with; a refusal is
/// one short line whatever the reference's length.
pub fn check_reference(reference: &str) -> Result<(), String> {
    rctl_api::reference::check(reference).map(|_| ())
}

fn read_json(path: &Path) -> Result<Value, CliError> {
    match std::fs::read(path) {
        Ok(d) => serde_json::from_slice(&d)
            .map_err(|e| CliError::Failed(format!("{}: not JSON: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(CliError::Failed(format!("read {}: {e}", path.display()))),
    }
}

/// The login stored for `registry` in `cfg` (`auth`, or `username`/`password`).
pub fn login_in(cfg: &Value, registry: &str) -> Option<(String, String)> {
    let auths = cfg.get("auths")?.as_object()?;
    let entry = auths.iter().find_map(|(k, v)| {
        (rctl_api::reference::registry_of_auth_key(k) == registry).then_some(v)
    })?;
    if let Some(b64) = entry.get("auth").and_then(Value::as_str) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?;
        let (u, p) = String::from_utf8(raw)
            .ok()?
            .split_once(':')
            .map(|(u, p)| (u.to_string(), p.to_string()))?;
        return Some((u, p));
    }
    let u = entry.get("username")?.as_str()?;
    let p = entry.get("password")?.as_str()?;
    Some((u.to_string(), p.to_string()))
}

/// The login for `registry`: ours first, then docker's.
pub fn lookup(registry: &str) -> Option<(String, String)> {
    [config_path(), home().join(".docker/config.json")]
        .iter()
        .find_map(|p| login_in(&read_json(p).ok()?, registry))
}

/// Adds or removes (`login` None) the entry of `registry` in `cfg`, keeping everything else.
pub fn set_login(cfg: &mut Value, registry: &str, login: Option<(&str, &str)>) -> bool {
    if !cfg.is_object() {
        *cfg = json!({});
    }
    let auths = cfg
        .as_object_mut()
        .expect("an object")
        .entry("auths")
        .or_insert_with(|| json!({}));
    if !auths.is_object() {
        *auths = json!({});
    }
    let auths = auths.as_object_mut().expect("an object");
    match login {
        Some((u, p)) => {
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            auths.insert(registry.to_string(), json!({ "auth": auth }));
            true
        }
        None => auths.remove(registry).is_some(),
    }
}

/// Changes our config file: temp file (0600) then rename, so it is never half written
/// nor readable by others.
pub fn update(change: impl FnOnce(&mut Value) -> bool) -> Result<bool, CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = config_path();
    let mut cfg = read_json(&path)?;
    if !change(&mut cfg) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let err = |e: std::io::Error| CliError::Failed(format!("write {}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(".config.json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(serde_json::to_string_pretty(&cfg).expect("json").as_bytes())
        .map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_checked_by_the_agents_grammar() {
        // The grammar's own cases are in rctl_api::reference; here, the CLI's use of it.
        let d384 = format!("sha384:{}", "a".repeat(96));
        assert!(check_reference(&format!("h:5000/a@{d384}")).is_ok());
        assert_eq!(
            check_reference("h:5000/a@sha256:1234"),
            Err("invalid image reference \"h:5000/a@sha256:1234\": invalid digest (expected sha256:64 hex, sha384:96 or sha512:128)".into())
        );
    }

    #[test]
    fn logins_are_stored_docker_style_and_other_entries_kept() {
        let mut cfg = json!({"auths": {"other:1": {"auth": "eDp5"}}, "credsStore": "x"});
        assert!(set_login(&mut cfg, "127.0.0.1:5000", Some(("u", "p:w"))));
        assert_eq!(cfg["auths"]["127.0.0.1:5000"]["auth"], "dTpwOnc=");
        assert_eq!(
            login_in(&cfg, "127.0.0.1:5000"),
            Some(("u".into(), "p:w".into()))
        );
        assert_eq!(login_in(&cfg, "other:1"), Some(("x".into(), "y".into())));
        assert_eq!(cfg["credsStore"], "x");
        let hub =
            json!({"auths": {"https://index.docker.io/v1/": {"username": "a", "password": "b"}}});
        assert_eq!(login_in(&hub, "docker.io"), Some(("a".into(), "b".into())));
        assert!(set_login(&mut cfg, "127.0.0.1:5000", None));
        assert!(!set_login(&mut cfg, "127.0.0.1:5000", None));
        assert_eq!(login_in(&cfg, "127.0.0.1:5000"), None);
    }
}
