//! Container resource limits as a user sees them: a memory hog is OOM-killed and the exit
//! says so, a fork bomb stops at the pids limit while the host keeps forking, stats show
//! the limits, and the container's cgroup directories are gone after delete.

mod common;

use std::time::Duration;

use common::TestRuntime;
use rctl_agent::runtime::cgroups::Limits;

fn gone(dirs: &[std::path::PathBuf]) -> bool {
    dirs.iter().all(|d| !d.exists())
}

#[tokio::test]
async fn memory_hog_is_oom_killed_with_the_reason() {
    let t = TestRuntime::new();
    let mut spec = t.spec("oom1", "echo started > /tmp/out; tail /dev/zero");
    spec.limits = Limits {
        memory_bytes: Some(32 << 20),
        ..Default::default()
    };
    let (exit, out, running) = t.run(&spec).await;
    assert!(out.starts_with("started\n"), "{out}");
    assert!(exit.oom_killed, "exit {exit:?}");
    assert_eq!(exit.code, 137, "killed by SIGKILL");
    let cg = running.container().cgroup.clone().unwrap();
    assert_eq!(
        exit.reason(cg.memory_limit()).unwrap(),
        "OOMKilled: memory limit 32 MiB reached"
    );
    // The same reason as the task actors read it from the container directory.
    assert_eq!(
        rctl_agent::runtime::container::oom_reason(&running.container().dir).as_deref(),
        Some("OOMKilled: memory limit 32 MiB reached")
    );
    running.delete().await;
    assert!(gone(&cg.dirs), "cgroup dirs left: {:?}", cg.dirs);
}

#[tokio::test]
async fn fork_bomb_stops_at_the_pids_limit() {
    let t = TestRuntime::new();
    let mut spec = t.spec("bomb1", "");
    spec.command = vec!["/bin/probe".into(), "forkbomb".into()];
    spec.limits = Limits {
        pids: Some(64),
        ..Default::default()
    };
    let mut c = t.rt.create(&spec).await.unwrap();
    let cg = c.cgroup.clone().unwrap();
    let guard = common::Running { rt: &t.rt, c: None };
    t.rt.start(&mut c).await.unwrap();
    let guard = common::Running {
        c: Some(c),
        ..guard
    };
    // The bomb fills the limit quickly; bounded wait, no timing assertion.
    let mut seen = 0;
    for _ in 0..500 {
        seen = guard.container().stats().pids;
        if seen >= 64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 64, "the bomb reaches the limit");
    // The host still forks.
    let st = std::process::Command::new("true").status().unwrap();
    assert!(st.success());
    // Members die when their fork is refused and others take their place: never above.
    for _ in 0..20 {
        assert!(guard.container().stats().pids <= 64);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    guard.delete().await;
    assert!(gone(&cg.dirs), "cgroup dirs left: {:?}", cg.dirs);
}

#[tokio::test]
async fn stats_show_usage_and_limits() {
    let t = TestRuntime::new();
    let mut spec = t.spec(
        "stats1",
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo ok > /tmp/out; sleep 30",
    );
    spec.limits = Limits {
        memory_bytes: Some(64 << 20),
        cpu_millis: Some(500),
        cpu_shares: Some(512),
        pids: Some(100),
    };
    let mut c = t.rt.create(&spec).await.unwrap();
    t.rt.start(&mut c).await.unwrap();
    let guard = common::Running {
        rt: &t.rt,
        c: Some(c),
    };
    let upper = guard.container().dir.upper();
    for _ in 0..500 {
        if upper.join("tmp/out").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = guard.container().stats();
    let by_dir = rctl_agent::runtime::container::stats_of(&guard.container().dir).unwrap();
    assert_eq!(by_dir.memory_limit, s.memory_limit);
    assert_eq!(s.memory_limit, Some(64 << 20));
    assert!(s.memory_bytes > 0 && s.memory_bytes < 64 << 20, "{s:?}");
    assert!(s.cpu_usage_ns > 0, "{s:?}");
    assert!(s.pids >= 1, "{s:?}");
    guard.delete().await;
}
