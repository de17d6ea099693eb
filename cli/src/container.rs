//! The container commands besides `run`: `start`, `stop`, `restart`, `kill`, `rm` (several
//! targets each, like Docker: one failure does not stop the others, exit 1 if any failed),
//! `rename`, `port`, `ps` over one-off containers and service tasks, and the container
//! half of `inspect` (Docker-like JSON).

use clap::Args;
use rctl_api::pb::{
    self, ContainerRequest, ListContainersRequest, RenameContainerRequest, TaskState, TaskView,
};
use serde::Serialize;
use serde_json::json;

use crate::client::Conn;
use crate::error::CliError;
use crate::global::Global;
use crate::output::{print_json, print_table, rfc3339, state_name, Format};

/// `rctl ps`.
#[derive(Args, Debug)]
pub struct PsArgs {
    /// Include exited containers and retired tasks.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only short ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// name=, status=, node=, service= or id= (repeatable).
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Only the tasks of this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Only containers and tasks on this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Output format: table (default) or json.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Format,
}

impl PsArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        let filters = parse_filters(&self.filter).map_err(CliError::Usage)?;
        ps(&mut g.connect().await?, self, filters).await
    }
}

/// `rctl start`.
#[derive(Args, Debug)]
pub struct StartArgs {
    /// Containers, by name or id (unique id prefixes work).
    #[arg(required = true)]
    pub targets: Vec<String>,
}

impl StartArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        let req = Default::default();
        each(&mut g.connect().await?, Verb::Start, &self.targets, req).await
    }
}

/// `rctl stop` and `rctl restart`.
#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait before SIGKILL.
    #[arg(short = 't', long = "time")]
    pub time: Option<u64>,
    /// Containers, by name or id (unique id prefixes work).
    #[arg(required = true)]
    pub targets: Vec<String>,
}

impl StopArgs {
    pub async fn stop(self, g: &Global) -> Result<(), CliError> {
        self.run(Verb::Stop, g).await
    }

    pub async fn restart(self, g: &Global) -> Result<(), CliError> {
        self.run(Verb::Restart, g).await
    }

    async fn run(self, verb: Verb, g: &Global) -> Result<(), CliError> {
        let req = ContainerRequest {
            timeout_ms: self.time.map(stop_timeout_ms).unwrap_or(0),
            ..Default::default()
        };
        each(&mut g.connect().await?, verb, &self.targets, req).await
    }
}

/// `-t SECONDS` as the API's grace period; 0 ms means "the default" there, so `-t 0`
/// (kill at once) is sent as 1 ms.
fn stop_timeout_ms(secs: u64) -> u64 {
    (secs * 1000).max(1)
}

/// `rctl kill`.
#[derive(Args, Debug)]
pub struct KillArgs {
    /// The signal: a name (KILL, SIGTERM) or a number.
    #[arg(short = 's', long = "signal", default_value = "KILL")]
    pub signal: String,
    /// Containers, by name or id (unique id prefixes work).
    #[arg(required = true)]
    pub targets: Vec<String>,
}

impl KillArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        let req = ContainerRequest {
            signal: parse_signal(&self.signal).map_err(CliError::Usage)?,
            ..Default::default()
        };
        each(&mut g.connect().await?, Verb::Kill, &self.targets, req).await
    }
}

/// `rctl rm`.
#[derive(Args, Debug)]
pub struct RmArgs {
    /// Also remove running containers (killed first).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Also remove the container's anonymous volumes (named volumes and bind mounts stay).
    #[arg(short = 'v', long)]
    pub volumes: bool,
    /// Containers, by name or id (unique id prefixes work).
    #[arg(required = true)]
    pub targets: Vec<String>,
}

impl RmArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        let req = ContainerRequest {
            force: self.force,
            volumes: self.volumes,
            ..Default::default()
        };
        each(&mut g.connect().await?, Verb::Remove, &self.targets, req).await
    }
}

/// `rctl rename`.
#[derive(Args, Debug)]
pub struct RenameArgs {
    /// The container to rename, by name or id.
    pub old: String,
    /// Its new name.
    pub new: String,
}

impl RenameArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        rename(&mut g.connect().await?, &self.old, &self.new).await
    }
}

/// `rctl port`.
#[derive(Args, Debug)]
pub struct PortArgs {
    /// The container or task (web.1), by name or id.
    pub target: String,
}

impl PortArgs {
    pub async fn run(self, g: &Global) -> Result<(), CliError> {
        port(&mut g.connect().await?, &self.target).await
    }
}

