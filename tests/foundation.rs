//! The resources themselves: generated CRDs match the committed files, CEL rules reject bad
//! input with readable messages, and every example survives a round trip through the types.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use vllm_operator::api::VllmDeployment;
use vllm_operator::crdgen::crd_files;
use vllm_operator::manifest::{Object, read_documents};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_crds_match_generated() {
    let files = crd_files().expect("CRDs render");
    for dir in ["crds", "charts/vllm-operator/crds"] {
        for (name, generated) in &files {
            let path = root().join(dir).join(name);
            let committed = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}; run `cargo run -- crd --out-dir crds --out-dir charts/vllm-operator/crds`", path.display()));
            assert!(
                &committed == generated,
                "{} differs from `vllm-operator crd`; regenerate with `cargo run -- crd --out-dir crds --out-dir charts/vllm-operator/crds`",
                path.display()
            );
        }
        let on_disk = std::fs::read_dir(root().join(dir)).unwrap().count();
        assert_eq!(
            on_disk,
            files.len(),
            "{dir} holds files that `vllm-operator crd` does not generate"
        );
    }
}

#[test]
fn crds_declare_what_other_tools_read() {
    let files = crd_files().unwrap();
    let vd: Value = serde_norway::from_str(&files[0].1).unwrap();
    assert_eq!(vd["spec"]["group"], "vllm-operator.io");
    assert_eq!(vd["spec"]["scope"], "Namespaced");
    assert_eq!(vd["spec"]["names"]["shortNames"], json!(["vd"]));
    assert_eq!(vd["spec"]["names"]["categories"], json!(["vllm"]));
    let version = &vd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(
        version["subresources"]["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
    // HPA and KEDA read the pod selector through the scale subresource.
    assert_eq!(
        version["subresources"]["scale"]["labelSelectorPath"],
        ".status.selector"
    );
    // A null headroom is not a value: the API server prunes it and applies the default
    // (apiextensions-apiserver structural defaulting), and nothing may store null.
    let headroom = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["memory"]
        ["properties"]["headroom"];
    assert_eq!(headroom["default"], "256Mi");
    assert_ne!(headroom["nullable"], true, "{headroom}");
    assert_eq!(headroom["x-kubernetes-int-or-string"], true);
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Ready", "Model", "TP", "Quant", "Util", "Status", "Age"]
    );
    let conditions =
        &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));

    let gn: Value = serde_norway::from_str(&files[1].1).unwrap();
    assert_eq!(gn["spec"]["scope"], "Cluster");
    assert_eq!(gn["spec"]["names"]["shortNames"], json!(["gpun"]));
    let columns: Vec<&str> = gn["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Node", "GPUs", "Free", "Age"]);
    let gpu = &gn["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        ["gpus"]["items"]["properties"];
    for field in [
        "index",
        "uuid",
        "product",
        "computeCapability",
        "memory",
        "migMode",
        "allocatedTo",
        "processes",
    ] {
        assert!(gpu.get(field).is_some(), "GpuNode gpus[] lacks {field}");
    }
    assert_eq!(gpu["memory"]["properties"]["totalBytes"]["type"], "integer");

    let (name, text) = files
        .iter()
        .find(|(n, _)| *n == "memoryprofiles.yaml")
        .expect("the MemoryProfile CRD is generated");
    let mp: Value = serde_norway::from_str(text).unwrap();
    assert_eq!(mp["spec"]["scope"], "Cluster", "{name}");
    assert_eq!(mp["spec"]["names"]["shortNames"], json!(["vmp"]));
    assert_eq!(mp["spec"]["names"]["categories"], json!(["vllm"]));
    let version = &mp["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Model",
            "Image",
            "GPU",
            "TP",
            "Quant",
            "KV dtype",
            "Non-KV per GPU",
            "Observations",
            "Source",
            "Age"
        ]
    );
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        spec["properties"]["source"]["enum"],
        json!(["Measured", "Manual"])
    );
    let required: Vec<&str> = spec["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for field in [
        "model",
        "image",
        "gpuProduct",
        "tensorParallelSize",
        "nonKvBytesPerGpu",
    ] {
        assert!(required.contains(&field), "{field} is not required");
    }
}

fn example_deployment() -> VllmDeployment {
    let docs = read_documents(&root().join("examples/llama-3.1-70b.yaml")).unwrap();
    docs[0].parse().unwrap()
}

/// Apply `mutate` to a valid deployment's JSON and return the CEL messages it gets.
fn cel_messages(mutate: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut value = serde_json::to_value(example_deployment()).unwrap();
    mutate(&mut value);
    let vd: VllmDeployment = serde_json::from_value(value).unwrap();
    match vd.validate_cel() {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
    }
}

#[test]
fn cel_accepts_the_examples() {
    assert_eq!(cel_messages(|_| {}), Vec::<String>::new());
}

#[test]
fn cel_rejects_bad_tensor_parallel_sizes() {
    for sizes in [
        json!([3]),
        json!([1, 2, 6]),
        json!([128]),
        json!([0]),
        json!([]),
    ] {
        let messages = cel_messages(|v| v["spec"]["tensorParallel"]["sizes"] = sizes.clone());
        assert_eq!(
            messages,
            ["tensorParallel.sizes must be non-empty powers of two from 1 to 64"],
            "sizes {sizes}"
        );
    }
    assert!(
        cel_messages(|v| v["spec"]["tensorParallel"]["sizes"] = json!([1, 2, 4, 8, 16, 32, 64]))
            .is_empty()
    );
}

