//! The controller: reconcile VllmDeployments into gated, placed, launched vLLM pods.

pub mod apply;
pub mod claim;
pub mod context;
pub mod decide;
pub mod failures;
pub mod leader;
pub mod metrics;
pub mod model_source;
pub mod observe;
pub mod pod;
pub mod reconcile;
pub mod runner;
pub mod service;
pub mod view;
pub mod weights;
