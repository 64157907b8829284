//! The readers `plan`, `simulate` and `render` share: strict typing (unknown fields are
//! errors), then every rule of this module, with errors naming file, document and field.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;

use super::{MAX_MANIFEST_BYTES, Problem, limits, read_text};
use crate::api::{GpuNode, MemoryProfile, VllmDeployment};
use crate::manifest::{Document, Object, read_documents};
use crate::model::resolve::resolve_local;
use crate::sim::{ActualMemory, ExternalEvent};

fn first_problem(doc: &Document, problems: Vec<Problem>) -> Result<(), String> {
    let mut problems = problems.into_iter();
    match problems.next() {
        None => Ok(()),
        Some(p) => {
            let rest: Vec<String> = problems.map(|p| p.to_string()).collect();
            let mut msg = doc.field_error(p.field, p.message).to_string();
            if !rest.is_empty() {
                msg.push_str(&format!("; also {}", rest.join("; ")));
            }
            Err(msg)
        }
    }
}

/// VllmDeployments from files, every one validated; a file without one is an error (an empty
/// file is a mistake, not a request for nothing).
pub fn read_deployments(paths: &[PathBuf]) -> Result<Vec<VllmDeployment>, String> {
    let mut out = Vec::new();
    for path in paths {
        let docs = read_documents(path).map_err(|e| e.to_string())?;
        out.extend(deployments_in(path, docs)?);
    }
    Ok(out)
}

/// As [`read_deployments`], for one file's text already in memory (`path` names it in
/// messages).
pub fn deployments_from_str(path: &Path, text: &str) -> Result<Vec<VllmDeployment>, String> {
    let docs = crate::manifest::documents_from_str(path, text).map_err(|e| e.to_string())?;
    deployments_in(path, docs)
}

fn deployments_in(path: &Path, docs: Vec<Document>) -> Result<Vec<VllmDeployment>, String> {
    let mut out = Vec::new();
    {
        let before = out.len();
        for doc in docs {
            match doc.to_object().map_err(|e| e.to_string())? {
                Object::VllmDeployment(d) => {
                    first_problem(&doc, super::deployment(&d))?;
                    // The model's own limits, where the model is known offline.
                    if let Ok(Some((arch, _))) = resolve_local(&d.spec.model, None) {
                        let family = crate::cli::plan::family_from_image(&d.spec.image);
                        first_problem(
                            &doc,
                            super::deployment_with_architecture(&d, &arch, family),
                        )?;
                    }
                    out.push(*d);
                }
                Object::Other { kind, name } => {
                    return Err(format!(
                        "{}: document {} ({kind} {name}): not a VllmDeployment",
                        path.display(),
                        doc.document
                    ));
                }
                Object::GpuNode(_)
                | Object::Node(_)
                | Object::MemoryProfile(_)
                | Object::ResourceSlice(_) => {
                    return Err(format!(
                        "{}: document {}: fleet objects belong in --fleet",
                        path.display(),
                        doc.document
                    ));
                }
            }
        }
        if out.len() == before {
            return Err(format!(
                "{}: no VllmDeployment in this file",
                path.display()
            ));
        }
    }
    Ok(out)
}

/// What a fleet file holds: the agents' GpuNode reports, the kubelets' Node objects and the
/// cluster's MemoryProfiles (`kubectl get gpunodes,nodes,memoryprofiles -o yaml`), each
/// validated by the rules the controller applies to the same objects from the API server, and
/// the ResourceSlices DRA drivers publish (`kubectl get resourceslices -o yaml`). Slices of
/// every driver are kept; only the NVIDIA driver's are matched to GPUs
/// ([`crate::plan::Fleet::attach_slices`]), the others are ignored there.
#[derive(Clone, Debug, Default)]
pub struct FleetFile {
    pub gpunodes: Vec<GpuNode>,
    pub nodes: Vec<Node>,
    pub profiles: Vec<MemoryProfile>,
    pub slices: Vec<ResourceSlice>,
}

impl FleetFile {
    /// The profiles as the planner looks them up (`Fleet::with_profiles`).
    pub fn profile_set(&self) -> crate::profile::Profiles {
        crate::profile::Profiles::from_objects(&self.profiles)
    }
}

/// GpuNodes, Nodes, MemoryProfiles and ResourceSlices from a fleet file, each validated, and
/// the fleet as a whole (no name twice, a GPU on one node only). A file with no document at all is an error; a `List` with no items
/// is an empty fleet (`kubectl get gpunodes -o yaml` on a cluster without agents).
pub fn read_fleet(path: &Path) -> Result<FleetFile, String> {
    let text = read_text(path, MAX_MANIFEST_BYTES, "a fleet file").map_err(|e| e.to_string())?;
    fleet_from_str(path, &text)
}

