//! The apply stages: turn the decision's actions into Pod writes, then the Service, the status
//! and the events. Every create is a server-side apply with field manager `vllm-operator`; the
//! release is one JSON patch that first `test`s the placement gate is still there; deletes
//! carry the pod's uid as precondition.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::error_boundary::InvalidObject;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Api, Resource};
use tracing::{info, warn};

use super::claim::{self, claimed_uuids, owned_by, resource_claim};
use super::context::{Context, Error};
use super::decide::{Action, Event, carry_transition_times};
use super::pod::{self, LABEL_REPLICA, PLACEMENT_GATE, PodGpus, gated_pod, pod_gpus, released_pod};
use super::service::service;
use crate::api::{MemoryProfile, PodRef, ProfileSource, VllmDeployment, VllmDeploymentStatus};

pub const FIELD_MANAGER: &str = "vllm-operator";

/// One pod write.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Create {
        pod: Box<Pod>,
    },
    /// `pod` is the builder's released pod; `patch` the JSON patch that turns the cached pod
    /// into it (gate tested and removed, affinity and annotations set). On the DRA path,
    /// `claim` is created first: the pod is released only once its claim exists.
    Release {
        pod: Box<Pod>,
        patch: json_patch::Patch,
        claim: Option<Box<ResourceClaim>>,
    },
    Delete {
        name: String,
        uid: Option<String>,
        reason: String,
    },
    /// The gated pod was created for other GPUs (another tensor parallel size, or the other
    /// path: device plugin or claim): delete it (an unscheduled pod goes at once) so that the
    /// next round creates it as the placement needs.
    Resize {
        name: String,
        uid: Option<String>,
        from: PodGpus,
        to: PodGpus,
    },
    /// Delete one of the deployment's ResourceClaims (its pod went, or never came back); the
    /// uid is a precondition, so a claim re-created under the name meanwhile stays.
    DeleteClaim {
        name: String,
        uid: Option<String>,
        reason: String,
    },
}

fn build_claim(
    what: &str,
    r: Result<ResourceClaim, claim::ClaimError>,
) -> Result<Box<ResourceClaim>, Error> {
    r.map(Box::new).map_err(|source| Error::BuildClaim {
        what: what.to_string(),
        source,
    })
}

fn build(what: &str, r: Result<Pod, pod::BuildError>) -> Result<Box<Pod>, Error> {
    r.map(Box::new).map_err(|source| Error::Build {
        what: what.to_string(),
        source,
    })
}

