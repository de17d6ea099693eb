//! Fixture images, built and pushed by the project's own OCI code (no internet, no docker).
//!
//! Tests and the demo need images whose behaviour they control. We build them here from
//! Debian's `busybox-static` and our static `rctl-testserver` binary, and push them to the
//! local registry with oci-client.
//!
//! # Vocabulary
//! * **layer**: a gzip'd tar, built deterministically (sorted entries, fixed mtime, uid 0,
//!   no gzip timestamp) so every build of the same inputs has the same digest, and tags
//!   share layers in the registry and in the agent's content store.
//! * **diff_id**: sha256 of the *uncompressed* tar, listed in the image config's
//!   `rootfs.diff_ids`; **digest**: sha256 of the gzip'd blob, listed in the manifest.
//! * **fixture**: one `rctl/NAME:TAG` image from PRODUCT.md's "Test images" table.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use flate2::write::GzEncoder;
use flate2::Compression;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{
    OciImageManifest, IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::json;
use sha2::{Digest, Sha256};

/// mtime of every tar entry: fixed so layer digests do not depend on when we built them.
pub const EPOCH: u64 = 1_704_067_200; // 2024-01-01T00:00:00Z
/// The image config's `created`, matching [`EPOCH`].
pub const CREATED: &str = "2024-01-01T00:00:00Z";
/// PATH in every fixture image (Docker's default).
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where the test server lives inside the testserver images.
pub const TESTSERVER_PATH: &str = "app/testserver";

/// `sha256:<hex>` of `data`, the form manifests and configs use.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// One entry of a layer tar. Paths are relative (`bin/sh`), as in `docker save` layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

/// A built layer blob with the two digests images need.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The gzip'd tar, as pushed.
    pub blob: Vec<u8>,
    /// sha256 of `blob` (manifest).
    pub digest: String,
    /// sha256 of the uncompressed tar (config `rootfs.diff_ids`).
    pub diff_id: String,
}

/// Builds a deterministic layer from `entries`: sorted by path, parents before children,
/// owned by root, fixed mtime.
pub fn build_layer(mut entries: Vec<Entry>) -> Result<Layer> {
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    let mut tar = tar::Builder::new(Vec::new());
    for e in &entries {
        // GNU headers, so long names would work; ours are short, but applet lists vary.
        let mut h = tar::Header::new_gnu();
        h.set_mtime(EPOCH);
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("root")?;
        h.set_groupname("root")?;
        match e {
            Entry::Dir { path, mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                tar.append_data(&mut h, format!("{}/", path.trim_end_matches('/')), &[][..])?;
            }
            Entry::File { path, mode, data } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, path, &data[..])?;
            }
            Entry::Symlink { path, target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                tar.append_link(&mut h, path, target)?;
            }
        }
    }
    let raw = tar.into_inner()?;
    // GzEncoder writes mtime 0 and no file name, so the blob is a pure function of `raw`.
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&raw)?;
    let blob = gz.finish()?;
    Ok(Layer {
        digest: sha256_digest(&blob),
        diff_id: sha256_digest(&raw),
        blob,
    })
}

/// Where a busybox binary installs its applets (`busybox --list-full`: `bin/sh`,
/// `usr/bin/env`, …), sorted and de-duplicated. We keep the canonical paths rather than
/// putting everything in `/bin`, so `#!/usr/bin/env` scripts work.
pub fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .with_context(|| format!("run {} --list-full", busybox.display()))?;
    if !out.status.success() {
        bail!("{} --list-full failed: {}", busybox.display(), out.status);
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|a| is_applet_path(a))
        .collect();
    applets.sort();
    applets.dedup();
    Ok(applets)
}

/// An applet path we are willing to create: under one of the four bin dirs, one plain name
/// (no `..` escaping the rootfs), and not the busybox binary itself.
fn is_applet_path(p: &str) -> bool {
    APPLET_DIRS.iter().any(|d| {
        p.strip_prefix(d)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|name| {
                !name.is_empty() && !name.contains('/') && name != ".." && name != "."
            })
    }) && p != "bin/busybox"
}

/// The directories busybox installs applets into.
const APPLET_DIRS: [&str; 4] = ["bin", "sbin", "usr/bin", "usr/sbin"];

