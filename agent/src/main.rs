//! `rctl-agent`: parses flags and runs the agent library; `rctl-agent __shim DIR` is the
//! hidden per-container shim the agent starts for itself; `rctl-agent __exec DIR REQUEST`
//! the hidden helper that runs one process inside a running container;
//! `rctl-agent hollow ...` runs many simulated nodes for scale tests.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// The rctl per-host agent: runs the tasks the scheduler places on this host.
#[derive(Parser, Debug)]
#[command(name = "rctl-agent", version)]
struct Args {
    /// etcd endpoint.
    #[arg(long, default_value = rctl_api::DEFAULT_ETCD, env = "RCTL_ETCD")]
    etcd: String,
    /// State directory (images, layers, containers).
    #[arg(long, default_value = "/var/lib/rctl")]
    root: PathBuf,
    /// This node's name in the cluster.
    #[arg(long)]
    node_name: String,
    /// The host IP the scheduler reaches this agent on and published ports are bound to.
    #[arg(long)]
    advertise_ip: Ipv4Addr,
    /// gRPC listen address (default ADVERTISE_IP:7700).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Container subnet of this host, e.g. 198.19.1.0/24; the bridge gets its first address.
    #[arg(long)]
    subnet: String,
    /// Bridge the containers are attached to.
    #[arg(long, default_value = "rctl0")]
    bridge: String,
    /// How containers reach other nodes' containers: host-gw (route via the node's
    /// address; nodes share a link) or vxlan (encapsulated, any IP path). Every agent of a
    /// cluster uses the same.
    #[arg(long, default_value = "host-gw", value_parser = rctl_agent::network::peers::Mode::parse)]
    net_mode: rctl_agent::network::peers::Mode,
    /// Registry (HOST:PORT) to reach over plain HTTP; repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registry: Vec<String>,
    /// TTL of the node lease, in seconds: how long after a host dies its tasks are replaced.
    #[arg(long, default_value_t = 5)]
    lease_ttl: u64,
    /// Node labels, k=v (repeatable or comma-separated).
    #[arg(long = "labels", value_delimiter = ',')]
    labels: Vec<String>,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    tls: rctl_api::tls::TlsArgs,
    /// Docker-style config.json with the registry logins used for service pulls
    /// [default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json].
    #[arg(long, value_name = "FILE")]
    registry_config: Option<PathBuf>,
    /// Parent of the containers' cgroups, relative to each hierarchy's root (Docker's
    /// `--cgroup-parent`). The local cluster puts each host's containers under the host's
    /// own cgroup.
    #[arg(long, default_value = rctl_agent::runtime::cgroups::PARENT)]
    cgroup_parent: PathBuf,
    /// Most uncompressed bytes one image layer may unpack to.
    #[arg(long, default_value_t = rctl_agent::image::unpack::Limits::default().max_bytes)]
    max_layer_bytes: u64,
    /// Most entries (files, dirs, links) one image layer may hold.
    #[arg(long, default_value_t = rctl_agent::image::unpack::Limits::default().max_entries)]
    max_layer_files: u64,
    /// Run every container in a user namespace whose ids 0..COUNT are the host's
    /// START..START+COUNT, e.g. 100000:65536 (Docker's userns-remap); a task may opt out
    /// with userns = "host". Default: off.
    #[arg(long, value_name = "START:COUNT")]
    userns_remap: Option<String>,
    /// Keep this much free on the agent root (writable layers, volumes, logs, images):
    /// below it new containers are refused with the reason. 0 turns the check off.
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    disk_reserve: String,
}

/// Simulated nodes for scale tests: the real node registration, Agent API and task code
/// over a simulated runtime, no containers.
#[derive(Parser, Debug)]
#[command(name = "rctl-agent hollow")]
struct HollowArgs {
    /// etcd endpoint.
    #[arg(long, default_value = rctl_api::DEFAULT_ETCD, env = "RCTL_ETCD")]
    etcd: String,
    /// How many nodes to simulate.
    #[arg(long)]
    nodes: usize,
    /// Node names are PREFIX0001, PREFIX0002, ...
    #[arg(long, default_value = "hollow-")]
    name_prefix: String,
    /// IP every node's Agent API listens on.
    #[arg(long, default_value = "127.0.0.1")]
    listen_ip: Ipv4Addr,
    /// Node i (from 1) listens on PORT_BASE + i - 1.
    #[arg(long)]
    port_base: u16,
    /// Scratch directory for the nodes' container directories (a fresh `hollow-PID` in it,
    /// removed on exit). Default: /dev/shm, where there is one (thousands of small files
    /// are written and removed), else the temp directory.
    #[arg(long, default_value_os_t = scratch_root())]
    root: std::path::PathBuf,
    /// CPUs each node announces.
    #[arg(long, default_value_t = 8.0)]
    cpus: f64,
    /// Memory each node announces, in bytes.
    #[arg(long, default_value_t = 32 << 30)]
    memory: u64,
    /// Node labels, k=v (repeatable or comma-separated), the same on every node.
    #[arg(long = "labels", value_delimiter = ',')]
    labels: Vec<String>,
    /// TTL of each node's lease, in seconds.
    #[arg(long, default_value_t = 10)]
    lease_ttl: u64,
}

