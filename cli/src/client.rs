//! The connection to the scheduler, the only server the CLI talks to.
//!
//! The address's scheme picks the transport: `https://` is mutual TLS with the certificate
//! `NAME.crt`/`NAME.key` and the CA `ca.crt` from the TLS directory (`--tls-dir`,
//! `RCTL_TLS_DIR`, default `~/.rctl/tls`; `NAME` is `--tls-name`, default `client`);
//! `http://` is plaintext and is refused unless `--insecure` (or `RCTL_INSECURE=1`) says so.

use std::path::PathBuf;

use rctl_api::pb::scheduler_client::SchedulerClient;
use rctl_api::tls::{Tls, TlsFiles};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::error::CliError;

pub type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
pub type Client = SchedulerClient<InterceptedService<Channel, Interceptor>>;

/// How to reach the scheduler, as given on the command line.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: String,
    pub tls_dir: PathBuf,
    pub tls_name: String,
    pub insecure: bool,
}

/// `$RCTL_TLS_DIR`'s default: `~/.rctl/tls`.
pub fn default_tls_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".rctl/tls")
}

/// A scheduler client plus the address, for error messages.
pub struct Conn {
    pub client: Client,
    pub addr: String,
}

/// The innermost cause of a transport error: "invalid peer certificate: UnknownIssuer"
/// says more than "transport error".
fn root_cause(e: &tonic::transport::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl Conn {
    pub async fn open(target: &Target) -> Result<Self, CliError> {
        let addr = target.addr.as_str();
        let tls = if addr.starts_with("https://") {
            let files = TlsFiles::in_dir(&target.tls_dir, &target.tls_name);
            let tls = Tls::load(&files).map_err(|e| {
                CliError::Usage(format!(
                    "{e} (TLS files come from --tls-dir/RCTL_TLS_DIR and --tls-name/RCTL_TLS_NAME; for a plaintext cluster use http:// with --insecure)"
                ))
            })?;
            Some(tls)
        } else if addr.starts_with("http://") {
            if !target.insecure {
                return Err(CliError::Usage(format!(
                    "{addr} is plaintext: pass --insecure (or RCTL_INSECURE=1) to allow it, or use https:// with RCTL_TLS_DIR"
                )));
            }
            None
        } else {
            return Err(CliError::Usage(format!(
                "invalid scheduler address {addr:?} (expected https://HOST:PORT, or http://HOST:PORT with --insecure)"
            )));
        };
        let mut ep = Endpoint::from_shared(addr.to_string())
            .map_err(|_| {
                CliError::Usage(format!(
                    "invalid scheduler address {addr:?} (expected e.g. https://127.0.0.1:7600)"
                ))
            })?
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30));
        if let Some(tls) = &tls {
            ep = ep
                .tls_config(tls.client_config(None))
                .map_err(|e| CliError::Usage(format!("TLS configuration: {e}")))?;
        }
        let ch = ep.connect().await.map_err(|e| {
            let cause = root_cause(&e);
            if tls.is_some() && cause.contains("certificate") {
                CliError::Failed(format!(
                    "TLS with the scheduler at {addr} failed: {cause} (are --tls-dir and the cluster's CA the same?)"
                ))
            } else {
                CliError::Failed(format!(
                    "cannot reach the scheduler at {addr}: {cause} (is the cluster up? set --addr or RCTL_ADDR; https:// for a TLS cluster)"
                ))
            }
        })?;
        let client =
            SchedulerClient::with_interceptor(ch, rctl_api::telemetry::propagate as Interceptor);
        Ok(Self {
            client,
            addr: addr.to_string(),
        })
    }

    /// Maps a failed call's status into the CLI's error.
    pub fn err(&self, s: tonic::Status) -> CliError {
        CliError::from_status(s, &self.addr)
    }
}
