//! The fleet as the planner sees it: GpuNode reports (and Node objects when present), with
//! stale reports and unschedulable nodes marked, in plain structs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint};
use k8s_openapi::api::resource::v1::{Device, ResourceSlice};
use k8s_openapi::jiff::Timestamp;

use crate::api::{GpuNode, PodRef, Sharing};

/// One GPU (or MIG device) of a node.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub product: String,
    pub compute_capability: Option<(u32, u32)>,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub reserved_bytes: u64,
    /// The pod the kubelet assigned this GPU to, when the agent knows it.
    pub allocated_to: Option<PodRef>,
    /// Bytes used by processes that belong to no known pod (outside Kubernetes).
    pub foreign_bytes: u64,
    pub processes: Vec<(u32, u64, Option<PodRef>)>,
    /// A MIG slice: `nvidia.com/gpu` does not hand it out.
    pub mig_device: bool,
    /// The device the NVIDIA DRA driver publishes for this GPU on this node, when it does
    /// (see [`Fleet::attach_slices`]): a ResourceClaim can then ask for exactly this GPU.
    pub dra: Option<DraDevice>,
}

/// The NVIDIA DRA driver's name: `DriverName = "gpu.nvidia.com"` in
/// NVIDIA/k8s-dra-driver-gpu v0.4.0 `cmd/gpu-kubelet-plugin/main.go`.
pub const NVIDIA_DRA_DRIVER: &str = "gpu.nvidia.com";

/// A device as resource.k8s.io names it: the tuple (driver, pool, device) is its unique
/// identifier (Kubernetes v1.34 `staging/src/k8s.io/api/resource/v1/types.go`, ResourceSlice).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DraDevice {
    pub driver: String,
    pub pool: String,
    pub device: String,
}

/// One node of the fleet.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetNode {
    pub name: String,
    pub sharing: Sharing,
    pub gpus: Vec<Gpu>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// `nvidia.com/gpu` allocatable on the Node object, when known.
    pub allocatable_gpus: Option<u32>,
    /// `ephemeral-storage` allocatable on the Node object, in bytes, when known: what the
    /// scheduler admits ephemeral-storage requests against.
    pub allocatable_ephemeral_bytes: Option<u64>,
    /// Why no new replica may go here (stale report, cordoned, NVML failing), if any.
    pub ineligible: Option<String>,
    /// When the report was taken, on this process's clock where it saw the report change
    /// (the controller), else the agent's `observedAt` (files). The ledger compares it with
    /// reservation times, which are on this process's clock.
    pub observed_at: Option<Timestamp>,
}

/// Every node with a GpuNode report, sorted by name, and the cluster's memory profiles.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fleet {
    pub nodes: Vec<FleetNode>,
    /// MemoryProfiles: measured figures the planner uses in place of its estimate.
    pub profiles: crate::profile::Profiles,
}

/// Parse `"8.9"` into `(8, 9)`.
pub fn parse_compute_capability(text: &str) -> Option<(u32, u32)> {
    let (a, b) = text.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn format_age(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// When this process first saw each agent report (`observedAt` value), on its own clock: the
/// controller's staleness rule. `observedAt` is the agent's clock; compared with the
/// controller's, a node whose clock runs ahead looks fresh long after its agent died, and one
/// whose clock runs behind looks stale while it reports. A *change* of the report is
/// clock-independent, as client-go judges Lease records by when it observed them change
/// (staging/src/k8s.io/client-go/tools/leaderelection/leaderelection.go, `observedTime`).
/// `plan` and `simulate` keep the file rule (observedAt against the fleet's time).
#[derive(Clone, Debug, Default)]
pub struct ReportsSeen {
    seen: HashMap<String, (String, Timestamp)>,
}

impl ReportsSeen {
    /// Record the reports as they are now; a changed or new report counts as seen at `now`.
    pub fn observe<'a>(&mut self, gpunodes: impl Iterator<Item = &'a GpuNode>, now: Timestamp) {
        let mut present = HashSet::new();
        for g in gpunodes {
            let Some(name) = g.metadata.name.as_deref() else {
                continue;
            };
            let observed = g.status.as_ref().map_or("", |s| s.observed_at.as_str());
            match self.seen.get(name) {
                Some((o, _)) if o == observed => {}
                _ => {
                    self.seen
                        .insert(name.to_string(), (observed.to_string(), now));
                }
            }
            present.insert(name);
        }
        self.seen.retain(|n, _| present.contains(n.as_str()));
    }

    /// When the current report of `node` was first seen.
    pub fn seen_at(&self, node: &str) -> Option<Timestamp> {
        self.seen.get(node).map(|(_, t)| *t)
    }
}

/// A string attribute of a device of the NVIDIA driver, by its name in the driver's domain,
/// written with or without the domain.
fn device_string_attribute<'d>(d: &'d Device, name: &str) -> Option<&'d str> {
    let attrs = d.attributes.as_ref()?;
    let value = attrs.get(name).or_else(|| {
        attrs
            .iter()
            .find(|(k, _)| {
                k.strip_prefix(NVIDIA_DRA_DRIVER)
                    .and_then(|r| r.strip_prefix('/'))
                    == Some(name)
            })
            .map(|(_, v)| v)
    })?;
    value.string.as_deref()
}

