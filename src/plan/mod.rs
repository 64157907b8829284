//! The admission planner: for one replica, choose node, GPUs, tensor parallel size,
//! quantization, KV cache dtype and `--gpu-memory-utilization` together, or refuse with reasons
//! a person can act on. Pure: no Kubernetes client, no clock, no I/O.

pub mod argparse;
pub mod args;
pub mod fleet;
pub mod ledger;
mod reasons;
mod vllm_options;

use std::borrow::Cow;
use std::collections::HashMap;

use crate::api::{KvCacheDtype, MemoryStrategy, PodRef, Quantization, Sharing, VllmDeploymentSpec};
use crate::fit::{Fit, GpuMemoryView, LaunchPlan, choose_for_gpus};
use crate::model::checkpoint;
use crate::model::{Architecture, Estimate, GpuFacts, InvalidShape, Shape, VllmFamily, estimate};
use crate::profile::{self, Profiles};
use args::{Release, ServeFlags, serve_command, user_memory};
pub use fleet::{DraDevice, Fleet, ReportsSeen};
use fleet::{FleetNode, Gpu};
pub use ledger::{Ledger, Released, Reservation};
use reasons::Rejections;

/// How replicas get their GPUs: by exact device through Dynamic Resource Allocation (a
/// ResourceClaim naming the GPU's UUID), or by count through the device plugin
/// (`nvidia.com/gpu`, the kubelet picks which). The controller's flag and the CLI's
/// `--gpu-allocation` pass the same value to the planner.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum GpuAllocation {
    /// Exact GPUs on a node where every GPU the replica may use is published by the NVIDIA DRA
    /// driver; the device plugin elsewhere.
    #[default]
    Auto,
    /// Exact GPUs only: nodes without published GPUs are refused, with a reason.
    Dra,
    /// Never exact: the device plugin everywhere (as before DRA).
    DevicePlugin,
}

impl GpuAllocation {
    pub fn as_str(self) -> &'static str {
        match self {
            GpuAllocation::Auto => "auto",
            GpuAllocation::Dra => "dra",
            GpuAllocation::DevicePlugin => "device-plugin",
        }
    }
}

impl std::fmt::Display for GpuAllocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything about one replica that the planner needs.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub pod: PodRef,
    pub arch: &'a Architecture,
    pub spec: &'a VllmDeploymentSpec,
    pub family: VllmFamily,
    /// `(node, gpu uuid)` pairs to avoid, e.g. after repeated startup failures there; a uuid of
    /// `"*"` avoids every GPU of the node.
    pub avoid: &'a [(String, String)],
    /// Exact GPUs through DRA, or GPUs by count through the device plugin.
    pub gpu_allocation: GpuAllocation,
}

/// One GPU a replica is pinned to through DRA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExactGpu {
    /// The GPU's index in the agent's report.
    pub index: u32,
    /// The NVML UUID, which the ResourceClaim's selector and the launcher's check use.
    pub uuid: String,
    /// The device the NVIDIA DRA driver publishes for it.
    pub device: DraDevice,
}

/// A replica's placement: where, which shape, which utilization, and the vLLM command.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub node: String,
    /// Device-plugin path: the GPU indices the kubelet may hand the replica (it picks
    /// `tensor_parallel_size` of them), a candidate set, not an assignment. Empty on the DRA
    /// path, where `exact_gpus` says which GPUs the replica gets.
    pub candidate_gpus: Vec<u32>,
    /// DRA path: exactly the `tensor_parallel_size` GPUs the replica runs on. Empty on the
    /// device-plugin path.
    pub exact_gpus: Vec<ExactGpu>,
    pub shape: Shape,
    pub fit: Fit,
    pub kv_cache_tokens: u64,
    pub estimate: Estimate,
    pub launch_plan: LaunchPlan,
    /// `vllm serve ...` as the launcher will run it (before its final utilization fix).
    pub command: Vec<String>,
    /// User flags the operator replaced.
    pub replaced_args: Vec<String>,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Placed(Box<Placement>),
    /// One line per rejected node class, most actionable first.
    Refused(Vec<String>),
}