/// A lifecycle verb applied to one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Start,
    Stop,
    Restart,
    Kill,
    Remove,
}

/// Applies `verb` to each target in turn, printing each target as it is done.
async fn each(
    conn: &mut Conn,
    verb: Verb,
    targets: &[String],
    req: ContainerRequest,
) -> Result<(), CliError> {
    let mut failed = false;
    for target in targets {
        let r = ContainerRequest {
            target: target.clone(),
            ..req.clone()
        };
        let mut c = conn.client.clone();
        let res = match verb {
            Verb::Start => c.start_container(r).await,
            Verb::Stop => c.stop_container(r).await,
            Verb::Restart => c.restart_container(r).await,
            Verb::Kill => c.kill_container(r).await,
            Verb::Remove => c.remove_container(r).await,
        };
        match res {
            Ok(_) => println!("{target}"),
            Err(s) => {
                eprintln!("error: {}", conn.err(s));
                failed = true;
            }
        }
    }
    if failed {
        Err(CliError::Exit(1))
    } else {
        Ok(())
    }
}

/// `kill -s`: a signal by name (KILL, SIGTERM) or number.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64)
            .contains(&n)
            .then_some(n)
            .ok_or_else(|| format!("invalid signal {s:?}"));
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    const NAMES: &[(&str, i32)] = &[
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("KILL", 9),
        ("USR1", 10),
        ("USR2", 12),
        ("TERM", 15),
        ("CONT", 18),
        ("STOP", 19),
        ("WINCH", 28),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| format!("invalid signal {s:?}"))
}

async fn rename(conn: &mut Conn, old: &str, new: &str) -> Result<(), CliError> {
    let req = RenameContainerRequest {
        target: old.into(),
        new_name: new.into(),
    };
    conn.client
        .rename_container(req)
        .await
        .map_err(|s| conn.err(s))?;
    Ok(())
}

async fn inspect_one(conn: &mut Conn, target: &str) -> Result<TaskView, tonic::Status> {
    let req = ContainerRequest {
        target: target.into(),
        ..Default::default()
    };
    conn.client
        .inspect_container(req)
        .await?
        .into_inner()
        .container
        .ok_or_else(|| tonic::Status::not_found(format!("no such container: {target}")))
}

/// `rctl port CONTAINER`: `8080/tcp -> 198.18.0.11:8080`, one line per binding.
async fn port(conn: &mut Conn, target: &str) -> Result<(), CliError> {
    let v = inspect_one(conn, target).await.map_err(|s| conn.err(s))?;
    for line in port_lines(&v) {
        println!("{line}");
    }
    Ok(())
}

/// The published ports of a container as `docker port` prints them; for a service task,
/// its port and the endpoint the load balancer sends to (`8080/tcp -> 198.18.0.11:31000`).
pub fn port_lines(v: &TaskView) -> Vec<String> {
    let Some(t) = v.task.as_ref() else {
        return vec![];
    };
    let endpoint = v.status.as_ref().map(|s| s.endpoint.as_str()).unwrap_or("");
    if !t.service.is_empty() && t.container_port > 0 && !endpoint.is_empty() {
        return vec![format!("{}/tcp -> {endpoint}", t.container_port)];
    }
    t.ports
        .iter()
        .map(|p| {
            let ip = host_ip(p);
            format!("{}/{} -> {ip}:{}", p.container_port, proto(p), p.host_port)
        })
        .collect()
}

/// The address a binding listens on, as Docker prints it (every address: 0.0.0.0).
fn host_ip(p: &pb::PortBinding) -> &str {
    if p.host_ip.is_empty() {
        "0.0.0.0"
    } else {
        &p.host_ip
    }
}

fn proto(p: &pb::PortBinding) -> &str {
    if p.protocol.is_empty() {
        "tcp"
    } else {
        &p.protocol
    }
}

/// The container half of `rctl inspect`: Some(JSON) when TARGET names a container or task.
pub async fn inspect_json(
    conn: &mut Conn,
    target: &str,
) -> Result<Option<serde_json::Value>, CliError> {
    match inspect_one(conn, target).await {
        Ok(v) => {
            let image = image_command(conn, &v).await;
            Ok(Some(inspect_value(&v, image.as_ref())))
        }
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(conn.err(s)),
    }
}

/// An image's own command: its config's Entrypoint and Cmd.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageCommand {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

