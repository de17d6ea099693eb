//! The connection to the scheduler, the only server the CLI talks to. Any replica answers
//! reads; writes go to the leader, which the CLI finds by following a follower's answer
//! (PRODUCT.md: "rctl follows it"), waiting out an election in progress.

use std::future::Future;
use std::time::Duration;

use rctl_api::pb::scheduler_client::SchedulerClient;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::error::CliError;

pub type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
pub type Client = SchedulerClient<InterceptedService<Channel, Interceptor>>;

/// How long a write waits for a leader (an election after a leader dies takes a few seconds).
const LEADER_WAIT: Duration = Duration::from_secs(15);
/// Pause between attempts while no leader is known.
const LEADER_RETRY: Duration = Duration::from_millis(300);
/// Redirects followed for one write; more means replicas disagree, so give up and say so.
const MAX_REDIRECTS: usize = 3;

/// A scheduler client plus the addresses it may use, for failover and error messages.
pub struct Conn {
    pub client: Client,
    /// The replica this client is connected to.
    pub addr: String,
    /// Every replica address the user gave (`--addr a,b,c`), tried in order.
    addrs: Vec<String>,
}

/// What a refused write says about where to send it.
#[derive(Debug, PartialEq, Eq)]
enum Retry {
    /// A follower named the leader.
    FollowTo(String),
    /// No leader right now, or the replica is unreachable: try again shortly.
    Later,
    /// A real answer: report it.
    No,
}

fn retry_of(s: &Status) -> Retry {
    if let Some(addr) = s
        .metadata()
        .get(rctl_api::LEADER_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        return Retry::FollowTo(addr.to_string());
    }
    match s.code() {
        // An election in progress, or the replica we talk to died mid-call.
        Code::Unavailable if !s.message().contains("etcd") => Retry::Later,
        _ => Retry::No,
    }
}

/// Splits `--addr` into replica addresses (comma-separated, blanks ignored).
fn split_addrs(addr: &str) -> Vec<String> {
    addr.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

async fn connect(addr: &str) -> Result<Client, CliError> {
    let ep = Endpoint::from_shared(addr.to_string())
        .map_err(|_| {
            CliError::Usage(format!(
                "invalid scheduler address {addr:?} (expected e.g. http://127.0.0.1:7600)"
            ))
        })?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    let ch = ep.connect().await.map_err(|_| unreachable(addr))?;
    Ok(SchedulerClient::with_interceptor(
        ch,
        rctl_api::telemetry::propagate as Interceptor,
    ))
}

fn unreachable(addr: &str) -> CliError {
    CliError::Failed(format!(
        "cannot reach the scheduler at {addr} (is the cluster up? set --addr or RCTL_ADDR)"
    ))
}

impl Conn {
    /// Connects to the first reachable replica of `addr` (one address or a comma-separated list).
    pub async fn open(addr: &str) -> Result<Self, CliError> {
        let addrs = split_addrs(addr);
        if addrs.is_empty() {
            return Err(CliError::Usage(
                "no scheduler address given (set --addr or RCTL_ADDR)".into(),
            ));
        }
        let mut last = None;
        for a in &addrs {
            match connect(a).await {
                Ok(client) => {
                    return Ok(Self {
                        client,
                        addr: a.clone(),
                        addrs: addrs.clone(),
                    })
                }
                Err(e @ CliError::Usage(_)) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(match (addrs.len(), last) {
            (1, Some(e)) => e,
            _ => CliError::Failed(format!(
                "cannot reach any scheduler at {} (is the cluster up? set --addr or RCTL_ADDR)",
                addrs.join(",")
            )),
        })
    }

    /// Sends a write to the leader: follows a follower's redirect, waits out an election,
    /// and moves to another replica if this one stops answering. Writes are idempotent
    /// (desired state), so sending one again after an unanswered attempt is safe.
    pub async fn write<T, F, Fut>(&mut self, mut call: F) -> Result<T, CliError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut redirects = 0;
        let mut next_replica = 0;
        loop {
            let status = match call(self.client.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => s,
            };
            match retry_of(&status) {
                Retry::FollowTo(leader) if leader != self.addr && redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    tracing::debug!(from = %self.addr, to = %leader, "following the leader");
                    self.client = connect(&leader).await?;
                    self.addr = leader;
                }
                // Sent back to the replica we asked: its term just ended, a new one is coming.
                Retry::Later | Retry::FollowTo(_) if Instant::now() < deadline => {
                    tokio::time::sleep(LEADER_RETRY).await;
                    // The replica may be gone: try the others in turn.
                    if self.addrs.len() > 1 && connect(&self.addr).await.is_err() {
                        next_replica = (next_replica + 1) % self.addrs.len();
                        let a = self.addrs[next_replica].clone();
                        if let Ok(c) = connect(&a).await {
                            self.client = c;
                            self.addr = a;
                        }
                    }
                }
                _ => return Err(self.err(status)),
            }
        }
    }

    /// Maps a failed call's status into the CLI's error.
    pub fn err(&self, s: tonic::Status) -> CliError {
        CliError::from_status(s, &self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_on_commas_and_ignore_blanks() {
        assert_eq!(
            split_addrs(" http://a:1, ,http://b:2,"),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
        assert!(split_addrs(" , ").is_empty());
    }

    #[test]
    fn a_follower_answer_is_followed_and_an_election_waited_out() {
        let mut s = Status::failed_precondition("not the leader");
        s.metadata_mut().insert(
            rctl_api::LEADER_HEADER,
            "http://127.0.0.1:7607".parse().unwrap(),
        );
        assert_eq!(
            retry_of(&s),
            Retry::FollowTo("http://127.0.0.1:7607".into())
        );
        assert_eq!(
            retry_of(&Status::unavailable(
                "no scheduler leader is elected right now"
            )),
            Retry::Later
        );
        // etcd being down is not something waiting on another replica fixes.
        assert_eq!(
            retry_of(&Status::unavailable("etcd get: timed out (is etcd up?)")),
            Retry::No
        );
        assert_eq!(retry_of(&Status::invalid_argument("bad")), Retry::No);
    }
}
