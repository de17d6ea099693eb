//! Supervising a running container: its exit, its health probes and the endpoint the
//! load balancers route to, and a stop request (endpoint withdrawn before the signal).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use rctl_api::{clock, pb};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::status::finish;
use super::{Cmd, Inner, Stop};
use crate::health::{self, Health, Transition};
use crate::lifecycle;
use crate::runtime::state::{ContainerConfig, ContainerDir, PidRecord};

impl Inner {
    pub(super) fn endpoint_address(&self, cfg: &ContainerConfig) -> String {
        format!("{}:{}", self.runtime.advertise_ip(), cfg.host_port)
    }

    pub(super) async fn drop_endpoint(&self, task: &pb::Task) {
        if task.container_port != 0 {
            if let Err(e) = self.cluster.delete_endpoint(&task.service, &task.id).await {
                warn!(task = %task.id, error = %e, "cannot delete endpoint");
            }
        }
    }
}

/// How supervision of a running container ended.
pub(super) enum Ended {
    /// Stopped on request (status reported).
    Stopped(Stop),
    /// Exited by itself with this status (network torn down, status not yet reported: the
    /// restart policy decides what to report).
    Exited(Option<i32>),
}

/// Watches a running container until it exits or is stopped.
pub(super) async fn supervise(
    inner: &Inner,
    task: &pb::Task,
    status: &mut pb::TaskStatus,
    dir: &ContainerDir,
    cfg: &ContainerConfig,
    pid: PidRecord,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
) -> Ended {
    status.state = pb::TaskState::Running as i32;
    status.pid = pid.pid as u32;
    status.message = String::new();
    if status.started_unix_ms == 0 {
        status.started_unix_ms = dir.started_unix_ms().unwrap_or_else(clock::now_unix_ms);
    }
    if cfg.host_port != 0 {
        status.endpoint = inner.endpoint_address(cfg);
        status.health = health::Verdict::Starting.as_str().into();
    }
    inner.report(status).await;
    info!(task = %task.id, pid = pid.pid, "container running");

    let probe_addr = SocketAddr::from((cfg.ip, cfg.container_port));
    let check = health::Check::from_spec(task.health.as_ref());
    let probing = cfg.container_port != 0;
    if probing && check.cmd_unsupported {
        warn!(task = %task.id, "cmd health checks are not implemented; checking TCP connect instead");
    }
    let mut health = Health::new(check.thresholds);
    let mut next_probe = Instant::now();
    // The probe in flight, if any: it runs alongside the stop and exit watch, so a slow
    // probe never delays a stop.
    let mut inflight: Option<Pin<Box<dyn Future<Output = bool> + Send + '_>>> = None;
    // Woken by the runtime when PID 1 is gone.
    let exited = inner.runtime.exited(dir, &pid);
    tokio::pin!(exited);
    loop {
        if probing && inflight.is_none() && Instant::now() >= next_probe {
            next_probe = Instant::now() + check.interval;
            inflight = Some(inner.runtime.probe(&check, probe_addr));
        }
        let mut probed = None;
        let mut gone = false;
        tokio::select! {
            cmd = rx.recv() => {
                // Every sender gone means the agent is shutting down: leave it running.
                let stop = match cmd {
                    None => return Ended::Exited(None),
                    Some(Cmd::Stop(stop)) => stop,
                    Some(Cmd::Start) => continue,
                    Some(Cmd::Kill(sig)) => {
                        inner.runtime.signal(dir, &pid, sig);
                        continue;
                    }
                };
                let _ = dir.mark_stopped().await;
                // The load balancer must stop sending before the container is signalled.
                inner.drop_endpoint(task).await;
                status.state = pb::TaskState::Stopping as i32;
                inner.report(status).await;
                let sig = lifecycle::stop_signal(&task.stop_signal, &cfg.stop_signal)
                    .unwrap_or(nix::sys::signal::Signal::SIGTERM);
                let timeout = lifecycle::stop_timeout(stop.timeout, task.stop_timeout_ms);
                let code = inner.kill(dir, Some(pid), sig, timeout).await;
                inner.teardown(cfg).await;
                finish(status, code, true, String::new());
                inner.report(status).await;
                return Ended::Stopped(stop);
            }
            ok = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                probed = Some(ok);
            }
            () = &mut exited => gone = true,
            _ = tokio::time::sleep_until(next_probe), if probing && inflight.is_none() => {}
        }
        // A probe that failed because PID 1 is gone reports the exit, not "unhealthy".
        if gone || (probed.is_some() && inner.runtime.finished(dir, &pid)) {
            inner.drop_endpoint(task).await;
            let code = inner.exit_code(dir).await;
            inner.teardown(cfg).await;
            info!(task = %task.id, code = ?code, "container exited");
            return Ended::Exited(code);
        }
        let Some(ok) = probed else { continue };
        inflight = None;
        match health.observe(ok) {
            Transition::None => {}
            Transition::BecameHealthy => {
                let ep = pb::Endpoint {
                    service: task.service.clone(),
                    task_id: task.id.clone(),
                    node: inner.cluster.node().to_string(),
                    address: inner.endpoint_address(cfg),
                    revision: task.revision,
                    healthy: true,
                };
                if let Err(e) = inner.cluster.put_endpoint(&ep).await {
                    warn!(task = %task.id, error = %e, "cannot publish endpoint");
                }
                status.health = health.verdict.as_str().into();
                inner.report(status).await;
            }
            Transition::BecameUnhealthy => {
                inner.drop_endpoint(task).await;
                status.health = health.verdict.as_str().into();
                inner.report(status).await;
                info!(task = %task.id, "container unhealthy; endpoint withdrawn");
            }
        }
    }
}