impl ImageCommand {
    /// From an image's OCI config JSON (`{"config": {"Entrypoint": [..], "Cmd": [..]}}`);
    /// anything missing or of another type is empty.
    pub fn from_config(config: &serde_json::Value) -> Self {
        let list = |key: &str| -> Vec<String> {
            config["config"][key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        ImageCommand {
            entrypoint: list("Entrypoint"),
            cmd: list("Cmd"),
        }
    }
}

/// The image's command, when the container runs it (sets no command of its own): what the
/// agent runs is only known from the image on the container's node. None when the
/// container names its own, or the image cannot be read.
async fn image_command(conn: &mut Conn, v: &TaskView) -> Option<ImageCommand> {
    let t = v.task.as_ref()?;
    if !command_of(t).is_empty() || t.override_entrypoint || t.image.is_empty() {
        return None;
    }
    let node = (!t.node.is_empty()).then(|| t.node.clone());
    let images = crate::images::find_images(conn, &t.image, node)
        .await
        .ok()??;
    images
        .first()
        .map(|d| ImageCommand::from_config(&d["config"]))
}

/// Docker's `inspect` shape for one container; `image` is the image's own command, shown
/// as Docker does when the container runs it.
pub fn inspect_value(v: &TaskView, image: Option<&ImageCommand>) -> serde_json::Value {
    let t = v.task.clone().unwrap_or_default();
    let st = v.status.clone().unwrap_or_default();
    let state = st.state();
    let running = state == TaskState::Running;
    let mut argv = command_of(&t);
    let (mut cmd, mut entrypoint) = (
        if t.args.is_empty() {
            t.command.clone()
        } else {
            t.args.clone()
        },
        t.override_entrypoint.then(|| t.entrypoint.clone()),
    );
    if let Some(image) = image.filter(|_| argv.is_empty()) {
        argv = image.entrypoint.iter().chain(&image.cmd).cloned().collect();
        cmd = image.cmd.clone();
        entrypoint = (!image.entrypoint.is_empty()).then(|| image.entrypoint.clone());
    }
    let mut ports = serde_json::Map::new();
    for p in &t.ports {
        ports.insert(
            format!("{}/{}", p.container_port, proto(p)),
            json!([{"HostIp": if p.host_ip.is_empty() { "0.0.0.0" } else { &p.host_ip },
                    "HostPort": p.host_port.to_string()}]),
        );
    }
    let mut env: Vec<String> = t.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.sort();
    let res = t.resources.unwrap_or_default();
    json!({
        "Id": t.id,
        "Name": name_of(&t),
        "Created": rfc3339(t.created_unix_ms),
        "Path": argv.first().cloned().unwrap_or_default(),
        "Args": argv.iter().skip(1).cloned().collect::<Vec<_>>(),
        "Config": {
            "Image": t.image,
            "Env": env,
            "Cmd": cmd,
            "Entrypoint": entrypoint,
            "WorkingDir": t.workdir,
            "User": t.user,
            "Tty": t.tty,
            "OpenStdin": t.stdin_open,
        },
        "State": {
            "Status": docker_state(v),
            "Running": running,
            "Pid": if running { st.pid } else { 0 },
            "ExitCode": if matches!(state, TaskState::Exited | TaskState::Failed) { st.exit_code } else { 0 },
            "Error": st.message,
            "StartedAt": rfc3339(st.started_unix_ms),
            "FinishedAt": rfc3339(st.finished_unix_ms),
            "OOMKilled": st.message.contains("out of memory") || st.message.contains("OOM"),
        },
        "Mounts": t.mounts.iter().map(|m| json!({
            "Type": m.kind, "Source": m.source, "Destination": m.target, "RW": !m.readonly,
        })).collect::<Vec<_>>(),
        "NetworkSettings": { "IPAddress": v.node_ip, "Ports": ports },
        "HostConfig": {
            "RestartPolicy": {
                "Name": if t.restart_policy.is_empty() { "no" } else { &t.restart_policy },
                "MaximumRetryCount": t.restart_max_attempts,
            },
            "Memory": res.memory_bytes,
            "NanoCpus": (res.cpus * 1e9) as u64,
            "AutoRemove": t.auto_remove,
        },
        "Node": t.node,
        "Service": t.service,
    })
}

/// What the container runs as far as the scheduler knows it (the image's defaults are the
/// agent's): the command of a task, or entrypoint + args of a one-off container.
fn command_of(t: &pb::Task) -> Vec<String> {
    if !t.command.is_empty() {
        return t.command.clone();
    }
    let mut v = if t.override_entrypoint {
        t.entrypoint.clone()
    } else {
        vec![]
    };
    v.extend(t.args.iter().cloned());
    v
}

/// A container's name: its --name, or `service.slot` for a task.
fn name_of(t: &pb::Task) -> String {
    if t.service.is_empty() {
        t.container_name.clone()
    } else {
        format!("{}.{}", t.service, t.slot)
    }
}

/// Docker's State.Status word.
fn docker_state(v: &TaskView) -> &'static str {
    match v.status.as_ref().map(|s| s.state()) {
        None | Some(TaskState::Unspecified | TaskState::Pending | TaskState::Starting) => "created",
        Some(TaskState::Running) => "running",
        Some(TaskState::Stopping) => "removing",
        Some(TaskState::Exited | TaskState::Failed) => "exited",
    }
}

/// "3 minutes", "2 seconds", "About an hour" as Docker words durations.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// The STATUS column: "Up 3 minutes", "Exited (0) 2 seconds ago", "Created", ...
pub fn status_text(v: &TaskView, now_ms: i64) -> String {
    let Some(st) = &v.status else {
        return "Created".into();
    };
    let since = |ms: i64| human_duration((now_ms - ms) / 1000);
    match st.state() {
        TaskState::Unspecified | TaskState::Pending => "Created".into(),
        TaskState::Starting if st.exit_code != 0 || st.message.starts_with("restart") => {
            format!("Restarting ({})", st.exit_code)
        }
        TaskState::Starting => "Starting".into(),
        TaskState::Running => {
            let mut s = format!("Up {}", since(st.started_unix_ms));
            if !st.health.is_empty() && st.health != "starting" {
                s.push_str(&format!(" ({})", st.health));
            } else if st.health == "starting" {
                s.push_str(" (health: starting)");
            }
            s
        }
        TaskState::Stopping => "Stopping".into(),
        TaskState::Exited | TaskState::Failed => {
            format!(
                "Exited ({}) {} ago",
                st.exit_code,
                since(st.finished_unix_ms)
            )
        }
    }
}

/// The PORTS column: `0.0.0.0:8080->80/tcp`, or a service task's endpoint.
pub(crate) fn ports_text(v: &TaskView) -> Vec<String> {
    let Some(t) = v.task.as_ref() else {
        return vec![];
    };
    if t.service.is_empty() {
        return t
            .ports
            .iter()
            .map(|p| {
                let ip = host_ip(p);
                format!("{ip}:{}->{}/{}", p.host_port, p.container_port, proto(p))
            })
            .collect();
    }
    let endpoint = v
        .status
        .as_ref()
        .map(|s| s.endpoint.clone())
        .unwrap_or_default();
    if t.container_port > 0 && !endpoint.is_empty() {
        vec![format!("{endpoint}->{}/tcp", t.container_port)]
    } else {
        vec![]
    }
}

/// One row of `ps -o json`: PRODUCT.md's fields, plus kind, command and status.
#[derive(Debug, Serialize)]
pub struct PsJson {
    #[serde(flatten)]
    pub task: crate::output::TaskJson,
    /// "container" (rctl run) or "task" (of a service).
    pub kind: &'static str,
    pub command: String,
    pub status: String,
}

/// `ps` filters: name=, status=, node=, service= (several of one key: any; of several keys: all).
pub fn parse_filters(filters: &[String]) -> Result<Vec<(String, String)>, String> {
    filters
        .iter()
        .map(|f| match f.split_once('=') {
            Some((k @ ("name" | "status" | "node" | "service" | "id"), v)) => {
                Ok((k.to_string(), v.to_string()))
            }
            _ => Err(format!(
                "invalid filter {f:?} (want name=, status=, node=, service= or id=)"
            )),
        })
        .collect()
}

/// Docker's status filter word for a row: created, running, exited, ...
fn status_word(v: &TaskView) -> &'static str {
    match docker_state(v) {
        "removing" => "running",
        s => s,
    }
}

