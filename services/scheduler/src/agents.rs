//! The scheduler's edge towards agents: one lazily connected gRPC channel per node address,
//! and RunTask/StopTask sent without blocking the reconcile loop, at most
//! [`MAX_IN_FLIGHT`] at a time (ten thousand placements must not open ten thousand calls).
//! With TLS, the agent's certificate must be for the node's name, so a host holding another
//! node's certificate cannot receive that node's tasks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rctl_api::pb::agent_client::AgentClient;
use rctl_api::pb::{RunTaskRequest, StopTaskRequest, Task};
use rctl_api::tls::Security;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

/// How long a sent command is trusted before it is sent again if nothing changed.
const RESEND_AFTER: Duration = Duration::from_secs(5);
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Agent calls outstanding at once, over all agents.
pub const MAX_IN_FLIGHT: usize = 256;

type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
pub type Client = AgentClient<InterceptedService<Channel, Interceptor>>;

#[derive(Clone)]
pub struct Agents {
    inner: Arc<Mutex<Inner>>,
    security: Security,
    /// One permit per call in flight.
    calls: Arc<Semaphore>,
}

/// Plaintext, as for tests that run without certificates.
impl Default for Agents {
    fn default() -> Self {
        Self::new(Security::Insecure)
    }
}

#[derive(Default)]
struct Inner {
    /// Channel per (node name, agent address): the name is what the agent's certificate
    /// is checked against.
    channels: HashMap<(String, String), Channel>,
    /// When each (task, command) was last sent, to avoid flooding agents with repeats.
    sent: HashMap<(String, &'static str), Instant>,
}

impl Agents {
    pub fn new(security: Security) -> Self {
        Self {
            inner: Arc::default(),
            security,
            calls: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    fn channel(&self, node: &str, addr: &str) -> Option<Channel> {
        let mut inner = self.inner.lock().expect("agents lock");
        let key = (node.to_string(), addr.to_string());
        if let Some(c) = inner.channels.get(&key) {
            return Some(c.clone());
        }
        let mut ep = Endpoint::from_shared(format!("{}://{addr}", self.security.scheme()))
            .ok()?
            .connect_timeout(Duration::from_secs(3))
            .timeout(RPC_TIMEOUT);
        if let Some(tls) = self.security.tls() {
            ep = match ep.tls_config(tls.client_config(Some(node))) {
                Ok(ep) => ep,
                Err(e) => {
                    tracing::warn!(error = %e, node, "agent TLS configuration");
                    return None;
                }
            };
        }
        let ch = ep.connect_lazy();
        inner.channels.insert(key, ch.clone());
        Some(ch)
    }

    /// A client for the agent of `node` at `addr`, for the image requests the API passes on.
    pub fn client(&self, node: &str, addr: &str) -> Option<Client> {
        let ch = self.channel(node, addr)?;
        Some(AgentClient::with_interceptor(
            ch,
            rctl_api::telemetry::propagate as Interceptor,
        ))
    }

    /// Claims the right to send `cmd` for `task` now; false if it was sent recently.
    fn claim(&self, task: &str, cmd: &'static str, force: bool) -> bool {
        let mut inner = self.inner.lock().expect("agents lock");
        let now = Instant::now();
        let key = (task.to_string(), cmd);
        match inner.sent.get(&key) {
            Some(t) if !force && now.duration_since(*t) < RESEND_AFTER => false,
            _ => {
                inner.sent.insert(key, now);
                true
            }
        }
    }

    /// Forgets tasks that no longer exist, so the map does not grow forever.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.inner
            .lock()
            .expect("agents lock")
            .sent
            .retain(|(t, _), _| live(t));
    }

    /// Sends RunTask in the background. `force` skips the resend delay (a new placement).
    pub fn run(&self, addr: &str, task: &Task, force: bool) {
        let req = RunTaskRequest {
            task: Some(task.clone()),
            auth: Vec::new(),
        };
        self.send(addr, task, "run", force, |mut c| async move {
            c.run_task(req).await.map(drop)
        });
    }

    /// Sends StopTask (remove when stopped) in the background.
    pub fn stop(&self, addr: &str, task: &Task, force: bool) {
        let req = StopTaskRequest {
            task_id: task.id.clone(),
            service: task.service.clone(),
            timeout_ms: 0,
            remove: true,
            remove_volumes: false,
        };
        self.send(addr, task, "stop", force, |mut c| async move {
            c.stop_task(req).await.map(drop)
        });
    }

    /// Runs `call` against the task's agent on a spawned task, unless `cmd` was sent for this
    /// task recently. Failures are only logged: the next reconcile pass sends again.
    fn send<F, Fut>(&self, addr: &str, task: &Task, cmd: &'static str, force: bool, call: F)
    where
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
    {
        if !self.claim(&task.id, cmd, force) {
            return;
        }
        let Some(ch) = self.channel(&task.node, addr) else {
            return;
        };
        let span = tracing::info_span!("agent_rpc", cmd, task = %task.id, node = %task.node);
        let calls = self.calls.clone();
        tokio::spawn(
            async move {
                let Ok(_permit) = calls.acquire_owned().await else {
                    return;
                };
                let client = AgentClient::with_interceptor(
                    ch,
                    rctl_api::telemetry::propagate as Interceptor,
                );
                if let Err(e) = call(client).await {
                    tracing::warn!(error = %e.message(), "agent call failed; will retry");
                }
            }
            .instrument(span),
        );
    }
}
