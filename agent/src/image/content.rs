//! The content store: blobs under `ROOT/blobs/sha256/<hex>`, each verified against its
//! descriptor (sha256 and size) before it becomes visible under its final name.

use std::path::{Path, PathBuf};

use oci_client::manifest::OciDescriptor;
use oci_client::Reference;
use sha2::{Digest, Sha256};

use super::registry::{Registry, RegistryError};

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("unsupported digest {0:?} (only sha256)")]
    Digest(String),
    #[error("fetch blob {digest}: {source}")]
    Fetch {
        digest: String,
        #[source]
        source: RegistryError,
    },
    #[error("blob {digest} does not match its descriptor: {detail}")]
    Mismatch { digest: String, detail: String },
    #[error("{source} (gave up after {attempts} attempts)")]
    GaveUp {
        attempts: u32,
        source: Box<ContentError>,
    },
    #[error("the layer unpack stopped reading the download")]
    TapClosed,
    #[error("store blob {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The hex part of a `sha256:<hex>` digest; anything else is refused, which also keeps
/// registry-supplied strings out of our paths.
pub fn sha256_hex(digest: &str) -> Result<&str, ContentError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(h),
        _ => Err(ContentError::Digest(digest.to_string())),
    }
}

#[derive(Clone)]
pub struct ContentStore {
    dir: PathBuf,
}

impl ContentStore {
    pub fn new(root: &Path) -> Self {
        Self {
            dir: root.join("blobs").join("sha256"),
        }
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf, ContentError> {
        Ok(self.dir.join(sha256_hex(digest)?))
    }

    /// Whether blob `digest` is in the store.
    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.is_file())
    }

    /// Returns the local path of `desc`, downloading and verifying it if missing. A
    /// transient failure is retried from scratch.
    pub async fn fetch(
        &self,
        registry: &Registry,
        r: &Reference,
        desc: &OciDescriptor,
    ) -> Result<PathBuf, ContentError> {
        if self.has(&desc.digest) {
            return self.path(&desc.digest);
        }
        let mut n = 1;
        loop {
            match self.download(registry, r, desc, None).await {
                Err(e) if e.is_transient() && n < registry.retry.attempts => {
                    tracing::warn!(%e, attempt = n, "pull blob: retrying");
                    tokio::time::sleep(registry.retry.backoff(n)).await;
                    n += 1;
                }
                Err(e) => return Err(e.gave_up(n)),
                r => return r,
            }
        }
    }

    /// Downloads `desc` once into the store, passing every chunk to `tap` as it arrives
    /// (so a layer can be unpacked while it downloads). The blob becomes visible under its
    /// digest only after its size and sha256 match; on any failure `tap` gets an error
    /// last, so whoever reads it never mistakes a cut stream for a complete one.
    pub async fn download(
        &self,
        registry: &Registry,
        r: &Reference,
        desc: &OciDescriptor,
        tap: Option<&Tap>,
    ) -> Result<PathBuf, ContentError> {
        self.download_with(registry, r, desc, tap, &|_| {}).await
    }

    /// [`download`](Self::download), telling `progress` the bytes received so far (at most
    /// every 256 KiB, and at the end).
    pub async fn download_with(
        &self,
        registry: &Registry,
        r: &Reference,
        desc: &OciDescriptor,
        tap: Option<&Tap>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<PathBuf, ContentError> {
        let res = self.download_inner(registry, r, desc, tap, progress).await;
        if let (Err(e), Some(tap)) = (&res, tap) {
            let _ = tap.send(Err(std::io::Error::other(e.to_string()))).await;
        }
        res
    }

    async fn download_inner(
        &self,
        registry: &Registry,
        r: &Reference,
        desc: &OciDescriptor,
        tap: Option<&Tap>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<PathBuf, ContentError> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let hex = sha256_hex(&desc.digest)?.to_string();
        let dest = self.dir.join(&hex);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ContentError::Io { path, source }
        };
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(io_err(&self.dir))?;
        let tmp = self
            .dir
            .join(format!(".tmp-{hex}-{:08x}", rand::random::<u32>()));
        let fetch_err = |source| ContentError::Fetch {
            digest: desc.digest.clone(),
            source,
        };
        let result = async {
            let mut stream = registry.blob_stream(r, desc).await.map_err(fetch_err)?;
            let mut file = tokio::fs::File::create(&tmp).await.map_err(io_err(&tmp))?;
            let (mut h, mut total, mut reported) = (Sha256::new(), 0i64, 0i64);
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    // oci-client checks the digest too and reports a mismatch as a stream
                    // error at the end: ours below names it better.
                    Err(_) if total == desc.size => break,
                    Err(e) => {
                        return Err(fetch_err(RegistryError::Registry {
                            reason: format!(
                                "download cut after {total} of {} bytes: {e}",
                                desc.size
                            ),
                            transient: true,
                        }))
                    }
                };
                total += chunk.len() as i64;
                if total > desc.size {
                    return Err(ContentError::Mismatch {
                        digest: desc.digest.clone(),
                        detail: format!("more than the {} bytes announced", desc.size),
                    });
                }
                h.update(&chunk);
                file.write_all(&chunk).await.map_err(io_err(&tmp))?;
                if total - reported >= 1 << 18 || total == desc.size {
                    reported = total;
                    progress(total as u64);
                }
                if let Some(tap) = tap {
                    // The unpacker stopped reading: its own error is the one to report.
                    if tap.send(Ok(chunk)).await.is_err() {
                        return Err(ContentError::TapClosed);
                    }
                }
            }
            file.flush().await.map_err(io_err(&tmp))?;
            let actual = format!("sha256:{}", hex::encode(h.finalize()));
            if total != desc.size {
                return Err(fetch_err(RegistryError::Registry {
                    reason: format!("download cut after {total} of {} bytes", desc.size),
                    transient: true,
                }));
            }
            if actual != desc.digest {
                return Err(ContentError::Mismatch {
                    digest: desc.digest.clone(),
                    detail: format!("content hashes to {actual}"),
                });
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        tokio::fs::rename(&tmp, &dest)
            .await
            .map_err(io_err(&dest))?;
        Ok(dest)
    }
}

/// Where [`ContentStore::download`] copies chunks to as they arrive.
pub type Tap = tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>;

impl ContentError {
    /// Notes how many attempts a transient failure lasted through.
    pub fn gave_up(self, attempts: u32) -> ContentError {
        if attempts > 1 && self.is_transient() {
            ContentError::GaveUp {
                attempts,
                source: Box::new(self),
            }
        } else {
            self
        }
    }

    /// Whether the fetch may succeed if tried again.
    pub fn is_transient(&self) -> bool {
        matches!(self, ContentError::Fetch { source, .. } if source.is_transient())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_hex_digests_are_accepted() {
        assert!(sha256_hex(&format!("sha256:{}", "0".repeat(64))).is_ok());
        assert!(sha256_hex("sha256:../../etc").is_err());
        assert!(sha256_hex(&format!("sha512:{}", "0".repeat(128))).is_err());
    }
}