/// The pod and claim writes for `actions`, pure. `pods` and `claims` are the deployment's pods
/// and ResourceClaims from the cache; `gpus_for_new` how each pod to create gets its GPUs;
/// `cache_bytes` the model cache size when the architecture is known
/// (`model::checkpoint::cache_bytes`).
///
/// A pod's claim goes with it: deleting or re-creating a pod deletes the claim of its name,
/// and a claim whose pod is gone (deleted by hand, or by a run that stopped in between) is
/// deleted too. Only claims the deployment owns are in `claims`, so no other is touched.
pub fn steps(
    dep: &VllmDeployment,
    actions: &[Action],
    pods: &[Arc<Pod>],
    claims: &[Arc<ResourceClaim>],
    gpus_for_new: &BTreeMap<String, PodGpus>,
    launcher_image: &str,
    cache_bytes: Option<u64>,
) -> Result<Vec<Step>, Error> {
    let hash = pod::spec_hash(&dep.spec);
    let find = |name: &str| {
        pods.iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
    };
    let claim_of = |name: &str| {
        claims
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(claim::claim_name(name).as_str()))
    };
    let delete_claim = |name: &str, reason: &str| {
        claim_of(name)
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .map(|c| Step::DeleteClaim {
                name: claim::claim_name(name),
                uid: c.metadata.uid.clone(),
                reason: reason.to_string(),
            })
    };
    let mut out = Vec::new();
    for a in actions {
        match a {
            Action::CreateGated { pod, replica } => {
                let gpus = gpus_for_new
                    .get(pod)
                    .copied()
                    .unwrap_or(PodGpus::DevicePlugin(1));
                out.push(Step::Create {
                    pod: build(
                        pod,
                        gated_pod(dep, *replica, &hash, gpus, launcher_image, cache_bytes),
                    )?,
                });
            }
            Action::Release {
                pod,
                placement,
                status,
            } => {
                let Some(current) = find(pod) else { continue };
                let wanted = PodGpus::for_placement(placement);
                match pod_gpus(current) {
                    Some(have) if have != wanted => {
                        out.push(Step::Resize {
                            name: pod.clone(),
                            uid: current.metadata.uid.clone(),
                            from: have,
                            to: wanted,
                        });
                        out.extend(delete_claim(pod, "its pod is re-created for other GPUs"));
                    }
                    _ => {
                        let released = build(pod, released_pod(current, placement, status))?;
                        let uuids = claim::placement_uuids(placement);
                        let claim = if wanted == PodGpus::Claim {
                            let labels = current.metadata.labels.as_ref();
                            let replica = labels
                                .and_then(|l| l.get(LABEL_REPLICA))
                                .and_then(|r| r.parse().ok())
                                .unwrap_or_default();
                            Some(build_claim(
                                pod,
                                resource_claim(dep, pod, replica, &hash, &uuids),
                            )?)
                        } else {
                            None
                        };
                        // Without the gate in the cache there is nothing to release.
                        if let Some(patch) = release_patch(current, &released) {
                            out.push(Step::Release {
                                pod: released,
                                patch,
                                claim,
                            });
                        }
                    }
                }
            }
            Action::Delete { pod, reason } => {
                out.push(Step::Delete {
                    name: pod.clone(),
                    uid: find(pod).and_then(|p| p.metadata.uid.clone()),
                    reason: reason.clone(),
                });
                out.extend(delete_claim(pod, &format!("its pod is deleted: {reason}")));
            }
        }
    }
    // Claims whose pod is gone and that no step above deletes already.
    for c in claims {
        let Some(name) = c.metadata.name.as_deref() else {
            continue;
        };
        let has_pod = pods
            .iter()
            .any(|p| p.metadata.name.as_deref().map(claim::claim_name).as_deref() == Some(name));
        let deleting = out
            .iter()
            .any(|s| matches!(s, Step::DeleteClaim { name: n, .. } if n == name));
        if !has_pod && !deleting && c.metadata.deletion_timestamp.is_none() {
            out.push(Step::DeleteClaim {
                name: name.to_string(),
                uid: c.metadata.uid.clone(),
                reason: "its pod is gone".into(),
            });
        }
    }
    Ok(out)
}

/// RFC 6901 escaping of one JSON pointer segment.
fn pointer_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The JSON patch (RFC 6902) that releases `current` (as cached) into `released` (the
/// builder's output for it): `test` that the placement gate is still at its index, remove it,
/// set the affinity and the plan annotations. Only these paths are sent, so fields of a newer
/// API server that k8s-openapi does not know are kept, and no resourceVersion is needed: a
/// stale cache fails the `test` (422, staging/src/k8s.io/apiserver/pkg/endpoints/handlers/
/// patch.go, `applyJSPatch`) instead of a 409 on an unrelated change. `None` when `current`
/// has no placement gate.
pub fn release_patch(current: &Pod, released: &Pod) -> Option<json_patch::Patch> {
    let gates = current.spec.as_ref()?.scheduling_gates.as_ref()?;
    let index = gates.iter().position(|g| g.name == PLACEMENT_GATE)?;
    let mut ops = vec![
        serde_json::json!({"op": "test", "path": format!("/spec/schedulingGates/{index}/name"), "value": PLACEMENT_GATE}),
        serde_json::json!({"op": "remove", "path": format!("/spec/schedulingGates/{index}")}),
    ];
    if let Some(affinity) = released.spec.as_ref().and_then(|s| s.affinity.as_ref()) {
        // `add` on an existing member replaces it: the builder's affinity is the cached one
        // plus the node pin, which the API server accepts while the pod is gated.
        ops.push(serde_json::json!({"op": "add", "path": "/spec/affinity", "value": affinity}));
    }
    let wanted = released.metadata.annotations.clone().unwrap_or_default();
    match &current.metadata.annotations {
        Some(have) => {
            for (key, value) in &wanted {
                if have.get(key) != Some(value) {
                    ops.push(serde_json::json!({
                        "op": "add",
                        "path": format!("/metadata/annotations/{}", pointer_segment(key)),
                        "value": value,
                    }));
                }
            }
        }
        // A gated pod we created carries no annotations; a patch cannot "add if absent", so
        // the map is added whole (with anything the cache showed, which is nothing).
        None if !wanted.is_empty() => {
            ops.push(
                serde_json::json!({"op": "add", "path": "/metadata/annotations", "value": wanted}),
            );
        }
        None => {}
    }
    serde_json::from_value(serde_json::Value::Array(ops)).ok()
}

/// What a release that failed (or whose answer was lost) leaves of the pod's reservation,
/// judged from the pod as the API server has it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterFailedRelease {
    /// Gone, or still gated: nothing runs on the reservation; forget it.
    Forget,
    /// Released (by this attempt or an earlier one) to this node: the reservation holds memory
    /// a pod is about to use; keep it, on that node.
    Keep { node: Option<String> },
}

