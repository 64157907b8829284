//! Per-GPU memory of one model in one shape, as vLLM counts it (see
//! shared/reference/vllm-memory.md): weights, KV bytes per token, activation peak, non-torch
//! memory, CUDA graphs and vLLM's pre-check overhead; then, for a GPU and a utilization, the KV
//! cache vLLM will allocate.

use std::fmt;

use serde::Serialize;

use super::arch::{Architecture, Attention, CheckpointFormat};
use crate::api::{KvCacheDtype, Quantization};
use crate::fit::{GpuMemoryView, LaunchPlan};

const MIB: u64 = 1 << 20;
/// fp32 copies of the logits alive at the sampler's peak (see the activation estimate).
const SAMPLER_LOGIT_COPIES: u64 = 10;
const GIB: u64 = 1 << 30;

/// vLLM versions differ in where CUDA graphs are counted and how the startup check rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum VllmFamily {
    /// Before 0.8 (V0 engine): no startup check; without chunked prefill the profiling batch
    /// is the whole `max_model_len`; CUDA graphs outside the budget.
    V0,
    /// 0.8 to 0.20: CUDA graphs are captured after the KV cache, outside `u * total`.
    V0_11,
    /// 0.21 and later: CUDA graph memory is estimated and taken from the budget.
    V0_21,
}

impl VllmFamily {
    /// Parse `0.11.0`, `v0.21.1`, `0.6.3.post1`...; versions before 0.9.1 behave like 0.11
    /// for sizing (they had no startup check, which only makes our choice safer).
    pub fn parse(version: &str) -> Result<Self, String> {
        let v = version.trim().trim_start_matches('v');
        let mut parts = v.split(['.', '+', '-']);
        let major: u32 = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("cannot read vLLM version {version:?}"))?;
        let minor: u32 = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("cannot read vLLM version {version:?}"))?;
        Ok(match (major, minor) {
            (0, 0..=7) => VllmFamily::V0,
            (0, 8..=20) => VllmFamily::V0_11,
            _ => VllmFamily::V0_21,
        })
    }

    /// vLLM's default `--gpu-memory-utilization` in this family.
    pub fn default_utilization(self) -> f64 {
        match self {
            VllmFamily::V0 | VllmFamily::V0_11 => 0.9,
            VllmFamily::V0_21 => 0.92,
        }
    }
}

/// The vLLM arguments that change memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    pub tensor_parallel_size: u32,
    pub quantization: Quantization,
    pub kv_cache_dtype: KvCacheDtype,
    pub max_model_len: u64,
    pub max_num_seqs: Option<u64>,
    pub max_num_batched_tokens: Option<u64>,
    pub enforce_eager: bool,
    pub family: VllmFamily,
}

/// What is known about the GPU, for defaults and hardware rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuFacts {
    /// Total memory (NVML); picks vLLM's batch defaults.
    pub total_bytes: Option<u64>,
    /// `(major, minor)`.
    pub compute_capability: Option<(u32, u32)>,
    pub product: Option<String>,
}

/// Why a shape cannot run, in words a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidShape(pub String);

/// Weight format after applying `--quantization` to the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
enum WeightFormat {
    Dense,
    Fp8,
    /// FP8 feed-forward weights except in the first and last layer.
    Fp8FeedForward,
    /// Integer weights; `group_size` 0 means per-channel scales.
    Int {
        bits: u64,
        group_size: u64,
    },
    Mxfp4Experts,
}

/// Bytes per parameter of each part of the model in a weight format.
struct PartBytes {
    attention: f64,
    mlp: f64,
    experts: f64,
}

impl WeightFormat {
    fn part_bytes(self, dense: u64, layers: u64) -> PartBytes {
        let d = dense as f64;
        let uniform = |b: f64| PartBytes {
            attention: b,
            mlp: b,
            experts: b,
        };
        match self {
            WeightFormat::Dense => uniform(d),
            WeightFormat::Fp8 => uniform(1.0),
            WeightFormat::Int {
                bits,
                group_size: 0,
            } => uniform(bits as f64 / 8.0),
            WeightFormat::Int { bits, group_size } => {
                uniform(bits as f64 / 8.0 + (2.0 + bits as f64 / 8.0) / group_size as f64)
            }
            WeightFormat::Fp8FeedForward => {
                let dense_layers = layers.min(2) as f64;
                PartBytes {
                    attention: d,
                    mlp: ((layers as f64 - dense_layers) + dense_layers * d) / layers.max(1) as f64,
                    experts: 1.0,
                }
            }
            // 4-bit values plus one 8-bit scale per 32.
            WeightFormat::Mxfp4Experts => PartBytes {
                attention: d,
                mlp: d,
                experts: 4.25 / 8.0,
            },
        }
    }
}

