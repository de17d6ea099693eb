//! Hostile layers fed to the agent's real unpack path (`unpack_layer`: blob on disk → temp
//! dir → rename): each is refused with an error naming the reason, nothing is written
//! outside the layer, and no partial layer (or temp dir) is left behind. Runs as root.

mod common;

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use rctl_agent::image::unpack::{unpack_layer, Limits, UnpackError};
use sha2::{Digest, Sha256};

use common::header;

fn add(b: &mut tar::Builder<Vec<u8>>, mut h: tar::Header, data: &[u8]) {
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn link(path: &str, kind: tar::EntryType, target: &str) -> tar::Header {
    let mut h = header(path, kind, 0);
    h.set_link_name(target).unwrap();
    h
}

fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn diff_id(tar: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(tar)))
}

/// A layers dir and a blob dir for one unpack; checks afterwards that the layers dir holds
/// exactly what a user would expect (the layer on success, nothing on failure).
struct Site {
    layers: tempfile::TempDir,
    blobs: tempfile::TempDir,
}

impl Site {
    fn new() -> Self {
        Site {
            layers: tempfile::tempdir().unwrap(),
            blobs: tempfile::tempdir().unwrap(),
        }
    }

    fn dest(&self) -> std::path::PathBuf {
        self.layers.path().join("layer")
    }

    fn unpack(&self, blob: &[u8], diff_id: &str, limits: &Limits) -> Result<(), UnpackError> {
        let path = self.blobs.path().join("blob");
        std::fs::write(&path, blob).unwrap();
        unpack_layer(&path, diff_id, &self.dest(), limits)
    }

    /// Unpacks `tar` (gzip'd) with default limits and expects a refusal mentioning `reason`.
    fn refuses(&self, tar: &[u8], reason: &str) {
        let err = self
            .unpack(&gzip(tar), &diff_id(tar), &Limits::default())
            .expect_err("hostile layer was accepted");
        let msg = error_chain(&err);
        assert!(
            msg.contains(reason),
            "error {msg:?} does not say {reason:?}"
        );
        self.assert_nothing_left();
    }

    fn assert_nothing_left(&self) {
        let left: Vec<_> = std::fs::read_dir(self.layers.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind in layers dir: {left:?}");
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

fn assert_empty(dir: &Path) {
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        0,
        "{dir:?} was written to"
    );
}

#[test]
fn dotdot_escape_is_refused() {
    let site = Site::new();
    let t = tar_of(|b| {
        add(
            b,
            header("a/../../escape", tar::EntryType::Regular, 1),
            b"x",
        )
    });
    site.refuses(&t, "has a '..' component");
    assert!(!site.layers.path().parent().unwrap().join("escape").exists());
}

#[test]
fn absolute_path_is_refused() {
    let site = Site::new();
    let outside = tempfile::tempdir().unwrap();
    let target = format!("{}/planted", outside.path().display());
    let t = tar_of(|b| add(b, header(&target, tar::EntryType::Regular, 1), b"x"));
    site.refuses(&t, "is absolute");
    assert_empty(outside.path());
}

#[test]
fn write_through_a_symlink_is_refused() {
    let site = Site::new();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_string();
    let t = tar_of(|b| {
        add(b, link("evil", tar::EntryType::Symlink, &target), b"");
        add(b, header("evil/planted", tar::EntryType::Regular, 1), b"x");
    });
    site.refuses(&t, "goes through a symlink");
    // A relative symlink climbing out, then a directory and a whiteout through it.
    let t = tar_of(|b| {
        add(
            b,
            link("up", tar::EntryType::Symlink, "../../../../../../.."),
            b"",
        );
        add(b, header("up/tmp/x/", tar::EntryType::Directory, 0), b"");
    });
    site.refuses(&t, "goes through a symlink");
    let t = tar_of(|b| {
        add(b, link("evil", tar::EntryType::Symlink, &target), b"");
        add(b, header("evil/.wh.x", tar::EntryType::Regular, 0), b"");
    });
    site.refuses(&t, "goes through a symlink");
    assert_empty(outside.path());
}

#[test]
fn a_file_replacing_a_symlink_does_not_write_its_target() {
    let site = Site::new();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"original").unwrap();
    let t = tar_of(|b| {
        add(
            b,
            link("f", tar::EntryType::Symlink, victim.to_str().unwrap()),
            b"",
        );
        add(b, header("f", tar::EntryType::Regular, 5), b"owned");
    });
    site.unpack(&gzip(&t), &diff_id(&t), &Limits::default())
        .unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"original");
    assert_eq!(std::fs::read(site.dest().join("f")).unwrap(), b"owned");
}

#[test]
fn hard_links_to_outside_are_refused() {
    let site = Site::new();
    let t = tar_of(|b| add(b, link("h", tar::EntryType::Link, "../../etc/passwd"), b""));
    site.refuses(&t, "has a '..' component");
    let t = tar_of(|b| add(b, link("h", tar::EntryType::Link, "/etc/passwd"), b""));
    site.refuses(&t, "is absolute");
    let t = tar_of(|b| {
        add(b, link("etc", tar::EntryType::Symlink, "/etc"), b"");
        add(b, link("h", tar::EntryType::Link, "etc/passwd"), b"");
    });
    site.refuses(&t, "goes through a symlink");
    let t = tar_of(|b| add(b, link("h", tar::EntryType::Link, "not/here"), b""));
    site.refuses(&t, "links to a file not in this layer");
}

