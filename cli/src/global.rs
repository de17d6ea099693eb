//! The options every command takes: which scheduler to talk to and how (`--addr`,
//! `--tls-dir`, `--tls-name`, `--insecure`), and the connection they open.

use std::path::PathBuf;

use clap::Args;

use crate::client::{self, Conn, Target};
use crate::error::CliError;

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Scheduler API address; several replicas comma-separated (writes follow the leader).
    /// https:// is mutual TLS with the files in --tls-dir; http:// is plaintext and needs
    /// --insecure.
    #[arg(
        long,
        global = true,
        env = "RCTL_ADDR",
        default_value = "https://127.0.0.1:7600"
    )]
    pub addr: String,
    /// Directory holding ca.crt and this client's NAME.crt/NAME.key [default: ~/.rctl/tls]
    #[arg(long, global = true, env = "RCTL_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Which certificate in --tls-dir to present.
    #[arg(long, global = true, env = "RCTL_TLS_NAME", default_value = "client")]
    pub tls_name: String,
    /// Allow a plaintext http:// scheduler address (local development only).
    #[arg(long, global = true, env = "RCTL_INSECURE",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
}

impl Global {
    /// --tls-dir, else the default (~/.rctl/tls).
    pub fn tls_dir(&self) -> PathBuf {
        self.tls_dir.clone().unwrap_or_else(client::default_tls_dir)
    }

    /// Opens the connection to the scheduler. Commands call it once their local input
    /// checked out, so bad input fails with exit 2 before any network use.
    pub async fn connect(&self) -> Result<Conn, CliError> {
        Conn::open(&Target {
            addr: self.addr.clone(),
            tls_dir: self.tls_dir(),
            tls_name: self.tls_name.clone(),
            insecure: self.insecure,
        })
        .await
    }
}
