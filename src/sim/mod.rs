//! `simulate`: the controller's decision code against an in-memory cluster built from a fleet
//! file, with a simulated agent, kubelet, launcher and vLLM, until it settles.
//!
//! One step is one reconcile round. In each step: outside processes take or free memory
//! (`--external`), pods released in an earlier step start (the kubelet picks their GPUs, the
//! launcher fixes the utilization from the GPUs' memory *now*, then vLLM's own startup check
//! runs), the agents report, and every deployment is reconciled in creation order.

pub mod vllm;
mod world;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::api::{GpuNode, MemoryProfile, VllmDeployment, VllmDeploymentStatus};
use crate::controller::decide::{self, DeploymentView, Event};
use crate::controller::failures::FailureBook;
use crate::model::Architecture;
use crate::plan::{Fleet, Ledger};
use crate::profile::Profiles;
pub use world::{VllmTruth, World, start_ranks};

/// Memory taken (`bytes` > 0) or freed (< 0) on one GPU by a process outside Kubernetes, or a
/// node event, at a step.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExternalEvent {
    pub step: u32,
    pub node: String,
    #[serde(default)]
    pub gpu: Option<u32>,
    #[serde(default)]
    pub bytes: Option<i64>,
    /// `memory` (default), `stale` (the node's agent stops reporting), `delete-node` or
    /// `unschedulable` (the scheduler stops admitting pods on the node).
    #[serde(default)]
    pub kind: ExternalKind,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ExternalKind {
    #[default]
    Memory,
    Stale,
    DeleteNode,
    Unschedulable,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub max_steps: u32,
    /// Node objects from the fleet file: labels, taints, cordons and allocatable GPUs, as the
    /// controller sees them.
    pub nodes: Vec<k8s_openapi::api::core::v1::Node>,
    /// Simulated seconds per step.
    pub step_seconds: i64,
    pub stale_after: Duration,
    pub reservation_timeout: Duration,
    /// ResourceSlices from the fleet file: GPUs the NVIDIA DRA driver publishes.
    pub slices: Vec<k8s_openapi::api::resource::v1::ResourceSlice>,
    /// Exact GPUs through DRA or GPUs by count, as the controller's flag says.
    pub gpu_allocation: crate::plan::GpuAllocation,
    /// MemoryProfiles stored in the cluster when the run starts (from the fleet file).
    pub profiles: Vec<crate::api::MemoryProfile>,
    /// `simulate --actual`: per model name, the non-KV bytes per GPU its vLLM really takes
    /// beyond the estimate (negative: less).
    pub actual: BTreeMap<String, i64>,
}

/// One entry of `simulate --actual`: the simulated vLLM of `model` really needs `extraBytes`
/// more bytes of non-KV memory per GPU than the estimate says (negative: fewer).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ActualMemory {
    pub model: String,
    pub extra_bytes: i64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            max_steps: 60,
            nodes: Vec::new(),
            step_seconds: 10,
            stale_after: Duration::from_secs(120),
            reservation_timeout: Duration::from_secs(300),
            slices: Vec::new(),
            gpu_allocation: crate::plan::GpuAllocation::default(),
            profiles: Vec::new(),
            actual: BTreeMap::new(),
        }
    }
}

/// One event, with when and for whom.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SimEvent {
    pub step: u32,
    pub object: String,
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub reason: String,
    pub message: String,
}

/// The end state.
#[derive(Clone, Debug)]
pub struct SimReport {
    pub steps: u32,
    pub settled: bool,
    pub deployments: Vec<(VllmDeployment, VllmDeploymentStatus)>,
    pub world: World,
    /// Starts vLLM ended with one of its memory failures (`sim::vllm`): the startup check, no
    /// KV cache, or a KV cache that cannot hold one request.
    pub startup_failures: u32,
    pub launcher_refusals: u32,
    pub events: Vec<SimEvent>,
    /// The MemoryProfiles the controller wrote during the run (created or updated), as they
    /// stand at its end: whole objects, in the form a fleet file takes them back.
    pub profiles: Vec<MemoryProfile>,
}

