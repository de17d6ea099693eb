//! Container networking on one host: a bridge with the host's container subnet, one veth per
//! container, published ports as iptables DNAT rules from the host's advertised IP, and
//! source NAT for traffic leaving the cluster ([`egress`]), and routes to every other
//! node's container subnet ([`peers`]).
//!
//! Links, addresses and routes are set through rtnetlink ([`netlink`]): no process per
//! step on a container's start path. Port rules still shell out to `iptables` (only `-p`
//! and service ports use them).

pub mod egress;
pub mod host_ip;
pub mod ipam;
pub mod names;
pub mod netlink;
pub mod peers;

use std::net::Ipv4Addr;

pub use ipam::Subnet;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("run {cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd}: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("enable ip_forward: {0}")]
    Forward(#[source] std::io::Error),
    #[error("{step}: {source}")]
    Netlink {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no bridge {0} on this host (the agent creates it at start)")]
    NoBridge(String),
}

/// Maps a netlink failure to the step that failed.
fn nl(step: &'static str) -> impl FnOnce(std::io::Error) -> NetworkError {
    move |source| NetworkError::Netlink { step, source }
}

/// Whether `r` failed with `errno` (a tolerated outcome, such as "already there").
fn is_errno<T>(r: &std::io::Result<T>, errno: i32) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(errno))
}

/// One published port of a one-off container, as the agent applies it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortRule {
    /// None: every local address of the host (the advertised IP and 127.0.0.1 included).
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
    /// "tcp" or "udp".
    pub protocol: String,
}

/// The host side of container networking.
#[derive(Debug, Clone)]
pub struct Network {
    pub bridge: String,
    pub subnet: Subnet,
    pub advertise_ip: Ipv4Addr,
}

