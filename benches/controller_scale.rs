//! Controller memory and reconcile latency at scale (a bench binary, `harness = false`):
//! 5,000 GpuNodes of 8 GPUs, 1,000 VllmDeployments and 5,000 pods held in memory as the
//! controller's reflector stores hold them, then one reconcile decision per deployment.
//!
//! `cargo bench --bench controller_scale` prints RSS after each step and the latency figures.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use vllm_operator::api::{
    GpuInfo, GpuMemory, GpuNode, GpuNodeSpec, GpuNodeStatus, GpuProcess, ModelSpec, PodRef,
    VllmDeployment, VllmDeploymentSpec,
};
use vllm_operator::controller::decide::{DeploymentView, PodPhase, PodView, reconcile};
use vllm_operator::controller::failures::FailureBook;
use vllm_operator::model::{VllmFamily, catalog};
use vllm_operator::plan::{Fleet, Ledger};

const NODES: usize = 5_000;
const GPUS: u32 = 8;
const DEPLOYMENTS: usize = 1_000;
const REPLICAS: i32 = 5;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn gpunode(i: usize, now: &str) -> GpuNode {
    let (product, cc, total, reserved) = match i % 3 {
        0 => (
            "NVIDIA H100 80GB HBM3",
            "9.0",
            85_520_809_984u64,
            493_879_296u64,
        ),
        1 => ("NVIDIA A100-SXM4-80GB", "8.0", 85_899_345_920, 515_899_392),
        _ => ("NVIDIA L4", "8.9", 24_152_899_584, 317_194_240),
    };
    let name = format!("gpu-node-{i:05}");
    let gpus = (0..GPUS)
        .map(|g| {
            let busy = (i + g as usize).is_multiple_of(4);
            let used = if busy { total / 2 } else { 1 << 30 };
            GpuInfo {
                index: g,
                uuid: format!("GPU-{i:08x}-{g:04x}-4000-8000-000000000000"),
                product: product.into(),
                compute_capability: cc.into(),
                memory: GpuMemory {
                    total_bytes: total,
                    free_bytes: total - used,
                    used_bytes: used,
                    reserved_bytes: reserved,
                },
                mig_mode: Some("Disabled".into()),
                parent_uuid: None,
                allocated_to: busy.then(|| PodRef {
                    namespace: "tenant".into(),
                    name: format!("busy-{i}-{g}"),
                }),
                processes: if busy {
                    vec![GpuProcess {
                        pid: 1000 + g,
                        used_bytes: used,
                        pod: Some(PodRef {
                            namespace: "tenant".into(),
                            name: format!("busy-{i}-{g}"),
                        }),
                    }]
                } else {
                    vec![]
                },
            }
        })
        .collect();
    let mut o = GpuNode::new(&name, GpuNodeSpec {});
    o.status = Some(GpuNodeStatus {
        node_name: name,
        observed_at: now.into(),
        driver_version: Some("570.133.20".into()),
        gpus,
        gpu_count: GPUS,
        free_summary: Some("480.0/640.0 GiB free, max 79.1".into()),
        ..Default::default()
    });
    o
}

fn deployment(i: usize, models: &[&str]) -> VllmDeployment {
    let spec = VllmDeploymentSpec {
        model: ModelSpec {
            name: models[i % models.len()].to_string(),
            ..Default::default()
        },
        image: "vllm/vllm-openai:v0.11.0".into(),
        replicas: REPLICAS,
        max_model_len: Some(8192),
        min_concurrency: 2,
        tensor_parallel: Default::default(),
        quantization: Default::default(),
        kv_cache_dtype: Default::default(),
        memory: Default::default(),
        gpu: Default::default(),
        args: vec!["--enable-prefix-caching".into()],
        env: vec![],
        resources: None,
        node_selector: BTreeMap::new(),
        tolerations: vec![],
        image_pull_secrets: vec![],
        pod_security_context: None,
        security_context: None,
        model_cache: None,
        volumes: vec![],
        volume_mounts: vec![],
        port: 8000,
    };
    let mut d = VllmDeployment::new(&format!("model-{i:04}"), spec);
    d.metadata.namespace = Some("serving".into());
    d.metadata.generation = Some(1);
    d
}