/// A deployment with its resolved architecture (or why there is none).
pub struct SimDeployment {
    pub object: VllmDeployment,
    pub arch: Result<Architecture, String>,
}

/// Run until nothing changes for a step, or `max_steps`.
pub fn run(
    gpunodes: Vec<GpuNode>,
    deployments: Vec<SimDeployment>,
    external: &[ExternalEvent],
    cfg: &SimConfig,
    start: Timestamp,
) -> SimReport {
    let mut world = World::new(gpunodes, start);
    for d in &deployments {
        let key = format!(
            "{}/{}",
            d.object.metadata.namespace.as_deref().unwrap_or("default"),
            d.object.metadata.name.as_deref().unwrap_or_default()
        );
        let family = crate::cli::plan::family_from_image(&d.object.spec.image);
        let extra = cfg
            .actual
            .get(&d.object.spec.model.name)
            .copied()
            .unwrap_or(0);
        world.deployments.insert(key, (family, extra));
    }
    // The API server's MemoryProfiles, by name: the fleet file's, then what the controller
    // writes (a Manual profile's spec stays as written: `profile::record` keeps it).
    let mut stored: BTreeMap<String, MemoryProfile> = cfg
        .profiles
        .iter()
        .map(|p| (p.metadata.name.clone().unwrap_or_default(), p.clone()))
        .collect();
    let mut written: Vec<String> = Vec::new();
    let mut ledger = Ledger::default();
    let mut failures = FailureBook::default();
    let mut statuses: BTreeMap<usize, VllmDeploymentStatus> = BTreeMap::new();
    let mut events = Vec::new();
    let last_external = external.iter().map(|e| e.step).max().unwrap_or(0);
    let mut quiet_steps = 0;
    let mut step = 0;
    let mut settled = false;
    let mut conflicts_seen = 0;
    while step < cfg.max_steps {
        // A start near the end of the calendar stops the run rather than overflowing it;
        // `simulate` refuses such a start up front (see `last_step_time`).
        let Some(now) = step_time(start, cfg.step_seconds, step) else {
            break;
        };
        let mut changed = false;
        for e in external.iter().filter(|e| e.step == step) {
            events.push(world.apply_external(e, step));
            changed = true;
        }
        for (object, reason, message, warning) in world.start_pending(now) {
            events.push(SimEvent {
                step,
                object,
                type_: if warning { "Warning" } else { "Normal" },
                reason,
                message,
            });
            changed = true;
        }
        // A pod the scheduler or kubelet cannot start waits for the controller's timeout.
        if world
            .pods
            .iter()
            .any(|p| matches!(p.phase, decide::PodPhase::Stuck { .. }))
        {
            changed = true;
        }
        let gpunodes = world.reports(now);
        let mut fleet = Fleet::from_objects(&gpunodes, &cfg.nodes, now, cfg.stale_after)
            .with_profiles(Profiles::from_objects(stored.values()));
        fleet.attach_slices(cfg.slices.iter());
        ledger.settle(&fleet, now, cfg.reservation_timeout);
        failures.forget_old(now);

        for (i, d) in deployments.iter().enumerate() {
            let name = d.object.metadata.name.clone().unwrap_or_default();
            let namespace = d
                .object
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let queued_behind = deployments[..i]
                .iter()
                .enumerate()
                .filter(|(j, _)| statuses.get(j).is_some_and(waiting_for_memory))
                .map(|(_, o)| o.object.metadata.name.clone().unwrap_or_default())
                .collect();
            let view = DeploymentView {
                name: name.clone(),
                namespace: namespace.clone(),
                generation: d.object.metadata.generation,
                spec: &d.object.spec,
                arch: d.arch.as_ref().map_err(Clone::clone),
                family: crate::cli::plan::family_from_image(&d.object.spec.image),
                spec_hash: "sim".into(),
                queued_behind,
                gpu_allocation: cfg.gpu_allocation,
            };
            let pods = world.pod_views(&namespace, &name);
            let mut outcome =
                decide::reconcile(&view, &pods, &fleet, &mut ledger, &mut failures, now);
            if let Some(old) = statuses.get(&i) {
                decide::carry_transition_times(&mut outcome.status.conditions, &old.conditions);
            }
            if !outcome.actions.is_empty() {
                changed = true;
            }
            for Event {
                warning,
                reason,
                message,
                ..
            } in outcome.events
            {
                events.push(SimEvent {
                    step,
                    object: format!("{namespace}/{name}"),
                    type_: if warning { "Warning" } else { "Normal" },
                    reason,
                    message,
                });
            }
            for action in outcome.actions {
                world.apply(&namespace, &name, action);
            }
            for p in outcome.profiles {
                let pname = p.metadata.name.clone().unwrap_or_default();
                events.push(SimEvent {
                    step,
                    object: format!("memoryprofile/{pname}"),
                    type_: "Normal",
                    reason: if stored.contains_key(&pname) {
                        "ProfileUpdated"
                    } else {
                        "ProfileCreated"
                    }
                    .into(),
                    message: profile_words(&p),
                });
                if !written.contains(&pname) {
                    written.push(pname.clone());
                }
                stored.insert(pname, p);
                changed = true;
            }
            for message in world.create_conflicts.iter().skip(conflicts_seen) {
                events.push(SimEvent {
                    step,
                    object: format!("{namespace}/{name}"),
                    type_: "Warning",
                    reason: "CreateRejected".into(),
                    message: message.clone(),
                });
            }
            conflicts_seen = world.create_conflicts.len();
            if statuses.get(&i) != Some(&outcome.status) {
                changed = true;
            }
            statuses.insert(i, outcome.status);
        }
        step += 1;
        if changed || step <= last_external {
            quiet_steps = 0;
        } else {
            quiet_steps += 1;
            if quiet_steps >= 2 {
                settled = true;
                break;
            }
        }
    }
    let startup_failures = world.startup_failures;
    let launcher_refusals = world.launcher_refusals;
    SimReport {
        steps: step,
        settled,
        deployments: deployments
            .into_iter()
            .enumerate()
            .map(|(i, d)| (d.object, statuses.remove(&i).unwrap_or_default()))
            .collect(),
        world,
        startup_failures,
        launcher_refusals,
        events,
        profiles: written
            .iter()
            .filter_map(|n| stored.get(n).cloned())
            .collect(),
    }
}

