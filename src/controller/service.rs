//! The ClusterIP Service of a deployment: `spec.port`, selecting its pods, ready ones only.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod::{BuildError, fnv1a, owner_reference, selector_labels};
use crate::api::VllmDeployment;

/// DNS1035LabelMaxLength (k8s staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go).
pub const MAX_SERVICE_NAME: usize = 63;
/// Put before a name that does not start with a letter.
const LEADING_LETTER_PREFIX: &str = "vd-";

/// Whether `name` is a DNS-1035 label, which a Service name must be: `[a-z]([-a-z0-9]*[a-z0-9])?`,
/// at most 63 characters (k8s pkg/apis/core/validation/validation.go: `ValidateServiceName =
/// NameIsDNS1035Label`; apimachinery pkg/util/validation/validation.go `IsDNS1035Label`).
pub fn is_dns1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_SERVICE_NAME
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-'
}

/// The Service name of the deployment `deployment` (a DNS-1123 subdomain, as every custom
/// resource name): itself when it is a DNS-1035 label; otherwise dots become dashes, a name
/// not starting with a letter gets `vd-` in front, and a name still too long is cut and
/// ends in ten hex digits of a hash of the full name, so that distinct long names stay
/// distinct. Two deployments may still map to one Service name (`a.b` and `a-b`): the second
/// finds the Service owned by the first and reports the conflict instead of taking it over.
pub fn service_name(deployment: &str) -> String {
    if is_dns1035_label(deployment) {
        return deployment.to_string();
    }
    let mut name: String = deployment
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name = format!("{LEADING_LETTER_PREFIX}{name}");
    }
    if name.len() > MAX_SERVICE_NAME {
        let hash = format!("{:010x}", fnv1a(deployment.as_bytes()) & 0xff_ffff_ffff);
        name.truncate(MAX_SERVICE_NAME - hash.len() - 1);
        name = format!("{}-{hash}", name.trim_end_matches('-'));
    }
    let name = name.trim_end_matches('-').to_string();
    if name.is_empty() {
        // Unreachable for a valid resource name; a fixed valid label rather than a panic.
        return "vd".into();
    }
    name
}

pub fn service(dep: &VllmDeployment) -> Result<Service, BuildError> {
    let name = dep
        .metadata
        .name
        .clone()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let namespace = dep
        .metadata
        .namespace
        .clone()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    Ok(Service {
        metadata: ObjectMeta {
            name: Some(service_name(&name)),
            namespace: Some(namespace),
            labels: Some(selector_labels(&name)),
            owner_references: Some(vec![owner_reference(dep)?]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&name)),
            // Only pods whose vLLM answers /health get traffic.
            publish_not_ready_addresses: Some(false),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: dep.spec.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1035_labels_follow_the_api_server() {
        for ok in ["a", "llama-8b", "m1", "a-b-c"] {
            assert!(is_dns1035_label(ok), "{ok}");
        }
        for bad in [
            "",
            "llama-3.1-8b",
            "3b",
            "a-",
            "-a",
            "Llama",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(!is_dns1035_label(bad), "{bad}");
        }
    }

    #[test]
    fn service_names_are_valid_labels_for_every_custom_resource_name() {
        assert_eq!(service_name("llama-8b"), "llama-8b");
        assert_eq!(service_name("llama-3.1-8b"), "llama-3-1-8b");
        assert_eq!(service_name("3b.model"), "vd-3b-model");
        assert_eq!(service_name("0"), "vd-0");
        // A 63-character name with dots: cut, with a hash of the full name.
        let long = format!("{}.{}", "a".repeat(40), "b".repeat(22));
        let got = service_name(&long);
        assert!(is_dns1035_label(&got), "{got}");
        assert_eq!(got.len(), MAX_SERVICE_NAME);
        let other = format!("{}.{}", "a".repeat(40), "c".repeat(22));
        assert_ne!(service_name(&other), got);
        // A leading digit pushed past 63 characters by the prefix.
        let digits = format!("9{}", "x".repeat(62));
        let got = service_name(&digits);
        assert!(is_dns1035_label(&got), "{got}");
        // Every DNS-1123 subdomain of up to 253 characters.
        for name in [
            "a.b.c",
            "1.2.3",
            &format!("{}.{}", "z".repeat(120), "9".repeat(120)),
        ] {
            let got = service_name(name);
            assert!(is_dns1035_label(&got), "{name} -> {got}");
        }
    }
}
