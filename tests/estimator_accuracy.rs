//! The estimator against public vLLM startup logs (tests/fixtures/vllm-logs, each with its
//! source URL). Prints one line per case; `cargo test --test estimator_accuracy -- --nocapture`
//! shows the table.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use vllm_operator::api::{KvCacheDtype, Quantization};
use vllm_operator::model::{Architecture, GpuFacts, Shape, VllmFamily, estimate};

const GIB: f64 = (1u64 << 30) as f64;

#[derive(Debug, Deserialize)]
struct Fixture {
    source: String,
    vllm_version: Option<String>,
    model: String,
    gpu: Option<String>,
    tensor_parallel_size: u32,
    gpu_memory_utilization: Option<f64>,
    max_model_len: Option<u64>,
    quantization: Option<String>,
    kv_cache_dtype: Option<String>,
    enforce_eager: Option<bool>,
    max_num_seqs: Option<u64>,
    max_num_batched_tokens: Option<u64>,
    logged: Logged,
    config: Option<Value>,
    excerpt: String,
}

#[derive(Debug, Deserialize)]
struct Logged {
    total_gpu_memory_gib: Option<f64>,
    model_loading_gib: Option<f64>,
    available_kv_cache_gib: Option<f64>,
    gpu_kv_cache_tokens: Option<u64>,
}

struct Case {
    name: String,
    weights_error: Option<f64>,
    kv_error: Option<f64>,
    /// The log states total, utilization, tp and max model len.
    kv_goal_case: bool,
}

/// vLLM's version when the log gives it; otherwise its era from the log's own format: V0
/// printed "Memory profiling results" / "Loading model weights took" / "# GPU blocks".
fn family(f: &Fixture) -> VllmFamily {
    if let Some(v) = &f.vllm_version
        && let Ok(family) = VllmFamily::parse(v)
    {
        return family;
    }
    let v0 = [
        "Memory profiling results",
        "Loading model weights took",
        "GPU blocks:",
    ];
    if v0.iter().any(|m| f.excerpt.contains(m)) {
        VllmFamily::V0
    } else {
        VllmFamily::V0_11
    }
}

fn run_case(path: &PathBuf) -> Option<Case> {
    let text = std::fs::read_to_string(path).unwrap();
    let f: Fixture =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        f.source.starts_with("https://"),
        "{}: source must be a URL",
        path.display()
    );
    let name = path.file_stem().unwrap().to_string_lossy().to_string();
    let config = f.config.as_ref()?;
    let arch = Architecture::from_hf_config(config).unwrap_or_else(|e| panic!("{name}: {e}"));
    // A pre-quantized checkpoint runs in its own format without --quantization.
    let quantization = match f.quantization.as_deref() {
        None | Some("none") => Quantization::None,
        Some(q) => q.parse().unwrap_or(Quantization::None),
    };
    let max_model_len = f.max_model_len.unwrap_or(arch.max_position_embeddings);
    let shape = Shape {
        tensor_parallel_size: f.tensor_parallel_size,
        quantization,
        kv_cache_dtype: f
            .kv_cache_dtype
            .as_deref()
            .unwrap_or("auto")
            .parse()
            .unwrap_or(KvCacheDtype::Auto),
        max_model_len,
        max_num_seqs: f.max_num_seqs,
        max_num_batched_tokens: f.max_num_batched_tokens,
        enforce_eager: f.enforce_eager.unwrap_or(false),
        block_size: None,
        v0_engine: false,
        family: family(&f),
        estimate_cuda_graphs: None,
    };
    let total = f.logged.total_gpu_memory_gib.map(|g| (g * GIB) as u64);
    let gpu = GpuFacts {
        total_bytes: total,
        compute_capability: None,
        product: f.gpu.clone(),
    };
    let est = estimate(&arch, &shape, &gpu).unwrap_or_else(|e| panic!("{name}: {e}"));
    let weights_gib = est.weights_bytes_per_gpu as f64 / GIB;
    let weights_error = f.logged.model_loading_gib.map(|w| (weights_gib - w) / w);
    let mut kv_error = None;
    let mut line = format!(
        "{name:<42} {:<44} tp{} weights {weights_gib:6.2} GiB vs {}",
        f.model,
        f.tensor_parallel_size,
        f.logged.model_loading_gib.map_or("-".into(), |w| format!(
            "{w:.2} ({:+.1}%)",
            weights_error.unwrap() * 100.0
        ))
    );
    if let (Some(total), Some(u), Some(logged_kv)) = (
        total,
        f.gpu_memory_utilization,
        f.logged.available_kv_cache_gib,
    ) {
        let kv = est.kv_cache(total, u);
        let kv_gib = kv.kv_cache_bytes as f64 / GIB;
        // A negative logged budget is vLLM failing to start; ours then leaves nothing.
        let logged_kv = logged_kv.max(0.0);
        let err = (kv_gib - logged_kv) / logged_kv.abs().max(0.01);
        kv_error = Some(err);
        line += &format!(
            " | kv {kv_gib:6.2} GiB vs {logged_kv:.2} ({:+.1}%)",
            err * 100.0
        );
        if let Some(tokens) = f.logged.gpu_kv_cache_tokens {
            line += &format!(" tokens {} vs {tokens}", kv.kv_cache_tokens);
        }
    }
    println!("{line}");
    Some(Case {
        name,
        weights_error,
        kv_error,
        kv_goal_case: total.is_some()
            && f.gpu_memory_utilization.is_some()
            && f.max_model_len.is_some(),
    })
}

#[test]
fn estimator_matches_public_vllm_logs() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vllm-logs");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 15,
        "need at least 15 public logs, have {}",
        paths.len()
    );
    let cases: Vec<Case> = paths.iter().filter_map(run_case).collect();

    let weights: Vec<(&str, f64)> = cases
        .iter()
        .filter_map(|c| c.weights_error.map(|e| (c.name.as_str(), e)))
        .collect();
    let bad_weights: Vec<_> = weights.iter().filter(|(_, e)| e.abs() > 0.03).collect();
    println!(
        "weights within 3%: {}/{}",
        weights.len() - bad_weights.len(),
        weights.len()
    );
    let kv_goal: Vec<&Case> = cases
        .iter()
        .filter(|c| c.kv_goal_case && c.kv_error.is_some())
        .collect();
    let kv_ok = kv_goal
        .iter()
        .filter(|c| c.kv_error.unwrap().abs() <= 0.10)
        .count();
    println!(
        "KV cache within 10% (log states total, u, tp, max len): {kv_ok}/{}",
        kv_goal.len()
    );

    assert!(
        weights.len() >= 10,
        "too few weight data points: {}",
        weights.len()
    );
    assert!(
        bad_weights.is_empty(),
        "weights off by more than 3%: {bad_weights:?}"
    );
    assert!(kv_goal.len() >= 3, "too few KV cases");
    assert!(
        kv_ok * 5 >= kv_goal.len() * 4,
        "KV within 10% in only {kv_ok}/{} cases",
        kv_goal.len()
    );
}
