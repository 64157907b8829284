//! A model's memory-relevant architecture, read from a Hugging Face `config.json` (or the
//! VllmDeployment's inline `architecture`), and its parameter count.

use serde_json::Value;

use super::context::context_length;
pub use super::context::{ContextLength, RopeScaling};
use crate::api::ModelArchitecture;
use crate::validate::limits;

/// How attention stores its KV cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attention {
    /// Multi-head / grouped-query attention: K and V per KV head.
    Standard,
    /// DeepSeek multi-head latent attention: one compressed latent per token and layer.
    Mla {
        kv_lora_rank: u64,
        q_lora_rank: Option<u64>,
        qk_rope_head_dim: u64,
        qk_nope_head_dim: u64,
        v_head_dim: u64,
    },
}

/// Mixture-of-experts feed-forward layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moe {
    pub num_experts: u64,
    pub experts_per_token: u64,
    /// Intermediate size of one routed expert.
    pub expert_intermediate_size: u64,
    /// Summed intermediate size of the always-on shared experts (0 when none).
    pub shared_intermediate_size: u64,
    /// Layers whose MLP is a MoE block; the others are dense with `intermediate_size`.
    pub moe_layers: u32,
    /// Experts carry biases (gpt-oss).
    pub expert_bias: bool,
}

/// Weight format the checkpoint is published in, from `quantization_config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// Unquantized: weights in `dtype_bytes`.
    Dense,
    /// FP8 weights (e4m3), possibly with block scales.
    Fp8,
    /// Meta's FBGEMM FP8 release: FP8 feed-forward weights except in the first and last layer;
    /// attention stays in 16 bits (Llama 3 paper, section on FP8 inference).
    FbgemmFp8,
    /// 4-bit AWQ with per-group scales and zeros.
    Awq { group_size: u64 },
    /// 4-bit (or 8-bit) GPTQ with per-group scales.
    Gptq { bits: u64, group_size: u64 },
    /// MXFP4 experts (gpt-oss): 4-bit values with one 8-bit scale per 32.
    Mxfp4,
    /// compressed-tensors integer weights (e.g. W8A8 int8), per-channel scales.
    CompressedInt { bits: u64 },
    /// Another method vLLM knows but this model does not size (e.g. bitsandbytes); named.
    Other(String),
}

/// Everything the estimator needs about a model.
#[derive(Clone, Debug, PartialEq)]
pub struct Architecture {
    pub model_type: String,
    pub num_layers: u32,
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_attention_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u64,
    pub vocab_size: u64,
    pub tie_word_embeddings: bool,
    /// Bytes per weight in the checkpoint dtype (2 for bf16/fp16, 4 for fp32).
    pub dtype_bytes: u64,
    pub max_position_embeddings: u64,
    pub attention: Attention,
    /// Attention projections carry biases (Qwen2, OPT, gpt-oss).
    pub attention_bias: bool,
    /// Gated MLP (SwiGLU/GeGLU: gate, up, down) rather than two matrices (OPT).
    pub gated_mlp: bool,
    pub moe: Option<Moe>,
    /// `(window, layers that use it)`.
    pub sliding_window: Option<(u64, u32)>,
    pub checkpoint: CheckpointFormat,
    /// Parameters of a vision tower or other parts not in the text stack (approximate).
    pub extra_parameters: u64,
    /// Parameter count stated by the publisher or the user, when known.
    pub stated_parameters: Option<u64>,
    /// What vLLM derives the longest allowed `--max-model-len` from.
    pub context: ContextLength,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchitectureError {
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("field `{field}` is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// A whole non-negative number; floats only when integral and exact (`4096.0`), never `1e30`.
pub(super) fn number_u64(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9_007_199_254_740_992.0)
            .map(|f| f as u64)
    })
}

fn get_u64(v: &Value, key: &str) -> Option<u64> {
    match v.get(key)? {
        Value::Number(n) => number_u64(n),
        _ => None,
    }
}

/// What a JSON value is, for messages.
pub(super) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// An optional size: absent or null is `None`; a value that is not a whole number in
/// `1..=max` is an error naming the field (a string `"4096"` is not a number).
pub(super) fn opt_size(
    v: &Value,
    key: &'static str,
    max: u64,
) -> Result<Option<u64>, ArchitectureError> {
    let value = match v.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(x) => x,
    };
    let n = match value {
        Value::Number(n) => number_u64(n),
        _ => None,
    }
    .ok_or_else(|| ArchitectureError::Invalid {
        field: key,
        reason: format!("expected a whole number, found {}", describe(value)),
    })?;
    bounded(key, n, max).map(Some)
}

