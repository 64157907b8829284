//! The admission planner: random fleets and deployments against an independent brute force,
//! the classic 8 GiB desktop GPU, refusal reasons, preference order and the reservation ledger.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use vllm_operator::api::{
    GpuNode, KvCacheDtype, MemoryStrategy, PodRef, Quantization, Sharing, VllmDeploymentSpec,
};
use vllm_operator::fit::passes_startup_check;
use vllm_operator::manifest::{Object, read_objects};
use vllm_operator::model::catalog::lookup;
use vllm_operator::model::{Architecture, Estimate, GpuFacts, Shape, VllmFamily, estimate};
use vllm_operator::plan::fleet::{DraDevice, Fleet, FleetNode, Gpu, NVIDIA_DRA_DRIVER};
use vllm_operator::plan::{
    Decision, GpuAllocation, Ledger, Placement, Released, Request, candidate_shapes,
    headroom_bytes, max_model_len, plan_replica, reservation_for,
};

const GIB: u64 = 1 << 30;

/// A GPU model as NVML reports it.
#[derive(Clone, Copy, Debug)]
struct GpuType {
    product: &'static str,
    total_bytes: u64,
    reserved_bytes: u64,
    cc: (u32, u32),
}

const RTX_3070: GpuType = GpuType {
    product: "NVIDIA GeForce RTX 3070",
    total_bytes: 8_589_934_592,
    reserved_bytes: 260_046_848,
    cc: (8, 6),
};
const L4: GpuType = GpuType {
    product: "NVIDIA L4",
    total_bytes: 24_152_899_584,
    reserved_bytes: 451_936_256,
    cc: (8, 9),
};
const A100_40: GpuType = GpuType {
    product: "NVIDIA A100-SXM4-40GB",
    total_bytes: 42_949_672_960,
    reserved_bytes: 511_705_088,
    cc: (8, 0),
};
const H100: GpuType = GpuType {
    product: "NVIDIA H100 80GB HBM3",
    total_bytes: 85_520_809_984,
    reserved_bytes: 493_879_296,
    cc: (9, 0),
};
const TYPES: [GpuType; 4] = [RTX_3070, L4, A100_40, H100];

const MODELS: [&str; 4] = [
    "meta-llama/Llama-3.2-1B-Instruct",
    "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
    "meta-llama/Llama-3.1-70B-Instruct",
];

fn arch(id: &str) -> Architecture {
    lookup(id)
        .unwrap_or_else(|| panic!("{id} not in catalog"))
        .architecture()
        .unwrap()
}

fn pod(name: &str) -> PodRef {
    PodRef {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

/// One GPU with `used_bytes` taken by one process: the pod's when allocated, else a foreign one.
fn mk_gpu(t: GpuType, index: u32, used_bytes: u64, allocated_to: Option<PodRef>) -> Gpu {
    let usable = t.total_bytes - t.reserved_bytes;
    let used = used_bytes.min(usable);
    let foreign_bytes = if allocated_to.is_none() { used } else { 0 };
    let processes = if used > 0 {
        vec![(1000 + index, used, allocated_to.clone())]
    } else {
        Vec::new()
    };
    Gpu {
        index,
        uuid: format!("GPU-{index:04}"),
        product: t.product.into(),
        compute_capability: Some(t.cc),
        total_bytes: t.total_bytes,
        free_bytes: usable - used,
        reserved_bytes: t.reserved_bytes,
        allocated_to,
        foreign_bytes,
        processes,
        mig_device: false,
        dra: None,
    }
}

fn mk_node(name: &str, gpus: Vec<Gpu>) -> FleetNode {
    FleetNode {
        name: name.into(),
        sharing: Sharing::Exclusive,
        gpus,
        labels: BTreeMap::new(),
        taints: Vec::new(),
        allocatable_gpus: None,
        allocatable_ephemeral_bytes: None,
        ineligible: None,
        observed_at: None,
    }
}

/// `n` idle GPUs of one type.
fn idle_node(name: &str, t: GpuType, n: u32) -> FleetNode {
    mk_node(name, (0..n).map(|i| mk_gpu(t, i, 0, None)).collect())
}

fn mk_fleet(mut nodes: Vec<FleetNode>) -> Fleet {
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Fleet {
        nodes,
        ..Default::default()
    }
}

fn spec(model: &str) -> VllmDeploymentSpec {
    serde_norway::from_str(&format!("model: {{name: {model}}}")).unwrap()
}

fn request<'a>(
    name: &str,
    arch: &'a Architecture,
    spec: &'a VllmDeploymentSpec,
    family: VllmFamily,
) -> Request<'a> {
    Request {
        pod: pod(name),
        arch,
        spec,
        family,
        avoid: &[],
        gpu_allocation: Default::default(),
    }
}

fn placed(d: Decision) -> Placement {
    match d {
        Decision::Placed(p) => *p,
        Decision::Refused(r) => panic!("refused: {r:#?}"),
    }
}

fn refused(d: Decision) -> Vec<String> {
    match d {
        Decision::Placed(p) => panic!("placed on {} ({})", p.node, p.reason),
        Decision::Refused(r) => r,
    }
}

/// Plan every replica of `spec` in turn, recording each in the ledger as `plan` does.
fn plan_all(
    fleet: &Fleet,
    ledger: &mut Ledger,
    name: &str,
    arch: &Architecture,
    spec: &VllmDeploymentSpec,
) -> (Vec<Placement>, Vec<String>) {
    plan_all_with(fleet, ledger, name, arch, spec, GpuAllocation::default())
}

// ---------------------------------------------------------------------------------------------
// The brute force: every candidate shape x node x utilization in hundredths, with vLLM's rules
// written out again from the estimate's raw fields.
// ---------------------------------------------------------------------------------------------

/// What earlier replicas took, as the brute force counts it.
#[derive(Default)]
struct Taken {
    /// Exclusive: whole GPUs per node.
    gpus: BTreeMap<String, u32>,
    /// Shared: bytes per node, on every GPU of it.
    bytes: BTreeMap<String, u64>,
}

fn shared_node(node: &FleetNode, spec: &VllmDeploymentSpec) -> bool {
    node.sharing == Sharing::Shared || spec.gpu.sharing == Sharing::Shared
}

/// GPUs the kubelet may hand out: every one when shared, else the unallocated ones.
fn candidates<'n>(node: &'n FleetNode, spec: &VllmDeploymentSpec) -> Vec<&'n Gpu> {
    let shared = shared_node(node, spec);
    node.gpus
        .iter()
        .filter(|g| !g.mig_device && (shared || g.allocated_to.is_none()))
        .collect()
}

fn facts(g: &Gpu) -> GpuFacts {
    GpuFacts {
        total_bytes: Some(g.total_bytes),
        compute_capability: g.compute_capability,
        product: Some(g.product.clone()),
    }
}

/// Bytes vLLM takes from `u * total` before the KV cache.
fn required(e: &Estimate) -> u64 {
    let graphs = if e.cuda_graphs_in_budget {
        e.cuda_graph_bytes
    } else {
        0
    };
    e.weights_bytes_per_gpu + e.activation_peak_bytes + e.non_torch_bytes + graphs
}

/// Bytes that must be free beyond `u * total`.
fn outside(e: &Estimate) -> u64 {
    let graphs = if e.cuda_graphs_in_budget {
        0
    } else {
        e.cuda_graph_bytes
    };
    e.startup_overhead_bytes + graphs
}

fn min_kv(e: &Estimate, concurrency: u64) -> u64 {
    e.kv_bytes_per_request * concurrency + e.kv_cache_bytes_per_token_per_gpu * e.block_size
}

/// Does `pct` hundredths work on GPU `g` (with `free` as earlier replicas left it) for `e`?
fn works(g: &Gpu, free: u64, e: &Estimate, pct: u64, spec: &VllmDeploymentSpec) -> bool {
    let u = pct as f64 / 100.0;
    if u > spec.memory.max_utilization {
        return false;
    }
    let concurrency = spec.min_concurrency.max(1) as u64;
    let headroom = headroom_bytes(spec);
    // Loading the weights (dense first when fp8 is applied online).
    if free.saturating_sub(e.startup_overhead_bytes) < e.weights_load_peak_bytes {
        return false;
    }
    // vLLM's startup check, in its float arithmetic, against what is left after its overhead.
    let Some(after_overhead) = free.checked_sub(outside(e)) else {
        return false;
    };
    if !passes_startup_check(g.total_bytes, after_overhead, u) {
        return false;
    }
    // Our headroom on top, exactly.
    let requested = (g.total_bytes as u128 * pct as u128).div_ceil(100) as u64;
    if requested + headroom > after_overhead {
        return false;
    }
    // vLLM's budget is a fraction of CUDA's total (NVML total less the driver's reservation).
    let budget = ((g.total_bytes - g.reserved_bytes) as u128 * pct as u128 / 100) as u64;
    budget >= required(e) + min_kv(e, concurrency)
}

