//! Every field of a VllmDeployment: the CRD's own rules (CEL, run here too so that files get
//! the API server's answer), what the schema cannot say, and, once the model is known, the
//! model's length limit as vLLM enforces it.

use k8s_openapi::api::core::v1::Toleration;

use super::{Problem, dns1035_label, dns1123_label, dns1123_subdomain, limits};
use crate::api::VllmDeployment;
use crate::model::{Architecture, VllmFamily};

/// vLLM reads it as `os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0").strip().lower() in
/// ("1", "true")` (vllm/envs.py, 0.11.0 and 0.33.0).
const ALLOW_LONG: &str = "VLLM_ALLOW_LONG_MAX_MODEL_LEN";

/// Whether `spec.env` sets `VLLM_ALLOW_LONG_MAX_MODEL_LEN` to a value vLLM reads as true. A
/// `valueFrom` cannot be known before the pod runs and counts as unset.
pub fn long_max_model_len_allowed(dep: &VllmDeployment) -> bool {
    dep.spec.env.iter().any(|e| {
        e.name == ALLOW_LONG
            && e.value
                .as_deref()
                .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true"))
    })
}

/// Everything that does not need the model's architecture.
pub fn deployment(dep: &VllmDeployment) -> Vec<Problem> {
    let mut out = Vec::new();
    let spec = &dep.spec;
    // Model cache, token, local path and passthrough volumes (controller::weights).
    if let Err(e) = crate::controller::weights::validate(spec) {
        let e = e.trim_start_matches("invalid spec: ");
        out.extend(e.split("; ").map(|m| Problem::new("spec", m)));
    }
    match dep.metadata.name.as_deref() {
        None | Some("") => out.push(Problem::new("metadata.name", "required")),
        // The controller names the Service after the deployment, and uses the name as the
        // app.kubernetes.io/instance label value: both allow at most 63 characters.
        Some(name) => {
            if let Err(e) = dns1035_label(name) {
                out.push(Problem::new(
                    "metadata.name",
                    format!("{e}: the operator names the Service after the deployment"),
                ));
            }
        }
    }
    if let Some(ns) = dep.metadata.namespace.as_deref()
        && let Err(e) = dns1123_label(ns)
    {
        out.push(Problem::new("metadata.namespace", e));
    }
    if let Err(errors) = dep.validate_cel() {
        for e in errors {
            let field = if e.field_path.is_empty() {
                "spec".to_string()
            } else {
                e.field_path.clone()
            };
            out.push(Problem::new(field, e.message.clone()));
        }
    }
    if spec.image.trim().is_empty() {
        out.push(Problem::new("spec.image", "must not be empty"));
    }
    if spec.model.name.len() > 253 {
        out.push(Problem::new(
            "spec.model.name",
            "longer than 253 characters",
        ));
    }
    if spec.model.revision.as_deref().is_some_and(str::is_empty) {
        out.push(Problem::new(
            "spec.model.revision",
            "must not be empty when given",
        ));
    }
    if let Some(r) = &spec.model.config_map_ref {
        if let Err(e) = dns1123_subdomain(&r.name) {
            out.push(Problem::new("spec.model.configMapRef.name", e));
        }
        if r.key.is_empty() {
            out.push(Problem::new(
                "spec.model.configMapRef.key",
                "must not be empty",
            ));
        }
    }
    if let Some(r) = &spec.model.hub_token_secret_ref {
        if let Err(e) = dns1123_subdomain(&r.name) {
            out.push(Problem::new("spec.model.hubTokenSecretRef.name", e));
        }
        if r.key.is_empty() {
            out.push(Problem::new(
                "spec.model.hubTokenSecretRef.key",
                "must not be empty",
            ));
        }
    }
    if let Some(a) = &spec.model.architecture
        && let Err(e) = Architecture::from_spec(a)
    {
        out.push(architecture_problem("spec.model.architecture", &e));
    }
    if let Some(len) = spec.max_model_len
        && len > 0
        && len as u64 > limits::MAX_MODEL_LEN
    {
        out.push(Problem::new(
            "spec.maxModelLen",
            format!(
                "{len} is above {}, the longest this operator sizes",
                limits::MAX_MODEL_LEN
            ),
        ));
    }
    if crate::quantity::parse_bytes(&spec.memory.headroom.0).is_none() {
        out.push(Problem::new(
            "spec.memory.headroom",
            format!(
                "{:?} is not a byte quantity (such as 256Mi or 1Gi, not negative)",
                spec.memory.headroom.0
            ),
        ));
    }
    let u = spec.memory.max_utilization;
    if !(u.is_finite() && u > 0.0 && u <= 1.0) {
        out.push(Problem::new(
            "spec.memory.maxUtilization",
            format!("{u} is not in (0, 1]"),
        ));
    }
    for (i, p) in spec.gpu.products.iter().enumerate() {
        if p.trim().is_empty() {
            out.push(Problem::new(
                format!("spec.gpu.products[{i}]"),
                "must not be empty",
            ));
        }
    }
    if let Some(cc) = spec.gpu.min_compute_capability.as_deref()
        && crate::plan::fleet::parse_compute_capability(cc).is_none()
    {
        out.push(Problem::new(
            "spec.gpu.minComputeCapability",
            format!("{cc:?} is not MAJOR.MINOR with numbers that fit 32 bits"),
        ));
    }
    for (i, e) in spec.env.iter().enumerate() {
        // Kubernetes: apimachinery validation.go `IsRelaxedEnvVarName` (printable ASCII but
        // '='), the rule since RelaxedEnvironmentVariableValidation went GA in 1.34.
        if e.name.is_empty()
            || e.name
                .bytes()
                .any(|b| !(0x20..0x7f).contains(&b) || b == b'=')
        {
            out.push(Problem::new(
                format!("spec.env[{i}].name"),
                format!(
                    "{:?} is not an environment variable name (printable ASCII, no '=')",
                    e.name
                ),
            ));
        }
        if e.value.is_some() && e.value_from.is_some() {
            out.push(Problem::new(
                format!("spec.env[{i}]"),
                "value and valueFrom are exclusive",
            ));
        }
    }
    if let Some(r) = &spec.resources {
        for (kind, map) in [("limits", &r.limits), ("requests", &r.requests)] {
            for (name, q) in map.iter().flatten() {
                if crate::quantity::parse_bytes(&q.0).is_none() {
                    out.push(Problem::new(
                        format!("spec.resources.{kind}.{name}"),
                        format!("{:?} is not a quantity", q.0),
                    ));
                }
            }
        }
    }
    for (i, t) in spec.tolerations.iter().enumerate() {
        if let Err(e) = toleration(t) {
            out.push(Problem::new(format!("spec.tolerations[{i}]"), e));
        }
    }
    out
}

