//! What a container runs: the command, environment and working directory, resolved from the
//! image config and the task as Docker does (task command replaces Entrypoint+Cmd).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rctl_api::pb;

use crate::image::RunConfig;

/// PATH when neither the image nor the task sets one (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("no command: the task sets none and the image has no Entrypoint or Cmd")]
    NoCommand,
    #[error("executable {0:?} not found in the image")]
    NotFound(String),
    /// It exists but cannot be run (not a regular file with an x bit): execve's EACCES.
    #[error("{0:?} cannot be run: permission denied (not an executable file)")]
    NotExecutable(String),
}

/// What a path in the container is, as far as running it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Missing,
    /// A regular file with an x bit.
    Executable,
    /// Anything else that exists: a directory, a file without an x bit.
    Other,
}

/// The argv to run: the task's command when it has one, else the image's Entrypoint + Cmd.
pub fn resolve_argv(task_command: &[String], image: &RunConfig) -> Result<Vec<String>, SpecError> {
    let argv: Vec<String> = if !task_command.is_empty() {
        task_command.to_vec()
    } else {
        let mut v = image.entrypoint.clone().unwrap_or_default();
        v.extend(image.cmd.clone().unwrap_or_default());
        v
    };
    if argv.is_empty() || argv[0].is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(argv)
}

/// The argv of a task, one-off containers included: a service's `command` replaces the
/// image's Entrypoint+Cmd; `rctl run`'s `--entrypoint` replaces the Entrypoint (and, as in
/// Docker, drops the image's Cmd) and its `args` replace the Cmd.
pub fn resolve_task_argv(task: &pb::Task, image: &RunConfig) -> Result<Vec<String>, SpecError> {
    if !task.command.is_empty() || (!task.override_entrypoint && task.args.is_empty()) {
        return resolve_argv(&task.command, image);
    }
    let mut argv = if task.override_entrypoint {
        task.entrypoint.clone()
    } else {
        image.entrypoint.clone().unwrap_or_default()
    };
    if !task.args.is_empty() {
        argv.extend(task.args.iter().cloned());
    } else if !task.override_entrypoint {
        argv.extend(image.cmd.clone().unwrap_or_default());
    }
    if argv.is_empty() || argv[0].is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(argv)
}

