//! Layer unpacking: a (gzip, zstd or plain) tar layer becomes a directory that overlayfs can
//! stack, and a hostile layer cannot write anything outside it.
//!
//! Vocabulary: a layer's *diff id* is the sha256 of its uncompressed tar; its *chain id*
//! identifies the layer together with everything below it (OCI image spec, "ChainID"), so
//! two images that share a base share the unpacked directory `layers/<chain-id-hex>/`.
//! OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) are converted to overlayfs' own form.
//!
//! # Safety model
//! Every entry is created with `*at` syscalls relative to a directory fd obtained with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from the layer root, and its final
//! component is never followed. So `..`, absolute paths, parents that are symlinks (made by
//! an earlier entry) and hard links to anything outside the layer fail with a named reason
//! instead of being "cleaned". Layers are unpacked into a temp dir and renamed into place
//! only when complete and matching their diff id; [`Limits`] bound what one layer may cost.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmodat, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag};
use nix::sys::stat::{fstatat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
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
    #[error("layer exceeds the limit of {limit} {what}")]
    Limit { what: &'static str, limit: u64 },
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
    #[error("cannot start the zstd decoder")]
    Compression,
}

/// What one layer may cost. Decompression bombs are bounded by `max_ratio` (uncompressed
/// bytes per compressed byte, above `ratio_floor`) as well as by `max_bytes`, so a 10 MB blob
/// cannot expand to 10 GB while an honest large layer still fits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Uncompressed tar bytes, whatever the compression.
    pub max_bytes: u64,
    /// Uncompressed bytes allowed per compressed byte...
    pub max_ratio: u64,
    /// ...once the layer is past this many uncompressed bytes.
    pub ratio_floor: u64,
    /// Tar entries (files, dirs, links, whiteouts): bounds inode use.
    pub max_entries: u64,
    /// Whether character and block devices may be created (never needed by app images).
    pub allow_devices: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 30,
            max_ratio: 100,
            ratio_floor: 1 << 30,
            max_entries: 250_000,
            allow_devices: false,
        }
    }
}

impl Limits {
    /// Uncompressed bytes a layer whose blob is `compressed` bytes may expand to.
    pub fn max_uncompressed(&self, compressed: u64) -> u64 {
        compressed
            .saturating_mul(self.max_ratio)
            .max(self.ratio_floor)
            .min(self.max_bytes)
    }
}

/// Reads the chunks a download passes on (see `content::Tap`) as one stream; an error
/// chunk becomes a read error, and the end of the channel the end of the stream.
pub struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
    cur: bytes::Bytes,
}

impl ChunkReader {
    pub fn new(rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>) -> Self {
        Self {
            rx,
            cur: bytes::Bytes::new(),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        bytes::Buf::advance(&mut self.cur, n);
        Ok(n)
    }
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

/// Which extended attributes from a layer are applied. `trusted.overlay.*` would let a
/// layer forge overlayfs metadata (redirects, opacity) for the merged view, so a layer that
/// carries one is refused; other `trusted.*` names are host-private and dropped.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrAction {
    Apply,
    Drop,
    Reject,
}

pub fn classify_xattr(name: &str) -> XattrAction {
    if name.starts_with("trusted.overlay.") {
        XattrAction::Reject
    } else if name.starts_with("trusted.") {
        XattrAction::Drop
    } else {
        XattrAction::Apply
    }
}

/// Whether `dir` is marked opaque for overlayfs (it hides lower layers' contents).
pub fn is_opaque(dir: &Path) -> bool {
    crate::sys::lgetxattr(dir, "trusted.overlay.opaque").is_ok_and(|v| v == b"y")
}

/// Counts and hashes what passes through, to check the diff id after unpacking and to stop
/// a decompression bomb as soon as it passes its budget.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other(BombError));
        }
        Ok(n)
    }
}

/// Marks the read error [`HashingReader`] returns when the byte budget is spent.
#[derive(Debug)]
struct BombError;

impl std::fmt::Display for BombError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("uncompressed size limit reached")
    }
}

impl std::error::Error for BombError {}

