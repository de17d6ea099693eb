//! Cross-host container traffic without NAT: this host routes every other node's container
//! subnet to that node, as read from the node records in etcd, and exempts those subnets
//! from the egress NAT, so a task sees its peer's real container address. Two modes, as
//! flannel has ([`Mode`]): *host-gw* routes a peer's subnet via the peer's advertised
//! address (the nodes share a link); *vxlan* routes it over a VXLAN device ([`VXLAN_DEV`])
//! whose forwarding entries send the encapsulated frames to the peer's advertised address
//! (nodes on different subnets, e.g. across EC2 availability zones).
//!
//! Vocabulary: a *peer* is another node with a container subnet; a *peer route* is the
//! route to its subnet, tagged with protocol [`ROUTE_PROTO`] so the agent can tell its own
//! routes apart and remove the ones whose node is gone. A *VTEP* is a node's end of the
//! VXLAN: its device has the MAC [`vtep_mac`] and the address [`vtep_ip`], both derived from
//! the node's subnet, so no extra field in the node record is needed. [`peers`] and [`plan`]
//! decide (pure); [`run`] watches `nodes/` and applies the plan with `ip`/`bridge` and
//! [`super::egress`].

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

/// The VXLAN device of vxlan mode.
pub const VXLAN_DEV: &str = "rctl-vx";
/// Its VXLAN network identifier and UDP port (IANA's 4789).
const VXLAN_VNI: &str = "1";
const VXLAN_PORT: &str = "4789";
/// Room for the 50 bytes of VXLAN encapsulation inside a 1500-byte link.
const VXLAN_MTU: &str = "1450";

/// How this node reaches other nodes' container subnets (`rctl-agent --net-mode`); every
/// agent of a cluster runs with the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Route via the peer's advertised address: the nodes share a link.
    #[default]
    HostGw,
    /// Encapsulate in VXLAN (UDP 4789) to the peer's advertised address: any IP path.
    Vxlan,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "host-gw" => Ok(Mode::HostGw),
            "vxlan" => Ok(Mode::Vxlan),
            _ => Err(format!(
                "unknown network mode {s:?} (want host-gw or vxlan)"
            )),
        }
    }

    /// The name in flags, the node record and `rctl nodes -o json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::HostGw => "host-gw",
            Mode::Vxlan => "vxlan",
        }
    }
}

/// The VXLAN device's MAC of the node with container subnet `s`: locally administered
/// (`02:52`, R for rctl) followed by the subnet's network address.
pub fn vtep_mac(s: &Subnet) -> String {
    let [a, b, c, d] = s.network.octets();
    format!("02:52:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// The VXLAN device's address of the node with container subnet `s`: the subnet's network
/// address, which no container gets (as flannel does).
pub fn vtep_ip(s: &Subnet) -> Ipv4Addr {
    s.network
}

/// Another node's container subnet and where to send its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRoute {
    pub subnet: Subnet,
    /// The next hop: the node's advertised address (host-gw) or its VTEP address (vxlan).
    pub via: Ipv4Addr,
    /// Over [`VXLAN_DEV`].
    pub vxlan: bool,
    /// The node's advertised address (where VXLAN frames go).
    pub node_ip: Ipv4Addr,
}

impl PeerRoute {
    /// Whether the kernel route `k` is this route (the node address is not in a route).
    fn is(&self, k: &PeerRoute) -> bool {
        (self.subnet, self.via, self.vxlan) == (k.subnet, k.via, k.vxlan)
    }
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
pub fn peers(me: &str, own: &Subnet, mode: Mode, nodes: &[pb::Node]) -> Vec<PeerRoute> {
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
        out.push(PeerRoute {
            subnet,
            via: match mode {
                Mode::HostGw => via,
                Mode::Vxlan => vtep_ip(&subnet),
            },
            vxlan: mode == Mode::Vxlan,
            node_ip: via,
        });
    }
    out.sort();
    out
}

/// What to change so the peer routes in the kernel (`current`) become `desired`: routes to
/// add or replace, and subnets whose route to delete.
pub fn plan(desired: &[PeerRoute], current: &[PeerRoute]) -> (Vec<PeerRoute>, Vec<Subnet>) {
    let add = desired
        .iter()
        .filter(|d| !current.iter().any(|c| d.is(c)))
        .copied()
        .collect();
    let del = current
        .iter()
        .filter(|c| !desired.iter().any(|d| d.subnet == c.subnet))
        .map(|c| c.subnet)
        .collect();
    (add, del)
}

/// Parses `ip -4 route show proto 97` output (`198.19.2.0/24 via 198.18.0.12 dev eth0`);
/// the node address is unknown there (set to `via`).
pub fn parse_routes(out: &str) -> Vec<PeerRoute> {
    out.lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let subnet = Subnet::parse(words.first()?).ok()?;
            let after = |k: &str| words.iter().skip_while(|w| **w != k).nth(1).copied();
            let via: Ipv4Addr = after("via")?.parse().ok()?;
            Some(PeerRoute {
                subnet,
                via,
                vxlan: after("dev") == Some(VXLAN_DEV),
                node_ip: via,
            })
        })
        .collect()
}

