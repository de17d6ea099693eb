//! Cross-host container traffic without NAT: this host routes every other node's container
//! subnet to that node, as read from the node records in etcd (host-gw, as flannel does
//! when nodes share a link), and exempts those subnets from the egress NAT, so a task sees
//! its peer's real container address.
//!
//! Vocabulary: a *peer* is another node with a container subnet; a *peer route* is the
//! route to its subnet, tagged with protocol [`ROUTE_PROTO`] so the agent can tell its own
//! routes apart and remove the ones whose node is gone. [`peers`] and [`plan`] decide (pure);
//! [`run`] watches `nodes/` and applies the plan with `ip route` and [`super::egress`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use etcd_client::{Client, GetOptions, WatchOptions};
use rctl_api::{codec, keys, pb};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{run as cmd, Network, NetworkError, Subnet};

/// The routing protocol number that marks a route as a peer route of the agent's
/// (`ip route … proto 97`; unassigned in iproute2's rt_protos).
pub const ROUTE_PROTO: &str = "97";

/// Another node's container subnet and where to send its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRoute {
    pub subnet: Subnet,
    /// The node's advertised address (on this host's link, host-gw).
    pub via: Ipv4Addr,
}

/// Whether two subnets share any address.
fn overlaps(a: &Subnet, b: &Subnet) -> bool {
    let len = a.prefix_len.min(b.prefix_len);
    let mask = u32::MAX << (32 - len);
    u32::from(a.network) & mask == u32::from(b.network) & mask
}

/// The peer routes this host (node `me`, container subnet `own`) wants, from the node
/// records: every other node with a parseable subnet and address. A subnet overlapping
/// this host's own, or one another node (first by name) already claimed, is skipped: a
/// route for it would steal traffic from local containers or flap between two nodes.
pub fn peers(me: &str, own: &Subnet, nodes: &[pb::Node]) -> Vec<PeerRoute> {
    let mut by_name: Vec<&pb::Node> = nodes.iter().filter(|n| n.name != me).collect();
    by_name.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out: Vec<PeerRoute> = Vec::new();
    for n in by_name {
        let (Ok(subnet), Ok(via)) = (Subnet::parse(&n.subnet), n.advertise_ip.parse()) else {
            continue;
        };
        if overlaps(&subnet, own) || out.iter().any(|p| overlaps(&p.subnet, &subnet)) {
            continue;
        }
        out.push(PeerRoute { subnet, via });
    }
    out.sort();
    out
}

/// What to change so the peer routes in the kernel (`current`) become `desired`: routes to
/// add or replace, and subnets whose route to delete.
pub fn plan(desired: &[PeerRoute], current: &[PeerRoute]) -> (Vec<PeerRoute>, Vec<Subnet>) {
    let add = desired
        .iter()
        .filter(|d| !current.contains(d))
        .copied()
        .collect();
    let del = current
        .iter()
        .filter(|c| !desired.iter().any(|d| d.subnet == c.subnet))
        .map(|c| c.subnet)
        .collect();
    (add, del)
}

/// Parses `ip -4 route show proto 97` output (`198.19.2.0/24 via 198.18.0.12 dev eth0`).
pub fn parse_routes(out: &str) -> Vec<PeerRoute> {
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let subnet = Subnet::parse(words.next()?).ok()?;
            let via = words.skip_while(|w| *w != "via").nth(1)?.parse().ok()?;
            Some(PeerRoute { subnet, via })
        })
        .collect()
}

/// Makes the kernel's peer routes and the egress exemptions match `desired`.
async fn apply(net: &Network, desired: &[PeerRoute]) -> Result<(), NetworkError> {
    let current = parse_routes(&cmd("ip", &["-4", "route", "show", "proto", ROUTE_PROTO]).await?);
    let (add, del) = plan(desired, &current);
    for s in &del {
        let s = s.to_string();
        cmd("ip", &["-4", "route", "del", &s, "proto", ROUTE_PROTO]).await?;
    }
    // Exempt the new subnets from NAT before traffic to them is routed, and keep the
    // removed ones exempt until their routes are gone.
    let subnets: Vec<Subnet> = desired.iter().map(|p| p.subnet).collect();
    net.set_egress(&subnets).await?;
    for r in &add {
        let (s, via) = (r.subnet.to_string(), r.via.to_string());
        cmd(
            "ip",
            &[
                "-4",
                "route",
                "replace",
                &s,
                "via",
                &via,
                "proto",
                ROUTE_PROTO,
            ],
        )
        .await?;
    }
    if !add.is_empty() || !del.is_empty() {
        info!(
            routes = desired.len(),
            added = add.len(),
            removed = del.len(),
            "peer routes updated"
        );
    }
    Ok(())
}