/// The environment: image Env, overridden by the task's env, then HOSTNAME; PATH defaulted.
/// Order is kept (image first) so the result is stable.
pub fn resolve_env(
    image_env: &[String],
    task_env: &HashMap<String, String>,
    hostname: &str,
) -> Vec<String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match vars.iter_mut().find(|(key, _)| key == k) {
        Some(slot) => slot.1 = v.to_string(),
        None => vars.push((k.to_string(), v.to_string())),
    };
    for kv in image_env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(k, v);
    }
    let mut task: Vec<_> = task_env.iter().collect();
    task.sort();
    for (k, v) in task {
        set(k, v);
    }
    set("HOSTNAME", hostname);
    if !vars.iter().any(|(k, _)| k == "PATH") {
        vars.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Finds `argv0` the way execvp would, but in the container's PATH (glibc's execvpe
/// searches the caller's PATH, not the new environment's). Like execvp, a PATH entry that
/// exists but cannot be run is skipped, and reported only when nothing runnable is found:
/// the difference between Docker's 126 (cannot be invoked) and 127 (not found).
pub fn find_executable(
    argv0: &str,
    env: &[String],
    kind: impl Fn(&Path) -> FileKind,
) -> Result<PathBuf, SpecError> {
    let candidates: Vec<PathBuf> = if argv0.contains('/') {
        vec![PathBuf::from(argv0)]
    } else {
        let path = env
            .iter()
            .find_map(|kv| kv.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(argv0))
            .collect()
    };
    let mut seen = false;
    for p in candidates {
        match kind(&p) {
            FileKind::Executable => return Ok(p),
            FileKind::Other => seen = true,
            FileKind::Missing => {}
        }
    }
    Err(if seen {
        SpecError::NotExecutable(argv0.to_string())
    } else {
        SpecError::NotFound(argv0.to_string())
    })
}

/// The working directory: the image's, or `/`.
pub fn resolve_workdir(image: &RunConfig) -> String {
    match image.working_dir.as_deref() {
        Some(d) if !d.is_empty() => d.to_string(),
        _ => "/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> RunConfig {
        RunConfig {
            env: Some(vec!["PATH=/bin".into(), "A=1".into()]),
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["arg".into()]),
            working_dir: None,
            user: None,
            stop_signal: None,
            volumes: None,
        }
    }

    #[test]
    fn task_command_replaces_entrypoint_and_cmd() {
        let argv = resolve_argv(&["sh".into(), "-c".into(), "x".into()], &image()).unwrap();
        assert_eq!(argv, ["sh", "-c", "x"]);
        assert_eq!(resolve_argv(&[], &image()).unwrap(), ["/entry", "arg"]);
        assert_eq!(
            resolve_argv(&[], &RunConfig::default()),
            Err(SpecError::NoCommand)
        );
    }

    #[test]
    fn run_args_replace_cmd_and_entrypoint_drops_it() {
        let t = |ep: Option<&[&str]>, args: &[&str]| pb::Task {
            override_entrypoint: ep.is_some(),
            entrypoint: ep
                .unwrap_or_default()
                .iter()
                .map(|s| s.to_string())
                .collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let argv = |task: pb::Task| resolve_task_argv(&task, &image()).unwrap();
        assert_eq!(argv(t(None, &[])), ["/entry", "arg"]);
        assert_eq!(argv(t(None, &["x"])), ["/entry", "x"]);
        assert_eq!(argv(t(Some(&["sh"]), &[])), ["sh"]);
        assert_eq!(
            argv(t(Some(&["sh"]), &["-c", "true"])),
            ["sh", "-c", "true"]
        );
        assert_eq!(
            resolve_task_argv(&t(Some(&[]), &[]), &image()),
            Err(SpecError::NoCommand)
        );
    }

    #[test]
    fn env_merges_image_task_and_hostname() {
        let task = HashMap::from([("A".to_string(), "2".to_string()), ("B".into(), "3".into())]);
        let env = resolve_env(&image().env.unwrap(), &task, "abc");
        assert_eq!(env, ["PATH=/bin", "A=2", "B=3", "HOSTNAME=abc"]);
        let env = resolve_env(&[], &HashMap::new(), "h");
        assert_eq!(
            env,
            ["HOSTNAME=h".to_string(), format!("PATH={DEFAULT_PATH}")]
        );
    }

    #[test]
    fn executables_are_found_in_the_container_path() {
        let env = vec!["PATH=/usr/bin:/bin".to_string()];
        let only = |exe: &'static str| {
            move |p: &Path| {
                if p == Path::new(exe) {
                    FileKind::Executable
                } else {
                    FileKind::Missing
                }
            }
        };
        let found = find_executable("sh", &env, only("/bin/sh")).unwrap();
        assert_eq!(found, PathBuf::from("/bin/sh"));
        assert!(matches!(
            find_executable("nope", &env, |_| FileKind::Missing),
            Err(SpecError::NotFound(_))
        ));
        assert_eq!(
            find_executable("./x", &env, |_| FileKind::Executable).unwrap(),
            PathBuf::from("./x")
        );
        assert!(matches!(
            find_executable("/nope", &env, |_| FileKind::Missing),
            Err(SpecError::NotFound(_))
        ));
        // Exists but cannot be run: 126's case, not 127's.
        assert!(matches!(
            find_executable("/etc/passwd", &env, |_| FileKind::Other),
            Err(SpecError::NotExecutable(_))
        ));
        // A non-executable entry earlier in PATH does not hide a runnable one later.
        let later = |p: &Path| match p.to_str() {
            Some("/usr/bin/sh") => FileKind::Other,
            Some("/bin/sh") => FileKind::Executable,
            _ => FileKind::Missing,
        };
        assert_eq!(
            find_executable("sh", &env, later).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert!(matches!(
            find_executable("sh", &env, |p| if p == Path::new("/bin/sh") {
                FileKind::Other
            } else {
                FileKind::Missing
            }),
            Err(SpecError::NotExecutable(_))
        ));
        assert_eq!(resolve_workdir(&RunConfig::default()), "/");
    }
}
