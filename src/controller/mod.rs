//! The controller: reconcile VllmDeployments into gated, placed, launched vLLM pods.

pub mod decide;
pub mod failures;
