//! End-to-end: container networking beyond one host (issue 18), on a real cluster.
//! Egress: a container reaches an address outside the cluster (an "outside" namespace on
//! the cluster's link that routes nothing back to container subnets: only source NAT on the
//! host's way out gets its answer home), the registry in the root namespace, and a port it
//! publishes still answers from outside.

use std::time::Duration;

use rctl_tests::cluster::Cluster;
use rctl_tests::outside::Outside;

const WAIT: Duration = Duration::from_secs(90);

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `GET path` from a one-off busybox container on `node` to `ip:port`, over `nc` (the
/// image's static busybox `wget` cannot resolve even a numeric host): the raw response.
fn get_from_container(
    c: &Cluster,
    node: &str,
    bb: &str,
    ip: &str,
    port: u16,
    path: &str,
) -> String {
    let script = format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} {port}");
    let out = c.rctl(&["run", "--rm", "--node", node, bb, "sh", "-c", &script]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "GET http://{ip}:{port}{path} from a container on {node}: {}",
        stderr(&out)
    );
    stdout(&out)
}

#[test]
fn a_container_reaches_outside_the_cluster_and_its_published_port_still_answers() {
    let c = Cluster::start(1);
    let outside = Outside::start(&c);
    let bb = format!("{}/rctl/busybox:latest", c.registry());
    let ts = format!("{}/rctl/testserver:v1", c.registry());

    // By address, outside the cluster: the answer comes back.
    let body = get_from_container(&c, "h1", &bb, &outside.ip.to_string(), 8080, "/");
    assert!(body.contains("version=outside "), "{body}");

    // The registry, in the cluster's root namespace (not a host either).
    let (reg_ip, reg_port) = c
        .registry()
        .split_once(':')
        .map(|(a, b)| (a.to_string(), b.parse().unwrap()))
        .unwrap();
    let body = get_from_container(&c, "h1", &bb, &reg_ip, reg_port, "/v2/");
    assert!(
        body.lines().next().is_some_and(|l| l.ends_with(" 200 OK")),
        "{body}"
    );

    // Publishing keeps working: the outside host reaches a published port of h1.
    c.rctl_ok(&[
        "run",
        "-d",
        "--name",
        "pub",
        "--node",
        "h1",
        "-p",
        "18080:8080",
        &ts,
    ]);
    let url = format!("http://198.18.{}.11:18080/", c.net);
    let body = c.eventually(
        WAIT,
        "the published port answering the outside host",
        || {
            let body = outside.run(&["curl", "-sS", "-m", "5", &url]);
            body.starts_with("version=v1 ").then_some(body)
        },
    );
    assert!(body.contains("host="), "{body}");
    drop(outside);
    c.down_leaving_nothing();
}

/// A busybox container serving `GET /cgi-bin/peer` on port 8080 with `peer=ADDRESS`, the
/// address the connection came from (busybox httpd's CGI `REMOTE_ADDR`).
const PEER_ECHO: &str = "mkdir -p /www/cgi-bin && \
printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho peer=$REMOTE_ADDR\\n' >/www/cgi-bin/peer && \
chmod +x /www/cgi-bin/peer && exec httpd -f -p 8080 -h /www";

/// The container's own address on eth0, as it sees it, once it runs.
fn container_ip(c: &Cluster, name: &str) -> String {
    c.eventually(WAIT, &format!("{name} running with an address"), || {
        let out = c.rctl(&["exec", name, "ip", "-4", "-o", "addr", "show", "eth0"]);
        let text = stdout(&out);
        text.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .map(str::to_string)
    })
}

/// The peer routes (`proto 97`) host `host` has.
fn peer_routes(c: &Cluster, host: &str) -> String {
    c.in_host(host, &["ip", "-4", "route", "show", "proto", "97"])
}

#[test]
fn host_gw_a_container_on_another_host_sees_the_callers_real_address() {
    cross_host("host-gw");
}

#[test]
fn vxlan_a_container_on_another_host_sees_the_callers_real_address() {
    cross_host("vxlan");
}

