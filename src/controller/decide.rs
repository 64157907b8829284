//! The reconcile decision for one VllmDeployment, as a pure function: from the deployment, its
//! pods, the fleet and the reservation ledger to the pod actions, the status and the events.
//! The controller applies the actions through the API; `simulate` applies them in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::failures::{FailureBook, FailureKind, classify_failure};
use crate::api::{self, PodRef, Sharing, VllmDeploymentSpec, VllmDeploymentStatus};
use crate::model::{Architecture, VllmFamily};
use crate::plan::args::{Release, user_memory};
use crate::plan::{
    Decision, Fleet, GpuAllocation, Ledger, Placement, Request, plan_replica, reservation_for,
};
use crate::profile;

/// What the controller knows about one of the deployment's pods.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    pub name: String,
    pub replica: u32,
    pub spec_hash: String,
    pub phase: PodPhase,
    /// The placement the pod was released with (from its annotation).
    pub placement: Option<api::Placement>,
    /// What was seen of its vLLM's memory (launcher, agent, vLLM's messages and metrics).
    pub observed: crate::profile::Observed,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PodPhase {
    /// Waiting on the `vllm-operator.io/placement` scheduling gate.
    Gated,
    /// Released to the scheduler, not running yet.
    Pending,
    /// Released, but the scheduler cannot place it or the kubelet cannot pull its image; it
    /// would wait forever.
    Stuck {
        kind: StuckKind,
        reason: String,
    },
    /// Running, not ready yet (vLLM loading).
    Running,
    Ready,
    /// Ended; the termination message or last log lines.
    Failed {
        message: String,
    },
    /// Being deleted.
    Terminating,
}

/// Why a released pod does not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StuckKind {
    /// The scheduler reports the pod unschedulable on its node (`PodScheduled=False`,
    /// reason `Unschedulable`).
    Unschedulable,
    /// The kubelet cannot pull an image (`ErrImagePull`, `ImagePullBackOff`, ...).
    ImagePull,
    /// The scheduler cannot allocate the pod's ResourceClaim (the DRA plugin's Unschedulable):
    /// the exact GPUs planned are held by a claim the controller does not know, or gone.
    ClaimUnallocatable,
}

/// How long a released pod may stay stuck before its placement counts as failed: the
/// reservation is released, the pod deleted and the replica re-planned.
pub const STUCK_TIMEOUT: Duration = Duration::from_secs(300);

