//! The data paths: [`http`] proxies HTTP/1.1 per request (L7), [`tcp`] proxies raw TCP per
//! connection (L4). Both pick backends with [`crate::balance`] from the current
//! [`crate::Routes`] and retry another backend only when the connection was refused, i.e.
//! before anything of the client's was sent.

pub mod http;
pub mod tcp;

use std::time::Duration;

/// At most this many extra backends are tried after a connection failure.
pub const MAX_RETRIES: usize = 2;

/// How long a connection attempt to a backend may take before another is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
