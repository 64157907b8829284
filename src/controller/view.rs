//! What the decision sees of a Pod: replica, spec hash, phase and placement, read from the
//! labels, the scheduling gates, the status and the placement annotation.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::decide::{PodPhase, PodView, StuckKind};
use super::pod::{
    ANNOTATION_PLACEMENT, LABEL_REPLICA, LABEL_SPEC_HASH, PLACEMENT_GATE, VLLM_CONTAINER,
};
use crate::api;

/// The pod as the decision sees it; `None` for a pod without our replica label.
pub fn pod_view(pod: &Pod) -> Option<PodView> {
    let labels = pod.metadata.labels.as_ref()?;
    let replica = labels.get(LABEL_REPLICA)?.parse().ok()?;
    let spec_hash = labels.get(LABEL_SPEC_HASH).cloned().unwrap_or_default();
    let placement = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_PLACEMENT))
        .and_then(|text| serde_json::from_str::<api::Placement>(text).ok());
    Some(PodView {
        name: pod.metadata.name.clone()?,
        replica,
        spec_hash,
        phase: phase(pod),
        placement,
        observed: Default::default(),
    })
}

fn gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.name == PLACEMENT_GATE))
}

/// The vLLM container's termination message, current or from its last run.
fn termination_message(status: &ContainerStatus) -> Option<String> {
    let current = status.state.as_ref().and_then(|s| s.terminated.as_ref());
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    current
        .into_iter()
        .chain(last)
        .find(|t| t.exit_code != 0 || t.message.is_some())
        .map(|t| match &t.message {
            Some(m) if !m.trim().is_empty() => m.clone(),
            _ => format!(
                "container {VLLM_CONTAINER} exited with code {}{}",
                t.exit_code,
                t.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        })
}

pub fn phase(pod: &Pod) -> PodPhase {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodPhase::Terminating;
    }
    if gated(pod) {
        return PodPhase::Gated;
    }
    let Some(status) = pod.status.as_ref() else {
        return PodPhase::Pending;
    };
    let vllm = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == VLLM_CONTAINER);
    let message = vllm.and_then(termination_message);
    match status.phase.as_deref() {
        Some("Failed") | Some("Succeeded") => {
            let message = message
                .or_else(|| init_failure(pod))
                .or_else(|| status.message.clone())
                .or_else(|| status.reason.clone())
                .unwrap_or_else(|| "pod ended without a termination message".into());
            return PodPhase::Failed { message };
        }
        _ => {}
    }
    if let Some(message) = message {
        // Terminated or restarting with a message: its start failed, re-plan.
        return PodPhase::Failed { message };
    }
    if let Some((kind, reason)) = stuck(pod) {
        return PodPhase::Stuck { kind, reason };
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    match status.phase.as_deref() {
        _ if ready => PodPhase::Ready,
        Some("Running") => PodPhase::Running,
        _ => PodPhase::Pending,
    }
}

/// Container waiting reasons that mean the kubelet cannot pull the image (Kubernetes
/// pkg/kubelet/images/types.go: ErrImagePullBackOff, ErrImageInspect, ErrImagePull,
/// ErrImageNeverPull, ErrRegistryUnavailable, ErrInvalidImageName).
const IMAGE_PULL_FAILURES: [&str; 6] = [
    "ImagePullBackOff",
    "ImageInspectError",
    "ErrImagePull",
    "ErrImageNeverPull",
    "RegistryUnavailable",
    "InvalidImageName",
];

/// Texts of the scheduler's DynamicResources plugin when a pod's claims cannot be had
/// (kubernetes pkg/scheduler/framework/plugins/dynamicresources/dynamicresources.go, read at
/// 00d3750: Filter "cannot allocate all claims", "resourceclaim not available on the node";
/// PreFilter "resourceclaim in use", `resourceclaim "X" is being deleted`, "request R: device
/// class C does not exist", "resource claim X is in the process of being allocated"; the
/// claim lister's not-found error names `resourceclaim`).
const DRA_UNSCHEDULABLE: [&str; 4] = [
    "cannot allocate all claims",
    "resourceclaim",
    "resource claim",
    "device class",
];