/// The base rootfs: busybox at `/bin/busybox`, a symlink per applet (paths from
/// [`busybox_applets`]) pointing at it, a minimal
/// `/etc/passwd` and `/etc/group`, a sticky world-writable `/tmp`, and empty mount points.
pub fn busybox_entries(busybox: Vec<u8>, applets: &[String]) -> Vec<Entry> {
    let dir = |p: &str, mode| Entry::Dir {
        path: p.into(),
        mode,
    };
    let file = |p: &str, s: &str| Entry::File {
        path: p.into(),
        mode: 0o644,
        data: s.as_bytes().to_vec(),
    };
    let mut entries = vec![
        dir("bin", 0o755),
        dir("dev", 0o755),
        dir("etc", 0o755),
        dir("proc", 0o555),
        dir("root", 0o700),
        dir("sbin", 0o755),
        dir("sys", 0o555),
        dir("tmp", 0o1777),
        dir("usr", 0o755),
        dir("usr/bin", 0o755),
        dir("usr/sbin", 0o755),
        dir("var", 0o755),
        file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        file("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        Entry::File {
            path: "bin/busybox".into(),
            mode: 0o755,
            data: busybox,
        },
    ];
    for a in applets.iter().filter(|a| is_applet_path(a)) {
        // Absolute target: resolved inside the container's root, whatever the link's dir.
        entries.push(Entry::Symlink {
            path: a.clone(),
            target: "/bin/busybox".into(),
        });
    }
    entries
}

/// The testserver layer: `/app/testserver`.
pub fn testserver_entries(testserver: Vec<u8>) -> Vec<Entry> {
    vec![
        Entry::Dir {
            path: "app".into(),
            mode: 0o755,
        },
        Entry::File {
            path: TESTSERVER_PATH.into(),
            mode: 0o755,
            data: testserver,
        },
    ]
}

/// What one fixture image runs: the parts of an OCI image config we set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixture {
    /// Repository, e.g. `rctl/testserver`.
    pub repo: &'static str,
    pub tag: &'static str,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// Besides PATH.
    pub env: Vec<String>,
    /// e.g. `8080/tcp`.
    pub exposed_ports: Vec<String>,
    /// Whether the image includes the testserver layer on top of busybox.
    pub testserver: bool,
}

/// PRODUCT.md's "Test images", in order.
pub fn fixtures() -> Vec<Fixture> {
    let ts = |tag: &'static str, extra: &[&str]| {
        let mut env = vec![format!("VERSION={tag}")];
        env.extend(extra.iter().map(|s| s.to_string()));
        Fixture {
            repo: "rctl/testserver",
            tag,
            entrypoint: vec![format!("/{TESTSERVER_PATH}")],
            cmd: vec![],
            env,
            exposed_ports: vec!["8080/tcp".into()],
            testserver: true,
        }
    };
    vec![
        Fixture {
            repo: "rctl/busybox",
            tag: "latest",
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            env: vec![],
            exposed_ports: vec![],
            testserver: false,
        },
        ts("v1", &[]),
        ts("v2", &[]),
        ts("bad", &["FAIL_RATE=0.5"]),
        ts("slow", &["LATENCY_MS=200"]),
        ts("broken", &["EXIT_AT_START=1"]),
    ]
}

/// The OCI image config JSON for `f` over `layers` (bottom first).
pub fn image_config(f: &Fixture, layers: &[&Layer]) -> Vec<u8> {
    let mut env = vec![PATH_ENV.to_string()];
    env.extend(f.env.iter().cloned());
    let mut config = serde_json::Map::new();
    config.insert("Env".into(), json!(env));
    if !f.entrypoint.is_empty() {
        config.insert("Entrypoint".into(), json!(f.entrypoint));
    }
    if !f.cmd.is_empty() {
        config.insert("Cmd".into(), json!(f.cmd));
    }
    if !f.exposed_ports.is_empty() {
        let ports: BTreeMap<&str, serde_json::Value> = f
            .exposed_ports
            .iter()
            .map(|p| (p.as_str(), json!({})))
            .collect();
        config.insert("ExposedPorts".into(), json!(ports));
    }
    config.insert("WorkingDir".into(), json!("/"));
    let history: Vec<_> = layers
        .iter()
        .enumerate()
        .map(|(i, _)| {
            json!({
                "created": CREATED,
                "created_by": if i == 0 { "rctl-fixtures: busybox rootfs" } else { "rctl-fixtures: /app/testserver" },
            })
        })
        .collect();
    let doc = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": config,
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
        "history": history,
    });
    serde_json::to_vec(&doc).expect("a json! value always serialises")
}

