//! Images: pull (registry), verify and keep (content), unpack (layers), and remember which
//! reference resolved to what in `ROOT/images/`, so running an image twice pulls it once.
//! The lifecycle around it: [`index`] (what is here, who uses it, sizes), [`gc`] (mark and
//! sweep, leases that keep a pull's blobs safe) and [`lifecycle`] (list, remove, inspect,
//! disk usage, prune).

pub mod content;
pub mod feed;
pub mod gc;
pub mod index;
pub mod lifecycle;
pub mod registry;
pub mod unpack;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use content::{ContentError, ContentStore};
use registry::{Registry, RegistryError};
use unpack::UnpackError;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("image config: {0}")]
    Config(String),
    #[error("unpack layer {digest}: {source}")]
    Unpack {
        digest: String,
        #[source]
        source: UnpackError,
    },
    #[error("image record {path}")]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The part of an image config a container needs to run (OCI image config `config`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `uid`, `uid:gid`, `name` or `name:group` (resolved in the container's /etc/passwd).
    #[serde(default)]
    pub user: Option<String>,
    /// Signal name or number sent first on stop (Dockerfile `STOPSIGNAL`).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Paths that get a volume of their own in every container (Dockerfile `VOLUME`).
    #[serde(default)]
    pub volumes: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
    rootfs: RootFs,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// A pulled image as recorded in `ROOT/images/<sha256 of reference>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    pub reference: String,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Unpacked layer directories, bottom-first.
    pub layers: Vec<PathBuf>,
    pub config: RunConfig,
    /// Layer blobs, bottom-first (empty in records written before the GC existed: such a
    /// record makes the GC keep every blob).
    #[serde(default)]
    pub blobs: Vec<BlobRecord>,
    /// RFC 3339, from the image config.
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub pulled_unix_ms: i64,
}

/// One layer blob of an image as its manifest describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlobRecord {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub diff_id: String,
}

/// What happens to one layer during a pull, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerPhase {
    Waiting,
    Downloading,
    Extracting,
    Done,
    AlreadyExists,
}

/// One progress report: layer blob `digest` is in `phase`, `done` of `total` bytes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEvent {
    pub digest: String,
    pub phase: LayerPhase,
    pub done: u64,
    pub total: u64,
}

/// Where a pull reports progress; a closed receiver is ignored (the pull goes on).
pub type Progress = tokio::sync::mpsc::UnboundedSender<LayerEvent>;

/// Per-pull options: a progress sink and credentials sent with the request (they win over
/// the agent's own for the registries they name).
#[derive(Default, Clone)]
pub struct PullOptions {
    pub progress: Option<Progress>,
    pub credentials: Option<registry::Credentials>,
    /// Set by the pull leading this reference: its progress for pulls that wait on it.
    tee: Option<Arc<feed::PullFeed>>,
}

impl PullOptions {
    pub fn new(progress: Option<Progress>, credentials: Option<registry::Credentials>) -> Self {
        Self {
            progress,
            credentials,
            tee: None,
        }
    }

    fn report(&self, digest: &str, phase: LayerPhase, done: u64, total: u64) {
        if let Some(f) = &self.tee {
            f.layer(LayerEvent {
                digest: digest.to_string(),
                phase,
                done,
                total,
            });
        }
        if let Some(p) = &self.progress {
            let _ = p.send(LayerEvent {
                digest: digest.to_string(),
                phase,
                done,
                total,
            });
        }
    }
}

/// Cheap to clone: clones share the registry client, the single-flight locks and the leases.
#[derive(Clone)]
pub struct ImageStore {
    root: PathBuf,
    registry: Arc<Registry>,
    content: ContentStore,
    /// Single flight: one lock per blob digest, chain id or reference being worked on, so
    /// concurrent pulls of images that share layers fetch and unpack each layer once.
    inflight: Arc<Flights>,
    /// The progress of the pull holding each reference's lock, so that a pull waiting for
    /// it (a second `run`, an `rctl pull` during a task's pull) shows the same download
    /// rather than nothing and then "already exists".
    leading: Arc<std::sync::Mutex<HashMap<String, Arc<feed::PullFeed>>>>,
    /// What pulls in flight are writing; the GC leaves it alone.
    leases: Arc<gc::Leases>,
    /// Serialises GC runs and removals of image records.
    gc_lock: Arc<tokio::sync::Mutex<()>>,
    /// What one layer may cost to unpack.
    limits: unpack::Limits,
}

