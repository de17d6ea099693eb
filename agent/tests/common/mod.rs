//! What the agent's image tests share: a real `docker-registry` on loopback, owned by the
//! test and killed by pid when dropped, and raw tar headers for hand-made layers.

#![allow(dead_code)] // each test binary uses a different part

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's `docker-registry` serving from a temp dir on `127.0.0.1:<free port>`.
pub struct TestRegistry {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    pub fn start() -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry (apt-get install docker-registry)");
        let reg = TestRegistry {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry on {addr} never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// `host:port`, as image references and the insecure list spell it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Runs `cmd`, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The agent installs rustls' provider in `run`; tests that build an `ImageStore` directly
/// do it here.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

// === OCI layouts pushed with skopeo ===

use sha2::{Digest, Sha256};
use std::path::Path;

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A gzip'd layer of regular files `(path, content)`, with its diff id.
pub fn gzip_layer(files: &[(&str, &[u8])]) -> (Vec<u8>, String) {
    use std::io::Write;
    let raw = tar_layer(files);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    (gz.finish().unwrap(), sha256(&raw))
}

/// Leaves uid and gid empty, as some image builders do: the unpacker must read them as 0.
pub fn tar_layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// One layer as stored: blob bytes, its media type and its diff id.
pub struct LayerBlob {
    pub blob: Vec<u8>,
    pub media_type: &'static str,
    pub diff_id: String,
}

pub fn gz(files: &[(&str, &[u8])]) -> LayerBlob {
    let (blob, diff_id) = gzip_layer(files);
    LayerBlob {
        blob,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        diff_id,
    }
}

pub fn put_blob(layout: &Path, data: &[u8]) -> serde_json::Value {
    let d = sha256(data);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(d.trim_start_matches("sha256:")), data).unwrap();
    serde_json::json!({"digest": d, "size": data.len()})
}

/// Writes an image (config + manifest) into `layout`'s blobs; returns its manifest
/// descriptor (with the platform set).
pub fn put_image(layout: &Path, arch: &str, layers: &[LayerBlob]) -> serde_json::Value {
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": [format!("ARCH={arch}")]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
    });
    let mut cdesc = put_blob(layout, config.to_string().as_bytes());
    cdesc["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let ldescs: Vec<_> = layers
        .iter()
        .map(|l| {
            let mut d = put_blob(layout, &l.blob);
            d["mediaType"] = l.media_type.into();
            d
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cdesc, "layers": ldescs,
    });
    let mut mdesc = put_blob(layout, manifest.to_string().as_bytes());
    mdesc["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    mdesc["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
    mdesc
}

/// Tags `desc` (a manifest or an index) as `tag` in `layout` and pushes it (with `--all`,
/// every image of an index) to `registry/repo:tag`.
pub fn push(layout: &Path, tag: &str, desc: serde_json::Value, registry: &str, repo: &str) {
    let mut desc = desc;
    desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [desc]}).to_string(),
    )
    .unwrap();
    run(Command::new("skopeo").args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{registry}/{repo}:{tag}"),
    ]));
}

/// An index of `images` (manifest descriptors with platforms) stored in `layout`.
pub fn put_index(layout: &Path, images: Vec<serde_json::Value>) -> serde_json::Value {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": images,
    });
    let mut d = put_blob(layout, index.to_string().as_bytes());
    d["mediaType"] = "application/vnd.oci.image.index.v1+json".into();
    d
}

// === A fault-injecting HTTP proxy in front of the real registry ===

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the proxy does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Forward,
    /// Answer with this status and an empty body, without asking the registry.
    Status(u16),
    /// Forward the registry's headers and half its body, then close the connection.
    Truncate,
    /// Forward the registry's answer with the body's last byte changed.
    Corrupt,
}

/// `(method and path, how many times this method and path were seen before)` → fault.
pub type Policy = Arc<dyn Fn(&str, usize) -> Fault + Send + Sync>;

