//! Builds the stub `libnvidia-ml.so.1` (tests/stub/nvml_stub.c) with gcc into a temp dir.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Full stub, and one without MIG mode, process listing and memory v2.
pub fn stub(variant: Variant) -> PathBuf {
    static FULL: OnceLock<PathBuf> = OnceLock::new();
    static OLD: OnceLock<PathBuf> = OnceLock::new();
    let cell = match variant {
        Variant::Full => &FULL,
        Variant::NoOptional => &OLD,
    };
    cell.get_or_init(|| build(variant)).clone()
}

#[derive(Clone, Copy, Debug)]
pub enum Variant {
    Full,
    NoOptional,
}

fn build(variant: Variant) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/stub/nvml_stub.c");
    let dir = std::env::temp_dir().join(format!("vna-stub-{}-{variant:?}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = dir.join("libnvidia-ml.so.1");
    let mut cmd = Command::new("gcc");
    cmd.args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src);
    if matches!(variant, Variant::NoOptional) {
        cmd.arg("-DSTUB_NO_OPTIONAL");
    }
    let status = cmd
        .status()
        .expect("gcc must be installed to build the NVML stub");
    assert!(status.success(), "gcc failed on {}", src.display());
    out
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_vllm-node-agent")
}
