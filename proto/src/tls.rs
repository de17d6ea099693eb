//! Cluster TLS: the CA and the certificates `rctl cluster` issues, loading them from files,
//! and the one place every binary gets its tonic server/client and etcd TLS settings from.
//!
//! # Vocabulary
//! - **role**: what a certificate may do in the cluster (`scheduler`, `agent`, `lb`, `client`,
//!   `etcd`), carried as the subject's OU.
//! - **name**: who holds it (`h2`, `sched-1`, `admin`), carried as the subject's CN and as a
//!   DNS SAN, so a client can verify "this server is h2" with ordinary hostname checks.
//! - [`Security`]: what a binary was started with: TLS material, or explicit plaintext.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Bound on a TLS handshake, so connections that never finish one do not pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// File names inside a TLS directory (`rctl cluster --dir`).
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";

/// The certificate file of `name` in a TLS directory.
pub fn cert_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.crt"))
}

/// The private key file of `name` in a TLS directory.
pub fn key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.key"))
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot parse the certificate: {0}")]
    Parse(String),
    #[error("certificate has no role (OU): not issued by `rctl cluster cert issue`")]
    NoRole,
    #[error("unknown role {0:?} (scheduler, agent, lb, client or etcd)")]
    UnknownRole(String),
    #[error("certificate has no name (CN)")]
    NoName,
    #[error("invalid name {0:?} (letters, digits, '.', '-' and '_')")]
    InvalidName(String),
    #[error("generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Usage(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

// === Role ===

/// What a certificate may do in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Scheduler,
    Agent,
    Lb,
    Client,
    Etcd,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Scheduler,
        Role::Agent,
        Role::Lb,
        Role::Client,
        Role::Etcd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Scheduler => "scheduler",
            Role::Agent => "agent",
            Role::Lb => "lb",
            Role::Client => "client",
            Role::Etcd => "etcd",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| TlsError::UnknownRole(s.to_string()))
    }
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub name: String,
    pub role: Role,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.role)
    }
}

/// Reads name (CN) and role (OU) from a DER certificate.
pub fn identity_of(der: &[u8]) -> Result<PeerIdentity, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Parse(e.to_string()))?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or(TlsError::NoName)?
        .to_string();
    let role = subject
        .iter_organizational_unit()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or(TlsError::NoRole)?
        .parse()?;
    Ok(PeerIdentity { name, role })
}

/// Whether a peer holding `peer` may call a server that admits `allowed`. Decides the
/// `Status` a refused peer gets; `None` means admitted.
pub fn check_role(peer: &PeerIdentity, allowed: &[Role], server: &str) -> Option<String> {
    if allowed.contains(&peer.role) {
        return None;
    }
    let want: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
    Some(format!(
        "certificate {peer} may not call the {server} API (it admits role {})",
        want.join(" or ")
    ))
}

// === Issuing ===

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What to put in a new certificate beyond its role and name.
#[derive(Debug, Clone, Default)]
pub struct Sans {
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
}

/// Names are also DNS SANs and file names: keep them to a safe alphabet.
pub fn valid_cert_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn validity(params: &mut CertificateParams, years: i32) {
    // Calendar years from the clock are precise enough for a validity window; starting a
    // year back tolerates hosts whose clocks lag.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let year = 1970 + (now / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

fn serial(params: &mut CertificateParams) {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive, as DER integers for serials must be
    params.serial_number = Some(SerialNumber::from_slice(&bytes));
}

/// Makes a new self-signed cluster CA.
pub fn new_ca(cluster: &str) -> Result<Issued, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("rctl cluster CA ({cluster})"));
    dn.push(DnType::OrganizationName, "rctl");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 10);
    serial(&mut params);
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a certificate for `name` in `role`, signed by the CA. Every certificate serves
/// both ends (a scheduler is a server to the CLI and a client of agents and etcd).
pub fn issue(ca: &Issued, role: Role, name: &str, sans: &Sans) -> Result<Issued, TlsError> {
    if !valid_cert_name(name) {
        return Err(TlsError::InvalidName(name.to_string()));
    }
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let ca_cert = CertificateParams::from_ca_cert_pem(&ca.cert_pem)?.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    dn.push(DnType::OrganizationName, "rctl");
    params.distinguished_name = dn;
    let mut dns = vec![name.to_string()];
    dns.extend(sans.dns.iter().filter(|d| *d != name).cloned());
    for d in dns {
        let ia5 = d
            .clone()
            .try_into()
            .map_err(|_| TlsError::InvalidName(d.clone()))?;
        params.subject_alt_names.push(SanType::DnsName(ia5));
    }
    for ip in &sans.ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, 2);
    serial(&mut params);
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

