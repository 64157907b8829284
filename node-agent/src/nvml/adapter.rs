//! `GpuInventory` on NVML through nvml-wrapper. Required fields fail the read; optional ones
//! (MIG, processes) are left out when the driver does not support them or lacks the symbol.

use std::ffi::OsStr;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use vllm_operator::api::{GpuInfo, GpuMemory, GpuProcess};

use super::{GpuInventory, InventoryError, InventorySnapshot};

/// The soname the driver installs; the container toolkit mounts it into pods.
pub const DEFAULT_LIB: &str = "libnvidia-ml.so.1";
/// Overrides the library path on every subcommand.
pub const LIB_ENV: &str = "VLLM_OPERATOR_NVML_LIB";

const MIG_ENABLED: u32 = 1;

pub struct NvmlInventory {
    nvml: Nvml,
}

impl NvmlInventory {
    /// Loads the library at `lib` and calls `nvmlInit_v2`.
    pub fn open(lib: &str) -> Result<Self, InventoryError> {
        let nvml =
            Nvml::builder()
                .lib_path(OsStr::new(lib))
                .init()
                .map_err(|source| match source {
                    NvmlError::LibloadingError(_) | NvmlError::FailedToLoadSymbol(_) => {
                        InventoryError::Load {
                            lib: lib.to_string(),
                            source,
                        }
                    }
                    source => InventoryError::Init {
                        lib: lib.to_string(),
                        source,
                    },
                })?;
        Ok(Self { nvml })
    }
}

/// An optional NVML call: "this driver or GPU cannot tell" is `None`, anything else an error.
fn optional<T>(r: Result<T, NvmlError>) -> Result<Option<T>, NvmlError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(
            NvmlError::NotSupported
            | NvmlError::NotFound
            | NvmlError::FunctionNotFound
            | NvmlError::FailedToLoadSymbol(_)
            | NvmlError::NoPermission,
        ) => Ok(None),
        Err(e) => Err(e),
    }
}

/// NVML v2 memory, or v1 with `reserved = 0` on drivers before 510.
fn memory(device: &Device<'_>) -> Result<GpuMemory, NvmlError> {
    match device.memory_info() {
        Ok(m) => Ok(GpuMemory {
            total_bytes: m.total,
            free_bytes: m.free,
            used_bytes: m.used,
            reserved_bytes: m.reserved,
        }),
        Err(
            NvmlError::FailedToLoadSymbol(_)
            | NvmlError::FunctionNotFound
            | NvmlError::NotSupported
            | NvmlError::InvalidArg,
        ) => memory_v1(device),
        Err(e) => Err(e),
    }
}

fn memory_v1(device: &Device<'_>) -> Result<GpuMemory, NvmlError> {
    let sym = device
        .nvml()
        .lib()
        .nvmlDeviceGetMemoryInfo
        .as_ref()
        .map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?;
    // SAFETY: a zeroed plain-data struct filled in by NVML for a handle NVML gave us.
    let (code, m) = unsafe {
        let mut m: nvml_wrapper_sys::bindings::nvmlMemory_t = std::mem::zeroed();
        let code = sym(device.handle(), &mut m);
        (code, m)
    };
    nvml_wrapper::error::nvml_try(code)?;
    Ok(GpuMemory {
        total_bytes: m.total,
        free_bytes: m.free,
        used_bytes: m.used,
        reserved_bytes: 0,
    })
}

fn processes(device: &Device<'_>) -> Result<Vec<GpuProcess>, NvmlError> {
    let list = optional(device.running_compute_processes())?.unwrap_or_default();
    Ok(list
        .into_iter()
        .map(|p| GpuProcess {
            pid: p.pid,
            used_bytes: match p.used_gpu_memory {
                UsedGpuMemory::Used(b) => b,
                UsedGpuMemory::Unavailable => 0,
            },
            pod: None,
        })
        .collect())
}

fn device_err(call: &'static str, index: u32) -> impl FnOnce(NvmlError) -> InventoryError {
    move |source| InventoryError::Device {
        call,
        index,
        source,
    }
}

/// Required and optional fields of one device (physical or MIG).
fn read_device(device: &Device<'_>, index: u32) -> Result<GpuInfo, InventoryError> {
    let uuid = device
        .uuid()
        .map_err(device_err("nvmlDeviceGetUUID", index))?;
    let product = device
        .name()
        .map_err(device_err("nvmlDeviceGetName", index))?;
    let memory = memory(device).map_err(device_err("nvmlDeviceGetMemoryInfo", index))?;
    let cc = device
        .cuda_compute_capability()
        .map_err(device_err("nvmlDeviceGetCudaComputeCapability", index))?;
    let processes =
        processes(device).map_err(device_err("nvmlDeviceGetComputeRunningProcesses", index))?;
    Ok(GpuInfo {
        index,
        uuid,
        product,
        compute_capability: format!("{}.{}", cc.major, cc.minor),
        memory,
        processes,
        ..GpuInfo::default()
    })
}

impl GpuInventory for NvmlInventory {
    fn snapshot(&self) -> Result<InventorySnapshot, InventoryError> {
        let nvml = &self.nvml;
        let driver_version =
            optional(nvml.sys_driver_version()).map_err(|source| InventoryError::System {
                call: "nvmlSystemGetDriverVersion",
                source,
            })?;
        let count = nvml
            .device_count()
            .map_err(|source| InventoryError::System {
                call: "nvmlDeviceGetCount",
                source,
            })?;
        let mut gpus = Vec::with_capacity(count as usize);
        for i in 0..count {
            let device = nvml
                .device_by_index(i)
                .map_err(device_err("nvmlDeviceGetHandleByIndex", i))?;
            let index = device.index().unwrap_or(i);
            let mut info = read_device(&device, index)?;
            let mig =
                optional(device.mig_mode()).map_err(device_err("nvmlDeviceGetMigMode", index))?;
            info.mig_mode = mig.as_ref().map(|m| {
                if m.current == MIG_ENABLED {
                    "Enabled"
                } else {
                    "Disabled"
                }
                .to_string()
            });
            let mig_enabled = mig.as_ref().is_some_and(|m| m.current == MIG_ENABLED);
            let parent_uuid = info.uuid.clone();
            gpus.push(info);
            if mig_enabled {
                gpus.extend(mig_devices(&device, index, &parent_uuid)?);
            }
        }
        Ok(InventorySnapshot {
            driver_version,
            gpus,
        })
    }
}

/// MIG devices of one physical GPU, each as its own entry carrying the parent's UUID.
fn mig_devices(
    device: &Device<'_>,
    index: u32,
    parent_uuid: &str,
) -> Result<Vec<GpuInfo>, InventoryError> {
    let Some(max) = optional(device.mig_device_count())
        .map_err(device_err("nvmlDeviceGetMaxMigDeviceCount", index))?
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for slot in 0..max {
        let Some(mig) = optional(device.mig_device_by_index(slot))
            .map_err(device_err("nvmlDeviceGetMigDeviceHandleByIndex", index))?
        else {
            continue;
        };
        let mut info = read_device(&mig, index)?;
        info.parent_uuid = Some(parent_uuid.to_string());
        out.push(info);
    }
    Ok(out)
}
