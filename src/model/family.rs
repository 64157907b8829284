//! vLLM releases and the memory rules that change between them, in one table ([`FAMILIES`]).
//!
//! Every row cites the vLLM file and release it was read from: the Python in the wheels on PyPI
//! (`pip download vllm==X --no-deps`, unzipped; paths below are the wheel's `vllm/` tree, line
//! numbers from that release). Figures that come from public startup logs name the fixture in
//! `tests/fixtures/vllm-logs` that holds the log and its URL.

use std::fmt;

const MIB: u64 = 1 << 20;

/// A vLLM release, `0.MINOR.PATCH` (post releases and a fourth number count as their base).
/// Its rules are the [`FAMILIES`] row it falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VllmFamily {
    pub minor: u16,
    pub patch: u16,
}

impl VllmFamily {
    /// 0.7.3, the last release whose default engine was V0.
    pub const V0: VllmFamily = VllmFamily::new(7, 3);
    /// 0.11.0, a very common deployed release.
    pub const V0_11: VllmFamily = VllmFamily::new(11, 0);
    /// 0.21.0.
    pub const V0_21: VllmFamily = VllmFamily::new(21, 0);
    /// The newest release these rules were read from; unknown tags are planned as this one.
    pub const NEWEST: VllmFamily = VllmFamily::new(33, 0);

    pub const fn new(minor: u16, patch: u16) -> Self {
        VllmFamily { minor, patch }
    }

    /// Parse `0.11.0`, `v0.21.1`, `0.6.4.post1`, `0.9.0.1`, `0.12.0rc1`. A `1.x` or later
    /// release is newer than every row here and gets the newest rules.
    pub fn parse(version: &str) -> Result<Self, String> {
        let bad = || format!("cannot read vLLM version {version:?}");
        let v = version.trim().trim_start_matches('v');
        let mut parts = v.split(['.', '+', '-']);
        let number = |p: Option<&str>| -> Option<u32> {
            let p = p?;
            let digits: &str = &p[..p.find(|c: char| !c.is_ascii_digit()).unwrap_or(p.len())];
            digits.parse().ok()
        };
        let major = number(parts.next()).ok_or_else(bad)?;
        let minor = number(parts.next()).ok_or_else(bad)?;
        let patch = number(parts.next()).unwrap_or(0);
        if major > 0 {
            return Ok(VllmFamily::NEWEST);
        }
        let clamp = |n: u32| n.min(u16::MAX as u32) as u16;
        Ok(VllmFamily::new(clamp(minor), clamp(patch)))
    }

    /// This release's rules.
    pub fn rules(self) -> &'static Rules {
        FAMILIES
            .iter()
            .rev()
            .find(|(from, _)| *from <= self)
            .map(|(_, r)| r)
            .unwrap_or(&FAMILIES[0].1)
    }

    /// vLLM's default `--gpu-memory-utilization` in this release.
    pub fn default_utilization(self) -> f64 {
        self.rules().default_utilization
    }
}

impl fmt::Display for VllmFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0.{}.{}", self.minor, self.patch)
    }
}

/// Where vLLM counts the memory of its CUDA graphs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaGraphBudget {
    /// Captured after the KV cache is allocated, outside `u * total`.
    Outside,
    /// Outside, unless `VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1` estimates them into it.
    OptIn,
    /// Estimated and taken from `u * total`, unless the variable is `0`.
    Inside,
}

impl CudaGraphBudget {
    /// With the value of `VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS` (None: unset), are the
    /// graphs inside the budget? The variable only exists where the rule is not `Outside`.
    pub fn inside(self, env: Option<bool>) -> bool {
        match self {
            CudaGraphBudget::Outside => false,
            CudaGraphBudget::OptIn => env == Some(true),
            CudaGraphBudget::Inside => env != Some(false),
        }
    }
}

/// What happens with an fp8 KV cache (`--kv-cache-dtype fp8*`) on a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8KvCache {
    /// Runs on every GPU the engine supports.
    Supported,
    /// Below this compute capability the V1 engine has no fp8 attention backend and vLLM falls
    /// back to the V0 engine (which then sizes memory its own way).
    V0FallbackBelow((u32, u32)),
    /// Below this compute capability the only backend chosen fails at run time.
    FailsBelow((u32, u32)),
}

/// In-flight `--quantization bitsandbytes` (4-bit NF4 of every linear layer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bitsandbytes {
    /// Bytes per linear-layer parameter: 4 bits plus the absmax of each 64-value block.
    pub bytes_per_parameter: f64,
    /// Minimum compute capability.
    pub min_cc: (u32, u32),
}

