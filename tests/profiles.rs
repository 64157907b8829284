//! Memory profiles in the CLI: fleet files that carry MemoryProfile objects (`plan`, `render`,
//! `simulate`), `simulate --actual`, and the profiles `simulate -o json` prints.

use std::path::{Path, PathBuf};

use vllm_operator::api::{KvCacheDtype, Quantization};
use vllm_operator::cli::plan::{load, plan_deployments};
use vllm_operator::validate::fleet_from_str;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/profiles")
        .join(name)
}

const GIB: u64 = 1 << 30;
const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const IMAGE: &str = "vllm/vllm-openai:v0.33.0";
const RTX_4090: &str = "NVIDIA GeForce RTX 4090";

/// A MemoryProfile document for the 8B model on an RTX 4090 in `tp` with `kv` dtype.
fn profile_yaml(name: &str, tp: u32, kv: &str, non_kv: u64, source: &str) -> String {
    format!(
        "- apiVersion: vllm-operator.io/v1alpha1
  kind: MemoryProfile
  metadata: {{name: {name}}}
  spec:
    model: {MODEL}
    image: {IMAGE}
    gpuProduct: {RTX_4090}
    tensorParallelSize: {tp}
    quantization: none
    kvCacheDtype: {kv}
    nonKvBytesPerGpu: {non_kv}
    observations: 1
    source: {source}
"
    )
}

/// The two-node RTX 4090 fleet with `extra` items appended to its List.
fn fleet_with(extra: &str) -> String {
    let text = std::fs::read_to_string(fixture("fleet-two-4090.yaml")).unwrap();
    format!("{text}{extra}")
}

fn write_temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vllm-operator-profiles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn plan_with_fleet(fleet: &Path) -> Vec<vllm_operator::cli::plan::DeploymentPlan> {
    let (deps, fleet, now) = load(&[fixture("llama-8b-4090.yaml")], fleet, None, 120).unwrap();
    plan_deployments(&deps, &fleet, now)
}

#[test]
fn plan_reads_memory_profiles_from_a_fleet_list_and_uses_their_figures() {
    // Without a profile: tp 1, the estimate's non-KV.
    let plain = plan_with_fleet(&fixture("fleet-two-4090.yaml"));
    let p0 = &plain[0].replicas[0];
    assert_eq!(p0.shape.tensor_parallel_size, 1);
    assert!(p0.estimate.profile.is_none());

    // A hand-written profile that says the model takes 1 GiB less: the plan uses it, with its
    // margin, and sees more KV cache.
    let less = p0.estimate.estimated_required_bytes() - GIB;
    let path = write_temp(
        "fleet-less.yaml",
        &fleet_with(&profile_yaml("llama-4090-tp1", 1, "auto", less, "Manual")),
    );
    let with = plan_with_fleet(&path);
    let p1 = &with[0].replicas[0];
    assert_eq!(p1.shape.tensor_parallel_size, 1);
    let used = p1.estimate.profile.as_ref().expect("the profile matched");
    assert_eq!(used.name, "llama-4090-tp1");
    assert_eq!(used.measured_non_kv_bytes, less);
    assert_eq!(
        p1.estimate.required_bytes(),
        vllm_operator::profile::non_kv_with_margin(less)
    );
    assert!(p1.kv_cache_tokens > p0.kv_cache_tokens);

    // A profile that says tp 1 takes 20 GiB: that shape no longer holds a 32k request on a
    // 24 GiB card, so the plan moves to another shape.
    let path = write_temp(
        "fleet-more.yaml",
        &fleet_with(&profile_yaml(
            "llama-4090-tp1",
            1,
            "auto",
            20 * GIB,
            "Measured",
        )),
    );
    let moved = plan_with_fleet(&path);
    assert!(moved[0].admitted(), "{:?}", moved[0].reasons);
    let p2 = &moved[0].replicas[0];
    assert!(
        (p2.shape.tensor_parallel_size, p2.shape.kv_cache_dtype) != (1, KvCacheDtype::Auto),
        "{:?}",
        p2.shape
    );
    assert_eq!(p2.shape.quantization, Quantization::None);
}

