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
