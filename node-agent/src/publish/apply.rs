//! Writing the GpuNode: create it once if absent, then server-side apply of `status`.

use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use vllm_operator::api::{GpuNode, GpuNodeSpec, GpuNodeStatus};

/// The only writer of a GpuNode's status.
pub const FIELD_MANAGER: &str = "vllm-node-agent";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("reading GpuNode {node}: {source}")]
    GetGpuNode { node: String, source: kube::Error },
    #[error("creating GpuNode {node}: {source}")]
    CreateGpuNode { node: String, source: kube::Error },
    #[error("applying GpuNode {node} status: {source}")]
    PatchStatus { node: String, source: kube::Error },
}

pub struct Publisher {
    api: Api<GpuNode>,
    node: String,
    exists: bool,
}

impl Publisher {
    pub fn new(client: Client, node: &str) -> Self {
        Self {
            api: Api::all(client),
            node: node.to_string(),
            exists: false,
        }
    }

    /// Creates `GpuNode/<node>` with an empty spec unless it is there already.
    pub async fn ensure_exists(&mut self) -> Result<(), PublishError> {
        if self.exists {
            return Ok(());
        }
        let found =
            self.api
                .get_opt(&self.node)
                .await
                .map_err(|source| PublishError::GetGpuNode {
                    node: self.node.clone(),
                    source,
                })?;
        if found.is_none() {
            let obj = GpuNode::new(&self.node, GpuNodeSpec {});
            match self.api.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                // Another agent incarnation won the race: fine.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(source) => {
                    return Err(PublishError::CreateGpuNode {
                        node: self.node.clone(),
                        source,
                    });
                }
            }
        }
        self.exists = true;
        Ok(())
    }

    /// Server-side apply of the whole status, as field manager `vllm-node-agent`.
    pub async fn apply_status(&mut self, status: &GpuNodeStatus) -> Result<(), PublishError> {
        self.ensure_exists().await?;
        let body = status_patch(status);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match self
            .api
            .patch_status(&self.node, &params, &Patch::Apply(&body))
            .await
        {
            Ok(_) => Ok(()),
            Err(source) => {
                if matches!(&source, kube::Error::Api(s) if s.code == 404) {
                    // Deleted under us: create it again on the next try.
                    self.exists = false;
                }
                Err(PublishError::PatchStatus {
                    node: self.node.clone(),
                    source,
                })
            }
        }
    }
}

/// The apply body: apiVersion and kind, and only the status.
pub fn status_patch(status: &GpuNodeStatus) -> serde_json::Value {
    json!({
        "apiVersion": "vllm-operator.io/v1alpha1",
        "kind": "GpuNode",
        "status": status,
    })
}
