//! The per-GPU utilization rule shared by the planner and the in-pod launcher: given what NVML
//! reports for one GPU and what the model needs, which `--gpu-memory-utilization` passes vLLM's
//! startup check and still leaves room for the required KV cache.
//!
//! vLLM (>= 0.9.1) raises "Free memory on device ... on startup is less than desired GPU memory
//! utilization" when `free < ceil(total_cuda * u)`, where `free` is measured after its own CUDA
//! context, NCCL and cuBLAS exist. We check against NVML's total, which is at least CUDA's, so a
//! `u` that passes here passes in vLLM. The budget vLLM then splits into weights, activations and
//! KV cache is `u * total_cuda`, with `total_cuda ~= total - reserved` (NVML v2).

use serde::{Deserialize, Serialize};

use crate::api::MemoryStrategy;

/// Utilization is chosen in hundredths, as people write it and as vLLM logs it.
pub const UTILIZATION_STEPS: u64 = 100;

/// What the controller tells the launcher (and what the planner checks per GPU).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LaunchPlan {
    /// Per GPU: weights + activation peak + non-torch + CUDA graphs.
    pub required_bytes: u64,
    /// Per GPU: the KV cache needed for `maxModelLen x minConcurrency` plus one block.
    pub min_kv_bytes: u64,
    /// vLLM's own use before its free-memory snapshot (CUDA context, NCCL, cuBLAS).
    pub startup_overhead_bytes: u64,
    /// Bytes kept free beyond vLLM's needs (`spec.memory.headroom`).
    pub headroom_bytes: u64,
    /// Upper bound on the utilization (`spec.memory.maxUtilization`).
    pub max_utilization: f64,
    pub strategy: MemoryStrategy,
    /// vLLM 0.6.4.x and 0.8.0-0.9.0.x: no startup check, and what other processes hold when
    /// vLLM starts is charged to `u * total` (`model::family`); `required_bytes` then includes
    /// vLLM's own context and `startup_overhead_bytes` is only what sits outside the budget.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub others_in_budget: bool,
}

/// One GPU as NVML reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuMemoryView {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub reserved_bytes: u64,
}

impl From<&crate::api::GpuMemory> for GpuMemoryView {
    fn from(m: &crate::api::GpuMemory) -> Self {
        GpuMemoryView {
            total_bytes: m.total_bytes,
            free_bytes: m.free_bytes,
            reserved_bytes: m.reserved_bytes,
        }
    }
}

impl GpuMemoryView {
    /// What CUDA reports as total: NVML total less the driver's reservation.
    pub fn cuda_total_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.reserved_bytes)
    }
}

/// A utilization that passes vLLM's startup check on one GPU, and what it leaves for KV cache.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fit {
    /// In hundredths: 87 means `--gpu-memory-utilization 0.87`.
    pub utilization_pct: u64,
    /// `u * total_cuda - required`: the KV cache vLLM will size on this GPU.
    pub kv_cache_bytes: u64,
}

impl Fit {
    pub fn utilization(&self) -> f64 {
        self.utilization_pct as f64 / UTILIZATION_STEPS as f64
    }
}

/// Why a GPU cannot take the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shortfall {
    /// Free bytes the GPU would need for the smallest utilization that holds the model.
    pub needed_free_bytes: u64,
    pub free_bytes: u64,
}

/// vLLM's own startup comparison, with its float arithmetic: `free < ceil(total * u)` fails.
pub fn passes_startup_check(total_bytes: u64, free_after_overhead: u64, utilization: f64) -> bool {
    let requested = (total_bytes as f64 * utilization).ceil();
    requested <= free_after_overhead as f64
}

/// Bytes vLLM budgets at utilization `pct` hundredths of CUDA's total.
fn budget_bytes(cuda_total: u64, pct: u64) -> u64 {
    u64::try_from((cuda_total as u128 * pct as u128) / UTILIZATION_STEPS as u128)
        .unwrap_or(u64::MAX)
}

