//! What this host has: the image records under `ROOT/images/`, the containers under
//! `ROOT/containers/` and the layers each one uses, the named volumes under
//! `ROOT/volumes/`, and what they take on disk. Reading only; [`super::lifecycle`] acts.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::gc::{self, Item, Kind};
use super::Image;
use crate::runtime::state::ContainerDir;

/// Where the record of `reference` lives.
pub fn record_path(root: &Path, reference: &str) -> PathBuf {
    let h = hex::encode(Sha256::digest(reference.as_bytes()));
    root.join("images").join(format!("{h}.json"))
}

/// Every readable image record, sorted by reference. An unreadable one is logged and left
/// out (it is then not a GC root: its layers go unless something else uses them).
pub fn records(root: &Path) -> Vec<Image> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(root.join("images")) else {
        return out;
    };
    for e in dir.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|d| serde_json::from_slice::<Image>(&d).map_err(|e| e.to_string()))
        {
            Ok(img) => out.push(img),
            Err(e) => tracing::warn!(error = %e, path = %path.display(), "unreadable image record"),
        }
    }
    out.sort_by(|a, b| a.reference.cmp(&b.reference));
    out
}

/// One container as far as images and disk usage care.
#[derive(Debug, Clone)]
pub struct ContainerUse {
    pub id: String,
    pub dir: PathBuf,
    pub layers: Vec<PathBuf>,
    /// The service of its task; empty for a container not run for a service.
    pub service: String,
    /// The image reference its task named (empty if unknown).
    pub image: String,
    /// Not known to have exited (a container still being set up counts as running).
    pub running: bool,
    /// The config as written, to find the volumes it names.
    pub config_text: String,
}

/// Every container with a readable config.
pub fn containers(root: &Path) -> Vec<ContainerUse> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(root.join("containers")) else {
        return out;
    };
    for e in dir.flatten() {
        let d = ContainerDir(e.path());
        let Ok(text) = std::fs::read_to_string(d.config()) else {
            continue;
        };
        let Ok(cfg) = serde_json::from_str::<crate::runtime::state::ContainerConfig>(&text) else {
            continue;
        };
        let task = cfg.task().unwrap_or_default();
        let exited =
            d.exit().exists() || d.failed().exists() || d.read_pid().is_some_and(|p| !p.alive());
        out.push(ContainerUse {
            id: cfg.id.clone(),
            dir: d.0.clone(),
            layers: cfg.layers,
            service: task.service,
            image: task.image,
            running: !exited,
            config_text: text,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Whether container `c` was made from `image`: its task named the image's reference and
/// it runs the layers the reference has now (a re-pulled tag is another image). Two images
/// with the same layers (e.g. differing only in config) are told apart by the reference; a
/// container whose task is unknown is matched by its layers only.
pub fn uses(c: &ContainerUse, image: &Image) -> bool {
    let same_layers = !image.layers.is_empty() && c.layers == image.layers;
    same_layers && (c.image.is_empty() || c.image == image.reference)
}

/// Whether a container config names volume `name` (by its host path, or as `volume:NAME`
/// or a `"name"` field): the runtime records volumes in its config, so reading the text
/// keeps this independent of that field's exact shape.
pub fn names_volume(config_text: &str, root: &Path, name: &str) -> bool {
    let path = root.join("volumes").join(name);
    config_text.contains(&format!("{}/", path.display()))
        || config_text.contains(&format!("\"{}\"", path.display()))
        || config_text.contains(&format!("\"{name}\""))
}

/// Named volumes (`ROOT/volumes/NAME`) and their sizes.
pub fn volumes(root: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(root.join("volumes"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            (!name.starts_with('.')).then(|| (name, dir_size(&e.path())))
        })
        .collect();
    out.sort();
    out
}

/// Bytes of the files under `path` (each inode once, so hard links are not counted twice);
/// does not follow symlinks or cross into other filesystems (a mounted rootfs).
pub fn dir_size(path: &Path) -> u64 {
    let mut seen = HashSet::new();
    let Ok(top) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut stack = vec![path.to_path_buf()];
    let mut total = 0;
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.dev() != top.dev() {
            continue;
        }
        if md.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if md.is_file() && seen.insert(md.ino()) {
            total += md.len();
        }
    }
    total
}

/// The blobs and layer dirs on disk, with sizes (`sizes` skips the walk of layer dirs).
pub fn present(root: &Path, sizes: bool) -> Vec<Item> {
    let mut out = Vec::new();
    for (kind, dir) in [
        (Kind::Blob, root.join("blobs").join("sha256")),
        (Kind::Layer, root.join("layers")),
    ] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let bytes = match kind {
                Kind::Blob => e.metadata().map(|m| m.len()).unwrap_or(0),
                Kind::Layer if sizes => dir_size(&e.path()),
                Kind::Layer => 0,
            };
            out.push(Item { kind, name, bytes });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The layer dir names (chain id hex) of `image`.
pub fn layer_names(image: &Image) -> Vec<String> {
    image
        .layers
        .iter()
        .filter_map(|l| gc::layer_name(l))
        .collect()
}
