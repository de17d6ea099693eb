//! The image lifecycle a user drives (`rctl images`, `rmi`, `image inspect`, `system df`,
//! `system prune`): reads [`super::index`], decides with pure functions ([`usage`],
//! [`find`]), and removes through [`super::gc`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use super::gc::{self, GcReport, Item, Kind};
use super::index::{self, ContainerUse};
use super::{Image, ImageStore};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no such image: {0}")]
    NotFound(String),
    #[error("{reference} is used by container(s) {}: stop them first or use -f", .containers.join(", "))]
    InUse {
        reference: String,
        containers: Vec<String>,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// An image record with what `rctl images` shows beside it.
#[derive(Debug, Clone)]
pub struct ImageView {
    pub image: Image,
    /// Unpacked bytes of its layers.
    pub size: u64,
    /// Containers made from it.
    pub containers: Vec<String>,
}

/// One line of `system df`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UsageLine {
    pub total: u32,
    pub active: u32,
    pub bytes: u64,
    pub reclaimable: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Usage {
    pub images: UsageLine,
    pub containers: UsageLine,
    pub volumes: UsageLine,
}

/// Disk usage from plain data. Images: every blob and layer dir on disk, each counted
/// once however many images share it; active = images some container was made from;
/// reclaimable = what no container's layers and no active image reach. Containers: their
/// upper dirs; reclaimable = stopped ones. Volumes: reclaimable = named by no container.
pub fn usage(
    images: &[Image],
    present: &[Item],
    containers: &[(ContainerUse, u64)],
    volumes: &[(String, u64)],
    volume_used: impl Fn(&str) -> bool,
) -> Usage {
    let uses = |img: &Image| containers.iter().any(|(c, _)| index::uses(c, img));
    let active: Vec<Image> = images.iter().filter(|i| uses(i)).cloned().collect();
    let layers_of_containers: Vec<_> = containers.iter().map(|(c, _)| c.layers.clone()).collect();
    let kept = gc::mark(&active, &layers_of_containers);
    let reclaimable = gc::victims(present, &kept).iter().map(|i| i.bytes).sum();
    Usage {
        images: UsageLine {
            total: images.len() as u32,
            active: active.len() as u32,
            bytes: present
                .iter()
                .filter(|i| !i.name.starts_with('.'))
                .map(|i| i.bytes)
                .sum(),
            reclaimable,
        },
        containers: UsageLine {
            total: containers.len() as u32,
            active: containers.iter().filter(|(c, _)| c.running).count() as u32,
            bytes: containers.iter().map(|(_, b)| b).sum(),
            reclaimable: containers
                .iter()
                .filter(|(c, _)| !c.running)
                .map(|(_, b)| b)
                .sum(),
        },
        volumes: UsageLine {
            total: volumes.len() as u32,
            active: volumes.iter().filter(|(n, _)| volume_used(n)).count() as u32,
            bytes: volumes.iter().map(|(_, b)| b).sum(),
            reclaimable: volumes
                .iter()
                .filter(|(n, _)| !volume_used(n))
                .map(|(_, b)| b)
                .sum(),
        },
    }
}

/// The records `query` names: the reference as pulled, the same reference written another
/// way (`busybox` for `docker.io/library/busybox:latest`), or an image id (config digest,
/// `sha256:` optional, at least 4 hex digits of its start).
pub fn find<'a>(images: &'a [Image], query: &str) -> Vec<&'a Image> {
    let exact: Vec<_> = images.iter().filter(|i| i.reference == query).collect();
    if !exact.is_empty() {
        return exact;
    }
    let whole = |s: &str| rctl_api::reference::parse(s).ok().map(|r| r.whole());
    if let Some(q) = whole(query) {
        let same: Vec<_> = images
            .iter()
            .filter(|i| whole(&i.reference).as_ref() == Some(&q))
            .collect();
        if !same.is_empty() {
            return same;
        }
    }
    let hex = query.strip_prefix("sha256:").unwrap_or(query);
    if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return images
            .iter()
            .filter(|i| {
                i.config_digest
                    .strip_prefix("sha256:")
                    .is_some_and(|h| h.starts_with(&hex.to_ascii_lowercase()))
            })
            .collect();
    }
    Vec::new()
}

/// What `prune` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    pub containers: Vec<String>,
    pub images: Vec<String>,
    pub volumes: Vec<String>,
    pub gc: GcReport,
    pub bytes_freed: u64,
}

/// What `rmi` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RemoveReport {
    pub untagged: Vec<String>,
    pub gc: GcReport,
}

/// Whether the rootfs of a container dir is a mount point: such a container's files are
/// not ours to delete (its overlay is still mounted).
fn rootfs_mounted(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let rootfs = dir.join("rootfs");
    match (std::fs::metadata(dir), std::fs::metadata(&rootfs)) {
        (Ok(d), Ok(r)) => d.dev() != r.dev(),
        _ => false,
    }
}

