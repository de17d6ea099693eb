//! Container networking on one host: a bridge with the host's container subnet, one veth per
//! container, and published ports as iptables DNAT rules from the host's advertised IP.
//!
//! It shells out to `ip`, `nsenter` and `iptables` for now; everything that does so is in
//! this module, so swapping in netlink later touches nothing else.

pub mod ipam;

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
        let br = self.bridge.as_str();
        if run("ip", &["link", "show", br]).await.is_err() {
            run("ip", &["link", "add", br, "type", "bridge"]).await?;
        }
        let addr = format!("{}/{}", self.subnet.gateway(), self.subnet.prefix_len);
        let shown = run("ip", &["-4", "addr", "show", "dev", br]).await?;
        if !shown.contains(&format!("inet {addr}")) {
            run("ip", &["addr", "add", &addr, "dev", br]).await?;
        }
        run("ip", &["link", "set", br, "up"]).await?;
        tokio::fs::write("/proc/sys/net/ipv4/ip_forward", b"1")
            .await
            .map_err(NetworkError::Forward)?;
        Ok(())
    }

    /// Gives the network namespace of process `pid` an `eth0` on the bridge with `ip`.
    pub async fn attach(&self, id: &str, pid: u32, ip: Ipv4Addr) -> Result<(), NetworkError> {
        let host = host_veth(id);
        let peer = format!("vp{}", short(id));
        // A leftover from a crashed attempt would make `link add` fail.
        let _ = run("ip", &["link", "del", &host]).await;
        run(
            "ip",
            &["link", "add", &host, "type", "veth", "peer", "name", &peer],
        )
        .await?;
        run("ip", &["link", "set", &host, "master", &self.bridge, "up"]).await?;
        let pid_s = pid.to_string();
        run("ip", &["link", "set", &peer, "netns", &pid_s]).await?;
        let netns = format!("--net=/proc/{pid}/ns/net");
        let addr = format!("{ip}/{}", self.subnet.prefix_len);
        let gw = self.subnet.gateway().to_string();
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "set", &peer, "name", "eth0"],
            vec!["addr", "add", &addr, "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["route", "add", "default", "via", &gw],
        ] {
            let mut full = vec![netns.as_str(), "ip"];
            full.extend(args);
            run("nsenter", &full).await?;
        }
        // The address may have belonged to a container removed moments ago: a neighbour
        // entry still pointing at that container's MAC would black-hole traffic to the new
        // one until it expires (tens of seconds).
        run("ip", &["neigh", "flush", "to", &ip.to_string()]).await?;
        Ok(())
    }

    /// Removes the container's veth (gone already if its namespace died).
    pub async fn detach(&self, id: &str) {
        let _ = run("ip", &["link", "del", &host_veth(id)]).await;
    }

    fn port_rule(
        &self,
        id: &str,
        chain: &'static str,
        host_port: u16,
        ip: Ipv4Addr,
        port: u16,
    ) -> Vec<String> {
        [
            chain,
            "-d",
            &self.advertise_ip.to_string(),
            "-p",
            "tcp",
            "--dport",
            &host_port.to_string(),
            "-m",
            "comment",
            "--comment",
            &format!("rctl:{id}"),
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{ip}:{port}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    async fn iptables(&self, op: &str, rule: &[String]) -> Result<String, NetworkError> {
        let mut args = vec!["-w", "-t", "nat", op];
        args.extend(rule.iter().map(String::as_str));
        run("iptables", &args).await
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
        for chain in ["PREROUTING", "OUTPUT"] {
            let rule = self.port_rule(id, chain, host_port, ip, port);
            if self.iptables("-C", &rule).await.is_err() {
                self.iptables("-A", &rule).await?;
            }
        }
        Ok(())
    }

    /// The nat rules of one `-p` binding of a one-off container: DNAT on PREROUTING (from
    /// outside) and OUTPUT (from this host), to any local address of the host (or the one
    /// the binding names), and a MASQUERADE so a connection from 127.0.0.1 gets an address
    /// the container can answer.
    fn binding_rules(&self, id: &str, b: &PortRule) -> Vec<Vec<String>> {
        let (hp, cp) = (b.host_port.to_string(), b.container_port.to_string());
        let to = format!("{}:{}", b.container_ip, b.container_port);
        let comment = format!("rctl:{id}");
        let dest: Vec<String> = match b.host_ip {
            Some(ip) => vec!["-d".into(), ip.to_string()],
            None => ["-m", "addrtype", "--dst-type", "LOCAL"]
                .map(String::from)
                .to_vec(),
        };
        let mut rules = Vec::new();
        for chain in ["PREROUTING", "OUTPUT"] {
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
            rules.push(r);
        }
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
                &cp,
                "-m",
                "comment",
                "--comment",
                &comment,
                "-j",
                "MASQUERADE",
            ]
            .map(String::from)
            .to_vec(),
        );
        rules
    }

    /// Publishes one `-p` binding (see [`Network::binding_rules`]).
    pub async fn publish_binding(&self, id: &str, b: &PortRule) -> Result<(), NetworkError> {
        // DNAT to a container from 127.0.0.1 needs loopback-sourced packets to be routable.
        let _ = tokio::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", b"1").await;
        for rule in self.binding_rules(id, b) {
            if self.iptables("-C", &rule).await.is_err() {
                self.iptables("-A", &rule).await?;
            }
        }
        Ok(())
    }

    /// Deletes the rules [`Network::publish_binding`] added.
    pub async fn unpublish_binding(&self, id: &str, b: &PortRule) {
        for rule in self.binding_rules(id, b) {
            for _ in 0..8 {
                if self.iptables("-D", &rule).await.is_err() {
                    break;
                }
            }
        }
    }

    /// Deletes exactly the rules [`Network::publish`] added (all copies, if repeated).
    pub async fn unpublish(&self, id: &str, host_port: u16, ip: Ipv4Addr, port: u16) {
        for chain in ["PREROUTING", "OUTPUT"] {
            let rule = self.port_rule(id, chain, host_port, ip, port);
            for _ in 0..8 {
                if self.iptables("-D", &rule).await.is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_dnats_both_chains_and_masquerades_loopback() {
        let net = Network {
            bridge: "br".into(),
            subnet: Subnet::parse("198.19.1.0/24").unwrap(),
            advertise_ip: Ipv4Addr::new(198, 18, 0, 11),
        };
        let b = PortRule {
            host_ip: None,
            host_port: 8080,
            container_ip: Ipv4Addr::new(198, 19, 1, 2),
            container_port: 80,
            protocol: "udp".into(),
        };
        let rules = net.binding_rules("c1", &b);
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
