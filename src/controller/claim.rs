//! The ResourceClaim of one replica placed on exact GPUs (Dynamic Resource Allocation,
//! `resource.k8s.io/v1`), built without a client.
//!
//! One claim per replica, named after its pod, in the deployment's namespace, owned by the
//! VllmDeployment like the pod. It holds one request per planned GPU, each selecting that GPU
//! by UUID through the NVIDIA driver's DeviceClass, so the scheduler allocates exactly the
//! GPUs the planner chose, or none (and the pod stays unschedulable, which the controller
//! reads as a placement failure).
//!
//! The pod references the claim from the start (`spec.resourceClaims` and the vLLM container's
//! `resources.claims` are immutable: k8s.io/api core/v1 types.go, PodSpec.ResourceClaims and
//! ResourceRequirements.Claims, "This field is immutable"; pkg/apis/core/validation/
//! validation.go `ValidatePodUpdate` lets a gated pod change only its node selector and node
//! affinity besides the gates). A gated pod is not scheduled, so the claim need not exist until
//! the release: the controller creates it just before removing the gate.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::{
    CELDeviceSelector, DeviceClaim, DeviceRequest, DeviceSelector, ExactDeviceRequest,
    ResourceClaim, ResourceClaimSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::pod::{self, BuildError, LABEL_REPLICA, LABEL_SPEC_HASH, selector_labels};
use crate::api::VllmDeployment;

/// The DeviceClass of full NVIDIA GPUs: NVIDIA/k8s-dra-driver-gpu
/// `deployments/helm/dra-driver-nvidia-gpu/templates/deviceclass-gpu.yaml` (v25.8.1) names it
/// `gpu.nvidia.com` and selects `device.driver == 'gpu.nvidia.com' &&
/// device.attributes['gpu.nvidia.com'].type == 'gpu'`.
pub const DEVICE_CLASS: &str = "gpu.nvidia.com";
/// The attribute domain of the NVIDIA driver: every full GPU it publishes carries `uuid`, the
/// NVML UUID (NVIDIA/k8s-dra-driver-gpu v25.8.1 `cmd/gpu-kubelet-plugin/deviceinfo.go`,
/// `GpuInfo.Attributes`).
pub const ATTRIBUTE_DOMAIN: &str = "gpu.nvidia.com";
/// The entry of the pod's `spec.resourceClaims` that names the claim.
pub const POD_CLAIM: &str = "gpus";
/// The planned UUIDs, comma-separated, on the released pod: the launcher refuses other GPUs.
pub const ANNOTATION_GPU_UUIDS: &str = "vllm-operator.io/gpu-uuids";
/// At most this many requests in one claim: `DeviceRequestsMaxSize = AllocationResultsMaxSize
/// = 32` (k8s.io/api resource/v1 types.go, v1.34; enforced by pkg/apis/resource/validation/
/// validation.go `validateDeviceClaim`).
pub const MAX_REQUESTS: usize = 32;
/// `CELSelectorExpressionMaxLength = 10 * 1024` (k8s.io/api resource/v1 types.go, v1.34).
pub const MAX_EXPRESSION_BYTES: usize = 10 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("no GPU to claim")]
    NoGpus,
    #[error(
        "{count} GPUs in one claim; the API server accepts at most {MAX_REQUESTS} requests (resource.k8s.io/v1 DeviceRequestsMaxSize)"
    )]
    TooManyGpus { count: usize },
    #[error("GPU UUID {0:?} is not of the form GPU-<hex and dashes> that NVML reports")]
    BadUuid(String),
    #[error("GPU {0} appears twice in one claim")]
    DuplicateUuid(String),
    #[error("claim name {0:?} is not a DNS label of at most 63 characters")]
    BadName(String),
    #[error("selector of {bytes} bytes; the API server accepts at most {MAX_EXPRESSION_BYTES}")]
    ExpressionTooLong { bytes: usize },
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// The claim of the pod `pod`: the same name (a pod name is a DNS label here, see
/// `decide::pod_name`, and a claim name must be a DNS subdomain: pkg/apis/core/validation
/// `ValidateResourceClaimName = NameIsDNSSubdomain`).
pub fn claim_name(pod: &str) -> String {
    pod.to_string()
}

/// `gpu-<i>`: a DNS label, as a request name must be (types.go DeviceRequest.Name, "Must be a
/// DNS label").
pub fn request_name(i: usize) -> String {
    format!("gpu-{i}")
}

