//! The ResolveModel stage: the architecture of a deployment's model, from the inline spec, the
//! ConfigMap it names (read through the API), the built-in catalog, or the Hugging Face Hub.
//!
//! Two kinds of failure: the model is *invalid* (bad config.json, gated without a token, no
//! such model) and retrying cannot help, so it becomes the decision's InvalidModel path; or the
//! source is *unavailable* (Hub outage, ConfigMap or Secret not created yet — GitOps tools apply
//! in any order), which is transient and requeued with backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

use crate::api::VllmDeployment;
use crate::model::Architecture;
use crate::model::hub::{HubClient, HubError};
use crate::model::resolve::resolve_local;

/// How long a permanent Hub failure (404, 403, bad JSON) is remembered before asking again.
const FAILURE_TTL: Duration = Duration::from_secs(300);

/// The architecture, or why the model is invalid.
pub type Resolved = Result<Arc<Architecture>, String>;

#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("ConfigMap {namespace}/{name} (spec.model.configMapRef) does not exist yet")]
    ConfigMapMissing { namespace: String, name: String },
    #[error("Secret {namespace}/{name} (spec.model.hubTokenSecretRef) does not exist yet")]
    SecretMissing { namespace: String, name: String },
    #[error("read {what}: {source}")]
    Api { what: String, source: kube::Error },
    #[error("Hugging Face Hub: {0}")]
    Hub(HubError),
}

type HubKey = (String, String, Option<(String, String)>);

/// Caches Hub answers per (model, revision, token Secret): config.json of a revision does not
/// change, and the Hub is not asked once per reconcile.
pub struct ModelResolver {
    hub: HubClient,
    cache: Mutex<HashMap<HubKey, (Resolved, Instant)>>,
}

impl ModelResolver {
    pub fn new(hub: HubClient) -> Self {
        ModelResolver {
            hub,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn resolve(
        &self,
        client: &Client,
        dep: &VllmDeployment,
    ) -> Result<Resolved, Unavailable> {
        let spec = &dep.spec.model;
        let namespace = dep.metadata.namespace.clone().unwrap_or_default();
        let mut config_text = None;
        if let (None, Some(r)) = (&spec.architecture, &spec.config_map_ref) {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
            let cm = api
                .get_opt(&r.name)
                .await
                .map_err(|source| Unavailable::Api {
                    what: format!("ConfigMap {namespace}/{}", r.name),
                    source,
                })?
                .ok_or_else(|| Unavailable::ConfigMapMissing {
                    namespace: namespace.clone(),
                    name: r.name.clone(),
                })?;
            match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                Some(text) => config_text = Some(text.clone()),
                None => {
                    return Ok(Err(format!(
                        "ConfigMap {namespace}/{} has no key {:?} (spec.model.configMapRef.key)",
                        r.name, r.key
                    )));
                }
            }
        }
        match resolve_local(spec, config_text.as_deref()) {
            Ok(Some((arch, _))) => return Ok(Ok(Arc::new(arch))),
            Ok(None) => {}
            Err(e) => return Ok(Err(e.to_string())),
        }

        let revision = spec.revision.clone().unwrap_or_else(|| "main".into());
        let secret = spec
            .hub_token_secret_ref
            .as_ref()
            .map(|s| (s.name.clone(), s.key.clone()));
        let key: HubKey = (spec.name.clone(), revision.clone(), secret.clone());
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let token = match &secret {
            Some((name, key)) => match read_token(client, &namespace, name, key).await? {
                Ok(token) => token,
                Err(why) => return Ok(Err(why)),
            },
            None => None,
        };
        let hub = HubClient {
            token,
            ..self.hub.clone()
        };
        let resolved = match hub.fetch_config(&spec.name, &revision).await {
            Ok(config) => Architecture::from_hf_config(&config)
                .map(Arc::new)
                .map_err(|e| {
                    format!(
                        "config.json of {} from the Hugging Face Hub: {e}",
                        spec.name
                    )
                }),
            Err(e) if transient(&e) => return Err(Unavailable::Hub(e)),
            Err(e) => Err(e.to_string()),
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, (resolved.clone(), Instant::now()));
        }
        Ok(resolved)
    }

    fn cached(&self, key: &HubKey) -> Option<Resolved> {
        let cache = self.cache.lock().ok()?;
        let (resolved, at) = cache.get(key)?;
        (resolved.is_ok() || at.elapsed() < FAILURE_TTL).then(|| resolved.clone())
    }
}

/// A Hub error that retrying can fix.
fn transient(e: &HubError) -> bool {
    match e {
        HubError::Unreachable { .. } | HubError::Timeout(..) => true,
        HubError::Status { status, .. } => *status == 429 || *status >= 500,
        HubError::Url { .. }
        | HubError::Forbidden { .. }
        | HubError::NotFound { .. }
        | HubError::Json { .. } => false,
    }
}

/// The token in the Secret's key; `None` when the key is absent (the Hub then says 401).
/// `Ok(Err(..))`: the controller may not read Secrets, which retrying cannot fix.
async fn read_token(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Result<Option<String>, String>, Unavailable> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match api.get_opt(name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err(Unavailable::SecretMissing {
                namespace: namespace.into(),
                name: name.into(),
            });
        }
        Err(kube::Error::Api(s)) if s.code == 403 => {
            return Ok(Err(format!(
                "the controller may not read Secret {namespace}/{name} (spec.model.hubTokenSecretRef): install the chart with controller.rbac.readSecrets=true, or give spec.model.architecture or configMapRef"
            )));
        }
        Err(source) => {
            return Err(Unavailable::Api {
                what: format!("Secret {namespace}/{name}"),
                source,
            });
        }
    };
    Ok(Ok(secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_transient_and_refusals_are_not() {
        assert!(transient(&HubError::Timeout(
            Duration::from_secs(1),
            "u".into()
        )));
        assert!(transient(&HubError::Status {
            model: "m".into(),
            status: 503
        }));
        assert!(transient(&HubError::Status {
            model: "m".into(),
            status: 429
        }));
        assert!(!transient(&HubError::NotFound { model: "m".into() }));
        assert!(!transient(&HubError::Forbidden {
            model: "m".into(),
            status: 403
        }));
    }
}
