//! `rctl top TARGET`: the processes of a running container, as its host sees them.

use clap::Args;
use rctl_api::pb::TopRequest;

use crate::attach::stream_err;
use crate::error::CliError;
use crate::global::Global;
use crate::output::print_table;

#[derive(Args, Debug)]
pub struct TopArgs {
    /// The running container or task (web.1), by name or id.
    pub target: String,
}

impl TopArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        let conn = &g.connect().await?;
        let r = conn
            .client
            .clone()
            .top(TopRequest {
                target: self.target,
            })
            .await
            .map_err(|s| stream_err(conn, s))?
            .into_inner();
        let rows: Vec<Vec<String>> = r
            .processes
            .iter()
            .map(|p| {
                vec![
                    p.pid.to_string(),
                    p.ppid.to_string(),
                    p.user.clone(),
                    p.time.clone(),
                    p.cmd.clone(),
                ]
            })
            .collect();
        print_table(&["PID", "PPID", "USER", "TIME", "CMD"], &rows);
        Ok(())
    }
}