/// The range of utilizations (in hundredths) that work on one GPU: `max` is the largest that
/// passes vLLM's startup check (capped at `max_utilization`), `min` the smallest whose budget
/// holds `required + min_kv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub min_pct: u64,
    pub max_pct: u64,
}

/// Utilization bounds for one GPU.
pub fn bounds(gpu: GpuMemoryView, plan: &LaunchPlan) -> Bounds {
    let total = gpu.total_bytes.max(1);
    let cuda_total = gpu.cuda_total_bytes().max(1);
    let after_overhead = gpu.free_bytes.saturating_sub(plan.startup_overhead_bytes);
    let available = after_overhead.saturating_sub(plan.headroom_bytes);
    let cap_pct =
        (plan.max_utilization.clamp(0.0, 1.0) * UTILIZATION_STEPS as f64 + 1e-9).floor() as u64;
    // u64 is exact here: byte counts below 2^57 (128 PiB) times 100 do not overflow, and
    // larger ones saturate to a utilization that the startup check below corrects. This runs
    // for every candidate GPU of every node, so it avoids u128 division.
    let mut max_pct = (available.saturating_mul(UTILIZATION_STEPS) / total).min(cap_pct);
    // Guard against float rounding in vLLM's own `ceil(total * u)`.
    while max_pct > 0
        && !passes_startup_check(
            total,
            after_overhead,
            max_pct as f64 / UTILIZATION_STEPS as f64,
        )
    {
        max_pct -= 1;
    }
    let need = plan.required_bytes.saturating_add(plan.min_kv_bytes);
    if plan.others_in_budget {
        return others_in_budget_bounds(gpu, plan, need, cap_pct);
    }
    let min_pct = need
        .saturating_mul(UTILIZATION_STEPS)
        .div_ceil(cuda_total)
        .max(1);
    Bounds { min_pct, max_pct }
}

/// Bounds where vLLM charges other processes' memory to its budget and has no startup check:
/// its KV cache is `u * total - (total - free) - required`, so the budget must hold what others
/// use as well; and whatever `u` is, what vLLM then allocates (`u * total - (total - free)`)
/// plus what sits outside the budget (CUDA graphs) and our headroom must fit in `free`, i.e.
/// `u * total <= total - outside - headroom`.
fn others_in_budget_bounds(
    gpu: GpuMemoryView,
    plan: &LaunchPlan,
    need: u64,
    cap_pct: u64,
) -> Bounds {
    let cuda_total = gpu.cuda_total_bytes().max(1);
    let used_by_others = cuda_total.saturating_sub(gpu.free_bytes);
    let min_pct = need
        .saturating_add(used_by_others)
        .saturating_mul(UTILIZATION_STEPS)
        .div_ceil(cuda_total)
        .max(1);
    let room = cuda_total
        .saturating_sub(plan.startup_overhead_bytes)
        .saturating_sub(plan.headroom_bytes);
    let max_pct = (room.saturating_mul(UTILIZATION_STEPS) / cuda_total).min(cap_pct);
    Bounds { min_pct, max_pct }
}

/// Choose the utilization for one GPU.
///
/// The largest safe value is `floor((free - overhead - headroom) / total)` in hundredths, capped at
/// `max_utilization`; the smallest useful one is the least that leaves `min_kv_bytes` after
/// `required_bytes`. `MaximizeCache` takes the largest, `Pack` the smallest.
pub fn choose_utilization(gpu: GpuMemoryView, plan: &LaunchPlan) -> Result<Fit, Shortfall> {
    choose_for_gpus(&[gpu], plan)
        .map(|(fit, _)| fit)
        .map_err(|(_, short)| short)
}

