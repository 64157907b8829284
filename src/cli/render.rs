//! `vllm-operator render`: every object the controller would send for VllmDeployments placed
//! on a fleet file, as one `kind: List`. Placement is `plan`'s (one shared ledger, file order);
//! the objects come from the controller's own builders (`controller::service::service`,
//! `controller::pod::{gated_pod, released_pod}`, `controller::claim::resource_claim`), so what
//! is printed is what is sent: a replica placed on exact GPUs (DRA) gets its ResourceClaim,
//! printed before its pod, in the order the controller creates them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use super::plan::{DeploymentPlan, load, namespace_of, plan_deployments_with};
use super::{EXIT_BAD_INPUT, EXIT_INFEASIBLE};
use crate::api::VllmDeployment;
use crate::controller::claim::{ClaimError, placement_uuids, resource_claim};
use crate::controller::decide::{placement_status, pod_name};
use crate::controller::pod::{BuildError, PodGpus, fnv1a, gated_pod, released_pod, spec_hash};
use crate::controller::reconcile::smallest_tensor_parallel;
use crate::controller::service::service;
use crate::plan::GpuAllocation;

/// The launcher image the chart passes by default (`agent.image`, tag = appVersion).
pub const DEFAULT_LAUNCHER_IMAGE: &str = concat!(
    "ghcr.io/vllm-operator/vllm-node-agent:",
    env!("CARGO_PKG_VERSION")
);

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// VllmDeployment YAML (one or more documents, or a List).
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Fleet file, as `kubectl get gpunodes -o yaml` prints it (Node objects may be added).
    #[arg(long)]
    pub fleet: PathBuf,
    /// Reports older than this many seconds make a node ineligible.
    #[arg(long = "stale-after-seconds", default_value_t = 120)]
    pub stale_after_seconds: u64,
    /// The time to judge staleness at (RFC 3339); default: the newest report in the fleet file.
    #[arg(long)]
    pub now: Option<String>,
    /// The vllm-node-agent image whose launcher the init container copies (the controller's
    /// `--launcher-image`).
    #[arg(long, default_value = DEFAULT_LAUNCHER_IMAGE)]
    pub launcher_image: String,
    /// How replicas get their GPUs, as the controller's `--gpu-allocation` (see `plan`): a
    /// replica on exact GPUs gets a ResourceClaim and a pod that references it.
    #[arg(long = "gpu-allocation", value_enum, default_value_t = GpuAllocation::Auto)]
    pub gpu_allocation: GpuAllocation,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Yaml)]
    pub output: Format,
}

/// A stable stand-in for the uid the API server would give `namespace/name`, shaped like a
/// UUID, so that owner references are complete and the output is reproducible.
pub fn placeholder_uid(namespace: &str, name: &str) -> String {
    let high = fnv1a(format!("{namespace}/{name}").as_bytes());
    let low = fnv1a(format!("{name}/{namespace}/uid").as_bytes());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xfff,
        (low >> 48) & 0xfff,
        low & 0xffff_ffff_ffff
    )
}

fn json_of<T: serde::Serialize>(what: &'static str, object: &T) -> Result<Value, BuildError> {
    serde_json::to_value(object).map_err(|e| BuildError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// The objects the controller sends for one deployment once `plan` is carried out: the
/// Service, each placed replica's ResourceClaim (DRA path) and Pod as released (gate removed,
/// pinned, annotated), and each replica that could not be placed as the gated Pod it stays.
pub fn deployment_objects(
    dep: &VllmDeployment,
    plan: &DeploymentPlan,
    launcher_image: &str,
) -> Result<Vec<Value>, ClaimError> {
    let mut dep = dep.clone();
    let namespace = namespace_of(&dep);
    let name = dep.metadata.name.clone().unwrap_or_default();
    if dep.metadata.uid.is_none() {
        dep.metadata.uid = Some(placeholder_uid(&namespace, &name));
    }
    dep.metadata.namespace = Some(namespace);
    let hash = spec_hash(&dep.spec);
    let mut out = vec![json_of("service", &service(&dep)?)?];
    for replica in 0..dep.spec.replicas.max(0) as u32 {
        let pod = match plan.replicas.get(replica as usize) {
            Some(p) => {
                let gpus = PodGpus::for_placement(p);
                let pod = pod_name(&name, replica, &hash);
                if gpus == PodGpus::Claim {
                    let claim = resource_claim(&dep, &pod, replica, &hash, &placement_uuids(p))?;
                    out.push(json_of("resource claim", &claim)?);
                }
                let gated =
                    gated_pod(&dep, replica, &hash, gpus, launcher_image, plan.cache_bytes)?;
                let status = placement_status(&pod, p, p.reason.clone());
                released_pod(&gated, p, &status)?
            }
            None => gated_pod(
                &dep,
                replica,
                &hash,
                PodGpus::DevicePlugin(smallest_tensor_parallel(&dep.spec)),
                launcher_image,
                plan.cache_bytes,
            )?,
        };
        out.push(json_of("pod", &pod)?);
    }
    Ok(out)
}

/// The `kind: List` of every object for `deployments` (in order) placed as `plans` say.
pub fn render_list(
    deployments: &[VllmDeployment],
    plans: &[DeploymentPlan],
    launcher_image: &str,
) -> Result<Value, String> {
    let mut items = Vec::new();
    for (dep, plan) in deployments.iter().zip(plans) {
        let objects = deployment_objects(dep, plan, launcher_image)
            .map_err(|e| format!("VllmDeployment {}/{}: {e}", plan.namespace, plan.name))?;
        items.extend(objects);
    }
    Ok(json!({"apiVersion": "v1", "kind": "List", "items": items}))
}

pub fn run(args: &RenderArgs) -> ExitCode {
    let bad = |msg: String| {
        eprintln!("vllm-operator render: {msg}");
        ExitCode::from(EXIT_BAD_INPUT)
    };
    let (deployments, fleet, now) = match load(
        &args.files,
        &args.fleet,
        args.now.as_deref(),
        args.stale_after_seconds,
    ) {
        Ok(loaded) => loaded,
        Err(e) => return bad(e),
    };
    let plans = plan_deployments_with(&deployments, &fleet, now, args.gpu_allocation);
    let list = match render_list(&deployments, &plans, &args.launcher_image) {
        Ok(list) => list,
        Err(e) => return bad(e),
    };
    let text = match args.output {
        Format::Json => serde_json::to_string_pretty(&list)
            .map(|t| t + "\n")
            .map_err(|e| e.to_string()),
        Format::Yaml => serde_norway::to_string(&list).map_err(|e| e.to_string()),
    };
    match text {
        Ok(text) => super::emit(&text),
        Err(e) => return bad(format!("cannot encode the objects: {e}")),
    }
    let mut all_placed = true;
    for p in plans.iter().filter(|p| !p.admitted()) {
        all_placed = false;
        eprintln!(
            "vllm-operator render: {}/{}: {} of {} replicas placed; the others stay gated: {}",
            p.namespace,
            p.name,
            p.replicas.len(),
            p.want,
            p.reasons.join("; ")
        );
    }
    if all_placed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INFEASIBLE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_uids_are_stable_distinct_and_uuid_shaped() {
        let a = placeholder_uid("default", "llama-8b");
        assert_eq!(a, placeholder_uid("default", "llama-8b"));
        assert_ne!(a, placeholder_uid("other", "llama-8b"));
        assert_ne!(a, placeholder_uid("default", "llama-8c"));
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, vec![8, 4, 4, 4, 12], "{a}");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }
}
