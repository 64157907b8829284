//! `VllmDeployment`: what a platform team asks for, and what the operator did about it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EnvVar, LocalObjectReference, PodSecurityContext, ResourceRequirements, SecurityContext,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{KvCacheDtype, Quantization, Sharing};

/// A vLLM model server whose GPU memory settings are chosen from measured free memory.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vllm-operator.io",
    version = "v1alpha1",
    kind = "VllmDeployment",
    plural = "vllmdeployments",
    singular = "vllmdeployment",
    shortname = "vd",
    category = "vllm",
    namespaced,
    status = "VllmDeploymentStatus",
    derive = "PartialEq",
    cel,
    doc = "A vLLM model server whose tensor parallel size, quantization and GPU memory utilization are chosen from measured GPU free memory.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        // HorizontalPodAutoscaler and KEDA find the pods to measure through the scale
        // subresource's selector (autoscaling/v1 Scale.status.selector).
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "ready replicas / desired replicas"
    ),
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model.name"),
    printcolumn(
        name = "TP",
        type_ = "string",
        json_path = ".status.tensorParallel",
        description = "tensor parallel size of the placed replicas"
    ),
    printcolumn(
        name = "Quant",
        type_ = "string",
        json_path = ".status.quantization",
        description = "quantization of the placed replicas"
    ),
    printcolumn(
        name = "Util",
        type_ = "string",
        json_path = ".status.utilization",
        description = "--gpu-memory-utilization of the placed replicas"
    ),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.state"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VllmDeploymentSpec {
    /// The model to serve.
    pub model: ModelSpec,

    /// The vLLM container image.
    #[serde(default = "default_image")]
    pub image: String,

    /// Number of vLLM servers; each may get a different shape and node.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = kube::core::Rule::new("self >= 0").message("replicas must be 0 or more"))]
    pub replicas: i32,

    /// Longest request (prompt + output) every replica must hold. Defaults to the model's
    /// `max_position_embeddings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1").message("maxModelLen must be at least 1"))]
    pub max_model_len: Option<i64>,

    /// Requests of `maxModelLen` tokens every replica must hold in KV cache at once.
    #[serde(default = "default_one")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1").message("minConcurrency must be at least 1"))]
    pub min_concurrency: i32,

    #[serde(default)]
    pub tensor_parallel: TensorParallelSpec,

    #[serde(default)]
    pub quantization: QuantizationSpec,

    #[serde(default)]
    pub kv_cache_dtype: KvCacheDtypeSpec,

    #[serde(default)]
    pub memory: MemorySpec,

    #[serde(default)]
    pub gpu: GpuSpec,

    /// Extra `vllm serve` arguments, read as the image's vLLM parses them. Flags the operator
    /// owns (tensor parallel size, quantization, kv cache dtype, max model len, GPU memory
    /// utilization) are replaced in any spelling vLLM accepts; --max-num-seqs,
    /// --max-num-batched-tokens, --enforce-eager and --block-size are sized; arguments it
    /// cannot size (--kv-cache-memory-bytes, --cpu-offload-gb, pipeline parallel) are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// CPU and memory for the vLLM container; `nvidia.com/gpu` is set by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Pull secrets for the vLLM image and the launcher init image (a PodSpec's
    /// `imagePullSecrets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Pod-level security context, merged field by field over the operator's default
    /// (`seccompProfile: RuntimeDefault`). Set `runAsNonRoot`/`runAsUser` here for namespaces
    /// that enforce the `restricted` Pod Security level, with an image that runs as non-root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security_context: Option<PodSecurityContext>,

    /// Security context of the vLLM container, merged field by field over the operator's
    /// default (`allowPrivilegeEscalation: false`, `capabilities.drop: [ALL]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,

    /// Where the model's weights are cached (`HF_HOME`). Default: an `emptyDir` sized from the
    /// checkpoint, with a matching `ephemeral-storage` request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_cache: Option<ModelCacheSpec>,

    /// Extra pod volumes (chat templates, LoRA adapters...), validated as a PodSpec's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,

    /// Mounts of `volumes` into the vLLM container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,

    /// Port of vLLM's OpenAI-compatible server and of the Service.
    #[serde(default = "default_port")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 65535").message("port must be between 1 and 65535"))]
    pub port: i32,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.path) || has(self.architecture) || has(self.configMapRef)").message("model.path needs model.architecture or model.configMapRef: the controller cannot read the volume to size the model"))]
