//! How long a request may be: the config facts vLLM's `_get_and_verify_max_len` reads, and
//! the limit it derives from them per vLLM release.

use serde_json::Value;

use super::arch::{Architecture, ArchitectureError, describe, number_u64, opt_size};
use super::estimate::VllmFamily;

/// The first release that takes YaRN's `max_position_embeddings` as already scaled.
const YARN_ALREADY_SCALED: VllmFamily = VllmFamily::new(30, 0);

/// The config facts vLLM's `_get_and_verify_max_len` reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContextLength {
    /// The smallest of the config's length keys, or `model_max_length` when present, and the
    /// key it came from; `None` when the config states none (vLLM then takes the user's value).
    pub derived: Option<(u64, &'static str)>,
    /// `model_max_length`: a user value up to it is accepted even above `derived`.
    pub model_max_length: Option<u64>,
    /// RoPE scaling entries (`rope_scaling`, or `rope_parameters` per layer type).
    pub rope: Vec<RopeScaling>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeScaling {
    pub rope_type: String,
    pub factor: f64,
    pub original_max_position_embeddings: Option<u64>,
}

/// vLLM's length keys, in its order (`possible_keys` in `_get_and_verify_max_len`, 0.11.0;
/// `derive_max_model_len_and_key` in vllm/transformers_utils/model_arch_config_convertor.py,
/// 0.33.0).
pub(super) const LENGTH_KEYS: [&str; 9] = [
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
];

pub(super) fn context_length(c: &Value) -> Result<ContextLength, ArchitectureError> {
    let mut derived: Option<(u64, &'static str)> = None;
    for key in LENGTH_KEYS {
        if let Some(len) = opt_size(c, key, u64::MAX)?
            && derived.is_none_or(|(d, _)| len < d)
        {
            derived = Some((len, key));
        }
    }
    let model_max_length = opt_size(c, "model_max_length", u64::MAX)?;
    if let Some(len) = model_max_length {
        derived = Some((len, "model_max_length"));
    }
    // transformers 5 names it rope_parameters, possibly one dict per layer type (vLLM
    // `iter_rope_parameters`, vllm/transformers_utils/config.py, 0.33.0).
    let mut rope = Vec::new();
    if let Some(Value::Object(r)) = c.get("rope_scaling").or_else(|| c.get("rope_parameters")) {
        let nested: Vec<&serde_json::Map<String, Value>> =
            r.values().filter_map(Value::as_object).collect();
        let dicts = if !nested.is_empty() && nested.len() == r.len() {
            nested
        } else {
            vec![r]
        };
        for d in dicts {
            let rope_type = d
                .get("rope_type")
                .or_else(|| d.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string();
            let factor = match d.get("factor") {
                None | Some(Value::Null) => 1.0,
                Some(Value::Number(n)) => n
                    .as_f64()
                    .filter(|f| f.is_finite() && *f > 0.0 && *f <= 1e6)
                    .ok_or_else(|| ArchitectureError::Invalid {
                        field: "rope_scaling",
                        reason: format!("factor {n} is not a positive number up to 1e6"),
                    })?,
                Some(other) => {
                    return Err(ArchitectureError::Invalid {
                        field: "rope_scaling",
                        reason: format!("factor is {}, not a number", describe(other)),
                    });
                }
            };
            let original_max_position_embeddings = d
                .get("original_max_position_embeddings")
                .and_then(|v| v.as_number())
                .and_then(number_u64);
            rope.push(RopeScaling {
                rope_type,
                factor,
                original_max_position_embeddings,
            });
        }
    }
    Ok(ContextLength {
        derived,
        model_max_length,
        rope,
    })
}

impl Architecture {
    /// The longest `--max-model-len` vLLM accepts for this model without
    /// `VLLM_ALLOW_LONG_MAX_MODEL_LEN`, and the config key it comes from; `None` when the config
    /// states no length (vLLM then takes the user's value as it is).
    ///
    /// vLLM `_get_and_verify_max_len` (vllm/config/model.py in 0.11.0 and 0.33.0): the smallest
    /// of the length keys, `model_max_length` when present; then, unless the model is Gemma 3,
    /// times the RoPE `factor` for scaling types other than su/longrope/llama3. YaRN differs by
    /// release: up to 0.29.0 the length starts again from `original_max_position_embeddings`
    /// and is multiplied; from 0.30.0 `max_position_embeddings` is taken as already scaled and
    /// the YaRN variants are not multiplied (vllm-project/vllm#56446; checked in the unpacked
    /// 0.29.0 and 0.30.0 wheels). A value up to `model_max_length` is accepted even above the
    /// derived length.
    pub fn max_model_len_limit(&self, family: VllmFamily) -> Option<(u64, String)> {
        let (derived, key) = self.context.derived?;
        let scaled = |new_yarn: bool| -> f64 {
            let mut len = derived as f64;
            if self.model_type.contains("gemma3") {
                return len;
            }
            for r in &self.context.rope {
                let unscaled: &[&str] = if new_yarn {
                    &[
                        "su",
                        "longrope",
                        "llama3",
                        "yarn",
                        "deepseek_yarn",
                        "deepseek_llama_scaling",
                    ]
                } else {
                    &["su", "longrope", "llama3"]
                };
                if unscaled.contains(&r.rope_type.as_str()) {
                    continue;
                }
                if !new_yarn
                    && r.rope_type == "yarn"
                    && let Some(original) = r.original_max_position_embeddings
                {
                    len = original as f64;
                }
                len *= r.factor;
                // 0.11.0 reads one rope_scaling dict; 0.33.0 one factor for all layer types.
                break;
            }
            len
        };
        let len = scaled(family >= YARN_ALREADY_SCALED);
        let len = if len.is_finite() && len > 0.0 {
            len.min(u64::MAX as f64) as u64
        } else {
            derived
        };
        let limit = len.max(self.context.model_max_length.unwrap_or(0));
        let key = if len == derived {
            key.to_string()
        } else {
            format!("{key} with RoPE scaling")
        };
        Some((limit, key))
    }
}