fn parse_labels(labels: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("label {l:?} is not k=v"))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Runs the future `run` makes on a new runtime until it ends or SIGTERM/SIGINT cancels
/// its token.
/// Where hollow nodes keep their container directories unless told.
fn scratch_root() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn serve<F, E>(
    what: &str,
    run: impl FnOnce(tokio_util::sync::CancellationToken) -> F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: Into<anyhow::Error> + Send + 'static,
{
    // Blocking work (file writes, unpacking, log reads) needs few threads; tokio's default
    // of 512 lets bursts leave many idle threads, each with its own stack and malloc arena.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(16)
        .build()?
        .block_on(async move {
            let _telemetry = rctl_api::telemetry::init("rctl-agent", "info");
            let token = tokio_util::sync::CancellationToken::new();
            let mut task = tokio::spawn(run(token.clone()));
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
                r = &mut task => return r?.map_err(Into::into),
            }
            tracing::info!("shutting down {what}");
            token.cancel();
            match tokio::time::timeout(std::time::Duration::from_secs(10), task).await {
                Ok(r) => r?.map_err(Into::into),
                Err(_) => anyhow::bail!("{what} did not stop within 10s"),
            }
        })
}

fn main() {
    // One line, as every rctl binary reports a fatal error.
    if let Err(e) = dispatch() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch() -> anyhow::Result<()> {
    // The shim must stay single-threaded: dispatch before any runtime exists.
    let argv: Vec<_> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "__shim") {
        let dir = argv.get(2).context("usage: rctl-agent __shim DIR")?;
        std::process::exit(rctl_agent::shim::main(std::path::Path::new(dir)));
    }
    if argv.get(1).is_some_and(|a| a == "__exec") {
        let (Some(dir), Some(req)) = (argv.get(2), argv.get(3)) else {
            anyhow::bail!("usage: rctl-agent __exec DIR REQUEST");
        };
        std::process::exit(rctl_agent::runtime::exec::main(
            std::path::Path::new(dir),
            std::path::Path::new(req),
        ));
    }
    if argv.get(1).is_some_and(|a| a == "hollow") {
        let args = HollowArgs::parse_from(&argv[1..]);
        let cfg = rctl_agent::hollow::HollowConfig {
            etcd: args.etcd,
            nodes: args.nodes,
            name_prefix: args.name_prefix,
            listen_ip: args.listen_ip,
            port_base: args.port_base,
            cpus: args.cpus,
            memory_bytes: args.memory,
            labels: parse_labels(&args.labels)?,
            lease_ttl: args.lease_ttl,
            root: args.root,
        };
        return serve("hollow nodes", |token| rctl_agent::hollow::run(cfg, token));
    }
    // Before the runtime's threads exist: the agent runs for months next to its containers.
    rctl_agent::tune_malloc();
    let args = Args::parse();
    // Checked first: a bad range must stop the agent before it touches anything.
    let userns_remap = args
        .userns_remap
        .as_deref()
        .map(rctl_agent::runtime::userns::IdMap::parse)
        .transpose()?;
    // Here, while the agent is still one thread (the probe forks), and before anything is
    // created: a host that cannot remap would otherwise fail every container's start.
    if let Some(map) = &userns_remap {
        // Formatted here, not as context: its Display already ends with the errno.
        rctl_agent::runtime::userns::probe(map, &args.root)
            .map_err(|e| anyhow::anyhow!("--userns-remap {}:{}: {e}", map.host_start, map.count))?;
    }
    let security = args
        .tls
        .security_for_etcd([args.etcd.as_str()])
        .unwrap_or_else(|e| usage_exit(e));
    if let Some(tls) = security.tls() {
        if let Err(why) = rctl_agent::check_identity(tls.identity(), &args.node_name) {
            usage_exit(why);
        }
    }
    let labels = parse_labels(&args.labels)?;
    let cfg = rctl_agent::AgentConfig {
        etcd: args.etcd,
        root: args.root,
        listen: args.listen.unwrap_or(SocketAddr::from((
            args.advertise_ip,
            rctl_api::DEFAULT_AGENT_PORT,
        ))),
        node_name: args.node_name,
        advertise_ip: args.advertise_ip,
        subnet: rctl_agent::Subnet::parse(&args.subnet)?,
        bridge: args.bridge,
        net_mode: args.net_mode,
        insecure_registries: args.insecure_registry,
        lease_ttl: args.lease_ttl,
        labels,
        metrics_addr: args.metrics_addr,
        security,
        registry_config: args.registry_config,
        cgroup_parent: args.cgroup_parent,
        userns_remap,
        disk_reserve: rctl_agent::runtime::disk::parse_size(&args.disk_reserve)
            .map_err(|e| anyhow::anyhow!("--disk-reserve: {e}"))?,
        layer_limits: rctl_agent::image::unpack::Limits {
            max_bytes: args.max_layer_bytes,
            max_entries: args.max_layer_files,
            ..Default::default()
        },
    };
    serve("agent; containers keep running", |token| {
        rctl_agent::run(cfg, token)
    })
}

/// A bad flag or TLS configuration: one line and exit status 2 (bad usage), as clap does.
fn usage_exit(msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}
