//! The vLLM Pod of one replica, built without a client: created gated, then released in one
//! update that pins it to the planned node and hands the launcher its plan and arguments.
//!
//! A Pod's containers (command, env, resources) cannot change after creation, but its
//! annotations can, and a downward-API volume shows them to the container when it starts. So
//! the pod is created knowing only what is fixed for its lifetime (image, the GPU count = the
//! tensor parallel size), and the release writes the launch plan and the `vllm serve` flags as
//! annotations in the same update that removes the scheduling gate: the kubelet only ever sees
//! the released pod, so the files are complete when the launcher reads them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EmptyDirVolumeSource, HTTPGetAction, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector, Pod, PodResourceClaim,
    PodSchedulingGate, PodSecurityContext, PodSpec, Probe, ResourceClaim as ContainerClaim,
    ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::claim::{self, ANNOTATION_GPU_UUIDS, POD_CLAIM};
use super::weights;
use crate::api::{self, VllmDeployment, VllmDeploymentSpec};
use crate::plan;

pub const MANAGED_BY: &str = "vllm-operator";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_REPLICA: &str = "vllm-operator.io/replica";
pub const LABEL_SPEC_HASH: &str = "vllm-operator.io/spec-hash";
/// The scheduling gate every vLLM pod is created with.
pub const PLACEMENT_GATE: &str = "vllm-operator.io/placement";
/// JSON of `api::Placement`: what the pod was released with.
pub const ANNOTATION_PLACEMENT: &str = "vllm-operator.io/placement";
/// JSON of the launcher's `LaunchPlan`.
pub const ANNOTATION_LAUNCH_PLAN: &str = "vllm-operator.io/launch-plan";
/// JSON array: the `vllm serve MODEL` arguments the planner chose.
pub const ANNOTATION_ARGS: &str = "vllm-operator.io/args";
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// The node field a `matchFields` requirement may select on; the scheduler supports only this
/// one (k8s.io/api core/v1 `NodeSelectorTerm.matchFields`; `metav1.ObjectNameField`).
pub const NODE_NAME_FIELD: &str = "metadata.name";
pub const VLLM_CONTAINER: &str = "vllm";

const LAUNCHER_DIR: &str = "/vllm-operator/bin";
const LAUNCHER_IN_IMAGE: &str = "/usr/local/bin/vllm-node-agent";
const PLAN_DIR: &str = "/etc/vllm-operator";
const PLAN_FILE: &str = "launch-plan";
const SHM_DIR: &str = "/dev/shm";
const ARGS_FILE: &str = "args";
/// The planned GPU UUIDs (the `vllm-operator.io/gpu-uuids` annotation; empty on the
/// device-plugin path, where the kubelet chooses).
const GPU_UUIDS_FILE: &str = "gpu-uuids";

/// How a pod gets its GPUs, fixed at creation (a pod's resources and claims are immutable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodGpus {
    /// `nvidia.com/gpu: N`: the kubelet's device plugin chooses which N.
    DevicePlugin(u32),
    /// The ResourceClaim named after the pod, created at release with the planned GPUs
    /// ([`claim::resource_claim`]); any count.
    Claim,
}

impl std::fmt::Display for PodGpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PodGpus::DevicePlugin(n) => write!(f, "{n} GPU(s) from the device plugin"),
            PodGpus::Claim => write!(f, "exact GPUs through a ResourceClaim"),
        }
    }
}

impl PodGpus {
    /// What a pod placed as `placement` must have been created with.
    pub fn for_placement(placement: &plan::Placement) -> Self {
        if claim::placement_uuids(placement).is_empty() {
            PodGpus::DevicePlugin(placement.shape.tensor_parallel_size)
        } else {
            PodGpus::Claim
        }
    }
}