/// For the first shape (in preference order) that any node admits: each admitting node with
/// the utilizations that work there on every candidate GPU. `None`: nothing fits anywhere.
fn brute_force(
    fleet: &Fleet,
    taken: &Taken,
    arch: &Architecture,
    spec: &VllmDeploymentSpec,
    family: VllmFamily,
) -> Option<(usize, BTreeMap<String, Vec<u64>>)> {
    let shapes = candidate_shapes(spec, max_model_len(spec, arch), family);
    for (si, shape) in shapes.iter().enumerate() {
        let mut admitting = BTreeMap::new();
        for node in &fleet.nodes {
            if node.ineligible.is_some() {
                continue;
            }
            let cands = candidates(node, spec);
            let shared = shared_node(node, spec);
            let have = if shared {
                cands.len() as u32
            } else {
                (cands.len() as u32)
                    .saturating_sub(taken.gpus.get(&node.name).copied().unwrap_or(0))
            };
            if cands.is_empty() || have < shape.tensor_parallel_size {
                continue;
            }
            let Ok(estimates) = cands
                .iter()
                .map(|g| estimate(arch, shape, &facts(g)))
                .collect::<Result<Vec<_>, _>>()
            else {
                continue;
            };
            let less = if shared {
                taken.bytes.get(&node.name).copied().unwrap_or(0)
            } else {
                0
            };
            // The kubelet picks which candidates the pod gets: all of them must work, under
            // every candidate's estimate.
            let pcts: Vec<u64> = (1..=100)
                .filter(|pct| {
                    cands.iter().all(|g| {
                        estimates
                            .iter()
                            .all(|e| works(g, g.free_bytes.saturating_sub(less), e, *pct, spec))
                    })
                })
                .collect();
            if !pcts.is_empty() {
                admitting.insert(node.name.clone(), pcts);
            }
        }
        if !admitting.is_empty() {
            return Some((si, admitting));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Random fleets and deployments.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct NodeGen {
    gpu_type: usize,
    shared: bool,
    /// Per GPU: used bytes in thousandths of the usable memory, and whether a pod holds it.
    gpus: Vec<(u64, bool)>,
}

fn node_gen() -> impl Strategy<Value = NodeGen> {
    let gpu = (
        prop_oneof![3 => Just(0u64), 1 => 0u64..=100, 2 => 0u64..=1000],
        proptest::bool::weighted(0.2),
    );
    (
        0..TYPES.len(),
        proptest::bool::weighted(0.15),
        proptest::collection::vec(gpu, 1..=8),
    )
        .prop_map(|(gpu_type, shared, gpus)| NodeGen {
            gpu_type,
            shared,
            gpus,
        })
}

fn build_fleet(nodes: &[NodeGen]) -> Fleet {
    mk_fleet(
        nodes
            .iter()
            .enumerate()
            .map(|(n, ng)| {
                let t = TYPES[ng.gpu_type];
                let usable = t.total_bytes - t.reserved_bytes;
                let name = format!("node-{n}");
                let gpus = ng
                    .gpus
                    .iter()
                    .enumerate()
                    .map(|(i, (permille, allocated))| {
                        let holder = allocated.then(|| pod(&format!("{name}-tenant-{i}")));
                        mk_gpu(t, i as u32, usable / 1000 * permille, holder)
                    })
                    .collect();
                FleetNode {
                    sharing: if ng.shared {
                        Sharing::Shared
                    } else {
                        Sharing::Exclusive
                    },
                    ..mk_node(&name, gpus)
                }
            })
            .collect(),
    )
}

#[derive(Clone, Debug)]
struct DeploymentGen {
    model: usize,
    replicas: i32,
    tp_mask: u8,
    quant_mask: u8,
    kv_mask: u8,
    max_model_len: i64,
    min_concurrency: i32,
    pack: bool,
    headroom_bytes: u64,
    max_utilization: f64,
    family: VllmFamily,
}

fn deployment_gen() -> impl Strategy<Value = DeploymentGen> {
    (
        0..MODELS.len(),
        1i32..=4,
        1u8..16,
        1u8..4,
        prop_oneof![3 => Just(1u8), 1 => 1u8..4],
        512i64..=32768,
        1i32..=8,
        any::<bool>(),
        0u64..=GIB,
        0.5f64..=1.0,
        prop_oneof![
            Just(VllmFamily::V0),
            Just(VllmFamily::V0_11),
            Just(VllmFamily::V0_21)
        ],
    )
        .prop_map(
            |(model, replicas, tp_mask, quant_mask, kv_mask, len, conc, pack, headroom, u, fam)| {
                DeploymentGen {
                    model,
                    replicas,
                    tp_mask,
                    quant_mask,
                    kv_mask,
                    max_model_len: len,
                    min_concurrency: conc,
                    pack,
                    headroom_bytes: headroom,
                    max_utilization: u,
                    family: fam,
                }
            },
        )
}

fn build_spec(d: &DeploymentGen) -> VllmDeploymentSpec {
    let mut s = spec(MODELS[d.model]);
    s.replicas = d.replicas;
    s.tensor_parallel.sizes = [1, 2, 4, 8]
        .into_iter()
        .enumerate()
        .filter(|(i, _)| d.tp_mask & (1 << i) != 0)
        .map(|(_, tp)| tp)
        .collect();
    // fp8 listed first when both are allowed: the planner must still try none first.
    s.quantization.allowed = [Quantization::Fp8, Quantization::None]
        .into_iter()
        .enumerate()
        .filter(|(i, _)| d.quant_mask & (1 << i) != 0)
        .map(|(_, q)| q)
        .collect();
    s.kv_cache_dtype.allowed = [KvCacheDtype::Auto, KvCacheDtype::Fp8]
        .into_iter()
        .enumerate()
        .filter(|(i, _)| d.kv_mask & (1 << i) != 0)
        .map(|(_, k)| k)
        .collect();
    s.max_model_len = Some(d.max_model_len);
    s.min_concurrency = d.min_concurrency;
    s.memory.strategy = if d.pack {
        MemoryStrategy::Pack
    } else {
        MemoryStrategy::MaximizeCache
    };
    s.memory.headroom = Quantity(d.headroom_bytes.to_string());
    s.memory.max_utilization = d.max_utilization;
    s
}

/// KV bytes vLLM gets on the node's worst candidate at `pct`, under the node's own estimate.
fn kv_at(
    node: &FleetNode,
    spec: &VllmDeploymentSpec,
    arch: &Architecture,
    shape: &Shape,
    pct: u64,
) -> u64 {
    let cands = candidates(node, spec);
    let need = cands
        .iter()
        .map(|g| required(&estimate(arch, shape, &facts(g)).unwrap()))
        .max()
        .unwrap();
    cands
        .iter()
        .map(|g| ((g.total_bytes - g.reserved_bytes) as u128 * pct as u128 / 100) as u64 - need)
        .min()
        .unwrap()
}

/// Plan every deployment in turn against one ledger and check each decision against the brute
/// force and vLLM's rules.
fn check_sequence(fleet: &Fleet, deployments: &[DeploymentGen]) -> Result<(), TestCaseError> {
    let now = ts("2026-11-26T12:00:00Z");
    let mut ledger = Ledger::default();
    let mut taken = Taken::default();
    // Per node, per GPU index: bytes promised to shared replicas so far.
    let mut promised: BTreeMap<(String, u32), u64> = BTreeMap::new();
    let archs: Vec<Architecture> = MODELS.iter().map(|m| arch(m)).collect();
    for (di, d) in deployments.iter().enumerate() {
        let spec = build_spec(d);
        let arch = &archs[d.model];
        let shapes = candidate_shapes(&spec, max_model_len(&spec, arch), d.family);
        let concurrency = spec.min_concurrency as u64;
        for r in 0..spec.replicas {
            let name = format!("d{di}-{r}");
            let req = request(&name, arch, &spec, d.family);
            let brute = brute_force(fleet, &taken, arch, &spec, d.family);
            let decision = plan_replica(fleet, &ledger, &req);
            let p = match (decision, &brute) {
                (Decision::Refused(lines), None) => {
                    prop_assert!(!lines.is_empty(), "a refusal without reasons");
                    break;
                }
                (Decision::Refused(lines), Some((si, nodes))) => {
                    return Err(TestCaseError::fail(format!(
                        "planner refused {name} but the brute force admits {:?} on {nodes:?}; reasons: {lines:#?}",
                        shapes[*si]
                    )));
                }
                (Decision::Placed(p), None) => {
                    return Err(TestCaseError::fail(format!(
                        "planner placed {name} on {} ({}) but the brute force admits nothing",
                        p.node, p.reason
                    )));
                }
                (Decision::Placed(p), Some(_)) => *p,
            };
            let (si, nodes) = brute.unwrap();
            let node = fleet.node(&p.node).unwrap();
            let shared = shared_node(node, &spec);
            let pct = p.fit.utilization_pct;
            let u = p.fit.utilization();

            // The first admissible shape in preference order, on an admitting node, at the
            // end of that node's range the strategy asks for.
            prop_assert_eq!(&p.shape, &shapes[si]);
            let pcts = nodes.get(&p.node);
            prop_assert!(pcts.is_some(), "{} does not admit {:?}", p.node, p.shape);
            let pcts = pcts.unwrap();
            let want = match spec.memory.strategy {
                MemoryStrategy::MaximizeCache => *pcts.last().unwrap(),
                MemoryStrategy::Pack => pcts[0],
            };
            prop_assert_eq!(pct, want, "utilization on {}: feasible {:?}", p.node, pcts);
            if spec.memory.strategy == MemoryStrategy::MaximizeCache {
                // The most KV cache; ties go to the first name.
                let best = nodes
                    .iter()
                    .map(|(n, ps)| {
                        let kv = kv_at(
                            fleet.node(n).unwrap(),
                            &spec,
                            arch,
                            &p.shape,
                            *ps.last().unwrap(),
                        );
                        (std::cmp::Reverse(kv), n.clone())
                    })
                    .min()
                    .unwrap();
                prop_assert_eq!(&p.node, &best.1);
            }

            // The candidate GPUs are exactly what the kubelet may hand out.
            let cands = candidates(node, &spec);
            prop_assert_eq!(
                &p.candidate_gpus,
                &cands.iter().map(|g| g.index).collect::<Vec<_>>()
            );
            let e = estimate(arch, &p.shape, &facts(cands[0])).unwrap();
            prop_assert_eq!(&p.estimate, &e);
            prop_assert_eq!(p.launch_plan.startup_overhead_bytes, outside(&e));
            prop_assert_eq!(p.launch_plan.required_bytes, required(&e));
            prop_assert_eq!(p.launch_plan.min_kv_bytes, min_kv(&e, concurrency));
            let flag = p
                .command
                .iter()
                .position(|a| a == "--gpu-memory-utilization")
                .map(|i| p.command[i + 1].clone());
            prop_assert_eq!(flag, Some(format!("{u:.2}")));

            for &i in &p.candidate_gpus {
                let g = node.gpus.iter().find(|g| g.index == i).unwrap();
                let less = if shared {
                    promised.get(&(p.node.clone(), i)).copied().unwrap_or(0)
                } else {
                    0
                };
                let free = g.free_bytes.saturating_sub(less);
                // (a) vLLM's startup check on every candidate GPU, and our headroom on top.
                let after = free.checked_sub(p.launch_plan.startup_overhead_bytes);
                prop_assert!(
                    after.is_some_and(|a| passes_startup_check(g.total_bytes, a, u)),
                    "{} GPU {i}: u {u} fails the startup check with {free} free",
                    p.node
                );
                let after = after.unwrap();
                let requested = (g.total_bytes as u128 * pct as u128).div_ceil(100) as u64;
                prop_assert!(
                    requested + p.launch_plan.headroom_bytes <= after,
                    "{} GPU {i}: headroom broken",
                    p.node
                );
                // (b) the KV budget holds.
                let budget =
                    ((g.total_bytes - g.reserved_bytes) as u128 * pct as u128 / 100) as u64;
                prop_assert!(
                    budget.saturating_sub(p.launch_plan.required_bytes)
                        >= p.launch_plan.min_kv_bytes,
                    "{} GPU {i}: budget {budget} - required {} < min kv {}",
                    p.node,
                    p.launch_plan.required_bytes,
                    p.launch_plan.min_kv_bytes
                );
                prop_assert!(p.fit.kv_cache_bytes >= p.launch_plan.min_kv_bytes);
                // Loading the weights fits.
                prop_assert!(
                    free.saturating_sub(e.startup_overhead_bytes) >= e.weights_load_peak_bytes
                );
            }

            ledger.reserve(reservation_for(
                pod(&name),
                &p,
                node,
                spec.gpu.sharing == Sharing::Shared,
                now,
            ));
            if shared {
                let bytes =
                    (g_total(node) as f64 * u).ceil() as u64 + p.launch_plan.startup_overhead_bytes;
                *taken.bytes.entry(p.node.clone()).or_default() += bytes;
                for &i in &p.candidate_gpus {
                    *promised.entry((p.node.clone(), i)).or_default() += bytes;
                }
            } else {
                *taken.gpus.entry(p.node.clone()).or_default() += p.shape.tensor_parallel_size;
            }
        }
    }
    // (c) never double-booked: whole GPUs on exclusive nodes, bytes on shared ones.
    for node in &fleet.nodes {
        if node.sharing == Sharing::Exclusive {
            let unallocated = node
                .gpus
                .iter()
                .filter(|g| g.allocated_to.is_none())
                .count();
            let booked = ledger.reserved_gpus(&node.name);
            prop_assert_eq!(booked, taken.gpus.get(&node.name).copied().unwrap_or(0));
            prop_assert!(
                booked as usize <= unallocated,
                "{}: {booked} GPUs booked, {unallocated} unallocated",
                node.name
            );
        } else {
            let booked = ledger.reserved_shared_bytes(&node.name);
            prop_assert_eq!(booked, taken.bytes.get(&node.name).copied().unwrap_or(0));
            for g in &node.gpus {
                prop_assert!(
                    booked <= g.free_bytes,
                    "{} GPU {}: {booked} bytes promised, {} free",
                    node.name,
                    g.index,
                    g.free_bytes
                );
            }
        }
    }
    Ok(())
}

fn g_total(node: &FleetNode) -> u64 {
    node.gpus[0].total_bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(384)
    ))]

    /// Random fleets, several deployments against one ledger: every placement passes vLLM's
    /// startup check and KV budget on every candidate GPU, nothing is double-booked, and the
    /// planner admits exactly what the brute force admits, with the same shape preference.
    #[test]
    fn planner_agrees_with_brute_force_on_random_fleets(
        nodes in proptest::collection::vec(node_gen(), 1..=6),
        deployments in proptest::collection::vec(deployment_gen(), 1..=4),
    ) {
        let fleet = build_fleet(&nodes);
        check_sequence(&fleet, &deployments)?;
    }
}