const BYTES_PER_GIB: f64 = (1u64 << 30) as f64;

fn gib(b: u64) -> f64 {
    b as f64 / BYTES_PER_GIB
}

/// Headroom bytes from the spec's Quantity (invalid quantities fall back to 256 MiB and are
/// reported by validation).
pub fn headroom_bytes(spec: &VllmDeploymentSpec) -> u64 {
    crate::quantity::parse_bytes(&spec.memory.headroom.0).unwrap_or(256 << 20)
}

/// Candidate shapes in preference order: no quantization before quantized (then the spec's
/// order), smaller tp before larger, `auto` KV cache before fp8.
pub fn candidate_shapes(
    spec: &VllmDeploymentSpec,
    max_model_len: u64,
    family: VllmFamily,
) -> Vec<Shape> {
    let mut quants: Vec<Quantization> = Vec::new();
    if spec.quantization.allowed.contains(&Quantization::None) {
        quants.push(Quantization::None);
    }
    for q in &spec.quantization.allowed {
        if !quants.contains(q) {
            quants.push(*q);
        }
    }
    let mut tps: Vec<u32> = spec
        .tensor_parallel
        .sizes
        .iter()
        .filter(|s| **s > 0)
        .map(|s| *s as u32)
        .collect();
    tps.sort_unstable();
    tps.dedup();
    let mut kvs: Vec<KvCacheDtype> = Vec::new();
    if spec.kv_cache_dtype.allowed.contains(&KvCacheDtype::Auto) {
        kvs.push(KvCacheDtype::Auto);
    }
    for k in &spec.kv_cache_dtype.allowed {
        if !kvs.contains(k) {
            kvs.push(*k);
        }
    }
    let estimate_cuda_graphs = estimate_cuda_graphs_env(spec);
    // The user's memory arguments, read as the image's vLLM reads them (a refusal is
    // reported by `plan_replica`; here it leaves vLLM's defaults).
    let user =
        user_memory(&spec.args, &spec.env, Release::from_image(&spec.image)).unwrap_or_default();
    let mut out = Vec::new();
    for q in &quants {
        for tp in &tps {
            for kv in &kvs {
                out.push(Shape {
                    tensor_parallel_size: *tp,
                    quantization: *q,
                    kv_cache_dtype: *kv,
                    max_model_len,
                    max_num_seqs: user.max_num_seqs,
                    max_num_batched_tokens: user.max_num_batched_tokens,
                    enforce_eager: user.enforce_eager,
                    block_size: user.block_size,
                    v0_engine: user.v0_engine,
                    family,
                    estimate_cuda_graphs,
                });
            }
        }
    }
    out
}

/// `VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS` from `spec.env`, read as vLLM does:
/// `bool(int(value))` (0.20.0 `envs.py:1724-1726`). None when unset or not a literal integer.
pub fn estimate_cuda_graphs_env(spec: &VllmDeploymentSpec) -> Option<bool> {
    spec.env
        .iter()
        .rev()
        .find(|e| e.name == "VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS")
        .and_then(|e| e.value.as_deref())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .map(|v| v != 0)
}

/// The `--quantization` value for a shape: None for no quantization and for a checkpoint that
/// is already in the chosen format (vLLM reads its `quantization_config`); the online fp8
/// method by release (`fp8`, `fp8_per_tensor` from 0.31: see `model::family`).
pub fn quantization_flag(
    arch: &Architecture,
    q: Quantization,
    family: VllmFamily,
) -> Option<&'static str> {
    use crate::model::arch::CheckpointFormat as C;
    match (q, &arch.checkpoint) {
        (Quantization::None, _) => None,
        (Quantization::Fp8, C::Dense) => Some(family.rules().online_fp8_method),
        (Quantization::Fp8, _) => None,
        (Quantization::Bitsandbytes, C::Dense) => Some(q.as_str()),
        (Quantization::Bitsandbytes, _) => None,
        (q, _) => Some(q.as_str()),
    }
}

/// GPUs of one product/size/capability share an estimate.
type ClassKey<'g> = (&'g str, u64, Option<(u32, u32)>);