/// vLLM's own GPU memory before its free-memory snapshot (CUDA context, and where the snapshot
/// comes later, NCCL / custom all-reduce buffers and cuBLAS handles), per GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overhead {
    pub one_gpu_bytes: u64,
    /// Extra with a second tensor-parallel rank (NCCL and custom all-reduce buffers).
    pub second_rank_bytes: u64,
    /// Extra for every rank beyond two (per-peer NCCL buffers).
    pub per_more_rank_bytes: u64,
}

impl Overhead {
    pub fn bytes(&self, tp: u64) -> u64 {
        match tp {
            0 | 1 => self.one_gpu_bytes,
            n => self.one_gpu_bytes + self.second_rank_bytes + (n - 2) * self.per_more_rank_bytes,
        }
    }
}

/// The rules of one family of releases.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rules {
    /// The V0 engine: 256 sequences, the whole `max_model_len` profiled without chunked prefill.
    pub v0_engine: bool,
    /// "Free memory on device ... on startup is less than desired GPU memory utilization".
    pub startup_check: bool,
    /// Memory other processes hold when vLLM starts is charged to its `u * total` budget.
    pub others_in_budget: bool,
    pub cuda_graphs: CudaGraphBudget,
    pub default_utilization: f64,
    /// 16384 batched tokens and 1024 sequences by default on GPUs of 160 GiB or more.
    pub batch_tier_160_gib: bool,
    /// fp8 weights below compute capability 8.9 run as weight-only FP8 Marlin from this one.
    pub fp8_weights_min_cc: (u32, u32),
    /// `--quantization` value that quantizes an unquantized checkpoint to fp8.
    pub online_fp8_method: &'static str,
    /// Online fp8 materializes each weight just in time: the load peak is the fp8 size.
    pub online_fp8_just_in_time: bool,
    pub fp8_kv_cache: Fp8KvCache,
    /// None once `bitsandbytes` is gone from the quantization methods.
    pub bitsandbytes: Option<Bitsandbytes>,
    pub overhead: Overhead,
}

/// 4-bit NF4 with blocksize 64 (bitsandbytes 0.45.3 `functional.py:1165-1173`, `quantize_4bit`
/// defaults) and `compress_statistics=True` (vLLM 0.8.0 `model_loader/loader.py:1045-1048`):
/// the absmax of each block is itself quantized to one byte, with one float32 per 256 blocks
/// (`functional.py:1248-1251`).
const BNB_NESTED: Bitsandbytes = Bitsandbytes {
    bytes_per_parameter: 0.5 + 1.0 / 64.0 + 4.0 / (64.0 * 256.0),
    min_cc: (7, 0),
};

/// Releases by the first one each row applies to, oldest first.
pub const FAMILIES: [(VllmFamily, Rules); 16] = [
    (VllmFamily::new(0, 0), R0_0),
    (VllmFamily::new(5, 1), R0_5_1),
    (VllmFamily::new(6, 4), R0_6_4),
    (VllmFamily::new(6, 5), R0_6_5),
    (VllmFamily::new(8, 0), R0_8),
    (VllmFamily::new(9, 1), R0_9_1),
    (VllmFamily::new(10, 0), R0_10),
    (VllmFamily::new(11, 0), R0_11),
    (VllmFamily::new(12, 0), R0_12),
    (VllmFamily::new(14, 0), R0_14),
    (VllmFamily::new(16, 0), R0_16),
    (VllmFamily::new(18, 0), R0_18),
    (VllmFamily::new(20, 0), R0_20),
    (VllmFamily::new(28, 0), R0_28),
    (VllmFamily::new(31, 0), R0_31),
    (VllmFamily::new(33, 0), R0_33),
];

/// Up to 0.5.0: the V0 engine (`vllm/worker/worker.py`), fp8 only on compute capability 8.9
/// (0.5.0.post1 `model_executor/layers/quantization/fp8.py:64-65`, `get_min_capability` 89),
/// default utilization 0.9 (`engine/arg_utils.py`). The overhead figures are this project's
/// earlier defaults; no public log of these releases states the free memory at startup.
const R0_0: Rules = Rules {
    v0_engine: true,
    startup_check: false,
    others_in_budget: false,
    cuda_graphs: CudaGraphBudget::Outside,
    default_utilization: 0.9,
    batch_tier_160_gib: false,
    fp8_weights_min_cc: (8, 9),
    online_fp8_method: "fp8",
    online_fp8_just_in_time: false,
    fp8_kv_cache: Fp8KvCache::Supported,
    bitsandbytes: Some(BNB_NESTED),
    overhead: Overhead {
        one_gpu_bytes: 512 * MIB,
        second_rank_bytes: 512 * MIB,
        per_more_rank_bytes: 0,
    },
};

