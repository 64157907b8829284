//! `simulate` scenarios from YAML fixtures (tests/fixtures/sim): the decision code on an
//! in-memory cluster, with the launcher's rule and vLLM's startup check.

use std::path::PathBuf;

use k8s_openapi::jiff::Timestamp;
use vllm_operator::api::{Quantization, VllmDeploymentStatus};
use vllm_operator::cli::plan::{fleet_time, offline_architecture, read_deployments, read_fleet};
use vllm_operator::fit::passes_startup_check;
use vllm_operator::sim::{ExternalEvent, ExternalKind, SimConfig, SimDeployment, SimReport, run};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sim")
        .join(name)
}

fn simulate(fleet: &str, deployments: &[&str], external: &[ExternalEvent]) -> SimReport {
    let gpunodes = read_fleet(&fixture(fleet)).unwrap().gpunodes;
    let files: Vec<PathBuf> = deployments.iter().map(|d| fixture(d)).collect();
    let deps = read_deployments(&files).unwrap();
    let start: Timestamp = fleet_time(&gpunodes).unwrap();
    let sims = deps
        .into_iter()
        .map(|object| SimDeployment {
            arch: offline_architecture(&object),
            object,
        })
        .collect();
    run(gpunodes, sims, external, &SimConfig::default(), start)
}

fn status<'a>(r: &'a SimReport, name: &str) -> &'a VllmDeploymentStatus {
    &r.deployments
        .iter()
        .find(|(d, _)| d.metadata.name.as_deref() == Some(name))
        .unwrap()
        .1
}