/// A UUID as NVML writes it (`GPU-` and hex digits in dashed groups). The UUID comes from the
/// node agent's report, i.e. from outside this process, and goes into a CEL string literal:
/// only these characters can never end the literal or change the expression.
pub fn check_uuid(uuid: &str) -> Result<(), ClaimError> {
    let ok = uuid.strip_prefix("GPU-").is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
    }) && uuid.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(ClaimError::BadUuid(uuid.to_string()))
    }
}

/// The CEL selector of the device whose `uuid` attribute is `uuid` (the form the API docs give
/// for attributes, `device.attributes["<domain>"].<name>`: types.go CELDeviceSelector).
pub fn uuid_selector(uuid: &str) -> Result<String, ClaimError> {
    check_uuid(uuid)?;
    let expression = format!("device.attributes[\"{ATTRIBUTE_DOMAIN}\"].uuid == \"{uuid}\"");
    if expression.len() > MAX_EXPRESSION_BYTES {
        return Err(ClaimError::ExpressionTooLong {
            bytes: expression.len(),
        });
    }
    Ok(expression)
}

/// The UUID a selector written by [`uuid_selector`] names, if it is one.
pub fn selector_uuid(expression: &str) -> Option<&str> {
    let prefix = format!("device.attributes[\"{ATTRIBUTE_DOMAIN}\"].uuid == \"");
    let uuid = expression.strip_prefix(&prefix)?.strip_suffix('"')?;
    check_uuid(uuid).ok().map(|()| uuid)
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The claim of replica `replica` (pod `pod`) on the GPUs `uuids`, in plan order.
pub fn resource_claim(
    dep: &VllmDeployment,
    pod: &str,
    replica: u32,
    spec_hash: &str,
    uuids: &[String],
) -> Result<ResourceClaim, ClaimError> {
    if uuids.is_empty() {
        return Err(ClaimError::NoGpus);
    }
    if uuids.len() > MAX_REQUESTS {
        return Err(ClaimError::TooManyGpus { count: uuids.len() });
    }
    for (i, u) in uuids.iter().enumerate() {
        if uuids[..i].contains(u) {
            return Err(ClaimError::DuplicateUuid(u.clone()));
        }
    }
    let name = claim_name(pod);
    if !is_dns_label(&name) {
        return Err(ClaimError::BadName(name));
    }
    let deployment = dep
        .metadata
        .name
        .as_deref()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let namespace = dep
        .metadata
        .namespace
        .as_deref()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let mut labels = selector_labels(deployment);
    labels.insert(LABEL_REPLICA.into(), replica.to_string());
    labels.insert(LABEL_SPEC_HASH.into(), spec_hash.to_string());
    let requests = uuids
        .iter()
        .enumerate()
        .map(|(i, uuid)| {
            Ok(DeviceRequest {
                name: request_name(i),
                exactly: Some(ExactDeviceRequest {
                    device_class_name: DEVICE_CLASS.into(),
                    allocation_mode: Some("ExactCount".into()),
                    count: Some(1),
                    selectors: Some(vec![DeviceSelector {
                        cel: Some(CELDeviceSelector {
                            expression: uuid_selector(uuid)?,
                        }),
                    }]),
                    ..Default::default()
                }),
                first_available: None,
            })
        })
        .collect::<Result<Vec<_>, ClaimError>>()?;
    Ok(ResourceClaim {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_GPU_UUIDS.to_string(),
                uuids.join(","),
            )])),
            owner_references: Some(vec![pod::owner_reference(dep)?]),
            ..Default::default()
        },
        spec: ResourceClaimSpec {
            devices: Some(DeviceClaim {
                requests: Some(requests),
                ..Default::default()
            }),
        },
        status: None,
    })
}

/// The UUIDs a claim asks for, in request order, when every request is one this module
/// writes; `None` for any other claim.
pub fn claimed_uuids(claim: &ResourceClaim) -> Option<Vec<String>> {
    let requests = claim.spec.devices.as_ref()?.requests.as_ref()?;
    requests
        .iter()
        .map(|r| {
            let exactly = r.exactly.as_ref()?;
            if exactly.device_class_name != DEVICE_CLASS {
                return None;
            }
            match exactly.selectors.as_deref()? {
                [one] => selector_uuid(&one.cel.as_ref()?.expression).map(str::to_string),
                _ => None,
            }
        })
        .collect()
}

