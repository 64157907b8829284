//! Hostile input, as issue 12 found it: every case of the committed corpus in
//! tests/fixtures/hostile/ run through the real binary, each a named regression test with the
//! exit code and the words the user should see (0 success, 1 bad input, 2 does not fit).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn hostile(name: &str) -> String {
    root()
        .join("tests/fixtures/hostile")
        .join(name)
        .display()
        .to_string()
}

fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vllm-operator"));
    cmd.args(args).current_dir(root());
    cmd.env_remove("VLLM_ALLOW_LONG_MAX_MODEL_LEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

/// Exit code `code`, and `words` in stderr (or stdout for successes).
#[track_caller]
fn expect(out: &Output, code: i32, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code; stderr: {stderr}\nstdout: {stdout}"
    );
    let text = format!("{stderr}{stdout}");
    for w in words {
        assert!(text.contains(w), "{w:?} not in:\n{text}");
    }
    assert!(!text.contains("panicked"), "{text}");
}

fn plan(deployment: &str, fleet: &str) -> Output {
    run(&[
        "plan",
        "-f",
        &hostile(deployment),
        "--fleet",
        &hostile(fleet),
    ])
}

fn simulate(deployment: &str, fleet: &str, extra: &[&str]) -> Output {
    let d = hostile(deployment);
    let f = hostile(fleet);
    let mut args = vec!["simulate", "-f", &d, "--fleet", &f];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn the_good_inputs_plan_and_simulate() {
    expect(
        &plan("deployment-ok.yaml", "fleet-ok.yaml"),
        0,
        &["admitted"],
    );
    expect(
        &simulate("deployment-ok.yaml", "fleet-ok.yaml", &[]),
        0,
        &["ready 1/1"],
    );
}

// --- Arithmetic that wrapped silently in release and panicked in debug.

#[test]
fn max_model_len_2_pow_47_is_above_the_operators_bound() {
    expect(
        &plan("max-model-len-2-pow-47.yaml", "fleet-ok.yaml"),
        1,
        &[
            "field `spec.maxModelLen`",
            "140737488355328",
            "above 4294967296",
        ],
    );
}

#[test]
fn max_model_len_2_pow_47_is_above_the_operators_bound_even_when_vllm_allows_it() {
    expect(
        &plan("max-model-len-2-pow-47-allowed.yaml", "fleet-ok.yaml"),
        1,
        &["field `spec.maxModelLen`", "4294967296"],
    );
}

#[test]
fn estimate_max_model_len_2_pow_63_is_refused_not_a_26388x_concurrency() {
    let args = [
        "estimate",
        "--model",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--max-model-len",
        "9223372036854775808",
        "--gpu-total-bytes",
        "85520809984",
    ];
    expect(
        &run(&args),
        1,
        &["--max-model-len 9223372036854775808", "131072"],
    );
    // With vLLM's override the operator's own bound still holds, as a shape that cannot run.
    expect(
        &run_env(&args, &[("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")]),
        2,
        &["above 4294967296"],
    );
}

#[test]
fn hidden_size_1e18_is_out_of_bounds() {
    expect(
        &plan("hidden-size-1e18.yaml", "fleet-ok.yaml"),
        1,
        &["spec.model.architecture.hiddenSize", "1000000000000000000"],
    );
}

#[test]
fn a_process_using_2_pow_64_bytes_is_more_than_the_gpu() {
    expect(
        &plan("deployment-ok.yaml", "process-used-2-pow-64.yaml"),
        1,
        &["status.gpus[0].processes", "more than totalBytes"],
    );
}

#[test]
fn free_bytes_above_total_bytes_is_refused() {
    expect(
        &plan("deployment-ok.yaml", "free-above-total.yaml"),
        1,
        &["status.gpus[0].memory.freeBytes", "more than totalBytes"],
    );
}

#[test]
fn duplicate_gpu_indices_on_one_node_are_refused() {
    for cmd in ["plan", "simulate", "render"] {
        let out = run(&[
            cmd,
            "-f",
            &hostile("deployment-ok.yaml"),
            "--fleet",
            &hostile("duplicate-gpu-index.yaml"),
        ]);
        expect(&out, 1, &["status.gpus[1].index", "appears twice"]);
    }
}

#[test]
fn the_controller_does_not_plan_on_an_impossible_report() {
    // The controller reads GpuNodes from the API server, not through the file reader: the
    // fleet it plans on marks such a node ineligible instead.
    for file in [
        "free-above-total.yaml",
        "duplicate-gpu-index.yaml",
        "process-used-2-pow-64.yaml",
    ] {
        let docs = vllm_operator::manifest::read_documents(Path::new(&hostile(file))).unwrap();
        let g: vllm_operator::api::GpuNode = serde_json::from_value(docs[0].value.clone()).unwrap();
        let now = "2026-11-26T12:00:30Z".parse().unwrap();
        let fleet = vllm_operator::plan::Fleet::from_objects(
            &[g],
            &[],
            now,
            std::time::Duration::from_secs(120),
        );
        let why = fleet.nodes[0].ineligible.clone().unwrap_or_default();
        assert!(why.contains("report is invalid"), "{file}: {why:?}");
    }
}

#[test]
fn duplicate_gpu_uuids_on_one_node_are_refused() {
    expect(
        &plan("deployment-ok.yaml", "duplicate-gpu-uuid.yaml"),
        1,
        &["status.gpus[1].uuid", "appears twice"],
    );
}

// --- simulate: panics and runaway memory.

#[test]
fn a_report_at_the_end_of_the_calendar_is_refused_not_a_jiff_panic() {
    let ext = hostile("external-stale.yaml");
    expect(
        &simulate(
            "deployment-ok.yaml",
            "observed-at-end-of-calendar.yaml",
            &["--external", &ext],
        ),
        1,
        &["passes the end of the calendar"],
    );
}

#[test]
fn simulate_refuses_two_billion_replicas() {
    expect(
        &simulate("replicas-2-pow-31.yaml", "fleet-ok.yaml", &[]),
        1,
        &["2147483647 replicas", "at most 10000"],
    );
}

#[test]
fn simulate_refuses_an_event_beyond_its_steps_and_steps_beyond_its_bound() {
    let ext = hostile("external-step-2-pow-32.yaml");
    expect(
        &simulate(
            "deployment-ok.yaml",
            "fleet-ok.yaml",
            &["--external", &ext, "--max-steps", "4294967295"],
        ),
        1,
        &["--max-steps 4294967295 is more than 100000"],
    );
    expect(
        &simulate("deployment-ok.yaml", "fleet-ok.yaml", &["--external", &ext]),
        1,
        &["[0].step: 4294967295 is not below --max-steps 60"],
    );
}

#[test]
fn files_that_never_end_are_refused_at_the_limit() {
    expect(
        &run(&[
            "plan",
            "-f",
            "/dev/zero",
            "--fleet",
            &hostile("fleet-ok.yaml"),
        ]),
        1,
        &["/dev/zero: larger than"],
    );
    expect(
        &run(&["estimate", "--model", "/dev/zero"]),
        1,
        &["/dev/zero: larger than"],
    );
}

// --- plan and simulate were laxer than the controller.

#[test]
fn bad_headroom_strings_are_refused() {
    for (file, text) in [
        ("headroom-negative.yaml", "-1Gi"),
        ("headroom-abc.yaml", "abc"),
    ] {
        expect(
            &plan(file, "fleet-ok.yaml"),
            1,
            &["field `spec.memory.headroom`", text],
        );
    }
}

#[test]
fn names_over_63_characters_are_refused() {
    expect(
        &plan("name-64-characters.yaml", "fleet-ok.yaml"),
        1,
        &["field `metadata.name`", "at most 63"],
    );
}

#[test]
fn a_misspelt_field_is_named() {
    for cmd in ["plan", "simulate", "render"] {
        let out = run(&[
            cmd,
            "-f",
            &hostile("misspelt-field.yaml"),
            "--fleet",
            &hostile("fleet-ok.yaml"),
        ]);
        expect(
            &out,
            1,
            &[
                "field `spec.maxModelLength`",
                "unknown field",
                "did you mean `maxModelLen`?",
            ],
        );
    }
}

#[test]
fn max_model_len_above_max_position_embeddings_is_refused() {
    expect(
        &plan("max-model-len-above-model.yaml", "fleet-ok.yaml"),
        1,
        &[
            "field `spec.maxModelLen`",
            "262144",
            "131072",
            "max_position_embeddings",
        ],
    );
}

#[test]
fn kv_heads_that_do_not_divide_attention_heads_are_refused() {
    expect(
        &plan("kv-heads-not-dividing.yaml", "fleet-ok.yaml"),
        1,
        &["spec.model.architecture.numKeyValueHeads", "not divisible"],
    );
}

#[test]
fn head_dim_zero_is_refused() {
    expect(
        &plan("head-dim-zero.yaml", "fleet-ok.yaml"),
        1,
        &["spec.model.architecture.headDim", "must be positive"],
    );
}

#[test]
fn a_gpunode_without_a_name_is_refused_not_dropped() {
    expect(
        &plan("deployment-ok.yaml", "gpunode-without-name.yaml"),
        1,
        &["field `metadata.name`", "required"],
    );
}

#[test]
fn simulate_honours_a_cordoned_node() {
    expect(
        &simulate("deployment-ok.yaml", "node-unschedulable.yaml", &[]),
        2,
        &["cordoned"],
    );
}

#[test]
fn duplicate_gpunode_names_are_refused_by_plan_and_simulate_alike() {
    for cmd in ["plan", "simulate", "render"] {
        let out = run(&[
            cmd,
            "-f",
            &hostile("deployment-ok.yaml"),
            "--fleet",
            &hostile("duplicate-gpunode-name.yaml"),
        ]);
        expect(&out, 1, &["GpuNode h100-a", "appears twice in the fleet"]);
    }
}

// --- Messages that misled.

#[test]
fn nan_is_reported_as_not_a_finite_number() {
    expect(
        &plan("nan-utilization.yaml", "fleet-ok.yaml"),
        1,
        &["field `spec.memory.maxUtilization`", "not a finite number"],
    );
}

#[test]
fn a_string_where_a_number_belongs_is_named_as_such() {
    expect(
        &run(&["estimate", "--model", &hostile("config-string-number.json")]),
        1,
        &[
            "hidden_size",
            "expected a whole number, found string \"2048\"",
        ],
    );
}

#[test]
fn a_missing_config_json_says_no_such_file() {
    expect(
        &run(&["estimate", "--model", "./missing.json"]),
        1,
        &["./missing.json: cannot read", "No such file"],
    );
}

#[test]
fn a_wrong_api_version_says_which_one_is_served() {
    expect(
        &plan("wrong-api-version.yaml", "fleet-ok.yaml"),
        1,
        &[
            "field `apiVersion`",
            "\"vllm-operator.io/v1\" does not serve VllmDeployment: use vllm-operator.io/v1alpha1",
        ],
    );
}

#[test]
fn an_empty_deployment_file_is_an_error() {
    expect(
        &plan("empty.yaml", "fleet-ok.yaml"),
        1,
        &["empty.yaml: no VllmDeployment in this file"],
    );
    expect(
        &plan("deployment-ok.yaml", "empty.yaml"),
        1,
        &["empty.yaml: empty"],
    );
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    expect(&run(&["estimate", "--bogus"]), 1, &["--bogus"]);
    expect(&run(&["plan"]), 1, &["--file"]);
    expect(&run(&["--help"]), 0, &["Usage"]);
    expect(&run(&["--version"]), 0, &["vllm-operator"]);
}

#[test]
fn every_corpus_file_is_used_by_a_test() {
    let this = include_str!("hostile.rs");
    for entry in std::fs::read_dir(Path::new(&hostile(""))).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        assert!(
            this.contains(&format!("\"{name}\"")),
            "{name} is in the corpus but no test reads it"
        );
    }
}