/// A profile in a line: its key and figures.
pub fn profile_words(p: &MemoryProfile) -> String {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let s = &p.spec;
    let observed = p
        .status
        .as_ref()
        .and_then(|st| st.observed_non_kv_bytes_per_gpu)
        .map(|b| format!(", observed {:.2} GiB", gib(b)))
        .unwrap_or_default();
    format!(
        "{} on {} tp {} quant {} kv {}: non-KV {:.2} GiB per GPU ({} bytes, {:?}, {} observations{observed})",
        s.model,
        s.gpu_product,
        s.tensor_parallel_size,
        s.quantization,
        s.kv_cache_dtype,
        gib(s.non_kv_bytes_per_gpu),
        s.non_kv_bytes_per_gpu,
        s.source,
        s.observations
    )
}

/// The simulated time of `step`, or `None` past the end of the calendar.
pub fn step_time(start: Timestamp, step_seconds: i64, step: u32) -> Option<Timestamp> {
    let secs = step_seconds.checked_mul(i64::from(step))?;
    start.checked_add(SignedDuration::from_secs(secs)).ok()
}

fn waiting_for_memory(s: &VllmDeploymentStatus) -> bool {
    s.conditions.iter().any(|c| {
        c.type_ == "Admitted"
            && c.status == "False"
            && c.reason == "InsufficientGpuMemory"
            && !c.message.starts_with("queued behind")
    })
}
