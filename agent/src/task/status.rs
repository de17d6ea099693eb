//! What a task's status says: the status before anything happened, and a finished one with
//! its exit code and why.

use rctl_api::{clock, pb};

use crate::runtime;
use crate::runtime::state::ContainerDir;

/// The status a node reports for `task` before anything happened to it.
pub fn base_status(task: &pb::Task, node: &str) -> pb::TaskStatus {
    pb::TaskStatus {
        task_id: task.id.clone(),
        service: task.service.clone(),
        node: node.to_string(),
        container_id: task.id.clone(),
        ..Default::default()
    }
}

/// The failure message of a container that exited by itself: its code and last log line.
pub(super) fn exit_reason(dir: &ContainerDir, code: Option<i32>) -> String {
    if let Some(oom) = runtime::container::oom_reason(dir) {
        return oom;
    }
    match code {
        Some(0) | None => String::new(),
        Some(c) => match dir.last_log_line() {
            Some(line) => format!("exited with code {c}: {line}"),
            None => format!("exited with code {c}"),
        },
    }
}

/// Marks `status` finished: exited when stopped or exited 0, failed otherwise, with why.
pub fn finish(status: &mut pb::TaskStatus, code: Option<i32>, stopped: bool, why: String) {
    status.finished_unix_ms = clock::now_unix_ms();
    status.health = String::new();
    status.exit_code = code.unwrap_or(-1);
    let ok = stopped || code == Some(0);
    status.state = if ok {
        pb::TaskState::Exited
    } else {
        pb::TaskState::Failed
    } as i32;
    status.message = if stopped {
        "stopped".into()
    } else if !why.is_empty() {
        why
    } else {
        match code {
            Some(c) => format!("exited with code {c}"),
            None => "container lost".into(),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_containers_exit_cleanly_and_crashes_fail() {
        let mut s = pb::TaskStatus::default();
        finish(&mut s, Some(137), true, String::new());
        assert_eq!(s.state, pb::TaskState::Exited as i32);
        assert_eq!(s.exit_code, 137);
        finish(&mut s, Some(1), false, String::new());
        assert_eq!(s.state, pb::TaskState::Failed as i32);
        assert_eq!(s.message, "exited with code 1");
        finish(&mut s, Some(0), false, String::new());
        assert_eq!(s.state, pb::TaskState::Exited as i32);
    }
}
