//! MemoryProfile objects, as the controller reads them from the API server and `plan`,
//! `simulate` and `render` read them from fleet files: the same rules for both, so a profile
//! one of them accepts is accepted by all.
//!
//! The CRD's own rules (`src/api/profile.rs`: non-empty model, image and GPU product, tensor
//! parallel size 1 to 64, string lengths, at most 16 recent pods) are checked again here: a file
//! never went through the API server, and an object stored before a rule existed may break it.

use std::collections::BTreeSet;

use super::{Problem, dns1123_subdomain};
use crate::api::MemoryProfile;

/// The largest per-GPU figure a profile may state: 1 PiB. No GPU has a thousandth of it; a
/// larger number is a typo (or bytes written where KiB were meant), and keeping figures below
/// 2^50 leaves every sum the planner forms with them far inside `u64`.
pub const MAX_PROFILE_BYTES: u64 = 1 << 50;

/// Lengths from the CRD's schema (`#[schemars(length(max = ...))]` in `src/api/profile.rs`).
const MAX_NAME_FIELD: usize = 253;
const MAX_IMAGE: usize = 1024;
const MAX_TP: u32 = 64;
const MAX_RECENT_PODS: usize = crate::profile::RECENT_PODS;

/// One MemoryProfile: its name, its key fields and its figures. The name need not be the one
/// [`crate::profile::profile_name`] gives its key: a platform team may name a hand-written
/// profile as it likes, and the planner matches profiles by key, not name.
pub fn memory_profile(p: &MemoryProfile) -> Vec<Problem> {
    let mut out = Vec::new();
    match p.metadata.name.as_deref() {
        None | Some("") => out.push(Problem::new("metadata.name", "required")),
        Some(name) => {
            if let Err(e) = dns1123_subdomain(name) {
                out.push(Problem::new("metadata.name", e));
            }
        }
    }
    let s = &p.spec;
    for (field, value, max) in [
        ("spec.model", Some(s.model.as_str()), MAX_NAME_FIELD),
        ("spec.revision", s.revision.as_deref(), MAX_NAME_FIELD),
        ("spec.image", Some(s.image.as_str()), MAX_IMAGE),
        (
            "spec.gpuProduct",
            Some(s.gpu_product.as_str()),
            MAX_NAME_FIELD,
        ),
    ] {
        let Some(value) = value else { continue };
        if value.trim().is_empty() {
            out.push(Problem::new(field, "must not be empty"));
        } else if value.len() > max {
            out.push(Problem::new(
                field,
                format!("{} characters, more than {max}", value.len()),
            ));
        }
    }
    if !(1..=MAX_TP).contains(&s.tensor_parallel_size) {
        out.push(Problem::new(
            "spec.tensorParallelSize",
            format!("{} is not between 1 and {MAX_TP}", s.tensor_parallel_size),
        ));
    }
    let mut bytes = vec![
        ("spec.nonKvBytesPerGpu", Some(s.non_kv_bytes_per_gpu)),
        ("spec.startupOverheadBytes", s.startup_overhead_bytes),
    ];
    if let Some(st) = &p.status {
        bytes.push((
            "status.observedNonKvBytesPerGpu",
            st.observed_non_kv_bytes_per_gpu,
        ));
        bytes.push((
            "status.observedStartupOverheadBytes",
            st.observed_startup_overhead_bytes,
        ));
        if st.recent_pods.len() > MAX_RECENT_PODS {
            out.push(Problem::new(
                "status.recentPods",
                format!("{} pods, more than {MAX_RECENT_PODS}", st.recent_pods.len()),
            ));
        }
    }
    for (field, value) in bytes {
        if let Some(v) = value
            && v > MAX_PROFILE_BYTES
        {
            out.push(Problem::new(
                field,
                format!("{v} bytes per GPU is more than {MAX_PROFILE_BYTES} (1 PiB)"),
            ));
        }
    }
    out
}

/// Across a file: one profile per name (the API server keeps names unique; a file can repeat
/// them, and which one would win is not something to guess). Returns `(name, problem)`.
pub fn memory_profiles(profiles: &[MemoryProfile]) -> Vec<(String, Problem)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for p in profiles {
        let name = p.metadata.name.as_deref().unwrap_or("");
        if !name.is_empty() && !seen.insert(name) {
            out.push((
                name.to_string(),
                Problem::new("metadata.name", "appears twice in the fleet"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{KvCacheDtype, Quantization};
    use crate::api::{MemoryProfileSpec, MemoryProfileStatus, ProfileSource};

    fn good() -> MemoryProfile {
        let mut p = MemoryProfile::new(
            "llama-a10-tp1",
            MemoryProfileSpec {
                model: "meta-llama/Llama-3.1-8B-Instruct".into(),
                revision: None,
                image: "vllm/vllm-openai:v0.33.0".into(),
                gpu_product: "NVIDIA A10".into(),
                tensor_parallel_size: 1,
                quantization: Quantization::None,
                kv_cache_dtype: KvCacheDtype::Auto,
                non_kv_bytes_per_gpu: 17 << 30,
                startup_overhead_bytes: None,
                observations: 1,
                source: ProfileSource::Manual,
            },
        );
        p.status = Some(MemoryProfileStatus::default());
        p
    }

    fn fields(p: &MemoryProfile) -> Vec<String> {
        memory_profile(p).into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn a_good_profile_passes_and_zero_figures_are_figures() {
        assert!(memory_profile(&good()).is_empty());
        let mut p = good();
        p.spec.non_kv_bytes_per_gpu = 0;
        p.spec.startup_overhead_bytes = Some(0);
        assert!(memory_profile(&p).is_empty());
        p.spec.non_kv_bytes_per_gpu = MAX_PROFILE_BYTES;
        assert!(memory_profile(&p).is_empty());
    }

    #[test]
    fn each_broken_field_is_named() {
        let mut p = good();
        p.metadata.name = Some("Not_A_Name".into());
        p.spec.model = " ".into();
        p.spec.image = "x".repeat(1025);
        p.spec.gpu_product = String::new();
        p.spec.tensor_parallel_size = 0;
        p.spec.revision = Some(String::new());
        p.spec.non_kv_bytes_per_gpu = u64::MAX;
        p.spec.startup_overhead_bytes = Some(MAX_PROFILE_BYTES + 1);
        let st = p.status.as_mut().unwrap();
        st.observed_non_kv_bytes_per_gpu = Some(u64::MAX);
        st.recent_pods = (0..17).map(|i| format!("ns/p{i}")).collect();
        assert_eq!(
            fields(&p),
            [
                "metadata.name",
                "spec.model",
                "spec.revision",
                "spec.image",
                "spec.gpuProduct",
                "spec.tensorParallelSize",
                "status.recentPods",
                "spec.nonKvBytesPerGpu",
                "spec.startupOverheadBytes",
                "status.observedNonKvBytesPerGpu",
            ]
        );
        p = good();
        p.metadata.name = None;
        p.spec.tensor_parallel_size = 65;
        assert_eq!(fields(&p), ["metadata.name", "spec.tensorParallelSize"]);
    }

    #[test]
    fn a_name_twice_is_an_error_a_key_twice_is_not() {
        let a = good();
        let mut b = good();
        b.metadata.name = Some("other".into());
        assert!(memory_profiles(&[a.clone(), b]).is_empty());
        let twice = memory_profiles(&[a.clone(), a]);
        assert_eq!(twice.len(), 1);
        assert_eq!(twice[0].0, "llama-a10-tp1");
    }
}
