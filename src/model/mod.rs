//! What a model needs on each GPU, as vLLM counts it.

pub mod arch;
pub mod catalog;
pub mod checkpoint;
pub mod context;
pub mod estimate;
pub mod family;
pub mod hub;
pub mod resolve;

pub use arch::{Architecture, ArchitectureError};
pub use estimate::{
    Estimate, GpuFacts, InvalidShape, KvCache, Shape, VllmFamily, estimate, validate_shape,
};
