//! Layer unpacking: a (gzip or plain) tar layer becomes a directory that overlayfs can stack.
//!
//! Vocabulary: a layer's *diff id* is the sha256 of its uncompressed tar; its *chain id*
//! identifies the layer together with everything below it (OCI image spec, "ChainID"), so
//! two images that share a base share the unpacked directory `layers/<chain-id-hex>/`.
//! OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) are converted to overlayfs' own form.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("open layer blob {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer entry {entry:?} {reason}")]
    Unsafe { entry: String, reason: &'static str },
    #[error("read layer tar")]
    Read(#[source] io::Error),
    #[error("unpack {entry:?}")]
    Entry {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("layer content does not match its diff id: expected {expected}, got {actual}")]
    DiffIdMismatch { expected: String, actual: String },
    #[error("move layer into place at {path}")]
    Commit {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unsupported layer compression (only gzip and plain tar)")]
    Compression,
}

/// Chain ids (as `sha256:<hex>`) for a bottom-first list of diff ids.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => {
                let h = Sha256::digest(format!("{prev} {d}").as_bytes());
                format!("sha256:{}", hex::encode(h))
            }
        };
        out.push(next);
    }
    out
}

/// What to do with one tar entry, decided from its path alone.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryAction {
    /// Unpack normally, at this path relative to the layer root.
    Unpack(PathBuf),
    /// `.wh.NAME`: a char device 0:0 named NAME in `dir` hides NAME from lower layers.
    Whiteout { dir: PathBuf, name: String },
    /// `.wh..wh..opq`: `dir` hides everything below it in lower layers.
    Opaque { dir: PathBuf },
    /// The root entry (`./`): nothing to create.
    Skip,
}

/// Decides what to do with a tar entry path, rejecting paths that could escape the layer
/// directory (absolute paths and `..`).
pub fn classify(path: &Path) -> Result<EntryAction, &'static str> {
    let mut clean = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => clean.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("has a '..' component"),
            Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
        }
    }
    let Some(name) = clean.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(EntryAction::Skip);
    };
    let dir = clean.parent().map(Path::to_path_buf).unwrap_or_default();
    if name == ".wh..wh..opq" {
        return Ok(EntryAction::Opaque { dir });
    }
    if let Some(hidden) = name.strip_prefix(".wh.") {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err("is a malformed whiteout");
        }
        return Ok(EntryAction::Whiteout {
            dir,
            name: hidden.to_string(),
        });
    }
    Ok(EntryAction::Unpack(clean))
}

/// Creates `root/rel` as a directory, refusing to walk through symlinks (a layer could
/// otherwise place a whiteout outside its root via a symlinked parent).
fn safe_dir(root: &Path, rel: &Path) -> Result<PathBuf, &'static str> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Err("goes through a symlink"),
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err("goes through a non-directory"),
            Err(_) => fs::create_dir(&cur).map_err(|_| "has an uncreatable parent")?,
        }
    }
    Ok(cur)
}

/// Whether `dir` is marked opaque for overlayfs (it hides lower layers' contents).
pub fn is_opaque(dir: &Path) -> bool {
    crate::sys::lgetxattr(dir, "trusted.overlay.opaque").is_ok_and(|v| v == b"y")
}

