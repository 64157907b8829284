//! Memory profiles: what a model really takes on a GPU product in one vLLM shape, learned from
//! observed starts, and the figures the planner uses in place of its estimate. Pure: no client,
//! no clock, no I/O.
//!
//! The figures are vLLM's own (shared/reference/vllm-memory.md, [33] = vLLM 0.33.0):
//!
//! - **non-KV bytes per GPU** = what vLLM takes from its budget `requested = ceil(u * total)`
//!   before the KV cache: `available_kv_cache_memory = requested - non_kv_cache_memory - G`
//!   (`vllm/v1/worker/gpu_worker.py:743-757` [33]; without `G` in 0.11, whose graphs sit
//!   outside the budget). So `non_kv = requested - available`, which is what the planner calls
//!   `Estimate::required_bytes`.
//! - **startup overhead per GPU** = what vLLM holds before its `MemorySnapshot` (CUDA context,
//!   NCCL, cuBLAS: `gpu_worker.py:449-548` [33]) = free memory just before `exec` (the
//!   launcher's NVML reading) less the free memory vLLM reports in "Free memory on device
//!   (F/T GiB)".

use std::collections::BTreeMap;

use kube::api::ObjectMeta;

use crate::api::{
    KvCacheDtype, MemoryProfile, MemoryProfileSpec, ProfileSource, Quantization, VllmDeploymentSpec,
};
use crate::model::Shape;

const MIB: u64 = 1 << 20;

/// How many pods a profile's status remembers as counted.
pub const RECENT_PODS: usize = 16;

/// The margin added to a measured non-KV figure: vLLM's own buffer for the same use, sizing
/// from measured memory instead of the estimate (`redundancy_buffer_memory = 150 MiB` in its
/// suggested `--kv-cache-memory`, `vllm/v1/worker/gpu_worker.py:1012-1068` [33]), plus 1 % for
/// what differs between starts of the same image on the same product: allocator segments
/// (PyTorch's caching allocator rounds large blocks to 2 MiB and carves 20 MiB segments,
/// `c10/cuda/CUDACachingAllocator.cpp`), cuBLAS workspaces and the message's 0.01 GiB rounding.
pub const NON_KV_MARGIN_BYTES: u64 = 150 * MIB;

/// The margin added to a measured startup overhead: the CUDA context changes with the driver,
/// which a profile's key does not hold (one image may meet several drivers); ~70 MiB is the
/// change seen between torch/CUDA builds (pytorch/pytorch#175666).
pub const OVERHEAD_MARGIN_BYTES: u64 = 64 * MIB;

/// A measured non-KV figure with its margin.
pub fn non_kv_with_margin(measured: u64) -> u64 {
    measured
        .saturating_add(NON_KV_MARGIN_BYTES)
        .saturating_add(measured / 100)
}

/// A measured startup overhead with its margin.
pub fn overhead_with_margin(measured: u64) -> u64 {
    measured.saturating_add(OVERHEAD_MARGIN_BYTES)
}

/// What a profile is about: one model (and revision) in one vLLM image, on one GPU product, in
/// one shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProfileKey {
    pub model: String,
    pub revision: Option<String>,
    pub image: String,
    pub gpu_product: String,
    pub tensor_parallel_size: u32,
    pub quantization: Quantization,
    pub kv_cache_dtype: KvCacheDtype,
}

impl ProfileKey {
    /// The key a profile's spec describes.
    pub fn of(spec: &MemoryProfileSpec) -> Self {
        ProfileKey {
            model: spec.model.clone(),
            revision: spec.revision.clone(),
            image: spec.image.clone(),
            gpu_product: spec.gpu_product.clone(),
            tensor_parallel_size: spec.tensor_parallel_size,
            quantization: spec.quantization,
            kv_cache_dtype: spec.kv_cache_dtype,
        }
    }
}

/// The key of a deployment's replica in `shape` on a GPU of `gpu_product`, run from `image`.
pub fn key_for(
    spec: &VllmDeploymentSpec,
    shape: &Shape,
    gpu_product: &str,
    image: &str,
) -> ProfileKey {
    ProfileKey {
        model: spec.model.name.clone(),
        revision: spec.model.revision.clone(),
        image: image.to_string(),
        gpu_product: gpu_product.to_string(),
        tensor_parallel_size: shape.tensor_parallel_size,
        quantization: shape.quantization,
        kv_cache_dtype: shape.kv_cache_dtype,
    }
}

/// FNV-1a, 64 bits: a hash that stays the same across Rust releases and machines (the
/// standard library's `DefaultHasher` does not promise that), so a profile keeps its name.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Lowercase letters, digits and single dashes, at most `max` characters, no dash at the ends.
fn slug(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= max {
            break;
        }
    }
    out.trim_end_matches('-').to_string()
}