/// Makes the VXLAN device exist (vxlan mode) or not (host-gw).
async fn ensure_vxlan_dev(net: &Network, mode: Mode) -> Result<(), NetworkError> {
    let exists = cmd("ip", &["link", "show", VXLAN_DEV]).await.is_ok();
    match mode {
        Mode::HostGw if exists => {
            cmd("ip", &["link", "del", VXLAN_DEV]).await?;
        }
        Mode::HostGw => {}
        Mode::Vxlan => {
            if !exists {
                let local = net.advertise_ip.to_string();
                cmd(
                    "ip",
                    &[
                        "link",
                        "add",
                        VXLAN_DEV,
                        "type",
                        "vxlan",
                        "id",
                        VXLAN_VNI,
                        "local",
                        &local,
                        "dstport",
                        VXLAN_PORT,
                        "nolearning",
                    ],
                )
                .await?;
            }
            let mac = vtep_mac(&net.subnet);
            cmd(
                "ip",
                &[
                    "link", "set", VXLAN_DEV, "address", &mac, "mtu", VXLAN_MTU, "up",
                ],
            )
            .await?;
            let addr = format!("{}/32", vtep_ip(&net.subnet));
            cmd("ip", &["addr", "replace", &addr, "dev", VXLAN_DEV]).await?;
        }
    }
    Ok(())
}

/// Points the VXLAN device at peer `p`: its VTEP's neighbour entry and forwarding entry.
async fn vxlan_peer(p: &PeerRoute) -> Result<(), NetworkError> {
    let (mac, ip, dst) = (
        vtep_mac(&p.subnet),
        vtep_ip(&p.subnet).to_string(),
        p.node_ip.to_string(),
    );
    cmd(
        "ip",
        &[
            "neigh",
            "replace",
            &ip,
            "lladdr",
            &mac,
            "dev",
            VXLAN_DEV,
            "nud",
            "permanent",
        ],
    )
    .await?;
    cmd(
        "bridge",
        &[
            "fdb",
            "replace",
            &mac,
            "dev",
            VXLAN_DEV,
            "dst",
            &dst,
            "self",
            "permanent",
        ],
    )
    .await?;
    Ok(())
}

/// Forgets the VXLAN entries of the peer with subnet `s` (gone already without the device).
async fn vxlan_forget(s: &Subnet) {
    let (mac, ip) = (vtep_mac(s), vtep_ip(s).to_string());
    let _ = cmd("ip", &["neigh", "del", &ip, "dev", VXLAN_DEV]).await;
    let _ = cmd("bridge", &["fdb", "del", &mac, "dev", VXLAN_DEV, "self"]).await;
}

/// Makes the kernel's peer routes, the VXLAN device and its entries (vxlan mode) and the
/// egress exemptions match `desired`.
async fn apply(net: &Network, mode: Mode, desired: &[PeerRoute]) -> Result<(), NetworkError> {
    let current = parse_routes(&cmd("ip", &["-4", "route", "show", "proto", ROUTE_PROTO]).await?);
    let (add, del) = plan(desired, &current);
    for s in &del {
        vxlan_forget(s).await;
        let s = s.to_string();
        cmd("ip", &["-4", "route", "del", &s, "proto", ROUTE_PROTO]).await?;
    }
    // After the deletes: leaving vxlan mode deletes the device and with it its routes.
    ensure_vxlan_dev(net, mode).await?;
    // Every time, not only for new routes: a peer's address may change under the same subnet.
    for p in desired.iter().filter(|p| p.vxlan) {
        vxlan_peer(p).await?;
    }
    // Exempt the new subnets from NAT before traffic to them is routed, and keep the
    // removed ones exempt until their routes are gone.
    let subnets: Vec<Subnet> = desired.iter().map(|p| p.subnet).collect();
    net.set_egress(&subnets).await?;
    for r in &add {
        let (s, via) = (r.subnet.to_string(), r.via.to_string());
        let mut args = vec!["-4", "route", "replace", &s, "via", &via];
        if r.vxlan {
            // The VTEP address is no neighbour on any link: the device is the way there.
            args.extend(["dev", VXLAN_DEV, "onlink"]);
        }
        args.extend(["proto", ROUTE_PROTO]);
        cmd("ip", &args).await?;
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
pub async fn run(
    mut client: Client,
    me: String,
    net: Network,
    mode: Mode,
    shutdown: CancellationToken,
) {
    const RETRY: Duration = Duration::from_secs(1);
    let mut applied: Option<Vec<PeerRoute>> = None;
    loop {
        let rev = match list(&mut client).await {
            Ok((nodes, rev)) => {
                let want = peers(&me, &net.subnet, mode, &nodes);
                if applied.as_ref() != Some(&want) {
                    match apply(&net, mode, &want).await {
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
            vxlan: false,
            node_ip: via.parse().unwrap(),
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
            peers("h1", &own, Mode::HostGw, &nodes),
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
            peers("h1", &own, Mode::HostGw, &nodes),
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
    fn in_vxlan_mode_a_peer_is_reached_through_its_vtep() {
        let own = Subnet::parse("198.19.1.0/24").unwrap();
        let nodes = [node("h2", "10.0.2.12", "198.19.2.0/24")];
        let [p] = peers("h1", &own, Mode::Vxlan, &nodes)[..] else {
            panic!()
        };
        assert_eq!(p.via, Ipv4Addr::new(198, 19, 2, 0));
        assert_eq!(p.node_ip, Ipv4Addr::new(10, 0, 2, 12));
        assert!(p.vxlan);
        assert_eq!(vtep_mac(&p.subnet), "02:52:c6:13:02:00");
        // Switching mode replaces the route; the kernel's vxlan route reads back as itself.
        let hostgw = peers("h1", &own, Mode::HostGw, &nodes);
        assert_eq!(plan(&[p], &hostgw), (vec![p], vec![]));
        let back = parse_routes("198.19.2.0/24 via 198.19.2.0 dev rctl-vx onlink \n");
        assert_eq!(plan(&[p], &back), (vec![], vec![]));
        assert_eq!(Mode::parse("vxlan"), Ok(Mode::Vxlan));
        assert!(Mode::parse("overlay").is_err());
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
