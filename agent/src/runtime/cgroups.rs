//! One cgroup per container, `rctl/<id>` under each controller we use, on cgroup v1 (and
//! hybrid hosts: their controllers are all on v1) or v2.
//!
//! * v1: `memory/rctl/ID` (memory.limit_in_bytes, memory.memsw… left alone), `cpu/rctl/ID`
//!   (cpu.cfs_quota_us/cpu.cfs_period_us, cpu.shares), `pids/rctl/ID` (pids.max),
//!   `cpuacct/rctl/ID` (usage for stats).
//! * v2: `rctl/ID` with memory.max, cpu.max, cpu.weight, pids.max.
//!
//! Which layout a host has, and which files get which values, are pure functions
//! ([`detect`], [`limit_writes`]) unit-tested on both; [`Cgroup`] does the directory work.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default parent of every container's cgroup (the agent's `--cgroup-parent`), relative
/// to each hierarchy's root. A local cluster nests each host's containers under that host's
/// own cgroup instead, so tearing the host down removes them.
pub const PARENT: &str = "rctl";
/// Below this Docker refuses a memory limit too (the runtime itself needs some); the
/// CLI and the scheduler refuse it at apply by the same constant.
pub const MIN_MEMORY: u64 = rctl_api::runnable::MIN_MEMORY;
/// CFS period when a CPU limit is set (Docker's).
pub const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup filesystem with the memory, cpu and pids controllers is mounted")]
    NoCgroups,
    #[error("memory limit {0} bytes is below the minimum of 6 MiB")]
    MemoryTooLow(u64),
    #[error("memory limit {limit} bytes is above this host's memory ({host} bytes)")]
    MemoryTooHigh { limit: u64, host: u64 },
    #[error("pids limit must be at least 1")]
    PidsZero,
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the controllers are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Mount points of the memory, cpu, cpuacct and pids hierarchies.
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        cpuacct: PathBuf,
        pids: PathBuf,
    },
    /// The unified hierarchy's mount point.
    V2(PathBuf),
}

/// The layout from /proc/self/mountinfo: v1 when the memory controller is on a v1
/// hierarchy (v1-only and hybrid hosts), else v2 when cgroup2 is mounted.
pub fn detect(mountinfo: &str) -> Option<Layout> {
    let mut v1: Vec<(Vec<String>, PathBuf)> = Vec::new();
    let mut v2 = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let point = left.split_whitespace().nth(4).map(PathBuf::from);
        let mut r = right.split_whitespace();
        let (fstype, _src, opts) = (r.next(), r.next(), r.next().unwrap_or(""));
        match (fstype, point) {
            (Some("cgroup"), Some(p)) => {
                v1.push((opts.split(',').map(str::to_string).collect(), p));
            }
            (Some("cgroup2"), Some(p)) if v2.is_none() => v2 = Some(p),
            _ => {}
        }
    }
    let find = |c: &str| {
        v1.iter()
            .find(|(opts, _)| opts.iter().any(|o| o == c))
            .map(|(_, p)| p.clone())
    };
    if let (Some(memory), Some(cpu), Some(pids)) = (find("memory"), find("cpu"), find("pids")) {
        let cpuacct = find("cpuacct").unwrap_or_else(|| cpu.clone());
        return Some(Layout::V1 {
            memory,
            cpu,
            cpuacct,
            pids,
        });
    }
    v2.map(Layout::V2)
}

/// Resource limits of one container; None leaves the kernel's default (unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CPU time per second, in thousandths of a CPU (`--cpus 1.5` is 1500).
    pub cpu_millis: Option<u64>,
    /// Relative CPU weight, Docker's shares scale (default 1024).
    pub cpu_shares: Option<u64>,
    pub pids: Option<u64>,
}

/// Refuses limits that cannot work: too little memory to start, more than the host has.
pub fn validate(l: &Limits, host_memory: u64) -> Result<(), CgroupError> {
    if let Some(m) = l.memory_bytes {
        if m < MIN_MEMORY {
            return Err(CgroupError::MemoryTooLow(m));
        }
        if m > host_memory {
            return Err(CgroupError::MemoryTooHigh {
                limit: m,
                host: host_memory,
            });
        }
    }
    if l.pids == Some(0) {
        return Err(CgroupError::PidsZero);
    }
    Ok(())
}

