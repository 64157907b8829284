//! vllm-operator: places vLLM model servers on GPUs by measured free memory, so that none dies
//! of vLLM's startup memory check.

pub mod api;
pub mod cli;
pub mod controller;
pub mod crdgen;
pub mod fit;
pub mod manifest;
pub mod model;
pub mod ops;
pub mod plan;
pub mod profile;
pub mod quantity;
pub mod sim;
pub mod validate;
