//! The connection to the scheduler, the only server the CLI talks to.

use rctl_api::pb::scheduler_client::SchedulerClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::error::CliError;

pub type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
pub type Client = SchedulerClient<InterceptedService<Channel, Interceptor>>;

/// A scheduler client plus the address, for error messages.
pub struct Conn {
    pub client: Client,
    pub addr: String,
}

impl Conn {
    pub async fn open(addr: &str) -> Result<Self, CliError> {
        let unreachable = || {
            CliError::Failed(format!(
                "cannot reach the scheduler at {addr} (is the cluster up? set --addr or RCTL_ADDR)"
            ))
        };
        let ep = Endpoint::from_shared(addr.to_string())
            .map_err(|_| {
                CliError::Usage(format!(
                    "invalid scheduler address {addr:?} (expected e.g. http://127.0.0.1:7600)"
                ))
            })?
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30));
        let ch = ep.connect().await.map_err(|_| unreachable())?;
        let client =
            SchedulerClient::with_interceptor(ch, rctl_api::telemetry::propagate as Interceptor);
        Ok(Self {
            client,
            addr: addr.to_string(),
        })
    }

    /// Maps a failed call's status into the CLI's error.
    pub fn err(&self, s: tonic::Status) -> CliError {
        CliError::from_status(s, &self.addr)
    }
}
