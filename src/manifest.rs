//! Reading Kubernetes YAML files: multi-document streams and `kind: List`, into typed objects,
//! with errors that name the file, the document and the field.
//!
//! Reading is strict, as `kubectl apply --validate=strict` is: a field the type does not know
//! is an error that names it (a misspelt `maxModelLength` would otherwise be dropped and the
//! default planned). The API types themselves stay lenient (no `deny_unknown_fields`): the
//! controller reads them from the API server, where a newer CRD may carry fields an older
//! controller does not know, and one such object must not stop the controller.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{GpuNode, MemoryProfile, VllmDeployment};

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
    #[error("{0}")]
    TooLarge(crate::validate::ReadError),
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
    /// A measured or hand-written memory profile (`kubectl get memoryprofiles -o yaml`).
    MemoryProfile(Box<MemoryProfile>),
    /// A `resource.k8s.io/v1` ResourceSlice: devices a DRA driver publishes.
    ResourceSlice(Box<ResourceSlice>),
    /// Any other kind, kept so callers can say what they ignored.
    Other {
        kind: String,
        name: String,
    },
}

/// Read every document of a YAML stream, flattening `kind: List` into its items. Files over
/// [`crate::validate::MAX_MANIFEST_BYTES`] are refused before they are held in memory.
pub fn read_documents(path: &Path) -> Result<Vec<Document>, ManifestError> {
    use crate::validate::{MAX_MANIFEST_BYTES, ReadError, read_text};
    let text = read_text(path, MAX_MANIFEST_BYTES, "a manifest").map_err(|e| match e {
        ReadError::Io { source, .. } => ManifestError::Read {
            path: path.to_path_buf(),
            source,
        },
        other => ManifestError::TooLarge(other),
    })?;
    documents_from_str(path, &text)
}

/// A YAML value as JSON, refusing what JSON cannot hold instead of turning it into `null`
/// (`.nan`, `.inf`), and naming where it is.
fn yaml_to_json(value: serde_norway::Value, at: &str) -> Result<Value, String> {
    use serde_norway::Value as Y;
    let here = |at: &str| {
        if at.is_empty() {
            "the document".to_string()
        } else {
            format!("field `{at}`")
        }
    };
    Ok(match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match serde_json::Number::from_f64(f) {
                    Some(n) => Value::Number(n),
                    None => {
                        return Err(format!("{}: {n} is not a finite number", here(at)));
                    }
                }
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| yaml_to_json(v, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    // YAML allows `1: x` and `true: x`; Kubernetes objects have string keys.
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => {
                        return Err(format!(
                            "{}: a mapping key must be a string, not {other:?}",
                            here(at)
                        ));
                    }
                };
                let child = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                let v = yaml_to_json(v, &child)?;
                if out.insert(key.clone(), v).is_some() {
                    return Err(format!("{}: key {key:?} appears twice", here(at)));
                }
            }
            Value::Object(out)
        }
        Y::Tagged(t) => {
            return Err(format!("{}: YAML tag {} is not supported", here(at), t.tag));
        }
    })
}