// ---------------------------------------------------------------------------------------------
// The classic case: an 8 GiB desktop GPU with 6.92 GiB free.
// ---------------------------------------------------------------------------------------------

const DESKTOP_FREE: u64 = 7_430_346_834;
const DESKTOP_FOREIGN: u64 = 899_540_910;

fn desktop() -> Fleet {
    let mut g = mk_gpu(RTX_3070, 0, DESKTOP_FOREIGN, None);
    // The driver reports a little more in use than the one process it names.
    g.free_bytes = DESKTOP_FREE;
    mk_fleet(vec![mk_node("desktop", vec![g])])
}

#[test]
fn classic_desktop_gpu_gets_a_utilization_that_passes_where_0_9_would_not() {
    let fleet = desktop();
    let arch = arch("meta-llama/Llama-3.2-1B-Instruct");
    let mut s = spec("meta-llama/Llama-3.2-1B-Instruct");
    s.max_model_len = Some(4096);
    let p = placed(plan_replica(
        &fleet,
        &Ledger::default(),
        &request("llama-1b-0", &arch, &s, VllmFamily::V0_11),
    ));
    let g = &fleet.nodes[0].gpus[0];
    let after_overhead = g.free_bytes - p.launch_plan.startup_overhead_bytes;
    assert!(passes_startup_check(
        g.total_bytes,
        after_overhead,
        p.fit.utilization()
    ));
    // vLLM's old default asks for ceil(0.9 * 8 GiB) = 7.2 GiB: more than is free at all.
    assert!(!passes_startup_check(g.total_bytes, g.free_bytes, 0.9));
    assert!(p.fit.utilization() < 0.9);
    // floor((free - overhead - CUDA graphs - headroom) / total): 0.71, the most that is safe
    // (vLLM 0.11's own 0.66 GiB before its check: `model::family`).
    let outside = p.launch_plan.startup_overhead_bytes + p.launch_plan.headroom_bytes;
    assert_eq!(
        p.fit.utilization_pct,
        (g.free_bytes - outside) * 100 / g.total_bytes
    );
    assert_eq!(p.fit.utilization_pct, 71, "{}", p.reason);
    assert_eq!(
        (p.node.as_str(), p.candidate_gpus.as_slice()),
        ("desktop", &[0][..])
    );
    assert!(
        p.command
            .ends_with(&["--gpu-memory-utilization".into(), "0.71".into()])
    );
    // A sentence a person reads: shape, node, GPUs, utilization, KV cache and weights.
    let words = format!(
        "tp 1, no quantization, kv cache auto on desktop (candidate GPUs [0]): utilization 0.71 leaves {:.2} GiB of KV cache per GPU ({} tokens) after {:.2} GiB of weights",
        p.fit.kv_cache_bytes as f64 / GIB as f64,
        p.kv_cache_tokens,
        p.estimate.weights_bytes_per_gpu as f64 / GIB as f64,
    );
    assert_eq!(p.reason, words);
    assert!(p.kv_cache_tokens >= 4096);
}

