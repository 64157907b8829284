//! `vllm-operator simulate`: the controller's decision loop on an in-memory cluster.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::plan::{fleet_time, offline_architecture, read_deployments, read_fleet};
use super::{EXIT_BAD_INPUT, EXIT_INFEASIBLE, Output};
use crate::plan::GpuAllocation;
use crate::sim::{SimConfig, SimDeployment, SimReport, run, step_time};
use crate::validate::{limits, read_actual, read_external};

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Fleet file, as `kubectl get gpunodes -o yaml` prints it (Node and MemoryProfile objects
    /// may be added).
    #[arg(long)]
    pub fleet: PathBuf,
    /// VllmDeployment YAML files (one or more documents each), in creation order.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Memory taken or freed outside Kubernetes: a YAML list of {step, node, gpu, bytes}
    /// (bytes > 0 taken, < 0 freed), or {step, node, kind: stale|delete-node}.
    #[arg(long)]
    pub external: Option<PathBuf>,
    /// What models really take: a YAML list of {model, extraBytes}, the non-KV bytes per GPU
    /// the simulated vLLM of that model needs beyond the estimate (negative: fewer).
    #[arg(long)]
    pub actual: Option<PathBuf>,
    #[arg(long = "max-steps", default_value_t = 60)]
    pub max_steps: u32,
    #[arg(long = "stale-after-seconds", default_value_t = 120)]
    pub stale_after_seconds: u64,
    /// How replicas get their GPUs, as the controller's `--gpu-allocation` (see `plan`): a
    /// replica on exact GPUs runs on exactly those; otherwise the simulated kubelet picks.
    #[arg(long = "gpu-allocation", value_enum, default_value_t = GpuAllocation::Auto)]
    pub gpu_allocation: GpuAllocation,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

pub fn run_command(args: &SimulateArgs) -> ExitCode {
    let bad = |msg: String| {
        eprintln!("vllm-operator simulate: {msg}");
        ExitCode::from(EXIT_BAD_INPUT)
    };
    if args.max_steps > limits::MAX_SIM_STEPS {
        return bad(format!(
            "--max-steps {} is more than {}",
            args.max_steps,
            limits::MAX_SIM_STEPS
        ));
    }
    let fleet_file = match read_fleet(&args.fleet) {
        Ok(f) => f,
        Err(e) => return bad(e),
    };
    let crate::validate::FleetFile {
        gpunodes,
        nodes,
        profiles,
        slices,
    } = fleet_file;
    let deployments = match read_deployments(&args.files) {
        Ok(d) => d,
        Err(e) => return bad(e),
    };
    let replicas: u64 = deployments
        .iter()
        .map(|d| d.spec.replicas.max(0) as u64)
        .sum();
    if replicas > limits::MAX_SIM_REPLICAS {
        return bad(format!(
            "the deployments ask for {replicas} replicas in all; simulate runs at most {}",
            limits::MAX_SIM_REPLICAS
        ));
    }
    let external = match &args.external {
        Some(p) => match read_external(p, args.max_steps) {
            Ok(e) => e,
            Err(e) => return bad(e),
        },
        None => Vec::new(),
    };
    let actual = match &args.actual {
        Some(p) => {
            let models: Vec<&str> = deployments
                .iter()
                .map(|d| d.spec.model.name.as_str())
                .collect();
            match read_actual(p, &models) {
                Ok(a) => a.into_iter().map(|a| (a.model, a.extra_bytes)).collect(),
                Err(e) => return bad(e),
            }
        }
        None => Default::default(),
    };
    let start = fleet_time(&gpunodes).unwrap_or_else(Timestamp::now);
    let cfg = SimConfig {
        actual,
        max_steps: args.max_steps,
        stale_after: Duration::from_secs(args.stale_after_seconds),
        nodes,
        profiles,
        slices,
        gpu_allocation: args.gpu_allocation,
        ..SimConfig::default()
    };
    if step_time(start, cfg.step_seconds, cfg.max_steps).is_none() {
        return bad(format!(
            "the fleet's time {start} plus {} steps of {} s passes the end of the calendar",
            cfg.max_steps, cfg.step_seconds
        ));
    }
    let sims = deployments
        .into_iter()
        .map(|object| SimDeployment {
            arch: offline_architecture(&object),
            object,
        })
        .collect();
    let report = run(gpunodes, sims, &external, &cfg, start);
    match args.output {
        Output::Json => super::emit(&format!("{}\n", report_json(&report))),
        Output::Table => super::emit(&table(&report)),
    }
    let all_ready = report
        .deployments
        .iter()
        .all(|(d, s)| s.ready_replicas >= d.spec.replicas.max(0));
    if all_ready && report.startup_failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INFEASIBLE)
    }
}