pub fn after_failed_release(found: Option<&Pod>) -> AfterFailedRelease {
    let Some(pod) = found else {
        return AfterFailedRelease::Forget;
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return AfterFailedRelease::Forget;
    }
    let gated = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.name == PLACEMENT_GATE));
    if gated {
        return AfterFailedRelease::Forget;
    }
    let node = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(pod::ANNOTATION_PLACEMENT))
        .and_then(|text| serde_json::from_str::<crate::api::Placement>(text).ok())
        .and_then(|p| p.node);
    AfterFailedRelease::Keep { node }
}

/// After a failed release: read the pod before forgetting anything. A reservation is forgotten
/// only when the pod is known not to run on it; when the pod cannot be read, it is kept and
/// times out on its own if nothing shows up (keeping too much is safe, forgetting is not).
async fn settle_failed_release(ctx: &Context, api: &Api<Pod>, namespace: &str, name: &str) {
    let found = match api.get_opt(name).await {
        Ok(found) => found,
        Err(e) => {
            warn!(pod = %name, error = %e, "cannot read the pod after a failed release; keeping its reservation");
            return;
        }
    };
    let pod_ref = PodRef {
        namespace: namespace.into(),
        name: name.into(),
    };
    match after_failed_release(found.as_ref()) {
        AfterFailedRelease::Forget => forget_reservation(ctx, namespace, name),
        AfterFailedRelease::Keep { node } => {
            let Ok(mut ledger) = ctx.ledger.lock() else {
                return;
            };
            // Released earlier to another node: the memory is promised there.
            if let (Some(node), Some(mut r)) = (node, ledger.get(&pod_ref).cloned())
                && r.node != node
            {
                r.node = node;
                ledger.reserve(r);
            }
        }
    }
}

fn delete_params(uid: &Option<String>) -> DeleteParams {
    DeleteParams {
        preconditions: uid.as_ref().map(|uid| Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    }
}

async fn delete(api: &Api<Pod>, name: &str, uid: &Option<String>) -> Result<(), Error> {
    match api.delete(name, &delete_params(uid)).await {
        Ok(_) => Ok(()),
        // Already gone, or replaced by a pod of the same name we did not mean.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(source) => Err(Error::DeletePod {
            pod: name.into(),
            source,
        }),
    }
}

/// A claim the controller could not create: its pod stays gated (and its reservation is
/// dropped) until a later round gets the claim in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimProblem {
    pub pod: String,
    /// `ClaimConflict` (the name is held by a claim this deployment does not own),
    /// `ClaimPending` (our previous claim of that name is still being deleted),
    /// `ClaimForbidden` (403), `ClaimInvalid` (422).
    pub reason: &'static str,
    pub message: String,
}

/// What became of a claim create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimCreated {
    Created,
    /// A claim of that name, ours, asking for the same GPUs (a release that failed after its
    /// claim was created): used as it is.
    Reused,
    Problem {
        reason: &'static str,
        message: String,
    },
}

