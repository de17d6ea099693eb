//! End-to-end: what a careless or hostile user tries (issue 22), on a real 2-host cluster.
//! Ports: `-p IP:HOST:CONTAINER` may name only the node's own addresses (or 0.0.0.0 and
//! 127.0.0.1); the registry's address or any other is refused with one line, leaving no
//! container and no rule, and the node still reaches the registry.

use std::time::Duration;

use rctl_tests::cluster::Cluster;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The one-off containers `ps -a -o json` lists.
fn all_containers(c: &Cluster) -> Vec<Value> {
    c.ps(&["-a"])
        .into_iter()
        .filter(|v| v["kind"] == "container")
        .collect()
}

/// The HTTP status of `GET url` from inside host `host` (only cluster addresses).
fn status_from(c: &Cluster, host: &str, url: &str) -> String {
    c.in_host(
        host,
        &[
            "curl",
            "-sS",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ],
    )
}

#[test]
fn ports_publish_only_on_the_nodes_own_addresses() {
    let c = Cluster::start(2);
    let ts = format!("{}/rctl/testserver:v1", c.registry());
    let reg = c.registry();
    let (reg_ip, reg_port) = reg.split_once(':').unwrap();
    let own = format!("198.18.{}.11", c.net);
    let registry_v2 = format!("http://{reg}/v2/");
    assert_eq!(status_from(&c, "h1", &registry_v2), "200");

    // The registry's own address and port, a public address (only ever passed as a refused
    // argument), and the same with /udp: each refused with one line naming the address.
    for spec in [
        format!("{reg_ip}:{reg_port}:8080"),
        "8.8.8.8:18512:8080".to_string(),
        format!("{reg_ip}:18513:8080/udp"),
    ] {
        let ip = spec.split(':').next().unwrap();
        let out = c.rctl(&["run", "-d", "--node", "h1", "-p", &spec, &ts]);
        let err = stderr(&out);
        // The node cannot create it: Docker's run exits 125 (exit-code table).
        assert_eq!(out.status.code(), Some(125), "{spec}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{spec}: one line: {err}");
        assert!(
            err.contains(&format!(
                "cannot publish on {ip}: not an address of node h1"
            )) && err.contains(&own),
            "{spec}: {err}"
        );
        assert!(all_containers(&c).is_empty(), "{spec}: no container left");
        let rules = c.in_host("h1", &["iptables", "-t", "nat", "-S"]);
        assert!(!rules.contains(ip), "{spec}: no rule for {ip}: {rules}");
        assert_eq!(
            status_from(&c, "h1", &registry_v2),
            "200",
            "{spec}: h1 still reaches the registry"
        );
    }

    // The addresses Docker allows, and the node's own, still publish and answer.
    for (i, host_ip) in ["0.0.0.0", "127.0.0.1", own.as_str()]
        .into_iter()
        .enumerate()
    {
        let port = 18520 + i as u16;
        let name = format!("p{i}");
        let spec = format!("{host_ip}:{port}:8080");
        c.rctl_ok(&[
            "run", "-d", "--node", "h1", "--name", &name, "-p", &spec, &ts,
        ]);
        let target = match host_ip {
            "0.0.0.0" => format!("http://{own}:{port}/"),
            ip => format!("http://{ip}:{port}/"),
        };
        c.eventually(WAIT, &format!("{name} answers on {target}"), || {
            (status_from(&c, "h1", &target) == "200").then_some(())
        });
        c.rctl_ok(&["rm", "-f", &name]);
    }
    assert_eq!(status_from(&c, "h1", &registry_v2), "200");
    c.down_leaving_nothing();
}
