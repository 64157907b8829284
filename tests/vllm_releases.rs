//! The rules that change between vLLM releases (`model::family`), one test per rule, each
//! citing the vLLM file and release it was read from (wheels from PyPI, `vllm/` tree), and the
//! planner choices they lead to on real GPUs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use vllm_operator::api::{KvCacheDtype, PodRef, Quantization, Sharing, VllmDeploymentSpec};
use vllm_operator::cli::plan::family_from_image;
use vllm_operator::manifest::{Object, read_objects};
use vllm_operator::model::catalog::lookup;
use vllm_operator::model::{Architecture, Estimate, GpuFacts, Shape, VllmFamily, estimate};
use vllm_operator::plan::fleet::{Fleet, FleetNode, Gpu};
use vllm_operator::plan::{Decision, Ledger, Placement, Request, plan_replica, quantization_flag};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn arch(id: &str) -> Architecture {
    lookup(id)
        .unwrap_or_else(|| panic!("{id} not in catalog"))
        .architecture()
        .unwrap()
}

fn release(v: &str) -> VllmFamily {
    VllmFamily::parse(v).unwrap()
}

fn shape(v: &str, tp: u32, q: Quantization, max_model_len: u64) -> Shape {
    Shape {
        tensor_parallel_size: tp,
        quantization: q,
        kv_cache_dtype: KvCacheDtype::Auto,
        max_model_len,
        max_num_seqs: None,
        max_num_batched_tokens: None,
        enforce_eager: false,
        block_size: None,
        v0_engine: false,
        family: release(v),
        estimate_cuda_graphs: None,
    }
}

fn gpu(total_bytes: u64, cc: (u32, u32), product: &str) -> GpuFacts {
    GpuFacts {
        total_bytes: Some(total_bytes),
        compute_capability: Some(cc),
        product: Some(product.into()),
    }
}

fn h100() -> GpuFacts {
    gpu(85_520_809_984, (9, 0), "NVIDIA H100 80GB HBM3")
}

fn a10() -> GpuFacts {
    gpu(A10_TOTAL, (8, 6), "NVIDIA A10")
}

fn est(a: &Architecture, s: &Shape, g: &GpuFacts) -> Estimate {
    estimate(a, s, g).unwrap_or_else(|e| panic!("{e}"))
}

fn invalid(a: &Architecture, s: &Shape, g: &GpuFacts) -> String {
    estimate(a, s, g).unwrap_err().to_string()
}

// ---------------------------------------------------------------------------------------------
// Item 5: where CUDA graphs are counted, and the default utilization.
// ---------------------------------------------------------------------------------------------

/// 0.20.0 `envs.py:1724-1726` (default "1") and `config/cache.py:66` (0.92); 0.18.0
/// `envs.py:1635-1637` (default "0") and 0.19.0 `config/cache.py:41` (0.9); 0.17.0 has no
/// `VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`.
#[test]
fn graphs_join_the_budget_from_0_20_and_on_request_in_0_18_and_0_19() {
    let llama = arch("meta-llama/Llama-3.1-8B-Instruct");
    let inside = |v: &str, env: Option<bool>| {
        let mut s = shape(v, 1, Quantization::None, 8192);
        s.estimate_cuda_graphs = env;
        est(&llama, &s, &h100()).cuda_graphs_in_budget
    };
    assert!(inside("0.20.0", None));
    assert!(!inside("0.20.0", Some(false)));
    assert!(!inside("0.19.0", None));
    assert!(inside("0.19.0", Some(true)));
    assert!(inside("0.18.0", Some(true)));
    assert!(!inside("0.17.0", Some(true)));
    assert!(!inside("0.11.0", Some(true)));
    assert_eq!(release("0.20.0").default_utilization(), 0.92);
    assert_eq!(release("0.19.0").default_utilization(), 0.9);
    // Inside the budget the graphs are part of what `u * total` must hold.
    let e = est(
        &llama,
        &shape("0.20.0", 1, Quantization::None, 8192),
        &h100(),
    );
    assert_eq!(
        e.required_bytes(),
        e.weights_bytes_per_gpu + e.activation_peak_bytes + e.non_torch_bytes + e.cuda_graph_bytes
    );
    assert_eq!(e.outside_budget_bytes(), e.startup_overhead_bytes);
}