/// Judge an existing claim of the wanted name (after a create answered 409 AlreadyExists):
/// only a claim the deployment owns may be reused or deleted, and only one asking for exactly
/// the wanted GPUs is reused. Returns the outcome and, when our stale claim must go first,
/// its uid for a delete with that precondition.
pub fn judge_existing(
    existing: &ResourceClaim,
    wanted: &ResourceClaim,
    owner_uid: &str,
) -> (ClaimCreated, Option<Option<String>>) {
    let name = existing.metadata.name.clone().unwrap_or_default();
    if !owned_by(existing, owner_uid) {
        return (
            ClaimCreated::Problem {
                reason: "ClaimConflict",
                message: format!(
                    "ResourceClaim {name} exists and is not owned by this VllmDeployment; it is left alone and the pod stays gated until it is renamed or removed"
                ),
            },
            None,
        );
    }
    if existing.metadata.deletion_timestamp.is_some() {
        return (
            ClaimCreated::Problem {
                reason: "ClaimPending",
                message: format!(
                    "the previous ResourceClaim {name} is still being deleted (it waits for its old pod to go); the pod is released once it is gone"
                ),
            },
            None,
        );
    }
    if claimed_uuids(existing).is_some() && claimed_uuids(existing) == claimed_uuids(wanted) {
        return (ClaimCreated::Reused, None);
    }
    (
        ClaimCreated::Problem {
            reason: "ClaimPending",
            message: format!(
                "ResourceClaim {name} was left by an earlier placement on other GPUs; deleting it, the pod is released once it is gone"
            ),
        },
        Some(existing.metadata.uid.clone()),
    )
}

/// Create `wanted` (POST, never apply: an apply would take over a claim of the same name that
/// someone else made, and a claim's spec is immutable anyway: pkg/apis/resource/validation/
/// validation.go `ValidateResourceClaimUpdate`).
async fn create_claim(
    ctx: &Context,
    dep: &VllmDeployment,
    wanted: &ResourceClaim,
) -> Result<ClaimCreated, Error> {
    let namespace = dep.metadata.namespace.clone().unwrap_or_default();
    let name = wanted.metadata.name.clone().unwrap_or_default();
    let claims: Api<ResourceClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let status = match claims.create(&params, wanted).await {
        Ok(_) => return Ok(ClaimCreated::Created),
        Err(kube::Error::Api(s)) => s,
        Err(source) => {
            return Err(Error::CreateClaim {
                claim: name,
                source,
            });
        }
    };
    let problem = |reason: &'static str, what: &str| {
        Ok(ClaimCreated::Problem {
            reason,
            message: format!(
                "cannot create ResourceClaim {name} ({what}): {}",
                status.message
            ),
        })
    };
    match status.code {
        403 => problem(
            "ClaimForbidden",
            "the controller's service account may not create resourceclaims in this namespace",
        ),
        422 => problem("ClaimInvalid", "the API server rejected it"),
        409 => {
            let existing = match claims.get_opt(&name).await {
                Ok(Some(existing)) => existing,
                // Gone since: the next round creates it.
                Ok(None) => {
                    return problem("ClaimPending", "a claim of that name was just deleted");
                }
                Err(source) => {
                    return Err(Error::CreateClaim {
                        claim: name,
                        source,
                    });
                }
            };
            let owner = dep.metadata.uid.clone().unwrap_or_default();
            let (outcome, stale) = judge_existing(&existing, wanted, &owner);
            if let Some(uid) = stale {
                delete_claim(&claims, &name, &uid).await?;
            }
            Ok(outcome)
        }
        _ => Err(Error::CreateClaim {
            claim: name,
            source: kube::Error::Api(status),
        }),
    }
}

async fn delete_claim(
    claims: &Api<ResourceClaim>,
    name: &str,
    uid: &Option<String>,
) -> Result<(), Error> {
    match claims.delete(name, &delete_params(uid)).await {
        Ok(_) => Ok(()),
        // Already gone, or replaced by a claim of the same name we did not mean.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(source) => Err(Error::DeleteClaim {
            claim: name.into(),
            source,
        }),
    }
}

