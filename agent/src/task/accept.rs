//! Accepting RunTask: idempotent by id, host ports free, the pull feed made before anyone can
//! follow it, then the new container's actor started.

use std::collections::HashMap;
use std::sync::Arc;

use rctl_api::pb;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::actor::{actor, Start};
use super::create::ImageSource;
use super::{validate, Actor, TaskError, Tasks};
use crate::image::registry::Credentials;
use crate::image::Image;
use crate::network::host_ip;

impl Tasks {
    /// Accepts `task` (idempotent by id) and starts it in the background; true when its
    /// image is not here and is being pulled first (see [`Tasks::follow_pull`]).
    pub async fn run_task(
        &self,
        task: pb::Task,
        credentials: Option<Credentials>,
    ) -> Result<bool, TaskError> {
        if !self.admit(&task).await? {
            return Ok(false);
        }
        // Asked before the actor exists so the answer can say so, and the feed is there
        // before anyone can ask to follow it. The image found here is the one created from.
        let source = match self.inner.images.cached(&task.image).await {
            Some(image) => ImageSource::Here(Box::new(image)),
            None => ImageSource::Pull(Arc::default(), credentials),
        };
        Ok(self.accept(task, source))
    }

    /// RunTask on a node that has every image as `image` and pulls none: a hollow node
    /// (`crate::hollow`), where nothing is unpacked or run.
    pub async fn run_task_here(&self, task: pb::Task, image: Image) -> Result<(), TaskError> {
        if self.admit(&task).await? {
            self.accept(task, ImageSource::Here(Box::new(image)));
        }
        Ok(())
    }

    /// What RunTask checks before anything is made: the task is valid and its host ports
    /// free. False when it is known here already (nothing to start).
    async fn admit(&self, task: &pb::Task) -> Result<bool, TaskError> {
        validate(task)?;
        if !task.ports.is_empty() && !self.dir(&task.id).0.exists() {
            // Before anything is made: a rule for another host's address would capture
            // this node's own connections to it.
            let own = self.inner.runtime.addresses();
            for b in &task.ports {
                host_ip::check(&b.host_ip, &own, self.inner.cluster.node())?;
            }
            let (_, held) = self.inner.used().await;
            if let Some(port) = taken_port(&task.ports, &held, listening) {
                return Err(TaskError::PortAllocated {
                    port,
                    node: self.inner.cluster.node().to_string(),
                });
            }
        }
        if !self.dir(&task.id).0.exists() {
            // What create would fail on later, refused now with the reason, so `run`
            // fails at once with it instead of waiting for a container that never starts.
            creatable(task, |p| std::fs::metadata(p).is_ok(), host_memory())?;
            self.inner.runtime.disk_room(self.inner.cluster.node())?;
        }
        // Known already: nothing to start, nothing pulled for this request.
        let known = |actors: &HashMap<String, Actor>| {
            actors.contains_key(&task.id) || self.dir(&task.id).0.exists()
        };
        Ok(!known(
            &self.inner.actors.lock().unwrap_or_else(|e| e.into_inner()),
        ))
    }

