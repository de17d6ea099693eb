//! One listener per exposed service, opened and closed as services come and go.
//!
//! Whenever a new routing table is published, [`plan`] compares the listeners that are
//! open with the services that want one; a listener whose service is gone, or whose listen
//! address or protocol changed, is closed (its connections finish what they are doing), and
//! missing ones are opened. A bind failure (address in use, address not on this host yet)
//! is logged and retried every [`BIND_RETRY`], never fatal: the next table may fix it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::handover::Sockets;
use crate::proxy;
use crate::proxy::http::Forwarder;
use crate::routes::{Protocol, Routes, RoutesRx};
use crate::stats::Stats;

/// How often a failed bind is retried.
pub const BIND_RETRY: Duration = Duration::from_secs(3);
/// The first few retries after a failed bind, and how soon they come.
const FAST_RETRIES: u32 = 5;
const FAST_RETRY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("bind {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What a listener serves: the part of a service that, when changed, needs a new socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub listen: SocketAddr,
    pub protocol: Protocol,
}

/// The changes that bring the open listeners in line with a routing table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Services whose listener must close.
    pub close: Vec<String>,
    /// Services that need a listener, with what it must serve.
    pub open: Vec<(String, Binding)>,
}

/// Compares the `open` listeners with what `routes` wants. A changed binding appears in
/// both lists: close the old one first, then open the new one.
pub fn plan(open: &BTreeMap<String, Binding>, routes: &Routes) -> Plan {
    let wanted: BTreeMap<&str, Binding> = routes
        .services()
        .filter_map(|s| {
            s.listen.map(|listen| {
                (
                    s.name.as_str(),
                    Binding {
                        listen,
                        protocol: s.protocol,
                    },
                )
            })
        })
        .collect();
    let mut plan = Plan::default();
    for (name, binding) in open {
        if wanted.get(name.as_str()) != Some(binding) {
            plan.close.push(name.clone());
        }
    }
    for (name, binding) in wanted {
        if open.get(name) != Some(&binding) {
            plan.open.push((name.to_string(), binding));
        }
    }
    plan
}

/// Keeps one listener per exposed service until `shutdown`, then waits for them to drain.
pub async fn run(
    mut routes: RoutesRx,
    forwarder: Forwarder,
    stats: Arc<Stats>,
    sockets: Arc<Sockets>,
    shutdown: CancellationToken,
) {
    let tasks = TaskTracker::new();
    let mut open: BTreeMap<String, (Binding, CancellationToken)> = BTreeMap::new();
    loop {
        let current = routes.borrow_and_update().clone();
        let bindings = open.iter().map(|(k, (b, _))| (k.clone(), *b)).collect();
        let plan = plan(&bindings, &current);
        for name in plan.close {
            if let Some((binding, stop)) = open.remove(&name) {
                info!(service = name, listen = %binding.listen, "closing listener");
                stop.cancel();
            }
        }
        for (name, binding) in plan.open {
            let stop = shutdown.child_token();
            tasks.spawn(listen(
                name.clone(),
                binding,
                routes.clone(),
                forwarder.clone(),
                stats.clone(),
                sockets.clone(),
                stop.clone(),
            ));
            open.insert(name, (binding, stop));
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = routes.changed() => if changed.is_err() { break },
        }
    }
    tasks.close();
    tasks.wait().await;
}

/// Binds `binding.listen` (retrying until it works or `stop`) and serves `service` on it.
async fn listen(
    service: String,
    binding: Binding,
    routes: RoutesRx,
    forwarder: Forwarder,
    stats: Arc<Stats>,
    sockets: Arc<Sockets>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    let mut next_warn = FAST_RETRIES;
    let listener = loop {
        if let Some(l) = sockets.take_inherited(binding.listen) {
            info!(service, listen = %binding.listen, "took over the previous LB's listener");
            break l;
        }
        match bind(binding.listen) {
            Ok(l) => break l,
            Err(e) => {
                // The first retries are quick and quiet: the usual cause is our own old
                // listener on the same address (protocol changed) still closing. After
                // that, warn now and then so a port held by another program is visible
                // without flooding the log.
                let delay = if failures < FAST_RETRIES {
                    debug!(service, error = %crate::Chain(&e), "cannot listen yet");
                    FAST_RETRY
                } else {
                    if failures >= next_warn {
                        next_warn = failures + 20;
                        warn!(service, error = %crate::Chain(&e), retry_in = ?BIND_RETRY, "cannot listen");
                    }
                    BIND_RETRY
                };
                failures += 1;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    info!(service, listen = %binding.listen, protocol = binding.protocol.as_str(), "listening");
    sockets.register(binding.listen, std::os::fd::AsFd::as_fd(&listener));
    match binding.protocol {
        Protocol::Http => proxy::http::serve(listener, service, routes, forwarder, stop).await,
        Protocol::Tcp => proxy::tcp::serve(listener, service, routes, stats, stop).await,
    }
    sockets.unregister(binding.listen);
}

/// Binds with SO_REUSEADDR so a restarted LB does not wait out TIME_WAIT sockets.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let err = |source| ListenError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::ServiceRoute;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn binding(port: u16, protocol: Protocol) -> Binding {
        Binding {
            listen: addr(port),
            protocol,
        }
    }

    #[test]
    fn opens_closes_and_rebinds() {
        let open: BTreeMap<String, Binding> = [
            ("same".to_string(), binding(1, Protocol::Http)),
            ("gone".to_string(), binding(2, Protocol::Http)),
            ("moved".to_string(), binding(3, Protocol::Http)),
            ("switched".to_string(), binding(4, Protocol::Http)),
            ("unexposed".to_string(), binding(5, Protocol::Http)),
        ]
        .into();
        let routes = Routes::from_services([
            ServiceRoute::new("same", Protocol::Http, Some(addr(1))),
            ServiceRoute::new("moved", Protocol::Http, Some(addr(30))),
            ServiceRoute::new("switched", Protocol::Tcp, Some(addr(4))),
            ServiceRoute::new("unexposed", Protocol::Http, None),
            ServiceRoute::new("new", Protocol::Tcp, Some(addr(6))),
        ]);
        let p = plan(&open, &routes);
        assert_eq!(p.close, ["gone", "moved", "switched", "unexposed"]);
        assert_eq!(
            p.open,
            [
                ("moved".to_string(), binding(30, Protocol::Http)),
                ("new".to_string(), binding(6, Protocol::Tcp)),
                ("switched".to_string(), binding(4, Protocol::Tcp)),
            ]
        );
    }

    #[test]
    fn nothing_to_do_when_nothing_changed() {
        let routes =
            Routes::from_services([ServiceRoute::new("web", Protocol::Http, Some(addr(1)))]);
        let open = [("web".to_string(), binding(1, Protocol::Http))].into();
        assert_eq!(plan(&open, &routes), Plan::default());
    }
}
