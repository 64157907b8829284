//! Estimates per second over the whole catalog x every shape the planner tries (tp 1/2/4/8 x
//! quantization none/fp8 x KV cache auto/fp8), architectures parsed once: the planner's inner
//! loop. Criterion reports time per catalog pass; per estimate is that over the element count.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vllm_operator::api::{KvCacheDtype, Quantization};
use vllm_operator::model::catalog::entries;
use vllm_operator::model::{Architecture, GpuFacts, Shape, VllmFamily, estimate};

fn shapes() -> Vec<Shape> {
    let mut out = Vec::new();
    for tp in [1, 2, 4, 8] {
        for quantization in [Quantization::None, Quantization::Fp8] {
            for kv_cache_dtype in [KvCacheDtype::Auto, KvCacheDtype::Fp8] {
                out.push(Shape {
                    tensor_parallel_size: tp,
                    quantization,
                    kv_cache_dtype,
                    max_model_len: 8192,
                    max_num_seqs: None,
                    max_num_batched_tokens: None,
                    enforce_eager: false,
                    block_size: None,
                    v0_engine: false,
                    family: VllmFamily::V0_11,
                    estimate_cuda_graphs: None,
                });
            }
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let archs: Vec<Architecture> = entries()
        .expect("catalog parses")
        .iter()
        .map(|e| e.architecture().expect("catalog entry parses"))
        .collect();
    let shapes = shapes();
    let h100 = GpuFacts {
        total_bytes: Some(85_520_809_984),
        compute_capability: Some((9, 0)),
        product: Some("NVIDIA H100 80GB HBM3".into()),
    };
    let n = (archs.len() * shapes.len()) as u64;
    let mut group = c.benchmark_group("estimate");
    group.throughput(Throughput::Elements(n));
    group.bench_function(format!("catalog_x_shapes/{n}"), |b| {
        b.iter(|| {
            let mut valid = 0u32;
            for a in &archs {
                for s in &shapes {
                    valid += black_box(estimate(black_box(a), black_box(s), &h100)).is_ok() as u32;
                }
            }
            valid
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
