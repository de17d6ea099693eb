//! Storage a container gets besides its image: bind mounts (`/SRC:DST[:ro]`), named
//! volumes (`NAME:DST[:ro]`, kept in `ROOT/volumes/NAME/_data` across container removal),
//! tmpfs mounts, and the generated /etc/hostname, /etc/hosts and /etc/resolv.conf.
//!
//! Mount targets are resolved inside the container's root: [`open_in_root`] uses openat2
//! with RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, creating missing components one at a
//! time relative to an already-resolved parent fd, and the mount goes onto
//! `/proc/self/fd/N` of the resolved target (runc's fix for CVE-2019-19921 and
//! CVE-2021-30465). A symlink in the image (`/data -> /etc`, `../../..`) therefore lands
//! inside the container, never on the host.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

/// What kind of storage a mount is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// A host path, which must exist.
    Bind,
    /// A named volume under the agent root.
    Volume,
    /// A fresh tmpfs.
    Tmpfs,
}

/// One mount as the task asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Host path (bind), volume name (volume), unused (tmpfs).
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    pub readonly: bool,
    pub kind: MountKind,
}

/// One mount ready for the container's setup: the host source resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Host path to bind; None for tmpfs.
    pub source: Option<PathBuf>,
    pub target: String,
    pub readonly: bool,
    /// The source is a file: the target is made as an empty file, not a directory.
    pub file: bool,
    /// A named volume: the agent's own storage, which a container in a user namespace
    /// sees idmapped (its root owns what the host's root owns), as Docker gives such a
    /// container volumes of its remapped root. Host bind mounts keep the host's owners.
    #[serde(default)]
    pub volume: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountError {
    #[error("bad mount {0:?}: expected SRC:DST[:ro] (SRC an absolute path or a volume name)")]
    Syntax(String),
    #[error("mount target {0:?} must be an absolute path inside the container")]
    Target(String),
    #[error("bad volume name {0:?}: letters, digits, '_', '.', '-' only")]
    VolumeName(String),
    #[error("bind source {0} does not exist")]
    NoSource(String),
    #[error("bind source {0:?} must be an absolute path")]
    RelativeSource(String),
    #[error("{step} {path}: {errno}")]
    Sys {
        step: &'static str,
        path: String,
        errno: Errno,
    },
    #[error("unknown mount kind {0:?}: expected bind, volume or tmpfs")]
    Kind(String),
    #[error("create volume {0}: {1}")]
    Volume(String, String),
}

fn valid_target(t: &str) -> bool {
    t.starts_with('/')
        && t != "/"
        && Path::new(t)
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

fn valid_volume(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses Docker's `-v` syntax: `/SRC:DST[:ro|rw]` (bind) or `NAME:DST[:ro|rw]` (volume).
pub fn parse_volume(s: &str) -> Result<MountSpec, MountError> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [src, dst] => (*src, *dst, false),
        [src, dst, "ro"] => (*src, *dst, true),
        [src, dst, "rw"] => (*src, *dst, false),
        _ => return Err(MountError::Syntax(s.to_string())),
    };
    if src.is_empty() {
        return Err(MountError::Syntax(s.to_string()));
    }
    let kind = if src.starts_with('/') {
        MountKind::Bind
    } else if src.starts_with('.') || src.contains('/') {
        return Err(MountError::RelativeSource(src.to_string()));
    } else {
        MountKind::Volume
    };
    let spec = MountSpec {
        source: src.to_string(),
        target: dst.to_string(),
        readonly: ro,
        kind,
    };
    validate(&spec)?;
    Ok(spec)
}

/// Checks a mount as given (by `-v` or by a task's fields).
pub fn validate(m: &MountSpec) -> Result<(), MountError> {
    if !valid_target(&m.target) {
        return Err(MountError::Target(m.target.clone()));
    }
    match m.kind {
        MountKind::Bind if !m.source.starts_with('/') => {
            Err(MountError::RelativeSource(m.source.clone()))
        }
        MountKind::Volume if !valid_volume(&m.source) => {
            Err(MountError::VolumeName(m.source.clone()))
        }
        _ => Ok(()),
    }
}

/// Names a container's anonymous volumes, as Docker makes them: a `volume` mount without a
/// source (`-v /data`) and each of the image's `Volumes` paths that no mount of the task
/// covers get a fresh name from `fresh` (64 hex digits in the agent). Returns the names
/// made, which belong to this container alone (`rm -v` removes them).
pub fn name_anonymous(
    mounts: &mut Vec<rctl_api::pb::Mount>,
    image_volumes: &[String],
    mut fresh: impl FnMut() -> String,
) -> Vec<String> {
    let mut made = Vec::new();
    for m in mounts.iter_mut() {
        if m.kind == "volume" && m.source.is_empty() {
            m.source = fresh();
            made.push(m.source.clone());
        }
    }
    let norm = |p: &str| p.trim_end_matches('/').to_string();
    for path in image_volumes {
        if !path.starts_with('/') || mounts.iter().any(|m| norm(&m.target) == norm(path)) {
            continue;
        }
        let name = fresh();
        mounts.push(rctl_api::pb::Mount {
            source: name.clone(),
            target: norm(path),
            readonly: false,
            kind: "volume".into(),
        });
        made.push(name);
    }
    made
}

