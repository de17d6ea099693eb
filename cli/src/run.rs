//! `rctl run`: one container somewhere in the cluster, as `docker run` makes one on this
//! host. Everything the user typed is checked here first (bad port spec, relative volume
//! source, unreadable env file: exit 2, one line, nothing created); then the scheduler
//! places and creates it. With `-d` the full id is printed; otherwise the terminal is
//! attached (the container waits for it before starting, so no output is lost) and rctl
//! exits with the container's code.
//!
//! # Pull on run
//!
//! Docker pulls a missing image first (`Unable to find image 'X' locally`, the pull's
//! progress, `Status: Downloaded newer image for X`). Here the node is known only once the
//! scheduler placed the container, and its agent pulls inside RunTask anyway; so rather
//! than asking the node whether it has the image (a round trip every `run` would pay), the
//! agent's RunTask answer says whether it had to pull (`CreateContainerResponse.pulling`),
//! and only then does rctl follow that very pull (FollowPull: every layer's state so far,
//! then its changes, then the end) before printing the id (`-d`) or attaching. An image
//! already on the node costs nothing more. Progress goes to stderr: bars on a terminal,
//! plain lines otherwise. A failed pull is one `error:` line and exit 1, and the scheduler
//! removes the container before saying so, so nothing is left (`ps -a`).

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use futures::StreamExt;
use rctl_api::pb::{
    self, pull_event, CreateContainerRequest, FollowPullRequest, Mount, PortBinding,
};

use crate::client::Conn;
use crate::error::CliError;
use crate::global::Global;
use crate::progress::Progress;

/// Docker's run status for a container that cannot be created or started.
const NOT_CREATED: i32 = 125;
/// How long `run -d` waits for its container to start (or fail to) before printing its id.
const START_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a created container waits for `rctl run`'s attach before it starts anyway.
const ATTACH_WAIT_MS: u32 = 30_000;

#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// Run in the background and print the container id.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Remove the container once it exits.
    #[arg(long)]
    pub rm: bool,
    /// Name the container (unique among containers and tasks; default: a generated one).
    #[arg(long)]
    pub name: Option<String>,
    /// Publish a port: [IP:]HOST:CONTAINER[/tcp|udp].
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[IP:]HOST:CONTAINER[/PROTO]"
    )]
    pub publish: Vec<String>,
    /// Set an environment variable (NAME=VALUE, or NAME for this side's value).
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file (NAME=VALUE lines, # comments).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Mount a path of the container's node (/SRC:DST[:ro]), a named volume
    /// (NAME:DST[:ro]) or an anonymous volume (DST).
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    pub volume: Vec<String>,
    /// Working directory inside the container (made if missing).
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Run as this user (name, uid or uid:gid).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Replace the image's ENTRYPOINT ("" clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Memory limit (e.g. 128m, 1g).
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// CPU limit (e.g. 0.5).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// no, on-failure[:MAX], always or unless-stopped (always, except that a container
    /// stopped by hand stays stopped when its node's agent restarts).
    #[arg(long, default_value = "no")]
    pub restart: String,
    /// Run on this node instead of letting the scheduler place it.
    #[arg(long)]
    pub node: Option<String>,
    /// Keep stdin open and stream it to the container.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// User namespace: "host" keeps the container in the host's even on a node whose
    /// agent remaps (--userns-remap), as Docker's --userns=host.
    #[arg(long, value_name = "host")]
    pub userns: Option<String>,
    /// Network: cluster (default: its own address, reaches every container and, NATed,
    /// the outside) or none (loopback only).
    #[arg(long, value_name = "cluster|none")]
    pub network: Option<String>,
    /// The container's hostname (default: its short id).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Add a line to the container's /etc/hosts (repeatable).
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_host: Vec<String>,
    /// A name server for the container's /etc/resolv.conf (repeatable).
    #[arg(long, value_name = "IP")]
    pub dns: Vec<String>,
    /// The image to run: NAME[:TAG] or NAME@sha256:DIGEST.
    pub image: String,
    /// The command and its arguments (default: the image's entrypoint and command).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

/// A hostname as `--hostname` takes it: dot-separated labels of letters, digits and
/// '-' (RFC 1123), at most 63 bytes (the kernel's limit for a UTS name is 64).
pub fn parse_hostname(h: &str) -> Result<String, String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if h.len() > 63 || !h.split('.').all(label_ok) {
        return Err(format!(
            "invalid hostname {h:?} (letters, digits, '-' and '.', at most 63)"
        ));
    }
    Ok(h.to_string())
}

