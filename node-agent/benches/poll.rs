//! CPU per poll with 8 GPUs: the NVML adapter on the stub library (8 GPUs) and the rest of a
//! poll (pod attribution, publish decision, metrics) on a fake inventory. Run with
//! `cargo bench -p vllm-node-agent --bench poll`. Peak RSS of a real process:
//! `vllm-node-agent probe --bench-polls 10000` prints VmHWM.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use vllm_node_agent::metrics::Metrics;
use vllm_node_agent::nvml::{GpuInventory, NvmlInventory};
use vllm_node_agent::podresources::attribute;
use vllm_node_agent::publish::{Thresholds, publish_reason};

fn build_stub() -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/stub/nvml_stub.c");
    let out = std::env::temp_dir().join(format!("vna-bench-{}.so", std::process::id()));
    let ok = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status();
    assert!(ok.is_ok_and(|s| s.success()), "gcc failed");
    out
}

fn main() {
    // SAFETY: single-threaded at this point; the stub reads it in nvmlDeviceGetCount.
    unsafe { std::env::set_var("STUB_NVML_GPU_COUNT", "8") };
    let lib = build_stub();
    let inv = NvmlInventory::open(lib.to_str().unwrap()).expect("stub");
    let metrics = Metrics::default();
    let proc_root = PathBuf::from("/proc");
    let polls = 20_000u32;
    let mut last = None;
    let mut since = Duration::ZERO;
    let mut writes = 0;
    let (cpu0, wall0) = (vllm_node_agent::selfstat::cpu_seconds(), Instant::now());
    for _ in 0..polls {
        let mut gpus = inv.snapshot().expect("snapshot").gpus;
        attribute(&mut gpus, None, &proc_root);
        metrics.observe("bench", &gpus);
        if publish_reason(last.as_deref(), &gpus, false, since, &Thresholds::default()).is_some() {
            writes += 1;
            last = Some(gpus);
            since = Duration::ZERO;
        }
        since += Duration::from_secs(1);
    }
    let cpu = vllm_node_agent::selfstat::cpu_seconds() - cpu0;
    let hwm = vllm_node_agent::selfstat::peak_rss_line();
    println!(
        "poll (8 stub GPUs, attribution, decision, metrics): cpu {:.1} us/poll, wall {:.1} us/poll, {writes} writes over {polls} simulated seconds, {hwm}",
        cpu * 1e6 / polls as f64,
        wall0.elapsed().as_secs_f64() * 1e6 / polls as f64
    );
}
