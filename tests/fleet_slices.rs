//! ResourceSlices in fleet files: read as `kubectl get resourceslices -o yaml` prints them (alone
//! or in a `List`), validated by `validate::resource_slice` with errors that name the field,
//! kept whatever their driver, and matched to GPUs by `plan`, `simulate` and `render` alike.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use vllm_operator::validate::{self, FleetFile};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const EXAMPLE: &str = "examples/dra-exact-gpus/fleet.yaml";

/// The example fleet as JSON items (GpuNode, Node, ResourceSlice).
fn items() -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(EXAMPLE)).unwrap();
    let list: Value = serde_norway::from_str(&text).unwrap();
    list["items"].as_array().unwrap().clone()
}

fn slice_of(items: &mut [Value]) -> &mut Value {
    items
        .iter_mut()
        .find(|i| i["kind"] == "ResourceSlice")
        .unwrap()
}

fn read(items: &[Value]) -> Result<FleetFile, String> {
    let text =
        serde_norway::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": items}))
            .unwrap();
    validate::fleet_from_str(Path::new("fleet.yaml"), &text)
}

#[track_caller]
fn refused(items: &[Value], words: &[&str]) {
    let err = read(items).expect_err("refused");
    for w in words {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
}

#[test]
fn the_example_fleet_reads_with_its_slice_and_every_gpu_attaches() {
    let file = validate::read_fleet(&root().join(EXAMPLE)).unwrap();
    assert_eq!(
        (file.gpunodes.len(), file.nodes.len(), file.slices.len()),
        (1, 1, 1)
    );
    let (_, fleet, _) = vllm_operator::cli::plan::load(&[], &root().join(EXAMPLE), None, 120)
        .expect("plan's reader");
    let devices: Vec<Option<String>> = fleet.nodes[0]
        .gpus
        .iter()
        .map(|g| g.dra.as_ref().map(|d| format!("{}/{}", d.pool, d.device)))
        .collect();
    assert_eq!(
        devices,
        [
            "h100-dra/gpu-0",
            "h100-dra/gpu-1",
            "h100-dra/gpu-2",
            "h100-dra/gpu-3"
        ]
        .map(|d| Some(d.to_string()))
    );
    // The same node without its slice: the device-plugin path, no GPU published.
    let (_, fleet, _) = vllm_operator::cli::plan::load(
        &[],
        &root().join("examples/dra-exact-gpus/fleet-device-plugin.yaml"),
        None,
        120,
    )
    .unwrap();
    assert!(!fleet.has_dra());
}

#[test]
fn a_slice_alone_as_kubectl_prints_one_object_reads_too() {
    let mut items = items();
    let slice = slice_of(&mut items).clone();
    let gpunode = items[0].clone();
    let text = format!(
        "{}---\n{}",
        serde_norway::to_string(&gpunode).unwrap(),
        serde_norway::to_string(&slice).unwrap()
    );
    let file = validate::fleet_from_str(Path::new("f.yaml"), &text).unwrap();
    assert_eq!(file.slices.len(), 1);
}

#[test]
fn slices_of_other_drivers_are_kept_and_ignored() {
    let mut items = items();
    let mut other = slice_of(&mut items).clone();
    other["metadata"]["name"] = json!("h100-dra-example.com-1");
    other["spec"]["driver"] = json!("example.com");
    // Another driver's devices carry what they like; a `uuid` of our GPU 1 is no claim on it.
    other["spec"]["devices"] = json!([{"name": "nic-0", "attributes": {"uuid": {"string": "x"}}}]);
    // Only the other driver publishes: no GPU is on the DRA path.
    items.retain(|i| i["kind"] != "ResourceSlice");
    items.push(other);
    let file = read(&items).unwrap();
    assert_eq!(file.slices.len(), 1);
    let mut fleet = vllm_operator::plan::Fleet::from_objects(
        &file.gpunodes,
        &file.nodes,
        "2026-11-26T12:00:00Z".parse().unwrap(),
        std::time::Duration::from_secs(120),
    );
    fleet.attach_slices(file.slices.iter());
    assert!(!fleet.has_dra());
}

#[test]
fn a_gpu_of_the_nvidia_driver_without_its_uuid_is_refused_with_the_field() {
    let mut items = items();
    let slice = slice_of(&mut items);
    slice["spec"]["devices"][2]["attributes"]
        .as_object_mut()
        .unwrap()
        .remove("uuid");
    refused(
        &items,
        &[
            "ResourceSlice h100-dra-gpu.nvidia.com-8q2wd",
            "spec.devices[2].attributes.uuid",
            "NVML UUID",
        ],
    );
}

/// A change to the example's slice.
type Change = Box<dyn Fn(&mut Value)>;

#[test]
fn the_api_servers_rules_name_the_field() {
    let cases: Vec<(&str, Change, &[&str])> = vec![
        (
            "two node fields",
            Box::new(|s| s["spec"]["allNodes"] = json!(true)),
            &["`spec`", "nodeName, allNodes"],
        ),
        (
            "no node field",
            Box::new(|s| {
                s["spec"].as_object_mut().unwrap().remove("nodeName");
            }),
            &["exactly one of `nodeName`"],
        ),
        (
            "empty node name",
            Box::new(|s| s["spec"]["nodeName"] = json!("")),
            &["spec.nodeName", "non-empty"],
        ),
        (
            "zero slices in the pool",
            Box::new(|s| s["spec"]["pool"]["resourceSliceCount"] = json!(0)),
            &["spec.pool.resourceSliceCount", "greater than zero"],
        ),
        (
            "negative generation",
            Box::new(|s| s["spec"]["pool"]["generation"] = json!(-1)),
            &["spec.pool.generation"],
        ),
        (
            "driver not a DNS subdomain",
            Box::new(|s| s["spec"]["driver"] = json!("GPU.NVIDIA.COM")),
            &["spec.driver", "DNS-1123 subdomain"],
        ),
        (
            "device name twice",
            Box::new(|s| s["spec"]["devices"][1]["name"] = json!("gpu-0")),
            &["spec.devices[1].name", "appears twice"],
        ),
        (
            "device name not a label",
            Box::new(|s| s["spec"]["devices"][1]["name"] = json!("GPU_1")),
            &["spec.devices[1].name", "DNS-1123 label"],
        ),
        (
            "attribute with two values",
            Box::new(|s| {
                s["spec"]["devices"][0]["attributes"]["brand"] = json!({"string": "x", "int": 1})
            }),
            &["spec.devices[0].attributes.brand", "exactly one of"],
        ),
        (
            "attribute with no value (misspelt)",
            Box::new(|s| s["spec"]["devices"][0]["attributes"]["brand"] = json!({"strng": "x"})),
            &["spec.devices[0].attributes.brand", "exactly one of"],
        ),
        (
            "attribute value too long",
            Box::new(|s| {
                s["spec"]["devices"][0]["attributes"]["brand"] = json!({"string": "x".repeat(65)})
            }),
            &["spec.devices[0].attributes.brand", "longer than 64"],
        ),
        (
            "a UUID that could end the claim's CEL string",
            Box::new(|s| {
                s["spec"]["devices"][1]["attributes"]["uuid"] =
                    json!({"string": "GPU-1\" || true || \""})
            }),
            &["spec.devices[1].attributes.uuid", "that NVML reports"],
        ),
        (
            "one UUID for two GPUs",
            Box::new(|s| {
                s["spec"]["devices"][3]["attributes"]["uuid"] =
                    s["spec"]["devices"][1]["attributes"]["uuid"].clone()
            }),
            &["spec.devices[3].attributes.uuid", "spec.devices[1]"],
        ),
        (
            "more than 128 devices",
            Box::new(|s| {
                let d = s["spec"]["devices"][0].clone();
                s["spec"]["devices"] = Value::Array(
                    (0..129)
                        .map(|i| {
                            let mut d = d.clone();
                            d["name"] = json!(format!("gpu-{i}"));
                            d["attributes"]["uuid"] = json!({"string": format!("GPU-{i}")});
                            d
                        })
                        .collect(),
                );
            }),
            &["spec.devices", "129 devices, more than 128"],
        ),
        (
            "wrong API version",
            Box::new(|s| s["apiVersion"] = json!("resource.k8s.io/v1beta1")),
            &["apiVersion", "use resource.k8s.io/v1"],
        ),
        (
            "pool without a name",
            Box::new(|s| s["spec"]["pool"]["name"] = json!("")),
            &["spec.pool.name", "required"],
        ),
        (
            "wrong type",
            Box::new(|s| s["spec"]["pool"]["generation"] = json!("one")),
            &["spec.pool.generation"],
        ),
    ];
    for (what, change, words) in cases {
        let mut items = items();
        change(slice_of(&mut items));
        let err = read(&items).expect_err(what);
        for w in words {
            assert!(err.contains(w), "{what}: {w:?} not in: {err}");
        }
    }
}

#[test]
fn a_gpu_published_on_one_node_but_reported_by_another_is_refused() {
    let mut items = items();
    let slice = slice_of(&mut items);
    slice["spec"]["nodeName"] = json!("elsewhere");
    refused(
        &items,
        &[
            "ResourceSlice h100-dra-gpu.nvidia.com-8q2wd",
            "published on node elsewhere but reported by GpuNode h100-dra",
        ],
    );
}

#[test]
fn a_slice_twice_is_refused_and_a_newer_clusters_device_fields_are_read() {
    let mut items = items();
    let slice = slice_of(&mut items).clone();
    items.push(slice);
    refused(&items, &["appears twice in the fleet"]);

    // A field a later Kubernetes release adds to devices does not stop the reader.
    let mut items = self::items();
    slice_of(&mut items)["spec"]["devices"][0]["someFutureField"] = json!(true);
    assert!(read(&items).is_ok());
}

#[test]
fn the_cli_takes_gpu_allocation_on_plan_simulate_and_render() {
    for command in ["plan", "simulate", "render"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vllm-operator"))
            .args([command, "--gpu-allocation", "sometimes"])
            .args(["-f", "examples/llama-3.1-8b.yaml"])
            .args(["--fleet", EXAMPLE])
            .current_dir(root())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {stderr}");
        for w in ["auto", "dra", "device-plugin"] {
            assert!(stderr.contains(w), "{command}: {w} not in {stderr}");
        }
    }
}