/// Per-GPU memory of one model in one shape.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Estimate {
    pub weights_bytes_per_gpu: u64,
    /// Peak while loading: the dense size when fp8 is applied online to a bf16 checkpoint.
    pub weights_load_peak_bytes: u64,
    pub kv_cache_bytes_per_token_per_gpu: u64,
    pub activation_peak_bytes: u64,
    pub non_torch_bytes: u64,
    pub cuda_graph_bytes: u64,
    pub startup_overhead_bytes: u64,
    pub block_size: u64,
    pub max_num_batched_tokens: u64,
    pub max_num_seqs: u64,
    /// KV bytes one request of `max_model_len` tokens needs (sliding layers counted as vLLM does).
    pub kv_bytes_per_request: u64,
    /// CUDA graphs taken from `u * total` (0.21+) rather than outside it.
    pub cuda_graphs_in_budget: bool,
    pub max_model_len: u64,
}

/// The KV cache vLLM sizes for a GPU total and utilization.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct KvCache {
    pub kv_cache_bytes: u64,
    pub num_blocks: u64,
    pub kv_cache_tokens: u64,
    pub max_concurrency: f64,
}

impl Estimate {
    /// Bytes per KV block on one GPU (all layers).
    pub fn bytes_per_block(&self) -> u64 {
        self.kv_cache_bytes_per_token_per_gpu * self.block_size
    }

    /// Everything vLLM takes from `u * total` before the KV cache.
    pub fn required_bytes(&self) -> u64 {
        let graphs = if self.cuda_graphs_in_budget {
            self.cuda_graph_bytes
        } else {
            0
        };
        self.weights_bytes_per_gpu + self.activation_peak_bytes + self.non_torch_bytes + graphs
    }

    /// Memory that must be free beyond `u * total`: vLLM's own overhead, and the CUDA graphs
    /// when they are captured outside the budget.
    pub fn outside_budget_bytes(&self) -> u64 {
        let graphs = if self.cuda_graphs_in_budget {
            0
        } else {
            self.cuda_graph_bytes
        };
        self.startup_overhead_bytes + graphs
    }

    /// KV cache needed for `concurrency` requests of `max_model_len`, plus vLLM's null block.
    pub fn min_kv_bytes(&self, concurrency: u64) -> u64 {
        self.kv_bytes_per_request * concurrency + self.bytes_per_block()
    }

    /// KV cache vLLM allocates when CUDA reports `cuda_total_bytes` and `u` is `utilization`.
    pub fn kv_cache(&self, cuda_total_bytes: u64, utilization: f64) -> KvCache {
        let requested = match self.cuda_graphs_in_budget {
            true => (cuda_total_bytes as f64 * utilization).ceil() as u64,
            false => (cuda_total_bytes as f64 * utilization) as u64,
        };
        let kv_cache_bytes = requested.saturating_sub(self.required_bytes());
        let per_block = self.bytes_per_block().max(1);
        let num_blocks = kv_cache_bytes / per_block;
        let blocks_per_request = self.kv_bytes_per_request.div_ceil(per_block).max(1);
        KvCache {
            kv_cache_bytes,
            num_blocks,
            kv_cache_tokens: num_blocks * self.block_size,
            max_concurrency: num_blocks as f64 / blocks_per_request as f64,
        }
    }

    /// The launcher's plan for this estimate.
    pub fn launch_plan(
        &self,
        concurrency: u64,
        headroom_bytes: u64,
        max_utilization: f64,
        strategy: crate::api::MemoryStrategy,
    ) -> LaunchPlan {
        LaunchPlan {
            required_bytes: self.required_bytes(),
            min_kv_bytes: self.min_kv_bytes(concurrency),
            startup_overhead_bytes: self.outside_budget_bytes(),
            headroom_bytes,
            max_utilization,
            strategy,
        }
    }

    /// Whether loading the weights fits what is free after vLLM's overhead (online fp8 loads
    /// the dense weights first).
    pub fn load_fits(&self, gpu: GpuMemoryView) -> bool {
        gpu.free_bytes.saturating_sub(self.startup_overhead_bytes) >= self.weights_load_peak_bytes
    }
}

