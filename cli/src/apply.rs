//! `rctl apply -f FILE [--wait] [--timeout DUR] [-m MESSAGE]`.

use std::path::Path;
use std::time::Duration;

use rctl_api::pb::ApplyRequest;

use crate::client::Conn;
use crate::error::CliError;
use crate::output::Format;
use crate::service_file;

pub async fn run(
    conn: &mut Conn,
    file: &Path,
    wait: bool,
    timeout: Duration,
    message: Option<String>,
    format: Format,
) -> Result<(), CliError> {
    let spec = service_file::load(file).map_err(|e| CliError::Usage(e.to_string()))?;
    let name = spec.name.clone();
    let resp = conn
        .write(|mut c| {
            let spec = spec.clone();
            let req = ApplyRequest {
                spec: Some(spec),
                who: crate::rollout::who(),
                message: message.clone().unwrap_or_default(),
                exclusive: false,
                canary: false,
            };
            async move { c.apply(req).await }
        })
        .await?;
    crate::rollout::warn(&resp.warning);
    let rev = resp.service.map(|s| s.revision).unwrap_or(0);
    crate::rollout::confirm(
        format,
        &format!("service {name} {} (revision {rev})", resp.outcome),
    );
    let res = match wait {
        // Exit 3 if the scheduler rolls this revision back by itself.
        true => {
            crate::wait::services_from(conn, std::slice::from_ref(&name), &[rev], timeout).await
        }
        false => Ok(()),
    };
    crate::rollout::report(conn, &name, format, res).await
}
