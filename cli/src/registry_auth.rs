//! Registry credentials on the CLI side: the docker-style `config.json` (`auths.{registry}
//! .auth` = base64("user:password")) in `$RCTL_CONFIG` (default `~/.config/rctl`), with
//! `~/.docker/config.json` as fallback for reading; and which registry a reference names.

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

/// The registry host a reference names, as docker reads it: the first component when it
/// looks like a host (has `.` or `:`, or is `localhost`), else Docker Hub.
pub fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// Whether `reference` is well formed: `[host[:port]/]path[:tag][@sha256:64 hex]`.
pub fn check_reference(reference: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid image reference {reference:?}: {why}"));
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        match d.strip_prefix("sha256:") {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {}
            _ => return bad("the digest must be sha256: and 64 hex digits"),
        }
    }
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match name[slash..].rfind(':') {
        Some(i) => (&name[..slash + i], Some(&name[slash + i + 1..])),
        None => (name, None),
    };
    if let Some(t) = tag {
        if t.is_empty()
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return bad("a tag is letters, digits, '_', '.' and '-'");
        }
    }
    let host = registry_of(path);
    let repo = if path.starts_with(&format!("{host}/")) {
        &path[host.len() + 1..]
    } else {
        path
    };
    if repo.is_empty()
        || repo.split('/').any(|c| {
            c.is_empty()
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        })
    {
        return bad("a repository is lowercase letters, digits, '.', '_', '-' and '/'");
    }
    Ok(())
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
        let host = k
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or(k);
        let host = match host {
            "index.docker.io" | "registry-1.docker.io" => "docker.io",
            h => h,
        };
        (host == registry).then_some(v)
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
    fn registries_are_read_from_references_like_docker() {
        assert_eq!(
            registry_of("127.0.0.1:5000/rctl/busybox:1"),
            "127.0.0.1:5000"
        );
        assert_eq!(registry_of("localhost/a"), "localhost");
        assert_eq!(registry_of("ghcr.io/o/i"), "ghcr.io");
        assert_eq!(registry_of("library/busybox"), "docker.io");
        assert_eq!(registry_of("busybox"), "docker.io");
    }

    #[test]
    fn bad_references_are_refused() {
        let d = format!("sha256:{}", "a".repeat(64));
        for ok in [
            "busybox".to_string(),
            "127.0.0.1:5000/rctl/busybox:latest".to_string(),
            format!("127.0.0.1:5000/rctl/busybox@{d}"),
            format!("h:5000/a/b:v1.2-x_y@{d}"),
        ] {
            assert!(check_reference(&ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Busybox",
            "h:5000/a@sha256:1234",
            "h:5000/a:",
            "h:5000/a:b c",
            "h:5000//a",
            "h:5000/",
        ] {
            assert!(check_reference(bad).is_err(), "{bad:?}");
        }
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
