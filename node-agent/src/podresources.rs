//! Which pod the kubelet gave each GPU (PodResources API v1 over its Unix socket), and which
//! GPU processes run in a pod (`/proc/<pid>/cgroup`).
//!
//! PodResources names pods by namespace/name and devices by ID (GPU or MIG UUIDs), but not by
//! pod UID, while a process's cgroup names only the UID. Resolving UIDs would need pods
//! list/watch RBAC, which the agent does not have. So: a process whose cgroup is a pod's, on a
//! GPU assigned to exactly one pod, belongs to that pod; otherwise its `pod` stays empty.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Endpoint, Uri};
use vllm_operator::api::{GpuInfo, PodRef};

/// Hand-written subset of `k8s.io/kubelet/pkg/apis/podresources/v1/api.proto`.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodResourcesRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodResourcesResponse {
        #[prost(message, repeated, tag = "1")]
        pub pod_resources: Vec<PodResources>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodResources {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub namespace: String,
        #[prost(message, repeated, tag = "3")]
        pub containers: Vec<ContainerResources>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerResources {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, repeated, tag = "2")]
        pub devices: Vec<ContainerDevices>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerDevices {
        #[prost(string, tag = "1")]
        pub resource_name: String,
        #[prost(string, repeated, tag = "2")]
        pub device_ids: Vec<String>,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PodResourcesError {
    #[error("connecting to {path}: {source}")]
    Connect {
        path: String,
        source: tonic::transport::Error,
    },
    #[error("PodResourcesLister/List on {path}: {source}")]
    List { path: String, source: tonic::Status },
    #[error("PodResourcesLister/List on {path}: no answer within {after:?}")]
    Timeout {
        path: String,
        after: std::time::Duration,
    },
}

/// `device ID -> pods` for every device the kubelet assigned.
pub type Allocations = BTreeMap<String, Vec<PodRef>>;

/// Calls `v1.PodResourcesLister/List` on the kubelet's socket.
pub async fn list(socket: &Path) -> Result<proto::ListPodResourcesResponse, PodResourcesError> {
    let path: PathBuf = socket.to_path_buf();
    let shown = socket.display().to_string();
    // The URI is required by tonic but unused: the connector always dials the socket.
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| PodResourcesError::Connect {
            path: shown.clone(),
            source,
        })?;
    let mut grpc = tonic::client::Grpc::new(channel);
    let list_err = |source| PodResourcesError::List {
        path: shown.clone(),
        source,
    };
    grpc.ready()
        .await
        .map_err(|e| list_err(tonic::Status::unavailable(e.to_string())))?;
    let method = http::uri::PathAndQuery::from_static("/v1.PodResourcesLister/List");
    let codec = tonic_prost::ProstCodec::<
        proto::ListPodResourcesRequest,
        proto::ListPodResourcesResponse,
    >::default();
    let response = grpc
        .unary(
            tonic::Request::new(proto::ListPodResourcesRequest {}),
            method,
            codec,
        )
        .await
        .map_err(list_err)?;
    Ok(response.into_inner())
}

/// Device IDs to pods. Time-sliced device plugins append `::N` to the UUID; that is stripped.
pub fn allocations(response: &proto::ListPodResourcesResponse) -> Allocations {
    let mut out = Allocations::new();
    for pod in &response.pod_resources {
        let pod_ref = PodRef {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
        };
        for device in pod.containers.iter().flat_map(|c| &c.devices) {
            for id in &device.device_ids {
                let uuid = id.split("::").next().unwrap_or(id).to_string();
                let pods = out.entry(uuid).or_default();
                if !pods.contains(&pod_ref) {
                    pods.push(pod_ref.clone());
                }
            }
        }
    }
    out
}

/// The pod UID in a `/proc/<pid>/cgroup` file, dashed, for both cgroupfs
/// (`/kubepods/burstable/pod<uid>/…`) and systemd (`kubepods-burstable-pod<uid_>.slice`) forms.
pub fn pod_uid_from_cgroup(contents: &str) -> Option<String> {
    for line in contents.lines() {
        let path = line.rsplit(':').next().unwrap_or(line);
        if !path.contains("kubepods") {
            continue;
        }
        for segment in path.split('/') {
            let segment = segment.strip_suffix(".slice").unwrap_or(segment);
            // systemd: kubepods-burstable-pod<uid>; cgroupfs: pod<uid>
            let tail = segment
                .rsplit('-')
                .next()
                .filter(|_| segment.starts_with("kubepods"));
            let candidate = match tail {
                Some(t) => t.strip_prefix("pod"),
                None => segment.strip_prefix("pod"),
            };
            if let Some(uid) = candidate.map(|u| u.replace('_', "-"))
                && is_uid(&uid)
            {
                return Some(uid);
            }
        }
    }
    None
}

fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        && s.matches('-').count() == 4
}

/// Sets `allocatedTo` from the kubelet's assignments and `pod` on processes that run in a pod's
/// cgroup on a GPU assigned to exactly one pod.
pub fn attribute(gpus: &mut [GpuInfo], allocations: Option<&Allocations>, proc_root: &Path) {
    for gpu in gpus.iter_mut() {
        let pods = allocations.and_then(|a| a.get(&gpu.uuid));
        gpu.allocated_to = pods.and_then(|p| p.first().cloned());
        let sole = pods.filter(|p| p.len() == 1).and_then(|p| p.first());
        for process in &mut gpu.processes {
            let cgroup =
                std::fs::read_to_string(proc_root.join(process.pid.to_string()).join("cgroup"));
            let in_pod = cgroup
                .ok()
                .as_deref()
                .and_then(pod_uid_from_cgroup)
                .is_some();
            process.pod = if in_pod { sole.cloned() } else { None };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_and_systemd_forms_yield_the_dashed_uid() {
        let v1 = "12:memory:/kubepods/burstable/pod0f1e2d3c-4b5a-6978-8899-aabbccddeeff/abc123\n";
        assert_eq!(
            pod_uid_from_cgroup(v1).as_deref(),
            Some("0f1e2d3c-4b5a-6978-8899-aabbccddeeff")
        );
        let v2 = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8899_aabbccddeeff.slice/cri-containerd-1.scope\n";
        assert_eq!(
            pod_uid_from_cgroup(v2).as_deref(),
            Some("0f1e2d3c-4b5a-6978-8899-aabbccddeeff")
        );
        let guaranteed =
            "0::/kubepods.slice/kubepods-pod0f1e2d3c_4b5a_6978_8899_aabbccddeeff.slice/x.scope";
        assert!(pod_uid_from_cgroup(guaranteed).is_some());
        assert_eq!(
            pod_uid_from_cgroup("0::/user.slice/user-1000.slice/session-1.scope\n"),
            None
        );
    }

    #[test]
    fn allocations_map_uuids_to_pods_and_strip_replica_suffixes() {
        let response = proto::ListPodResourcesResponse {
            pod_resources: vec![proto::PodResources {
                name: "llama-0".into(),
                namespace: "ml".into(),
                containers: vec![proto::ContainerResources {
                    name: "vllm".into(),
                    devices: vec![proto::ContainerDevices {
                        resource_name: "nvidia.com/gpu".into(),
                        device_ids: vec!["GPU-a".into(), "GPU-b::1".into()],
                    }],
                }],
            }],
        };
        let a = allocations(&response);
        assert_eq!(a["GPU-a"][0].name, "llama-0");
        assert_eq!(a["GPU-b"][0].namespace, "ml");
    }

    #[test]
    fn only_pod_processes_on_a_solely_assigned_gpu_get_the_pod() {
        let dir = std::env::temp_dir().join(format!("vna-proc-{}", std::process::id()));
        for (pid, cg) in [
            (
                10,
                "0::/kubepods.slice/kubepods-pod0f1e2d3c_4b5a_6978_8899_aabbccddeeff.slice/x.scope",
            ),
            (11, "0::/system.slice/foo.service"),
        ] {
            std::fs::create_dir_all(dir.join(pid.to_string())).unwrap();
            std::fs::write(dir.join(pid.to_string()).join("cgroup"), cg).unwrap();
        }
        let pod = PodRef {
            namespace: "ml".into(),
            name: "llama-0".into(),
        };
        let mut gpus = vec![GpuInfo {
            uuid: "GPU-a".into(),
            processes: [10, 11, 12]
                .map(|pid| vllm_operator::api::GpuProcess {
                    pid,
                    used_bytes: 1,
                    pod: None,
                })
                .to_vec(),
            ..GpuInfo::default()
        }];
        let allocs = Allocations::from([("GPU-a".to_string(), vec![pod.clone()])]);
        attribute(&mut gpus, Some(&allocs), &dir);
        assert_eq!(gpus[0].allocated_to.as_ref(), Some(&pod));
        let pods: Vec<_> = gpus[0].processes.iter().map(|p| p.pod.clone()).collect();
        assert_eq!(pods, vec![Some(pod), None, None]);
        std::fs::remove_dir_all(dir).ok();
    }
}
