//! PROXY protocol v2 (HAProxy's spec, `doc/proxy-protocol.txt` §2.2): the binary header
//! the LB writes first on a backend connection so the backend learns the client's real
//! address. [`encode`] builds it; [`parse`] reads one (what a backend does; the tests'
//! backends use it, and it checks [`encode`] against the spec's layout).
//!
//! Layout: the 12-byte signature, version 2 + command PROXY (`0x21`), family + transport
//! (`0x11` TCP/IPv4, `0x21` TCP/IPv6), the address block's length (big-endian u16), then
//! source address, destination address, source port, destination port.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Every v2 header starts with these bytes.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

const VERSION_PROXY: u8 = 0x21;
const VERSION_LOCAL: u8 = 0x20;
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// Relayed for a client: its address and the address it connected to.
    Proxy {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The proxy's own connection (health checks): use the real peer address.
    Local,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("PROXY v2 header incomplete: need {need} bytes")]
    Incomplete { need: usize },
    #[error("not a PROXY v2 header (bad signature)")]
    Signature,
    #[error("PROXY header version/command byte {0:#04x} is not v2 PROXY or LOCAL")]
    Version(u8),
    #[error("PROXY v2 family/transport {0:#04x} is not TCP over IPv4 or IPv6")]
    Family(u8),
    #[error("PROXY v2 address block of {len} bytes is too short for its family")]
    Length { len: usize },
}

/// The header announcing a connection from `source` to `destination`. A mixed pair
/// (one IPv4, one IPv6) is sent as IPv6 with the IPv4 address mapped.
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_PROXY);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(TCP4);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(TCP6);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Reads a header from the start of `buf`: what it says and how many bytes it took (the
/// connection's own data follows). TLVs after the addresses are skipped.
pub fn parse(buf: &[u8]) -> Result<(Header, usize), ParseError> {
    if buf.len() < 16 {
        // Say so early if what we have cannot become a header.
        let n = buf.len().min(12);
        if buf[..n] != SIGNATURE[..n] {
            return Err(ParseError::Signature);
        }
        return Err(ParseError::Incomplete { need: 16 });
    }
    if buf[..12] != SIGNATURE {
        return Err(ParseError::Signature);
    }
    let command = buf[12];
    let family = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = 16 + len;
    if buf.len() < total {
        return Err(ParseError::Incomplete { need: total });
    }
    let block = &buf[16..total];
    match command {
        VERSION_LOCAL => return Ok((Header::Local, total)),
        VERSION_PROXY => {}
        other => return Err(ParseError::Version(other)),
    }
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    let header = match family {
        TCP4 => {
            if len < 12 {
                return Err(ParseError::Length { len });
            }
            let ip =
                |at: usize| IpAddr::from([block[at], block[at + 1], block[at + 2], block[at + 3]]);
            Header::Proxy {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        TCP6 => {
            if len < 36 {
                return Err(ParseError::Length { len });
            }
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&block[at..at + 16]);
                IpAddr::from(o)
            };
            Header::Proxy {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        other => return Err(ParseError::Family(other)),
    };
    Ok((header, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_header_has_the_spec_layout() {
        let h = encode(addr("198.18.0.7:51000"), addr("127.0.0.1:8080"));
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12]);
        want.extend_from_slice(&[198, 18, 0, 7, 127, 0, 0, 1]);
        want.extend_from_slice(&51000u16.to_be_bytes());
        want.extend_from_slice(&8080u16.to_be_bytes());
        assert_eq!(h, want);
        assert_eq!(
            parse(&h),
            Ok((
                Header::Proxy {
                    source: addr("198.18.0.7:51000"),
                    destination: addr("127.0.0.1:8080"),
                },
                28
            ))
        );
    }

    #[test]
    fn ipv6_and_mixed_pairs_round_trip() {
        let h = encode(addr("[::1]:4000"), addr("[2001:db8::1]:443"));
        assert_eq!(h.len(), 52);
        assert_eq!(h[13], 0x21);
        let (got, n) = parse(&h).unwrap();
        assert_eq!(n, 52);
        assert_eq!(
            got,
            Header::Proxy {
                source: addr("[::1]:4000"),
                destination: addr("[2001:db8::1]:443"),
            }
        );
        let mixed = encode(addr("127.0.0.1:1"), addr("[::1]:2"));
        let (got, _) = parse(&mixed).unwrap();
        assert_eq!(
            got,
            Header::Proxy {
                source: addr("[::ffff:127.0.0.1]:1"),
                destination: addr("[::1]:2"),
            }
        );
    }

    #[test]
    fn data_after_the_header_and_tlvs_are_left_alone() {
        let mut h = encode(addr("127.0.0.1:1"), addr("127.0.0.1:2"));
        // Grow the block by a 3-byte TLV (type 0x04 NOOP, length 0).
        h[15] += 3;
        h.extend_from_slice(&[0x04, 0, 0]);
        h.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (_, n) = parse(&h).unwrap();
        assert_eq!(&h[n..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn bad_and_short_input_is_named() {
        let h = encode(addr("127.0.0.1:1"), addr("127.0.0.1:2"));
        assert_eq!(parse(&h[..5]), Err(ParseError::Incomplete { need: 16 }));
        assert_eq!(parse(&h[..20]), Err(ParseError::Incomplete { need: 28 }));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Err(ParseError::Signature));
        assert_eq!(parse(b"GET"), Err(ParseError::Signature));
        let mut v1 = h.clone();
        v1[12] = 0x11;
        assert_eq!(parse(&v1), Err(ParseError::Version(0x11)));
        let mut udp = h.clone();
        udp[13] = 0x12;
        assert_eq!(parse(&udp), Err(ParseError::Family(0x12)));
        let mut short = h.clone();
        short[15] = 4;
        assert_eq!(parse(&short), Err(ParseError::Length { len: 4 }));
        let mut local = h;
        local[12] = 0x20;
        assert_eq!(parse(&local).unwrap().0, Header::Local);
    }
}
