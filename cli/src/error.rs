//! CLI errors and their exit codes (PRODUCT.md): 1 error, 2 bad usage or input, 3 rolled
//! back, 4 timed out.

use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage or bad input: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Waiting ran out of time; the change stays in place: exit 4.
    #[error("{0}")]
    Timeout(String),
    /// The change failed its checks and was rolled back: exit 3.
    #[error("{0}")]
    RolledBack(String),
    /// Anything else: exit 1.
    #[error("{0}")]
    Failed(String),
    /// Not an error: a process the command ran (exec, attach) exited with this code, which
    /// becomes rctl's; nothing is printed.
    #[error("exit status {0}")]
    Exit(i32),
}

/// Whether `s` says no scheduler answered (a transport failure made on this side, or a
/// scheduler that is unavailable for now), rather than an answer: worth asking again.
pub fn unreachable(s: &tonic::Status) -> bool {
    std::error::Error::source(s).is_some() || s.code() == Code::Unavailable
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::RolledBack(_) => 3,
            CliError::Timeout(_) => 4,
            CliError::Failed(_) => 1,
            CliError::Exit(c) => *c,
        }
    }

    /// Maps a scheduler answer; `addr` helps the user when the scheduler is unreachable.
    pub fn from_status(s: tonic::Status, addr: &str) -> Self {
        // A status with a source was made on this side from a transport failure (refused
        // connection, TLS alert, a server not speaking this protocol), not sent by a server.
        if let Some(src) = std::error::Error::source(&s) {
            let mut cause = src;
            while let Some(next) = cause.source() {
                cause = next;
            }
            let hint = if addr.starts_with("https://") {
                "is the cluster up, and is the certificate in RCTL_TLS_DIR from its CA?"
            } else {
                "is the cluster up? a TLS cluster needs https:// and RCTL_TLS_DIR"
            };
            return CliError::Failed(format!(
                "cannot reach the scheduler at {addr}: {cause} ({hint})"
            ));
        }
        match s.code() {
            Code::InvalidArgument | Code::NotFound | Code::AlreadyExists | Code::OutOfRange => {
                CliError::Usage(s.message().to_string())
            }
            Code::Unavailable if s.message().contains("etcd") => CliError::Failed(s.message().to_string()),
            Code::Unavailable | Code::Unknown if s.message().contains("transport") || s.message().contains("connect") => {
                CliError::Failed(format!(
                    "cannot reach the scheduler at {addr} (is the cluster up? set --addr or RCTL_ADDR)"
                ))
            }
            _ => CliError::Failed(s.message().to_string()),
        }
    }
}
