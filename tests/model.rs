//! The memory model on known models: parameter counts against published figures, exact KV
//! bytes per token, shape rules, and monotonicity over random shapes.

use proptest::prelude::*;
use vllm_operator::api::{KvCacheDtype, Quantization};
use vllm_operator::model::catalog::{entries, lookup};
use vllm_operator::model::{Architecture, GpuFacts, Shape, VllmFamily, estimate, validate_shape};

fn arch(id: &str) -> Architecture {
    lookup(id)
        .unwrap_or_else(|| panic!("{id} not in catalog"))
        .architecture()
        .unwrap()
}

fn shape(tp: u32) -> Shape {
    Shape {
        tensor_parallel_size: tp,
        quantization: Quantization::None,
        kv_cache_dtype: KvCacheDtype::Auto,
        max_model_len: 8192,
        max_num_seqs: None,
        max_num_batched_tokens: None,
        enforce_eager: false,
        block_size: None,
        v0_engine: false,
        family: VllmFamily::V0_11,
        estimate_cuda_graphs: None,
    }
}

fn h100() -> GpuFacts {
    GpuFacts {
        total_bytes: Some(85_520_809_984),
        compute_capability: Some((9, 0)),
        product: Some("NVIDIA H100 80GB HBM3".into()),
    }
}

#[test]
fn catalog_has_at_least_twenty_models_and_every_entry_parses() {
    let all = entries().unwrap();
    assert!(all.len() >= 20, "catalog has {}", all.len());
    for e in all {
        assert!(!e.source.is_empty(), "{} has no source", e.id);
        let a = e
            .architecture()
            .unwrap_or_else(|err| panic!("{}: {err}", e.id));
        assert!(a.parameters() > 100_000_000, "{}", e.id);
    }
    // MoE, MLA, sliding window and nested text_config are all represented.
    assert!(arch("mistralai/Mixtral-8x7B-Instruct-v0.1").moe.is_some());
    assert!(matches!(
        arch("deepseek-ai/DeepSeek-V3").attention,
        vllm_operator::model::arch::Attention::Mla { .. }
    ));
    assert_eq!(
        arch("google/gemma-2-9b-it").sliding_window,
        Some((4096, 21))
    );
    assert_eq!(arch("openai/gpt-oss-20b").sliding_window, Some((128, 12)));
    let gemma3 = arch("google/gemma-3-27b-it");
    assert_eq!(gemma3.num_layers, 62);
    assert_eq!(gemma3.hidden_size, 5376);
}

#[test]
fn lookup_is_case_insensitive_and_knows_aliases() {
    assert_eq!(
        lookup("META-LLAMA/llama-3.1-8b-instruct").unwrap().id,
        "meta-llama/Llama-3.1-8B-Instruct"
    );
    assert_eq!(
        lookup("mistralai/Mistral-7B-Instruct-v0.3").unwrap().id,
        "mistralai/Mistral-7B-v0.3"
    );
    assert!(lookup("nobody/no-such-model").is_none());
}

