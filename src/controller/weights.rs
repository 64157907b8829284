//! How the model's weights reach the vLLM container: the Hugging Face token from its Secret,
//! the cache volume `HF_HOME` lives in (emptyDir sized from the checkpoint, a generic ephemeral
//! volume, or a shared PersistentVolumeClaim), a local model directory, and the user's own
//! volumes. Pure builders and the validation they rely on.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, EnvVar, EnvVarSource, EphemeralVolumeSource, PersistentVolumeClaimSpec,
    PersistentVolumeClaimTemplate, PersistentVolumeClaimVolumeSource, SecretKeySelector, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::VllmDeploymentSpec;
use crate::plan::args::MODEL_CACHE_DIR;

/// The cache volume's name in the pod.
pub const CACHE_VOLUME: &str = "model-cache";
/// `HF_HOME`: a directory of the cache volume, so that local models (`spec.model.path`) and
/// huggingface_hub's `hub/` and `xet/` directories do not mix.
pub const HF_HOME: &str = "/model-cache/huggingface";
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";

/// Volumes the operator adds to every vLLM pod (see `pod::gated_pod`).
pub const OPERATOR_VOLUMES: [&str; 4] = ["launcher", "plan", "dshm", CACHE_VOLUME];

/// Environment variables that decide where the weights go; the operator sets them.
/// huggingface_hub reads `HF_HOME` and `HF_HUB_CACHE` (default `$HF_HOME/hub`) in
/// constants.py (0.35.3 and 1.31.0).
const OWNED_ENV: [&str; 2] = ["HF_HOME", "HF_HUB_CACHE"];

/// Bytes as a Kubernetes quantity: whole GiB when exact (`17Gi`), else plain bytes.
pub fn quantity(bytes: u64) -> Quantity {
    const GIB: u64 = 1 << 30;
    if bytes > 0 && bytes.is_multiple_of(GIB) {
        Quantity(format!("{}Gi", bytes / GIB))
    } else {
        Quantity(bytes.to_string())
    }
}

/// The cache volume. `cache_bytes` is the size the checkpoint needs (checkpoint plus margin),
/// when the architecture is known.
///
/// - default: an `emptyDir` with `sizeLimit`: the kubelet evicts the pod when the volume grows
///   past it (pkg/kubelet/eviction/eviction_manager.go `emptyDirLimitEviction`), and the
///   matching container request makes the scheduler place it only where the disk fits.
/// - `ephemeral`: a generic ephemeral volume; the ephemeral volume controller creates the PVC
///   `<pod>-model-cache`, owned by the pod and deleted with it (pkg/apis/core/types.go
///   `EphemeralVolumeSource`, pkg/controller/volume/ephemeral/controller.go).
/// - `persistentVolumeClaim`: the user's claim, shared by every replica.
pub fn cache_volume(spec: &VllmDeploymentSpec, cache_bytes: Option<u64>) -> Volume {
    let cache = spec.model_cache.clone().unwrap_or_default();
    let mut volume = Volume {
        name: CACHE_VOLUME.into(),
        ..Default::default()
    };
    if let Some(pvc) = cache.persistent_volume_claim {
        volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
            claim_name: pvc.claim_name,
            read_only: None,
        });
    } else if let Some(eph) = cache.ephemeral {
        let size = eph.size.or_else(|| cache_bytes.map(quantity));
        volume.ephemeral = Some(EphemeralVolumeSource {
            volume_claim_template: Some(PersistentVolumeClaimTemplate {
                metadata: None,
                spec: PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: eph.storage_class_name,
                    resources: size.map(|s| VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([("storage".into(), s)])),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            }),
        });
    } else {
        volume.empty_dir = Some(EmptyDirVolumeSource {
            size_limit: cache_bytes.map(quantity),
            ..Default::default()
        });
    }
    volume
}

