//! `vllm-operator plan`: place VllmDeployments on a fleet file, in file order, against one
//! shared reservation ledger.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::{EXIT_BAD_INPUT, EXIT_INFEASIBLE, Output};
use crate::api::{GpuNode, PodRef, VllmDeployment};
use crate::controller::decide::pod_name;
use crate::controller::pod::spec_hash;
use crate::model::resolve::resolve_local;
use crate::model::{Architecture, VllmFamily, checkpoint};
use crate::plan::{
    Decision, Fleet, GpuAllocation, Ledger, Placement, Request, plan_replica, reservation_for,
};

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// VllmDeployment YAML (one or more documents, or a List).
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Fleet file, as `kubectl get gpunodes -o yaml` prints it (Node and MemoryProfile
    /// objects may be added).
    #[arg(long)]
    pub fleet: PathBuf,
    /// Reports older than this many seconds make a node ineligible.
    #[arg(long = "stale-after-seconds", default_value_t = 120)]
    pub stale_after_seconds: u64,
    /// The time to judge staleness at (RFC 3339); default: the newest report in the fleet file.
    #[arg(long)]
    pub now: Option<String>,
    /// How replicas get their GPUs, as the controller's `--gpu-allocation`: `auto` pins exact
    /// GPUs (DRA) on nodes whose GPUs the fleet file's ResourceSlices publish, else counts them
    /// (device plugin); without slices in the file `auto` is `device-plugin`.
    #[arg(long = "gpu-allocation", value_enum, default_value_t = GpuAllocation::Auto)]
    pub gpu_allocation: GpuAllocation,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// GpuNodes, Nodes, MemoryProfiles and ResourceSlices from a fleet file, validated (see
/// [`crate::validate::read_fleet`]).
pub fn read_fleet(path: &Path) -> Result<crate::validate::FleetFile, String> {
    crate::validate::read_fleet(path)
}

/// VllmDeployments from files, validated as the controller validates them (see
/// [`crate::validate::read_deployments`]).
pub fn read_deployments(paths: &[PathBuf]) -> Result<Vec<VllmDeployment>, String> {
    crate::validate::read_deployments(paths)
}

/// The time a fleet file speaks for: its newest report.
pub fn fleet_time(gpunodes: &[GpuNode]) -> Option<Timestamp> {
    gpunodes
        .iter()
        .filter_map(|g| g.status.as_ref()?.observed_at.parse::<Timestamp>().ok())
        .max()
}

/// The vLLM release of an image tag such as `vllm/vllm-openai:v0.11.0`; unknown tags (`latest`,
/// `nightly`), digests (`@sha256:...`) and untagged images are planned as the newest release.
pub fn family_from_image(image: &str) -> VllmFamily {
    let name = image.split_once('@').map_or(image, |(n, _)| n);
    let last = name.rsplit('/').next().unwrap_or(name);
    let tag = last.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
    VllmFamily::parse(tag).unwrap_or(VllmFamily::NEWEST)
}

/// The architecture of a deployment's model, offline (inline, catalog).
pub fn offline_architecture(d: &VllmDeployment) -> Result<Architecture, String> {
    match resolve_local(&d.spec.model, None) {
        Ok(Some((arch, _))) => Ok(arch),
        Ok(None) if d.spec.model.config_map_ref.is_some() => Err(format!(
            "model {} comes from ConfigMap {}, which `plan` cannot read; give spec.model.architecture",
            d.spec.model.name,
            d.spec
                .model
                .config_map_ref
                .as_ref()
                .map(|r| r.name.as_str())
                .unwrap_or("")
        )),
        Ok(None) => Err(format!(
            "model {} is not in the built-in catalog; give spec.model.architecture (the controller would fetch config.json from the Hugging Face Hub)",
            d.spec.model.name
        )),
        Err(e) => Err(e.to_string()),
    }
}

pub fn placement_json(p: &Placement) -> serde_json::Value {
    json!({
        "node": p.node,
        "gpu_uuids": p.exact_gpus.iter().map(|g| g.uuid.as_str()).collect::<Vec<_>>(),
        "candidate_gpus": p.candidate_gpus,
        "tensor_parallel_size": p.shape.tensor_parallel_size,
        "quantization": p.shape.quantization,
        "kv_cache_dtype": p.shape.kv_cache_dtype,
        "gpu_memory_utilization": p.fit.utilization(),
        "max_model_len": p.shape.max_model_len,
        "kv_cache_tokens": p.kv_cache_tokens,
        "kv_cache_bytes_per_gpu": p.fit.kv_cache_bytes,
        "weights_bytes_per_gpu": p.estimate.weights_bytes_per_gpu,
        "args": p.command,
        "replaced_args": p.replaced_args,
        "reason": p.reason,
    })
}

/// One deployment's replicas placed in replica order; placing stops at the first refusal.
#[derive(Clone, Debug)]
pub struct DeploymentPlan {
    pub name: String,
    pub namespace: String,
    /// `spec.replicas`.
    pub want: i32,
    /// The placed replicas: replica `i` is `replicas[i]`.
    pub replicas: Vec<Placement>,
    /// Why the next replica (or the model) was refused; empty when all are placed.
    pub reasons: Vec<String>,
    /// The model cache size (`model::checkpoint::cache_bytes`), when the model was resolved.
    pub cache_bytes: Option<u64>,
}

impl DeploymentPlan {
    pub fn admitted(&self) -> bool {
        self.replicas.len() as i32 == self.want.max(0) && self.reasons.is_empty()
    }
}

/// The namespace a deployment read from a file lands in: its own, or `default` as kubectl does.
pub fn namespace_of(d: &VllmDeployment) -> String {
    d.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

/// Place every replica of `deployments`, in order, against one shared ledger, as `plan` and
/// `render` print them. Replicas are reserved under the pod names the controller gives them.
pub fn plan_deployments(
    deployments: &[VllmDeployment],
    fleet: &Fleet,
    now: Timestamp,
) -> Vec<DeploymentPlan> {
    plan_deployments_with(deployments, fleet, now, GpuAllocation::default())
}

/// As [`plan_deployments`], with GPUs allocated as `gpu_allocation` says.
pub fn plan_deployments_with(
    deployments: &[VllmDeployment],
    fleet: &Fleet,
    now: Timestamp,
    gpu_allocation: GpuAllocation,
) -> Vec<DeploymentPlan> {
    let mut ledger = Ledger::default();
    let mut results = Vec::new();
    for d in deployments {
        let name = d.metadata.name.clone().unwrap_or_default();
        let namespace = namespace_of(d);
        let hash = spec_hash(&d.spec);
        let mut replicas = Vec::new();
        let mut reasons = Vec::new();
        let mut cache_bytes = None;
        match offline_architecture(d) {
            Err(e) => reasons.push(e),
            Ok(arch) => {
                cache_bytes = Some(checkpoint::cache_bytes(checkpoint::checkpoint_bytes(&arch)));
                let family = family_from_image(&d.spec.image);
                for i in 0..d.spec.replicas.max(0) {
                    let pod = PodRef {
                        namespace: namespace.clone(),
                        name: pod_name(&name, i as u32, &hash),
                    };
                    let req = Request {
                        pod: pod.clone(),
                        arch: &arch,
                        spec: &d.spec,
                        family,
                        avoid: &[],
                        gpu_allocation,
                    };
                    match plan_replica(fleet, &ledger, &req) {
                        Decision::Placed(p) => {
                            if let Some(node) = fleet.node(&p.node) {
                                let shared = d.spec.gpu.sharing == crate::api::Sharing::Shared;
                                ledger.reserve(reservation_for(pod, &p, node, shared, now));
                            }
                            replicas.push(*p);
                        }
                        Decision::Refused(r) => {
                            reasons = r;
                            break;
                        }
                    }
                }
            }
        }
        results.push(DeploymentPlan {
            name,
            namespace,
            want: d.spec.replicas,
            replicas,
            reasons,
            cache_bytes,
        });
    }
    results
}

/// What `plan` and `render` read: the deployments, and the fleet judged at `--now`, with the
/// fleet file's MemoryProfiles and its ResourceSlices matched to its GPUs.
pub fn load(
    files: &[PathBuf],
    fleet_file: &Path,
    now: Option<&str>,
    stale_after_seconds: u64,
) -> Result<(Vec<VllmDeployment>, Fleet, Timestamp), String> {
    let file = read_fleet(fleet_file)?;
    let deployments = read_deployments(files)?;
    let now = match now {
        Some(t) => t
            .parse::<Timestamp>()
            .map_err(|e| format!("--now {t:?}: {e}"))?,
        None => fleet_time(&file.gpunodes).unwrap_or_else(Timestamp::now),
    };
    let mut fleet = Fleet::from_objects(
        &file.gpunodes,
        &file.nodes,
        now,
        Duration::from_secs(stale_after_seconds),
    )
    .with_profiles(file.profile_set());
    fleet.attach_slices(file.slices.iter());
    Ok((deployments, fleet, now))
}

pub fn run(args: &PlanArgs) -> ExitCode {
    let (deployments, fleet, now) = match load(
        &args.files,
        &args.fleet,
        args.now.as_deref(),
        args.stale_after_seconds,
    ) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("vllm-operator plan: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let plans = plan_deployments_with(&deployments, &fleet, now, args.gpu_allocation);
    let all_placed = plans.iter().all(DeploymentPlan::admitted);

    match args.output {
        Output::Json => {
            let out = json!({
                "deployments": plans.iter().map(|d| json!({
                    "name": d.name,
                    "namespace": d.namespace,
                    "admitted": d.admitted(),
                    "replicas": d.replicas.iter().map(placement_json).collect::<Vec<_>>(),
                    "reasons": d.reasons,
                })).collect::<Vec<_>>()
            });
            super::emit(&format!("{out}\n"));
        }
        Output::Table => {
            let mut out = String::new();
            for d in &plans {
                let (name, ns, want, replicas, reasons) =
                    (&d.name, &d.namespace, d.want, &d.replicas, &d.reasons);
                let verdict = if d.admitted() {
                    "admitted"
                } else {
                    "NOT admitted"
                };
                let _ = writeln!(
                    out,
                    "{ns}/{name}: {verdict} ({}/{want} replicas placed)",
                    replicas.len()
                );
                for (i, p) in replicas.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "  replica {i}: {:<14} GPUs {:<12} tp {} quant {:<5} kv {:<5} util {:.2}  KV {} tokens",
                        p.node,
                        crate::plan::gpu_words(p),
                        p.shape.tensor_parallel_size,
                        p.shape.quantization.to_string(),
                        p.shape.kv_cache_dtype.to_string(),
                        p.fit.utilization(),
                        p.kv_cache_tokens
                    );
                    let _ = writeln!(out, "    {}", p.command.join(" "));
                }
                for r in reasons {
                    let _ = writeln!(out, "  - {r}");
                }
            }
            super::emit(&out);
        }
    }
    if all_placed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INFEASIBLE)
    }
}
