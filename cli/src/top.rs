//! `rctl top TARGET`: the processes of a running container, as its host sees them.

use rctl_api::pb::TopRequest;

use crate::attach::stream_err;
use crate::client::Conn;
use crate::error::CliError;
use crate::output::print_table;

pub async fn run(conn: &Conn, target: &str) -> Result<(), CliError> {
    let r = conn
        .client
        .clone()
        .top(TopRequest {
            target: target.to_string(),
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
