//! Reconcile one VllmDeployment, in named stages: read (guarded against malformed objects),
//! resolve the model, validate, observe the pods, decide (pure, under the shared ledger lock),
//! apply the pod steps, apply the Service, write status, publish events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::reflector::ObjectRef;
use tracing::{instrument, warn};

use super::apply;
use super::context::GpuAllocation;
use super::context::{Context, Error, Guarded};
use super::decide::{self, Action, DeploymentView, Outcome, PodView};
use super::observe;
use super::pod::{self, LABEL_INSTANCE, PodGpus};
use crate::api::{PodRef, VllmDeployment};
use crate::cli::plan::family_from_image;
use crate::model::{Architecture, checkpoint};
use crate::plan::{Decision, Fleet, Ledger, Request, plan_replica};

const MIN_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[instrument(skip_all, fields(deployment = %key(&obj)))]
pub async fn reconcile(obj: Arc<Guarded>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = Instant::now();
    let result = match &obj.0 {
        Ok(dep) => reconcile_deployment(dep, &ctx).await,
        Err(invalid) => {
            apply::publish_invalid(&ctx, invalid).await;
            Err(Error::InvalidObject(format!(
                "VllmDeployment {}/{} cannot be read: {}",
                invalid.metadata.namespace.as_deref().unwrap_or(""),
                invalid.metadata.name.as_deref().unwrap_or(""),
                invalid.error
            )))
        }
    };
    ctx.metrics.observe_reconcile(started.elapsed());
    if result.is_ok()
        && let Ok(mut retries) = ctx.retries.lock()
    {
        retries.remove(&ObjectRef::from_obj(obj.as_ref()));
    }
    result
}

/// Invalid input waits for a change; anything else is retried with a doubling delay.
pub fn error_policy(obj: Arc<Guarded>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.error(error.stage());
    warn!(deployment = %key(&obj), stage = error.stage(), error = %error, "reconcile failed");
    if let Error::InvalidObject(_) | Error::Build { .. } = error {
        return Requeue::await_change();
    }
    let attempt = match ctx.retries.lock() {
        Ok(mut retries) => {
            let n = retries
                .entry(ObjectRef::from_obj(obj.as_ref()))
                .or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    Requeue::requeue(backoff(attempt))
}

pub fn backoff(attempt: u32) -> Duration {
    (MIN_BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1).min(10))).min(MAX_BACKOFF)
}

fn key(obj: &Guarded) -> String {
    let m = obj.meta();
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or(""),
        m.name.as_deref().unwrap_or("")
    )
}

