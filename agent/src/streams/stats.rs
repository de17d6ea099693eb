//! The stats and top streams' work over one container: the cgroup's counters and the
//! container's network namespace (stats), the cgroup's processes (top); the parsing of
//! /proc and cgroup text is pure functions with unit tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rctl_api::pb;

use super::{display_name, io, StreamError, CLK_TCK, DEFAULT_SAMPLE};
use crate::runtime::cgroups;
use crate::runtime::state::ContainerDir;

// === stats ===

/// Bytes received and sent over every interface but loopback, from `/proc/PID/net/dev`.
pub fn net_io(net_dev: &str) -> (u64, u64) {
    let mut rx = 0;
    let mut tx = 0;
    for line in net_dev.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() >= 9 {
            rx += f[0];
            tx += f[8];
        }
    }
    (rx, tx)
}

/// CPU use over a window, 100 = one core busy all of it.
pub fn cpu_percent(cpu_before: u64, cpu_after: u64, wall: Duration) -> f64 {
    let wall = wall.as_nanos() as f64;
    if wall <= 0.0 {
        return 0.0;
    }
    cpu_after.saturating_sub(cpu_before) as f64 / wall * 100.0
}

/// The containers under `containers` whose PID 1 runs, by id.
pub fn running_ids(containers: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(containers) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = rd
        .flatten()
        .filter(|e| ContainerDir(e.path()).is_running())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !n.starts_with('.'))
        .collect();
    ids.sort();
    ids
}

struct Sample {
    cg: Option<cgroups::Cgroup>,
    pid: Option<i32>,
    cpu_ns: u64,
}

fn sample(dir: &ContainerDir) -> Sample {
    let cg = dir.read_profile().ok().and_then(|p| p.cgroup);
    let cpu_ns = cg.as_ref().map(|c| c.stats().cpu_usage_ns).unwrap_or(0);
    Sample {
        cg,
        pid: dir.read_pid().filter(|p| p.alive()).map(|p| p.pid),
        cpu_ns,
    }
}

/// Stats of the containers `ids` (each a directory under `containers`), CPU % measured over
/// `window`.
pub async fn stats(
    containers: PathBuf,
    ids: Vec<String>,
    window: Duration,
) -> Result<Vec<pb::ContainerStats>, StreamError> {
    let window = if window.is_zero() {
        DEFAULT_SAMPLE
    } else {
        window
    };
    let dirs: Vec<(String, ContainerDir)> = ids
        .into_iter()
        .map(|id| {
            let d = ContainerDir(containers.join(&id));
            (id, d)
        })
        .collect();
    if let Some((id, _)) = dirs.iter().find(|(_, d)| !d.config().exists()) {
        return Err(StreamError::NotFound(id.clone()));
    }
    let first = tokio::task::spawn_blocking({
        let dirs = dirs.clone();
        move || {
            let at = std::time::Instant::now();
            (dirs.iter().map(|(_, d)| sample(d)).collect::<Vec<_>>(), at)
        }
    })
    .await
    .map_err(|e| io("sample stats")(std::io::Error::other(e)))?;
    tokio::time::sleep(window).await;
    tokio::task::spawn_blocking(move || {
        let wall = first.1.elapsed();
        let host = cgroups::host_memory().unwrap_or(0);
        dirs.iter()
            .zip(first.0)
            .map(|((id, dir), before)| {
                let now = before.cg.as_ref().map(|c| c.stats()).unwrap_or_default();
                let (rx, tx) = before
                    .pid
                    .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/net/dev")).ok())
                    .map(|t| net_io(&t))
                    .unwrap_or((0, 0));
                pb::ContainerStats {
                    task_id: id.clone(),
                    name: display_name(&dir.read_task(), id),
                    node: String::new(),
                    cpu_ns: now.cpu_usage_ns,
                    cpu_percent: cpu_percent(before.cpu_ns, now.cpu_usage_ns, wall),
                    memory_bytes: now.memory_bytes,
                    memory_limit: now.memory_limit.unwrap_or(host),
                    pids: now.pids,
                    net_rx_bytes: rx,
                    net_tx_bytes: tx,
                }
            })
            .collect()
    })
    .await
    .map_err(|e| io("sample stats")(std::io::Error::other(e)))
}

