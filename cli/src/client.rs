//! The connection to the scheduler, the only server the CLI talks to. Any replica answers
//! reads; writes go to the leader, which the CLI finds by following a follower's answer
//! (PRODUCT.md: "rctl follows it"), waiting out an election in progress.
//!
//! The address's scheme picks the transport: `https://` is mutual TLS with the certificate
//! `NAME.crt`/`NAME.key` and the CA `ca.crt` from the TLS directory (`--tls-dir`,
//! `RCTL_TLS_DIR`, default `~/.rctl/tls`; `NAME` is `--tls-name`, default `client`);
//! `http://` is plaintext and is refused unless `--insecure` (or `RCTL_INSECURE=1`) says so.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use rctl_api::pb::scheduler_client::SchedulerClient;
use rctl_api::tls::{Tls, TlsFiles};
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

/// How to reach the scheduler, as given on the command line.
#[derive(Debug, Clone)]
pub struct Target {
    /// One replica's address, or several comma-separated.
    pub addr: String,
    pub tls_dir: PathBuf,
    pub tls_name: String,
    pub insecure: bool,
}

/// `$RCTL_TLS_DIR`'s default: `~/.rctl/tls`.
pub fn default_tls_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".rctl/tls")
}

/// A scheduler client plus what it needs to move to another replica.
pub struct Conn {
    pub client: Client,
    /// The replica this client is connected to.
    pub addr: String,
    /// Every replica address the user gave (`--addr a,b,c`), tried in order.
    addrs: Vec<String>,
    target: Target,
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

/// The innermost cause of a transport error: "invalid peer certificate: UnknownIssuer"
/// says more than "transport error".
fn root_cause(e: &tonic::transport::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Connects to one replica, with TLS or (only when allowed) plaintext by its scheme.
async fn connect(addr: &str, target: &Target) -> Result<Client, CliError> {
    let tls = if addr.starts_with("https://") {
        let files = TlsFiles::in_dir(&target.tls_dir, &target.tls_name);
        let tls = Tls::load(&files).map_err(|e| {
            CliError::Usage(format!(
                "{e} (TLS files come from --tls-dir/RCTL_TLS_DIR and --tls-name/RCTL_TLS_NAME; for a plaintext cluster use http:// with --insecure)"
            ))
        })?;
        Some(tls)
    } else if addr.starts_with("http://") {
        if !target.insecure {
            return Err(CliError::Usage(format!(
                "{addr} is plaintext: pass --insecure (or RCTL_INSECURE=1) to allow it, or use https:// with RCTL_TLS_DIR"
            )));
        }
        None
    } else {
        return Err(CliError::Usage(format!(
            "invalid scheduler address {addr:?} (expected https://HOST:PORT, or http://HOST:PORT with --insecure)"
        )));
    };
    let mut ep = Endpoint::from_shared(addr.to_string())
        .map_err(|_| {
            CliError::Usage(format!(
                "invalid scheduler address {addr:?} (expected e.g. https://127.0.0.1:7600)"
            ))
        })?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    if let Some(tls) = &tls {
        ep = ep
            .tls_config(tls.client_config(None))
            .map_err(|e| CliError::Usage(format!("TLS configuration: {e}")))?;
    }
    let ch = ep.connect().await.map_err(|e| {
        let cause = root_cause(&e);
        if tls.is_some() && cause.contains("certificate") {
            CliError::Failed(format!(
                "TLS with the scheduler at {addr} failed: {cause} (are --tls-dir and the cluster's CA the same?)"
            ))
        } else {
            CliError::Failed(format!(
                "cannot reach the scheduler at {addr}: {cause} (is the cluster up? set --addr or RCTL_ADDR; https:// for a TLS cluster)"
            ))
        }
    })?;
    Ok(SchedulerClient::with_interceptor(
        ch,
        rctl_api::telemetry::propagate as Interceptor,
    ))
}

impl Conn {
    /// Connects to the first reachable replica of `target.addr` (one address or a
    /// comma-separated list).
    pub async fn open(target: &Target) -> Result<Self, CliError> {
        let addrs = split_addrs(&target.addr);
        if addrs.is_empty() {
            return Err(CliError::Usage(
                "no scheduler address given (set --addr or RCTL_ADDR)".into(),
            ));
        }
        let mut last = None;
        for a in &addrs {
            match connect(a, target).await {
                Ok(client) => {
                    return Ok(Self {
                        client,
                        addr: a.clone(),
                        addrs: addrs.clone(),
                        target: target.clone(),
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
                    tracing::debug!(from = %self.addr, to = %leader, "following the leader");
                    match connect(&leader, &self.target).await {
                        Ok(client) => {
                            redirects += 1;
                            self.client = client;
                            self.addr = leader;
                        }
                        // A leader that just died is named until its lease ends: wait for
                        // the next one.
                        Err(_) if Instant::now() < deadline => {
                            tokio::time::sleep(LEADER_RETRY).await
                        }
                        Err(e) => return Err(e),
                    }
                }
                // Sent back to the replica we asked: its term just ended, a new one is coming.
                Retry::Later | Retry::FollowTo(_) if Instant::now() < deadline => {
                    tokio::time::sleep(LEADER_RETRY).await;
                    // The replica may be gone: try the others in turn.
                    if self.addrs.len() > 1 && connect(&self.addr, &self.target).await.is_err() {
                        next_replica = (next_replica + 1) % self.addrs.len();
                        let a = self.addrs[next_replica].clone();
                        if let Ok(c) = connect(&a, &self.target).await {
                            self.client = c;
                            self.addr = a;
                        }
                    }
                }
                // The replica died under the call (a restart, a failover): ask another.
                _ if std::error::Error::source(&status).is_some() && Instant::now() < deadline => {
                    tokio::time::sleep(LEADER_RETRY).await;
                    if let Ok(again) = Conn::open(&self.target).await {
                        *self = again;
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

    /// The service `name` with its tasks and rollout, as `service inspect` shows it.
    pub async fn inspect_service(
        &mut self,
        name: &str,
    ) -> Result<rctl_api::pb::InspectServiceResponse, CliError> {
        let req = rctl_api::pb::InspectServiceRequest { name: name.into() };
        match self.client.inspect_service(req).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.err(s)),
        }
    }

    /// [`Conn::inspect_service`], asked again until `deadline` while no scheduler answers
    /// (one restarting, a failover), on whichever replica answers first: a `--wait`
    /// outlives them.
    pub async fn inspect_service_until(
        &mut self,
        name: &str,
        deadline: Instant,
    ) -> Result<rctl_api::pb::InspectServiceResponse, CliError> {
        loop {
            let req = rctl_api::pb::InspectServiceRequest { name: name.into() };
            let status = match self.client.inspect_service(req).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => s,
            };
            if !crate::error::unreachable(&status) || Instant::now() >= deadline {
                return Err(self.err(status));
            }
            tokio::time::sleep(LEADER_RETRY).await;
            if let Ok(again) = Conn::open(&self.target).await {
                *self = again;
            }
        }
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