/// `--add-host NAME:IP`, as `NAME:IP` with a checked name and address (IPv6 addresses
/// have colons: the name is everything before the first one).
pub fn parse_add_host(spec: &str) -> Result<String, String> {
    let bad = |why: &str| format!("invalid --add-host {spec:?}: {why} (want NAME:IP)");
    let (name, ip) = spec.split_once(':').ok_or_else(|| bad("no ':'"))?;
    parse_hostname(name).map_err(|_| bad("not a host name"))?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| bad("not an IP address"))?;
    Ok(format!("{name}:{ip}"))
}

/// `-p [IP:]HOST:CONTAINER[/tcp|udp]`.
pub fn parse_port(spec: &str) -> Result<PortBinding, String> {
    let bad = |why: &str| {
        format!("invalid port spec {spec:?}: {why} (want [IP:]HOST:CONTAINER[/tcp|udp])")
    };
    let (ports, protocol) = match spec.rsplit_once('/') {
        Some((p, proto @ ("tcp" | "udp"))) => (p, proto),
        Some(_) => return Err(bad("protocol is tcp or udp")),
        None => (spec, "tcp"),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [h, c] => ("", *h, *c),
        [ip, h, c] => (*ip, *h, *c),
        _ => return Err(bad("a host and a container port are needed")),
    };
    if !ip.is_empty() && ip.parse::<std::net::Ipv4Addr>().is_err() {
        return Err(bad("the host IP is not an IPv4 address"));
    }
    let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p > 0);
    let (Some(h), Some(c)) = (port(host), port(container)) else {
        return Err(bad("ports are numbers 1-65535"));
    };
    Ok(PortBinding {
        host_ip: ip.to_string(),
        host_port: h.into(),
        container_port: c.into(),
        protocol: protocol.into(),
    })
}

/// Whether `s` is a volume name Docker accepts: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn volume_name(s: &str) -> bool {
    let mut b = s.bytes();
    s.len() <= 128
        && b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Docker's `-v`: `/SRC:DST[:ro|rw]` binds a path of the container's node, `NAME:DST[:ro|rw]`
/// mounts the named volume NAME (made on first use, kept after the container), and `/DST`
/// alone an anonymous volume (named by the agent, removed by `rm -v` or `--rm`). A source
/// that is neither absolute nor a name (`./data`, `a/b`) is refused.
pub fn parse_volume(spec: &str) -> Result<Mount, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, readonly) = match parts.as_slice() {
        [d] if d.starts_with('/') => ("", *d, false),
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        _ => {
            return Err(format!(
                "invalid volume spec {spec:?} (want SRC:DST[:ro], NAME:DST[:ro] or DST)"
            ))
        }
    };
    let kind = if src.is_empty() || volume_name(src) {
        "volume"
    } else if src.starts_with('/') {
        "bind"
    } else {
        return Err(format!(
            "invalid volume spec {spec:?}: the source {src:?} must be an absolute path on the node or a volume name"
        ));
    };
    if !dst.starts_with('/') {
        return Err(format!(
            "invalid volume spec {spec:?}: the destination {dst:?} must be an absolute path"
        ));
    }
    Ok(Mount {
        source: src.into(),
        target: dst.into(),
        readonly,
        kind: kind.into(),
    })
}

/// An env file's variables: `NAME=VALUE` lines, `NAME` alone takes this side's value,
/// blank lines and `#` comments skipped.
pub fn parse_env_file(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (line.trim_end(), None),
        };
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Err(format!("line {}: invalid variable name {k:?}", n + 1));
        }
        if let Some(v) = v.or_else(|| lookup(k)) {
            out.push((k.to_string(), v));
        }
    }
    Ok(out)
}

/// `--restart no|on-failure[:MAX]|always|unless-stopped` → (policy, max attempts).
pub fn parse_restart(s: &str) -> Result<(String, u32), String> {
    let bad = || {
        format!(
            "invalid restart policy {s:?} (want no, on-failure[:MAX], always or unless-stopped)"
        )
    };
    match s.split_once(':') {
        None if matches!(s, "no" | "always" | "on-failure" | "unless-stopped") => {
            Ok((s.to_string(), 0))
        }
        Some(("on-failure", n)) => Ok(("on-failure".into(), n.parse().map_err(|_| bad())?)),
        _ => Err(bad()),
    }
}