/// Choose one utilization for every rank of a tensor-parallel group: vLLM passes the same
/// `--gpu-memory-utilization` to all of them, so it must be at most the smallest safe value and
/// at least the largest needed one. Returns the fit and the index of the limiting GPU, or the
/// index of the GPU that cannot take the model and by how much.
pub fn choose_for_gpus(
    gpus: &[GpuMemoryView],
    plan: &LaunchPlan,
) -> Result<(Fit, usize), (usize, Shortfall)> {
    let mut lo = 1u64;
    let mut hi = u64::MAX;
    let mut limiting = 0;
    for (i, gpu) in gpus.iter().enumerate() {
        let b = bounds(*gpu, plan);
        if b.min_pct > UTILIZATION_STEPS || b.min_pct > b.max_pct {
            return Err((i, shortfall(*gpu, plan, b.min_pct)));
        }
        lo = lo.max(b.min_pct);
        if b.max_pct < hi {
            hi = b.max_pct;
            limiting = i;
        }
    }
    if gpus.is_empty() {
        return Err((
            0,
            Shortfall {
                needed_free_bytes: 0,
                free_bytes: 0,
            },
        ));
    }
    if lo > hi {
        return Err((limiting, shortfall(gpus[limiting], plan, lo)));
    }
    let pct = match plan.strategy {
        MemoryStrategy::MaximizeCache => hi,
        MemoryStrategy::Pack => lo,
    };
    let kv_cache_bytes = gpus
        .iter()
        .map(|g| {
            let others = if plan.others_in_budget {
                g.cuda_total_bytes().saturating_sub(g.free_bytes)
            } else {
                0
            };
            budget_bytes(g.cuda_total_bytes(), pct)
                .saturating_sub(plan.required_bytes)
                .saturating_sub(others)
        })
        .min()
        .unwrap_or(0);
    Ok((
        Fit {
            utilization_pct: pct,
            kv_cache_bytes,
        },
        limiting,
    ))
}

fn shortfall(gpu: GpuMemoryView, plan: &LaunchPlan, min_pct: u64) -> Shortfall {
    Shortfall {
        needed_free_bytes: needed_free_bytes(gpu, plan, min_pct as u128),
        free_bytes: gpu.free_bytes,
    }
}

