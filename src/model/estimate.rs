//! Per-GPU memory of one model in one shape, as vLLM counts it (see
//! shared/reference/vllm-memory.md): weights, KV bytes per token, activation peak, non-torch
//! memory, CUDA graphs and vLLM's pre-check overhead; then, for a GPU and a utilization, the KV
//! cache vLLM will allocate.

use std::fmt;

use serde::Serialize;

use super::arch::{Architecture, Attention, CheckpointFormat};
pub use super::family::VllmFamily;
use super::family::{Fp8KvCache, Rules};
use crate::api::{KvCacheDtype, Quantization};
use crate::fit::{GpuMemoryView, LaunchPlan};
use crate::profile::ProfileUse;

const MIB: u64 = 1 << 20;
/// fp32 copies of the logits alive at the sampler's peak (see the activation estimate).
const SAMPLER_LOGIT_COPIES: u64 = 10;
const GIB: u64 = 1 << 30;

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
    /// `--block-size`; None: the attention backend's default.
    pub block_size: Option<u64>,
    /// `VLLM_USE_V1=0` on 0.8.0-0.10.x: the release runs its V0 engine.
    pub v0_engine: bool,
    pub family: VllmFamily,
    /// `VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS` from the pod's environment (None: unset),
    /// which moves CUDA graphs into or out of the budget where the release reads it.
    pub estimate_cuda_graphs: Option<bool>,
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
    /// bitsandbytes 4-bit NF4 of every linear layer, at this many bytes per parameter.
    Nf4 {
        bytes_per_parameter: f64,
    },
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
            WeightFormat::Nf4 {
                bytes_per_parameter,
            } => uniform(bytes_per_parameter),
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
    /// 0.6.4.x and 0.8.0-0.9.0.x: memory other processes hold at startup (and vLLM's own
    /// context) is charged to `u * total`; there is no startup check.
    pub others_in_budget: bool,
    pub max_model_len: u64,
    /// A MemoryProfile's measured figures, which replace the estimated non-KV memory (and the
    /// startup overhead, when measured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileUse>,
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
        self.kv_cache_bytes_per_token_per_gpu
            .saturating_mul(self.block_size)
    }

    /// Everything vLLM takes from `u * total` before the KV cache: a profile's measured
    /// figure (with its margin) when one applies, else the estimate's parts.
    pub fn required_bytes(&self) -> u64 {
        match &self.profile {
            Some(p) => {
                let own = if self.others_in_budget {
                    self.startup_overhead()
                } else {
                    0
                };
                p.non_kv_bytes.saturating_add(own)
            }
            None => self.estimated_required_bytes(),
        }
    }

    /// vLLM's own use before its startup check: the estimate's, or a profile's measured figure
    /// (with margin) when that is larger. A profile never lowers it: the startup check compares
    /// free memory after this overhead with `u * total`, and a figure measured under another
    /// driver or on a quieter GPU must not shrink the margin vLLM's check needs
    /// (`vllm/v1/worker/utils.py` `request_memory`, 0.33.0 `:724-770`).
    pub fn startup_overhead(&self) -> u64 {
        self.profile
            .as_ref()
            .and_then(|p| p.startup_overhead_bytes)
            .map_or(self.startup_overhead_bytes, |m| {
                m.max(self.startup_overhead_bytes)
            })
    }

    /// Use a profile's figures in place of the estimate's.
    pub fn with_profile(mut self, profile: ProfileUse) -> Self {
        self.profile = Some(profile);
        self
    }

    /// [`Estimate::required_bytes`] from the estimate alone, whatever a profile says.
    pub fn estimated_required_bytes(&self) -> u64 {
        let graphs = if self.cuda_graphs_in_budget {
            self.cuda_graph_bytes
        } else {
            0
        };
        // Where other processes count against the budget, so does vLLM's own context.
        let own = if self.others_in_budget {
            self.startup_overhead_bytes
        } else {
            0
        };
        sum(&[
            self.weights_bytes_per_gpu,
            self.activation_peak_bytes,
            self.non_torch_bytes,
            graphs,
            own,
        ])
    }

    /// Memory that must be free beyond `u * total`: vLLM's own overhead, and the CUDA graphs
    /// when they are captured outside the budget.
    pub fn outside_budget_bytes(&self) -> u64 {
        let graphs = if self.cuda_graphs_in_budget {
            0
        } else {
            self.cuda_graph_bytes
        };
        let own = if self.others_in_budget {
            0
        } else {
            self.startup_overhead()
        };
        own.saturating_add(graphs)
    }

    /// KV cache needed for `concurrency` requests of `max_model_len`, plus vLLM's null block.
    pub fn min_kv_bytes(&self, concurrency: u64) -> u64 {
        self.kv_bytes_per_request
            .saturating_mul(concurrency)
            .saturating_add(self.bytes_per_block())
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
            kv_cache_tokens: num_blocks.saturating_mul(self.block_size),
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
            others_in_budget: self.others_in_budget,
        }
    }

    /// Whether loading the weights fits what is free after vLLM's overhead (online fp8 loads
    /// the dense weights first).
    pub fn load_fits(&self, gpu: GpuMemoryView) -> bool {
        gpu.free_bytes.saturating_sub(self.startup_overhead()) >= self.weights_load_peak_bytes
    }
}

