//! rtnetlink for container networking: the bridge, the veth pair, and the container side's
//! addresses and route, as netlink requests instead of `ip`/`nsenter` processes (a container
//! start used to spawn ten of them, most of its network setup time).
//!
//! Vocabulary: a *builder* is a pure function that returns one request message (unit-tested
//! below); [`Rtnl`] is a netlink socket that sends them and waits for the kernel's ack. A
//! netlink socket acts on the network namespace it was *created* in, so the container side
//! is configured through a socket opened on a short-lived thread that entered the
//! container's namespace first ([`on_thread`]); no tokio worker ever changes namespace.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// `lo` is interface 1 in every network namespace (the kernel's `LOOPBACK_IFINDEX`).
pub const LOOPBACK_IFINDEX: u32 = 1;

/// Flags for a request that creates something and must not silently reuse a leftover.
pub const CREATE: u16 = NLM_F_CREATE | NLM_F_EXCL;

// === builders ===

/// RTM_GETLINK by name (the kernel looks the name up when the index is 0).
pub fn get_link(name: &str) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    RouteNetlinkMessage::GetLink(m)
}

/// RTM_DELLINK by name; deleting one end of a veth pair deletes both.
pub fn del_link(name: &str) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    RouteNetlinkMessage::DelLink(m)
}

/// RTM_SETLINK that brings interface `index` up and changes no other flag.
pub fn link_up(index: u32) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    RouteNetlinkMessage::SetLink(m)
}

/// RTM_NEWLINK for a bridge named `name`.
pub fn bridge(name: &str) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    RouteNetlinkMessage::NewLink(m)
}

/// RTM_NEWLINK for a veth pair in one request: `host` enslaved to bridge `master` and up,
/// its peer created directly inside the namespace `netns` (an open `/proc/PID/ns/net`)
/// under the name `peer`, so it never shows up in the host's namespace under a temporary
/// name that would need renaming.
pub fn veth_pair(host: &str, master: u32, peer: &str, netns: RawFd) -> RouteNetlinkMessage {
    let mut p = LinkMessage::default();
    p.attributes.push(LinkAttribute::IfName(peer.to_string()));
    p.attributes.push(LinkAttribute::NetNsFd(netns));
    let mut m = LinkMessage::default();
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::IfName(host.to_string()));
    m.attributes.push(LinkAttribute::Controller(master));
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
    ]));
    RouteNetlinkMessage::NewLink(m)
}

/// RTM_NEWADDR: `ip/prefix_len` on interface `index` (what `ip addr add` sends: local and
/// address both the interface's own address).
pub fn ipv4_addr(index: u32, ip: Ipv4Addr, prefix_len: u8) -> RouteNetlinkMessage {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.prefix_len = prefix_len;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(ip.into()));
    m.attributes.push(AddressAttribute::Address(ip.into()));
    RouteNetlinkMessage::NewAddress(m)
}

/// RTM_NEWROUTE: the main table's default route via `gateway`.
pub fn default_route(gateway: Ipv4Addr) -> RouteNetlinkMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = 0;
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    m.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
    RouteNetlinkMessage::NewRoute(m)
}

/// RTM_DELNEIGH: the neighbour entry for `ip` on interface `index`.
pub fn del_neighbour(index: u32, ip: Ipv4Addr) -> RouteNetlinkMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = index;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    RouteNetlinkMessage::DelNeighbour(m)
}

/// `msg` as the bytes of one netlink request with sequence number `seq`.
pub fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = seq;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    buf
}

// === socket ===

/// A blocking rtnetlink socket in the network namespace of the thread that opened it.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { sock, seq: 0 })
    }

    /// Sends `msg` and returns the kernel's replies once it acked the request, or the
    /// error it answered with.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        self.sock.send(&encode(msg, flags, self.seq), 0)?;
        let mut replies = Vec::new();
        loop {
            let (buf, _) = self.sock.recv_from_full()?;
            let mut rest = &buf[..];
            while !rest.is_empty() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = (m.header.length as usize).max(1).min(rest.len());
                rest = &rest[len..];
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(_) => Err(e.to_io()),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(r) => replies.push(r),
                    _ => {}
                }
            }
        }
    }

    /// The index of interface `name`, `None` if there is none.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        match self.request(get_link(name), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Runs `f` on a new thread (not the blocking pool: `f` may change the thread's namespace).
pub async fn on_thread<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("rctl-netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })?;
    rx.await
        .unwrap_or_else(|_| Err(io::Error::other("network setup thread panicked")))
}