pub struct FaultProxy {
    pub addr: SocketAddr,
    /// Every request seen (`GET /v2/...`), and whether a fault was injected.
    pub log: Arc<Mutex<Vec<(String, Fault)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Basic credentials the proxy demands through a bearer-token challenge, like Docker Hub.
pub type Auth = Option<(String, String)>;

const TOKEN: &str = "test-token-4f2a";

impl FaultProxy {
    pub async fn start(upstream: SocketAddr, policy: Policy, auth: Auth) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Vec<(String, Fault)>>> = Arc::default();
        let counts: Arc<Mutex<std::collections::HashMap<String, usize>>> = Arc::default();
        let log2 = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (policy, log, counts, auth) =
                    (policy.clone(), log2.clone(), counts.clone(), auth.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, upstream, addr, policy, log, counts, auth).await;
                });
            }
        });
        FaultProxy { addr, log, task }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn faults(&self) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|(_, f)| *f != Fault::Forward).count()
    }
}

async fn read_head(conn: &mut tokio::net::TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).await? == 0 {
            return Ok(None);
        }
        head.push(byte[0]);
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

async fn respond(
    conn: &mut tokio::net::TcpStream,
    status: u16,
    extra: &str,
    body: &str,
) -> std::io::Result<()> {
    conn.write_all(
        format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
}

async fn serve(
    mut conn: tokio::net::TcpStream,
    upstream: SocketAddr,
    me: SocketAddr,
    policy: Policy,
    log: Arc<Mutex<Vec<(String, Fault)>>>,
    counts: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    auth: Auth,
) -> std::io::Result<()> {
    let Some(head) = read_head(&mut conn).await? else {
        return Ok(());
    };
    let first = head.lines().next().unwrap_or("").to_string();
    let req = first
        .rsplit_once(' ')
        .map(|(r, _)| r.to_string())
        .unwrap_or_default();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    if let Some((user, pass)) = &auth {
        use base64::Engine;
        if req.starts_with("GET /token") {
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            );
            return if header("authorization").as_deref() == Some(want.as_str()) {
                respond(
                    &mut conn,
                    200,
                    "Content-Type: application/json\r\n",
                    &format!(r#"{{"token":"{TOKEN}"}}"#),
                )
                .await
            } else {
                respond(&mut conn, 401, "", "").await
            };
        }
        if header("authorization").as_deref() != Some(&format!("Bearer {TOKEN}")) {
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"http://{me}/token\",service=\"test\",scope=\"repository:x:pull\"\r\n"
            );
            return respond(&mut conn, 401, &challenge, "").await;
        }
    }
    let n = {
        let mut c = counts.lock().unwrap();
        let n = c.entry(req.clone()).or_insert(0);
        *n += 1;
        *n - 1
    };
    let fault = policy(&req, n);
    log.lock().unwrap().push((req.clone(), fault));
    if let Fault::Status(code) = fault {
        return respond(&mut conn, code, "", "").await;
    }
    let mut up = tokio::net::TcpStream::connect(upstream).await?;
    let mut forwarded = String::new();
    for line in head.lines().filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("authorization:") {
            continue;
        }
        forwarded.push_str(line);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    up.write_all(forwarded.as_bytes()).await?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).await?;
    let body_at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(resp.len());
    match fault {
        Fault::Truncate => {
            let cut = body_at + (resp.len() - body_at) / 2;
            conn.write_all(&resp[..cut]).await?;
            return conn.shutdown().await;
        }
        Fault::Corrupt if resp.len() > body_at => {
            let last = resp.len() - 1;
            resp[last] ^= 0xff;
        }
        _ => {}
    }
    conn.write_all(&resp).await?;
    conn.shutdown().await
}

pub fn zst(files: &[(&str, &[u8])]) -> LayerBlob {
    let raw = tar_layer(files);
    LayerBlob {
        blob: zstd::encode_all(raw.as_slice(), 3).unwrap(),
        media_type: "application/vnd.oci.image.layer.v1.tar+zstd",
        diff_id: sha256(&raw),
    }
}

pub fn plain(files: &[(&str, &[u8])]) -> LayerBlob {
    let raw = tar_layer(files);
    LayerBlob {
        diff_id: sha256(&raw),
        blob: raw,
        media_type: "application/vnd.oci.image.layer.v1.tar",
    }
}