impl ImageStore {
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The images on this host, with sizes and the containers made from each.
    pub async fn list(&self) -> Vec<ImageView> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let containers = index::containers(&root);
            let mut sizes = HashMap::new();
            index::records(&root)
                .into_iter()
                .map(|image| {
                    let size = image
                        .layers
                        .iter()
                        .map(|l| *sizes.entry(l.clone()).or_insert_with(|| index::dir_size(l)))
                        .sum();
                    let containers = containers
                        .iter()
                        .filter(|c| index::uses(c, &image))
                        .map(|c| c.id.clone())
                        .collect();
                    ImageView {
                        image,
                        size,
                        containers,
                    }
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// The image `query` names (see [`find`]), with its view.
    pub async fn lookup(&self, query: &str) -> Result<Vec<ImageView>, LifecycleError> {
        let all = self.list().await;
        let images: Vec<Image> = all.iter().map(|v| v.image.clone()).collect();
        let refs: HashSet<String> = find(&images, query)
            .into_iter()
            .map(|i| i.reference.clone())
            .collect();
        if refs.is_empty() {
            return Err(LifecycleError::NotFound(query.to_string()));
        }
        Ok(all
            .into_iter()
            .filter(|v| refs.contains(&v.image.reference))
            .collect())
    }

    /// Untags the image `query` names, then collects what became unreferenced. Refused
    /// while a container was made from it, unless `force` (the container keeps its layers:
    /// they are GC roots through its config).
    pub async fn remove(&self, query: &str, force: bool) -> Result<RemoveReport, LifecycleError> {
        let _gc = self.gc_lock.lock().await;
        let views = self.lookup(query).await?;
        let using: BTreeSet<String> = views
            .iter()
            .flat_map(|v| v.containers.iter().cloned())
            .collect();
        if !using.is_empty() && !force {
            return Err(LifecycleError::InUse {
                reference: query.to_string(),
                containers: using.into_iter().collect(),
            });
        }
        let mut report = RemoveReport::default();
        for v in views {
            let path = index::record_path(&self.root, &v.image.reference);
            match std::fs::remove_file(&path) {
                Ok(()) => report.untagged.push(v.image.reference),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LifecycleError::Io {
                        what: "remove image record",
                        path: path.display().to_string(),
                        source,
                    })
                }
            }
        }
        report.gc = self.collect_locked().await;
        Ok(report)
    }

    /// Mark and sweep: removes every blob and layer dir that no image record, no
    /// container and no pull in flight holds.
    pub async fn gc(&self) -> GcReport {
        let _gc = self.gc_lock.lock().await;
        self.collect_locked().await
    }

