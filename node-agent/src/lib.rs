//! vllm-node-agent: NVML on each GPU node into the cluster (`run`), what NVML sees (`probe`),
//! and the in-pod launcher that fixes `--gpu-memory-utilization` at the last moment (`launch`).

pub mod agent;
pub mod launch;
pub mod metrics;
pub mod nvml;
pub mod podresources;
pub mod publish;
pub mod selfstat;
