//! One validation pass for everything that comes from outside the process: VllmDeployments,
//! GpuNodes, Nodes and MemoryProfiles (from the API server or from files), model architectures
//! (inline, from a config.json, from the catalog or the Hub), simulation inputs, and the files
//! themselves.
//!
//! The controller, `plan`, `simulate`, `estimate` and `render` call the same functions, so a
//! deployment that one of them accepts is accepted by all of them. Every check returns
//! [`Problem`]s that name the field; callers add where the object came from (file, document).
//!
//! Bounds are chosen so that every product the estimator forms (layers x heads x head size x
//! tokens, parameters x bytes) stays inside `u64` with room; the arithmetic itself also
//! saturates, so a bound missed here can make a number large but never wrap it.

mod deployment;
mod files;
mod fleet;
mod profile;
mod slice;

use std::fmt;
use std::io::Read;
use std::path::Path;

pub use deployment::{deployment, deployment_with_architecture, long_max_model_len_allowed};
pub use files::{
    FleetFile, actual_from_str, deployments_from_str, external_from_str, fleet_from_str,
    read_actual, read_deployments, read_external, read_fleet,
};
pub use fleet::{fleet, gpunode, node};
pub use profile::{MAX_PROFILE_BYTES, memory_profile, memory_profiles};
pub use slice::{resource_slice, slices_in_fleet};

/// Largest YAML/JSON file the CLI reads (fleet files of thousands of nodes are a few MiB).
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// Largest config.json `estimate --model` reads (real ones are a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Largest launch plan or args file the launcher reads (the controller writes well under 4 KiB).
pub const MAX_PLAN_BYTES: u64 = 1 << 20;

/// Architecture bounds. The largest published models are far inside them (Llama 3.1 405B:
/// 126 layers, hidden 16384, intermediate 53248, vocab 128256; DeepSeek-V3: 256 experts).
pub mod limits {
    pub const MAX_LAYERS: u64 = 1 << 10;
    pub const MAX_HIDDEN_SIZE: u64 = 1 << 17;
    pub const MAX_INTERMEDIATE_SIZE: u64 = 1 << 20;
    pub const MAX_HEADS: u64 = 1 << 12;
    pub const MAX_HEAD_DIM: u64 = 1 << 13;
    pub const MAX_VOCAB_SIZE: u64 = 1 << 22;
    pub const MAX_EXPERTS: u64 = 1 << 14;
    /// Also bounds MLA ranks and quantization group sizes.
    pub const MAX_RANK: u64 = 1 << 17;
    /// Context length a config may state (Llama 4 Scout states 10M).
    pub const MAX_POSITION_EMBEDDINGS: u64 = 1 << 31;
    /// 2^48 parameters (281 trillion): bytes of weights stay below 2^51 in any dtype.
    pub const MAX_PARAMETERS: u64 = 1 << 48;
    /// `maxModelLen` even with `VLLM_ALLOW_LONG_MAX_MODEL_LEN`: tokens x KV bytes per token
    /// stays inside u64 for every architecture within the bounds above.
    pub const MAX_MODEL_LEN: u64 = 1 << 32;
    /// `simulate` bounds: replicas over all deployments, steps, external events.
    pub const MAX_SIM_REPLICAS: u64 = 10_000;
    pub const MAX_SIM_STEPS: u32 = 100_000;
    pub const MAX_SIM_EVENTS: usize = 100_000;
}

/// One thing wrong with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path from the object's root, e.g. `spec.memory.headroom`.
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.message)
    }
}

/// `field `a`: x; field `b`: y`.
pub fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: larger than {limit} bytes, the limit for {what}")]
    TooLarge {
        path: String,
        limit: u64,
        what: &'static str,
    },
    #[error("{path}: not UTF-8 text")]
    NotText { path: String },
}

/// Read a whole text file, refusing more than `limit` bytes (`/dev/zero`, a log file by
/// mistake) before holding them in memory.
pub fn read_text(path: &Path, limit: u64, what: &'static str) -> Result<String, ReadError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| ReadError::Io {
        path: shown.clone(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| ReadError::Io {
            path: shown.clone(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            path: shown,
            limit,
            what,
        });
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotText { path: shown })
}

/// A DNS-1123 label: what Kubernetes requires of namespaces and label-like names.
/// Kubernetes: staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go
/// (`IsDNS1123Label`: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63).
pub fn dns1123_label(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    ok.then_some(()).ok_or_else(|| {
        format!(
            "{value:?} is not a DNS-1123 label (lower case letters, digits and '-', starting and ending with a letter or digit, at most 63)"
        )
    })
}

/// A DNS-1123 subdomain: what Kubernetes requires of most object names (Nodes, GpuNodes).
/// Kubernetes: apimachinery validation.go (`IsDNS1123Subdomain`, at most 253).
pub fn dns1123_subdomain(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|l| dns1123_label(l).is_ok());
    ok.then_some(()).ok_or_else(|| {
        format!(
            "{value:?} is not a DNS-1123 subdomain (lower case letters, digits, '-' and '.', at most 253)"
        )
    })
}

/// A DNS-1035 label: what Kubernetes requires of a Service name, which the controller names
/// after the deployment. Kubernetes: apimachinery validation.go (`IsDNS1035Label`:
/// `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63); pkg/apis/core/validation/validation.go
/// (`ValidateServiceName = apimachineryvalidation.NameIsDNS1035Label`).
pub fn dns1035_label(value: &str) -> Result<(), String> {
    let ok = dns1123_label(value).is_ok() && value.starts_with(|c: char| c.is_ascii_lowercase());
    ok.then_some(()).ok_or_else(|| {
        format!(
            "{value:?} is not a DNS-1035 label (lower case letters, digits and '-', starting with a letter, ending with a letter or digit, at most 63)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_kubernetes_rules() {
        assert!(dns1123_label("llama-8b").is_ok());
        assert!(dns1123_label("8b").is_ok());
        assert!(dns1123_label("Llama").is_err());
        assert!(dns1123_label("-a").is_err());
        assert!(dns1123_label(&"a".repeat(64)).is_err());
        assert!(dns1035_label("8b").is_err());
        assert!(dns1035_label("a8").is_ok());
        assert!(dns1123_subdomain("gpu-1.example.com").is_ok());
        assert!(dns1123_subdomain("a..b").is_err());
        assert!(dns1123_subdomain("").is_err());
    }

    #[test]
    fn read_text_stops_at_the_limit() {
        let err = read_text(Path::new("/dev/zero"), 1024, "a test").unwrap_err();
        assert!(
            matches!(err, ReadError::TooLarge { limit: 1024, .. }),
            "{err}"
        );
        let err = read_text(Path::new("/no/such/file"), 1024, "a test").unwrap_err();
        assert!(err.to_string().contains("No such file"), "{err}");
    }
}
