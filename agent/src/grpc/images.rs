//! The image RPCs of the Agent API: requests become [`ImageStore`] calls, results become
//! protobuf messages; image errors go through [`super::status`].

use std::pin::Pin;

use rctl_api::pb;
use tonic::{Code, Response, Status};

use super::{status, Error};
use crate::image::feed::{PullFeed, Sent};
use crate::image::lifecycle::{ImageView, UsageLine};
use crate::image::registry::{is_unauthorized, Credentials, Registry, RegistryError};
use crate::image::{ImageStore, LayerEvent, LayerPhase, PullOptions};

pub type PullStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::PullEvent, Status>> + Send + 'static>>;

/// `repo:tag` → (`repo`, `tag`); `repo@sha256:…` → (`repo`, `<none>`).
pub fn split_reference(reference: &str) -> (String, String) {
    if let Some((repo, _)) = reference.split_once('@') {
        return (repo.to_string(), "<none>".to_string());
    }
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => (
            reference[..slash + i].to_string(),
            reference[slash + i + 1..].to_string(),
        ),
        None => (reference.to_string(), "latest".to_string()),
    }
}

/// RFC 3339 (as image configs write it) → unix ms; 0 when absent or unreadable.
fn unix_ms(created: Option<&str>) -> i64 {
    created
        .and_then(|c| humantime::parse_rfc3339_weak(c).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

fn summary(v: &ImageView) -> pb::ImageSummary {
    let (repository, tag) = split_reference(&v.image.reference);
    pb::ImageSummary {
        node: String::new(),
        reference: v.image.reference.clone(),
        repository,
        tag,
        id: v.image.config_digest.clone(),
        manifest_digest: v.image.manifest_digest.clone(),
        created_unix_ms: unix_ms(v.image.created.as_deref()),
        pulled_unix_ms: v.image.pulled_unix_ms,
        size_bytes: v.size,
        containers: v.containers.clone(),
    }
}

fn line(u: UsageLine) -> pb::UsageLine {
    pb::UsageLine {
        total: u.total,
        active: u.active,
        size_bytes: u.bytes,
        reclaimable_bytes: u.reclaimable,
    }
}

pub async fn list(
    images: &ImageStore,
    _req: pb::ListImagesRequest,
) -> Result<Response<pb::ListImagesResponse>, Status> {
    let images = images.list().await.iter().map(summary).collect();
    Ok(Response::new(pb::ListImagesResponse { images }))
}

fn event(e: LayerEvent) -> pb::PullEvent {
    let state = match e.phase {
        LayerPhase::Waiting => pb::LayerState::Waiting,
        LayerPhase::Downloading => pb::LayerState::Downloading,
        LayerPhase::Extracting => pb::LayerState::Extracting,
        LayerPhase::Done => pb::LayerState::Done,
        LayerPhase::AlreadyExists => pb::LayerState::AlreadyExists,
    };
    pb::PullEvent {
        node: String::new(),
        event: Some(pb::pull_event::Event::Layer(pb::LayerProgress {
            digest: e.digest,
            state: state as i32,
            bytes_done: e.done,
            bytes_total: e.total,
        })),
    }
}

/// Starts the pull and streams its progress; the pull goes on if the caller goes away
/// (another pull or a task may be waiting on the same layers).
pub fn pull(
    images: &ImageStore,
    req: pb::PullImageRequest,
) -> Result<Response<PullStream>, Status> {
    Registry::parse(&req.reference).map_err(|e| status(Error::Reference(e)))?;
    let credentials = credentials(&req.auth);
    let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let images = images.clone();
    let reference = req.reference;
    tokio::spawn(async move {
        let opts = PullOptions::new(Some(ptx), credentials);
        let pulling = images.pull(&reference, &opts);
        tokio::pin!(pulling);
        let result = loop {
            tokio::select! {
                r = &mut pulling => break r,
                Some(e) = prx.recv() => { let _ = tx.send(Ok(event(e))).await; }
            }
        };
        while let Ok(e) = prx.try_recv() {
            let _ = tx.send(Ok(event(e))).await;
        }
        let last = match result {
            Ok(img) => pb::pull_event::Event::Done(pb::PullResult {
                reference: img.reference,
                manifest_digest: img.manifest_digest,
                config_digest: img.config_digest,
            }),
            Err(e) => pb::pull_event::Event::Error(format!("pull {reference}: {e}")),
        };
        let _ = tx
            .send(Ok(pb::PullEvent {
                node: String::new(),
                event: Some(last),
            }))
            .await;
    });
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

/// Streams a task's pull as its feed shows it (FollowTaskPull): the layers so far, their
/// changes, then the end. A feed dropped before its end (the agent stopping) ends the
/// stream with an error event.
pub fn follow(feed: &PullFeed) -> Response<PullStream> {
    let mut rx = feed.subscribe();
    let (tx, out) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut sent = Sent::new();
        loop {
            if rx.changed().await.is_err() {
                let gone = "the agent stopped before the pull ended".to_string();
                let _ = tx.send(Ok(end_event(Err(gone)))).await;
                return;
            }
            let (news, end) = {
                let v = rx.borrow_and_update();
                (v.news(&mut sent), v.end.clone())
            };
            for e in news {
                if tx.send(Ok(event(e))).await.is_err() {
                    return;
                }
            }
            if let Some(end) = end {
                let _ = tx.send(Ok(end_event(end))).await;
                return;
            }
        }
    });
    Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out)))
}