/// Counts and hashes what passes through, to check the diff id after unpacking.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Unpacks the layer blob at `blob` into `dest` (which must not exist yet), checking the
/// uncompressed content against `diff_id`. Works in a sibling temp dir and renames it into
/// place at the end, so a failure never leaves a partial layer at `dest`.
pub fn unpack_layer(blob: &Path, diff_id: &str, dest: &Path) -> Result<(), UnpackError> {
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let tmp = parent.join(format!(
        ".tmp-{}-{}",
        dest.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&tmp);
    let res = unpack_into(blob, diff_id, &tmp).and_then(|()| {
        match fs::rename(&tmp, dest) {
            Ok(()) => Ok(()),
            // Another pull unpacked the same layer first: theirs is as good as ours.
            Err(_) if dest.is_dir() => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(source) => Err(UnpackError::Commit {
                path: dest.to_path_buf(),
                source,
            }),
        }
    });
    if res.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    res
}

fn unpack_into(blob: &Path, diff_id: &str, dir: &Path) -> Result<(), UnpackError> {
    let open = |path: &Path| {
        fs::File::open(path).map_err(|source| UnpackError::Open {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut magic = [0u8; 4];
    let n = open(blob)?.read(&mut magic).map_err(UnpackError::Read)?;
    let file = io::BufReader::new(open(blob)?);
    let reader: Box<dyn Read> = match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(file)),
        [0x28, 0xb5, 0x2f, 0xfd] => return Err(UnpackError::Compression),
        _ => Box::new(file),
    };
    let mut hashing = HashingReader {
        inner: reader,
        hash: Sha256::new(),
    };
    fs::create_dir_all(dir).map_err(|source| UnpackError::Commit {
        path: dir.to_path_buf(),
        source,
    })?;
    unpack_tar(&mut hashing, dir)?;
    // Tar's end-of-archive padding is part of the diff id too.
    io::copy(&mut hashing, &mut io::sink()).map_err(UnpackError::Read)?;
    let actual = format!("sha256:{}", hex::encode(hashing.hash.finalize()));
    if !diff_id.is_empty() && actual != diff_id {
        return Err(UnpackError::DiffIdMismatch {
            expected: diff_id.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Unpacks a tar stream into `dir`, converting whiteouts and rejecting escaping entries.
pub fn unpack_tar<R: Read>(reader: R, dir: &Path) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let raw = entry.path().map_err(UnpackError::Read)?.into_owned();
        let shown = raw.to_string_lossy().into_owned();
        let unsafe_entry = |reason| UnpackError::Unsafe {
            entry: shown.clone(),
            reason,
        };
        match classify(&raw).map_err(unsafe_entry)? {
            EntryAction::Skip => {}
            EntryAction::Opaque { dir: rel } => {
                let d = safe_dir(dir, &rel).map_err(unsafe_entry)?;
                crate::sys::lsetxattr(&d, "trusted.overlay.opaque", b"y").map_err(|source| {
                    UnpackError::Entry {
                        entry: shown.clone(),
                        source,
                    }
                })?;
            }
            EntryAction::Whiteout { dir: rel, name } => {
                let d = safe_dir(dir, &rel).map_err(unsafe_entry)?;
                let target = d.join(&name);
                let _ = fs::remove_dir_all(&target).or_else(|_| fs::remove_file(&target));
                nix::sys::stat::mknod(
                    &target,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::empty(),
                    0,
                )
                .map_err(|e| UnpackError::Entry {
                    entry: shown.clone(),
                    source: e.into(),
                })?;
            }
            EntryAction::Unpack(_) => {
                if let Some(link) = entry.link_name().map_err(UnpackError::Read)? {
                    // Hard links must point inside the layer; symlink targets are resolved
                    // in the container's root at run time, so any target is fine there.
                    if entry.header().entry_type().is_hard_link() {
                        classify(&link).map_err(unsafe_entry)?;
                    }
                }
                // unpack_in also refuses entries whose parent resolves outside `dir`
                // through a symlink created by an earlier entry.
                let done = entry.unpack_in(dir).map_err(|source| UnpackError::Entry {
                    entry: shown.clone(),
                    source,
                })?;
                if !done {
                    return Err(unsafe_entry("escapes the layer directory"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_are_recognised() {
        assert_eq!(
            classify(Path::new("etc/.wh.passwd")).unwrap(),
            EntryAction::Whiteout {
                dir: "etc".into(),
                name: "passwd".into()
            }
        );
        assert_eq!(
            classify(Path::new("./var/lib/.wh..wh..opq")).unwrap(),
            EntryAction::Opaque {
                dir: "var/lib".into()
            }
        );
        assert_eq!(
            classify(Path::new(".wh.top")).unwrap(),
            EntryAction::Whiteout {
                dir: "".into(),
                name: "top".into()
            }
        );
        assert_eq!(
            classify(Path::new("./bin/sh")).unwrap(),
            EntryAction::Unpack("bin/sh".into())
        );
        assert_eq!(classify(Path::new("./")).unwrap(), EntryAction::Skip);
    }

    #[test]
    fn escaping_paths_are_rejected() {
        assert!(classify(Path::new("../etc/passwd")).is_err());
        assert!(classify(Path::new("a/../../b")).is_err());
        assert!(classify(Path::new("/etc/passwd")).is_err());
        assert!(classify(Path::new("a/.wh..")).is_err());
    }

    #[test]
    fn chain_ids_follow_the_oci_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        let expect = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()))
        );
        assert_eq!(ids[1], expect);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn whiteout_parent_through_symlink_is_rejected() {
        let t = std::env::temp_dir().join(format!("rctl-unpack-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&t);
        fs::create_dir_all(&t).unwrap();
        std::os::unix::fs::symlink("/", t.join("evil")).unwrap();
        assert!(safe_dir(&t, Path::new("evil/etc")).is_err());
        assert!(safe_dir(&t, Path::new("ok/dir")).is_ok());
        fs::remove_dir_all(&t).unwrap();
    }
}
