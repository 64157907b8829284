//! Issue 13's must-show scenario, through the real binary (examples/dra-exact-gpus): one node
//! with 4x H100 80GB, GPU 0 holding 60 GiB for a process outside Kubernetes, three replicas of
//! Llama-3.1-8B-Instruct at tp 1. With the NVIDIA driver's ResourceSlice in the fleet file each
//! replica gets one exact free GPU (1, 2, 3) at the spec's maxUtilization and GPU 0 is
//! untouched, in `plan` and in `simulate`; without slices (or with `--gpu-allocation
//! device-plugin`) the worst-GPU rule judges every replica by GPU 0 and refuses them all.
//! Both print the exact UUIDs, never a candidate set as if it were the assignment.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const DEPLOYMENT: &str = "examples/dra-exact-gpus/llama-3.1-8b.yaml";
const DRA: &str = "examples/dra-exact-gpus/fleet.yaml";
const DEVICE_PLUGIN: &str = "examples/dra-exact-gpus/fleet-device-plugin.yaml";
/// The spec's maxUtilization (the default: `default_max_utilization` in src/api/deployment.rs).
const MAX_UTILIZATION: f64 = 0.95;

fn uuid(i: u32) -> String {
    format!("GPU-4d2c7e1a-000{i}-4b7e-8c1d-0000000d0a0{i}")
}

/// `command` on the example: exit code, stdout, stderr.
fn run(command: &str, fleet: &str, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vllm-operator"))
        .args([command, "-f", DEPLOYMENT, "--fleet", fleet])
        .args(extra)
        .current_dir(root())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(command: &str, fleet: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["-o", "json"];
    args.extend_from_slice(extra);
    let (code, out, err) = run(command, fleet, &args);
    (
        code,
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}")),
    )
}

#[test]
fn plan_with_slices_pins_each_replica_to_one_free_gpu_at_full_utilization() {
    let (code, out, err) = run("plan", DRA, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("admitted (3/3 replicas placed)"), "{out}");
    for i in 1..=3 {
        assert!(
            out.contains(&format!("GPUs {} tp 1", uuid(i))),
            "replica on GPU {i}: {out}"
        );
    }
    assert!(!out.contains(&uuid(0)), "{out}");
    assert!(!out.contains("kubelet picks"), "{out}");

    let (code, plan) = json("plan", DRA, &[]);
    assert_eq!(code, 0);
    let replicas = plan["deployments"][0]["replicas"].as_array().unwrap();
    let got: Vec<(Vec<Value>, Vec<Value>, f64)> = replicas
        .iter()
        .map(|r| {
            (
                r["gpu_uuids"].as_array().unwrap().clone(),
                r["candidate_gpus"].as_array().unwrap().clone(),
                r["gpu_memory_utilization"].as_f64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(Vec<Value>, Vec<Value>, f64)> = (1..=3)
        .map(|i| (vec![Value::from(uuid(i))], vec![], MAX_UTILIZATION))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn plan_without_slices_keeps_the_worst_gpu_rule_and_refuses() {
    for (fleet, extra) in [
        (DEVICE_PLUGIN, &[][..]),
        (DRA, &["--gpu-allocation", "device-plugin"][..]),
    ] {
        let (code, out, err) = run("plan", fleet, extra);
        assert_eq!(code, 2, "{fleet} {extra:?}: {out}{err}");
        assert!(out.contains("NOT admitted (0/3 replicas placed)"), "{out}");
        // The kubelet could hand any replica GPU 0: 18.7 GiB free, 38.4 GiB needed.
        assert!(
            out.contains(
                "GPU 0: needs 38.4 GiB free, has 18.7 GiB (another process uses 60.0 GiB)"
            ),
            "{out}"
        );
    }
    // `dra` on a node without published GPUs: refused, with DRA named as the reason.
    let (code, out, _) = run("plan", DEVICE_PLUGIN, &["--gpu-allocation", "dra"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.to_lowercase().contains("dra"), "{out}");
}

/// `(index, free bytes)` of the simulated node's GPUs at the end of a run.
fn gpus(report: &Value) -> Vec<(u64, u64)> {
    report["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["index"].as_u64().unwrap(),
                g["free_bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn simulate_with_slices_runs_each_replica_on_its_exact_gpu_and_leaves_gpu_0_alone() {
    let (code, report) = json("simulate", DRA, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["startup_failures"], 0);
    assert_eq!(report["launcher_refusals"], 0);
    let d = &report["deployments"][0];
    assert_eq!(d["ready_replicas"], 3);
    let mut on: Vec<(String, f64)> = d["placements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert!(p.get("candidateGpus").is_none(), "{p}");
            let uuids = p["gpuUuids"].as_array().unwrap();
            assert_eq!(uuids.len(), 1, "{p}");
            (
                uuids[0].as_str().unwrap().to_string(),
                p["gpuMemoryUtilization"].as_f64().unwrap(),
            )
        })
        .collect();
    on.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        on,
        (1..=3)
            .map(|i| (uuid(i), MAX_UTILIZATION))
            .collect::<Vec<_>>()
    );
    // GPU 0 is exactly as the file reported it; GPUs 1-3 each hold one replica.
    let total = 85_520_809_984u64;
    let idle_free = total - 1_010_237_440;
    let gpu0_free = idle_free - (60u64 << 30);
    let end = gpus(&report);
    assert_eq!(end[0], (0, gpu0_free));
    for (i, free) in &end[1..] {
        assert!(
            *free < idle_free - (60u64 << 30),
            "GPU {i} holds a replica: {free}"
        );
    }
    // Each started on the GPU its claim named.
    let started: Vec<&str> = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "Started")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(started.len(), 3);
    for i in 1..=3 {
        assert!(
            started
                .iter()
                .any(|m| m.contains(&format!("GPUs [{i}] (exact, by its ResourceClaim)"))),
            "{started:?}"
        );
    }

    let (code, table, _) = run("simulate", DRA, &[]);
    assert_eq!(code, 0);
    assert!(table.contains("ready 3/3"), "{table}");
    for i in 1..=3 {
        assert!(table.contains(&format!("GPUs {} tp 1", uuid(i))), "{table}");
    }
    assert!(table.contains("GPU 0:  18.71 /  79.65 GiB free"), "{table}");
}

#[test]
fn simulate_without_slices_waits_for_memory_by_the_worst_gpu_rule() {
    for (fleet, extra) in [
        (DEVICE_PLUGIN, &[][..]),
        (DRA, &["--gpu-allocation", "device-plugin"][..]),
    ] {
        let (code, report) = json("simulate", fleet, extra);
        assert_eq!(code, 2, "{fleet}: {report}");
        let d = &report["deployments"][0];
        assert_eq!(d["ready_replicas"], 0);
        let admitted = d["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Admitted")
            .unwrap();
        assert_eq!(admitted["status"], "False");
        assert_eq!(admitted["reason"], "InsufficientGpuMemory");
        assert!(
            admitted["message"]
                .as_str()
                .unwrap()
                .contains("GPU 0: needs 38.4 GiB free, has 18.7 GiB"),
            "{admitted}"
        );
        // Nothing started: every GPU as the file reported it.
        let end = gpus(&report);
        let idle_free = 85_520_809_984u64 - 1_010_237_440;
        assert_eq!(end[0].1, idle_free - (60u64 << 30));
        assert!(end[1..].iter().all(|(_, f)| *f == idle_free), "{end:?}");
    }
}