impl Fleet {
    /// Build the fleet from agent reports and (optionally) Node objects. `now` and
    /// `stale_after` decide which reports are too old to trust.
    pub fn from_objects(
        gpunodes: &[GpuNode],
        nodes: &[Node],
        now: Timestamp,
        stale_after: Duration,
    ) -> Fleet {
        Self::from_refs(gpunodes.iter(), nodes.iter(), now, stale_after)
    }

    /// As [`Fleet::from_objects`], over borrowed objects (a reflector store's `Arc`s), so the
    /// caller need not clone thousands of GpuNodes.
    pub fn from_refs<'a>(
        gpunodes: impl Iterator<Item = &'a GpuNode>,
        nodes: impl Iterator<Item = &'a Node>,
        now: Timestamp,
        stale_after: Duration,
    ) -> Fleet {
        Self::from_refs_seen(gpunodes, nodes, now, stale_after, None)
    }

    /// As [`Fleet::from_refs`]; with `seen`, a report's age counts from when this process saw
    /// it change (the controller), else from its `observedAt` (files).
    pub fn from_refs_seen<'a>(
        gpunodes: impl Iterator<Item = &'a GpuNode>,
        nodes: impl Iterator<Item = &'a Node>,
        now: Timestamp,
        stale_after: Duration,
        seen: Option<&ReportsSeen>,
    ) -> Fleet {
        let by_name: BTreeMap<&str, &Node> = nodes
            .filter_map(|n| n.metadata.name.as_deref().map(|name| (name, n)))
            .collect();
        let mut out: Vec<FleetNode> = gpunodes
            .filter_map(|g| {
                let name = g.metadata.name.clone()?;
                let status = g.status.as_ref();
                let mut ineligible = None;
                let observed_at = status.and_then(|s| s.observed_at.parse::<Timestamp>().ok());
                match (status, observed_at) {
                    (None, _) => {
                        ineligible = Some("the node agent has not reported yet".to_string())
                    }
                    (Some(s), None) => {
                        ineligible =
                            Some(format!("report time {:?} is not RFC 3339", s.observed_at))
                    }
                    (Some(_), Some(t)) => {
                        let basis = seen.and_then(|s| s.seen_at(&name)).unwrap_or(t);
                        let age = now.duration_since(basis);
                        let age = Duration::from_secs(age.as_secs().max(0) as u64);
                        if age > stale_after {
                            // No age in the text: a message that changes every second would
                            // rewrite the status every reconcile.
                            ineligible = Some(format!(
                                "agent report is stale (last at {t}, more than {} ago)",
                                format_age(stale_after)
                            ));
                        }
                    }
                }
                if let Some(s) = status
                    && let Some(c) = s
                        .conditions
                        .iter()
                        .find(|c| c.type_ == "NvmlHealthy" && c.status == "False")
                {
                    ineligible.get_or_insert_with(|| {
                        format!("NVML is failing on the node: {}", c.message)
                    });
                }
                // Reports from the API server were checked by nobody: one no GPU could produce
                // (free above total, an index twice) makes the node ineligible instead of
                // planned on, by the rules `plan` and `simulate` apply to fleet files.
                if let Some(p) = crate::validate::gpunode(g).into_iter().next() {
                    ineligible.get_or_insert_with(|| format!("its GpuNode report is invalid: {p}"));
                }
                let node = by_name.get(name.as_str());
                let mut labels = BTreeMap::new();
                let mut taints = Vec::new();
                let mut allocatable_gpus = None;
                let mut allocatable_ephemeral_bytes = None;
                if let Some(n) = node {
                    labels = n.metadata.labels.clone().unwrap_or_default();
                    if let Some(spec) = &n.spec {
                        taints = spec.taints.clone().unwrap_or_default();
                        if spec.unschedulable == Some(true) {
                            ineligible.get_or_insert_with(|| {
                                "node is cordoned (unschedulable)".to_string()
                            });
                        }
                    }
                    let allocatable = n.status.as_ref().and_then(|s| s.allocatable.as_ref());
                    allocatable_gpus = allocatable
                        .and_then(|a| a.get("nvidia.com/gpu"))
                        .and_then(|q| q.0.parse().ok());
                    allocatable_ephemeral_bytes = allocatable
                        .and_then(|a| a.get("ephemeral-storage"))
                        .and_then(|q| crate::quantity::parse_bytes(&q.0));
                }
                let gpus = status
                    .map(|s| {
                        s.gpus
                            .iter()
                            .map(|g| {
                                let foreign_bytes = g
                                    .processes
                                    .iter()
                                    .filter(|p| p.pod.is_none())
                                    .fold(0u64, |sum, p| sum.saturating_add(p.used_bytes));
                                Gpu {
                                    index: g.index,
                                    uuid: g.uuid.clone(),
                                    product: g.product.clone(),
                                    compute_capability: parse_compute_capability(
                                        &g.compute_capability,
                                    ),
                                    total_bytes: g.memory.total_bytes,
                                    free_bytes: g.memory.free_bytes,
                                    reserved_bytes: g.memory.reserved_bytes,
                                    allocated_to: g.allocated_to.clone(),
                                    foreign_bytes,
                                    processes: g
                                        .processes
                                        .iter()
                                        .map(|p| (p.pid, p.used_bytes, p.pod.clone()))
                                        .collect(),
                                    mig_device: g.parent_uuid.is_some(),
                                    dra: None,
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                // The agent reports the device plugin's sharing; the Node's feature-discovery
                // labels say the same when the agent is older than that report.
                let sharing = match status.map(|s| s.sharing).unwrap_or_default() {
                    Sharing::Exclusive if node.is_some() => {
                        crate::api::NodeSharing::from_labels(&labels).sharing
                    }
                    reported => reported,
                };
                let observed_at = seen
                    .and_then(|s| s.seen_at(&name))
                    .filter(|_| observed_at.is_some())
                    .or(observed_at);
                Some(FleetNode {
                    name,
                    sharing,
                    gpus,
                    labels,
                    taints,
                    allocatable_gpus,
                    allocatable_ephemeral_bytes,
                    ineligible,
                    observed_at,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Fleet {
            nodes: out,
            profiles: Default::default(),
        }
    }

    /// The same fleet with `profiles` known to the planner.
    pub fn with_profiles(mut self, profiles: crate::profile::Profiles) -> Fleet {
        self.profiles = profiles;
        self
    }

    /// Match the devices the NVIDIA DRA driver publishes in ResourceSlices to the GPUs of the
    /// agent reports, by UUID, and set [`Gpu::dra`] on those that match (and clear it on the
    /// others). Pure: the controller passes its ResourceSlice store, `plan` and `simulate` the
    /// slices of the fleet file.
    ///
    /// What is matched, and where each rule comes from:
    /// - only slices of [`NVIDIA_DRA_DRIVER`] with `spec.nodeName` set: the driver's kubelet
    ///   plugin publishes one pool per node, named after the node, through the kubelet plugin
    ///   helper, which sets `nodeName` (NVIDIA/k8s-dra-driver-gpu v0.4.0
    ///   `cmd/gpu-kubelet-plugin/driver.go`, `generateCombinedResourceSlices` /
    ///   `generateSplitResourceSlices`: `Pools: {nodeName: {Slices: ...}}`, one slice per GPU,
    ///   or one per GPU plus one of shared counters); the node must match the GpuNode's name;
    /// - a pool may span several slices; only slices with the highest `spec.pool.generation` of
    ///   their pool count ("A consumer must only use ResourceSlices with the highest generation
    ///   number and ignore all others": Kubernetes v1.34
    ///   `staging/src/k8s.io/api/resource/v1/types.go`, ResourceSlice and
    ///   ResourcePool.generation). A pool still being rewritten (fewer slices of the newest
    ///   generation than `resourceSliceCount`) contributes the devices it has: each is matched
    ///   on its own, and a GPU not yet published stays on the device-plugin path;
    /// - only full GPUs: the driver gives them attribute `type` = `"gpu"` and `uuid` = the NVML
    ///   UUID, and names them `gpu-<minor>` (v0.4.0 `cmd/gpu-kubelet-plugin/deviceinfo.go`,
    ///   `GpuInfo.Attributes`, `CanonicalName`; `types.go` `GpuDeviceType = "gpu"`). MIG devices
    ///   (`type` `"mig"`) are not matched: MIG stays on the old path;
    /// - an attribute name without a domain is in the driver's domain (types.go,
    ///   QualifiedName), so `uuid` and `gpu.nvidia.com/uuid` are the same attribute.
    pub fn attach_slices<'a>(&mut self, slices: impl Iterator<Item = &'a ResourceSlice>) {
        // Newest generation per pool, and the slices of the driver on some node.
        let mut ours: Vec<(&'a str, &'a ResourceSlice)> = Vec::new();
        let mut newest: HashMap<&'a str, i64> = HashMap::new();
        for s in slices {
            if s.spec.driver != NVIDIA_DRA_DRIVER {
                continue;
            }
            let Some(node) = s.spec.node_name.as_deref() else {
                continue;
            };
            let g = newest.entry(s.spec.pool.name.as_str()).or_insert(i64::MIN);
            *g = (*g).max(s.spec.pool.generation);
            ours.push((node, s));
        }
        // (node, uuid) -> (pool, device name), newest generation only.
        let mut published: HashMap<(&'a str, &'a str), (&'a str, &'a str)> = HashMap::new();
        for (node, s) in ours {
            let pool = s.spec.pool.name.as_str();
            if newest.get(pool) != Some(&s.spec.pool.generation) {
                continue;
            }
            for d in s.spec.devices.iter().flatten() {
                if device_string_attribute(d, "type") != Some("gpu") {
                    continue;
                }
                if let Some(uuid) = device_string_attribute(d, "uuid") {
                    published.insert((node, uuid), (pool, d.name.as_str()));
                }
            }
        }
        for n in &mut self.nodes {
            for g in &mut n.gpus {
                g.dra = if g.mig_device {
                    None
                } else {
                    published
                        .get(&(n.name.as_str(), g.uuid.as_str()))
                        .map(|(pool, device)| DraDevice {
                            driver: NVIDIA_DRA_DRIVER.to_string(),
                            pool: pool.to_string(),
                            device: device.to_string(),
                        })
                };
            }
        }
    }

    /// Whether any GPU of the fleet is published by the DRA driver.
    pub fn has_dra(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| n.gpus.iter().any(|g| g.dra.is_some()))
    }

    pub fn node(&self, name: &str) -> Option<&FleetNode> {
        self.nodes
            .binary_search_by(|n| n.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }

    pub fn gpu_count(&self) -> usize {
        self.nodes.iter().map(|n| n.gpus.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GpuNodeStatus;

    fn report(observed_at: Timestamp) -> GpuNode {
        let mut g = GpuNode::new("gpu-a", Default::default());
        g.status = Some(GpuNodeStatus {
            node_name: "gpu-a".into(),
            observed_at: observed_at.to_string(),
            ..Default::default()
        });
        g
    }

    fn stale(fleet: &Fleet) -> bool {
        fleet.nodes[0]
            .ineligible
            .as_deref()
            .is_some_and(|w| w.contains("stale"))
    }

    const STALE_AFTER: Duration = Duration::from_secs(90);

    #[test]
    fn the_controller_judges_age_from_when_it_saw_the_report_change() {
        let t0: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        let at = |s: i64| t0 + k8s_openapi::jiff::SignedDuration::from_secs(s);
        let build = |g: &GpuNode, now, seen: Option<&ReportsSeen>| {
            Fleet::from_refs_seen(
                std::iter::once(g),
                std::iter::empty(),
                now,
                STALE_AFTER,
                seen,
            )
        };
        let mut seen = ReportsSeen::default();

        // The agent's clock is an hour ahead and its agent died: by observedAt the report looks
        // fresh for an hour; by what the controller saw, it is stale after 90 s.
        let ahead = report(at(3600));
        seen.observe(std::iter::once(&ahead), at(0));
        assert!(!stale(&build(&ahead, at(600), None)), "the file rule");
        assert!(!stale(&build(&ahead, at(90), Some(&seen))));
        seen.observe(std::iter::once(&ahead), at(91));
        assert!(stale(&build(&ahead, at(91), Some(&seen))));

        // The agent's clock is an hour behind but it keeps reporting: fresh, though observedAt
        // is an hour old.
        let mut seen = ReportsSeen::default();
        for step in 0..5 {
            let behind = report(at(step * 30 - 3600));
            seen.observe(std::iter::once(&behind), at(step * 30));
            assert!(stale(&build(&behind, at(step * 30), None)), "the file rule");
            assert!(!stale(&build(&behind, at(step * 30), Some(&seen))));
        }
    }

    #[test]
    fn a_reservation_settles_on_a_report_seen_after_it_whatever_the_agent_clock() {
        use crate::api::{GpuInfo, PodRef};
        use crate::plan::{Ledger, Released, Reservation};
        let t0: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        let at = |s: i64| t0 + k8s_openapi::jiff::SignedDuration::from_secs(s);
        let pod = PodRef {
            namespace: "ml".into(),
            name: "llm-0-h".into(),
        };
        let mut ledger = Ledger::default();
        ledger.reserve(Reservation {
            pod: pod.clone(),
            node: "gpu-a".into(),
            gpus: 1,
            shared_bytes: 0,
            exact_gpus: Vec::new(),
            created_at: at(0),
        });
        // Ten seconds later the agent, whose clock is an hour behind, shows the pod on its GPU.
        let mut g = report(at(10 - 3600));
        g.status.as_mut().unwrap().gpus = vec![GpuInfo {
            uuid: "GPU-0".into(),
            allocated_to: Some(pod.clone()),
            ..Default::default()
        }];
        let mut seen = ReportsSeen::default();
        seen.observe(std::iter::once(&g), at(10));
        let by_file = Fleet::from_refs_seen(
            std::iter::once(&g),
            std::iter::empty(),
            at(10),
            STALE_AFTER,
            None,
        );
        assert!(
            ledger
                .clone()
                .settle(&by_file, at(10), STALE_AFTER)
                .is_empty()
        );
        let by_controller = Fleet::from_refs_seen(
            std::iter::once(&g),
            std::iter::empty(),
            at(10),
            STALE_AFTER,
            Some(&seen),
        );
        assert_eq!(
            ledger.settle(&by_controller, at(10), STALE_AFTER),
            [(pod, Released::Reported)]
        );
    }

    #[test]
    fn a_node_labelled_time_sliced_is_shared_even_if_its_agent_does_not_say() {
        let t0: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        let g = report(t0);
        let mut node = Node::default();
        node.metadata.name = Some("gpu-a".into());
        node.metadata.labels = Some(
            [
                (
                    "nvidia.com/gpu.sharing-strategy".to_string(),
                    "mps".to_string(),
                ),
                ("nvidia.com/gpu.replicas".to_string(), "2".to_string()),
            ]
            .into(),
        );
        let fleet = Fleet::from_objects(std::slice::from_ref(&g), &[node], t0, STALE_AFTER);
        assert_eq!(fleet.nodes[0].sharing, Sharing::Shared);
        let alone = Fleet::from_objects(&[g], &[], t0, STALE_AFTER);
        assert_eq!(alone.nodes[0].sharing, Sharing::Exclusive);
    }

    /// A ResourceSlice as the NVIDIA driver publishes it: `gpu-<minor>` devices with `type` and
    /// `uuid` attributes, in the pool named after the node.
    fn slice(
        node: &str,
        pool: &str,
        generation: i64,
        devices: &[(&str, &str, &str)],
    ) -> ResourceSlice {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"name": format!("{node}-{generation}-{}", devices.len())},
            "spec": {
                "driver": NVIDIA_DRA_DRIVER,
                "nodeName": node,
                "pool": {"name": pool, "generation": generation, "resourceSliceCount": 2},
                "devices": devices.iter().map(|(name, type_, uuid)| serde_json::json!({
                    "name": name,
                    "attributes": {"type": {"string": type_}, "uuid": {"string": uuid}},
                })).collect::<Vec<_>>(),
            }
        }))
        .unwrap()
    }

    fn two_gpus(t0: Timestamp) -> Fleet {
        use crate::api::GpuInfo;
        let mut g = report(t0);
        g.status.as_mut().unwrap().gpus = (0..3)
            .map(|i| GpuInfo {
                index: i,
                uuid: format!("GPU-{i}"),
                parent_uuid: (i == 2).then(|| "GPU-0".to_string()),
                ..Default::default()
            })
            .collect();
        Fleet::from_objects(&[g], &[], t0, STALE_AFTER)
    }

    #[test]
    fn slices_attach_by_uuid_on_the_same_node_newest_generation_only() {
        let t0: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        let mut fleet = two_gpus(t0);
        let dev = |d: &str| DraDevice {
            driver: NVIDIA_DRA_DRIVER.into(),
            pool: "gpu-a".into(),
            device: d.into(),
        };
        // A pool of two slices at generation 2, plus a stale slice of generation 1 that still
        // lists GPU-1 under another name, a slice of another node listing GPU-1, another
        // driver, and a MIG device carrying the MIG GPU's UUID.
        let mut other_driver = slice("gpu-a", "x", 9, &[("gpu-1", "gpu", "GPU-1")]);
        other_driver.spec.driver = "example.com".into();
        let slices = [
            slice("gpu-a", "gpu-a", 2, &[("gpu-0", "gpu", "GPU-0")]),
            slice("gpu-a", "gpu-a", 1, &[("gpu-7", "gpu", "GPU-1")]),
            slice("gpu-a", "gpu-a", 2, &[("gpu-0-mig-1", "mig", "GPU-2")]),
            slice("gpu-b", "gpu-b", 5, &[("gpu-1", "gpu", "GPU-1")]),
            other_driver,
        ];
        fleet.attach_slices(slices.iter());
        let dra: Vec<_> = fleet.nodes[0].gpus.iter().map(|g| g.dra.clone()).collect();
        assert_eq!(dra, [Some(dev("gpu-0")), None, None]);
        assert!(fleet.has_dra());

        // The pool moves to generation 3 with GPU-1 published: generation 2 no longer counts.
        let newer = [
            slice("gpu-a", "gpu-a", 2, &[("gpu-0", "gpu", "GPU-0")]),
            slice("gpu-a", "gpu-a", 3, &[("gpu-1", "gpu", "GPU-1")]),
        ];
        fleet.attach_slices(newer.iter());
        let dra: Vec<_> = fleet.nodes[0].gpus.iter().map(|g| g.dra.clone()).collect();
        assert_eq!(dra, [None, Some(dev("gpu-1")), None]);

        // The fully qualified attribute name is the same attribute.
        let mut qualified = slice("gpu-a", "gpu-a", 1, &[]);
        qualified.spec.devices = serde_json::from_value(serde_json::json!([{
            "name": "gpu-0",
            "attributes": {
                "gpu.nvidia.com/type": {"string": "gpu"},
                "gpu.nvidia.com/uuid": {"string": "GPU-0"},
            },
        }]))
        .unwrap();
        fleet.attach_slices(std::iter::once(&qualified));
        assert_eq!(fleet.nodes[0].gpus[0].dra, Some(dev("gpu-0")));
        fleet.attach_slices(std::iter::empty());
        assert!(!fleet.has_dra());
    }

    #[test]
    fn reports_of_deleted_nodes_are_forgotten() {
        let t0: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        let mut seen = ReportsSeen::default();
        seen.observe(std::iter::once(&report(t0)), t0);
        assert_eq!(seen.seen_at("gpu-a"), Some(t0));
        seen.observe(std::iter::empty(), t0);
        assert_eq!(seen.seen_at("gpu-a"), None);
    }
}