fn end_event(end: Result<pb::PullResult, String>) -> pb::PullEvent {
    pb::PullEvent {
        node: String::new(),
        event: Some(match end {
            Ok(r) => pb::pull_event::Event::Done(r),
            Err(e) => pb::pull_event::Event::Error(e),
        }),
    }
}

/// How a failed manifest lookup is said over gRPC: the scheduler tells a missing image
/// (NOT_FOUND) from refused credentials (PERMISSION_DENIED) and an unreachable registry
/// (UNAVAILABLE) by the code alone.
pub fn resolve_code(e: &RegistryError) -> Code {
    match e {
        RegistryError::Reference(_) => Code::InvalidArgument,
        RegistryError::Registry { reason, .. } if is_unauthorized(reason) => Code::PermissionDenied,
        RegistryError::Registry {
            transient: true, ..
        } => Code::Unavailable,
        RegistryError::Registry { reason, .. } => {
            let r = reason.to_ascii_lowercase();
            // The distribution API's MANIFEST_UNKNOWN / NAME_UNKNOWN, or a bare 404.
            if ["unknown", "not known", "not found", "http 404"]
                .iter()
                .any(|w| r.contains(w))
            {
                Code::NotFound
            } else if r.contains("connect") || r.contains("dns") || r.contains("timed out") {
                Code::Unavailable
            } else {
                Code::Unknown
            }
        }
        RegistryError::Write(_) | RegistryError::Credentials { .. } => Code::Internal,
    }
}

/// Resolves a reference to its manifest digest in the registry, pulling no layer.
pub async fn resolve(
    images: &ImageStore,
    req: pb::ResolveImageRequest,
) -> Result<Response<pb::ResolveImageResponse>, Status> {
    let credentials = credentials(&req.auth);
    match images.resolve(&req.reference, credentials.as_ref()).await {
        Ok(manifest_digest) => Ok(Response::new(pb::ResolveImageResponse { manifest_digest })),
        Err(source) => Err(status(Error::Resolve {
            reference: req.reference,
            source,
        })),
    }
}

/// The logins a request carries, if any.
pub(crate) fn credentials(auth: &[pb::RegistryAuth]) -> Option<Credentials> {
    let mut credentials = None::<Credentials>;
    for a in auth {
        credentials.get_or_insert_with(Credentials::default).insert(
            &a.registry,
            &a.username,
            &a.password,
        );
    }
    credentials
}

pub async fn remove(
    images: &ImageStore,
    req: pb::RemoveImageRequest,
) -> Result<Response<pb::RemoveImageResponse>, Status> {
    let r = images
        .remove(&req.reference, req.force)
        .await
        .map_err(status)?;
    Ok(Response::new(pb::RemoveImageResponse {
        nodes: Vec::new(),
        untagged: r.untagged,
        deleted: r.gc.deleted,
        bytes_freed: r.gc.bytes_freed,
    }))
}

