//! The containers' seccomp filter: an allow list equivalent to Docker's default profile
//! (moby `profiles/seccomp/default.json`), for the container's capability set. Syscalls
//! Docker allows everyone run; those it allows only with a capability run when the container
//! has it; `personality` only with the personas Docker lists, `socket` not for AF_ALG or
//! AF_VSOCK, `clone` without namespace flags and `clone3` answered ENOSYS (so libc falls back
//! to `clone`, whose flags a filter can see) unless the container has CAP_SYS_ADMIN.
//!
//! Answers: EPERM for every known syscall not allowed (as Docker's `defaultErrnoRet`), and
//! for any other ABI — another audit architecture (i386 through `int 0x80`) or a number with
//! x32's bit 30 set — so a kernel with x32 or ia32 emulation on runs nothing unfiltered;
//! ENOSYS for numbers above the highest this agent knows (newer syscalls, as runc does, so
//! libc falls back). A number in a hole of the table (never assigned) gets EPERM, which the
//! kernel alone never answers for it: that is how a test sees the filter answer.
//!
//! One deviation, stricter than Docker: `ptrace` and `process_vm_readv/writev` need
//! CAP_SYS_PTRACE (Docker allows them to everyone on kernels from 4.8).
//!
//! Deciding the rules is pure ([`rules`], [`policy`]); [`bpf`] compiles them; installing the
//! program is one call in `confine`.

mod bpf;
mod syscalls;

use std::collections::BTreeMap;

use seccompiler::BpfProgram;

pub use bpf::{Action, Rule};

#[derive(Debug, thiserror::Error)]
#[error("build seccomp filter: {0}")]
pub struct SeccompError(String);

/// Docker's list of syscalls allowed to every container, verbatim (moby/profiles
/// `seccomp/default.json` at 3c28324, May 2026, the first `SCMP_ACT_ALLOW` entry). Names
/// this architecture lacks (`chown32`, `_llseek`, ...) are skipped.
#[rustfmt::skip]
pub const DOCKER_ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat", "capget",
    "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64",
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64",
    "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range", "connect",
    "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create", "epoll_create1",
    "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old",
    "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group", "faccessat",
    "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod",
    "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync",
    "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64",
    "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex",
    "futex_requeue", "futex_time64", "futex_wait", "futex_waitv", "futex_wake", "futimesat",
    "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32", "geteuid",
    "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer", "getpeername",
    "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid",
    "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list", "getrusage",
    "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday",
    "getuid", "getuid32", "getxattr", "getxattrat", "inotify_add_watch", "inotify_init",
    "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup",
    "io_submit", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen",
    "listmount", "listxattr", "listxattrat", "llistxattr", "_llseek", "lremovexattr", "lseek",
    "lsetxattr", "lstat", "lstat64", "madvise", "map_shadow_stack", "membarrier",
    "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock",
    "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
    "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64",
    "mq_unlink", "mremap", "mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock",
    "munlockall", "munmap", "name_to_handle_at", "nanosleep", "newfstatat", "_newselect",
    "open", "openat", "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl",
    "pread64", "preadv", "preadv2", "prlimit64", "process_mrelease", "pselect6",
    "pselect6_time64", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink",
    "readlinkat", "readv", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg",
    "remap_file_pages", "removexattr", "removexattrat", "rename", "renameat", "renameat2",
    "restart_syscall", "riscv_hwprobe", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity",
    "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select",
    "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send", "sendfile",
    "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid",
    "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid",
    "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
    "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid",
    "setsockopt", "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr",
    "setxattrat", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd",
    "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair", "splice", "stat",
    "stat64", "statfs", "statfs64", "statmount", "statx", "symlink", "symlinkat", "sync",
    "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate", "truncate64",
    "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "uretprobe", "utime", "utimensat",
    "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write",
    "writev",
];

/// Docker's per-architecture additions for this one.
#[cfg(target_arch = "x86_64")]
const ARCH_ALLOWED: &[&str] = &["arch_prctl", "modify_ldt"];
#[cfg(not(target_arch = "x86_64"))]
const ARCH_ALLOWED: &[&str] = &[];