// === Loading and configs ===

/// The three files a TLS-enabled binary is started with.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files of `name` inside a directory laid out by `rctl cluster`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self {
            ca: dir.join(CA_CERT_FILE),
            cert: cert_path(dir, name),
            key: key_path(dir, name),
        }
    }
}

/// Loaded TLS material: the cluster CA, this process's certificate and key, and who the
/// certificate says this process is.
#[derive(Clone)]
pub struct Tls {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    identity: PeerIdentity,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The DER bytes of the first certificate in a PEM file.
fn first_cert_der(pem: &[u8], path: &Path) -> Result<Vec<u8>, TlsError> {
    let mut found = None;
    for item in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let item = item.map_err(|e| TlsError::Parse(format!("{}: {e}", path.display())))?;
        if item.label == "CERTIFICATE" {
            found = Some(item.contents);
            break;
        }
    }
    found.ok_or_else(|| TlsError::NoCertificate {
        path: path.to_path_buf(),
    })
}

impl Tls {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let ca_pem = read(&files.ca)?;
        first_cert_der(&ca_pem, &files.ca)?;
        let cert_pem = read(&files.cert)?;
        let key_pem = read(&files.key)?;
        let identity = identity_of(&first_cert_der(&cert_pem, &files.cert)?)
            .map_err(|e| TlsError::Parse(format!("{}: {e}", files.cert.display())))?;
        install_crypto_provider();
        Ok(Self {
            ca_pem,
            cert_pem,
            key_pem,
            identity,
        })
    }

    /// Who this process's certificate says it is.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    fn tonic_identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    /// A server that requires a client certificate from the cluster CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.tonic_identity())
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// A client that presents this certificate and trusts only the cluster CA. With
    /// `server_name`, the server's certificate must be for that name whatever address is
    /// dialled (the scheduler dials agents by IP and checks the node name).
    pub fn client_config(&self, server_name: Option<&str>) -> ClientTlsConfig {
        let cfg = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(self.tonic_identity())
            .timeout(HANDSHAKE_TIMEOUT);
        match server_name {
            Some(n) => cfg.domain_name(n),
            None => cfg,
        }
    }
}

/// tonic's server builds its rustls config with the process default provider; ring is the
/// one compiled in.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

// === Security: TLS or explicit plaintext ===

/// How a binary talks to its peers.
#[derive(Debug, Clone)]
pub enum Security {
    /// Plaintext, only because `--insecure` was given.
    Insecure,
    Tls(Arc<Tls>),
}

impl Security {
    pub fn tls(&self) -> Option<&Tls> {
        match self {
            Security::Insecure => None,
            Security::Tls(t) => Some(t),
        }
    }

    /// The URL scheme of this process's links.
    pub fn scheme(&self) -> &'static str {
        match self {
            Security::Insecure => "http",
            Security::Tls(_) => "https",
        }
    }

    /// A gRPC server builder: TLS with required client certificates, or plaintext.
    pub fn server(&self) -> Result<tonic::transport::Server, TlsError> {
        let builder = tonic::transport::Server::builder();
        match self {
            Security::Insecure => Ok(builder),
            Security::Tls(t) => builder
                .tls_config(t.server_config())
                .map_err(|e| TlsError::Config(e.to_string())),
        }
    }

    /// An interceptor admitting only peers whose certificate has one of `allowed` roles.
    /// Plaintext servers have no peer certificate to check.
    pub fn role_check(&self, allowed: &'static [Role], server: &'static str) -> RoleCheck {
        RoleCheck {
            enforce: self.tls().is_some(),
            allowed,
            server,
        }
    }

    /// Checks that an etcd endpoint's scheme matches this process's security.
    pub fn check_url(&self, url: &str, flag: &str) -> Result<(), TlsError> {
        let (want, other) = match self {
            Security::Insecure => ("http://", "https://"),
            Security::Tls(_) => ("https://", "http://"),
        };
        if url.starts_with(other) {
            return Err(TlsError::Usage(match self {
                Security::Insecure => format!(
                    "{flag} {url} is https:// but --insecure was given: pass the TLS files (--tls-ca, --tls-cert, --tls-key) or use {want}"
                ),
                Security::Tls(_) => format!(
                    "{flag} {url} is plaintext http:// but TLS is configured: use https:// (or --insecure instead of the TLS files)"
                ),
            }));
        }
        Ok(())
    }

    /// Adds this process's TLS settings to etcd connect options.
    pub fn etcd_options(&self, opts: etcd_client::ConnectOptions) -> etcd_client::ConnectOptions {
        match self {
            Security::Insecure => opts,
            Security::Tls(t) => opts.with_tls(t.client_config(None)),
        }
    }

    /// The one way every rctl binary connects to etcd: `opts` carries the caller's timeouts,
    /// this adds TLS when configured.
    pub async fn etcd_connect<E: AsRef<str>>(
        &self,
        endpoints: &[E],
        opts: etcd_client::ConnectOptions,
    ) -> Result<etcd_client::Client, etcd_client::Error> {
        etcd_client::Client::connect(endpoints, Some(self.etcd_options(opts))).await
    }
}

