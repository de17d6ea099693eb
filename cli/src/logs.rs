//! `rctl logs [-f] [--tail N] [--since DUR|RFC3339] [-t] TARGET`: a container's or task's
//! log, or a whole service's (every replica, merged by time, each line prefixed with
//! `NAME.ID@NODE |` like `docker service logs`). With -f it keeps following, across
//! restarts of the container and of agents, until the container is removed or ^C.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use rctl_api::pb::{LogLine, LogsRequest};

use clap::Args;

use crate::attach::stream_err;
use crate::client::Conn;
use crate::error::CliError;
use crate::global::Global;

/// What `logs` was asked for.
#[derive(Args, Debug, Clone, Default)]
pub struct LogsArgs {
    /// Keep following new lines (across restarts) until ^C or the container is removed.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines (of each replica), or "all".
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<String>,
    /// Only lines since a duration ago (10m) or a time (RFC 3339).
    #[arg(long, value_name = "DUR|TIME")]
    pub since: Option<String>,
    /// Show each line's timestamp.
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// A container, a task (web.1) or a service (its replicas merged by time).
    pub target: String,
}

impl LogsArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        // A bad --tail or --since fails with exit 2 before anything is sent.
        let req = request(&self, SystemTime::now())?;
        follow(&g.connect().await?, req, self.timestamps).await
    }
}

/// `--tail N` or `--tail all`.
pub fn parse_tail(s: &str) -> Result<Option<u32>, CliError> {
    if s == "all" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| CliError::Usage(format!("bad --tail {s:?}: expected a number or \"all\"")))
}

/// `--since 10m` (that long before `now`) or `--since 2026-11-23T10:00:00Z`, as Unix nanos.
pub fn parse_since(s: &str, now: SystemTime) -> Result<i64, CliError> {
    let t = match humantime::parse_duration(s.trim()) {
        Ok(d) => now.checked_sub(d).unwrap_or(UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(s.trim()).map_err(|_| {
            CliError::Usage(format!(
                "bad --since {s:?}: expected a duration (10m, 1h30m) or an RFC 3339 time (2026-11-23T10:00:00Z)"
            ))
        })?,
    };
    Ok(t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
        .max(1))
}

/// The request for `a` at `now`.
pub fn request(a: &LogsArgs, now: SystemTime) -> Result<LogsRequest, CliError> {
    Ok(LogsRequest {
        target: a.target.clone(),
        tail: match &a.tail {
            Some(t) => parse_tail(t)?,
            None => None,
        },
        since_unix_nanos: match &a.since {
            Some(s) => parse_since(s, now)?,
            None => 0,
        },
        follow: a.follow,
    })
}

/// One line as printed: `[NAME.ID@NODE | ][TIME ]LINE`.
pub fn render(l: &LogLine, service: bool, timestamps: bool) -> String {
    let mut out = String::new();
    if service {
        let id: String = l.task_id.chars().take(12).collect();
        out.push_str(&format!("{}.{}@{} | ", l.task_name, id, l.node));
    }
    if timestamps {
        out.push_str(&l.time);
        out.push(' ');
    }
    out.push_str(&l.log);
    out
}

/// Prints the lines of `req` as they come, stdout and stderr apart.
async fn follow(conn: &Conn, req: LogsRequest, timestamps: bool) -> Result<(), CliError> {
    let mut s = conn
        .client
        .clone()
        .logs(req)
        .await
        .map_err(|s| stream_err(conn, s))?
        .into_inner();
    while let Some(batch) = s.message().await.map_err(|e| stream_err(conn, e))? {
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        for l in &batch.lines {
            let text = render(l, batch.service, timestamps);
            let _ = if l.stream == "stderr" {
                err.write_all(text.as_bytes())
            } else {
                out.write_all(text.as_bytes())
            };
        }
        let _ = out.flush();
        let _ = err.flush();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn since_takes_a_duration_or_a_time() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(parse_since("10s", now).unwrap(), 990_000_000_000);
        assert_eq!(
            parse_since("1970-01-01T00:00:05Z", now).unwrap(),
            5_000_000_000
        );
        assert_eq!(parse_since("yesterday", now).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn tail_is_a_number_or_all() {
        assert_eq!(parse_tail("5").unwrap(), Some(5));
        assert_eq!(parse_tail("all").unwrap(), None);
        assert_eq!(parse_tail("-1").unwrap_err().exit_code(), 2);
    }

    #[test]
    fn service_lines_are_prefixed_like_docker_service_logs() {
        let l = LogLine {
            time: "2026-11-23T10:00:00.000000001Z".into(),
            stream: "stdout".into(),
            log: "hello\n".into(),
            task_id: "3fa2b1c9e0d4aabbccdd".into(),
            task_name: "web.1".into(),
            node: "h1".into(),
        };
        assert_eq!(render(&l, true, false), "web.1.3fa2b1c9e0d4@h1 | hello\n");
        assert_eq!(
            render(&l, false, true),
            "2026-11-23T10:00:00.000000001Z hello\n"
        );
        assert_eq!(render(&l, false, false), "hello\n");
    }
}
