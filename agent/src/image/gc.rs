//! Garbage collection of blobs and layer dirs: mark what tagged images and existing
//! containers reach, sweep the rest. A pull in flight holds a [`Lease`] on the digests and
//! chain ids it is writing (like containerd's leases) and the sweep skips them, so a GC can
//! run while images are being pulled.
//!
//! Vocabulary: a *root* is an image record or a container config; a *victim* is a blob or
//! layer dir that no root reaches. Names are the hex part of `sha256:` digests (blob file
//! names) and of chain ids (layer dir names).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Image;

/// Digests and chain ids (hex) that pulls in flight are writing, with a count per holder.
#[derive(Default)]
pub struct Leases {
    held: Mutex<HashMap<String, usize>>,
}

/// Names held by one pull until it is dropped.
pub struct Lease<'a> {
    leases: &'a Leases,
    names: Vec<String>,
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

impl Leases {
    pub fn lease(&self) -> Lease<'_> {
        Lease {
            leases: self,
            names: Vec::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` (which removes `name`) unless a pull holds `name`; no lease on it can be
    /// taken while `f` runs, so `f` should only rename (the slow delete comes after).
    pub fn unless_held<T>(&self, name: &str, f: impl FnOnce() -> T) -> Option<T> {
        let held = self.lock();
        if held.contains_key(name) {
            return None;
        }
        let r = f();
        drop(held);
        Some(r)
    }
}

impl Lease<'_> {
    /// Holds `digest` (a `sha256:` digest or chain id) until the lease is dropped.
    pub fn add(&mut self, digest: &str) {
        let name = hex_of(digest).to_string();
        *self.leases.lock().entry(name.clone()).or_default() += 1;
        self.names.push(name);
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut held = self.leases.lock();
        for n in self.names.drain(..) {
            if let Some(c) = held.get_mut(&n) {
                *c -= 1;
                if *c == 0 {
                    held.remove(&n);
                }
            }
        }
    }
}

/// What the roots reach.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Marked {
    pub blobs: HashSet<String>,
    pub layers: HashSet<String>,
    /// Some image record predates blob tracking: keep every blob rather than guess.
    pub all_blobs: bool,
}

/// The layer dir name (chain id hex) of an unpacked layer path.
pub fn layer_name(path: &Path) -> Option<String> {
    Some(path.file_name()?.to_str()?.to_string())
}

/// Marks what `images` (tagged) and `containers` (each one's layer dirs) reach.
pub fn mark(images: &[Image], containers: &[Vec<PathBuf>]) -> Marked {
    let mut m = Marked::default();
    for img in images {
        m.blobs.insert(hex_of(&img.config_digest).to_string());
        m.blobs
            .extend(img.blobs.iter().map(|b| hex_of(&b.digest).to_string()));
        m.all_blobs |= img.blobs.len() != img.layers.len();
        m.layers
            .extend(img.layers.iter().filter_map(|l| layer_name(l)));
    }
    for layers in containers {
        m.layers.extend(layers.iter().filter_map(|l| layer_name(l)));
    }
    m
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Blob,
    Layer,
}

/// Something on disk the sweep may remove: its kind, name and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub kind: Kind,
    pub name: String,
    pub bytes: u64,
}

/// The victims among `present`: unmarked, and not a temp entry (a pull or a sweep at work;
/// the store removes leftovers when it opens).
pub fn victims(present: &[Item], marked: &Marked) -> Vec<Item> {
    present
        .iter()
        .filter(|i| !i.name.starts_with('.'))
        .filter(|i| match i.kind {
            Kind::Blob => !marked.all_blobs && !marked.blobs.contains(&i.name),
            Kind::Layer => !marked.layers.contains(&i.name),
        })
        .cloned()
        .collect()
}

/// What a GC run removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// `blob sha256:HEX` / `layer sha256:HEX`.
    pub deleted: Vec<String>,
    pub bytes_freed: u64,
}

/// Removes `victims` under `root` unless leased: each is renamed to a temp name while no
/// lease can be taken, then deleted.
pub fn sweep(root: &Path, victims: &[Item], leases: &Leases) -> GcReport {
    let mut report = GcReport::default();
    for v in victims {
        let (dir, what) = match v.kind {
            Kind::Blob => (root.join("blobs").join("sha256"), "blob"),
            Kind::Layer => (root.join("layers"), "layer"),
        };
        let from = dir.join(&v.name);
        let to = dir.join(format!(".tmp-gc-{}", v.name));
        match leases.unless_held(&v.name, || std::fs::rename(&from, &to)) {
            None => continue,
            Some(Err(e)) => {
                tracing::warn!(error = %e, path = %from.display(), "gc: cannot remove");
                continue;
            }
            Some(Ok(())) => {}
        }
        let removed = match v.kind {
            Kind::Blob => std::fs::remove_file(&to),
            Kind::Layer => std::fs::remove_dir_all(&to),
        };
        if let Err(e) = removed {
            // The temp name is cleaned up when the store next opens.
            tracing::warn!(error = %e, path = %to.display(), "gc: delete");
        }
        report.deleted.push(format!("{what} sha256:{}", v.name));
        report.bytes_freed += v.bytes;
    }
    report
}

/// Image records made of single-character digests, for the GC's and the lifecycle's tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::PathBuf;

    use crate::image::{BlobRecord, Image, RunConfig};

    /// A 64-character digest of one repeated character.
    pub fn h(c: char) -> String {
        c.to_string().repeat(64)
    }

    /// An image with config digest `config` and `(blob, chain id)` layers under `layer_root`.
    pub fn image(
        reference: &str,
        layer_root: &str,
        config: char,
        layers: &[(char, char)],
    ) -> Image {
        Image {
            reference: reference.into(),
            manifest_digest: String::new(),
            config_digest: format!("sha256:{}", h(config)),
            layers: layers
                .iter()
                .map(|(_, chain)| PathBuf::from(layer_root).join(h(*chain)))
                .collect(),
            config: RunConfig::default(),
            blobs: layers
                .iter()
                .map(|(blob, _)| BlobRecord {
                    digest: format!("sha256:{}", h(*blob)),
                    size: 1,
                    media_type: String::new(),
                    diff_id: String::new(),
                })
                .collect(),
            created: None,
            architecture: None,
            os: None,
            pulled_unix_ms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::fixtures::h;

    fn image(config: char, layers: &[(char, char)]) -> Image {
        super::fixtures::image(&format!("r/{config}"), "/root/layers", config, layers)
    }

    fn item(kind: Kind, c: char) -> Item {
        Item {
            kind,
            name: h(c),
            bytes: 10,
        }
    }

    #[test]
    fn images_and_containers_keep_what_they_reach_and_nothing_else() {
        // Two images sharing base blob a / chain 1; container uses layers of a removed image.
        let imgs = [
            image('c', &[('a', '1'), ('b', '2')]),
            image('d', &[('a', '1')]),
        ];
        let containers = [vec![PathBuf::from("/root/layers").join(h('9'))]];
        let m = mark(&imgs, &containers);
        let present = [
            item(Kind::Blob, 'a'),
            item(Kind::Blob, 'b'),
            item(Kind::Blob, 'c'),
            item(Kind::Blob, 'd'),
            item(Kind::Blob, 'e'),
            item(Kind::Layer, '1'),
            item(Kind::Layer, '2'),
            item(Kind::Layer, '9'),
            item(Kind::Layer, '8'),
            Item {
                kind: Kind::Layer,
                name: format!(".tmp-{}", h('7')),
                bytes: 1,
            },
        ];
        assert_eq!(
            victims(&present, &m),
            vec![item(Kind::Blob, 'e'), item(Kind::Layer, '8')]
        );
    }

    #[test]
    fn removing_one_of_two_images_sharing_a_base_frees_only_its_own_layers() {
        let keep = image('d', &[('a', '1')]);
        let present = [
            item(Kind::Blob, 'a'),
            item(Kind::Blob, 'b'),
            item(Kind::Blob, 'c'),
            item(Kind::Blob, 'd'),
            item(Kind::Layer, '1'),
            item(Kind::Layer, '2'),
        ];
        let v = victims(&present, &mark(&[keep], &[]));
        assert_eq!(
            v,
            vec![
                item(Kind::Blob, 'b'),
                item(Kind::Blob, 'c'),
                item(Kind::Layer, '2')
            ]
        );
    }

    #[test]
    fn a_record_without_blob_list_keeps_every_blob() {
        let mut old = image('c', &[('a', '1')]);
        old.blobs.clear();
        let m = mark(&[old], &[]);
        assert!(m.all_blobs);
        let v = victims(&[item(Kind::Blob, 'e'), item(Kind::Layer, '8')], &m);
        assert_eq!(v, vec![item(Kind::Layer, '8')]);
    }

    #[test]
    fn the_sweep_skips_what_a_pull_holds_and_removes_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let blobs = root.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::create_dir_all(root.path().join("layers").join(h('1')).join("etc")).unwrap();
        std::fs::write(blobs.join(h('a')), b"held").unwrap();
        std::fs::write(blobs.join(h('b')), b"free").unwrap();
        let leases = Leases::default();
        let mut lease = leases.lease();
        lease.add(&format!("sha256:{}", h('a')));
        let victims = [
            item(Kind::Blob, 'a'),
            item(Kind::Blob, 'b'),
            item(Kind::Layer, '1'),
        ];
        let r = sweep(root.path(), &victims, &leases);
        assert_eq!(
            r.deleted,
            vec![
                format!("blob sha256:{}", h('b')),
                format!("layer sha256:{}", h('1'))
            ]
        );
        assert_eq!(r.bytes_freed, 20);
        assert!(blobs.join(h('a')).exists());
        assert!(!blobs.join(h('b')).exists());
        assert!(!root.path().join("layers").join(h('1')).exists());
        assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 1);
        drop(lease);
        let r = sweep(root.path(), &[item(Kind::Blob, 'a')], &leases);
        assert_eq!(r.deleted.len(), 1);
        assert!(!blobs.join(h('a')).exists());
    }
}