/// Docker's memory units: b, k, m, g (binary); else the service file's forms.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let unit = t.chars().last().unwrap_or('0').to_ascii_lowercase();
    let mult: u64 = match unit {
        'b' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => 0,
    };
    let parsed = if mult > 0 {
        t[..t.len() - 1]
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
    } else {
        crate::service_file::parse_bytes(t)
    };
    parsed
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid memory {s:?} (e.g. 128m, 1g)"))
}

/// The container the user asked for, checked: every error here is bad input (exit 2).
pub fn build(a: &RunArgs) -> Result<CreateContainerRequest, CliError> {
    let usage = CliError::Usage;
    let mut task = pb::Task {
        image: a.image.clone(),
        container_name: a.name.clone().unwrap_or_default(),
        auto_remove: a.rm,
        args: a.cmd.clone(),
        user: a.user.clone().unwrap_or_default(),
        workdir: a.workdir.clone().unwrap_or_default(),
        tty: a.tty,
        stdin_open: a.interactive,
        attach_wait_ms: if a.detach { 0 } else { ATTACH_WAIT_MS },
        ..Default::default()
    };
    if let Some(ep) = &a.entrypoint {
        task.override_entrypoint = true;
        task.entrypoint = if ep.is_empty() {
            vec![]
        } else {
            vec![ep.clone()]
        };
    }
    if let Some(w) = &a.workdir {
        if !w.starts_with('/') {
            return Err(usage(format!(
                "the working directory {w:?} must be absolute"
            )));
        }
    }
    for p in &a.publish {
        task.ports.push(parse_port(p).map_err(usage)?);
    }
    for v in &a.volume {
        task.mounts.push(parse_volume(v).map_err(usage)?);
    }
    for f in &a.env_file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| usage(format!("--env-file {}: {e}", f.display())))?;
        let vars = parse_env_file(&text, |k| std::env::var(k).ok())
            .map_err(|e| usage(format!("--env-file {}: {e}", f.display())))?;
        task.env.extend(vars);
    }
    for e in &a.env {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                task.env.insert(k.into(), v.into());
            }
            Some(_) => return Err(usage(format!("invalid environment variable {e:?}"))),
            None => {
                if let Ok(v) = std::env::var(e) {
                    task.env.insert(e.clone(), v);
                }
            }
        }
    }
    let (policy, max) = parse_restart(&a.restart).map_err(usage)?;
    if a.rm && policy != "no" {
        return Err(usage("--rm and --restart cannot be used together".into()));
    }
    task.restart_policy = policy;
    task.restart_max_attempts = max;
    if a.memory.is_some() || a.cpus.is_some() {
        let memory_bytes = a
            .memory
            .as_deref()
            .map(parse_memory)
            .transpose()
            .map_err(usage)?
            .unwrap_or(0);
        let cpus = a.cpus.unwrap_or(0.0);
        if !(cpus.is_finite() && cpus >= 0.0) {
            return Err(usage(format!("invalid --cpus {cpus}")));
        }
        task.resources = Some(pb::Resources {
            cpus,
            memory_bytes,
            pids: 0,
        });
    }
    match a.userns.as_deref() {
        None => {}
        Some("host") => task.userns = "host".into(),
        Some(other) => {
            return Err(usage(format!(
                "invalid --userns {other:?} (the only mode is host)"
            )))
        }
    }
    match a.network.as_deref() {
        None | Some("cluster") => {}
        Some("none") if !task.ports.is_empty() => {
            return Err(usage(
                "--network none has no address to publish -p ports on".into(),
            ))
        }
        Some("none") => task.network = "none".into(),
        Some(other) => {
            return Err(usage(format!(
                "invalid --network {other:?} (want cluster or none)"
            )))
        }
    }
    if let Some(h) = &a.hostname {
        task.hostname = parse_hostname(h).map_err(usage)?;
    }
    for h in &a.add_host {
        task.extra_hosts.push(parse_add_host(h).map_err(usage)?);
    }
    for d in &a.dns {
        let ip: std::net::IpAddr = d
            .parse()
            .map_err(|_| usage(format!("invalid --dns {d:?}: not an IP address")))?;
        task.dns.push(ip.to_string());
    }
    crate::registry_auth::check_reference(&a.image).map_err(usage)?;
    Ok(CreateContainerRequest {
        task: Some(task),
        node: a.node.clone().unwrap_or_default(),
        auth: Vec::new(),
    })
}