/// Whether an Unschedulable message is the DRA plugin's (the claim cannot be allocated).
pub fn dra_unschedulable(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    DRA_UNSCHEDULABLE.iter().any(|n| lower.contains(n))
}

/// Why a pending, released pod cannot start: the scheduler's `PodScheduled=False` with reason
/// `Unschedulable` (k8s.io/api core/v1 types.go, PodReasonUnschedulable), told apart when the
/// DRA plugin says its claim cannot be allocated, or a container (init included) waiting on an
/// image pull failure.
fn stuck(pod: &Pod) -> Option<(StuckKind, String)> {
    let status = pod.status.as_ref()?;
    if !matches!(status.phase.as_deref(), None | Some("Pending")) {
        return None;
    }
    if let Some(c) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    }) {
        let message = c.message.as_deref().unwrap_or("no reason given");
        if dra_unschedulable(message) {
            return Some((
                StuckKind::ClaimUnallocatable,
                format!("the scheduler cannot allocate its planned GPUs: {message}"),
            ));
        }
        return Some((
            StuckKind::Unschedulable,
            format!("unschedulable: {message}"),
        ));
    }
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            IMAGE_PULL_FAILURES.contains(&reason).then(|| {
                (
                    StuckKind::ImagePull,
                    format!(
                        "container {} cannot pull image {}: {reason}{}",
                        c.name,
                        c.image,
                        waiting
                            .message
                            .as_deref()
                            .map(|m| format!(" ({m})"))
                            .unwrap_or_default()
                    ),
                )
            })
        })
}

