//! The content store: blobs under `ROOT/blobs/sha256/<hex>`, each verified against its
//! descriptor (sha256 and size) before it becomes visible under its final name.

use std::io::Read;
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

    /// Returns the local path of `desc`, downloading and verifying it if missing.
    pub async fn fetch(
        &self,
        registry: &Registry,
        r: &Reference,
        desc: &OciDescriptor,
    ) -> Result<PathBuf, ContentError> {
        let hex = sha256_hex(&desc.digest)?.to_string();
        let dest = self.dir.join(&hex);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ContentError::Io { path, source }
        };
        if dest.is_file() {
            return Ok(dest);
        }
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(io_err(&self.dir))?;
        let tmp = self
            .dir
            .join(format!(".tmp-{hex}-{:08x}", rand::random::<u32>()));
        // Each attempt starts the file afresh; a transient failure (5xx, reset) is retried.
        let fetched = registry
            .retry
            .run("pull blob", || async {
                let mut file = tokio::fs::File::create(&tmp)
                    .await
                    .map_err(RegistryError::Write)?;
                registry.blob(r, desc, &mut file).await
            })
            .await;
        let checked = match fetched {
            Err(source) => Err(ContentError::Fetch {
                digest: desc.digest.clone(),
                source,
            }),
            Ok(()) => {
                let (tmp2, want) = (tmp.clone(), desc.size);
                let digest = desc.digest.clone();
                tokio::task::spawn_blocking(move || verify(&tmp2, &digest, want))
                    .await
                    .unwrap_or_else(|e| {
                        Err(ContentError::Io {
                            path: tmp.clone(),
                            source: std::io::Error::other(e),
                        })
                    })
            }
        };
        if let Err(e) = checked {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        tokio::fs::rename(&tmp, &dest)
            .await
            .map_err(io_err(&dest))?;
        Ok(dest)
    }
}

/// Checks the file at `path` has exactly `size` bytes hashing to `digest`.
fn verify(path: &Path, digest: &str, size: i64) -> Result<(), ContentError> {
    let io_err = |source| ContentError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io_err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total: i64 = 0;
    loop {
        let n = f.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        total += n as i64;
        h.update(&buf[..n]);
    }
    let actual = format!("sha256:{}", hex::encode(h.finalize()));
    if total != size {
        return Err(ContentError::Mismatch {
            digest: digest.to_string(),
            detail: format!("size {total}, expected {size}"),
        });
    }
    if actual != digest {
        return Err(ContentError::Mismatch {
            digest: digest.to_string(),
            detail: format!("content hashes to {actual}"),
        });
    }
    Ok(())
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