/// A pod shaped like the ones the controller creates (command, env, labels, annotations).
fn pod(dep: &str, replica: i32) -> Pod {
    let name = format!("{dep}-{replica}-a1b2c3d4");
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "vllm".to_string()),
        ("app.kubernetes.io/instance".to_string(), dep.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "vllm-operator".to_string(),
        ),
        ("vllm-operator.io/replica".to_string(), replica.to_string()),
        (
            "vllm-operator.io/spec-hash".to_string(),
            "a1b2c3d4".to_string(),
        ),
    ]);
    let placement = format!(
        r#"{{"pod":"{name}","node":"gpu-node-00042","gpus":[1,2,3,5,6,7],"tensorParallelSize":1,"quantization":"none","kvCacheDtype":"auto","gpuMemoryUtilization":0.93,"maxModelLen":8192,"kvCacheTokens":491056,"reason":"tp 1, no quantization, kv cache auto on gpu-node-00042 (GPUs [1, 2, 3, 5, 6, 7]): utilization 0.93 leaves 59.94 GiB of KV cache per GPU (491056 tokens) after 14.96 GiB of weights"}}"#
    );
    let command: Vec<String> = [
        "/vllm-operator/bin/vllm-node-agent",
        "launch",
        "--",
        "vllm",
        "serve",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--tensor-parallel-size",
        "1",
        "--kv-cache-dtype",
        "auto",
        "--max-model-len",
        "8192",
        "--gpu-memory-utilization",
        "0.93",
        "--enable-prefix-caching",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some("serving".into()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([("vllm-operator.io/placement".to_string(), placement)])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "vllm".into(),
                image: Some("vllm/vllm-openai:v0.11.0".into()),
                command: Some(command),
                env: Some(vec![EnvVar {
                    name: "VLLM_OPERATOR_PLAN".into(),
                    value: Some(r#"{"required_bytes":17179869184,"min_kv_bytes":2147483648,"startup_overhead_bytes":536870912,"headroom_bytes":268435456,"max_utilization":0.95,"strategy":"MaximizeCache"}"#.into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

fn main() {
    let models = [
        "meta-llama/Llama-3.1-8B-Instruct",
        "meta-llama/Llama-3.2-1B-Instruct",
        "Qwen/Qwen2.5-7B-Instruct",
        "mistralai/Mistral-7B-Instruct-v0.3",
    ];
    let archs: Vec<_> = models
        .iter()
        .map(|m| catalog::lookup(m).unwrap().architecture().unwrap())
        .collect();
    let now = "2026-11-26T12:00:00Z";
    let t: Timestamp = now.parse().unwrap();
    let base = rss_mib();
    println!("baseline RSS: {base:.1} MiB");

    let gpunodes: Vec<GpuNode> = (0..NODES).map(|i| gpunode(i, now)).collect();
    let after_nodes = rss_mib();
    let deployments: Vec<VllmDeployment> =
        (0..DEPLOYMENTS).map(|i| deployment(i, &models)).collect();
    let pods: Vec<Pod> = deployments
        .iter()
        .flat_map(|d| (0..REPLICAS).map(|r| pod(d.metadata.name.as_deref().unwrap(), r)))
        .collect();
    let after_objects = rss_mib();
    println!(
        "RSS with {NODES} GpuNodes x {GPUS} GPUs, {DEPLOYMENTS} VllmDeployments, {} pods: {after_objects:.1} MiB (GpuNodes {:.1} MiB, deployments+pods {:.1} MiB)",
        pods.len(),
        after_nodes - base,
        after_objects - after_nodes
    );

    let start = Instant::now();
    let fleet = Fleet::from_objects(&gpunodes, &[], t, Duration::from_secs(120));
    let fleet_build = start.elapsed();
    println!(
        "fleet snapshot from {NODES} GpuNodes: {:.2} ms; RSS {:.1} MiB",
        fleet_build.as_secs_f64() * 1e3,
        rss_mib()
    );

    // One reconcile decision per deployment, all its replicas in `phase`.
    let mut ledger = Ledger::default();
    let mut failures = FailureBook::default();
    let mut round = |phase: PodPhase| {
        let mut took = Vec::with_capacity(DEPLOYMENTS);
        let mut placed = 0;
        for (i, d) in deployments.iter().enumerate() {
            let name = d.metadata.name.clone().unwrap();
            let views: Vec<PodView> = (0..REPLICAS as u32)
                .map(|r| PodView {
                    name: format!("{name}-{r}-a1b2c3d4"),
                    replica: r,
                    spec_hash: "a1b2c3d4".into(),
                    phase: phase.clone(),
                    placement: None,
                    observed: Default::default(),
                })
                .collect();
            let view = DeploymentView {
                name,
                namespace: "serving".into(),
                generation: Some(1),
                spec: &d.spec,
                arch: Ok(&archs[i % archs.len()]),
                family: VllmFamily::V0_11,
                spec_hash: "a1b2c3d4".into(),
                queued_behind: vec![],
                gpu_allocation: Default::default(),
            };
            let s = Instant::now();
            let out = reconcile(&view, &views, &fleet, &mut ledger, &mut failures, t);
            took.push(s.elapsed());
            placed += out
                .status
                .placements
                .iter()
                .filter(|p| p.node.is_some())
                .count();
        }
        (took, placed)
    };
    // Steady state: every replica already runs; a reconcile checks and writes status.
    let (mut steady, _) = round(PodPhase::Ready);
    // Placement: every replica of every deployment needs a node (gated pods).
    let (mut placing, placed) = round(PodPhase::Gated);
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        let mean = v.iter().sum::<Duration>() / v.len() as u32;
        (mean, v[v.len() / 2], v[v.len() * 99 / 100])
    };
    let (m, p50, p99) = stats(&mut steady);
    println!(
        "reconcile decision, steady state (5 ready replicas): mean {m:?}, p50 {p50:?}, p99 {p99:?}"
    );
    let (m, p50, p99) = stats(&mut placing);
    println!(
        "reconcile decision, placing 5 replicas on {NODES}x{GPUS} GPUs: mean {m:?}, p50 {p50:?}, p99 {p99:?} ({placed} replicas placed, ledger {} reservations)",
        ledger.len()
    );
    println!("final RSS: {:.1} MiB", rss_mib());
    // Keep the objects alive until the end of the measurement.
    assert_eq!(
        gpunodes.len() + pods.len(),
        NODES + DEPLOYMENTS * REPLICAS as usize
    );
}
