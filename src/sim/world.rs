//! The simulated cluster: GPUs with free memory, pods, an agent that reports, a kubelet that
//! hands out GPUs, the launcher's rule and vLLM's startup check.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use super::vllm::{KvCapacity, StartFailure, VllmStart};
use super::{ExternalEvent, ExternalKind, SimEvent};
use crate::api::{self, GpuMemory, GpuNode, GpuProcess, PodRef};
use crate::controller::decide::{Action, PodPhase, PodView, StuckKind};
use crate::controller::failures::FailureKind;
use crate::controller::observe::observed_from_message;
use crate::fit::{GpuMemoryView, LaunchPlan, choose_for_gpus};
use crate::model::VllmFamily;

/// The node agent's default heartbeat.
const HEARTBEAT_SECONDS: i64 = 30;

#[derive(Clone, Debug)]
pub struct SimNode {
    pub object: GpuNode,
    /// The agent stopped reporting: the last report stays as it was.
    pub frozen: Option<GpuNode>,
    pub deleted: bool,
    /// The scheduler no longer admits pods here (a taint or pressure the GpuNode does not show).
    pub unschedulable: bool,
}

#[derive(Clone, Debug)]
pub struct SimPod {
    pub namespace: String,
    pub name: String,
    pub deployment: String,
    pub replica: u32,
    pub phase: PodPhase,
    pub placement: Option<api::Placement>,
    pub launch_plan: Option<LaunchPlan>,
    /// DRA: the UUIDs of the exact GPUs its ResourceClaim asks for (the scheduler allocates
    /// those or none). Empty on the device-plugin path, where the kubelet picks.
    pub exact_gpus: Vec<String>,
    /// GPU indices the kubelet gave it, and bytes vLLM holds on each.
    pub held: Vec<(u32, u64)>,
    /// What the launcher, the agent and vLLM let the controller see of its start.
    pub observed: crate::profile::Observed,
    /// What its vLLM really takes, per GPU (set at release).
    pub truth: Option<VllmTruth>,
}

/// What one replica's vLLM really takes on each of its GPUs: the estimate of its shape, plus
/// what `simulate --actual` says the model takes beyond it. The plan may have used a
/// MemoryProfile instead; the truth never does.
#[derive(Clone, Debug, PartialEq)]
pub struct VllmTruth {
    pub release: VllmFamily,
    pub v0_engine: bool,
    pub others_in_budget: bool,
    /// Non-KV bytes vLLM's profile counts in its budget.
    pub non_kv_bytes: u64,
    /// What vLLM holds before its free-memory snapshot.
    pub startup_overhead_bytes: u64,
    pub kv_bytes_per_token: u64,
    pub max_model_len: u64,
    pub block_size: u64,
}

impl VllmTruth {
    /// The estimate's figures for `placement`'s shape, moved by `extra_bytes` of non-KV memory
    /// per GPU (negative: less).
    pub fn of(placement: &crate::plan::Placement, family: VllmFamily, extra_bytes: i64) -> Self {
        let e = &placement.estimate;
        let base = e.estimated_required_bytes();
        let non_kv = if extra_bytes >= 0 {
            base.saturating_add(extra_bytes.unsigned_abs())
        } else {
            base.saturating_sub(extra_bytes.unsigned_abs())
        };
        VllmTruth {
            release: family,
            v0_engine: family.rules().v0_engine,
            others_in_budget: e.others_in_budget,
            non_kv_bytes: non_kv,
            startup_overhead_bytes: e.startup_overhead_bytes,
            kv_bytes_per_token: e.kv_cache_bytes_per_token_per_gpu,
            max_model_len: e.max_model_len,
            block_size: e.block_size,
        }
    }