#[test]
fn a_broken_memory_profile_in_a_fleet_file_names_the_file_and_the_field() {
    let fleet = Path::new("fleet.yaml");
    for (doc, needle) in [
        (
            profile_yaml("ok", 0, "auto", GIB, "Manual"),
            "spec.tensorParallelSize",
        ),
        (
            profile_yaml("Bad_Name", 1, "auto", GIB, "Manual"),
            "metadata.name",
        ),
        (
            profile_yaml("ok", 1, "auto", 1 << 60, "Manual"),
            "spec.nonKvBytesPerGpu",
        ),
        (profile_yaml("ok", 1, "auto", GIB, "Guessed"), "spec.source"),
        (
            profile_yaml("ok", 1, "auto", GIB, "Manual")
                .replace("observations: 1", "observations: -1"),
            "spec.observations",
        ),
        (
            profile_yaml("ok", 1, "auto", GIB, "Manual")
                .replace("    source:", "    sourceOf: x\n    source:"),
            "spec.sourceOf",
        ),
        (
            format!(
                "{}{}",
                profile_yaml("twice", 1, "auto", GIB, "Manual"),
                profile_yaml("twice", 2, "auto", GIB, "Manual")
            ),
            "MemoryProfile twice: field `metadata.name`: appears twice",
        ),
    ] {
        let err = fleet_from_str(fleet, &fleet_with(&doc)).unwrap_err();
        assert!(err.starts_with("fleet.yaml"), "{err}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
    // The wrong apiVersion is named too.
    let err = fleet_from_str(
        fleet,
        &fleet_with(&profile_yaml("ok", 1, "auto", GIB, "Manual").replace(
            "vllm-operator.io/v1alpha1\n  kind: MemoryProfile",
            "v1\n  kind: MemoryProfile",
        )),
    )
    .unwrap_err();
    assert!(err.contains("apiVersion"), "{err}");
}

#[test]
fn memory_profiles_may_stand_alone_as_documents_beside_the_list() {
    let text = format!(
        "{}---\n{}",
        std::fs::read_to_string(fixture("fleet-two-4090.yaml")).unwrap(),
        profile_yaml("solo", 2, "fp8", 8 * GIB, "Manual")
            .trim_start_matches("- ")
            .replace("\n  ", "\n")
    );
    let file = fleet_from_str(Path::new("fleet.yaml"), &text).unwrap();
    assert_eq!(file.gpunodes.len(), 2);
    assert_eq!(file.profiles.len(), 1);
    assert_eq!(file.profiles[0].spec.tensor_parallel_size, 2);
    assert_eq!(file.profiles[0].spec.kv_cache_dtype, KvCacheDtype::Fp8);
    assert_eq!(file.profile_set().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// simulate --actual: the simulated vLLM takes more (or less) than the estimate; the controller
// learns it from vLLM's own texts and figures, and the next plan uses it.

use k8s_openapi::jiff::Timestamp;
use vllm_operator::api::MemoryProfile;
use vllm_operator::cli::plan::{fleet_time, offline_architecture, read_deployments, read_fleet};
use vllm_operator::controller::decide::PodPhase;
use vllm_operator::fit::GpuMemoryView;
use vllm_operator::sim::{SimConfig, SimDeployment, SimReport, VllmTruth, run, start_ranks};
use vllm_operator::validate::actual_from_str;

fn simulate_8b(extra_bytes: i64, profiles: Vec<MemoryProfile>) -> SimReport {
    let file = read_fleet(&fixture("fleet-two-4090.yaml")).unwrap();
    let deps = read_deployments(&[fixture("llama-8b-4090.yaml")]).unwrap();
    let start: Timestamp = fleet_time(&file.gpunodes).unwrap();
    let sims = deps
        .into_iter()
        .map(|object| SimDeployment {
            arch: offline_architecture(&object),
            object,
        })
        .collect();
    let cfg = SimConfig {
        actual: [(MODEL.to_string(), extra_bytes)].into_iter().collect(),
        profiles,
        nodes: file.nodes,
        ..SimConfig::default()
    };
    run(file.gpunodes, sims, &[], &cfg, start)
}

/// The GPUs of the fleet file as they were before the run, by (node, index).
fn initial_gpu(node: &str, index: u32) -> GpuMemoryView {
    let file = read_fleet(&fixture("fleet-two-4090.yaml")).unwrap();
    let g = file
        .gpunodes
        .iter()
        .find(|g| g.metadata.name.as_deref() == Some(node))
        .unwrap();
    let gpu = g
        .status
        .as_ref()
        .unwrap()
        .gpus
        .iter()
        .find(|x| x.index == index)
        .unwrap();
    (&gpu.memory).into()
}

/// The profiles `simulate -o json` prints, written into a fleet file and read back.
fn profiles_through_a_fleet_file(r: &SimReport) -> Vec<MemoryProfile> {
    let json = vllm_operator::cli::simulate::report_json(r);
    let items = json["profiles"].as_array().unwrap().clone();
    assert_eq!(items.len(), r.profiles.len());
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let text = format!(
        "{}---\n{}",
        std::fs::read_to_string(fixture("fleet-two-4090.yaml")).unwrap(),
        serde_norway::to_string(&list).unwrap()
    );
    let back = fleet_from_str(Path::new("fleet-learned.yaml"), &text)
        .unwrap()
        .profiles;
    assert_eq!(
        back, r.profiles,
        "the printed profiles read back as they were"
    );
    back
}

#[test]
fn two_gib_more_than_estimated_on_24_gib_gpus_fails_once_then_runs_on_a_shape_that_fits_and_the_learned_profiles_start_the_next_run_first_time()
 {
    let r = simulate_8b(2 * GIB as i64, Vec::new());
    assert!(r.settled);
    // The first plan is tight (tp 1 leaves 5.04 GiB of KV for a 4 GiB request): with 2 GiB
    // more non-KV memory vLLM's one-request check fails, once.
    assert_eq!(r.startup_failures, 1, "{:#?}", r.events);
    let failure = r
        .events
        .iter()
        .find(|e| e.reason == "KvCacheTooSmall")
        .unwrap();
    assert!(
        failure.message.starts_with(
            "ValueError: To serve at least one request with the model's max seq len (32768), (4.0 GiB KV cache is needed"
        ),
        "{}",
        failure.message
    );
    // Learned from vLLM's text: a tp-1 profile above the estimate by about the 2 GiB.
    let (dep, status) = &r.deployments[0];
    assert_eq!(status.ready_replicas, dep.spec.replicas);
    let tp1 = r
        .profiles
        .iter()
        .find(|p| p.spec.tensor_parallel_size == 1)
        .expect("a tp 1 profile learned from the failure");
    assert_eq!(tp1.spec.gpu_product, RTX_4090);
    assert_eq!(tp1.spec.observations, 1);

    // Ready on a shape that truly fits: vLLM (sim::vllm) on the final GPUs with what the model
    // really takes starts, and its KV cache holds a whole 32k request.
    let pod = r
        .world
        .pods
        .iter()
        .find(|p| p.phase == PodPhase::Ready)
        .unwrap();
    let placement = pod.placement.as_ref().unwrap();
    assert_ne!(placement.tensor_parallel_size, 1);
    let truth: &VllmTruth = pod.truth.as_ref().unwrap();
    let node = placement.node.as_deref().unwrap();
    let starts: Vec<_> = pod
        .held
        .iter()
        .enumerate()
        .map(|(rank, (index, _))| {
            truth.start_on(
                rank,
                initial_gpu(node, *index),
                placement.gpu_memory_utilization,
            )
        })
        .collect();
    let cap = start_ranks(&starts).expect("the final shape starts");
    assert!(cap.kv_cache_tokens() >= 32768);
    // vLLM's startup check itself passed: more non-KV memory moves the KV cache only.
    assert!(!r.events.iter().any(|e| e.reason == "StartupCheckFailed"));

    // The second run, with the learned profiles in the fleet file, starts first time.
    let learned = profiles_through_a_fleet_file(&r);
    let again = simulate_8b(2 * GIB as i64, learned);
    assert!(again.settled);
    assert_eq!(again.startup_failures, 0, "{:#?}", again.events);
    let (dep, status) = &again.deployments[0];
    assert_eq!(status.ready_replicas, dep.spec.replicas);
    let p = &status.placements[0];
    assert_eq!(
        p.tensor_parallel_size, placement.tensor_parallel_size,
        "the learned profile of tp 1 moves the first plan to the shape that fits"
    );
    assert!(p.memory_profile.is_some(), "{p:?}");
}

#[test]
fn a_model_needing_less_than_estimated_learns_a_smaller_profile() {
    let r = simulate_8b(-(GIB as i64), Vec::new());
    assert!(r.settled);
    assert_eq!(r.startup_failures, 0);
    let pod = r
        .world
        .pods
        .iter()
        .find(|p| p.phase == PodPhase::Ready)
        .unwrap();
    let placement = pod.placement.as_ref().unwrap();
    assert_eq!(placement.tensor_parallel_size, 1);
    let planned = placement.planned_non_kv_bytes.unwrap();
    let truth = pod.truth.as_ref().unwrap().non_kv_bytes;
    assert_eq!(truth, planned - GIB);
    assert_eq!(r.profiles.len(), 1);
    let learned = r.profiles[0].spec.non_kv_bytes_per_gpu;
    // Read from vLLM's KV blocks (/metrics): at least the truth, less than one block above it,
    // and clearly below the estimate.
    let block = 16 * (128 << 10);
    assert!(
        truth <= learned && learned < truth + block,
        "{truth} {learned}"
    );
    assert!(learned < planned - GIB / 2);
    // The status shows planned vs observed.
    let st = &r.deployments[0].1.placements[0];
    assert_eq!(st.observed_non_kv_bytes, Some(learned));
    assert_eq!(st.planned_non_kv_bytes, Some(planned));
}

#[test]
fn a_model_that_fits_no_shape_fails_at_most_once_per_shape_then_is_refused_with_the_measured_numbers()
 {
    // 12 GiB more than estimated: tp 1 finds no KV memory at all (vLLM's "No available memory
    // for the cache blocks": the learned figure is then at least everything it requested),
    // tp 2 neither; then no shape allowed fits and the refusal says why, in learned figures.
    let r = simulate_8b(12 * GIB as i64, Vec::new());
    assert!(r.settled);
    assert!(r.startup_failures <= 2, "{:#?}", r.events);
    let (_, status) = &r.deployments[0];
    assert_eq!(status.ready_replicas, 0);
    let tps: Vec<u32> = r
        .profiles
        .iter()
        .map(|p| p.spec.tensor_parallel_size)
        .collect();
    assert_eq!(tps, [1, 2]);
    let tp2 = &r.profiles[1];
    assert!(tp2.spec.non_kv_bytes_per_gpu > 20 * GIB);
    let admitted = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Admitted")
        .unwrap();
    assert_eq!(admitted.status, "False");
    assert_eq!(admitted.reason, "InsufficientGpuMemory");
    assert!(
        admitted
            .message
            .contains("needs 25.7 GiB free, has 23.4 GiB [tp 2"),
        "{}",
        admitted.message
    );
}

#[test]
fn the_actual_file_is_validated() {
    let path = Path::new("actual.yaml");
    let models = [MODEL, "Qwen/Qwen2.5-7B-Instruct"];
    let ok = actual_from_str(
        path,
        &format!("- {{model: {MODEL}, extraBytes: -1073741824}}\n"),
        &models,
    )
    .unwrap();
    assert_eq!(ok[0].extra_bytes, -(GIB as i64));
    assert!(actual_from_str(path, "", &models).unwrap().is_empty());
    for (text, needle) in [
        (
            "- {model: nope/Model, extraBytes: 1}".to_string(),
            "[0].model: \"nope/Model\" is not the model of any deployment given with -f (their models: Qwen/Qwen2.5-7B-Instruct, meta-llama/Llama-3.1-8B-Instruct)",
        ),
        (
            format!("- {{model: {MODEL}, extraBytes: 2GiB}}"),
            "field `[0].extraBytes`",
        ),
        (
            format!("- {{model: {MODEL}, extraBytes: 1.5}}"),
            "field `[0].extraBytes`",
        ),
        (
            format!("- {{model: {MODEL}, extra: 1}}"),
            "unknown field `extra`",
        ),
        (
            format!("- {{model: {MODEL}}}"),
            "missing field `extraBytes`",
        ),
        (format!("model: {MODEL}"), "invalid type"),
        (
            format!("- {{model: {MODEL}, extraBytes: 1}}\n- {{model: {MODEL}, extraBytes: 2}}"),
            "[1].model: \"meta-llama/Llama-3.1-8B-Instruct\" appears twice",
        ),
        (
            format!("- {{model: {MODEL}, extraBytes: -9223372036854775808}}"),
            "[0].extraBytes: -9223372036854775808 is more than",
        ),
    ] {
        let err = actual_from_str(path, &text, &models).unwrap_err();
        assert!(err.starts_with("actual.yaml: "), "{err}");
        assert!(err.contains(needle), "{needle}\n{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Profiles never loosen the startup rule.

use proptest::prelude::*;
use vllm_operator::api::{MemoryProfileSpec, MemoryProfileStatus, PodRef, ProfileSource};
use vllm_operator::plan::{Decision, Fleet, GpuAllocation, Ledger, Request, plan_replica};
use vllm_operator::profile::Profiles;

/// One node with two RTX 4090-like GPUs of the given memory.
fn one_node_fleet(total: u64, reserved: u64, free: [u64; 2]) -> Vec<vllm_operator::api::GpuNode> {
    let gpus: String = free
        .iter()
        .enumerate()
        .map(|(i, f)| {
            format!(
                "    - index: {i}
      uuid: GPU-0000prop-0000-0000-0000-00000000000{i}
      product: {RTX_4090}
      computeCapability: '8.9'
      memory: {{totalBytes: {total}, freeBytes: {f}, usedBytes: {}, reservedBytes: {reserved}}}
",
                total - f - reserved
            )
        })
        .collect();
    let text = format!(
        "apiVersion: vllm-operator.io/v1alpha1
kind: GpuNode
metadata: {{name: prop}}
spec: {{}}
status:
  nodeName: prop
  observedAt: '2026-11-26T12:00:00Z'
  gpus:
{gpus}"
    );
    fleet_from_str(Path::new("prop.yaml"), &text)
        .unwrap()
        .gpunodes
}

fn figure() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        0u64..(32 * GIB),
        Just(vllm_operator::validate::MAX_PROFILE_BYTES),
        Just(u64::MAX),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// For any profiles (Measured or Manual, any figures, 0 and huge included) of any shape,
    /// and any GPU memory, every placement the planner makes passes vLLM's startup check
    /// (`sim::vllm::start`, with the startup overhead the estimate knows vLLM to take) on each
    /// GPU it may get: a profile changes the KV cache and the shape, never the check's margin.
    #[test]
    fn profiles_never_loosen_the_startup_rule(
        profiles in prop::collection::vec(
            (prop::sample::select(vec![1u32, 2]), any::<bool>(), any::<bool>(), figure(),
             prop::option::of(figure()), prop::option::of(figure()), any::<bool>()),
            0..4,
        ),
        total_gib in 16u64..96,
        reserved_mib in 0u64..1024,
        free_frac in (0.5f64..1.0, 0.5f64..1.0),
        release in prop::sample::select(vec!["v0.33.0", "v0.21.0", "v0.11.0", "v0.9.1"]),
    ) {
        let total = total_gib * GIB;
        let reserved = reserved_mib << 20;
        let usable = total - reserved;
        let free = [
            (usable as f64 * free_frac.0) as u64,
            (usable as f64 * free_frac.1) as u64,
        ];
        let gpunodes = one_node_fleet(total, reserved, free);
        let image = format!("vllm/vllm-openai:{release}");
        let objects: Vec<MemoryProfile> = profiles
            .iter()
            .enumerate()
            .map(|(i, (tp, fp8_kv, manual, non_kv, overhead, observed, with_status))| {
                let mut p = MemoryProfile::new(
                    &format!("p{i}"),
                    MemoryProfileSpec {
                        model: MODEL.into(),
                        revision: None,
                        image: image.clone(),
                        gpu_product: RTX_4090.into(),
                        tensor_parallel_size: *tp,
                        quantization: Quantization::None,
                        kv_cache_dtype: if *fp8_kv { KvCacheDtype::Fp8 } else { KvCacheDtype::Auto },
                        non_kv_bytes_per_gpu: *non_kv,
                        startup_overhead_bytes: *overhead,
                        observations: 1,
                        source: if *manual { ProfileSource::Manual } else { ProfileSource::Measured },
                    },
                );
                if *with_status {
                    p.status = Some(MemoryProfileStatus {
                        observations: 1,
                        observed_startup_overhead_bytes: *observed,
                        ..Default::default()
                    });
                }
                p
            })
            .collect();
        let now: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        let fleet = Fleet::from_objects(&gpunodes, &[], now, std::time::Duration::from_secs(120))
            .with_profiles(Profiles::from_objects(&objects));
        let mut deps = read_deployments(&[fixture("llama-8b-4090.yaml")]).unwrap();
        let d = deps.remove(0);
        let mut spec = d.spec.clone();
        spec.image = image.clone();
        spec.kv_cache_dtype.allowed = vec![KvCacheDtype::Auto, KvCacheDtype::Fp8];
        let arch = offline_architecture(&d).unwrap();
        let family = vllm_operator::cli::plan::family_from_image(&image);
        let req = Request {
            pod: PodRef { namespace: "team-a".into(), name: "llama-8b-0-x".into() },
            arch: &arch,
            spec: &spec,
            family,
            avoid: &[],
            gpu_allocation: GpuAllocation::default(),
        };
        let Decision::Placed(p) = plan_replica(&fleet, &Ledger::default(), &req) else {
            return Ok(());
        };
        // vLLM as it really is: the estimate's figures (`simulate`'s truth without --actual).
        let truth = VllmTruth::of(&p, family, 0);
        let u = p.fit.utilization();
        let views: Vec<GpuMemoryView> = gpunodes[0].status.as_ref().unwrap().gpus.iter()
            .map(|g| (&g.memory).into())
            .collect();
        for index in &p.candidate_gpus {
            let start = truth.start_on(0, views[*index as usize], u);
            let result = vllm_operator::sim::vllm::start(&start);
            prop_assert!(
                !matches!(&result, Err(e) if e.kind == vllm_operator::controller::failures::FailureKind::StartupCheck),
                "GPU {index} at u {u} with profile {:?}: {:?}", p.estimate.profile, result
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// examples/learned-profiles, run as its README says.

fn run_cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vllm-operator"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn the_learned_profiles_example_runs_as_its_readme_says() {
    let e = "examples/learned-profiles";
    let (fleet, dep, actual) = (
        format!("{e}/fleet.yaml"),
        format!("{e}/deployment.yaml"),
        format!("{e}/actual.yaml"),
    );
    let args = [
        "simulate", "--fleet", &fleet, "-f", &dep, "--actual", &actual,
    ];
    let (code, table) = run_cli(&args);
    assert_eq!(code, 2, "{table}");
    for figure in [
        "settled after 9 steps; vLLM startup failures: 1; launcher refusals: 0",
        "ready 1/1  [Ready]",
        "tp 2 none  kv auto  util 0.89  184752 KV tokens",
        "non-KV 18.98 GiB per GPU (20375551345 bytes, Measured, 1 observations",
        "non-KV 11.79 GiB per GPU (12657402840 bytes, Measured, 1 observations",
        "utilization 0.93 leaves 5.04 GiB of KV cache per GPU (41264 tokens) after 14.96 GiB of weights",
        "available KV cache memory (3.04 GiB). Based on the available memory, the estimated maximum model length is 24864.",
        "(vLLM had 3.04 GiB for KV cache of 22.01 GiB requested (u 0.93 of 23.67 GiB): non-KV 18.98 GiB)",
        "utilization 0.89 leaves 11.28 GiB of KV cache per GPU (184752 tokens)",
        "(planned 0.89): 9499 KV cache blocks, 151984 tokens",
    ] {
        assert!(table.contains(figure), "{figure}\n{table}");
    }
    let (code, json) = run_cli(&[&args[..], &["-o", "json"]].concat());
    assert_eq!(code, 2);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let placement = &json["deployments"][0]["placements"][0];
    assert_eq!(placement["plannedNonKvBytes"], 10509885440u64);
    assert_eq!(placement["observedNonKvBytes"], 12657402840u64);
    // The README's jq: the profiles as a List, appended to the fleet file.
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": json["profiles"]});
    let text = format!(
        "{}---\n{}",
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(&fleet)).unwrap(),
        serde_json::to_string_pretty(&list).unwrap()
    );
    let learned = write_temp("fleet-learned.yaml", &text);
    let learned = learned.to_str().unwrap();
    let (code, table) = run_cli(&[
        "simulate", "--fleet", learned, "-f", &dep, "--actual", &actual,
    ]);
    assert_eq!(code, 0, "{table}");
    for figure in [
        "settled after 6 steps; vLLM startup failures: 0; launcher refusals: 0",
        "tp 2 none  kv auto  util 0.89  147648 KV tokens",
        "utilization 0.89 leaves 9.01 GiB of KV cache per GPU (147648 tokens) after 7.48 GiB of weights",
        "(planned 0.89): 9499 KV cache blocks, 151984 tokens",
    ] {
        assert!(table.contains(figure), "{figure}\n{table}");
    }
    let (_, json) = run_cli(&[
        "simulate", "--fleet", learned, "-f", &dep, "--actual", &actual, "-o", "json",
    ]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let placement = &json["deployments"][0]["placements"][0];
    assert_eq!(placement["plannedNonKvBytes"], 12941263268u64);
    assert_eq!(
        placement["memoryProfile"],
        "llama-3-1-8b-instruct-geforce-rtx-4090-tp2-27660680a3de1077"
    );
    // plan and render read the same fleet file.
    let (code, plan) = run_cli(&["plan", "-f", &dep, "--fleet", learned]);
    assert_eq!(code, 0, "{plan}");
    assert!(plan.contains("tp 2"), "{plan}");
    let (code, _) = run_cli(&["render", "-f", &dep, "--fleet", learned]);
    assert_eq!(code, 0);
}