/// The profile's object name: readable parts (model, GPU, shape) and a hash of the whole key,
/// so that two keys never share a name. A DNS-1123 subdomain of at most 100 characters.
pub fn profile_name(key: &ProfileKey) -> String {
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{}",
        key.model,
        key.revision.as_deref().unwrap_or(""),
        key.image,
        key.gpu_product,
        key.tensor_parallel_size,
        key.quantization,
        key.kv_cache_dtype
    );
    let model = key.model.rsplit('/').next().unwrap_or(&key.model);
    let gpu = key
        .gpu_product
        .trim_start_matches("NVIDIA ")
        .trim_start_matches("nvidia ");
    let mut parts: Vec<String> = Vec::new();
    for p in [slug(model, 40), slug(gpu, 24)] {
        if !p.is_empty() {
            parts.push(p);
        }
    }
    parts.push(format!("tp{}", key.tensor_parallel_size));
    parts.push(format!("{:016x}", fnv1a(canonical.as_bytes())));
    parts.join("-")
}

/// What was seen of one start of vLLM. All figures are per GPU, in bytes; each is `None` when
/// the cluster did not give it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Free memory vLLM measured at its snapshot ("Free memory on device (F/T GiB)").
    pub free_bytes_at_start: Option<u64>,
    /// Total memory as vLLM (CUDA) counts it (the `T` of the same message).
    pub total_bytes: Option<u64>,
    /// KV cache one max-model-len request needs ("X GiB KV cache is needed").
    pub kv_needed_bytes: Option<u64>,
    /// KV cache vLLM had after profiling ("available KV cache memory (Y GiB)", or its
    /// `Available KV cache memory: Y GiB` log line).
    pub kv_available_bytes: Option<u64>,
    /// Bytes the pod's processes use on one GPU (the node agent's per-pod NVML figure).
    pub used_bytes_per_gpu: Option<u64>,
    /// The KV cache vLLM allocated (`vllm:cache_config_info` `num_gpu_blocks` times the
    /// bytes of one block).
    pub kv_cache_bytes: Option<u64>,
    /// Free bytes per GPU the launcher read from NVML just before `exec`.
    pub launcher_free_bytes: Vec<u64>,
    /// The `--gpu-memory-utilization` vLLM ran with (the launcher may lower the planned one).
    pub utilization: Option<f64>,
}

impl Observed {
    /// Nothing was observed.
    pub fn is_empty(&self) -> bool {
        *self == Observed::default()
    }
}

/// What the plan of the observed pod assumed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Planned {
    /// The planned `--gpu-memory-utilization`.
    pub utilization: f64,
    /// CUDA's total for the GPU (NVML total less reserved).
    pub cuda_total_bytes: u64,
    /// Non-KV bytes per GPU the plan counted (`Estimate::required_bytes`).
    pub non_kv_bytes: u64,
    /// The release charges other processes' memory to its budget (0.6.4.x, 0.8.0-0.9.0.x):
    /// vLLM's figures then mix in others' memory and are not learned from.
    pub others_in_budget: bool,
}

/// The figures one observation gives.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub non_kv_bytes: Option<u64>,
    pub startup_overhead_bytes: Option<u64>,
    /// How the figures were found, for status and events.
    pub how: String,
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// vLLM's `requested_memory = math.ceil(total * utilization)` (`vllm/v1/worker/utils.py`
/// `request_memory` [33]; 0.11 uses the float without `ceil`, at most one byte less).
fn requested_bytes(total: u64, utilization: f64) -> u64 {
    let r = (total as f64 * utilization.clamp(0.0, 1.0)).ceil();
    if r >= u64::MAX as f64 {
        u64::MAX
    } else {
        r as u64
    }
}

