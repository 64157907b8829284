//! ResourceSlices (`resource.k8s.io/v1`), as `kubectl get resourceslices -o yaml` prints them:
//! the rules the API server applies to every slice, and the NVIDIA driver's own promise that a
//! full GPU carries its NVML UUID. Slices of other drivers are checked by the API's rules only,
//! then kept and ignored ([`crate::plan::Fleet::attach_slices`] reads the NVIDIA driver's).
//!
//! The API rules are those of Kubernetes v1.34 `pkg/apis/resource/validation/validation.go`
//! (`ValidateResourceSlice`, `validateResourceSliceSpec`, `validateResourcePool`,
//! `validateDevice`, `validateDeviceAttribute`), with the limits of
//! `staging/src/k8s.io/api/resource/v1/types.go` (`ResourceSliceMaxDevices = 128`,
//! `ResourceSliceMaxAttributesAndCapacitiesPerDevice = 32`, `DeviceAttributeMaxValueLength =
//! 64`, `PoolNameMaxLength = 253`).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::resource::v1::{DeviceAttribute, ResourceSlice};

use super::{Problem, dns1123_label, dns1123_subdomain};
use crate::api::GpuNode;
use crate::plan::fleet::NVIDIA_DRA_DRIVER;

/// `ResourceSliceMaxDevices` (v1.34 resource/v1 types.go).
pub const MAX_DEVICES: usize = 128;
/// `ResourceSliceMaxAttributesAndCapacitiesPerDevice` (v1.34 resource/v1 types.go).
pub const MAX_ATTRIBUTES_AND_CAPACITIES: usize = 32;
/// `DeviceAttributeMaxValueLength` (v1.34 resource/v1 types.go).
pub const MAX_ATTRIBUTE_VALUE_LENGTH: usize = 64;
/// `PoolNameMaxLength` (v1.34 resource/v1 types.go).
pub const MAX_POOL_NAME_LENGTH: usize = 253;
/// A CSI (and DRA) driver name: a DNS subdomain of at most 63 characters
/// (pkg/apis/core/validation/validation.go, `ValidateCSIDriverName`, which validation.go
/// reuses as `validateDriverName`).
pub const MAX_DRIVER_NAME_LENGTH: usize = 63;

/// A device attribute's one value, for messages.
fn attribute_values(a: &DeviceAttribute) -> usize {
    usize::from(a.bool.is_some())
        + usize::from(a.int.is_some())
        + usize::from(a.string.is_some())
        + usize::from(a.version.is_some())
}

