//! `vllm-operator estimate`: the memory breakdown of one model and shape.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use serde_json::{Value, json};

use super::{EXIT_BAD_INPUT, EXIT_INFEASIBLE, Output};
use crate::api::{KvCacheDtype, Quantization};
use crate::model::estimate::Gib;
use crate::model::{Architecture, GpuFacts, Shape, VllmFamily, catalog, checkpoint, estimate};

#[derive(Args, Debug)]
pub struct EstimateArgs {
    /// A catalog model id (e.g. meta-llama/Llama-3.1-8B-Instruct) or a path to a config.json.
    #[arg(long)]
    pub model: String,
    /// Override the parameter count (weights scale with it).
    #[arg(long)]
    pub params: Option<u64>,
    #[arg(long, default_value = "none")]
    pub quantization: Quantization,
    #[arg(long = "kv-cache-dtype", default_value = "auto")]
    pub kv_cache_dtype: KvCacheDtype,
    #[arg(long = "tensor-parallel-size", default_value_t = 1)]
    pub tensor_parallel_size: u32,
    /// Defaults to the model's max_position_embeddings.
    #[arg(long = "max-model-len")]
    pub max_model_len: Option<u64>,
    #[arg(long = "max-num-seqs")]
    pub max_num_seqs: Option<u64>,
    #[arg(long = "max-num-batched-tokens")]
    pub max_num_batched_tokens: Option<u64>,
    #[arg(long = "enforce-eager")]
    pub enforce_eager: bool,
    /// VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS as the pod would set it (0 or 1).
    #[arg(long = "estimate-cuda-graphs")]
    pub estimate_cuda_graphs: Option<u8>,
    /// vLLM's `--block-size` (defaults to the attention backend's: 16, 64 for MLA).
    #[arg(long = "block-size")]
    pub block_size: Option<u64>,
    /// Total memory of one GPU as CUDA reports it, in bytes.
    #[arg(long = "gpu-total-bytes")]
    pub gpu_total_bytes: Option<u64>,
    /// Defaults to vLLM's default for the version (0.9, or 0.92 from 0.20).
    #[arg(long = "gpu-memory-utilization")]
    pub gpu_memory_utilization: Option<f64>,
    /// GPU compute capability, e.g. 8.9, for the quantization hardware rules.
    #[arg(long = "compute-capability")]
    pub compute_capability: Option<String>,
    /// vLLM release whose rules apply (the newest known by default).
    #[arg(long = "vllm-version", default_value = "0.33.0")]
    pub vllm_version: String,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Resolve `--model`: a path to a config.json, or a catalog id. Something that looks like a
/// path (`./x`, `/x`, `x.json`) is read as one, so a missing file says so.
pub fn load_architecture(model: &str) -> Result<Architecture, String> {
    let path = Path::new(model);
    let looks_like_path = model.starts_with(['.', '/', '~'])
        || model.ends_with(".json")
        || model.contains(std::path::MAIN_SEPARATOR) && path.exists();
    if looks_like_path || path.is_file() {
        let text =
            crate::validate::read_text(path, crate::validate::MAX_CONFIG_BYTES, "a config.json")
                .map_err(|e| e.to_string())?;
        let config: Value =
            serde_json::from_str(&text).map_err(|e| format!("{model}: not valid JSON: {e}"))?;
        return Architecture::from_hf_config(&config).map_err(|e| format!("{model}: {e}"));
    }
    match catalog::lookup(model) {
        Some(entry) => entry
            .architecture()
            .map_err(|e| format!("catalog entry {model}: {e}")),
        None => Err(format!(
            "unknown model {model:?}: not in the built-in catalog and not a config.json file (list the catalog with `vllm-operator estimate --model list`)"
        )),
    }
}

pub fn parse_compute_capability(text: &str) -> Result<(u32, u32), String> {
    let (major, minor) = text
        .split_once('.')
        .ok_or_else(|| format!("compute capability {text:?} should look like 8.9"))?;
    let parse = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("compute capability {text:?} should look like 8.9"))
    };
    Ok((parse(major)?, parse(minor)?))
}

