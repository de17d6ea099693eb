//! Property tests: no CLI output path panics on stored data (issue 22). Every table and JSON
//! writer in `output.rs` and the per-command renderers get arbitrary strings (empty, huge,
//! control characters, wide and combining unicode) and arbitrary numbers in every field
//! they read; a table stays one line per row.

use proptest::prelude::*;
use rctl_api::pb;

use crate::output::{table, task_rows, TaskJson, TASK_HEADER};

/// A stored string: anything, or a huge one built from awkward pieces.
fn stored() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        1 => Just(String::new()),
        1 => ("[a-z\u{0}\u{1b}\n\t\r漢🦀\u{301}\u{202e}]{1,3}", 0usize..40_000)
            .prop_map(|(s, n)| s.repeat(n)),
    ]
}

/// The same stored value in every string field a renderer reads, so one case covers them.
#[derive(Debug, Clone)]
struct Stored {
    s: String,
    n: u64,
    i: i64,
    f: f64,
}

fn stored_all() -> impl Strategy<Value = Stored> {
    (
        stored(),
        any::<u64>(),
        any::<i64>(),
        prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY)],
    )
        .prop_map(|(s, n, i, f)| Stored { s, n, i, f })
}

fn task_view(v: &Stored) -> pb::TaskView {
    let s = &v.s;
    pb::TaskView {
        task: Some(pb::Task {
            id: s.clone(),
            service: s.clone(),
            node: s.clone(),
            image: s.clone(),
            container_name: s.clone(),
            command: vec![s.clone()],
            args: vec![s.clone()],
            entrypoint: vec![s.clone()],
            env: [(s.clone(), s.clone())].into_iter().collect(),
            workdir: s.clone(),
            user: s.clone(),
            restart_policy: s.clone(),
            container_port: v.n as u32,
            slot: v.n as u32,
            revision: v.n,
            created_unix_ms: v.i,
            ports: vec![pb::PortBinding {
                host_ip: s.clone(),
                protocol: s.clone(),
                host_port: v.n as u32,
                container_port: v.n as u32,
            }],
            mounts: vec![pb::Mount {
                source: s.clone(),
                target: s.clone(),
                kind: s.clone(),
                readonly: false,
            }],
            resources: Some(pb::Resources {
                cpus: v.f,
                memory_bytes: v.n,
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(pb::TaskStatus {
            health: s.clone(),
            endpoint: s.clone(),
            message: s.clone(),
            exit_code: v.i as i32,
            started_unix_ms: v.i,
            finished_unix_ms: v.i,
            ..Default::default()
        }),
        node_ip: s.clone(),
    }
}

fn one_line_per_row(header: &[&str], rows: &[Vec<String>]) {
    let out = table(header, rows);
    assert_eq!(out.lines().count(), rows.len() + 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn tables_take_any_cells(cells in prop::collection::vec(prop::collection::vec(stored(), 0..4), 0..4)) {
        one_line_per_row(&["A", "B", "C"], &cells);
    }

    #[test]
    fn containers_and_tasks_render(v in stored_all()) {
        let view = task_view(&v);
        one_line_per_row(&TASK_HEADER, &task_rows(std::slice::from_ref(&view)));
        serde_json::to_string(&TaskJson::from_view(&view)).unwrap();
        let now = v.i;
        let _ = crate::container::status_text(&view, now);
        let _ = crate::container::ports_text(&view);
        let _ = crate::container::port_lines(&view);
        let image = crate::container::ImageCommand {
            entrypoint: vec![v.s.clone()],
            cmd: vec![v.s.clone()],
        };
        serde_json::to_string(&crate::container::inspect_value(&view, Some(&image))).unwrap();
        serde_json::to_string(&crate::container::inspect_value(&view, None)).unwrap();
        let _ = crate::container::human_duration(v.i);
    }

    #[test]
    fn services_rollouts_and_waits_render(v in stored_all()) {
        let s = &v.s;
        let spec = pb::ServiceSpec {
            name: s.clone(),
            image: s.clone(),
            replicas: v.n as u32,
            command: vec![s.clone()],
            env: [(s.clone(), s.clone())].into_iter().collect(),
            port: Some(pb::PortSpec {
                container: v.n as u32,
                protocol: s.clone(),
                listen: s.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cause = pb::RevisionCause {
            who: s.clone(),
            why: s.clone(),
            unix_ms: v.i,
            automatic: v.n % 2 == 0,
        };
        let svc = pb::Service {
            spec: Some(spec.clone()),
            revision: v.n,
            created_unix_ms: v.i,
            updated_unix_ms: v.i,
            cause: Some(cause.clone()),
            ..Default::default()
        };
        serde_json::to_string(&crate::service::service_json(&svc, v.n as u32, s)).unwrap();
        let canary = pb::CanaryRollout {
            stable_revision: v.n,
            canary_revision: v.n,
            step: v.n as u32,
            step_started_unix_ms: v.i,
            reason: s.clone(),
            steps: vec![pb::CanaryStepRecord {
                percent: v.n as u32,
                canary_requests: v.n,
                canary_errors: v.n,
                stable_requests: v.n,
                stable_errors: v.n,
                canary_p99_us: v.n,
                stable_p99_us: v.n,
                elapsed_ms: v.n,
                verdict: s.clone(),
                ..Default::default()
            }],
            ..Default::default()
        };
        // A failed task of the current revision: its id and message go into the wait's report.
        let mut failed = task_view(&v);
        if let Some(st) = failed.status.as_mut() {
            st.set_state(pb::TaskState::Failed);
        }
        let resp = pb::InspectServiceResponse {
            service: Some(svc.clone()),
            tasks: vec![task_view(&v), failed],
            canary: Some(canary.clone()),
            unplaced: s.clone(),
        };
        serde_json::to_string(&crate::rollout::status_json(&resp)).unwrap();
        let rev = pb::Revision {
            service: s.clone(),
            revision: v.n,
            spec: Some(spec),
            cause: Some(cause),
        };
        serde_json::to_string(&crate::rollout::revision_json(&rev, v.n)).unwrap();
        let _ = crate::rollout::canary_line(s, &canary);
        serde_json::to_string(&crate::rollout::steps_json(&canary)).unwrap();
        let p = crate::wait::progress(&resp);
        let _ = crate::wait::progress_line(s, &p);
    }

    #[test]
    fn nodes_images_stats_and_disk_usage_render(v in stored_all()) {
        let s = &v.s;
        let node = crate::nodes::NodeJson {
            name: s.clone(),
            address: s.clone(),
            state: s.clone(),
            tasks: v.n as u32,
            cpus: v.f,
            memory: v.n,
            labels: [(s.clone(), s.clone())].into_iter().collect(),
            subnet: s.clone(),
            network: crate::nodes::NetworkJson { mode: s.clone(), subnet: s.clone() },
            last_heartbeat: Some(crate::output::rfc3339(v.i)),
            last_heartbeat_unix_ms: v.i,
        };
        for line in crate::nodes::inspect_lines(&node) {
            assert!(!line.contains('\n'));
        }
        serde_json::to_string(&node).unwrap();

        let summary = pb::ImageSummary {
            node: s.clone(),
            reference: s.clone(),
            repository: s.clone(),
            tag: s.clone(),
            id: s.clone(),
            manifest_digest: s.clone(),
            created_unix_ms: v.i,
            pulled_unix_ms: v.i,
            size_bytes: v.n,
            containers: vec![s.clone()],
        };
        one_line_per_row(&["A"; 6], &crate::images::image_rows(std::slice::from_ref(&summary)));
        serde_json::to_string(&crate::images::ImageJson::from_summary(&summary)).unwrap();
        let detail = pb::ImageDetail {
            node: s.clone(),
            summary: Some(summary),
            architecture: s.clone(),
            os: s.clone(),
            config_json: s.clone(),
            layers: vec![pb::LayerInfo {
                digest: s.clone(),
                diff_id: s.clone(),
                chain_id: s.clone(),
                media_type: s.clone(),
                size_bytes: v.n,
                unpacked_bytes: v.n,
            }],
        };
        serde_json::to_string(&crate::images::detail_json(detail)).unwrap();

        let stats = pb::ContainerStats {
            task_id: s.clone(),
            name: s.clone(),
            node: s.clone(),
            cpu_ns: v.n,
            cpu_percent: v.f,
            memory_bytes: v.n,
            memory_limit: v.n / 2,
            pids: v.n,
            net_rx_bytes: v.n,
            net_tx_bytes: v.n,
        };
        one_line_per_row(&["A"; 8], &crate::stats::rows(std::slice::from_ref(&stats)));
        serde_json::to_string(&crate::stats::StatsJson::from_pb(&stats)).unwrap();

        let line = crate::system::line_json(Some(pb::UsageLine {
            total: v.n as u32,
            active: v.n as u32,
            size_bytes: v.n / 3,
            reclaimable_bytes: v.n,
        }));
        let _ = crate::system::reclaimable(&line);
        serde_json::to_string(&line).unwrap();

        let layer = pb::LayerProgress {
            digest: s.clone(),
            bytes_done: v.n,
            bytes_total: v.n / 2,
            ..Default::default()
        };
        let _ = crate::progress::plain_line(s, &layer);
        let _ = crate::progress::bar_line(s, &layer);
        let _ = crate::progress::short(s);
    }
}
