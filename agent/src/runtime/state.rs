//! A container's on-disk state under `ROOT/containers/<id>/`: `config.json` (what to run),
//! `upper/`, `work/`, `rootfs/` (overlayfs), and from the shim: `log.json` (+ rotated
//! `log.json.N`), `shim.log`, `attach.sock`, `pid` and `exit`; from the agent: `stopped`,
//! `failed`, `restarts` (the restart policy's counter) and `restart` (a restart is due).
//! Every file is written to a temp name and renamed, so readers never see half a file.
//!
//! [`ContainerDir`] is the one owner of these files: every read and write of a container's
//! directory goes through it, and [`ContainerConfig::task`] is the one decode of the task
//! stored in `config.json`.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use prost::Message;
use rctl_api::pb;
use serde::{Deserialize, Serialize};

/// Ids become directory, interface and hostname parts: keep them to a safe alphabet.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Everything the shim and the agent need to know about one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub id: String,
    pub hostname: String,
    /// Unpacked image layers, bottom-first.
    pub layers: Vec<PathBuf>,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    /// The image's StopSignal (may be empty); the task's own takes precedence.
    #[serde(default)]
    pub stop_signal: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// 0 when the task publishes no port.
    pub container_port: u16,
    pub host_port: u16,
    /// A one-off container's `-p` bindings (empty for a service task).
    #[serde(default)]
    pub ports: Vec<crate::network::PortRule>,
    /// The task this container runs, protobuf-encoded, hex (pb types have no serde).
    pub task_pb: String,
    pub created_unix_ms: i64,
    /// Volumes made for this container alone (`-v /DST`, the image's `Volumes`), named
    /// here: `rm -v` and `--rm` remove them, named volumes stay.
    #[serde(default)]
    pub anonymous_volumes: Vec<String>,
}

impl ContainerConfig {
    /// The task this container was created from; None for a container made without one
    /// (or with an unreadable one).
    pub fn task(&self) -> Option<pb::Task> {
        let bytes = hex::decode(&self.task_pb).ok()?;
        pb::Task::decode(bytes.as_slice()).ok()
    }

    /// The stored form of `task` for [`ContainerConfig::task_pb`].
    pub fn encode_task(task: &pb::Task) -> String {
        hex::encode(task.encode_to_vec())
    }
}

/// The container process as recorded by the shim: its host pid and its start time in clock
/// ticks (field 22 of /proc/PID/stat), which tells a live container from a reused pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidRecord {
    pub pid: i32,
    pub start_time: u64,
}

impl PidRecord {
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split_whitespace();
        Some(Self {
            pid: it.next()?.parse().ok()?,
            start_time: it.next()?.parse().ok()?,
        })
    }

    pub fn render(&self) -> String {
        format!("{} {}\n", self.pid, self.start_time)
    }

    /// Whether the recorded process still runs (same pid, same start time, not a zombie).
    pub fn alive(&self) -> bool {
        match proc_stat(self.pid) {
            Some((state, start)) => start == self.start_time && state != 'Z' && state != 'X',
            None => false,
        }
    }
}

/// (state, start time) from /proc/PID/stat.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

fn parse_stat(s: &str) -> Option<(char, u64)> {
    // comm may contain spaces and parentheses: fields restart after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // field 3 is state (index 0 here), field 22 is starttime (index 19 here).
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Writes `data` to `path` through a temp file and rename.
pub async fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let (path, data) = (path.to_path_buf(), data.to_vec());
    tokio::task::spawn_blocking(move || write_atomic_sync(&path, &data))
        .await
        .map_err(io::Error::other)?
}

pub fn write_atomic_sync(path: &Path, data: &[u8]) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Paths inside one container directory.
#[derive(Debug, Clone)]
pub struct ContainerDir(pub PathBuf);