/// `ephemeral-storage` the vLLM container requests: the cache size in the default mode, or the
/// user's request if larger. The scheduler's NodeResourcesFit plugin admits a pod only where
/// allocatable minus requested ephemeral storage covers it
/// (pkg/scheduler/framework/plugins/noderesources/fit.go `fitsRequest`); the emptyDir's
/// `sizeLimit` alone is not counted there.
pub fn ephemeral_storage_request(
    spec: &VllmDeploymentSpec,
    cache_bytes: Option<u64>,
) -> Option<Quantity> {
    let on_node = spec
        .model_cache
        .as_ref()
        .is_none_or(|c| c.persistent_volume_claim.is_none() && c.ephemeral.is_none());
    let need = cache_bytes.filter(|_| on_node)?;
    let user = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get(EPHEMERAL_STORAGE))
        .and_then(|q| crate::quantity::parse_bytes(&q.0));
    match user {
        Some(u) if u >= need => None,
        _ => Some(quantity(need)),
    }
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The vLLM container's environment: the operator's variables, then the user's.
///
/// - `HF_HOME` into the cache volume.
/// - `HF_TOKEN` from the Secret key (never its value in the pod spec): huggingface_hub reads it
///   in utils/_auth.py `get_token` (0.35.3, 1.31.0), and vLLM 0.11 passes it on explicitly
///   (vllm/transformers_utils/config.py `_get_hf_token`).
/// - `HF_HUB_OFFLINE=1` when `spec.model.offline` (huggingface_hub constants.py).
/// - `HF_XET_CHUNK_CACHE_SIZE_BYTES=0` unless the user sets it: hf_xet's chunk cache lives in
///   `HF_HOME/xet` and defaults to 10 GB in builds without `no-default-cache`
///   (xet-runtime src/config/groups/chunk_cache.rs, 1.5.2); it would only duplicate the
///   files the hub cache already holds, and could push the emptyDir past its `sizeLimit`.
pub fn env(spec: &VllmDeploymentSpec) -> Vec<EnvVar> {
    let user_sets = |name: &str| spec.env.iter().any(|e| e.name == name);
    let mut out = vec![value("HF_HOME", HF_HOME)];
    if let Some(secret) = &spec.model.hub_token_secret_ref {
        out.push(EnvVar {
            name: "HF_TOKEN".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
        });
    }
    if spec.model.offline {
        out.push(value("HF_HUB_OFFLINE", "1"));
    }
    if !user_sets("HF_XET_CHUNK_CACHE_SIZE_BYTES") {
        out.push(value("HF_XET_CHUNK_CACHE_SIZE_BYTES", "0"));
    }
    out.extend(spec.env.iter().cloned());
    out
}

/// Why the weights part of a spec cannot work, in one line per problem.
pub fn validate(spec: &VllmDeploymentSpec) -> Result<(), String> {
    let mut errors = Vec::new();
    let model = &spec.model;
    let cache = spec.model_cache.clone().unwrap_or_default();
    if cache.persistent_volume_claim.is_some() && cache.ephemeral.is_some() {
        errors.push("modelCache: set persistentVolumeClaim or ephemeral, not both".to_string());
    }
    if let Some(pvc) = &cache.persistent_volume_claim
        && pvc.claim_name.is_empty()
    {
        errors.push("modelCache.persistentVolumeClaim.claimName must not be empty".into());
    }
    if let Some(size) = cache.ephemeral.as_ref().and_then(|e| e.size.as_ref())
        && crate::quantity::parse_bytes(&size.0).is_none_or(|b| b == 0)
    {
        errors.push(format!(
            "modelCache.ephemeral.size {:?} is not a positive byte quantity",
            size.0
        ));
    }
    if let Some(path) = &model.path {
        let parts: Vec<&str> = path.split('/').collect();
        if path.is_empty() || path.starts_with('/') || parts.contains(&"..") {
            errors.push(format!(
                "model.path {path:?} must be a relative directory inside the model cache volume, without '..'"
            ));
        }
        if cache.persistent_volume_claim.is_none() {
            errors.push(
                "model.path serves a directory of the model cache: it needs modelCache.persistentVolumeClaim (an emptyDir or ephemeral cache starts empty)".into(),
            );
        }
        if model.architecture.is_none() && model.config_map_ref.is_none() {
            errors.push(
                "model.path needs model.architecture or model.configMapRef: the controller cannot read the volume to size the model".into(),
            );
        }
        if model.revision.is_some() {
            errors.push("model.revision applies to Hugging Face models, not to model.path".into());
        }
    }
    if model.offline && model.path.is_none() && cache.persistent_volume_claim.is_none() {
        errors.push(
            "model.offline needs a cache filled beforehand: modelCache.persistentVolumeClaim (or model.path on it)".into(),
        );
    }
    for e in &spec.env {
        let conflict = OWNED_ENV.contains(&e.name.as_str())
            || (e.name == "HF_TOKEN" && model.hub_token_secret_ref.is_some())
            || (e.name == "HF_HUB_OFFLINE" && model.offline);
        if conflict {
            errors.push(format!(
                "env {} is set by the operator (use spec.modelCache, model.hubTokenSecretRef, model.offline)",
                e.name
            ));
        }
    }
    errors.extend(validate_volumes(spec));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("invalid spec: {}", errors.join("; ")))
    }
}

