//! One replica decision on a fleet of 5,000 nodes x 8 GPUs (H100 / A100 / L4, some partly
//! used), 1,000 deployments planned in sequence against one ledger, and one decision at
//! 1,250 / 2,500 / 5,000 nodes to show the cost grows linearly with the GPUs. The `-dra`
//! variants run the same fleet with every GPU published by the NVIDIA DRA driver, so each
//! replica is placed by exact GPU.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use k8s_openapi::jiff::Timestamp;
use vllm_operator::api::{PodRef, Sharing, VllmDeploymentSpec};
use vllm_operator::model::VllmFamily;
use vllm_operator::model::catalog::lookup;
use vllm_operator::plan::fleet::{DraDevice, Fleet, FleetNode, Gpu, NVIDIA_DRA_DRIVER};
use vllm_operator::plan::{Decision, Ledger, Request, plan_replica, reservation_for};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// (product, total, reserved, compute capability)
const TYPES: [(&str, u64, u64, (u32, u32)); 3] = [
    ("NVIDIA H100 80GB HBM3", 85_520_809_984, 493_879_296, (9, 0)),
    ("NVIDIA A100-SXM4-80GB", 85_899_345_920, 511_705_088, (8, 0)),
    ("NVIDIA L4", 24_152_899_584, 451_936_256, (8, 9)),
];

fn pod(name: String) -> PodRef {
    PodRef {
        namespace: "bench".into(),
        name,
    }
}

/// Every fourth node has GPUs 0-1 held by a running pod; every fifth has a process outside
/// Kubernetes using part of GPU 3.
fn fleet(nodes: usize) -> Fleet {
    let nodes = (0..nodes)
        .map(|n| {
            let (product, total, reserved, cc) = TYPES[n % TYPES.len()];
            let name = format!("node-{n:05}");
            let gpus = (0..8u32)
                .map(|i| {
                    let held = n % 4 == 0 && i < 2;
                    let used = if held {
                        total / 2
                    } else if n % 5 == 0 && i == 3 {
                        (total - reserved) / 3
                    } else {
                        0
                    };
                    let holder = held.then(|| pod(format!("{name}-tenant")));
                    Gpu {
                        index: i,
                        uuid: format!("GPU-{n:05}-{i}"),
                        product: product.into(),
                        compute_capability: Some(cc),
                        total_bytes: total,
                        free_bytes: total - reserved - used,
                        reserved_bytes: reserved,
                        foreign_bytes: if holder.is_none() { used } else { 0 },
                        processes: if used > 0 {
                            vec![(1000 + i, used, holder.clone())]
                        } else {
                            Vec::new()
                        },
                        allocated_to: holder,
                        mig_device: false,
                        dra: None,
                    }
                })
                .collect();
            FleetNode {
                name,
                sharing: Sharing::Exclusive,
                gpus,
                labels: Default::default(),
                taints: Vec::new(),
                allocatable_gpus: Some(8),
                allocatable_ephemeral_bytes: None,
                ineligible: None,
                observed_at: None,
            }
        })
        .collect();
    Fleet {
        nodes,
        ..Default::default()
    }
}

/// The same fleet with every GPU published as a `gpu.nvidia.com` device.
fn fleet_dra(nodes: usize) -> Fleet {
    let mut f = fleet(nodes);
    for node in &mut f.nodes {
        for g in &mut node.gpus {
            g.dra = Some(DraDevice {
                driver: NVIDIA_DRA_DRIVER.into(),
                pool: node.name.clone(),
                device: format!("gpu-{}", g.index),
            });
        }
    }
    f
}

fn spec() -> VllmDeploymentSpec {
    serde_norway::from_str(&format!(
        "model: {{name: {MODEL}}}\nmaxModelLen: 8192\ntensorParallel: {{sizes: [1, 2, 4, 8]}}"
    ))
    .expect("bench spec parses")
}

fn bench(c: &mut Criterion) {
    let arch = lookup(MODEL)
        .expect("model in catalog")
        .architecture()
        .expect("architecture parses");
    let spec = spec();
    let now: Timestamp = "2026-11-26T12:00:00Z".parse().expect("timestamp");
    let req = |i: usize| Request {
        pod: pod(format!("llama-{i}")),
        arch: &arch,
        spec: &spec,
        family: VllmFamily::V0_11,
        avoid: &[],
        gpu_allocation: Default::default(),
    };

    let big = fleet(5_000);
    let mut group = c.benchmark_group("planner");
    group.bench_function("one_decision/5000x8", |b| {
        let ledger = Ledger::default();
        let r = req(0);
        b.iter(|| black_box(plan_replica(black_box(&big), &ledger, &r)))
    });

    let big_dra = fleet_dra(5_000);
    group.bench_function("one_decision/5000x8-dra", |b| {
        let ledger = Ledger::default();
        let r = req(0);
        b.iter(|| {
            let d = plan_replica(black_box(&big_dra), &ledger, &r);
            debug_assert!(matches!(&d, Decision::Placed(p) if !p.exact_gpus.is_empty()));
            black_box(d)
        })
    });

    // 1,000 single-replica deployments in sequence, each seeing the ledger the previous left.
    // Flat sampling: ten runs of 1,000 decisions, not 1 + 2 + ... + 10 of them.
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(1_000));
    for (name, fleet) in [("", &big), ("-dra", &big_dra)] {
        group.bench_function(format!("1000_deployments_in_sequence/5000x8{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut ledger = Ledger::default();
                    let start = Instant::now();
                    for i in 0..1_000 {
                        let r = req(i);
                        match plan_replica(fleet, &ledger, &r) {
                            Decision::Placed(p) => {
                                let node = fleet.node(&p.node).expect("placed on a fleet node");
                                ledger.reserve(reservation_for(
                                    r.pod.clone(),
                                    &p,
                                    node,
                                    false,
                                    now,
                                ));
                            }
                            Decision::Refused(why) => panic!("refused: {why:?}"),
                        }
                    }
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("planner_scaling");
    for nodes in [1_250, 2_500, 5_000] {
        let f = fleet(nodes);
        let ledger = Ledger::default();
        let r = req(0);
        group.throughput(Throughput::Elements((nodes * 8) as u64));
        group.bench_with_input(
            BenchmarkId::new("one_decision_gpus", nodes * 8),
            &f,
            |b, f| b.iter(|| black_box(plan_replica(black_box(f), &ledger, &r))),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20);
    targets = bench
}
criterion_main!(benches);