// === top ===

/// `(ppid, utime + stime in clock ticks, comm)` from `/proc/PID/stat`.
pub fn parse_stat(stat: &str) -> Option<(i32, u64, String)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let f: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the comm: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((ppid, ticks, comm))
}

/// CPU time as `ps` prints it: `HH:MM:SS`, with `D-` in front past a day.
pub fn format_cpu_time(ticks: u64) -> String {
    let s = ticks / CLK_TCK;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// The real uid from `/proc/PID/status`.
pub fn parse_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The name of `uid` in a passwd file, else the number.
pub fn user_name(passwd: &str, uid: u32) -> String {
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| uid.to_string())
}

/// The processes of the container in `dir` (its cgroup's members), by pid.
pub async fn top(dir: ContainerDir, id: &str) -> Result<Vec<pb::TopProcess>, StreamError> {
    if !dir.config().exists() {
        return Err(StreamError::NotFound(id.to_string()));
    }
    if !dir.is_running() {
        return Err(StreamError::NotRunning(display_name(&dir.read_task(), id)));
    }
    tokio::task::spawn_blocking(move || {
        let cg = dir
            .read_profile()
            .map_err(io("read the container profile"))?;
        let mut pids: Vec<i32> = cg
            .cgroup
            .iter()
            .flat_map(|c| c.dirs.iter())
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        // The container's own passwd, through its PID 1's root.
        let passwd = dir
            .read_pid()
            .and_then(|p| std::fs::read_to_string(format!("/proc/{}/root/etc/passwd", p.pid)).ok())
            .unwrap_or_default();
        Ok(pids
            .into_iter()
            .filter_map(|pid| {
                let (ppid, ticks, comm) =
                    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
                let uid = parse_uid(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)?;
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = cmdline
                    .split(|&b| b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ");
                Some(pb::TopProcess {
                    pid,
                    ppid,
                    user: user_name(&passwd, uid),
                    time: format_cpu_time(ticks),
                    cmd: if cmd.is_empty() {
                        format!("[{comm}]")
                    } else {
                        cmd
                    },
                })
            })
            .collect())
    })
    .await
    .map_err(|e| io("read processes")(std::io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_io_sums_every_interface_but_loopback() {
        let dev = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
eth0:    1500      10    0    0    0     0          0         0      700       5    0    0    0     0       0          0\n";
        assert_eq!(net_io(dev), (1500, 700));
        assert_eq!(net_io(""), (0, 0));
    }

    #[test]
    fn cpu_percent_is_per_core() {
        assert_eq!(
            cpu_percent(0, 500_000_000, Duration::from_millis(500)),
            100.0
        );
        assert_eq!(
            cpu_percent(100, 100 + 250_000_000, Duration::from_secs(1)),
            25.0
        );
        assert_eq!(cpu_percent(5, 1, Duration::from_secs(1)), 0.0);
        assert_eq!(cpu_percent(0, 1, Duration::ZERO), 0.0);
    }

    #[test]
    fn stat_lines_with_spaces_in_the_name_parse() {
        let stat = "42 (my proc) S 7 42 42 0 -1 4194560 100 0 0 0 250 130 0 0 20 0 1 0 100";
        assert_eq!(parse_stat(stat), Some((7, 380, "my proc".to_string())));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn cpu_time_reads_like_ps() {
        assert_eq!(format_cpu_time(0), "00:00:00");
        assert_eq!(format_cpu_time(6150), "00:01:01");
        assert_eq!(format_cpu_time(100 * (86400 + 3600)), "1-01:00:00");
    }

    #[test]
    fn users_are_named_from_the_containers_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
        assert_eq!(user_name(passwd, 0), "root");
        assert_eq!(user_name(passwd, 1000), "app");
        assert_eq!(user_name(passwd, 7), "7");
        assert_eq!(
            parse_uid("Name:\tsh\nUid:\t1000\t1000\t1000\t1000\n"),
            Some(1000)
        );
    }
}