/// A tar header for `path`, root-owned, mode 0644, mtime 0.
pub fn header(path: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    // The raw name field, so paths tar's builder refuses ("..", "/abs") can be written.
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

// === containers without a cluster ===

use rctl_agent::runtime::container::{Container, ContainerRuntime, ContainerSpec, Exit};

/// A busybox root filesystem as one layer directory: `/bin/busybox` with its applets
/// symlinked where `--list-full` puts them, `/bin/probe` (common/probe.c, static), an /etc/passwd and /etc/group with root, an
/// `app` user (1000) in `wheel` and `video`, and a world-writable /tmp.
pub fn busybox_layer(dir: &Path) -> std::path::PathBuf {
    let layer = dir.join("busybox-layer");
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "mnt", "home/app", "root",
    ] {
        std::fs::create_dir_all(layer.join(d)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(layer.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", layer.join("bin/busybox")).unwrap();
    let list = run(Command::new("/bin/busybox").arg("--list-full"));
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        let p = layer.join(applet);
        if p.symlink_metadata().is_err() {
            std::os::unix::fs::symlink("/bin/busybox", &p).unwrap();
        }
    }
    run(Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(layer.join("bin/probe"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/probe.c")));
    std::fs::write(
        layer.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        layer.join("etc/group"),
        "root:x:0:\nwheel:x:10:app\napp:x:1000:\nvideo:x:44:app\n",
    )
    .unwrap();
    layer
}

/// A runtime rooted in a temp dir, running containers from the busybox layer; the shim is
/// the real `rctl-agent` binary.
pub struct TestRuntime {
    pub rt: ContainerRuntime,
    pub layer: std::path::PathBuf,
    pub tmp: tempfile::TempDir,
}

impl TestRuntime {
    pub fn new() -> TestRuntime {
        let tmp = tempfile::tempdir().unwrap();
        let layer = busybox_layer(tmp.path());
        let rt = ContainerRuntime::with_agent_exe(
            tmp.path().join("root"),
            env!("CARGO_BIN_EXE_rctl-agent").into(),
        );
        TestRuntime { rt, layer, tmp }
    }

    /// A spec running `sh -c SCRIPT` in the busybox image.
    pub fn spec(&self, id: &str, script: &str) -> ContainerSpec {
        ContainerSpec {
            id: id.into(),
            layers: vec![self.layer.clone()],
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }
    }

    /// Creates and starts `spec`, waits for it and returns its exit, what it wrote to
    /// /tmp/out inside, and the container (deleted by the caller's guard).
    pub async fn run(&self, spec: &ContainerSpec) -> (Exit, String, Running<'_>) {
        let c = self.rt.create(spec).await.expect("create");
        let mut guard = Running {
            rt: &self.rt,
            c: Some(c),
        };
        let c = guard.c.as_mut().unwrap();
        self.rt.start(c).await.expect("start");
        let exit = self.rt.wait(c).await;
        let mut out = std::fs::read_to_string(c.dir.upper().join("tmp/out")).unwrap_or_default();
        if exit.code != 0 {
            // For the failure message only: the container's json-file log and the shim's own.
            let log = [c.dir.log_json(), c.dir.shim_log()]
                .iter()
                .map(|p| std::fs::read_to_string(p).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            out.push_str(&format!("\n--- container log ---\n{log}"));
        }
        (exit, out, guard)
    }
}

/// Deletes its container when dropped (also when the test panics).
pub struct Running<'a> {
    pub rt: &'a ContainerRuntime,
    pub c: Option<Container>,
}

impl Running<'_> {
    pub fn container(&self) -> &Container {
        self.c.as_ref().unwrap()
    }

    /// Deletes now and reports errors (the drop only tries).
    pub async fn delete(mut self) {
        if let Some(c) = self.c.take() {
            self.rt.delete(&c).await.expect("delete container");
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.c.take() {
            let rt = self.rt.clone();
            // Drop may run inside the test's runtime: delete on a thread of its own.
            std::thread::spawn(move || {
                let r = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let _ = r.block_on(rt.delete(&c));
            })
            .join()
            .ok();
        }
    }
}