/// Carry out `steps` in order; returns the claims that could not be created (their pods stay
/// gated).
pub async fn run_steps(
    ctx: &Context,
    dep: &VllmDeployment,
    steps: Vec<Step>,
) -> Result<Vec<ClaimProblem>, Error> {
    let namespace = dep.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let claims: Api<ResourceClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let mut problems = Vec::new();
    for step in steps {
        match step {
            Step::Create { pod } => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                api.patch(&name, &apply, &Patch::Apply(pod.as_ref()))
                    .await
                    .map_err(|source| Error::CreatePod {
                        pod: name.clone(),
                        source,
                    })?;
                info!(pod = %name, "created gated pod");
            }
            Step::Release { pod, patch, claim } => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                if let Some(claim) = claim {
                    match create_claim(ctx, dep, &claim).await {
                        Ok(ClaimCreated::Created) => info!(pod = %name, "created resource claim"),
                        Ok(ClaimCreated::Reused) => {
                            info!(pod = %name, "resource claim exists with the planned GPUs")
                        }
                        Ok(ClaimCreated::Problem { reason, message }) => {
                            warn!(pod = %name, reason, %message, "pod not released");
                            forget_reservation(ctx, &namespace, &name);
                            problems.push(ClaimProblem {
                                pod: name,
                                reason,
                                message,
                            });
                            continue;
                        }
                        Err(e) => {
                            forget_reservation(ctx, &namespace, &name);
                            return Err(e);
                        }
                    }
                }
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                if let Err(source) = api.patch(&name, &params, &Patch::Json::<()>(patch)).await {
                    settle_failed_release(ctx, &api, &namespace, &name).await;
                    return Err(Error::ReleasePod { pod: name, source });
                }
                info!(pod = %name, "released pod");
            }
            Step::Delete { name, uid, reason } => {
                delete(&api, &name, &uid).await?;
                info!(pod = %name, %reason, "deleted pod");
            }
            Step::Resize {
                name,
                uid,
                from,
                to,
            } => {
                forget_reservation(ctx, &namespace, &name);
                delete(&api, &name, &uid).await?;
                let note = match (from, to) {
                    (PodGpus::DevicePlugin(from), PodGpus::DevicePlugin(to)) => format!(
                        "{name}: created for {from} GPU(s), placed with tensor parallel size {to}; re-creating it (a pod's GPU count cannot change)"
                    ),
                    (from, to) => format!(
                        "{name}: created for {from}, placed on {to}; re-creating it (a pod's GPU resources and claims cannot change)"
                    ),
                };
                let event = Event {
                    warning: false,
                    reason: "Resized".into(),
                    message: note,
                    pod: Some(name.clone()),
                };
                publish(ctx, dep, &event, uid).await;
            }
            Step::DeleteClaim { name, uid, reason } => {
                // A claim left over is deleted on a later round (it stays in the cache until
                // then); it must not hold up the status of the whole deployment.
                match delete_claim(&claims, &name, &uid).await {
                    Ok(()) => info!(claim = %name, %reason, "deleted resource claim"),
                    Err(e) => {
                        warn!(claim = %name, error = %e, "cannot delete resource claim; retrying later")
                    }
                }
            }
        }
    }
    Ok(problems)
}

fn forget_reservation(ctx: &Context, namespace: &str, name: &str) {
    if let Ok(mut ledger) = ctx.ledger.lock() {
        ledger.release(&PodRef {
            namespace: namespace.into(),
            name: name.into(),
        });
    }
}

/// What became of the Service apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceApplied {
    Applied {
        name: String,
    },
    /// The name is held by fields another manager owns (someone else's Service, or ours edited
    /// by hand): the API server's message, naming the managers and fields.
    Conflict {
        name: String,
        message: String,
    },
}

/// Server-side apply of the Service, without `force`: a Service of that name that another
/// field manager owns (created by someone else, or ours edited by hand) answers 409 Conflict
/// instead of being taken over (k8s staging/src/k8s.io/apiserver/pkg/endpoints/handlers/
/// fieldmanager: conflicts are errors unless force is set). That answer is an outcome, not an
/// error: it is reported in the status and an event.
pub async fn apply_service(ctx: &Context, dep: &VllmDeployment) -> Result<ServiceApplied, Error> {
    let svc: Service = service(dep).map_err(|source| Error::Build {
        what: "service".into(),
        source,
    })?;
    let name = svc.metadata.name.clone().unwrap_or_default();
    let api: Api<Service> = Api::namespaced(
        ctx.client.clone(),
        dep.metadata.namespace.as_deref().unwrap_or_default(),
    );
    match api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&svc),
        )
        .await
    {
        Ok(_) => Ok(ServiceApplied::Applied { name }),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(ServiceApplied::Conflict {
            name,
            message: s.message.clone(),
        }),
        Err(source) => Err(Error::ApplyService { name, source }),
    }
}

