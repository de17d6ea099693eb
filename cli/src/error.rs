//! CLI errors and their exit codes: the table in docs/exit-codes.md (PRODUCT.md "Exit
//! codes"). 1 error, which includes "not found" for every kind of target and a refusal
//! because of state; 2 bad usage or input; 3 rolled back; 4 timed out. `from_status` is the
//! one place a scheduler answer becomes an exit code.

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
    /// Anything else, "not found" and refusals because of state included: exit 1.
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
            // Only a request that is wrong in itself is exit 2. NotFound is 1 for every kind
            // of target (Docker's `rm nosuch`); AlreadyExists (a name in use) and
            // FailedPrecondition (a container running, a rollout in progress) are refusals
            // because of state: 1 too, with the rest.
            Code::InvalidArgument | Code::OutOfRange => CliError::Usage(s.message().to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_not_found_and_refusal_exits_1_and_bad_input_2() {
        for (status, code) in [
            (tonic::Status::not_found("service \"x\" not found"), 1),
            (tonic::Status::not_found("no such container: x"), 1),
            (tonic::Status::already_exists("name in use"), 1),
            (
                tonic::Status::failed_precondition("container is running"),
                1,
            ),
            (tonic::Status::aborted("conflict"), 1),
            (tonic::Status::invalid_argument("bad name"), 2),
            (tonic::Status::out_of_range("too many"), 2),
        ] {
            let e = CliError::from_status(status.clone(), "https://h:1");
            assert_eq!(e.exit_code(), code, "{status:?}");
            assert_eq!(e.to_string(), status.message(), "the message as it is");
        }
    }
}
