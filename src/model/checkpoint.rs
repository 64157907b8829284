//! A checkpoint's bytes on disk, and the model cache that holds it.
//!
//! vLLM downloads one weight format of a repository: it lists the repo and keeps the first of
//! its allow patterns (`*.safetensors` before `*.bin`...) that matches, or exactly the files of
//! `model.safetensors.index.json`, and skips `original/**` (vllm/model_executor/model_loader/
//! weight_utils.py `download_weights_from_hf`, 0.11.0 and 0.33.0). huggingface_hub writes each
//! file to `<blob>.incomplete` beside its final place and renames it (file_download.py
//! `_download_to_tmp_and_move`, huggingface_hub 0.35.3 and 1.31.0), so a download never needs
//! twice the space. The cache is therefore the checkpoint as stored, plus small files.

use super::arch::{Architecture, CheckpointFormat};
use crate::api::VllmDeploymentSpec;

const GIB: u64 = 1 << 30;

/// Slack on top of the checkpoint, in percent of it: the estimator's parameter count is within
/// 0.1 % of the safetensors totals of the catalog models that publish one, but counts only the
/// architecture's tensors (checkpoints may carry extra buffers or vision towers we size less
/// precisely).
pub const CACHE_MARGIN_PERCENT: u64 = 5;
/// Fixed slack: tokenizer and config files (up to ~35 MB for Gemma 3), huggingface_hub's xet
/// shard metadata in `HF_HOME/xet`, and what vLLM writes outside the cache but inside the pod's
/// ephemeral storage (the torch.compile cache under `~/.cache/vllm`, logs): a few hundred MB.
pub const CACHE_MARGIN_FIXED_BYTES: u64 = GIB;

/// Bytes per parameter of each part of the model as stored in the checkpoint's files.
struct StoredBytes {
    attention: f64,
    mlp: f64,
    experts: f64,
}

/// The weights as stored: unlike the GPU estimate, fp32 checkpoints are 4 bytes a parameter
/// on disk (vLLM casts them to 16 bits only when loading).
pub fn checkpoint_bytes(arch: &Architecture) -> u64 {
    let dense = arch.dtype_bytes as f64;
    let uniform = |b: f64| StoredBytes {
        attention: b,
        mlp: b,
        experts: b,
    };
    let int = |bits: u64, group_size: u64| {
        let b = bits as f64 / 8.0;
        if group_size == 0 {
            // Per-channel scales: negligible per parameter.
            b
        } else {
            // Packed weights, one 16-bit scale and one packed zero per group.
            b + (2.0 + b) / group_size as f64
        }
    };
    let stored = match &arch.checkpoint {
        // A stated parameter count (inline architecture) is the best figure for a dense model.
        CheckpointFormat::Dense | CheckpointFormat::Other(_) => {
            return (arch.parameters() as f64 * dense).ceil() as u64;
        }
        CheckpointFormat::Fp8 => uniform(1.0),
        CheckpointFormat::FbgemmFp8 => {
            let layers = arch.num_layers.max(1) as f64;
            let dense_layers = layers.min(2.0);
            StoredBytes {
                attention: dense,
                mlp: ((layers - dense_layers) + dense_layers * dense) / layers,
                experts: 1.0,
            }
        }
        CheckpointFormat::Awq { group_size } => uniform(int(4, *group_size)),
        CheckpointFormat::Gptq { bits, group_size } => uniform(int(*bits, *group_size)),
        CheckpointFormat::CompressedInt { bits } => uniform(int(*bits, 0)),
        // 4-bit values and one 8-bit scale per 32 for the experts; the rest in the dtype.
        CheckpointFormat::Mxfp4 => StoredBytes {
            attention: dense,
            mlp: dense,
            experts: 4.25 / 8.0,
        },
    };
    let p = arch.parameter_breakdown();
    let quantized = p.attention as f64 * stored.attention
        + p.mlp as f64 * stored.mlp
        + p.experts as f64 * stored.experts;
    // Embeddings, LM head, norms and extra towers stay in the checkpoint dtype.
    let kept = (p.embeddings + p.norms + p.extra) as f64 * dense;
    (quantized + kept).ceil() as u64
}

/// The cache for a checkpoint of `checkpoint_bytes`: the checkpoint plus the margin, rounded
/// up to whole GiB so that the request reads well (`17Gi`).
pub fn cache_bytes(checkpoint_bytes: u64) -> u64 {
    let margin = checkpoint_bytes / 100 * CACHE_MARGIN_PERCENT + CACHE_MARGIN_FIXED_BYTES;
    checkpoint_bytes.saturating_add(margin).div_ceil(GIB) * GIB
}

