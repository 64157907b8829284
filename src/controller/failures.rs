//! Startup failures that mean "not enough GPU memory", and the per-GPU back-off they cause.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// The termination-message prefix of a launcher refusal.
pub const LAUNCHER_REFUSAL: &str = "vllm-operator: insufficient-gpu-memory:";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The launcher found the model no longer fits (exit 75).
    LauncherRefused,
    /// vLLM's startup check: "Free memory on device ... is less than desired".
    StartupCheck,
    /// "No available memory for the cache blocks".
    NoKvCache,
    /// "... larger than the maximum number of tokens that can be stored in KV cache".
    KvTooSmall,
    /// "CUDA out of memory".
    CudaOom,
}

impl FailureKind {
    pub fn describe(self) -> &'static str {
        match self {
            FailureKind::LauncherRefused => {
                "the launcher refused to start vLLM (GPU memory taken since placement)"
            }
            FailureKind::StartupCheck => "vLLM's startup free-memory check failed",
            FailureKind::NoKvCache => "vLLM found no memory for the KV cache",
            FailureKind::KvTooSmall => "vLLM's KV cache cannot hold one max-model-len request",
            FailureKind::CudaOom => "CUDA ran out of memory",
        }
    }
}

/// Which memory failure a termination message (or last log lines) shows, if any. The needles
/// are vLLM's own texts, each checked with grep against the wheels of every minor release
/// from 0.5.0.post1 to 0.33.0:
/// - startup check: `"Free memory on device {dev} (F/T GiB) on startup is less than desired GPU
///   memory utilization"` from 0.9.1 (`vllm/v1/worker/gpu_worker.py` `init_device`; 0.21.0 and
///   0.33.0 `vllm/v1/worker/utils.py` `request_memory`), and from 0.32.0 with weights held by
///   another process `"Free memory on device ... is less than the engine's budget after
///   excluding external process's weights"` / `"Externally held weights on device ... exceed
///   the desired GPU memory utilization"` (0.33.0 `utils.py:735-766`);
/// - `"No available memory for the cache blocks"` (`vllm/worker/worker.py` V0 up to 0.10.x,
///   `vllm/v1/core/kv_cache_utils.py` from 0.7.3, `vllm/v1/core/kv_cache_planning.py` 0.33.0);
/// - one max-model-len request does not fit: V0 `"The model's max seq len (L) is larger than
///   the maximum number of tokens that can be stored in KV cache"` (`vllm/worker/worker.py`,
///   0.5.0.post1 to 0.10.x), V1 `"To serve at least one request with the models's max seq
///   len"` (sic, `vllm/v1/core/kv_cache_utils.py` from 0.7.3 to 0.21.0), `"... the model's max
///   seq len"` (same file 0.22.0-0.32.0, `vllm/v1/core/kv_cache_planning.py` in 0.33.0);
/// - PyTorch's `"CUDA out of memory"` (`torch.OutOfMemoryError`; from 0.8.0 vLLM's sampler
///   warm-up wraps it as `"CUDA out of memory occurred when warming up sampler ..."`, and from
///   0.13.0 the model runner logs `"Failed to load model - not enough GPU memory"` before
///   re-raising it, `vllm/v1/worker/gpu_model_runner.py`).
pub fn classify_failure(message: &str) -> Option<FailureKind> {
    if message.contains(LAUNCHER_REFUSAL) {
        Some(FailureKind::LauncherRefused)
    } else if message.contains("Externally held weights on device")
        || message.contains("on startup is less than")
        // A cut text still counts; the INFO line of a start that passed does not.
        || (message.contains("Free memory on device")
            && !message.contains("on startup. Desired GPU memory utilization is"))
    {
        Some(FailureKind::StartupCheck)
    } else if message.contains("No available memory for the cache blocks") {
        Some(FailureKind::NoKvCache)
    } else if message
        .contains("larger than the maximum number of tokens that can be stored in KV cache")
        // "models's" up to 0.21.0, "model's" from 0.22.0: the common stem.
        || message.contains("To serve at least one request with the model")
    {
        Some(FailureKind::KvTooSmall)
    } else if message.contains("CUDA out of memory")
        || message.contains("CUDA error: out of memory")
        || message.contains("Failed to load model - not enough GPU memory")
    {
        Some(FailureKind::CudaOom)
    } else {
        None
    }
}

