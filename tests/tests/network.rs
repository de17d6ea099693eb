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
