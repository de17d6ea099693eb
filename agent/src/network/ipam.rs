//! Address and host-port allocation. State is not kept here: the callers pass what the
//! container directories already hold, so allocation survives restarts with no extra file.

use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IpamError {
    #[error("invalid subnet {0:?} (want a.b.c.d/N with N between 8 and 30)")]
    Subnet(String),
    #[error("no free address left in {0}")]
    NoAddress(String),
    #[error("no free host port left in {0}-{1}")]
    NoPort(u16, u16),
}

/// The container subnet of this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Result<Self, IpamError> {
        let bad = || IpamError::Subnet(s.to_string());
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix_len) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix_len);
        Ok(Self {
            network: Ipv4Addr::from(u32::from(ip) & mask),
            prefix_len,
        })
    }

    /// The bridge's address: the first host of the subnet.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix_len)
    }

    /// The lowest address of the subnet that is not the network, gateway, broadcast or in
    /// `used`.
    pub fn allocate(&self, used: &[Ipv4Addr]) -> Result<Ipv4Addr, IpamError> {
        let base = u32::from(self.network);
        (2..self.size() - 1)
            .map(|i| Ipv4Addr::from(base + i))
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| IpamError::NoAddress(self.to_string()))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Host ports handed to published container ports.
pub const HOST_PORTS: (u16, u16) = (20000, 29999);

/// The lowest host port in [`HOST_PORTS`] not in `used`.
pub fn allocate_port(used: &[u16]) -> Result<u16, IpamError> {
    (HOST_PORTS.0..=HOST_PORTS.1)
        .find(|p| !used.contains(p))
        .ok_or(IpamError::NoPort(HOST_PORTS.0, HOST_PORTS.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_address_skips_gateway_and_used() {
        let s = Subnet::parse("198.19.1.0/24").unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(198, 19, 1, 1));
        assert_eq!(s.allocate(&[]).unwrap(), Ipv4Addr::new(198, 19, 1, 2));
        let used = [Ipv4Addr::new(198, 19, 1, 2), Ipv4Addr::new(198, 19, 1, 4)];
        assert_eq!(s.allocate(&used).unwrap(), Ipv4Addr::new(198, 19, 1, 3));
    }

    #[test]
    fn full_subnet_is_an_error() {
        let s = Subnet::parse("10.0.0.0/30").unwrap();
        assert_eq!(s.allocate(&[]).unwrap(), Ipv4Addr::new(10, 0, 0, 2));
        assert!(s.allocate(&[Ipv4Addr::new(10, 0, 0, 2)]).is_err());
    }

    #[test]
    fn subnet_parsing_normalises_and_rejects() {
        let s = Subnet::parse("198.19.1.7/24").unwrap();
        assert_eq!(s.to_string(), "198.19.1.0/24");
        assert!(Subnet::parse("198.19.1.0").is_err());
        assert!(Subnet::parse("198.19.1.0/31").is_err());
        assert!(Subnet::parse("x/24").is_err());
    }

    #[test]
    fn ports_are_lowest_free() {
        assert_eq!(allocate_port(&[]).unwrap(), 20000);
        assert_eq!(allocate_port(&[20000, 20002]).unwrap(), 20001);
    }
}