#[test]
fn cel_rejects_utilization_outside_zero_one() {
    for u in [0.0, -0.1, 1.01, 2.0] {
        let messages = cel_messages(|v| v["spec"]["memory"]["maxUtilization"] = json!(u));
        assert_eq!(
            messages,
            ["memory.maxUtilization must be in (0, 1]"],
            "maxUtilization {u}"
        );
    }
    assert!(cel_messages(|v| v["spec"]["memory"]["maxUtilization"] = json!(1.0)).is_empty());
}

#[test]
fn cel_rejects_negative_replicas_short_model_len_and_empty_name() {
    assert_eq!(
        cel_messages(|v| v["spec"]["replicas"] = json!(-1)),
        ["replicas must be 0 or more"]
    );
    assert!(cel_messages(|v| v["spec"]["replicas"] = json!(0)).is_empty());
    assert_eq!(
        cel_messages(|v| v["spec"]["maxModelLen"] = json!(0)),
        ["maxModelLen must be at least 1"]
    );
    assert_eq!(
        cel_messages(|v| v["spec"]["model"]["name"] = json!("")),
        ["model.name must not be empty"]
    );
    assert_eq!(
        cel_messages(|v| v["spec"]["gpu"]["minComputeCapability"] = json!("ampere")),
        ["gpu.minComputeCapability must look like 8.0"]
    );
}

#[test]
fn cel_reports_every_broken_rule_at_once() {
    let messages = cel_messages(|v| {
        v["spec"]["replicas"] = json!(-2);
        v["spec"]["memory"]["maxUtilization"] = json!(0);
    });
    assert_eq!(messages.len(), 2, "{messages:?}");
}

/// Every key of `original` is present with the same value in `round_tripped`.
fn assert_subset(original: &Value, round_tripped: &Value, at: &str) {
    match (original, round_tripped) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let child = format!("{at}.{k}");
                let other = b
                    .get(k)
                    .unwrap_or_else(|| panic!("{child} was dropped by the types"));
                assert_subset(v, other, &child);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{at}: length changed");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_subset(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Number(a), Value::Number(b)) => assert_eq!(a.as_f64(), b.as_f64(), "{at}"),
        (a, b) => assert_eq!(a, b, "{at}"),
    }
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn round_trip(path: &Path) -> usize {
    let docs = read_documents(path).unwrap_or_else(|e| panic!("{e}"));
    for doc in &docs {
        let back = match doc.to_object().unwrap_or_else(|e| panic!("{e}")) {
            Object::VllmDeployment(o) => serde_json::to_value(&*o).unwrap(),
            Object::GpuNode(o) => serde_json::to_value(&*o).unwrap(),
            Object::Node(o) => serde_json::to_value(&*o).unwrap(),
            Object::MemoryProfile(o) => serde_json::to_value(&*o).unwrap(),
            Object::ResourceSlice(o) => serde_json::to_value(&*o).unwrap(),
            Object::Other { kind, name } => panic!("{}: unexpected {kind} {name}", path.display()),
        };
        assert_subset(
            &doc.value,
            &back,
            &format!("{}#{}", path.display(), doc.document),
        );
        // And back again: YAML text -> types -> YAML text is a fixed point.
        let yaml = serde_norway::to_string(&back).unwrap();
        let again: Value = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(back, again);
    }
    docs.len()
}

#[test]
fn every_example_round_trips_through_the_types() {
    let files = example_files();
    assert!(
        files.len() >= 4,
        "examples/ should hold deployments and a fleet"
    );
    let objects: usize = files.iter().map(|f| round_trip(f)).sum();
    assert!(objects >= 6, "only {objects} objects in examples/");
}

#[test]
fn examples_pass_the_crd_rules() {
    for file in example_files() {
        for doc in read_documents(&file).unwrap() {
            if let Object::VllmDeployment(vd) = doc.to_object().unwrap() {
                vd.validate_cel()
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            }
        }
    }
}

#[test]
fn a_typo_in_a_field_is_named_in_the_error() {
    let text = "apiVersion: vllm-operator.io/v1alpha1\nkind: VllmDeployment\nmetadata: {name: x}\nspec:\n  model: {name: m}\n  replicas: many\n";
    let docs = vllm_operator::manifest::documents_from_str(Path::new("bad.yaml"), text).unwrap();
    let err = docs[0].to_object().unwrap_err().to_string();
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("document 1"), "{err}");
    assert!(err.contains("spec.replicas"), "{err}");
}

#[test]
fn an_explicit_null_headroom_decodes_as_the_default() {
    let text = "apiVersion: vllm-operator.io/v1alpha1\nkind: VllmDeployment\nmetadata: {name: m}\nspec:\n  model: {name: meta-llama/Llama-3.2-1B-Instruct}\n  memory: {headroom: null, maxUtilization: 0.9}\n";
    let d: VllmDeployment = serde_norway::from_str(text).unwrap();
    assert_eq!(d.spec.memory.headroom.0, "256Mi");
    assert_eq!(d.spec.memory.max_utilization, 0.9);
    let json: VllmDeployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "vllm-operator.io/v1alpha1", "kind": "VllmDeployment",
        "metadata": {"name": "m"},
        "spec": {"model": {"name": "x"}, "memory": {"headroom": null}}
    }))
    .unwrap();
    assert_eq!(json.spec.memory.headroom.0, "256Mi");
}