impl RunArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        // Bad input fails with exit 2 before anything is sent.
        let req = build(&self)?;
        run(&mut g.connect().await?, self, req).await
    }
}

/// Creates the container `req` and, without -d, attaches to it until it exits.
async fn run(conn: &mut Conn, a: RunArgs, mut req: CreateContainerRequest) -> Result<(), CliError> {
    // A missing image is pulled with the stored login for its registry, as `rctl pull` does.
    req.auth = crate::images::auth_for(&a.image);
    let resp = conn
        .client
        .create_container(req)
        .await
        .map_err(|s| match s.code() {
            // The node refused to make it (a bind source it lacks, limits its kernel would
            // refuse, a port it cannot publish) or its name is taken: Docker's run exits 125
            // for that.
            tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => {
                eprintln!("error: {}", s.message());
                CliError::Exit(NOT_CREATED)
            }
            _ => conn.err(s),
        })?
        .into_inner();
    let id = resp
        .container
        .and_then(|v| v.task)
        .map(|t| t.id)
        .unwrap_or_default();
    if resp.pulling {
        follow_pull(conn, &id, &a.image).await?;
    }
    if a.detach {
        // As Docker's `run -d`, a container that cannot start is an error, not an id.
        if let Some((why, code)) = start_failure(conn, &id).await {
            eprintln!("error: {why}");
            return Err(CliError::Exit(code));
        }
        println!("{id}");
        return Ok(());
    }
    let tty = a.tty && std::io::stdin().is_terminal();
    let code = crate::attach::run_attached(conn, &id, tty, a.interactive)
        .await
        .map_err(|e| match e.downcast::<CliError>() {
            Ok(c) => c,
            Err(e) => CliError::Failed(e.to_string()),
        })?;
    Err(CliError::Exit(code))
}

/// Waits (at most [`START_WAIT`]) until container `id` started or failed to; a failure to
/// start is its reason and the code `run` exits with (the one it recorded, 126 or 127 for a
/// command that cannot be invoked or is not found, else 125). None: it started, or it is
/// still on its way when the wait ends.
async fn start_failure(conn: &mut Conn, id: &str) -> Option<(String, i32)> {
    let deadline = tokio::time::Instant::now() + START_WAIT;
    let mut pause = std::time::Duration::from_millis(5);
    while tokio::time::Instant::now() < deadline {
        let req = pb::ContainerRequest {
            target: id.to_string(),
            ..Default::default()
        };
        let status = conn
            .client
            .inspect_container(req)
            .await
            .ok()?
            .into_inner()
            .container
            .and_then(|v| v.status)
            .unwrap_or_default();
        if let Some(failed) = not_started(&status) {
            return Some(failed);
        }
        let on_its_way = matches!(
            status.state(),
            pb::TaskState::Unspecified | pb::TaskState::Pending | pb::TaskState::Starting
        );
        if status.started_unix_ms > 0 || !on_its_way {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(100));
    }
    None
}

/// A container that failed before it ever started: why, and `run`'s exit code.
fn not_started(s: &pb::TaskStatus) -> Option<(String, i32)> {
    (s.state() == pb::TaskState::Failed && s.started_unix_ms == 0).then(|| {
        let code = match s.exit_code {
            c @ 125..=127 => c,
            _ => NOT_CREATED,
        };
        (s.message.clone(), code)
    })
}

/// Shows the container's node pulling `image` for it, on stderr, until the pull ends; a
/// failed pull is the error (the scheduler removed the container already).
async fn follow_pull(conn: &mut Conn, id: &str, image: &str) -> Result<(), CliError> {
    eprintln!("Unable to find image '{image}' locally");
    let mut stream = conn
        .client
        .follow_pull(FollowPullRequest {
            target: id.to_string(),
        })
        .await
        .map_err(|s| conn.err(s))?
        .into_inner();
    let mut progress = Progress::on_stderr(std::io::stderr().is_terminal());
    while let Some(e) = stream.next().await {
        match e.map_err(|s| conn.err(s))?.event {
            Some(pull_event::Event::Layer(p)) => progress.layer("", &p),
            Some(pull_event::Event::Done(r)) => {
                progress.message(&format!("Digest: {}", r.manifest_digest));
                progress.message(&format!("Status: Downloaded newer image for {image}"));
                return Ok(());
            }
            Some(pull_event::Event::Error(why)) => return Err(CliError::Failed(why)),
            None => {}
        }
    }
    Err(CliError::Failed(format!(
        "the pull of {image} ended without a result (see: rctl ps -a)"
    )))
}