/// Kubernetes: pkg/apis/core/validation/validation.go `ValidateTolerations`: an empty key
/// only with `Exists`; no value with `Exists`; an empty operator means `Equal`; effect one of
/// the three taint effects; `tolerationSeconds` only with `NoExecute`. Newer releases add the
/// `Lt` and `Gt` operators; they are let through.
fn toleration(t: &Toleration) -> Result<(), String> {
    let op = t.operator.as_deref().unwrap_or("");
    let key = t.key.as_deref().unwrap_or("");
    let value = t.value.as_deref().unwrap_or("");
    let effect = t.effect.as_deref().unwrap_or("");
    if key.is_empty() && op != "Exists" {
        return Err("operator must be Exists when key is empty".into());
    }
    match op {
        "Exists" if !value.is_empty() => {
            return Err("value must be empty when operator is Exists".into());
        }
        "Exists" | "" | "Equal" | "Lt" | "Gt" => {}
        other => return Err(format!("operator {other:?} is not Exists or Equal")),
    }
    if !matches!(effect, "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    if t.toleration_seconds.is_some() && effect != "NoExecute" {
        return Err("tolerationSeconds needs effect NoExecute".into());
    }
    Ok(())
}

fn architecture_problem(prefix: &str, e: &crate::model::ArchitectureError) -> Problem {
    match e {
        crate::model::ArchitectureError::Missing(f) => {
            Problem::new(format!("{prefix}.{f}"), "required")
        }
        crate::model::ArchitectureError::Invalid { field, reason } => {
            Problem::new(format!("{prefix}.{field}"), reason.clone())
        }
    }
}

/// The rules that need the model: the `maxModelLen` planned (given, or the model's default)
/// must be within what vLLM derives from the model's config (`_get_and_verify_max_len`,
/// vllm/config/model.py in 0.11.0 and 0.33.0), unless `VLLM_ALLOW_LONG_MAX_MODEL_LEN` is set
/// in `spec.env` as vLLM reads it.
pub fn deployment_with_architecture(
    dep: &VllmDeployment,
    arch: &Architecture,
    family: VllmFamily,
) -> Vec<Problem> {
    let mut out = Vec::new();
    let planned = crate::plan::max_model_len(&dep.spec, arch);
    if long_max_model_len_allowed(dep) {
        return out;
    }
    if let Some((limit, key)) = arch.max_model_len_limit(family)
        && planned > limit
    {
        let field = if dep.spec.max_model_len.is_some() {
            "spec.maxModelLen"
        } else {
            "spec.model"
        };
        out.push(Problem::new(
            field,
            format!(
                "max model len {planned} is greater than the model's {limit} ({key} in its config); vLLM refuses it unless {ALLOW_LONG}=1 is in spec.env"
            ),
        ));
    }
    out
}