/// A pod's `VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS` reaches the planner's shapes, read as
/// vLLM reads it (`bool(int(value))`).
#[test]
fn the_graph_estimate_variable_comes_from_spec_env() {
    let s: VllmDeploymentSpec = serde_norway::from_str(
        "model: {name: m}\nenv: [{name: VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS, value: '1'}]",
    )
    .unwrap();
    assert_eq!(
        vllm_operator::plan::estimate_cuda_graphs_env(&s),
        Some(true)
    );
    let shapes = vllm_operator::plan::candidate_shapes(&s, 4096, release("0.19.0"));
    assert!(shapes.iter().all(|s| s.estimate_cuda_graphs == Some(true)));
    let unset: VllmDeploymentSpec = serde_norway::from_str("model: {name: m}").unwrap();
    assert_eq!(vllm_operator::plan::estimate_cuda_graphs_env(&unset), None);
}

// ---------------------------------------------------------------------------------------------
// Item 6: other processes charged to the budget.
// ---------------------------------------------------------------------------------------------

/// 0.6.4 `worker/worker.py:191-217` and 0.8.0 `v1/worker/gpu_worker.py:139-186` / 0.9.0
/// `:167-214`: `available = total * u - (peak + total - free - torch_allocated)`, so memory of
/// other processes (and vLLM's own context) is inside `u * total`, and there is no startup
/// check. 0.6.5 (`memory_profiling(baseline_memory_in_bytes=...)`) and 0.9.1 (`init_snapshot`)
/// are per instance.
#[test]
fn releases_that_charge_other_processes_plan_a_shared_gpu_by_that_rule() {
    for (v, charged) in [
        ("0.6.3.post1", false),
        ("0.6.4", true),
        ("0.6.4.post1", true),
        ("0.6.5", false),
        ("0.8.0", true),
        ("0.8.5", true),
        ("0.9.0.1", true),
        ("0.9.1", false),
        ("0.11.0", false),
    ] {
        assert_eq!(release(v).rules().others_in_budget, charged, "{v}");
        assert_eq!(
            release(v).rules().startup_check,
            v == "0.9.1" || v == "0.11.0"
        );
    }
    // One H100 on a shared node with 30 GiB held by a process outside Kubernetes.
    let mut node = node(
        "shared",
        vec![mk_gpu(
            0,
            H100_TOTAL,
            H100_RESERVED,
            30 * GIB,
            (9, 0),
            "NVIDIA H100 80GB HBM3",
        )],
    );
    node.sharing = Sharing::Shared;
    let fleet = Fleet {
        nodes: vec![node],
        ..Default::default()
    };
    let llama = arch("meta-llama/Llama-3.1-8B-Instruct");
    let mut s = spec(
        "meta-llama/Llama-3.1-8B-Instruct",
        "vllm/vllm-openai:v0.9.0",
    );
    s.max_model_len = Some(8192);
    let g = &fleet.nodes[0].gpus[0];
    let cuda_total = g.total_bytes - g.reserved_bytes;
    let others = cuda_total - g.free_bytes;

    let old = placed(plan(&fleet, &llama, &s));
    assert!(old.launch_plan.others_in_budget);
    // vLLM 0.9.0 sizes its KV cache as u * total - (others + own context + weights + peak).
    let budget = (cuda_total as u128 * old.fit.utilization_pct as u128 / 100) as u64;
    assert_eq!(
        old.fit.kv_cache_bytes,
        budget - old.estimate.required_bytes() - others
    );
    assert!(old.fit.kv_cache_bytes >= old.launch_plan.min_kv_bytes);
    // What vLLM then holds, plus its graphs and our headroom, is what is free.
    let held = budget - others;
    assert!(held + old.estimate.cuda_graph_bytes + old.launch_plan.headroom_bytes <= g.free_bytes);

    // 0.11 counts only itself: the same GPU gets a utilization bounded by what is free.
    s.image = "vllm/vllm-openai:v0.11.0".into();
    let new = placed(plan(&fleet, &llama, &s));
    assert!(!new.launch_plan.others_in_budget);
    assert!(new.fit.utilization_pct < old.fit.utilization_pct);
}

// ---------------------------------------------------------------------------------------------
// Item 7: the third batch tier.
// ---------------------------------------------------------------------------------------------