/// Docker's shares (2..262144) to cgroup v2 weight (1..10000), as runc converts them.
pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// The container's cgroup directories for `id` under `parent` in `layout`.
pub fn dirs(layout: &Layout, parent: &Path, id: &str) -> Vec<PathBuf> {
    match layout {
        Layout::V1 {
            memory,
            cpu,
            cpuacct,
            pids,
        } => {
            let mut v: Vec<PathBuf> = Vec::new();
            for m in [memory, cpu, cpuacct, pids] {
                let d = m.join(parent).join(id);
                if !v.contains(&d) {
                    v.push(d);
                }
            }
            v
        }
        Layout::V2(root) => vec![root.join(parent).join(id)],
    }
}

/// `(file, value)` pairs to write for `limits`, files as absolute paths.
pub fn limit_writes(
    layout: &Layout,
    parent: &Path,
    id: &str,
    l: &Limits,
) -> Vec<(PathBuf, String)> {
    let mut w = Vec::new();
    match layout {
        Layout::V1 {
            memory, cpu, pids, ..
        } => {
            let (memory, cpu, pids) = (
                memory.join(parent).join(id),
                cpu.join(parent).join(id),
                pids.join(parent).join(id),
            );
            if let Some(m) = l.memory_bytes {
                w.push((memory.join("memory.limit_in_bytes"), m.to_string()));
                // No swap beyond the limit (absent when the kernel has no swap accounting).
                w.push((memory.join("memory.memsw.limit_in_bytes"), m.to_string()));
            }
            if let Some(c) = l.cpu_millis {
                w.push((cpu.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string()));
                w.push((
                    cpu.join("cpu.cfs_quota_us"),
                    (c * CPU_PERIOD_US / 1000).to_string(),
                ));
            }
            if let Some(s) = l.cpu_shares {
                w.push((cpu.join("cpu.shares"), s.to_string()));
            }
            if let Some(p) = l.pids {
                w.push((pids.join("pids.max"), p.to_string()));
            }
        }
        Layout::V2(root) => {
            let d = root.join(parent).join(id);
            if let Some(m) = l.memory_bytes {
                w.push((d.join("memory.max"), m.to_string()));
                // Docker leaves swap at the memory limit on v2 too: no swap beyond it.
                w.push((d.join("memory.swap.max"), "0".into()));
            }
            if let Some(c) = l.cpu_millis {
                w.push((
                    d.join("cpu.max"),
                    format!("{} {CPU_PERIOD_US}", c * CPU_PERIOD_US / 1000),
                ));
            }
            if let Some(s) = l.cpu_shares {
                w.push((d.join("cpu.weight"), shares_to_weight(s).to_string()));
            }
            if let Some(p) = l.pids {
                w.push((d.join("pids.max"), p.to_string()));
            }
        }
    }
    w
}

/// Swap limits are best effort: hosts without swap accounting have no such file.
fn is_swap(file: &Path) -> bool {
    file.file_name().is_some_and(|n| {
        n.to_string_lossy().contains("swap") || n.to_string_lossy().contains("memsw")
    })
}

/// Reads `key value` lines (memory.events, memory.oom_control, memory.stat, cpu.stat).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// What `rctl stats` shows for one container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
    /// None when unlimited.
    pub memory_limit: Option<u64>,
    pub pids: u64,
}

/// v1 reports "no limit" as a huge page-rounded number, v2 as "max".
fn parse_limit(s: &str) -> Option<u64> {
    let v: u64 = s.trim().parse().ok()?;
    (v < (1 << 62)).then_some(v)
}

/// One container's cgroup: its directories (one per v1 hierarchy, or one on v2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    pub v2: bool,
    pub dirs: Vec<PathBuf>,
}

fn io_err<'a>(
    step: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