/// Free bytes at which `pct` would pass: `ceil(pct * total) + overhead + headroom`.
fn needed_free_bytes(gpu: GpuMemoryView, plan: &LaunchPlan, pct: u128) -> u64 {
    let requested = (gpu.total_bytes as u128)
        .saturating_mul(pct)
        .div_ceil(UTILIZATION_STEPS as u128);
    u64::try_from(requested)
        .unwrap_or(u64::MAX)
        .saturating_add(plan.startup_overhead_bytes)
        .saturating_add(plan.headroom_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn plan(required: u64, min_kv: u64, strategy: MemoryStrategy) -> LaunchPlan {
        LaunchPlan {
            required_bytes: required,
            min_kv_bytes: min_kv,
            startup_overhead_bytes: 512 * MIB,
            headroom_bytes: 256 * MIB,
            max_utilization: 0.95,
            strategy,
            others_in_budget: false,
        }
    }

    /// The classic failure: 8 GiB GPU, 6.92 GiB free. vLLM's default 0.9 asks for 7.2 GiB.
    #[test]
    fn classic_desktop_gpu_gets_a_utilization_that_passes() {
        let gpu = GpuMemoryView {
            total_bytes: 8 * GIB,
            free_bytes: 7_430_346_834,
            reserved_bytes: 248 * MIB,
        };
        assert!(!passes_startup_check(gpu.total_bytes, gpu.free_bytes, 0.9));
        let fit =
            choose_utilization(gpu, &plan(3 * GIB, GIB, MemoryStrategy::MaximizeCache)).unwrap();
        assert_eq!(fit.utilization_pct, 77);
        assert!(passes_startup_check(
            gpu.total_bytes,
            gpu.free_bytes - 512 * MIB,
            fit.utilization()
        ));
        assert!(fit.kv_cache_bytes >= GIB);
    }

    #[test]
    fn pack_takes_the_smallest_utilization_that_holds_the_need() {
        let gpu = GpuMemoryView {
            total_bytes: 80 * GIB,
            free_bytes: 79 * GIB,
            reserved_bytes: 0,
        };
        let fit = choose_utilization(gpu, &plan(16 * GIB, 4 * GIB, MemoryStrategy::Pack)).unwrap();
        assert_eq!(fit.utilization_pct, 25);
        assert!(fit.kv_cache_bytes >= 4 * GIB);
        let one_less = budget_bytes(80 * GIB, 24);
        assert!(one_less < 20 * GIB);
    }

    #[test]
    fn refusal_says_how_much_free_memory_is_needed() {
        let gpu = GpuMemoryView {
            total_bytes: 8 * GIB,
            free_bytes: 4 * GIB,
            reserved_bytes: 0,
        };
        let short = choose_utilization(gpu, &plan(5 * GIB, GIB, MemoryStrategy::MaximizeCache))
            .unwrap_err();
        assert_eq!(short.free_bytes, 4 * GIB);
        assert_eq!(short.needed_free_bytes, 6 * GIB + 768 * MIB);
    }

    #[test]
    fn one_utilization_for_all_ranks_is_the_tightest() {
        let roomy = GpuMemoryView {
            total_bytes: 80 * GIB,
            free_bytes: 79 * GIB,
            reserved_bytes: 0,
        };
        let busy = GpuMemoryView {
            free_bytes: 60 * GIB,
            ..roomy
        };
        let p = plan(20 * GIB, 4 * GIB, MemoryStrategy::MaximizeCache);
        let (fit, limiting) = choose_for_gpus(&[roomy, busy, roomy], &p).unwrap();
        assert_eq!(limiting, 1);
        assert_eq!(
            fit.utilization_pct,
            choose_utilization(busy, &p).unwrap().utilization_pct
        );
        let starved = GpuMemoryView {
            free_bytes: 10 * GIB,
            ..roomy
        };
        let (at, short) = choose_for_gpus(&[roomy, starved], &p).unwrap_err();
        assert_eq!(at, 1);
        assert_eq!(short.free_bytes, 10 * GIB);
    }

    /// vLLM 0.8.0-0.9.0.x / 0.6.4.x (0.9.0 `v1/worker/gpu_worker.py:167-214`): on a GPU where
    /// another process holds 20 GiB, the budget must hold those 20 GiB too, and no startup
    /// check caps `u` by what is free.
    #[test]
    fn others_in_budget_charges_their_memory_to_the_utilization() {
        let gpu = GpuMemoryView {
            total_bytes: 80 * GIB,
            free_bytes: 60 * GIB,
            reserved_bytes: 0,
        };
        let mut p = plan(16 * GIB, 4 * GIB, MemoryStrategy::Pack);
        let per_instance = choose_utilization(gpu, &p).unwrap();
        assert_eq!(per_instance.utilization_pct, 25);
        p.others_in_budget = true;
        p.startup_overhead_bytes = GIB; // CUDA graphs, outside the budget
        let fit = choose_utilization(gpu, &p).unwrap();
        // (16 + 4 + 20) GiB of 80.
        assert_eq!(fit.utilization_pct, 50);
        assert!(fit.kv_cache_bytes >= 4 * GIB);
        p.strategy = MemoryStrategy::MaximizeCache;
        // 80 - 1 (graphs) - 0.25 (headroom) = 78.75 GiB: 98 %, capped at 95 %.
        assert_eq!(choose_utilization(gpu, &p).unwrap().utilization_pct, 95);
        // 70 GiB used by others: 16 + 4 + 70 > 78.75.
        let busy = GpuMemoryView {
            free_bytes: 10 * GIB,
            ..gpu
        };
        assert!(choose_utilization(busy, &p).is_err());
    }

    #[test]
    fn never_above_max_utilization() {
        let gpu = GpuMemoryView {
            total_bytes: 80 * GIB,
            free_bytes: 80 * GIB,
            reserved_bytes: 0,
        };
        let mut p = plan(GIB, GIB, MemoryStrategy::MaximizeCache);
        p.max_utilization = 0.9;
        assert_eq!(choose_utilization(gpu, &p).unwrap().utilization_pct, 90);
    }
}