    /// vLLM's start on the `rank`-th GPU of the replica, as it sees that GPU now.
    pub fn start_on(&self, rank: usize, gpu: GpuMemoryView, utilization: f64) -> VllmStart {
        VllmStart {
            release: self.release,
            v0_engine: self.v0_engine,
            // Each tensor-parallel worker runs on `cuda:<local rank>` of the GPUs the pod sees.
            device_index: rank as u32,
            total_bytes: gpu.cuda_total_bytes(),
            free_bytes: gpu.free_bytes,
            startup_overhead_bytes: self.startup_overhead_bytes,
            utilization,
            non_kv_bytes: self.non_kv_bytes,
            kv_bytes_per_token: self.kv_bytes_per_token,
            max_model_len: self.max_model_len,
            block_size: self.block_size,
            others_in_budget: self.others_in_budget,
        }
    }
}

/// vLLM's start on every rank: the startup check runs on each worker first (any failing one
/// ends the start), then the KV cache is sized to the smallest rank's blocks (vLLM takes the
/// minimum over workers: 0.33.0 `vllm/v1/engine/core.py` `_initialize_kv_caches`,
/// `vllm/v1/core/kv_cache_utils.py` `get_kv_cache_configs`).
pub fn start_ranks(starts: &[VllmStart]) -> Result<KvCapacity, StartFailure> {
    let results: Vec<Result<KvCapacity, StartFailure>> =
        starts.iter().map(super::vllm::start).collect();
    if let Some(Err(e)) = results
        .iter()
        .find(|r| matches!(r, Err(e) if e.kind == FailureKind::StartupCheck))
    {
        return Err(e.clone());
    }
    let mut best: Option<KvCapacity> = None;
    for r in results {
        let cap = r?;
        if best.as_ref().is_none_or(|b| cap.num_blocks < b.num_blocks) {
            best = Some(cap);
        }
    }
    best.ok_or_else(|| StartFailure {
        kind: FailureKind::NoKvCache,
        message: "no GPU to start on".into(),
    })
}

#[derive(Clone, Debug)]
pub struct World {
    pub nodes: BTreeMap<String, SimNode>,
    pub pods: Vec<SimPod>,
    pub startup_failures: u32,
    pub launcher_refusals: u32,
    /// Creates the API server would have rejected: a pod of that name still exists (being
    /// deleted), so the apply would patch it and try to re-add its scheduling gate.
    pub create_conflicts: Vec<String>,
    /// Per deployment (`namespace/name`): its vLLM release and the non-KV bytes per GPU its
    /// model really takes beyond the estimate (`simulate --actual`).
    pub deployments: BTreeMap<String, (VllmFamily, i64)>,
    next_pid: u32,
}

impl World {
    /// A node whose report is more than a heartbeat older than `start` (the fleet file's newest
    /// report) has an agent that is not reporting: its report stays as it is.
    pub fn new(gpunodes: Vec<GpuNode>, start: Timestamp) -> Self {
        let nodes = gpunodes
            .into_iter()
            .filter_map(|g| {
                let name = g.metadata.name.clone()?;
                let observed = g
                    .status
                    .as_ref()
                    .and_then(|s| s.observed_at.parse::<Timestamp>().ok());
                let silent =
                    observed.is_none_or(|t| start.duration_since(t).as_secs() > HEARTBEAT_SECONDS);
                Some((
                    name,
                    SimNode {
                        frozen: silent.then(|| g.clone()),
                        object: g,
                        deleted: false,
                        unschedulable: false,
                    },
                ))
            })
            .collect();
        Self {
            nodes,
            pods: Vec::new(),
            startup_failures: 0,
            launcher_refusals: 0,
            create_conflicts: Vec::new(),
            deployments: BTreeMap::new(),
            next_pid: 100_000,
        }
    }

    fn gpu_mut(&mut self, node: &str, index: u32) -> Option<&mut api::GpuInfo> {
        self.nodes
            .get_mut(node)?
            .object
            .status
            .as_mut()?
            .gpus
            .iter_mut()
            .find(|g| g.index == index)
    }