/// As [`read_documents`], on text already in memory; `path` is only used in messages.
pub fn documents_from_str(path: &Path, text: &str) -> Result<Vec<Document>, ManifestError> {
    let mut out = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let mut yaml: serde_norway::Value =
            serde::Deserialize::deserialize(de).map_err(|source| ManifestError::Yaml {
                path: path.to_path_buf(),
                document,
                source,
            })?;
        yaml.apply_merge().map_err(|source| ManifestError::Yaml {
            path: path.to_path_buf(),
            document,
            source,
        })?;
        let value = yaml_to_json(yaml, "").map_err(|message| ManifestError::Shape {
            path: path.to_path_buf(),
            document,
            message,
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

    /// An error about `field` of this document.
    pub fn field_error(
        &self,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ManifestError {
        ManifestError::Field(Box::new(FieldError {
            path: self.path.clone(),
            document: self.document,
            kind: self.kind().to_string(),
            name: self.name().to_string(),
            field: field.into(),
            message: message.into(),
        }))
    }

    /// Deserialize into `T`, naming the offending field on failure. Fields `T` does not know
    /// are errors (except under `lenient`, e.g. a Node's `status`, which each Kubernetes
    /// release extends).
    pub fn parse_strict<T: DeserializeOwned>(&self, lenient: &[&str]) -> Result<T, ManifestError> {
        let mut unknown: Vec<String> = Vec::new();
        let parsed: Result<T, _> = {
            let mut note = |p: serde_ignored::Path| unknown.push(dotted(&p));
            let de = serde_ignored::Deserializer::new(&self.value, &mut note);
            serde_path_to_error::deserialize(de)
        };
        let value = parsed.map_err(|err| {
            let message = err.inner().to_string();
            self.field_error(err.path().to_string(), message)
        })?;
        // apiVersion and kind are read here, not by the type.
        unknown.retain(|f| {
            f != "apiVersion"
                && f != "kind"
                && !lenient
                    .iter()
                    .any(|l| f == l || f.starts_with(&format!("{l}.")))
        });
        if let Some(field) = unknown.first() {
            let more = match unknown.len() {
                1 => String::new(),
                n => format!(" (and {} more: {})", n - 1, unknown[1..].join(", ")),
            };
            let hint = suggestion(self.kind(), field)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            return Err(self.field_error(
                field.clone(),
                format!(
                    "unknown field, not in the {} schema{hint}{more}",
                    self.kind()
                ),
            ));
        }
        Ok(value)
    }

    /// As [`Document::parse_strict`] with nothing lenient.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ManifestError> {
        self.parse_strict(&[])
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
        let served = |kind: &str, version: &str| {
            if api_version == version {
                Ok(())
            } else {
                Err(self.field_error(
                    "apiVersion",
                    format!("{api_version:?} does not serve {kind}: use {version}"),
                ))
            }
        };
        Ok(match (api_version, self.kind()) {
            (_, "") => {
                return Err(ManifestError::Shape {
                    path: self.path.clone(),
                    document: self.document,
                    message: "object has no `kind`".into(),
                });
            }
            (_, "VllmDeployment") => {
                served("VllmDeployment", "vllm-operator.io/v1alpha1")?;
                Object::VllmDeployment(Box::new(self.parse()?))
            }
            (_, "GpuNode") => {
                served("GpuNode", "vllm-operator.io/v1alpha1")?;
                Object::GpuNode(Box::new(self.with_empty_spec().parse()?))
            }
            // The kubelet's status grows with every Kubernetes release: a Node from a newer
            // cluster must still read.
            (_, "Node") => {
                served("Node", "v1")?;
                Object::Node(Box::new(self.parse_strict(&["status"])?))
            }
            (_, "MemoryProfile") => {
                served("MemoryProfile", "vllm-operator.io/v1alpha1")?;
                Object::MemoryProfile(Box::new(self.parse()?))
            }
            // Slices are what kubectl prints, never hand-written: each Kubernetes release adds
            // device fields (v1.34 added `bindsToNode`, `bindingConditions`, ...), and a slice
            // from a newer cluster must still read. What the planner reads (driver, nodeName,
            // pool, device names and attributes) is checked by `validate::resource_slice`.
            (_, "ResourceSlice") => {
                served("ResourceSlice", "resource.k8s.io/v1")?;
                Object::ResourceSlice(Box::new(self.parse_strict(&["spec"])?))
            }
            (_, kind) => Object::Other {
                kind: format!("{api_version}/{kind}"),
                name: self.name().to_string(),
            },
        })
    }
}

/// `spec.model.architecture.headDim`, `spec.env[0].name`: serde_ignored's path without its
/// markers for `Option` and newtypes.
fn dotted(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", dotted(parent)),
        P::Map { parent, key } => {
            let p = dotted(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            dotted(parent)
        }
    }
}

/// The known field closest to a misspelt one, from the CRD's structural schema (the schema the
/// API server checks): `spec.maxModelLength` -> `maxModelLen`.
fn suggestion(kind: &str, field: &str) -> Option<String> {
    use kube::CustomResourceExt;
    let crd = match kind {
        "VllmDeployment" => VllmDeployment::crd(),
        "GpuNode" => GpuNode::crd(),
        "MemoryProfile" => MemoryProfile::crd(),
        _ => return None,
    };
    let schema = serde_json::to_value(crd.spec.versions.first()?.schema.as_ref()?).ok()?;
    let mut node = schema.get("openAPIV3Schema")?;
    let mut steps: Vec<&str> = field.split('.').collect();
    let last = steps.pop()?;
    for step in steps {
        let name = step.split('[').next().unwrap_or(step);
        node = node.get("properties")?.get(name)?;
        if step.contains('[') {
            node = node.get("items")?;
        }
    }
    let last = last.split('[').next().unwrap_or(last);
    node.get("properties")?
        .as_object()?
        .keys()
        .map(|k| (edit_distance(&k.to_lowercase(), &last.to_lowercase()), k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 4))
        .min()
        .map(|(_, k)| k.clone())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// Read a file and type every object in it.
pub fn read_objects(path: &Path) -> Result<Vec<Object>, ManifestError> {
    read_documents(path)?
        .iter()
        .map(Document::to_object)
        .collect()
}
