//! The process a container runs comes from the image config and the task: User (name,
//! uid, name:group with supplementary groups from /etc/group), WorkingDir, Env, HOME,
//! hostname; a non-root user has no capabilities left.

mod common;

use common::TestRuntime;

#[tokio::test]
async fn image_user_workdir_and_env_apply() {
    let t = TestRuntime::new();
    let mut spec = t.spec(
        "user1",
        "echo $(id -u) $(id -g) $(id -G) > /tmp/out; echo $HOME >> /tmp/out; pwd >> /tmp/out; \
         echo $GREETING >> /tmp/out; grep CapEff /proc/self/status | tr -d '\\t ' >> /tmp/out",
    );
    spec.image.user = Some("app".into());
    spec.image.working_dir = Some("/home/app".into());
    spec.image.env = Some(vec!["GREETING=hi".into(), "PATH=/bin:/usr/bin".into()]);
    let (exit, out, running) = t.run(&spec).await;
    assert_eq!(exit.code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1000 1000 1000 10 44", "uid gid groups: {out}");
    assert_eq!(lines[1], "/home/app");
    assert_eq!(lines[2], "/home/app");
    assert_eq!(lines[3], "hi");
    assert_eq!(lines[4], "CapEff:0000000000000000", "non-root has no caps");
    running.delete().await;
}

#[tokio::test]
async fn task_user_and_workdir_override_the_image() {
    let t = TestRuntime::new();
    let mut spec = t.spec("user2", "echo $(id -u):$(id -g) $(pwd) $HOME > /tmp/out");
    spec.image.user = Some("app".into());
    spec.user = Some("4242:44".into());
    spec.workdir = Some("/tmp".into());
    let (exit, out, running) = t.run(&spec).await;
    assert_eq!(exit.code, 0, "{out}");
    assert_eq!(out.trim(), "4242:44 /tmp /");
    running.delete().await;
}
