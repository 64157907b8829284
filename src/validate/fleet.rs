//! GpuNode and Node reports: what NVML and the kubelet can produce, and nothing else. A fleet
//! file that breaks these rules describes no machine, and planning against it would count
//! memory twice or not at all.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;

use super::{Problem, dns1123_subdomain};
use crate::api::GpuNode;

/// One GpuNode: a name, a report time inside the calendar, and GPUs whose numbers add up.
pub fn gpunode(g: &GpuNode) -> Vec<Problem> {
    let mut out = Vec::new();
    match g.metadata.name.as_deref() {
        None | Some("") => out.push(Problem::new(
            "metadata.name",
            "required (a GpuNode is named after its node)",
        )),
        Some(name) => {
            if let Err(e) = dns1123_subdomain(name) {
                out.push(Problem::new("metadata.name", e));
            }
        }
    }
    let Some(s) = &g.status else {
        return out;
    };
    // jiff refuses what is outside -9999..=9999; a time the simulation cannot step past is
    // caught where it steps.
    if let Err(e) = s.observed_at.parse::<Timestamp>() {
        out.push(Problem::new(
            "status.observedAt",
            format!("{:?} is not an RFC 3339 time: {e}", s.observed_at),
        ));
    }
    let mut indices = BTreeSet::new();
    let mut uuids = BTreeSet::new();
    for (i, gpu) in s.gpus.iter().enumerate() {
        let at = |f: &str| format!("status.gpus[{i}].{f}");
        let m = &gpu.memory;
        if m.total_bytes == 0 {
            out.push(Problem::new(at("memory.totalBytes"), "must be positive"));
        }
        for (name, v) in [
            ("freeBytes", m.free_bytes),
            ("usedBytes", m.used_bytes),
            ("reservedBytes", m.reserved_bytes),
        ] {
            if v > m.total_bytes {
                out.push(Problem::new(
                    at(&format!("memory.{name}")),
                    format!("{v} is more than totalBytes {}", m.total_bytes),
                ));
            }
        }
        // NVML reports free + used (+ reserved, v2) = total; more than total is no reading.
        if m.free_bytes
            .checked_add(m.used_bytes)
            .is_none_or(|s| s > m.total_bytes)
        {
            out.push(Problem::new(
                at("memory"),
                format!(
                    "freeBytes {} + usedBytes {} is more than totalBytes {}",
                    m.free_bytes, m.used_bytes, m.total_bytes
                ),
            ));
        }
        let mut processes: u64 = 0;
        for p in &gpu.processes {
            processes = processes.saturating_add(p.used_bytes);
        }
        if processes > m.total_bytes {
            out.push(Problem::new(
                at("processes"),
                format!(
                    "processes use {processes} bytes, more than totalBytes {}",
                    m.total_bytes
                ),
            ));
        }
        if gpu.uuid.trim().is_empty() {
            out.push(Problem::new(at("uuid"), "must not be empty"));
        } else if !uuids.insert(gpu.uuid.as_str()) {
            out.push(Problem::new(
                at("uuid"),
                format!("{} appears twice on this node", gpu.uuid),
            ));
        }
        // MIG devices carry their parent's index; whole GPUs have one each.
        if gpu.parent_uuid.is_none() && !indices.insert(gpu.index) {
            out.push(Problem::new(
                at("index"),
                format!(
                    "GPU index {} appears twice on this node: the kubelet hands out one device per index",
                    gpu.index
                ),
            ));
        }
        if crate::plan::fleet::parse_compute_capability(&gpu.compute_capability).is_none() {
            out.push(Problem::new(
                at("computeCapability"),
                format!("{:?} is not MAJOR.MINOR", gpu.compute_capability),
            ));
        }
    }
    out
}

/// One Node: a name, and an `nvidia.com/gpu` allocatable that is a count.
pub fn node(n: &Node) -> Vec<Problem> {
    let mut out = Vec::new();
    match n.metadata.name.as_deref() {
        None | Some("") => out.push(Problem::new("metadata.name", "required")),
        Some(name) => {
            if let Err(e) = dns1123_subdomain(name) {
                out.push(Problem::new("metadata.name", e));
            }
        }
    }
    if let Some(q) = n
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get("nvidia.com/gpu"))
        && q.0.parse::<u32>().is_err()
    {
        out.push(Problem::new(
            "status.allocatable.nvidia.com/gpu",
            format!("{:?} is not a whole number of GPUs", q.0),
        ));
    }
    out
}

/// Across the fleet: one GpuNode and one Node per name (the API server keeps names unique,
/// a file can repeat them), and each GPU UUID on one node only. Returns `(kind, name, problem)`.
pub fn fleet(gpunodes: &[GpuNode], nodes: &[Node]) -> Vec<(&'static str, String, Problem)> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut uuid_node: BTreeMap<&str, &str> = BTreeMap::new();
    for g in gpunodes {
        let name = g.metadata.name.as_deref().unwrap_or("");
        if !name.is_empty() && !seen.insert(name) {
            out.push((
                "GpuNode",
                name.to_string(),
                Problem::new("metadata.name", "appears twice in the fleet"),
            ));
        }
        for gpu in g.status.iter().flat_map(|s| s.gpus.iter()) {
            if gpu.uuid.is_empty() {
                continue;
            }
            if let Some(other) = uuid_node.insert(gpu.uuid.as_str(), name)
                && other != name
            {
                out.push((
                    "GpuNode",
                    name.to_string(),
                    Problem::new(
                        "status.gpus",
                        format!("GPU {} is also reported by GpuNode {other}", gpu.uuid),
                    ),
                ));
            }
        }
    }
    let mut seen = BTreeSet::new();
    for n in nodes {
        let name = n.metadata.name.as_deref().unwrap_or("");
        if !name.is_empty() && !seen.insert(name) {
            out.push((
                "Node",
                name.to_string(),
                Problem::new("metadata.name", "appears twice in the fleet"),
            ));
        }
    }
    out
}
