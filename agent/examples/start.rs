//! Container start driver for bench/container-start: runs `/bin/true` N times from ROOTFS
//! (used as the single image layer) through the agent's own runtime path — container
//! directory and config, shim spawned in new namespaces, release, wait for the pid, wait for
//! the exit, remove — without etcd or networking, and prints each run's wall time in ms.
//! With `--hold N` it instead starts N `sleep` containers, prints the shims' RSS, waits for
//! a line on stdin, then kills and removes them (for the RSS figures).
//!
//! Usage: `start AGENT_BIN ROOTFS WORKDIR RUNS` or `start AGENT_BIN ROOTFS WORKDIR --hold N`.
//! `START_USERNS=START:COUNT` runs the containers in a user namespace (the agent's
//! `--userns-remap`), to measure what it costs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rctl_agent::runtime::state::{write_atomic_sync, ContainerConfig, ContainerDir};
use rctl_agent::runtime::{self, Shim};

fn config(id: &str, rootfs: &Path, argv: &[&str]) -> ContainerConfig {
    ContainerConfig {
        id: id.into(),
        hostname: id.chars().take(12).collect(),
        layers: vec![rootfs.to_path_buf()],
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        workdir: "/".into(),
        stop_signal: String::new(),
        ip: "198.18.0.2".parse().expect("ip"),
        prefix_len: 24,
        gateway: "198.18.0.1".parse().expect("ip"),
        container_port: 0,
        host_port: 0,
        ports: vec![],
        anonymous_volumes: Vec::new(),
        task_pb: String::new(),
        created_unix_ms: 0,
    }
}

/// Creates the container directory as `Tasks::create` does.
fn create(work: &Path, id: &str, rootfs: &Path, argv: &[&str]) -> anyhow::Result<ContainerDir> {
    let dir = ContainerDir(work.join(id));
    for d in [dir.upper(), dir.work(), dir.rootfs()] {
        std::fs::create_dir_all(d)?;
    }
    if let Ok(map) = std::env::var("START_USERNS") {
        let mut profile = rctl_agent::runtime::security::Profile::docker_default("");
        profile.userns = Some(rctl_agent::runtime::userns::IdMap::parse(&map)?);
        write_atomic_sync(&dir.profile(), &serde_json::to_vec(&profile)?)?;
    }
    write_atomic_sync(
        &dir.config(),
        &serde_json::to_vec(&config(id, rootfs, argv))?,
    )?;
    Ok(dir)
}

/// Waits for the shim's exit file, polling every 100 us doubling up to 1 ms (the agent
/// itself notices exits on its 500 ms supervision tick, which is reporting, not start).
async fn wait_exit(dir: &ContainerDir) -> Option<i32> {
    let mut pause = Duration::from_micros(100);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(c) = dir.read_exit() {
            return Some(c);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(1));
    }
    None
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [agent, rootfs, work, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: start AGENT_BIN ROOTFS WORKDIR (RUNS | --hold N)");
    };
    let (agent, rootfs, work) = (
        PathBuf::from(agent),
        PathBuf::from(rootfs),
        PathBuf::from(work),
    );
    if let [flag, n] = rest {
        if flag == "--hold" {
            return hold(&agent, &rootfs, &work, n.parse()?).await;
        }
    }
    let runs: usize = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(50);
    // START_PHASES=1: also print where each run's time went, on stderr.
    let phases = std::env::var_os("START_PHASES").is_some();
    for i in 0..runs {
        let id = format!("bench{i}");
        let t = Instant::now();
        let dir = create(&work, &id, &rootfs, &["/bin/true"])?;
        let t_create = t.elapsed();
        let shim = Shim::spawn_with(&agent, &dir)?;
        let t_spawn = t.elapsed();
        shim.release()?;
        runtime::wait_started(&dir, Duration::from_secs(10)).await?;
        let t_pid = t.elapsed();
        let code = wait_exit(&dir).await;
        let t_exit = t.elapsed();
        runtime::remove_dir(&dir.0).await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(code == Some(0), "run {i}: exit {code:?}");
        if phases {
            let m = |d: Duration| d.as_secs_f64() * 1000.0;
            eprintln!(
                "create {:.2} spawn {:.2} pid {:.2} exit {:.2} remove {:.2}",
                m(t_create),
                m(t_spawn - t_create),
                m(t_pid - t_spawn),
                m(t_exit - t_pid),
                ms - m(t_exit)
            );
        }
        println!("{ms:.3}");
    }
    Ok(())
}

/// Starts `n` long-running containers and reports the shims' RSS.
async fn hold(agent: &Path, rootfs: &Path, work: &Path, n: usize) -> anyhow::Result<()> {
    let mut running = Vec::new();
    for i in 0..n {
        let id = format!("hold{i}");
        let dir = create(work, &id, rootfs, &["sleep", "3600"])?;
        let shim = Shim::spawn_with(agent, &dir)?;
        let shim_pid = shim.pid();
        shim.release()?;
        let pid = runtime::wait_started(&dir, Duration::from_secs(10)).await?;
        running.push((dir, pid, shim_pid));
    }
    let rss: Vec<u64> = running.iter().map(|(_, _, s)| vm_rss_kib(*s)).collect();
    let mut sorted = rss.clone();
    sorted.sort_unstable();
    println!(
        "shims={n} shim_rss_kib_p50={} shim_rss_kib_max={} driver_rss_kib={}",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        vm_rss_kib(std::process::id())
    );
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    for (dir, pid, _) in &running {
        runtime::signal(pid, nix::sys::signal::Signal::SIGKILL);
        wait_exit(dir).await;
        runtime::remove_dir(&dir.0).await?;
    }
    Ok(())
}