fn cc_at_least(gpu: &GpuFacts, major: u32, minor: u32) -> Result<(), (u32, u32)> {
    match gpu.compute_capability {
        Some(cc) if cc < (major, minor) => Err(cc),
        _ => Ok(()),
    }
}

/// The weight format a shape runs with, or why the checkpoint cannot take that quantization.
fn weight_format(
    arch: &Architecture,
    q: Quantization,
    family: VllmFamily,
) -> Result<WeightFormat, InvalidShape> {
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
    let bitsandbytes = || match family.rules().bitsandbytes {
        Some(b) => Ok(WeightFormat::Nf4 {
            bytes_per_parameter: b.bytes_per_parameter,
        }),
        None => Err(InvalidShape(format!(
            "vLLM {family} has no bitsandbytes quantization (removed in 0.28.0)"
        ))),
    };
    Ok(match (&arch.checkpoint, q) {
        (C::Dense, Q::None) => WeightFormat::Dense,
        (C::Dense, Q::Bitsandbytes) => bitsandbytes()?,
        (C::Other(m), Q::None | Q::Bitsandbytes) if m == "bitsandbytes" => bitsandbytes()?,
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
    if shape.max_model_len > crate::validate::limits::MAX_MODEL_LEN {
        return Err(InvalidShape(format!(
            "max model len {} is above {}, the longest this operator sizes",
            shape.max_model_len,
            crate::validate::limits::MAX_MODEL_LEN
        )));
    }
    let rules = shape.family.rules();
    let format = weight_format(arch, shape.quantization, shape.family)?;
    validate_kv_cache(shape, gpu, rules)?;
    let shard_in = per_rank_intermediate / tp as u64;
    match format {
        // FP8 W8A8 on 8.9+, weight-only FP8 Marlin below it down to the release's minimum.
        WeightFormat::Fp8 | WeightFormat::Fp8FeedForward => {
            let (ma, mi) = rules.fp8_weights_min_cc;
            if let Err((ga, gi)) = cc_at_least(gpu, ma, mi) {
                return Err(InvalidShape(format!(
                    "fp8 weights need compute capability {ma}.{mi} or newer in vLLM {} (weight-only FP8 Marlin below 8.9); this GPU has {ga}.{gi}",
                    shape.family
                )));
            }
        }
        WeightFormat::Nf4 { .. } => {
            let min = rules.bitsandbytes.map_or((7, 0), |b| b.min_cc);
            if let Err((ga, gi)) = cc_at_least(gpu, min.0, min.1) {
                return Err(InvalidShape(format!(
                    "bitsandbytes needs compute capability {}.{} or newer; this GPU has {ga}.{gi}",
                    min.0, min.1
                )));
            }
            // vLLM 0.27.0 `model_loader/bitsandbytes_loader.py:548-553`: "The quant_states in
            // pre_quantized models cannot work with a split weight tensor".
            if tp > 1
                && matches!(&arch.checkpoint, CheckpointFormat::Other(m) if m == "bitsandbytes")
            {
                return Err(InvalidShape(
                    "a pre-quantized bitsandbytes checkpoint cannot be split by tensor parallelism"
                        .into(),
                ));
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

/// Does the release run this KV cache dtype on this GPU?
fn validate_kv_cache(shape: &Shape, gpu: &GpuFacts, rules: &Rules) -> Result<(), InvalidShape> {
    if shape.kv_cache_dtype == KvCacheDtype::Auto {
        return Ok(());
    }
    if let Fp8KvCache::FailsBelow((ma, mi)) = rules.fp8_kv_cache
        && let Err((ga, gi)) = cc_at_least(gpu, ma, mi)
    {
        return Err(InvalidShape(format!(
            "an fp8 KV cache needs compute capability {ma}.{mi} or newer in vLLM {} (its Triton attention backend quantizes queries to fp8; FlashInfer takes over from 0.12); this GPU has {ga}.{gi}",
            shape.family
        )));
    }
    Ok(())
}

/// Does vLLM fall back to its V0 engine for this shape (an fp8 KV cache the V1 engine of 0.8 to
/// 0.10 cannot serve on this GPU)?
fn falls_back_to_v0(shape: &Shape, gpu: &GpuFacts, rules: &Rules) -> bool {
    match rules.fp8_kv_cache {
        Fp8KvCache::V0FallbackBelow((ma, mi)) => {
            shape.kv_cache_dtype != KvCacheDtype::Auto && cc_at_least(gpu, ma, mi).is_err()
        }
        _ => false,
    }
}

/// vLLM's defaults for the batch, by NVML total (`engine/arg_utils.py`, 0.11.0 `:1595-1624`,
/// 0.28.0 `:2572-2605`): 16384 tokens / 1024 sequences from 160 GiB (0.28+), 8192 / 1024 from
/// 70 GiB except on A100, else 2048 / 256 (the API server's values).
fn batch_defaults(gpu: &GpuFacts, rules: &Rules) -> (u64, u64) {
    let total = gpu.total_bytes.unwrap_or(0);
    if rules.batch_tier_160_gib && total >= 160 * GIB {
        return (16384, 1024);
    }
    let big = total >= 70 * GIB && !gpu.product.as_deref().is_some_and(|p| p.contains("A100"));
    if big { (8192, 1024) } else { (2048, 256) }
}

/// CUDA-graph capture sizes: `[1, 2, 4] + range(8, max + 1, 8)` with `max = min(2 *
/// max_num_seqs, 512)` from 0.10 (0.11.0 `config/scheduler.py:222-227`,
/// `config/__init__.py:593-597`), a fixed 512 before (0.9.2 `config.py:2133`), and never more
/// than the batched tokens. Returns how many sizes and the largest.
fn capture_sizes(family: VllmFamily, max_num_seqs: u64, max_num_batched_tokens: u64) -> (u64, u64) {
    let largest = if family >= VllmFamily::new(10, 0) {
        max_num_seqs.saturating_mul(2).min(512)
    } else {
        512
    }
    .min(max_num_batched_tokens);
    let count = [1, 2, 4].iter().filter(|s| **s <= largest).count() as u64 + largest / 8;
    (count, largest)
}

/// Estimate one shape. Fails with the reason when vLLM could not run it.
pub fn estimate(
    arch: &Architecture,
    shape: &Shape,
    gpu: &GpuFacts,
) -> Result<Estimate, InvalidShape> {
    validate_shape(arch, shape, gpu)?;
    let tp = shape.tensor_parallel_size as u64;
    let rules = shape.family.rules();
    let format = weight_format(arch, shape.quantization, shape.family)?;
    // vLLM runs float32 checkpoints in 16 bits by default.
    let dense = arch.dtype_bytes.min(2);
    let p = arch.parameter_breakdown();

    // Attention projections: K/V are replicated when tp exceeds the KV heads.
    let attention_per_rank = match &arch.attention {
        Attention::Standard => {
            let q = mul(arch.num_attention_heads as u64, arch.head_dim);
            let kv = mul(
                arch.kv_heads_per_rank(shape.tensor_parallel_size),
                arch.head_dim,
            );
            mul(
                arch.num_layers as u64,
                (mul3(2, arch.hidden_size, q) / tp).saturating_add(mul3(2, arch.hidden_size, kv)),
            )
        }
        Attention::Mla { .. } => p.attention / tp,
    };
    // Routed experts are sharded by tp; MXFP4 kernels pad each shard to 256 columns.
    let experts = match (&arch.moe, format) {
        (Some(m), WeightFormat::Mxfp4Experts) if m.expert_intermediate_size > 0 => {
            let shard = m.expert_intermediate_size / tp;
            mul3(p.experts / tp, shard.div_ceil(256), 256) / shard.max(1)
        }
        _ => p.experts / tp,
    };
    let mlp = p.mlp.saturating_add(p.extra) / tp;
    // Vocab-parallel embedding and LM head, padded to 64 rows.
    let padded_vocab = arch.vocab_size.div_ceil(64).saturating_mul(64);
    let tables = if arch.tie_word_embeddings { 1 } else { 2 };
    let embeddings = mul3(tables, padded_vocab.div_ceil(tp), arch.hidden_size).saturating_add(
        p.embeddings
            .saturating_sub(mul3(tables, arch.vocab_size, arch.hidden_size)),
    );
    let replicated = p.norms;

    let bytes = format.part_bytes(dense, arch.num_layers as u64);
    // `as u64` from f64 saturates (and NaN is 0); the sums below saturate too.
    let weights = ((attention_per_rank as f64 * bytes.attention
        + mlp as f64 * bytes.mlp
        + experts as f64 * bytes.experts) as u64)
        .saturating_add(mul(embeddings.saturating_add(replicated), dense));
    let dense_weights = mul(
        sum(&[attention_per_rank, mlp, experts, embeddings, replicated]),
        dense,
    );
    // Quantizing online: before 0.16 fp8 loads the whole checkpoint in 16 bits first; from
    // 0.16 (and bitsandbytes always, one tensor at a time: 0.27.0
    // `model_loader/bitsandbytes_loader.py:420-437`) each weight is materialized in 16 bits
    // just before it is quantized, so the peak is the quantized size plus about one layer.
    let one_layer_dense = mul(
        sum(&[attention_per_rank, mlp, experts]) / (arch.num_layers as u64).max(1),
        dense,
    );
    let weights_load_peak_bytes = match (format, &arch.checkpoint) {
        (WeightFormat::Fp8, CheckpointFormat::Dense) if !rules.online_fp8_just_in_time => {
            dense_weights
        }
        (WeightFormat::Fp8 | WeightFormat::Nf4 { .. }, CheckpointFormat::Dense) => {
            weights.saturating_add(one_layer_dense)
        }
        _ => weights,
    };

    // KV cache bytes per token per layer on one rank.
    let kv_dtype = match shape.kv_cache_dtype {
        KvCacheDtype::Auto => dense,
        _ => 1,
    };
    let (per_layer_token, block_size) = match &arch.attention {
        Attention::Standard => (
            mul3(
                2 * arch.kv_heads_per_rank(shape.tensor_parallel_size),
                arch.head_dim,
                kv_dtype,
            ),
            16,
        ),
        // MLA stores one latent (not sharded by tp); FlashMLA uses 64-token blocks.
        Attention::Mla {
            kv_lora_rank,
            qk_rope_head_dim,
            ..
        } => (
            mul(kv_lora_rank.saturating_add(*qk_rope_head_dim), kv_dtype),
            64,
        ),
    };
    // `--block-size` replaces the backend's default (vllm/config/cache.py `block_size`).
    let block_size = shape.block_size.unwrap_or(block_size);
    let layers = arch.num_layers as u64;
    let kv_per_token = mul(per_layer_token, layers);

    let (mut default_tokens, mut default_seqs) = batch_defaults(gpu, rules);
    let v0_engine = rules.v0_engine || shape.v0_engine || falls_back_to_v0(shape, gpu, rules);
    if v0_engine {
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
    let page = mul(per_layer_token, block_size);
    let (sliding_window, sliding_layers) = arch
        .sliding_window
        .map(|(w, n)| (w, n as u64))
        .unwrap_or((0, 0));
    let full_layers = layers - sliding_layers.min(layers);
    let mut kv_bytes_per_request = mul3(full_layers, l.div_ceil(block_size), page);
    if sliding_layers > 0 {
        let held = sliding_window
            .saturating_sub(1)
            .saturating_add(max_num_batched_tokens)
            .min(l);
        kv_bytes_per_request = kv_bytes_per_request.saturating_add(mul3(
            sliding_layers.min(layers),
            held.div_ceil(block_size) + 1,
            page,
        ));
    }

    // Activation peak: the larger of the profiling forward (MLP and attention intermediates
    // for the batched tokens) and the sampler warm-up, whose fp32 logits for every sampled row
    // are copied about ten times (probabilities, log-probabilities, top-k/top-p buffers). The
    // sampler term dominates with large vocabularies and 1024 sequences; the factor is fitted
    // on public logs (tests/fixtures/vllm-logs 03, 19-26) and gathered logits are not sharded.
    let h = arch.hidden_size;
    let mlp_width = match &arch.moe {
        Some(m) => mul(m.experts_per_token, m.expert_intermediate_size)
            .saturating_add(m.shared_intermediate_size)
            .max(arch.intermediate_size * u64::from(m.moe_layers < arch.num_layers)),
        None => arch.intermediate_size,
    };
    let forward_peak = mul3(
        max_num_batched_tokens,
        (mul(3, mlp_width) / tp).saturating_add(mul(4, h)),
        2,
    );
    let sampler_peak = mul3(
        max_num_seqs.min(max_num_batched_tokens),
        arch.vocab_size,
        4 * SAMPLER_LOGIT_COPIES,
    );
    let activation_peak_bytes = forward_peak.max(sampler_peak);

    // Public logs: 0.03-0.35 GiB on one GPU; 0.25-0.55 GiB with tensor parallelism (custom
    // all-reduce buffers).
    let non_torch_bytes = if tp > 1 { 600 * MIB } else { 300 * MIB };
    let cuda_graphs_in_budget = !v0_engine && rules.cuda_graphs.inside(shape.estimate_cuda_graphs);
    let cuda_graph_bytes = if shape.enforce_eager {
        0
    } else {
        let mut g = 128 * MIB + mul(12 * MIB, layers);
        if let Some(m) = &arch.moe
            && tp > 1
            && !cuda_graphs_in_budget
        {
            g = g.saturating_add(moe_graph_bytes(
                m,
                arch.hidden_size,
                tp,
                shape.family,
                max_num_seqs,
                max_num_batched_tokens,
            ));
        }
        g
    };
    let startup_overhead_bytes = rules.overhead.bytes(tp);

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
        cuda_graphs_in_budget,
        // A V1 release running V0 sizes with V0's worker, per instance since 0.6.5 (0.8.5
        // `vllm/worker/worker.py` `determine_num_available_blocks`, the same code as 0.7.3's:
        // `memory_profiling(self.baseline_snapshot, ...)`).
        others_in_budget: rules.others_in_budget && (rules.v0_engine || !v0_engine),
        max_model_len: l,
        profile: None,
    })
}

/// What CUDA graphs of a MoE model add with tensor parallelism where vLLM captures them outside
/// its budget, which the flat per-layer figure misses. Two public reports of Qwen3-30B-A3B at
/// tp 4 on A10s running out of memory in graph capture and starting with `--enforce-eager`
/// (vllm-project/vllm#17469, 0.8.5 at the default 0.9, which leaves 2.2 GiB outside the
/// budget; QwenLM/Qwen3#1387 at 0.7, which leaves 6.6 GiB, with 6.1 GiB outside PyTorch at the
/// failure) put the cost above 1.7 MiB per MoE layer and capture size; we count 2 MiB. On top,
/// the fused-MoE workspace of the largest captured batch (0.11.0
/// `model_executor/layers/fused_moe/fused_moe.py:1538-1575`: `M * top_k * max(2 * I, H)` and
/// `M * top_k * I` values in 16 bits, `I` the per-rank expert width).
fn moe_graph_bytes(
    moe: &super::arch::Moe,
    hidden: u64,
    tp: u64,
    family: VllmFamily,
    max_num_seqs: u64,
    max_num_batched_tokens: u64,
) -> u64 {
    let (sizes, largest) = capture_sizes(family, max_num_seqs, max_num_batched_tokens);
    let shard = moe.expert_intermediate_size / tp.max(1);
    let workspace = mul3(
        mul(largest, moe.experts_per_token),
        mul(2, shard).max(hidden).saturating_add(shard),
        2,
    );
    mul3(moe.moe_layers as u64, sizes, 2 * MIB).saturating_add(workspace)
}

fn mul(a: u64, b: u64) -> u64 {
    a.saturating_mul(b)
}

fn mul3(a: u64, b: u64, c: u64) -> u64 {
    a.saturating_mul(b).saturating_mul(c)
}

fn sum(parts: &[u64]) -> u64 {
    parts.iter().fold(0u64, |acc, p| acc.saturating_add(*p))
}

/// Bytes as GiB with two decimals, as vLLM prints them.
pub struct Gib(pub u64);

impl fmt::Display for Gib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} GiB", self.0 as f64 / GIB as f64)
    }
}