/// A figure vLLM printed in GiB. vLLM divides bytes by 2^30 and rounds to 2 decimals
/// (`round(b / GiB_bytes, 2)`, 0.9.1 `vllm/v1/worker/gpu_worker.py:139`, 0.21.0 and 0.33.0
/// `vllm/utils/mem_utils.py` `format_gib`; `f"{b/GiB_bytes:.2f}"` in the KV message up to 0.12,
/// 0.11.0 `vllm/v1/core/kv_cache_utils.py:718-720`), so the bytes behind it are only known to
/// within half a hundredth of a GiB (5,368,709 bytes) either way. The precision loss stays
/// explicit: a reader takes [`PrintedGib::low_bytes`] or [`PrintedGib::high_bytes`], whichever
/// errs on the safe side for its use, never a single "exact" number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrintedGib {
    /// The printed digits without the decimal point (`6.92` -> 692).
    pub digits: u64,
    /// How many decimals were printed (`8.0` -> 1, `6.92` -> 2).
    pub decimals: u32,
}

impl PrintedGib {
    const GIB: u128 = 1 << 30;

    /// Read `6.92`, `8.0`, `16.00` or `8`; at most 9 decimals. `None` for anything else.
    pub fn parse(text: &str) -> Option<PrintedGib> {
        let text = text.trim();
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty()
            || frac.len() > 9
            || !whole
                .bytes()
                .chain(frac.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let decimals = frac.len() as u32;
        let digits: u64 = format!("{whole}{frac}").parse().ok()?;
        Some(PrintedGib { digits, decimals })
    }

    /// `(2 * digits + side) * GiB / (2 * 10^decimals)`, rounded `up` or down, in bytes.
    fn bound(self, side: i128, up: bool) -> u64 {
        let scale = 2 * 10u128.pow(self.decimals);
        let twice = (2 * self.digits as i128 + side).max(0) as u128;
        let num = twice.saturating_mul(Self::GIB);
        let q = if up { num.div_ceil(scale) } else { num / scale };
        u64::try_from(q).unwrap_or(u64::MAX)
    }

    /// The fewest bytes that print as this figure (the printed value less half its last digit).
    pub fn low_bytes(self) -> u64 {
        self.bound(-1, true)
    }

    /// The most bytes that print as this figure (the printed value plus half its last digit).
    pub fn high_bytes(self) -> u64 {
        self.bound(1, false)
    }

    /// The printed value in bytes, for messages; not a bound.
    pub fn nearest_bytes(self) -> u64 {
        self.bound(0, false)
    }
}

/// Which startup-check text vLLM printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartupCheckText {
    /// "Free memory on device (F/T GiB) on startup is less than desired GPU memory utilization
    /// (u, R GiB)": `F < R`, R = `u * T` (0.9.1 to 0.12.x) or `ceil(u * T)` (0.14.0 on).
    Desired,
    /// "... is less than the engine's budget after excluding external process's weights (u, E
    /// GiB)" (0.32.0, 0.33.0): `F < E`, E = `ceil(u * T)` less the weights another process holds.
    EngineBudget,
    /// "Externally held weights on device (X/T GiB) exceed the desired GPU memory utilization
    /// (u, R GiB)" (0.32.0, 0.33.0): the first figure is the external weights, not free memory.
    ExternalWeightsExceed,
}

/// The figures of one of vLLM's startup memory failures, as printed. GiB figures are ranges
/// ([`PrintedGib`]); token counts and the utilization are exact.
#[derive(Clone, Debug, PartialEq)]
pub enum FailureFigures {
    /// The startup free-memory check. `device` is `cuda:N` where the release prints it
    /// (0.14.0 on); `first` is the free memory at vLLM's snapshot, or the externally held
    /// weights for [`StartupCheckText::ExternalWeightsExceed`]; `requested` is R or E.
    StartupCheck {
        text: StartupCheckText,
        device: Option<String>,
        first: PrintedGib,
        total: PrintedGib,
        utilization: f64,
        requested: PrintedGib,
    },
    /// V1: one max-model-len request needs `needed` of KV cache, vLLM had `available` (from
    /// 0.29.0 less the one block its pool holds back), and says what length would fit (0.9.0
    /// on, where it is above 0).
    KvOneRequest {
        max_model_len: u64,
        needed: PrintedGib,
        available: PrintedGib,
        estimated_max_model_len: Option<u64>,
    },
    /// V0: `max_model_len` is above the tokens the KV cache holds (`block_size *
    /// num_gpu_blocks`, exact).
    KvTokens { max_model_len: u64, kv_tokens: u64 },
    /// "No available memory for the cache blocks": the KV budget was zero or below; no figures.
    NoKvCache,
}