fn class_key(gpu: &Gpu) -> ClassKey<'_> {
    (
        gpu.product.as_str(),
        gpu.total_bytes,
        gpu.compute_capability,
    )
}

/// Estimates per (shape, GPU class), computed on first use. Keys borrow the fleet's product
/// names: no allocation per lookup in the per-GPU loop.
struct EstimateCache<'a, 'g> {
    arch: &'a Architecture,
    spec: &'a VllmDeploymentSpec,
    profiles: &'a Profiles,
    map: HashMap<(usize, ClassKey<'g>), Result<Estimate, InvalidShape>>,
}

impl<'a, 'g> EstimateCache<'a, 'g> {
    fn get(
        &mut self,
        shape_index: usize,
        shape: &Shape,
        gpu: &'g Gpu,
    ) -> &Result<Estimate, InvalidShape> {
        let key = (shape_index, class_key(gpu));
        let (arch, spec, profiles) = (self.arch, self.spec, self.profiles);
        self.map.entry(key).or_insert_with(|| {
            let facts = GpuFacts {
                total_bytes: Some(gpu.total_bytes),
                compute_capability: gpu.compute_capability,
                product: Some(gpu.product.clone()),
            };
            let est = estimate(arch, shape, &facts)?;
            // A measured profile of this model, image, GPU product and shape replaces the
            // estimate's non-KV figure (the KV bytes per token stay exact arithmetic).
            if profiles.is_empty() || est.others_in_budget {
                return Ok(est);
            }
            let key = profile::key_for(spec, shape, &gpu.product, &spec.image);
            Ok(match profiles.lookup(&key) {
                Some(p) => est.with_profile(p),
                None => est,
            })
        })
    }
}

/// The model's max_model_len for this deployment.
pub fn max_model_len(spec: &VllmDeploymentSpec, arch: &Architecture) -> u64 {
    spec.max_model_len
        .map(|l| l.max(1) as u64)
        .unwrap_or(arch.max_position_embeddings)
}

/// Does the node pass the deployment's selectors and tolerate its taints?
fn node_selected(node: &FleetNode, spec: &VllmDeploymentSpec) -> Result<(), String> {
    for (k, v) in &spec.node_selector {
        if node.labels.get(k) != Some(v) {
            return Err(format!("does not match spec.nodeSelector {k}={v}"));
        }
    }
    for taint in &node.taints {
        if taint.effect != "NoSchedule" && taint.effect != "NoExecute" {
            continue;
        }
        let tolerated = spec.tolerations.iter().any(|t| {
            let key_ok = t
                .key
                .as_deref()
                .is_none_or(|k| k.is_empty() || k == taint.key);
            let op_exists = t.operator.as_deref() == Some("Exists");
            let value_ok = op_exists
                || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("");
            let effect_ok = t
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == taint.effect);
            key_ok && value_ok && effect_ok
        });
        if !tolerated {
            return Err(format!(
                "has taint {}:{} that the deployment does not tolerate",
                taint.key, taint.effect
            ));
        }
    }
    Ok(())
}

/// GPUs of the node this deployment may use, before counting reservations.
fn usable_gpus<'n>(
    node: &'n FleetNode,
    spec: &VllmDeploymentSpec,
    min_cc: Option<(u32, u32)>,
    req: &Request,
) -> Vec<&'n Gpu> {
    node.gpus
        .iter()
        .filter(|g| !g.mig_device)
        .filter(|g| {
            spec.gpu.products.is_empty() || spec.gpu.products.iter().any(|p| p == &g.product)
        })
        .filter(|g| min_cc.is_none_or(|m| g.compute_capability.is_some_and(|cc| cc >= m)))
        .filter(|g| {
            !req.avoid
                .iter()
                .any(|(n, u)| n == &node.name && (u == &g.uuid || u == "*"))
        })
        .filter(|g| {
            spec.gpu.sharing == Sharing::Shared
                || node.sharing == Sharing::Shared
                || g.allocated_to.is_none()
        })
        .collect()
}