/// Opens `/proc/{pid}/ns/net`: a handle on the namespace that stays valid even if the
/// process exits meanwhile.
pub fn open_netns(pid: u32) -> io::Result<File> {
    File::open(Path::new("/proc").join(pid.to_string()).join("ns/net"))
}

/// The raw fd of an open namespace file, for [`veth_pair`].
pub fn raw(f: &File) -> RawFd {
    f.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NetlinkDeserializable;

    /// Encodes and decodes `msg`, as the kernel would read it.
    fn roundtrip(msg: RouteNetlinkMessage, flags: u16) -> (u16, RouteNetlinkMessage) {
        let bytes = encode(msg, flags, 7);
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
        assert_eq!(m.header.sequence_number, 7);
        assert_eq!(m.header.length as usize, bytes.len());
        let NetlinkPayload::InnerMessage(inner) = m.payload else {
            panic!("not a request")
        };
        // The payload decodes by itself too (what the kernel's type dispatch does).
        let _ = RouteNetlinkMessage::deserialize(&m.header, &bytes[16..]).unwrap();
        (m.header.flags, inner)
    }

    #[test]
    fn a_veth_pair_is_one_request_with_the_peer_inside_the_namespace() {
        let (flags, msg) = roundtrip(veth_pair("vethabc", 4, "eth0", 9), CREATE);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        let RouteNetlinkMessage::NewLink(m) = msg else {
            panic!("{msg:?}")
        };
        assert!(m.header.flags.contains(LinkFlags::Up));
        assert!(m
            .attributes
            .contains(&LinkAttribute::IfName("vethabc".into())));
        assert!(m.attributes.contains(&LinkAttribute::Controller(4)));
        let info = m
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i),
                _ => None,
            })
            .unwrap();
        assert_eq!(info[0], LinkInfo::Kind(InfoKind::Veth));
        let LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))) = &info[1] else {
            panic!("{info:?}")
        };
        assert!(peer
            .attributes
            .contains(&LinkAttribute::IfName("eth0".into())));
        assert!(peer.attributes.contains(&LinkAttribute::NetNsFd(9)));
    }

    #[test]
    fn the_container_gets_its_address_and_default_route() {
        let ip = Ipv4Addr::new(198, 19, 1, 5);
        let (_, msg) = roundtrip(ipv4_addr(3, ip, 24), CREATE);
        let RouteNetlinkMessage::NewAddress(a) = msg else {
            panic!("{msg:?}")
        };
        assert_eq!((a.header.index, a.header.prefix_len), (3, 24));
        assert_eq!(a.header.family, AddressFamily::Inet);
        assert!(a.attributes.contains(&AddressAttribute::Local(ip.into())));

        let gw = Ipv4Addr::new(198, 19, 1, 1);
        let (_, msg) = roundtrip(default_route(gw), CREATE);
        let RouteNetlinkMessage::NewRoute(r) = msg else {
            panic!("{msg:?}")
        };
        assert_eq!(r.header.destination_prefix_length, 0);
        assert_eq!(r.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(r.header.kind, RouteType::Unicast);
        assert_eq!(
            r.attributes,
            [RouteAttribute::Gateway(RouteAddress::Inet(gw))]
        );
    }

    #[test]
    fn link_up_changes_only_the_up_flag() {
        let (flags, msg) = roundtrip(link_up(LOOPBACK_IFINDEX), 0);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK);
        let RouteNetlinkMessage::SetLink(m) = msg else {
            panic!("{msg:?}")
        };
        assert_eq!(m.header.index, 1);
        assert_eq!(m.header.change_mask, LinkFlags::Up);
    }

    #[test]
    fn a_stale_neighbour_is_deleted_by_address_on_the_bridge() {
        let ip = Ipv4Addr::new(198, 19, 1, 5);
        let (_, msg) = roundtrip(del_neighbour(4, ip), 0);
        let RouteNetlinkMessage::DelNeighbour(n) = msg else {
            panic!("{msg:?}")
        };
        assert_eq!(n.header.ifindex, 4);
        assert_eq!(
            n.attributes,
            [NeighbourAttribute::Destination(NeighbourAddress::Inet(ip))]
        );
    }

    #[test]
    fn links_are_looked_up_and_deleted_by_name() {
        for m in [get_link("br-x"), del_link("br-x"), bridge("br-x")] {
            let (_, msg) = roundtrip(m, 0);
            let (RouteNetlinkMessage::GetLink(l)
            | RouteNetlinkMessage::DelLink(l)
            | RouteNetlinkMessage::NewLink(l)) = msg
            else {
                panic!("{msg:?}")
            };
            assert_eq!(l.header.index, 0);
            assert!(l.attributes.contains(&LinkAttribute::IfName("br-x".into())));
        }
    }
}