/// Maps a read error to [`UnpackError::Limit`] when it is the byte budget running out.
fn read_error(e: io::Error, limit: u64) -> UnpackError {
    if e.get_ref().is_some_and(|i| i.is::<BombError>()) {
        UnpackError::Limit {
            what: "uncompressed bytes",
            limit,
        }
    } else {
        UnpackError::Read(e)
    }
}

/// Unpacks the layer blob at `blob` into `dest` (which must not exist yet), checking the
/// uncompressed content against `diff_id`. Works in a sibling temp dir and renames it into
/// place at the end, so a failure never leaves a partial layer at `dest`.
pub fn unpack_layer(
    blob: &Path,
    diff_id: &str,
    dest: &Path,
    limits: &Limits,
) -> Result<(), UnpackError> {
    let open = |path: &Path| {
        fs::File::open(path).map_err(|source| UnpackError::Open {
            path: path.to_path_buf(),
            source,
        })
    };
    let file = open(blob)?;
    let compressed = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    unpack_stream(io::BufReader::new(file), compressed, diff_id, dest, limits)
}

/// [`unpack_layer`] from a stream of `compressed` bytes (the blob's size from its
/// descriptor), so a layer can be unpacked while it downloads.
pub fn unpack_stream<R: io::BufRead>(
    mut blob: R,
    compressed: u64,
    diff_id: &str,
    dest: &Path,
    limits: &Limits,
) -> Result<(), UnpackError> {
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let tmp = parent.join(format!(
        ".tmp-{}-{:08x}",
        dest.file_name().unwrap_or_default().to_string_lossy(),
        rand::random::<u32>()
    ));
    let res = fs::DirBuilder::new()
        .mode(0o755)
        .create(&tmp)
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)))
        .map_err(|source| UnpackError::Commit {
            path: tmp.clone(),
            source,
        })
        .and_then(|()| {
            let magic = blob.fill_buf().map_err(UnpackError::Read)?;
            let reader: Box<dyn Read + '_> = match magic {
                [0x1f, 0x8b, ..] => Box::new(flate2::bufread::MultiGzDecoder::new(&mut blob)),
                [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(
                    zstd::stream::read::Decoder::with_buffer(&mut blob)
                        .map_err(|_| UnpackError::Compression)?,
                ),
                _ => Box::new(&mut blob),
            };
            unpack_checked(reader, compressed, diff_id, &tmp, limits)
        })
        .and_then(|()| match fs::rename(&tmp, dest) {
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
        });
    if res.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    res
}