impl Cgroup {
    /// Creates the directories and writes the limits; on any failure removes what it
    /// made, so a refused limit leaves nothing behind.
    pub fn create(
        layout: &Layout,
        parent: &Path,
        id: &str,
        limits: &Limits,
    ) -> Result<Self, CgroupError> {
        let cg = Cgroup {
            v2: matches!(layout, Layout::V2(_)),
            dirs: dirs(layout, parent, id),
        };
        let res = (|| {
            if let Layout::V2(root) = layout {
                // Children only get the controllers their parent enables for them: enable
                // them on every level from the root down to the parent.
                let top = root.join(parent);
                std::fs::create_dir_all(&top).map_err(io_err("create", &top))?;
                let mut dir = root.clone();
                for level in std::iter::once(None).chain(parent.components().map(Some)) {
                    if let Some(c) = level {
                        dir.push(c);
                    }
                    let f = dir.join("cgroup.subtree_control");
                    std::fs::write(&f, "+memory +cpu +pids")
                        .map_err(io_err("enable controllers", &f))?;
                }
            }
            for d in &cg.dirs {
                std::fs::create_dir_all(d).map_err(io_err("create", d))?;
            }
            for (file, value) in limit_writes(layout, parent, id, limits) {
                match std::fs::write(&file, &value) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && is_swap(&file) => {}
                    r => r.map_err(io_err("write", &file))?,
                }
            }
            Ok(())
        })();
        match res {
            Ok(()) => Ok(cg),
            Err(e) => {
                cg.remove();
                Err(e)
            }
        }
    }

    /// Moves the calling process into the cgroup (before it execs or forks the container).
    pub fn join_self(&self) -> Result<(), CgroupError> {
        for d in &self.dirs {
            let f = d.join("cgroup.procs");
            std::fs::write(&f, "0").map_err(io_err("join", &f))?;
        }
        Ok(())
    }

    fn file(&self, v1_controller: &str, name: &str) -> Option<PathBuf> {
        if self.v2 {
            return self.dirs.first().map(|d| d.join(name));
        }
        // The hierarchy's mount point is an ancestor named for its controllers ("memory",
        // "cpu,cpuacct"); the cgroup parent in between may have any number of levels.
        self.dirs
            .iter()
            .find(|d| {
                d.ancestors().skip(1).any(|a| {
                    a.file_name()
                        .is_some_and(|n| n.to_string_lossy().split(',').any(|c| c == v1_controller))
                })
            })
            .map(|d| d.join(name))
    }

    fn read(&self, v1_controller: &str, name: &str) -> Option<String> {
        std::fs::read_to_string(self.file(v1_controller, name)?).ok()
    }

    /// Whether the kernel's OOM killer killed a process of this container.
    pub fn oom_killed(&self) -> bool {
        let n = if self.v2 {
            self.read("memory", "memory.events")
                .and_then(|t| keyed(&t, "oom_kill"))
        } else {
            self.read("memory", "memory.oom_control")
                .and_then(|t| keyed(&t, "oom_kill"))
        };
        n.unwrap_or(0) > 0
    }

    /// The memory limit in force, if any.
    pub fn memory_limit(&self) -> Option<u64> {
        let name = if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        parse_limit(&self.read("memory", name)?)
    }

    /// CPU, memory and pids now.
    pub fn stats(&self) -> Stats {
        let num = |c: &str, n: &str| {
            self.read(c, n)
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (cpu_usage_ns, memory_bytes) = if self.v2 {
            (
                self.read("cpu", "cpu.stat")
                    .and_then(|t| keyed(&t, "usage_usec"))
                    .unwrap_or(0)
                    * 1000,
                num("memory", "memory.current"),
            )
        } else {
            (
                num("cpuacct", "cpuacct.usage"),
                num("memory", "memory.usage_in_bytes"),
            )
        };
        Stats {
            cpu_usage_ns,
            memory_bytes,
            memory_limit: self.memory_limit(),
            pids: num("pids", "pids.current"),
        }
    }

    /// The cgroup of container `id` under `parent` in `layout`, whether it exists or not.
    pub fn of(layout: &Layout, parent: &Path, id: &str) -> Self {
        Cgroup {
            v2: matches!(layout, Layout::V2(_)),
            dirs: dirs(layout, parent, id),
        }
    }

    /// Every process in the cgroup, on any of its hierarchies (a process that joined only
    /// some of them, mid-setup, counts too).
    pub fn procs(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = Vec::new();
        for d in &self.dirs {
            let text = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs_of(&text));
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs every process in the cgroup (on v2 through `cgroup.kill` when the kernel
    /// has it, which also catches a fork racing the kill); returns the processes found.
    pub fn kill_all(&self) -> Vec<i32> {
        if self.v2 {
            if let Some(d) = self.dirs.first() {
                let _ = std::fs::write(d.join("cgroup.kill"), "1");
            }
        }
        let pids = self.procs();
        for &pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        pids
    }

    /// Removes the directories (the processes must be gone: rmdir of a busy cgroup fails
    /// with EBUSY and the directory stays, to be retried by the next delete).
    pub fn remove(&self) -> Vec<(PathBuf, std::io::Error)> {
        let mut errs = Vec::new();
        for d in &self.dirs {
            match std::fs::remove_dir(d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => errs.push((d.clone(), e)),
                _ => {}
            }
        }
        errs
    }
}

/// The pids in a `cgroup.procs` file.
pub fn procs_of(text: &str) -> impl Iterator<Item = i32> + '_ {
    text.lines().filter_map(|l| l.trim().parse().ok())
}

/// The names of the cgroups directly under `parent` in `layout`, on any hierarchy: the ids
/// of the containers that have a cgroup here, known to the agent or not.
pub fn children(layout: &Layout, parent: &Path) -> Vec<String> {
    let roots: Vec<PathBuf> = match layout {
        Layout::V1 {
            memory,
            cpu,
            cpuacct,
            pids,
        } => vec![memory.clone(), cpu.clone(), cpuacct.clone(), pids.clone()],
        Layout::V2(root) => vec![root.clone()],
    };
    let mut ids: Vec<String> = Vec::new();
    for r in roots {
        let Ok(rd) = std::fs::read_dir(r.join(parent)) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                ids.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// The host's layout, from /proc/self/mountinfo.
pub fn host_layout() -> Result<Layout, CgroupError> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("read", Path::new("/proc/self/mountinfo")))?;
    detect(&mi).ok_or(CgroupError::NoCgroups)
}

/// MemTotal from /proc/meminfo, in bytes.
pub fn host_memory() -> Result<u64, CgroupError> {
    let p = Path::new("/proc/meminfo");
    let t = std::fs::read_to_string(p).map_err(io_err("read", p))?;
    let kb = t
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX / 1024);
    Ok(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_files_are_found_under_a_parent_of_several_levels() {
        let at = |h: &str| PathBuf::from(format!("/sys/fs/cgroup/{h}/rctl-local/c-h1/id1"));
        let cg = Cgroup {
            v2: false,
            dirs: vec![at("memory"), at("cpu,cpuacct"), at("pids")],
        };
        assert_eq!(
            cg.file("memory", "memory.usage_in_bytes"),
            Some(at("memory").join("memory.usage_in_bytes"))
        );
        assert_eq!(
            cg.file("cpuacct", "cpuacct.usage"),
            Some(at("cpu,cpuacct").join("cpuacct.usage"))
        );
        assert_eq!(
            cg.file("pids", "pids.current"),
            Some(at("pids").join("pids.current"))
        );
        assert_eq!(cg.file("blkio", "x"), None);
    }

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const JOINED: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:5 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:6 - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime shared:7 - cgroup cgroup rw,pids
";
    const V2: &str = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

    fn v1() -> Layout {
        detect(HYBRID).unwrap()
    }

    #[test]
    fn layouts_are_detected_from_mountinfo() {
        assert_eq!(
            v1(),
            Layout::V1 {
                memory: "/sys/fs/cgroup/memory".into(),
                cpu: "/sys/fs/cgroup/cpu".into(),
                cpuacct: "/sys/fs/cgroup/cpuacct".into(),
                pids: "/sys/fs/cgroup/pids".into(),
            }
        );
        let joined = detect(JOINED).unwrap();
        assert_eq!(
            dirs(&joined, Path::new(PARENT), "c").len(),
            3,
            "cpu,cpuacct is one hierarchy"
        );
        assert_eq!(detect(V2), Some(Layout::V2("/sys/fs/cgroup".into())));
        assert_eq!(detect("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn v1_limits_go_to_each_hierarchy() {
        let l = Limits {
            memory_bytes: Some(32 << 20),
            cpu_millis: Some(1500),
            cpu_shares: Some(512),
            pids: Some(64),
        };
        let w = limit_writes(&v1(), Path::new(PARENT), "c1", &l);
        let get = |f: &str| {
            w.iter()
                .find(|(p, _)| p == Path::new(f))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("/sys/fs/cgroup/memory/rctl/c1/memory.limit_in_bytes"),
            Some("33554432")
        );
        assert_eq!(
            get("/sys/fs/cgroup/cpu/rctl/c1/cpu.cfs_quota_us"),
            Some("150000")
        );
        assert_eq!(
            get("/sys/fs/cgroup/cpu/rctl/c1/cpu.cfs_period_us"),
            Some("100000")
        );
        assert_eq!(get("/sys/fs/cgroup/cpu/rctl/c1/cpu.shares"), Some("512"));
        assert_eq!(get("/sys/fs/cgroup/pids/rctl/c1/pids.max"), Some("64"));
        assert!(limit_writes(&v1(), Path::new(PARENT), "c1", &Limits::default()).is_empty());
    }

    #[test]
    fn v2_limits_use_unified_names() {
        let l = Limits {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
            cpu_shares: Some(1024),
            pids: Some(100),
        };
        let layout = detect(V2).unwrap();
        assert_eq!(
            dirs(&layout, Path::new(PARENT), "c"),
            [PathBuf::from("/sys/fs/cgroup/rctl/c")]
        );
        let w: Vec<(String, String)> = limit_writes(&layout, Path::new(PARENT), "c", &l)
            .into_iter()
            .map(|(p, v)| (p.file_name().unwrap().to_string_lossy().into_owned(), v))
            .collect();
        let expect = [
            ("memory.max", "67108864"),
            ("memory.swap.max", "0"),
            ("cpu.max", "50000 100000"),
            ("cpu.weight", "39"),
            ("pids.max", "100"),
        ];
        for (f, v) in expect {
            assert!(
                w.contains(&(f.to_string(), v.to_string())),
                "{f}={v} in {w:?}"
            );
        }
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn impossible_limits_are_refused() {
        let mem = |m| Limits {
            memory_bytes: Some(m),
            ..Default::default()
        };
        assert!(matches!(
            validate(&mem(1), 1 << 30),
            Err(CgroupError::MemoryTooLow(1))
        ));
        assert!(matches!(
            validate(&mem(2 << 30), 1 << 30),
            Err(CgroupError::MemoryTooHigh { .. })
        ));
        assert!(validate(&mem(64 << 20), 1 << 30).is_ok());
        let pids = Limits {
            pids: Some(0),
            ..Default::default()
        };
        assert!(validate(&pids, 1 << 30).is_err());
    }

    #[test]
    fn oom_and_usage_files_parse() {
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed(oom, "oom_kill"), Some(2));
        let events = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed(events, "oom_kill"), Some(1));
        assert_eq!(keyed(events, "nope"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("33554432\n"), Some(33554432));
    }

    #[test]
    fn files_are_found_per_controller_on_v1() {
        let cg = Cgroup {
            v2: false,
            dirs: dirs(&detect(JOINED).unwrap(), Path::new(PARENT), "c"),
        };
        assert_eq!(
            cg.file("cpuacct", "cpuacct.usage"),
            Some("/sys/fs/cgroup/cpu,cpuacct/rctl/c/cpuacct.usage".into())
        );
        assert_eq!(
            cg.file("memory", "memory.oom_control"),
            Some("/sys/fs/cgroup/memory/rctl/c/memory.oom_control".into())
        );
    }

    #[test]
    fn every_container_cgroup_is_found_and_its_processes_read() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let layout = Layout::V1 {
            memory: root.join("memory"),
            cpu: root.join("cpu,cpuacct"),
            cpuacct: root.join("cpu,cpuacct"),
            pids: root.join("pids"),
        };
        let parent = Path::new("rctl-local/h1/containers");
        // One only in pids (its other directories already removed), one everywhere.
        std::fs::create_dir_all(root.join("pids").join(parent).join("aaaa")).unwrap();
        for d in dirs(&layout, parent, "bbbb") {
            std::fs::create_dir_all(&d).unwrap();
        }
        std::fs::write(root.join("pids").join(parent).join("not-a-dir"), "").unwrap();
        assert_eq!(children(&layout, parent), vec!["aaaa", "bbbb"]);

        let cg = Cgroup::of(&layout, parent, "bbbb");
        std::fs::write(cg.dirs[0].join("cgroup.procs"), "12\n7\n").unwrap();
        std::fs::write(cg.dirs[2].join("cgroup.procs"), "7\n99\n").unwrap();
        assert_eq!(cg.procs(), vec![7, 12, 99]);
        assert!(children(&layout, Path::new("nothing/here")).is_empty());
    }
}