fn condition<'a>(s: &'a VllmDeploymentStatus, type_: &str) -> (&'a str, &'a str, &'a str) {
    let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

#[test]
fn the_classic_desktop_gpu_starts_where_0_9_would_fail() {
    let r = simulate("fleet-desktop.yaml", &["llama-1b.yaml"], &[]);
    assert!(r.settled);
    assert_eq!(r.startup_failures, 0);
    let s = status(&r, "llama-1b");
    assert_eq!(s.ready_replicas, 1);
    assert_eq!(condition(s, "Ready").0, "True");
    let u = s.placements[0].gpu_memory_utilization;
    assert!(u < 0.9, "{u}");
    // vLLM's default would not have passed on this GPU (6.92 of 8 GiB free, CUDA total 7.76).
    let cuda_total = 8_589_934_592 - 260_046_848;
    assert!(!passes_startup_check(
        cuda_total,
        7_430_346_834 - (512 << 20),
        0.9
    ));
    assert!(passes_startup_check(
        cuda_total,
        7_430_346_834 - (512 << 20),
        u
    ));
}

#[test]
fn two_deployments_racing_for_one_gpu_do_not_both_start() {
    let r = simulate(
        "fleet-one-h100.yaml",
        &["llama-8b-a.yaml", "llama-8b-b.yaml"],
        &[],
    );
    assert_eq!(r.startup_failures, 0);
    assert_eq!(r.launcher_refusals, 0);
    let a = status(&r, "llama-8b-a");
    let b = status(&r, "llama-8b-b");
    assert_eq!(a.ready_replicas, 1);
    assert_eq!(b.ready_replicas, 0);
    let (st, reason, message) = condition(b, "Admitted");
    assert_eq!((st, reason), ("False", "InsufficientGpuMemory"));
    assert!(message.contains("h100-solo"), "{message}");
    assert_eq!(condition(b, "Stalled").0, "False");
}

#[test]
fn a_fleet_where_only_fp8_fits() {
    let r = simulate("fleet-two-h100.yaml", &["llama-70b-fp8.yaml"], &[]);
    assert_eq!(r.startup_failures, 0);
    let s = status(&r, "llama-70b");
    assert_eq!(s.ready_replicas, 1);
    assert_eq!(s.placements[0].quantization, Quantization::Fp8);
    assert_eq!(s.placements[0].tensor_parallel_size, 2);
}

#[test]
fn a_70b_model_gets_tensor_parallel_4() {
    let r = simulate("fleet-four-a100.yaml", &["llama-70b-tp.yaml"], &[]);
    assert_eq!(r.startup_failures, 0);
    let s = status(&r, "llama-70b");
    assert_eq!(s.ready_replicas, 1);
    assert_eq!(s.placements[0].tensor_parallel_size, 4);
    assert_eq!(s.placements[0].quantization, Quantization::None);
    assert_eq!(s.tensor_parallel.as_deref(), Some("4"));
}

#[test]
fn a_stale_agent_report_keeps_replicas_off_that_node() {
    let r = simulate("fleet-stale.yaml", &["llama-8b-a.yaml"], &[]);
    let s = status(&r, "llama-8b-a");
    assert_eq!(s.ready_replicas, 1);
    assert_eq!(s.placements[0].node.as_deref(), Some("small-fresh"));
}

#[test]
fn a_replica_that_only_fits_a_stale_node_waits_with_the_reason() {
    let r = simulate("fleet-stale.yaml", &["llama-8b-h100-only.yaml"], &[]);
    assert!(r.settled, "a waiting deployment must not churn its status");
    assert_eq!(r.startup_failures, 0);
    let s = status(&r, "llama-8b-h100");
    assert_eq!(s.ready_replicas, 0);
    let (_, reason, message) = condition(s, "Admitted");
    assert_eq!(reason, "InsufficientGpuMemory");
    assert!(
        message.contains(
            "big-stale: agent report is stale (last at 2026-11-26T11:50:00Z, more than 2m0s ago)"
        ),
        "{message}"
    );
}

#[test]
fn an_agent_that_stops_reporting_makes_its_node_stale_for_later_replicas() {
    // The fresh node's agent stops at step 0; a replica placed at once still lands there, but
    // the report is never refreshed, so after two minutes nothing new would go there.
    let stop = ExternalEvent {
        step: 0,
        node: "small-fresh".into(),
        gpu: None,
        bytes: None,
        kind: ExternalKind::Stale,
    };
    let r = simulate("fleet-stale.yaml", &["llama-8b-a.yaml"], &[stop]);
    assert!(r.events.iter().any(|e| e.reason == "AgentStopped"));
    assert_eq!(
        status(&r, "llama-8b-a").placements[0].node.as_deref(),
        Some("small-fresh")
    );
}

#[test]
fn a_deleted_node_s_replica_is_replaced_elsewhere() {
    let r = simulate("fleet-two-nodes.yaml", &["llama-8b-a.yaml"], &[]);
    let first = status(&r, "llama-8b-a").placements[0].node.clone().unwrap();
    let delete = ExternalEvent {
        step: 5,
        node: first.clone(),
        gpu: None,
        bytes: None,
        kind: ExternalKind::DeleteNode,
    };
    let r = simulate("fleet-two-nodes.yaml", &["llama-8b-a.yaml"], &[delete]);
    assert_eq!(r.startup_failures, 0);
    let s = status(&r, "llama-8b-a");
    assert_eq!(s.ready_replicas, 1);
    let now_on = s.placements[0].node.clone().unwrap();
    assert_ne!(now_on, first);
    assert!(
        r.events
            .iter()
            .any(|e| e.reason == "PodFailed" && e.message.contains("deleted")),
        "{:?}",
        r.events
    );
}

#[test]
fn memory_taken_between_placement_and_start_is_absorbed_by_the_launcher() {
    let calm = simulate("fleet-one-h100.yaml", &["llama-8b-a.yaml"], &[]);
    let placed_at = calm
        .events
        .iter()
        .find(|e| e.reason == "Placed")
        .unwrap()
        .step;
    let planned = status(&calm, "llama-8b-a").placements[0].gpu_memory_utilization;
    let race = ExternalEvent {
        step: placed_at + 1,
        node: "h100-solo".into(),
        gpu: Some(0),
        bytes: Some(20 << 30),
        kind: ExternalKind::Memory,
    };
    let r = simulate("fleet-one-h100.yaml", &["llama-8b-a.yaml"], &[race]);
    assert_eq!(r.startup_failures, 0);
    assert_eq!(r.launcher_refusals, 0);
    assert_eq!(status(&r, "llama-8b-a").ready_replicas, 1);
    let started = r.events.iter().find(|e| e.reason == "Started").unwrap();
    assert!(
        started.message.contains(&format!("(planned {planned:.2})")),
        "{}",
        started.message
    );
    assert!(
        !started
            .message
            .contains(&format!("utilization {planned:.2}")),
        "the launcher should have lowered it: {}",
        started.message
    );
}

#[test]
fn memory_taken_so_the_model_no_longer_fits_is_refused_and_re_planned() {
    let calm = simulate("fleet-two-nodes.yaml", &["llama-8b-a.yaml"], &[]);
    let placed_at = calm
        .events
        .iter()
        .find(|e| e.reason == "Placed")
        .unwrap()
        .step;
    let node = status(&calm, "llama-8b-a").placements[0]
        .node
        .clone()
        .unwrap();
    // Both GPUs of the chosen node lose 75 GiB right before the pod starts.
    let race: Vec<ExternalEvent> = (0..2)
        .map(|gpu| ExternalEvent {
            step: placed_at + 1,
            node: node.clone(),
            gpu: Some(gpu),
            bytes: Some(75 << 30),
            kind: ExternalKind::Memory,
        })
        .collect();
    let r = simulate("fleet-two-nodes.yaml", &["llama-8b-a.yaml"], &race);
    assert_eq!(
        r.startup_failures, 0,
        "vLLM itself must never fail the check"
    );
    assert_eq!(r.launcher_refusals, 1);
    let s = status(&r, "llama-8b-a");
    assert_eq!(s.ready_replicas, 1);
    assert_ne!(s.placements[0].node.as_deref(), Some(node.as_str()));
    assert!(
        s.placements[0]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("re-planned after"),
        "{:?}",
        s.placements[0].reason
    );
}

#[test]
fn the_readme_example_settles_with_every_deployment_ready() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let gpunodes = read_fleet(&root.join("fleet.yaml")).unwrap().gpunodes;
    let files: Vec<PathBuf> = [
        "llama-3.2-1b.yaml",
        "llama-3.1-8b.yaml",
        "llama-3.1-70b.yaml",
    ]
    .iter()
    .map(|f| root.join(f))
    .collect();
    let deps = read_deployments(&files).unwrap();
    let start = fleet_time(&gpunodes).unwrap();
    let sims = deps
        .into_iter()
        .map(|object| SimDeployment {
            arch: offline_architecture(&object),
            object,
        })
        .collect();
    let r = run(gpunodes, sims, &[], &SimConfig::default(), start);
    assert!(r.settled);
    assert_eq!(r.startup_failures, 0);
    for (d, s) in &r.deployments {
        assert_eq!(s.ready_replicas, d.spec.replicas, "{:?}", d.metadata.name);
    }
    let json = vllm_operator::cli::simulate::report_json(&r);
    for key in ["deployments", "gpus", "startup_failures", "events"] {
        assert!(json.get(key).is_some(), "{key}");
    }
    let d0 = &json["deployments"][0];
    for key in [
        "name",
        "namespace",
        "replicas",
        "ready_replicas",
        "conditions",
        "placements",
    ] {
        assert!(d0.get(key).is_some(), "{key}");
    }
}

