//! When to write the GpuNode (a pure decision) and what to write.

mod apply;

use std::collections::BTreeSet;
use std::time::Duration;

pub use apply::{
    CALL_TIMEOUT, FIELD_MANAGER, NODE_REFRESH, PublishError, Publisher, object_patch, status_patch,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use vllm_operator::api::{GpuInfo, GpuNodeStatus};

const GIB: f64 = (1u64 << 30) as f64;

/// When a change is worth an API write.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub bytes: u64,
    pub percent: f64,
    pub heartbeat: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            bytes: 256 << 20,
            percent: 1.0,
            heartbeat: Duration::from_secs(30),
        }
    }
}

impl Thresholds {
    /// max(bytes, percent % of total) for one GPU.
    pub fn free_delta_bytes(&self, total_bytes: u64) -> u64 {
        let pct = (total_bytes as f64 * self.percent / 100.0) as u64;
        self.bytes.max(pct)
    }
}

/// Why the agent writes now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishReason {
    First,
    GpuSetChanged,
    FreeMoved { uuid: String, delta_bytes: u64 },
    ProcessesChanged { uuid: String },
    AllocationChanged { uuid: String },
    ConditionsChanged,
    Heartbeat,
}

/// The pure publish rule: compare what was last written with what NVML reads now.
pub fn publish_reason(
    last: Option<&[GpuInfo]>,
    current: &[GpuInfo],
    conditions_changed: bool,
    since_last: Duration,
    thresholds: &Thresholds,
) -> Option<PublishReason> {
    let Some(last) = last else {
        return Some(PublishReason::First);
    };
    let uuids = |gpus: &[GpuInfo]| gpus.iter().map(|g| g.uuid.clone()).collect::<Vec<_>>();
    if uuids(last) != uuids(current) {
        return Some(PublishReason::GpuSetChanged);
    }
    for (old, new) in last.iter().zip(current) {
        let delta_bytes = old.memory.free_bytes.abs_diff(new.memory.free_bytes);
        if delta_bytes > thresholds.free_delta_bytes(new.memory.total_bytes) {
            return Some(PublishReason::FreeMoved {
                uuid: new.uuid.clone(),
                delta_bytes,
            });
        }
        let pids = |g: &GpuInfo| g.processes.iter().map(|p| p.pid).collect::<BTreeSet<_>>();
        if pids(old) != pids(new) {
            return Some(PublishReason::ProcessesChanged {
                uuid: new.uuid.clone(),
            });
        }
        if old.allocated_to != new.allocated_to {
            return Some(PublishReason::AllocationChanged {
                uuid: new.uuid.clone(),
            });
        }
    }
    if conditions_changed {
        return Some(PublishReason::ConditionsChanged);
    }
    (since_last >= thresholds.heartbeat).then_some(PublishReason::Heartbeat)
}

/// `"91.3/640.0 GiB free, max 79.1"`: free over total on physical GPUs, and the most on one.
pub fn free_summary(gpus: &[GpuInfo]) -> Option<String> {
    let physical = gpus.iter().filter(|g| g.parent_uuid.is_none());
    let (mut free, mut total, mut max) = (0u64, 0u64, 0u64);
    let mut any = false;
    for g in physical {
        any = true;
        free += g.memory.free_bytes;
        total += g.memory.total_bytes;
        max = max.max(g.memory.free_bytes);
    }
    any.then(|| {
        format!(
            "{:.1}/{:.1} GiB free, max {:.1}",
            free as f64 / GIB,
            total as f64 / GIB,
            max as f64 / GIB
        )
    })
}

/// One condition as the agent sees it now; `last_transition_time` is kept by `Conditions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionState {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

/// The agent's conditions, with transition times that move only when the status flips.
#[derive(Clone, Debug, Default)]
pub struct Conditions {
    current: Vec<Condition>,
}

impl Conditions {
    /// Sets one condition; returns true when status, reason or message changed.
    pub fn set(&mut self, state: ConditionState, now: Timestamp) -> bool {
        let status = if state.ok { "True" } else { "False" }.to_string();
        match self.current.iter_mut().find(|c| c.type_ == state.type_) {
            Some(c) => {
                let changed =
                    c.status != status || c.reason != state.reason || c.message != state.message;
                if c.status != status {
                    c.last_transition_time = Time(now);
                }
                c.status = status;
                c.reason = state.reason;
                c.message = state.message;
                changed
            }
            None => {
                self.current.push(Condition {
                    type_: state.type_.to_string(),
                    status,
                    reason: state.reason,
                    message: state.message,
                    last_transition_time: Time(now),
                    observed_generation: None,
                });
                true
            }
        }
    }

    pub fn to_vec(&self) -> Vec<Condition> {
        self.current.clone()
    }
}

/// The status body the agent applies.
pub fn build_status(
    node_name: &str,
    driver_version: Option<String>,
    gpus: Vec<GpuInfo>,
    conditions: Vec<Condition>,
    observed_at: Timestamp,
) -> GpuNodeStatus {
    GpuNodeStatus {
        node_name: node_name.to_string(),
        observed_at: observed_at.to_string(),
        driver_version,
        sharing: Default::default(),
        sharing_strategy: None,
        replicas_per_gpu: None,
        conditions,
        gpu_count: gpus.len() as u32,
        free_summary: free_summary(&gpus),
        gpus,
    }
}

#[cfg(test)]
mod tests;
