//! The reconcile decision on its own: scale up and down, rollout one replica at a time (surge
//! when there is room, delete-first when there is not), failed pods replaced with a reason,
//! invalid models stalled, admission queue.

use k8s_openapi::jiff::Timestamp;
use vllm_operator::api::{
    GpuInfo, GpuMemory, GpuNode, GpuNodeSpec, GpuNodeStatus, PodRef, VllmDeploymentSpec,
};
use vllm_operator::controller::decide::{
    Action, DeploymentView, Outcome, PodPhase, PodView, STUCK_TIMEOUT, StuckKind, reconcile,
};
use vllm_operator::controller::failures::FailureBook;
use vllm_operator::model::{Architecture, VllmFamily, catalog};
use vllm_operator::plan::{Fleet, Ledger};

const NOW: &str = "2026-11-26T12:00:00Z";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

/// One node with `n` idle A100 80GB; GPUs listed in `allocated` belong to `pods`.
fn fleet(n: u32, allocated: &[(u32, &str)]) -> Fleet {
    let gpus = (0..n)
        .map(|i| {
            let owner = allocated
                .iter()
                .find(|(g, _)| *g == i)
                .map(|(_, p)| PodRef {
                    namespace: "ml".into(),
                    name: p.to_string(),
                });
            let free = if owner.is_some() {
                4 << 30
            } else {
                84_974_239_744
            };
            GpuInfo {
                index: i,
                uuid: format!("GPU-0000000{i}-0000-0000-0000-000000000000"),
                product: "NVIDIA A100-SXM4-80GB".into(),
                compute_capability: "8.0".into(),
                memory: GpuMemory {
                    total_bytes: 85_899_345_920,
                    free_bytes: free,
                    used_bytes: 85_899_345_920 - free,
                    reserved_bytes: 515_899_392,
                },
                allocated_to: owner,
                ..Default::default()
            }
        })
        .collect();
    let mut g = GpuNode::new("node-a", GpuNodeSpec {});
    g.status = Some(GpuNodeStatus {
        node_name: "node-a".into(),
        observed_at: NOW.into(),
        gpus,
        ..Default::default()
    });
    Fleet::from_objects(&[g], &[], now(), std::time::Duration::from_secs(120))
}

fn spec(replicas: i32) -> VllmDeploymentSpec {
    let mut s: VllmDeploymentSpec =
        serde_norway::from_str("model: {name: meta-llama/Llama-3.1-8B-Instruct}\nmaxModelLen: 8192\ntensorParallel: {sizes: [1]}\n").unwrap();
    s.replicas = replicas;
    s
}

fn arch() -> Architecture {
    catalog::lookup("meta-llama/Llama-3.1-8B-Instruct")
        .unwrap()
        .architecture()
        .unwrap()
}

fn pod(replica: u32, hash: &str, phase: PodPhase) -> PodView {
    PodView {
        name: format!("llm-{replica}-{hash}"),
        replica,
        spec_hash: hash.into(),
        phase,
        placement: None,
        observed: Default::default(),
    }
}

struct Run {
    ledger: Ledger,
    failures: FailureBook,
}

impl Run {
    fn new() -> Self {
        Run {
            ledger: Ledger::default(),
            failures: FailureBook::default(),
        }
    }

    fn decide(
        &mut self,
        spec: &VllmDeploymentSpec,
        arch: Result<&Architecture, String>,
        hash: &str,
        pods: &[PodView],
        fleet: &Fleet,
    ) -> Outcome {
        self.decide_at(spec, arch, hash, pods, fleet, now())
    }

    fn decide_at(
        &mut self,
        spec: &VllmDeploymentSpec,
        arch: Result<&Architecture, String>,
        hash: &str,
        pods: &[PodView],
        fleet: &Fleet,
        now: Timestamp,
    ) -> Outcome {
        let view = DeploymentView {
            name: "llm".into(),
            namespace: "ml".into(),
            generation: Some(3),
            spec,
            arch,
            family: VllmFamily::V0_11,
            spec_hash: hash.into(),
            queued_behind: vec![],
            gpu_allocation: Default::default(),
        };
        reconcile(
            &view,
            pods,
            fleet,
            &mut self.ledger,
            &mut self.failures,
            now,
        )
    }
}

fn creates(o: &Outcome) -> Vec<u32> {
    o.actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateGated { replica, .. } => Some(*replica),
            _ => None,
        })
        .collect()
}

fn deletes(o: &Outcome) -> Vec<String> {
    o.actions
        .iter()
        .filter_map(|a| match a {
            Action::Delete { pod, .. } => Some(pod.clone()),
            _ => None,
        })
        .collect()
}

