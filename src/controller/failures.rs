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
    } else if message.contains("Free memory on device")
        || message.contains("Externally held weights on device")
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