/// The text after the first `needle` in `s`.
fn after<'a>(s: &'a str, needle: &str) -> Option<&'a str> {
    s.find(needle).map(|i| &s[i + needle.len()..])
}

/// The text of `s` before `end`, and what follows `end`.
fn until<'a>(s: &'a str, end: &str) -> Option<(&'a str, &'a str)> {
    s.find(end).map(|i| (&s[..i], &s[i + end.len()..]))
}

/// A whole number as Python prints an `int` (no separators).
fn integer(s: &str) -> Option<u64> {
    let s = s.trim();
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// A GiB figure followed by its unit: ` GiB`, or ` GB` (0.7.3's V1 KV message divides by
/// 1024^3 but prints "GB", `vllm/v1/core/kv_cache_utils.py:467-469`).
fn gib_figure(s: &str) -> Option<PrintedGib> {
    let s = s.trim();
    let number = s
        .strip_suffix("GiB")
        .or_else(|| s.strip_suffix("GB"))
        .unwrap_or(s);
    PrintedGib::parse(number)
}

/// `(F/T GiB)` and `(u, R GiB)` of a startup-check text, from after the device name.
fn startup_figures(rest: &str) -> Option<(Option<String>, PrintedGib, PrintedGib, &str)> {
    let (device, rest) = until(rest, "(")?;
    let (pair, rest) = until(rest, ")")?;
    let (first, total) = pair.split_once('/')?;
    let device = device.trim();
    let device = (!device.is_empty()).then(|| device.to_string());
    Some((device, gib_figure(first)?, gib_figure(total)?, rest))
}

fn utilization_and_bytes(rest: &str) -> Option<(f64, PrintedGib)> {
    let rest = after(rest, "(")?;
    let (inner, _) = until(rest, ")")?;
    let (u, r) = inner.split_once(',')?;
    let utilization: f64 = u.trim().parse().ok()?;
    (utilization.is_finite() && utilization >= 0.0).then_some(())?;
    Some((utilization, gib_figure(r)?))
}

/// The figures in a termination message (or last log lines) that holds one of vLLM's startup
/// memory failures; `None` when there is none, or when the text is cut inside the figures (a
/// truncated log). Each format below was read from the wheel of the releases named:
///
/// - startup check, 0.9.1 (`vllm/v1/worker/gpu_worker.py:139-147`) to 0.11.0 (`:186-194`):
///   `Free memory on device ({F}/{T} GiB) on startup is less than desired GPU memory
///   utilization ({u}, {R} GiB). Decrease ...` (0.12.0 `:238-246`); 0.14.0 to 0.33.0
///   (`vllm/v1/worker/utils.py` `request_memory`, 0.14.0 `:264-270`, 0.33.0 `:763-770`) insert
///   the device: `Free memory
///   on device cuda:0 (...)`. 0.32.0 and 0.33.0 (`utils.py:732-751`) add the two
///   external-weights texts of [`StartupCheckText`]. The INFO line `Free memory on device
///   (F/T GiB) on startup. Desired GPU memory utilization is ...` (0.33.0
///   `gpu_worker.py:1045`) reports a start that passed and is not a failure.
/// - one request, V1: `To serve at least one request with the models's max seq len ({L}), ({X}
///   GB KV cache is needed, which is larger than the available KV cache memory ({Y} GB).`
///   (0.7.3 `vllm/v1/core/kv_cache_utils.py:466-471`, 0.8.0 `:479-484`); `GiB` and `Based on the
///   available memory, the estimated maximum model length is {N}.` from 0.9.0 (`:541-557`); `model's` from 0.22.0
///   (`:719-727`; 0.33.0 `vllm/v1/core/kv_cache_planning.py:78-86`).
/// - one request, V0: `The model's max seq len ({L}) is larger than the maximum number of tokens
///   that can be stored in KV cache ({T}).` (`vllm/worker/worker.py`, 0.5.0.post1 `:384-388`,
///   0.7.3 `:545-549`, 0.9.1 `:572-577`).
/// - `No available memory for the cache blocks.` (V0 `worker.py`, V1 `kv_cache_utils.py`, 0.33.0
///   `kv_cache_planning.py:58`): no figures.
pub fn failure_figures(message: &str) -> Option<FailureFigures> {
    if let Some(rest) = after(message, "Externally held weights on device") {
        let (device, first, total, rest) = startup_figures(rest)?;
        let rest = after(rest, "exceed the desired GPU memory utilization")?;
        let (utilization, requested) = utilization_and_bytes(rest)?;
        return Some(FailureFigures::StartupCheck {
            text: StartupCheckText::ExternalWeightsExceed,
            device,
            first,
            total,
            utilization,
            requested,
        });
    }
    // Every "Free memory on device" text, skipping the INFO line of a start that passed.
    let mut search = message;
    while let Some(rest) = after(search, "Free memory on device") {
        search = rest;
        let Some((device, first, total, rest)) = startup_figures(rest) else {
            continue;
        };
        let text = if let Some(r) = after(
            rest,
            "on startup is less than desired GPU memory utilization",
        ) {
            (StartupCheckText::Desired, r)
        } else if let Some(r) = after(
            rest,
            "on startup is less than the engine's budget after excluding external process's weights",
        ) {
            (StartupCheckText::EngineBudget, r)
        } else {
            continue;
        };
        let (utilization, requested) = utilization_and_bytes(text.1)?;
        return Some(FailureFigures::StartupCheck {
            text: text.0,
            device,
            first,
            total,
            utilization,
            requested,
        });
    }
    if let Some(rest) = after(message, "To serve at least one request with the model") {
        let rest = after(rest, "max seq len (")?;
        let (len, rest) = until(rest, "), (")?;
        let (needed, rest) = until(rest, " KV cache is needed")?;
        let rest = after(rest, "available KV cache memory (")?;
        let (available, rest) = until(rest, ")")?;
        let estimated_max_model_len = after(rest, "the estimated maximum model length is ")
            .and_then(|r| until(r, ".").and_then(|(n, _)| integer(n)));
        return Some(FailureFigures::KvOneRequest {
            max_model_len: integer(len)?,
            needed: gib_figure(needed)?,
            available: gib_figure(available)?,
            estimated_max_model_len,
        });
    }
    if let Some(rest) = after(message, "max seq len (")
        && let Some((len, rest)) = until(rest, ") is larger than the maximum number of tokens")
    {
        let rest = after(rest, "stored in KV cache (")?;
        let (tokens, _) = until(rest, ")")?;
        return Some(FailureFigures::KvTokens {
            max_model_len: integer(len)?,
            kv_tokens: integer(tokens)?,
        });
    }
    message
        .contains("No available memory for the cache blocks")
        .then_some(FailureFigures::NoKvCache)
}

/// The GPU UUID a launcher refusal names: `GPU 3 (GPU-xxxx) needs ...`.
pub fn gpu_from_message(message: &str) -> Option<String> {
    let start = message.find("(GPU-")? + 1;
    let end = message[start..].find(')')? + start;
    Some(message[start..end].to_string())
}

/// After this many failures on one GPU (or node, when the GPU is unknown) the planner avoids it.
const FAILURES_BEFORE_BACKOFF: u32 = 2;
const BASE_BACKOFF: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Failures older than this are forgotten.
const MEMORY: Duration = Duration::from_secs(3600);

/// Memory failures per `(node, gpu uuid or "*")`, and the last failure of each replica until it
/// is placed again (so its new placement can say why it moved).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FailureBook {
    entries: BTreeMap<(String, String), (u32, Timestamp)>,
    replicas: BTreeMap<(String, String, u32), String>,
    /// Released pods that do not start, by `(namespace, pod)`: when this controller first saw
    /// them stuck (its own clock, not the scheduler's or the kubelet's).
    stuck: BTreeMap<(String, String), Timestamp>,
    /// MemoryProfiles this process learned, by name, until the profiles it is given (the
    /// controller's watch, `simulate`'s store) show them: a re-plan right after a failure
    /// uses what the failure taught even before the write comes back through the watch.
    learned: BTreeMap<String, crate::api::MemoryProfile>,
}