/// A DNS-1123 label: what the API server requires of volume names
/// (pkg/apis/core/validation/validation.go `ValidateVolumes` -> `IsDNS1123Label`).
fn dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A relative path that does not climb out (`validateLocalDescendingPath` in the same file).
fn local_descending(p: &str) -> bool {
    !p.starts_with('/') && !p.split('/').any(|part| part == "..")
}

/// `spec.volumes` and `spec.volumeMounts` checked as the API server checks a PodSpec's
/// (pkg/apis/core/validation/validation.go `ValidateVolumes`, `ValidateVolumeMounts`), plus no
/// clash with the operator's own volumes and mount paths.
fn validate_volumes(spec: &VllmDeploymentSpec) -> Vec<String> {
    let mut errors = Vec::new();
    let mut names = BTreeSet::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        if !dns1123_label(&v.name) {
            errors.push(format!(
                "volumes[{i}].name {:?} must be a DNS-1123 label (lower case letters, digits, '-', at most 63)",
                v.name
            ));
        }
        if OPERATOR_VOLUMES.contains(&v.name.as_str()) {
            errors.push(format!(
                "volumes[{i}].name {:?} is one of the operator's own volumes ({})",
                v.name,
                OPERATOR_VOLUMES.join(", ")
            ));
        }
        if !names.insert(v.name.as_str()) {
            errors.push(format!("volumes[{i}].name {:?} is used twice", v.name));
        }
        // Exactly one volume source besides the name.
        let sources = serde_json::to_value(v)
            .ok()
            .and_then(|j| {
                j.as_object()
                    .map(|o| o.keys().filter(|k| *k != "name").count())
            })
            .unwrap_or(0);
        if sources != 1 {
            errors.push(format!(
                "volumes[{i}] ({}) must have exactly one volume source, has {sources}",
                v.name
            ));
        }
    }
    let operator_paths = crate::controller::pod::operator_mount_paths();
    let mut paths = BTreeSet::new();
    for (i, m) in spec.volume_mounts.iter().enumerate() {
        if !names.contains(m.name.as_str()) {
            errors.push(format!(
                "volumeMounts[{i}].name {:?} is not in spec.volumes",
                m.name
            ));
        }
        let path = m.mount_path.trim_end_matches('/');
        if m.mount_path.is_empty() || !m.mount_path.starts_with('/') {
            errors.push(format!(
                "volumeMounts[{i}].mountPath {:?} must be an absolute path",
                m.mount_path
            ));
        } else if operator_paths.contains(&path) {
            errors.push(format!(
                "volumeMounts[{i}].mountPath {:?} is where the operator mounts its own volume",
                m.mount_path
            ));
        }
        if !paths.insert(path) {
            errors.push(format!(
                "volumeMounts[{i}].mountPath {:?} is used twice",
                m.mount_path
            ));
        }
        for (field, sub) in [("subPath", &m.sub_path), ("subPathExpr", &m.sub_path_expr)] {
            if let Some(s) = sub
                && !local_descending(s)
            {
                errors.push(format!(
                    "volumeMounts[{i}].{field} {s:?} must be a relative path without '..'"
                ));
            }
        }
    }
    errors
}