/// Where the operator mounts its own volumes in the vLLM container; user mounts may not.
pub fn operator_mount_paths() -> [&'static str; 4] {
    [LAUNCHER_DIR, PLAN_DIR, SHM_DIR, plan::args::MODEL_CACHE_DIR]
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("VllmDeployment has no {0}")]
    MissingMetadata(&'static str),
    #[error("cannot encode {what} as JSON: {reason}")]
    Encode { what: &'static str, reason: String },
}

/// FNV-1a, 64 bit: stable across Rust releases and platforms, unlike `DefaultHasher`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Ten hex digits over every spec field that shapes a pod or its plan. `replicas` is left
/// out: scaling must not roll the running replicas.
pub fn spec_hash(spec: &VllmDeploymentSpec) -> String {
    let mut shaping = spec.clone();
    shaping.replicas = 0;
    // Serializing plain data (strings, numbers, maps with string keys) cannot fail; an empty
    // input would still hash to a fixed value.
    let bytes = serde_json::to_vec(&shaping).unwrap_or_default();
    format!("{:010x}", fnv1a(&bytes) & 0xff_ffff_ffff)
}

/// The labels every child of `deployment` carries; the Service selects on them.
pub fn selector_labels(deployment: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), "vllm".to_string()),
        (LABEL_INSTANCE.to_string(), deployment.to_string()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ])
}