pub struct ModelSpec {
    /// Hugging Face model id, e.g. `meta-llama/Llama-3.1-8B-Instruct`.
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("model.name must not be empty"))]
    #[schemars(length(max = 253))]
    pub name: String,

    /// The model's architecture, when it is not in the built-in catalog and should not be
    /// fetched from the Hugging Face Hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<ModelArchitecture>,

    /// A ConfigMap key holding the model's `config.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyRef>,

    /// Hugging Face revision (branch, tag or commit) of `config.json`; default `main`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,

    /// A Secret key holding a Hugging Face token, for gated or private models. The controller
    /// reads it to fetch config.json; the vLLM container gets it as `HF_TOKEN` from the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_token_secret_ref: Option<SecretKeyRef>,

    /// Serve this directory of the model cache volume instead of downloading `name` (air-gapped
    /// clusters); relative to the volume's root. Needs `modelCache.persistentVolumeClaim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub path: Option<String>,

    /// Never contact the Hugging Face Hub from the pod (`HF_HUB_OFFLINE=1`): the cache must be
    /// filled already.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offline: bool,
}

/// Where `HF_HOME` lives. At most one of the two; neither means an `emptyDir` per pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.persistentVolumeClaim) && has(self.ephemeral))").message("modelCache: set persistentVolumeClaim or ephemeral, not both"))]
pub struct ModelCacheSpec {
    /// An existing claim, shared by every replica (ReadWriteMany when replicas land on several
    /// nodes): the weights are downloaded once and survive restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcCacheSpec>,

    /// A generic ephemeral volume per pod, provisioned from a StorageClass and deleted with the
    /// pod: node disk is not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<EphemeralCacheSpec>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PvcCacheSpec {
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("modelCache.persistentVolumeClaim.claimName must not be empty"))]
    #[schemars(length(max = 253))]
    pub claim_name: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralCacheSpec {
    /// Default: the cluster's default StorageClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,

    /// Requested capacity; default: the checkpoint's size on disk plus the cache margin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    #[serde(default = "default_token_key")]
    pub key: String,
}

/// The memory-relevant facts of a model, in the spirit of its Hugging Face `config.json`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelArchitecture {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_hidden_layers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_attention_heads: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<u64>,
    /// Total parameter count; computed from the architecture when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<u64>,
    /// Weight dtype of the checkpoint: `bfloat16`, `float16`, `float32`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    pub name: String,
    #[serde(default = "default_config_key")]
    pub key: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TensorParallelSpec {
    /// Tensor parallel sizes the planner may choose from, smallest preferred.
    #[serde(default = "default_tp_sizes")]
    #[schemars(length(max = 7))]
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0 && self.all(s, s in [1, 2, 4, 8, 16, 32, 64])").message("tensorParallel.sizes must be non-empty powers of two from 1 to 64"))]
    pub sizes: Vec<i32>,
}