/// The same cross-host checks in either network mode.
fn cross_host(mode: &str) {
    let c = Cluster::start_net_mode(2, mode);
    // The mode shows in `rctl nodes -o json`.
    let nodes: serde_json::Value =
        serde_json::from_str(&c.rctl_ok(&["nodes", "-o", "json"])).expect("nodes json");
    for n in nodes.as_array().expect("array") {
        assert_eq!(n["network"]["mode"], mode, "{n}");
        assert!(
            n["network"]["subnet"]
                .as_str()
                .unwrap()
                .starts_with("198.19."),
            "{n}"
        );
    }
    let bb = format!("{}/rctl/busybox:latest", c.registry());
    c.rctl_ok(&[
        "run", "-d", "--name", "echo", "--node", "h2", &bb, "sh", "-c", PEER_ECHO,
    ]);
    let callee = container_ip(&c, "echo");
    assert!(callee.starts_with("198.19.2."), "{callee}");
    // Routes: each host to the other's container subnet, via its address (host-gw) or
    // over the VXLAN device to its VTEP.
    let route = match mode {
        "vxlan" => "198.19.2.0/24 via 198.19.2.0 dev rctl-vx".to_string(),
        _ => format!("198.19.2.0/24 via 198.18.{}.12 dev eth0", c.net),
    };
    assert!(
        peer_routes(&c, "h1").contains(&route),
        "{}",
        peer_routes(&c, "h1")
    );

    // The caller on h1 prints its own address, then what the callee saw.
    let script = format!(
        "ip -4 -o addr show eth0; \
         printf 'GET /cgi-bin/peer HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {callee} 8080"
    );
    let out = c.rctl(&["run", "--rm", "--node", "h1", &bb, "sh", "-c", &script]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let caller = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no caller address in {text}"));
    assert!(caller.starts_with("198.19.1."), "{text}");
    // httpd reports an IPv4 peer in its mapped form, `[::ffff:A.B.C.D]`.
    let seen = text
        .lines()
        .find_map(|l| l.strip_prefix("peer="))
        .map(|p| p.trim_start_matches("[::ffff:").trim_end_matches(']'));
    assert_eq!(
        seen,
        Some(caller),
        "the callee saw the caller's container address: {text}"
    );

    // A lost host's routes vanish from the others; it gets them back when it returns.
    c.cluster(&["kill-host", "h2"]);
    c.eventually(WAIT, "h1's route to the lost h2 gone", || {
        (!peer_routes(&c, "h1").contains("198.19.2.0/24")).then_some(())
    });
    c.cluster(&["restore-host", "h2"]);
    c.eventually(WAIT, "h1's route to h2 back", || {
        peer_routes(&c, "h1")
            .contains("198.19.2.0/24")
            .then_some(())
    });
    c.eventually(WAIT, "h2's route to h1 back", || {
        peer_routes(&c, "h2")
            .contains("198.19.1.0/24")
            .then_some(())
    });
    if mode == "vxlan" {
        // The VXLAN forwarding entry follows the peer (and only live peers have one).
        let fdb = c.in_host("h1", &["bridge", "fdb", "show", "dev", "rctl-vx"]);
        assert!(
            fdb.contains(&format!("02:52:c6:13:02:00 dst 198.18.{}.12", c.net)),
            "{fdb}"
        );
    }
    c.down_leaving_nothing();
    let root = std::process::Command::new("ip")
        .args(["-4", "route", "show", "proto", "97"])
        .output()
        .expect("ip route");
    assert!(
        root.stdout.is_empty(),
        "no peer route in the root namespace"
    );
}

#[test]
fn run_takes_dockers_hostname_add_host_and_dns() {
    let c = Cluster::start(1);
    let bb = format!("{}/rctl/busybox:latest", c.registry());
    let out = c.rctl(&[
        "run",
        "--rm",
        "--hostname",
        "web1",
        "--add-host",
        "db.example:10.1.2.3",
        "--dns",
        "198.18.0.250",
        &bb,
        "sh",
        "-c",
        "hostname; cat /etc/hosts /etc/resolv.conf",
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.starts_with("web1\n"), "{text}");
    assert!(text.contains("\tweb1\n"), "its own line: {text}");
    assert!(text.contains("10.1.2.3\tdb.example\n"), "{text}");
    assert!(text.ends_with("nameserver 198.18.0.250\n"), "{text}");

    c.eventually(WAIT, "the --rm container gone", || {
        c.ps(&["-a"]).is_empty().then_some(())
    });

    // Bad input: one line, exit 2, nothing made.
    for (flag, value) in [
        ("--add-host", "nocolon"),
        ("--add-host", "db:not-an-ip"),
        ("--dns", "dns.example"),
        ("--hostname", "under_score"),
    ] {
        let out = c.rctl(&["run", "-d", flag, value, &bb]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{flag} {value}: {err}");
        assert!(err.contains(value), "{flag} {value}: {err}");
    }
    assert!(c.ps(&["-a"]).is_empty(), "no container made");
    c.down_leaving_nothing();
}

#[test]
fn network_none_has_only_loopback_and_it_is_up() {
    let c = Cluster::start(1);
    let bb = format!("{}/rctl/busybox:latest", c.registry());
    let out = c.rctl(&[
        "run",
        "--rm",
        "--network",
        "none",
        &bb,
        "sh",
        "-c",
        "ip -o link; ip -4 -o addr",
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let links: Vec<&str> = text.lines().filter(|l| l.contains("link/")).collect();
    assert_eq!(links.len(), 1, "only lo: {text}");
    assert!(links[0].contains(": lo: <LOOPBACK,UP"), "lo is up: {text}");
    assert!(text.contains("inet 127.0.0.1/8"), "{text}");
    assert!(!text.contains("eth0"), "{text}");
    c.eventually(WAIT, "the --rm container gone", || {
        c.ps(&["-a"]).is_empty().then_some(())
    });

    // Bad input: one line, exit 2, nothing made.
    for args in [
        &["--network", "bogus"][..],
        &["--network", "none", "-p", "18080:8080"][..],
    ] {
        let mut argv = vec!["run", "-d"];
        argv.extend_from_slice(args);
        argv.push(&bb);
        let out = c.rctl(&argv);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    assert!(c.ps(&["-a"]).is_empty(), "no container made");
    c.down_leaving_nothing();
}
