//! A simulated vLLM start on one GPU: the startup free-memory check, the KV budget the release
//! really gets (whole blocks), the one-request check, and the exact text each release raises.
//! Pure; `simulate --actual` feeds it the memory a model really takes.
//!
//! Every rule and text below was read from the wheels on PyPI (`pip download vllm==X
//! --no-deps`, unzipped; paths are the wheel's `vllm/` tree, lines of that release):
//!
//! - startup check: none before 0.9.1, and none in the V0 engine (`vllm/worker/worker.py` has no
//!   such check in any release). 0.9.1 to 0.11.x: `requested = total * u` (a float) and `free <
//!   requested` fails, text without the device (0.9.1 `vllm/v1/worker/gpu_worker.py:136-147`,
//!   0.11.0 `:183-194`). From [`CEIL_AND_DEVICE`]: `requested = math.ceil(total * u)` and the
//!   device in the text (`vllm/v1/worker/utils.py` `request_memory`, 0.14.0 `:258-270`, 0.21.0
//!   `:408-420`, 0.33.0 `:724-770`).
//! - KV budget, V1: `available = requested - non_kv` (0.11.0 `gpu_worker.py:279-280`; 0.33.0
//!   `gpu_worker.py:743-757`, where `non_kv` holds the CUDA-graph estimate); blocks =
//!   `available // bytes_per_block` (0.11.0 `vllm/v1/core/kv_cache_utils.py:813-828`, 0.33.0
//!   `vllm/v1/core/kv_cache_planning.py:1565-1570`). Releases that charge other processes to the
//!   budget (0.8.0 to 0.9.0.x) take what others held at the start from it too, as
//!   [`crate::model::family`] and the launcher count it.
//! - checks, V1: `available <= 0` -> "No available memory for the cache blocks"; one request of
//!   `max_model_len` needs `cdiv(L, B) * bytes_per_block` (full attention, 0.33.0
//!   `vllm/v1/kv_cache_interface.py:643-648`) and fails above `available`; from
//!   [`NULL_BLOCK_HELD_BACK`] both checks use `available - bytes_per_block`, the block the pool
//!   keeps (0.29.0 `kv_cache_utils.py:2316-2322`, 0.33.0 `kv_cache_planning.py:1533-1543`). The
//!   suggested length is the largest that fits (binary search over `1..=L`, 0.33.0
//!   `kv_cache_planning.py:1288-1334`), which for full attention is `floor(avail / block) * B`,
//!   left out of the text when 0.
//! - V0 engine (`vllm/worker/worker.py`, 0.5.0.post1 `:370-388`, 0.7.3 `:206-271, 535-549`):
//!   `available = total * u - peak`, `num_gpu_blocks = int(available // block_bytes)`, at most
//!   0 -> "No available memory for the cache blocks"; `max_seq_len = B * num_gpu_blocks` below
//!   `max_model_len` -> "The model's max seq len (L) is larger than ...".
//!
//! Not simulated: weights held by another process (0.32.0+ `external_weight_memory`), sliding
//! window and Mamba groups, pipeline parallelism, `--num-gpu-blocks-override`,
//! `--kv-cache-memory-bytes`.

use crate::controller::failures::FailureKind;
use crate::model::family::VllmFamily;

/// From 0.14.0 `requested = ceil(total * u)` and the startup text names the device
/// (`vllm/v1/worker/utils.py:258-270`); 0.12.0 does neither (`gpu_worker.py:233-246`; 0.13
/// not read).
pub const CEIL_AND_DEVICE: VllmFamily = VllmFamily::new(14, 0);
/// The V1 KV texts print `format_gib` (Python's `round(x, 2)`) and end with the docs link from
/// this release; `:.2f` before (0.12.0 `kv_cache_utils.py:686-715`, 0.14.0 `:616-643`).
pub const FORMAT_GIB_TEXTS: VllmFamily = VllmFamily::new(14, 0);
/// "model's" (was "models's") and "(which also controls CPU memory on the CPU backend)" from
/// 0.22.0 (`kv_cache_utils.py:699-727`); 0.21.0 still has the old texts (`:697-722`).
pub const MODEL_S_TEXTS: VllmFamily = VllmFamily::new(22, 0);
/// "GiB" and the suggested length from 0.9.0 (`kv_cache_utils.py:541-557`); 0.7.3 (`:466-471`)
/// and 0.8.0 (`:479-484`) print "GB" without one.
pub const GIB_TEXTS: VllmFamily = VllmFamily::new(9, 0);
/// 0.9.0 puts the suggestion before a doubled space (`kv_cache_utils.py:547-557`); 0.9.1 after
/// a single one (`:566-579`).
pub const SUGGESTION_AFTER_SPACE: VllmFamily = VllmFamily::new(9, 1);
/// The startup check first ships in 0.9.1 (vllm-project/vllm#20305; 0.9.0
/// `gpu_worker.py` has none).
pub const STARTUP_CHECK: VllmFamily = VllmFamily::new(9, 1);
/// From this release the checks hold one block back (0.29.0 `kv_cache_utils.py:975-985,
/// 2316-2322`); 0.28.0 checks `available` itself.
pub const NULL_BLOCK_HELD_BACK: VllmFamily = VllmFamily::new(29, 0);