#[test]
fn classic_desktop_gpu_refuses_a_model_too_big_with_the_bytes_and_the_culprit() {
    let fleet = desktop();
    let arch = arch("meta-llama/Llama-3.1-8B-Instruct");
    let mut s = spec("meta-llama/Llama-3.1-8B-Instruct");
    s.max_model_len = Some(4096);
    s.tensor_parallel.sizes = vec![1];
    let lines = refused(plan_replica(
        &fleet,
        &Ledger::default(),
        &request("llama-8b-0", &arch, &s, VllmFamily::V0_11),
    ));
    let e = estimate(
        &arch,
        &candidate_shapes(&s, 4096, VllmFamily::V0_11)[0],
        &facts(&fleet.nodes[0].gpus[0]),
    )
    .unwrap();
    let needed = (e.weights_load_peak_bytes + e.startup_overhead_bytes) as f64 / GIB as f64;
    assert_eq!(
        lines[0],
        format!(
            "desktop GPU 0: needs {needed:.1} GiB free, has 6.9 GiB (another process uses 0.8 GiB) [tp 1, no quantization, kv cache auto]"
        ),
        "{lines:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Refusal reasons.
// ---------------------------------------------------------------------------------------------

#[test]
fn refusal_names_the_most_unallocated_gpus_any_node_has() {
    // Two nodes of 4 GPUs, two of them held by running pods on each.
    let half_held = |name: &str| {
        let gpus = (0..4)
            .map(|i| {
                let holder = (i < 2).then(|| pod(&format!("{name}-busy-{i}")));
                mk_gpu(H100, i, if i < 2 { 60 * GIB } else { 0 }, holder)
            })
            .collect();
        mk_node(name, gpus)
    };
    let fleet = mk_fleet(vec![half_held("h100-b"), half_held("h100-a")]);
    let arch = arch("meta-llama/Llama-3.1-70B-Instruct");
    let mut s = spec("meta-llama/Llama-3.1-70B-Instruct");
    s.max_model_len = Some(8192);
    s.tensor_parallel.sizes = vec![4];
    let lines = refused(plan_replica(
        &fleet,
        &Ledger::default(),
        &request("llama-70b-0", &arch, &s, VllmFamily::V0_11),
    ));
    assert_eq!(
        lines[0], "no node has 4 unallocated GPUs (most: 2 on h100-a)",
        "{lines:#?}"
    );
    // 70B in bf16 fits the two free H100s of one node: the hint says so.
    assert!(
        lines.contains(
            &"fits with tensor parallel size 2 (not in spec.tensorParallel.sizes)".into()
        ),
        "{lines:#?}"
    );
}

/// Free bytes one GPU needs for `shape` at the least utilization that holds the need.
fn needed_free(arch: &Architecture, spec: &VllmDeploymentSpec, shape: &Shape, g: &Gpu) -> u64 {
    let e = estimate(arch, shape, &facts(g)).unwrap();
    let need = required(&e) + min_kv(&e, spec.min_concurrency as u64);
    let pct = (need as u128 * 100).div_ceil((g.total_bytes - g.reserved_bytes) as u128);
    let at_pct = (g.total_bytes as u128 * pct).div_ceil(100) as u64;
    (at_pct + outside(&e) + headroom_bytes(spec))
        .max(e.weights_load_peak_bytes + e.startup_overhead_bytes)
}

#[test]
fn refusal_says_fp8_would_fit_when_only_fp8_fits() {
    let arch = arch("meta-llama/Llama-3.1-8B-Instruct");
    let mut s = spec("meta-llama/Llama-3.1-8B-Instruct");
    s.max_model_len = Some(32768);
    s.tensor_parallel.sizes = vec![1];
    // One H100 with free memory halfway between what fp8 needs and what bf16 needs (16 GiB of
    // weights cannot keep 32k tokens of KV cache beside a process using most of the GPU).
    let idle = mk_gpu(H100, 0, 0, None);
    let shapes = candidate_shapes(
        &VllmDeploymentSpec {
            quantization: vllm_operator::api::QuantizationSpec {
                allowed: vec![Quantization::None, Quantization::Fp8],
            },
            ..s.clone()
        },
        32768,
        VllmFamily::V0_11,
    );
    let (none, fp8) = (&shapes[0], &shapes[1]);
    assert_eq!(fp8.quantization, Quantization::Fp8);
    let need_none = needed_free(&arch, &s, none, &idle);
    let need_fp8 = needed_free(&arch, &s, fp8, &idle);
    assert!(need_fp8 < need_none);
    let free = (need_fp8 + need_none) / 2;
    let usable = H100.total_bytes - H100.reserved_bytes;
    let fleet = mk_fleet(vec![mk_node(
        "h100-a",
        vec![mk_gpu(H100, 0, usable - free, None)],
    )]);
    let lines = refused(plan_replica(
        &fleet,
        &Ledger::default(),
        &request("llama-8b-0", &arch, &s, VllmFamily::V0_11),
    ));
    let gib = |b: u64| b as f64 / GIB as f64;
    assert_eq!(
        lines[0],
        format!(
            "h100-a GPU 0: needs {:.1} GiB free, has {:.1} GiB (another process uses {:.1} GiB) [tp 1, no quantization, kv cache auto]",
            gib(need_none),
            gib(free),
            gib(usable - free)
        )
    );
    assert_eq!(
        lines[1],
        "fits with quantization fp8 (not allowed by spec.quantization.allowed)"
    );
    // Allowed, fp8 is what it gets.
    s.quantization.allowed = vec![Quantization::None, Quantization::Fp8];
    let p = placed(plan_replica(
        &fleet,
        &Ledger::default(),
        &request("llama-8b-0", &arch, &s, VllmFamily::V0_11),
    ));
    assert_eq!(p.shape.quantization, Quantization::Fp8);
    assert!(p.command.windows(2).any(|w| w == ["--quantization", "fp8"]));
}

fn labelled_fleet() -> (Vec<GpuNode>, Vec<Node>) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/planner/labelled-fleet.yaml");
    let mut gpunodes = Vec::new();
    let mut nodes = Vec::new();
    for obj in read_objects(&path).unwrap() {
        match obj {
            Object::GpuNode(g) => gpunodes.push(*g),
            Object::Node(n) => nodes.push(*n),
            other => panic!("unexpected {other:?}"),
        }
    }
    (gpunodes, nodes)
}

#[test]
fn stale_reports_selectors_and_taints_each_get_their_reason() {
    let (gpunodes, nodes) = labelled_fleet();
    let fleet = Fleet::from_objects(
        &gpunodes,
        &nodes,
        ts("2026-11-26T12:00:30Z"),
        Duration::from_secs(120),
    );
    assert_eq!(
        fleet.node("stale-b").unwrap().ineligible.as_deref(),
        Some("agent report is stale (last at 2026-11-26T11:50:00Z, more than 2m0s ago)")
    );
    assert_eq!(fleet.node("fresh-a").unwrap().allocatable_gpus, Some(1));
    let arch = arch("meta-llama/Llama-3.1-8B-Instruct");
    let mut s = spec("meta-llama/Llama-3.1-8B-Instruct");
    s.max_model_len = Some(8192);
    s.node_selector = BTreeMap::from([("pool".to_string(), "serving".to_string())]);
    // Two replicas: the first takes fresh-a, the second finds every other node ruled out.
    s.replicas = 2;
    let mut ledger = Ledger::default();
    let (placements, lines) = plan_all(&fleet, &mut ledger, "llama-8b", &arch, &s);
    assert_eq!(placements.len(), 1);
    assert_eq!(placements[0].node, "fresh-a");
    assert_eq!(
        lines,
        vec![
            "no node has 1 unallocated GPUs (most: 0 on fresh-a)".to_string(),
            "stale-b: agent report is stale (last at 2026-11-26T11:50:00Z, more than 2m0s ago)"
                .to_string(),
            "plain-d: does not match spec.nodeSelector pool=serving".to_string(),
            "tainted-c: has taint dedicated:NoSchedule that the deployment does not tolerate"
                .to_string(),
        ]
    );
    // Tolerating the taint opens tainted-c.
    s.tolerations =
        vec![serde_json::from_value(serde_json::json!(
        {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}
    ))
    .unwrap()];
    let p = placed(plan_replica(
        &fleet,
        &ledger,
        &request("llama-8b-1", &arch, &s, VllmFamily::V0_11),
    ));
    assert_eq!(p.node, "tainted-c");
}

#[test]
fn the_only_node_with_free_gpu_memory_lacks_the_disk_for_the_model_cache() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/planner/disk-fleet.yaml");
    let (mut gpunodes, mut nodes) = (Vec::new(), Vec::new());
    for obj in read_objects(&path).unwrap() {
        match obj {
            Object::GpuNode(g) => gpunodes.push(*g),
            Object::Node(n) => nodes.push(*n),
            other => panic!("unexpected {other:?}"),
        }
    }
    let fleet = Fleet::from_objects(
        &gpunodes,
        &nodes,
        ts("2026-11-26T12:00:00Z"),
        Duration::from_secs(120),
    );
    assert_eq!(
        fleet
            .node("small-disk")
            .unwrap()
            .allocatable_ephemeral_bytes,
        Some(10 * GIB)
    );
    let arch = arch("meta-llama/Llama-3.1-8B-Instruct");
    let mut s = spec("meta-llama/Llama-3.1-8B-Instruct");
    s.max_model_len = Some(8192);
    let lines = refused(plan_replica(
        &fleet,
        &Ledger::default(),
        &request("llama-8b-0", &arch, &s, VllmFamily::V0_11),
    ));
    // 8,030,261,248 bf16 parameters = 14.96 GiB; * 1.05 + 1 GiB = 16.7 -> 17 GiB.
    assert_eq!(
        lines,
        vec![
            "small-disk: allocatable ephemeral-storage 10.0 GiB is less than the 17.0 GiB the model cache needs (checkpoint 15.0 GiB + 5% + 1 GiB)".to_string(),
            "busy: no usable GPU: all allocated, or none matches spec.gpu.products / minComputeCapability".to_string(),
            "fits with spec.modelCache.ephemeral or persistentVolumeClaim (the model cache then does not use the node's disk)".to_string(),
        ]
    );
    // The same replica with its cache on a claim fits the idle GPU.
    s.model_cache = Some(
        serde_json::from_value(
            serde_json::json!({"persistentVolumeClaim": {"claimName": "models"}}),
        )
        .unwrap(),
    );
    let p = placed(plan_replica(
        &fleet,
        &Ledger::default(),
        &request("llama-8b-0", &arch, &s, VllmFamily::V0_11),
    ));
    assert_eq!(p.node, "small-disk");
    // A fleet file without Node objects says nothing about disk: the scheduler has the last word.
    let fleet = Fleet::from_objects(
        &gpunodes,
        &[],
        ts("2026-11-26T12:00:00Z"),
        Duration::from_secs(120),
    );
    s.model_cache = None;
    let p = placed(plan_replica(
        &fleet,
        &Ledger::default(),
        &request("llama-8b-0", &arch, &s, VllmFamily::V0_11),
    ));
    assert_eq!(p.node, "small-disk");
}

