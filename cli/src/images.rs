//! `rctl images`, `rctl pull`, `rctl rmi`, `rctl image inspect` and `rctl inspect`: the
//! scheduler passes each to the agents (every node, or `--node`) and tags answers with the
//! node name.

use std::io::IsTerminal;

use clap::{Args, Subcommand};
use futures::StreamExt;
use rctl_api::pb::{
    self, pull_event, ImageSummary, InspectImageRequest, ListImagesRequest, PullImageRequest,
    RegistryAuth, RemoveImageRequest,
};
use serde::Serialize;

use crate::client::Conn;
use crate::error::CliError;
use crate::global::Global;
use crate::output::{ago, print_json, print_table, rfc3339, Format};
use crate::progress::{human, short, Progress};
use crate::registry_auth;

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Show an image's config, layers and sizes as JSON.
    Inspect {
        /// The image: NAME[:TAG], NAME@sha256:DIGEST or an id prefix.
        image: String,
        /// Only this node (default: every node).
        #[arg(long)]
        node: Option<String>,
    },
    /// Same as `rctl images`.
    Ls(ImagesArgs),
    /// Same as `rctl pull`.
    Pull(PullArgs),
    /// Same as `rctl rmi`.
    Rm(RmiArgs),
}

impl ImageCommand {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        match self {
            ImageCommand::Inspect { image, node } => {
                inspect_image(&mut g.connect().await?, &image, node).await
            }
            ImageCommand::Ls(a) => a.run(g).await,
            ImageCommand::Pull(a) => a.run(g).await,
            ImageCommand::Rm(a) => a.run(g).await,
        }
    }
}

/// `rctl images` and `rctl image ls`.
#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Show all images (there are no intermediate images: same as without).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only image ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Only this node (default: every node).
    #[arg(long)]
    pub node: Option<String>,
    /// Output format: table (default) or json.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Format,
}

impl ImagesArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        let conn = &mut g.connect().await?;
        list(conn, self.all, self.quiet, self.node, self.output).await
    }
}

/// `rctl pull` and `rctl image pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// The image: NAME[:TAG], NAME@sha256:DIGEST or an id prefix.
    pub image: String,
    /// Only this node (default: every node).
    #[arg(long)]
    pub node: Option<String>,
}

impl PullArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        // A malformed reference fails with exit 2 before anything is sent.
        registry_auth::check_reference(&self.image).map_err(CliError::Usage)?;
        pull(&mut g.connect().await?, &self.image, self.node).await
    }
}

/// `rctl rmi` and `rctl image rm`.
#[derive(Args, Debug)]
pub struct RmiArgs {
    /// The images: NAME[:TAG], NAME@sha256:DIGEST or id prefixes.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Remove an image even while containers use it.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Only this node (default: every node).
    #[arg(long)]
    pub node: Option<String>,
}

impl RmiArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        let conn = &mut g.connect().await?;
        rmi(conn, &self.images, self.force, self.node).await
    }
}

#[derive(Debug, Serialize)]
pub struct ImageJson {
    pub node: String,
    pub reference: String,
    pub repository: String,
    pub tag: String,
    pub id: String,
    pub digest: String,
    pub created: Option<String>,
    pub pulled: Option<String>,
    pub size: u64,
    pub containers: Vec<String>,
}

impl ImageJson {
    pub fn from_summary(s: &ImageSummary) -> Self {
        Self {
            node: s.node.clone(),
            reference: s.reference.clone(),
            repository: s.repository.clone(),
            tag: s.tag.clone(),
            id: s.id.clone(),
            digest: s.manifest_digest.clone(),
            created: (s.created_unix_ms > 0).then(|| rfc3339(s.created_unix_ms)),
            pulled: (s.pulled_unix_ms > 0).then(|| rfc3339(s.pulled_unix_ms)),
            size: s.size_bytes,
            containers: s.containers.clone(),
        }
    }
}

/// The `images` table rows, like docker's plus the node.
pub fn image_rows(images: &[ImageSummary]) -> Vec<Vec<String>> {
    images
        .iter()
        .map(|i| {
            vec![
                i.repository.clone(),
                i.tag.clone(),
                short(&i.id),
                ago(i.created_unix_ms),
                human(i.size_bytes),
                i.node.clone(),
            ]
        })
        .collect()
}

pub const IMAGE_HEADER: [&str; 6] = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "NODE"];

async fn list(
    conn: &mut Conn,
    all: bool,
    quiet: bool,
    node: Option<String>,
    format: Format,
) -> Result<(), CliError> {
    let mut images = conn
        .client
        .list_images(ListImagesRequest {
            node: node.unwrap_or_default(),
            all,
        })
        .await
        .map_err(|s| conn.err(s))?
        .into_inner()
        .images;
    images.sort_by(|a, b| (&a.reference, &a.node).cmp(&(&b.reference, &b.node)));
    if quiet {
        let mut ids: Vec<String> = images.iter().map(|i| short(&i.id)).collect();
        ids.dedup();
        for id in ids {
            println!("{id}");
        }
        return Ok(());
    }
    match format {
        Format::Json => print_json(
            &images
                .iter()
                .map(ImageJson::from_summary)
                .collect::<Vec<_>>(),
        ),
        Format::Table => print_table(&IMAGE_HEADER, &image_rows(&images)),
    }
    Ok(())
}