async fn reconcile_deployment(dep: &VllmDeployment, ctx: &Context) -> Result<Requeue, Error> {
    // ResolveModel: an outage is an error (requeued), an invalid model a decision input.
    let arch = ctx
        .models
        .resolve(&ctx.client, dep)
        .await
        .map_err(Error::ResolveModel)?;
    // Validate.
    let arch = arch.and_then(|a| {
        validate(dep)
            .and_then(|()| validate_with_model(dep, &a))
            .map(|()| a)
    });
    let now = (ctx.clock)();
    let pods = owned_pods(ctx, dep);
    let claims = ctx.owned_claims(dep);
    // Observe: the pods' termination messages, the agents' reports, Ready pods' /metrics.
    let (views, scrapes_pending) = observe::observe_pods(
        ctx,
        dep,
        arch.as_ref().ok().map(|a| a.as_ref()),
        &pods,
        &ctx.fleet(now),
    )
    .await;
    let queued = queued_behind(ctx, dep);
    // Plan.
    let (outcome, gpus_for_new) = decide_under_lock(ctx, dep, &arch, &views, queued, now)?;
    let steps = apply::steps(
        dep,
        &outcome.actions,
        &pods,
        &claims,
        &gpus_for_new,
        &ctx.settings.launcher_image,
        arch.as_ref()
            .ok()
            .map(|a| checkpoint::cache_bytes(checkpoint::checkpoint_bytes(a))),
    )?;
    let claim_problems = apply::run_steps(ctx, dep, steps).await?;
    // Learned profiles are stored; a problem is an event, never a failed reconcile.
    let profile_events = apply::write_profiles(ctx, &outcome.profiles).await;
    // The Service's fate goes into the status, which is written whether or not it applied.
    let service = apply::apply_service(ctx, dep).await;
    let mut status = outcome.status.clone();
    let mut events = outcome.events.clone();
    events.extend(profile_events);
    let uses_claims = !claims.is_empty()
        || outcome.actions.iter().any(|a| {
            matches!(a, Action::Release { placement, .. }
                if PodGpus::for_placement(placement) == PodGpus::Claim)
        });
    if let Some(c) = claims_condition(&claim_problems, uses_claims, dep.metadata.generation, now) {
        status.conditions.push(c);
    }
    for p in &claim_problems {
        if let Some(pl) = status.placements.iter_mut().find(|pl| pl.pod == p.pod) {
            *pl = crate::api::Placement {
                pod: p.pod.clone(),
                reason: Some(format!("not released: {}", p.message)),
                ..Default::default()
            };
        }
        events.push(decide::Event {
            warning: true,
            reason: p.reason.into(),
            message: format!("{}: {}", p.pod, p.message),
            pod: Some(p.pod.clone()),
        });
    }
    let (condition, service_error) = service_condition(service, dep.metadata.generation, now);
    if condition.status != "True" && service_error.is_none() {
        events.push(decide::Event {
            warning: true,
            reason: condition.reason.clone(),
            message: condition.message.clone(),
            pod: None,
        });
    }
    let conflict = condition.reason == REASON_SERVICE_CONFLICT;
    status.conditions.push(condition);
    apply::patch_status(ctx, dep, status).await?;
    apply::publish_events(ctx, dep, &events, &pods).await;
    record_metrics(ctx, dep, &outcome);
    if let Some(e) = service_error {
        return Err(e);
    }
    // Nothing watches the other owner's Service or claim: look again in a while.
    let retry = conflict || !claim_problems.is_empty();
    let requeue_after = match outcome.requeue_after {
        Some(after) if retry => Some(after.min(SERVICE_CONFLICT_RETRY)),
        None if retry => Some(SERVICE_CONFLICT_RETRY),
        other => other,
    };
    // A /metrics scrape with tries left, or a profile write to retry: look again soon.
    let again = if scrapes_pending {
        Some(observe::SCRAPE_RETRY)
    } else if !ctx
        .unwritten_profiles
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_empty()
    {
        Some(SERVICE_CONFLICT_RETRY)
    } else {
        None
    };
    let requeue_after = match (requeue_after, again) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(match requeue_after {
        Some(after) => Requeue::requeue(after),
        None => Requeue::await_change(),
    })
}

/// The status condition about the deployment's Service.
pub const CONDITION_SERVICE: &str = "ServiceReady";
pub const REASON_SERVICE_CONFLICT: &str = "ServiceConflict";
const SERVICE_CONFLICT_RETRY: Duration = Duration::from_secs(60);

/// The `ServiceReady` condition for the Service apply's result, and the error to return after
/// the status is written (a failed apply other than a conflict is retried with backoff).
pub fn service_condition(
    applied: Result<apply::ServiceApplied, Error>,
    generation: Option<i64>,
    now: Timestamp,
) -> (Condition, Option<Error>) {
    let (ok, reason, message, error) = match applied {
        Ok(apply::ServiceApplied::Applied { name }) => (
            true,
            "Applied",
            format!("Service {name} routes to the ready replicas"),
            None,
        ),
        Ok(apply::ServiceApplied::Conflict { name, message }) => (
            false,
            REASON_SERVICE_CONFLICT,
            format!(
                "Service {name} exists with fields another manager owns; not overwritten: {message}"
            ),
            None,
        ),
        Err(e) => (false, "ApplyFailed", e.to_string(), Some(e)),
    };
    let condition = Condition {
        type_: CONDITION_SERVICE.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(now),
    };
    (condition, error)
}

/// The status condition about the deployment's ResourceClaims (DRA path only).
pub const CONDITION_CLAIMS: &str = "ResourceClaimsReady";