fn unpack_checked(
    reader: impl Read,
    compressed: u64,
    diff_id: &str,
    dir: &Path,
    limits: &Limits,
) -> Result<(), UnpackError> {
    let limit = limits.max_uncompressed(compressed);
    let mut hashing = HashingReader {
        inner: reader,
        hash: Sha256::new(),
        read: 0,
        limit,
    };
    unpack_tar_limited(&mut hashing, dir, limits, limit)?;
    // Tar's end-of-archive padding is part of the diff id too.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| read_error(e, limit))?;
    let actual = format!("sha256:{}", hex::encode(hashing.hash.finalize()));
    if actual != diff_id {
        return Err(UnpackError::DiffIdMismatch {
            expected: diff_id.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Unpacks an uncompressed tar stream into the existing directory `dir`, converting
/// whiteouts and rejecting escaping entries. Stops at `limits` (the byte budget is
/// `limits.max_bytes`: the stream's compressed size is unknown here).
pub fn unpack_tar<R: Read>(reader: R, dir: &Path, limits: &Limits) -> Result<(), UnpackError> {
    unpack_tar_limited(reader, dir, limits, limits.max_bytes)
}

fn unpack_tar_limited<R: Read>(
    reader: R,
    dir: &Path,
    limits: &Limits,
    max_bytes: u64,
) -> Result<(), UnpackError> {
    let root = nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Open {
        path: dir.to_path_buf(),
        source: e.into(),
    })?;
    let mut tree = Tree { root, cached: None };
    let mut archive = tar::Archive::new(reader);
    let (mut entries, mut declared) = (0u64, 0u64);
    // Directory mtimes are set last: creating their children would change them again.
    let mut dir_times: Vec<(PathBuf, TimeSpec)> = Vec::new();
    let mut root_time = None;
    let iter = archive.entries().map_err(|e| read_error(e, max_bytes))?;
    for entry in iter {
        let mut entry = entry.map_err(|e| read_error(e, max_bytes))?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(UnpackError::Limit {
                what: "entries",
                limit: limits.max_entries,
            });
        }
        // Refuse a bomb from its header, before writing a byte of it.
        declared = declared.saturating_add(entry.size());
        if declared > max_bytes {
            return Err(UnpackError::Limit {
                what: "uncompressed bytes",
                limit: max_bytes,
            });
        }
        let raw = entry
            .path()
            .map_err(|e| read_error(e, max_bytes))?
            .into_owned();
        let shown = raw.to_string_lossy().into_owned();
        let unsafe_entry = |reason| UnpackError::Unsafe {
            entry: shown.clone(),
            reason,
        };
        let failed = |source: io::Error| UnpackError::Entry {
            entry: shown.clone(),
            source,
        };
        match classify(&raw).map_err(unsafe_entry)? {
            EntryAction::Skip => {
                // The root's metadata becomes the merged root's when this layer is on top.
                if entry.header().entry_type().is_dir() {
                    let meta = Meta::of(&mut entry).map_err(|e| read_error(e, max_bytes))?;
                    let parent = nix::fcntl::open(
                        dir.parent().unwrap_or(Path::new("/")),
                        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| failed(e.into()))?;
                    let name = dir.file_name().unwrap_or_default();
                    let no_xattrs = Meta {
                        xattrs: Vec::new(),
                        ..meta
                    };
                    no_xattrs
                        .apply(parent.as_fd(), name, dir, tar::EntryType::Directory)
                        .map_err(failed)?;
                    root_time = Some(no_xattrs.mtime);
                }
            }
            EntryAction::Opaque { dir: rel } => {
                tree.dir(&rel).map_err(unsafe_entry)?;
                let path = dir.join(&rel);
                crate::sys::lsetxattr(&path, "trusted.overlay.opaque", b"y").map_err(failed)?;
            }
            EntryAction::Whiteout { dir: rel, name } => {
                let parent = tree.dir(&rel).map_err(unsafe_entry)?;
                clear(parent, &dir.join(&rel).join(&name), name.as_ref(), false).map_err(failed)?;
                mknodat(parent, name.as_str(), SFlag::S_IFCHR, Mode::empty(), 0)
                    .map_err(|e| failed(e.into()))?;
            }
            EntryAction::Unpack(rel) => {
                let meta = Meta::of(&mut entry).map_err(|e| read_error(e, max_bytes))?;
                if meta
                    .xattrs
                    .iter()
                    .any(|(k, _)| classify_xattr(k) == XattrAction::Reject)
                {
                    return Err(unsafe_entry("sets an overlayfs xattr"));
                }
                let kind = entry.header().entry_type();
                let dir_rel = rel.parent().unwrap_or(Path::new(""));
                let name = rel.file_name().unwrap_or_default().to_owned();
                if kind.is_hard_link() {
                    let target = match entry.link_name().map_err(|e| read_error(e, max_bytes))? {
                        Some(t) => match classify(&t).map_err(unsafe_entry)? {
                            EntryAction::Unpack(t) => t,
                            _ => return Err(unsafe_entry("links to a whiteout or the root")),
                        },
                        None => return Err(unsafe_entry("is a hard link without a target")),
                    };
                    let tparent = tree
                        .lookup(target.parent().unwrap_or(Path::new("")))
                        .map_err(unsafe_entry)?;
                    let tname = target.file_name().unwrap_or_default().to_owned();
                    let parent = tree.dir(dir_rel).map_err(unsafe_entry)?;
                    clear(parent, &dir.join(&rel), &name, false).map_err(failed)?;
                    // Flags 0: a link to a symlink links the symlink itself, never its target.
                    linkat(
                        &tparent,
                        tname.as_os_str(),
                        parent,
                        name.as_os_str(),
                        nix::fcntl::AtFlags::empty(),
                    )
                    .map_err(|e| match e {
                        Errno::ENOENT => unsafe_entry("links to a file not in this layer"),
                        Errno::EPERM => unsafe_entry("links to a directory"),
                        e => failed(e.into()),
                    })?;
                    continue;
                }
                let parent = tree.dir(dir_rel).map_err(unsafe_entry)?;
                let is_dir = kind.is_dir();
                clear(parent, &dir.join(&rel), &name, is_dir).map_err(failed)?;
                let name = name.as_os_str();
                match kind {
                    tar::EntryType::Directory => {
                        match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
                            Ok(()) | Err(Errno::EEXIST) => {}
                            Err(e) => return Err(failed(e.into())),
                        }
                    }
                    tar::EntryType::Regular
                    | tar::EntryType::Continuous
                    | tar::EntryType::GNUSparse => {
                        let fd = nix::fcntl::openat(
                            parent,
                            name,
                            OFlag::O_WRONLY
                                | OFlag::O_CREAT
                                | OFlag::O_EXCL
                                | OFlag::O_NOFOLLOW
                                | OFlag::O_CLOEXEC,
                            Mode::from_bits_truncate(0o600),
                        )
                        .map_err(|e| failed(e.into()))?;
                        let mut file = fs::File::from(fd);
                        io::copy(&mut entry, &mut file).map_err(|e| {
                            match read_error(e, max_bytes) {
                                UnpackError::Read(e) => failed(e),
                                other => other,
                            }
                        })?;
                    }
                    tar::EntryType::Symlink => {
                        let target = entry
                            .link_name()
                            .map_err(|e| read_error(e, max_bytes))?
                            .ok_or_else(|| unsafe_entry("is a symlink without a target"))?;
                        // The target is resolved in the container's root at run time, where
                        // any value is harmless; here it is never followed.
                        symlinkat(target.as_ref(), parent, name).map_err(|e| failed(e.into()))?;
                    }
                    tar::EntryType::Fifo => {
                        mknodat(
                            parent,
                            name,
                            SFlag::S_IFIFO,
                            Mode::from_bits_truncate(0o600),
                            0,
                        )
                        .map_err(|e| failed(e.into()))?;
                    }
                    tar::EntryType::Char | tar::EntryType::Block => {
                        if !limits.allow_devices {
                            return Err(unsafe_entry("is a device node (not allowed)"));
                        }
                        let h = entry.header();
                        let (major, minor) = (
                            h.device_major().ok().flatten().unwrap_or(0),
                            h.device_minor().ok().flatten().unwrap_or(0),
                        );
                        let sflag = if kind == tar::EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        mknodat(
                            parent,
                            name,
                            sflag,
                            Mode::from_bits_truncate(0o600),
                            nix::sys::stat::makedev(major.into(), minor.into()),
                        )
                        .map_err(|e| failed(e.into()))?;
                    }
                    _ => return Err(unsafe_entry("has an unsupported tar entry type")),
                }
                meta.apply(parent, name, &dir.join(&rel), kind)
                    .map_err(failed)?;
                if is_dir {
                    dir_times.push((rel, meta.mtime));
                }
            }
        }
    }
    for (rel, mtime) in dir_times.iter().rev() {
        let (dir_rel, name) = (
            rel.parent().unwrap_or(Path::new("")),
            rel.file_name().unwrap_or_default(),
        );
        let parent = tree.dir(dir_rel).map_err(|reason| UnpackError::Unsafe {
            entry: rel.to_string_lossy().into_owned(),
            reason,
        })?;
        utimensat(parent, name, mtime, mtime, UtimensatFlags::NoFollowSymlink).map_err(|e| {
            UnpackError::Entry {
                entry: rel.to_string_lossy().into_owned(),
                source: e.into(),
            }
        })?;
    }
    if let Some(t) = root_time {
        utimensat(
            nix::fcntl::AT_FDCWD,
            dir,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| UnpackError::Entry {
            entry: "./".into(),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// Ownership, mode, mtime and xattrs of one entry, with PAX records taking precedence over
/// the ustar header (large ids, sub-second times).
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: TimeSpec,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    fn of<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
        let h = entry.header();
        let raw = h.as_old();
        let mut m = Meta {
            uid: numeric(&raw.uid, h.uid())? as u32,
            gid: numeric(&raw.gid, h.gid())? as u32,
            mode: numeric(&raw.mode, h.mode().map(u64::from))? as u32 & 0o7777,
            mtime: TimeSpec::new(numeric(&raw.mtime, h.mtime())? as i64, 0),
            xattrs: Vec::new(),
        };
        if let Some(pax) = entry.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let text = std::str::from_utf8(value).unwrap_or("");
                match key {
                    "uid" => m.uid = text.parse().unwrap_or(m.uid),
                    "gid" => m.gid = text.parse().unwrap_or(m.gid),
                    "mtime" => {
                        if let Some(t) = parse_pax_time(text) {
                            m.mtime = t;
                        }
                    }
                    k => {
                        if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                            m.xattrs.push((name.to_string(), value.to_vec()));
                        }
                    }
                }
            }
        }
        Ok(m)
    }

    /// Applies ownership, then mode (chown clears setuid), xattrs and mtime to `name` in
    /// `parent` (`path` is the same file, for the xattr calls that only take a path).
    fn apply(
        &self,
        parent: BorrowedFd<'_>,
        name: &std::ffi::OsStr,
        path: &Path,
        kind: tar::EntryType,
    ) -> io::Result<()> {
        fchownat(
            parent,
            name,
            Some(Uid::from_raw(self.uid)),
            Some(Gid::from_raw(self.gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        if !kind.is_symlink() {
            // The entry was just created by us in a tree only we write to: not a symlink.
            fchmodat(
                parent,
                name,
                Mode::from_bits_truncate(self.mode),
                FchmodatFlags::FollowSymlink,
            )?;
        }
        for (k, v) in &self.xattrs {
            if classify_xattr(k) != XattrAction::Apply {
                continue;
            }
            match crate::sys::lsetxattr(path, k, v) {
                // Filesystems without xattr support (or user.* on symlinks) lose them, as
                // with every other unpacker.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                Err(e) if e.raw_os_error() == Some(libc::EPERM) && kind.is_symlink() => {}
                r => r?,
            }
        }
        if !kind.is_dir() {
            utimensat(
                parent,
                name,
                &self.mtime,
                &self.mtime,
                UtimensatFlags::NoFollowSymlink,
            )?;
        }
        Ok(())
    }
}

/// A numeric header field, where an empty one (all NULs or spaces, as some writers leave
/// uid and gid) reads as 0 the way Go's archive/tar, and so docker, reads it.
fn numeric(field: &[u8], parsed: io::Result<u64>) -> io::Result<u64> {
    if field.iter().all(|b| *b == 0 || *b == b' ') {
        return Ok(0);
    }
    parsed
}

/// A PAX time (`1700000000.123456789`) as a timespec.
fn parse_pax_time(s: &str) -> Option<TimeSpec> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos: i64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some(TimeSpec::new(secs, nanos))
}

/// Removes what is at `name` in `parent` before an entry replaces it (tars may name a path
/// twice: the last entry wins), except a directory that a directory entry keeps.
fn clear(
    parent: BorrowedFd<'_>,
    path: &Path,
    name: &std::ffi::OsStr,
    keep_dir: bool,
) -> io::Result<()> {
    match fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
            if keep_dir {
                Ok(())
            } else {
                // `path` has no symlinked parent (the caller resolved it) and std's
                // remove_dir_all does not follow symlinks inside it.
                fs::remove_dir_all(path)
            }
        }
        Ok(_) => unlinkat(parent, name, UnlinkatFlags::NoRemoveDir).map_err(Into::into),
    }
}

