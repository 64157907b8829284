//! The ClusterIP Service of a deployment: `spec.port`, selecting its pods, ready ones only.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod::{BuildError, owner_reference, selector_labels};
use crate::api::VllmDeployment;

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
            name: Some(name.clone()),
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
