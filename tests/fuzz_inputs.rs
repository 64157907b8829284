//! Mutation fuzzing over serialized documents (issue 12): VllmDeployments, fleets, config.json
//! files and external events, seeded from examples/, the test fixtures and the hostile corpus,
//! are mutated (hostile numbers and strings, deleted and unknown keys, `.nan`, repeated list
//! items) and fed through the shared validation, the planner, the estimator and the simulator.
//!
//! What it checks: no panic anywhere (tests build with overflow checks, so a wrapping sum is a
//! panic too), and that whatever is placed is physically possible. Cases per property:
//! `HOSTILE_CASES` (default 300; the numbers in the closing note used more).

use k8s_openapi::api::resource::v1::ResourceSlice;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Value, json};
use vllm_operator::api::{GpuNode, PodRef, Sharing};
use vllm_operator::cli::plan::{family_from_image, fleet_time, offline_architecture};
use vllm_operator::model::{Architecture, GpuFacts, Shape, VllmFamily, estimate};
use vllm_operator::plan::{Decision, Fleet, Ledger, Request, plan_replica, reservation_for};
use vllm_operator::sim::{SimConfig, SimDeployment};
use vllm_operator::validate;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cases() -> u32 {
    std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn yaml_values(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .filter_map(|de| serde::Deserialize::deserialize(de).ok())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    out.sort();
    out
}

/// Seed documents by kind.
struct Seeds {
    deployments: Vec<Value>,
    fleets: Vec<Value>,
    configs: Vec<Value>,
    events: Vec<Value>,
}

fn seeds() -> Seeds {
    let mut deployments = Vec::new();
    let mut fleets = Vec::new();
    let mut yaml = files("examples", ".yaml");
    yaml.extend(files("tests/fixtures/sim", ".yaml"));
    yaml.extend(files("tests/fixtures/hostile", ".yaml"));
    yaml.extend(files("tests/fixtures/planner", ".yaml"));
    // A fleet with the NVIDIA DRA driver's ResourceSlice: mutated slices are refused or planned
    // on exact GPUs.
    yaml.extend(files("examples/dra-exact-gpus", ".yaml"));
    let mut events = Vec::new();
    for f in &yaml {
        for v in yaml_values(f) {
            match v.get("kind").and_then(Value::as_str) {
                Some("VllmDeployment") => deployments.push(v),
                Some("GpuNode") | Some("List") => fleets.push(v),
                _ if v.is_array() => events.push(v),
                _ => {}
            }
        }
    }
    let catalog: Value = serde_json::from_str(include_str!("../src/model/catalog.json")).unwrap();
    let mut configs: Vec<Value> = catalog
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["config"].clone())
        .collect();
    for f in files("tests/fixtures/hub", ".json")
        .into_iter()
        .chain(files("tests/fixtures/hostile", ".json"))
    {
        configs.push(serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap());
    }
    assert!(deployments.len() >= 10 && fleets.len() >= 8 && configs.len() >= 10);
    assert!(!events.is_empty());
    Seeds {
        deployments,
        fleets,
        configs,
        events,
    }
}

/// Values that broke something once, or sit on a boundary.
fn hostile_value(i: usize) -> Value {
    let all = [
        json!(0),
        json!(-1),
        json!(1),
        json!(2147483647),
        json!(4294967295u64),
        json!(4294967296u64),
        json!(140737488355328u64),
        json!(9007199254740993u64),
        json!(9223372036854775807u64),
        json!(9223372036854775808u64),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e300),
        json!(0.5),
        json!(-0.0),
        json!(""),
        json!("x".repeat(300)),
        json!("abc"),
        json!("-1Gi"),
        json!("1Ei"),
        json!("8192"),
        json!(true),
        Value::Null,
        json!([]),
        json!({}),
        json!("9999-12-30T23:59:59Z"),
        json!("-009999-01-01T00:00:00Z"),
        json!("__NAN__"),
        json!("__INF__"),
    ];
    all[i % all.len()].clone()
}

