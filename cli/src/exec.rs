//! `rctl exec [-i] [-t] [-e K=V] [-u USER] [-w DIR] TARGET CMD...`: runs a process in a
//! running container on whichever host it is, through the scheduler and that host's agent.
//! The exit code is the process's (126: it could not be started, 127: not found).

use rctl_api::pb::{stream_input, ExecStart};

use clap::Args;

use crate::attach::{session, window_size};
use crate::client::Conn;
use crate::error::CliError;
use crate::global::Global;

/// What `exec` was asked to run.
#[derive(Args, Debug, Clone, Default)]
pub struct ExecArgs {
    /// Keep stdin open and stream it to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a terminal (the local one goes into raw mode).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable (NAME=VALUE, or NAME for this side's value).
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Run as this user (name, uid or uid:gid).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// The running container or task (web.1), by name or id.
    pub target: String,
    /// The command and its arguments (everything after TARGET).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

impl ExecArgs {
    /// Ends with the command's exit code, which becomes rctl's.
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        validate(&self)?;
        Err(CliError::Exit(exec(&g.connect().await?, self).await?))
    }
}

/// Refuses what no container could run, before anything is sent.
pub fn validate(a: &ExecArgs) -> Result<(), CliError> {
    if a.cmd.first().is_none_or(|c| c.is_empty()) {
        return Err(CliError::Usage(
            "exec needs a command: rctl exec TARGET CMD [ARG...]".into(),
        ));
    }
    if let Some(bad) = a
        .env
        .iter()
        .find(|e| e.split('=').next().unwrap_or("").is_empty())
    {
        return Err(CliError::Usage(format!(
            "bad -e {bad:?}: expected NAME=VALUE"
        )));
    }
    Ok(())
}

async fn exec(conn: &Conn, a: ExecArgs) -> Result<i32, CliError> {
    let (rows, cols) = if a.tty {
        window_size().unwrap_or((0, 0))
    } else {
        (0, 0)
    };
    let start = ExecStart {
        target: a.target,
        cmd: a.cmd,
        env: a
            .env
            .into_iter()
            // Docker's `-e NAME`: this side's value of NAME.
            .filter_map(|e| match e.split_once('=') {
                Some(_) => Some(e),
                None => std::env::var(&e).ok().map(|v| format!("{e}={v}")),
            })
            .collect(),
        user: a.user.unwrap_or_default(),
        workdir: a.workdir.unwrap_or_default(),
        tty: a.tty,
        stdin: a.interactive,
        rows,
        cols,
    };
    session(conn, stream_input::Kind::Exec(start), a.tty, a.interactive).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_and_named_variables_are_required() {
        let ok = ExecArgs {
            target: "web.1".into(),
            cmd: vec!["sh".into()],
            env: vec!["A=1".into(), "HOME".into()],
            ..Default::default()
        };
        assert!(validate(&ok).is_ok());
        let no_cmd = ExecArgs {
            cmd: vec![],
            ..ok.clone()
        };
        assert_eq!(validate(&no_cmd).unwrap_err().exit_code(), 2);
        let bad_env = ExecArgs {
            env: vec!["=x".into()],
            ..ok
        };
        assert!(validate(&bad_env)
            .unwrap_err()
            .to_string()
            .contains("NAME=VALUE"));
    }
}
