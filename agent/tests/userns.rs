//! Containers in a user namespace (`--userns-remap 100000:65536`): root inside is host uid
//! 100000 outside, the image's files are root's inside and writable by it, `exec` joins the
//! same namespace, Docker's confinement holds as without one, a task can opt out with the
//! host's namespace, and delete leaves nothing. Also: the agent refuses a malformed range.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::TestRuntime;
use rctl_agent::runtime::cgroups;
use rctl_agent::runtime::container::ContainerSpec;
use rctl_agent::runtime::exec::{self, ExecSpec, ExecStdio};
use rctl_agent::runtime::mounts;
use rctl_agent::runtime::userns::IdMap;

const MAP: IdMap = IdMap {
    host_start: 100000,
    count: 65536,
};

fn remapped() -> TestRuntime {
    let mut t = TestRuntime::new();
    t.rt = t.rt.clone().with_userns_remap(Some(MAP));
    t
}

fn parse(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// `0 100000 65536` from a uid_map line's columns.
const UID_MAP: &str = "echo uid_map=$(tr -s ' ' < /proc/self/uid_map | sed 's/^ //')";

/// Starts `spec` and waits until its script wrote `done=1` to /tmp/out; returns what it
/// wrote and the running container.
async fn start_until_done<'a>(
    t: &'a TestRuntime,
    spec: &ContainerSpec,
) -> (String, common::Running<'a>) {
    let mut c = t.rt.create(spec).await.expect("create");
    t.rt.start(&mut c).await.expect("start");
    let out_file = c.dir.upper().join("tmp/out");
    let running = common::Running {
        rt: &t.rt,
        c: Some(c),
    };
    for _ in 0..500 {
        let out = std::fs::read_to_string(&out_file).unwrap_or_default();
        if out.contains("done=1") {
            return (out, running);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the container never finished its script: {}",
        std::fs::read_to_string(&out_file).unwrap_or_default()
    );
}

/// The `Uid:` line of /proc/PID/status on the host, its four ids.
fn host_uids(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn root_inside_is_the_mapped_uid_outside() {
    let t = remapped();
    let script = format!(
        r#"R=refused; if echo probe > /dev/stdout; then R=ok; fi
exec > /tmp/out 2>&1
{UID_MAP}
echo gid_map=$(tr -s ' ' < /proc/self/gid_map | sed 's/^ //')
echo id=$(id -u):$(id -g)
echo sh_owner=$(stat -L -c %u:%g /bin/sh)
echo root_owner=$(stat -c %u /)
if echo hi > /etc/x; then echo etc_write=ok; else echo etc_write=refused; fi
echo etc_x_owner=$(stat -c %u /etc/x)
echo hostname_owner=$(stat -c %u /etc/hostname)
echo dev_owner=$(stat -c %u /dev)
echo workdir=$(pwd) $(stat -c %u .)
touch /tmp/app && chown 1000:1000 /tmp/app && echo chown=ok
echo null=$(echo x > /dev/null && echo ok)
echo stdio_reopen=$R
if httpd -p 80 -h /tmp; then echo bind80=ok; else echo bind80=refused; fi
echo done=1
exec sleep 60
"#
    );
    let mut spec = t.spec("uns-ids", &script);
    spec.workdir = Some("/srv/app".into());
    let (out, running) = start_until_done(&t, &spec).await;
    let kv = parse(&out);
    assert_eq!(kv["uid_map"], "0 100000 65536", "{out}");
    assert_eq!(kv["gid_map"], "0 100000 65536", "{out}");
    assert_eq!(kv["id"], "0:0", "{out}");
    assert_eq!(
        kv["sh_owner"], "0:0",
        "the image's files are root's inside: {out}"
    );
    assert_eq!(kv["root_owner"], "0", "{out}");
    assert_eq!(kv["etc_write"], "ok", "{out}");
    assert_eq!(kv["etc_x_owner"], "0", "{out}");
    assert_eq!(kv["hostname_owner"], "0", "{out}");
    assert_eq!(kv["dev_owner"], "0", "{out}");
    assert_eq!(
        kv["workdir"], "/srv/app 0",
        "made by the container's root: {out}"
    );
    assert_eq!(kv["chown"], "ok", "{out}");
    assert_eq!(kv["null"], "ok", "{out}");
    assert_eq!(kv["stdio_reopen"], "ok", "{out}");
    assert_eq!(kv["bind80"], "ok", "a server can listen on port 80: {out}");

    // Outside, the same process and files belong to the mapped range.
    let c = running.container();
    let pid = c.pid().unwrap().pid;
    assert_eq!(host_uids(pid), "100000 100000 100000 100000");
    use std::os::unix::fs::MetadataExt;
    let x = std::fs::metadata(c.dir.upper().join("etc/x")).unwrap();
    assert_eq!((x.uid(), x.gid()), (100000, 100000));
    let app = std::fs::metadata(c.dir.upper().join("tmp/app")).unwrap();
    assert_eq!((app.uid(), app.gid()), (101000, 101000));
    // The image's layer itself is untouched: still root's on disk.
    let sh = std::fs::metadata(t.layer.join("bin/busybox")).unwrap();
    assert_eq!(sh.uid(), 0);
    running.delete().await;
}

#[tokio::test]
async fn volumes_belong_to_the_containers_root() {
    let t = remapped();
    let mut spec = t.spec(
        "uns-vol",
        "exec > /tmp/out 2>&1; echo owner=$(stat -c %u /v); \
         if echo kept > /v/f; then echo write=ok; else echo write=refused; fi; \
         echo f_owner=$(stat -c %u /v/f)",
    );
    spec.mounts = vec![mounts::parse_volume("unsdata:/v").unwrap()];
    let (exit, out, running) = t.run(&spec).await;
    assert_eq!(exit.code, 0, "{out}");
    let kv = parse(&out);
    assert_eq!(kv["owner"], "0", "{out}");
    assert_eq!(kv["write"], "ok", "{out}");
    assert_eq!(kv["f_owner"], "0", "{out}");
    running.delete().await;
    // The volume is idmapped, not chowned: on disk its files are the ids the container
    // used, so a container in the host's user namespace sees them the same.
    let data = mounts::volume_dir(&t.tmp.path().join("root"), "unsdata");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(data.join("f")).unwrap().uid(), 0);
}

/// What the isolation tests check, with the user namespace on.
const CONFINEMENT: &str = r#"exec > /tmp/out 2>&1
echo pid=$$
grep -E '^(CapEff|CapPrm|CapBnd|CapInh|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status | tr -d ' \t' | sed 's/:/=/'
echo kcore=$(wc -c < /proc/kcore)
echo keys=$(wc -c < /proc/keys)
if echo x > /proc/sys/kernel/hostname; then echo sysctl=written; else echo sysctl=refused; fi
if mount -t tmpfs x /mnt; then echo sh_mount=ok; else echo sh_mount=refused; fi
if unshare -n true; then echo sh_unshare=ok; else echo sh_unshare=refused; fi
if hostname other; then echo sethostname=ok; else echo sethostname=refused; fi
/bin/probe keyctl unshare_user clone_newuser mount setns ptrace fork fds
echo ifaces=$(ls /sys/class/net | tr '\n' ',')
echo cgroup_not_root=$(grep -vc ':/$' /proc/self/cgroup)
echo done=1
"#;

#[tokio::test]
async fn dockers_confinement_holds_in_a_user_namespace() {
    let t = remapped();
    let (exit, out, running) = t.run(&t.spec("uns-conf", CONFINEMENT)).await;
    let kv = parse(&out);
    assert_eq!(exit.code, 0, "{out}");
    assert_eq!(kv["done"], "1", "{out}");
    assert_eq!(kv["pid"], "1", "{out}");
    for set in ["CapEff", "CapPrm", "CapBnd", "CapInh"] {
        assert_eq!(kv[set], "00000000a80425fb", "{set}: {out}");
    }
    assert_eq!(kv["CapAmb"], "0000000000000000");
    assert_eq!(kv["NoNewPrivs"], "1");
    assert_eq!(kv["Seccomp"], "2");
    let kcore_on_host = Path::new("/proc/kcore").exists();
    assert_eq!(kv["kcore"], if kcore_on_host { "0" } else { "" }, "{out}");
    assert_eq!(kv["keys"], "0", "/proc/keys is masked");
    assert_eq!(kv["sysctl"], "refused", "/proc/sys is read-only");
    assert_eq!(kv["sh_mount"], "refused");
    assert_eq!(kv["sh_unshare"], "refused");
    assert_eq!(kv["sethostname"], "refused");
    for call in [
        "keyctl",
        "unshare_user",
        "clone_newuser",
        "mount",
        "setns",
        "ptrace",
    ] {
        assert_eq!(kv[call], "EPERM", "{call} must be refused: {out}");
    }
    assert_eq!(kv["fork"], "ok");
    assert_eq!(kv["fds"], "0,1,2,", "no agent fd leaks in: {out}");
    assert_eq!(kv["ifaces"], "lo,");
    assert_eq!(kv["cgroup_not_root"], "0");
    running.delete().await;
}

#[tokio::test]
async fn exec_joins_the_containers_user_namespace() {
    let t = remapped();
    let script =
        "exec > /tmp/out 2>&1; echo ns=$(readlink /proc/self/ns/user); echo done=1; exec sleep 60";
    let (out, running) = start_until_done(&t, &t.spec("uns-exec", script)).await;
    let pid1_ns = parse(&out)["ns"].clone();
    let dir = running.container().dir.clone();
    let (r, w) = nix::unistd::pipe().unwrap();
    let io = ExecStdio {
        stdin: std::fs::File::open("/dev/null").unwrap().into(),
        stdout: w.try_clone().unwrap(),
        stderr: w,
    };
    let script = format!(
        "{UID_MAP}; echo ns=$(readlink /proc/self/ns/user); echo id=$(id -u); \
         echo stdio_reopen=$(echo x > /dev/stdout && echo ok); \
         grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr -d ' \\t' | sed 's/:/=/'"
    );
    let spec = ExecSpec {
        argv: vec!["sh".into(), "-c".into(), script],
        ..Default::default()
    };
    let agent = Path::new(env!("CARGO_BIN_EXE_rctl-agent"));
    let code = exec::exec(&dir, agent, &spec, io).await.unwrap();
    let mut out = String::new();
    use std::io::Read;
    std::fs::File::from(r).read_to_string(&mut out).unwrap();
    assert_eq!(code, 0, "{out}");
    let kv = parse(&out);
    assert_eq!(kv["uid_map"], "0 100000 65536", "{out}");
    assert_eq!(kv["ns"], pid1_ns, "the same user namespace as PID 1: {out}");
    assert_eq!(kv["id"], "0");
    assert!(kv["stdio_reopen"].contains("ok"), "{out}");
    assert_eq!(kv["CapEff"], "00000000a80425fb");
    assert_eq!(kv["NoNewPrivs"], "1");
    assert_eq!(kv["Seccomp"], "2");
    running.delete().await;
}

#[tokio::test]
async fn a_task_can_keep_the_hosts_user_namespace() {
    let t = remapped();
    let mut spec = t.spec(
        "uns-host",
        &format!("exec > /tmp/out; {UID_MAP}; echo done=1"),
    );
    spec.host_userns = true;
    let (exit, out, running) = t.run(&spec).await;
    assert_eq!(exit.code, 0, "{out}");
    assert_eq!(parse(&out)["uid_map"], "0 0 4294967295", "{out}");
    running.delete().await;
}

#[tokio::test]
async fn delete_leaves_nothing_of_a_remapped_container() {
    let t = remapped();
    let script = "exec > /tmp/out; echo done=1; exec sleep 60";
    let (_, running) = start_until_done(&t, &t.spec("uns-rm", script)).await;
    let c = running.container();
    let pid = c.pid().unwrap();
    let dir = c.dir.0.clone();
    let cgroup_dirs = c.cgroup.as_ref().unwrap().dirs.clone();
    running.delete().await;
    assert!(!pid.alive(), "PID 1 still runs");
    assert!(!dir.exists(), "container dir left");
    for d in cgroup_dirs {
        assert!(!d.exists(), "cgroup {} left", d.display());
    }
    let layout = cgroups::host_layout().unwrap();
    for d in cgroups::dirs(&layout, Path::new(cgroups::PARENT), "uns-rm") {
        assert!(!d.exists(), "cgroup {} left", d.display());
    }
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = t.tmp.path().display().to_string();
    assert!(!mi.contains(&root), "mount under {root} left:\n{mi}");
}

/// `rctl-agent` with `--userns-remap remap` and state under `root`; it must stop at once.
fn agent_refusal(remap: &str, root: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rctl-agent"))
        .args([
            "--node-name",
            "uns-bad",
            "--advertise-ip",
            "127.0.0.1",
            "--subnet",
            "198.19.250.0/24",
            "--etcd",
            "http://127.0.0.1:1",
            "--root",
        ])
        .arg(root)
        .args(["--userns-remap", remap])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn agent_refuses_a_root_it_cannot_idmap_with_one_line() {
    // procfs cannot be idmapped: a stand-in for an agent root on such a filesystem.
    let (code, err) = agent_refusal("100000:65536", Path::new("/proc/rctl-uns-test"));
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("error: --userns-remap 100000:65536: user namespace: idmap a mount"),
        "{err}"
    );
}

#[test]
fn agent_refuses_a_malformed_remap_with_one_line() {
    let root = tempfile::tempdir().unwrap();
    for bad in ["100000", "0:65536", "100000:0", "x:y"] {
        let (code, err) = agent_refusal(bad, root.path());
        assert_eq!(code, Some(1), "{bad}: {err}");
        assert_eq!(err.lines().count(), 1, "{bad}: one line: {err}");
        assert!(err.starts_with("error: bad --userns-remap"), "{bad}: {err}");
    }
    // Nothing was created under the root.
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}