/// 0.28.0 `engine/arg_utils.py:2582-2590`: 16384 batched tokens and 1024 sequences when NVML
/// total is at least 160 GiB; 0.27.0 `:2544` has only the 70 GiB tier (8192 for the server).
#[test]
fn gpus_of_160_gib_get_16384_batched_tokens_from_0_28() {
    let b200 = gpu(192 * 1_000_000_000, (10, 0), "NVIDIA B200");
    let llama = arch("meta-llama/Llama-3.1-8B-Instruct");
    let e = |v: &str| est(&llama, &shape(v, 1, Quantization::None, 32768), &b200);
    assert_eq!(e("0.28.0").max_num_batched_tokens, 16384);
    assert_eq!(e("0.28.0").max_num_seqs, 1024);
    assert_eq!(e("0.27.0").max_num_batched_tokens, 8192);
    // The profiled forward grows with it (with few sequences the sampler does not dominate).
    let few = |v: &str| {
        let mut s = shape(v, 1, Quantization::None, 32768);
        s.max_num_seqs = Some(16);
        est(&llama, &s, &b200).activation_peak_bytes
    };
    assert_eq!(few("0.28.0"), 2 * few("0.27.0"));
    // An H100 stays in the 70 GiB tier.
    let h = est(
        &llama,
        &shape("0.28.0", 1, Quantization::None, 32768),
        &h100(),
    );
    assert_eq!(h.max_num_batched_tokens, 8192);
}

// ---------------------------------------------------------------------------------------------
// Item 8: online fp8.
// ---------------------------------------------------------------------------------------------

/// 0.31.0 `model_executor/layers/quantization/fp8.py:106-112` rejects `fp8` on an unquantized
/// checkpoint ("Please use `--quantization fp8_per_tensor`"); 0.30.0 accepts it. A checkpoint
/// already quantized gets no flag: vLLM reads its `quantization_config`.
#[test]
fn online_fp8_is_fp8_per_tensor_from_0_31_and_prequantized_checkpoints_get_no_flag() {
    let dense = arch("meta-llama/Llama-3.1-8B-Instruct");
    assert_eq!(
        quantization_flag(&dense, Quantization::Fp8, release("0.30.0")),
        Some("fp8")
    );
    assert_eq!(
        quantization_flag(&dense, Quantization::Fp8, release("0.31.0")),
        Some("fp8_per_tensor")
    );
    assert_eq!(
        quantization_flag(&dense, Quantization::None, release("0.33.0")),
        None
    );
    for id in ["Qwen/Qwen3-32B-FP8", "Qwen/Qwen3-30B-A3B-FP8"] {
        let fp8 = arch(id);
        for v in ["0.11.0", "0.33.0"] {
            assert_eq!(
                quantization_flag(&fp8, Quantization::Fp8, release(v)),
                None,
                "{id} {v}"
            );
        }
    }
    let mut fbgemm = dense.clone();
    fbgemm.checkpoint = vllm_operator::model::arch::CheckpointFormat::FbgemmFp8;
    assert_eq!(
        quantization_flag(&fbgemm, Quantization::Fp8, release("0.11.0")),
        None
    );
    let mut int8 = dense.clone();
    int8.checkpoint = vllm_operator::model::arch::CheckpointFormat::CompressedInt { bits: 8 };
    assert_eq!(
        quantization_flag(&int8, Quantization::None, release("0.11.0")),
        None
    );
}

/// 0.16.0 `quantization/fp8.py:554-597` creates online-fp8 weights on the meta device and
/// materializes each just in time; 0.15.0 loads the bf16 model first.
#[test]
fn online_fp8_loads_just_in_time_from_0_16() {
    let llama = arch("meta-llama/Llama-3.1-8B-Instruct");
    let e = |v: &str| est(&llama, &shape(v, 1, Quantization::Fp8, 8192), &h100());
    let dense = est(
        &llama,
        &shape("0.15.0", 1, Quantization::None, 8192),
        &h100(),
    );
    assert_eq!(
        e("0.15.0").weights_load_peak_bytes,
        dense.weights_bytes_per_gpu
    );
    let jit = e("0.16.0");
    assert!(jit.weights_load_peak_bytes > jit.weights_bytes_per_gpu);
    // fp8 weights plus about one layer in 16 bits (8B: 0.4 GiB per layer).
    assert!(jit.weights_load_peak_bytes - jit.weights_bytes_per_gpu < GIB / 2);
    assert!(jit.weights_load_peak_bytes < dense.weights_bytes_per_gpu * 6 / 10);
}

