//! Health checks the agent runs against its containers. TCP connect for now: a container
//! that accepts connections on its published port is ready for traffic.

use std::net::SocketAddr;
use std::time::Duration;

/// How often a container's port is probed.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Consecutive failed probes after which a healthy container is taken out of rotation.
pub const UNHEALTHY_AFTER: u32 = 3;

/// Whether `addr` accepts a TCP connection within `timeout`.
pub async fn tcp(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Health of one container as seen by consecutive probes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    fails: u32,
}

/// What a probe result changes.
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    BecameHealthy,
    BecameUnhealthy,
}

impl Health {
    pub fn observe(&mut self, ok: bool) -> Transition {
        if ok {
            self.fails = 0;
            if !self.healthy {
                self.healthy = true;
                return Transition::BecameHealthy;
            }
        } else if self.healthy {
            self.fails += 1;
            if self.fails >= UNHEALTHY_AFTER {
                self.healthy = false;
                self.fails = 0;
                return Transition::BecameUnhealthy;
            }
        }
        Transition::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_success_makes_healthy_and_three_failures_unhealthy() {
        let mut h = Health::default();
        assert_eq!(h.observe(false), Transition::None);
        assert_eq!(h.observe(true), Transition::BecameHealthy);
        assert_eq!(h.observe(false), Transition::None);
        assert_eq!(h.observe(true), Transition::None);
        assert_eq!(h.observe(false), Transition::None);
        assert_eq!(h.observe(false), Transition::None);
        assert_eq!(h.observe(false), Transition::BecameUnhealthy);
        assert!(!h.healthy);
    }
}