    /// Apply one outside event and describe it.
    pub fn apply_external(&mut self, e: &ExternalEvent, step: u32) -> SimEvent {
        let (reason, message) = match e.kind {
            ExternalKind::Stale => match self.nodes.get_mut(&e.node) {
                Some(n) => {
                    n.frozen = Some(n.object.clone());
                    (
                        "AgentStopped".to_string(),
                        format!("the node agent on {} stops reporting", e.node),
                    )
                }
                None => ("Ignored".to_string(), format!("no node {}", e.node)),
            },
            ExternalKind::Unschedulable => match self.nodes.get_mut(&e.node) {
                Some(n) => {
                    n.unschedulable = true;
                    (
                        "NodeUnschedulable".to_string(),
                        format!(
                            "the scheduler stops admitting pods on {} (a taint its GpuNode does not show)",
                            e.node
                        ),
                    )
                }
                None => ("Ignored".to_string(), format!("no node {}", e.node)),
            },
            ExternalKind::DeleteNode => {
                if let Some(n) = self.nodes.get_mut(&e.node) {
                    n.deleted = true;
                }
                for p in self.pods.iter_mut() {
                    if p.placement.as_ref().and_then(|pl| pl.node.as_deref())
                        == Some(e.node.as_str())
                    {
                        p.phase = PodPhase::Failed {
                            message: format!("node {} was deleted", e.node),
                        };
                        p.held.clear();
                    }
                }
                (
                    "NodeDeleted".to_string(),
                    format!("node {} is deleted with its pods", e.node),
                )
            }
            ExternalKind::Memory => {
                let bytes = e.bytes.unwrap_or(0);
                let gpu = e.gpu.unwrap_or(0);
                let pid = self.next_pid;
                self.next_pid = self.next_pid.saturating_add(1);
                match self.gpu_mut(&e.node, gpu) {
                    Some(g) => {
                        let m = &mut g.memory;
                        if bytes >= 0 {
                            let taken = bytes.unsigned_abs().min(m.free_bytes);
                            m.free_bytes -= taken;
                            m.used_bytes = m.used_bytes.saturating_add(taken);
                            g.processes.push(GpuProcess {
                                pid,
                                used_bytes: taken,
                                pod: None,
                            });
                        } else {
                            // Freed by processes outside Kubernetes, most recent first.
                            let mut left = bytes.unsigned_abs();
                            for p in g.processes.iter_mut().rev().filter(|p| p.pod.is_none()) {
                                let d = left.min(p.used_bytes);
                                p.used_bytes -= d;
                                left -= d;
                            }
                            let freed = bytes.unsigned_abs() - left;
                            g.processes.retain(|p| p.used_bytes > 0);
                            // Never above the GPU's total, whatever the file claimed was used.
                            m.free_bytes = m.free_bytes.saturating_add(freed).min(m.total_bytes);
                            m.used_bytes = m.used_bytes.saturating_sub(freed);
                        }
                        let verb = if bytes >= 0 { "takes" } else { "frees" };
                        (
                            "OutsideProcess".to_string(),
                            format!(
                                "a process outside Kubernetes {verb} {:.2} GiB on {} GPU {gpu}",
                                bytes.unsigned_abs() as f64 / (1u64 << 30) as f64,
                                e.node
                            ),
                        )
                    }
                    None => (
                        "Ignored".to_string(),
                        format!("no GPU {gpu} on node {}", e.node),
                    ),
                }
            }
        };
        SimEvent {
            step,
            object: format!("node/{}", e.node),
            type_: "Normal",
            reason,
            message,
        }
    }

    /// What the agents report now: live nodes report the truth, frozen ones their last report.
    pub fn reports(&self, now: Timestamp) -> Vec<GpuNode> {
        self.nodes
            .values()
            .filter(|n| !n.deleted)
            .map(|n| match &n.frozen {
                Some(old) => old.clone(),
                None => {
                    let mut g = n.object.clone();
                    if let Some(s) = g.status.as_mut() {
                        s.observed_at = now.to_string();
                    }
                    g
                }
            })
            .collect()
    }

    pub fn pod_views(&self, namespace: &str, deployment: &str) -> Vec<PodView> {
        self.pods
            .iter()
            .filter(|p| p.namespace == namespace && p.deployment == deployment)
            .map(|p| PodView {
                name: p.name.clone(),
                replica: p.replica,
                spec_hash: "sim".into(),
                phase: p.phase.clone(),
                placement: p.placement.clone(),
                observed: p.observed.clone(),
            })
            .collect()
    }