#[cfg(test)]
mod tests {

    #[test]
    fn add_host_and_hostname_are_checked() {
        assert_eq!(parse_add_host("db:10.0.0.1").unwrap(), "db:10.0.0.1");
        assert_eq!(parse_add_host("v6:fd00::1").unwrap(), "v6:fd00::1");
        for bad in ["db", "db:x", ":10.0.0.1", "-db:10.0.0.1"] {
            assert!(parse_add_host(bad).is_err(), "{bad}");
        }
        assert!(parse_hostname("web-1.example").is_ok());
        for bad in ["", "a_b", "a..b", &"x".repeat(64)] {
            assert!(parse_hostname(bad).is_err(), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn userns_host_is_the_only_mode() {
        let args = |userns: Option<&str>| RunArgs {
            image: "busybox".into(),
            userns: userns.map(str::to_string),
            restart: "no".into(),
            ..Default::default()
        };
        let task = |r: CreateContainerRequest| r.task.unwrap();
        assert_eq!(task(build(&args(None)).unwrap()).userns, "");
        assert_eq!(task(build(&args(Some("host"))).unwrap()).userns, "host");
        let e = build(&args(Some("private"))).unwrap_err().to_string();
        assert!(e.contains("invalid --userns \"private\""), "{e}");
    }

    #[test]
    fn port_specs_take_an_optional_ip_and_protocol() {
        let p = parse_port("8080:80").unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.protocol.as_str()),
            (8080, 80, "tcp")
        );
        let p = parse_port("127.0.0.1:53:5353/udp").unwrap();
        assert_eq!(p.host_ip, "127.0.0.1");
        assert_eq!((p.host_port, p.protocol.as_str()), (53, "udp"));
        for bad in [
            "80",
            "x:80",
            "8080:80/sctp",
            "1.2.3:80:80",
            "0:80",
            "70000:80",
        ] {
            assert!(
                parse_port(bad).unwrap_err().contains("invalid port spec"),
                "{bad}"
            );
        }
    }

    #[test]
    fn volumes_are_binds_named_or_anonymous_as_dockers() {
        let m = parse_volume("/data:/srv:ro").unwrap();
        assert!(m.readonly && m.source == "/data" && m.target == "/srv" && m.kind == "bind");
        let named = parse_volume("data:/srv").unwrap();
        assert!(named.source == "data" && named.kind == "volume" && !named.readonly);
        let anon = parse_volume("/data").unwrap();
        assert!(anon.source.is_empty() && anon.target == "/data" && anon.kind == "volume");
        for rel in ["./data:/srv", "a/b:/srv", "../x:/srv"] {
            assert!(
                parse_volume(rel).unwrap_err().contains("absolute path"),
                "{rel}"
            );
        }
        assert!(parse_volume("data").is_err());
        assert!(parse_volume("/a:srv").unwrap_err().contains("destination"));
    }

    #[test]
    fn env_files_skip_comments_and_take_bare_names_from_here() {
        let text = "# c\n\nA=1\nB=x=y\nHOME_X\nMISSING\n";
        let vars = parse_env_file(text, |k| (k == "HOME_X").then(|| "h".to_string())).unwrap();
        assert_eq!(
            vars,
            [
                ("A".to_string(), "1".to_string()),
                ("B".into(), "x=y".into()),
                ("HOME_X".into(), "h".into())
            ]
        );
        assert!(parse_env_file("A B=1\n", |_| None)
            .unwrap_err()
            .contains("line 1"));
    }

    #[test]
    fn restart_policies_are_dockers() {
        assert_eq!(parse_restart("no").unwrap(), ("no".into(), 0));
        assert_eq!(
            parse_restart("on-failure:3").unwrap(),
            ("on-failure".into(), 3)
        );
        assert_eq!(parse_restart("always").unwrap(), ("always".into(), 0));
        assert_eq!(
            parse_restart("unless-stopped").unwrap(),
            ("unless-stopped".into(), 0)
        );
        assert!(parse_restart("sometimes").is_err());
        assert!(parse_restart("on-failure:x").is_err());
    }

    #[test]
    fn memory_takes_dockers_units() {
        assert_eq!(parse_memory("128m").unwrap(), 128 << 20);
        assert_eq!(parse_memory("1g").unwrap(), 1 << 30);
        assert_eq!(parse_memory("64Mi").unwrap(), 64 << 20);
        assert!(parse_memory("lots").is_err());
    }
}
