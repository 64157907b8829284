//! What the GPUs on this machine look like: a `GpuInventory` trait, the NVML adapter and a fake.

mod adapter;

use std::sync::Mutex;

pub use adapter::{DEFAULT_LIB, LIB_ENV, NvmlInventory};
use vllm_operator::api::GpuInfo;

/// One read of every GPU.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct InventorySnapshot {
    pub driver_version: Option<String>,
    pub gpus: Vec<GpuInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot load NVML from {lib}: {source}")]
    Load {
        lib: String,
        source: nvml_wrapper::error::NvmlError,
    },
    #[error("nvmlInit failed for {lib}: {source}")]
    Init {
        lib: String,
        source: nvml_wrapper::error::NvmlError,
    },
    #[error("NVML {call} failed on GPU {index}: {source}")]
    Device {
        call: &'static str,
        index: u32,
        source: nvml_wrapper::error::NvmlError,
    },
    #[error("NVML {call} failed: {source}")]
    System {
        call: &'static str,
        source: nvml_wrapper::error::NvmlError,
    },
    #[error("{0}")]
    Fake(String),
}

/// Reads all GPUs. Synchronous: NVML calls block, so async callers use `spawn_blocking`.
pub trait GpuInventory: Send + Sync {
    fn snapshot(&self) -> Result<InventorySnapshot, InventoryError>;
}

/// Returns whatever was last set; for tests and benches.
#[derive(Default)]
pub struct FakeInventory {
    next: Mutex<Option<Result<InventorySnapshot, String>>>,
}

impl FakeInventory {
    pub fn new(snapshot: InventorySnapshot) -> Self {
        Self {
            next: Mutex::new(Some(Ok(snapshot))),
        }
    }

    pub fn set(&self, next: Result<InventorySnapshot, String>) {
        if let Ok(mut guard) = self.next.lock() {
            *guard = Some(next);
        }
    }
}

impl GpuInventory for FakeInventory {
    fn snapshot(&self) -> Result<InventorySnapshot, InventoryError> {
        let guard = self
            .next
            .lock()
            .map_err(|_| InventoryError::Fake("fake inventory poisoned".into()))?;
        match guard.as_ref() {
            Some(Ok(s)) => Ok(s.clone()),
            Some(Err(e)) => Err(InventoryError::Fake(e.clone())),
            None => Err(InventoryError::Fake("fake inventory not set".into())),
        }
    }
}

impl<T: GpuInventory + ?Sized> GpuInventory for std::sync::Arc<T> {
    fn snapshot(&self) -> Result<InventorySnapshot, InventoryError> {
        (**self).snapshot()
    }
}

/// Opens NVML on first use and again after a failed open, so that a node whose driver is not
/// ready yet reports a condition instead of crash-looping.
pub struct LazyNvml {
    lib: String,
    inner: Mutex<Option<NvmlInventory>>,
}

impl LazyNvml {
    pub fn new(lib: String) -> Self {
        Self {
            lib,
            inner: Mutex::new(None),
        }
    }
}

impl GpuInventory for LazyNvml {
    fn snapshot(&self) -> Result<InventorySnapshot, InventoryError> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| InventoryError::Fake("NVML handle poisoned".into()))?;
        if guard.is_none() {
            *guard = Some(NvmlInventory::open(&self.lib)?);
        }
        match guard.as_ref() {
            Some(nvml) => nvml.snapshot(),
            None => Err(InventoryError::Fake("NVML not open".into())),
        }
    }
}