impl FailureBook {
    /// Remember why a replica's pod failed.
    pub fn replica_failed(
        &mut self,
        namespace: &str,
        deployment: &str,
        replica: u32,
        reason: String,
    ) {
        self.replicas.insert(
            (namespace.to_string(), deployment.to_string(), replica),
            reason,
        );
    }

    /// The last failure of a replica, forgotten once read (at its next placement).
    pub fn take_replica_failure(
        &mut self,
        namespace: &str,
        deployment: &str,
        replica: u32,
    ) -> Option<String> {
        self.replicas
            .remove(&(namespace.to_string(), deployment.to_string(), replica))
    }

    pub fn record(&mut self, node: &str, gpu_uuid: Option<String>, now: Timestamp) {
        let key = (
            node.to_string(),
            gpu_uuid.unwrap_or_else(|| "*".to_string()),
        );
        let e = self.entries.entry(key).or_insert((0, now));
        e.0 += 1;
        e.1 = now;
    }

    /// A pod the scheduler could not place on `node`: avoid the whole node at once (not after
    /// repeated failures, as for memory: the same node would refuse it again).
    pub fn node_unusable(&mut self, node: &str, now: Timestamp) {
        let e = self
            .entries
            .entry((node.to_string(), "*".to_string()))
            .or_insert((0, now));
        e.0 = e.0.max(FAILURES_BEFORE_BACKOFF - 1) + 1;
        e.1 = now;
    }