/// One image ready to push: its layers' blobs, its config and its manifest.
pub struct BuiltImage {
    pub reference: String,
    pub layers: Vec<ImageLayer>,
    pub config: Config,
    pub manifest: OciImageManifest,
}

/// Builds every fixture for `registry` (`host:port`) from the two binaries' bytes.
pub fn build_fixtures(
    registry: &str,
    busybox: Vec<u8>,
    applets: &[String],
    testserver: Vec<u8>,
) -> Result<Vec<BuiltImage>> {
    let base = build_layer(busybox_entries(busybox, applets)).context("build busybox layer")?;
    let app = build_layer(testserver_entries(testserver)).context("build testserver layer")?;
    let mut images = Vec::new();
    for f in fixtures() {
        let layers: Vec<&Layer> = if f.testserver {
            vec![&base, &app]
        } else {
            vec![&base]
        };
        let config = Config::new(
            image_config(&f, &layers),
            IMAGE_CONFIG_MEDIA_TYPE.into(),
            None,
        );
        let layers: Vec<ImageLayer> = layers
            .iter()
            .map(|l| ImageLayer::new(l.blob.clone(), IMAGE_LAYER_GZIP_MEDIA_TYPE.into(), None))
            .collect();
        let mut manifest = OciImageManifest::build(&layers, &config, None);
        // Say what the document is, so registries and our agent need not guess from headers.
        manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.into());
        images.push(BuiltImage {
            reference: format!("{registry}/{}:{}", f.repo, f.tag),
            layers,
            config,
            manifest,
        });
    }
    Ok(images)
}

/// What was pushed: the reference and its manifest URL.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub reference: String,
    pub manifest_url: String,
}

