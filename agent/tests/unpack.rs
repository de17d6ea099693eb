//! Unpacks hand-made layers into a temp dir (as root: ownership, device nodes and trusted
//! xattrs need it) and checks overlayfs-ready results and escape rejection.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
mod common;

use std::path::Path;

use rctl_agent::image::unpack::{unpack_tar, Limits};

use common::header;

fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn add(b: &mut tar::Builder<Vec<u8>>, mut h: tar::Header, data: &[u8]) {
    h.set_cksum();
    b.append(&h, data).unwrap();
}

#[test]
fn layer_unpacks_with_whiteouts_links_and_ownership() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let tar = layer(|b| {
        let mut d = header("etc/", tar::EntryType::Directory, 0);
        d.set_mode(0o755);
        add(b, d, b"");
        let mut f = header("etc/secret", tar::EntryType::Regular, 3);
        f.set_uid(1234);
        f.set_gid(4321);
        f.set_mode(0o600);
        add(b, f, b"abc");
        let mut l = header("etc/link", tar::EntryType::Symlink, 0);
        l.set_link_name("secret").unwrap();
        add(b, l, b"");
        let mut hl = header("etc/hard", tar::EntryType::Link, 0);
        hl.set_link_name("etc/secret").unwrap();
        add(b, hl, b"");
        add(b, header("etc/.wh.passwd", tar::EntryType::Regular, 0), b"");
        add(
            b,
            header("var/.wh..wh..opq", tar::EntryType::Regular, 0),
            b"",
        );
    });
    unpack_tar(tar.as_slice(), root, &Limits::default()).unwrap();

    let secret = std::fs::metadata(root.join("etc/secret")).unwrap();
    assert_eq!(
        (secret.uid(), secret.gid(), secret.mode() & 0o777),
        (1234, 4321, 0o600)
    );
    assert_eq!(
        std::fs::read_link(root.join("etc/link")).unwrap(),
        Path::new("secret")
    );
    assert_eq!(
        std::fs::metadata(root.join("etc/hard")).unwrap().ino(),
        secret.ino()
    );
    let wh = std::fs::symlink_metadata(root.join("etc/passwd")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!root.join("etc/.wh.passwd").exists());
    assert!(rctl_agent::image::unpack::is_opaque(&root.join("var")));
    assert!(!rctl_agent::image::unpack::is_opaque(&root.join("etc")));
}

#[test]
fn escaping_entries_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let dotdot = layer(|b| add(b, header("../escape", tar::EntryType::Regular, 1), b"x"));
    assert!(unpack_tar(dotdot.as_slice(), dir.path(), &Limits::default()).is_err());

    let via_symlink = layer(|b| {
        let mut l = header("evil", tar::EntryType::Symlink, 0);
        l.set_link_name(outside.path()).unwrap();
        add(b, l, b"");
        add(b, header("evil/planted", tar::EntryType::Regular, 1), b"x");
    });
    assert!(unpack_tar(via_symlink.as_slice(), dir.path(), &Limits::default()).is_err());
    assert!(!outside.path().join("planted").exists());

    let whiteout_via_symlink = layer(|b| {
        let mut l = header("evil2", tar::EntryType::Symlink, 0);
        l.set_link_name(outside.path()).unwrap();
        add(b, l, b"");
        add(b, header("evil2/.wh.x", tar::EntryType::Regular, 0), b"");
    });
    assert!(unpack_tar(
        whiteout_via_symlink.as_slice(),
        dir.path(),
        &Limits::default()
    )
    .is_err());
    assert!(!outside.path().join("x").exists());

    let hardlink_out = layer(|b| {
        let mut hl = header("h", tar::EntryType::Link, 0);
        hl.set_link_name("../../etc/passwd").unwrap();
        add(b, hl, b"");
    });
    assert!(unpack_tar(hardlink_out.as_slice(), dir.path(), &Limits::default()).is_err());
}