/// `ResourceClaimsReady`: False with the first problem's reason when a claim could not be
/// created, True when the deployment uses claims and all went in; absent on the device-plugin
/// path.
pub fn claims_condition(
    problems: &[apply::ClaimProblem],
    uses_claims: bool,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<Condition> {
    let (ok, reason, message) = match problems.first() {
        Some(p) => (
            false,
            p.reason.to_string(),
            problems
                .iter()
                .map(|p| format!("{}: {}", p.pod, p.message))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        None if uses_claims => (
            true,
            "Created".to_string(),
            "every released replica's ResourceClaim exists".to_string(),
        ),
        None => return None,
    };
    Some(Condition {
        type_: CONDITION_CLAIMS.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason,
        message,
        observed_generation: generation,
        last_transition_time: Time(now),
    })
}

/// What the CRD's schema cannot check: the shared validation pass ([`crate::validate`]),
/// the same one `plan`, `simulate` and `render` run on files.
pub fn validate(dep: &VllmDeployment) -> Result<(), String> {
    problems_to_result(crate::validate::deployment(dep))
}

/// The rules that need the model (its length limit as vLLM derives it).
pub fn validate_with_model(dep: &VllmDeployment, arch: &Architecture) -> Result<(), String> {
    problems_to_result(crate::validate::deployment_with_architecture(
        dep,
        arch,
        family_from_image(&dep.spec.image),
    ))
}

fn problems_to_result(problems: Vec<crate::validate::Problem>) -> Result<(), String> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "invalid spec: {}",
            crate::validate::join(&problems)
        ))
    }
}

/// The deployment's pods from the cache: same namespace, instance label and owner uid.
fn owned_pods(ctx: &Context, dep: &VllmDeployment) -> Vec<Arc<Pod>> {
    let ns = dep.metadata.namespace.as_deref();
    let name = dep.metadata.name.as_deref();
    let uid = dep.metadata.uid.as_deref();
    let mut pods = ctx.stores.pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == ns
            && p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_INSTANCE))
                .map(String::as_str)
                == name
            && p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| Some(o.uid.as_str()) == uid)
    });
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    pods
}

fn waiting_for_memory(dep: &VllmDeployment) -> bool {
    dep.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Admitted" && c.status == "False" && c.reason == "InsufficientGpuMemory"
        })
    })
}

fn created(dep: &VllmDeployment) -> (Option<Timestamp>, String, String) {
    (
        dep.metadata.creation_timestamp.as_ref().map(|t| t.0),
        dep.metadata.namespace.clone().unwrap_or_default(),
        dep.metadata.name.clone().unwrap_or_default(),
    )
}

/// Older deployments still waiting for GPU memory, oldest first, as `namespace/name`.
pub fn queued_behind(ctx: &Context, dep: &VllmDeployment) -> Vec<String> {
    let me = created(dep);
    let mut older: Vec<_> = ctx
        .stores
        .deployments
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok().cloned())
        .filter(|d| d.metadata.uid != dep.metadata.uid && waiting_for_memory(d))
        .map(|d| created(&d))
        .filter(|c| *c < me)
        .collect();
    older.sort();
    older
        .into_iter()
        .map(|(_, ns, name)| format!("{ns}/{name}"))
        .collect()
}

/// Settle the ledger, decide, and size the pods about to be created, all under the lock.
fn decide_under_lock(
    ctx: &Context,
    dep: &VllmDeployment,
    arch: &Result<Arc<Architecture>, String>,
    views: &[PodView],
    queued_behind: Vec<String>,
    now: Timestamp,
) -> Result<(Outcome, BTreeMap<String, PodGpus>), Error> {
    let fleet = ctx.fleet(now);
    let spec_hash = pod::spec_hash(&dep.spec);
    let view = DeploymentView {
        name: dep.metadata.name.clone().unwrap_or_default(),
        namespace: dep.metadata.namespace.clone().unwrap_or_default(),
        generation: dep.metadata.generation,
        spec: &dep.spec,
        arch: arch.as_ref().map(|a| a.as_ref()).map_err(Clone::clone),
        family: family_from_image(&dep.spec.image),
        spec_hash,
        queued_behind,
        gpu_allocation: ctx.settings.gpu_allocation,
    };
    let mut ledger = ctx.ledger.lock().map_err(|_| Error::Plan)?;
    let mut failures = ctx.failures.lock().map_err(|_| Error::Plan)?;
    ledger.settle(&fleet, now, ctx.settings.reservation_timeout);
    failures.forget_old(now);
    let outcome = decide::reconcile(&view, views, &fleet, &mut ledger, &mut failures, now);
    let avoid = failures.avoided(now);
    let mut gpus = BTreeMap::new();
    for a in &outcome.actions {
        if let Action::CreateGated { pod, .. } = a {
            gpus.insert(
                pod.clone(),
                provisional_gpus(
                    &view,
                    pod,
                    &fleet,
                    &ledger,
                    &avoid,
                    ctx.settings.gpu_allocation,
                ),
            );
        }
    }
    Ok((outcome, gpus))
}