/// The exact GPUs of a placement (the DRA path), by UUID in rank order; empty on the
/// device-plugin path.
pub fn placement_uuids(placement: &crate::plan::Placement) -> Vec<String> {
    placement
        .exact_gpus
        .iter()
        .map(|g| g.uuid.clone())
        .collect()
}

/// Whether `claim` is owned by the deployment with uid `uid`.
pub fn owned_by(claim: &ResourceClaim, uid: &str) -> bool {
    claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
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

    const A: &str = "GPU-5b3c1d2e-0000-4a1b-9c3d-000000000001";
    const B: &str = "GPU-5b3c1d2e-0000-4a1b-9c3d-000000000002";

    #[test]
    fn one_request_per_gpu_selected_by_uuid_through_the_nvidia_class() {
        let d = deployment();
        let c = resource_claim(&d, "llama-1b-0-h", 0, "h", &[A.into(), B.into()]).unwrap();
        assert_eq!(c.metadata.name.as_deref(), Some("llama-1b-0-h"));
        assert_eq!(c.metadata.namespace, d.metadata.namespace);
        let owner = &c.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "VllmDeployment");
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.controller, Some(true));
        assert!(owned_by(&c, "uid-1"));
        assert!(!owned_by(&c, "uid-2"));
        let labels = c.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_REPLICA], "0");
        assert_eq!(labels[pod::LABEL_MANAGED_BY], pod::MANAGED_BY);
        let requests = c.spec.devices.as_ref().unwrap().requests.clone().unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].name, "gpu-0");
        assert_eq!(requests[1].name, "gpu-1");
        let exactly = requests[1].exactly.as_ref().unwrap();
        assert_eq!(exactly.device_class_name, "gpu.nvidia.com");
        assert_eq!(exactly.count, Some(1));
        assert_eq!(exactly.allocation_mode.as_deref(), Some("ExactCount"));
        assert_eq!(
            exactly.selectors.as_ref().unwrap()[0]
                .cel
                .as_ref()
                .unwrap()
                .expression,
            format!("device.attributes[\"gpu.nvidia.com\"].uuid == \"{B}\"")
        );
        assert_eq!(claimed_uuids(&c), Some(vec![A.to_string(), B.to_string()]));
    }

    #[test]
    fn the_limits_the_api_server_enforces_are_refused_here() {
        let d = deployment();
        assert_eq!(
            resource_claim(&d, "p", 0, "h", &[]),
            Err(ClaimError::NoGpus)
        );
        let many: Vec<String> = (0..33).map(|i| format!("GPU-{i:08x}")).collect();
        assert_eq!(
            resource_claim(&d, "p", 0, "h", &many),
            Err(ClaimError::TooManyGpus { count: 33 })
        );
        assert!(resource_claim(&d, "p", 0, "h", &many[..32]).is_ok());
        assert_eq!(
            resource_claim(&d, "p", 0, "h", &[A.into(), A.into()]),
            Err(ClaimError::DuplicateUuid(A.into()))
        );
        assert_eq!(
            resource_claim(&d, "Bad_Name", 0, "h", &[A.into()]),
            Err(ClaimError::BadName("Bad_Name".into()))
        );
        assert_eq!(
            resource_claim(&d, &"p".repeat(64), 0, "h", &[A.into()]),
            Err(ClaimError::BadName("p".repeat(64)))
        );
        let mut no_uid = d.clone();
        no_uid.metadata.uid = None;
        assert_eq!(
            resource_claim(&no_uid, "p", 0, "h", &[A.into()]),
            Err(ClaimError::Build(BuildError::MissingMetadata("uid")))
        );
    }

    #[test]
    fn a_uuid_that_could_change_the_cel_expression_is_refused() {
        for bad in [
            "GPU-1\" || true || \"",
            "GPU-",
            "MIG-1234",
            "gpu-1234",
            "GPU-12 34",
            "GPU-1234\\",
            "",
        ] {
            assert_eq!(
                uuid_selector(bad),
                Err(ClaimError::BadUuid(bad.into())),
                "{bad}"
            );
        }
        assert!(uuid_selector(&format!("GPU-{}", "a".repeat(61))).is_err());
        assert!(uuid_selector(A).is_ok());
        assert_eq!(selector_uuid(&uuid_selector(A).unwrap()), Some(A));
        assert_eq!(selector_uuid("device.driver == \"gpu.nvidia.com\""), None);
    }
}
