//! The CRD YAML that `vllm-operator crd` prints and that is committed under `crds/`.

use kube::CustomResourceExt;

use crate::api::{GpuNode, MemoryProfile, VllmDeployment};

/// File name under `crds/` and the YAML text, for every CRD, in a fixed order.
pub fn crd_files() -> Result<Vec<(&'static str, String)>, serde_norway::Error> {
    Ok(vec![
        ("vllmdeployments.yaml", to_yaml(&VllmDeployment::crd())?),
        ("gpunodes.yaml", to_yaml(&GpuNode::crd())?),
        ("memoryprofiles.yaml", to_yaml(&MemoryProfile::crd())?),
    ])
}

/// Every CRD as one multi-document YAML stream.
pub fn all_crds_yaml() -> Result<String, serde_norway::Error> {
    let files = crd_files()?;
    Ok(files
        .into_iter()
        .map(|(_, text)| text)
        .collect::<Vec<_>>()
        .join(""))
}

fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, serde_norway::Error> {
    Ok(format!("---\n{}", serde_norway::to_string(value)?))
}

/// Write every CRD file into each directory (creating it), as committed under `crds/` and
/// `charts/vllm-operator/crds/`.
pub fn write_crd_files(dirs: &[std::path::PathBuf]) -> Result<(), String> {
    let files = crd_files().map_err(|e| format!("cannot render the CRDs as YAML: {e}"))?;
    for dir in dirs {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
        for (name, text) in &files {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
        }
    }
    Ok(())
}