/// Server-side apply on the status subresource, keeping unchanged conditions' transition times.
pub async fn patch_status(
    ctx: &Context,
    dep: &VllmDeployment,
    mut status: VllmDeploymentStatus,
) -> Result<(), Error> {
    if let Some(old) = &dep.status {
        carry_transition_times(&mut status.conditions, &old.conditions);
    }
    let name = dep.metadata.name.clone().unwrap_or_default();
    let body = serde_json::json!({
        "apiVersion": VllmDeployment::api_version(&()),
        "kind": VllmDeployment::kind(&()),
        "status": status,
    });
    let api: Api<VllmDeployment> = Api::namespaced(
        ctx.client.clone(),
        dep.metadata.namespace.as_deref().unwrap_or_default(),
    );
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::PatchStatus { name, source })?;
    Ok(())
}

/// Event reason when a profile's spec apply met another field manager's field.
pub const REASON_PROFILE_CONFLICT: &str = "ProfileConflict";
/// Event reason when a profile could not be written for another reason.
pub const REASON_PROFILE_WRITE_FAILED: &str = "ProfileWriteFailed";
/// Writes of one learned profile tried before it is left to memory.
pub const PROFILE_WRITE_TRIES: u32 = 3;

/// Write the learned profiles (and those whose write failed earlier, up to
/// [`PROFILE_WRITE_TRIES`]): the spec by server-side apply WITHOUT force, so that a field a
/// platform team set with its own manager is not taken over (409 Conflict: a
/// `ProfileConflict` event, and no new apply until the object changes); then the status by
/// server-side apply on the status subresource, forced (the status is the controller's). The
/// spec of a profile stored as `Manual` is never written; its status records what was
/// observed. Problems come back as warning events, never as errors: the plan already uses the
/// learned figures (the failure book keeps them until they are seen stored).
pub async fn write_profiles(ctx: &Context, learned: &[MemoryProfile]) -> Vec<Event> {
    let mut events = Vec::new();
    if !ctx.stores.profiles_api {
        return events;
    }
    let mut todo: BTreeMap<String, (MemoryProfile, u32)> = {
        let mut unwritten = ctx
            .unwritten_profiles
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        unwritten.drain().collect()
    };
    for p in learned {
        if let Some(name) = &p.metadata.name {
            todo.insert(name.clone(), (p.clone(), 0));
        }
    }
    let api: Api<MemoryProfile> = Api::all(ctx.client.clone());
    let problem = |reason: &str, message: String| Event {
        warning: true,
        reason: reason.into(),
        message,
        pod: None,
    };
    let mut retry = Vec::new();
    for (name, (p, tries)) in todo {
        let stored = ctx
            .stores
            .profiles
            .get(&kube::runtime::reflector::ObjectRef::new(&name));
        let manual = p.spec.source == ProfileSource::Manual
            || stored
                .as_ref()
                .is_some_and(|s| s.spec.source == ProfileSource::Manual);
        let stored_version = stored
            .as_ref()
            .and_then(|s| s.metadata.resource_version.clone());
        if !manual {
            let conflicted_at = ctx
                .profile_conflicts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&name)
                .cloned();
            let unchanged_since_conflict =
                conflicted_at.is_some_and(|at| at.is_some() && at == stored_version);
            if !unchanged_since_conflict {
                let body = serde_json::json!({
                    "apiVersion": MemoryProfile::api_version(&()),
                    "kind": MemoryProfile::kind(&()),
                    "metadata": { "name": name },
                    "spec": p.spec,
                });
                match api
                    .patch(
                        &name,
                        &PatchParams::apply(FIELD_MANAGER),
                        &Patch::Apply(&body),
                    )
                    .await
                {
                    Ok(_) => {
                        super::metrics::Metrics::count(&ctx.metrics.profile_writes, "applied");
                        ctx.profile_conflicts
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&name);
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        super::metrics::Metrics::count(&ctx.metrics.profile_writes, "conflict");
                        ctx.profile_conflicts
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(name.clone(), stored_version.clone());
                        events.push(problem(
                            REASON_PROFILE_CONFLICT,
                            format!(
                                "MemoryProfile {name}: another field manager owns fields of its spec (a platform team's edit wins); not overwritten, its status records what was observed: {}",
                                s.message
                            ),
                        ));
                    }
                    Err(e) => {
                        super::metrics::Metrics::count(&ctx.metrics.profile_writes, "failed");
                        events.push(problem(
                            REASON_PROFILE_WRITE_FAILED,
                            format!("apply MemoryProfile {name}: {e}"),
                        ));
                        retry.push((name, p, tries));
                        continue;
                    }
                }
            }
        } else if stored.is_none() {
            // A Manual profile the cache does not hold (deleted meanwhile): nothing to write to.
            continue;
        }
        let Some(status) = &p.status else { continue };
        let body = serde_json::json!({
            "apiVersion": MemoryProfile::api_version(&()),
            "kind": MemoryProfile::kind(&()),
            "metadata": { "name": name },
            "status": status,
        });
        if let Err(e) = api
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            super::metrics::Metrics::count(&ctx.metrics.profile_writes, "failed");
            events.push(problem(
                REASON_PROFILE_WRITE_FAILED,
                format!("patch status of MemoryProfile {name}: {e}"),
            ));
            retry.push((name, p, tries));
        }
    }
    let mut unwritten = ctx
        .unwritten_profiles
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    for (name, p, tries) in retry {
        let tries = tries.saturating_add(1);
        if tries < PROFILE_WRITE_TRIES {
            unwritten.entry(name).or_insert((p, tries));
        } else {
            warn!(profile = %name, "giving up writing the learned profile; it stays in memory");
        }
    }
    events
}