pub async fn inspect(
    images: &ImageStore,
    req: pb::InspectImageRequest,
) -> Result<Response<pb::InspectImageResponse>, Status> {
    let views = images.lookup(&req.reference).await.map_err(status)?;
    let mut out = Vec::new();
    for v in views {
        let layers = v
            .image
            .blobs
            .iter()
            .zip(&v.image.layers)
            .map(|(b, dir)| pb::LayerInfo {
                digest: b.digest.clone(),
                diff_id: b.diff_id.clone(),
                chain_id: dir
                    .file_name()
                    .map(|n| format!("sha256:{}", n.to_string_lossy()))
                    .unwrap_or_default(),
                media_type: b.media_type.clone(),
                size_bytes: b.size,
                unpacked_bytes: crate::image::index::dir_size(dir),
            })
            .collect();
        out.push(pb::ImageDetail {
            node: String::new(),
            architecture: v.image.architecture.clone().unwrap_or_default(),
            os: v.image.os.clone().unwrap_or_default(),
            config_json: images.config_json(&v.image).await.unwrap_or_default(),
            layers,
            summary: Some(summary(&v)),
        });
    }
    Ok(Response::new(pb::InspectImageResponse { images: out }))
}

pub async fn disk_usage(images: &ImageStore) -> Result<Response<pb::DiskUsageResponse>, Status> {
    let u = images.usage().await;
    let list = images.list().await.iter().map(summary).collect();
    Ok(Response::new(pb::DiskUsageResponse {
        nodes: vec![pb::DiskUsage {
            node: String::new(),
            images: Some(line(u.images)),
            containers: Some(line(u.containers)),
            volumes: Some(line(u.volumes)),
            image_list: list,
        }],
    }))
}

pub async fn prune(
    images: &ImageStore,
    req: pb::PruneRequest,
) -> Result<Response<pb::PruneResponse>, Status> {
    let r = images.prune(req.all, req.volumes).await;
    Ok(Response::new(pb::PruneResponse {
        nodes: vec![pb::PruneReport {
            node: String::new(),
            containers: r.containers,
            images: r.images,
            volumes: r.volumes,
            deleted: r.gc.deleted,
            bytes_freed: r.bytes_freed,
        }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_lookup_says_missing_refused_or_unreachable_by_its_code() {
        let reg = |reason: &str, transient| RegistryError::Registry {
            reason: reason.into(),
            transient,
        };
        let cases = [
            (reg("manifest unknown", false), Code::NotFound),
            (
                reg("repository name not known to registry", false),
                Code::NotFound,
            ),
            (reg("NameUnknown", false), Code::NotFound),
            (reg("registry answered HTTP 404: ", false), Code::NotFound),
            (
                reg("unauthorized: run rctl login r:5000", false),
                Code::PermissionDenied,
            ),
            (
                reg(
                    "error sending request: connection refused (after 4 attempts)",
                    true,
                ),
                Code::Unavailable,
            ),
            (
                reg("registry answered HTTP 503: down", true),
                Code::Unavailable,
            ),
            (
                RegistryError::Reference("x: bad".into()),
                Code::InvalidArgument,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(resolve_code(&e), code, "{e}");
        }
    }

    #[test]
    fn references_split_into_repository_and_tag_like_docker() {
        let s = |r: &str| split_reference(r);
        assert_eq!(
            s("127.0.0.1:5000/rctl/busybox:latest"),
            ("127.0.0.1:5000/rctl/busybox".into(), "latest".into())
        );
        assert_eq!(
            s("127.0.0.1:5000/rctl/busybox"),
            ("127.0.0.1:5000/rctl/busybox".into(), "latest".into())
        );
        assert_eq!(
            s("h:5000/a@sha256:abcd"),
            ("h:5000/a".into(), "<none>".into())
        );
        assert_eq!(s("busybox:1.36"), ("busybox".into(), "1.36".into()));
    }

    #[test]
    fn created_times_are_read_from_rfc3339() {
        assert_eq!(unix_ms(Some("1970-01-01T00:00:01Z")), 1000);
        assert_eq!(unix_ms(Some("2024-01-02T03:04:05.5Z")), 1_704_164_645_500);
        assert_eq!(unix_ms(Some("garbage")), 0);
        assert_eq!(unix_ms(None), 0);
    }
}