/// Node disk (`ephemeral-storage`) a replica's model cache takes: `Some` only for the default
/// `emptyDir` cache; a PersistentVolumeClaim or generic ephemeral volume lives elsewhere.
pub fn node_cache_bytes(spec: &VllmDeploymentSpec, arch: &Architecture) -> Option<u64> {
    let on_node = spec
        .model_cache
        .as_ref()
        .is_none_or(|c| c.persistent_volume_claim.is_none() && c.ephemeral.is_none());
    on_node.then(|| cache_bytes(checkpoint_bytes(arch)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::catalog;

    fn arch(id: &str) -> Architecture {
        catalog::lookup(id).unwrap().architecture().unwrap()
    }

    #[test]
    fn dense_checkpoints_match_their_safetensors_totals() {
        // Every catalog model with an exact published total (bf16: 2 bytes a parameter): the
        // computed checkpoint is within 0.5 % of it and the cache holds it.
        let mut checked = 0;
        for e in catalog::entries().unwrap() {
            let Some(published) = e.published_parameters else {
                continue;
            };
            if published % 1_000_000 == 0 {
                continue; // three significant digits only
            }
            let a = e.architecture().unwrap();
            if a.checkpoint != CheckpointFormat::Dense {
                continue;
            }
            let on_disk = published * a.dtype_bytes;
            let ours = checkpoint_bytes(&a);
            let err = (ours as f64 - on_disk as f64).abs() / on_disk as f64;
            assert!(err < 0.005, "{}: {ours} vs {on_disk}", e.id);
            assert!(
                cache_bytes(ours) >= on_disk + CACHE_MARGIN_FIXED_BYTES,
                "{}",
                e.id
            );
            checked += 1;
        }
        assert!(checked >= 5, "only {checked} catalog models checked");
    }

    #[test]
    fn llama_70b_needs_141_gb_and_a_cache_of_139_gib() {
        // meta-llama/Llama-3.1-70B-Instruct: 70,553,706,496 parameters in bf16 = 141.1 GB.
        let a = arch("meta-llama/Llama-3.1-70B-Instruct");
        let bytes = checkpoint_bytes(&a);
        assert!(
            (141_000_000_000..141_250_000_000).contains(&bytes),
            "{bytes}"
        );
        // 131.4 GiB * 1.05 + 1 GiB = 139.0 GiB, rounded up to whole GiB.
        assert_eq!(cache_bytes(bytes), 139 * GIB);
    }

    #[test]
    fn quantized_checkpoints_are_smaller_on_disk_and_fp32_is_larger() {
        let dense = arch("Qwen/Qwen3-32B");
        let fp8 = arch("Qwen/Qwen3-32B-FP8");
        let ratio = checkpoint_bytes(&fp8) as f64 / checkpoint_bytes(&dense) as f64;
        // Linear layers at 1 byte, embeddings and LM head at 2: a little over half.
        assert!((0.5..0.56).contains(&ratio), "{ratio}");
        let mut fp32 = arch("meta-llama/Llama-3.2-1B-Instruct");
        let bf16 = checkpoint_bytes(&fp32);
        fp32.dtype_bytes = 4;
        assert_eq!(checkpoint_bytes(&fp32), 2 * bf16);
        let mut awq = arch("meta-llama/Llama-3.1-8B-Instruct");
        awq.checkpoint = CheckpointFormat::Awq { group_size: 128 };
        let awq_bytes = checkpoint_bytes(&awq) as f64;
        // 4-bit linear layers (~7.0 B params) plus 16-bit embeddings and LM head (~1.05 B).
        assert!((5.0e9..6.0e9).contains(&awq_bytes), "{awq_bytes}");
    }

    #[test]
    fn only_the_default_cache_takes_node_disk() {
        let a = arch("meta-llama/Llama-3.2-1B-Instruct");
        let text = include_str!("../../tests/fixtures/controller/deployment.yaml");
        let mut d: crate::api::VllmDeployment = serde_norway::from_str(text).unwrap();
        // 2.47 GB checkpoint -> 2.30 GiB * 1.05 + 1 GiB = 3.42 GiB -> 4 GiB.
        assert_eq!(node_cache_bytes(&d.spec, &a), Some(4 * GIB));
        d.spec.model_cache = Some(crate::api::ModelCacheSpec {
            ephemeral: Some(Default::default()),
            ..Default::default()
        });
        assert_eq!(node_cache_bytes(&d.spec, &a), None);
        d.spec.model_cache = Some(crate::api::ModelCacheSpec {
            persistent_volume_claim: Some(crate::api::PvcCacheSpec {
                claim_name: "models".into(),
            }),
            ..Default::default()
        });
        assert_eq!(node_cache_bytes(&d.spec, &a), None);
    }
}