pub fn report_json(r: &SimReport) -> serde_json::Value {
    json!({
        "steps": r.steps,
        "settled": r.settled,
        "deployments": r.deployments.iter().map(|(d, s)| json!({
            "name": d.metadata.name,
            "namespace": d.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            "replicas": s.replicas,
            "ready_replicas": s.ready_replicas,
            "conditions": s.conditions.iter().map(|c| json!({
                "type": c.type_, "status": c.status, "reason": c.reason, "message": c.message,
            })).collect::<Vec<_>>(),
            "placements": s.placements,
        })).collect::<Vec<_>>(),
        "gpus": r.world.gpu_table().iter().map(|(node, index, m)| json!({
            "node": node, "index": index, "total_bytes": m.total_bytes, "free_bytes": m.free_bytes,
        })).collect::<Vec<_>>(),
        "startup_failures": r.startup_failures,
        "launcher_refusals": r.launcher_refusals,
        "events": r.events,
        "profiles": r.profiles,
    })
}

/// The GPUs a replica runs on as its status says: UUIDs (exact, or as the agent reports the
/// pod once it runs); `-` while unknown (device plugin, pod not running yet).
pub fn status_gpu_words(p: &crate::api::Placement) -> String {
    if p.gpu_uuids.is_empty() {
        "-".to_string()
    } else {
        p.gpu_uuids.join(",")
    }
}

/// The report as a person reads it.
pub fn table(r: &SimReport) -> String {
    let mut out = String::new();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let _ = writeln!(
        out,
        "settled after {} steps{}; vLLM startup failures: {}; launcher refusals: {}",
        r.steps,
        if r.settled {
            ""
        } else {
            " (NOT settled: step limit)"
        },
        r.startup_failures,
        r.launcher_refusals
    );
    let _ = writeln!(out);
    for (d, s) in &r.deployments {
        let ns = d
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let _ = writeln!(
            out,
            "{ns}/{}  {}  ready {}/{}  [{}]",
            d.metadata.name.clone().unwrap_or_default(),
            d.spec.model.name,
            s.ready_replicas,
            d.spec.replicas,
            s.state.clone().unwrap_or_default()
        );
        for p in &s.placements {
            let _ = match &p.node {
                Some(node) => writeln!(
                    out,
                    "  {:<28} {:<14} GPUs {:<12} tp {} {:<5} kv {:<5} util {:.2}  {} KV tokens",
                    p.pod,
                    node,
                    crate::cli::simulate::status_gpu_words(p),
                    p.tensor_parallel_size,
                    p.quantization.to_string(),
                    p.kv_cache_dtype.to_string(),
                    p.gpu_memory_utilization,
                    p.kv_cache_tokens
                ),
                None => writeln!(
                    out,
                    "  {:<28} {}",
                    p.pod,
                    p.reason.clone().unwrap_or_default()
                ),
            };
        }
        for c in s
            .conditions
            .iter()
            .filter(|c| c.type_ == "Admitted" && c.status == "False")
        {
            for line in c.message.split("; ") {
                let _ = writeln!(out, "  - {line}");
            }
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "GPUs after the run:");
    for (node, index, m) in r.world.gpu_table() {
        let _ = writeln!(
            out,
            "  {node:<14} GPU {index}: {:>6.2} / {:>6.2} GiB free",
            gib(m.free_bytes),
            gib(m.total_bytes)
        );
    }
    if !r.profiles.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "memory profiles learned:");
        for p in &r.profiles {
            let _ = writeln!(
                out,
                "  {}: {}",
                p.metadata.name.as_deref().unwrap_or_default(),
                crate::sim::profile_words(p)
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "events:");
    for e in &r.events {
        let _ = writeln!(
            out,
            "  [{:>2}] {:<7} {:<20} {:<24} {}",
            e.step, e.type_, e.reason, e.object, e.message
        );
    }
    out
}
