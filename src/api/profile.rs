//! `MemoryProfile`: what one model really takes on one GPU product in one vLLM shape, measured on
//! the cluster (or written by a platform team), so that the next plan uses it.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{KvCacheDtype, Quantization};

/// The measured GPU memory of one model in one vLLM image, GPU product and shape. Cluster-scoped
/// and named by `profile::profile_name` from its key, so every namespace's deployments of the
/// same model share it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vllm-operator.io",
    version = "v1alpha1",
    kind = "MemoryProfile",
    plural = "memoryprofiles",
    singular = "memoryprofile",
    shortname = "vmp",
    category = "vllm",
    status = "MemoryProfileStatus",
    derive = "PartialEq",
    doc = "GPU memory one model takes in one vLLM image, GPU product and shape, as measured on the cluster or written by a platform team; the planner uses it in place of its estimate.",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model"),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.image",
        description = "the vLLM image (its release decides vLLM's memory rules)"
    ),
    printcolumn(name = "GPU", type_ = "string", json_path = ".spec.gpuProduct"),
    printcolumn(name = "TP", type_ = "integer", json_path = ".spec.tensorParallelSize"),
    printcolumn(name = "Quant", type_ = "string", json_path = ".spec.quantization"),
    printcolumn(name = "KV dtype", type_ = "string", json_path = ".spec.kvCacheDtype"),
    printcolumn(
        name = "Non-KV per GPU",
        type_ = "integer",
        json_path = ".spec.nonKvBytesPerGpu",
        description = "bytes vLLM takes from its budget before the KV cache, per GPU"
    ),
    printcolumn(
        name = "Observations",
        type_ = "integer",
        json_path = ".spec.observations"
    ),
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.source"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MemoryProfileSpec {
    /// Hugging Face model id (`spec.model.name` of the deployments it serves).
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("model must not be empty"))]
    #[schemars(length(max = 253))]
    pub model: String,

    /// Hugging Face revision; absent means the default branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub revision: Option<String>,

    /// The vLLM container image, as the deployments name it.
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("image must not be empty"))]
    #[schemars(length(max = 1024))]
    pub image: String,

    /// GPU product name as NVML reports it (a GpuNode's `status.gpus[].product`).
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("gpuProduct must not be empty"))]
    #[schemars(length(max = 253))]
    pub gpu_product: String,

    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 64").message("tensorParallelSize must be between 1 and 64"))]
    pub tensor_parallel_size: u32,

    #[serde(default)]
    pub quantization: Quantization,

    #[serde(default)]
    pub kv_cache_dtype: KvCacheDtype,

    /// Bytes per GPU vLLM takes from its budget (`u * total`) before the KV cache: weights,
    /// activation peak, non-torch memory, and CUDA graphs where the release counts them in the
    /// budget. vLLM's own `requested_memory - available_kv_cache_memory`.
    pub non_kv_bytes_per_gpu: u64,

    /// Bytes per GPU vLLM holds before its startup free-memory check (CUDA context, NCCL,
    /// cuBLAS): free memory just before `exec` less the free memory vLLM reports. Absent: the
    /// estimate's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_overhead_bytes: Option<u64>,

    /// How many starts the figures were measured from.
    #[serde(default)]
    pub observations: u32,

    /// `Measured` profiles are written by the controller; `Manual` ones by people, and the
    /// controller never changes their spec (it records what it observes in `status`).
    #[serde(default)]
    pub source: ProfileSource,
}

/// Who wrote a profile's figures; `Manual` orders above `Measured` (a person's profile wins).
#[derive(
    schemars::JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Default,
)]
pub enum ProfileSource {
    /// Learned by the controller from observed starts.
    #[default]
    Measured,
    /// Written by hand (GitOps, a platform team): the controller never overwrites the spec.
    Manual,
}

/// What the controller observed, for every profile (for a `Manual` profile the only place its
/// observations go).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemoryProfileStatus {
    /// Observations recorded.
    #[serde(default)]
    pub observations: u32,
    /// The largest non-KV bytes per GPU observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_non_kv_bytes_per_gpu: Option<u64>,
    /// The largest startup overhead per GPU observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_startup_overhead_bytes: Option<u64>,
    /// The latest observation, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_observation: Option<String>,
    /// The most recent pods (`namespace/name`) counted, so that a pod is counted once however
    /// often it is reconciled; at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub recent_pods: Vec<String>,
}
