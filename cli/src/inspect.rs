//! `rctl inspect TARGET`: whatever TARGET names, as JSON. Each kind of object gets a
//! resolver; the first that knows TARGET answers. Containers and tasks first (issue 9),
//! then images.

use clap::Args;

use crate::client::Conn;
use crate::error::CliError;
use crate::global::Global;
use crate::output::print_json;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A container, a task (web.1) or an image, by name or id.
    pub target: String,
    /// Only this node (default: every node).
    #[arg(long)]
    pub node: Option<String>,
}

impl InspectArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        inspect(&mut g.connect().await?, &self.target, self.node).await
    }
}

async fn inspect(conn: &mut Conn, target: &str, node: Option<String>) -> Result<(), CliError> {
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
    Err(CliError::Failed(format!(
        "no such object: {target} (not a container or an image; see rctl ps -a, rctl images)"
    )))
}