/// Every node record and the revision it was read at.
async fn list(client: &mut Client) -> Result<(Vec<pb::Node>, i64), etcd_client::Error> {
    let resp = client
        .get(keys::nodes_prefix(), Some(GetOptions::new().with_prefix()))
        .await?;
    let rev = resp.header().map_or(0, |h| h.revision());
    let nodes: BTreeMap<String, pb::Node> = codec::decode_all::<pb::Node>(resp.kvs())
        .into_iter()
        .map(|n| (n.name.clone(), n))
        .collect();
    Ok((nodes.into_values().collect(), rev))
}

/// Keeps the peer routes in step with the node records until `shutdown`: lists `nodes/`,
/// applies, then watches from the next revision and lists again on any change (node
/// records change only when a node registers or its lease ends). Errors are logged and
/// retried after a second; the last applied state stays meanwhile.
pub async fn run(mut client: Client, me: String, net: Network, shutdown: CancellationToken) {
    const RETRY: Duration = Duration::from_secs(1);
    let mut applied: Option<Vec<PeerRoute>> = None;
    loop {
        let rev = match list(&mut client).await {
            Ok((nodes, rev)) => {
                let want = peers(&me, &net.subnet, &nodes);
                if applied.as_ref() != Some(&want) {
                    match apply(&net, &want).await {
                        Ok(()) => applied = Some(want),
                        Err(e) => warn!(error = %e, "programming peer routes failed; retrying"),
                    }
                }
                applied.is_some().then_some(rev)
            }
            Err(e) => {
                warn!(error = %e, "listing nodes for peer routes failed; retrying");
                None
            }
        };
        let Some(rev) = rev else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => continue,
            }
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        let mut stream = match client.watch(keys::nodes_prefix(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "watching nodes for peer routes failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = stream.message() => m,
            };
            match msg {
                Ok(Some(resp)) if resp.events().is_empty() && !resp.canceled() => continue,
                Ok(Some(_)) => break,
                Ok(None) | Err(_) => {
                    tokio::time::sleep(RETRY).await;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, subnet: &str) -> pb::Node {
        pb::Node {
            name: name.into(),
            advertise_ip: ip.into(),
            subnet: subnet.into(),
            ..Default::default()
        }
    }

    fn route(subnet: &str, via: &str) -> PeerRoute {
        PeerRoute {
            subnet: Subnet::parse(subnet).unwrap(),
            via: via.parse().unwrap(),
        }
    }

    #[test]
    fn every_other_node_with_a_subnet_is_a_peer() {
        let own = Subnet::parse("198.19.1.0/24").unwrap();
        let nodes = [
            node("h1", "198.18.0.11", "198.19.1.0/24"),
            node("h3", "198.18.0.13", "198.19.3.0/24"),
            node("h2", "198.18.0.12", "198.19.2.0/24"),
            node("hollow-1", "127.0.0.1", ""),
            node("bad", "not-an-ip", "198.19.9.0/24"),
        ];
        assert_eq!(
            peers("h1", &own, &nodes),
            [
                route("198.19.2.0/24", "198.18.0.12"),
                route("198.19.3.0/24", "198.18.0.13")
            ]
        );
    }

    #[test]
    fn a_subnet_overlapping_ours_or_another_peers_gets_no_route() {
        let own = Subnet::parse("198.19.1.0/24").unwrap();
        let nodes = [
            node("h2", "198.18.0.12", "198.19.0.0/16"),
            node("h3", "198.18.0.13", "198.20.3.0/24"),
            node("h4", "198.18.0.14", "198.20.3.0/25"),
        ];
        assert_eq!(
            peers("h1", &own, &nodes),
            [route("198.20.3.0/24", "198.18.0.13")]
        );
    }

    #[test]
    fn the_plan_adds_what_is_missing_or_moved_and_deletes_what_is_gone() {
        let desired = [
            route("198.19.2.0/24", "198.18.0.12"),
            route("198.19.3.0/24", "198.18.0.23"),
        ];
        let current = [
            route("198.19.3.0/24", "198.18.0.13"),
            route("198.19.4.0/24", "198.18.0.14"),
            route("198.19.2.0/24", "198.18.0.12"),
        ];
        let (add, del) = plan(&desired, &current);
        assert_eq!(add, [route("198.19.3.0/24", "198.18.0.23")]);
        assert_eq!(del, [Subnet::parse("198.19.4.0/24").unwrap()]);
        assert_eq!(plan(&desired, &desired), (vec![], vec![]));
    }

    #[test]
    fn kernel_routes_are_read_back() {
        let out = "198.19.2.0/24 via 198.18.0.12 dev eth0 \n198.19.3.0/24 via 198.18.0.13 dev eth0 onlink\nnonsense\n";
        assert_eq!(
            parse_routes(out),
            [
                route("198.19.2.0/24", "198.18.0.12"),
                route("198.19.3.0/24", "198.18.0.13")
            ]
        );
    }
}