/// A fresh anonymous volume name: 64 random hex digits, as Docker's.
pub fn anonymous_name() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Where volume `name` keeps its data under the agent root.
pub fn volume_dir(root: &Path, name: &str) -> PathBuf {
    root.join("volumes").join(name).join("_data")
}

/// Resolves the host side at create time: bind sources must exist, volumes are created.
pub fn resolve(specs: &[MountSpec], root: &Path) -> Result<Vec<Mount>, MountError> {
    specs
        .iter()
        .map(|m| {
            validate(m)?;
            let source = match m.kind {
                MountKind::Tmpfs => None,
                MountKind::Bind => {
                    let p = PathBuf::from(&m.source);
                    if std::fs::metadata(&p).is_err() {
                        return Err(MountError::NoSource(m.source.clone()));
                    }
                    Some(p)
                }
                MountKind::Volume => {
                    let d = volume_dir(root, &m.source);
                    std::fs::create_dir_all(&d)
                        .map_err(|e| MountError::Volume(m.source.clone(), e.to_string()))?;
                    Some(d)
                }
            };
            let file = source
                .as_ref()
                .and_then(|s| std::fs::metadata(s).ok())
                .is_some_and(|md| !md.is_dir());
            Ok(Mount {
                source,
                target: m.target.clone(),
                readonly: m.readonly,
                file,
                volume: m.kind == MountKind::Volume,
            })
        })
        .collect()
}

fn sys<'a>(step: &'static str, path: &'a str) -> impl FnOnce(Errno) -> MountError + 'a {
    move |errno| MountError::Sys {
        step,
        path: path.to_string(),
        errno,
    }
}

fn in_root() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// Symlinks followed while creating a path before giving up (the kernel's own limit).
const MAX_LINKS: u32 = 40;

/// Opens `path` (absolute, inside the container) under `root` as an O_PATH fd, resolving
/// every symlink as if `root` were `/`. Missing components are created (directories, and
/// the last one as an empty file when `file`), each relative to its resolved parent with
/// calls that never follow a final symlink; a dangling symlink on the way is followed
/// inside the root and its target created there.
pub fn open_in_root(root: &impl AsFd, path: &str, file: bool) -> Result<OwnedFd, MountError> {
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(in_root())
    };
    if let Ok(fd) = nix::fcntl::openat2(root.as_fd(), path, how()) {
        return Ok(fd);
    }
    let split = |p: &str| -> Vec<String> {
        p.split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_string)
            .collect()
    };
    let mut pending: std::collections::VecDeque<String> = split(path).into();
    let mut so_far = String::new();
    let mut links = 0;
    while let Some(comp) = pending.pop_front() {
        let candidate = format!("{so_far}/{comp}");
        match nix::fcntl::openat2(root.as_fd(), candidate.as_str(), how()) {
            Ok(_) => {
                so_far = candidate;
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(sys("resolve", path)(e)),
        }
        let parent = if so_far.is_empty() {
            "/"
        } else {
            so_far.as_str()
        };
        let dir = nix::fcntl::openat2(
            root.as_fd(),
            parent,
            OpenHow::new()
                .flags(OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY)
                .resolve(in_root()),
        )
        .map_err(sys("open parent of", path))?;
        if let Ok(target) = nix::fcntl::readlinkat(dir.as_fd(), comp.as_str()) {
            links += 1;
            if links > MAX_LINKS {
                return Err(sys("resolve", path)(Errno::ELOOP));
            }
            let target = target.to_string_lossy().into_owned();
            if target.starts_with('/') {
                so_far.clear();
            }
            for c in split(&target).into_iter().rev() {
                pending.push_front(c);
            }
            continue;
        }
        if comp == ".." {
            // Its parent exists (we just resolved it), so ".." cannot be missing.
            return Err(sys("resolve", path)(Errno::ENOENT));
        }
        if pending.is_empty() && file {
            let f = nix::fcntl::openat(
                dir.as_fd(),
                comp.as_str(),
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            );
            match f {
                Ok(_) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(sys("create file", path)(e)),
            }
        } else {
            match nix::sys::stat::mkdirat(
                dir.as_fd(),
                comp.as_str(),
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(sys("create dir", path)(e)),
            }
        }
        so_far = candidate;
    }
    let last = if so_far.is_empty() {
        "/"
    } else {
        so_far.as_str()
    };
    nix::fcntl::openat2(root.as_fd(), last, how()).map_err(sys("resolve", path))
}

