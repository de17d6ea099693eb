//! Containers that cannot run fail with a clear one-line error from create or start, and
//! leave nothing on the host: no container directory, no cgroup directory, no mount.

mod common;

use common::TestRuntime;
use rctl_agent::runtime::cgroups::{self, Limits};
use rctl_agent::runtime::container::ContainerSpec;

/// Nothing of container `id` is left on the host.
fn assert_nothing_left(t: &TestRuntime, id: &str) {
    assert!(!t.rt.dir(id).0.exists(), "container dir of {id} left");
    let layout = cgroups::host_layout().unwrap();
    for d in cgroups::dirs(&layout, std::path::Path::new(cgroups::PARENT), id) {
        assert!(!d.exists(), "cgroup {} left", d.display());
    }
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = t.tmp.path().display().to_string();
    assert!(!mi.contains(&root), "mount under {root} left:\n{mi}");
}

/// Create, then start; the first error as a string.
async fn error_of(t: &TestRuntime, spec: &ContainerSpec) -> String {
    let mut c = match t.rt.create(spec).await {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    match t.rt.start(&mut c).await {
        Ok(_) => {
            let _ = t.rt.delete(&c).await;
            panic!("container {} started", spec.id)
        }
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn unknown_user_is_a_clear_error() {
    let t = TestRuntime::new();
    let mut spec = t.spec("baduser", "true");
    spec.user = Some("nobody".into());
    let e = error_of(&t, &spec).await;
    assert!(
        e.contains(r#"user "nobody" not found in the container's /etc/passwd"#),
        "{e}"
    );
    assert!(!e.contains('\n'), "one line: {e}");
    assert_nothing_left(&t, "baduser");
    spec.id = "badgroup".into();
    spec.user = Some("app:nogroup".into());
    let e = error_of(&t, &spec).await;
    assert!(e.contains(r#"group "nogroup" not found"#), "{e}");
    assert_nothing_left(&t, "badgroup");
}

#[tokio::test]
async fn missing_entrypoint_is_a_clear_error() {
    let t = TestRuntime::new();
    let mut spec = t.spec("noentry", "");
    spec.command = vec![];
    let e = error_of(&t, &spec).await;
    assert!(e.contains("no command"), "{e}");
    assert_nothing_left(&t, "noentry");
    spec.id = "noexe".into();
    spec.command = vec!["/bin/nosuch".into()];
    let e = error_of(&t, &spec).await;
    assert!(e.contains(r#"executable "/bin/nosuch" not found"#), "{e}");
    assert_nothing_left(&t, "noexe");
}

#[tokio::test]
async fn impossible_memory_limits_are_refused() {
    let t = TestRuntime::new();
    for (id, bytes, want) in [
        ("mem1", 1u64, "below the minimum"),
        ("memhuge", 1 << 60, "above this host's memory"),
    ] {
        let mut spec = t.spec(id, "true");
        spec.limits = Limits {
            memory_bytes: Some(bytes),
            ..Default::default()
        };
        let e = error_of(&t, &spec).await;
        assert!(e.contains(want), "{e}");
        assert_nothing_left(&t, id);
    }
}

#[tokio::test]
async fn bad_ids_are_refused() {
    let t = TestRuntime::new();
    let e = error_of(&t, &t.spec("../x", "true")).await;
    assert!(e.contains("bad container id"), "{e}");
}