    async fn collect_locked(&self) -> GcReport {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let root = &store.root;
            let images = index::records(root);
            let containers: Vec<_> = index::containers(root)
                .into_iter()
                .map(|c| c.layers)
                .collect();
            let marked = gc::mark(&images, &containers);
            let victims = gc::victims(&index::present(root, false), &marked);
            // Sizes only of what goes: walking every kept layer would be wasted.
            let victims: Vec<Item> = victims
                .into_iter()
                .map(|mut v| {
                    if v.kind == Kind::Layer {
                        v.bytes = index::dir_size(&root.join("layers").join(&v.name));
                    }
                    v
                })
                .collect();
            gc::sweep(root, &victims, &store.leases)
        })
        .await
        .unwrap_or_default()
    }

    /// Disk usage of images, containers and volumes on this host.
    pub async fn usage(&self) -> Usage {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let images = index::records(&root);
            let present = index::present(&root, true);
            let containers: Vec<_> = index::containers(&root)
                .into_iter()
                .map(|c| {
                    let b = index::dir_size(&c.dir.join("upper"));
                    (c, b)
                })
                .collect();
            let volumes = index::volumes(&root);
            let used = |n: &str| {
                containers
                    .iter()
                    .any(|(c, _)| index::names_volume(&c.config_text, &root, n))
            };
            usage(&images, &present, &containers, &volumes, used)
        })
        .await
        .unwrap_or_default()
    }

    /// `system prune`: stopped containers not run for a service, then (with `all`) every
    /// image no container was made from, (with `volumes`) every volume no container
    /// names, then a GC.
    pub async fn prune(&self, all: bool, volumes: bool) -> PruneReport {
        let _gc = self.gc_lock.lock().await;
        let root = self.root.clone();
        let mut report = tokio::task::spawn_blocking(move || {
            let mut report = PruneReport::default();
            let mut containers = index::containers(&root);
            containers.retain(|c| {
                let prunable = !c.running && c.service.is_empty() && !rootfs_mounted(&c.dir);
                if prunable {
                    let bytes = index::dir_size(&c.dir);
                    match std::fs::remove_dir_all(&c.dir) {
                        Ok(()) => {
                            report.containers.push(c.id.clone());
                            report.bytes_freed += bytes;
                            return false;
                        }
                        Err(e) => tracing::warn!(error = %e, container = %c.id, "prune"),
                    }
                }
                true
            });
            if all {
                for img in index::records(&root) {
                    if containers.iter().any(|c| index::uses(c, &img)) {
                        continue;
                    }
                    if std::fs::remove_file(index::record_path(&root, &img.reference)).is_ok() {
                        report.images.push(img.reference);
                    }
                }
            }
            if volumes {
                for (name, bytes) in index::volumes(&root) {
                    if containers
                        .iter()
                        .any(|c| index::names_volume(&c.config_text, &root, &name))
                    {
                        continue;
                    }
                    if std::fs::remove_dir_all(root.join("volumes").join(&name)).is_ok() {
                        report.volumes.push(name);
                        report.bytes_freed += bytes;
                    }
                }
            }
            report
        })
        .await
        .unwrap_or_default();
        report.gc = self.collect_locked().await;
        report.bytes_freed += report.gc.bytes_freed;
        report
    }

    /// The image config blob of `image`, as JSON text.
    pub async fn config_json(&self, image: &Image) -> Option<String> {
        let path = self.content.path(&image.config_digest).ok()?;
        tokio::fs::read_to_string(path).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use crate::image::gc::fixtures::h;

    fn image(reference: &str, config: char, layers: &[(char, char)]) -> Image {
        crate::image::gc::fixtures::image(reference, "/r/layers", config, layers)
    }

    fn item(kind: Kind, c: char, bytes: u64) -> Item {
        Item {
            kind,
            name: h(c),
            bytes,
        }
    }

    fn container(id: &str, layers: &[PathBuf], running: bool) -> ContainerUse {
        ContainerUse {
            id: id.into(),
            dir: PathBuf::from("/r/containers").join(id),
            layers: layers.to_vec(),
            service: String::new(),
            image: String::new(),
            running,
            config_text: String::new(),
        }
    }

    #[test]
    fn shared_base_layers_count_once_and_only_unused_ones_are_reclaimable() {
        // Base: blob a (10) -> layer 1 (100). app1 adds b (20) -> 2 (200); app2 adds c -> 3.
        let app1 = image("app1", 'd', &[('a', '1'), ('b', '2')]);
        let app2 = image("app2", 'e', &[('a', '1'), ('c', '3')]);
        let present = [
            item(Kind::Blob, 'a', 10),
            item(Kind::Blob, 'b', 20),
            item(Kind::Blob, 'c', 30),
            item(Kind::Blob, 'd', 1),
            item(Kind::Blob, 'e', 2),
            item(Kind::Layer, '1', 100),
            item(Kind::Layer, '2', 200),
            item(Kind::Layer, '3', 300),
        ];
        let containers = [
            (container("x", &app1.layers, true), 5),
            (container("y", &app1.layers, false), 7),
        ];
        let vols = [("data".to_string(), 50), ("old".to_string(), 60)];
        let u = usage(&[app1, app2], &present, &containers, &vols, |n| n == "data");
        assert_eq!(
            u.images,
            UsageLine {
                total: 2,
                active: 1,
                bytes: 663,
                // app2's own blob c, config e and layer 3; the shared base stays.
                reclaimable: 332,
            }
        );
        assert_eq!(
            u.containers,
            UsageLine {
                total: 2,
                active: 1,
                bytes: 12,
                reclaimable: 7
            }
        );
        assert_eq!(
            u.volumes,
            UsageLine {
                total: 2,
                active: 1,
                bytes: 110,
                reclaimable: 60
            }
        );
    }

    #[test]
    fn of_two_images_with_the_same_layers_only_the_one_a_task_named_is_active() {
        let v1 = image("ts:v1", 'c', &[('a', '1')]);
        let v2 = image("ts:v2", 'd', &[('a', '1')]);
        let mut c = container("x", &v1.layers, true);
        c.image = "ts:v1".into();
        assert!(index::uses(&c, &v1));
        assert!(!index::uses(&c, &v2));
        let present = [
            item(Kind::Blob, 'a', 10),
            item(Kind::Blob, 'c', 1),
            item(Kind::Blob, 'd', 2),
            item(Kind::Layer, '1', 100),
        ];
        let u = usage(&[v1, v2], &present, &[(c, 0)], &[], |_| false);
        assert_eq!((u.images.active, u.images.reclaimable), (1, 2));
    }

    #[test]
    fn images_are_found_by_reference_short_name_or_id_prefix() {
        let imgs = [
            image("docker.io/library/busybox:latest", 'a', &[]),
            image("127.0.0.1:5000/rctl/app:1", 'b', &[]),
        ];
        let refs = |q: &str| {
            find(&imgs, q)
                .iter()
                .map(|i| i.reference.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(refs("busybox"), vec!["docker.io/library/busybox:latest"]);
        assert_eq!(
            refs("127.0.0.1:5000/rctl/app:1"),
            vec!["127.0.0.1:5000/rctl/app:1"]
        );
        assert_eq!(refs("bbbb"), vec!["127.0.0.1:5000/rctl/app:1"]);
        assert_eq!(
            refs(&format!("sha256:{}", h('a'))),
            vec!["docker.io/library/busybox:latest"]
        );
        assert!(refs("127.0.0.1:5000/rctl/app:2").is_empty());
        assert!(refs("abc").is_empty());
    }
}
