//! Which host address a `-p IP:HOST:CONTAINER` binding may name: only one of the node's
//! own (or 0.0.0.0 / 127.0.0.1, as Docker allows). A DNAT rule for any other address would
//! capture this node's own connections to that address (the registry, etcd, a peer).

use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HostIpError {
    #[error("cannot publish on {ip:?}: not an IPv4 address")]
    NotIpv4 { ip: String },
    #[error(
        "cannot publish on {ip}: not an address of node {node} (use 0.0.0.0, 127.0.0.1 or one of: {})",
        .own.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(", ")
    )]
    NotOwn {
        ip: Ipv4Addr,
        node: String,
        /// The node's own addresses, loopback left out (it is named already).
        own: Vec<Ipv4Addr>,
    },
}

/// The address a binding's rules match on: None for every local address (`host_ip` empty
/// or 0.0.0.0), else `host_ip` if it is 127.0.0.1 or one of `own`, the node's addresses
/// (its advertised one and those on its interfaces).
pub fn check(host_ip: &str, own: &[Ipv4Addr], node: &str) -> Result<Option<Ipv4Addr>, HostIpError> {
    if host_ip.is_empty() {
        return Ok(None);
    }
    let ip: Ipv4Addr = host_ip.parse().map_err(|_| HostIpError::NotIpv4 {
        ip: host_ip.to_string(),
    })?;
    if ip.is_unspecified() {
        return Ok(None);
    }
    if ip == Ipv4Addr::LOCALHOST || own.contains(&ip) {
        return Ok(Some(ip));
    }
    let mut listed: Vec<Ipv4Addr> = Vec::new();
    for a in own {
        if !a.is_loopback() && !a.is_unspecified() && !listed.contains(a) {
            listed.push(*a);
        }
    }
    Err(HostIpError::NotOwn {
        ip,
        node: node.to_string(),
        own: listed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_nodes_own_addresses_may_be_bound() {
        let adv: Ipv4Addr = "198.18.0.11".parse().unwrap();
        let bridge: Ipv4Addr = "198.19.1.1".parse().unwrap();
        let own = [adv, Ipv4Addr::LOCALHOST, bridge, adv];
        let ip = |s: &str| Some(s.parse::<Ipv4Addr>().unwrap());
        for (host_ip, want) in [
            ("", Ok(None)),
            ("0.0.0.0", Ok(None)),
            ("127.0.0.1", Ok(ip("127.0.0.1"))),
            ("198.18.0.11", Ok(ip("198.18.0.11"))),
            ("198.19.1.1", Ok(ip("198.19.1.1"))),
            ("::1", Err("cannot publish on \"::1\": not an IPv4 address")),
            ("h1", Err("cannot publish on \"h1\": not an IPv4 address")),
            // The registry's address, a public one, a peer's, another loopback one and
            // broadcast: none is this node's.
            ("198.18.0.1", Err("cannot publish on 198.18.0.1: not an address of node h1 (use 0.0.0.0, 127.0.0.1 or one of: 198.18.0.11, 198.19.1.1)")),
            ("8.8.8.8", Err("cannot publish on 8.8.8.8: not an address of node h1 (use 0.0.0.0, 127.0.0.1 or one of: 198.18.0.11, 198.19.1.1)")),
            ("198.18.0.12", Err("cannot publish on 198.18.0.12: not an address of node h1 (use 0.0.0.0, 127.0.0.1 or one of: 198.18.0.11, 198.19.1.1)")),
            ("127.0.0.2", Err("cannot publish on 127.0.0.2: not an address of node h1 (use 0.0.0.0, 127.0.0.1 or one of: 198.18.0.11, 198.19.1.1)")),
            ("255.255.255.255", Err("cannot publish on 255.255.255.255: not an address of node h1 (use 0.0.0.0, 127.0.0.1 or one of: 198.18.0.11, 198.19.1.1)")),
        ] {
            let got = check(host_ip, &own, "h1").map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(str::to_string), "{host_ip}");
        }
    }
}
