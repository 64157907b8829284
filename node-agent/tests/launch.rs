//! `launch` through the built binary with the stub NVML: exec with rewritten args, and refusal.

mod common;

use std::process::Command;

use common::{Variant, bin, stub};

const GIB: u64 = 1 << 30;

fn plan(required: u64) -> String {
    format!(
        r#"{{"required_bytes":{required},"min_kv_bytes":{GIB},"startup_overhead_bytes":536870912,"headroom_bytes":268435456,"max_utilization":0.95,"strategy":"MaximizeCache"}}"#
    )
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vna-launch-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn execs_the_command_with_the_utilization_of_the_tightest_gpu() {
    let dir = temp("exec");
    let log = dir.join("termination-log");
    let out = Command::new(bin())
        .args([
            "--nvml-lib",
            stub(Variant::Full).to_str().unwrap(),
            "launch",
            "--termination-log",
        ])
        .arg(&log)
        .args([
            "--",
            "sh",
            "-c",
            "printf '%s\\n' \"$0\" \"$@\"; echo pid=$$",
            "serve",
            "--gpu-memory-utilization",
            "0.9",
            "--port",
            "8000",
        ])
        .env("VLLM_OPERATOR_PLAN", plan(3 * GIB))
        .env_remove("NVIDIA_VISIBLE_DEVICES")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let argv: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    // GPU 1 (6.92 of 8 GiB free) is the tightest: the shared rule gives 0.77 there, emitted
    // last so that it wins (argparse keeps the last occurrence).
    assert_eq!(
        argv[..5],
        [
            "serve",
            "--port",
            "8000",
            "--gpu-memory-utilization",
            "0.77",
        ]
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0.9 -> 0.77"), "{stderr}");
    assert!(
        stderr.contains("GPU-00000000-0000-0000-0000-000000000001"),
        "{stderr}"
    );
    assert!(!log.exists(), "nothing written on success");
}

#[test]
fn visible_devices_limit_the_gpus_and_the_equals_form_is_replaced() {
    let out = Command::new(bin())
        .args([
            "--nvml-lib",
            stub(Variant::Full).to_str().unwrap(),
            "launch",
            "--plan",
            &plan(3 * GIB),
        ])
        .args([
            "--termination-log",
            "/dev/null",
            "--",
            "sh",
            "-c",
            "printf '%s\\n' \"$@\"",
            "sh",
            "--gpu-memory-utilization=0.9",
        ])
        .env(
            "NVIDIA_VISIBLE_DEVICES",
            "GPU-00000000-0000-0000-0000-000000000000",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only the idle H100: capped at max_utilization 0.95.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "--gpu-memory-utilization\n0.95"
    );
}

#[test]
fn refuses_with_exit_75_and_a_termination_message_without_running_the_command() {
    let dir = temp("refuse");
    let log = dir.join("termination-log");
    let marker = dir.join("ran");
    let out = Command::new(bin())
        .args([
            "--nvml-lib",
            stub(Variant::Full).to_str().unwrap(),
            "launch",
            "--plan",
            &plan(6 * GIB),
        ])
        .arg("--termination-log")
        .arg(&log)
        .args(["--", "touch"])
        .arg(&marker)
        .env_remove("NVIDIA_VISIBLE_DEVICES")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!marker.exists(), "command must not run");
    let msg = std::fs::read_to_string(&log).unwrap();
    assert!(
        msg.starts_with("vllm-operator: insufficient-gpu-memory:"),
        "{msg}"
    );
    assert!(
        msg.contains("GPU 1 (GPU-00000000-0000-0000-0000-000000000001)"),
        "{msg}"
    );
    assert!(
        msg.contains("has 7430346834 bytes free (6.92 GiB)"),
        "{msg}"
    );
    assert_eq!(msg.lines().count(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("insufficient-gpu-memory"));
}

#[test]
fn bad_plan_and_nvml_failure_exit_1_with_a_message() {
    let dir = temp("bad");
    let log = dir.join("termination-log");
    let out = Command::new(bin())
        .args([
            "--nvml-lib",
            stub(Variant::Full).to_str().unwrap(),
            "launch",
            "--plan",
            "{not json",
        ])
        .arg("--termination-log")
        .arg(&log)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .starts_with("vllm-operator: bad-plan:")
    );

    let log2 = dir.join("termination-log-2");
    let out = Command::new(bin())
        .args([
            "--nvml-lib",
            stub(Variant::Full).to_str().unwrap(),
            "launch",
            "--plan",
            &plan(GIB),
        ])
        .arg("--termination-log")
        .arg(&log2)
        .args(["--", "true"])
        .env("STUB_NVML_FAIL_INIT", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = std::fs::read_to_string(&log2).unwrap();
    assert!(
        msg.contains("nvml-failed") && msg.contains("libnvidia-ml.so.1"),
        "{msg}"
    );
}

#[test]
fn plan_and_args_come_from_the_downward_api_files_as_the_pod_runs_it() {
    // The controller's pod: `launch --plan-file F --args-file A -- vllm serve MODEL`, with F
    // and A the launch-plan and args annotations seen through a downward-API volume.
    let dir = temp("files");
    let plan_file = dir.join("launch-plan");
    let args_file = dir.join("args");
    std::fs::write(&plan_file, plan(3 * GIB)).unwrap();
    std::fs::write(
        &args_file,
        r#"["--tensor-parallel-size","1","--gpu-memory-utilization","0.90","--enable-prefix-caching"]"#,
    )
    .unwrap();
    let out = Command::new(bin())
        .args([
            "--nvml-lib",
            stub(Variant::Full).to_str().unwrap(),
            "launch",
            "--plan-file",
        ])
        .arg(&plan_file)
        .arg("--args-file")
        .arg(&args_file)
        .arg("--termination-log")
        .arg(dir.join("termination-log"))
        .args([
            "--",
            "sh",
            "-c",
            "printf '%s\\n' \"$0\" \"$@\"",
            "serve",
            "model",
        ])
        .env_remove("VLLM_OPERATOR_PLAN")
        .env_remove("NVIDIA_VISIBLE_DEVICES")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let argv: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        argv,
        [
            "serve",
            "model",
            "--tensor-parallel-size",
            "1",
            "--enable-prefix-caching",
            "--gpu-memory-utilization",
            "0.77",
        ]
    );

    // Started before the release (empty annotation file): refuse, with the reason.
    std::fs::write(&args_file, "").unwrap();
    let log = dir.join("termination-log-2");
    let out = Command::new(bin())
        .args([
            "--nvml-lib",
            stub(Variant::Full).to_str().unwrap(),
            "launch",
            "--plan-file",
        ])
        .arg(&plan_file)
        .arg("--args-file")
        .arg(&args_file)
        .arg("--termination-log")
        .arg(&log)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let message = std::fs::read_to_string(&log).unwrap();
    assert!(
        message.starts_with("vllm-operator: bad-args: the args file is empty"),
        "{message}"
    );
}

/// `launch -- sh -c 'printf ...'` with the given environment: (exit code, argv, stderr, log).
fn launch_printing(
    envs: &[(&str, &str)],
    name: &str,
) -> (Option<i32>, Vec<String>, String, String) {
    let dir = temp(name);
    let log = dir.join("termination-log");
    let mut cmd = Command::new(bin());
    cmd.args([
        "--nvml-lib",
        stub(Variant::Full).to_str().unwrap(),
        "launch",
        "--plan",
        &plan(3 * GIB),
    ])
    .arg("--termination-log")
    .arg(&log)
    .args([
        "--",
        "sh",
        "-c",
        "printf '%s\\n' \"$@\"",
        "sh",
        "serve",
        "m",
    ])
    .env_remove("NVIDIA_VISIBLE_DEVICES");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let argv = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (
        out.status.code(),
        argv,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

#[test]
fn cdi_nodes_write_void_and_the_injected_gpus_are_still_checked() {
    // nvidia-container-toolkit pkg/nvcdi/wrapper.go (GetCommonEdits) puts
    // NVIDIA_VISIBLE_DEVICES=void in every CDI spec; the GPUs arrive as CDI devices.
    let (code, argv, stderr, _) = launch_printing(&[("NVIDIA_VISIBLE_DEVICES", "void")], "void");
    assert_eq!(code, Some(0), "{stderr}");
    // All three stub GPUs are checked: the 8 GiB one with 6.92 GiB free sets 0.77.
    assert_eq!(argv, ["serve", "m", "--gpu-memory-utilization", "0.77"]);
}

#[test]
fn host_indices_are_not_matched_against_container_indices() {
    // Device plugin DEVICE_ID_STRATEGY=index gave host GPU 3; in the container NVML shows it
    // as GPU 0 (the stub's idle H100).
    let (code, argv, stderr, _) = launch_printing(
        &[
            ("NVIDIA_VISIBLE_DEVICES", "3"),
            ("STUB_NVML_GPU_COUNT", "1"),
        ],
        "index",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(argv, ["serve", "m", "--gpu-memory-utilization", "0.95"]);
}

#[test]
fn refuses_only_when_nvml_shows_no_gpu() {
    let (code, argv, _, log) = launch_printing(
        &[
            ("NVIDIA_VISIBLE_DEVICES", "void"),
            ("STUB_NVML_GPU_COUNT", "0"),
        ],
        "nogpu",
    );
    assert_eq!(code, Some(1));
    assert!(argv.is_empty());
    assert!(
        log.starts_with("vllm-operator: no-gpu: NVML reports no GPU"),
        "{log}"
    );
}

#[test]
fn a_config_file_setting_an_unplanned_memory_option_is_refused() {
    // vLLM inserts the file's options before the command line (0.33.0
    // vllm/utils/argparse_utils.py `_pull_args_from_config`): the planner only saw spec.args.
    let dir = temp("config");
    let config = dir.join("serve.yaml");
    std::fs::write(&config, "max_num_seqs: 1024\nport: 8000\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    let run = |extra: &[&str]| {
        let log = dir.join("termination-log");
        let _ = std::fs::remove_file(&log);
        let out = Command::new(bin())
            .args([
                "--nvml-lib",
                stub(Variant::Full).to_str().unwrap(),
                "launch",
                "--plan",
                &plan(3 * GIB),
            ])
            .arg("--termination-log")
            .arg(&log)
            .args([
                "--",
                "sh",
                "-c",
                "printf '%s\\n' \"$@\"",
                "sh",
                "--config",
                &config,
            ])
            .args(extra)
            .env_remove("NVIDIA_VISIBLE_DEVICES")
            .output()
            .unwrap();
        (
            out.status.code(),
            std::fs::read_to_string(&log).unwrap_or_default(),
        )
    };
    let (code, log) = run(&[]);
    assert_eq!(code, Some(1));
    assert!(
        log.starts_with("vllm-operator: bad-args:") && log.contains("--max_num_seqs 1024"),
        "{log}"
    );
    // The same option on the command line (what the planner sized) wins over the file.
    let (code, log) = run(&["--max-num-seqs", "8"]);
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn refuses_with_exit_75_when_nvml_shows_other_gpus_than_planned() {
    let dir = temp("wrong-gpus");
    let log = dir.join("termination-log");
    let marker = dir.join("ran");
    let planned = dir.join("gpu-uuids");
    // Planned: GPU 0 and a GPU this container did not get.
    std::fs::write(
        &planned,
        "GPU-00000000-0000-0000-0000-000000000000,GPU-00000000-0000-0000-0000-000000000007",
    )
    .unwrap();
    let run = |uuids: &std::path::Path| {
        Command::new(bin())
            .args([
                "--nvml-lib",
                stub(Variant::Full).to_str().unwrap(),
                "launch",
                "--plan",
                &plan(GIB),
                "--gpu-uuids-file",
            ])
            .arg(uuids)
            .arg("--termination-log")
            .arg(&log)
            // The launcher appends --gpu-memory-utilization: it lands in $1, unused.
            .args(["--", "sh", "-c", "touch \"$0\""])
            .arg(&marker)
            .env(
                "NVIDIA_VISIBLE_DEVICES",
                "GPU-00000000-0000-0000-0000-000000000000",
            )
            .output()
            .unwrap()
    };
    let out = run(&planned);
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!marker.exists(), "command must not run");
    let msg = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        msg.trim(),
        "vllm-operator: wrong-gpus: planned GPU-00000000-0000-0000-0000-000000000000,GPU-00000000-0000-0000-0000-000000000007; NVML shows GPU-00000000-0000-0000-0000-000000000000; missing GPU-00000000-0000-0000-0000-000000000007"
    );

    // Exactly the planned GPU: it launches.
    std::fs::write(&planned, "GPU-00000000-0000-0000-0000-000000000000\n").unwrap();
    let out = run(&planned);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(marker.exists());

    // An empty file (the device-plugin path: no annotation) checks nothing.
    std::fs::remove_file(&marker).unwrap();
    std::fs::write(&planned, "").unwrap();
    let out = run(&planned);
    assert!(out.status.success());
    assert!(marker.exists());
}
