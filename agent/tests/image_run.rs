//! From registry to running container without a cluster: an image pushed to a real
//! registry is pulled by the agent's image store and run by `runtime::container::ContainerRuntime`
//! with the image config's User, WorkingDir, Entrypoint and Cmd, and a task's overrides.

mod common;

use common::{busybox_layer, push, put_blob, TestRegistry};
use rctl_agent::image::ImageStore;
use rctl_agent::runtime::container::{spec_of, ContainerRuntime};
use rctl_api::pb;

/// The busybox layer as a gzip'd tar blob (symlinks kept as links) and its diff id.
fn layer_blob(dir: &std::path::Path) -> (Vec<u8>, String) {
    use std::io::Write;
    let layer = busybox_layer(dir);
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", &layer).unwrap();
    let raw = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    (gz.finish().unwrap(), common::sha256(&raw))
}

#[tokio::test]
async fn pulled_image_runs_with_its_config() {
    common::install_crypto();
    let registry = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let (blob, diff_id) = layer_blob(tmp.path());
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {
            "User": "app",
            "WorkingDir": "/home/app",
            "Env": ["PATH=/bin:/usr/bin", "FROM_IMAGE=1"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo $(id -u) $(pwd) $FROM_IMAGE > /tmp/out"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let mut cdesc = put_blob(&layout, config.to_string().as_bytes());
    cdesc["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let mut ldesc = put_blob(&layout, &blob);
    ldesc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cdesc, "layers": [ldesc],
    });
    let mut mdesc = put_blob(&layout, manifest.to_string().as_bytes());
    mdesc["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    push(&layout, "1", mdesc, &registry.host(), "busybox-app");

    let root = tmp.path().join("agent");
    let image = ImageStore::new(&root, vec![registry.host()])
        .ensure(&format!("{}/busybox-app:1", registry.host()))
        .await
        .unwrap();
    let rt = ContainerRuntime::with_agent_exe(root, env!("CARGO_BIN_EXE_rctl-agent").into());

    // The image as it is.
    let task = pb::Task {
        id: "img1".into(),
        ..Default::default()
    };
    let spec = spec_of(&task, &image.config, image.layers.clone()).unwrap();
    let mut c = rt.create(&spec).await.unwrap();
    let guard = common::Running { rt: &rt, c: None };
    rt.start(&mut c).await.unwrap();
    let guard = common::Running {
        c: Some(c),
        ..guard
    };
    let exit = rt.wait(guard.container()).await;
    let out = std::fs::read_to_string(guard.container().dir.upper().join("tmp/out")).unwrap();
    assert_eq!((exit.code, out.as_str()), (0, "1000 /home/app 1\n"));
    guard.delete().await;

    // A task's user, workdir and command override the image's.
    let task = pb::Task {
        id: "img2".into(),
        user: "0".into(),
        workdir: "/tmp".into(),
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo $(id -u) $(pwd) > /tmp/out".into(),
        ],
        ..Default::default()
    };
    let spec = spec_of(&task, &image.config, image.layers.clone()).unwrap();
    let mut c = rt.create(&spec).await.unwrap();
    rt.start(&mut c).await.unwrap();
    let guard = common::Running {
        rt: &rt,
        c: Some(c),
    };
    let exit = rt.wait(guard.container()).await;
    let out = std::fs::read_to_string(guard.container().dir.upper().join("tmp/out")).unwrap();
    assert_eq!((exit.code, out.as_str()), (0, "0 /tmp\n"));
    guard.delete().await;
}
