//! Refusal reasons: why each node could not take a replica, condensed to lines a person can act
//! on, and what would make it fit.

use std::collections::BTreeMap;

use super::fleet::{Fleet, Gpu};
use super::{Decision, Ledger, Request, gib, plan_inner, shape_words};
use crate::api::{KvCacheDtype, Quantization};
use crate::model::{Architecture, InvalidShape, Shape, checkpoint};

/// How many nodes a refusal names before it summarises the rest.
const MAX_NODE_LINES: usize = 8;

/// A node's memory shortfall, kept as plain numbers: text is only made if the replica is
/// refused, so the per-node cost on the planner's hot path stays a few word copies.
struct MemoryShort<'f> {
    shape: usize,
    gpu: &'f Gpu,
    needed: u64,
    free: u64,
}

#[derive(Default)]
pub(super) struct Rejections<'f> {
    /// Node-level reasons (stale, selectors, taints, no matching GPU), by node.
    node: BTreeMap<&'f str, String>,
    /// Per node, the memory shortfall closest to fitting.
    memory: BTreeMap<&'f str, MemoryShort<'f>>,
    /// Per tensor parallel size: the most GPUs any node had, and where.
    too_few: BTreeMap<u32, (u32, &'f str)>,
    /// Shapes vLLM cannot run (by index into the candidate shapes), with the reason.
    invalid: BTreeMap<usize, InvalidShape>,
}

impl<'f> Rejections<'f> {
    pub(super) fn node(&mut self, node: &'f str, why: String) {
        self.node.insert(node, why);
    }

    /// The node's disk cannot hold the default model cache.
    pub(super) fn disk(&mut self, node: &'f str, need: u64, have: u64, arch: &Architecture) {
        let why = format!(
            "allocatable ephemeral-storage {:.1} GiB is less than the {:.1} GiB the model cache needs (checkpoint {:.1} GiB + {}% + 1 GiB)",
            gib(have),
            gib(need),
            gib(checkpoint::checkpoint_bytes(arch)),
            checkpoint::CACHE_MARGIN_PERCENT,
        );
        self.node(node, why);
    }

    pub(super) fn no_matching_gpu(&mut self, node: &'f str, gpus: usize) {
        let why = if gpus == 0 {
            "reports no GPUs".to_string()
        } else {
            "no usable GPU: all allocated, or none matches spec.gpu.products / minComputeCapability"
                .to_string()
        };
        self.node(node, why);
    }

    pub(super) fn too_few_gpus(&mut self, node: &'f str, tp: u32, have: u32) {
        let e = self.too_few.entry(tp).or_insert((have, node));
        if have > e.0 {
            *e = (have, node);
        }
    }

    pub(super) fn invalid_shape(&mut self, shape: usize, why: &InvalidShape) {
        self.invalid.entry(shape).or_insert_with(|| why.clone());
    }

    pub(super) fn memory(
        &mut self,
        shape: usize,
        node: &'f str,
        gpu: &'f Gpu,
        needed: u64,
        free: u64,
    ) {
        let new = MemoryShort {
            shape,
            gpu,
            needed,
            free,
        };
        let short = |m: &MemoryShort| m.needed.saturating_sub(m.free);
        match self.memory.get(node) {
            Some(cur) if short(cur) <= short(&new) => {}
            _ => {
                self.memory.insert(node, new);
            }
        }
    }

