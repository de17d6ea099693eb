//! `exec` into a running container: the process runs in the container's namespaces (its
//! own pid namespace, where `ps` sees PID 1), with the container's user, environment,
//! capabilities, no-new-privileges and seccomp, and its exit code comes back.

mod common;

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use common::TestRuntime;
use rctl_agent::runtime::exec::{self, ExecSpec, ExecStdio};

fn agent() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rctl-agent"))
}

/// Stdio for an exec: /dev/null in, one pipe for stdout and stderr; returns the reader.
fn stdio() -> (ExecStdio, std::fs::File) {
    let (r, w) = nix::unistd::pipe().unwrap();
    let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let stdio = ExecStdio {
        stdin: null,
        stdout: w.try_clone().unwrap(),
        stderr: w,
    };
    (stdio, std::fs::File::from(r))
}

/// Starts a container whose PID 1 sleeps, waiting until it runs.
async fn sleeper<'a>(t: &'a TestRuntime, id: &str, user: Option<&str>) -> common::Running<'a> {
    let mut spec = t.spec(id, "exec sleep 60");
    spec.user = user.map(str::to_string);
    spec.env.insert("FROM_TASK".into(), "yes".into());
    let mut c = t.rt.create(&spec).await.unwrap();
    t.rt.start(&mut c).await.unwrap();
    common::Running {
        rt: &t.rt,
        c: Some(c),
    }
}

async fn run(dir: &rctl_agent::runtime::state::ContainerDir, spec: ExecSpec) -> (i32, String) {
    let (io, mut out) = stdio();
    let code = exec::exec(dir, agent(), &spec, io).await.unwrap();
    let mut s = String::new();
    out.read_to_string(&mut s).unwrap();
    (code, s)
}

#[tokio::test]
async fn exec_runs_inside_with_the_containers_confinement() {
    let t = TestRuntime::new();
    let c = sleeper(&t, "exec1", None).await;
    let dir = c.container().dir.clone();
    let script = "echo home=$HOME; echo uid=$(id -u); echo pid=$$; echo task=$FROM_TASK; \
        echo extra=$EXTRA; echo pid1=$(cat /proc/1/comm); echo host=$(hostname); \
        grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr -d ' \\t' | sed 's/:/=/'; \
        echo fds=$(ls /proc/self/fd | tr '\\n' ,); exit 7";
    let spec = ExecSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["EXTRA=1".into()],
        ..Default::default()
    };
    let (code, out) = run(&dir, spec).await;
    assert_eq!(code, 7, "{out}");
    let kv: std::collections::HashMap<&str, &str> =
        out.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(kv["home"], "/root", "{out}");
    assert_eq!(kv["uid"], "0");
    let pid: u32 = kv["pid"].parse().unwrap();
    assert!(
        pid > 1 && pid < 100,
        "a pid of the container's namespace: {out}"
    );
    assert_eq!(kv["task"], "yes");
    assert_eq!(kv["extra"], "1");
    assert_eq!(kv["pid1"], "sleep", "ps sees the container's PID 1");
    assert_eq!(kv["host"], "exec1");
    assert_eq!(kv["CapEff"], "00000000a80425fb");
    assert_eq!(kv["NoNewPrivs"], "1");
    assert_eq!(kv["Seccomp"], "2");
    // ls's own directory fd is the only one beyond stdio.
    assert_eq!(kv["fds"], "0,1,2,3,", "{out}");
    c.delete().await;
}

#[tokio::test]
async fn exec_takes_the_containers_user_and_overrides() {
    let t = TestRuntime::new();
    let c = sleeper(&t, "exec2", Some("app")).await;
    let dir = c.container().dir.clone();
    let sh = |s: &str| vec!["sh".to_string(), "-c".into(), s.into()];
    let (code, out) = run(
        &dir,
        ExecSpec {
            argv: sh("echo $HOME $(id -u) $(pwd)"),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "/home/app 1000 /\n"));
    let (code, out) = run(
        &dir,
        ExecSpec {
            argv: sh("echo $(id -u) $(pwd)"),
            user: Some("0".into()),
            workdir: Some("/tmp".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "0 /tmp\n"));
    let (code, out) = run(
        &dir,
        ExecSpec {
            argv: vec!["nosuch".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(code, 127, "{out}");
    assert!(out.contains("not found"), "{out}");
    c.delete().await;
}

#[tokio::test]
async fn exec_into_a_stopped_container_is_refused() {
    let t = TestRuntime::new();
    let c = sleeper(&t, "exec3", None).await;
    let dir = c.container().dir.clone();
    c.container().signal(nix::sys::signal::Signal::SIGKILL);
    for _ in 0..500 {
        if dir.exit().exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (io, _out) = stdio();
    let e = exec::exec(
        &dir,
        agent(),
        &ExecSpec {
            argv: vec!["true".into()],
            ..Default::default()
        },
        io,
    )
    .await
    .unwrap_err();
    assert_eq!(e.to_string(), "container is not running");
    c.delete().await;
}

#[tokio::test]
async fn exec_process_cannot_be_used_to_overwrite_the_agent() {
    // CVE-2019-5736 through exec: while an exec'd process runs, the container looks for a
    // /proc/PID/exe that is the agent binary and opens it for writing. The exec helper is
    // non-dumpable before it enters the container, so its exe link is out of reach.
    let before = std::fs::read(agent()).unwrap();
    let t = TestRuntime::new();
    let c = sleeper(&t, "exec4", None).await;
    let dir = c.container().dir.clone();
    let script = "for e in /proc/[0-9]*/exe; do if echo pwned >> $e; then echo wrote $e; fi; done 2>/dev/null; echo tried";
    let (code, out) = run(
        &dir,
        ExecSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "tried\n"));
    c.delete().await;
    assert!(
        std::fs::read(agent()).unwrap() == before,
        "agent binary changed"
    );
}