// ---------------------------------------------------------------------------------------------
// Item 9: fp8 weights below compute capability 8.9.
// ---------------------------------------------------------------------------------------------

/// `get_min_capability` of `Fp8Config`: 89 in 0.5.0.post1 (`fp8.py:64-65`), 80 from 0.5.1
/// (`fp8.py:61-62`; 0.13.0 `:255-256`), 75 from 0.14.0 (`:152-153`); below 8.9 vLLM runs FP8
/// Marlin, weight-only.
#[test]
fn fp8_weights_run_as_marlin_below_8_9() {
    let llama = arch("meta-llama/Llama-3.1-8B-Instruct");
    let t4 = gpu(16 * GIB, (7, 5), "Tesla T4");
    let fp8 = |v: &str| shape(v, 1, Quantization::Fp8, 4096);
    assert!(estimate(&llama, &fp8("0.11.0"), &a10()).is_ok());
    assert!(estimate(&llama, &fp8("0.5.1"), &a10()).is_ok());
    assert!(
        invalid(&llama, &fp8("0.5.0"), &a10())
            .starts_with("fp8 weights need compute capability 8.9 or newer in vLLM 0.5.0")
    );
    assert!(
        invalid(&llama, &fp8("0.13.0"), &t4)
            .starts_with("fp8 weights need compute capability 8.0 or newer in vLLM 0.13.0")
    );
    assert!(estimate(&llama, &fp8("0.14.0"), &t4).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Item 10: fp8 KV cache on compute capability 8.x.
// ---------------------------------------------------------------------------------------------

/// 0.11.0 `platforms/cuda.py:359-362` picks the Triton backend for an fp8 KV cache below 9.0,
/// which quantizes queries to fp8 (`v1/attention/backends/triton_attn.py:314-329`): fp8
/// hardware, 8.9. 0.12.0 puts FlashInfer next in line (`platforms/cuda.py:69-74`). 0.10.x's V1
/// engine has no fp8 attention without FlashAttention 3 and falls back to V0
/// (`engine/arg_utils.py:1465-1471` in 0.10.2).
#[test]
fn fp8_kv_cache_on_8_x_fails_in_0_11_and_works_from_0_12() {
    let llama = arch("meta-llama/Llama-3.1-8B-Instruct");
    let kv = |v: &str| {
        let mut s = shape(v, 1, Quantization::None, 8192);
        s.kv_cache_dtype = KvCacheDtype::Fp8;
        s
    };
    assert!(
        invalid(&llama, &kv("0.11.0"), &a10())
            .starts_with("an fp8 KV cache needs compute capability 8.9 or newer in vLLM 0.11.0")
    );
    assert!(estimate(&llama, &kv("0.12.0"), &a10()).is_ok());
    assert!(estimate(&llama, &kv("0.11.0"), &h100()).is_ok());
    let l4 = gpu(24_152_899_584, (8, 9), "NVIDIA L4");
    assert!(estimate(&llama, &kv("0.11.0"), &l4).is_ok());
    // 0.10: V0 sizing (a whole 8192-token prompt profiled, graphs outside the budget).
    let fallback = est(&llama, &kv("0.10.2"), &a10());
    assert_eq!(fallback.max_num_batched_tokens, 8192);
    let v1 = est(&llama, &kv("0.10.2"), &h100());
    assert_eq!(
        v1.max_num_batched_tokens,
        8192.min(v1.max_num_batched_tokens)
    );
    assert_eq!(
        est(
            &llama,
            &shape("0.10.2", 1, Quantization::None, 8192),
            &a10()
        )
        .max_num_batched_tokens,
        2048
    );
}

// ---------------------------------------------------------------------------------------------
// Item 11: bitsandbytes.
// ---------------------------------------------------------------------------------------------

/// In-flight bitsandbytes quantizes every linear layer to NF4 with `compress_statistics=True`
/// (0.27.0 `model_loader/bitsandbytes_loader.py:433-437`), blocksize 64 (bitsandbytes 0.45.3
/// `functional.py:1165-1173`): half a byte per parameter plus one absmax per 64. Before 0.10
/// the absmax stays nested (1 byte per 64, plus a float32 per 256 blocks); from 0.10.0
/// `_dequantize_dq` turns it back into float32 at load (4 bytes per 64). Embeddings and the LM
/// head are not linear layers and stay in 16 bits. Minimum capability 7.0 (0.27.0
/// `quantization/bitsandbytes.py:104-105`); gone in 0.28.0.
#[test]
fn bitsandbytes_is_4_bit_nf4_of_linear_layers_up_to_0_27() {
    let llama = arch("meta-llama/Llama-3.2-3B-Instruct");
    let p = llama.parameter_breakdown();
    let linear = (p.attention + p.mlp) as f64;
    let tables = (llama.vocab_size.div_ceil(64) * 64 * llama.hidden_size + p.norms) as f64 * 2.0;
    let bnb = |v: &str| {
        est(
            &llama,
            &shape(v, 1, Quantization::Bitsandbytes, 8192),
            &a10(),
        )
    };
    let expect_new = linear * (0.5 + 4.0 / 64.0) + tables;
    let expect_old = linear * (0.5 + 1.0 / 64.0 + 4.0 / 16384.0) + tables;
    let w = |v: &str| bnb(v).weights_bytes_per_gpu as f64;
    assert!(
        (w("0.27.0") - expect_new).abs() / expect_new < 0.005,
        "{}",
        w("0.27.0")
    );
    assert!(
        (w("0.9.2") - expect_old).abs() / expect_old < 0.005,
        "{}",
        w("0.9.2")
    );
    let dense = est(
        &llama,
        &shape("0.27.0", 1, Quantization::None, 8192),
        &a10(),
    );
    assert!(w("0.27.0") < dense.weights_bytes_per_gpu as f64 * 0.45);
    assert_eq!(
        invalid(
            &llama,
            &shape("0.28.0", 1, Quantization::Bitsandbytes, 8192),
            &a10()
        ),
        "vLLM 0.28.0 has no bitsandbytes quantization (removed in 0.28.0)"
    );
    let p100 = gpu(16 * GIB, (6, 0), "Tesla P100-PCIE-16GB");
    assert!(
        invalid(
            &llama,
            &shape("0.27.0", 1, Quantization::Bitsandbytes, 8192),
            &p100
        )
        .starts_with("bitsandbytes needs compute capability 7.0 or newer")
    );
    assert_eq!(
        quantization_flag(&llama, Quantization::Bitsandbytes, release("0.27.0")),
        Some("bitsandbytes")
    );
}

// ---------------------------------------------------------------------------------------------
// Item 12: the newest release by default.
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_tags_and_digests_are_planned_as_the_newest_release() {
    assert_eq!(VllmFamily::NEWEST, release("0.33.0"));
    for image in [
        "vllm/vllm-openai:latest",
        "vllm/vllm-openai:nightly",
        "vllm/vllm-openai",
        "registry.local:5000/vllm/vllm-openai",
        "vllm/vllm-openai@sha256:4ba787ec9aa0f00d1b7c00ffee00aa00ff00ee00dd00cc00bb00aa0099008877",
    ] {
        assert_eq!(family_from_image(image), VllmFamily::NEWEST, "{image}");
    }
    assert_eq!(
        family_from_image("vllm/vllm-openai:v0.11.0@sha256:abc"),
        VllmFamily::V0_11
    );
    assert_eq!(
        family_from_image("registry.local:5000/vllm/vllm-openai:v0.27.0"),
        release("0.27.0")
    );
    let s: VllmDeploymentSpec = serde_norway::from_str("model: {name: m}").unwrap();
    assert_eq!(s.image, "vllm/vllm-openai:v0.33.0");
    let crd = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/vllmdeployments.yaml"),
    )
    .unwrap();
    assert!(crd.contains("default: vllm/vllm-openai:v0.33.0"));
}

// ---------------------------------------------------------------------------------------------
// Item 13: vLLM's own memory before its check.
// ---------------------------------------------------------------------------------------------

/// Public 0.11 logs on H100 (tests/fixtures/vllm-logs 19-21, 26: "78.57/79.18 GiB" free at the
/// snapshot, 0.61 GiB used; 24: "77.64/79.18", 1.54 GiB at tp 2). 0.33.0
/// `v1/worker/gpu_worker.py:519-529` also creates cuBLAS handles before the snapshot.
#[test]
fn startup_overhead_covers_the_logged_figures_and_grows_with_tp() {
    let o = |v: &str, tp: u64| release(v).rules().overhead.bytes(tp);
    let gib = |x: f64| (x * GIB as f64) as u64;
    assert!(o("0.11.0", 1) >= gib(0.61));
    assert!(o("0.11.0", 2) >= gib(1.54));
    assert!(o("0.11.0", 4) > o("0.11.0", 2));
    assert!(o("0.11.0", 8) > o("0.11.0", 4));
    assert!(o("0.10.0", 1) >= gib(0.70));
    assert!(o("0.33.0", 1) > o("0.11.0", 1));
    // The estimate carries the table's figure.
    let llama = arch("meta-llama/Llama-3.1-70B-Instruct");
    let e = est(
        &llama,
        &shape("0.11.0", 2, Quantization::None, 8192),
        &h100(),
    );
    assert_eq!(e.startup_overhead_bytes, o("0.11.0", 2));
}

// ---------------------------------------------------------------------------------------------
// Item 14: CUDA graphs of MoE models with tensor parallelism.
// ---------------------------------------------------------------------------------------------

/// vllm-project/vllm#17469 (0.8.5, Qwen3-30B-A3B, tp 4 on A10s, default 0.9: out of memory in
/// graph capture, fine with --enforce-eager) and QwenLM/Qwen3#1387 (the same at 0.7, 6.1 GiB
/// outside PyTorch at the failure). Capture sizes: 0.11.0 `config/scheduler.py:222-227`.
#[test]
fn moe_graphs_with_tp_outside_the_budget_scale_with_capture_sizes() {
    let qwen = arch("Qwen/Qwen3-30B-A3B");
    let e = |v: &str, seqs: Option<u64>| {
        let mut s = shape(v, 4, Quantization::None, 1024);
        s.max_num_seqs = seqs;
        est(&qwen, &s, &a10())
    };
    let old = e("0.8.5", Some(1));
    // The 10 % outside a 0.9 budget (2.2 GiB) and the 30 % outside a 0.7 one less vLLM's
    // own 0.7 GiB were both too little.
    assert!(
        old.cuda_graph_bytes > 6 * GIB + 100 * MIB,
        "{}",
        old.cuda_graph_bytes
    );
    // From 0.10 the capture sizes follow max_num_seqs: one sequence captures 1 and 2 only.
    let few = e("0.11.0", Some(1));
    let many = e("0.11.0", None);
    assert!(few.cuda_graph_bytes < many.cuda_graph_bytes / 4);
    // Dense models and tp 1 keep the flat figure; inside the budget vLLM measures them itself.
    let tp1 = est(
        &qwen,
        &shape("0.11.0", 1, Quantization::None, 1024),
        &h100(),
    );
    assert_eq!(tp1.cuda_graph_bytes, 128 * MIB + 12 * MIB * 48);
    assert_eq!(
        e("0.20.0", None).cuda_graph_bytes,
        128 * MIB + 12 * MIB * 48
    );
}

// ---------------------------------------------------------------------------------------------
// Must show: planner choices on real GPUs.
// ---------------------------------------------------------------------------------------------

const A10_TOTAL: u64 = 24_146_608_128;
const A10_RESERVED: u64 = 471_859_200;
const H100_TOTAL: u64 = 85_520_809_984;
const H100_RESERVED: u64 = 493_879_296;

fn mk_gpu(index: u32, total: u64, reserved: u64, used: u64, cc: (u32, u32), product: &str) -> Gpu {
    Gpu {
        index,
        uuid: format!("GPU-{index:04}"),
        product: product.into(),
        compute_capability: Some(cc),
        total_bytes: total,
        free_bytes: total - reserved - used,
        reserved_bytes: reserved,
        allocated_to: None,
        foreign_bytes: used,
        processes: if used > 0 {
            vec![(4242, used, None)]
        } else {
            Vec::new()
        },
        mig_device: false,
        dra: None,
    }
}

fn node(name: &str, gpus: Vec<Gpu>) -> FleetNode {
    FleetNode {
        name: name.into(),
        sharing: Sharing::Exclusive,
        gpus,
        labels: BTreeMap::new(),
        taints: Vec::new(),
        allocatable_gpus: None,
        allocatable_ephemeral_bytes: None,
        ineligible: None,
        observed_at: None,
    }
}

fn spec(model: &str, image: &str) -> VllmDeploymentSpec {
    serde_norway::from_str(&format!("model: {{name: {model}}}\nimage: {image}")).unwrap()
}

fn plan(fleet: &Fleet, arch: &Architecture, spec: &VllmDeploymentSpec) -> Decision {
    let req = Request {
        pod: PodRef {
            namespace: "default".into(),
            name: "r-0".into(),
        },
        arch,
        spec,
        family: family_from_image(&spec.image),
        avoid: &[],
        gpu_allocation: Default::default(),
    };
    plan_replica(fleet, &Ledger::default(), &req)
}

fn placed(d: Decision) -> Placement {
    match d {
        Decision::Placed(p) => *p,
        Decision::Refused(r) => panic!("refused: {r:#?}"),
    }
}

fn refused(d: Decision) -> Vec<String> {
    match d {
        Decision::Placed(p) => panic!("placed on {} ({})", p.node, p.reason),
        Decision::Refused(r) => r,
    }
}

fn quantization_arg(p: &Placement) -> Option<&str> {
    p.command
        .windows(2)
        .find(|w| w[0] == "--quantization")
        .map(|w| w[1].as_str())
}

/// An A10 (8.6): Llama-3.1-8B with 64k tokens of KV cache does not fit in bf16, fits in fp8
/// (FP8 Marlin on 8.6: 0.11.0 `fp8.py:114-115`), and the 0.11 image gets `--quantization fp8`,
/// the 0.33 image `--quantization fp8_per_tensor`.
#[test]
fn a10_takes_fp8_when_only_fp8_fits_with_the_flag_of_its_release() {
    let fleet = Fleet {
        nodes: vec![node(
            "a10",
            vec![mk_gpu(0, A10_TOTAL, A10_RESERVED, 0, (8, 6), "NVIDIA A10")],
        )],
        ..Default::default()
    };
    let llama = arch("meta-llama/Llama-3.1-8B-Instruct");
    let mut s = spec(
        "meta-llama/Llama-3.1-8B-Instruct",
        "vllm/vllm-openai:v0.11.0",
    );
    s.max_model_len = Some(65536);
    s.tensor_parallel.sizes = vec![1];
    let none_only = refused(plan(&fleet, &llama, &s));
    assert!(
        none_only
            .iter()
            .any(|l| l.starts_with("fits with quantization fp8")),
        "{none_only:#?}"
    );
    s.quantization.allowed = vec![Quantization::None, Quantization::Fp8];
    let p = placed(plan(&fleet, &llama, &s));
    assert_eq!(p.shape.quantization, Quantization::Fp8);
    assert_eq!(quantization_arg(&p), Some("fp8"));
    // 0.11 loads the bf16 checkpoint before quantizing: it must have fitted.
    assert!(p.estimate.weights_load_peak_bytes > 14 * GIB);

    s.image = "vllm/vllm-openai:v0.33.0".into();
    let p = placed(plan(&fleet, &llama, &s));
    assert_eq!(p.shape.quantization, Quantization::Fp8);
    assert_eq!(quantization_arg(&p), Some("fp8_per_tensor"));
    assert!(p.estimate.weights_load_peak_bytes < 9 * GIB);
}

/// The 8 GiB RTX 3070 with 6.92 GiB free (examples/fleet.yaml): Llama-3.2-3B does not fit in
/// bf16; with bitsandbytes allowed it is placed on an image that has it (0.27) and refused on
/// one that does not (0.33).
#[test]
fn desktop_3070_takes_a_3b_model_with_bitsandbytes_only_where_the_image_has_it() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet.yaml");
    let gpunodes: Vec<_> = read_objects(&path)
        .unwrap()
        .into_iter()
        .filter_map(|o| match o {
            Object::GpuNode(g) if g.metadata.name.as_deref() == Some("desktop-3070") => Some(*g),
            _ => None,
        })
        .collect();
    let now: Timestamp = "2026-11-26T12:00:10Z".parse().unwrap();
    let fleet = Fleet::from_objects(&gpunodes, &[], now, Duration::from_secs(120));
    let g = &fleet.nodes[0].gpus[0];
    assert_eq!(format!("{:.2}", g.free_bytes as f64 / GIB as f64), "6.92");
    let llama = arch("meta-llama/Llama-3.2-3B-Instruct");
    let mut s = spec(
        "meta-llama/Llama-3.2-3B-Instruct",
        "vllm/vllm-openai:v0.27.0",
    );
    s.max_model_len = Some(8192);
    let bf16 = refused(plan(&fleet, &llama, &s));
    assert!(
        bf16[0].starts_with("desktop-3070 GPU 0: needs"),
        "{bf16:#?}"
    );

    s.quantization.allowed = vec![Quantization::None, Quantization::Bitsandbytes];
    let p = placed(plan(&fleet, &llama, &s));
    assert_eq!(p.shape.quantization, Quantization::Bitsandbytes);
    assert_eq!(quantization_arg(&p), Some("bitsandbytes"));
    assert!(p.kv_cache_tokens >= 8192);

    s.image = "vllm/vllm-openai:v0.33.0".into();
    let lines = refused(plan(&fleet, &llama, &s));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("no bitsandbytes quantization (removed in 0.28.0)")),
        "{lines:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 16: the default max model len.
