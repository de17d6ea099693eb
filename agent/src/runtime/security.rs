//! What confines a container's processes, as plain data: the capability set, the masked and
//! read-only paths, rlimits, the user to run as, no-new-privileges and whether the default
//! seccomp filter applies. [`Profile::docker_default`] builds Docker's defaults; the
//! container's PID 1 (`rootfs`) and `exec` apply a profile with the syscalls in `confine`.
//!
//! Users are named as Docker does (`uid`, `uid:gid`, `name`, `name:group`) and resolved
//! against the container's own /etc/passwd and /etc/group by [`resolve_user`], a pure
//! function over the files' text.

use serde::{Deserialize, Serialize};

/// Docker's default capability set (moby `oci/caps/defaults.go`): CapEff 00000000a80425fb.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Docker's masked paths: files get /dev/null bound over them, directories an empty
/// read-only tmpfs.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths: bound onto themselves and remounted read-only.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Open files per process when nothing else is asked for (Docker's daemon default).
pub const DEFAULT_NOFILE: u64 = 1_048_576;

/// One resource limit, soft and hard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: RlimitKind,
    pub soft: u64,
    pub hard: u64,
}

/// The rlimits a task can set (the others are inherited from the agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RlimitKind {
    Nofile,
    Nproc,
    Core,
}

/// How one container's processes are confined; saved as `profile.json` in the container
/// directory so the shim's child and every later `exec` apply the same thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Kept in the bounding set; also permitted/effective/inheritable for uid 0.
    pub capabilities: Vec<String>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privileges: bool,
    /// Whether the default seccomp filter is installed.
    pub seccomp: bool,
    /// `uid`, `uid:gid`, `name` or `name:group`; empty means root.
    pub user: String,
    /// The container's cgroup, joined before anything else (then a cgroup namespace is
    /// made, so the container sees it as its root).
    #[serde(default)]
    pub cgroup: Option<super::cgroups::Cgroup>,
    /// Bind, volume and tmpfs mounts, host sides resolved.
    #[serde(default)]
    pub mounts: Vec<super::mounts::Mount>,
    /// The user namespace's id map (`--userns-remap`); None: the host's user namespace.
    /// PID 1 enters it last, right before taking the container's user, and so does exec.
    #[serde(default)]
    pub userns: Option<super::userns::IdMap>,
}

impl Profile {
    /// Docker's defaults for a container running as `user` (from the task, else the image).
    pub fn docker_default(user: &str) -> Self {
        Self {
            capabilities: DEFAULT_CAPS.iter().map(|s| s.to_string()).collect(),
            masked_paths: MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
            readonly_paths: READONLY_PATHS.iter().map(|s| s.to_string()).collect(),
            rlimits: vec![Rlimit {
                resource: RlimitKind::Nofile,
                soft: DEFAULT_NOFILE,
                hard: DEFAULT_NOFILE,
            }],
            no_new_privileges: true,
            seccomp: true,
            user: user.to_string(),
            cgroup: None,
            mounts: Vec::new(),
            userns: None,
        }
    }
}

/// The limit to set when `want` cannot be raised above the current hard limit `hard`.
pub fn clamp_rlimit(want: &Rlimit, hard: u64) -> (u64, u64) {
    let h = want.hard.min(hard);
    (want.soft.min(h), h)
}

/// Who the process runs as, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups from /etc/group (the primary group first, as Docker does).
    pub groups: Vec<u32>,
    /// The passwd home, for `HOME` when neither image nor task sets it.
    pub home: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {0:?} not found in the container's /etc/passwd")]
    NoUser(String),
    #[error("group {0:?} not found in the container's /etc/group")]
    NoGroup(String),
    #[error("bad user {0:?}: expected uid, uid:gid, name or name:group")]
    Bad(String),
}