/// The credentials to send with a pull of `reference`, from `rctl login` (or docker's).
pub(crate) fn auth_for(reference: &str) -> Vec<RegistryAuth> {
    let registry = rctl_api::reference::registry_of(reference).to_string();
    registry_auth::lookup(&registry)
        .map(|(username, password)| RegistryAuth {
            registry,
            username,
            password,
        })
        .into_iter()
        .collect()
}

async fn pull(conn: &mut Conn, reference: &str, node: Option<String>) -> Result<(), CliError> {
    let req = PullImageRequest {
        node: node.unwrap_or_default(),
        reference: reference.to_string(),
        auth: auth_for(reference),
    };
    let mut stream = conn
        .client
        .pull_image(req)
        .await
        .map_err(|s| conn.err(s))?
        .into_inner();
    let mut progress = Progress::new(std::io::stdout().is_terminal());
    let mut failed = Vec::new();
    while let Some(e) = stream.next().await {
        let e = e.map_err(|s| conn.err(s))?;
        match e.event {
            Some(pull_event::Event::Layer(p)) => progress.layer(&e.node, &p),
            Some(pull_event::Event::Done(r)) => progress.message(&format!(
                "{}: pulled {} ({})",
                e.node, r.reference, r.manifest_digest
            )),
            Some(pull_event::Event::Error(msg)) => {
                progress.message(&format!("{}: failed", e.node));
                failed.push(format!("{}: {msg}", e.node));
            }
            None => {}
        }
    }
    match failed.len() {
        0 => Ok(()),
        _ => Err(CliError::Failed(failed.join("; "))),
    }
}

async fn rmi(
    conn: &mut Conn,
    images: &[String],
    force: bool,
    node: Option<String>,
) -> Result<(), CliError> {
    let mut errors: Vec<CliError> = Vec::new();
    for image in images {
        let req = RemoveImageRequest {
            node: node.clone().unwrap_or_default(),
            reference: image.clone(),
            force,
        };
        match conn.client.remove_image(req).await {
            Ok(r) => {
                let r = r.into_inner();
                for u in &r.untagged {
                    println!("Untagged: {u} ({})", r.nodes.join(","));
                }
                for d in &r.deleted {
                    println!("Deleted: {d}");
                }
            }
            // Like docker: go on with the other images, report every failure.
            Err(s) => errors.push(conn.err(s)),
        }
    }
    // One line, with the exit code of the first failure.
    let Some(first) = errors.first() else {
        return Ok(());
    };
    let line = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Err(match first {
        CliError::Usage(_) => CliError::Usage(line),
        _ => CliError::Failed(line),
    })
}

#[derive(Debug, Serialize)]
pub(crate) struct LayerJson {
    digest: String,
    diff_id: String,
    chain_id: String,
    media_type: String,
    size: u64,
    unpacked_size: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct DetailJson {
    #[serde(flatten)]
    image: ImageJson,
    architecture: String,
    os: String,
    layers: Vec<LayerJson>,
    config: serde_json::Value,
}

pub(crate) fn detail_json(d: pb::ImageDetail) -> DetailJson {
    DetailJson {
        image: ImageJson::from_summary(&d.summary.unwrap_or_default()),
        architecture: d.architecture,
        os: d.os,
        layers: d
            .layers
            .into_iter()
            .map(|l| LayerJson {
                digest: l.digest,
                diff_id: l.diff_id,
                chain_id: l.chain_id,
                media_type: l.media_type,
                size: l.size_bytes,
                unpacked_size: l.unpacked_bytes,
            })
            .collect(),
        config: serde_json::from_str(&d.config_json).unwrap_or(serde_json::Value::Null),
    }
}

/// The images `target` names, for `image inspect` and `inspect`; Ok(None) when none does.
pub async fn find_images(
    conn: &mut Conn,
    target: &str,
    node: Option<String>,
) -> Result<Option<Vec<serde_json::Value>>, CliError> {
    let req = InspectImageRequest {
        node: node.unwrap_or_default(),
        reference: target.to_string(),
    };
    match conn.client.inspect_image(req).await {
        Ok(r) => Ok(Some(
            r.into_inner()
                .images
                .into_iter()
                .map(|d| serde_json::to_value(detail_json(d)).expect("json"))
                .collect(),
        )),
        Err(s) if s.code() == tonic::Code::NotFound && std::error::Error::source(&s).is_none() => {
            Ok(None)
        }
        Err(s) => Err(conn.err(s)),
    }
}

async fn inspect_image(conn: &mut Conn, image: &str, node: Option<String>) -> Result<(), CliError> {
    match find_images(conn, image, node).await? {
        Some(v) => {
            print_json(&v);
            Ok(())
        }
        None => Err(CliError::Failed(format!("no such image: {image}"))),
    }
}
