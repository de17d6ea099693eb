//! `rctl scale NAME=N [NAME=N ...] [--wait] [--timeout DUR]`.

use std::time::Duration;

use clap::Args;
use rctl_api::pb::{ScaleRequest, ScaleTarget};

use crate::error::CliError;
use crate::global::Global;
use crate::values;

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// NAME=N: a service and the number of replicas it should run.
    #[arg(required = true, value_name = "NAME=N")]
    pub targets: Vec<String>,
    /// Block until every named service runs N healthy tasks (or --timeout passes).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits before it gives up (exit 4; the change stays in place).
    #[arg(long, default_value = "5m", value_parser = values::duration)]
    pub timeout: Duration,
}

/// Parses one `NAME=N` argument.
pub fn parse_target(arg: &str) -> Result<ScaleTarget, CliError> {
    let bad = |why: &str| {
        CliError::Usage(format!(
            "invalid scale target {arg:?}: {why} (usage: rctl scale NAME=N)"
        ))
    };
    let (name, n) = arg.split_once('=').ok_or_else(|| bad("expected NAME=N"))?;
    if name.is_empty() {
        return Err(bad("missing service name"));
    }
    let replicas: i64 = n
        .trim()
        .parse()
        .map_err(|_| bad("replicas must be a whole number"))?;
    if replicas < 0 {
        return Err(bad("replicas must not be negative"));
    }
    Ok(ScaleTarget {
        service: name.to_string(),
        replicas,
    })
}

impl ScaleArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        let targets = self
            .targets
            .iter()
            .map(|a| parse_target(a))
            .collect::<Result<Vec<_>, _>>()?;
        let conn = &mut g.connect().await?;
        let names: Vec<String> = targets.iter().map(|t| t.service.clone()).collect();
        conn.write(|mut c| {
            let targets = targets.clone();
            async move { c.scale(ScaleRequest { targets }).await }
        })
        .await?;
        for t in &targets {
            println!("{} scaled to {}", t.service, t.replicas);
        }
        if self.wait {
            crate::wait::services(conn, &names, self.timeout).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_are_usage_errors() {
        let t = parse_target("web=5").unwrap();
        assert_eq!((t.service.as_str(), t.replicas), ("web", 5));
        for bad in ["web", "web=abc", "web=-1", "=3", "web=1.5"] {
            let e = parse_target(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