/// Computed parameter counts agree with the publisher's figure within 1 %.
#[test]
fn computed_parameters_match_published_counts() {
    let mut checked = 0;
    for e in entries().unwrap() {
        let Some(published) = e.published_parameters else {
            continue;
        };
        let computed = e.architecture().unwrap().parameter_breakdown().total();
        let err = (computed as f64 - published as f64) / published as f64;
        println!(
            "{:<45} computed {computed:>15} published {published:>15} {:+.3}%",
            e.id,
            err * 100.0
        );
        assert!(
            err.abs() < 0.01,
            "{}: computed {computed}, published {published}",
            e.id
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} published counts");
}

#[test]
fn exact_kv_bytes_per_token_for_known_models() {
    let gpu = h100();
    let kv = |id: &str, tp: u32, dtype: KvCacheDtype| {
        let mut s = shape(tp);
        s.kv_cache_dtype = dtype;
        estimate(&arch(id), &s, &gpu)
            .unwrap()
            .kv_cache_bytes_per_token_per_gpu
    };
    // 2 (K and V) x layers x kv heads per rank x head dim x 2 bytes.
    assert_eq!(
        kv("meta-llama/Llama-3.1-8B-Instruct", 1, KvCacheDtype::Auto),
        2 * 32 * 8 * 128 * 2
    );
    assert_eq!(
        kv("meta-llama/Llama-3.1-70B-Instruct", 1, KvCacheDtype::Auto),
        327_680
    );
    assert_eq!(
        kv("meta-llama/Llama-3.1-70B-Instruct", 4, KvCacheDtype::Auto),
        81_920
    );
    // tp 16 > 8 KV heads: each rank still holds one head.
    assert_eq!(
        kv("meta-llama/Llama-3.1-70B-Instruct", 8, KvCacheDtype::Auto),
        40_960
    );
    assert_eq!(
        kv("Qwen/Qwen2.5-7B-Instruct", 1, KvCacheDtype::Auto),
        2 * 28 * 4 * 128 * 2
    );
    // fp8 KV halves it.
    assert_eq!(
        kv("meta-llama/Llama-3.1-8B-Instruct", 1, KvCacheDtype::Fp8),
        65_536
    );
    // MLA: one latent of kv_lora_rank + rope dim per layer, not sharded by tp.
    let mut s = shape(8);
    s.quantization = Quantization::Fp8;
    let v3 = estimate(&arch("deepseek-ai/DeepSeek-V3"), &s, &gpu).unwrap();
    assert_eq!(v3.kv_cache_bytes_per_token_per_gpu, 61 * (512 + 64) * 2);
}

#[test]
fn weights_of_known_models() {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let e = estimate(
        &arch("meta-llama/Llama-3.1-8B-Instruct"),
        &shape(1),
        &h100(),
    )
    .unwrap();
    assert!(
        (gib(e.weights_bytes_per_gpu) - 14.96).abs() < 0.05,
        "{}",
        gib(e.weights_bytes_per_gpu)
    );
    let e = estimate(
        &arch("meta-llama/Llama-3.1-70B-Instruct"),
        &shape(4),
        &h100(),
    )
    .unwrap();
    assert!(
        (gib(e.weights_bytes_per_gpu) - 32.9).abs() < 0.3,
        "{}",
        gib(e.weights_bytes_per_gpu)
    );
}

#[test]
fn invalid_shapes_say_why() {
    let gpu = h100();
    let llama = arch("meta-llama/Llama-3.1-8B-Instruct");
    let err = |s: &Shape, g: &GpuFacts| validate_shape(&llama, s, g).unwrap_err().to_string();
    let mut s = shape(64);
    assert_eq!(
        err(&s, &gpu),
        "32 attention heads are not divisible by tensor parallel size 64"
    );
    s = shape(1);
    s.quantization = Quantization::Awq;
    assert_eq!(
        err(&s, &gpu),
        "quantization awq needs a checkpoint published in that format; this one is unquantized"
    );
    s.quantization = Quantization::Fp8;
    let a100 = GpuFacts {
        compute_capability: Some((8, 0)),
        ..gpu.clone()
    };
    // FP8 Marlin on 8.0 since vLLM 0.5.1; 0.11 (in `shape`) still needs 8.0, so a T4 fails.
    assert!(validate_shape(&llama, &s, &a100).is_ok());
    let t4 = GpuFacts {
        compute_capability: Some((7, 5)),
        ..gpu.clone()
    };
    assert!(
        err(&s, &t4).starts_with("fp8 weights need compute capability 8.0 or newer in vLLM 0.11.0"),
        "{}",
        err(&s, &t4)
    );
    assert!(validate_shape(&llama, &s, &gpu).is_ok());
    // Qwen2.5-7B has 28 heads: tp 8 cannot split them.
    let qwen = arch("Qwen/Qwen2.5-7B-Instruct");
    assert!(
        validate_shape(&qwen, &shape(8), &gpu)
            .unwrap_err()
            .to_string()
            .contains("28 attention heads")
    );
    // 4 KV heads and tp 8 is fine (tp is a multiple); 3 would not be.
    let mut odd = qwen.clone();
    odd.num_kv_heads = 3;
    odd.num_attention_heads = 12;
    assert!(
        validate_shape(&odd, &shape(2), &gpu)
            .unwrap_err()
            .to_string()
            .contains("KV heads")
    );
}

#[test]
fn kv_cache_from_total_and_utilization() {
    let e = estimate(
        &arch("meta-llama/Llama-3.1-8B-Instruct"),
        &shape(1),
        &h100(),
    )
    .unwrap();
    let total = 79 * (1u64 << 30);
    let kv = e.kv_cache(total, 0.9);
    assert_eq!(kv.kv_cache_tokens % 16, 0);
    assert_eq!(kv.kv_cache_tokens, kv.num_blocks * 16);
    assert!(kv.kv_cache_bytes >= kv.num_blocks * e.bytes_per_block());
    // 8192-token requests take 512 blocks each.
    assert!((kv.max_concurrency - kv.num_blocks as f64 / 512.0).abs() < 1e-9);
    assert!(e.kv_cache(total, 0.5).kv_cache_bytes < kv.kv_cache_bytes);
}

#[test]
fn vllm_versions_parse_into_families() {
    assert_eq!(
        VllmFamily::parse("0.6.3.post1").unwrap(),
        VllmFamily::new(6, 3)
    );
    assert!(VllmFamily::parse("0.6.3.post1").unwrap().rules().v0_engine);
    assert_eq!(VllmFamily::parse("v0.11.0").unwrap(), VllmFamily::V0_11);
    assert_eq!(VllmFamily::parse("0.21.1").unwrap(), VllmFamily::new(21, 1));
    assert_eq!(VllmFamily::parse("1.0.0").unwrap(), VllmFamily::NEWEST);
    assert!(VllmFamily::parse("latest").is_err());
}

fn catalog_ids() -> Vec<&'static str> {
    entries().unwrap().iter().map(|e| e.id.as_str()).collect()
}