/// One ResourceSlice: the API server's rules, and for the NVIDIA driver's slices, that every
/// full GPU (`type` = `gpu`) carries a string `uuid` (the driver always sets both:
/// NVIDIA/k8s-dra-driver-gpu v25.8.1 `cmd/gpu-kubelet-plugin/deviceinfo.go`,
/// `GpuInfo.GetDevice`), since a GPU without one could never be matched to its GpuNode report.
pub fn resource_slice(s: &ResourceSlice) -> Vec<Problem> {
    let mut out = Vec::new();
    match s.metadata.name.as_deref() {
        None | Some("") => out.push(Problem::new("metadata.name", "required")),
        Some(name) => {
            if let Err(e) = dns1123_subdomain(name) {
                out.push(Problem::new("metadata.name", e));
            }
        }
    }
    let spec = &s.spec;
    if spec.driver.is_empty() {
        out.push(Problem::new("spec.driver", "required"));
    } else if spec.driver.len() > MAX_DRIVER_NAME_LENGTH {
        out.push(Problem::new(
            "spec.driver",
            format!(
                "{:?} is longer than {MAX_DRIVER_NAME_LENGTH} characters",
                spec.driver
            ),
        ));
    } else if let Err(e) = dns1123_subdomain(&spec.driver) {
        out.push(Problem::new("spec.driver", e));
    }

    let pool = &spec.pool;
    if pool.name.is_empty() {
        out.push(Problem::new("spec.pool.name", "required"));
    } else if pool.name.len() > MAX_POOL_NAME_LENGTH {
        out.push(Problem::new(
            "spec.pool.name",
            format!("longer than {MAX_POOL_NAME_LENGTH} characters"),
        ));
    } else if let Some(e) = pool
        .name
        .split('/')
        .find_map(|part| dns1123_subdomain(part).err())
    {
        out.push(Problem::new(
            "spec.pool.name",
            format!("each part between '/' must be a DNS subdomain: {e}"),
        ));
    }
    if pool.resource_slice_count <= 0 {
        out.push(Problem::new(
            "spec.pool.resourceSliceCount",
            format!("{} must be greater than zero", pool.resource_slice_count),
        ));
    }
    if pool.generation < 0 {
        out.push(Problem::new(
            "spec.pool.generation",
            format!("{} must be greater than or equal to zero", pool.generation),
        ));
    }

    // Exactly one way to say which nodes reach the pool.
    let mut set = Vec::new();
    match spec.node_name.as_deref() {
        Some("") => out.push(Problem::new(
            "spec.nodeName",
            "must be either unset or set to a non-empty string",
        )),
        Some(name) => {
            set.push("nodeName");
            if let Err(e) = dns1123_subdomain(name) {
                out.push(Problem::new("spec.nodeName", e));
            }
        }
        None => {}
    }
    if spec.node_selector.is_some() {
        set.push("nodeSelector");
    }
    for (field, value) in [
        ("allNodes", spec.all_nodes),
        ("perDeviceNodeSelection", spec.per_device_node_selection),
    ] {
        match value {
            Some(true) => set.push(field),
            Some(false) => out.push(Problem::new(
                format!("spec.{field}"),
                "must be either unset or set to true",
            )),
            None => {}
        }
    }
    match set.len() {
        1 => {}
        0 => out.push(Problem::new(
            "spec",
            "exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required",
        )),
        _ => out.push(Problem::new(
            "spec",
            format!(
                "exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required, but {} are set",
                set.join(", ")
            ),
        )),
    }
    if spec.shared_counters.is_some() && spec.devices.is_some() {
        out.push(Problem::new(
            "spec",
            "only one of `sharedCounters` or `devices` is allowed",
        ));
    }

    let devices = spec.devices.as_deref().unwrap_or_default();
    if devices.len() > MAX_DEVICES {
        out.push(Problem::new(
            "spec.devices",
            format!("{} devices, more than {MAX_DEVICES}", devices.len()),
        ));
    }
    let nvidia = spec.driver == NVIDIA_DRA_DRIVER;
    let mut names = BTreeSet::new();
    let mut uuids: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, d) in devices.iter().enumerate() {
        let at = |f: &str| format!("spec.devices[{i}].{f}");
        if let Err(e) = dns1123_label(&d.name) {
            out.push(Problem::new(at("name"), e));
        } else if !names.insert(d.name.as_str()) {
            out.push(Problem::new(
                at("name"),
                format!("{:?} appears twice in this slice", d.name),
            ));
        }
        let attributes = d.attributes.as_ref();
        let count =
            attributes.map_or(0, BTreeMap::len) + d.capacity.as_ref().map_or(0, BTreeMap::len);
        if count > MAX_ATTRIBUTES_AND_CAPACITIES {
            out.push(Problem::new(
                format!("spec.devices[{i}]"),
                format!(
                    "{count} attributes and capacities, more than {MAX_ATTRIBUTES_AND_CAPACITIES}"
                ),
            ));
        }
        for (name, a) in attributes.into_iter().flatten() {
            let field = at(&format!("attributes.{name}"));
            if attribute_values(a) != 1 {
                out.push(Problem::new(
                    field.clone(),
                    "exactly one of `bool`, `int`, `string`, `version` must be set",
                ));
            }
            for v in [&a.string, &a.version].into_iter().flatten() {
                if v.len() > MAX_ATTRIBUTE_VALUE_LENGTH {
                    out.push(Problem::new(
                        field.clone(),
                        format!("longer than {MAX_ATTRIBUTE_VALUE_LENGTH} characters"),
                    ));
                }
            }
        }
        if nvidia
            && nvidia_attribute(d.attributes.as_ref(), "type").and_then(|a| a.string.as_deref())
                == Some("gpu")
        {
            match nvidia_attribute(d.attributes.as_ref(), "uuid").map(|a| a.string.as_deref()) {
                Some(Some(uuid)) if !uuid.is_empty() => {
                    // The UUID goes into a claim's CEL selector: only NVML's form is safe there.
                    if let Err(e) = crate::controller::claim::check_uuid(uuid) {
                        out.push(Problem::new(at("attributes.uuid"), e.to_string()));
                    } else if let Some(j) = uuids.insert(uuid, i) {
                        out.push(Problem::new(
                            at("attributes.uuid"),
                            format!("{uuid} is also the UUID of spec.devices[{j}]"),
                        ));
                    }
                }
                _ => out.push(Problem::new(
                    at("attributes.uuid"),
                    "a GPU of the NVIDIA driver (type \"gpu\") must carry its NVML UUID as a string attribute `uuid`",
                )),
            }
        }
    }
    out
}

/// An attribute of the NVIDIA driver's domain, written with or without the domain (an
/// unqualified name is in the driver's domain: v1.34 resource/v1 types.go, `QualifiedName`).
fn nvidia_attribute<'a>(
    attributes: Option<&'a BTreeMap<String, DeviceAttribute>>,
    name: &str,
) -> Option<&'a DeviceAttribute> {
    let attributes = attributes?;
    attributes
        .get(name)
        .or_else(|| attributes.get(&format!("{NVIDIA_DRA_DRIVER}/{name}")))
}

/// Across a fleet file: a GPU the NVIDIA driver publishes on one node but a GpuNode of another
/// node reports is no machine (UUIDs are unique per GPU), and a slice named twice is one
/// object the file repeats. Returns `(name, problem)` per slice.
pub fn slices_in_fleet(gpunodes: &[GpuNode], slices: &[ResourceSlice]) -> Vec<(String, Problem)> {
    let mut out = Vec::new();
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for g in gpunodes {
        let name = g.metadata.name.as_deref().unwrap_or("");
        for gpu in g.status.iter().flat_map(|s| s.gpus.iter()) {
            owner.insert(gpu.uuid.as_str(), name);
        }
    }
    let mut seen = BTreeSet::new();
    for s in slices {
        let name = s.metadata.name.clone().unwrap_or_default();
        if !name.is_empty() && !seen.insert(name.clone()) {
            out.push((
                name.clone(),
                Problem::new("metadata.name", "appears twice in the fleet"),
            ));
        }
        if s.spec.driver != NVIDIA_DRA_DRIVER {
            continue;
        }
        let Some(node) = s.spec.node_name.as_deref() else {
            continue;
        };
        for (i, d) in s.spec.devices.iter().flatten().enumerate() {
            let Some(uuid) =
                nvidia_attribute(d.attributes.as_ref(), "uuid").and_then(|a| a.string.as_deref())
            else {
                continue;
            };
            if let Some(other) = owner.get(uuid)
                && *other != node
            {
                out.push((
                    name.clone(),
                    Problem::new(
                        format!("spec.devices[{i}].attributes.uuid"),
                        format!(
                            "GPU {uuid} is published on node {node} but reported by GpuNode {other}"
                        ),
                    ),
                ));
            }
        }
    }
    out
}