/// One vLLM start on one GPU (one tensor-parallel rank). Bytes per GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct VllmStart {
    pub release: VllmFamily,
    /// The V0 engine runs (releases before 0.8, or `VLLM_USE_V1=0` up to 0.10).
    pub v0_engine: bool,
    /// `cuda:N` in the texts that name the device.
    pub device_index: u32,
    /// Total memory as CUDA reports it.
    pub total_bytes: u64,
    /// Free memory just before vLLM starts (what the launcher read).
    pub free_bytes: u64,
    /// What vLLM itself takes before its snapshot (CUDA context, NCCL, cuBLAS), for real.
    pub startup_overhead_bytes: u64,
    pub utilization: f64,
    /// The non-KV memory vLLM's profile counts in its budget, for real: weights, activation
    /// peak, non-torch memory, and the CUDA graphs where the release budgets them.
    pub non_kv_bytes: u64,
    /// KV bytes one token takes on this rank (all layers).
    pub kv_bytes_per_token: u64,
    pub max_model_len: u64,
    pub block_size: u64,
    /// The release charges other processes' memory to the budget.
    pub others_in_budget: bool,
}

/// What vLLM got on a GPU that started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvCapacity {
    /// `requested` of the release (`u * total`, ceiled from [`CEIL_AND_DEVICE`]).
    pub requested_bytes: u64,
    /// Free memory at vLLM's snapshot (after its own overhead).
    pub snapshot_free_bytes: u64,
    /// The KV budget before it is cut into blocks.
    pub available_kv_bytes: u64,
    pub num_blocks: u64,
    pub block_size: u64,
    pub bytes_per_block: u64,
}

impl KvCapacity {
    /// The KV cache vLLM allocates (what `vllm:cache_config_info` reports: blocks times
    /// block bytes).
    pub fn kv_cache_bytes(&self) -> u64 {
        self.num_blocks.saturating_mul(self.bytes_per_block)
    }

    pub fn kv_cache_tokens(&self) -> u64 {
        self.num_blocks.saturating_mul(self.block_size)
    }
}

/// A start that failed: which failure, and vLLM's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartFailure {
    pub kind: FailureKind,
    pub message: String,
}

/// `x * 100 / 2^30` rounded half to even, for `x = mantissa * 2^exponent`: what Python's
/// `round(x / GiB_bytes, 2)` and `f"{x / GiB_bytes:.2f}"` both compute (correctly rounded, on
/// the exact binary value; dividing by a power of two is exact).
fn hundredths_of_gib(mantissa: u64, exponent: i32) -> u128 {
    let n = mantissa as u128 * 100;
    let shift = exponent - 30;
    if shift >= 0 {
        return n.checked_shl(shift as u32).unwrap_or(u128::MAX);
    }
    let s = (-shift) as u32;
    if s >= 127 {
        return 0;
    }
    let q = n >> s;
    let r = n & ((1u128 << s) - 1);
    let half = 1u128 << (s - 1);
    if r > half || (r == half && q % 2 == 1) {
        q + 1
    } else {
        q
    }
}

/// The hundredths of a GiB a non-negative float prints as.
fn hundredths_f64(x: f64) -> u128 {
    if !x.is_finite() || x <= 0.0 {
        return 0;
    }
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (mantissa, exponent) = if exp == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), exp - 1075)
    };
    hundredths_of_gib(mantissa, exponent)
}

