//! Writing the GpuNode: read the Node once (its uid for the owner reference, its labels for the
//! GPU sharing), apply the GpuNode object owned by the Node, then server-side apply of `status`.
//! Every call has a deadline: a hung API server fails the publish instead of stalling the agent.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use vllm_operator::api::{GpuNode, GpuNodeStatus, NodeSharing};

/// The only writer of a GpuNode's status.
pub const FIELD_MANAGER: &str = "vllm-node-agent";
/// How long one API call may take. The API server gives up on a write after 34 s
/// (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go, requestTimeoutUpperBound).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the Node is read again, for a change of its GPU sharing labels.
pub const NODE_REFRESH: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("reading Node {node}: {source}")]
    GetNode { node: String, source: kube::Error },
    #[error("Node {node} does not exist: is --node-name the node's name?")]
    NodeMissing { node: String },
    #[error("Node {node} has no uid")]
    NodeUid { node: String },
    #[error("applying GpuNode {node}: {source}")]
    ApplyGpuNode { node: String, source: kube::Error },
    #[error("applying GpuNode {node} status: {source}")]
    PatchStatus { node: String, source: kube::Error },
    #[error("{call} for node {node}: no answer within {after:?}")]
    Timeout {
        call: &'static str,
        node: String,
        after: Duration,
    },
}

pub struct Publisher {
    api: Api<GpuNode>,
    nodes: Api<Node>,
    node: String,
    call_timeout: Duration,
    /// The Node's uid the GpuNode was applied with, and when the Node was last read.
    applied: Option<(String, Instant)>,
    sharing: NodeSharing,
}

impl Publisher {
    pub fn new(client: Client, node: &str) -> Self {
        Self {
            api: Api::all(client.clone()),
            nodes: Api::all(client),
            node: node.to_string(),
            call_timeout: CALL_TIMEOUT,
            applied: None,
            sharing: NodeSharing::default(),
        }
    }

    /// The deadline of every call (tests shorten it).
    pub fn with_call_timeout(mut self, after: Duration) -> Self {
        self.call_timeout = after;
        self
    }

    async fn call<T>(
        &self,
        call: &'static str,
        f: impl Future<Output = Result<T, PublishError>>,
    ) -> Result<T, PublishError> {
        tokio::time::timeout(self.call_timeout, f)
            .await
            .map_err(|_| PublishError::Timeout {
                call,
                node: self.node.clone(),
                after: self.call_timeout,
            })?
    }

    /// Reads the Node (uid, sharing labels) and applies `GpuNode/<node>` owned by it, unless
    /// done within [`NODE_REFRESH`] for the same Node.
    pub async fn ensure_exists(&mut self) -> Result<(), PublishError> {
        if self
            .applied
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < NODE_REFRESH)
        {
            return Ok(());
        }
        let node = match self.read_node().await {
            Ok(node) => node,
            // Already applied: a failed refresh of the labels must not stop the reports.
            Err(e) if self.applied.is_some() => {
                tracing::warn!(error = %e, "could not read the Node again; keeping its last labels");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let uid = node
            .metadata
            .uid
            .clone()
            .ok_or_else(|| PublishError::NodeUid {
                node: self.node.clone(),
            })?;
        self.sharing = NodeSharing::from_labels(&node.metadata.labels.unwrap_or_default());
        if self.applied.as_ref().map(|(u, _)| u.as_str()) != Some(uid.as_str()) {
            let body = object_patch(&self.node, &uid);
            let params = PatchParams::apply(FIELD_MANAGER).force();
            self.call("apply GpuNode", async {
                self.api
                    .patch(&self.node, &params, &Patch::Apply(&body))
                    .await
                    .map_err(|source| PublishError::ApplyGpuNode {
                        node: self.node.clone(),
                        source,
                    })
            })
            .await?;
        }
        self.applied = Some((uid, Instant::now()));
        Ok(())
    }

    async fn read_node(&self) -> Result<Node, PublishError> {
        self.call("get Node", async {
            self.nodes
                .get_opt(&self.node)
                .await
                .map_err(|source| PublishError::GetNode {
                    node: self.node.clone(),
                    source,
                })
        })
        .await?
        .ok_or_else(|| PublishError::NodeMissing {
            node: self.node.clone(),
        })
    }

    /// Server-side apply of the whole status, as field manager `vllm-node-agent`, with the
    /// sharing the Node's labels show.
    pub async fn apply_status(&mut self, status: &GpuNodeStatus) -> Result<(), PublishError> {
        self.ensure_exists().await?;
        let mut status = status.clone();
        self.sharing.apply_to(&mut status);
        let body = status_patch(&status);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let result = self
            .call("apply GpuNode status", async {
                self.api
                    .patch_status(&self.node, &params, &Patch::Apply(&body))
                    .await
                    .map_err(|source| PublishError::PatchStatus {
                        node: self.node.clone(),
                        source,
                    })
            })
            .await;
        if let Err(PublishError::PatchStatus {
            source: kube::Error::Api(s),
            ..
        }) = &result
            && s.code == 404
        {
            // Deleted under us: apply it again on the next try.
            self.applied = None;
        }
        result.map(|_| ())
    }
}

/// The GpuNode object itself: an empty spec and an owner reference to its Node, so that
/// garbage collection deletes it with the Node. No `blockOwnerDeletion`: setting it needs
/// `update` on `nodes/finalizers` (Kubernetes plugin/pkg/admission/gc/gc_admission.go,
/// OwnerReferencesPermissionEnforcement), and nothing needs to wait for the GpuNode.
pub fn object_patch(node: &str, node_uid: &str) -> serde_json::Value {
    json!({
        "apiVersion": "vllm-operator.io/v1alpha1",
        "kind": "GpuNode",
        "metadata": {
            "name": node,
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Node",
                "name": node,
                "uid": node_uid,
            }],
        },
        "spec": {},
    })
}

/// The apply body: apiVersion and kind, and only the status.
pub fn status_patch(status: &GpuNodeStatus) -> serde_json::Value {
    json!({
        "apiVersion": "vllm-operator.io/v1alpha1",
        "kind": "GpuNode",
        "status": status,
    })
}