    /// Carry out one controller action.
    pub fn apply(&mut self, namespace: &str, deployment: &str, action: Action) {
        match action {
            Action::CreateGated { pod, replica } => {
                if let Some(old) = self
                    .pods
                    .iter()
                    .find(|p| p.namespace == namespace && p.name == pod)
                {
                    self.create_conflicts.push(format!(
                        "{namespace}/{pod}: created while a pod of that name is {:?}",
                        old.phase
                    ));
                    return;
                }
                self.pods.push(SimPod {
                    namespace: namespace.into(),
                    name: pod,
                    deployment: deployment.into(),
                    replica,
                    phase: PodPhase::Gated,
                    placement: None,
                    launch_plan: None,
                    exact_gpus: Vec::new(),
                    held: Vec::new(),
                    observed: Default::default(),
                    truth: None,
                })
            }
            Action::Release {
                pod,
                placement,
                status,
            } => {
                let (family, extra) = self
                    .deployments
                    .get(&format!("{namespace}/{deployment}"))
                    .copied()
                    .unwrap_or((VllmFamily::NEWEST, 0));
                let truth = VllmTruth::of(&placement, family, extra);
                if let Some(p) = self
                    .pods
                    .iter_mut()
                    .find(|p| p.namespace == namespace && p.name == pod)
                {
                    p.phase = PodPhase::Pending;
                    p.placement = Some(status);
                    p.launch_plan = Some(placement.launch_plan.clone());
                    p.exact_gpus = placement
                        .exact_gpus
                        .iter()
                        .map(|g| g.uuid.clone())
                        .collect();
                    p.truth = Some(truth);
                }
            }
            // The pod terminates; it is gone, and its memory free, at the next step.
            Action::Delete { pod, .. } => {
                if let Some(p) = self
                    .pods
                    .iter_mut()
                    .find(|p| p.namespace == namespace && p.name == pod)
                {
                    p.phase = PodPhase::Terminating;
                }
            }
        }
    }

    fn free_pod(&mut self, p: &SimPod) {
        let Some(node) = p.placement.as_ref().and_then(|pl| pl.node.clone()) else {
            return;
        };
        let me = PodRef {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        };
        for (index, bytes) in &p.held {
            if let Some(g) = self.gpu_mut(&node, *index) {
                g.memory.free_bytes = g
                    .memory
                    .free_bytes
                    .saturating_add(*bytes)
                    .min(g.memory.total_bytes);
                g.memory.used_bytes = g.memory.used_bytes.saturating_sub(*bytes);
                g.processes.retain(|pr| pr.pod.as_ref() != Some(&me));
                if g.allocated_to.as_ref() == Some(&me) {
                    g.allocated_to = None;
                }
            }
        }
    }

