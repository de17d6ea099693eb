//! `rctl apply -f FILE [--wait] [--timeout DUR] [-m MESSAGE]`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use rctl_api::pb::ApplyRequest;

use crate::error::CliError;
use crate::global::Global;
use crate::output::Format;
use crate::{service_file, values};

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The service file to apply (TOML; see PRODUCT.md "Service file").
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Block until the service is at its desired state and healthy.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits before it gives up (exit 4; the change stays in place).
    #[arg(long, default_value = "5m", value_parser = values::duration)]
    pub timeout: Duration,
    /// Why, recorded with the new revision (default: a summary of the change).
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// `json`: the result as `rollout status -o json` prints it, once the change is
    /// written (or, with --wait, once it ended); progress goes to stderr.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Format,
}

impl ApplyArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        // A bad file fails with exit 2 before anything is sent.
        let spec = service_file::load(&self.file).map_err(|e| CliError::Usage(e.to_string()))?;
        let conn = &mut g.connect().await?;
        let name = spec.name.clone();
        let resp = conn
            .write(|mut c| {
                let spec = spec.clone();
                let req = ApplyRequest {
                    spec: Some(spec),
                    who: crate::rollout::who(),
                    message: self.message.clone().unwrap_or_default(),
                    exclusive: false,
                    canary: false,
                };
                async move { c.apply(req).await }
            })
            .await?;
        crate::rollout::warn(&resp.warning);
        let rev = resp.service.map(|s| s.revision).unwrap_or(0);
        crate::rollout::confirm(
            self.output,
            &format!("service {name} {} (revision {rev})", resp.outcome),
        );
        let res = match self.wait {
            // Exit 3 if the scheduler rolls this revision back by itself.
            true => {
                crate::wait::services_from(conn, std::slice::from_ref(&name), &[rev], self.timeout)
                    .await
            }
            false => Ok(()),
        };
        crate::rollout::report(conn, &name, self.output, res).await
    }
}
