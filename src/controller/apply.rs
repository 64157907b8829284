//! The apply stages: turn the decision's actions into Pod writes, then the Service, the status
//! and the events. Every create is a server-side apply with field manager `vllm-operator`; the
//! release is one resourceVersion-guarded update; deletes carry the pod's uid as precondition.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::error_boundary::InvalidObject;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Api, Resource};
use tracing::{info, warn};

use super::context::{Context, Error};
use super::decide::{Action, Event, carry_transition_times};
use super::pod::{self, gated_pod, gpu_count, released_pod};
use super::service::service;
use crate::api::{PodRef, VllmDeployment, VllmDeploymentStatus};

pub const FIELD_MANAGER: &str = "vllm-operator";

/// One pod write.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Create {
        pod: Box<Pod>,
    },
    Release {
        pod: Box<Pod>,
    },
    Delete {
        name: String,
        uid: Option<String>,
        reason: String,
    },
    /// The gated pod was sized for another tensor parallel size: delete it (an unscheduled pod
    /// goes at once) so that the next round creates it with the planned GPU count.
    Resize {
        name: String,
        uid: Option<String>,
        from: u32,
        to: u32,
    },
}

fn build(what: &str, r: Result<Pod, pod::BuildError>) -> Result<Box<Pod>, Error> {
    r.map(Box::new).map_err(|source| Error::Build {
        what: what.to_string(),
        source,
    })
}

/// The pod writes for `actions`, pure. `pods` are the deployment's pods from the cache;
/// `gpus_for_new` the GPU count of each pod to create.
pub fn steps(
    dep: &VllmDeployment,
    actions: &[Action],
    pods: &[Arc<Pod>],
    gpus_for_new: &BTreeMap<String, u32>,
    launcher_image: &str,
) -> Result<Vec<Step>, Error> {
    let hash = pod::spec_hash(&dep.spec);
    let find = |name: &str| {
        pods.iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
    };
    let mut out = Vec::new();
    for a in actions {
        match a {
            Action::CreateGated { pod, replica } => {
                let gpus = gpus_for_new.get(pod).copied().unwrap_or(1);
                out.push(Step::Create {
                    pod: build(pod, gated_pod(dep, *replica, &hash, gpus, launcher_image))?,
                });
            }
            Action::Release {
                pod,
                placement,
                status,
            } => {
                let Some(current) = find(pod) else { continue };
                let tp = placement.shape.tensor_parallel_size;
                match gpu_count(current) {
                    Some(n) if n != tp => out.push(Step::Resize {
                        name: pod.clone(),
                        uid: current.metadata.uid.clone(),
                        from: n,
                        to: tp,
                    }),
                    _ => out.push(Step::Release {
                        pod: build(pod, released_pod(current, placement, status))?,
                    }),
                }
            }
            Action::Delete { pod, reason } => out.push(Step::Delete {
                name: pod.clone(),
                uid: find(pod).and_then(|p| p.metadata.uid.clone()),
                reason: reason.clone(),
            }),
        }
    }
    Ok(out)
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

pub async fn run_steps(ctx: &Context, dep: &VllmDeployment, steps: Vec<Step>) -> Result<(), Error> {
    let namespace = dep.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let apply = PatchParams::apply(FIELD_MANAGER).force();
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
            Step::Release { pod } => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let params = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PostParams::default()
                };
                if let Err(source) = api.replace(&name, &params, &pod).await {
                    // Not released: its reservation must not count against its next plan.
                    forget_reservation(ctx, &namespace, &name);
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
                let note = format!(
                    "{name}: created for {from} GPU(s), placed with tensor parallel size {to}; re-creating it (a pod's GPU count cannot change)"
                );
                publish(
                    ctx,
                    dep,
                    &Event {
                        warning: false,
                        reason: "Resized".into(),
                        message: note,
                    },
                )
                .await;
            }
        }
    }
    Ok(())
}

fn forget_reservation(ctx: &Context, namespace: &str, name: &str) {
    if let Ok(mut ledger) = ctx.ledger.lock() {
        ledger.release(&PodRef {
            namespace: namespace.into(),
            name: name.into(),
        });
    }
}

pub async fn apply_service(ctx: &Context, dep: &VllmDeployment) -> Result<(), Error> {
    let svc: Service = service(dep).map_err(|source| Error::Build {
        what: "service".into(),
        source,
    })?;
    let name = svc.metadata.name.clone().unwrap_or_default();
    let api: Api<Service> = Api::namespaced(
        ctx.client.clone(),
        dep.metadata.namespace.as_deref().unwrap_or_default(),
    );
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&svc),
    )
    .await
    .map_err(|source| Error::ApplyService { name, source })?;
    Ok(())
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

async fn publish(ctx: &Context, dep: &VllmDeployment, e: &Event) {
    publish_to(ctx, &dep.object_ref(&()), e).await;
}

async fn publish_to(ctx: &Context, reference: &ObjectReference, e: &Event) {
    let event = KubeEvent {
        type_: if e.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: e.reason.clone(),
        // events.k8s.io caps the note at 1 kB.
        note: Some(e.message.chars().take(1000).collect()),
        action: e.reason.clone(),
        secondary: None,
    };
    // An event is a courtesy: failing to write one must not fail the reconcile.
    if let Err(err) = ctx.recorder.publish(&event, reference).await {
        warn!(reason = %e.reason, error = %err, "could not publish event");
    }
}

pub async fn publish_events(ctx: &Context, dep: &VllmDeployment, events: &[Event]) {
    for e in events {
        publish(ctx, dep, e).await;
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
    };
    publish_to(ctx, &reference, &e).await;
}