/// Turn one observation into figures:
///
/// - vLLM reported the KV memory it had after profiling (its failure message, or its log):
///   `non_kv = requested - available`, exact (to the message's rounding);
/// - vLLM runs and reports its KV cache (blocks times block bytes): `non_kv <= requested -
///   kv_cache`, since vLLM floors the blocks; the bound is above the truth by less than a
///   block, so it is the conservative figure;
/// - the launcher's free memory and vLLM's own free memory at its snapshot give the startup
///   overhead.
///
/// The node agent's per-pod used bytes are not learned from: vLLM frees its profiling peak
/// after the profile run, so they under-count the non-KV memory vLLM budgets.
pub fn measure(observed: &Observed, planned: &Planned) -> Option<Measurement> {
    if planned.others_in_budget {
        return None;
    }
    let total = observed.total_bytes.unwrap_or(planned.cuda_total_bytes);
    let u = observed.utilization.unwrap_or(planned.utilization);
    let requested = requested_bytes(total, u);
    let mut how = Vec::new();
    let non_kv = if let Some(avail) = observed.kv_available_bytes {
        how.push(format!(
            "vLLM had {:.2} GiB for KV cache of {:.2} GiB requested (u {u:.2} of {:.2} GiB): non-KV {:.2} GiB",
            gib(avail),
            gib(requested),
            gib(total),
            gib(requested.saturating_sub(avail))
        ));
        Some(requested.saturating_sub(avail))
    } else if let Some(kv) = observed.kv_cache_bytes {
        how.push(format!(
            "vLLM allocated {:.2} GiB of KV cache of {:.2} GiB requested: non-KV at most {:.2} GiB",
            gib(kv),
            gib(requested),
            gib(requested.saturating_sub(kv))
        ));
        Some(requested.saturating_sub(kv))
    } else {
        None
    };
    let overhead = match (
        observed.free_bytes_at_start,
        observed.launcher_free_bytes.iter().max(),
    ) {
        (Some(at_start), Some(before)) if *before >= at_start => {
            let o = before - at_start;
            how.push(format!(
                "{:.2} GiB free before exec, {:.2} GiB at vLLM's snapshot: startup overhead {:.2} GiB",
                gib(*before),
                gib(at_start),
                gib(o)
            ));
            Some(o)
        }
        _ => None,
    };
    if non_kv.is_none() && overhead.is_none() {
        return None;
    }
    Some(Measurement {
        non_kv_bytes: non_kv,
        startup_overhead_bytes: overhead,
        how: how.join("; "),
    })
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// The learning rule: fold one observation into a measured profile's figures. Observations
/// combine by their maximum, never an average that an optimistic start could pull down. A new
/// profile takes the plan's non-KV figure when the observation only measured the overhead.
/// Returns `None` when the observation gives no figure, or when `existing` is `Manual` (its
/// figures are a person's; see [`record`] for its status).
pub fn learn(
    existing: Option<&MemoryProfileSpec>,
    key: &ProfileKey,
    observed: &Observed,
    planned: &Planned,
) -> Option<MemoryProfileSpec> {
    let m = measure(observed, planned)?;
    match existing {
        Some(e) if e.source == ProfileSource::Manual => None,
        Some(e) => Some(MemoryProfileSpec {
            non_kv_bytes_per_gpu: e.non_kv_bytes_per_gpu.max(m.non_kv_bytes.unwrap_or(0)),
            startup_overhead_bytes: max_opt(e.startup_overhead_bytes, m.startup_overhead_bytes),
            observations: e.observations.saturating_add(1),
            ..e.clone()
        }),
        None => Some(MemoryProfileSpec {
            model: key.model.clone(),
            revision: key.revision.clone(),
            image: key.image.clone(),
            gpu_product: key.gpu_product.clone(),
            tensor_parallel_size: key.tensor_parallel_size,
            quantization: key.quantization,
            kv_cache_dtype: key.kv_cache_dtype,
            non_kv_bytes_per_gpu: m.non_kv_bytes.unwrap_or(planned.non_kv_bytes),
            startup_overhead_bytes: m.startup_overhead_bytes,
            observations: 1,
            source: ProfileSource::Measured,
        }),
    }
}

/// Record one pod's observation in its profile, once per pod: the profile object to create or
/// update, or `None` when there is nothing new (no figure, or the pod was counted already). A
/// `Measured` profile's spec takes the learned figures; a `Manual` profile's spec is left as
/// written and only its status records what was observed.
pub fn record(
    existing: Option<&MemoryProfile>,
    key: &ProfileKey,
    observed: &Observed,
    planned: &Planned,
    pod: &str,
) -> Option<MemoryProfile> {
    let mut status = existing.and_then(|p| p.status.clone()).unwrap_or_default();
    if status.recent_pods.iter().any(|p| p == pod) {
        return None;
    }
    let m = measure(observed, planned)?;
    let spec = match existing {
        Some(e) if e.spec.source == ProfileSource::Manual => e.spec.clone(),
        _ => learn(existing.map(|p| &p.spec), key, observed, planned)?,
    };
    status.observations = status.observations.saturating_add(1);
    status.observed_non_kv_bytes_per_gpu =
        max_opt(status.observed_non_kv_bytes_per_gpu, m.non_kv_bytes);
    status.observed_startup_overhead_bytes = max_opt(
        status.observed_startup_overhead_bytes,
        m.startup_overhead_bytes,
    );
    status.last_observation = Some(format!("{pod}: {}", m.how));
    status.recent_pods.push(pod.to_string());
    let extra = status.recent_pods.len().saturating_sub(RECENT_PODS);
    status.recent_pods.drain(..extra);
    let metadata = match existing {
        Some(e) => e.metadata.clone(),
        None => ObjectMeta {
            name: Some(profile_name(key)),
            ..Default::default()
        },
    };
    Some(MemoryProfile {
        metadata,
        spec,
        status: Some(status),
    })
}

/// The figures the planner takes from a profile, margins included.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ProfileUse {
    /// The profile's object name.
    pub name: String,
    pub source: ProfileSource,
    pub observations: u32,
    /// Measured non-KV bytes per GPU, before the margin.
    pub measured_non_kv_bytes: u64,
    /// What the planner counts: measured plus [`non_kv_with_margin`]'s margin.
    pub non_kv_bytes: u64,
    /// Measured startup overhead plus its margin, when measured.
    pub startup_overhead_bytes: Option<u64>,
}