/// Interceptor that refuses peers whose certificate role the server does not admit.
#[derive(Debug, Clone)]
pub struct RoleCheck {
    enforce: bool,
    allowed: &'static [Role],
    server: &'static str,
}

impl tonic::service::Interceptor for RoleCheck {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if !self.enforce {
            return Ok(req);
        }
        let certs = req
            .peer_certs()
            .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
        let first = certs
            .first()
            .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
        let peer = identity_of(first.as_ref())
            .map_err(|e| tonic::Status::permission_denied(format!("client certificate: {e}")))?;
        match check_role(&peer, self.allowed, self.server) {
            None => Ok(req),
            Some(why) => Err(tonic::Status::permission_denied(why)),
        }
    }
}

// === Flags ===

/// The TLS flags every server binary takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Cluster CA certificate (PEM): peers must present certificates it signed.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM), from `rctl cluster cert issue`.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This process's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Plaintext on every link, no certificates (local development only).
    #[arg(long)]
    pub insecure: bool,
}

impl TlsArgs {
    /// Decides TLS or plaintext; neither, both, or a partial set of files is a usage error.
    pub fn security(&self) -> Result<Security, TlsError> {
        let given = [
            ("--tls-ca", &self.tls_ca),
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
        ];
        let missing: Vec<&str> = given
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(f, _)| *f)
            .collect();
        match (self.insecure, missing.len()) {
            (true, 3) => Ok(Security::Insecure),
            (true, _) => Err(TlsError::Usage(
                "--insecure conflicts with --tls-ca/--tls-cert/--tls-key: pass one or the other"
                    .into(),
            )),
            (false, 0) => {
                let files = TlsFiles {
                    ca: self.tls_ca.clone().unwrap_or_default(),
                    cert: self.tls_cert.clone().unwrap_or_default(),
                    key: self.tls_key.clone().unwrap_or_default(),
                };
                Ok(Security::Tls(Arc::new(Tls::load(&files)?)))
            }
            (false, 3) => Err(TlsError::Usage(
                "no TLS configured: pass --tls-ca, --tls-cert and --tls-key (see `rctl cluster cert issue`), or --insecure for plaintext (local development only)".into(),
            )),
            (false, _) => Err(TlsError::Usage(format!(
                "incomplete TLS configuration: also pass {}",
                missing.join(" and ")
            ))),
        }
    }

    /// [`Self::security`], with each `--etcd` URL checked against it: what a daemon's
    /// `main` checks before it starts. A library does not exit: `main` prints the error
    /// and chooses the exit status (2, bad usage).
    pub fn security_for_etcd<'a>(
        &self,
        etcd: impl IntoIterator<Item = &'a str>,
    ) -> Result<Security, TlsError> {
        let security = self.security()?;
        for url in etcd {
            security.check_url(url, "--etcd")?;
        }
        Ok(security)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        first_cert_der(pem.as_bytes(), Path::new("test")).unwrap()
    }

    #[test]
    fn issued_certificate_carries_role_and_name() {
        let ca = new_ca("test").unwrap();
        let sans = Sans {
            ips: vec!["127.0.0.1".parse().unwrap()],
            dns: vec!["localhost".into()],
        };
        let c = issue(&ca, Role::Scheduler, "sched-1", &sans).unwrap();
        let id = identity_of(&der(&c.cert_pem)).unwrap();
        assert_eq!(
            id,
            PeerIdentity {
                name: "sched-1".into(),
                role: Role::Scheduler
            }
        );
        let cert_der = der(&c.cert_pem);
        let ca_der = der(&ca.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|g| g.to_string())
            .collect();
        assert!(names.iter().any(|n| n.contains("sched-1")), "{names:?}");
        assert!(names.iter().any(|n| n.contains("localhost")), "{names:?}");
        assert!(
            names.contains(&"IPAddress(7f:00:00:01)".to_string()),
            "{names:?}"
        );
        // Signed by the CA: the issuer is the CA's subject and the signature verifies.
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert!(ca_cert.is_ca());
    }

    #[test]
    fn certificate_from_another_ca_does_not_verify() {
        let ca = new_ca("a").unwrap();
        let other = new_ca("b").unwrap();
        let c = issue(&other, Role::Client, "admin", &Sans::default()).unwrap();
        let cert_der = der(&c.cert_pem);
        let ca_der = der(&ca.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert!(cert.verify_signature(Some(ca_cert.public_key())).is_err());
    }

    #[test]
    fn bad_names_are_refused() {
        let ca = new_ca("t").unwrap();
        for bad in ["", "../etc", "a b", "-x", "x/y"] {
            assert!(
                matches!(
                    issue(&ca, Role::Agent, bad, &Sans::default()),
                    Err(TlsError::InvalidName(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn roles_parse_and_print() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!(matches!(
            "root".parse::<Role>(),
            Err(TlsError::UnknownRole(_))
        ));
    }

    #[test]
    fn role_check_admits_only_listed_roles() {
        let peer = |role| PeerIdentity {
            name: "x".into(),
            role,
        };
        let sched_api = [Role::Client, Role::Scheduler];
        assert!(check_role(&peer(Role::Client), &sched_api, "scheduler").is_none());
        assert!(check_role(&peer(Role::Scheduler), &sched_api, "scheduler").is_none());
        let why = check_role(&peer(Role::Agent), &sched_api, "scheduler").unwrap();
        assert!(
            why.contains("x (agent)") && why.contains("client or scheduler"),
            "{why}"
        );
        assert!(check_role(&peer(Role::Client), &[Role::Scheduler], "agent").is_some());
    }

    #[test]
    fn flags_need_tls_files_or_insecure() {
        let none = TlsArgs::default();
        let e = none.security().unwrap_err().to_string();
        assert!(e.contains("--insecure") && e.contains("--tls-ca"), "{e}");
        let insecure = TlsArgs {
            insecure: true,
            ..Default::default()
        };
        assert!(matches!(insecure.security(), Ok(Security::Insecure)));
        let partial = TlsArgs {
            tls_ca: Some("ca.crt".into()),
            ..Default::default()
        };
        let e = partial.security().unwrap_err().to_string();
        assert!(e.contains("--tls-cert and --tls-key"), "{e}");
        let both = TlsArgs {
            tls_ca: Some("a".into()),
            tls_cert: Some("b".into()),
            tls_key: Some("c".into()),
            insecure: true,
        };
        assert!(both
            .security()
            .unwrap_err()
            .to_string()
            .contains("conflicts"));
    }

    #[test]
    fn load_reads_identity_and_reports_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("t").unwrap();
        let c = issue(&ca, Role::Agent, "h2", &Sans::default()).unwrap();
        std::fs::write(dir.path().join(CA_CERT_FILE), &ca.cert_pem).unwrap();
        std::fs::write(cert_path(dir.path(), "h2"), &c.cert_pem).unwrap();
        std::fs::write(key_path(dir.path(), "h2"), &c.key_pem).unwrap();
        let tls = Tls::load(&TlsFiles::in_dir(dir.path(), "h2")).unwrap();
        assert_eq!(tls.identity().name, "h2");
        assert_eq!(tls.identity().role, Role::Agent);
        let e = Tls::load(&TlsFiles::in_dir(dir.path(), "h9"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("h9.crt"), "{e}");
    }

    #[test]
    fn url_scheme_must_match_security() {
        assert!(Security::Insecure
            .check_url("https://e:1", "--etcd")
            .is_err());
        assert!(Security::Insecure.check_url("http://e:1", "--etcd").is_ok());
    }
}