    pub(super) fn lines(&self, shapes: &[Shape]) -> Vec<String> {
        let mut out = Vec::new();
        let words = |i: usize| shapes.get(i).map(shape_words).unwrap_or_default();
        let mut mem: Vec<(&&str, &MemoryShort)> = self.memory.iter().collect();
        mem.sort_by_key(|(name, m)| (m.needed.saturating_sub(m.free), **name));
        for (name, m) in mem.iter().take(MAX_NODE_LINES) {
            let pods: u64 = m
                .gpu
                .processes
                .iter()
                .filter(|(_, _, p)| p.is_some())
                .fold(0u64, |sum, (_, b, _)| sum.saturating_add(*b));
            let mut who = Vec::new();
            if m.gpu.foreign_bytes > 0 {
                who.push(format!(
                    "another process uses {:.1} GiB",
                    gib(m.gpu.foreign_bytes)
                ));
            }
            if pods > 0 {
                who.push(format!("pods use {:.1} GiB", gib(pods)));
            }
            let who = if who.is_empty() {
                String::new()
            } else {
                format!(" ({})", who.join(", "))
            };
            out.push(format!(
                "{name} GPU {}: needs {:.1} GiB free, has {:.1} GiB{who} [{}]",
                m.gpu.index,
                gib(m.needed),
                gib(m.free),
                words(m.shape)
            ));
        }
        if mem.len() > MAX_NODE_LINES {
            out.push(format!(
                "... and {} more nodes short of GPU memory",
                mem.len() - MAX_NODE_LINES
            ));
        }
        // GPU counts only matter for sizes no node could even try.
        if let Some((tp, (have, node))) = self.too_few.iter().next()
            && self.memory.values().all(|m| {
                shapes
                    .get(m.shape)
                    .is_none_or(|s| s.tensor_parallel_size != *tp)
            })
        {
            out.push(format!(
                "no node has {tp} unallocated GPUs (most: {have} on {node})"
            ));
        }
        let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (node, why) in &self.node {
            by_reason.entry(why.as_str()).or_default().push(node);
        }
        for (why, nodes) in by_reason {
            let names = if nodes.len() > 3 {
                format!(
                    "{} and {} more nodes",
                    nodes[..3].join(", "),
                    nodes.len() - 3
                )
            } else {
                nodes.join(", ")
            };
            out.push(format!("{names}: {why}"));
        }
        let mut invalid: BTreeMap<String, &str> = BTreeMap::new();
        for (i, why) in &self.invalid {
            invalid.entry(words(*i)).or_insert(why.0.as_str());
        }
        for (shape, why) in invalid {
            out.push(format!("{shape}: {why}"));
        }
        if out.is_empty() {
            out.push(
                "no GpuNode reports: is the vllm-node-agent DaemonSet running on the GPU nodes?"
                    .to_string(),
            );
        }
        out
    }
}

/// What would make it fit: a quantization, tensor parallel size or KV cache dtype the spec does
/// not allow.
pub(super) fn hints(fleet: &Fleet, ledger: &Ledger, req: &Request) -> Vec<String> {
    let mut out = Vec::new();
    let spec = req.spec;
    let try_spec = |s: crate::api::VllmDeploymentSpec| -> bool {
        let r = Request {
            spec: &s,
            ..req.clone()
        };
        matches!(plan_inner(fleet, ledger, &r, false), Decision::Placed(_))
    };
    for tp in [1, 2, 4, 8, 16] {
        if spec.tensor_parallel.sizes.contains(&tp) {
            continue;
        }
        let mut s = spec.clone();
        s.tensor_parallel.sizes = vec![tp];
        if try_spec(s) {
            out.push(format!(
                "fits with tensor parallel size {tp} (not in spec.tensorParallel.sizes)"
            ));
            break;
        }
    }
    for q in Quantization::ALL {
        if spec.quantization.allowed.contains(&q) {
            continue;
        }
        let mut s = spec.clone();
        s.quantization.allowed = vec![q];
        if try_spec(s) {
            out.push(format!(
                "fits with quantization {q} (not allowed by spec.quantization.allowed)"
            ));
            break;
        }
    }
    if !spec.kv_cache_dtype.allowed.contains(&KvCacheDtype::Fp8) {
        let mut s = spec.clone();
        s.kv_cache_dtype.allowed = vec![KvCacheDtype::Fp8];
        if try_spec(s) {
            out.push(
                "fits with kv cache dtype fp8 (not allowed by spec.kvCacheDtype.allowed)"
                    .to_string(),
            );
        }
    }
    if checkpoint::node_cache_bytes(spec, req.arch).is_some() {
        let mut s = spec.clone();
        s.model_cache = Some(crate::api::ModelCacheSpec {
            ephemeral: Some(Default::default()),
            ..Default::default()
        });
        if try_spec(s) {
            out.push(
                "fits with spec.modelCache.ephemeral or persistentVolumeClaim (the model cache then does not use the node's disk)"
                    .to_string(),
            );
        }
    }
    if spec.min_concurrency > 1 {
        let mut s = spec.clone();
        s.min_concurrency = 1;
        if try_spec(s) {
            out.push(format!(
                "fits with minConcurrency 1 (spec asks {})",
                spec.min_concurrency
            ));
        }
    }
    out
}
