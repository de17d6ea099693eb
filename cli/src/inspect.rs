//! `rctl inspect TARGET`: whatever TARGET names, as JSON. Each kind of object gets a
//! resolver; the first that knows TARGET answers. Images today; containers join with
//! issue 9 by adding a resolver.

use crate::client::Conn;
use crate::error::CliError;
use crate::output::print_json;

pub async fn run(conn: &mut Conn, target: &str, node: Option<String>) -> Result<(), CliError> {
    if let Some(v) = crate::images::find_images(conn, target, node.clone()).await? {
        print_json(&v);
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "no such object: {target} (not an image; see rctl images)"
    )))
}