    /// Start pods released in an earlier step; promote started pods to ready. Returns events
    /// as `(object, reason, message, warning)`.
    pub fn start_pending(&mut self, _now: Timestamp) -> Vec<(String, String, String, bool)> {
        let mut out = Vec::new();
        let (gone, kept): (Vec<SimPod>, Vec<SimPod>) = std::mem::take(&mut self.pods)
            .into_iter()
            .partition(|p| p.phase == PodPhase::Terminating);
        self.pods = kept;
        for p in &gone {
            self.free_pod(p);
        }
        for i in 0..self.pods.len() {
            match self.pods[i].phase {
                PodPhase::Running => {
                    self.pods[i].phase = PodPhase::Ready;
                    continue;
                }
                PodPhase::Pending => {}
                _ => continue,
            }
            let p = self.pods[i].clone();
            let object = format!("{}/{}", p.namespace, p.name);
            let (Some(placement), Some(plan)) = (&p.placement, &p.launch_plan) else {
                continue;
            };
            let Some(node_name) = placement.node.clone() else {
                continue;
            };
            let Some(node) = self.nodes.get(&node_name).filter(|n| !n.deleted) else {
                continue;
            };
            if node.unschedulable {
                self.pods[i].phase = PodPhase::Stuck {
                    kind: StuckKind::Unschedulable,
                    reason: format!(
                        "unschedulable: 0/1 nodes are available: node {node_name} had untolerated taint"
                    ),
                };
                continue;
            }
            let tp = placement.tensor_parallel_size as usize;
            let gpus = if p.exact_gpus.is_empty() {
                let gpus = self.kubelet_gpus(&node_name, tp);
                if gpus.len() < tp {
                    continue; // stays Pending until GPUs free up
                }
                gpus
            } else {
                match self.claimed_gpus(&node_name, &p.exact_gpus) {
                    Ok(gpus) => gpus,
                    Err(why) => {
                        // The scheduler's DRA plugin: "cannot allocate all claims"
                        // (Kubernetes v1.34 pkg/scheduler/framework/plugins/dynamicresources/
                        // dynamicresources.go, Filter).
                        self.pods[i].phase = PodPhase::Stuck {
                            kind: StuckKind::ClaimUnallocatable,
                            reason: format!(
                                "the scheduler cannot allocate its planned GPUs: 0/1 nodes are available: 1 cannot allocate all claims ({why})"
                            ),
                        };
                        continue;
                    }
                }
            };
            let views: Vec<GpuMemoryView> = gpus.iter().map(|g| (&g.memory).into()).collect();
            let u = match choose_for_gpus(&views, plan) {
                Ok((fit, _)) => fit.utilization(),
                Err((at, short)) => {
                    self.launcher_refusals += 1;
                    let g = &gpus[at];
                    let message = format!(
                        "vllm-operator: insufficient-gpu-memory: GPU {} ({}) needs {} bytes free ({:.2} GiB), has {} bytes free ({:.2} GiB)",
                        g.index,
                        g.uuid,
                        short.needed_free_bytes,
                        short.needed_free_bytes as f64 / (1u64 << 30) as f64,
                        short.free_bytes,
                        short.free_bytes as f64 / (1u64 << 30) as f64
                    );
                    out.push((object, "LauncherRefused".into(), message.clone(), true));
                    self.pods[i].phase = PodPhase::Failed { message };
                    continue;
                }
            };
            // vLLM itself on each rank (`sim::vllm`): its startup check after its own CUDA
            // context and NCCL exist, then the KV cache it really gets.
            let Some(truth) = p.truth.clone() else {
                continue;
            };
            let starts: Vec<VllmStart> = views
                .iter()
                .enumerate()
                .map(|(rank, v)| truth.start_on(rank, *v, u))
                .collect();
            let capacity = match start_ranks(&starts) {
                Ok(c) => c,
                Err(failure) => {
                    self.startup_failures += 1;
                    let reason = match failure.kind {
                        FailureKind::StartupCheck => "StartupCheckFailed",
                        _ => "KvCacheTooSmall",
                    };
                    out.push((object, reason.into(), failure.message.clone(), true));
                    // The controller reads the termination message back, as on a cluster
                    // (`controller::observe`): vLLM's figures, never the simulation's truth.
                    self.pods[i].observed =
                        observed_from_message(&failure.message, Some(truth.kv_bytes_per_token));
                    self.pods[i].phase = PodPhase::Failed {
                        message: failure.message,
                    };
                    continue;
                }
            };
            let me = PodRef {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            };
            let mut held = Vec::new();
            for (v, g) in views.iter().zip(&gpus) {
                // There, `u * total` includes what others hold: vLLM takes the rest of it.
                let others = if truth.others_in_budget {
                    v.cuda_total_bytes().saturating_sub(v.free_bytes)
                } else {
                    0
                };
                let bytes = ((v.cuda_total_bytes() as f64 * u).ceil() as u64)
                    .saturating_sub(others)
                    .saturating_add(truth.startup_overhead_bytes)
                    .min(v.free_bytes);
                held.push((g.index, bytes));
                let pid = self.next_pid;
                self.next_pid = self.next_pid.saturating_add(1);
                if let Some(gm) = self.gpu_mut(&node_name, g.index) {
                    gm.memory.free_bytes = gm.memory.free_bytes.saturating_sub(bytes);
                    gm.memory.used_bytes = gm.memory.used_bytes.saturating_add(bytes);
                    gm.allocated_to = Some(me.clone());
                    gm.processes.push(GpuProcess {
                        pid,
                        used_bytes: bytes,
                        pod: Some(me.clone()),
                    });
                }
            }
            // What vLLM's /metrics says once it runs (`vllm:cache_config_info`: blocks and
            // block size, with the utilization it ran with), as the controller scrapes it.
            self.pods[i].observed = crate::profile::Observed {
                kv_cache_bytes: Some(capacity.kv_cache_bytes()),
                utilization: Some(u),
                ..Default::default()
            };
            out.push((
                object,
                "Started".into(),
                format!(
                    "vLLM started on {node_name} GPUs {:?}{} with --gpu-memory-utilization {u:.2} (planned {:.2}): {} KV cache blocks, {} tokens",
                    held.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                    if p.exact_gpus.is_empty() {
                        " (the kubelet's pick)"
                    } else {
                        " (exact, by its ResourceClaim)"
                    },
                    placement.gpu_memory_utilization,
                    capacity.num_blocks,
                    capacity.kv_cache_tokens()
                ),
                false,
            ));
            self.pods[i].held = held;
            self.pods[i].phase = PodPhase::Running;
        }
        out
    }