/// Python's `str(round(b / GiB_bytes, 2))` for whole bytes: `8.0`, `6.92`, `6.9`.
pub fn format_gib(bytes: u64) -> String {
    repr_hundredths(hundredths_of_gib(bytes, 0))
}

fn format_gib_f64(bytes: f64) -> String {
    repr_hundredths(hundredths_f64(bytes))
}

/// Python's `f"{x / GiB_bytes:.2f}"`: always two decimals.
fn format_gib_2f(bytes: f64) -> String {
    let h = hundredths_f64(bytes);
    format!("{}.{:02}", h / 100, h % 100)
}

/// The shortest text of `h / 100` as Python's float repr writes it (below 1e16).
fn repr_hundredths(h: u128) -> String {
    let (whole, frac) = (h / 100, h % 100);
    if frac % 10 == 0 {
        format!("{whole}.{}", frac / 10)
    } else {
        format!("{whole}.{frac:02}")
    }
}

/// Python's repr of a float (`0.9`, `1.0`), as the texts print the utilization.
fn repr_f64(x: f64) -> String {
    format!("{x:?}")
}

fn cdiv(a: u64, b: u64) -> u64 {
    if b == 0 { 0 } else { a.div_ceil(b) }
}

/// Run vLLM's startup on one GPU.
pub fn start(s: &VllmStart) -> Result<KvCapacity, StartFailure> {
    let total = s.total_bytes;
    let u = if s.utilization.is_finite() {
        s.utilization.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let snapshot_free = s.free_bytes.saturating_sub(s.startup_overhead_bytes);
    let ceil = !s.v0_engine && s.release >= CEIL_AND_DEVICE;
    let requested_f = if ceil {
        (total as f64 * u).ceil()
    } else {
        total as f64 * u
    };
    let requested_bytes = requested_f.min(u64::MAX as f64) as u64;

    if !s.v0_engine
        && !s.others_in_budget
        && s.release >= STARTUP_CHECK
        && (snapshot_free as f64) < requested_f
    {
        let device = if s.release >= CEIL_AND_DEVICE {
            format!(" cuda:{}", s.device_index)
        } else {
            String::new()
        };
        return Err(StartFailure {
            kind: FailureKind::StartupCheck,
            message: format!(
                "ValueError: Free memory on device{device} ({}/{} GiB) on startup is less than desired GPU memory utilization ({}, {} GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.",
                format_gib(snapshot_free),
                format_gib(total),
                repr_f64(u),
                format_gib_f64(requested_f)
            ),
        });
    }

    let others = if s.others_in_budget {
        total.saturating_sub(s.free_bytes)
    } else {
        0
    };
    // The budget less what the profile counted, as vLLM holds it: an int from a ceiled
    // `requested`, a float before.
    let available_f = requested_f - others as f64 - s.non_kv_bytes as f64;
    let bytes_per_block = s.kv_bytes_per_token.saturating_mul(s.block_size);
    let block_f = bytes_per_block as f64;
    let capacity = |num_blocks: u64| KvCapacity {
        requested_bytes,
        snapshot_free_bytes: snapshot_free,
        available_kv_bytes: available_f.max(0.0) as u64,
        num_blocks,
        block_size: s.block_size,
        bytes_per_block,
    };

    if s.v0_engine {
        let num_blocks = if bytes_per_block == 0 {
            0
        } else {
            (available_f / block_f).floor().max(0.0) as u64
        };
        if num_blocks == 0 {
            return Err(no_kv_cache(s.release, true));
        }
        let kv_tokens = s.block_size.saturating_mul(num_blocks);
        if s.max_model_len > kv_tokens {
            return Err(StartFailure {
                kind: FailureKind::KvTooSmall,
                message: format!(
                    "ValueError: The model's max seq len ({}) is larger than the maximum number of tokens that can be stored in KV cache ({kv_tokens}). Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.",
                    s.max_model_len
                ),
            });
        }
        return Ok(capacity(num_blocks));
    }

    let check_f = if s.release >= NULL_BLOCK_HELD_BACK {
        available_f - block_f
    } else {
        available_f
    };
    if check_f <= 0.0 || bytes_per_block == 0 {
        return Err(no_kv_cache(s.release, false));
    }
    let needed = cdiv(s.max_model_len, s.block_size).saturating_mul(bytes_per_block);
    if needed as f64 > check_f {
        let fitting_blocks = (check_f / block_f).floor() as u64;
        let estimate = fitting_blocks
            .saturating_mul(s.block_size)
            .min(s.max_model_len);
        return Err(StartFailure {
            kind: FailureKind::KvTooSmall,
            message: kv_text(s.release, s.max_model_len, needed, check_f, estimate),
        });
    }
    let num_blocks = (available_f / block_f).floor() as u64;
    Ok(capacity(num_blocks))
}

fn no_kv_cache(release: VllmFamily, v0_engine: bool) -> StartFailure {
    let message = if v0_engine || release < FORMAT_GIB_TEXTS {
        "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine."
    } else if release < MODEL_S_TEXTS {
        "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
    } else {
        "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine (this flag also controls CPU memory reservation on the CPU backend, despite its name). See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
    };
    StartFailure {
        kind: FailureKind::NoKvCache,
        message: message.to_string(),
    }
}

/// The V1 one-request text of `release`.
fn kv_text(release: VllmFamily, len: u64, needed: u64, available: f64, estimate: u64) -> String {
    let head = if release < MODEL_S_TEXTS {
        "ValueError: To serve at least one request with the models's max seq len"
    } else {
        "ValueError: To serve at least one request with the model's max seq len"
    };
    if release < GIB_TEXTS {
        return format!(
            "{head} ({len}), ({} GB KV cache is needed, which is larger than the available KV cache memory ({} GB). Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.",
            format_gib_2f(needed as f64),
            format_gib_2f(available)
        );
    }
    if release < FORMAT_GIB_TEXTS {
        let (n, a) = (format_gib_2f(needed as f64), format_gib_2f(available));
        let suggestion = |lead: &str| {
            if estimate > 0 {
                format!(
                    "{lead}Based on the available memory, the estimated maximum model length is {estimate}."
                )
            } else {
                String::new()
            }
        };
        let tail = "Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.";
        return if release < SUGGESTION_AFTER_SPACE {
            format!(
                "{head} ({len}), ({n} GiB KV cache is needed, which is larger than the available KV cache memory ({a} GiB).{}  {tail}",
                suggestion(" ")
            )
        } else {
            format!(
                "{head} ({len}), ({n} GiB KV cache is needed, which is larger than the available KV cache memory ({a} GiB). {} {tail}",
                suggestion("")
            )
        };
    }
    let suggestion = if estimate > 0 {
        format!("Based on the available memory, the estimated maximum model length is {estimate}. ")
    } else {
        String::new()
    };
    let advice = if release < MODEL_S_TEXTS {
        "Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."
    } else {
        "Try increasing `gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or decreasing `max_model_len` when initializing the engine."
    };
    format!(
        "{head} ({len}), ({} GiB KV cache is needed, which is larger than the available KV cache memory ({} GiB). {suggestion}{advice} See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.",
        format_gib(needed),
        format_gib_f64(available)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::failures::{
        FailureFigures, PrintedGib, StartupCheckText, classify_failure, failure_figures,
    };
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    /// A 24 GiB card (CUDA total 23.55 GiB), an 8B model in bf16 with 128 KiB per token.
    fn l4ish(release: VllmFamily) -> VllmStart {
        VllmStart {
            release,
            v0_engine: false,
            device_index: 0,
            total_bytes: 25_287_000_000,
            free_bytes: 25_000_000_000,
            startup_overhead_bytes: 600 << 20,
            utilization: 0.9,
            non_kv_bytes: 16 * GIB,
            kv_bytes_per_token: 128 << 10,
            max_model_len: 32768,
            block_size: 16,
            others_in_budget: false,
        }
    }

    fn holds(f: PrintedGib, bytes: u64) -> bool {
        f.low_bytes() <= bytes && bytes <= f.high_bytes()
    }

    #[test]
    fn gib_figures_print_as_python_does() {
        // Expected texts from CPython 3.11: str(round(b / 2**30, 2)) and f"{b / 2**30:.2f}".
        for (bytes, repr, fixed) in [
            (0u64, "0.0", "0.00"),
            (5_368_709, "0.0", "0.00"),
            (5_368_710, "0.01", "0.01"),
            (7_430_293_422, "6.92", "6.92"),
            (8 * GIB, "8.0", "8.00"),
            (1_207_959_552, "1.12", "1.12"), // 1.125 exactly: half to even
            (402_653_184, "0.38", "0.38"),   // 0.375 exactly: half to even
            (2_872_259_379, "2.67", "2.67"),
            (85_520_809_984, "79.65", "79.65"),
            (23_622_320_128, "22.0", "22.00"),
            (1_000_000_000_000_000, "931322.57", "931322.57"),
        ] {
            assert_eq!(format_gib(bytes), repr, "{bytes}");
            assert_eq!(format_gib_2f(bytes as f64), fixed, "{bytes}");
            assert!(holds(PrintedGib::parse(repr).unwrap(), bytes), "{bytes}");
        }
        // round(0.9 * 85520809984 / 2**30, 2) in CPython: a float's exact value.
        assert_eq!(format_gib_f64(0.9 * 85_520_809_984.0), "71.68");
        assert_eq!(repr_f64(0.9), "0.9");
        assert_eq!(repr_f64(1.0), "1.0");
    }

    #[test]
    fn startup_check_text_of_033_parses_back_to_its_figures() {
        let mut s = l4ish(VllmFamily::NEWEST);
        s.free_bytes = 22_500_000_000;
        let err = start(&s).unwrap_err();
        assert_eq!(err.kind, FailureKind::StartupCheck);
        assert_eq!(
            err.message,
            "ValueError: Free memory on device cuda:0 (20.37/23.55 GiB) on startup is less than desired GPU memory utilization (0.9, 21.2 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."
        );
        assert_eq!(
            classify_failure(&err.message),
            Some(FailureKind::StartupCheck)
        );
        let Some(FailureFigures::StartupCheck {
            text,
            device,
            first,
            total,
            utilization,
            requested,
        }) = failure_figures(&err.message)
        else {
            panic!("{}", err.message);
        };
        assert_eq!(text, StartupCheckText::Desired);
        assert_eq!(device.as_deref(), Some("cuda:0"));
        assert!(holds(first, s.free_bytes - s.startup_overhead_bytes));
        assert!(holds(total, s.total_bytes));
        assert_eq!(utilization, 0.9);
        assert!(holds(requested, (s.total_bytes as f64 * 0.9).ceil() as u64));
    }

    #[test]
    fn startup_check_text_before_014_has_no_device() {
        let mut s = l4ish(VllmFamily::V0_11);
        s.free_bytes = 22_500_000_000;
        let err = start(&s).unwrap_err();
        assert!(
            err.message
                .starts_with("ValueError: Free memory on device (20.37/23.55 GiB) on startup"),
            "{}",
            err.message
        );
        // No check before 0.9.1 nor in the V0 engine: the start goes on to the KV budget.
        s.release = VllmFamily::new(9, 0);
        assert_ne!(
            start(&s).map_err(|e| e.kind),
            Err(FailureKind::StartupCheck)
        );
        s.release = VllmFamily::NEWEST;
        s.v0_engine = true;
        assert_ne!(
            start(&s).map_err(|e| e.kind),
            Err(FailureKind::StartupCheck)
        );
    }

    #[test]
    fn kv_budget_is_whole_blocks_of_what_is_left() {
        let s = l4ish(VllmFamily::NEWEST);
        let cap = start(&s).unwrap();
        let requested = (s.total_bytes as f64 * 0.9).ceil() as u64;
        let page = (128u64 << 10) * 16;
        assert_eq!(cap.requested_bytes, requested);
        assert_eq!(cap.available_kv_bytes, requested - 16 * GIB);
        assert_eq!(cap.num_blocks, (requested - 16 * GIB) / page);
        assert_eq!(cap.kv_cache_bytes(), cap.num_blocks * page);
        assert_eq!(cap.kv_cache_tokens(), cap.num_blocks * 16);
    }

    #[test]
    fn one_request_texts_of_each_release() {
        // 2 GiB more non-KV than the 16 GiB planned: 1.2 GiB of KV, 32768 tokens need 4 GiB.
        let mut s = l4ish(VllmFamily::NEWEST);
        s.non_kv_bytes = 18 * GIB + (800 << 20);
        let requested = (s.total_bytes as f64 * 0.9).ceil() as u64;
        let page = (128u64 << 10) * 16;
        let available = requested - s.non_kv_bytes;
        let check = available - page; // 0.29.0 on hold the null block back
        let estimate = check / page * 16;
        let err = start(&s).unwrap_err();
        assert_eq!(err.kind, FailureKind::KvTooSmall);
        // The figures as CPython prints them for these bytes (2,589,989,216 -> 2.41).
        assert_eq!((check, estimate), (2_589_989_216, 19760));
        assert_eq!(
            err.message,
            "ValueError: To serve at least one request with the model's max seq len (32768), (4.0 GiB KV cache is needed, which is larger than the available KV cache memory (2.41 GiB). Based on the available memory, the estimated maximum model length is 19760. Try increasing `gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or decreasing `max_model_len` when initializing the engine. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
        );
        let Some(FailureFigures::KvOneRequest {
            max_model_len,
            needed,
            available: avail,
            estimated_max_model_len,
        }) = failure_figures(&err.message)
        else {
            panic!("{}", err.message);
        };
        assert_eq!(max_model_len, 32768);
        assert!(holds(needed, 4 * GIB));
        assert!(holds(avail, check));
        assert_eq!(estimated_max_model_len, Some(estimate));

        // 0.28.0 checks the whole budget; 0.21.0 "models's"; 0.11.0 ":.2f"; 0.9.0 the doubled
        // space; 0.8.0 "GB"; each parses back to the same figures.
        for (release, stem, held_back) in [
            (
                VllmFamily::new(28, 0),
                "with the model's max seq len (32768), (4.0 GiB",
                0,
            ),
            (
                VllmFamily::V0_21,
                "with the models's max seq len (32768), (4.0 GiB",
                0,
            ),
            (
                VllmFamily::V0_11,
                "with the models's max seq len (32768), (4.00 GiB",
                0,
            ),
            (
                VllmFamily::new(9, 0),
                "with the models's max seq len (32768), (4.00 GiB",
                0,
            ),
            (
                VllmFamily::new(8, 0),
                "with the models's max seq len (32768), (4.00 GB",
                0,
            ),
        ] {
            s.release = release;
            s.others_in_budget = release < STARTUP_CHECK;
            s.free_bytes = s.total_bytes; // nobody else holds memory
            let err = start(&s).unwrap_err();
            assert!(err.message.contains(stem), "{release}: {}", err.message);
            let Some(FailureFigures::KvOneRequest {
                available: avail,
                estimated_max_model_len,
                ..
            }) = failure_figures(&err.message)
            else {
                panic!("{release}: {}", err.message);
            };
            let budget = if release >= CEIL_AND_DEVICE {
                requested
            } else {
                (s.total_bytes as f64 * 0.9) as u64
            };
            let check = budget - s.non_kv_bytes - held_back;
            assert!(
                avail.low_bytes() <= check + 1 && check <= avail.high_bytes() + 1,
                "{release}"
            );
            let expected = (release >= GIB_TEXTS).then_some(check / page * 16);
            assert_eq!(estimated_max_model_len, expected, "{release}");
        }
        s.release = VllmFamily::V0_11;
        assert!(start(&s).unwrap_err().message.contains(
            "Based on the available memory, the estimated maximum model length is 19776. Try increasing"
        ));
        s.release = VllmFamily::new(9, 0);
        assert!(start(&s).unwrap_err().message.contains(
            "GiB). Based on the available memory, the estimated maximum model length is 19776.  Try increasing"
        ));
    }

    #[test]
    fn no_kv_cache_and_v0_texts() {
        let mut s = l4ish(VllmFamily::NEWEST);
        s.non_kv_bytes = 22 * GIB;
        let err = start(&s).unwrap_err();
        assert_eq!(err.kind, FailureKind::NoKvCache);
        assert_eq!(
            failure_figures(&err.message),
            Some(FailureFigures::NoKvCache)
        );
        assert!(err.message.contains("despite its name"));
        // 0.29.0 on: a budget of exactly one block is no budget (the null block).
        let requested = (s.total_bytes as f64 * 0.9).ceil() as u64;
        let page = (128u64 << 10) * 16;
        s.non_kv_bytes = requested - page;
        assert_eq!(start(&s).unwrap_err().kind, FailureKind::NoKvCache);
        s.release = VllmFamily::new(28, 0);
        assert_eq!(start(&s).unwrap_err().kind, FailureKind::KvTooSmall);

        // V0: exact tokens, `B * floor(available / block)` (vllm/worker/worker.py).
        let mut v0 = l4ish(VllmFamily::V0);
        v0.v0_engine = true;
        v0.non_kv_bytes = 19 * GIB;
        let available = v0.total_bytes as f64 * 0.9 - (19 * GIB) as f64;
        let tokens = (available / page as f64).floor() as u64 * 16;
        let err = start(&v0).unwrap_err();
        assert_eq!(
            failure_figures(&err.message),
            Some(FailureFigures::KvTokens {
                max_model_len: 32768,
                kv_tokens: tokens
            })
        );
        v0.non_kv_bytes = 22 * GIB;
        assert_eq!(
            start(&v0).unwrap_err().message,
            "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine."
        );
    }

    #[test]
    fn others_are_charged_where_the_release_does() {
        let mut s = l4ish(VllmFamily::new(8, 0));
        s.others_in_budget = true;
        s.max_model_len = 8192;
        let alone = start(&s).unwrap();
        s.free_bytes -= 2 * GIB;
        let shared = start(&s).unwrap();
        let page = (128u64 << 10) * 16;
        assert!(alone.num_blocks - shared.num_blocks >= 2 * GIB / page - 1);
    }

    proptest! {
        /// Whatever vLLM prints, the parser reads back figures that hold the true bytes, and the
        /// classifier names the same failure.
        #[test]
        fn every_failure_text_parses_back(
            minor in prop::sample::select(vec![7u16, 8, 9, 10, 11, 12, 14, 16, 20, 21, 22, 28, 29, 31, 33]),
            v0 in any::<bool>(),
            total_gib in 8u64..200,
            free_frac in 0.3f64..1.0,
            overhead_mib in 0u64..4096,
            u_pct in 10u64..100,
            non_kv_frac in 0.0f64..1.2,
            bpt_kib in 1u64..1024,
            len in 1u64..300_000,
            block in prop::sample::select(vec![16u64, 32, 64, 128]),
        ) {
            let total = total_gib * GIB - 123_456_789;
            let u = u_pct as f64 / 100.0;
            let release = VllmFamily::new(minor, 0);
            let s = VllmStart {
                release,
                v0_engine: v0 && minor <= 10,
                device_index: 3,
                total_bytes: total,
                free_bytes: (total as f64 * free_frac) as u64,
                startup_overhead_bytes: overhead_mib << 20,
                utilization: u,
                non_kv_bytes: (total as f64 * u * non_kv_frac) as u64,
                kv_bytes_per_token: bpt_kib << 10,
                max_model_len: len,
                block_size: block,
                others_in_budget: (8..=9).contains(&minor) && release < STARTUP_CHECK,
            };
            let Err(err) = start(&s) else { return Ok(()) };
            prop_assert_eq!(classify_failure(&err.message), Some(err.kind), "{}", &err.message);
            let figures = failure_figures(&err.message);
            prop_assert!(figures.is_some(), "{}", &err.message);
            match figures.unwrap() {
                FailureFigures::StartupCheck { first, total: t, utilization, device, .. } => {
                    prop_assert!(holds(first, s.free_bytes.saturating_sub(s.startup_overhead_bytes)));
                    prop_assert!(holds(t, total));
                    prop_assert_eq!(utilization, u);
                    prop_assert_eq!(device.is_some(), release >= CEIL_AND_DEVICE);
                }
                FailureFigures::KvOneRequest { max_model_len, needed, .. } => {
                    prop_assert_eq!(max_model_len, len);
                    prop_assert!(holds(needed, len.div_ceil(block) * block * (bpt_kib << 10)));
                }
                FailureFigures::KvTokens { max_model_len, kv_tokens } => {
                    prop_assert!(s.v0_engine);
                    prop_assert_eq!(max_model_len, len);
                    prop_assert!(kv_tokens < len && kv_tokens % block == 0);
                }
                FailureFigures::NoKvCache => prop_assert_eq!(err.kind, FailureKind::NoKvCache),
            }
        }
    }
}