impl ContainerDir {
    /// The container's id: the directory's name.
    pub fn id(&self) -> String {
        self.0
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.0.join("rootfs")
    }
    pub fn upper(&self) -> PathBuf {
        self.0.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.0.join("work")
    }
    /// The container's output in Docker's json-file format (see `crate::logs`).
    pub fn log_json(&self) -> PathBuf {
        self.0.join(crate::logs::LOG_FILE)
    }
    /// The shim's own diagnostics (it could not start, read its config, ...).
    pub fn shim_log(&self) -> PathBuf {
        self.0.join("shim.log")
    }
    /// The shim's attach socket (0600): stdin in, output out, window size changes.
    pub fn attach_sock(&self) -> PathBuf {
        self.0.join("attach.sock")
    }
    /// How the container's processes are confined ([`super::security::Profile`]); absent
    /// for containers created before profiles existed, which get Docker's defaults.
    pub fn profile(&self) -> PathBuf {
        self.0.join("profile.json")
    }

    pub fn read_profile(&self) -> io::Result<super::security::Profile> {
        match std::fs::read(self.profile()) {
            Ok(data) => serde_json::from_slice(&data).map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(super::security::Profile::docker_default(""))
            }
            Err(e) => Err(e),
        }
    }

    /// Written by the container's PID 1 while it sets up: `exec` once only execve is
    /// left, `error: WHY` if setup failed.
    pub fn start(&self) -> PathBuf {
        self.0.join("start")
    }

    /// What the start file says: Ok(true) once exec is reached, Ok(false) while setting up,
    /// Err(why) on failure.
    pub fn read_start(&self) -> Result<bool, String> {
        let text = std::fs::read_to_string(self.start()).unwrap_or_default();
        match text.lines().find_map(|l| l.strip_prefix("error: ")) {
            Some(why) => Err(why.to_string()),
            None => Ok(text.lines().any(|l| l == "exec")),
        }
    }

    pub fn pid(&self) -> PathBuf {
        self.0.join("pid")
    }
    pub fn exit(&self) -> PathBuf {
        self.0.join("exit")
    }
    /// Present once the agent was asked to stop the container, so an exit by SIGTERM or
    /// SIGKILL is still reported as a requested stop after an agent restart.
    pub fn stopped(&self) -> PathBuf {
        self.0.join("stopped")
    }
    /// Why the container never started (written by the agent), kept for status after a
    /// restart.
    pub fn failed(&self) -> PathBuf {
        self.0.join("failed")
    }

    /// The restart policy's bookkeeping ([`crate::lifecycle::Restarts`]), kept across agent
    /// restarts.
    pub fn restarts(&self) -> PathBuf {
        self.0.join("restarts")
    }

    pub fn read_restarts(&self) -> crate::lifecycle::Restarts {
        crate::lifecycle::Restarts::parse(
            &std::fs::read_to_string(self.restarts()).unwrap_or_default(),
        )
    }

    /// Present while the container exited and waits out its restart backoff: the wall-clock
    /// time (unix ms) the restart is due. The next launch removes it.
    pub fn restart(&self) -> PathBuf {
        self.0.join("restart")
    }

    pub fn read_restart_due(&self) -> Option<i64> {
        std::fs::read_to_string(self.restart())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// What the directory says about the container (see [`crate::lifecycle::holds_address`]).
    pub fn markers(&self) -> crate::lifecycle::Markers {
        crate::lifecycle::Markers {
            exited: self.exit().exists(),
            failed: self.failed().exists(),
            restart_pending: self.restart().exists(),
            alive: self.read_pid().map(|p| p.alive()),
        }
    }

    pub fn read_failed(&self) -> Option<String> {
        std::fs::read_to_string(self.failed()).ok()
    }

    /// When the container started: the shim writes the pid file right after the fork.
    pub fn started_unix_ms(&self) -> Option<i64> {
        let m = std::fs::metadata(self.pid()).ok()?.modified().ok()?;
        Some(rctl_api::clock::to_unix_ms(m))
    }

    /// When the container exited: the shim writes the exit file right after reaping it.
    pub fn exited_unix_ms(&self) -> Option<i64> {
        let m = std::fs::metadata(self.exit()).ok()?.modified().ok()?;
        Some(rctl_api::clock::to_unix_ms(m))
    }

    pub fn read_config(&self) -> io::Result<ContainerConfig> {
        let data = std::fs::read(self.config())?;
        serde_json::from_slice(&data).map_err(io::Error::other)
    }

    /// Writes `cfg` as the container's `config.json`.
    pub async fn write_config(&self, cfg: &ContainerConfig) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(cfg).map_err(io::Error::other)?;
        write_atomic(&self.config(), &json).await
    }

    /// The task the container was created from (empty for a container made without one).
    pub fn read_task(&self) -> pb::Task {
        self.read_config()
            .ok()
            .and_then(|c| c.task())
            .unwrap_or_default()
    }

    /// Whether PID 1 runs (recorded, alive, no exit status yet).
    pub fn is_running(&self) -> bool {
        self.read_pid().is_some_and(|p| p.alive()) && !self.exit().exists()
    }

    /// Records that the agent was asked to stop the container.
    pub async fn mark_stopped(&self) -> io::Result<()> {
        write_atomic(&self.stopped(), b"").await
    }

    /// Records why the container is finished for good without a clean exit.
    pub async fn mark_failed(&self, why: &str) -> io::Result<()> {
        write_atomic(&self.failed(), why.as_bytes()).await
    }

    /// Persists the restart counter and that a restart is due at `due_unix_ms`.
    pub async fn record_restart(
        &self,
        restarts: crate::lifecycle::Restarts,
        due_unix_ms: i64,
    ) -> io::Result<()> {
        // Both are tried: the due time alone still reserves the container's address.
        let counted = write_atomic(&self.restarts(), restarts.render().as_bytes()).await;
        let due = write_atomic(&self.restart(), format!("{due_unix_ms}\n").as_bytes()).await;
        counted.and(due)
    }

    /// Forgets that a restart is due (a stop came first).
    pub async fn cancel_restart(&self) {
        let _ = tokio::fs::remove_file(self.restart()).await;
    }

    /// Forgets the restart counter (a start by hand begins a fresh count).
    pub async fn reset_restarts(&self) {
        let _ = tokio::fs::remove_file(self.restarts()).await;
    }

    /// Removes what the last run left (pid, exit, stop and restart markers, the start
    /// file), before the container is started again: the last run's `exec` note must not
    /// pass the next one as started.
    pub async fn clear_run(&self) -> Result<(), (PathBuf, io::Error)> {
        for f in [
            self.pid(),
            self.exit(),
            self.stopped(),
            self.restart(),
            self.start(),
        ] {
            match tokio::fs::remove_file(&f).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err((f, e)),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn read_pid(&self) -> Option<PidRecord> {
        PidRecord::parse(&std::fs::read_to_string(self.pid()).ok()?)
    }

    /// The exit status recorded by the shim: the code, or 128+signal.
    pub fn read_exit(&self) -> Option<i32> {
        std::fs::read_to_string(self.exit())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The last non-empty line the container wrote, else the shim's own last complaint:
    /// for failure messages.
    pub fn last_log_line(&self) -> Option<String> {
        crate::logs::last_line(&self.log_json()).or_else(|| {
            let data = std::fs::read(self.shim_log()).ok()?;
            let tail = &data[data.len().saturating_sub(4096)..];
            let text = String::from_utf8_lossy(tail);
            let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
            Some(line.trim().chars().take(200).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_path_and_interface_safe() {
        assert!(valid_id("web-1_abc"));
        assert!(!valid_id("../x"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(""));
    }

    #[test]
    fn stat_parsing_survives_odd_comm() {
        let s = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 100 200";
        assert_eq!(parse_stat(s), Some(('S', 12345)));
    }

    #[test]
    fn pid_record_round_trips() {
        let r = PidRecord {
            pid: 7,
            start_time: 99,
        };
        assert_eq!(PidRecord::parse(&r.render()), Some(r));
        assert!(PidRecord::parse("garbage").is_none());
    }

    #[test]
    fn own_process_is_alive() {
        let pid = std::process::id() as i32;
        let (_, start) = proc_stat(pid).unwrap();
        assert!(PidRecord {
            pid,
            start_time: start
        }
        .alive());
        assert!(!PidRecord {
            pid,
            start_time: start + 1
        }
        .alive());
    }
}