    /// GPU `uuid` of `node` could not be allocated to a pod's claim: avoid it at once, as
    /// [`Self::node_unusable`] does for a node.
    pub fn gpu_unusable(&mut self, node: &str, uuid: &str, now: Timestamp) {
        let e = self
            .entries
            .entry((node.to_string(), uuid.to_string()))
            .or_insert((0, now));
        e.0 = e.0.max(FAILURES_BEFORE_BACKOFF - 1) + 1;
        e.1 = now;
    }

    /// When the controller first saw `pod` stuck (recorded now if it was not).
    pub fn stuck_since(&mut self, namespace: &str, pod: &str, now: Timestamp) -> Timestamp {
        *self
            .stuck
            .entry((namespace.to_string(), pod.to_string()))
            .or_insert(now)
    }

    /// `pod` is no longer stuck (it started, or is gone).
    pub fn unstuck(&mut self, namespace: &str, pod: &str) {
        if !self.stuck.is_empty() {
            self.stuck.remove(&(namespace.to_string(), pod.to_string()));
        }
    }

    /// `(node, uuid)` pairs to avoid now; `"*"` stands for every GPU of the node.
    pub fn avoided(&self, now: Timestamp) -> Vec<(String, String)> {
        self.entries
            .iter()
            .filter(|(_, (count, last))| {
                if *count < FAILURES_BEFORE_BACKOFF {
                    return false;
                }
                let factor = 1u32 << (count - FAILURES_BEFORE_BACKOFF).min(4);
                let backoff = (BASE_BACKOFF * factor).min(MAX_BACKOFF);
                (now.duration_since(*last).as_secs().max(0) as u64) < backoff.as_secs()
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Remember a profile learned now, until [`FailureBook::profiles_seen`] sees it stored.
    pub fn learned_profile(&mut self, p: crate::api::MemoryProfile) {
        if let Some(name) = p.metadata.name.clone() {
            self.learned.insert(name, p);
        }
    }

    /// Forget learned profiles that `stored` holds at least as far (as many observations).
    pub fn profiles_seen(&mut self, stored: &crate::profile::Profiles) {
        if self.learned.is_empty() {
            return;
        }
        let count = |p: &crate::api::MemoryProfile| p.status.as_ref().map_or(0, |s| s.observations);
        self.learned.retain(|_, mine| {
            let key = crate::profile::ProfileKey::of(&mine.spec);
            stored.get(&key).is_none_or(|theirs| {
                theirs.metadata.name != mine.metadata.name || count(theirs) < count(mine)
            })
        });
    }

    /// The profile learned here for `key`, if any.
    pub fn learned(&self, key: &crate::profile::ProfileKey) -> Option<&crate::api::MemoryProfile> {
        self.learned
            .values()
            .find(|p| crate::profile::ProfileKey::of(&p.spec) == *key)
    }

    /// `stored` with the profiles learned here on top, or `None` when there are none.
    pub fn profiles_over(
        &self,
        stored: &crate::profile::Profiles,
    ) -> Option<crate::profile::Profiles> {
        if self.learned.is_empty() {
            return None;
        }
        let mut all = stored.clone();
        for p in self.learned.values() {
            all.insert(p.clone());
        }
        Some(all)
    }

    /// Drop failures older than an hour.
    pub fn forget_old(&mut self, now: Timestamp) {
        self.entries.retain(|_, (_, last)| {
            (now.duration_since(*last).as_secs().max(0) as u64) < MEMORY.as_secs()
        });
        self.stuck.retain(|_, since| {
            (now.duration_since(*since).as_secs().max(0) as u64) < MEMORY.as_secs()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_classified() {
        let refusal = "vllm-operator: insufficient-gpu-memory: GPU 3 (GPU-abc-123) needs 1 bytes free (0.00 GiB), has 0 bytes free (0.00 GiB)";
        assert_eq!(
            classify_failure(refusal),
            Some(FailureKind::LauncherRefused)
        );
        assert_eq!(gpu_from_message(refusal).as_deref(), Some("GPU-abc-123"));
        assert_eq!(
            classify_failure(
                "ValueError: Free memory on device (6.92/8.0 GiB) on startup is less than desired GPU memory utilization (0.9, 7.2 GiB)."
            ),
            Some(FailureKind::StartupCheck)
        );
        assert_eq!(
            classify_failure("No available memory for the cache blocks. Try increasing"),
            Some(FailureKind::NoKvCache)
        );
        assert_eq!(
            classify_failure(
                "The model's max seq len (32768) is larger than the maximum number of tokens that can be stored in KV cache (16384)."
            ),
            Some(FailureKind::KvTooSmall)
        );
        assert_eq!(
            classify_failure("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate"),
            Some(FailureKind::CudaOom)
        );
        assert_eq!(classify_failure("ImportError: no module named vllm"), None);
    }

    #[test]
    fn v1_messages_of_each_release_are_classified() {
        // vllm/v1/core/kv_cache_utils.py, 0.11.0 (and 0.7.3-0.21.0: the "models's" typo).
        let v011 = "ValueError: To serve at least one request with the models's max seq len (131072), (16.00 GiB KV cache is needed, which is larger than the available KV cache memory (3.21 GiB). Based on the available memory, the estimated maximum model length is 26272. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.";
        assert_eq!(classify_failure(v011), Some(FailureKind::KvTooSmall));
        // vllm/v1/core/kv_cache_planning.py `_check_enough_kv_cache_memory`, 0.33.0.
        let v033 = "ValueError: To serve at least one request with the model's max seq len (32768), (4.00 GiB KV cache is needed, which is larger than the available KV cache memory (1.50 GiB). Based on the available memory, the estimated maximum model length is 12288. Try increasing `gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or decreasing `max_model_len` when initializing the engine.";
        assert_eq!(classify_failure(v033), Some(FailureKind::KvTooSmall));
        // vllm/v1/worker/utils.py `request_memory`, 0.33.0, weights held by another process.
        assert_eq!(
            classify_failure(
                "ValueError: Free memory on device cuda:0 (10.00/79.19 GiB) on startup is less than the engine's budget after excluding external process's weights (0.9, 20.00 GiB)."
            ),
            Some(FailureKind::StartupCheck)
        );
        assert_eq!(
            classify_failure(
                "ValueError: Externally held weights on device cuda:0 (75.00 GiB) exceed the desired GPU memory utilization (0.9, 71.27 GiB)."
            ),
            Some(FailureKind::StartupCheck)
        );
        // vllm/v1/worker/gpu_model_runner.py, 0.33.0 (logged before re-raising torch's OOM).
        assert_eq!(
            classify_failure(
                "ERROR Failed to load model - not enough GPU memory. Try lowering --gpu-memory-utilization"
            ),
            Some(FailureKind::CudaOom)
        );
        // The sampler warm-up wrapper, every V1 release.
        assert_eq!(
            classify_failure(
                "RuntimeError: CUDA out of memory occurred when warming up sampler with 1024 dummy requests."
            ),
            Some(FailureKind::CudaOom)
        );
    }

    fn gib(digits: u64, decimals: u32) -> PrintedGib {
        PrintedGib { digits, decimals }
    }

    #[test]
    fn printed_gib_bounds_hold_every_byte_that_prints_so() {
        // 6.92 GiB covers [6.915, 6.925] GiB.
        let f = PrintedGib::parse("6.92").unwrap();
        assert_eq!(f, gib(692, 2));
        assert_eq!(f.low_bytes(), 7_424_924_713); // ceil(6.915 * 2^30)
        assert_eq!(f.high_bytes(), 7_435_662_131); // floor(6.925 * 2^30)
        assert_eq!(f.nearest_bytes(), 7_430_293_422);
        // One decimal printed ("8.0"): Python's repr of round(8.0, 2); the value is still
        // rounded to hundredths, so the range is no wider than 8.00's.
        let eight = PrintedGib::parse("8.0").unwrap();
        assert!(eight.low_bytes() <= 8 << 30 && 8 << 30 <= eight.high_bytes());
        assert_eq!(PrintedGib::parse("0.0").unwrap().low_bytes(), 0);
        for bad in ["", ".5", "1.2.3", "-1.0", "1e3", "nan", "1.0000000001"] {
            assert_eq!(PrintedGib::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn startup_check_figures_of_each_release() {
        // 0.9.1-0.11.x: no device, u * T without ceil (gpu_worker.py:139-147 in 0.9.1).
        let v011 = "ValueError: Free memory on device (6.92/8.0 GiB) on startup is less than desired GPU memory utilization (0.9, 7.2 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.";
        assert_eq!(
            failure_figures(v011),
            Some(FailureFigures::StartupCheck {
                text: StartupCheckText::Desired,
                device: None,
                first: gib(692, 2),
                total: gib(80, 1),
                utilization: 0.9,
                requested: gib(72, 1),
            })
        );
        // 0.21.0-0.33.0: the device (utils.py request_memory); text of pytorch/pytorch#175666.
        let v033 = "ValueError: Free memory on device cuda:0 (19.77/22.05 GiB) on startup is less than desired GPU memory utilization (0.9, 19.84 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.";
        let Some(FailureFigures::StartupCheck {
            device,
            first,
            total,
            requested,
            ..
        }) = failure_figures(v033)
        else {
            panic!("not parsed");
        };
        assert_eq!(device.as_deref(), Some("cuda:0"));
        assert_eq!(
            (first, total, requested),
            (gib(1977, 2), gib(2205, 2), gib(1984, 2))
        );
        // 0.32.0/0.33.0 with weights held by another process (utils.py:732-751).
        let budget = "ValueError: Free memory on device cuda:1 (10.0/79.19 GiB) on startup is less than the engine's budget after excluding external process's weights (0.9, 20.0 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.";
        assert!(matches!(
            failure_figures(budget),
            Some(FailureFigures::StartupCheck { text: StartupCheckText::EngineBudget, requested, .. })
                if requested == gib(200, 1)
        ));
        let exceed = "ValueError: Externally held weights on device cuda:0 (75.0/79.19 GiB) exceed the desired GPU memory utilization (0.9, 71.27 GiB). Increase GPU memory utilization or reduce GPU memory used by other processes.";
        assert!(matches!(
            failure_figures(exceed),
            Some(FailureFigures::StartupCheck { text: StartupCheckText::ExternalWeightsExceed, first, .. })
                if first == gib(750, 1)
        ));
        // The INFO line of a start that passed (0.33.0 gpu_worker.py:1045) is no failure.
        let info = "INFO Free memory on device (78.66/79.19 GiB) on startup. Desired GPU memory utilization is (0.9, 71.27 GiB). Actual usage is 14.08 GiB for weight";
        assert_eq!(failure_figures(info), None);
        assert_eq!(classify_failure(info), None);
    }

    #[test]
    fn kv_figures_of_each_release() {
        // 0.7.3: "GB", no estimate (vllm/v1/core/kv_cache_utils.py:466-471).
        let v073 = "ValueError: To serve at least one request with the models's max seq len (131072), (16.00 GB KV cache is needed, which is larger than the available KV cache memory (3.21 GB). Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.";
        assert_eq!(
            failure_figures(v073),
            Some(FailureFigures::KvOneRequest {
                max_model_len: 131072,
                needed: gib(1600, 2),
                available: gib(321, 2),
                estimated_max_model_len: None,
            })
        );
        // 0.9.1-0.11.x: ":.2f", estimate, two spaces (kv_cache_utils.py:717-723 in 0.11.0).
        let v011 = "ValueError: To serve at least one request with the models's max seq len (131072), (16.00 GiB KV cache is needed, which is larger than the available KV cache memory (3.21 GiB). Based on the available memory, the estimated maximum model length is 26272. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.";
        assert!(matches!(
            failure_figures(v011),
            Some(FailureFigures::KvOneRequest {
                estimated_max_model_len: Some(26272),
                ..
            })
        ));
        // 0.22.0-0.33.0: "model's", format_gib (kv_cache_planning.py:78-86 in 0.33.0).
        let v033 = "ValueError: To serve at least one request with the model's max seq len (32768), (4.0 GiB KV cache is needed, which is larger than the available KV cache memory (1.5 GiB). Based on the available memory, the estimated maximum model length is 12288. Try increasing `gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or decreasing `max_model_len` when initializing the engine. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.";
        assert_eq!(
            failure_figures(v033),
            Some(FailureFigures::KvOneRequest {
                max_model_len: 32768,
                needed: gib(40, 1),
                available: gib(15, 1),
                estimated_max_model_len: Some(12288),
            })
        );
        // V0 (vllm/worker/worker.py, 0.5.0.post1-0.10.x): exact tokens.
        let v0 = "ValueError: The model's max seq len (32768) is larger than the maximum number of tokens that can be stored in KV cache (16384). Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.";
        assert_eq!(
            failure_figures(v0),
            Some(FailureFigures::KvTokens {
                max_model_len: 32768,
                kv_tokens: 16384
            })
        );
        assert_eq!(
            failure_figures(
                "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine."
            ),
            Some(FailureFigures::NoKvCache)
        );
    }

    #[test]
    fn cut_or_foreign_texts_give_no_figures() {
        // The kubelet keeps the tail of the log (FallbackToLogsOnError): a text cut inside
        // its figures reads as nothing, not as a wrong number.
        for cut in [
            "Free memory on device cuda:0 (19.77/22.",
            "Free memory on device cuda:0 (19.77/22.05 GiB) on startup is less than desired GPU memory utilization (0.9, 19.8",
            "To serve at least one request with the model's max seq len (32768), (4.0 GiB KV cache is needed, which is larger than the available KV cache memory (1.",
            "The model's max seq len (32768) is larger than the maximum number of tokens that can be stored in KV cache (",
            "Free memory on device cuda:0 (x/y GiB) on startup is less than desired GPU memory utilization (0.9, 1 GiB)",
            "Free memory on device cuda:0 (1.0/2.0 GiB) on startup is less than desired GPU memory utilization (nan, 1 GiB)",
            "ImportError: no module named vllm",
        ] {
            assert_eq!(failure_figures(cut), None, "{cut}");
        }
    }

    #[test]
    fn repeated_failures_back_off_then_expire() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut book = FailureBook::default();
        book.record("n", Some("GPU-1".into()), t0);
        assert!(book.avoided(t0).is_empty());
        book.record("n", Some("GPU-1".into()), t0);
        assert_eq!(
            book.avoided(t0),
            vec![("n".to_string(), "GPU-1".to_string())]
        );
        let later = t0 + k8s_openapi::jiff::SignedDuration::from_secs(301);
        assert!(book.avoided(later).is_empty());
    }
}