fn cc_at_least(gpu: &GpuFacts, major: u32, minor: u32) -> Result<(), (u32, u32)> {
    match gpu.compute_capability {
        Some(cc) if cc < (major, minor) => Err(cc),
        _ => Ok(()),
    }
}

/// The weight format a shape runs with, or why the checkpoint cannot take that quantization.
fn weight_format(arch: &Architecture, q: Quantization) -> Result<WeightFormat, InvalidShape> {
    use CheckpointFormat as C;
    use Quantization as Q;
    let published = match &arch.checkpoint {
        C::Dense => "unquantized",
        C::Fp8 => "FP8",
        C::FbgemmFp8 => "FBGEMM FP8",
        C::Awq { .. } => "AWQ",
        C::Gptq { .. } => "GPTQ",
        C::Mxfp4 => "MXFP4",
        C::CompressedInt { .. } => "compressed-tensors",
        C::Other(m) => m.as_str(),
    };
    let mismatch = || {
        InvalidShape(format!(
            "quantization {q} needs a checkpoint published in that format; this one is {published}"
        ))
    };
    Ok(match (&arch.checkpoint, q) {
        (C::Dense, Q::None) => WeightFormat::Dense,
        (C::Dense, Q::Fp8) | (C::Fp8, Q::None | Q::Fp8) => WeightFormat::Fp8,
        (C::FbgemmFp8, Q::None | Q::Fp8) => WeightFormat::Fp8FeedForward,
        (C::Awq { group_size }, Q::None | Q::Awq | Q::AwqMarlin) => WeightFormat::Int {
            bits: 4,
            group_size: *group_size,
        },
        (C::Gptq { bits, group_size }, Q::None | Q::Gptq | Q::GptqMarlin) => WeightFormat::Int {
            bits: *bits,
            group_size: *group_size,
        },
        (C::Mxfp4, Q::None) => WeightFormat::Mxfp4Experts,
        (C::CompressedInt { bits }, Q::None) => WeightFormat::Int {
            bits: *bits,
            group_size: 0,
        },
        // Unknown methods are sized at the dense dtype: an over-estimate, never an under-one.
        (C::Other(_), Q::None) => WeightFormat::Dense,
        _ => return Err(mismatch()),
    })
}

/// Check that vLLM can shard the model this way on this GPU.
pub fn validate_shape(
    arch: &Architecture,
    shape: &Shape,
    gpu: &GpuFacts,
) -> Result<(), InvalidShape> {
    let tp = shape.tensor_parallel_size;
    if tp == 0 || !tp.is_power_of_two() || tp > 64 {
        return Err(InvalidShape(format!(
            "tensor parallel size {tp} is not a power of two from 1 to 64"
        )));
    }
    if !arch.num_attention_heads.is_multiple_of(tp) {
        return Err(InvalidShape(format!(
            "{} attention heads are not divisible by tensor parallel size {tp}",
            arch.num_attention_heads
        )));
    }
    if arch.attention == Attention::Standard {
        let kv = arch.num_kv_heads.max(1);
        let ok = if tp >= kv {
            tp.is_multiple_of(kv)
        } else {
            kv.is_multiple_of(tp)
        };
        if !ok {
            return Err(InvalidShape(format!(
                "{kv} KV heads and tensor parallel size {tp}: one must divide the other"
            )));
        }
    }
    let per_rank_intermediate = match &arch.moe {
        Some(m) => m.expert_intermediate_size,
        None => arch.intermediate_size,
    };
    if per_rank_intermediate % tp as u64 != 0 {
        return Err(InvalidShape(format!(
            "intermediate size {per_rank_intermediate} is not divisible by tensor parallel size {tp}"
        )));
    }
    if shape.max_model_len == 0 {
        return Err(InvalidShape("max model len must be at least 1".into()));
    }
    let format = weight_format(arch, shape.quantization)?;
    let shard_in = per_rank_intermediate / tp as u64;
    match format {
        WeightFormat::Fp8 | WeightFormat::Fp8FeedForward => {
            if let Err((ma, mi)) = cc_at_least(gpu, 8, 9) {
                return Err(InvalidShape(format!(
                    "fp8 W8A8 needs compute capability 8.9 or newer; this GPU has {ma}.{mi} (vLLM would fall back to slower Marlin W8A16)"
                )));
            }
        }
        WeightFormat::Int { group_size, .. }
            if !matches!(arch.checkpoint, CheckpointFormat::CompressedInt { .. }) =>
        {
            let (need, name) = match shape.quantization {
                Quantization::AwqMarlin | Quantization::GptqMarlin => ((8, 0), "Marlin kernels"),
                Quantization::Gptq => ((6, 0), "GPTQ"),
                _ => ((7, 5), "AWQ"),
            };
            if let Err((ma, mi)) = cc_at_least(gpu, need.0, need.1) {
                return Err(InvalidShape(format!(
                    "{name} needs compute capability {}.{} or newer; this GPU has {ma}.{mi}",
                    need.0, need.1
                )));
            }
            if group_size > 0 && !shard_in.is_multiple_of(group_size) {
                return Err(InvalidShape(format!(
                    "intermediate size per rank {shard_in} is not a multiple of the quantization group size {group_size} at tensor parallel size {tp}"
                )));
            }
            let marlin = matches!(
                shape.quantization,
                Quantization::AwqMarlin | Quantization::GptqMarlin
            );
            if marlin && !shard_in.is_multiple_of(128) {
                return Err(InvalidShape(format!(
                    "Marlin needs the per-rank intermediate size ({shard_in}) to be a multiple of 128 at tensor parallel size {tp}"
                )));
            }
        }
        WeightFormat::Mxfp4Experts => {
            if let Err((ma, mi)) = cc_at_least(gpu, 8, 0) {
                return Err(InvalidShape(format!(
                    "MXFP4 needs compute capability 8.0 or newer; this GPU has {ma}.{mi}"
                )));
            }
        }
        WeightFormat::Int { .. } | WeightFormat::Dense => {}
    }
    Ok(())
}

