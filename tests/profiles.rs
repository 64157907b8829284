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