/// events.k8s.io/v1 `note` limit in bytes: k8s pkg/apis/core/validation/events.go
/// `NoteLengthLimit = 1024`, compared with Go's `len`, which counts bytes.
pub const NOTE_LIMIT_BYTES: usize = 1024;
const CUT_MARK: &str = "...";

/// `message` cut to at most `NOTE_LIMIT_BYTES` bytes on a character boundary, marked as cut.
pub fn event_note(message: &str) -> String {
    if message.len() <= NOTE_LIMIT_BYTES {
        return message.to_string();
    }
    let mut end = NOTE_LIMIT_BYTES - CUT_MARK.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT_MARK}", &message[..end])
}

/// Where an event goes: on its pod when it is about one (with the deployment as `related`),
/// else on the deployment.
pub fn event_references(
    dep: &VllmDeployment,
    e: &Event,
    pod_uid: Option<String>,
) -> (ObjectReference, Option<ObjectReference>) {
    match &e.pod {
        Some(pod) => (
            ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.clone()),
                namespace: dep.metadata.namespace.clone(),
                uid: pod_uid,
                ..Default::default()
            },
            Some(dep.object_ref(&())),
        ),
        None => (dep.object_ref(&()), None),
    }
}

async fn publish(ctx: &Context, dep: &VllmDeployment, e: &Event, pod_uid: Option<String>) {
    let (regarding, related) = event_references(dep, e, pod_uid);
    publish_to(ctx, &regarding, related, e).await;
}

async fn publish_to(
    ctx: &Context,
    reference: &ObjectReference,
    related: Option<ObjectReference>,
    e: &Event,
) {
    let event = KubeEvent {
        type_: if e.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: e.reason.clone(),
        note: Some(event_note(&e.message)),
        action: e.reason.clone(),
        secondary: related,
    };
    // An event is a courtesy: failing to write one must not fail the reconcile.
    if let Err(err) = ctx.recorder.publish(&event, reference).await {
        warn!(reason = %e.reason, error = %err, "could not publish event");
    }
}

/// Publish `events`; `pods` (the deployment's pods from the cache) give the uid of the pod an
/// event is about.
pub async fn publish_events(
    ctx: &Context,
    dep: &VllmDeployment,
    events: &[Event],
    pods: &[Arc<Pod>],
) {
    for e in events {
        let uid = e.pod.as_deref().and_then(|name| {
            pods.iter()
                .find(|p| p.metadata.name.as_deref() == Some(name))
                .and_then(|p| p.metadata.uid.clone())
        });
        publish(ctx, dep, e, uid).await;
    }
}

