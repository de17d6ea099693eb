//! The task lifecycle over a simulated runtime and an in-memory cluster: what the actors
//! report and do, without root, shims or etcd.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use rctl_api::pb;

use super::create::ImageSource;
use super::{validate, Behaviour, Recorder, SimRuntime, Tasks};
use crate::image::{Image, ImageStore, RunConfig};
use crate::network::Subnet;

struct Sim {
    tasks: Tasks,
    runtime: Arc<SimRuntime>,
    cluster: Arc<Recorder>,
    _root: tempfile::TempDir,
}

fn sim() -> Sim {
    // The image store's registry client needs one, as the agent installs at start-up.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = tempfile::tempdir().unwrap();
    let subnet = Subnet::parse("10.88.0.0/16").unwrap();
    let runtime = Arc::new(SimRuntime::new(subnet, Ipv4Addr::new(198, 18, 0, 1)));
    let cluster = Arc::new(Recorder::new("n1"));
    let images = ImageStore::new(root.path(), Vec::new());
    let tasks = Tasks::new(
        root.path().to_path_buf(),
        cluster.clone(),
        images,
        runtime.clone(),
    );
    Sim {
        tasks,
        runtime,
        cluster,
        _root: root,
    }
}

fn task(id: &str) -> pb::Task {
    pb::Task {
        id: id.into(),
        node: "n1".into(),
        image: "busybox".into(),
        command: vec!["serve".into()],
        ..Default::default()
    }
}

fn image() -> Image {
    Image {
        reference: "busybox".into(),
        manifest_digest: String::new(),
        config_digest: String::new(),
        layers: Vec::new(),
        config: RunConfig::default(),
        blobs: Vec::new(),
        created: None,
        architecture: None,
        os: None,
        pulled_unix_ms: 0,
    }
}

impl Sim {
    /// What RunTask does for a task whose image is here.
    fn run(&self, t: pb::Task) {
        validate(&t).unwrap();
        assert!(!self.tasks.accept(t, ImageSource::Here(Box::new(image()))));
    }

    /// Waits (5 s at most) for the last status of `id` to be in `state`; returns it.
    async fn reaches(&self, id: &str, state: pb::TaskState) -> pb::TaskStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let last = self.cluster.statuses_of(id).pop();
            if let Some(s) = last.as_ref().filter(|s| s.state() == state) {
                return s.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} never reached {state:?}; statuses: {:?}",
                self.cluster.statuses_of(id)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn starts(&self, id: &str) -> usize {
        let want = format!("start {id}");
        self.runtime.calls().iter().filter(|c| **c == want).count()
    }
}

#[tokio::test]
async fn a_task_that_exits_is_reported_with_its_code() {
    let s = sim();
    s.runtime.set("t1", Behaviour::Exit(3));
    s.run(task("t1"));
    let st = s.reaches("t1", pb::TaskState::Failed).await;
    assert_eq!(st.exit_code, 3);
    assert_eq!(st.message, "exited with code 3");
    assert_eq!(st.node, "n1");
    // It went through pending and running first.
    let states: Vec<_> = s
        .cluster
        .statuses_of("t1")
        .iter()
        .map(|s| s.state())
        .collect();
    assert_eq!(states.first(), Some(&pb::TaskState::Pending));
    assert!(states.contains(&pb::TaskState::Running), "{states:?}");
    assert_eq!(s.starts("t1"), 1, "no restart policy: started once");

    s.runtime.set("t2", Behaviour::Exit(0));
    s.run(task("t2"));
    let st = s.reaches("t2", pb::TaskState::Exited).await;
    assert_eq!(st.exit_code, 0);
}

#[tokio::test]
async fn the_restart_policy_restarts_a_failed_task_up_to_its_attempts() {
    let s = sim();
    s.runtime.set("t1", Behaviour::Exit(1));
    let mut t = task("t1");
    t.restart_policy = "on-failure".into();
    t.restart_max_attempts = 2;
    s.run(t);
    let st = s.reaches("t1", pb::TaskState::Failed).await;
    assert_eq!(st.exit_code, 1);
    assert_eq!(s.starts("t1"), 3, "the first start and two restarts");
    // Between the runs it was reported starting again, not failed.
    let restarting = s
        .cluster
        .statuses_of("t1")
        .iter()
        .filter(|s| s.message.starts_with("restart "))
        .count();
    assert_eq!(restarting, 2);
}

#[tokio::test]
async fn a_stop_with_remove_kills_then_removes() {
    let s = sim();
    s.run(task("t1"));
    s.reaches("t1", pb::TaskState::Running).await;
    let dir = s.tasks.container_dir("t1").unwrap();
    assert!(dir.is_running());
    s.tasks
        .stop_task("t1", Some(Duration::from_millis(100)), true, false);
    let st = s.reaches("t1", pb::TaskState::Exited).await;
    assert_eq!(st.message, "stopped");
    assert_eq!(st.exit_code, 128 + nix::sys::signal::Signal::SIGTERM as i32);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while dir.0.exists() {
        assert!(tokio::time::Instant::now() < deadline, "directory stays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = s.runtime.calls();
    let signal = calls.iter().position(|c| c == "signal t1 SIGTERM");
    let teardown = calls.iter().position(|c| c == "teardown t1");
    assert!(
        signal.is_some() && signal < teardown,
        "killed, then its network went: {calls:?}"
    );
    // Gone from the actors: a start finds nothing.
    assert!(s.tasks.start_task("t1").is_err());
}

#[tokio::test]
async fn a_start_that_fails_is_reported_failed_and_gives_its_network_back() {
    let s = sim();
    s.runtime.set("t1", Behaviour::FailStart);
    s.run(task("t1"));
    let st = s.reaches("t1", pb::TaskState::Failed).await;
    assert!(
        st.message.contains("simulated start failure"),
        "{}",
        st.message
    );
    assert!(s.runtime.calls().contains(&"teardown t1".to_string()));
}

#[tokio::test]
async fn the_simulated_runtime_wakes_a_supervisor_when_its_container_exits() {
    use futures::FutureExt;

    use super::Runtime;
    let s = sim();
    s.run(task("t1"));
    s.reaches("t1", pb::TaskState::Running).await;
    let dir = s.tasks.container_dir("t1").unwrap();
    let pid = dir.read_pid().unwrap();
    let exited = s.runtime.exited(&dir, &pid);
    tokio::pin!(exited);
    assert!((&mut exited).now_or_never().is_none(), "still running");
    s.runtime
        .signal(&dir, &pid, nix::sys::signal::Signal::SIGKILL);
    assert!(
        (&mut exited).now_or_never().is_some(),
        "woken by the exit itself, not by a poll"
    );
}