// ---------------------------------------------------------------------------------------------
// Preference order and determinism.
// ---------------------------------------------------------------------------------------------

#[test]
fn no_quantization_is_preferred_over_fp8_when_both_fit() {
    let fleet = mk_fleet(vec![idle_node("h100-a", H100, 1)]);
    let arch = arch("meta-llama/Llama-3.1-8B-Instruct");
    let mut s = spec("meta-llama/Llama-3.1-8B-Instruct");
    s.max_model_len = Some(8192);
    s.quantization.allowed = vec![Quantization::Fp8, Quantization::None];
    s.kv_cache_dtype.allowed = vec![KvCacheDtype::Fp8, KvCacheDtype::Auto];
    let p = placed(plan_replica(
        &fleet,
        &Ledger::default(),
        &request("llama-8b-0", &arch, &s, VllmFamily::V0_11),
    ));
    assert_eq!(p.shape.quantization, Quantization::None);
    assert_eq!(p.shape.kv_cache_dtype, KvCacheDtype::Auto);
    assert!(!p.command.contains(&"--quantization".to_string()));
}

#[test]
fn smaller_tensor_parallel_size_is_preferred() {
    let fleet = mk_fleet(vec![idle_node("h100-a", H100, 8)]);
    let qwen = arch("Qwen/Qwen2.5-7B-Instruct");
    let mut s = spec("Qwen/Qwen2.5-7B-Instruct");
    s.max_model_len = Some(8192);
    s.tensor_parallel.sizes = vec![4, 1, 2];
    let p = placed(plan_replica(
        &fleet,
        &Ledger::default(),
        &request("qwen-0", &qwen, &s, VllmFamily::V0_11),
    ));
    assert_eq!(p.shape.tensor_parallel_size, 1);
    // 70B does not fit one H100: the smallest size that does is 2.
    let arch70 = arch("meta-llama/Llama-3.1-70B-Instruct");
    let mut s = spec("meta-llama/Llama-3.1-70B-Instruct");
    s.max_model_len = Some(8192);
    s.tensor_parallel.sizes = vec![8, 4, 2, 1];
    let p = placed(plan_replica(
        &fleet,
        &Ledger::default(),
        &request("llama-70b-0", &arch70, &s, VllmFamily::V0_11),
    ));
    assert_eq!(p.shape.tensor_parallel_size, 2);
}

/// `roomy` idle, `snug` with a foreign process holding 40 GiB: both take the 8B model.
fn roomy_and_snug() -> Fleet {
    mk_fleet(vec![
        mk_node("snug", vec![mk_gpu(H100, 0, 40 * GIB, None)]),
        mk_node("roomy", vec![mk_gpu(H100, 0, 0, None)]),
    ])
}

#[test]
fn maximize_cache_takes_the_node_with_more_kv_cache_and_pack_the_tightest() {
    let fleet = roomy_and_snug();
    let arch = arch("meta-llama/Llama-3.1-8B-Instruct");
    let mut s = spec("meta-llama/Llama-3.1-8B-Instruct");
    s.max_model_len = Some(8192);
    s.memory.strategy = MemoryStrategy::MaximizeCache;
    let req = request("llama-8b-0", &arch, &s, VllmFamily::V0_11);
    let most = placed(plan_replica(&fleet, &Ledger::default(), &req));
    assert_eq!(most.node, "roomy");
    assert_eq!(most.fit.utilization_pct, 95);

    s.memory.strategy = MemoryStrategy::Pack;
    let req = request("llama-8b-0", &arch, &s, VllmFamily::V0_11);
    let tight = placed(plan_replica(&fleet, &Ledger::default(), &req));
    assert_eq!(tight.node, "snug");
    // Pack takes the least utilization that holds the need; MaximizeCache the most.
    assert!(tight.fit.utilization_pct < most.fit.utilization_pct);
    assert!(tight.fit.kv_cache_bytes >= tight.launch_plan.min_kv_bytes);
    let one_less = (H100.total_bytes - H100.reserved_bytes) / 100 * (tight.fit.utilization_pct - 1);
    assert!(
        one_less < tight.launch_plan.required_bytes + tight.launch_plan.min_kv_bytes,
        "Pack could have taken {}%",
        tight.fit.utilization_pct - 1
    );
}

#[test]
fn ties_go_to_the_first_node_name_and_the_same_inputs_give_the_same_answer() {
    let fleet = mk_fleet(vec![
        idle_node("gpu-c", H100, 2),
        idle_node("gpu-a", H100, 2),
        idle_node("gpu-b", H100, 2),
    ]);
    let arch = arch("meta-llama/Llama-3.1-8B-Instruct");
    for strategy in [MemoryStrategy::MaximizeCache, MemoryStrategy::Pack] {
        let mut s = spec("meta-llama/Llama-3.1-8B-Instruct");
        s.max_model_len = Some(8192);
        s.memory.strategy = strategy;
        let req = request("llama-8b-0", &arch, &s, VllmFamily::V0_11);
        let first = plan_replica(&fleet, &Ledger::default(), &req);
        assert_eq!(placed(first.clone()).node, "gpu-a");
        for _ in 0..3 {
            assert_eq!(plan_replica(&fleet, &Ledger::default(), &req), first);
        }
    }
    // The same fleet built in another order plans the same replicas the same way.
    let mut reversed = fleet.clone();
    reversed.nodes.reverse();
    let reversed = mk_fleet(reversed.nodes);
    let mut s = spec("meta-llama/Llama-3.1-8B-Instruct");
    s.max_model_len = Some(8192);
    s.replicas = 5;
    let (a, _) = plan_all(&fleet, &mut Ledger::default(), "llama-8b", &arch, &s);
    let (b, _) = plan_all(&reversed, &mut Ledger::default(), "llama-8b", &arch, &s);
    assert_eq!(a, b);
    let nodes: Vec<&str> = a.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(nodes, ["gpu-a", "gpu-a", "gpu-b", "gpu-b", "gpu-c"]);
}

