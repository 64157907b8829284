//! Reading Kubernetes YAML files: multi-document streams and `kind: List`, into typed objects,
//! with errors that name the file, the document and the field.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Node;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{GpuNode, VllmDeployment};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: document {document}: not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        document: usize,
        source: serde_norway::Error,
    },
    #[error("{0}")]
    Field(Box<FieldError>),
    #[error("{path}: document {document}: {message}")]
    Shape {
        path: PathBuf,
        document: usize,
        message: String,
    },
}

/// A field that does not fit the type, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{path}: document {document} ({kind} {name}): field `{field}`: {message}")]
pub struct FieldError {
    pub path: PathBuf,
    pub document: usize,
    pub kind: String,
    pub name: String,
    pub field: String,
    pub message: String,
}

/// One object read from a file, with where it came from.
#[derive(Debug, Clone)]
pub struct Document {
    pub path: PathBuf,
    /// 1-based position in the file; items of a `kind: List` are numbered `N.M` in messages.
    pub document: usize,
    pub value: Value,
}

/// The objects this project reads from files.
#[derive(Debug, Clone)]
pub enum Object {
    VllmDeployment(Box<VllmDeployment>),
    GpuNode(Box<GpuNode>),
    Node(Box<Node>),
    /// Any other kind, kept so callers can say what they ignored.
    Other {
        kind: String,
        name: String,
    },
}

/// Read every document of a YAML stream, flattening `kind: List` into its items.
pub fn read_documents(path: &Path) -> Result<Vec<Document>, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    documents_from_str(path, &text)
}

/// As [`read_documents`], on text already in memory; `path` is only used in messages.
pub fn documents_from_str(path: &Path, text: &str) -> Result<Vec<Document>, ManifestError> {
    let mut out = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value: Value =
            serde::Deserialize::deserialize(de).map_err(|source| ManifestError::Yaml {
                path: path.to_path_buf(),
                document,
                source,
            })?;
        match value {
            Value::Null => continue,
            Value::Object(ref map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
                let items = match map.get("items") {
                    Some(Value::Array(items)) => items.clone(),
                    None | Some(Value::Null) => Vec::new(),
                    Some(_) => {
                        return Err(ManifestError::Shape {
                            path: path.to_path_buf(),
                            document,
                            message: "`items` of a List must be a sequence".into(),
                        });
                    }
                };
                out.extend(items.into_iter().map(|value| Document {
                    path: path.to_path_buf(),
                    document,
                    value,
                }));
            }
            Value::Object(_) => out.push(Document {
                path: path.to_path_buf(),
                document,
                value,
            }),
            _ => {
                return Err(ManifestError::Shape {
                    path: path.to_path_buf(),
                    document,
                    message: "expected a Kubernetes object (a mapping with apiVersion and kind)"
                        .into(),
                });
            }
        }
    }
    Ok(out)
}

impl Document {
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("<unnamed>")
    }

    /// Deserialize into `T`, naming the offending field on failure.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ManifestError> {
        serde_path_to_error::deserialize(&self.value).map_err(|err| {
            ManifestError::Field(Box::new(FieldError {
                path: self.path.clone(),
                document: self.document,
                kind: self.kind().to_string(),
                name: self.name().to_string(),
                field: err.path().to_string(),
                message: err.inner().to_string(),
            }))
        })
    }

    /// A GpuNode carries everything in its status and its spec is empty: a hand-written fleet
    /// may leave `spec` out (the API server always stores it, the CRD requires it).
    fn with_empty_spec(&self) -> std::borrow::Cow<'_, Document> {
        match &self.value {
            Value::Object(map) if !map.contains_key("spec") => {
                let mut doc = self.clone();
                if let Value::Object(m) = &mut doc.value {
                    m.insert("spec".into(), Value::Object(Default::default()));
                }
                std::borrow::Cow::Owned(doc)
            }
            _ => std::borrow::Cow::Borrowed(self),
        }
    }

    pub fn to_object(&self) -> Result<Object, ManifestError> {
        let api_version = self
            .value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        Ok(match (api_version, self.kind()) {
            ("vllm-operator.io/v1alpha1", "VllmDeployment") => {
                Object::VllmDeployment(Box::new(self.parse()?))
            }
            ("vllm-operator.io/v1alpha1", "GpuNode") => {
                Object::GpuNode(Box::new(self.with_empty_spec().parse()?))
            }
            ("v1", "Node") => Object::Node(Box::new(self.parse()?)),
            (_, "") => {
                return Err(ManifestError::Shape {
                    path: self.path.clone(),
                    document: self.document,
                    message: "object has no `kind`".into(),
                });
            }
            (_, kind) => Object::Other {
                kind: format!("{api_version}/{kind}"),
                name: self.name().to_string(),
            },
        })
    }
}

/// Read a file and type every object in it.
pub fn read_objects(path: &Path) -> Result<Vec<Object>, ManifestError> {
    read_documents(path)?
        .iter()
        .map(Document::to_object)
        .collect()
}