/// `selector_labels` as a label selector string (`k=v,k=v`, sorted), as the scale
/// subresource's `status.selector` carries it.
pub fn selector_string(deployment: &str) -> String {
    selector_labels(deployment)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `over` laid onto `base` field by field: objects merge recursively, lists and scalars in
/// `over` replace those in `base`.
fn merge_json(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge_json(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// The operator's `default` with the user's `over` merged onto it.
fn overlay<T: Serialize + DeserializeOwned>(
    what: &'static str,
    default: T,
    over: Option<&T>,
) -> Result<T, BuildError> {
    let Some(over) = over else { return Ok(default) };
    let encode = |e: serde_json::Error| BuildError::Encode {
        what,
        reason: e.to_string(),
    };
    let mut merged = serde_json::to_value(&default).map_err(encode)?;
    merge_json(&mut merged, serde_json::to_value(over).map_err(encode)?);
    serde_json::from_value(merged).map_err(encode)
}

/// The pod-level default: the container runtime's seccomp profile, which the `restricted`
/// Pod Security level requires of the pod or of every container
/// (k8s staging/src/k8s.io/pod-security-admission/policy/check_seccompProfile_restricted.go).
fn default_pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// Every container's default: no privilege escalation and no capabilities, the `restricted`
/// rules that do not need a non-root image (pod-security-admission/policy/
/// check_allowPrivilegeEscalation.go, check_capabilities_restricted.go).
fn default_container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The controller owner reference (with blockOwnerDeletion) to the deployment.
pub fn owner_reference(dep: &VllmDeployment) -> Result<OwnerReference, BuildError> {
    let meta = dep.meta();
    Ok(OwnerReference {
        api_version: VllmDeployment::api_version(&()).to_string(),
        kind: VllmDeployment::kind(&()).to_string(),
        name: meta
            .name
            .clone()
            .ok_or(BuildError::MissingMetadata("name"))?,
        uid: meta.uid.clone().ok_or(BuildError::MissingMetadata("uid"))?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// How a pod was created to get its GPUs: a claim reference named [`POD_CLAIM`], or its
/// `nvidia.com/gpu` limit; `None` for neither.
pub fn pod_gpus(pod: &Pod) -> Option<PodGpus> {
    let claims = pod.spec.as_ref()?.resource_claims.iter().flatten();
    if claims.into_iter().any(|c| c.name == POD_CLAIM) {
        return Some(PodGpus::Claim);
    }
    gpu_count(pod).map(PodGpus::DevicePlugin)
}

/// The GPU count a pod was created with (its `nvidia.com/gpu` limit), if any.
pub fn gpu_count(pod: &Pod) -> Option<u32> {
    let c = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == VLLM_CONTAINER)?;
    let q = c.resources.as_ref()?.limits.as_ref()?.get(GPU_RESOURCE)?;
    q.0.parse().ok()
}

fn empty_dir(name: &str, medium: Option<&str>) -> Volume {
    Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: medium.map(str::to_string),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn annotation_file(path: &str, annotation: &str) -> DownwardAPIVolumeFile {
    DownwardAPIVolumeFile {
        path: path.to_string(),
        field_ref: Some(ObjectFieldSelector {
            field_path: format!("metadata.annotations['{annotation}']"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// `spec.resources` with the GPUs: `nvidia.com/gpu` set to the count (limit only: the request
/// follows), or, for a claim, no `nvidia.com/gpu` at all and the claim in `claims`; and the
/// model cache's `ephemeral-storage` request in the default cache mode.
fn vllm_resources(
    spec: &VllmDeploymentSpec,
    gpus: PodGpus,
    cache_bytes: Option<u64>,
) -> ResourceRequirements {
    let mut r = spec.resources.clone().unwrap_or_default();
    if let Some(requests) = r.requests.as_mut() {
        requests.remove(GPU_RESOURCE);
    }
    if let Some(disk) = weights::ephemeral_storage_request(spec, cache_bytes) {
        r.requests
            .get_or_insert_with(BTreeMap::new)
            .insert(weights::EPHEMERAL_STORAGE.into(), disk);
    }
    match gpus {
        PodGpus::DevicePlugin(n) => {
            r.limits
                .get_or_insert_with(BTreeMap::new)
                .insert(GPU_RESOURCE.to_string(), Quantity(n.to_string()));
        }
        PodGpus::Claim => {
            // A device-plugin GPU on top of the claimed ones would be a GPU nobody planned.
            if let Some(limits) = r.limits.as_mut() {
                limits.remove(GPU_RESOURCE);
                if limits.is_empty() {
                    r.limits = None;
                }
            }
            r.claims = Some(vec![ContainerClaim {
                name: POD_CLAIM.into(),
                request: None,
            }]);
        }
    }
    r
}

/// The pod of `replica`, gated, getting its GPUs as `gpus` says. The vLLM arguments, the
/// launch plan and the planned GPU UUIDs arrive at release time through annotations (see the
/// module comment). `cache_bytes` sizes the model cache (`model::checkpoint::cache_bytes`),
/// when the architecture is known.
pub fn gated_pod(
    dep: &VllmDeployment,
    replica: u32,
    spec_hash: &str,
    gpus: PodGpus,
    launcher_image: &str,
    cache_bytes: Option<u64>,
) -> Result<Pod, BuildError> {
    let name = dep
        .metadata
        .name
        .as_deref()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let namespace = dep
        .metadata
        .namespace
        .as_deref()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let spec = &dep.spec;
    let mut labels = selector_labels(name);
    labels.insert(LABEL_REPLICA.into(), replica.to_string());
    labels.insert(LABEL_SPEC_HASH.into(), spec_hash.to_string());

    let launcher = format!("{LAUNCHER_DIR}/vllm-node-agent");
    let install = Container {
        name: "install-launcher".into(),
        image: Some(launcher_image.to_string()),
        // The launcher image is distroless (no cp, no shell): the binary copies itself.
        command: Some(vec![
            LAUNCHER_IN_IMAGE.into(),
            "install".into(),
            launcher.clone(),
        ]),
        volume_mounts: Some(vec![mount("launcher", LAUNCHER_DIR, false)]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("10m".into())),
                ("memory".into(), Quantity("16Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), Quantity("64Mi".into()))])),
            ..Default::default()
        }),
        // The launcher image runs as non-root and only writes to its emptyDir.
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            ..default_container_security_context()
        }),
        ..Default::default()
    };

    let vllm = Container {
        name: VLLM_CONTAINER.into(),
        image: Some(spec.image.clone()),
        command: Some(vec![
            launcher,
            "launch".into(),
            "--plan-file".into(),
            format!("{PLAN_DIR}/{PLAN_FILE}"),
            "--args-file".into(),
            format!("{PLAN_DIR}/{ARGS_FILE}"),
            "--gpu-uuids-file".into(),
            format!("{PLAN_DIR}/{GPU_UUIDS_FILE}"),
            "--".into(),
            "vllm".into(),
            "serve".into(),
            plan::args::served_model(&spec.model),
        ]),
        env: Some(weights::env(spec)),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: spec.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(vllm_resources(spec, gpus, cache_bytes)),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/health".into()),
                port: IntOrString::Int(spec.port),
                ..Default::default()
            }),
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(overlay(
            "spec.securityContext",
            default_container_security_context(),
            spec.security_context.as_ref(),
        )?),
        volume_mounts: Some(
            [
                mount("launcher", LAUNCHER_DIR, true),
                mount("plan", PLAN_DIR, true),
                mount("dshm", SHM_DIR, false),
                weights::cache_mount(),
            ]
            .into_iter()
            .chain(spec.volume_mounts.iter().cloned())
            .collect(),
        ),
        ..Default::default()
    };

    let pod_name = super::decide::pod_name(name, replica, spec_hash);
    let resource_claims = (gpus == PodGpus::Claim).then(|| {
        vec![PodResourceClaim {
            name: POD_CLAIM.into(),
            resource_claim_name: Some(claim::claim_name(&pod_name)),
            resource_claim_template_name: None,
        }]
    });
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(pod_name),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            owner_references: Some(vec![owner_reference(dep)?]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            scheduling_gates: Some(vec![PodSchedulingGate {
                name: PLACEMENT_GATE.into(),
            }]),
            resource_claims,
            init_containers: Some(vec![install]),
            containers: vec![vllm],
            // The controller is the restart policy: a failed start is re-planned on fresh data.
            restart_policy: Some("Never".into()),
            // A Service named `vllm` would inject VLLM_PORT=tcp://..., which vLLM misreads.
            enable_service_links: Some(false),
            // vLLM never calls the Kubernetes API: no token in the pod.
            automount_service_account_token: Some(false),
            security_context: Some(overlay(
                "spec.podSecurityContext",
                default_pod_security_context(),
                spec.pod_security_context.as_ref(),
            )?),
            image_pull_secrets: (!spec.image_pull_secrets.is_empty())
                .then(|| spec.image_pull_secrets.clone()),
            node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
            tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
            volumes: Some(
                [
                    empty_dir("launcher", None),
                    empty_dir("dshm", Some("Memory")),
                    Volume {
                        name: "plan".into(),
                        downward_api: Some(DownwardAPIVolumeSource {
                            items: Some(vec![
                                annotation_file(PLAN_FILE, ANNOTATION_LAUNCH_PLAN),
                                annotation_file(ARGS_FILE, ANNOTATION_ARGS),
                                annotation_file(GPU_UUIDS_FILE, ANNOTATION_GPU_UUIDS),
                            ]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    weights::cache_volume(spec, cache_bytes),
                ]
                .into_iter()
                .chain(spec.volumes.iter().cloned())
                .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    })
}

/// The arguments after `vllm serve MODEL` in the planned command.
pub fn serve_args(command: &[String]) -> Vec<String> {
    match command {
        [v, s, _model, rest @ ..] if v == "vllm" && s == "serve" => rest.to_vec(),
        other => other.to_vec(),
    }
}

/// `current` released to `placement`: required node affinity on the node's name added, the
/// placement gate removed, and the plan annotations set (with the planned GPU UUIDs on the
/// DRA path). Never `nodeName`: the scheduler must
/// still admit the pod.
///
/// The pin is `matchFields: metadata.name In [NODE]`, as the DaemonSet controller pins its pods
/// (k8s pkg/controller/daemon/util/daemonset_util.go, ReplaceDaemonSetPodNodeNameNodeAffinity):
/// the `kubernetes.io/hostname` label need not equal the node's name. The API server accepts
/// this update only while the pod is gated, and only as an addition to every existing required
/// term (k8s pkg/apis/core/validation/validation.go, ValidatePodUpdate: `podIsGated` ->
/// validateNodeAffinityMutation), which is what this does, in the same update that removes
/// the gate (checked against the old, still gated pod).
pub fn released_pod(
    current: &Pod,
    placement: &plan::Placement,
    status: &api::Placement,
) -> Result<Pod, BuildError> {
    let encode = |what: &'static str, r: Result<String, serde_json::Error>| {
        r.map_err(|e| BuildError::Encode {
            what,
            reason: e.to_string(),
        })
    };
    let mut pod = current.clone();
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(
        ANNOTATION_PLACEMENT.into(),
        encode("placement", serde_json::to_string(status))?,
    );
    annotations.insert(
        ANNOTATION_LAUNCH_PLAN.into(),
        encode("launch plan", serde_json::to_string(&placement.launch_plan))?,
    );
    annotations.insert(
        ANNOTATION_ARGS.into(),
        encode(
            "args",
            serde_json::to_string(&serve_args(&placement.command)),
        )?,
    );
    let uuids = claim::placement_uuids(placement);
    if !uuids.is_empty() {
        annotations.insert(ANNOTATION_GPU_UUIDS.into(), uuids.join(","));
    }
    pod.status = None;
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    if let Some(gates) = spec.scheduling_gates.as_mut() {
        gates.retain(|g| g.name != PLACEMENT_GATE);
    }
    let pin = NodeSelectorRequirement {
        key: NODE_NAME_FIELD.into(),
        operator: "In".into(),
        values: Some(vec![placement.node.clone()]),
    };
    let required = spec
        .affinity
        .get_or_insert_with(Affinity::default)
        .node_affinity
        .get_or_insert_with(NodeAffinity::default)
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector {
            node_selector_terms: Vec::new(),
        });
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        term.match_fields
            .get_or_insert_with(Vec::new)
            .push(pin.clone());
    }
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> VllmDeployment {
        let text = include_str!("../../tests/fixtures/controller/deployment.yaml");
        let mut d: VllmDeployment = serde_norway::from_str(text).unwrap();
        d.metadata.uid = Some("uid-1".into());
        d
    }

    fn expected(name: &str) -> serde_json::Value {
        let path = format!(
            "{}/tests/fixtures/controller/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn gated_pod_matches_the_fixture() {
        let d = deployment();
        let pod = gated_pod(
            &d,
            0,
            "abcdef0123",
            PodGpus::DevicePlugin(2),
            "ghcr.io/vllm-operator/vllm-node-agent:0.1.0",
            Some(4 << 30),
        )
        .unwrap();
        let got = serde_json::to_value(&pod).unwrap();
        if std::env::var_os("BLESS").is_some() {
            let path = format!(
                "{}/tests/fixtures/controller/gated-pod.yaml",
                env!("CARGO_MANIFEST_DIR")
            );
            let text = format!(
                "# The gated pod of replica 0 of deployment.yaml (spec hash abcdef0123, 2 GPUs).\n# Regenerate with BLESS=1 cargo test -p vllm-operator --lib gated_pod_matches; review the diff.\n{}",
                serde_norway::to_string(&got).unwrap()
            );
            std::fs::write(path, text).unwrap();
        }
        assert_eq!(got, expected("gated-pod.yaml"));
    }

    #[test]
    fn gpu_requests_follow_the_limit() {
        let mut d = deployment();
        d.spec.resources = Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("4".into())),
                (GPU_RESOURCE.into(), Quantity("8".into())),
            ])),
            ..Default::default()
        });
        let pod = gated_pod(&d, 1, "h", PodGpus::DevicePlugin(4), "img", None).unwrap();
        let r = pod.spec.as_ref().unwrap().containers[0]
            .resources
            .clone()
            .unwrap();
        assert_eq!(r.limits.unwrap()[GPU_RESOURCE], Quantity("4".into()));
        assert!(!r.requests.as_ref().unwrap().contains_key(GPU_RESOURCE));
        assert_eq!(r.requests.unwrap()["cpu"], Quantity("4".into()));
        assert_eq!(gpu_count(&pod), Some(4));
        assert_eq!(pod.metadata.name.as_deref(), Some("llama-1b-1-h"));
    }

    #[test]
    fn a_claim_pod_references_its_claim_and_has_no_device_plugin_gpu() {
        let mut d = deployment();
        // Even a user's own nvidia.com/gpu limit goes: the claim holds every GPU it gets.
        d.spec.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([
                (GPU_RESOURCE.into(), Quantity("8".into())),
                ("memory".into(), Quantity("64Gi".into())),
            ])),
            ..Default::default()
        });
        let pod = gated_pod(&d, 1, "h", PodGpus::Claim, "img", None).unwrap();
        let spec = pod.spec.as_ref().unwrap();
        let claims = spec.resource_claims.clone().unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].name, POD_CLAIM);
        assert_eq!(
            claims[0].resource_claim_name.as_deref(),
            Some("llama-1b-1-h")
        );
        assert_eq!(claims[0].resource_claim_template_name, None);
        let r = spec.containers[0].resources.clone().unwrap();
        assert_eq!(r.claims.unwrap()[0].name, POD_CLAIM);
        let limits = r.limits.unwrap();
        assert!(!limits.contains_key(GPU_RESOURCE), "{limits:?}");
        assert_eq!(limits["memory"], Quantity("64Gi".into()));
        assert_eq!(gpu_count(&pod), None);
        assert_eq!(pod_gpus(&pod), Some(PodGpus::Claim));
        // The launcher reads the planned UUIDs from the downward-API file.
        let cmd = spec.containers[0].command.clone().unwrap();
        assert!(
            cmd.windows(2)
                .any(|w| w == ["--gpu-uuids-file", "/etc/vllm-operator/gpu-uuids"])
        );
        let device_plugin = gated_pod(&d, 1, "h", PodGpus::DevicePlugin(2), "img", None).unwrap();
        assert_eq!(pod_gpus(&device_plugin), Some(PodGpus::DevicePlugin(2)));
        assert_eq!(device_plugin.spec.unwrap().resource_claims, None);
    }

    #[test]
    fn a_deployment_without_uid_cannot_own_a_pod() {
        let mut d = deployment();
        d.metadata.uid = None;
        assert_eq!(
            gated_pod(&d, 0, "h", PodGpus::DevicePlugin(1), "img", None),
            Err(BuildError::MissingMetadata("uid"))
        );
    }

    #[test]
    fn spec_hash_is_stable_and_ignores_replicas() {
        let d = deployment();
        let h = spec_hash(&d.spec);
        assert_eq!(h.len(), 10);
        // Pinned: a change here rolls every running replica on upgrade.
        assert_eq!(h, "994ad85bce");
        let mut scaled = d.spec.clone();
        scaled.replicas = 7;
        assert_eq!(spec_hash(&scaled), h);
        let mut changed = d.spec.clone();
        changed.args.push("--enable-prefix-caching".into());
        assert_ne!(spec_hash(&changed), h);
        let mut image = d.spec.clone();
        image.image = "vllm/vllm-openai:v0.10.2".into();
        assert_ne!(spec_hash(&image), h);
    }

    /// The planner's placement of the fixture deployment on the fixture fleet, moved to `node`.
    fn placement_on(node: &str) -> plan::Placement {
        let fixtures = format!("{}/tests/fixtures/controller", env!("CARGO_MANIFEST_DIR"));
        let (deps, fleet, now) = crate::cli::plan::load(
            &[format!("{fixtures}/deployment.yaml").into()],
            format!("{fixtures}/fleet.yaml").as_ref(),
            None,
            120,
        )
        .unwrap();
        let mut plans = crate::cli::plan::plan_deployments(&deps, &fleet, now);
        let mut p = plans.remove(0).replicas.remove(0);
        p.node = node.to_string();
        p
    }

    #[test]
    fn release_pins_by_node_name_with_match_fields_in_every_term() {
        let d = deployment();
        let p = placement_on("gpu-node-7.example.com");
        let status = api::Placement::default();
        let gated = gated_pod(&d, 0, "h", PodGpus::DevicePlugin(1), "img", Some(4 << 30)).unwrap();
        let released = released_pod(&gated, &p, &status).unwrap();
        let required = released
            .spec
            .as_ref()
            .unwrap()
            .affinity
            .clone()
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap();
        let want = NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec!["gpu-node-7.example.com".into()]),
        };
        assert_eq!(
            required.node_selector_terms,
            vec![NodeSelectorTerm {
                match_fields: Some(vec![want.clone()]),
                match_expressions: None,
            }]
        );
        // An existing required term keeps its expressions and gains the field: an addition,
        // which is what the API server allows on a gated pod.
        let mut with_terms = gated.clone();
        let existing = NodeSelectorRequirement {
            key: "pool".into(),
            operator: "In".into(),
            values: Some(vec!["gpu".into()]),
        };
        with_terms.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![existing.clone()]),
                        match_fields: None,
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let released = released_pod(&with_terms, &p, &status).unwrap();
        let terms = released
            .spec
            .unwrap()
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(
            terms,
            vec![NodeSelectorTerm {
                match_expressions: Some(vec![existing]),
                match_fields: Some(vec![want]),
            }]
        );
    }

    #[test]
    fn image_pull_secrets_reach_the_pod() {
        let mut d = deployment();
        assert_eq!(
            gated_pod(&d, 0, "h", PodGpus::DevicePlugin(1), "img", Some(4 << 30))
                .unwrap()
                .spec
                .unwrap()
                .image_pull_secrets,
            None
        );
        d.spec.image_pull_secrets = vec![
            k8s_openapi::api::core::v1::LocalObjectReference {
                name: "registry".into(),
            },
            k8s_openapi::api::core::v1::LocalObjectReference {
                name: "mirror".into(),
            },
        ];
        let spec = gated_pod(&d, 0, "h", PodGpus::DevicePlugin(1), "img", Some(4 << 30))
            .unwrap()
            .spec
            .unwrap();
        let names: Vec<String> = spec
            .image_pull_secrets
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["registry", "mirror"]);
    }

    #[test]
    fn serve_args_drop_the_program_and_model() {
        let cmd: Vec<String> = ["vllm", "serve", "m", "--tensor-parallel-size", "2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(serve_args(&cmd), vec!["--tensor-parallel-size", "2"]);
    }
}