// ---------------------------------------------------------------------------------------------
// The reservation ledger.
// ---------------------------------------------------------------------------------------------

#[test]
fn replicas_of_one_and_of_two_deployments_never_count_on_the_same_gpus() {
    let fleet = mk_fleet(vec![idle_node("h100-a", H100, 8)]);
    let arch70 = arch("meta-llama/Llama-3.1-70B-Instruct");
    let mut big = spec("meta-llama/Llama-3.1-70B-Instruct");
    big.max_model_len = Some(8192);
    big.tensor_parallel.sizes = vec![4];
    big.replicas = 3;
    let mut ledger = Ledger::default();
    let (placements, lines) = plan_all(&fleet, &mut ledger, "llama-70b", &arch70, &big);
    assert_eq!(placements.len(), 2, "two tp-4 replicas fill 8 GPUs");
    assert_eq!(ledger.reserved_gpus("h100-a"), 8);
    assert_eq!(
        lines[0], "no node has 4 unallocated GPUs (most: 0 on h100-a)",
        "{lines:#?}"
    );

    // A second deployment finds nothing left, then gets room when one reservation goes.
    let arch1 = arch("meta-llama/Llama-3.2-1B-Instruct");
    let mut small = spec("meta-llama/Llama-3.2-1B-Instruct");
    small.max_model_len = Some(4096);
    let req = request("llama-1b-0", &arch1, &small, VllmFamily::V0_11);
    let lines = refused(plan_replica(&fleet, &ledger, &req));
    assert_eq!(
        lines[0],
        "no node has 1 unallocated GPUs (most: 0 on h100-a)"
    );
    ledger.release(&pod("llama-70b-1")).unwrap();
    let (small_placed, _) = plan_all(&fleet, &mut ledger, "llama-1b", &arch1, &{
        let mut s = small.clone();
        s.replicas = 4;
        s
    });
    assert_eq!(small_placed.len(), 4);
    assert_eq!(ledger.reserved_gpus("h100-a"), 8);
    let lines = refused(plan_replica(
        &fleet,
        &ledger,
        &request("llama-1b-9", &arch1, &small, VllmFamily::V0_11),
    ));
    assert_eq!(
        lines[0],
        "no node has 1 unallocated GPUs (most: 0 on h100-a)"
    );
}

#[test]
fn shared_gpus_count_bytes_promised_to_earlier_replicas() {
    let mut node = idle_node("h100-shared", H100, 1);
    node.sharing = Sharing::Shared;
    let fleet = mk_fleet(vec![node]);
    let arch = arch("meta-llama/Llama-3.2-1B-Instruct");
    let mut s = spec("meta-llama/Llama-3.2-1B-Instruct");
    s.max_model_len = Some(4096);
    s.memory.strategy = MemoryStrategy::Pack;
    s.replicas = 40;
    let mut ledger = Ledger::default();
    let (placements, lines) = plan_all(&fleet, &mut ledger, "llama-1b", &arch, &s);
    assert!(
        placements.len() > 1 && placements.len() < 40,
        "{}",
        placements.len()
    );
    let g = &fleet.nodes[0].gpus[0];
    let promised: u64 = placements
        .iter()
        .map(|p| {
            (g.total_bytes as f64 * p.fit.utilization()).ceil() as u64
                + p.launch_plan.startup_overhead_bytes
        })
        .sum();
    assert_eq!(ledger.reserved_shared_bytes("h100-shared"), promised);
    assert!(promised <= g.free_bytes);
    assert!(
        lines[0].starts_with("h100-shared GPU 0: needs "),
        "{lines:#?}"
    );
}

