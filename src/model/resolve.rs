//! Where a VllmDeployment's model architecture comes from, in order: the inline
//! `spec.model.architecture`, the `spec.model.configMapRef` config.json, the built-in catalog,
//! and finally the Hugging Face Hub (done by the caller, which owns the network).

use serde_json::Value;

use super::arch::{Architecture, ArchitectureError};
use super::catalog;
use crate::api::ModelSpec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelSource {
    Inline,
    ConfigMap,
    Catalog,
    Hub,
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelSource::Inline => "spec.model.architecture",
            ModelSource::ConfigMap => "spec.model.configMapRef",
            ModelSource::Catalog => "the built-in catalog",
            ModelSource::Hub => "the Hugging Face Hub",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("{source_name}: {error}")]
    Invalid {
        source_name: String,
        error: ArchitectureError,
    },
    #[error("ConfigMap {name} key {key}: not valid JSON: {reason}")]
    ConfigMapJson {
        name: String,
        key: String,
        reason: String,
    },
}

/// Resolve without the network. `config_map_text` is the content of `configMapRef`'s key,
/// fetched by the caller. `Ok(None)`: not known locally, ask the Hub.
pub fn resolve_local(
    spec: &ModelSpec,
    config_map_text: Option<&str>,
) -> Result<Option<(Architecture, ModelSource)>, ResolveError> {
    if let Some(inline) = &spec.architecture {
        return Architecture::from_spec(inline)
            .map(|a| Some((a, ModelSource::Inline)))
            .map_err(|error| ResolveError::Invalid {
                source_name: ModelSource::Inline.to_string(),
                error,
            });
    }
    if let (Some(r), Some(text)) = (&spec.config_map_ref, config_map_text) {
        let config: Value =
            serde_json::from_str(text).map_err(|e| ResolveError::ConfigMapJson {
                name: r.name.clone(),
                key: r.key.clone(),
                reason: e.to_string(),
            })?;
        return Architecture::from_hf_config(&config)
            .map(|a| Some((a, ModelSource::ConfigMap)))
            .map_err(|error| ResolveError::Invalid {
                source_name: format!("ConfigMap {} key {}", r.name, r.key),
                error,
            });
    }
    match catalog::lookup(&spec.name) {
        Some(entry) => entry
            .architecture()
            .map(|a| Some((a, ModelSource::Catalog)))
            .map_err(|error| ResolveError::Invalid {
                source_name: format!("catalog entry {}", entry.id),
                error,
            }),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConfigMapKeyRef, ModelArchitecture};

    fn spec(name: &str) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn inline_wins_then_config_map_then_catalog() {
        let mut s = spec("meta-llama/Llama-3.1-8B-Instruct");
        assert_eq!(
            resolve_local(&s, None).unwrap().unwrap().1,
            ModelSource::Catalog
        );
        s.config_map_ref = Some(ConfigMapKeyRef {
            name: "cfg".into(),
            key: "config.json".into(),
        });
        let text = include_str!("../../tests/fixtures/hub/llama-3.1-8b-instruct.config.json");
        assert_eq!(
            resolve_local(&s, Some(text)).unwrap().unwrap().1,
            ModelSource::ConfigMap
        );
        s.architecture = Some(ModelArchitecture {
            num_hidden_layers: Some(2),
            hidden_size: Some(64),
            num_attention_heads: Some(4),
            vocab_size: Some(1000),
            ..Default::default()
        });
        assert_eq!(
            resolve_local(&s, Some(text)).unwrap().unwrap().1,
            ModelSource::Inline
        );
    }

    #[test]
    fn unknown_models_go_to_the_hub_and_bad_input_is_named() {
        assert_eq!(
            resolve_local(&spec("someone/private-model"), None).unwrap(),
            None
        );
        let mut s = spec("x");
        s.config_map_ref = Some(ConfigMapKeyRef {
            name: "cfg".into(),
            key: "config.json".into(),
        });
        let err = resolve_local(&s, Some("{\"hidden_size\": 1}"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "ConfigMap cfg key config.json: missing field `num_hidden_layers`"
        );
        s.architecture = Some(ModelArchitecture::default());
        let err = resolve_local(&s, None).unwrap_err().to_string();
        assert_eq!(
            err,
            "spec.model.architecture: missing field `numHiddenLayers`"
        );
    }
}