/// Writes `data` to file `name` in directory `dir` of the root, replacing whatever is
/// there (an image's symlink included) without following it. `owner` (uid and gid) gets
/// the file: a user namespace's root, whose files these are.
pub fn write_in_root(
    rootfs: &Path,
    dir: &str,
    name: &str,
    data: &[u8],
    owner: Option<u32>,
) -> Result<(), MountError> {
    use std::io::Write;
    let root = open_root(rootfs)?;
    let d = open_in_root(&root, dir, false)?;
    let target = format!("{dir}/{name}");
    match nix::unistd::unlinkat(&d, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(sys("replace", &target)(e)),
    }
    let f = nix::fcntl::openat(
        &d,
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(sys("create", &target))?;
    if let Some(id) = owner {
        let (u, g) = (
            nix::unistd::Uid::from_raw(id),
            nix::unistd::Gid::from_raw(id),
        );
        nix::unistd::fchown(&f, Some(u), Some(g)).map_err(sys("chown", &target))?;
    }
    std::fs::File::from(f)
        .write_all(data)
        .map_err(|e| sys("write", &target)(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))
}

/// An `O_PATH` handle on the directory `rootfs`, the anchor every in-root resolution
/// starts from.
fn open_root(rootfs: &Path) -> Result<OwnedFd, MountError> {
    nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open rootfs", &rootfs.display().to_string()))
}

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Mounts `m` in the container whose root directory is `rootfs` (before pivot_root); a
/// volume is idmapped through `userns` when the container has one.
pub fn mount_in_root(rootfs: &Path, m: &Mount, userns: Option<&OwnedFd>) -> Result<(), MountError> {
    let root = open_root(rootfs)?;
    let target = open_in_root(&root, &m.target, m.file)?;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let io = |step| {
        move |e: std::io::Error| {
            sys(step, &m.target)(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        }
    };
    match (&m.source, userns) {
        (Some(src), Some(ns)) if m.volume => {
            let mnt = crate::sys::open_tree_clone(src).map_err(io("open volume"))?;
            crate::sys::idmap_mount(&mnt, ns).map_err(io("idmap volume"))?;
            crate::sys::move_mount_onto(&mnt, &target).map_err(io("mount volume onto"))?;
        }
        (Some(src), _) => mount(
            Some(src.as_path()),
            fd_path(&target).as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys("bind mount onto", &m.target))?,
        (None, _) => mount(
            Some("tmpfs"),
            fd_path(&target).as_str(),
            Some("tmpfs"),
            nosuid,
            Some("mode=1777"),
        )
        .map_err(sys("mount tmpfs onto", &m.target))?,
    }
    if m.readonly {
        // The old fd names the covered directory: resolve again to reach the new mount.
        let target = open_in_root(&root, &m.target, m.file)?;
        mount(
            None::<&str>,
            fd_path(&target).as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid,
            None::<&str>,
        )
        .map_err(sys("make read-only", &m.target))?;
    }
    Ok(())
}

/// Changes to `dir` (made if missing, as Docker does), resolved inside the current root
/// with no magic links.
pub fn chdir_in_root(dir: &str) -> Result<(), MountError> {
    let root = open_root(Path::new("/"))?;
    let abs = if dir.starts_with('/') {
        dir.to_string()
    } else {
        format!("/{dir}")
    };
    let fd = open_in_root(&root, &abs, false).map_err(|e| match e {
        MountError::Sys { errno, .. } => MountError::Sys {
            step: "resolve working dir",
            path: abs.clone(),
            errno,
        },
        e => e,
    })?;
    nix::unistd::fchdir(&fd).map_err(sys("chdir working dir", &abs))
}

/// Changes into the existing directory `dir` of the root (inside the container), resolved
/// as if the root were `/`. Unlike [`chdir_in_root`] it creates nothing: `exec -w` names a
/// directory the command runs in, and Docker fails when it is missing.
pub fn chdir_existing_in_root(dir: &str) -> Result<(), MountError> {
    let root = open_root(Path::new("/"))?;
    let abs = if dir.starts_with('/') {
        dir.to_string()
    } else {
        format!("/{dir}")
    };
    let fd = nix::fcntl::openat2(
        root.as_fd(),
        abs.as_str(),
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(in_root()),
    )
    .map_err(sys("working directory", &abs))?;
    nix::unistd::fchdir(&fd).map_err(sys("chdir working dir", &abs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_volumes_are_named_for_dash_v_paths_and_uncovered_image_volumes() {
        let m = |source: &str, target: &str, kind: &str| rctl_api::pb::Mount {
            source: source.into(),
            target: target.into(),
            readonly: false,
            kind: kind.into(),
        };
        let mut mounts = vec![
            m("", "/data", "volume"),
            m("keep", "/keep", "volume"),
            m("/srv", "/srv", "bind"),
        ];
        let image = ["/data/".to_string(), "/cache".into(), "/srv".into()];
        let mut n = 0;
        let made = name_anonymous(&mut mounts, &image, || {
            n += 1;
            format!("v{n}")
        });
        // -v /data is named; the image's /data and /srv are covered; /cache gets its own.
        assert_eq!(made, ["v1", "v2"]);
        assert_eq!(mounts[0].source, "v1");
        assert_eq!(mounts[1].source, "keep", "a named volume is left as it is");
        assert_eq!(mounts[3], m("v2", "/cache", "volume"));
        assert_eq!(mounts.len(), 4);
        let name = anonymous_name();
        assert!(name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(valid_volume(&name));
    }

    #[test]
    fn volume_syntax_is_dockers() {
        let b = parse_volume("/srv/data:/data:ro").unwrap();
        assert_eq!(
            b,
            MountSpec {
                source: "/srv/data".into(),
                target: "/data".into(),
                readonly: true,
                kind: MountKind::Bind
            }
        );
        let v = parse_volume("pgdata:/var/lib/pg").unwrap();
        assert_eq!((v.kind, v.readonly), (MountKind::Volume, false));
        assert!(!parse_volume("/a:/b:rw").unwrap().readonly);
    }

    #[test]
    fn bad_mounts_are_refused() {
        for bad in ["", "/a", "/a:/b:xx", ":/b", "/a:/b:ro:x"] {
            assert!(
                matches!(parse_volume(bad), Err(MountError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(parse_volume("/a:b"), Err(MountError::Target(_))));
        assert!(matches!(parse_volume("/a:/"), Err(MountError::Target(_))));
        assert!(matches!(
            parse_volume("/a:/x/../etc"),
            Err(MountError::Target(_))
        ));
        assert!(matches!(
            parse_volume("./a:/b"),
            Err(MountError::RelativeSource(_))
        ));
        assert!(matches!(
            parse_volume("a/b:/b"),
            Err(MountError::RelativeSource(_))
        ));
        let v = MountSpec {
            source: "bad name".into(),
            target: "/x".into(),
            readonly: false,
            kind: MountKind::Volume,
        };
        assert!(matches!(validate(&v), Err(MountError::VolumeName(_))));
    }

    #[test]
    fn missing_bind_source_is_an_error_and_volumes_are_made() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = MountSpec {
            source: tmp.path().join("nope").display().to_string(),
            target: "/x".into(),
            readonly: false,
            kind: MountKind::Bind,
        };
        assert!(matches!(
            resolve(&[missing], tmp.path()),
            Err(MountError::NoSource(_))
        ));
        let vol = MountSpec {
            source: "v1".into(),
            target: "/v".into(),
            readonly: true,
            kind: MountKind::Volume,
        };
        let r = resolve(&[vol], tmp.path()).unwrap();
        assert_eq!(
            r[0].source.as_deref(),
            Some(volume_dir(tmp.path(), "v1").as_path())
        );
        assert!(volume_dir(tmp.path(), "v1").is_dir());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // Absolute, relative-escaping and chained symlinks.
        std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../outside", root.join("rel")).unwrap();
        let rfd =
            nix::fcntl::open(&root, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        for p in ["/abs/x", "/rel/y/z"] {
            open_in_root(&rfd, p, false).unwrap();
        }
        open_in_root(&rfd, "/rel/f", true).unwrap();
        // Dangling links are followed inside the root and their targets created there.
        std::os::unix::fs::symlink(outside.join("dangling"), root.join("dabs")).unwrap();
        std::os::unix::fs::symlink("../../gone/deeper", root.join("drel")).unwrap();
        open_in_root(&rfd, "/dabs/q", false).unwrap();
        open_in_root(&rfd, "/drel", true).unwrap();
        assert!(root
            .join(outside.strip_prefix("/").unwrap())
            .join("dangling/q")
            .is_dir());
        assert!(root.join("gone/deeper").is_file());
        // A loop ends with ELOOP, not a hang.
        std::os::unix::fs::symlink("/loop", root.join("loop")).unwrap();
        assert!(open_in_root(&rfd, "/loop/x", false).is_err());
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing made outside"
        );
        // The absolute link resolves to ROOT/<outside's path>, the relative one to ROOT/outside.
        assert!(root
            .join(outside.strip_prefix("/").unwrap())
            .join("x")
            .is_dir());
        assert!(root.join("outside/y/z").is_dir());
        assert!(root.join("outside/f").is_file());
    }
}
