//! Creating a container, in its actor: the pull, the address and port allocation, the config
//! and the confinement profile, and the first launch.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use rctl_api::{clock, pb};
use tokio::sync::mpsc;

use super::{Inner, TaskError};
use crate::image::feed::PullFeed;
use crate::image::registry::Credentials;
use crate::lifecycle;
use crate::network::ipam;
use crate::runtime;
use crate::runtime::spec;
use crate::runtime::state::{ContainerConfig, ContainerDir, PidRecord};

/// Where a new container's image comes from, as RunTask found it.
pub(super) enum ImageSource {
    /// On this host already.
    Here(Box<crate::image::Image>),
    /// Missing: pulled with its progress in this feed, which `rctl run` follows, with the
    /// logins RunTask carried (besides the agent's own).
    Pull(Arc<PullFeed>, Option<Credentials>),
}

impl Inner {
    /// Addresses and host ports held by containers that are starting, running or waiting
    /// for their restart ([`lifecycle::holds_address`]); a container finished for good
    /// gave its rules back, so its address and port are free again.
    pub(super) async fn used(&self) -> (Vec<Ipv4Addr>, Vec<(u16, String)>) {
        let (mut ips, mut ports) = (Vec::new(), Vec::new());
        if let Ok(mut rd) = tokio::fs::read_dir(self.root.join("containers")).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                let cdir = ContainerDir(e.path());
                if !lifecycle::holds_address(cdir.markers()) {
                    continue;
                }
                if let Ok(c) = cdir.read_config() {
                    ips.push(c.ip);
                    // A service task's published port is TCP (the load balancer's).
                    if c.host_port != 0 {
                        ports.push((c.host_port, "tcp".to_string()));
                    }
                    ports.extend(c.ports.iter().map(|b| (b.host_port, b.protocol.clone())));
                }
            }
        }
        (ips, ports)
    }

    /// Pulls the image if RunTask found it missing, prepares the container and starts it
    /// through its shim.
    pub(super) async fn create(
        &self,
        task: &pb::Task,
        status: &mut pb::TaskStatus,
        source: ImageSource,
    ) -> Result<(ContainerConfig, PidRecord), TaskError> {
        status.state = pb::TaskState::Starting as i32;
        // An image already on the host starts at once without interim statuses: each is an
        // etcd write (a WAL fsync, ~10 ms) on `run`'s path, and "running" follows within
        // milliseconds anyway. A missing one is pulled into the feed `rctl run` follows,
        // which `pull` ends either way.
        let image = match source {
            ImageSource::Here(image) => *image,
            ImageSource::Pull(feed, credentials) => {
                status.message = "pulling image".into();
                self.report(status).await;
                let image = self.pull(&task.image, &feed, credentials).await?;
                status.message = "creating container".into();
                self.report(status).await;
                image
            }
        };

        // Anonymous volumes get their names here, where they live; the task as written to
        // the config carries them, so a restart mounts the same ones.
        let mut named = task.clone();
        let image_volumes: Vec<String> = image
            .config
            .volumes
            .iter()
            .flat_map(|v| v.keys().cloned())
            .collect();
        let anonymous_volumes = runtime::mounts::name_anonymous(
            &mut named.mounts,
            &image_volumes,
            runtime::mounts::anonymous_name,
        );
        let task = &named;
        let confinement = runtime::container::spec_of(task, &image.config, image.layers.clone())?;
        let hostname: String = match task.hostname.as_str() {
            "" => task.id.chars().take(12).collect(),
            h => h.to_string(),
        };
        let argv = spec::resolve_task_argv(task, &image.config)?;
        let env = spec::resolve_env(
            image.config.env.as_deref().unwrap_or_default(),
            &task.env,
            &hostname,
        );
        let dir = self.dir(&task.id);
        let state_err = |path: PathBuf| move |source| TaskError::State { path, source };
        let cfg = {
            let _g = self.alloc.lock().await;
            let (ips, held) = self.used().await;
            let ports: Vec<u16> = held.iter().map(|(p, _)| *p).collect();
            let subnet = self.runtime.subnet();
            let ip = subnet.allocate(&ips)?;
            let host_port = if task.container_port != 0 {
                ipam::allocate_port(&ports)?
            } else {
                0
            };
            let cfg = ContainerConfig {
                id: task.id.clone(),
                hostname,
                layers: image.layers.clone(),
                argv,
                env,
                workdir: match task.workdir.as_str() {
                    "" => spec::resolve_workdir(&image.config),
                    w => w.to_string(),
                },
                stop_signal: image.config.stop_signal.clone().unwrap_or_default(),
                ip,
                prefix_len: subnet.prefix_len,
                gateway: subnet.gateway(),
                container_port: task.container_port as u16,
                host_port,
                ports: task
                    .ports
                    .iter()
                    .map(|b| crate::network::PortRule {
                        host_ip: b
                            .host_ip
                            .parse::<Ipv4Addr>()
                            .ok()
                            .filter(|ip| !ip.is_unspecified()),
                        host_port: b.host_port as u16,
                        container_ip: ip,
                        container_port: b.container_port as u16,
                        protocol: if b.protocol.is_empty() {
                            "tcp".into()
                        } else {
                            b.protocol.clone()
                        },
                    })
                    .collect(),
                task_pb: ContainerConfig::encode_task(task),
                created_unix_ms: clock::now_unix_ms(),
                anonymous_volumes,
            };
            for d in [dir.upper(), dir.work(), dir.rootfs()] {
                tokio::fs::create_dir_all(&d)
                    .await
                    .map_err(state_err(d.clone()))?;
            }
            dir.write_config(&cfg)
                .await
                .map_err(state_err(dir.config()))?;
            cfg
        };
        // Capabilities, seccomp, masked paths, user, mounts and the cgroup with the task's
        // limits: written for the shim's child to apply before exec.
        self.runtime.prepare(&dir, &confinement).await?;
        let pid = self.launch(&dir, &cfg).await?;
        Ok((cfg, pid))
    }

    /// Makes `reference` available here, its progress and end going to `feed`.
    pub(super) async fn pull(
        &self,
        reference: &str,
        feed: &PullFeed,
        credentials: Option<Credentials>,
    ) -> Result<crate::image::Image, TaskError> {
        let failed = |source| TaskError::Pull {
            image: reference.to_string(),
            source,
        };
        let (ptx, mut prx) = mpsc::unbounded_channel();
        let opts = crate::image::PullOptions::new(Some(ptx), credentials);
        let pulling = self.images.pull(reference, &opts);
        tokio::pin!(pulling);
        let r = loop {
            tokio::select! {
                r = &mut pulling => break r,
                Some(e) = prx.recv() => feed.layer(e),
            }
        };
        while let Ok(e) = prx.try_recv() {
            feed.layer(e);
        }
        let r = r.map_err(failed);
        feed.end(match &r {
            Ok(img) => Ok(pb::PullResult {
                reference: img.reference.clone(),
                manifest_digest: img.manifest_digest.clone(),
                config_digest: img.config_digest.clone(),
            }),
            Err(e) => Err(e.to_string()),
        });
        r
    }
}

/// Undoes a start that failed or was stopped midway: every process of it ends (a stop
/// may come before its pid was recorded, so not only PID 1), then its network goes.
pub(super) async fn cleanup_failed_start(inner: &Inner, dir: &ContainerDir) {
    inner.runtime.end_processes(dir).await;
    match dir.read_config() {
        Ok(cfg) => inner.teardown(&cfg).await,
        Err(_) => inner.runtime.detach(&dir.id()).await,
    }
}