impl ImageStore {
    /// Opens the store at `root`, removing temp files and dirs that an interrupted pull
    /// left behind (nothing else can be using them before the store exists).
    pub fn new(root: &Path, insecure: Vec<String>) -> Self {
        for dir in [root.join("layers"), root.join("blobs").join("sha256")] {
            remove_temps(&dir);
        }
        Self {
            root: root.to_path_buf(),
            registry: Arc::new(Registry::new(insecure).with_credentials(default_credentials())),
            content: ContentStore::new(root),
            inflight: Arc::default(),
            leading: Arc::default(),
            leases: Arc::default(),
            gc_lock: Arc::default(),
            limits: unpack::Limits::default(),
        }
    }

    /// Replaces the credentials found in the docker config (see [`default_credentials`]).
    pub fn with_credentials(mut self, credentials: registry::Credentials) -> Self {
        let r = Arc::make_mut(&mut self.registry);
        r.set_credentials(credentials);
        self
    }

    /// Replaces the default retry policy for registry requests.
    pub fn with_retry(mut self, retry: registry::Retry) -> Self {
        Arc::make_mut(&mut self.registry).retry = retry;
        self
    }

    /// Replaces the default unpack limits.
    pub fn with_limits(mut self, limits: unpack::Limits) -> Self {
        self.limits = limits;
        self
    }

    fn record_path(&self, reference: &str) -> PathBuf {
        index::record_path(&self.root, reference)
    }

    /// The recorded image, if it was pulled before and its layers are still there.
    pub async fn cached(&self, reference: &str) -> Option<Image> {
        let data = tokio::fs::read(self.record_path(reference)).await.ok()?;
        let img: Image = serde_json::from_slice(&data).ok()?;
        img.layers.iter().all(|l| l.is_dir()).then_some(img)
    }

    /// The manifest digest `reference` names in its registry (an index resolves to this
    /// platform's manifest), fetching only the manifest: how the scheduler learns that a new
    /// revision's image exists before writing it.
    pub async fn resolve(
        &self,
        reference: &str,
        credentials: Option<&registry::Credentials>,
    ) -> Result<String, RegistryError> {
        let r = Registry::parse(reference)?;
        let registry = self.registry.for_request(&r, credentials);
        match registry.manifest(&r).await {
            Ok((_, digest)) => Ok(digest),
            // An image this node holds (e.g. pulled before the registry lost it) can still
            // run here, so it is not refused.
            Err(e) => match self.cached(reference).await {
                Some(img) => Ok(img.manifest_digest),
                None => Err(e),
            },
        }
    }

    /// Makes `reference` available locally, pulling only what is missing. Layers download
    /// and unpack in parallel, each unpacked while its blob streams in.
    pub async fn ensure(&self, reference: &str) -> Result<Image, ImageError> {
        self.pull(reference, &PullOptions::default()).await
    }