/// The figures of one profile: its spec's, never below what the controller observed (its
/// status), so a hand-written figure that a start has proven too small is not planned again.
pub fn figures(p: &MemoryProfile) -> ProfileUse {
    let observed = p.status.as_ref();
    let non_kv = p.spec.non_kv_bytes_per_gpu.max(
        observed
            .and_then(|s| s.observed_non_kv_bytes_per_gpu)
            .unwrap_or(0),
    );
    let overhead = max_opt(
        p.spec.startup_overhead_bytes,
        observed.and_then(|s| s.observed_startup_overhead_bytes),
    );
    ProfileUse {
        name: p.metadata.name.clone().unwrap_or_default(),
        source: p.spec.source,
        observations: p.spec.observations,
        measured_non_kv_bytes: non_kv,
        non_kv_bytes: non_kv_with_margin(non_kv),
        startup_overhead_bytes: overhead.map(overhead_with_margin),
    }
}

/// Every profile the planner may use, by key. Two objects with one key (a hand-written one
/// beside the controller's, under another name): a `Manual` one wins, then the larger figure.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profiles {
    by_key: BTreeMap<ProfileKey, MemoryProfile>,
}

impl Profiles {
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a MemoryProfile>) -> Self {
        let mut out = Profiles::default();
        for p in objects {
            out.insert(p.clone());
        }
        out
    }

    /// Add or replace a profile (see the type's rule for two objects with one key).
    pub fn insert(&mut self, p: MemoryProfile) {
        let key = ProfileKey::of(&p.spec);
        let keep_old = self.by_key.get(&key).is_some_and(|old| {
            old.metadata.name != p.metadata.name
                && (old.spec.source, figures(old).measured_non_kv_bytes)
                    > (p.spec.source, figures(&p).measured_non_kv_bytes)
        });
        if !keep_old {
            self.by_key.insert(key, p);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn get(&self, key: &ProfileKey) -> Option<&MemoryProfile> {
        self.by_key.get(key)
    }

    /// The planner's figures for `key`.
    pub fn lookup(&self, key: &ProfileKey) -> Option<ProfileUse> {
        self.get(key).map(figures)
    }

    pub fn iter(&self) -> impl Iterator<Item = &MemoryProfile> {
        self.by_key.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn key() -> ProfileKey {
        ProfileKey {
            model: "meta-llama/Llama-3.1-8B-Instruct".into(),
            revision: None,
            image: "vllm/vllm-openai:v0.33.0".into(),
            gpu_product: "NVIDIA A10".into(),
            tensor_parallel_size: 1,
            quantization: Quantization::None,
            kv_cache_dtype: KvCacheDtype::Auto,
        }
    }

    fn planned() -> Planned {
        Planned {
            utilization: 0.9,
            cuda_total_bytes: 22 * GIB,
            non_kv_bytes: 16 * GIB,
            others_in_budget: false,
        }
    }

    #[test]
    fn name_is_a_short_stable_subdomain_and_differs_per_key() {
        let a = profile_name(&key());
        assert!(a.starts_with("llama-3-1-8b-instruct-a10-tp1-"), "{a}");
        assert!(a.len() <= 100);
        assert!(crate::validate::dns1123_subdomain(&a).is_ok(), "{a}");
        assert_eq!(a, profile_name(&key()));
        let mut other = key();
        other.kv_cache_dtype = KvCacheDtype::Fp8;
        assert_ne!(a, profile_name(&other));
        let weird = ProfileKey {
            model: "///".into(),
            gpu_product: "".into(),
            ..key()
        };
        assert!(crate::validate::dns1123_subdomain(&profile_name(&weird)).is_ok());
    }

    /// vLLM's "available KV cache memory (Y GiB)" at u 0.9 of 22 GiB: non-KV is the rest.
    #[test]
    fn failure_message_figures_give_non_kv() {
        let obs = Observed {
            kv_available_bytes: Some(GIB),
            total_bytes: Some(22 * GIB),
            ..Default::default()
        };
        let spec = learn(None, &key(), &obs, &planned()).unwrap();
        let requested = (22.0 * GIB as f64 * 0.9).ceil() as u64;
        assert_eq!(spec.non_kv_bytes_per_gpu, requested - GIB);
        assert_eq!(spec.observations, 1);
        assert_eq!(spec.source, ProfileSource::Measured);
    }

    #[test]
    fn observations_combine_by_maximum() {
        let high = Observed {
            kv_cache_bytes: Some(GIB),
            ..Default::default()
        };
        let low = Observed {
            kv_cache_bytes: Some(3 * GIB),
            ..Default::default()
        };
        let first = learn(None, &key(), &high, &planned()).unwrap();
        let second = learn(Some(&first), &key(), &low, &planned()).unwrap();
        assert_eq!(second.non_kv_bytes_per_gpu, first.non_kv_bytes_per_gpu);
        assert_eq!(second.observations, 2);
    }

    #[test]
    fn overhead_from_launcher_and_vllm_free_memory() {
        let obs = Observed {
            free_bytes_at_start: Some(20 * GIB),
            launcher_free_bytes: vec![20 * GIB + 600 * MIB],
            ..Default::default()
        };
        let spec = learn(None, &key(), &obs, &planned()).unwrap();
        assert_eq!(spec.startup_overhead_bytes, Some(600 * MIB));
        // Nothing measured the non-KV memory: the plan's figure stands.
        assert_eq!(spec.non_kv_bytes_per_gpu, 16 * GIB);
    }

    #[test]
    fn nothing_measured_nothing_learned() {
        assert!(learn(None, &key(), &Observed::default(), &planned()).is_none());
        let obs = Observed {
            used_bytes_per_gpu: Some(20 * GIB),
            ..Default::default()
        };
        assert!(learn(None, &key(), &obs, &planned()).is_none());
        let mut p = planned();
        p.others_in_budget = true;
        let obs = Observed {
            kv_cache_bytes: Some(GIB),
            ..Default::default()
        };
        assert!(learn(None, &key(), &obs, &p).is_none());
    }

    #[test]
    fn manual_profiles_keep_their_spec_and_record_in_status() {
        let obs = Observed {
            kv_cache_bytes: Some(GIB),
            ..Default::default()
        };
        let mut manual = record(None, &key(), &obs, &planned(), "ns/a").unwrap();
        manual.spec.source = ProfileSource::Manual;
        manual.spec.non_kv_bytes_per_gpu = 10 * GIB;
        manual.status = None;
        assert!(learn(Some(&manual.spec), &key(), &obs, &planned()).is_none());
        let after = record(Some(&manual), &key(), &obs, &planned(), "ns/b").unwrap();
        assert_eq!(after.spec, manual.spec);
        let st = after.status.clone().unwrap();
        assert_eq!(st.observations, 1);
        assert!(st.observed_non_kv_bytes_per_gpu.unwrap() > 10 * GIB);
        // The planner never plans below what was observed.
        assert_eq!(
            figures(&after).measured_non_kv_bytes,
            st.observed_non_kv_bytes_per_gpu.unwrap()
        );
    }

    #[test]
    fn a_pod_is_counted_once() {
        let obs = Observed {
            kv_cache_bytes: Some(GIB),
            ..Default::default()
        };
        let p = record(None, &key(), &obs, &planned(), "ns/a").unwrap();
        assert!(record(Some(&p), &key(), &obs, &planned(), "ns/a").is_none());
        let mut q = p.clone();
        for i in 0..40 {
            q = record(Some(&q), &key(), &obs, &planned(), &format!("ns/p{i}")).unwrap();
        }
        let st = q.status.unwrap();
        assert_eq!(st.recent_pods.len(), RECENT_PODS);
        assert_eq!(st.observations, 41);
        assert_eq!(q.spec.observations, 41);
    }

    #[test]
    fn margin_is_added_and_saturates() {
        assert_eq!(non_kv_with_margin(0), NON_KV_MARGIN_BYTES);
        assert_eq!(non_kv_with_margin(u64::MAX), u64::MAX);
        assert_eq!(overhead_with_margin(u64::MAX), u64::MAX);
    }
}