#[test]
fn settle_releases_on_report_timeout_and_node_gone() {
    let t0 = ts("2026-11-26T12:00:00Z");
    let mut fleet = mk_fleet(vec![
        idle_node("h100-a", H100, 4),
        idle_node("h100-b", H100, 4),
    ]);
    let mut ledger = Ledger::default();
    let r = |name: &str, node: &str, at: Timestamp| vllm_operator::plan::Reservation {
        pod: pod(name),
        node: node.into(),
        gpus: 1,
        shared_bytes: 0,
        exact_gpus: Vec::new(),
        created_at: at,
    };
    ledger.reserve(r("seen", "h100-a", t0));
    ledger.reserve(r("seen-early", "h100-a", ts("2026-11-26T12:00:20Z")));
    ledger.reserve(r("late", "h100-a", t0));
    ledger.reserve(r("young", "h100-a", ts("2026-11-26T12:04:00Z")));
    ledger.reserve(r("orphan", "h100-gone", t0));
    assert_eq!(ledger.reserved_gpus("h100-a"), 4);

    // The agent reports `seen` on GPU 0 after its reservation; `seen-early` shows as a process
    // in a report older than its reservation (a previous pod of that name), which proves
    // nothing.
    let a = &mut fleet.nodes[0];
    a.observed_at = Some(ts("2026-11-26T12:00:10Z"));
    a.gpus[0].allocated_to = Some(pod("seen"));
    a.gpus[1].processes = vec![(7, GIB, Some(pod("seen-early")))];
    let mut released = ledger.settle(&fleet, ts("2026-11-26T12:01:00Z"), Duration::from_secs(300));
    released.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        released,
        vec![
            (pod("orphan"), Released::NodeGone),
            (pod("seen"), Released::Reported)
        ]
    );
    assert_eq!(ledger.len(), 3);
    // The next report, taken after the reservation, shows it.
    fleet.nodes[0].observed_at = Some(ts("2026-11-26T12:00:40Z"));
    let released = ledger.settle(&fleet, ts("2026-11-26T12:01:00Z"), Duration::from_secs(300));
    assert_eq!(released, vec![(pod("seen-early"), Released::Reported)]);

    // Five minutes on, `late` has not shown up: released; `young` is kept.
    let released = ledger.settle(&fleet, ts("2026-11-26T12:05:01Z"), Duration::from_secs(300));
    assert_eq!(released, vec![(pod("late"), Released::TimedOut)]);
    assert_eq!(
        ledger
            .iter()
            .map(|r| r.pod.name.as_str())
            .collect::<Vec<_>>(),
        ["young"]
    );

    // Released GPUs are plannable again.
    assert_eq!(ledger.reserved_gpus("h100-a"), 1);
    fleet.nodes.retain(|n| n.name != "h100-a");
    let released = ledger.settle(&fleet, ts("2026-11-26T12:05:02Z"), Duration::from_secs(300));
    assert_eq!(released, vec![(pod("young"), Released::NodeGone)]);
    assert!(ledger.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Exact GPUs through DRA.
// ---------------------------------------------------------------------------------------------

/// Publish every GPU of `node` as the NVIDIA DRA driver does (`gpu-<index>` in the node's pool).
fn publish(mut node: FleetNode) -> FleetNode {
    let pool = node.name.clone();
    for g in &mut node.gpus {
        g.dra = Some(DraDevice {
            driver: NVIDIA_DRA_DRIVER.into(),
            pool: pool.clone(),
            device: format!("gpu-{}", g.index),
        });
    }
    node
}

/// One node of 4 H100 80GB, GPU 0 holding 60 GiB for a process outside Kubernetes.
fn h100_gpu0_busy() -> FleetNode {
    let gpus = (0..4)
        .map(|i| mk_gpu(H100, i, if i == 0 { 60 * GIB } else { 0 }, None))
        .collect();
    mk_node("h100-node", gpus)
}

/// [`plan_all`] with a `--gpu-allocation` mode.
fn plan_all_with(
    fleet: &Fleet,
    ledger: &mut Ledger,
    name: &str,
    arch: &Architecture,
    spec: &VllmDeploymentSpec,
    alloc: GpuAllocation,
) -> (Vec<Placement>, Vec<String>) {
    let now = ts("2026-11-26T12:00:00Z");
    let mut out = Vec::new();
    for i in 0..spec.replicas {
        let pod_name = format!("{name}-{i}");
        let req = Request {
            gpu_allocation: alloc,
            ..request(&pod_name, arch, spec, VllmFamily::V0_11)
        };
        match plan_replica(fleet, ledger, &req) {
            Decision::Placed(p) => {
                let node = fleet.node(&p.node).unwrap();
                let shared = spec.gpu.sharing == Sharing::Shared;
                ledger.reserve(reservation_for(pod(&pod_name), &p, node, shared, now));
                out.push(*p);
            }
            Decision::Refused(r) => return (out, r),
        }
    }
    (out, Vec::new())
}

#[test]
fn with_slices_each_8b_replica_gets_one_exact_free_gpu_at_full_utilization_and_gpu0_is_untouched() {
    let fleet = mk_fleet(vec![publish(h100_gpu0_busy())]);
    let arch = arch("meta-llama/Llama-3.1-8B-Instruct");
    let mut s = spec("meta-llama/Llama-3.1-8B-Instruct");
    s.replicas = 3;
    let mut ledger = Ledger::default();
    let (placed, refused) =
        plan_all_with(&fleet, &mut ledger, "llama", &arch, &s, GpuAllocation::Auto);
    assert!(refused.is_empty(), "{refused:#?}");
    let mut got: Vec<u32> = Vec::new();
    for p in &placed {
        assert_eq!(p.shape.tensor_parallel_size, 1);
        assert!(p.candidate_gpus.is_empty(), "{}", p.reason);
        assert_eq!(p.exact_gpus.len(), 1);
        let g = &p.exact_gpus[0];
        assert_eq!(g.uuid, format!("GPU-{:04}", g.index));
        assert_eq!(g.device.device, format!("gpu-{}", g.index));
        // Full utilization: the spec's cap, limited only by the free GPU's own memory.
        assert_eq!(
            p.fit.utilization(),
            s.memory.max_utilization,
            "{}",
            p.reason
        );
        assert!(
            p.reason.contains(&format!("exact GPUs {} GPU-", g.index)),
            "{}",
            p.reason
        );
        got.push(g.index);
    }
    got.sort_unstable();
    assert_eq!(got, [1, 2, 3]);
    // A fourth replica would need GPU 0: its 19.5 GiB free do not hold the model with its
    // default 128 Ki-token context, so it is refused with GPU 0 named, not squeezed in.
    s.replicas = 1;
    let (more, why) = plan_all_with(
        &fleet,
        &mut ledger,
        "fourth",
        &arch,
        &s,
        GpuAllocation::Auto,
    );
    assert!(more.is_empty());
    assert!(
        why.iter().any(|l| l.contains("h100-node GPU 0")),
        "{why:#?}"
    );
}

#[test]
fn without_slices_the_worst_unallocated_gpu_decides_for_every_replica() {
    // The device plugin lets the kubelet hand out any unallocated GPU, GPU 0 included: every
    // replica must fit GPU 0's 19.5 GiB free. tp 1 and tp 2 of the 8B model with its default
    // 128 Ki-token context do not; tp 4 takes all four GPUs, GPU 0 among them, at the 0.20 that
    // GPU 0 allows, and leaves nothing for replicas 2 and 3. The same fleet with slices places
    // three replicas at 0.90 (above).
    let fleet = mk_fleet(vec![h100_gpu0_busy()]);
    let published = mk_fleet(vec![publish(h100_gpu0_busy())]);
    let arch = arch("meta-llama/Llama-3.1-8B-Instruct");
    let mut s = spec("meta-llama/Llama-3.1-8B-Instruct");
    s.replicas = 3;
    for (fleet, alloc) in [
        (&fleet, GpuAllocation::Auto),
        (&fleet, GpuAllocation::DevicePlugin),
        // Slices present but --gpu-allocation device-plugin: the same worst-GPU rule.
        (&published, GpuAllocation::DevicePlugin),
    ] {
        let (placed, why) = plan_all_with(fleet, &mut Ledger::default(), "llama", &arch, &s, alloc);
        assert_eq!(placed.len(), 1, "{alloc}: {why:#?}");
        let p = &placed[0];
        assert_eq!(p.shape.tensor_parallel_size, 4);
        assert_eq!(p.candidate_gpus, [0, 1, 2, 3]);
        assert!(p.exact_gpus.is_empty());
        assert_eq!(p.fit.utilization_pct, 20, "{}", p.reason);
        assert!(!why.is_empty());
    }
    s.tensor_parallel.sizes = vec![1];
    let (placed, why) = plan_all_with(
        &fleet,
        &mut Ledger::default(),
        "llama",
        &arch,
        &s,
        GpuAllocation::Auto,
    );
    assert!(placed.is_empty());
    assert!(
        why.iter().any(|l| l.contains("h100-node GPU 0")),
        "{why:#?}"
    );
    // With an 8 Ki-token context, tp 1 still does not fit GPU 0 (weights, activations and CUDA
    // graphs need 22.9 GiB free); tp 2 does, at the utilization GPU 0 allows, on all four
    // candidates: two replicas, and the third is refused.
    s.tensor_parallel.sizes = vec![1, 2, 4, 8];
    s.max_model_len = Some(8192);
    let (placed, why) = plan_all_with(
        &fleet,
        &mut Ledger::default(),
        "llama",
        &arch,
        &s,
        GpuAllocation::Auto,
    );
    assert_eq!(placed.len(), 2, "{why:#?}");
    for p in &placed {
        assert_eq!(p.shape.tensor_parallel_size, 2);
        assert_eq!(p.candidate_gpus, [0, 1, 2, 3]);
        assert!(p.exact_gpus.is_empty());
        assert!(p.fit.utilization() < 0.25, "{}", p.reason);
    }
    assert!(!why.is_empty());
    // With slices, the same three get the free GPUs at full utilization.
    let (placed, _) = plan_all_with(
        &published,
        &mut Ledger::default(),
        "llama",
        &arch,
        &s,
        GpuAllocation::Auto,
    );
    assert_eq!(placed.len(), 3);
    for p in &placed {
        assert_ne!(p.exact_gpus[0].index, 0);
        assert_eq!(p.fit.utilization(), s.memory.max_utilization);
    }
}

#[test]
fn auto_needs_every_usable_gpu_published_and_dra_refuses_the_others() {
    let arch = arch("meta-llama/Llama-3.2-1B-Instruct");
    let mut s = spec("meta-llama/Llama-3.2-1B-Instruct");
    s.max_model_len = Some(4096);
    // GPU 1 of the node is not published: the device plugin still owns it.
    let mut partly = publish(idle_node("partly", L4, 2));
    partly.gpus[1].dra = None;
    let fleet = mk_fleet(vec![partly]);
    let req = |alloc| Request {
        gpu_allocation: alloc,
        ..request("one", &arch, &s, VllmFamily::V0_11)
    };
    let p = placed(plan_replica(
        &fleet,
        &Ledger::default(),
        &req(GpuAllocation::Auto),
    ));
    assert_eq!(p.candidate_gpus, [0, 1]);
    assert!(p.exact_gpus.is_empty());
    // dra: only the published GPU.
    let p = placed(plan_replica(
        &fleet,
        &Ledger::default(),
        &req(GpuAllocation::Dra),
    ));
    assert_eq!(
        p.exact_gpus.iter().map(|g| g.index).collect::<Vec<_>>(),
        [0]
    );
    // dra on a node with nothing published: refused with the reason.
    let plain = mk_fleet(vec![idle_node("plain", L4, 2)]);
    let why = refused(plan_replica(
        &plain,
        &Ledger::default(),
        &req(GpuAllocation::Dra),
    ));
    assert!(
        why.iter()
            .any(|l| l.contains("plain") && l.contains("NVIDIA DRA driver")),
        "{why:#?}"
    );
    // dra on a shared node: a claim takes GPUs whole.
    let mut shared = publish(idle_node("shared", L4, 2));
    shared.sharing = Sharing::Shared;
    let why = refused(plan_replica(
        &mk_fleet(vec![shared]),
        &Ledger::default(),
        &req(GpuAllocation::Dra),
    ));
    assert!(why.iter().any(|l| l.contains("Shared")), "{why:#?}");
}

#[test]
fn exact_gpus_maximize_cache_takes_the_freest_and_pack_the_tightest_that_fits() {
    let arch = arch("meta-llama/Llama-3.2-1B-Instruct");
    let mut s = spec("meta-llama/Llama-3.2-1B-Instruct");
    s.max_model_len = Some(4096);
    s.tensor_parallel.sizes = vec![2];
    // Used: GPU 0 10 GiB, GPU 1 nothing, GPU 2 4 GiB, GPU 3 nothing, GPU 4 23 GiB (too full).
    let used = [10 * GIB, 0, 4 * GIB, 0, 23 * GIB];
    let node = publish(mk_node(
        "l4s",
        used.iter()
            .enumerate()
            .map(|(i, u)| mk_gpu(L4, i as u32, *u, None))
            .collect(),
    ));
    let fleet = mk_fleet(vec![node]);
    let req = request("one", &arch, &s, VllmFamily::V0_11);
    let p = placed(plan_replica(&fleet, &Ledger::default(), &req));
    assert_eq!(
        p.exact_gpus.iter().map(|g| g.index).collect::<Vec<_>>(),
        [1, 3]
    );
    s.memory.strategy = MemoryStrategy::Pack;
    let req = request("one", &arch, &s, VllmFamily::V0_11);
    let p = placed(plan_replica(&fleet, &Ledger::default(), &req));
    assert_eq!(
        p.exact_gpus.iter().map(|g| g.index).collect::<Vec<_>>(),
        [0, 2]
    );
    // The utilization is the one GPUs 0 and 2 allow, not GPU 4's.
    let limit = fleet.nodes[0].gpus[0].free_bytes;
    assert!(
        (p.fit.utilization() * H100.total_bytes as f64) < limit as f64 * 4.0,
        "{}",
        p.reason
    );
}

/// A random fleet in which some nodes publish their GPUs (all, some or none).
fn build_dra_fleet(nodes: &[NodeGen], published: &[u8]) -> Fleet {
    let mut fleet = build_fleet(nodes);
    for (node, mode) in fleet.nodes.iter_mut().zip(published) {
        let n = node.gpus.len();
        let pool = node.name.clone();
        for g in &mut node.gpus {
            let on = match mode % 3 {
                0 => true,
                1 => g.index.is_multiple_of(2) || n == 1,
                _ => false,
            };
            if on {
                g.dra = Some(DraDevice {
                    driver: NVIDIA_DRA_DRIVER.into(),
                    pool: pool.clone(),
                    device: format!("gpu-{}", g.index),
                });
            }
        }
    }
    fleet
}

/// Per GPU: does some utilization in hundredths pass every rule for `shape` on it alone?
fn gpu_admits(g: &Gpu, arch: &Architecture, shape: &Shape, spec: &VllmDeploymentSpec) -> bool {
    match estimate(arch, shape, &facts(g)) {
        Ok(e) => (1..=100).any(|pct| works(g, g.free_bytes, &e, pct, spec)),
        Err(_) => false,
    }
}

/// Plan every deployment with `--gpu-allocation dra` against one ledger: every placement is
/// exact, its GPUs are published, free and never booked twice, each passes vLLM's startup check
/// and KV budget on its own, and the planner refuses exactly when no node has `tp` GPUs that
/// each admit a shape.
fn check_exact_sequence(fleet: &Fleet, deployments: &[DeploymentGen]) -> Result<(), TestCaseError> {
    let now = ts("2026-11-26T12:00:00Z");
    let mut ledger = Ledger::default();
    let mut booked: std::collections::BTreeSet<(String, String)> = Default::default();
    let archs: Vec<Architecture> = MODELS.iter().map(|m| arch(m)).collect();
    for (di, d) in deployments.iter().enumerate() {
        let spec = build_spec(d);
        let arch = &archs[d.model];
        let shapes = candidate_shapes(&spec, max_model_len(&spec, arch), d.family);
        for r in 0..spec.replicas {
            let name = format!("d{di}-{r}");
            let req = Request {
                gpu_allocation: GpuAllocation::Dra,
                ..request(&name, arch, &spec, d.family)
            };
            // The first shape some node admits, by exact GPUs: free, published, unbooked, on
            // an exclusive node.
            let free = |node: &FleetNode| -> Vec<Gpu> {
                node.gpus
                    .iter()
                    .filter(|g| {
                        node.sharing == Sharing::Exclusive
                            && g.dra.is_some()
                            && g.allocated_to.is_none()
                            && !booked.contains(&(node.name.clone(), g.uuid.clone()))
                    })
                    .cloned()
                    .collect()
            };
            let first = shapes.iter().position(|shape| {
                fleet.nodes.iter().any(|n| {
                    free(n)
                        .iter()
                        .filter(|g| gpu_admits(g, arch, shape, &spec))
                        .count()
                        >= shape.tensor_parallel_size as usize
                })
            });
            let p = match (plan_replica(fleet, &ledger, &req), first) {
                (Decision::Refused(lines), None) => {
                    prop_assert!(!lines.is_empty());
                    break;
                }
                (Decision::Refused(lines), Some(si)) => {
                    return Err(TestCaseError::fail(format!(
                        "refused {name} but {:?} fits by exact GPU; {lines:#?}",
                        shapes[si]
                    )));
                }
                (Decision::Placed(p), None) => {
                    return Err(TestCaseError::fail(format!(
                        "placed {name} ({}) where no node has enough admitting GPUs",
                        p.reason
                    )));
                }
                (Decision::Placed(p), Some(si)) => {
                    prop_assert_eq!(&p.shape, &shapes[si]);
                    *p
                }
            };
            let node = fleet.node(&p.node).unwrap();
            prop_assert!(p.candidate_gpus.is_empty());
            prop_assert_eq!(p.exact_gpus.len(), p.shape.tensor_parallel_size as usize);
            let u = p.fit.utilization();
            let pct = p.fit.utilization_pct;
            for x in &p.exact_gpus {
                let g = node.gpus.iter().find(|g| g.uuid == x.uuid);
                prop_assert!(g.is_some(), "{} not on {}", x.uuid, p.node);
                let g = g.unwrap();
                prop_assert_eq!(g.index, x.index);
                prop_assert_eq!(Some(&x.device), g.dra.as_ref());
                prop_assert!(
                    g.allocated_to.is_none(),
                    "{} GPU {} is a pod's",
                    p.node,
                    g.index
                );
                // Never double-booked.
                prop_assert!(
                    booked.insert((p.node.clone(), g.uuid.clone())),
                    "{} GPU {} booked twice",
                    p.node,
                    g.index
                );
                // Never over vLLM's startup check, our headroom and the KV budget.
                let after = g
                    .free_bytes
                    .checked_sub(p.launch_plan.startup_overhead_bytes);
                prop_assert!(
                    after.is_some_and(|a| passes_startup_check(g.total_bytes, a, u)),
                    "{} GPU {}: u {u} fails the startup check",
                    p.node,
                    g.index
                );
                let requested = (g.total_bytes as u128 * pct as u128).div_ceil(100) as u64;
                prop_assert!(requested + p.launch_plan.headroom_bytes <= after.unwrap());
                let budget =
                    ((g.total_bytes - g.reserved_bytes) as u128 * pct as u128 / 100) as u64;
                prop_assert!(
                    budget.saturating_sub(p.launch_plan.required_bytes)
                        >= p.launch_plan.min_kv_bytes
                );
                prop_assert!(
                    g.free_bytes.saturating_sub(p.estimate.startup_overhead())
                        >= p.estimate.weights_load_peak_bytes
                );
            }
            ledger.reserve(reservation_for(pod(&name), &p, node, false, now));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
    ))]

    /// Random fleets with published GPUs, several deployments by exact GPU against one ledger.
    #[test]
    fn exact_gpus_are_never_double_booked_and_never_over_the_startup_rule(
        nodes in proptest::collection::vec(node_gen(), 1..=5),
        published in proptest::collection::vec(0u8..3, 5),
        deployments in proptest::collection::vec(deployment_gen(), 1..=4),
    ) {
        let fleet = build_dra_fleet(&nodes, &published);
        check_exact_sequence(&fleet, &deployments)?;
    }

    /// Publishing GPUs never changes a device-plugin plan: with `--gpu-allocation
    /// device-plugin` the planner agrees with the brute force as before.
    #[test]
    fn device_plugin_plans_ignore_published_gpus(
        nodes in proptest::collection::vec(node_gen(), 1..=4),
        published in proptest::collection::vec(0u8..3, 4),
        d in deployment_gen(),
    ) {
        let plain = build_fleet(&nodes);
        let with = build_dra_fleet(&nodes, &published);
        let spec = build_spec(&d);
        let arch = arch(MODELS[d.model]);
        let req = Request {
            gpu_allocation: GpuAllocation::DevicePlugin,
            ..request("one", &arch, &spec, d.family)
        };
        let a = plan_replica(&plain, &Ledger::default(), &req);
        let b = plan_replica(&with, &Ledger::default(), &req);
        prop_assert_eq!(a, b);
    }
}