pub fn run(args: &EstimateArgs) -> ExitCode {
    if args.model == "list" {
        match catalog::entries() {
            Ok(entries) => {
                let mut out = String::new();
                for e in entries {
                    let _ = writeln!(out, "{}", e.id);
                }
                super::emit(&out);
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("vllm-operator estimate: {e}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        }
    }
    let bad = |msg: String| {
        eprintln!("vllm-operator estimate: {msg}");
        ExitCode::from(EXIT_BAD_INPUT)
    };
    let mut arch = match load_architecture(&args.model) {
        Ok(a) => a,
        Err(e) => return bad(e),
    };
    let family = match VllmFamily::parse(&args.vllm_version) {
        Ok(f) => f,
        Err(e) => return bad(e),
    };
    let compute_capability = match args
        .compute_capability
        .as_deref()
        .map(parse_compute_capability)
        .transpose()
    {
        Ok(cc) => cc,
        Err(e) => return bad(e),
    };
    if let Some(u) = args.gpu_memory_utilization
        && !(u > 0.0 && u <= 1.0)
    {
        return bad(format!("--gpu-memory-utilization {u} is not in (0, 1]"));
    }
    let computed = arch.parameter_breakdown().total();
    if let Some(p) = args.params {
        if p == 0 || p > crate::validate::limits::MAX_PARAMETERS {
            return bad(format!(
                "--params {p} is not in 1..={}",
                crate::validate::limits::MAX_PARAMETERS
            ));
        }
        arch.stated_parameters = Some(p);
    }
    if let Some(len) = args.max_model_len {
        if len == 0 {
            return bad("--max-model-len must be at least 1".into());
        }
        // vLLM's own rule (`_get_and_verify_max_len`, vllm/config/model.py in 0.11.0 and
        // 0.33.0), which VLLM_ALLOW_LONG_MAX_MODEL_LEN lifts in the environment vLLM runs in.
        let allowed = std::env::var("VLLM_ALLOW_LONG_MAX_MODEL_LEN")
            .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true"));
        if !allowed
            && let Some((limit, key)) = arch.max_model_len_limit(family)
            && len > limit
        {
            return bad(format!(
                "--max-model-len {len} is greater than the model's {limit} ({key} in its config); vLLM refuses it unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1"
            ));
        }
    }
    let shape = Shape {
        tensor_parallel_size: args.tensor_parallel_size,
        quantization: args.quantization,
        kv_cache_dtype: args.kv_cache_dtype,
        max_model_len: args.max_model_len.unwrap_or(arch.max_position_embeddings),
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args.max_num_batched_tokens,
        enforce_eager: args.enforce_eager,
        block_size: args.block_size,
        v0_engine: false,
        family,
        estimate_cuda_graphs: args.estimate_cuda_graphs.map(|v| v != 0),
    };
    let gpu = GpuFacts {
        total_bytes: args.gpu_total_bytes,
        compute_capability,
        product: None,
    };
    let mut est = match estimate(&arch, &shape, &gpu) {
        Ok(e) => e,
        Err(reason) => {
            eprintln!("vllm-operator estimate: invalid shape: {reason}");
            return ExitCode::from(EXIT_INFEASIBLE);
        }
    };
    if let Some(p) = args.params {
        est.weights_bytes_per_gpu =
            u64::try_from(est.weights_bytes_per_gpu as u128 * p as u128 / computed.max(1) as u128)
                .unwrap_or(u64::MAX);
    }
    let utilization = args
        .gpu_memory_utilization
        .unwrap_or(family.default_utilization());
    let kv = args
        .gpu_total_bytes
        .map(|total| est.kv_cache(total, utilization));

    let checkpoint_bytes = checkpoint::checkpoint_bytes(&arch);
    match args.output {
        Output::Json => {
            let mut doc = json!({
                "model": args.model,
                "parameters": arch.parameters(),
                "checkpoint_bytes": checkpoint_bytes,
                "model_cache_bytes": checkpoint::cache_bytes(checkpoint_bytes),
                "tensor_parallel_size": shape.tensor_parallel_size,
                "quantization": shape.quantization,
                "kv_cache_dtype": shape.kv_cache_dtype,
                "max_model_len": shape.max_model_len,
                "max_num_batched_tokens": est.max_num_batched_tokens,
                "max_num_seqs": est.max_num_seqs,
                "weights_bytes_per_gpu": est.weights_bytes_per_gpu,
                "weights_load_peak_bytes": est.weights_load_peak_bytes,
                "kv_cache_bytes_per_token_per_gpu": est.kv_cache_bytes_per_token_per_gpu,
                "activation_peak_bytes": est.activation_peak_bytes,
                "non_torch_bytes": est.non_torch_bytes,
                "cuda_graph_bytes": est.cuda_graph_bytes,
                "cuda_graphs_in_budget": est.cuda_graphs_in_budget,
                "startup_overhead_bytes": est.startup_overhead_bytes,
                "kv_bytes_per_request": est.kv_bytes_per_request,
            });
            if let (Some(kv), Some(total)) = (kv, args.gpu_total_bytes) {
                doc["gpu_total_bytes"] = json!(total);
                doc["gpu_memory_utilization"] = json!(utilization);
                doc["kv_cache_bytes"] = json!(kv.kv_cache_bytes);
                doc["kv_cache_tokens"] = json!(kv.kv_cache_tokens);
                doc["max_concurrency"] = json!(kv.max_concurrency);
            }
            super::emit(&format!("{doc}\n"));
        }
        Output::Table => {
            let mut out = String::new();
            let _ = writeln!(out, "model                     {}", args.model);
            let _ = writeln!(
                out,
                "parameters                {:.2} B",
                arch.parameters() as f64 / 1e9
            );
            let _ = writeln!(
                out,
                "checkpoint on disk        {} (model cache {})",
                Gib(checkpoint_bytes),
                Gib(checkpoint::cache_bytes(checkpoint_bytes))
            );
            let _ = writeln!(
                out,
                "shape                     tp {} | quantization {} | kv cache {} | max model len {} | batch {} tokens / {} seqs",
                shape.tensor_parallel_size,
                shape.quantization,
                shape.kv_cache_dtype,
                shape.max_model_len,
                est.max_num_batched_tokens,
                est.max_num_seqs
            );
            let _ = writeln!(
                out,
                "weights per GPU           {}",
                Gib(est.weights_bytes_per_gpu)
            );
            let _ = writeln!(
                out,
                "activation peak           {}",
                Gib(est.activation_peak_bytes)
            );
            let _ = writeln!(
                out,
                "non-torch memory          {}",
                Gib(est.non_torch_bytes)
            );
            let where_graphs = if est.cuda_graphs_in_budget {
                "inside"
            } else {
                "outside"
            };
            let _ = writeln!(
                out,
                "CUDA graphs               {} ({where_graphs} the utilization budget)",
                Gib(est.cuda_graph_bytes)
            );
            let _ = writeln!(
                out,
                "startup overhead          {} (before vLLM's free-memory check)",
                Gib(est.startup_overhead_bytes)
            );
            let _ = writeln!(
                out,
                "KV cache per token        {:.1} KiB per GPU; one {}-token request needs {}",
                est.kv_cache_bytes_per_token_per_gpu as f64 / 1024.0,
                shape.max_model_len,
                Gib(est.kv_bytes_per_request)
            );
            if let (Some(kv), Some(total)) = (kv, args.gpu_total_bytes) {
                let _ = writeln!(
                    out,
                    "GPU total                 {} at utilization {utilization:.2}",
                    Gib(total)
                );
                let _ = writeln!(
                    out,
                    "KV cache                  {} = {} tokens",
                    Gib(kv.kv_cache_bytes),
                    kv.kv_cache_tokens
                );
                let _ = writeln!(
                    out,
                    "max concurrency           {:.2}x at {} tokens per request",
                    kv.max_concurrency, shape.max_model_len
                );
            }
            super::emit(&out);
        }
    }
    ExitCode::SUCCESS
}