/// `value` in `1..=max`.
fn bounded(field: &'static str, value: u64, max: u64) -> Result<u64, ArchitectureError> {
    if value == 0 {
        return Err(ArchitectureError::Invalid {
            field,
            reason: "must be positive".into(),
        });
    }
    if value > max {
        return Err(ArchitectureError::Invalid {
            field,
            reason: format!("{value} is above {max}, the largest this operator sizes"),
        });
    }
    Ok(value)
}

fn req_size(v: &Value, key: &'static str, max: u64) -> Result<u64, ArchitectureError> {
    opt_size(v, key, max)?.ok_or(ArchitectureError::Missing(key))
}

fn first_u64(v: &Value, keys: &[&'static str]) -> Option<u64> {
    keys.iter().find_map(|k| get_u64(v, k))
}

fn get_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Bytes per element of a `torch_dtype` / `dtype` string.
pub fn dtype_bytes(dtype: &str) -> Option<u64> {
    match dtype.trim_start_matches("torch.") {
        "bfloat16" | "float16" | "half" | "bf16" | "fp16" => Some(2),
        "float32" | "float" | "fp32" => Some(4),
        "float8_e4m3fn" | "fp8" => Some(1),
        _ => None,
    }
}

impl Architecture {
    /// Read a Hugging Face `config.json`. Vision-language configs keep the language model in
    /// `text_config`; its fields win over the top level.
    pub fn from_hf_config(config: &Value) -> Result<Self, ArchitectureError> {
        if !config.is_object() {
            return Err(ArchitectureError::Invalid {
                field: "config",
                reason: "not a JSON object".into(),
            });
        }
        let text = match config.get("text_config") {
            Some(t @ Value::Object(_)) => merged(config, t),
            _ => config.clone(),
        };
        let c = &text;
        let model_type = get_str(c, "model_type").unwrap_or("").to_string();
        let num_layers = req_size(c, "num_hidden_layers", limits::MAX_LAYERS)? as u32;
        let hidden_size = req_size(c, "hidden_size", limits::MAX_HIDDEN_SIZE)?;
        let num_attention_heads = req_size(c, "num_attention_heads", limits::MAX_HEADS)? as u32;
        let num_kv_heads = opt_size(c, "num_key_value_heads", limits::MAX_HEADS)?
            .unwrap_or(num_attention_heads as u64) as u32;
        let head_dim = match opt_size(c, "head_dim", limits::MAX_HEAD_DIM)? {
            Some(d) => d,
            None => bounded(
                "head_dim",
                hidden_size / num_attention_heads as u64,
                limits::MAX_HEAD_DIM,
            )?,
        };
        let is_opt = model_type == "opt";
        let intermediate_size = if is_opt {
            req_size(c, "ffn_dim", limits::MAX_INTERMEDIATE_SIZE)?
        } else {
            req_size(c, "intermediate_size", limits::MAX_INTERMEDIATE_SIZE)?
        };
        let vocab_size = match opt_size(c, "vocab_size", limits::MAX_VOCAB_SIZE)? {
            Some(v) => v,
            // Gemma 3's text_config omits it; transformers' default.
            None if model_type.starts_with("gemma3") => 262_208,
            None => return Err(ArchitectureError::Missing("vocab_size")),
        };
        let tie_word_embeddings = c
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(is_opt || model_type.starts_with("gemma"));
        let dtype = get_str(c, "torch_dtype")
            .or_else(|| get_str(c, "dtype"))
            .or_else(|| get_str(config, "torch_dtype"))
            .unwrap_or("bfloat16");
        let dtype_bytes = dtype_bytes(dtype).ok_or_else(|| ArchitectureError::Invalid {
            field: "torch_dtype",
            reason: format!("unknown dtype {dtype:?}"),
        })?;
        // Checked for type and bounds; the default length is vLLM's derivation.
        opt_size(
            c,
            "max_position_embeddings",
            limits::MAX_POSITION_EMBEDDINGS,
        )?;
        let max_position_embeddings = derived_max_model_len(c, &model_type);
        let context = context_length(c)?;

        let attention = match opt_size(c, "kv_lora_rank", limits::MAX_RANK)? {
            Some(kv_lora_rank) => Attention::Mla {
                kv_lora_rank,
                q_lora_rank: opt_size(c, "q_lora_rank", limits::MAX_RANK)?,
                qk_rope_head_dim: req_size(c, "qk_rope_head_dim", limits::MAX_HEAD_DIM)?,
                qk_nope_head_dim: req_size(c, "qk_nope_head_dim", limits::MAX_HEAD_DIM)?,
                v_head_dim: req_size(c, "v_head_dim", limits::MAX_HEAD_DIM)?,
            },
            None => Attention::Standard,
        };
        let attention_bias = c
            .get("attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(matches!(
                model_type.as_str(),
                "qwen2" | "qwen2_vl" | "qwen2_5_vl" | "opt"
            ));

        let moe = parse_moe(c, num_layers, intermediate_size, &model_type);
        let sliding_window = parse_sliding(c, num_layers, &model_type);
        let checkpoint = parse_checkpoint(
            config
                .get("quantization_config")
                .or_else(|| c.get("quantization_config")),
        );
        let extra_parameters = config
            .get("vision_config")
            .map(vision_parameters)
            .unwrap_or(0);

        Architecture {
            model_type,
            num_layers,
            hidden_size,
            intermediate_size,
            num_attention_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            tie_word_embeddings,
            dtype_bytes,
            max_position_embeddings,
            attention,
            attention_bias,
            gated_mlp: !is_opt,
            moe,
            sliding_window,
            checkpoint,
            extra_parameters,
            stated_parameters: None,
            context,
        }
        .checked(|f| f)
    }

    /// The VllmDeployment's inline architecture: a dense decoder with the given sizes.
    pub fn from_spec(spec: &ModelArchitecture) -> Result<Self, ArchitectureError> {
        let size = |v: Option<u64>, name: &'static str, max: u64| match v {
            Some(v) => bounded(name, v, max).map(Some),
            None => Ok(None),
        };
        let need = |v: Option<u64>, name: &'static str, max: u64| {
            size(v, name, max)?.ok_or(ArchitectureError::Missing(name))
        };
        let num_layers = need(
            spec.num_hidden_layers.map(u64::from),
            "numHiddenLayers",
            limits::MAX_LAYERS,
        )? as u32;
        let hidden_size = need(spec.hidden_size, "hiddenSize", limits::MAX_HIDDEN_SIZE)?;
        let heads = need(
            spec.num_attention_heads.map(u64::from),
            "numAttentionHeads",
            limits::MAX_HEADS,
        )?;
        let num_kv_heads = size(
            spec.num_key_value_heads.map(u64::from),
            "numKeyValueHeads",
            limits::MAX_HEADS,
        )?
        .unwrap_or(heads);
        let head_dim = match size(
            spec.head_dim.map(u64::from),
            "headDim",
            limits::MAX_HEAD_DIM,
        )? {
            Some(d) => d,
            None => bounded("headDim", hidden_size / heads, limits::MAX_HEAD_DIM)?,
        };
        let intermediate_size = size(
            spec.intermediate_size,
            "intermediateSize",
            limits::MAX_INTERMEDIATE_SIZE,
        )?
        .map_or_else(
            || {
                bounded(
                    "intermediateSize",
                    hidden_size * 4,
                    limits::MAX_INTERMEDIATE_SIZE,
                )
            },
            Ok,
        )?;
        let vocab_size = need(spec.vocab_size, "vocabSize", limits::MAX_VOCAB_SIZE)?;
        let max_position_embeddings = size(
            spec.max_position_embeddings,
            "maxPositionEmbeddings",
            limits::MAX_POSITION_EMBEDDINGS,
        )?;
        if let Some(p) = spec.parameters {
            bounded("parameters", p, limits::MAX_PARAMETERS)?;
        }
        let dtype = spec.dtype.as_deref().unwrap_or("bfloat16");
        Architecture {
            model_type: "custom".into(),
            num_layers,
            hidden_size,
            intermediate_size,
            num_attention_heads: heads as u32,
            num_kv_heads: num_kv_heads as u32,
            head_dim,
            vocab_size,
            tie_word_embeddings: spec.tie_word_embeddings.unwrap_or(false),
            dtype_bytes: dtype_bytes(dtype).ok_or_else(|| ArchitectureError::Invalid {
                field: "dtype",
                reason: format!("unknown dtype {dtype:?}"),
            })?,
            max_position_embeddings: max_position_embeddings.unwrap_or(4096),
            attention: Attention::Standard,
            attention_bias: false,
            gated_mlp: true,
            moe: None,
            sliding_window: None,
            checkpoint: CheckpointFormat::Dense,
            extra_parameters: 0,
            stated_parameters: spec.parameters,
            context: ContextLength {
                derived: max_position_embeddings.map(|l| (l, "maxPositionEmbeddings")),
                model_max_length: None,
                rope: Vec::new(),
            },
        }
        .checked(spec_field_name)
    }

    /// Rules across fields, after every field is in its bounds: vLLM's attention needs the
    /// query heads to be a multiple of the KV heads (vllm/attention/layer.py in 0.11.0,
    /// vllm/model_executor/layers/attention/attention.py in 0.33.0: `assert num_heads %
    /// num_kv_heads == 0`), and the parameter count must stay within
    /// [`limits::MAX_PARAMETERS`] so that weight bytes cannot overflow. `name` maps a
    /// config.json key to the caller's field name.
    fn checked(self, name: fn(&'static str) -> &'static str) -> Result<Self, ArchitectureError> {
        let invalid = |field: &'static str, reason: String| ArchitectureError::Invalid {
            field: name(field),
            reason,
        };
        if self.attention == Attention::Standard {
            if self.num_kv_heads > self.num_attention_heads {
                return Err(invalid(
                    "num_key_value_heads",
                    format!(
                        "{} KV heads is more than the {} attention heads",
                        self.num_kv_heads, self.num_attention_heads
                    ),
                ));
            }
            if !self.num_attention_heads.is_multiple_of(self.num_kv_heads) {
                return Err(invalid(
                    "num_key_value_heads",
                    format!(
                        "{} attention heads are not divisible by {} KV heads (vLLM asserts num_heads % num_kv_heads == 0)",
                        self.num_attention_heads, self.num_kv_heads
                    ),
                ));
            }
        }
        if let Some(m) = &self.moe {
            if m.num_experts > limits::MAX_EXPERTS {
                return Err(invalid(
                    "num_experts",
                    format!("{} experts is above {}", m.num_experts, limits::MAX_EXPERTS),
                ));
            }
            if m.experts_per_token == 0 || m.experts_per_token > m.num_experts {
                return Err(invalid(
                    "num_experts_per_tok",
                    format!(
                        "{} experts per token with {} experts",
                        m.experts_per_token, m.num_experts
                    ),
                ));
            }
            if m.expert_intermediate_size > limits::MAX_INTERMEDIATE_SIZE
                || m.shared_intermediate_size > limits::MAX_INTERMEDIATE_SIZE
            {
                return Err(invalid(
                    "moe_intermediate_size",
                    format!(
                        "expert sizes {} / {} are above {}",
                        m.expert_intermediate_size,
                        m.shared_intermediate_size,
                        limits::MAX_INTERMEDIATE_SIZE
                    ),
                ));
            }
        }
        match &self.checkpoint {
            CheckpointFormat::Gptq { bits, group_size } => {
                // vllm/model_executor/layers/quantization/gptq.py (0.11.0): bits in [2, 3, 4, 8].
                if ![2, 3, 4, 8].contains(bits) {
                    return Err(invalid(
                        "quantization_config",
                        format!("GPTQ with {bits} bits; vLLM supports 2, 3, 4 and 8"),
                    ));
                }
                if *group_size > limits::MAX_RANK {
                    return Err(invalid(
                        "quantization_config",
                        format!("group size {group_size} is above {}", limits::MAX_RANK),
                    ));
                }
            }
            CheckpointFormat::Awq { group_size } if *group_size > limits::MAX_RANK => {
                return Err(invalid(
                    "quantization_config",
                    format!("group size {group_size} is above {}", limits::MAX_RANK),
                ));
            }
            CheckpointFormat::CompressedInt { bits } if !(1..=16).contains(bits) => {
                return Err(invalid(
                    "quantization_config",
                    format!("{bits}-bit weights"),
                ));
            }
            _ => {}
        }
        if let Some((window, _)) = self.sliding_window
            && window > limits::MAX_POSITION_EMBEDDINGS
        {
            return Err(invalid(
                "sliding_window",
                format!("{window} is above {}", limits::MAX_POSITION_EMBEDDINGS),
            ));
        }
        let computed = self.parameter_breakdown().total();
        if computed > limits::MAX_PARAMETERS {
            return Err(invalid(
                "config",
                format!(
                    "the sizes make {computed} parameters, above {}",
                    limits::MAX_PARAMETERS
                ),
            ));
        }
        if let Some(p) = self.stated_parameters
            && p > limits::MAX_PARAMETERS
        {
            return Err(invalid(
                "parameters",
                format!("{p} is above {}", limits::MAX_PARAMETERS),
            ));
        }
        Ok(self)
    }

    /// Parameters in the attention block of one layer. Saturating: sizes are bounded when the
    /// architecture is read, and a product past u64 must read as huge, never wrap to small.
    fn attention_parameters(&self) -> u64 {
        let h = self.hidden_size;
        match &self.attention {
            Attention::Standard => {
                let q = mul(self.num_attention_heads as u64, self.head_dim);
                let kv = mul(self.num_kv_heads as u64, self.head_dim);
                let bias = if self.attention_bias {
                    q.saturating_add(mul(2, kv))
                } else {
                    0
                };
                sum(&[mul(h, q), mul3(2, h, kv), mul(q, h), bias])
            }
            Attention::Mla {
                kv_lora_rank,
                q_lora_rank,
                qk_rope_head_dim,
                qk_nope_head_dim,
                v_head_dim,
            } => {
                let heads = self.num_attention_heads as u64;
                let q_head = qk_nope_head_dim.saturating_add(*qk_rope_head_dim);
                let q = match q_lora_rank {
                    Some(r) => sum(&[mul(h, *r), *r, mul3(*r, heads, q_head)]),
                    None => mul3(h, heads, q_head),
                };
                let kv_a = mul(h, kv_lora_rank.saturating_add(*qk_rope_head_dim))
                    .saturating_add(*kv_lora_rank);
                let kv_b = mul3(
                    *kv_lora_rank,
                    heads,
                    qk_nope_head_dim.saturating_add(*v_head_dim),
                );
                let o = mul3(heads, *v_head_dim, h);
                sum(&[q, kv_a, kv_b, o])
            }
        }
    }

    fn dense_mlp_parameters(&self, intermediate: u64) -> u64 {
        if self.gated_mlp {
            mul3(3, self.hidden_size, intermediate)
        } else {
            sum(&[
                mul3(2, self.hidden_size, intermediate),
                intermediate,
                self.hidden_size,
            ])
        }
    }

    /// Parameters in all MLP blocks, split into (always-active, routed experts).
    fn mlp_parameters(&self) -> (u64, u64) {
        let h = self.hidden_size;
        match &self.moe {
            None => (
                mul(
                    self.num_layers as u64,
                    self.dense_mlp_parameters(self.intermediate_size),
                ),
                0,
            ),
            Some(m) => {
                let dense_layers = self.num_layers.saturating_sub(m.moe_layers) as u64;
                let per_expert =
                    mul3(3, h, m.expert_intermediate_size).saturating_add(if m.expert_bias {
                        mul(2, m.expert_intermediate_size).saturating_add(h)
                    } else {
                        0
                    });
                let router = mul(h, m.num_experts).saturating_add(if m.expert_bias {
                    m.num_experts
                } else {
                    0
                });
                let shared = if m.shared_intermediate_size > 0 {
                    mul3(3, h, m.shared_intermediate_size)
                } else {
                    0
                };
                let always = mul(
                    dense_layers,
                    self.dense_mlp_parameters(self.intermediate_size),
                )
                .saturating_add(mul(m.moe_layers as u64, router.saturating_add(shared)));
                (always, mul3(m.moe_layers as u64, m.num_experts, per_expert))
            }
        }
    }

    /// Embedding (and untied LM head) parameters.
    pub fn embedding_parameters(&self) -> u64 {
        let table = mul(self.vocab_size, self.hidden_size);
        let positions = if self.model_type == "opt" {
            mul(
                self.max_position_embeddings.saturating_add(2),
                self.hidden_size,
            )
        } else {
            0
        };
        sum(&[
            table,
            positions,
            if self.tie_word_embeddings { 0 } else { table },
        ])
    }

    /// Norm weights: two per layer and a final one.
    fn norm_parameters(&self) -> u64 {
        let per = if self.gated_mlp { 1 } else { 2 }; // LayerNorm has a bias too
        mul3(2 * self.num_layers as u64 + 1, self.hidden_size, per)
    }

    /// Parameters computed from the architecture: (attention, dense MLP + routers + shared
    /// experts, routed experts, embeddings + LM head, norms).
    pub fn parameter_breakdown(&self) -> ParameterBreakdown {
        let (mlp, experts) = self.mlp_parameters();
        ParameterBreakdown {
            attention: mul(self.num_layers as u64, self.attention_parameters()),
            mlp,
            experts,
            embeddings: self.embedding_parameters(),
            norms: self.norm_parameters(),
            extra: self.extra_parameters,
        }
    }

    /// Total parameters: the stated count when known, else computed.
    pub fn parameters(&self) -> u64 {
        self.stated_parameters
            .unwrap_or_else(|| self.parameter_breakdown().total())
    }

    /// KV heads each tensor-parallel rank stores: vLLM replicates heads when tp exceeds them.
    pub fn kv_heads_per_rank(&self, tp: u32) -> u64 {
        (self.num_kv_heads / tp.max(1)).max(1) as u64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParameterBreakdown {
    pub attention: u64,
    pub mlp: u64,
    pub experts: u64,
    pub embeddings: u64,
    pub norms: u64,
    pub extra: u64,
}

impl ParameterBreakdown {
    pub fn total(&self) -> u64 {
        sum(&[
            self.attention,
            self.mlp,
            self.experts,
            self.embeddings,
            self.norms,
            self.extra,
        ])
    }
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

/// The inline spec's name for a config.json key, for messages.
fn spec_field_name(key: &'static str) -> &'static str {
    match key {
        "num_key_value_heads" => "numKeyValueHeads",
        "num_attention_heads" => "numAttentionHeads",
        "head_dim" => "headDim",
        "config" => "architecture",
        other => other,
    }
}

/// The model's default max model len as vLLM derives it (0.11.0 `config/model.py:1763-1871`,
/// `_get_and_verify_max_len`, on the text config, `transformers_utils/config.py:935-947`): the
/// smallest of the length keys present; then, unless the rope type is `su`, `longrope` or
/// `llama3` or the model is Gemma 3 ("Gemma3's max_model_len (128K) is already scaled by RoPE
/// scaling", l.1840-1842), times the rope scaling factor, from `original_max_position_embeddings`
/// for yarn. A key the file omits takes transformers' class default where vLLM would see one:
/// Gemma 3's text config has 131072 (transformers 4.50.0
/// `models/gemma3/configuration_gemma3.py:182`); otherwise 4096.
fn derived_max_model_len(c: &Value, model_type: &str) -> u64 {
    let gemma3 = model_type.contains("gemma3");
    let stated = super::context::LENGTH_KEYS
        .iter()
        .filter_map(|k| get_u64(c, k))
        .min();
    let mut len = match stated {
        Some(l) => l as f64,
        None if gemma3 => 131_072.0,
        None => 4096.0,
    };
    if let Some(rope) = c.get("rope_scaling").filter(|r| r.is_object())
        && !gemma3
    {
        let rope_type = get_str(rope, "rope_type")
            .or_else(|| get_str(rope, "type"))
            .unwrap_or("default");
        if !matches!(rope_type, "su" | "longrope" | "llama3") {
            let factor = rope.get("factor").and_then(Value::as_f64).unwrap_or(1.0);
            if rope_type == "yarn"
                && let Some(original) = get_u64(rope, "original_max_position_embeddings")
            {
                len = original as f64;
            }
            len *= factor;
        }
    }
    (len as u64).max(1)
}

/// `text_config` fields override the top level (vision-language models).
fn merged(top: &Value, text: &Value) -> Value {
    let mut out = top.clone();
    if let (Value::Object(o), Value::Object(t)) = (&mut out, text) {
        o.remove("text_config");
        for (k, v) in t {
            o.insert(k.clone(), v.clone());
        }
    }
    out
}

fn parse_moe(c: &Value, num_layers: u32, intermediate: u64, model_type: &str) -> Option<Moe> {
    let num_experts = first_u64(c, &["num_local_experts", "num_experts", "n_routed_experts"])?;
    if num_experts <= 1 {
        return None;
    }
    let experts_per_token =
        first_u64(c, &["num_experts_per_tok", "experts_per_token"]).unwrap_or(2);
    let expert_intermediate_size = get_u64(c, "moe_intermediate_size").unwrap_or(intermediate);
    let shared_intermediate_size = match (
        get_u64(c, "n_shared_experts"),
        get_u64(c, "shared_expert_intermediate_size"),
    ) {
        (Some(n), _) => n.saturating_mul(expert_intermediate_size),
        (None, Some(s)) => s,
        _ => 0,
    };
    let first_dense = get_u64(c, "first_k_dense_replace")
        .unwrap_or(0)
        .min(num_layers as u64) as u32;
    let mlp_only = c
        .get("mlp_only_layers")
        .and_then(Value::as_array)
        .map(|a| a.len() as u32)
        .unwrap_or(0);
    let step = get_u64(c, "decoder_sparse_step")
        .or_else(|| get_u64(c, "moe_layer_freq"))
        .unwrap_or(1)
        .clamp(1, num_layers.max(1) as u64) as u32;
    let eligible = num_layers
        .saturating_sub(first_dense)
        .saturating_sub(mlp_only);
    let moe_layers = eligible / step + u32::from(step > 1 && !eligible.is_multiple_of(step));
    Some(Moe {
        num_experts,
        experts_per_token,
        expert_intermediate_size,
        shared_intermediate_size,
        moe_layers: moe_layers.min(num_layers),
        expert_bias: model_type == "gpt_oss",
    })
}

fn parse_sliding(c: &Value, num_layers: u32, model_type: &str) -> Option<(u64, u32)> {
    let window = get_u64(c, "sliding_window")?;
    if window == 0 {
        return None;
    }
    if let Some(types) = c.get("layer_types").and_then(Value::as_array) {
        let n = types
            .iter()
            .filter(|t| t.as_str() == Some("sliding_attention"))
            .count() as u32;
        return (n > 0).then_some((window, n));
    }
    if c.get("use_sliding_window").and_then(Value::as_bool) == Some(false) {
        return None;
    }
    match model_type {
        // Every other layer is local.
        "gemma2" => Some((window, num_layers / 2)),
        // Five local layers for every global one.
        t if t.starts_with("gemma3") => {
            let pattern = get_u64(c, "sliding_window_pattern")
                .unwrap_or(6)
                .clamp(1, num_layers.max(1) as u64) as u32;
            Some((window, num_layers - num_layers / pattern))
        }
        "mistral" | "mixtral" | "qwen2" | "qwen3" | "qwen2_moe" | "qwen3_moe" => {
            Some((window, num_layers))
        }
        _ => None,
    }
}

fn parse_checkpoint(q: Option<&Value>) -> CheckpointFormat {
    let Some(q) = q else {
        return CheckpointFormat::Dense;
    };
    let method = get_str(q, "quant_method")
        .unwrap_or("")
        .to_ascii_lowercase();
    let group_size = get_u64(q, "group_size").unwrap_or(128);
    match method.as_str() {
        "fp8" => CheckpointFormat::Fp8,
        "fbgemm_fp8" => CheckpointFormat::FbgemmFp8,
        "awq" => CheckpointFormat::Awq { group_size },
        "gptq" => CheckpointFormat::Gptq {
            bits: get_u64(q, "bits").unwrap_or(4),
            group_size,
        },
        "mxfp4" => CheckpointFormat::Mxfp4,
        "compressed-tensors" | "compressed_tensors" => {
            let bits = get_u64(q, "bits").or_else(|| {
                q.get("config_groups")?
                    .as_object()?
                    .values()
                    .find_map(|g| get_u64(g.get("weights")?, "num_bits"))
            });
            match bits {
                Some(bits) => CheckpointFormat::CompressedInt { bits },
                None => CheckpointFormat::Other(method),
            }
        }
        "" => CheckpointFormat::Dense,
        other => CheckpointFormat::Other(other.to_string()),
    }
}

/// A ViT-like tower: 12·h² per layer (attention 4h², MLP 2·h·i).
fn vision_parameters(v: &Value) -> u64 {
    let h = get_u64(v, "hidden_size").unwrap_or(0);
    let layers = first_u64(v, &["num_hidden_layers", "depth"]).unwrap_or(0);
    let i = get_u64(v, "intermediate_size").unwrap_or(h.saturating_mul(4));
    mul(layers, mul3(4, h, h).saturating_add(mul3(2, h, i)))
}