fn releases(o: &Outcome) -> Vec<String> {
    o.actions
        .iter()
        .filter_map(|a| match a {
            Action::Release { pod, .. } => Some(pod.clone()),
            _ => None,
        })
        .collect()
}

fn cond<'a>(o: &'a Outcome, t: &str) -> (&'a str, &'a str) {
    let c = o.status.conditions.iter().find(|c| c.type_ == t).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn scale_up_creates_gated_pods_then_places_them() {
    let (s, a, f) = (spec(2), arch(), fleet(2, &[]));
    let mut run = Run::new();
    let o = run.decide(&s, Ok(&a), "h1", &[], &f);
    assert_eq!(creates(&o), [0, 1]);
    assert_eq!(cond(&o, "Ready"), ("False", "Progressing"));
    assert_eq!(o.status.observed_generation, Some(3));
    let pods = [pod(0, "h1", PodPhase::Gated), pod(1, "h1", PodPhase::Gated)];
    let o = run.decide(&s, Ok(&a), "h1", &pods, &f);
    assert_eq!(releases(&o), ["llm-0-h1", "llm-1-h1"]);
    assert_eq!(run.ledger.len(), 2);
    assert_eq!(cond(&o, "Admitted"), ("True", "Placed"));
    assert!(o.events.iter().filter(|e| e.reason == "Placed").count() == 2);
}

#[test]
fn scale_down_deletes_the_highest_replicas_and_their_reservations() {
    let (s, a, f) = (spec(1), arch(), fleet(2, &[]));
    let mut run = Run::new();
    let pods = [pod(0, "h1", PodPhase::Ready), pod(1, "h1", PodPhase::Ready)];
    let o = run.decide(&s, Ok(&a), "h1", &pods, &f);
    assert_eq!(deletes(&o), ["llm-1-h1"]);
    assert_eq!(o.status.ready.as_deref(), Some("1/1"));
    assert_eq!(cond(&o, "Ready"), ("True", "Ready"));
}

#[test]
fn rollout_replaces_one_replica_at_a_time_with_surge_when_there_is_room() {
    let (s, a) = (spec(2), arch());
    // Old pods hold GPUs 0 and 1; GPUs 2 and 3 are free: room to surge.
    let f = fleet(4, &[(0, "llm-0-old"), (1, "llm-1-old")]);
    let mut run = Run::new();
    let old = [
        pod(0, "old", PodPhase::Ready),
        pod(1, "old", PodPhase::Ready),
    ];
    let o = run.decide(&s, Ok(&a), "new", &old, &f);
    assert_eq!(creates(&o), [0], "one replica at a time");
    assert!(deletes(&o).is_empty(), "the old pods keep serving");
    assert_eq!(o.status.ready_replicas, 2);

    let mut pods = old.to_vec();
    pods.push(pod(0, "new", PodPhase::Gated));
    let o = run.decide(&s, Ok(&a), "new", &pods, &f);
    assert_eq!(releases(&o), ["llm-0-new"], "placed beside the old pod");
    assert!(deletes(&o).is_empty());

    pods[2].phase = PodPhase::Ready;
    let o = run.decide(&s, Ok(&a), "new", &pods, &f);
    assert_eq!(
        deletes(&o),
        ["llm-0-old"],
        "the replaced pod goes once the new one is ready"
    );
    assert_eq!(creates(&o), [1], "and the next replica starts");
}

#[test]
fn rollout_without_room_deletes_the_old_pod_first() {
    let (s, a) = (spec(1), arch());
    let f = fleet(1, &[(0, "llm-0-old")]);
    let mut run = Run::new();
    let pods = [
        pod(0, "old", PodPhase::Ready),
        pod(0, "new", PodPhase::Gated),
    ];
    let o = run.decide(&s, Ok(&a), "new", &pods, &f);
    assert_eq!(deletes(&o), ["llm-0-old"]);
    assert!(
        releases(&o).is_empty(),
        "waits for the agent to report the memory free"
    );
    assert_eq!(cond(&o, "Admitted").1, "InsufficientGpuMemory");
}

#[test]
fn a_launcher_refusal_replaces_the_pod_and_two_back_off_from_the_gpu() {
    let (s, a, f) = (spec(1), arch(), fleet(2, &[]));
    let mut run = Run::new();
    let refusal = "vllm-operator: insufficient-gpu-memory: GPU 0 (GPU-00000000-0000-0000-0000-000000000000) needs 80000000000 bytes free (74.51 GiB), has 4294967296 bytes free (4.00 GiB)";
    let mut failed = pod(
        0,
        "h1",
        PodPhase::Failed {
            message: refusal.into(),
        },
    );
    failed.placement = Some(vllm_operator::api::Placement {
        pod: failed.name.clone(),
        node: Some("node-a".into()),
        ..Default::default()
    });
    let o = run.decide(&s, Ok(&a), "h1", std::slice::from_ref(&failed), &f);
    assert_eq!(deletes(&o), ["llm-0-h1"]);
    // The replacement takes the same name: it waits until the failed pod is gone.
    assert!(creates(&o).is_empty(), "{:?}", o.actions);
    let e = o
        .events
        .iter()
        .find(|e| e.reason == "LauncherRefused")
        .unwrap();
    assert!(
        e.warning && e.message.contains("insufficient-gpu-memory"),
        "{}",
        e.message
    );
    assert!(run.failures.avoided(now()).is_empty());
    let _ = run.decide(&s, Ok(&a), "h1", std::slice::from_ref(&failed), &f);
    assert_eq!(
        run.failures.avoided(now()),
        [(
            "node-a".to_string(),
            "GPU-00000000-0000-0000-0000-000000000000".to_string()
        )]
    );
    // The replacement is placed on the other GPU's candidates only, with the reason.
    let o = run.decide(&s, Ok(&a), "h1", &[pod(0, "h1", PodPhase::Gated)], &f);
    let Action::Release {
        placement, status, ..
    } = &o.actions[0]
    else {
        panic!("{:?}", o.actions)
    };
    assert_eq!(placement.candidate_gpus, [1]);
    assert!(
        status
            .reason
            .as_deref()
            .unwrap()
            .starts_with("re-planned after the launcher refused"),
        "{:?}",
        status.reason
    );
}

#[test]
fn v1_kv_too_small_failures_back_off_from_the_node() {
    // vLLM 0.11.0 vllm/v1/core/kv_cache_utils.py (0.33.0: kv_cache_planning.py, "model's").
    let (s, a, f) = (spec(1), arch(), fleet(2, &[]));
    let mut run = Run::new();
    let message = "ValueError: To serve at least one request with the models's max seq len (32768), (4.00 GiB KV cache is needed, which is larger than the available KV cache memory (1.50 GiB). Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.";
    let mut failed = pod(
        0,
        "h1",
        PodPhase::Failed {
            message: message.into(),
        },
    );
    failed.placement = Some(vllm_operator::api::Placement {
        pod: failed.name.clone(),
        node: Some("node-a".into()),
        ..Default::default()
    });
    let o = run.decide(&s, Ok(&a), "h1", std::slice::from_ref(&failed), &f);
    let e = o
        .events
        .iter()
        .find(|e| e.reason == "GpuMemoryFailure")
        .expect("a GPU memory failure, not a plain PodFailed");
    assert!(
        e.message.contains("cannot hold one max-model-len request"),
        "{}",
        e.message
    );
    let _ = run.decide(&s, Ok(&a), "h1", std::slice::from_ref(&failed), &f);
    assert_eq!(
        run.failures.avoided(now()),
        [("node-a".to_string(), "*".to_string())]
    );
}

#[test]
fn an_unknown_model_stalls_without_touching_pods() {
    let (s, f) = (spec(1), fleet(1, &[]));
    let mut run = Run::new();
    let o = run.decide(
        &s,
        Err("model x is not in the built-in catalog".into()),
        "h1",
        &[pod(0, "h1", PodPhase::Ready)],
        &f,
    );
    assert!(o.actions.is_empty());
    assert_eq!(cond(&o, "Stalled"), ("True", "InvalidModel"));
    assert_eq!(o.status.state.as_deref(), Some("InvalidModel"));
}

#[test]
fn arguments_the_operator_cannot_size_stall_without_retiring_the_old_replica() {
    let (mut s, a, f) = (spec(1), arch(), fleet(2, &[]));
    s.args = vec!["--kv-cache-memory-bytes".into(), "8G".into()];
    let mut run = Run::new();
    let pods = [
        pod(0, "old", PodPhase::Ready),
        pod(0, "new", PodPhase::Gated),
    ];
    let o = run.decide(&s, Ok(&a), "new", &pods, &f);
    assert!(o.actions.is_empty(), "{:?}", o.actions);
    assert_eq!(cond(&o, "Stalled"), ("True", "InvalidArgs"));
    assert_eq!(cond(&o, "Admitted").0, "False");
    assert_eq!(o.status.state.as_deref(), Some("InvalidArgs"));
    let reason = o.status.placements[0].reason.as_deref().unwrap();
    assert!(reason.contains("--kv-cache-memory-bytes 8G"), "{reason}");
}

#[test]
fn a_deployment_queued_behind_an_older_one_does_not_plan() {
    let (s, a, f) = (spec(1), arch(), fleet(1, &[]));
    let mut ledger = Ledger::default();
    let mut failures = FailureBook::default();
    let view = DeploymentView {
        name: "young".into(),
        namespace: "ml".into(),
        generation: Some(1),
        spec: &s,
        arch: Ok(&a),
        family: VllmFamily::V0_11,
        spec_hash: "h".into(),
        queued_behind: vec!["ml/old".into()],
        gpu_allocation: Default::default(),
    };
    let pods = [PodView {
        name: "young-0-h".into(),
        replica: 0,
        spec_hash: "h".into(),
        phase: PodPhase::Gated,
        placement: None,
        observed: Default::default(),
    }];
    let o = reconcile(&view, &pods, &f, &mut ledger, &mut failures, now());
    assert!(o.actions.is_empty());
    assert!(ledger.is_empty());
    let c = o
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Admitted")
        .unwrap();
    assert!(
        c.message
            .contains("queued behind older deployments waiting for GPU memory: ml/old"),
        "{}",
        c.message
    );
}

#[test]
fn a_replacement_is_not_created_under_the_name_of_a_pod_being_deleted() {
    let (s, a, f) = (spec(1), arch(), fleet(1, &[]));
    let mut run = Run::new();
    let failed = pod(
        0,
        "h1",
        PodPhase::Failed {
            message: "container vllm exited with code 1".into(),
        },
    );
    // Round 1: the failed pod is deleted; its replacement (same name) is not created yet.
    let o = run.decide(&s, Ok(&a), "h1", std::slice::from_ref(&failed), &f);
    assert_eq!(deletes(&o), ["llm-0-h1"]);
    assert!(creates(&o).is_empty(), "{:?}", o.actions);
    assert!(
        o.status.placements[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("waiting for the previous pod llm-0-h1 to be deleted"),
        "{:?}",
        o.status.placements
    );
    // Round 2: still terminating: nothing.
    let o = run.decide(&s, Ok(&a), "h1", &[pod(0, "h1", PodPhase::Terminating)], &f);
    assert!(o.actions.is_empty(), "{:?}", o.actions);
    // Round 3: gone: the replacement is created.
    let o = run.decide(&s, Ok(&a), "h1", &[], &f);
    assert_eq!(creates(&o), [0]);
}

#[test]
fn a_released_pod_that_never_schedules_is_placed_again_after_the_timeout() {
    let (s, a, f) = (spec(1), arch(), fleet(2, &[]));
    let mut run = Run::new();
    // Place it: the ledger holds its reservation.
    let o = run.decide(&s, Ok(&a), "h1", &[pod(0, "h1", PodPhase::Gated)], &f);
    let Action::Release { status, .. } = &o.actions[0] else {
        panic!("{:?}", o.actions)
    };
    assert_eq!(run.ledger.len(), 1);
    let mut stuck = pod(
        0,
        "h1",
        PodPhase::Stuck {
            kind: StuckKind::Unschedulable,
            reason: "unschedulable: 0/1 nodes are available: 1 node(s) had untolerated taint"
                .into(),
        },
    );
    stuck.placement = Some(status.clone());
    let at = |s: i64| now() + k8s_openapi::jiff::SignedDuration::from_secs(s);
    let limit = STUCK_TIMEOUT.as_secs() as i64;
    for t in [0, limit / 2, limit - 1] {
        let o = run.decide_at(&s, Ok(&a), "h1", std::slice::from_ref(&stuck), &f, at(t));
        assert!(o.actions.is_empty(), "at {t}s: {:?}", o.actions);
        assert!(
            o.status.placements[0]
                .reason
                .as_deref()
                .unwrap()
                .contains("released but not starting: unschedulable"),
            "{:?}",
            o.status.placements
        );
    }
    assert_eq!(
        run.ledger.len(),
        1,
        "the reservation holds while it may still start"
    );
    let o = run.decide_at(
        &s,
        Ok(&a),
        "h1",
        std::slice::from_ref(&stuck),
        &f,
        at(limit),
    );
    assert_eq!(deletes(&o), ["llm-0-h1"]);
    assert!(run.ledger.is_empty(), "the reservation is released");
    let e = o
        .events
        .iter()
        .find(|e| e.reason == "Unschedulable")
        .unwrap();
    assert!(
        e.warning
            && e.message
                .contains("not started 5 min after release to node-a"),
        "{}",
        e.message
    );
    // The scheduler refused the node: it is avoided at once, and the re-placement says why.
    assert_eq!(
        run.failures.avoided(at(limit)),
        [("node-a".to_string(), "*".to_string())]
    );
    let o = run.decide_at(
        &s,
        Ok(&a),
        "h1",
        &[pod(0, "h1", PodPhase::Gated)],
        &f,
        at(limit + 10),
    );
    assert!(
        o.actions.is_empty(),
        "node-a is the only node: {:?}",
        o.actions
    );
    assert_eq!(cond(&o, "Admitted").1, "InsufficientGpuMemory");
}

#[test]
fn an_image_that_cannot_be_pulled_releases_the_reservation_after_the_timeout() {
    let (s, a, f) = (spec(1), arch(), fleet(1, &[]));
    let mut run = Run::new();
    let pull = pod(
        0,
        "h1",
        PodPhase::Stuck {
            kind: StuckKind::ImagePull,
            reason: "container vllm cannot pull image vllm/vllm-openai:nope: ErrImagePull".into(),
        },
    );
    let at = |s: i64| now() + k8s_openapi::jiff::SignedDuration::from_secs(s);
    let o = run.decide_at(&s, Ok(&a), "h1", std::slice::from_ref(&pull), &f, at(0));
    assert!(o.actions.is_empty());
    // It started pulling again (a new attempt): the clock restarts.
    let _ = run.decide_at(
        &s,
        Ok(&a),
        "h1",
        &[pod(0, "h1", PodPhase::Pending)],
        &f,
        at(200),
    );
    let o = run.decide_at(&s, Ok(&a), "h1", std::slice::from_ref(&pull), &f, at(400));
    assert!(o.actions.is_empty(), "{:?}", o.actions);
    let o = run.decide_at(&s, Ok(&a), "h1", std::slice::from_ref(&pull), &f, at(700));
    assert_eq!(deletes(&o), ["llm-0-h1"]);
    assert!(o.events.iter().any(|e| e.reason == "ImagePullFailed"));
    // An image problem is not the node's fault.
    assert!(run.failures.avoided(at(700)).is_empty());
}

#[test]
fn a_claim_the_scheduler_cannot_allocate_avoids_its_gpus_not_the_node_after_the_timeout() {
    let (s, a, f) = (spec(1), arch(), fleet(2, &[]));
    let mut run = Run::new();
    let o = run.decide(&s, Ok(&a), "h1", &[pod(0, "h1", PodPhase::Gated)], &f);
    let Action::Release { status, .. } = &o.actions[0] else {
        panic!("{:?}", o.actions)
    };
    // As released on the DRA path: the planned GPU is in the placement.
    let mut placed = status.clone();
    placed.gpu_uuids = vec!["GPU-00000000-0000-0000-0000-000000000000".into()];
    let mut stuck = pod(
        0,
        "h1",
        PodPhase::Stuck {
            kind: StuckKind::ClaimUnallocatable,
            reason: "the scheduler cannot allocate its planned GPUs: 0/1 nodes are available: 1 cannot allocate all claims".into(),
        },
    );
    stuck.placement = Some(placed);
    let at = |s: i64| now() + k8s_openapi::jiff::SignedDuration::from_secs(s);
    let limit = STUCK_TIMEOUT.as_secs() as i64;
    // Seen stuck at 0 s; it may still start until the timeout.
    for t in [0, limit - 1] {
        let o = run.decide_at(&s, Ok(&a), "h1", std::slice::from_ref(&stuck), &f, at(t));
        assert!(o.actions.is_empty(), "at {t}s: {:?}", o.actions);
    }
    let o = run.decide_at(
        &s,
        Ok(&a),
        "h1",
        std::slice::from_ref(&stuck),
        &f,
        at(limit),
    );
    assert_eq!(deletes(&o), ["llm-0-h1"]);
    let e = o
        .events
        .iter()
        .find(|e| e.reason == "ClaimUnallocatable")
        .unwrap();
    assert!(
        e.warning && e.message.contains("cannot allocate all claims"),
        "{}",
        e.message
    );
    assert!(run.ledger.is_empty(), "the reservation is released");
    // Only the planned GPU is avoided; the node's other GPU stays a candidate.
    assert_eq!(
        run.failures.avoided(at(limit)),
        [(
            "node-a".to_string(),
            "GPU-00000000-0000-0000-0000-000000000000".to_string()
        )]
    );
}