/// The layer being unpacked, with the fd of the last directory entries went into (tars list
/// a directory's entries together).
struct Tree {
    root: OwnedFd,
    cached: Option<(PathBuf, OwnedFd)>,
}

const BENEATH: ResolveFlag = ResolveFlag::RESOLVE_BENEATH.union(ResolveFlag::RESOLVE_NO_SYMLINKS);

fn open_dir_beneath(at: impl AsFd, rel: &Path) -> Result<OwnedFd, Errno> {
    openat2(
        at,
        rel,
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(BENEATH),
    )
}

fn resolve_reason(e: Errno) -> &'static str {
    match e {
        Errno::ELOOP => "goes through a symlink",
        Errno::ENOTDIR => "goes through a non-directory",
        Errno::EXDEV => "escapes the layer directory",
        Errno::ENOENT => "has a missing parent",
        _ => "has an unopenable parent",
    }
}

impl Tree {
    /// The directory `rel` (relative to the root), created with its missing parents; it
    /// must not be or pass through a symlink.
    fn dir(&mut self, rel: &Path) -> Result<BorrowedFd<'_>, &'static str> {
        if rel.as_os_str().is_empty() {
            return Ok(self.root.as_fd());
        }
        if self.cached.as_ref().is_none_or(|(p, _)| p != rel) {
            let fd = match open_dir_beneath(&self.root, rel) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => self.create(rel)?,
                Err(e) => return Err(resolve_reason(e)),
            };
            self.cached = Some((rel.to_path_buf(), fd));
        }
        Ok(self
            .cached
            .as_ref()
            .map(|(_, fd)| fd.as_fd())
            .unwrap_or(self.root.as_fd()))
    }

    /// The existing directory `rel`, without creating anything (hard link targets).
    fn lookup(&self, rel: &Path) -> Result<OwnedFd, &'static str> {
        if rel.as_os_str().is_empty() {
            return self
                .root
                .try_clone()
                .map_err(|_| "has an unopenable parent");
        }
        open_dir_beneath(&self.root, rel).map_err(|e| match e {
            Errno::ENOENT => "links to a file not in this layer",
            e => resolve_reason(e),
        })
    }

    fn create(&self, rel: &Path) -> Result<OwnedFd, &'static str> {
        let mut cur = self
            .root
            .try_clone()
            .map_err(|_| "has an unopenable parent")?;
        for c in rel.components() {
            let c = c.as_os_str();
            let next = match open_dir_beneath(&cur, Path::new(c)) {
                Err(Errno::ENOENT) => {
                    match mkdirat(&cur, c, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(_) => return Err("has an uncreatable parent"),
                    }
                    open_dir_beneath(&cur, Path::new(c))
                }
                r => r,
            };
            cur = next.map_err(resolve_reason)?;
        }
        Ok(cur)
    }
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
    fn overlay_xattrs_are_refused_and_trusted_dropped() {
        assert_eq!(
            classify_xattr("trusted.overlay.redirect"),
            XattrAction::Reject
        );
        assert_eq!(classify_xattr("trusted.foo"), XattrAction::Drop);
        assert_eq!(classify_xattr("user.mime"), XattrAction::Apply);
        assert_eq!(classify_xattr("security.capability"), XattrAction::Apply);
    }

    #[test]
    fn bomb_budget_scales_with_the_blob_but_stays_bounded() {
        let l = Limits::default();
        assert_eq!(l.max_uncompressed(1 << 20), 1 << 30);
        assert_eq!(l.max_uncompressed(100 << 20), 10_000 << 20);
        assert_eq!(l.max_uncompressed(u64::MAX), 64 << 30);
    }

    #[test]
    fn empty_numeric_fields_read_as_zero() {
        assert_eq!(numeric(&[0; 8], Err(io::Error::other("x"))).unwrap(), 0);
        assert_eq!(
            numeric(b"       \0", Err(io::Error::other("x"))).unwrap(),
            0
        );
        assert!(numeric(b"zz\0\0\0\0\0\0", Err(io::Error::other("x"))).is_err());
        assert_eq!(numeric(b"0000017\0", Ok(15)).unwrap(), 15);
    }

    #[test]
    fn pax_times_keep_nanoseconds() {
        assert_eq!(parse_pax_time("12.5"), Some(TimeSpec::new(12, 500_000_000)));
        assert_eq!(parse_pax_time("12"), Some(TimeSpec::new(12, 0)));
        assert_eq!(parse_pax_time("x"), None);
    }
}