/// 0.5.1: fp8 weights below 8.9 run as weight-only FP8 Marlin from compute capability 8.0
/// (0.5.1 `model_executor/layers/quantization/fp8.py:61-62`, `get_min_capability` 80).
const R0_5_1: Rules = Rules {
    fp8_weights_min_cc: (8, 0),
    ..R0_0
};

/// 0.6.4.x: the budget is global. `determine_num_available_blocks` (0.6.4 `worker/worker.py:
/// 191-217`) charges `total - free` minus torch's own allocations, i.e. every other process's
/// memory, to `total * u`; there is no startup check.
const R0_6_4: Rules = Rules {
    others_in_budget: true,
    ..R0_5_1
};

/// 0.6.5: per-instance again (PR #10511): `memory_profiling(baseline_memory_in_bytes=total -
/// free)` (0.6.5 `worker/worker.py:198-209`).
const R0_6_5: Rules = Rules {
    others_in_budget: false,
    ..R0_6_4
};

/// 0.8.0 to 0.9.0.x: the V1 engine by default. Its `determine_available_memory` (0.8.0
/// `v1/worker/gpu_worker.py:139-186`, 0.9.0 `:167-214`) again charges `total - free` (other
/// processes included) to `total * u`, with no startup check. An fp8 KV cache sends vLLM back
/// to V0 (0.8.0 `engine/arg_utils.py:1479-1483`; 0.9.0 `:1256-1275` unless FlashAttention 3,
/// compute capability 9.0). Its own memory at startup: 0.70 GiB at tp 1 (H100, 0.10; see
/// `R0_10`).
const R0_8: Rules = Rules {
    v0_engine: false,
    others_in_budget: true,
    fp8_kv_cache: Fp8KvCache::V0FallbackBelow((9, 0)),
    overhead: Overhead {
        one_gpu_bytes: 720 * MIB,
        second_rank_bytes: 0,
        per_more_rank_bytes: 0,
    },
    ..R0_6_5
};

/// 0.9.1: the startup check (0.9.1 `v1/worker/gpu_worker.py`, `init_device`: `free_memory <
/// requested_memory` raises) and per-instance profiling (`memory_profiling(self.init_snapshot)`
/// in `determine_available_memory`). The snapshot is taken *before* NCCL starts (0.9.1 and
/// 0.10.x `init_device`: `MemorySnapshot()` at line 21 of the method, the distributed
/// environment at line 39), so NCCL buffers count inside the budget, not before it.
const R0_9_1: Rules = Rules {
    startup_check: true,
    others_in_budget: false,
    ..R0_8
};

/// 0.10.x: an fp8 KV cache without FlashAttention 3 still falls back to V0 (0.10.2
/// `engine/arg_utils.py:1465-1471`, `platforms/cuda.py:520-560`). bitsandbytes absmax values
/// are dequantized to float32 while loading (`model_loader/bitsandbytes_loader.py`,
/// `_dequantize_dq` in `_bind_quant_states_to_params`, first in 0.10.0): 4 bytes per 64 values.
const R0_10: Rules = Rules {
    bitsandbytes: Some(Bitsandbytes {
        bytes_per_parameter: 0.5 + 4.0 / 64.0,
        min_cc: (7, 0),
    }),
    ..R0_9_1
};

/// 0.11.x: V0 is gone; an fp8 KV cache below compute capability 9.0 selects the Triton
/// backend (0.11.0 `platforms/cuda.py:359-362`), which quantizes queries to fp8
/// (`v1/attention/backends/triton_attn.py:314-329`) and so needs fp8 hardware, compute
/// capability 8.9 (`platforms/cuda.py:403-404`, `supports_fp8`). The snapshot now follows NCCL
/// (0.11.0 `v1/worker/gpu_worker.py`, `init_device`): public logs on H100 show 0.61 GiB used at
/// tp 1 (fixtures 19-21, 26: "78.57/79.18 GiB"; 25: "78.59/79.19") and 1.54 GiB at tp 2
/// (fixture 24: "77.64/79.18"), all from github.com/llm-d/llm-d-benchmark
/// `config_explorer/empirical-vllm-memory-results.md`. The per-rank growth beyond two is an
/// assumption (NCCL keeps buffers per peer); no public log states it.
const R0_11: Rules = Rules {
    fp8_kv_cache: Fp8KvCache::FailsBelow((8, 9)),
    overhead: Overhead {
        one_gpu_bytes: 660 * MIB,
        second_rank_bytes: 980 * MIB,
        per_more_rank_bytes: 128 * MIB,
    },
    ..R0_10
};

