//! `rctl inspect TARGET`: whatever TARGET names, as JSON. Each kind of object gets a
//! resolver; the first that knows TARGET answers. Containers and tasks first (issue 9),
//! then images.

use crate::client::Conn;
use crate::error::CliError;
use crate::output::print_json;

pub async fn run(conn: &mut Conn, target: &str, node: Option<String>) -> Result<(), CliError> {
    if node.is_none() {
        if let Some(v) = crate::container::inspect_json(conn, target).await? {
            print_json(&vec![v]);
            return Ok(());
        }
    }
    if let Some(v) = crate::images::find_images(conn, target, node.clone()).await? {
        print_json(&v);
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "no such object: {target} (not a container or an image; see rctl ps -a, rctl images)"
    )))
}