#[test]
fn device_nodes_are_refused_unless_allowed() {
    let site = Site::new();
    let mut dev = header("dev/mem", tar::EntryType::Char, 0);
    dev.set_device_major(1).unwrap();
    dev.set_device_minor(1).unwrap();
    let t = tar_of(|b| add(b, dev.clone(), b""));
    site.refuses(&t, "is a device node");

    let allowed = Limits {
        allow_devices: true,
        ..Limits::default()
    };
    site.unpack(&gzip(&t), &diff_id(&t), &allowed).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::symlink_metadata(site.dest().join("dev/mem")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), nix::sys::stat::makedev(1, 1));
}

#[test]
fn overlayfs_xattrs_from_a_layer_are_refused() {
    let site = Site::new();
    let t = tar_of(|b| {
        let record = "trusted.overlay.redirect=/etc";
        let body = pax_record(&format!("SCHILY.xattr.{record}"));
        add(
            b,
            header("PaxHeader", tar::EntryType::XHeader, body.len() as u64),
            body.as_bytes(),
        );
        add(b, header("d/", tar::EntryType::Directory, 0), b"");
    });
    site.refuses(&t, "sets an overlayfs xattr");
}

/// One PAX record, `"<len> key=value\n"`, where len counts the whole record.
fn pax_record(kv: &str) -> String {
    let body = format!(" {kv}\n");
    let mut len = body.len() + 1;
    while len.to_string().len() + body.len() != len {
        len += 1;
    }
    format!("{len}{body}")
}

/// 10 GB of zeros in a ~10 MB blob: gzip members concatenate, so the blob is built from
/// one compressed MiB of zeros repeated, without ever compressing 10 GB.
#[test]
fn ten_gb_zero_bomb_is_refused_before_it_is_written() {
    let site = Site::new();
    let size: u64 = 10 << 30;
    let mut h = header("zeros", tar::EntryType::Regular, size);
    h.set_cksum();
    let mut blob = gzip(h.as_bytes());
    let mut best = GzEncoder::new(Vec::new(), Compression::best());
    best.write_all(&vec![0u8; 1 << 20]).unwrap();
    let mib = best.finish().unwrap();
    for _ in 0..(size >> 20) {
        blob.extend_from_slice(&mib);
    }
    assert!(blob.len() < 20 << 20, "bomb blob is {} bytes", blob.len());
    let err = site
        .unpack(
            &blob,
            &format!("sha256:{}", "0".repeat(64)),
            &Limits::default(),
        )
        .expect_err("bomb accepted");
    assert!(
        matches!(
            err,
            UnpackError::Limit {
                what: "uncompressed bytes",
                ..
            }
        ),
        "{err}"
    );
    site.assert_nothing_left();
}

/// Bombs that do not declare their size up front (many headers, no data) run into the
/// stream budget instead.
#[test]
fn a_stream_past_its_budget_is_cut_off() {
    let site = Site::new();
    let t = tar_of(|b| {
        for i in 0..4096 {
            add(b, header(&format!("f{i}"), tar::EntryType::Regular, 0), b"");
        }
    });
    let small = Limits {
        ratio_floor: 0,
        max_ratio: 2,
        ..Limits::default()
    };
    let err = site
        .unpack(&gzip(&t), &diff_id(&t), &small)
        .expect_err("stream over budget accepted");
    assert!(error_chain(&err).contains("uncompressed bytes"), "{err}");
    site.assert_nothing_left();
}

#[test]
fn a_million_tiny_files_are_refused() {
    let site = Site::new();
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    {
        let mut b = tar::Builder::new(&mut gz);
        for d in 0..1000 {
            let mut h = header(&format!("{d}/"), tar::EntryType::Directory, 0);
            h.set_mode(0o755);
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
            for f in 0..1000 {
                let mut h = header(&format!("{d}/{f}"), tar::EntryType::Regular, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
        b.finish().unwrap();
    }
    let blob = gz.finish().unwrap();
    let err = site
        .unpack(
            &blob,
            &format!("sha256:{}", "0".repeat(64)),
            &Limits::default(),
        )
        .expect_err("a million files accepted");
    assert!(
        matches!(
            err,
            UnpackError::Limit {
                what: "entries",
                ..
            }
        ),
        "{err}"
    );
    site.assert_nothing_left();
}

#[test]
fn content_not_matching_its_diff_id_is_refused() {
    let site = Site::new();
    let t = tar_of(|b| add(b, header("f", tar::EntryType::Regular, 1), b"x"));
    let err = site
        .unpack(
            &gzip(&t),
            &format!("sha256:{}", "0".repeat(64)),
            &Limits::default(),
        )
        .expect_err("wrong diff id accepted");
    assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err}");
    site.assert_nothing_left();
}

#[test]
fn a_good_layer_lands_whole_and_alone() {
    let site = Site::new();
    let t = tar_of(|b| {
        add(b, header("a/", tar::EntryType::Directory, 0), b"");
        add(b, header("a/f", tar::EntryType::Regular, 2), b"hi");
    });
    site.unpack(&gzip(&t), &diff_id(&t), &Limits::default())
        .unwrap();
    // A plain (uncompressed) tar blob is accepted as well.
    let plain = Site::new();
    plain.unpack(&t, &diff_id(&t), &Limits::default()).unwrap();
    for s in [&site, &plain] {
        let names: Vec<_> = std::fs::read_dir(s.layers.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["layer"]);
        assert_eq!(std::fs::read(s.dest().join("a/f")).unwrap(), b"hi");
    }
}