/// The cache mount and the user's mounts for the vLLM container.
pub fn cache_mount() -> VolumeMount {
    VolumeMount {
        name: CACHE_VOLUME.into(),
        mount_path: MODEL_CACHE_DIR.into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EphemeralCacheSpec, ModelCacheSpec, PvcCacheSpec, SecretKeyRef};

    fn spec() -> VllmDeploymentSpec {
        let text = include_str!("../../tests/fixtures/controller/deployment.yaml");
        let d: crate::api::VllmDeployment = serde_norway::from_str(text).unwrap();
        d.spec
    }

    fn pvc() -> Option<ModelCacheSpec> {
        Some(ModelCacheSpec {
            persistent_volume_claim: Some(PvcCacheSpec {
                claim_name: "models".into(),
            }),
            ephemeral: None,
        })
    }

    #[test]
    fn the_token_comes_from_the_secret_never_as_a_value() {
        let mut s = spec();
        s.model.hub_token_secret_ref = Some(SecretKeyRef {
            name: "hf".into(),
            key: "token".into(),
        });
        let env = env(&s);
        let token = env.iter().find(|e| e.name == "HF_TOKEN").unwrap();
        assert_eq!(token.value, None);
        let r = token
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("hf", "token"));
        assert_eq!(env[0], value("HF_HOME", HF_HOME));
        assert!(!env.iter().any(|e| e.name == "HF_HUB_OFFLINE"));
        s.model.offline = true;
        assert!(env_has(&s, "HF_HUB_OFFLINE", "1"));
    }

    fn env_has(s: &VllmDeploymentSpec, name: &str, v: &str) -> bool {
        env(s)
            .iter()
            .any(|e| e.name == name && e.value.as_deref() == Some(v))
    }

    #[test]
    fn a_user_xet_cache_size_wins_over_ours() {
        let mut s = spec();
        assert!(env_has(&s, "HF_XET_CHUNK_CACHE_SIZE_BYTES", "0"));
        s.env
            .push(value("HF_XET_CHUNK_CACHE_SIZE_BYTES", "1000000"));
        let env = env(&s);
        let xet: Vec<_> = env
            .iter()
            .filter(|e| e.name == "HF_XET_CHUNK_CACHE_SIZE_BYTES")
            .collect();
        assert_eq!(xet.len(), 1);
        assert_eq!(xet[0].value.as_deref(), Some("1000000"));
    }

    #[test]
    fn each_cache_mode_builds_its_volume() {
        let mut s = spec();
        let gib = 1u64 << 30;
        let v = cache_volume(&s, Some(17 * gib));
        assert_eq!(
            v.empty_dir.unwrap().size_limit,
            Some(Quantity("17Gi".into()))
        );
        assert_eq!(
            ephemeral_storage_request(&s, Some(17 * gib)),
            Some(Quantity("17Gi".into()))
        );
        s.model_cache = Some(ModelCacheSpec {
            persistent_volume_claim: None,
            ephemeral: Some(EphemeralCacheSpec {
                storage_class_name: Some("fast".into()),
                size: None,
            }),
        });
        let v = cache_volume(&s, Some(17 * gib));
        let t = v.ephemeral.unwrap().volume_claim_template.unwrap().spec;
        assert_eq!(t.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(t.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
        assert_eq!(
            t.resources.unwrap().requests.unwrap()["storage"],
            Quantity("17Gi".into())
        );
        assert_eq!(ephemeral_storage_request(&s, Some(17 * gib)), None);
        s.model_cache = pvc();
        let v = cache_volume(&s, Some(17 * gib));
        assert_eq!(v.persistent_volume_claim.unwrap().claim_name, "models");
        assert!(v.empty_dir.is_none() && v.ephemeral.is_none());
        assert_eq!(ephemeral_storage_request(&s, Some(17 * gib)), None);
    }

    #[test]
    fn a_larger_user_request_is_kept_and_a_smaller_one_raised() {
        let mut s = spec();
        let gib = 1u64 << 30;
        let requests = s
            .resources
            .get_or_insert_with(Default::default)
            .requests
            .get_or_insert_with(Default::default);
        requests.insert(EPHEMERAL_STORAGE.into(), Quantity("100Gi".into()));
        assert_eq!(ephemeral_storage_request(&s, Some(17 * gib)), None);
        s.resources
            .as_mut()
            .unwrap()
            .requests
            .as_mut()
            .unwrap()
            .insert(EPHEMERAL_STORAGE.into(), Quantity("1Gi".into()));
        assert_eq!(
            ephemeral_storage_request(&s, Some(17 * gib)),
            Some(Quantity("17Gi".into()))
        );
    }

    #[test]
    fn local_models_need_a_claim_and_an_architecture() {
        let mut s = spec();
        s.model.path = Some("llama-1b".into());
        let err = validate(&s).unwrap_err();
        assert!(
            err.contains("needs modelCache.persistentVolumeClaim"),
            "{err}"
        );
        assert!(
            err.contains("needs model.architecture or model.configMapRef"),
            "{err}"
        );
        s.model_cache = pvc();
        s.model.config_map_ref = Some(crate::api::ConfigMapKeyRef {
            name: "cfg".into(),
            key: "config.json".into(),
        });
        assert_eq!(validate(&s), Ok(()));
        s.model.path = Some("../etc".into());
        assert!(validate(&s).unwrap_err().contains("without '..'"));
        s.model.path = Some("/abs".into());
        assert!(validate(&s).unwrap_err().contains("relative directory"));
    }

    #[test]
    fn offline_needs_a_filled_cache() {
        let mut s = spec();
        s.model.offline = true;
        assert!(validate(&s).unwrap_err().contains("model.offline needs"));
        s.model_cache = pvc();
        assert_eq!(validate(&s), Ok(()));
    }

    #[test]
    fn the_operator_owns_hf_home_and_the_token_variable() {
        let mut s = spec();
        s.env.push(value("HF_HOME", "/cache"));
        assert!(
            validate(&s)
                .unwrap_err()
                .contains("env HF_HOME is set by the operator")
        );
        s.env.pop();
        s.env.push(value("HF_TOKEN", "x"));
        // Their own token variable is fine while the operator does not set one.
        assert_eq!(validate(&s), Ok(()));
        s.model.hub_token_secret_ref = Some(SecretKeyRef {
            name: "hf".into(),
            key: "token".into(),
        });
        assert!(validate(&s).unwrap_err().contains("env HF_TOKEN"));
    }

    fn config_map_volume(name: &str) -> Volume {
        Volume {
            name: name.into(),
            config_map: Some(k8s_openapi::api::core::v1::ConfigMapVolumeSource {
                name: "templates".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn mount(name: &str, path: &str) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn passthrough_volumes_are_checked_like_a_pod_spec() {
        let mut s = spec();
        s.volumes = vec![config_map_volume("templates")];
        s.volume_mounts = vec![mount("templates", "/templates")];
        assert_eq!(validate(&s), Ok(()));
        let cases: Vec<(Vec<Volume>, Vec<VolumeMount>, &str)> = vec![
            (
                vec![
                    config_map_volume("templates"),
                    config_map_volume("templates"),
                ],
                vec![],
                "is used twice",
            ),
            (vec![config_map_volume("Bad_Name")], vec![], "DNS-1123"),
            (
                vec![config_map_volume("model-cache")],
                vec![],
                "operator's own volumes",
            ),
            (
                vec![Volume {
                    name: "nothing".into(),
                    ..Default::default()
                }],
                vec![],
                "exactly one volume source",
            ),
            (
                vec![config_map_volume("t")],
                vec![mount("other", "/t")],
                "is not in spec.volumes",
            ),
            (
                vec![config_map_volume("t")],
                vec![mount("t", "/model-cache")],
                "operator mounts its own volume",
            ),
            (
                vec![config_map_volume("t")],
                vec![mount("t", "/dev/shm/")],
                "operator mounts its own volume",
            ),
            (
                vec![config_map_volume("t")],
                vec![mount("t", "/a"), mount("t", "/a")],
                "used twice",
            ),
            (
                vec![config_map_volume("t")],
                vec![mount("t", "relative")],
                "absolute path",
            ),
            (
                vec![config_map_volume("t")],
                vec![VolumeMount {
                    sub_path: Some("../x".into()),
                    ..mount("t", "/x")
                }],
                "subPath",
            ),
        ];
        for (volumes, mounts, want) in cases {
            s.volumes = volumes;
            s.volume_mounts = mounts;
            let err = validate(&s).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