impl Default for TensorParallelSpec {
    fn default() -> Self {
        Self {
            sizes: default_tp_sizes(),
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QuantizationSpec {
    /// Quantizations the planner may choose from; `none` is preferred when it fits.
    #[serde(default = "default_quantization")]
    #[schemars(length(max = 6))]
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("quantization.allowed must not be empty"))]
    pub allowed: Vec<Quantization>,
}

impl Default for QuantizationSpec {
    fn default() -> Self {
        Self {
            allowed: default_quantization(),
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KvCacheDtypeSpec {
    /// KV cache dtypes the planner may choose from; `auto` (the model dtype) is preferred.
    #[serde(default = "default_kv_dtype")]
    #[schemars(length(max = 4))]
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("kvCacheDtype.allowed must not be empty"))]
    pub allowed: Vec<KvCacheDtype>,
}

impl Default for KvCacheDtypeSpec {
    fn default() -> Self {
        Self {
            allowed: default_kv_dtype(),
        }
    }
}

/// How the planner chooses `--gpu-memory-utilization`.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum MemoryStrategy {
    /// The largest utilization that passes vLLM's startup check: the most KV cache.
    #[default]
    MaximizeCache,
    /// The smallest utilization that holds `minConcurrency` requests: room for co-tenants.
    Pack,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemorySpec {
    /// Bytes kept free on every GPU beyond vLLM's own startup needs.
    #[serde(default = "default_headroom", deserialize_with = "headroom_or_default")]
    #[schemars(schema_with = "headroom_schema")]
    pub headroom: Quantity,

    /// Upper bound on `--gpu-memory-utilization`.
    #[serde(default = "default_max_utilization")]
    #[x_kube(validation = kube::core::Rule::new("self > 0.0 && self <= 1.0").message("memory.maxUtilization must be in (0, 1]"))]
    pub max_utilization: f64,

    #[serde(default)]
    pub strategy: MemoryStrategy,
}

impl Default for MemorySpec {
    fn default() -> Self {
        Self {
            headroom: default_headroom(),
            max_utilization: default_max_utilization(),
            strategy: MemoryStrategy::default(),
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    /// `Exclusive`: whole GPUs through `nvidia.com/gpu`. `Shared`: time-sliced or MPS GPUs,
    /// where co-tenants' memory is the constraint.
    #[serde(default)]
    pub sharing: Sharing,

    /// GPU product names (as NVML reports them) this deployment may use; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<String>,

    /// Lowest CUDA compute capability, e.g. `"8.0"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[0-9]+\\\\.[0-9]+$')").message("gpu.minComputeCapability must look like 8.0"))]
    pub min_compute_capability: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VllmDeploymentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// kstatus conditions (`Ready`, `Reconciling`, `Stalled`) plus `Admitted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    #[serde(default)]
    pub replicas: i32,

    #[serde(default)]
    pub ready_replicas: i32,

    /// One entry per replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placements: Vec<Placement>,

    /// `ready/desired`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Tensor parallel sizes of the placed replicas, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor_parallel: Option<String>,
    /// Quantizations of the placed replicas, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    /// GPU memory utilizations of the placed replicas, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<String>,
    /// One word for `kubectl get`: `Ready`, `Progressing`, `InsufficientGpuMemory`, `Invalid`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Label selector of the replicas' pods, for the scale subresource (HPA, KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The name of the Service in front of the replicas (a DNS-1035 label derived from the
    /// deployment's name, which may contain dots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

/// Where one replica runs and with which vLLM memory settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    pub pod: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The GPUs the replica runs on, by NVML UUID. Exact GPUs (DRA): the planned ones, from
    /// release on. Device plugin: the ones the node agent reports allocated to the pod, once it
    /// does (empty before: the kubelet picks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_uuids: Vec<String>,
    /// Device plugin only: GPU indices on the node the kubelet may hand the replica, a
    /// candidate set, not an assignment (see `gpuUuids`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidate_gpus: Vec<u32>,
    pub tensor_parallel_size: u32,
    pub quantization: Quantization,
    pub kv_cache_dtype: KvCacheDtype,
    /// The planned `--gpu-memory-utilization`; the launcher may lower it at start.
    pub gpu_memory_utilization: f64,
    pub max_model_len: u64,
    /// Predicted KV cache capacity in tokens per replica.
    pub kv_cache_tokens: u64,
    /// Why the replica is where it is, or why it was re-planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes per GPU the plan counted inside vLLM's budget before the KV cache (weights,
    /// activations, non-torch memory, graphs): the estimate's, or a MemoryProfile's measured
    /// figure plus its margin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_non_kv_bytes: Option<u64>,
    /// The same figure as measured from this replica's start (vLLM's own figures), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_non_kv_bytes: Option<u64>,
    /// The MemoryProfile whose figures the plan used, if one matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_profile: Option<String>,
}

fn default_image() -> String {
    "vllm/vllm-openai:v0.33.0".to_string()
}
fn default_replicas() -> i32 {
    1
}
fn default_one() -> i32 {
    1
}
fn default_port() -> i32 {
    8000
}
fn default_token_key() -> String {
    "token".to_string()
}
fn default_config_key() -> String {
    "config.json".to_string()
}
fn default_tp_sizes() -> Vec<i32> {
    vec![1, 2, 4, 8]
}
fn default_quantization() -> Vec<Quantization> {
    vec![Quantization::None]
}
fn default_kv_dtype() -> Vec<KvCacheDtype> {
    vec![KvCacheDtype::Auto]
}
fn default_headroom() -> Quantity {
    Quantity("256Mi".to_string())
}
/// An explicit `headroom: null` means the default, as the API server does for a non-nullable
/// field with a default (apiextensions-apiserver prunes the null, then defaults it).
fn headroom_or_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Quantity, D::Error> {
    Ok(Option::<Quantity>::deserialize(d)?.unwrap_or_else(default_headroom))
}

/// Quantity's schema without the `nullable: true` kube adds to every optional int-or-string
/// property: `headroom` is never null (a null failed decoding in the controller).
fn headroom_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "nullable": false,
    })
}

fn default_max_utilization() -> f64 {
    0.95
}
