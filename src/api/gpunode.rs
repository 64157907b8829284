//! `GpuNode`: what the node agent sees on one node's GPUs, written only by that node's agent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::Sharing;

/// Empty: a GpuNode carries everything in its status, written by the node agent.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "vllm-operator.io",
    version = "v1alpha1",
    kind = "GpuNode",
    plural = "gpunodes",
    singular = "gpunode",
    shortname = "gpun",
    category = "vllm",
    status = "GpuNodeStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "GPU memory of one node as NVML reports it, published by the vllm-node-agent of that node.",
    printcolumn(name = "Node", type_ = "string", json_path = ".status.nodeName"),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".status.gpuCount"),
    printcolumn(
        name = "Free",
        type_ = "string",
        json_path = ".status.freeSummary",
        description = "free / total GPU memory over all GPUs, and the most free on one GPU"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct GpuNodeSpec {}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GpuNodeStatus {
    pub node_name: String,
    /// When NVML was read (RFC 3339).
    pub observed_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// `Shared` when the device plugin time-slices or runs MPS on this node.
    #[serde(default)]
    pub sharing: Sharing,
    /// How the device plugin shares the GPUs (`time-slicing` or `mps`), from the Node's
    /// `nvidia.com/gpu.sharing-strategy` label; absent when they are not shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing_strategy: Option<String>,
    /// How many pods the device plugin hands each GPU to at once (the Node's
    /// `nvidia.com/gpu.replicas` label), when shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_per_gpu: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub gpus: Vec<GpuInfo>,
    /// Number of entries in `gpus`, for `kubectl get`.
    #[serde(default)]
    pub gpu_count: u32,
    /// e.g. `"91.3/640.0 GiB (max 79.1 on one GPU)"`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_summary: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GpuInfo {
    /// NVML index (MIG devices: the parent's index).
    pub index: u32,
    pub uuid: String,
    /// NVML product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub product: String,
    /// CUDA compute capability, e.g. `"9.0"`.
    pub compute_capability: String,
    pub memory: GpuMemory,
    /// `Enabled` or `Disabled`; absent when NVML does not support MIG on this GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_mode: Option<String>,
    /// For a MIG device: the UUID of its physical GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_uuid: Option<String>,
    /// The pod the kubelet assigned this GPU to, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_to: Option<PodRef>,
    /// Compute processes on this GPU, when NVML reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<GpuProcess>,
}

/// NVML `nvmlMemory_v2_t`, in bytes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GpuMemory {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    /// Reserved by the driver and firmware; CUDA's total is about `total - reserved`.
    #[serde(default)]
    pub reserved_bytes: u64,
}

#[derive(
    KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash,
)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GpuProcess {
    pub pid: u32,
    pub used_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

/// NVIDIA GPU feature discovery's label with the device plugin's sharing strategy.
pub const LABEL_SHARING_STRATEGY: &str = "nvidia.com/gpu.sharing-strategy";
/// NVIDIA GPU feature discovery's label with how many replicas each GPU is advertised as.
pub const LABEL_GPU_REPLICAS: &str = "nvidia.com/gpu.replicas";

/// How a node's device plugin shares its GPUs, as NVIDIA GPU feature discovery labels the Node
/// (NVIDIA/k8s-device-plugin internal/lm/resource.go, `baseLabeler`: `gpu.replicas` is 0 with
/// sharing disabled, 1 by default, N when each GPU is replicated N times; `gpu.sharing-strategy`
/// is `none` unless replicas > 1, then `time-slicing` or `mps`). Releases before the strategy
/// label only replicated for time-slicing, so replicas > 1 without it means time-slicing.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeSharing {
    pub sharing: Sharing,
    pub strategy: Option<String>,
    pub replicas_per_gpu: Option<u32>,
}

impl NodeSharing {
    pub fn from_labels(labels: &std::collections::BTreeMap<String, String>) -> Self {
        let replicas = labels
            .get(LABEL_GPU_REPLICAS)
            .and_then(|r| r.trim().parse::<u32>().ok());
        let strategy = labels.get(LABEL_SHARING_STRATEGY).map(|s| s.trim());
        let shared_strategy = match strategy {
            Some(s @ ("time-slicing" | "mps")) => Some(s.to_string()),
            // An explicit `none` wins over a replicas count.
            Some(_) => None,
            None => replicas
                .filter(|r| *r > 1)
                .map(|_| "time-slicing".to_string()),
        };
        match shared_strategy {
            Some(strategy) => NodeSharing {
                sharing: Sharing::Shared,
                strategy: Some(strategy),
                replicas_per_gpu: replicas.filter(|r| *r > 0),
            },
            None => NodeSharing::default(),
        }
    }

    /// Write this onto a status.
    pub fn apply_to(&self, status: &mut GpuNodeStatus) {
        status.sharing = self.sharing;
        status.sharing_strategy = self.strategy.clone();
        status.replicas_per_gpu = self.replicas_per_gpu;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sharing_follows_gpu_feature_discovery_labels() {
        let shared = |strategy: &str, replicas: Option<u32>| NodeSharing {
            sharing: Sharing::Shared,
            strategy: Some(strategy.into()),
            replicas_per_gpu: replicas,
        };
        assert_eq!(
            NodeSharing::from_labels(&labels(&[])),
            NodeSharing::default()
        );
        assert_eq!(
            NodeSharing::from_labels(&labels(&[
                (LABEL_SHARING_STRATEGY, "none"),
                (LABEL_GPU_REPLICAS, "1")
            ])),
            NodeSharing::default()
        );
        assert_eq!(
            NodeSharing::from_labels(&labels(&[
                (LABEL_SHARING_STRATEGY, "time-slicing"),
                (LABEL_GPU_REPLICAS, "4")
            ])),
            shared("time-slicing", Some(4))
        );
        assert_eq!(
            NodeSharing::from_labels(&labels(&[
                (LABEL_SHARING_STRATEGY, "mps"),
                (LABEL_GPU_REPLICAS, "8")
            ])),
            shared("mps", Some(8))
        );
        // Older feature discovery: replicas only, for time-slicing.
        assert_eq!(
            NodeSharing::from_labels(&labels(&[(LABEL_GPU_REPLICAS, "2")])),
            shared("time-slicing", Some(2))
        );
        // Garbage does not make a node shared.
        assert_eq!(
            NodeSharing::from_labels(&labels(&[
                (LABEL_SHARING_STRATEGY, "bogus"),
                (LABEL_GPU_REPLICAS, "many")
            ])),
            NodeSharing::default()
        );
    }
}
