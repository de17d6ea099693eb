//! `rctl rollback NAME [--to N]`: going back to an earlier revision of a service (see
//! `rctl rollout history`) through the ordinary (surge-first) update path.

use std::time::Duration;

use clap::Args;
use rctl_api::pb::RollbackRequest;

use crate::client::Conn;
use crate::error::CliError;
use crate::global::Global;
use crate::output::Format;
use crate::rollout::{confirm, report, who};
use crate::values;

/// `rctl rollback NAME [--to N]`.
#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The service.
    pub name: String,
    /// The revision to return to (see: rctl rollout history NAME).
    #[arg(long)]
    pub to: Option<u64>,
    /// Why, recorded with the new revision.
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// Block until the service runs the restored spec and is healthy.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits before it gives up (exit 4; the change stays in place).
    #[arg(long, default_value = "5m", value_parser = values::duration)]
    pub timeout: Duration,
    /// `json`: the result as `rollout status -o json` prints it, once the change is
    /// written (or, with --wait, once it ended); progress goes to stderr.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Format,
}

impl RollbackArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        let conn = &mut g.connect().await?;
        let res = rollback(conn, &self).await;
        report(conn, &self.name, self.output, res).await
    }
}

async fn rollback(conn: &mut Conn, a: &RollbackArgs) -> Result<(), CliError> {
    let name = &a.name;
    let req = RollbackRequest {
        service: name.clone(),
        to: a.to.unwrap_or(0),
        who: who(),
        message: a.message.clone().unwrap_or_default(),
    };
    let resp = conn
        .write(|mut c| {
            let req = req.clone();
            async move { c.rollback(req).await }
        })
        .await?;
    let rev = resp.service.map(|s| s.revision).unwrap_or(0);
    confirm(
        a.output,
        &format!(
            "service {name} rolled back to revision {} (as revision {rev})",
            resp.from_revision
        ),
    );
    if a.wait {
        crate::wait::services_from(conn, std::slice::from_ref(name), &[rev], a.timeout).await?;
    }
    Ok(())
}