/// Docker's syscalls allowed only to a container holding the capability. CAP_SYS_PTRACE's
/// list also carries `ptrace` and `process_vm_*`, which Docker gives everyone (see above).
pub const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// The personas `personality` may set (Docker's): PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26|PER_LINUX32, and 0xffffffff, which only queries.
pub const PERSONAS: [u32; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Every namespace flag `clone` may carry: NEWNS NEWCGROUP NEWUTS NEWIPC NEWUSER NEWPID
/// NEWNET (Docker's mask 0x7E020000).
pub const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;

/// Socket families refused (Docker's): AF_ALG, AF_VSOCK.
pub const DENIED_FAMILIES: [u32; 2] = [libc::AF_ALG as u32, libc::AF_VSOCK as u32];

const EPERM: u16 = libc::EPERM as u16;
const ENOSYS: u16 = libc::ENOSYS as u16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the seccomp filter has syscall tables for x86_64 and aarch64 only");

/// The rule of every syscall a container with `caps` (its bounding set, as Docker reads
/// it) may make, by number; any syscall not here is refused.
pub fn rules(caps: &[String]) -> BTreeMap<u32, Rule> {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let granted = BY_CAPABILITY
        .iter()
        .filter(|(cap, _)| has(cap))
        .flat_map(|(_, names)| names.iter());
    let mut rules = BTreeMap::new();
    for name in DOCKER_ALLOWED.iter().chain(ARCH_ALLOWED).chain(granted) {
        if let Some(nr) = syscalls::number(name) {
            rules.insert(nr, Rule::Always(Action::Allow));
        }
    }
    let mut set = |name: &str, rule| {
        if let Some(nr) = syscalls::number(name) {
            rules.insert(nr, rule);
        }
    };
    set(
        "personality",
        Rule::ArgIn {
            arg: 0,
            values: PERSONAS.to_vec(),
            deny: EPERM,
        },
    );
    set(
        "socket",
        Rule::ArgNotIn {
            arg: 0,
            values: DENIED_FAMILIES.to_vec(),
            deny: EPERM,
        },
    );
    if !has("CAP_SYS_ADMIN") {
        // Flags are clone's first argument on x86_64 and aarch64 (s390 swaps them).
        set(
            "clone",
            Rule::ArgNoBits {
                arg: 0,
                mask: NAMESPACE_FLAGS,
                deny: EPERM,
            },
        );
        set("clone3", Rule::Always(Action::Errno(ENOSYS)));
    }
    rules
}

/// The whole policy for a container with `caps`, with the answers described above.
pub fn policy(caps: &[String]) -> bpf::Policy {
    bpf::Policy {
        arch: AUDIT_ARCH,
        syscalls: rules(caps).into_iter().collect(),
        highest: syscalls::highest(),
        foreign: EPERM,
        newer: ENOSYS,
        otherwise: EPERM,
    }
}

/// The filter for a container with `caps`, ready for `seccompiler::apply_filter`.
pub fn default_filter(caps: &[String]) -> Result<BpfProgram, SeccompError> {
    let prog = bpf::compile(&policy(caps));
    if prog.len() > bpf::MAX_INSNS {
        return Err(SeccompError(format!(
            "{} instructions, more than the kernel's {}",
            prog.len(),
            bpf::MAX_INSNS
        )));
    }
    Ok(prog)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::security::DEFAULT_CAPS;

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const ERR_PERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ERR_NOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

    fn default_caps() -> Vec<String> {
        DEFAULT_CAPS.iter().map(|c| c.to_string()).collect()
    }

    fn nr(name: &str) -> u32 {
        syscalls::number(name).unwrap_or_else(|| panic!("{name} has no number"))
    }

    /// What the installed filter answers for `name` with `args`.
    fn answer(prog: &[seccompiler::sock_filter], name: &str, args: [u64; 6]) -> u32 {
        bpf::run(prog, AUDIT_ARCH, nr(name), args)
    }

    #[test]
    fn dockers_allowed_list_is_allowed_and_nothing_else() {
        let prog = default_filter(&default_caps()).unwrap();
        let mut allowed = 0;
        for name in DOCKER_ALLOWED {
            if syscalls::number(name).is_some() {
                assert_eq!(answer(&prog, name, [0; 6]), ALLOW, "{name}");
                allowed += 1;
            }
        }
        assert!(allowed >= 290, "only {allowed} of Docker's names resolved");
        // Every other syscall this architecture has is refused, but for the ones with an
        // argument rule, Docker's per-architecture ones and CAP_SYS_CHROOT's chroot.
        let special = ["personality", "socket", "clone", "clone3", "chroot"];
        for (n, name) in syscalls::all() {
            if DOCKER_ALLOWED.contains(&name)
                || ARCH_ALLOWED.contains(&name)
                || special.contains(&name)
            {
                continue;
            }
            assert_eq!(bpf::run(&prog, AUDIT_ARCH, n, [0; 6]), ERR_PERM, "{name}");
        }
        assert_eq!(
            answer(&prog, "chroot", [0; 6]),
            ALLOW,
            "CAP_SYS_CHROOT is default"
        );
    }

    #[test]
    fn dangerous_syscalls_are_refused_with_eperm() {
        let prog = default_filter(&default_caps()).unwrap();
        for name in [
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "fsopen",
            "open_tree",
            "move_mount",
            "init_module",
            "finit_module",
            "delete_module",
            "kexec_load",
            "kexec_file_load",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "perf_event_open",
            "userfaultfd",
            "io_uring_setup",
            "io_uring_enter",
            "open_by_handle_at",
            "reboot",
            "swapon",
            "acct",
            "quotactl",
            "settimeofday",
            "clock_settime",
            "iopl",
            "ioperm",
            "mbind",
            "syslog",
            "vhangup",
            "sethostname",
            "kcmp",
            "lookup_dcookie",
            "fanotify_init",
            "listns",
        ] {
            assert_eq!(answer(&prog, name, [0; 6]), ERR_PERM, "{name}");
        }
    }

    #[test]
    fn argument_rules_follow_docker() {
        let prog = default_filter(&default_caps()).unwrap();
        let a0 = |v: u64| [v, 0, 0, 0, 0, 0];
        for p in PERSONAS {
            assert_eq!(answer(&prog, "personality", a0(p.into())), ALLOW);
        }
        // READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE: refused.
        assert_eq!(answer(&prog, "personality", a0(0x0400000)), ERR_PERM);
        assert_eq!(answer(&prog, "personality", a0(0x0040000)), ERR_PERM);
        let sig = libc::SIGCHLD as u64;
        assert_eq!(answer(&prog, "clone", a0(sig)), ALLOW, "fork");
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(answer(&prog, "clone", a0(thread)), ALLOW, "pthread_create");
        for flag in [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWCGROUP,
        ] {
            assert_eq!(
                answer(&prog, "clone", a0(flag as u64 | sig)),
                ERR_PERM,
                "{flag:#x}"
            );
        }
        assert_eq!(answer(&prog, "clone3", [0; 6]), ERR_NOSYS);
        assert_eq!(answer(&prog, "socket", a0(libc::AF_INET as u64)), ALLOW);
        assert_eq!(answer(&prog, "socket", a0(libc::AF_UNIX as u64)), ALLOW);
        assert_eq!(answer(&prog, "socket", a0(libc::AF_NETLINK as u64)), ALLOW);
        assert_eq!(answer(&prog, "socket", a0(libc::AF_VSOCK as u64)), ERR_PERM);
        assert_eq!(answer(&prog, "socket", a0(libc::AF_ALG as u64)), ERR_PERM);
        assert_eq!(
            answer(&prog, "socket", a0(1 << 32 | libc::AF_VSOCK as u64)),
            ERR_PERM
        );
    }

    #[test]
    fn other_abis_and_unknown_numbers_are_refused() {
        let prog = default_filter(&default_caps()).unwrap();
        let x32 = |name| bpf::X32_SYSCALL_BIT | nr(name);
        for name in ["unshare", "keyctl", "bpf", "getpid", "read"] {
            assert_eq!(
                bpf::run(&prog, AUDIT_ARCH, x32(name), [0; 6]),
                ERR_PERM,
                "x32 {name}"
            );
        }
        // i386 (`int 0x80` on x86_64): 20 is its getpid.
        assert_eq!(bpf::run(&prog, 0x4000_0003, 20, [0; 6]), ERR_PERM);
        // Never assigned on x86_64 or aarch64: the kernel alone would answer ENOSYS.
        assert_eq!(bpf::run(&prog, AUDIT_ARCH, 380, [0; 6]), ERR_PERM);
        // Newer than the table: ENOSYS, so libc falls back.
        let next = syscalls::highest() + 1;
        assert_eq!(bpf::run(&prog, AUDIT_ARCH, next, [0; 6]), ERR_NOSYS);
        assert_eq!(bpf::run(&prog, AUDIT_ARCH, 1000, [0; 6]), ERR_NOSYS);
        assert_eq!(bpf::run(&prog, AUDIT_ARCH, u32::MAX, [0; 6]), ERR_PERM);
    }

    #[test]
    fn capabilities_open_dockers_groups() {
        let mut caps = default_caps();
        caps.retain(|c| c != "CAP_SYS_CHROOT");
        let prog = default_filter(&caps).unwrap();
        assert_eq!(answer(&prog, "chroot", [0; 6]), ERR_PERM);
        caps.push("CAP_SYS_ADMIN".into());
        caps.push("CAP_SYS_PTRACE".into());
        let prog = default_filter(&caps).unwrap();
        for name in [
            "mount", "unshare", "setns", "bpf", "clone3", "ptrace", "kcmp",
        ] {
            assert_eq!(answer(&prog, name, [0; 6]), ALLOW, "{name}");
        }
        let newuser = libc::CLONE_NEWUSER as u64 | libc::SIGCHLD as u64;
        assert_eq!(answer(&prog, "clone", [newuser, 0, 0, 0, 0, 0]), ALLOW);
        // Still refused: no capability opens them.
        for name in ["keyctl", "userfaultfd", "io_uring_setup", "kexec_load"] {
            assert_eq!(answer(&prog, name, [0; 6]), ERR_PERM, "{name}");
        }
        assert_eq!(
            answer(&prog, "personality", [0x0400000, 0, 0, 0, 0, 0]),
            ERR_PERM
        );
    }
}
