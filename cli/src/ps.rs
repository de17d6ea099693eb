//! `rctl ps [-a] [--service NAME] [--node NODE] [-o json]`.

use rctl_api::pb::ListTasksRequest;

use crate::client::Conn;
use crate::error::CliError;
use crate::output::{print_json, print_tasks, Format, TaskJson};

pub async fn run(
    conn: &mut Conn,
    all: bool,
    service: Option<String>,
    node: Option<String>,
    format: Format,
) -> Result<(), CliError> {
    let req = ListTasksRequest {
        service: service.unwrap_or_default(),
        node: node.unwrap_or_default(),
        all,
    };
    let resp = conn
        .client
        .list_tasks(req)
        .await
        .map_err(|s| conn.err(s))?
        .into_inner();
    match format {
        Format::Json => print_json(
            &resp
                .tasks
                .iter()
                .map(TaskJson::from_view)
                .collect::<Vec<_>>(),
        ),
        Format::Table => {
            print_tasks(&resp.tasks);
            // Like `docker service ps`' "no suitable node": say what is missing and why.
            let mut unplaced: Vec<_> = resp.unplaced.into_iter().collect();
            unplaced.sort();
            for (service, why) in unplaced {
                println!("{service}: not placed: {why}");
            }
        }
    }
    Ok(())
}