/// The deployment as the decision sees it.
#[derive(Clone, Debug)]
pub struct DeploymentView<'a> {
    pub name: String,
    pub namespace: String,
    pub generation: Option<i64>,
    pub spec: &'a VllmDeploymentSpec,
    /// The resolved architecture, or why it could not be resolved.
    pub arch: Result<&'a Architecture, String>,
    pub family: VllmFamily,
    pub spec_hash: String,
    /// Older deployments still waiting for GPU memory: this one waits behind them.
    pub queued_behind: Vec<String>,
    /// Exact GPUs through DRA or GPUs by count (the controller's flag, `--gpu-allocation`).
    pub gpu_allocation: GpuAllocation,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create the replica's pod with the placement scheduling gate.
    CreateGated { pod: String, replica: u32 },
    /// Pin to the node and remove the gate, in one JSON patch that tests the gate.
    Release {
        pod: String,
        placement: Box<Placement>,
        status: api::Placement,
    },
    /// Delete the pod (scale down, failure, rollout).
    Delete { pod: String, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Event {
    pub warning: bool,
    pub reason: String,
    pub message: String,
    /// The pod the event is about: it is recorded on that pod (`regarding`), with the
    /// deployment as `related`, so that the series of different pods stay apart.
    pub pod: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub actions: Vec<Action>,
    pub status: VllmDeploymentStatus,
    pub events: Vec<Event>,
    /// Check again after this long even without a watch event.
    pub requeue_after: Option<Duration>,
    /// MemoryProfiles learned from the pods' observations, to create or update (whole
    /// objects: spec for `Measured` profiles, status for all).
    pub profiles: Vec<api::MemoryProfile>,
}

/// Pod name for a replica at a spec hash: `NAME-INDEX-HASH`.
pub fn pod_name(deployment: &str, replica: u32, spec_hash: &str) -> String {
    format!("{deployment}-{replica}-{spec_hash}")
}

/// The UUIDs of the GPUs the node agent reports allocated to `pod` on `node`, in index order.
pub fn reported_gpus(fleet: &Fleet, node: Option<&str>, pod: &PodRef) -> Vec<String> {
    let Some(n) = node.and_then(|n| fleet.node(n)) else {
        return Vec::new();
    };
    n.gpus
        .iter()
        .filter(|g| g.allocated_to.as_ref() == Some(pod))
        .map(|g| g.uuid.clone())
        .collect()
}

/// The status entry (and pod annotation) of a pod released to `p`.
pub fn placement_status(pod: &str, p: &Placement, reason: String) -> api::Placement {
    api::Placement {
        pod: pod.to_string(),
        node: Some(p.node.clone()),
        gpu_uuids: p.exact_gpus.iter().map(|g| g.uuid.clone()).collect(),
        candidate_gpus: p.candidate_gpus.clone(),
        tensor_parallel_size: p.shape.tensor_parallel_size,
        quantization: p.shape.quantization,
        kv_cache_dtype: p.shape.kv_cache_dtype,
        gpu_memory_utilization: p.fit.utilization(),
        max_model_len: p.shape.max_model_len,
        kv_cache_tokens: p.kv_cache_tokens,
        reason: Some(reason),
        planned_non_kv_bytes: Some(p.estimate.required_bytes()),
        observed_non_kv_bytes: None,
        memory_profile: p.estimate.profile.as_ref().map(|u| u.name.clone()),
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: Time(now),
    }
}

/// Keep `lastTransitionTime` when a condition's status did not change.
pub fn carry_transition_times(new: &mut [Condition], old: &[Condition]) {
    for c in new.iter_mut() {
        if let Some(o) = old
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
}

fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

fn summary<T: ToString + PartialEq>(values: impl Iterator<Item = T>) -> Option<String> {
    let mut seen: Vec<String> = Vec::new();
    for v in values {
        let s = v.to_string();
        if !seen.contains(&s) {
            seen.push(s);
        }
    }
    (!seen.is_empty()).then(|| seen.join(","))
}

/// The profile key and the plan of a released pod: model and image from the deployment, shape
/// from its placement, GPU product and CUDA total from the fleet's report of its GPUs.
fn planned_of(
    dep: &DeploymentView,
    pl: &api::Placement,
    fleet: &Fleet,
) -> Option<(profile::ProfileKey, profile::Planned)> {
    let node = fleet.node(pl.node.as_deref()?)?;
    let gpu = node
        .gpus
        .iter()
        .find(|g| pl.gpu_uuids.contains(&g.uuid))
        .or_else(|| {
            node.gpus
                .iter()
                .find(|g| pl.candidate_gpus.contains(&g.index))
        })
        .or_else(|| node.gpus.first())?;
    let key = profile::ProfileKey {
        model: dep.spec.model.name.clone(),
        revision: dep.spec.model.revision.clone(),
        image: dep.spec.image.clone(),
        gpu_product: gpu.product.clone(),
        tensor_parallel_size: pl.tensor_parallel_size,
        quantization: pl.quantization,
        kv_cache_dtype: pl.kv_cache_dtype,
    };
    let planned = profile::Planned {
        utilization: pl.gpu_memory_utilization,
        cuda_total_bytes: gpu.total_bytes.saturating_sub(gpu.reserved_bytes),
        non_kv_bytes: pl.planned_non_kv_bytes?,
        others_in_budget: dep.family.rules().others_in_budget,
    };
    Some((key, planned))
}

/// What a pod's observation teaches: the profile to write (none when the pod was counted
/// already or nothing was measured) and the measurement.
fn learn_from_pod(
    dep: &DeploymentView,
    pod: &PodView,
    fleet: &Fleet,
    known: &dyn Fn(&profile::ProfileKey) -> Option<api::MemoryProfile>,
) -> Option<(Option<api::MemoryProfile>, profile::Measurement)> {
    if pod.observed.is_empty() {
        return None;
    }
    let pl = pod.placement.as_ref()?;
    let (key, planned) = planned_of(dep, pl, fleet)?;
    let m = profile::measure(&pod.observed, &planned)?;
    let existing = known(&key);
    let who = format!("{}/{}", dep.namespace, pod.name);
    let update = profile::record(existing.as_ref(), &key, &pod.observed, &planned, &who);
    Some((update, m))
}

/// The newest profile for `key`: learned this round, learned earlier, or stored.
fn known_profile(
    this_round: &[api::MemoryProfile],
    failures: &FailureBook,
    stored: &profile::Profiles,
    key: &profile::ProfileKey,
) -> Option<api::MemoryProfile> {
    this_round
        .iter()
        .rev()
        .find(|p| profile::ProfileKey::of(&p.spec) == *key)
        .or_else(|| failures.learned(key))
        .or_else(|| stored.get(key))
        .cloned()
}

/// Decide what to do for one deployment. `ledger` is updated with new reservations and
/// released ones; `failures` with new failures.
#[allow(clippy::too_many_arguments)]
pub fn reconcile(
    dep: &DeploymentView,
    pods: &[PodView],
    fleet: &Fleet,
    ledger: &mut Ledger,
    failures: &mut FailureBook,
    now: Timestamp,
) -> Outcome {
    let mut actions = Vec::new();
    let mut events = Vec::new();
    // Profiles learned in this round, on top of those learned earlier and not yet seen stored.
    let mut profiles: Vec<api::MemoryProfile> = Vec::new();
    failures.profiles_seen(&fleet.profiles);
    let generation = dep.generation;
    let desired = dep.spec.replicas.max(0) as u32;
    let pod_ref = |name: &str| PodRef {
        namespace: dep.namespace.clone(),
        name: name.to_string(),
    };

    // Failed pods are replaced; memory failures are remembered per node so that repeated
    // failures back off from it.
    let mut live: Vec<&PodView> = Vec::new();
    // Pods whose name a new pod must not take yet: a create (server-side apply) under the name
    // of a pod being deleted would patch that pod instead, and re-adding a scheduling gate to
    // a released pod is rejected (Kubernetes pkg/apis/core/validation/validation.go,
    // validateSchedulingGates on update: gates may only be removed).
    let mut going: BTreeSet<&str> = BTreeSet::new();
    for p in pods {
        if !matches!(p.phase, PodPhase::Stuck { .. }) {
            failures.unstuck(&dep.namespace, &p.name);
        }
        match &p.phase {
            PodPhase::Failed { message } => {
                let kind = classify_failure(message);
                let learned = learn_from_pod(dep, p, fleet, &|k| {
                    known_profile(&profiles, failures, &fleet.profiles, k)
                });
                let node = p.placement.as_ref().and_then(|pl| pl.node.clone());
                let line = message
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let reason = match kind {
                    Some(k) => {
                        if let Some(n) = &node {
                            failures.record(n, super::failures::gpu_from_message(message), now);
                        }
                        format!(
                            "{} on {}: {line}",
                            k.describe(),
                            node.as_deref().unwrap_or("an unknown node")
                        )
                    }
                    None => format!("pod failed: {line}"),
                };
                let reason = match learned {
                    Some((update, m)) => {
                        if let Some(u) = update {
                            failures.learned_profile(u.clone());
                            profiles.push(u);
                        }
                        format!("{reason} ({})", m.how)
                    }
                    None => reason,
                };
                events.push(Event {
                    warning: true,
                    reason: match kind {
                        Some(FailureKind::LauncherRefused) => "LauncherRefused",
                        Some(_) => "GpuMemoryFailure",
                        None => "PodFailed",
                    }
                    .into(),
                    message: format!("{}: {reason}; replacing it with a fresh placement", p.name),
                    pod: Some(p.name.clone()),
                });
                ledger.release(&pod_ref(&p.name));
                failures.replica_failed(&dep.namespace, &dep.name, p.replica, reason.clone());
                going.insert(&p.name);
                actions.push(Action::Delete {
                    pod: p.name.clone(),
                    reason,
                });
            }
            PodPhase::Stuck { kind, reason } => {
                let since = failures.stuck_since(&dep.namespace, &p.name, now);
                let waited = Duration::from_secs(now.duration_since(since).as_secs().max(0) as u64);
                if waited < STUCK_TIMEOUT {
                    live.push(p);
                    continue;
                }
                let node = p.placement.as_ref().and_then(|pl| pl.node.clone());
                match (kind, &node) {
                    (StuckKind::Unschedulable, Some(n)) => failures.node_unusable(n, now),
                    // Only the planned GPUs are out of reach: avoid them, not the node.
                    (StuckKind::ClaimUnallocatable, Some(n)) => {
                        let uuids = p
                            .placement
                            .as_ref()
                            .map(|pl| pl.gpu_uuids.clone())
                            .unwrap_or_default();
                        if uuids.is_empty() {
                            failures.node_unusable(n, now);
                        }
                        for uuid in uuids {
                            failures.gpu_unusable(n, &uuid, now);
                        }
                    }
                    _ => {}
                }
                let why = format!(
                    "not started {} after release to {}: {reason}",
                    format_duration(STUCK_TIMEOUT),
                    node.as_deref().unwrap_or("its node")
                );
                events.push(Event {
                    warning: true,
                    reason: match kind {
                        StuckKind::Unschedulable => "Unschedulable",
                        StuckKind::ImagePull => "ImagePullFailed",
                        StuckKind::ClaimUnallocatable => "ClaimUnallocatable",
                    }
                    .into(),
                    message: format!(
                        "{}: {why}; releasing its reservation and placing it again",
                        p.name
                    ),
                    pod: Some(p.name.clone()),
                });
                ledger.release(&pod_ref(&p.name));
                failures.unstuck(&dep.namespace, &p.name);
                failures.replica_failed(&dep.namespace, &dep.name, p.replica, why.clone());
                going.insert(&p.name);
                actions.push(Action::Delete {
                    pod: p.name.clone(),
                    reason: why,
                });
            }
            PodPhase::Terminating => {
                going.insert(&p.name);
            }
            _ => live.push(p),
        }
    }

    // Scale down: replicas at or above the desired count go, highest first.
    let mut by_replica: BTreeMap<u32, Vec<&PodView>> = BTreeMap::new();
    for p in &live {
        if p.replica >= desired {
            ledger.release(&pod_ref(&p.name));
            actions.push(Action::Delete {
                pod: p.name.clone(),
                reason: format!("scaled down to {desired} replicas"),
            });
        } else {
            by_replica.entry(p.replica).or_default().push(p);
        }
    }

    // Running replicas: what their start measured, for their status and their profile.
    let mut observed_non_kv: BTreeMap<&str, u64> = BTreeMap::new();
    for p in &live {
        if !matches!(p.phase, PodPhase::Running | PodPhase::Ready) {
            continue;
        }
        let learned = learn_from_pod(dep, p, fleet, &|k| {
            known_profile(&profiles, failures, &fleet.profiles, k)
        });
        if let Some((update, m)) = learned {
            if let Some(b) = m.non_kv_bytes {
                observed_non_kv.insert(p.name.as_str(), b);
            }
            if let Some(u) = update {
                failures.learned_profile(u.clone());
                profiles.push(u);
            }
        }
    }
    // Plan with what was learned, before the store shows it.
    let planning_fleet = failures
        .profiles_over(&fleet.profiles)
        .map(|all| fleet.clone().with_profiles(all));
    let fleet = planning_fleet.as_ref().unwrap_or(fleet);

    let mut refusal: Option<Vec<String>> = None;
    let mut placements: Vec<api::Placement> = Vec::new();
    let arch = dep.arch.as_ref().ok().copied();
    // User arguments the operator cannot size: no retry or re-plan can fix them, and an old
    // replica must not be deleted to make room for one that will never be placed.
    let args_error = user_memory(
        &dep.spec.args,
        &dep.spec.env,
        Release::from_image(&dep.spec.image),
    )
    .err();
    let avoid = failures.avoided(now);
    let mut rollout_busy = false;
    let mut ready = 0;
    for replica in 0..desired {
        let pods_here = by_replica.get(&replica).cloned().unwrap_or_default();
        let current = pods_here
            .iter()
            .find(|p| p.spec_hash == dep.spec_hash)
            .copied();
        let old: Vec<&PodView> = pods_here
            .iter()
            .filter(|p| p.spec_hash != dep.spec_hash)
            .copied()
            .collect();
        if old.iter().any(|p| p.phase == PodPhase::Ready)
            && current.is_none_or(|c| c.phase != PodPhase::Ready)
        {
            ready += 1; // the old pod still serves until its replacement is ready
        }
        let Some(cur) = current else {
            // Replace outdated replicas one at a time.
            if !old.is_empty() && rollout_busy {
                placements.extend(old.iter().filter_map(|p| p.placement.clone()));
                continue;
            }
            rollout_busy |= !old.is_empty();
            let name = pod_name(&dep.name, replica, &dep.spec_hash);
            if going.contains(name.as_str()) {
                placements.push(api::Placement {
                    pod: name.clone(),
                    reason: Some(format!(
                        "waiting for the previous pod {name} to be deleted before creating its replacement"
                    )),
                    ..Default::default()
                });
                continue;
            }
            actions.push(Action::CreateGated {
                pod: name.clone(),
                replica,
            });
            placements.push(api::Placement {
                pod: name,
                reason: Some("created; waiting for a placement".into()),
                ..Default::default()
            });
            continue;
        };
        match cur.phase {
            PodPhase::Gated => {
                rollout_busy |= !old.is_empty();
                let Some(arch) = arch else { continue };
                if let Some(why) = &args_error {
                    placements.push(api::Placement {
                        pod: cur.name.clone(),
                        reason: Some(why.clone()),
                        ..Default::default()
                    });
                    continue;
                }
                if !dep.queued_behind.is_empty() {
                    let msg = format!(
                        "queued behind older deployments waiting for GPU memory: {}",
                        dep.queued_behind.join(", ")
                    );
                    placements.push(api::Placement {
                        pod: cur.name.clone(),
                        reason: Some(msg.clone()),
                        ..Default::default()
                    });
                    refusal.get_or_insert_with(|| vec![msg]);
                    continue;
                }
                let req = Request {
                    pod: pod_ref(&cur.name),
                    arch,
                    spec: dep.spec,
                    family: dep.family,
                    avoid: &avoid,
                    gpu_allocation: dep.gpu_allocation,
                };
                match plan_replica(fleet, ledger, &req) {
                    Decision::Placed(p) => {
                        if let Some(node) = fleet.node(&p.node) {
                            ledger.reserve(reservation_for(
                                req.pod.clone(),
                                &p,
                                node,
                                dep.spec.gpu.sharing == Sharing::Shared,
                                now,
                            ));
                        }
                        if !p.replaced_args.is_empty() {
                            events.push(Event {
                                warning: false,
                                reason: "ArgsReplaced".into(),
                                message: format!(
                                    "{}: the operator sets these flags itself and replaced {}",
                                    cur.name,
                                    p.replaced_args.join(", ")
                                ),
                                pod: Some(cur.name.clone()),
                            });
                        }
                        let mut reason = p.reason.clone();
                        if let Some(f) =
                            failures.take_replica_failure(&dep.namespace, &dep.name, replica)
                        {
                            reason = format!("re-planned after {f}; {reason}");
                        }
                        let status = placement_status(&cur.name, &p, reason);
                        events.push(Event {
                            warning: false,
                            reason: "Placed".into(),
                            message: format!("{}: {}", cur.name, p.reason),
                            pod: Some(cur.name.clone()),
                        });
                        placements.push(status.clone());
                        actions.push(Action::Release {
                            pod: cur.name.clone(),
                            placement: p,
                            status,
                        });
                    }
                    Decision::Refused(reasons) => {
                        // An outdated pod holding the memory this one needs: delete it first,
                        // then place once the agent reports the memory free.
                        if let Some(o) = old.first() {
                            ledger.release(&pod_ref(&o.name));
                            actions.push(Action::Delete {
                                pod: o.name.clone(),
                                reason: "rollout: the new replica does not fit beside the old one"
                                    .into(),
                            });
                        }
                        placements.push(api::Placement {
                            pod: cur.name.clone(),
                            reason: Some(format!(
                                "waiting for GPU memory: {}",
                                reasons.first().cloned().unwrap_or_default()
                            )),
                            ..Default::default()
                        });
                        refusal.get_or_insert(reasons);
                    }
                }
            }
            _ => {
                if cur.phase == PodPhase::Ready {
                    ready += 1;
                    // The replacement serves: retire the outdated pods of this replica.
                    for o in &old {
                        ledger.release(&pod_ref(&o.name));
                        actions.push(Action::Delete {
                            pod: o.name.clone(),
                            reason: "rollout: replaced by an updated replica".into(),
                        });
                    }
                } else {
                    rollout_busy |= !old.is_empty();
                }
                if let Some(pl) = &cur.placement {
                    let mut pl = pl.clone();
                    pl.observed_non_kv_bytes = observed_non_kv.get(cur.name.as_str()).copied();
                    if pl.gpu_uuids.is_empty() {
                        // Device plugin: the GPUs are known once the agent maps the pod to
                        // them (PodResources), not before.
                        pl.gpu_uuids =
                            reported_gpus(fleet, pl.node.as_deref(), &pod_ref(&cur.name));
                    }
                    if let PodPhase::Stuck { reason, .. } = &cur.phase {
                        pl.reason = Some(format!("released but not starting: {reason}"));
                    }
                    placements.push(pl);
                }
            }
        }
    }

    // Status, kstatus style.
    let current_pods = live
        .iter()
        .filter(|p| p.replica < desired && p.spec_hash == dep.spec_hash)
        .count() as i32;
    let mut conditions = Vec::new();
    let placed = placements.iter().filter(|p| p.node.is_some()).count() as u32;
    let (state, requeue_after);
    let stalled = match (&dep.arch, &args_error) {
        (Err(why), _) => Some(("InvalidModel", why)),
        (Ok(_), Some(why)) => Some(("InvalidArgs", why)),
        (Ok(_), None) => None,
    };
    if let Some((stall, why)) = stalled {
        conditions.push(condition(
            "Admitted",
            false,
            stall,
            why.clone(),
            generation,
            now,
        ));
        conditions.push(condition(
            "Ready",
            false,
            stall,
            why.clone(),
            generation,
            now,
        ));
        conditions.push(condition(
            "Reconciling",
            false,
            stall,
            String::new(),
            generation,
            now,
        ));
        conditions.push(condition(
            "Stalled",
            true,
            stall,
            why.clone(),
            generation,
            now,
        ));
        state = stall;
        requeue_after = None;
    } else {
        let all_ready = ready >= desired as i32 && current_pods == desired as i32;
        match &refusal {
            Some(reasons) => {
                let msg = reasons.join("; ");
                conditions.push(condition(
                    "Admitted",
                    false,
                    "InsufficientGpuMemory",
                    msg.clone(),
                    generation,
                    now,
                ));
                state = "InsufficientGpuMemory";
            }
            None => {
                let msg = format!("{placed} of {desired} replicas placed");
                conditions.push(condition(
                    "Admitted",
                    placed >= desired,
                    if placed >= desired {
                        "Placed"
                    } else {
                        "Placing"
                    },
                    msg,
                    generation,
                    now,
                ));
                state = if all_ready { "Ready" } else { "Progressing" };
            }
        }
        let ready_msg = format!("{ready} of {desired} replicas ready");
        conditions.push(condition(
            "Ready",
            all_ready,
            if all_ready { "Ready" } else { state },
            ready_msg.clone(),
            generation,
            now,
        ));
        conditions.push(condition(
            "Reconciling",
            !all_ready,
            if all_ready { "Ready" } else { state },
            ready_msg,
            generation,
            now,
        ));
        conditions.push(condition(
            "Stalled",
            false,
            "Progressing",
            String::new(),
            generation,
            now,
        ));
        requeue_after =
            (!all_ready).then_some(Duration::from_secs(if refusal.is_some() { 60 } else { 15 }));
    }

    let placed_iter = || placements.iter().filter(|p| p.node.is_some());
    let status = VllmDeploymentStatus {
        observed_generation: generation,
        conditions,
        replicas: current_pods,
        ready_replicas: ready,
        ready: Some(format!("{ready}/{desired}")),
        tensor_parallel: summary(placed_iter().map(|p| p.tensor_parallel_size)),
        quantization: summary(placed_iter().map(|p| p.quantization)),
        utilization: summary(placed_iter().map(|p| format!("{:.2}", p.gpu_memory_utilization))),
        state: Some(state.to_string()),
        placements,
        selector: Some(super::pod::selector_string(&dep.name)),
        service_name: Some(super::service::service_name(&dep.name)),
    };
    Outcome {
        actions,
        status,
        events,
        requeue_after,
        profiles,
    }
}
