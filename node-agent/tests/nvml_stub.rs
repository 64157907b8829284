//! The NVML adapter against a stub libnvidia-ml.so.1 built with gcc at test time.

mod common;

use std::process::Command;

use common::{Variant, bin, stub};
use vllm_node_agent::nvml::{GpuInventory, InventoryError, NvmlInventory};
use vllm_operator::api::GpuInfo;

// The stub reads its configuration from the environment; tests that change it run it in a
// child process (the binary) instead of setting env vars in this one.

#[test]
fn several_gpus_with_the_classic_6_92_of_8_gib_and_a_foreign_process() {
    let lib = stub(Variant::Full);
    let inv = NvmlInventory::open(lib.to_str().unwrap()).expect("stub loads");
    let snap = inv.snapshot().expect("snapshot");
    assert_eq!(snap.driver_version.as_deref(), Some("550.54.15"));
    assert_eq!(snap.gpus.len(), 3);
    let desk = &snap.gpus[1];
    assert_eq!(desk.index, 1);
    assert_eq!(desk.uuid, "GPU-00000000-0000-0000-0000-000000000001");
    assert_eq!(desk.product, "NVIDIA GeForce RTX 3070");
    assert_eq!(desk.compute_capability, "8.6");
    assert_eq!(desk.memory.total_bytes, 8_589_934_592);
    assert_eq!(desk.memory.free_bytes, 7_430_346_834);
    assert_eq!(desk.memory.reserved_bytes, 248 << 20);
    assert_eq!(
        desk.memory.used_bytes,
        8_589_934_592 - (248 << 20) - 7_430_346_834
    );
    assert_eq!(desk.mig_mode, None, "NotSupported leaves migMode out");
    assert_eq!(desk.processes.len(), 1);
    assert_eq!(desk.processes[0].pid, 4242);
    assert_eq!(desk.processes[0].used_bytes, desk.memory.used_bytes);
    let h100 = &snap.gpus[0];
    assert_eq!(h100.mig_mode.as_deref(), Some("Disabled"));
    assert_eq!(h100.compute_capability, "9.0");
    assert!(h100.processes.is_empty());
}

#[test]
fn missing_optional_symbols_leave_fields_out_and_fall_back_to_memory_v1() {
    let lib = stub(Variant::NoOptional);
    let inv = NvmlInventory::open(lib.to_str().unwrap()).expect("stub loads");
    let snap = inv.snapshot().expect("snapshot without optional symbols");
    assert_eq!(snap.gpus.len(), 3);
    for g in &snap.gpus {
        assert_eq!(g.mig_mode, None);
        assert!(g.processes.is_empty());
        assert_eq!(g.memory.reserved_bytes, 0, "v1 has no reserved field");
    }
    assert_eq!(snap.gpus[1].memory.free_bytes, 7_430_346_834);
    assert_eq!(snap.gpus[1].memory.total_bytes, 8_589_934_592);
}

#[test]
fn missing_library_is_a_load_error_naming_the_path() {
    match NvmlInventory::open("/nonexistent/libnvidia-ml.so.1") {
        Err(e @ InventoryError::Load { .. }) => {
            assert!(e.to_string().contains("/nonexistent/libnvidia-ml.so.1"))
        }
        Err(other) => panic!("wrong error {other}"),
        Ok(_) => panic!("loaded a missing library"),
    }
}

#[test]
fn probe_json_is_the_crd_gpus_list() {
    let lib = stub(Variant::Full);
    let out = Command::new(bin())
        .args(["probe", "-o", "json"])
        .env("VLLM_OPERATOR_NVML_LIB", &lib)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gpus: Vec<GpuInfo> = serde_json::from_slice(&out.stdout).expect("serde of Vec<GpuInfo>");
    assert_eq!(gpus.len(), 3);
    let raw: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(raw[1]["memory"]["freeBytes"], 7_430_346_834u64);
    assert_eq!(raw[1]["computeCapability"], "8.6");
    assert_eq!(raw[1]["processes"][0]["pid"], 4242);
}

#[test]
fn probe_with_failing_init_exits_1_with_one_line() {
    let lib = stub(Variant::Full);
    let out = Command::new(bin())
        .args(["--nvml-lib", lib.to_str().unwrap(), "probe"])
        .env("STUB_NVML_FAIL_INIT", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("nvmlInit failed") && err.contains(lib.to_str().unwrap()),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn probe_without_library_exits_1() {
    let out = Command::new(bin())
        .args(["--nvml-lib", "/nonexistent/libnvidia-ml.so.1", "probe"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/libnvidia-ml.so.1"));
}

#[test]
fn probe_table_lists_every_gpu() {
    let lib = stub(Variant::Full);
    let out = Command::new(bin())
        .args(["--nvml-lib", lib.to_str().unwrap(), "probe", "-o", "table"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.contains("6.92"));
}