    /// Starts the actor of the new container of `task` (unless one exists or its directory
    /// does), its image from `source`; true when it is pulled first.
    pub(super) fn accept(&self, task: pb::Task, source: ImageSource) -> bool {
        let known = |actors: &HashMap<String, Actor>| {
            actors.contains_key(&task.id) || self.dir(&task.id).0.exists()
        };
        let feed = match &source {
            ImageSource::Pull(feed, _) => Some(feed.clone()),
            ImageSource::Here(_) => None,
        };
        let pulling = feed.is_some();
        {
            let mut actors = self.inner.actors.lock().unwrap_or_else(|e| e.into_inner());
            if known(&actors) {
                return false;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            actors.insert(
                task.id.clone(),
                Actor {
                    tx,
                    accepted: Some(Instant::now()),
                    pull: feed,
                },
            );
            let status = self.inner.base_status(&task);
            tokio::spawn(actor(
                self.inner.clone(),
                task,
                status,
                rx,
                Start::New(source),
            ));
        }
        pulling
    }
}

/// Refuses a task whose container could not be created here: a bind source that does not
/// exist on this node (`exists`), limits the kernel would refuse (`host_memory` bytes).
fn creatable(
    task: &pb::Task,
    exists: impl Fn(&std::path::Path) -> bool,
    host_memory: Option<u64>,
) -> Result<(), TaskError> {
    // Only what the node alone knows: the rest of a mount (an anonymous volume is named
    // only at create) is checked where it is made.
    for m in &task.mounts {
        if m.kind == "bind" && !exists(std::path::Path::new(&m.source)) {
            return Err(crate::runtime::mounts::MountError::NoSource(m.source.clone()).into());
        }
    }
    let limits = crate::runtime::container::limits_of(task.resources.as_ref());
    crate::runtime::cgroups::validate(&limits, host_memory.unwrap_or(u64::MAX))
        .map_err(TaskError::Limits)
}

fn host_memory() -> Option<u64> {
    crate::runtime::cgroups::host_memory().ok()
}

/// The first of `ports` whose host port a local container holds already (`held`: port and
/// protocol) or a socket of this host holds (`listening`), each binding checked with its own
/// protocol: 8080/tcp and 8080/udp are two different ports.
fn taken_port(
    ports: &[pb::PortBinding],
    held: &[(u16, String)],
    listening: impl Fn(u16, &str) -> bool,
) -> Option<u32> {
    ports.iter().find_map(|b| {
        let proto = if b.protocol.is_empty() {
            "tcp"
        } else {
            b.protocol.as_str()
        };
        let Ok(port) = u16::try_from(b.host_port) else {
            return Some(b.host_port);
        };
        let taken = held.iter().any(|(p, q)| *p == port && q == proto) || listening(port, proto);
        taken.then_some(b.host_port)
    })
}

/// Whether a socket of this host holds `port` for `proto`: binding it fails.
fn listening(port: u16, proto: &str) -> bool {
    match proto {
        "udp" => std::net::UdpSocket::bind(("0.0.0.0", port)).is_err(),
        _ => std::net::TcpListener::bind(("0.0.0.0", port)).is_err(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_bind_source_and_impossible_limits_are_refused_at_once() {
        let bind = |src: &str| pb::Mount {
            source: src.into(),
            target: "/data".into(),
            readonly: false,
            kind: "bind".into(),
        };
        let here = |p: &std::path::Path| p == std::path::Path::new("/srv");
        let mut t = pb::Task {
            mounts: vec![bind("/srv")],
            ..Default::default()
        };
        assert!(creatable(&t, here, Some(1 << 30)).is_ok());
        // An anonymous volume, named only at create, is no reason to refuse.
        t.mounts.push(pb::Mount {
            target: "/anon".into(),
            kind: "volume".into(),
            ..Default::default()
        });
        assert!(creatable(&t, here, Some(1 << 30)).is_ok());
        t.mounts.push(bind("/nonexistent"));
        let e = creatable(&t, here, Some(1 << 30)).unwrap_err().to_string();
        assert_eq!(e, "bind source /nonexistent does not exist");
        t.mounts.pop();
        t.resources = Some(pb::Resources {
            memory_bytes: 1024,
            ..Default::default()
        });
        let e = creatable(&t, here, Some(1 << 30)).unwrap_err().to_string();
        assert!(e.contains("below the minimum of 6 MiB"), "{e}");
        t.resources = Some(pb::Resources {
            memory_bytes: 2 << 30,
            ..Default::default()
        });
        assert!(creatable(&t, here, Some(1 << 30)).is_err());
    }

    #[test]
    fn a_port_is_taken_per_protocol() {
        let b = |port, proto: &str| pb::PortBinding {
            host_port: port,
            container_port: 80,
            protocol: proto.into(),
            ..Default::default()
        };
        let free = |_: u16, _: &str| false;
        // -p 8080:80/tcp -p 8080:80/udp on a free host: both go through.
        assert_eq!(
            taken_port(&[b(8080, "tcp"), b(8080, "udp")], &[], free),
            None
        );
        // A local container holding 8080/udp takes only the UDP binding.
        let held = [(8080, "udp".to_string())];
        assert_eq!(taken_port(&[b(8080, "")], &held, free), None);
        assert_eq!(
            taken_port(&[b(8080, "tcp"), b(8080, "udp")], &held, free),
            Some(8080)
        );
        // A UDP socket listening is checked as UDP, not as TCP.
        let udp_only = |_: u16, proto: &str| proto == "udp";
        assert_eq!(taken_port(&[b(53, "tcp")], &[], udp_only), None);
        assert_eq!(
            taken_port(&[b(53, "tcp"), b(53, "udp")], &[], udp_only),
            Some(53)
        );
        assert_eq!(taken_port(&[b(70_000, "tcp")], &[], free), Some(70_000));
    }
}