/// Builds every fixture and pushes it to the plain-HTTP, anonymous `registry` (`host:port`).
pub async fn push_fixtures(
    registry: &str,
    busybox: &Path,
    testserver: &Path,
) -> Result<Vec<Pushed>> {
    // oci-client's rustls needs a process-wide crypto provider even for plain HTTP; an error
    // only means someone installed one already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let applets = busybox_applets(busybox)?;
    let bb = std::fs::read(busybox).with_context(|| format!("read {}", busybox.display()))?;
    let ts = std::fs::read(testserver)
        .with_context(|| format!("read {} (build it with `make build`)", testserver.display()))?;
    let images = build_fixtures(registry, bb, &applets, ts)?;
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let mut pushed = Vec::new();
    for img in images {
        let reference: Reference = img
            .reference
            .parse()
            .with_context(|| format!("parse image reference {}", img.reference))?;
        let resp = client
            .push(
                &reference,
                &img.layers,
                img.config,
                &RegistryAuth::Anonymous,
                Some(img.manifest),
            )
            .await
            .with_context(|| format!("push {} (is the registry up?)", img.reference))?;
        pushed.push(Pushed {
            reference: img.reference,
            manifest_url: resp.manifest_url,
        });
    }
    Ok(pushed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn layer_entries(layer: &Layer) -> Vec<(String, tar::EntryType, u32, u64)> {
        let mut raw = Vec::new();
        GzDecoder::new(&layer.blob[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(
            sha256_digest(&raw),
            layer.diff_id,
            "diff_id is the raw tar's"
        );
        let mut ar = tar::Archive::new(&raw[..]);
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                )
            })
            .collect()
    }

    fn applets() -> Vec<String> {
        ["bin/sh", "bin/ls", "usr/bin/env", "../evil", "bin/busybox"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn layers_are_deterministic_and_digests_match() {
        let a = build_layer(busybox_entries(b"ELF".to_vec(), &applets())).unwrap();
        let b = build_layer(busybox_entries(b"ELF".to_vec(), &applets())).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.blob, b.blob);
        assert_eq!(a.digest, sha256_digest(&a.blob));
        assert_ne!(a.digest, a.diff_id);
        let c = build_layer(busybox_entries(b"ELF2".to_vec(), &applets())).unwrap();
        assert_ne!(a.digest, c.digest);
    }

    #[test]
    fn busybox_layer_contents() {
        let layer = build_layer(busybox_entries(b"ELF".to_vec(), &applets())).unwrap();
        let entries = layer_entries(&layer);
        let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted, "entries are sorted");
        assert!(entries.iter().all(|e| e.3 == EPOCH));
        let find = |p: &str| entries.iter().find(|e| e.0 == p).cloned().unwrap();
        assert_eq!(find("tmp/").1, tar::EntryType::Directory);
        assert_eq!(find("tmp/").2, 0o1777);
        assert_eq!(find("bin/busybox").2, 0o755);
        assert_eq!(find("bin/sh").1, tar::EntryType::Symlink);
        assert_eq!(find("usr/bin/env").1, tar::EntryType::Symlink);
        assert!(
            !paths.iter().any(|p| p.contains("evil")),
            "unsafe applet path skipped"
        );
        assert_eq!(find("bin/busybox").1, tar::EntryType::Regular);
        assert!(paths.contains(&"etc/passwd"));
        assert!(paths.contains(&"etc/group"));
    }

    #[test]
    fn config_lists_diff_ids_and_runtime_settings() {
        let base = build_layer(busybox_entries(b"ELF".to_vec(), &applets())).unwrap();
        let app = build_layer(testserver_entries(b"SERVER".to_vec())).unwrap();
        let slow = fixtures().into_iter().find(|f| f.tag == "slow").unwrap();
        let cfg: serde_json::Value =
            serde_json::from_slice(&image_config(&slow, &[&base, &app])).unwrap();
        assert_eq!(cfg["architecture"], "amd64");
        assert_eq!(cfg["os"], "linux");
        assert_eq!(cfg["rootfs"]["type"], "layers");
        assert_eq!(
            cfg["rootfs"]["diff_ids"],
            json!([base.diff_id, app.diff_id])
        );
        assert_eq!(cfg["config"]["Entrypoint"], json!(["/app/testserver"]));
        assert_eq!(
            cfg["config"]["Env"],
            json!([PATH_ENV, "VERSION=slow", "LATENCY_MS=200"])
        );
        assert_eq!(cfg["config"]["ExposedPorts"], json!({"8080/tcp": {}}));
        assert_eq!(cfg["history"].as_array().unwrap().len(), 2);
        let bb = fixtures()
            .into_iter()
            .find(|f| f.repo == "rctl/busybox")
            .unwrap();
        let cfg: serde_json::Value = serde_json::from_slice(&image_config(&bb, &[&base])).unwrap();
        assert_eq!(cfg["config"]["Cmd"], json!(["sh"]));
        assert!(cfg["config"].get("Entrypoint").is_none());
    }

    #[test]
    fn fixtures_share_layers_and_describe_them() {
        let images = build_fixtures(
            "127.0.0.1:5000",
            b"ELF".to_vec(),
            &applets(),
            b"SERVER".to_vec(),
        )
        .unwrap();
        let refs: Vec<&str> = images.iter().map(|i| i.reference.as_str()).collect();
        assert_eq!(
            refs,
            [
                "127.0.0.1:5000/rctl/busybox:latest",
                "127.0.0.1:5000/rctl/testserver:v1",
                "127.0.0.1:5000/rctl/testserver:v2",
                "127.0.0.1:5000/rctl/testserver:bad",
                "127.0.0.1:5000/rctl/testserver:slow",
                "127.0.0.1:5000/rctl/testserver:broken",
            ]
        );
        let base = &images[0].manifest.layers[0];
        for img in &images {
            let m = &img.manifest;
            assert_eq!(m.layers[0].digest, base.digest, "busybox layer shared");
            assert_eq!(m.config.digest, sha256_digest(&img.config.data));
            assert_eq!(m.media_type.as_deref(), Some(OCI_IMAGE_MEDIA_TYPE));
            for (d, l) in m.layers.iter().zip(&img.layers) {
                assert_eq!(d.digest, sha256_digest(&l.data));
                assert_eq!(d.size as usize, l.data.len());
                assert_eq!(d.media_type, IMAGE_LAYER_GZIP_MEDIA_TYPE);
            }
        }
        assert_eq!(
            images[1].manifest.layers[1].digest, images[5].manifest.layers[1].digest,
            "testserver layer shared"
        );
        assert_ne!(
            images[1].manifest.config.digest,
            images[2].manifest.config.digest
        );
    }

    #[test]
    fn applet_list_from_real_busybox() {
        let bb = Path::new("/bin/busybox");
        if !bb.exists() {
            // busybox-static is a `make deps` package; without it there is nothing to list.
            return;
        }
        let applets = busybox_applets(bb).unwrap();
        for a in [
            "bin/sh",
            "bin/ls",
            "bin/cat",
            "bin/sleep",
            "usr/bin/wget",
            "usr/bin/env",
        ] {
            assert!(applets.iter().any(|x| x == a), "{a} missing");
        }
    }
}