/// One `/etc/passwd` entry.
struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = Passwd<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || l.starts_with('#') {
            return None;
        }
        Some(Passwd {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// `(name, gid, members)` of each `/etc/group` entry.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || l.starts_with('#') {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Resolves `spec` as Docker does: a numeric uid need not exist in /etc/passwd (gid then
/// defaults to 0 or the entry's), a name must; supplementary groups are the groups that
/// list the user's name as a member.
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() && grp.is_none() {
        return resolve_user("0", passwd, group);
    }
    if user.is_empty() || grp.is_some_and(str::is_empty) || spec.matches(':').count() > 1 {
        return Err(UserError::Bad(spec.to_string()));
    }
    let entry = passwd_entries(passwd).find(|p| {
        if is_id(user) {
            user.parse() == Ok(p.uid)
        } else {
            p.name == user
        }
    });
    let (uid, mut gid, name, home) = match entry {
        Some(p) => (p.uid, p.gid, Some(p.name), p.home.to_string()),
        None if is_id(user) => (
            user.parse().map_err(|_| UserError::Bad(spec.to_string()))?,
            0,
            None,
            "/".to_string(),
        ),
        None => return Err(UserError::NoUser(user.to_string())),
    };
    if let Some(g) = grp {
        gid = if is_id(g) {
            g.parse().map_err(|_| UserError::Bad(spec.to_string()))?
        } else {
            group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, id, _)| id)
                .ok_or_else(|| UserError::NoGroup(g.to_string()))?
        };
    }
    let mut groups = vec![gid];
    if let Some(name) = name {
        for (_, id, members) in group_entries(group) {
            if members.contains(&name) && !groups.contains(&id) {
                groups.push(id);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

/// Sets `HOME` from the passwd entry when the environment has none (Docker does the same).
pub fn with_home(mut env: Vec<String>, id: &Identity) -> Vec<String> {
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", id.home));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:root,app\napp:x:1000:\nvideo:x:44:app\n";

    #[test]
    fn default_caps_are_dockers_cap_eff() {
        let mut mask = 0u64;
        for c in DEFAULT_CAPS {
            let cap: caps::Capability = c.parse().unwrap();
            mask |= cap.bitmask();
        }
        assert_eq!(format!("{mask:016x}"), "00000000a80425fb");
        let p = Profile::docker_default("");
        assert!(p.no_new_privileges && p.seccomp);
        assert!(p.masked_paths.iter().any(|m| m == "/proc/kcore"));
        assert!(p.readonly_paths.iter().any(|m| m == "/proc/sys"));
    }

    #[test]
    fn users_resolve_like_docker() {
        let r = |s| resolve_user(s, PASSWD, GROUP);
        assert_eq!(
            r("").unwrap(),
            Identity {
                uid: 0,
                gid: 0,
                groups: vec![0, 10],
                home: "/root".into()
            }
        );
        let app = r("app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.groups),
            (1000, 1000, vec![1000, 10, 44])
        );
        assert_eq!(app.home, "/home/app");
        assert_eq!(r("1000").unwrap().groups, vec![1000, 10, 44]);
        let x = r("app:video").unwrap();
        assert_eq!((x.uid, x.gid), (1000, 44));
        // A numeric uid need not exist; its gid is 0 and its home /.
        let n = r("4242:77").unwrap();
        assert_eq!(
            (n.uid, n.gid, n.groups, n.home),
            (4242, 77, vec![77], "/".into())
        );
        assert_eq!(r("4242").unwrap().gid, 0);
    }

    #[test]
    fn bad_users_are_refused_with_a_reason() {
        let r = |s| resolve_user(s, PASSWD, GROUP);
        assert_eq!(r("nobody"), Err(UserError::NoUser("nobody".into())));
        assert_eq!(r("app:nogroup"), Err(UserError::NoGroup("nogroup".into())));
        assert!(matches!(r(":0"), Err(UserError::Bad(_))));
        assert!(matches!(r("app:"), Err(UserError::Bad(_))));
        assert!(matches!(r("a:b:c"), Err(UserError::Bad(_))));
        assert!(matches!(r("99999999999"), Err(UserError::Bad(_))));
        // Comments and short lines are skipped, not parsed.
        assert!(resolve_user("x", "#x:x:1:1:x:/:/bin/sh\nx:1\n", "").is_err());
    }

    #[test]
    fn rlimits_clamp_to_what_the_agent_has() {
        let r = Rlimit {
            resource: RlimitKind::Nofile,
            soft: DEFAULT_NOFILE,
            hard: DEFAULT_NOFILE,
        };
        assert_eq!(clamp_rlimit(&r, 20_000), (20_000, 20_000));
        assert_eq!(clamp_rlimit(&r, u64::MAX), (DEFAULT_NOFILE, DEFAULT_NOFILE));
    }

    #[test]
    fn home_comes_from_passwd_unless_set() {
        let id = resolve_user("app", PASSWD, GROUP).unwrap();
        assert_eq!(with_home(vec![], &id), ["HOME=/home/app"]);
        assert_eq!(with_home(vec!["HOME=/x".into()], &id), ["HOME=/x"]);
    }
}