/// 0.12: FlashInfer serves an fp8 KV cache where FlashAttention cannot (0.12.0
/// `platforms/cuda.py:69-74` backend priorities; `v1/attention/backends/flash_attn.py:147-152`),
/// and the Triton backend no longer quantizes queries (`triton_attn.py:339-344`).
const R0_12: Rules = Rules {
    fp8_kv_cache: Fp8KvCache::Supported,
    ..R0_11
};

/// 0.14: FP8 Marlin from compute capability 7.5 (0.14.0 `quantization/fp8.py:152-153`;
/// 0.13.0 `:255-256` still 80).
const R0_14: Rules = Rules {
    fp8_weights_min_cc: (7, 5),
    ..R0_12
};

/// 0.16: online fp8 creates weights on the meta device and materializes each just in time
/// (0.16.0 `quantization/fp8.py:554-597`); 0.15.0 still loads the whole bf16 model first.
const R0_16: Rules = Rules {
    online_fp8_just_in_time: true,
    ..R0_14
};

/// 0.18-0.19: `VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1` takes the estimated graph memory
/// from the budget (0.18.0 `envs.py:1635-1637`, default "0"; `v1/worker/gpu_worker.py:
/// 413-417`); 0.17.0 has no such variable. Default utilization still 0.9 (0.19.0
/// `config/cache.py:41`).
const R0_18: Rules = Rules {
    cuda_graphs: CudaGraphBudget::OptIn,
    ..R0_16
};

/// 0.20: graph memory in the budget by default (0.20.0 `envs.py:1724-1726`, default "1";
/// `v1/worker/gpu_worker.py:399-424`) and default utilization 0.92 (`config/cache.py:66`).
const R0_20: Rules = Rules {
    cuda_graphs: CudaGraphBudget::Inside,
    default_utilization: 0.92,
    ..R0_18
};

/// 0.28: a third batch tier, 16384 tokens / 1024 sequences from 160 GiB of NVML total (0.28.0
/// `engine/arg_utils.py:2582-2590`), and no `bitsandbytes` method any more (0.27.0
/// `model_executor/layers/quantization/__init__.py:28` lists it, 0.28.0 does not).
const R0_28: Rules = Rules {
    batch_tier_160_gib: true,
    bitsandbytes: None,
    ..R0_20
};

/// 0.31: `--quantization fp8` on an unquantized checkpoint raises "The `fp8` quantization
/// method no longer supports online quantization. Please use `--quantization fp8_per_tensor`"
/// (0.31.0 `model_executor/layers/quantization/fp8.py:106-112`; 0.30.0 still accepts it).
const R0_31: Rules = Rules {
    online_fp8_method: "fp8_per_tensor",
    ..R0_28
};

/// 0.33: cuBLAS and cuBLASLt handles are created before the snapshot (0.33.0
/// `v1/worker/gpu_worker.py:519-529`), so their workspaces join the overhead. Sized, not
/// measured: two 32 MiB workspaces (cuBLAS's default on Hopper) and the handles' own state.
const R0_33: Rules = Rules {
    overhead: Overhead {
        one_gpu_bytes: R0_11.overhead.one_gpu_bytes + 96 * MIB,
        ..R0_11.overhead
    },
    ..R0_31
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_into_their_row() {
        let f = |v: &str| VllmFamily::parse(v).unwrap();
        assert_eq!(f("0.6.4.post1"), VllmFamily::new(6, 4));
        assert_eq!(f("v0.9.0.1"), VllmFamily::new(9, 0));
        assert_eq!(f("0.12.0rc1"), VllmFamily::new(12, 0));
        assert_eq!(f("1.0.0"), VllmFamily::NEWEST);
        assert!(VllmFamily::parse("latest").is_err());
        assert!(f("0.9.0.1").rules().others_in_budget);
        assert!(!f("0.9.1").rules().others_in_budget);
        assert!(f("0.6.4.post1").rules().others_in_budget);
        assert!(!f("0.6.5").rules().others_in_budget);
    }

    #[test]
    fn rows_are_in_release_order() {
        assert!(FAMILIES.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(FAMILIES[FAMILIES.len() - 1].0, VllmFamily::NEWEST);
    }
}