async fn run(prog: &str, args: &[&str]) -> Result<String, NetworkError> {
    let cmd = format!("{prog} {}", args.join(" "));
    let out = tokio::process::Command::new(prog)
        .args(args)
        .output()
        .await
        .map_err(|source| NetworkError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetworkError::Command {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Interface-name-safe short form of a container id (interface names are at most 15 bytes).
/// A hash rather than the id's first characters: ids of one service share a prefix.
/// The IPv4 addresses on this network namespace's interfaces (empty if they cannot be
/// read: then only the advertised address and loopback count as the node's own).
pub fn interface_addresses() -> Vec<Ipv4Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .collect()
}

fn short(id: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(id.as_bytes()))[..8].to_string()
}

/// The host-side veth name of container `id`.
pub fn host_veth(id: &str) -> String {
    format!("veth{}", short(id))
}

impl Network {
    /// Creates the bridge with the gateway address if missing and turns on forwarding.
    pub async fn ensure_bridge(&self) -> Result<(), NetworkError> {
        let (br, gw, len) = (
            self.bridge.clone(),
            self.subnet.gateway(),
            self.subnet.prefix_len,
        );
        netlink::on_thread(move || {
            let mut h = netlink::Rtnl::open()?;
            let index = match h.link_index(&br)? {
                Some(i) => i,
                None => {
                    h.request(netlink::bridge(&br), netlink::CREATE)?;
                    h.link_index(&br)?.ok_or_else(|| {
                        std::io::Error::other(format!("bridge {br} vanished after creation"))
                    })?
                }
            };
            let added = h.request(netlink::ipv4_addr(index, gw, len), netlink::CREATE);
            if !is_errno(&added, libc::EEXIST) {
                added?;
            }
            h.request(netlink::link_up(index), 0)?;
            Ok(())
        })
        .await
        .map_err(nl("set up the container bridge"))?;
        tokio::fs::write("/proc/sys/net/ipv4/ip_forward", b"1")
            .await
            .map_err(NetworkError::Forward)?;
        Ok(())
    }

    /// Source-NATs container traffic that leaves the cluster, exempting this host's bridge
    /// and the container subnets in `peers` (see [`egress`]).
    pub async fn set_egress(&self, peers: &[Subnet]) -> Result<(), NetworkError> {
        egress::apply(&self.bridge, &self.subnet, peers).await
    }

    /// Gives the network namespace of process `pid` an `eth0` on the bridge with `ip`: one
    /// veth request on the host (the peer is born inside the namespace as `eth0`), then
    /// addresses, links and the route through a socket opened inside the namespace.
    pub async fn attach(&self, id: &str, pid: u32, ip: Ipv4Addr) -> Result<(), NetworkError> {
        let host = host_veth(id);
        let bridge = self.bridge.clone();
        let (len, gw) = (self.subnet.prefix_len, self.subnet.gateway());
        let ns = netlink::open_netns(pid).map_err(nl("open the container's network namespace"))?;
        // The host socket is opened before the thread enters the container's namespace.
        let mut h = netlink::Rtnl::open().map_err(nl("open a netlink socket"))?;
        let mut host_side = move |ns: &std::fs::File| -> Result<(), NetworkError> {
            // A leftover from a crashed attempt would make the create fail; none is the
            // usual case.
            let _ = h.request(netlink::del_link(&host), 0);
            let master = h
                .link_index(&bridge)
                .map_err(nl("look up the bridge"))?
                .ok_or_else(|| NetworkError::NoBridge(bridge.clone()))?;
            h.request(
                netlink::veth_pair(&host, master, "eth0", netlink::raw(ns)),
                netlink::CREATE,
            )
            .map_err(nl("create the container's veth pair"))?;
            // The address may have belonged to a container removed moments ago: a
            // neighbour entry still pointing at that container's MAC would black-hole
            // traffic to the new one until it expires (tens of seconds).
            let flushed = h.request(netlink::del_neighbour(master, ip), 0);
            if !is_errno(&flushed, libc::ENOENT) {
                flushed.map_err(nl("flush the address's old neighbour entry"))?;
            }
            Ok(())
        };
        let r = netlink::on_thread(move || {
            Ok(host_side(&ns).and_then(|()| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| nl("enter the container's network namespace")(e.into()))?;
                container_side(ip, len, gw)
            }))
        })
        .await
        .map_err(nl("run the network setup thread"))?;
        r
    }

    /// Brings up `lo` in the network namespace of process `pid` and adds nothing else
    /// (a container with `--network none`).
    pub async fn loopback_only(&self, pid: u32) -> Result<(), NetworkError> {
        let ns = netlink::open_netns(pid).map_err(nl("open the container's network namespace"))?;
        netlink::on_thread(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            netlink::Rtnl::open()?.request(netlink::link_up(netlink::LOOPBACK_IFINDEX), 0)?;
            Ok(())
        })
        .await
        .map_err(nl("bring the container's lo up"))
    }

    /// Removes the container's veth (gone already if its namespace died).
    pub async fn detach(&self, id: &str) {
        let host = host_veth(id);
        let _ = tokio::task::spawn_blocking(move || {
            netlink::Rtnl::open()?.request(netlink::del_link(&host), 0)
        })
        .await;
    }

    async fn iptables(&self, op: &str, rule: &[String]) -> Result<String, NetworkError> {
        let mut args = vec!["-w", "-t", "nat", op];
        args.extend(rule.iter().map(String::as_str));
        run("iptables", &args).await
    }

    /// A service task's port: the advertised address, tcp (what rctl-lb connects to).
    fn service_port(&self, host_port: u16, ip: Ipv4Addr, port: u16) -> PortRule {
        PortRule {
            host_ip: Some(self.advertise_ip),
            host_port,
            container_ip: ip,
            container_port: port,
            protocol: "tcp".into(),
        }
    }

    /// DNATs `advertise_ip:host_port` to `ip:port`, for traffic arriving from outside
    /// (PREROUTING) and from this host itself (OUTPUT).
    pub async fn publish(
        &self,
        id: &str,
        host_port: u16,
        ip: Ipv4Addr,
        port: u16,
    ) -> Result<(), NetworkError> {
        self.add_rules(&dnat_rules(id, &self.service_port(host_port, ip, port)))
            .await
    }

    /// Deletes exactly the rules [`Network::publish`] added (all copies, if repeated).
    pub async fn unpublish(&self, id: &str, host_port: u16, ip: Ipv4Addr, port: u16) {
        self.delete_rules(&dnat_rules(id, &self.service_port(host_port, ip, port)))
            .await
    }

    /// Publishes one `-p` binding of a one-off container: its DNAT rules (see
    /// [`dnat_rules`]) and a MASQUERADE so a connection from 127.0.0.1 gets an address the
    /// container can answer.
    pub async fn publish_binding(&self, id: &str, b: &PortRule) -> Result<(), NetworkError> {
        // DNAT to a container from 127.0.0.1 needs loopback-sourced packets to be routable.
        let _ = tokio::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", b"1").await;
        self.add_rules(&binding_rules(id, b)).await
    }

    /// Deletes the rules [`Network::publish_binding`] added.
    pub async fn unpublish_binding(&self, id: &str, b: &PortRule) {
        self.delete_rules(&binding_rules(id, b)).await
    }

    /// Appends each rule not there already.
    async fn add_rules(&self, rules: &[Vec<String>]) -> Result<(), NetworkError> {
        for rule in rules {
            if self.iptables("-C", rule).await.is_err() {
                self.iptables("-A", rule).await?;
            }
        }
        Ok(())
    }

    /// Deletes each rule, every copy of it (a crashed agent may have added one twice).
    async fn delete_rules(&self, rules: &[Vec<String>]) {
        for rule in rules {
            for _ in 0..8 {
                if self.iptables("-D", rule).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Inside the container's network namespace (the calling thread entered it): `lo` and
/// `eth0` up, `ip/len` on `eth0`, the default route via `gw`.
fn container_side(ip: Ipv4Addr, len: u8, gw: Ipv4Addr) -> Result<(), NetworkError> {
    let mut c = netlink::Rtnl::open().map_err(nl("open a netlink socket in the container"))?;
    c.request(netlink::link_up(netlink::LOOPBACK_IFINDEX), 0)
        .map_err(nl("bring the container's lo up"))?;
    let eth0 = c
        .link_index("eth0")
        .map_err(nl("look up the container's eth0"))?
        .ok_or_else(|| nl("look up the container's eth0")(std::io::ErrorKind::NotFound.into()))?;
    c.request(netlink::ipv4_addr(eth0, ip, len), netlink::CREATE)
        .map_err(nl("add the container's address"))?;
    c.request(netlink::link_up(eth0), 0)
        .map_err(nl("bring the container's eth0 up"))?;
    c.request(netlink::default_route(gw), netlink::CREATE)
        .map_err(nl("add the container's default route"))?;
    Ok(())
}

/// The DNAT rules of one port: PREROUTING (from outside) and OUTPUT (from this host), to
/// the address the binding names or, without one, any local address of the host (the
/// advertised IP and 127.0.0.1 included).
fn dnat_rules(id: &str, b: &PortRule) -> Vec<Vec<String>> {
    let dest: Vec<String> = match b.host_ip {
        Some(ip) => vec!["-d".into(), ip.to_string()],
        None => ["-m", "addrtype", "--dst-type", "LOCAL"]
            .map(String::from)
            .to_vec(),
    };
    let (hp, comment) = (b.host_port.to_string(), format!("rctl:{id}"));
    let to = format!("{}:{}", b.container_ip, b.container_port);
    ["PREROUTING", "OUTPUT"]
        .into_iter()
        .map(|chain| {
            let mut r = vec![chain.to_string()];
            r.extend(dest.iter().cloned());
            r.extend(
                [
                    "-p",
                    &b.protocol,
                    "--dport",
                    &hp,
                    "-m",
                    "comment",
                    "--comment",
                    &comment,
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &to,
                ]
                .map(String::from),
            );
            r
        })
        .collect()
}

/// The nat rules of one `-p` binding: its DNAT rules and the MASQUERADE of connections
/// from 127.0.0.1 (see [`Network::publish_binding`]).
fn binding_rules(id: &str, b: &PortRule) -> Vec<Vec<String>> {
    let mut rules = dnat_rules(id, b);
    rules.push(
        [
            "POSTROUTING",
            "-s",
            "127.0.0.1",
            "-d",
            &b.container_ip.to_string(),
            "-p",
            &b.protocol,
            "--dport",
            &b.container_port.to_string(),
            "-m",
            "comment",
            "--comment",
            &format!("rctl:{id}"),
            "-j",
            "MASQUERADE",
        ]
        .map(String::from)
        .to_vec(),
    );
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_port_is_the_rule_earlier_agents_wrote() {
        // Rules are deleted by matching them exactly: an upgraded agent must build the same.
        let net = Network {
            bridge: "br".into(),
            subnet: Subnet::parse("198.19.1.0/24").unwrap(),
            advertise_ip: Ipv4Addr::new(198, 18, 0, 11),
        };
        let rules = dnat_rules(
            "t1",
            &net.service_port(31000, Ipv4Addr::new(198, 19, 1, 2), 80),
        );
        assert_eq!(
            rules.iter().map(|r| r.join(" ")).collect::<Vec<_>>(),
            [
                "PREROUTING -d 198.18.0.11 -p tcp --dport 31000 -m comment --comment rctl:t1 -j DNAT --to-destination 198.19.1.2:80",
                "OUTPUT -d 198.18.0.11 -p tcp --dport 31000 -m comment --comment rctl:t1 -j DNAT --to-destination 198.19.1.2:80",
            ]
        );
    }

    #[test]
    fn a_binding_dnats_both_chains_and_masquerades_loopback() {
        let b = PortRule {
            host_ip: None,
            host_port: 8080,
            container_ip: Ipv4Addr::new(198, 19, 1, 2),
            container_port: 80,
            protocol: "udp".into(),
        };
        let rules = binding_rules("c1", &b);
        let chains: Vec<&str> = rules.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(chains, ["PREROUTING", "OUTPUT", "POSTROUTING"]);
        assert!(rules[0]
            .join(" ")
            .contains("--dst-type LOCAL -p udp --dport 8080"));
        assert!(rules[1]
            .join(" ")
            .ends_with("DNAT --to-destination 198.19.1.2:80"));
        assert!(rules[2]
            .join(" ")
            .contains("-s 127.0.0.1 -d 198.19.1.2 -p udp --dport 80"));
    }

    #[test]
    fn veth_names_fit_in_ifnamsiz() {
        assert_eq!(host_veth("web-1").len(), 12);
        assert_ne!(host_veth("web-1-aaaaaaaa"), host_veth("web-1-aaaaaaab"));
        assert!(host_veth(&"x".repeat(64)).len() <= 15);
    }
}