/// A VllmDeployment that does not deserialize: say so on the object, then wait for a change.
pub async fn publish_invalid(ctx: &Context, invalid: &InvalidObject) {
    let m = &invalid.metadata;
    warn!(namespace = ?m.namespace, name = ?m.name, error = %invalid.error, "malformed VllmDeployment");
    let reference = ObjectReference {
        api_version: Some(VllmDeployment::api_version(&()).into()),
        kind: Some(VllmDeployment::kind(&()).into()),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        ..Default::default()
    };
    let e = Event {
        warning: true,
        reason: "InvalidSpec".into(),
        message: format!("cannot read this VllmDeployment: {}", invalid.error),
        pod: None,
    };
    publish_to(ctx, &reference, None, &e).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_are_cut_to_1024_bytes_on_a_character_boundary() {
        let short = "GPU 0 needs 17.2 GiB free";
        assert_eq!(event_note(short), short);
        let exact = "x".repeat(NOTE_LIMIT_BYTES);
        assert_eq!(event_note(&exact), exact);
        // 'é' is 2 bytes, '🚀' 4: 1000 characters are far more than 1024 bytes.
        for unit in ["é", "🚀", "a€"] {
            let long = unit.repeat(1000);
            let note = event_note(&long);
            assert!(note.len() <= NOTE_LIMIT_BYTES, "{} bytes", note.len());
            assert!(note.len() > NOTE_LIMIT_BYTES - 8, "{} bytes", note.len());
            assert!(note.ends_with("..."));
            let kept = note.trim_end_matches("...");
            assert!(long.starts_with(kept));
        }
    }

    fn claim_on(uuids: &[&str]) -> ResourceClaim {
        let text = include_str!("../../tests/fixtures/controller/deployment.yaml");
        let mut dep: VllmDeployment = serde_norway::from_str(text).unwrap();
        dep.metadata.uid = Some("dep-uid".into());
        let uuids: Vec<String> = uuids.iter().map(|u| u.to_string()).collect();
        let mut c = resource_claim(&dep, "llama-1b-0-h", 0, "h", &uuids).unwrap();
        c.metadata.uid = Some("claim-uid".into());
        c
    }

    #[test]
    fn an_existing_claim_is_reused_only_if_ours_and_the_same_and_deleted_only_if_ours() {
        let wanted = claim_on(&["GPU-aa", "GPU-bb"]);
        // Ours, same GPUs: a release that failed after the create; reuse it.
        assert_eq!(
            judge_existing(&wanted, &wanted, "dep-uid"),
            (ClaimCreated::Reused, None)
        );
        // Ours, other GPUs: from an earlier placement; delete it by uid, wait.
        let (outcome, stale) = judge_existing(&claim_on(&["GPU-cc"]), &wanted, "dep-uid");
        assert!(matches!(
            outcome,
            ClaimCreated::Problem {
                reason: "ClaimPending",
                ..
            }
        ));
        assert_eq!(stale, Some(Some("claim-uid".into())));
        // Ours, being deleted: wait for it.
        let mut going = claim_on(&["GPU-aa", "GPU-bb"]);
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-11-26T12:00:00Z".parse().unwrap(),
            ));
        let (outcome, stale) = judge_existing(&going, &wanted, "dep-uid");
        assert!(matches!(
            outcome,
            ClaimCreated::Problem {
                reason: "ClaimPending",
                ..
            }
        ));
        assert_eq!(stale, None);
        // Someone else's, even with the same GPUs: never reused, never deleted.
        let (outcome, stale) = judge_existing(&wanted, &wanted, "another-uid");
        match outcome {
            ClaimCreated::Problem { reason, message } => {
                assert_eq!(reason, "ClaimConflict");
                assert!(
                    message.contains("not owned by this VllmDeployment"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(stale, None);
    }

    #[test]
    fn pod_events_go_on_the_pod_with_the_deployment_related() {
        let text = include_str!("../../tests/fixtures/controller/deployment.yaml");
        let mut dep: VllmDeployment = serde_norway::from_str(text).unwrap();
        dep.metadata.uid = Some("dep-uid".into());
        let about_pod = Event {
            reason: "Placed".into(),
            pod: Some("llama-1b-0-h".into()),
            ..Default::default()
        };
        let (regarding, related) = event_references(&dep, &about_pod, Some("pod-uid".into()));
        assert_eq!(regarding.kind.as_deref(), Some("Pod"));
        assert_eq!(regarding.api_version.as_deref(), Some("v1"));
        assert_eq!(regarding.name.as_deref(), Some("llama-1b-0-h"));
        assert_eq!(regarding.namespace, dep.metadata.namespace);
        assert_eq!(regarding.uid.as_deref(), Some("pod-uid"));
        let related = related.unwrap();
        assert_eq!(related.kind.as_deref(), Some("VllmDeployment"));
        assert_eq!(related.uid.as_deref(), Some("dep-uid"));
        let about_deployment = Event::default();
        let (regarding, related) = event_references(&dep, &about_deployment, None);
        assert_eq!(regarding.kind.as_deref(), Some("VllmDeployment"));
        assert!(related.is_none());
    }
}
