//! Leader election and fencing against a real etcd (Debian's `etcd-server`): exactly one
//! replica leads, resigning or losing the lease hands over, writes fenced with an old leader
//! key are refused, and two full controllers on one etcd never double-place.
//!
//! Needs Debian's `etcd-server` (installed by `make deps`); fails without it.

use std::time::Duration;

use etcd_client::{Client, GetOptions};
use rctl_api::codec::{decode, encode};
use rctl_api::tls::Security;
use rctl_api::{keys, pb};
use rctl_scheduler::agents::Agents;
use rctl_scheduler::leader::{Election, Term};
use rctl_scheduler::store::{Store, StoreError};
use rctl_tests::etcd::TestEtcd;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The shared test etcd, plus a client that waits for it to answer.
struct Etcd(TestEtcd);

impl Etcd {
    fn start() -> Self {
        Self(TestEtcd::start())
    }

    fn endpoints(&self) -> Vec<String> {
        self.0.endpoints()
    }

    async fn client(&self) -> Client {
        for _ in 0..100 {
            if let Ok(mut c) = Client::connect([&self.0.url], None).await {
                if c.get("probe", None).await.is_ok() {
                    return c;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("etcd at {} did not come up", self.0.url);
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `within`.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn campaign(e: &Election, shutdown: &CancellationToken) -> JoinHandle<Option<Term>> {
    let (e, shutdown) = (e.clone(), shutdown.clone());
    tokio::spawn(async move { e.campaign(&shutdown).await })
}

/// The current leader's candidate value, as etcd reports it.
async fn leader_value(client: &Client) -> Option<String> {
    let resp = client.election_client().leader(keys::leader()).await.ok()?;
    resp.kv().map(|kv| kv.value_str().unwrap().to_string())
}

async fn elections(etcd: &Etcd, names: &[&str]) -> Vec<Election> {
    etcd.client().await;
    let mut out = Vec::new();
    for n in names {
        out.push(
            Election::connect(&etcd.endpoints(), &Security::Insecure, *n)
                .await
                .unwrap(),
        );
    }
    out
}

fn task(id: &str) -> pb::Task {
    pb::Task {
        id: id.to_string(),
        service: "web".to_string(),
        node: "n1".to_string(),
        revision: 1,
        image: "img".to_string(),
        desired_state: pb::DesiredState::Running as i32,
        slot: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn one_leader_and_handover_on_resign_and_lease_loss() {
    let etcd = Etcd::start();
    let client = etcd.client().await;
    let es = elections(&etcd, &["a", "b"]).await;
    let token = CancellationToken::new();
    let mut pending = vec![campaign(&es[0], &token), campaign(&es[1], &token)];

    let first = eventually(Duration::from_secs(10), "a leader", || {
        let done = pending.iter().position(|h| h.is_finished());
        async move { done }
    })
    .await;
    let term1 = pending.remove(first).await.unwrap().expect("elected");
    let other = pending.pop().unwrap();
    let (winner, loser) = if first == 0 { ("a", "b") } else { ("b", "a") };
    assert_eq!(leader_value(&client).await.as_deref(), Some(winner));
    assert!(!other.is_finished(), "two leaders at once");

    // Resigning hands over well before the lease TTL would have.
    let resigned = Instant::now();
    term1.resign().await;
    eventually(Duration::from_secs(10), "the follower to lead", || {
        let done = other.is_finished();
        async move { done.then_some(()) }
    })
    .await;
    let term2 = other.await.unwrap().expect("elected");
    assert!(resigned.elapsed() < Duration::from_secs(4));
    assert_eq!(leader_value(&client).await.as_deref(), Some(loser));

    // The old leader campaigns again and queues; revoking the leader's lease moves leadership
    // back, and the deposed term notices on its own.
    let again = campaign(&es[first], &token);
    client.lease_client().revoke(term2.lease()).await.unwrap();
    let lost = term2.lost();
    eventually(Duration::from_secs(5), "the old term to notice", || {
        let l = lost.is_cancelled();
        async move { l.then_some(()) }
    })
    .await;
    eventually(Duration::from_secs(10), "re-election", || {
        let done = again.is_finished();
        async move { done.then_some(()) }
    })
    .await;
    let term3 = again.await.unwrap().expect("elected");
    assert_eq!(leader_value(&client).await.as_deref(), Some(winner));
    assert!(term3.key().rev() > term2.key().rev());
    term3.resign().await;
}

#[tokio::test]
async fn writes_fenced_with_an_old_leader_key_are_refused() {
    let etcd = Etcd::start();
    let es = elections(&etcd, &["a", "b"]).await;
    let store = Store::connect(&etcd.endpoints(), &Security::Insecure)
        .await
        .unwrap();
    let token = CancellationToken::new();

    let term1 = es[0].campaign(&token).await.expect("elected");
    store
        .create_task(term1.key(), &task("t1"), 0)
        .await
        .unwrap();
    let old_key = term1.key().clone();

    let next = campaign(&es[1], &token);
    term1.resign().await;
    let term2 = next.await.unwrap().expect("elected");

    for res in [
        store.create_task(&old_key, &task("t2"), 0).await,
        store.update_task(&old_key, &task("t1"), 0).await,
        store.delete_task(&old_key, &task("t1")).await,
    ] {
        assert!(matches!(res, Err(StoreError::NotLeader(_))), "{res:?}");
    }
    // The current key writes; an ordinary stale read is still a conflict, not a lost election.
    store
        .create_task(term2.key(), &task("t2"), 0)
        .await
        .unwrap();
    let res = store.create_task(term2.key(), &task("t2"), 0).await;
    assert!(matches!(res, Err(StoreError::Conflict(_))), "{res:?}");
    store.delete_task(term2.key(), &task("t1")).await.unwrap();
    let loaded = store.load().await.unwrap();
    let ids: Vec<_> = loaded.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["t2"]);
    term2.resign().await;
}

async fn running_tasks(client: &Client) -> usize {
    let resp = client
        .kv_client()
        .get(keys::tasks_prefix(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| decode::<pb::Task>(kv.key(), kv.value()).unwrap())
        .filter(|t| t.desired_state() == pb::DesiredState::Running)
        .count()
}

#[tokio::test]
async fn two_controllers_never_double_place() {
    let etcd = Etcd::start();
    let client = etcd.client().await;
    let mut kv = client.kv_client();
    for n in ["n1", "n2"] {
        let node = pb::Node {
            name: n.to_string(),
            // Nothing listens here: RunTask fails and is retried, which is fine.
            address: "127.0.0.1:1".to_string(),
            cpus: 4.0,
            memory_bytes: 1 << 30,
            ..Default::default()
        };
        kv.put(keys::node(n), encode(&node), None).await.unwrap();
    }
    let svc = pb::Service {
        spec: Some(pb::ServiceSpec {
            name: "web".to_string(),
            image: "img".to_string(),
            replicas: 3,
            ..Default::default()
        }),
        revision: 1,
        ..Default::default()
    };
    kv.put(keys::service("web"), encode(&svc), None)
        .await
        .unwrap();

    let es = elections(&etcd, &["a", "b"]).await;
    let tokens = [CancellationToken::new(), CancellationToken::new()];
    let mut runs = Vec::new();
    for (e, t) in es.iter().zip(&tokens) {
        let store = Store::connect(&etcd.endpoints(), &Security::Insecure)
            .await
            .unwrap();
        runs.push(tokio::spawn(rctl_scheduler::controller::run(
            store,
            Agents::default(),
            e.clone(),
            t.clone(),
        )));
    }

    eventually(Duration::from_secs(10), "3 tasks placed", || {
        let c = client.clone();
        async move { (running_tasks(&c).await == 3).then_some(()) }
    })
    .await;

    // Hand over: the leader shuts down (and resigns); the follower takes over and reconciles
    // the same tasks. Sample across several of its passes that nothing was placed twice.
    let leader = leader_value(&client).await.expect("a leader");
    let (stop, keep) = if leader == "a" { (0, "b") } else { (1, "a") };
    tokens[stop].cancel();
    eventually(
        Duration::from_secs(5),
        "the stopped controller to exit",
        || {
            let done = runs[stop].is_finished();
            async move { done.then_some(()) }
        },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the other controller to lead",
        || {
            let c = client.clone();
            async move { (leader_value(&c).await.as_deref() == Some(keep)).then_some(()) }
        },
    )
    .await;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(running_tasks(&client).await, 3);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in &tokens {
        t.cancel();
    }
    for r in runs {
        tokio::time::timeout(Duration::from_secs(5), r)
            .await
            .expect("controller exits on shutdown")
            .unwrap();
    }
}