/// The smallest tensor parallel size `spec` allows (1 if it names none).
pub fn smallest_tensor_parallel(spec: &crate::api::VllmDeploymentSpec) -> u32 {
    spec.tensor_parallel
        .sizes
        .iter()
        .copied()
        .filter(|s| *s > 0)
        .min()
        .unwrap_or(1) as u32
}

/// How a new pod gets its GPUs. A pod's resources and claims cannot change, so this is what
/// the planner would choose right now: a claim on a DRA node, else the tensor parallel size
/// through the device plugin; if the placement at release differs, the still-gated pod is
/// re-created (see `apply::steps`). Without a placement, a claim when only DRA is allowed,
/// else the smallest allowed size.
pub fn provisional_gpus(
    dep: &DeploymentView,
    pod: &str,
    fleet: &Fleet,
    ledger: &Ledger,
    avoid: &[(String, String)],
    allocation: GpuAllocation,
) -> PodGpus {
    let smallest = if allocation == GpuAllocation::Dra {
        PodGpus::Claim
    } else {
        PodGpus::DevicePlugin(smallest_tensor_parallel(dep.spec))
    };
    let Ok(arch) = dep.arch else { return smallest };
    let pod_ref = PodRef {
        namespace: dep.namespace.clone(),
        name: pod.to_string(),
    };
    let mut ledger = ledger.clone();
    ledger.release(&pod_ref);
    let req = Request {
        pod: pod_ref,
        arch,
        spec: dep.spec,
        family: dep.family,
        avoid,
        gpu_allocation: dep.gpu_allocation,
    };
    match plan_replica(fleet, &ledger, &req) {
        Decision::Placed(p) => PodGpus::for_placement(&p),
        Decision::Refused(_) => smallest,
    }
}

fn record_metrics(ctx: &Context, dep: &VllmDeployment, outcome: &Outcome) {
    let m = &ctx.metrics;
    for a in &outcome.actions {
        if let Action::Release { .. } = a {
            m.placements.inc();
        }
    }
    let refused = outcome.status.state.as_deref() == Some("InsufficientGpuMemory");
    if refused {
        m.refusals.inc();
    }
    for e in &outcome.events {
        if e.reason == "ArgsReplaced" {
            m.args_replaced.inc();
        }
    }
    let others = ctx
        .stores
        .deployments
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|d| d.metadata.uid != dep.metadata.uid && waiting_for_memory(d))
        .count();
    m.queue_length.set((others + usize::from(refused)) as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_bounded() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[test]
    fn long_names_and_bad_headroom_are_invalid() {
        let text = include_str!("../../tests/fixtures/controller/deployment.yaml");
        let mut d: VllmDeployment = serde_norway::from_str(text).unwrap();
        assert_eq!(validate(&d), Ok(()));
        d.spec.memory.headroom.0 = "lots".into();
        assert!(validate(&d).unwrap_err().contains("memory.headroom"));
        d.spec.memory.headroom.0 = "1Gi".into();
        d.metadata.name = Some("x".repeat(64));
        assert!(validate(&d).unwrap_err().contains("at most 63"));
    }

    #[test]
    fn a_max_model_len_above_the_model_is_invalid_unless_vllm_is_told_to_allow_it() {
        let text = include_str!("../../tests/fixtures/controller/deployment.yaml");
        let mut d: VllmDeployment = serde_norway::from_str(text).unwrap();
        let arch = crate::model::catalog::lookup("meta-llama/Llama-3.1-8B-Instruct")
            .unwrap()
            .architecture()
            .unwrap();
        d.spec.max_model_len = Some(131_072);
        assert_eq!(validate_with_model(&d, &arch), Ok(()));
        d.spec.max_model_len = Some(140_737_488_355_328);
        let err = validate_with_model(&d, &arch).unwrap_err();
        assert!(err.contains("spec.maxModelLen"), "{err}");
        d.spec.env.push(k8s_openapi::api::core::v1::EnvVar {
            name: "VLLM_ALLOW_LONG_MAX_MODEL_LEN".into(),
            value: Some(" True ".into()),
            value_from: None,
        });
        assert_eq!(validate_with_model(&d, &arch), Ok(()));
    }
}