#[test]
fn two_pack_deployments_share_one_time_sliced_gpu() {
    let r = simulate(
        "fleet-shared-h100.yaml",
        &["llama-8b-pack-a.yaml", "llama-8b-pack-b.yaml"],
        &[],
    );
    assert!(r.settled);
    assert_eq!(r.startup_failures, 0);
    assert_eq!(r.launcher_refusals, 0);
    for name in ["llama-8b-pack-a", "llama-8b-pack-b"] {
        let s = status(&r, name);
        assert_eq!(s.ready_replicas, 1, "{name}: {:?}", s.placements);
        assert_eq!(s.placements[0].node.as_deref(), Some("h100-shared"));
    }
    let on_gpu0 = r
        .world
        .pods
        .iter()
        .filter(|p| p.held.iter().any(|(i, _)| *i == 0))
        .count();
    assert_eq!(on_gpu0, 2, "the kubelet hands the one GPU to both pods");
}

#[test]
fn a_hand_written_fleet_without_spec_is_accepted() {
    let gpunodes = read_fleet(&fixture("fleet-handwritten.yaml"))
        .unwrap()
        .gpunodes;
    assert_eq!(gpunodes.len(), 1);
    let r = simulate("fleet-handwritten.yaml", &["llama-8b-a.yaml"], &[]);
    assert_eq!(status(&r, "llama-8b-a").ready_replicas, 1);
}

#[test]
fn a_failed_pod_s_replacement_waits_until_the_old_pod_is_gone() {
    let calm = simulate("fleet-two-nodes.yaml", &["llama-8b-a.yaml"], &[]);
    let placed_at = calm
        .events
        .iter()
        .find(|e| e.reason == "Placed")
        .unwrap()
        .step;
    let node = status(&calm, "llama-8b-a").placements[0]
        .node
        .clone()
        .unwrap();
    let race: Vec<ExternalEvent> = (0..2)
        .map(|gpu| ExternalEvent {
            step: placed_at + 1,
            node: node.clone(),
            gpu: Some(gpu),
            bytes: Some(75 << 30),
            kind: ExternalKind::Memory,
        })
        .collect();
    let r = simulate("fleet-two-nodes.yaml", &["llama-8b-a.yaml"], &race);
    assert_eq!(r.launcher_refusals, 1);
    assert!(
        r.world.create_conflicts.is_empty(),
        "created over a terminating pod: {:?}",
        r.world.create_conflicts
    );
    assert!(!r.events.iter().any(|e| e.reason == "CreateRejected"));
    assert_eq!(status(&r, "llama-8b-a").ready_replicas, 1);
}

#[test]
fn a_released_pod_that_never_schedules_is_placed_elsewhere_after_the_timeout() {
    let calm = simulate("fleet-two-nodes.yaml", &["llama-8b-a.yaml"], &[]);
    let placed_at = calm
        .events
        .iter()
        .find(|e| e.reason == "Placed")
        .unwrap()
        .step;
    let node = status(&calm, "llama-8b-a").placements[0]
        .node
        .clone()
        .unwrap();
    let taint = ExternalEvent {
        step: placed_at + 1,
        node: node.clone(),
        gpu: None,
        bytes: None,
        kind: ExternalKind::Unschedulable,
    };
    let r = simulate("fleet-two-nodes.yaml", &["llama-8b-a.yaml"], &[taint]);
    assert!(r.settled);
    let s = status(&r, "llama-8b-a");
    assert_eq!(s.ready_replicas, 1);
    assert_ne!(s.placements[0].node.as_deref(), Some(node.as_str()));
    let reason = s.placements[0].reason.as_deref().unwrap();
    assert!(
        reason.starts_with("re-planned after not started 5 min after release to"),
        "{reason}"
    );
    let e = r
        .events
        .iter()
        .find(|e| e.reason == "Unschedulable")
        .unwrap();
    assert_eq!(e.type_, "Warning");
    // Not before the timeout: 300 s at 10 s a step.
    assert!(e.step >= placed_at + 1 + 30, "{} vs {placed_at}", e.step);
}