// ---------------------------------------------------------------------------------------------

/// vLLM 0.11.0 `config/model.py:1763-1871` (`_get_and_verify_max_len`) on the text config:
/// Gemma 3's omits `max_position_embeddings`, so transformers' default 131072 applies
/// (transformers 4.50.0 `models/gemma3/configuration_gemma3.py:182`), and its linear rope factor
/// is not applied again (l.1840-1842). Yarn scales `original_max_position_embeddings`; llama3
/// rope is not scaled.
#[test]
fn default_max_model_len_is_derived_as_vllm_does() {
    assert_eq!(
        arch("google/gemma-3-27b-it").max_position_embeddings,
        131_072
    );
    assert_eq!(
        arch("meta-llama/Llama-3.1-8B-Instruct").max_position_embeddings,
        131_072
    );
    assert_eq!(arch("openai/gpt-oss-20b").max_position_embeddings, 131_072);
    assert_eq!(
        arch("deepseek-ai/DeepSeek-V2-Lite").max_position_embeddings,
        163_840
    );
    let cfg = |extra: &str| {
        let v: serde_json::Value = serde_json::from_str(&format!(
            r#"{{"model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 64,
                "intermediate_size": 128, "num_attention_heads": 4, "vocab_size": 100,
                "max_position_embeddings": 32768 {extra}}}"#
        ))
        .unwrap();
        Architecture::from_hf_config(&v)
            .unwrap()
            .max_position_embeddings
    };
    assert_eq!(cfg(""), 32768);
    assert_eq!(
        cfg(
            r#", "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}"#
        ),
        131_072
    );
    assert_eq!(
        cfg(r#", "rope_scaling": {"rope_type": "linear", "factor": 2.0}"#),
        65536
    );
    assert_eq!(cfg(r#", "seq_length": 8192"#), 8192);
    // The planner's default for a gemma-3-27b-it deployment.
    let g = arch("google/gemma-3-27b-it");
    let s = spec("google/gemma-3-27b-it", "vllm/vllm-openai:v0.33.0");
    assert_eq!(vllm_operator::plan::max_model_len(&s, &g), 131_072);
}

/// The simulated vLLM follows the release: 0.9.0 has no startup check and holds `u * total`
/// less what other processes hold, so a replica on an H100 with 16 GiB taken outside Kubernetes
/// starts at the utilization the planner chose (above what is free).
#[test]
fn simulated_0_9_0_starts_beside_another_process() {
    use vllm_operator::cli::plan::{
        fleet_time, offline_architecture, read_deployments, read_fleet,
    };
    use vllm_operator::sim::{SimConfig, SimDeployment, run};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let gpunodes = read_fleet(&root.join("tests/fixtures/sim/fleet-one-h100-busy.yaml"))
        .unwrap()
        .gpunodes;
    let deps = read_deployments(&[root.join("tests/fixtures/sim/llama-8b-v0-9-0.yaml")]).unwrap();
    let start = fleet_time(&gpunodes).unwrap();
    let sims = deps
        .into_iter()
        .map(|object| SimDeployment {
            arch: offline_architecture(&object),
            object,
        })
        .collect();
    let r = run(gpunodes, sims, &[], &SimConfig::default(), start);
    assert!(r.settled);
    assert_eq!(r.startup_failures, 0, "{:#?}", r.events);
    assert_eq!(r.launcher_refusals, 0);
    assert_eq!(r.deployments[0].1.ready_replicas, 1);
    let placed = &r.deployments[0].1.placements[0];
    let free = 67_330_703_360f64 / 85_520_809_984f64;
    assert!(placed.gpu_memory_utilization > free, "{placed:?}");
}