proptest! {
    /// More tensor parallelism never means more weight bytes per GPU, and fp8 KV is half of
    /// bf16 KV, for every catalog model and every valid shape.
    #[test]
    fn monotonic_in_the_right_directions(idx in 0usize..64, len in 1u64..200_000, tp_exp in 0u32..3) {
        let ids = catalog_ids();
        let a = arch(ids[idx % ids.len()]);
        let gpu = h100();
        let mut s = shape(1 << tp_exp);
        s.max_model_len = len;
        let mut wider = s.clone();
        wider.tensor_parallel_size *= 2;
        if let (Ok(narrow), Ok(wide)) = (estimate(&a, &s, &gpu), estimate(&a, &wider, &gpu)) {
            prop_assert!(wide.weights_bytes_per_gpu <= narrow.weights_bytes_per_gpu);
            prop_assert!(wide.kv_cache_bytes_per_token_per_gpu <= narrow.kv_cache_bytes_per_token_per_gpu);
        }
        let mut fp8 = s.clone();
        fp8.kv_cache_dtype = KvCacheDtype::Fp8;
        if let (Ok(b), Ok(f)) = (estimate(&a, &s, &gpu), estimate(&a, &fp8, &gpu)) {
            prop_assert_eq!(b.kv_cache_bytes_per_token_per_gpu, 2 * f.kv_cache_bytes_per_token_per_gpu);
            let mut longer = s.clone();
            longer.max_model_len = len + 1000;
            let l = estimate(&a, &longer, &gpu).unwrap();
            prop_assert!(l.kv_bytes_per_request >= b.kv_bytes_per_request);
        }
    }
}
