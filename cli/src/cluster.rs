//! `rctl cluster ca init` and `rctl cluster cert issue`: the cluster CA and the certificates
//! every component presents. Files live in one directory (`--dir`): `ca.crt`, `ca.key`, and
//! `NAME.crt`/`NAME.key` per issued certificate; keys are written 0600.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use rctl_api::tls::{self, Issued, Role, Sans};

use crate::error::CliError;
use crate::global::Global;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Certificates signed by the cluster CA.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Make a new cluster CA (ca.crt, ca.key) in --dir.
    Init {
        /// TLS directory [default: $RCTL_TLS_DIR, else ~/.rctl/tls]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Cluster name, shown in the CA's subject.
        #[arg(long, default_value = "rctl")]
        name: String,
        /// Replace an existing CA (every certificate it issued stops being trusted).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Issue NAME.crt and NAME.key for a component or user, signed by the CA in --dir.
    Issue {
        /// What the certificate may do: scheduler, agent, lb, client or etcd.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Who holds it (CN and DNS SAN); for an agent, its node name.
        name: String,
        /// IP address SANs (repeatable or comma-separated), e.g. the address servers listen on.
        #[arg(long, value_delimiter = ',')]
        ip: Vec<IpAddr>,
        /// Extra DNS SANs (repeatable or comma-separated).
        #[arg(long, value_delimiter = ',')]
        dns: Vec<String>,
        /// TLS directory [default: $RCTL_TLS_DIR, else ~/.rctl/tls]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Replace an existing certificate of that name.
        #[arg(long)]
        force: bool,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse().map_err(|e: tls::TlsError| e.to_string())
}

impl ClusterCommand {
    /// Works on local files only: no scheduler is asked.
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        // --dir, else the global --tls-dir, else ~/.rctl/tls.
        let dir = |d: Option<PathBuf>| d.unwrap_or_else(|| g.tls_dir());
        match self {
            ClusterCommand::Ca {
                command:
                    CaCommand::Init {
                        dir: d,
                        name,
                        force,
                    },
            } => ca_init(&dir(d), &name, force),
            ClusterCommand::Cert {
                command:
                    CertCommand::Issue {
                        role,
                        name,
                        ip,
                        dns,
                        dir: d,
                        force,
                    },
            } => cert_issue(&dir(d), role, &name, &ip, &dns, force),
        }
    }
}

fn failed(what: &str, path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("{what} {}: {e}", path.display()))
}

/// Writes `data` to `path` through a temp file and rename, with `mode` from the start so a
/// key is never readable by others, not even briefly.
fn write_file(path: &Path, data: &str, mode: u32) -> Result<(), CliError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| failed("write", &tmp, e))?;
    // An existing temp file keeps its old mode: set it explicitly.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| failed("chmod", &tmp, e))?;
    f.write_all(data.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| failed("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| failed("rename", path, e))
}

fn write_pair(dir: &Path, cert: &Path, key: &Path, issued: &Issued) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(|e| failed("create", dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| failed("chmod", dir, e))?;
    write_file(key, &issued.key_pem, 0o600)?;
    write_file(cert, &issued.cert_pem, 0o644)
}

/// `rctl cluster ca init`: a new CA in `dir`; an existing one is kept unless `force`.
pub fn ca_init(dir: &Path, cluster: &str, force: bool) -> Result<(), CliError> {
    let cert = dir.join(tls::CA_CERT_FILE);
    let key = dir.join(tls::CA_KEY_FILE);
    if !force && (cert.exists() || key.exists()) {
        return Err(CliError::Usage(format!(
            "a CA already exists in {} (every certificate it issued would stop working): pass --force to replace it",
            dir.display()
        )));
    }
    let ca = tls::new_ca(cluster).map_err(|e| CliError::Failed(e.to_string()))?;
    write_pair(dir, &cert, &key, &ca)?;
    println!("CA written to {} and {}", cert.display(), key.display());
    Ok(())
}

/// `rctl cluster cert issue`: a certificate for `name` in `role`, signed by the CA in `dir`.
pub fn cert_issue(
    dir: &Path,
    role: Role,
    name: &str,
    ips: &[IpAddr],
    dns: &[String],
    force: bool,
) -> Result<(), CliError> {
    if !tls::valid_cert_name(name) {
        return Err(CliError::Usage(format!(
            "invalid certificate name {name:?} (letters, digits, '.', '-' and '_'; at most 63)"
        )));
    }
    if matches!(name, "ca") {
        return Err(CliError::Usage(
            "\"ca\" is the CA's own file name: pick another name".into(),
        ));
    }
    let read = |file: &str| {
        let p = dir.join(file);
        std::fs::read_to_string(&p).map_err(|e| {
            CliError::Usage(format!(
                "cannot read the CA at {}: {e} (run `rctl cluster ca init` first, or set --dir)",
                p.display()
            ))
        })
    };
    let ca = Issued {
        cert_pem: read(tls::CA_CERT_FILE)?,
        key_pem: read(tls::CA_KEY_FILE)?,
    };
    let cert = tls::cert_path(dir, name);
    let key = tls::key_path(dir, name);
    if !force && (cert.exists() || key.exists()) {
        return Err(CliError::Usage(format!(
            "{} already exists: pass --force to replace it",
            cert.display()
        )));
    }
    let sans = Sans {
        ips: ips.to_vec(),
        dns: dns.to_vec(),
    };
    let issued = tls::issue(&ca, role, name, &sans).map_err(|e| match e {
        tls::TlsError::InvalidName(_) => CliError::Usage(e.to_string()),
        other => CliError::Failed(format!("issue certificate: {other}")),
    })?;
    write_pair(dir, &cert, &key, &issued)?;
    println!(
        "certificate for {name} ({role}) written to {} and {}",
        cert.display(),
        key.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn ca_is_never_replaced_without_force_and_keys_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        ca_init(&dir, "t", false).unwrap();
        let first = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
        let e = ca_init(&dir, "t", false).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(std::fs::read_to_string(dir.join("ca.crt")).unwrap(), first);
        ca_init(&dir, "t", true).unwrap();
        assert_ne!(std::fs::read_to_string(dir.join("ca.crt")).unwrap(), first);
        assert_eq!(mode(&dir.join("ca.key")), 0o600);

        let ip: IpAddr = "198.18.0.11".parse().unwrap();
        cert_issue(&dir, Role::Agent, "h1", &[ip], &[], false).unwrap();
        assert_eq!(mode(&dir.join("h1.key")), 0o600);
        assert_eq!(mode(&dir), 0o700);
        let e = cert_issue(&dir, Role::Agent, "h1", &[], &[], false).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let e = cert_issue(&dir, Role::Client, "../x", &[], &[], false).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e =
            cert_issue(&tmp.path().join("none"), Role::Client, "a", &[], &[], false).unwrap_err();
        assert!(e.to_string().contains("rctl cluster ca init"), "{e}");
    }
}
