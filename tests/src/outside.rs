//! An "outside" host for network tests: a network namespace on the cluster's link
//! (`198.18.N.250/24`, a veth on the cluster's root bridge) that is not a cluster host and
//! has no route to any container subnet, running the static test server. What reaches it
//! from a container got there by source NAT (egress), and its answers find their way back
//! only through that NAT. Removed (server killed by pid, namespace and veth deleted) on
//! drop, before the cluster's own `down`.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::testserver::testserver_bin;

/// The outside host's last octet on the cluster's /24 (hosts are .11–.109, the root .1).
const OCTET: u8 = 250;

/// The port its test server listens on.
pub const PORT: u16 = 8080;

pub struct Outside {
    /// Network namespace and root-side veth name: `{cluster}-out`.
    pub ns: String,
    pub ip: Ipv4Addr,
    server: Option<Child>,
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("run ip")
}

fn must(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Outside {
    /// Makes the namespace on `c`'s bridge and starts the test server in it, reporting
    /// version `outside`; returns once it accepts connections.
    pub fn start(c: &Cluster) -> Outside {
        let ns = format!("{}-out", c.name);
        let addr = Ipv4Addr::new(198, 18, c.net, OCTET);
        // A run killed hard may have left one behind.
        let _ = ip(&["netns", "del", &ns]);
        let _ = ip(&["link", "del", &ns]);
        let mut o = Outside {
            ns: ns.clone(),
            ip: addr,
            server: None,
        };
        must(&["netns", "add", &ns]);
        must(&[
            "link", "add", &ns, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        must(&[
            "link",
            "set",
            &ns,
            "master",
            &format!("{}-br", c.name),
            "up",
        ]);
        must(&["-n", &ns, "link", "set", "lo", "up"]);
        must(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        must(&["-n", &ns, "link", "set", "eth0", "up"]);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(testserver_bin())
            .args(["--port", &PORT.to_string(), "--version", "outside"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the outside test server");
        o.server = Some(child);
        // The root namespace is on the same link (the bridge's address), so it can check.
        let deadline = Instant::now() + Duration::from_secs(10);
        let sa = SocketAddr::from((addr, PORT));
        while TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "outside server on {sa} never came up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        o
    }

    /// The test server's URL.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{PORT}{path}", self.ip)
    }

    /// Runs `args` inside the outside namespace; its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args)
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = ip(&["link", "del", &self.ns]);
    }
}