    /// [`ensure`](Self::ensure) with progress reports and request credentials.
    pub async fn pull(&self, reference: &str, opts: &PullOptions) -> Result<Image, ImageError> {
        let (_guard, followed) = self.wait_turn(reference, opts).await;
        // Ours until we return: pulls that queue behind us follow it.
        let lead = Lead::new(&self.leading, reference);
        let opts = &PullOptions {
            tee: Some(lead.feed.clone()),
            ..opts.clone()
        };
        if let Some(img) = self.cached(reference).await {
            // Followed the pull that brought it: its layers were reported already.
            if !followed {
                for b in &img.blobs {
                    opts.report(&b.digest, LayerPhase::AlreadyExists, b.size, b.size);
                }
            }
            return Ok(img);
        }
        let r = Registry::parse(reference)?;
        let registry = self.registry.for_request(&r, opts.credentials.as_ref());
        let (manifest, manifest_digest) = registry.manifest(&r).await?;
        // Held until the record naming these is written: the GC must not take them first.
        let mut lease = self.leases.lease();
        lease.add(&manifest.config.digest);
        for d in &manifest.layers {
            lease.add(&d.digest);
        }
        for d in &manifest.layers {
            opts.report(&d.digest, LayerPhase::Waiting, 0, desc_size(d));
        }
        let config_path = {
            let _blob = self.inflight.lock(manifest.config.digest.clone()).await;
            self.content.fetch(&registry, &r, &manifest.config).await?
        };
        let raw = tokio::fs::read(&config_path)
            .await
            .map_err(|source| ImageError::Record {
                path: config_path.clone(),
                source,
            })?;
        let cfg: ConfigFile =
            serde_json::from_slice(&raw).map_err(|e| ImageError::Config(e.to_string()))?;
        if cfg.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Config(format!(
                "{} layers but {} diff ids",
                manifest.layers.len(),
                cfg.rootfs.diff_ids.len()
            )));
        }
        let chain = unpack::chain_ids(&cfg.rootfs.diff_ids);
        for c in &chain {
            lease.add(c);
        }
        let layers_dir = self.root.join("layers");
        tokio::fs::create_dir_all(&layers_dir)
            .await
            .map_err(|source| ImageError::Record {
                path: layers_dir.clone(),
                source,
            })?;
        let mut jobs = Vec::new();
        for ((desc, diff_id), chain_id) in
            manifest.layers.iter().zip(&cfg.rootfs.diff_ids).zip(&chain)
        {
            let dest = layers_dir.join(content::sha256_hex(chain_id)?);
            jobs.push(self.layer(&registry, &r, desc, diff_id, chain_id, dest, opts));
        }
        let layers = futures::future::try_join_all(jobs).await?;
        let blobs = manifest
            .layers
            .iter()
            .zip(&cfg.rootfs.diff_ids)
            .map(|(d, diff_id)| BlobRecord {
                digest: d.digest.clone(),
                size: desc_size(d),
                media_type: d.media_type.clone(),
                diff_id: diff_id.clone(),
            })
            .collect();
        let img = Image {
            reference: reference.to_string(),
            manifest_digest,
            config_digest: manifest.config.digest.clone(),
            layers,
            config: cfg.config.unwrap_or_default(),
            blobs,
            created: cfg.created,
            architecture: cfg.architecture,
            os: cfg.os,
            pulled_unix_ms: rctl_api::clock::now_unix_ms(),
        };
        let path = self.record_path(reference);
        let json =
            serde_json::to_vec_pretty(&img).map_err(|e| ImageError::Config(e.to_string()))?;
        crate::runtime::state::write_atomic(&path, &json)
            .await
            .map_err(|source| ImageError::Record { path, source })?;
        Ok(img)
    }

    /// Takes the lock of `reference`; while another pull holds it, its progress is passed
    /// to `opts` (true when some was).
    async fn wait_turn(&self, reference: &str, opts: &PullOptions) -> (Flight<'_>, bool) {
        let leader = self
            .leading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(reference)
            .map(|f| f.subscribe());
        let turn = self.inflight.lock(format!("ref {reference}"));
        let Some(mut rx) = leader else {
            return (turn.await, false);
        };
        tokio::pin!(turn);
        let mut sent = feed::Sent::new();
        let pass_on = |rx: &mut tokio::sync::watch::Receiver<feed::PullView>,
                       sent: &mut feed::Sent| {
            let news = rx.borrow_and_update().news(sent);
            for e in news {
                if let Some(p) = &opts.progress {
                    let _ = p.send(e);
                }
            }
        };
        let mut open = true;
        loop {
            tokio::select! {
                g = &mut turn => {
                    // The leader reported everything before letting go of the lock.
                    pass_on(&mut rx, &mut sent);
                    return (g, !sent.is_empty());
                }
                changed = rx.changed(), if open => match changed {
                    Ok(()) => pass_on(&mut rx, &mut sent),
                    // The leader is done: our turn comes next.
                    Err(_) => open = false,
                },
            }
        }
    }

    /// Makes layer `desc` available unpacked at `dest`, retrying transient download
    /// failures (each retry starts the download and the unpack afresh).
    #[allow(clippy::too_many_arguments)]
    async fn layer(
        &self,
        registry: &Registry,
        r: &oci_client::Reference,
        desc: &oci_client::manifest::OciDescriptor,
        diff_id: &str,
        chain_id: &str,
        dest: PathBuf,
        opts: &PullOptions,
    ) -> Result<PathBuf, ImageError> {
        let _layer = self.inflight.lock(format!("layer {chain_id}")).await;
        let total = desc_size(desc);
        if dest.is_dir() {
            opts.report(&desc.digest, LayerPhase::AlreadyExists, total, total);
            return Ok(dest);
        }
        let _blob = self.inflight.lock(desc.digest.clone()).await;
        let mut n = 1;
        loop {
            match self
                .layer_once(registry, r, desc, diff_id, &dest, opts)
                .await
            {
                Err(ImageError::Content(e)) if e.is_transient() && n < registry.retry.attempts => {
                    tracing::warn!(%e, attempt = n, "pull layer: retrying");
                    tokio::time::sleep(registry.retry.backoff(n)).await;
                    n += 1;
                }
                Err(ImageError::Content(e)) => return Err(e.gave_up(n).into()),
                Err(e) => return Err(e),
                Ok(()) => {
                    opts.report(&desc.digest, LayerPhase::Done, total, total);
                    return Ok(dest);
                }
            }
        }
    }

    async fn layer_once(
        &self,
        registry: &Registry,
        r: &oci_client::Reference,
        desc: &oci_client::manifest::OciDescriptor,
        diff_id: &str,
        dest: &Path,
        opts: &PullOptions,
    ) -> Result<(), ImageError> {
        let unpack_err = |source| ImageError::Unpack {
            digest: desc.digest.clone(),
            source,
        };
        let (d, dest2, limits) = (diff_id.to_string(), dest.to_path_buf(), self.limits.clone());
        let total = desc_size(desc);
        if self.content.has(&desc.digest) {
            opts.report(&desc.digest, LayerPhase::Extracting, total, total);
            let blob = self.content.path(&desc.digest)?;
            return tokio::task::spawn_blocking(move || {
                unpack::unpack_layer(&blob, &d, &dest2, &limits)
            })
            .await
            .map_err(|e| ImageError::Config(format!("unpack task: {e}")))?
            .map_err(unpack_err);
        }
        // Bounded: a slow disk slows the download rather than buffering the layer in memory.
        let (tap, rx) = tokio::sync::mpsc::channel(16);
        let size = u64::try_from(desc.size).unwrap_or(u64::MAX);
        let unpacking = tokio::task::spawn_blocking(move || {
            let reader = std::io::BufReader::with_capacity(1 << 16, unpack::ChunkReader::new(rx));
            unpack::unpack_stream(reader, size, &d, &dest2, &limits)
        });
        let report = |done| opts.report(&desc.digest, LayerPhase::Downloading, done, total);
        let downloaded = self
            .content
            .download_with(registry, r, desc, Some(&tap), &report)
            .await;
        drop(tap);
        if downloaded.is_ok() {
            opts.report(&desc.digest, LayerPhase::Extracting, total, total);
        }
        let unpacked = unpacking
            .await
            .map_err(|e| ImageError::Config(format!("unpack task: {e}")))?;
        // Whichever side failed first explains the other side's failure.
        match (downloaded, unpacked) {
            (Err(ContentError::TapClosed), Err(u)) | (Ok(_), Err(u)) => Err(unpack_err(u)),
            (Err(e), _) => Err(e.into()),
            (Ok(_), Ok(())) => Ok(()),
        }
    }
}

