//! The custom resources of `vllm-operator.io/v1alpha1` and the enums they share.

// kube's `printcolumn(...)` repeats `type_ = ...` per column; clippy reads that as a duplicate.
#[allow(clippy::duplicated_attributes)]
mod deployment;
#[allow(clippy::duplicated_attributes)]
mod gpunode;
#[allow(clippy::duplicated_attributes)]
mod profile;

use std::fmt;

pub use deployment::*;
pub use gpunode::*;
pub use profile::*;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "vllm-operator.io";

/// A vLLM `--quantization` method the planner may choose.
#[derive(
    schemars::JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    /// The checkpoint's own dtype (bf16/fp16).
    #[default]
    None,
    /// FP8: W8A8 on compute capability 8.9+, weight-only FP8 Marlin on 8.0+ (7.5+ from vLLM
    /// 0.14). On an unquantized checkpoint vLLM quantizes online (`--quantization fp8`, or
    /// `fp8_per_tensor` from 0.31); a checkpoint already in fp8 needs no flag.
    Fp8,
    /// 4-bit AWQ checkpoint.
    Awq,
    /// 4-bit AWQ checkpoint with Marlin kernels (compute capability 8.0+).
    AwqMarlin,
    /// 4-bit GPTQ checkpoint.
    Gptq,
    /// 4-bit GPTQ checkpoint with Marlin kernels (compute capability 8.0+).
    GptqMarlin,
    /// In-flight 4-bit NF4 of every linear layer (compute capability 7.0+); vLLM up to 0.27.
    Bitsandbytes,
}

impl Quantization {
    pub const ALL: [Quantization; 7] = [
        Quantization::None,
        Quantization::Fp8,
        Quantization::Awq,
        Quantization::AwqMarlin,
        Quantization::Gptq,
        Quantization::GptqMarlin,
        Quantization::Bitsandbytes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Quantization::None => "none",
            Quantization::Fp8 => "fp8",
            Quantization::Awq => "awq",
            Quantization::AwqMarlin => "awq_marlin",
            Quantization::Gptq => "gptq",
            Quantization::GptqMarlin => "gptq_marlin",
            Quantization::Bitsandbytes => "bitsandbytes",
        }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Quantization {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantization::ALL
            .into_iter()
            .find(|q| q.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Quantization::ALL.iter().map(|q| q.as_str()).collect();
                format!("unknown quantization {s:?} (known: {})", known.join(", "))
            })
    }
}

/// A vLLM `--kv-cache-dtype`.
#[derive(
    schemars::JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
)]
#[serde(rename_all = "snake_case")]
pub enum KvCacheDtype {
    /// The model's dtype.
    #[default]
    Auto,
    Fp8,
    Fp8E4m3,
    Fp8E5m2,
}

impl KvCacheDtype {
    pub const ALL: [KvCacheDtype; 4] = [
        KvCacheDtype::Auto,
        KvCacheDtype::Fp8,
        KvCacheDtype::Fp8E4m3,
        KvCacheDtype::Fp8E5m2,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KvCacheDtype::Auto => "auto",
            KvCacheDtype::Fp8 => "fp8",
            KvCacheDtype::Fp8E4m3 => "fp8_e4m3",
            KvCacheDtype::Fp8E5m2 => "fp8_e5m2",
        }
    }
}

impl fmt::Display for KvCacheDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KvCacheDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KvCacheDtype::ALL
            .into_iter()
            .find(|q| q.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = KvCacheDtype::ALL.iter().map(|q| q.as_str()).collect();
                format!("unknown kv cache dtype {s:?} (known: {})", known.join(", "))
            })
    }
}

/// Whether a GPU is handed to one pod (`Exclusive`) or time-sliced / MPS-shared (`Shared`).
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default,
)]
pub enum Sharing {
    #[default]
    Exclusive,
    Shared,
}
