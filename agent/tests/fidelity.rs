//! Unpack fidelity against a reference tool: an image built by Debian's `umoci` from a
//! rootfs with whiteouts, an opaque dir, hard links, symlinks, a setuid file, a fifo,
//! xattrs and files owned by other users is pushed to a real registry with `skopeo`,
//! pulled by the agent's image store, and the overlayfs view of its layers must equal
//! `umoci unpack`'s rootfs: paths, types, modes, owners, sizes, contents, link targets,
//! hard-link groups, mtimes and user xattrs. Runs as root (ownership, overlayfs, trusted
//! xattrs).

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, TestRegistry};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use rctl_agent::image::ImageStore;
use sha2::{Digest, Sha256};

/// What the comparison looks at for one path.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Size and sha256 of regular files.
    content: Option<(u64, String)>,
    link: Option<PathBuf>,
    /// Non-directories only: a merged overlay directory shows its top layer's mtime.
    mtime: Option<(i64, i64)>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn walk(root: &Path) -> (BTreeMap<PathBuf, Node>, Vec<Vec<PathBuf>>) {
    let mut nodes = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let ft = m.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "char"
        } else {
            "other"
        };
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else {
            inodes.entry(m.ino()).or_default().push(rel.clone());
        }
        let content = ft.is_file().then(|| {
            let data = std::fs::read(&p).unwrap();
            (m.len(), hex::encode(Sha256::digest(&data)))
        });
        nodes.insert(
            rel,
            Node {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                content,
                link: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
                mtime: (!ft.is_dir()).then(|| (m.mtime(), m.mtime_nsec())),
                xattrs: user_xattrs(&p),
            },
        );
    }
    let mut groups: Vec<Vec<PathBuf>> = inodes
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    groups.sort();
    (nodes, groups)
}

fn user_xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: c is a valid NUL-terminated path and names has names.len() writable bytes.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        if !name.starts_with(b"user.") {
            continue;
        }
        let cn = CString::new(name).unwrap();
        let mut val = vec![0u8; 4096];
        // SAFETY: both strings are valid NUL-terminated C strings; val has val.len() bytes.
        let len =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        assert!(len >= 0, "lgetxattr {p:?}");
        val.truncate(len as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), val);
    }
    out
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: both strings are valid NUL-terminated C strings; value has value.len() bytes.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "lsetxattr {p:?}: {}",
        std::io::Error::last_os_error()
    );
}

fn write(p: &Path, data: &[u8], mode: u32, owner: (u32, u32)) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
    std::os::unix::fs::chown(p, Some(owner.0), Some(owner.1)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mtime(p: &Path, secs: i64, nanos: i64) {
    let t = TimeSpec::new(secs, nanos);
    utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// Unmounts the merged view even when the test fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// umoci's third layer: what umoci never writes itself (an opaque dir), hand-made.
fn opaque_layer(path: &Path) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o711);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    b.append_data(&mut h, "opq/", &[][..]).unwrap();
    for (name, data) in [
        (".wh..wh..opq", &b""[..]),
        ("fresh", &b"new in layer 3\n"[..]),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_001);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, format!("opq/{name}"), data).unwrap();
    }
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_unpack_equals_umoci_unpack() {
    common::install_crypto();
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let layout = w.join("oci");
    let image = format!("{}:fid", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    let bundle = w.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");

    // Layer 1: every kind of entry and metadata.
    write(&rootfs.join("etc/hostname"), b"rctl\n", 0o644, (0, 0));
    set_xattr(&rootfs.join("etc/hostname"), "user.rctl.note", b"fidelity");
    write(
        &rootfs.join("usr/bin/su"),
        b"#!/bin/sh\necho su\n",
        0o4755,
        (0, 0),
    );
    std::fs::hard_link(rootfs.join("usr/bin/su"), rootfs.join("usr/bin/su-again")).unwrap();
    write(
        &rootfs.join("home/alice/notes"),
        b"alice's\n",
        0o640,
        (1000, 1001),
    );
    std::os::unix::fs::chown(rootfs.join("home/alice"), Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(
        rootfs.join("home/alice"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    write(&rootfs.join("srv/share"), b"shared\n", 0o2775, (65534, 50));
    std::os::unix::fs::symlink("usr/bin", rootfs.join("bin")).unwrap();
    std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", rootfs.join("etc/localtime")).unwrap();
    nix::unistd::mkfifo(
        &rootfs.join("srv/pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o620),
    )
    .unwrap();
    write(
        &rootfs.join("gone/file"),
        b"deleted in layer 2\n",
        0o644,
        (0, 0),
    );
    write(
        &rootfs.join("opq/old"),
        b"hidden by layer 3\n",
        0o644,
        (0, 0),
    );
    write(&rootfs.join("var/lib/data"), b"v1\n", 0o600, (0, 0));
    set_mtime(&rootfs.join("usr/bin/su"), 1_600_000_000, 123_000_000);
    run(Command::new("umoci")
        .args(["repack", "--refresh-bundle", "--image", &image])
        .arg(&bundle));

    // Layer 2: deletions (umoci writes .wh. whiteouts), a changed file, a changed mode.
    std::fs::remove_dir_all(rootfs.join("gone")).unwrap();
    std::fs::remove_file(rootfs.join("etc/localtime")).unwrap();
    write(
        &rootfs.join("var/lib/data"),
        b"version two\n",
        0o640,
        (0, 42),
    );
    std::fs::set_permissions(
        rootfs.join("usr/bin/su"),
        std::fs::Permissions::from_mode(0o4711),
    )
    .unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));

    // Layer 3: an opaque dir.
    let l3 = w.join("l3.tar");
    opaque_layer(&l3);
    run(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &image])
        .arg(&l3));

    let reference = w.join("reference");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&reference));
    let dest = format!("docker://{}/fidelity:1", registry.host());
    run(Command::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{image}"),
        &dest,
    ]));

    let store = ImageStore::new(&w.join("agent"), vec![registry.host()]);
    let img = store
        .ensure(&format!("{}/fidelity:1", registry.host()))
        .await
        .unwrap();
    assert_eq!(img.layers.len(), 3);
    let merged = w.join("merged");
    std::fs::create_dir(&merged).unwrap();
    let lower: Vec<String> = img
        .layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(format!("lowerdir={}", lower.join(":")).as_str()),
    )
    .unwrap();
    let _mounted = Mounted(merged.clone());

    let (want, want_links) = walk(&reference.join("rootfs"));
    let (got, got_links) = walk(&merged);
    let names = |m: &BTreeMap<PathBuf, Node>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want), "paths differ");
    for (path, node) in &want {
        assert_eq!(&got[path], node, "{path:?} differs");
    }
    assert_eq!(got_links, want_links, "hard-link groups differ");
    // The scenario really exercised what it claims to.
    assert!(!want.contains_key(Path::new("gone")));
    assert!(!want.contains_key(Path::new("opq/old")));
    assert_eq!(want[Path::new("usr/bin/su")].mode, 0o4711);
    assert_eq!(want_links.len(), 1);
    assert_eq!(want[Path::new("srv/pipe")].kind, "fifo");
    assert_eq!(want[Path::new("home/alice/notes")].uid, 1000);
    assert_eq!(
        want[Path::new("etc/hostname")].xattrs.get("user.rctl.note"),
        Some(&b"fidelity".to_vec())
    );
    assert_eq!(
        want[Path::new("opq/fresh")].content.as_ref().map(|c| c.0),
        Some(15)
    );
}