fn desc_size(d: &oci_client::manifest::OciDescriptor) -> u64 {
    u64::try_from(d.size).unwrap_or(0)
}

/// The feed of the pull leading a reference, in [`ImageStore::leading`] while it lives.
struct Lead<'a> {
    leading: &'a std::sync::Mutex<HashMap<String, Arc<feed::PullFeed>>>,
    reference: String,
    feed: Arc<feed::PullFeed>,
}

impl<'a> Lead<'a> {
    fn new(
        leading: &'a std::sync::Mutex<HashMap<String, Arc<feed::PullFeed>>>,
        reference: &str,
    ) -> Self {
        let feed = Arc::<feed::PullFeed>::default();
        leading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(reference.to_string(), feed.clone());
        Self {
            leading,
            reference: reference.to_string(),
            feed,
        }
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.leading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.reference);
    }
}

/// Keyed async locks, created on demand and dropped when nobody holds or waits for them.
#[derive(Default)]
struct Flights {
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one key of [`Flights`]; forgets the key on drop if no one else wants it.
struct Flight<'a> {
    flights: &'a Flights,
    key: String,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Flights {
    async fn lock(&self, key: String) -> Flight<'_> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(key.clone()).or_default().clone()
        };
        Flight {
            flights: self,
            key,
            _guard: m.lock_owned().await,
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut locks = self.flights.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Ours (in the map and in our guard) are the only references: nobody is waiting.
        if locks
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) <= 2)
        {
            locks.remove(&self.key);
        }
    }
}

/// Registry credentials from the docker-style config the agent's user would use:
/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`. A broken file is logged
/// and ignored, so anonymous pulls keep working.
pub fn default_credentials() -> registry::Credentials {
    let path = match (std::env::var_os("DOCKER_CONFIG"), std::env::var_os("HOME")) {
        (Some(d), _) => PathBuf::from(d).join("config.json"),
        (None, Some(h)) => PathBuf::from(h).join(".docker/config.json"),
        (None, None) => return registry::Credentials::default(),
    };
    registry::Credentials::load(&path).unwrap_or_else(|e| {
        tracing::warn!(%e, "ignoring registry credentials");
        registry::Credentials::default()
    })
}

/// Removes `.tmp-*` entries (partial blobs and layers) from `dir`.
fn remove_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            let p = e.path();
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
    }
}
