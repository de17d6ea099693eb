//! What a process inside an rctl container sees: its own pid namespace, hostname, Docker's
//! default capabilities, no-new-privileges and seccomp; masked and read-only /proc; no
//! mounting, namespaces, keyring or modules; none of the host's processes, mounts or
//! interfaces. Each container runs a busybox script that writes key=value lines to
//! /tmp/out, read from the container's upper dir on the host.

mod common;

use std::collections::HashMap;

use common::TestRuntime;

fn parse(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

const SCRIPT: &str = r#"exec > /tmp/out 2>&1
echo pid=$$
echo cmdline=$(tr '\0' ' ' < /proc/1/cmdline)
echo hostname=$(hostname)
grep -E '^(CapEff|CapPrm|CapBnd|CapInh|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status | tr -d ' \t' | sed 's/:/=/'
echo kcore=$(wc -c < /proc/kcore)
echo keys=$(wc -c < /proc/keys)
echo timer_list=$(wc -c < /proc/timer_list)
echo firmware=$(ls /sys/firmware | wc -l)
if echo x > /proc/sys/kernel/hostname; then echo sysctl=written; else echo sysctl=refused; fi
if mount -t tmpfs x /mnt; then echo sh_mount=ok; else echo sh_mount=refused; fi
if unshare -n true; then echo sh_unshare=ok; else echo sh_unshare=refused; fi
if echo junk > /tmp/m.ko && insmod /tmp/m.ko; then echo insmod=ok; else echo insmod=refused; fi
/bin/probe keyctl add_key unshare_user clone_newuser clone3 init_module bpf userfaultfd ptrace mount setns fork fds
echo cwd=$(readlink /proc/self/cwd)
echo pids=$(ls /proc | grep -E '^[0-9]+$' | tr '\n' ',')
echo ifaces=$(ls /sys/class/net | tr '\n' ',')
echo nofile=$(ulimit -n)
echo cgroup_not_root=$(grep -vc ':/$' /proc/self/cgroup)
echo done=1
"#;

#[tokio::test]
async fn container_is_isolated_like_docker() {
    let t = TestRuntime::new();
    let mut spec = t.spec("iso1", SCRIPT);
    spec.hostname = Some("isohost".into());
    let (exit, out, running) = t.run(&spec).await;
    let kv = parse(&out);
    assert_eq!(exit.code, 0, "{out}");
    assert_eq!(kv["done"], "1", "{out}");
    assert_eq!(kv["pid"], "1", "the script is PID 1: {out}");
    assert!(kv["cmdline"].starts_with("sh -c exec"), "{out}");
    assert_eq!(kv["hostname"], "isohost");
    // Docker's default set, in every set but ambient.
    for set in ["CapEff", "CapPrm", "CapBnd", "CapInh"] {
        assert_eq!(kv[set], "00000000a80425fb", "{set}: {out}");
    }
    assert_eq!(kv["CapAmb"], "0000000000000000");
    assert_eq!(kv["NoNewPrivs"], "1");
    assert_eq!(kv["Seccomp"], "2");
    // Masked when the kernel has it (kernels without CONFIG_PROC_KCORE have none).
    let kcore_on_host = std::path::Path::new("/proc/kcore").exists();
    assert_eq!(
        kv["kcore"],
        if kcore_on_host { "0" } else { "" },
        "/proc/kcore"
    );
    assert_eq!(kv["timer_list"], "0", "/proc/timer_list is masked");
    assert_eq!(kv["firmware"], "0", "/sys/firmware is masked");
    assert_eq!(kv["keys"], "0", "/proc/keys is masked");
    assert_eq!(kv["sysctl"], "refused", "/proc/sys is read-only");
    assert_eq!(kv["sh_mount"], "refused");
    assert_eq!(kv["sh_unshare"], "refused");
    assert_eq!(kv["insmod"], "refused");
    for call in [
        "keyctl",
        "add_key",
        "unshare_user",
        "clone_newuser",
        "init_module",
        "bpf",
        "userfaultfd",
        "ptrace",
        "mount",
        "setns",
    ] {
        assert_eq!(
            kv[call], "EPERM",
            "{call} must be refused by seccomp: {out}"
        );
    }
    assert_eq!(kv["clone3"], "ENOSYS", "libc falls back to clone");
    assert_eq!(kv["fork"], "ok", "plain fork still works");
    assert_eq!(kv["fds"], "0,1,2,", "no agent fd leaks in");
    assert_eq!(kv["cwd"], "/");
    // Only the script and its few children: the host has hundreds of processes.
    let pids: Vec<u32> = kv["pids"]
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.contains(&1) && pids.len() < 10, "pids: {pids:?}");
    assert_eq!(kv["ifaces"], "lo,", "no network attached: only loopback");
    // Docker's 1048576, or as much as this (possibly confined) test process may give.
    assert_eq!(kv["nofile"], nofile_hard().min(1_048_576).to_string());
    assert_eq!(
        kv["cgroup_not_root"], "0",
        "cgroup namespace rooted at the container's"
    );
    running.delete().await;
}

#[tokio::test]
async fn host_mounts_and_processes_are_invisible() {
    let t = TestRuntime::new();
    let host_path = t.tmp.path().display().to_string();
    let script = "cat /proc/self/mountinfo > /tmp/out; ps -o pid,comm >> /tmp/out";
    let (exit, out, running) = t.run(&t.spec("iso2", script)).await;
    assert_eq!(exit.code, 0, "{out}");
    assert!(out.contains(" / "), "mountinfo was read: {out}");
    assert!(
        !out.contains(&host_path),
        "host path {host_path} visible inside: {out}"
    );
    // The test binary itself runs on the host: a shared pid namespace would list it.
    let me = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert!(!out.contains(me.trim()), "host process visible: {out}");
    running.delete().await;
}

/// The hard open-files limit of this process.
fn nofile_hard() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    f[4].parse().unwrap_or(u64::MAX)
}

#[test]
fn probe_sees_success_outside_a_container() {
    // The probe must be able to report success, or the EPERMs above prove nothing.
    let tmp = tempfile::tempdir().unwrap();
    let layer = common::busybox_layer(tmp.path());
    let out = common::run(std::process::Command::new(layer.join("bin/probe")).args([
        "unshare_user",
        "fork",
        "fds",
    ]));
    let kv = parse(&out);
    assert_eq!(kv["unshare_user"], "ok", "{out}");
    assert_eq!(kv["fork"], "ok");
}