/// Every path into a value, depth-first.
fn paths(v: &Value, at: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                at.push(PathStep::Key(k.clone()));
                paths(c, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                at.push(PathStep::Index(i));
                paths(c, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn get_mut<'a>(v: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    let mut cur = v;
    for step in path {
        cur = match step {
            PathStep::Key(k) => cur.get_mut(k.as_str())?,
            PathStep::Index(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// One mutation: `(where, what, value)`, each an index taken modulo what exists.
type Mutation = (usize, u8, usize);

fn mutate(mut v: Value, mutations: &[Mutation]) -> Value {
    for &(at, op, val) in mutations {
        let mut all = Vec::new();
        paths(&v, &mut Vec::new(), &mut all);
        let path = all[at % all.len()].clone();
        match op % 5 {
            // Replace with a hostile value.
            0 | 1 => {
                if let Some(t) = get_mut(&mut v, &path) {
                    *t = hostile_value(val);
                }
            }
            // Delete the key or item.
            2 => {
                if let Some((last, parent)) = path.split_last()
                    && let Some(p) = get_mut(&mut v, parent)
                {
                    match (last, p) {
                        (PathStep::Key(k), Value::Object(m)) => {
                            m.remove(k);
                        }
                        (PathStep::Index(i), Value::Array(a)) if *i < a.len() => {
                            a.remove(*i);
                        }
                        _ => {}
                    }
                }
            }
            // Add an unknown (or misspelt) key.
            3 => {
                if let Some(Value::Object(m)) = get_mut(&mut v, &path) {
                    let key = ["maxModelLength", "replica", "bogus", "totalbytes"][val % 4];
                    m.insert(key.to_string(), hostile_value(val));
                }
            }
            // Repeat a list item (duplicate GPUs, nodes, events).
            _ => {
                if let Some(Value::Array(a)) = get_mut(&mut v, &path)
                    && !a.is_empty()
                {
                    let item = a[val % a.len()].clone();
                    a.push(item);
                }
            }
        }
    }
    v
}

fn to_yaml(v: &Value) -> String {
    serde_norway::to_string(v)
        .unwrap()
        .replace("__NAN__", ".nan")
        .replace("__INF__", "-.inf")
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec((any::<usize>(), any::<u8>(), any::<usize>()), 1..5)
}

/// Plan every replica (at most 4 per deployment) and check that each placement is possible.
fn plan_all(
    deployments: &[vllm_operator::api::VllmDeployment],
    gpunodes: &[GpuNode],
    slices: &[ResourceSlice],
) {
    let now = fleet_time(gpunodes).unwrap_or_else(|| "2026-11-26T12:00:00Z".parse().unwrap());
    let mut fleet = Fleet::from_objects(gpunodes, &[], now, Duration::from_secs(120));
    fleet.attach_slices(slices.iter());
    let mut ledger = Ledger::default();
    for d in deployments {
        let Ok(arch) = offline_architecture(d) else {
            continue;
        };
        for i in 0..d.spec.replicas.clamp(0, 4) {
            let pod = PodRef {
                namespace: "default".into(),
                name: format!("r-{i}"),
            };
            let req = Request {
                pod: pod.clone(),
                arch: &arch,
                spec: &d.spec,
                family: family_from_image(&d.spec.image),
                avoid: &[],
                gpu_allocation: Default::default(),
            };
            match plan_replica(&fleet, &ledger, &req) {
                Decision::Placed(p) => {
                    let node = fleet.node(&p.node).expect("placed on a fleet node");
                    let u = p.fit.utilization();
                    assert!(u > 0.0 && u <= 1.0, "utilization {u}");
                    // Exact GPUs: tp of them, distinct, each a published GPU of that node.
                    if !p.exact_gpus.is_empty() {
                        assert_eq!(p.exact_gpus.len() as u32, p.shape.tensor_parallel_size);
                        for e in &p.exact_gpus {
                            let g = node.gpus.iter().find(|g| g.uuid == e.uuid);
                            assert!(
                                g.is_some_and(|g| g.dra.as_ref() == Some(&e.device)),
                                "{e:?}"
                            );
                        }
                    }
                    for g in node
                        .gpus
                        .iter()
                        .filter(|g| p.candidate_gpus.contains(&g.index))
                    {
                        assert!(
                            p.fit.kv_cache_bytes <= g.total_bytes,
                            "KV cache {} on a GPU of {}",
                            p.fit.kv_cache_bytes,
                            g.total_bytes
                        );
                        assert!(p.estimate.weights_bytes_per_gpu <= g.total_bytes);
                    }
                    let shared = d.spec.gpu.sharing == Sharing::Shared;
                    ledger.reserve(reservation_for(pod, &p, node, shared, now));
                }
                Decision::Refused(reasons) => {
                    assert!(!reasons.is_empty());
                    break;
                }
            }
        }
    }
}

fn simulate(
    deployments: Vec<vllm_operator::api::VllmDeployment>,
    gpunodes: Vec<GpuNode>,
    external: &[vllm_operator::sim::ExternalEvent],
    max_steps: u32,
    slices: Vec<ResourceSlice>,
) {
    let replicas: i64 = deployments
        .iter()
        .map(|d| d.spec.replicas.max(0) as i64)
        .sum();
    if replicas > 8 {
        return;
    }
    let start: Timestamp =
        fleet_time(&gpunodes).unwrap_or_else(|| "2026-11-26T12:00:00Z".parse().unwrap());
    let cfg = SimConfig {
        max_steps,
        slices,
        ..SimConfig::default()
    };
    let sims = deployments
        .into_iter()
        .map(|object| SimDeployment {
            arch: offline_architecture(&object),
            object,
        })
        .collect();
    let report = vllm_operator::sim::run(gpunodes, sims, external, &cfg, start);
    for (_, _, m) in report.world.gpu_table() {
        assert!(m.free_bytes <= m.total_bytes, "{m:?}");
    }
}

fn fixed_fleet() -> (Vec<GpuNode>, Vec<k8s_openapi::api::core::v1::Node>) {
    let f = validate::read_fleet(&root().join("examples/fleet.yaml")).unwrap();
    (f.gpunodes, f.nodes)
}

fn fixed_deployments() -> Vec<vllm_operator::api::VllmDeployment> {
    validate::read_deployments(&[root().join("tests/fixtures/sim/llama-8b-a.yaml")]).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn mutated_deployments_are_refused_or_planned_soundly(
        seed in any::<prop::sample::Index>(),
        m in mutations(),
    ) {
        let seeds = seeds();
        let doc = mutate(seed.get(&seeds.deployments).clone(), &m);
        let text = to_yaml(&doc);
        if let Ok(deps) = validate::deployments_from_str(Path::new("mutated.yaml"), &text) {
            let (gpunodes, _) = fixed_fleet();
            plan_all(&deps, &gpunodes, &[]);
            simulate(deps, gpunodes, &[], 12, Vec::new());
        }
    }

    #[test]
    fn mutated_fleets_are_refused_or_planned_soundly(
        seed in any::<prop::sample::Index>(),
        m in mutations(),
    ) {
        let seeds = seeds();
        let doc = mutate(seed.get(&seeds.fleets).clone(), &m);
        let text = to_yaml(&doc);
        if let Ok(validate::FleetFile { gpunodes, slices, .. }) =
            validate::fleet_from_str(Path::new("fleet.yaml"), &text)
        {
            let deps = fixed_deployments();
            plan_all(&deps, &gpunodes, &slices);
            simulate(deps, gpunodes, &[], 12, slices);
        }
    }

    #[test]
    fn mutated_config_json_is_refused_or_estimated_without_wrapping(
        seed in any::<prop::sample::Index>(),
        m in mutations(),
        len in prop_oneof![Just(None), (1u64..=u64::MAX).prop_map(Some)],
    ) {
        let seeds = seeds();
        let doc = mutate(seed.get(&seeds.configs).clone(), &m);
        if let Ok(arch) = Architecture::from_hf_config(&doc) {
            estimate_shapes(&arch, len);
        }
    }

    #[test]
    fn mutated_external_events_run_without_panic(
        seed in any::<prop::sample::Index>(),
        m in mutations(),
    ) {
        let seeds = seeds();
        let doc = mutate(seed.get(&seeds.events).clone(), &m);
        let text = to_yaml(&doc);
        if let Ok(events) = validate::external_from_str(Path::new("events.yaml"), &text, 30) {
            let (gpunodes, _) = fixed_fleet();
            simulate(fixed_deployments(), gpunodes, &events, 30, Vec::new());
        }
    }
}

fn estimate_shapes(arch: &Architecture, len: Option<u64>) {
    for tp in [1, 2, 8] {
        for quantization in [
            vllm_operator::api::Quantization::None,
            vllm_operator::api::Quantization::Fp8,
        ] {
            let shape = Shape {
                tensor_parallel_size: tp,
                quantization,
                kv_cache_dtype: vllm_operator::api::KvCacheDtype::Auto,
                max_model_len: len.unwrap_or(arch.max_position_embeddings),
                max_num_seqs: None,
                max_num_batched_tokens: None,
                enforce_eager: false,
                block_size: None,
                v0_engine: false,
                family: VllmFamily::V0_21,
                estimate_cuda_graphs: None,
            };
            let gpu = GpuFacts {
                total_bytes: Some(85_520_809_984),
                compute_capability: Some((9, 0)),
                product: None,
            };
            if let Ok(e) = estimate(arch, &shape, &gpu) {
                assert!(e.required_bytes() >= e.weights_bytes_per_gpu);
                let kv = e.kv_cache(85_520_809_984, 0.9);
                assert!(kv.kv_cache_bytes <= 85_520_809_984);
                let _ = e.min_kv_bytes(u64::MAX);
            }
        }
    }
    let _ = arch.max_model_len_limit(VllmFamily::V0_11);
}
