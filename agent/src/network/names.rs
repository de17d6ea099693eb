//! The name files a container starts with: `/etc/hosts` (loopback, its own name and
//! address, and `--add-host` lines) and `/etc/resolv.conf` (the `--dns` servers; none by
//! default yet: the cluster's resolver is a later step of issue 18).

use std::net::Ipv4Addr;

/// `/etc/hosts` and `/etc/resolv.conf` of a container at `ip` named `hostname`, with
/// `extra_hosts` (`NAME:IP`, checked by the CLI; one without ':' is skipped) and `dns`
/// servers.
pub fn files(
    ip: Ipv4Addr,
    hostname: &str,
    extra_hosts: &[String],
    dns: &[String],
) -> (String, String) {
    let mut hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{hostname}\n"
    );
    for h in extra_hosts {
        if let Some((name, addr)) = h.split_once(':') {
            hosts.push_str(&format!("{addr}\t{name}\n"));
        }
    }
    let resolv = dns.iter().map(|d| format!("nameserver {d}\n")).collect();
    (hosts, resolv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_hosts_follow_the_containers_own_line_and_dns_makes_resolv_conf() {
        let (hosts, resolv) = files(
            Ipv4Addr::new(198, 19, 1, 2),
            "web1",
            &["db.example:10.1.2.3".into(), "v6:fd00::1".into()],
            &["198.18.0.250".into()],
        );
        assert!(
            hosts.ends_with("198.19.1.2\tweb1\n10.1.2.3\tdb.example\nfd00::1\tv6\n"),
            "{hosts}"
        );
        assert_eq!(resolv, "nameserver 198.18.0.250\n");
        assert_eq!(files(Ipv4Addr::LOCALHOST, "a", &[], &[]).1, "");
    }
}