fn init_failure(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .init_container_statuses
        .iter()
        .flatten()
        .find_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            (t.exit_code != 0).then(|| {
                format!(
                    "init container {} exited with code {}: {}",
                    c.name,
                    t.exit_code,
                    t.message.as_deref().unwrap_or("")
                )
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_norway::from_str(yaml).unwrap()
    }

    const META: &str = r#"
metadata:
  name: llama-1b-0-abc
  labels: {vllm-operator.io/replica: "0", vllm-operator.io/spec-hash: abc}
"#;

    #[test]
    fn gated_while_the_placement_gate_is_present() {
        let p = pod(&format!(
            "{META}spec:\n  containers: [{{name: vllm}}]\n  schedulingGates: [{{name: vllm-operator.io/placement}}]\n"
        ));
        let v = pod_view(&p).unwrap();
        assert_eq!(v.phase, PodPhase::Gated);
        assert_eq!(v.replica, 0);
        assert_eq!(v.spec_hash, "abc");
        assert_eq!(v.placement, None);
    }

    #[test]
    fn failed_with_the_launcher_termination_message() {
        let p = pod(&format!(
            r#"{META}  annotations:
    vllm-operator.io/placement: '{{"pod":"llama-1b-0-abc","node":"a100-a","tensorParallelSize":1,"quantization":"none","kvCacheDtype":"auto","gpuMemoryUtilization":0.9,"maxModelLen":8192,"kvCacheTokens":1000}}'
status:
  phase: Failed
  containerStatuses:
  - name: vllm
    ready: false
    restartCount: 0
    image: vllm
    imageID: ""
    state:
      terminated:
        exitCode: 75
        message: "vllm-operator: insufficient-gpu-memory: GPU 0 (GPU-1) needs 2 bytes free (0.00 GiB), has 1 bytes free (0.00 GiB)"
"#
        ));
        let v = pod_view(&p).unwrap();
        match v.phase {
            PodPhase::Failed { message } => {
                assert!(message.starts_with("vllm-operator: insufficient-gpu-memory: GPU 0"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(v.placement.unwrap().node.as_deref(), Some("a100-a"));
    }

    #[test]
    fn restarting_with_a_last_termination_message_is_failed() {
        let p = pod(&format!(
            r#"{META}status:
  phase: Running
  containerStatuses:
  - name: vllm
    ready: false
    restartCount: 1
    image: vllm
    imageID: ""
    state: {{waiting: {{reason: CrashLoopBackOff}}}}
    lastState:
      terminated:
        exitCode: 1
        message: "ValueError: Free memory on device (6.92/8.0 GiB) on startup is less than desired GPU memory utilization (0.9, 7.2 GiB)."
"#
        ));
        assert!(matches!(
            phase(&p),
            PodPhase::Failed { message } if message.contains("Free memory on device")
        ));
    }

    #[test]
    fn ready_running_pending_and_terminating() {
        let ready = pod(&format!(
            "{META}status:\n  phase: Running\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
        ));
        assert_eq!(phase(&ready), PodPhase::Ready);
        let running = pod(&format!(
            "{META}status:\n  phase: Running\n  conditions: [{{type: Ready, status: \"False\"}}]\n"
        ));
        assert_eq!(phase(&running), PodPhase::Running);
        let pending = pod(&format!(
            "{META}spec:\n  containers: [{{name: vllm}}]\n  schedulingGates: []\nstatus: {{phase: Pending}}\n"
        ));
        assert_eq!(phase(&pending), PodPhase::Pending);
        let terminating = pod(&format!(
            "{META}  deletionTimestamp: \"2026-11-26T12:00:00Z\"\nstatus:\n  phase: Running\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
        ));
        assert_eq!(phase(&terminating), PodPhase::Terminating);
    }

    #[test]
    fn unschedulable_and_image_pull_failures_are_stuck() {
        let unschedulable = pod(&format!(
            "{META}spec:\n  containers: [{{name: vllm}}]\nstatus:\n  phase: Pending\n  conditions:\n  - {{type: PodScheduled, status: \"False\", reason: Unschedulable, message: \"0/3 nodes are available: 1 node(s) had untolerated taint\"}}\n"
        ));
        assert_eq!(
            phase(&unschedulable),
            PodPhase::Stuck {
                kind: StuckKind::Unschedulable,
                reason: "unschedulable: 0/3 nodes are available: 1 node(s) had untolerated taint"
                    .into()
            }
        );
        let pull = pod(&(META.to_string()
            + r#"status:
  phase: Pending
  containerStatuses:
  - name: vllm
    ready: false
    restartCount: 0
    image: registry.example/vllm:v1
    imageID: ""
    state: {waiting: {reason: ImagePullBackOff, message: "Back-off pulling image"}}
"#));
        assert!(matches!(
            phase(&pull),
            PodPhase::Stuck { kind: StuckKind::ImagePull, reason }
                if reason.contains("registry.example/vllm:v1: ImagePullBackOff (Back-off pulling image)")
        ));
        // The DRA plugin's answer: the exact GPUs of the claim cannot be had.
        let claim = pod(&format!(
            "{META}spec:\n  containers: [{{name: vllm}}]\nstatus:\n  phase: Pending\n  conditions:\n  - {{type: PodScheduled, status: \"False\", reason: Unschedulable, message: \"0/4 nodes are available: 1 cannot allocate all claims, 3 node(s) didn't match Pod's node affinity/selector.\"}}\n"
        ));
        assert!(matches!(
            phase(&claim),
            PodPhase::Stuck { kind: StuckKind::ClaimUnallocatable, reason }
                if reason.contains("cannot allocate its planned GPUs: 0/4 nodes")
        ));
        assert!(dra_unschedulable(
            "resourceclaim \"llama-0-h\" is being deleted"
        ));
        assert!(dra_unschedulable(
            "0/1 nodes are available: 1 resourceclaim not available on the node."
        ));
        assert!(!dra_unschedulable(
            "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
        ));
        // Pending for an ordinary reason (still pulling, still scheduling) is just pending.
        let pulling = pod(&format!(
            "{META}status:\n  phase: Pending\n  conditions: [{{type: PodScheduled, status: \"True\"}}]\n"
        ));
        assert_eq!(phase(&pulling), PodPhase::Pending);
    }

    #[test]
    fn pods_without_a_replica_label_are_not_ours() {
        assert_eq!(
            pod_view(&pod("metadata: {name: x, labels: {a: b}}\n")),
            None
        );
    }
}