fn keep(v: &TaskView, filters: &[(String, String)]) -> bool {
    let t = v.task.clone().unwrap_or_default();
    let name = name_of(&t);
    let test = |key: &str, f: &dyn Fn(&str) -> bool| {
        let vals: Vec<&str> = filters
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        vals.is_empty() || vals.into_iter().any(f)
    };
    test("name", &|x| name.contains(x))
        && test("id", &|x| t.id.starts_with(x))
        && test("status", &|x| {
            x == status_word(v)
                || x == state_name(v.status.as_ref().map(|s| s.state()).unwrap_or_default())
        })
        && test("node", &|x| t.node == x)
        && test("service", &|x| t.service == x)
}

/// `rctl ps`: one-off containers and service tasks, newest first.
async fn ps(conn: &mut Conn, a: PsArgs, filters: Vec<(String, String)>) -> Result<(), CliError> {
    let PsArgs {
        all,
        quiet,
        service,
        node,
        output: format,
        ..
    } = a;
    // Asking for exited ones means looking at all of them.
    let all = all || filters.iter().any(|(k, v)| k == "status" && v != "running");
    let req = ListContainersRequest {
        all,
        node: node.unwrap_or_default(),
        service: service.clone().unwrap_or_default(),
    };
    let resp = conn
        .client
        .list_containers(req)
        .await
        .map_err(|s| conn.err(s))?
        .into_inner();
    let rows: Vec<&TaskView> = resp
        .containers
        .iter()
        .filter(|v| keep(v, &filters))
        .collect();
    let now = rctl_api::clock::now_unix_ms();
    if quiet {
        for v in rows {
            let id = v.task.as_ref().map(|t| t.id.as_str()).unwrap_or_default();
            // By characters: a stored id need not be ASCII, and a byte slice could split one.
            println!("{}", id.chars().take(12).collect::<String>());
        }
        return Ok(());
    }
    match format {
        Format::Json => print_json(
            &rows
                .iter()
                .map(|v| {
                    let t = v.task.clone().unwrap_or_default();
                    let mut task = crate::output::TaskJson::from_view(v);
                    if t.service.is_empty() {
                        task.name = t.container_name.clone();
                        task.ports = ports_text(v);
                    }
                    PsJson {
                        task,
                        kind: if t.service.is_empty() {
                            "container"
                        } else {
                            "task"
                        },
                        command: command_of(&t).join(" "),
                        status: status_text(v, now),
                    }
                })
                .collect::<Vec<_>>(),
        ),
        Format::Table => {
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|v| {
                    let t = v.task.clone().unwrap_or_default();
                    let mut cmd = command_of(&t).join(" ");
                    if cmd.chars().count() > 20 {
                        cmd = format!("{}…", cmd.chars().take(19).collect::<String>());
                    }
                    vec![
                        t.id.chars().take(12).collect(),
                        t.image.clone(),
                        format!("\"{cmd}\""),
                        crate::output::ago(t.created_unix_ms),
                        status_text(v, now),
                        ports_text(v).join(", "),
                        name_of(&t),
                        t.node.clone(),
                        t.service.clone(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "CONTAINER ID",
                    "IMAGE",
                    "COMMAND",
                    "CREATED",
                    "STATUS",
                    "PORTS",
                    "NAMES",
                    "NODE",
                    "SERVICE",
                ],
                &table,
            );
            // Like `docker service ps`' "no suitable node": say what is missing and why.
            let unplaced = conn
                .client
                .list_tasks(pb::ListTasksRequest {
                    service: service.unwrap_or_default(),
                    node: String::new(),
                    all: false,
                })
                .await
                .map(|r| r.into_inner().unplaced)
                .unwrap_or_default();
            let mut unplaced: Vec<_> = unplaced.into_iter().collect();
            unplaced.sort();
            for (service, why) in unplaced {
                println!("{service}: not placed: {why}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: TaskState, code: i32, started: i64, finished: i64) -> TaskView {
        TaskView {
            task: Some(pb::Task::default()),
            status: Some(pb::TaskStatus {
                state: state as i32,
                exit_code: code,
                started_unix_ms: started,
                finished_unix_ms: finished,
                ..Default::default()
            }),
            node_ip: String::new(),
        }
    }

    #[test]
    fn status_strings_are_dockers() {
        let now = 1_000_000;
        assert_eq!(
            status_text(&view(TaskState::Running, 0, now - 180_000, 0), now),
            "Up 3 minutes"
        );
        assert_eq!(
            status_text(&view(TaskState::Exited, 0, 0, now - 2_000), now),
            "Exited (0) 2 seconds ago"
        );
        assert_eq!(
            status_text(&view(TaskState::Failed, 7, 0, now - 1_000), now),
            "Exited (7) 1 second ago"
        );
        let created = TaskView {
            task: Some(pb::Task::default()),
            status: None,
            node_ip: String::new(),
        };
        assert_eq!(status_text(&created, now), "Created");
    }

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("sigterm").unwrap(), 15);
        assert_eq!(parse_signal("10").unwrap(), 10);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
    }

    #[test]
    fn filters_are_checked() {
        assert!(parse_filters(&["name=web".into()]).is_ok());
        assert!(parse_filters(&["color=red".into()]).is_err());
        assert!(parse_filters(&["name".into()]).is_err());
    }
}