/// vLLM's defaults for the batch: 8192 tokens / 1024 sequences on GPUs of 70 GiB or more
/// (except A100), else 2048 / 256.
fn batch_defaults(gpu: &GpuFacts) -> (u64, u64) {
    let big = gpu.total_bytes.is_some_and(|t| t >= 70 * GIB)
        && !gpu.product.as_deref().is_some_and(|p| p.contains("A100"));
    if big { (8192, 1024) } else { (2048, 256) }
}

/// Estimate one shape. Fails with the reason when vLLM could not run it.
pub fn estimate(
    arch: &Architecture,
    shape: &Shape,
    gpu: &GpuFacts,
) -> Result<Estimate, InvalidShape> {
    validate_shape(arch, shape, gpu)?;
    let tp = shape.tensor_parallel_size as u64;
    let format = weight_format(arch, shape.quantization)?;
    // vLLM runs float32 checkpoints in 16 bits by default.
    let dense = arch.dtype_bytes.min(2);
    let p = arch.parameter_breakdown();

    // Attention projections: K/V are replicated when tp exceeds the KV heads.
    let attention_per_rank = match &arch.attention {
        Attention::Standard => {
            let q = arch.num_attention_heads as u64 * arch.head_dim;
            let kv = arch.kv_heads_per_rank(shape.tensor_parallel_size) * arch.head_dim;
            arch.num_layers as u64 * (2 * arch.hidden_size * q / tp + 2 * arch.hidden_size * kv)
        }
        Attention::Mla { .. } => p.attention / tp,
    };
    // Routed experts are sharded by tp; MXFP4 kernels pad each shard to 256 columns.
    let experts = match (&arch.moe, format) {
        (Some(m), WeightFormat::Mxfp4Experts) if m.expert_intermediate_size > 0 => {
            let shard = m.expert_intermediate_size / tp;
            p.experts / tp * shard.div_ceil(256) * 256 / shard.max(1)
        }
        _ => p.experts / tp,
    };
    let mlp = (p.mlp + p.extra) / tp;
    // Vocab-parallel embedding and LM head, padded to 64 rows.
    let padded_vocab = arch.vocab_size.div_ceil(64) * 64;
    let tables = if arch.tie_word_embeddings { 1 } else { 2 };
    let embeddings = tables * padded_vocab.div_ceil(tp) * arch.hidden_size
        + (p.embeddings - tables * arch.vocab_size * arch.hidden_size);
    let replicated = p.norms;

    let bytes = format.part_bytes(dense, arch.num_layers as u64);
    let weights = (attention_per_rank as f64 * bytes.attention
        + mlp as f64 * bytes.mlp
        + experts as f64 * bytes.experts) as u64
        + (embeddings + replicated) * dense;
    let dense_weights = (attention_per_rank + mlp + experts + embeddings + replicated) * dense;
    let weights_load_peak_bytes = match (format, &arch.checkpoint) {
        (WeightFormat::Fp8, CheckpointFormat::Dense) => dense_weights,
        _ => weights,
    };

    // KV cache bytes per token per layer on one rank.
    let kv_dtype = match shape.kv_cache_dtype {
        KvCacheDtype::Auto => dense,
        _ => 1,
    };
    let (per_layer_token, block_size) = match &arch.attention {
        Attention::Standard => (
            2 * arch.kv_heads_per_rank(shape.tensor_parallel_size) * arch.head_dim * kv_dtype,
            16,
        ),
        // MLA stores one latent (not sharded by tp); FlashMLA uses 64-token blocks.
        Attention::Mla {
            kv_lora_rank,
            qk_rope_head_dim,
            ..
        } => ((kv_lora_rank + qk_rope_head_dim) * kv_dtype, 64),
    };
    let layers = arch.num_layers as u64;
    let kv_per_token = per_layer_token * layers;

    let (mut default_tokens, mut default_seqs) = batch_defaults(gpu);
    if shape.family == VllmFamily::V0 {
        // V0: 256 sequences everywhere, and a whole max_model_len prompt is profiled when
        // chunked prefill is off (up to 32k).
        default_seqs = 256;
        if shape.max_model_len <= 32 * 1024 {
            default_tokens = shape.max_model_len.max(2048);
        }
    }
    let max_num_seqs = shape.max_num_seqs.unwrap_or(default_seqs);
    let max_num_batched_tokens = shape
        .max_num_batched_tokens
        .unwrap_or(default_tokens)
        .min(max_num_seqs.saturating_mul(shape.max_model_len))
        .max(1);

    // One request of max_model_len: full layers hold every token, sliding layers a window.
    let l = shape.max_model_len;
    let page = per_layer_token * block_size;
    let (sliding_window, sliding_layers) = arch
        .sliding_window
        .map(|(w, n)| (w, n as u64))
        .unwrap_or((0, 0));
    let full_layers = layers - sliding_layers.min(layers);
    let mut kv_bytes_per_request = full_layers * l.div_ceil(block_size) * page;
    if sliding_layers > 0 {
        let held = (sliding_window.saturating_sub(1) + max_num_batched_tokens).min(l);
        kv_bytes_per_request += sliding_layers * (held.div_ceil(block_size) + 1) * page;
    }

    // Activation peak: the larger of the profiling forward (MLP and attention intermediates
    // for the batched tokens) and the sampler warm-up, whose fp32 logits for every sampled row
    // are copied about ten times (probabilities, log-probabilities, top-k/top-p buffers). The
    // sampler term dominates with large vocabularies and 1024 sequences; the factor is fitted
    // on public logs (tests/fixtures/vllm-logs 03, 19-26) and gathered logits are not sharded.
    let h = arch.hidden_size;
    let mlp_width = match &arch.moe {
        Some(m) => (m.experts_per_token * m.expert_intermediate_size + m.shared_intermediate_size)
            .max(arch.intermediate_size * u64::from(m.moe_layers < arch.num_layers)),
        None => arch.intermediate_size,
    };
    let forward_peak = max_num_batched_tokens * (3 * mlp_width / tp + 4 * h) * 2;
    let sampler_peak =
        max_num_seqs.min(max_num_batched_tokens) * arch.vocab_size * 4 * SAMPLER_LOGIT_COPIES;
    let activation_peak_bytes = forward_peak.max(sampler_peak);

    // Public logs: 0.03-0.35 GiB on one GPU; 0.25-0.55 GiB with tensor parallelism (custom
    // all-reduce buffers).
    let non_torch_bytes = if tp > 1 { 600 * MIB } else { 300 * MIB };
    let cuda_graph_bytes = if shape.enforce_eager {
        0
    } else {
        128 * MIB + 12 * MIB * layers
    };
    let startup_overhead_bytes = if tp > 1 { GIB } else { 512 * MIB };

    Ok(Estimate {
        weights_bytes_per_gpu: weights,
        weights_load_peak_bytes,
        kv_cache_bytes_per_token_per_gpu: kv_per_token,
        activation_peak_bytes,
        non_torch_bytes,
        cuda_graph_bytes,
        startup_overhead_bytes,
        block_size,
        max_num_batched_tokens,
        max_num_seqs,
        kv_bytes_per_request,
        cuda_graphs_in_budget: shape.family == VllmFamily::V0_21,
        max_model_len: l,
    })
}

/// Bytes as GiB with two decimals, as vLLM prints them.
pub struct Gib(pub u64);

impl fmt::Display for Gib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} GiB", self.0 as f64 / GIB as f64)
    }
}