/// One node's best fit for one shape.
struct NodeFit<'f, 'u> {
    fit: Fit,
    /// Free bytes left on the limiting GPU after the replica's request: best-fit key for Pack.
    leftover_bytes: u64,
    /// Device plugin: the candidate GPUs, borrowed (indices are only collected for the chosen
    /// node). DRA: exactly the GPUs chosen for the replica.
    gpus: Cow<'u, [&'f Gpu]>,
    /// Whether `gpus` are exact GPUs (DRA) or candidates the kubelet picks from.
    exact: bool,
    estimate: Estimate,
    plan: LaunchPlan,
}

/// Is `nf` a better node for the replica than the best so far? Nodes come sorted by name, so
/// ties keep the first name.
fn better_fit(strategy: MemoryStrategy, nf: &NodeFit, best: Option<&NodeFit>) -> bool {
    match best {
        None => true,
        Some(cur) => match strategy {
            MemoryStrategy::MaximizeCache => nf.fit.kv_cache_bytes > cur.fit.kv_cache_bytes,
            MemoryStrategy::Pack => nf.leftover_bytes < cur.leftover_bytes,
        },
    }
}

/// What the ledger holds on one node.
#[derive(Default)]
struct Booked<'l> {
    /// GPUs booked on an exclusive node, by count and by UUID together.
    gpus: u32,
    /// GPUs booked by count (device plugin): the kubelet picks which.
    by_count: u32,
    /// GPUs booked by UUID (DRA).
    exact: Vec<&'l str>,
    /// Bytes promised on every GPU of a shared node.
    shared_bytes: u64,
}

/// Buffers [`exact_fit`] reuses from node to node.
#[derive(Default)]
struct ExactScratch<'f> {
    fitting: Vec<(&'f Gpu, u64, usize)>,
    classes: Vec<(ClassKey<'f>, Estimate, LaunchPlan)>,
    views: Vec<GpuMemoryView>,
}

/// A node that passed the shape-independent checks.
struct Eligible<'f> {
    node: &'f FleetNode,
    /// Device plugin: every GPU the kubelet may hand out. DRA: the free published GPUs.
    usable: Vec<&'f Gpu>,
    /// How many GPUs a replica can still get here.
    count: u32,
    /// Bytes already promised on each GPU of a shared node.
    reserved_bytes: u64,
    /// Placed by exact GPU through DRA.
    exact: bool,
}