/// As [`read_fleet`], on text already in memory.
pub fn fleet_from_str(path: &Path, text: &str) -> Result<FleetFile, String> {
    let mut out = FleetFile::default();
    if text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    }) {
        return Err(format!(
            "{}: empty: a fleet file is what `kubectl get gpunodes -o yaml` prints",
            path.display()
        ));
    }
    let docs = crate::manifest::documents_from_str(path, text).map_err(|e| e.to_string())?;
    for doc in docs {
        match doc.to_object().map_err(|e| e.to_string())? {
            Object::GpuNode(g) => {
                first_problem(&doc, super::gpunode(&g))?;
                out.gpunodes.push(*g);
            }
            Object::Node(n) => {
                first_problem(&doc, super::node(&n))?;
                out.nodes.push(*n);
            }
            Object::MemoryProfile(p) => {
                first_problem(&doc, super::memory_profile(&p))?;
                out.profiles.push(*p);
            }
            Object::ResourceSlice(s) => {
                first_problem(&doc, super::resource_slice(&s))?;
                out.slices.push(*s);
            }
            Object::VllmDeployment(d) => {
                return Err(format!(
                    "{}: VllmDeployment {} belongs in -f, not in the fleet file",
                    path.display(),
                    d.metadata.name.unwrap_or_default()
                ));
            }
            Object::Other { kind, name } => {
                return Err(format!(
                    "{}: {kind} {name} is not a GpuNode, Node, MemoryProfile or ResourceSlice",
                    path.display()
                ));
            }
        }
    }
    if let Some((kind, name, p)) = super::fleet(&out.gpunodes, &out.nodes).into_iter().next() {
        return Err(format!("{}: {kind} {name}: {p}", path.display()));
    }
    if let Some((name, p)) = super::memory_profiles(&out.profiles).into_iter().next() {
        return Err(format!("{}: MemoryProfile {name}: {p}", path.display()));
    }
    if let Some((name, p)) = super::slices_in_fleet(&out.gpunodes, &out.slices)
        .into_iter()
        .next()
    {
        return Err(format!("{}: ResourceSlice {name}: {p}", path.display()));
    }
    Ok(out)
}

/// `simulate --external`: a YAML list of events, strict, bounded in number, each naming a step
/// below `max_steps` (an event the run never reaches would keep it going to the limit).
pub fn read_external(path: &Path, max_steps: u32) -> Result<Vec<ExternalEvent>, String> {
    let text = read_text(path, MAX_MANIFEST_BYTES, "an events file").map_err(|e| e.to_string())?;
    external_from_str(path, &text, max_steps)
}

/// As [`read_external`], on text already in memory.
pub fn external_from_str(
    path: &Path,
    text: &str,
    max_steps: u32,
) -> Result<Vec<ExternalEvent>, String> {
    let de = serde_norway::Deserializer::from_str(text);
    let events = serde_path_to_error::deserialize::<_, Option<Vec<ExternalEvent>>>(de)
        .map(Option::unwrap_or_default)
        .map_err(|e| format!("{}: field `{}`: {}", path.display(), e.path(), e.inner()))?;
    if events.len() > limits::MAX_SIM_EVENTS {
        return Err(format!(
            "{}: {} events, more than {}",
            path.display(),
            events.len(),
            limits::MAX_SIM_EVENTS
        ));
    }
    for (i, e) in events.iter().enumerate() {
        if e.step >= max_steps {
            return Err(format!(
                "{}: [{i}].step: {} is not below --max-steps {max_steps}",
                path.display(),
                e.step
            ));
        }
        if e.node.is_empty() {
            return Err(format!("{}: [{i}].node: required", path.display()));
        }
    }
    Ok(events)
}

/// `simulate --actual`: a YAML list of `{model, extraBytes}`, strict (unknown fields and wrong
/// types are errors), each naming one of `models` (the deployments' `spec.model.name`) at most
/// once, with `|extraBytes|` at most [`super::MAX_PROFILE_BYTES`].
pub fn read_actual(path: &Path, models: &[&str]) -> Result<Vec<ActualMemory>, String> {
    let text =
        read_text(path, MAX_MANIFEST_BYTES, "an --actual file").map_err(|e| e.to_string())?;
    actual_from_str(path, &text, models)
}

/// As [`read_actual`], on text already in memory.
pub fn actual_from_str(
    path: &Path,
    text: &str,
    models: &[&str],
) -> Result<Vec<ActualMemory>, String> {
    let de = serde_norway::Deserializer::from_str(text);
    let entries = serde_path_to_error::deserialize::<_, Option<Vec<ActualMemory>>>(de)
        .map(Option::unwrap_or_default)
        .map_err(|e| format!("{}: field `{}`: {}", path.display(), e.path(), e.inner()))?;
    if entries.len() > limits::MAX_SIM_EVENTS {
        return Err(format!(
            "{}: {} entries, more than {}",
            path.display(),
            entries.len(),
            limits::MAX_SIM_EVENTS
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, a) in entries.iter().enumerate() {
        if !models.contains(&a.model.as_str()) {
            let mut known: Vec<&str> = models.to_vec();
            known.sort_unstable();
            known.dedup();
            return Err(format!(
                "{}: [{i}].model: {:?} is not the model of any deployment given with -f (their models: {})",
                path.display(),
                a.model,
                known.join(", ")
            ));
        }
        if !seen.insert(a.model.as_str()) {
            return Err(format!(
                "{}: [{i}].model: {:?} appears twice",
                path.display(),
                a.model
            ));
        }
        if a.extra_bytes.unsigned_abs() > super::MAX_PROFILE_BYTES {
            return Err(format!(
                "{}: [{i}].extraBytes: {} is more than {} bytes (1 PiB) either way",
                path.display(),
                a.extra_bytes,
                super::MAX_PROFILE_BYTES
            ));
        }
    }
    Ok(entries)
}