    /// The GPUs the kubelet hands a pod asking for `count`. Whole GPUs: the lowest-numbered
    /// unallocated ones. On a node whose device plugin shares GPUs (time-slicing or MPS, as the
    /// GpuNode reports it), each GPU is advertised `replicasPerGpu` times and may go to that
    /// many pods at once: the least-used GPUs first.
    fn kubelet_gpus(&self, node: &str, count: usize) -> Vec<api::GpuInfo> {
        let Some(status) = self.nodes.get(node).and_then(|n| n.object.status.as_ref()) else {
            return Vec::new();
        };
        let physical = status.gpus.iter().filter(|g| g.parent_uuid.is_none());
        if status.sharing != api::Sharing::Shared {
            return physical
                .filter(|g| g.allocated_to.is_none())
                .take(count)
                .cloned()
                .collect();
        }
        let users = |index: u32| {
            self.pods
                .iter()
                .filter(|p| {
                    p.placement.as_ref().and_then(|pl| pl.node.as_deref()) == Some(node)
                        && p.held.iter().any(|(i, _)| *i == index)
                })
                .count()
        };
        let limit = status
            .replicas_per_gpu
            .map_or(usize::MAX, |r| r.max(1) as usize);
        let mut open: Vec<(usize, &api::GpuInfo)> = physical
            .map(|g| (users(g.index), g))
            .filter(|(u, _)| *u < limit)
            .collect();
        open.sort_by_key(|(u, g)| (*u, g.index));
        open.into_iter()
            .take(count)
            .map(|(_, g)| g.clone())
            .collect()
    }

    /// The GPUs a ResourceClaim naming `uuids` on `node` gets: exactly those, in the claim's
    /// order, or why the scheduler cannot allocate them (a GPU gone from the node, or one
    /// another pod holds: a device is allocated to one claim at a time).
    fn claimed_gpus(&self, node: &str, uuids: &[String]) -> Result<Vec<api::GpuInfo>, String> {
        let status = self
            .nodes
            .get(node)
            .and_then(|n| n.object.status.as_ref())
            .ok_or_else(|| format!("node {node} reports no GPUs"))?;
        uuids
            .iter()
            .map(|uuid| {
                let g = status
                    .gpus
                    .iter()
                    .find(|g| &g.uuid == uuid)
                    .ok_or_else(|| format!("GPU {uuid} is not on node {node}"))?;
                match &g.allocated_to {
                    Some(other) => Err(format!(
                        "GPU {uuid} is allocated to {}/{}",
                        other.namespace, other.name
                    )),
                    None => Ok(g.clone()),
                }
            })
            .collect()
    }

    /// `(node, index, total, free)` for every GPU of every live node.
    pub fn gpu_table(&self) -> Vec<(String, u32, GpuMemory)> {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.deleted)
            .flat_map(|(name, n)| {
                n.object
                    .status
                    .iter()
                    .flat_map(|s| s.gpus.iter())
                    .map(|g| (name.clone(), g.index, g.memory))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}