/// The DRA path on one node: each free published GPU is judged on its own (its own free
/// memory, its own class's estimate); the replica gets the `tp` of them the strategy prefers
/// (MaximizeCache: the most free; Pack: the least free that still fit), and the utilization
/// rule is applied to those GPUs only. `None` when fewer than `tp` GPUs fit (the shortfall is
/// recorded).
#[allow(clippy::too_many_arguments)] // the planner loop's state, borrowed separately
fn exact_fit<'f, 'u>(
    scratch: &mut ExactScratch<'f>,
    cache: &mut EstimateCache<'_, 'f>,
    rejections: &mut Rejections<'f>,
    si: usize,
    shape: &Shape,
    node: &'f FleetNode,
    usable: &[&'f Gpu],
    headroom: u64,
) -> Option<NodeFit<'f, 'u>> {
    let spec = cache.spec;
    let tp = shape.tensor_parallel_size as usize;
    let concurrency = spec.min_concurrency.max(1) as u64;
    let launch = |e: &Estimate| {
        e.launch_plan(
            concurrency,
            headroom,
            spec.memory.max_utilization,
            spec.memory.strategy,
        )
    };
    let view = |g: &Gpu| GpuMemoryView {
        total_bytes: g.total_bytes,
        free_bytes: g.free_bytes,
        reserved_bytes: g.reserved_bytes,
    };
    // GPUs that fit the replica on their own, with their free bytes and their class's
    // estimate. Nodes are mostly one GPU class: look each class up once per node.
    let ExactScratch {
        fitting,
        classes,
        views,
    } = scratch;
    fitting.clear();
    classes.clear();
    for &g in usable {
        let key = class_key(g);
        let ci = match classes.iter().position(|(k, _, _)| *k == key) {
            Some(i) => i,
            None => {
                let est = match cache.get(si, shape, g) {
                    Ok(e) => e.clone(),
                    Err(why) => {
                        rejections.invalid_shape(si, why);
                        return None;
                    }
                };
                let plan = launch(&est);
                classes.push((key, est, plan));
                classes.len() - 1
            }
        };
        let (_, est, plan) = &classes[ci];
        let v = view(g);
        if !est.load_fits(v) {
            rejections.memory(
                si,
                node.name.as_str(),
                g,
                est.weights_load_peak_bytes
                    .saturating_add(est.startup_overhead()),
                v.free_bytes,
            );
            continue;
        }
        match choose_for_gpus(std::slice::from_ref(&v), plan) {
            Ok(_) => fitting.push((g, v.free_bytes, ci)),
            Err((_, short)) => rejections.memory(
                si,
                node.name.as_str(),
                g,
                short.needed_free_bytes,
                short.free_bytes,
            ),
        }
    }
    if fitting.len() < tp {
        rejections.too_few_gpus(node.name.as_str(), tp as u32, fitting.len() as u32);
        return None;
    }
    match spec.memory.strategy {
        MemoryStrategy::MaximizeCache => {
            fitting.sort_by_key(|(g, free, _)| (std::cmp::Reverse(*free), g.index))
        }
        MemoryStrategy::Pack => fitting.sort_by_key(|(g, free, _)| (*free, g.index)),
    }
    fitting.truncate(tp);
    fitting.sort_by_key(|(g, _, _)| g.index);
    // GPUs of one node may differ in class: the replica runs with the largest estimate among
    // its GPUs (tensor parallel ranks load equal shards).
    let ci = fitting
        .iter()
        .map(|(_, _, ci)| *ci)
        .max_by_key(|ci| classes[*ci].1.required_bytes())?;
    let (_, est, plan) = &classes[ci];
    views.clear();
    views.extend(fitting.iter().map(|(g, _, _)| view(g)));
    match choose_for_gpus(views, plan) {
        Ok((fit, limiting)) => {
            let needed = ((views[limiting].total_bytes as f64 * fit.utilization()).ceil() as u64)
                .saturating_add(plan.startup_overhead_bytes);
            Some(NodeFit {
                fit,
                leftover_bytes: views[limiting].free_bytes.saturating_sub(needed),
                gpus: Cow::Owned(fitting.iter().map(|(g, _, _)| *g).collect()),
                exact: true,
                estimate: est.clone(),
                plan: plan.clone(),
            })
        }
        Err((i, short)) => {
            rejections.memory(
                si,
                node.name.as_str(),
                fitting[i].0,
                short.needed_free_bytes,
                short.free_bytes,
            );
            None
        }
    }
}

/// Plan one replica against the fleet as the ledger leaves it.
pub fn plan_replica(fleet: &Fleet, ledger: &Ledger, req: &Request) -> Decision {
    plan_inner(fleet, ledger, req, true)
}

fn plan_inner(fleet: &Fleet, ledger: &Ledger, req: &Request, hints: bool) -> Decision {
    let spec = req.spec;
    if let Err(why) = user_memory(&spec.args, &spec.env, Release::from_image(&spec.image)) {
        return Decision::Refused(vec![why]);
    }
    let max_len = max_model_len(spec, req.arch);
    let shapes = candidate_shapes(spec, max_len, req.family);
    let mut cache = EstimateCache {
        arch: req.arch,
        spec,
        profiles: &fleet.profiles,
        map: HashMap::new(),
    };
    let mut rejections = Rejections::default();
    let headroom = headroom_bytes(spec);
    let min_cc = spec
        .gpu
        .min_compute_capability
        .as_deref()
        .and_then(fleet::parse_compute_capability);
    let shared = spec.gpu.sharing == Sharing::Shared;
    // One pass over the ledger, not one per node: the per-node sums are what the loop needs.
    let mut reserved: HashMap<&str, Booked> = HashMap::new();
    for r in ledger.iter() {
        let e = reserved.entry(r.node.as_str()).or_default();
        e.gpus = e.gpus.saturating_add(r.gpus);
        e.shared_bytes = e.shared_bytes.saturating_add(r.shared_bytes);
        if r.exact_gpus.is_empty() {
            e.by_count = e.by_count.saturating_add(r.gpus);
        } else {
            e.exact.extend(r.exact_gpus.iter().map(String::as_str));
        }
    }
    let fleet_has_dra = req.gpu_allocation != GpuAllocation::DevicePlugin && fleet.has_dra();

    // The default model cache is an emptyDir on the node's disk, requested as ephemeral
    // storage: a node whose allocatable cannot hold it can never admit the pod (the scheduler
    // calls that unresolvable: pkg/scheduler/framework/plugins/noderesources/fit.go).
    let cache_bytes = checkpoint::node_cache_bytes(spec, req.arch);

    // Node eligibility and usable GPUs do not depend on the shape.
    let mut eligible: Vec<Eligible> = Vec::new();
    for node in &fleet.nodes {
        if let Some(why) = &node.ineligible {
            rejections.node(node.name.as_str(), why.clone());
            continue;
        }
        if let Err(why) = node_selected(node, spec) {
            rejections.node(node.name.as_str(), why);
            continue;
        }
        if let (Some(need), Some(have)) = (cache_bytes, node.allocatable_ephemeral_bytes)
            && have < need
        {
            rejections.disk(node.name.as_str(), need, have, req.arch);
            continue;
        }
        let mut usable = usable_gpus(node, spec, min_cc, req);
        if usable.is_empty() {
            rejections.no_matching_gpu(node.name.as_str(), node.gpus.len());
            continue;
        }
        let shared_node = shared || node.sharing == Sharing::Shared;
        let booked = reserved.get(node.name.as_str());
        let (reserved_gpus, reserved_shared_bytes) =
            booked.map_or((0, 0), |b| (b.gpus, b.shared_bytes));
        let exact = match req.gpu_allocation {
            GpuAllocation::DevicePlugin => false,
            // Exact only where the driver publishes every GPU the replica may use: a GPU it
            // does not publish stays the device plugin's, and the kubelet would pick it.
            GpuAllocation::Auto => {
                fleet_has_dra && !shared_node && usable.iter().all(|g| g.dra.is_some())
            }
            GpuAllocation::Dra => {
                if shared_node {
                    rejections.node(
                        node.name.as_str(),
                        "is shared (sharing: Shared) and a ResourceClaim takes its GPUs whole; --gpu-allocation dra places only by exact GPU".to_string(),
                    );
                    continue;
                }
                usable.retain(|g| g.dra.is_some());
                if usable.is_empty() {
                    rejections.node(
                        node.name.as_str(),
                        "publishes no usable GPU through the NVIDIA DRA driver (no gpu.nvidia.com ResourceSlice device has their UUIDs); --gpu-allocation dra places only by exact GPU".to_string(),
                    );
                    continue;
                }
                true
            }
        };
        if exact {
            // GPUs booked by UUID are taken; GPUs booked by count (a replica placed before the
            // node's slices appeared) take some GPU the kubelet picks: count them off too.
            if let Some(b) = booked {
                usable.retain(|g| !b.exact.contains(&g.uuid.as_str()));
            }
            let count = (usable.len() as u32).saturating_sub(booked.map_or(0, |b| b.by_count));
            if usable.is_empty() {
                rejections.too_few_gpus(node.name.as_str(), 1, 0);
                continue;
            }
            eligible.push(Eligible {
                node,
                usable,
                count,
                reserved_bytes: 0,
                exact: true,
            });
            continue;
        }
        let mut count = usable.len() as u32;
        if !shared_node {
            count = count.saturating_sub(reserved_gpus);
            if let Some(alloc) = node.allocatable_gpus {
                let allocated = node
                    .gpus
                    .iter()
                    .filter(|g| g.allocated_to.is_some())
                    .count() as u32;
                count = count.min(
                    alloc
                        .saturating_sub(allocated)
                        .saturating_sub(reserved_gpus),
                );
            }
        }
        let reserved_bytes = if shared_node {
            reserved_shared_bytes
        } else {
            0
        };
        eligible.push(Eligible {
            node,
            usable,
            count,
            reserved_bytes,
            exact: false,
        });
    }

    let mut views: Vec<GpuMemoryView> = Vec::new();
    let mut scratch = ExactScratch::default();
    for (si, shape) in shapes.iter().enumerate() {
        let tp = shape.tensor_parallel_size;
        let mut best: Option<(&FleetNode, NodeFit)> = None;
        for el in &eligible {
            let (node, usable, count, reserved_bytes) =
                (el.node, &el.usable, el.count, &el.reserved_bytes);
            if count < tp {
                rejections.too_few_gpus(node.name.as_str(), tp, count);
                continue;
            }
            if el.exact {
                if let Some(nf) = exact_fit(
                    &mut scratch,
                    &mut cache,
                    &mut rejections,
                    si,
                    shape,
                    node,
                    usable,
                    headroom,
                ) && better_fit(spec.memory.strategy, &nf, best.as_ref().map(|b| &b.1))
                {
                    best = Some((node, nf));
                }
                continue;
            }
            // Every candidate GPU could be the one the kubelet hands out: check them all and
            // let the worst decide. All candidates share one estimate when they are one class.
            let mut est: Option<Estimate> = None;
            let mut invalid = false;
            let mut prev_class = None;
            for g in usable.iter() {
                // Nodes are mostly one GPU class: look each class up once.
                if prev_class == Some(class_key(g)) {
                    continue;
                }
                prev_class = Some(class_key(g));
                match cache.get(si, shape, g) {
                    Ok(e) => {
                        if est
                            .as_ref()
                            .is_none_or(|cur| e.required_bytes() > cur.required_bytes())
                        {
                            est = Some(e.clone());
                        }
                    }
                    Err(why) => {
                        rejections.invalid_shape(si, why);
                        invalid = true;
                        break;
                    }
                }
            }
            if invalid {
                continue;
            }
            let Some(est) = est else { continue };
            let concurrency = spec.min_concurrency.max(1) as u64;
            let plan = est.launch_plan(
                concurrency,
                headroom,
                spec.memory.max_utilization,
                spec.memory.strategy,
            );
            views.clear();
            views.extend(usable.iter().map(|g| GpuMemoryView {
                total_bytes: g.total_bytes,
                free_bytes: g.free_bytes.saturating_sub(*reserved_bytes),
                reserved_bytes: g.reserved_bytes,
            }));
            if let Some(i) = views.iter().position(|v| !est.load_fits(*v)) {
                let g = usable[i];
                rejections.memory(
                    si,
                    node.name.as_str(),
                    g,
                    est.weights_load_peak_bytes
                        .saturating_add(est.startup_overhead()),
                    views[i].free_bytes,
                );
                continue;
            }
            match choose_for_gpus(&views, &plan) {
                Ok((fit, limiting)) => {
                    let needed = ((views[limiting].total_bytes as f64 * fit.utilization()).ceil()
                        as u64)
                        .saturating_add(plan.startup_overhead_bytes);
                    let nf = NodeFit {
                        fit,
                        leftover_bytes: views[limiting].free_bytes.saturating_sub(needed),
                        gpus: Cow::Borrowed(usable.as_slice()),
                        exact: false,
                        estimate: est,
                        plan,
                    };
                    if better_fit(spec.memory.strategy, &nf, best.as_ref().map(|b| &b.1)) {
                        best = Some((node, nf));
                    }
                }
                Err((i, short)) => {
                    rejections.memory(
                        si,
                        node.name.as_str(),
                        usable[i],
                        short.needed_free_bytes,
                        short.free_bytes,
                    );
                }
            }
        }
        if let Some((node, nf)) = best {
            return Decision::Placed(Box::new(placement(req, shape.clone(), node, nf)));
        }
    }
    let mut lines = rejections.lines(&shapes);
    if hints {
        lines.extend(reasons::hints(fleet, ledger, req));
    }
    Decision::Refused(lines)
}

fn placement(req: &Request, shape: Shape, node: &FleetNode, nf: NodeFit) -> Placement {
    let (candidate_gpus, exact_gpus): (Vec<u32>, Vec<ExactGpu>) = if nf.exact {
        let exact = nf
            .gpus
            .iter()
            .filter_map(|g| {
                g.dra.as_ref().map(|d| ExactGpu {
                    index: g.index,
                    uuid: g.uuid.clone(),
                    device: d.clone(),
                })
            })
            .collect();
        (Vec::new(), exact)
    } else {
        (nf.gpus.iter().map(|g| g.index).collect(), Vec::new())
    };
    let gpus_words = if exact_gpus.is_empty() {
        format!("candidate GPUs {candidate_gpus:?}")
    } else {
        let list: Vec<String> = exact_gpus
            .iter()
            .map(|g| format!("{} {}", g.index, g.uuid))
            .collect();
        format!("exact GPUs {}", list.join(", "))
    };
    let per_block = nf.estimate.bytes_per_block().max(1);
    let kv_cache_tokens = nf.fit.kv_cache_bytes / per_block * nf.estimate.block_size;
    let flags = ServeFlags {
        tensor_parallel_size: shape.tensor_parallel_size,
        quantization: quantization_flag(req.arch, shape.quantization, shape.family),
        kv_cache_dtype: shape.kv_cache_dtype,
        max_model_len: shape.max_model_len,
        gpu_memory_utilization: nf.fit.utilization(),
    };
    let release = Release::from_image(&req.spec.image);
    let (user, mut replaced_revision) = args::strip_revision(&req.spec.args, release);
    let (mut command, mut replaced_args) =
        serve_command(&args::served_model(&req.spec.model), &flags, &user, release);
    replaced_args.append(&mut replaced_revision);
    command.extend(args::model_flags(&req.spec.model, &user, release));
    let reason = format!(
        "{} on {} ({}): utilization {:.2} leaves {:.2} GiB of KV cache per GPU ({} tokens) after {:.2} GiB of weights",
        shape_words(&shape),
        node.name,
        gpus_words,
        nf.fit.utilization(),
        gib(nf.fit.kv_cache_bytes),
        kv_cache_tokens,
        gib(nf.estimate.weights_bytes_per_gpu),
    );
    Placement {
        node: node.name.clone(),
        candidate_gpus,
        exact_gpus,
        shape,
        fit: nf.fit,
        kv_cache_tokens,
        estimate: nf.estimate,
        launch_plan: nf.plan,
        command,
        replaced_args,
        reason,
    }
}

/// The GPUs of a placement as `plan` prints them: the exact UUIDs on the DRA path; on the
/// device-plugin path how many the kubelet picks among which indices (not an assignment).
pub fn gpu_words(p: &Placement) -> String {
    if !p.exact_gpus.is_empty() {
        return p
            .exact_gpus
            .iter()
            .map(|g| g.uuid.as_str())
            .collect::<Vec<_>>()
            .join(",");
    }
    format!(
        "kubelet picks {} of {:?}",
        p.shape.tensor_parallel_size, p.candidate_gpus
    )
}

/// `tp 4, no quantization, kv auto`.
pub fn shape_words(shape: &Shape) -> String {
    let q = match shape.quantization {
        Quantization::None => "no quantization".to_string(),
        q => format!("quantization {q}"),
    };
    format!(
        "tp {}, {q}, kv cache {}",
        shape.tensor_parallel_size, shape.kv_cache_dtype
    )
}

/// The ledger entry for a placement.
pub fn reservation_for(
    pod: PodRef,
    p: &Placement,
    node: &FleetNode,
    shared: bool,
    now: k8s_openapi::jiff::Timestamp,
) -> Reservation {
    let shared_node = shared || node.sharing == Sharing::Shared;
    let total = node.gpus.first().map_or(0, |g| g.total_bytes);
    Reservation {
        pod,
        node: p.node.clone(),
        gpus: if shared_node {
            0
        } else {
            p.shape.tensor_parallel_size
        },
        shared_bytes: if shared_node {
            ((total as f64 * p.fit.utilization()).ceil() as u64)
                .saturating_add(p.launch_plan.startup_overhead_bytes)
        } else {
            0
        },
        exact_gpus: p.exact_gpus.iter().map(|g| g.uuid.clone()).collect(),
        created_at: now,
    }
}
