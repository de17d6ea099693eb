//! Egress: traffic from this host's containers to addresses outside the cluster leaves
//! with the host's own address (source NAT on the way out, as Docker's default bridge
//! does), so the answer finds its way back without anyone routing container subnets.
//! Traffic to another container (this host's bridge, or another node's container subnet)
//! keeps its real source address.
//!
//! The rules live in their own nat chain, [`CHAIN`], which POSTROUTING jumps to for packets
//! from the container subnet. The chain is rewritten whole, in one `iptables-restore
//! --noflush` transaction, whenever the set of peer subnets changes: no moment where a
//! half-written chain NATs traffic to a peer.

use super::{run, NetworkError, Subnet};

/// The nat chain holding the egress rules.
pub const CHAIN: &str = "RCTL-EGRESS";

/// The POSTROUTING rule that sends container-sourced packets through [`CHAIN`].
pub fn jump_rule(subnet: &Subnet) -> Vec<String> {
    [
        "POSTROUTING",
        "-s",
        &subnet.to_string(),
        "-m",
        "comment",
        "--comment",
        "rctl-egress",
        "-j",
        CHAIN,
    ]
    .map(String::from)
    .to_vec()
}

/// The `iptables-restore --noflush` input that replaces [`CHAIN`] (and only it): no NAT
/// towards this host's bridge or any peer's container subnet, MASQUERADE for the rest.
pub fn chain_restore(bridge: &str, peers: &[Subnet]) -> String {
    let mut s = format!("*nat\n:{CHAIN} - [0:0]\n-A {CHAIN} -o {bridge} -j RETURN\n");
    for p in peers {
        s.push_str(&format!("-A {CHAIN} -d {p} -j RETURN\n"));
    }
    s.push_str(&format!("-A {CHAIN} -j MASQUERADE\nCOMMIT\n"));
    s
}

/// Programs the egress NAT of the container subnet `subnet` on `bridge`, exempting the
/// container subnets in `peers`. Idempotent.
pub async fn apply(bridge: &str, subnet: &Subnet, peers: &[Subnet]) -> Result<(), NetworkError> {
    restore(&chain_restore(bridge, peers)).await?;
    let jump = jump_rule(subnet);
    let mut check = vec!["-w", "-t", "nat", "-C"];
    check.extend(jump.iter().map(String::as_str));
    if run("iptables", &check).await.is_err() {
        let mut add = vec!["-w", "-t", "nat", "-A"];
        add.extend(jump.iter().map(String::as_str));
        run("iptables", &add).await?;
    }
    Ok(())
}

async fn restore(input: &str) -> Result<(), NetworkError> {
    use tokio::io::AsyncWriteExt;
    let cmd = "iptables-restore --noflush -w";
    let spawn_err = |source| NetworkError::Spawn {
        cmd: cmd.into(),
        source,
    };
    let mut child = tokio::process::Command::new("iptables-restore")
        .args(["--noflush", "-w"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await.map_err(spawn_err)?;
    }
    let out = child.wait_with_output().await.map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NetworkError::Command {
            cmd: cmd.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_exempts_the_bridge_and_every_peer_then_masquerades() {
        let peers = [
            Subnet::parse("198.19.2.0/24").unwrap(),
            Subnet::parse("198.19.3.0/24").unwrap(),
        ];
        assert_eq!(
            chain_restore("rctl0", &peers),
            "*nat\n:RCTL-EGRESS - [0:0]\n\
             -A RCTL-EGRESS -o rctl0 -j RETURN\n\
             -A RCTL-EGRESS -d 198.19.2.0/24 -j RETURN\n\
             -A RCTL-EGRESS -d 198.19.3.0/24 -j RETURN\n\
             -A RCTL-EGRESS -j MASQUERADE\nCOMMIT\n"
        );
        assert!(chain_restore("rctl0", &[])
            .contains("-o rctl0 -j RETURN\n-A RCTL-EGRESS -j MASQUERADE"));
    }

    #[test]
    fn only_container_sourced_packets_enter_the_chain() {
        let s = Subnet::parse("198.19.1.0/24").unwrap();
        assert_eq!(
            jump_rule(&s).join(" "),
            "POSTROUTING -s 198.19.1.0/24 -m comment --comment rctl-egress -j RCTL-EGRESS"
        );
    }
}
