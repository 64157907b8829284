//! `vllm-operator render` on the examples and on every VllmDeployment fixture, validated with
//! `kubernetes-validate --strict` against the Kubernetes version the chart checks use
//! (scripts/check-chart.sh, KUBE_VERSION). The objects come from the controller's own builders,
//! so this is the API server's schema applied to what the controller sends.
//!
//! Needs kubernetes-validate ($KUBERNETES_VALIDATE or .venv/bin/kubernetes-validate), installed
//! by scripts/install-tools.sh. A missing tool fails the test, it never skips it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The version scripts/check-chart.sh validates the chart against.
const KUBE_VERSION: &str = "1.33.0";
/// Objects with a ResourceClaim are validated against 1.34, the first release that serves
/// `resource.k8s.io/v1` (DRA GA: Kubernetes v1.34 CHANGELOG, KEP-4381).
const DRA_KUBE_VERSION: &str = "1.34.0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kubernetes_validate() -> PathBuf {
    let kv = std::env::var_os("KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/kubernetes-validate"));
    let works = Command::new(&kv)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        works,
        "kubernetes-validate not found at {} ($KUBERNETES_VALIDATE or .venv/bin/kubernetes-validate): run scripts/install-tools.sh",
        kv.display()
    );
    kv
}

/// `render -o json` of `file` on `fleet`: exit code, the List, stderr.
fn render(file: &Path, fleet: &Path) -> (i32, Value, String) {
    render_with(file, fleet, &[])
}

/// As [`render`], with more arguments.
fn render_with(file: &Path, fleet: &Path, extra: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vllm-operator"))
        .arg("render")
        .args(extra)
        .arg("-f")
        .arg(file)
        .arg("--fleet")
        .arg(fleet)
        .args(["-o", "json"])
        .output()
        .expect("run vllm-operator render");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let code = out.status.code().unwrap_or(-1);
    let list = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "render {}: not JSON ({e}); stderr: {stderr}",
            file.display()
        )
    });
    (code, list, stderr)
}

/// Files whose every document is a VllmDeployment.
fn deployment_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // tests/fixtures/hostile holds input that must be refused (tests/hostile.rs).
            if path.file_name().is_some_and(|n| n == "hostile") {
                continue;
            }
            out.extend(deployment_files(&path));
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let kinds: Vec<String> = serde_norway::Deserializer::from_str(&text)
            .filter_map(|d| serde::Deserialize::deserialize(d).ok())
            .map(|v: Value| v["kind"].as_str().unwrap_or_default().to_string())
            .collect();
        if !kinds.is_empty() && kinds.iter().all(|k| k == "VllmDeployment") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Write every item to its own file and run kubernetes-validate --strict on them all; a
/// failure or any line other than INFO fails.
fn validate(label: &str, items: &[Value]) {
    let dir = std::env::temp_dir().join(format!("vllm-operator-render-{}", std::process::id()));
    let dir = dir.join(label.replace(['/', '.'], "_"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = dir.join(format!(
            "{i:03}-{}.yaml",
            item["kind"].as_str().unwrap_or("unknown")
        ));
        std::fs::write(&path, serde_norway::to_string(item).unwrap()).unwrap();
        files.push(path);
    }
    let version = if items.iter().any(|i| i["kind"] == "ResourceClaim") {
        DRA_KUBE_VERSION
    } else {
        KUBE_VERSION
    };
    let out = Command::new(kubernetes_validate())
        .args(["--strict", "--kubernetes-version", version])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{label}: kubernetes-validate --strict failed:\n{log}"
    );
    let not_info: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("INFO ") && !l.trim().is_empty())
        .collect();
    assert!(
        not_info.is_empty(),
        "{label}: kubernetes-validate warned:\n{log}"
    );
    let passed = log.lines().filter(|l| l.contains("passed")).count();
    assert_eq!(
        passed,
        files.len(),
        "{label}: not every object passed:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn kinds(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap_or_default())
        .collect()
}

#[test]
fn examples_render_released_pods_that_pass_kubernetes_validate_strict() {
    let files = deployment_files(&root().join("examples"));
    assert_eq!(files.len(), 6, "{files:?}");
    for file in files {
        // An example with its own fleet (examples/dra-exact-gpus) is placed on it.
        let own = file.with_file_name("fleet.yaml");
        let fleet = if own.exists() {
            own
        } else {
            root().join("examples/fleet.yaml")
        };
        let (code, list, stderr) = render(&file, &fleet);
        assert_eq!(code, 0, "{}: {stderr}", file.display());
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(list["kind"], "List");
        let items = list["items"].as_array().unwrap();
        assert_eq!(kinds(&list)[0], "Service", "{}", file.display());
        for pod in items.iter().filter(|i| i["kind"] == "Pod") {
            // Released: no placement gate, pinned, annotated with the plan.
            let gates = pod["spec"]["schedulingGates"].as_array().unwrap();
            assert!(gates.is_empty(), "{pod}");
            assert!(pod["spec"]["affinity"]["nodeAffinity"].is_object());
            assert!(pod["metadata"]["annotations"]["vllm-operator.io/launch-plan"].is_string());
            assert!(pod["metadata"]["namespace"].is_string());
            assert!(pod["metadata"]["ownerReferences"][0]["uid"].is_string());
        }
        validate(&file.display().to_string(), items);
    }
}

#[test]
fn every_fixture_deployment_renders_objects_that_pass_kubernetes_validate_strict() {
    let files = deployment_files(&root().join("tests/fixtures"));
    assert!(files.len() >= 10, "{files:?}");
    let mut pods = 0;
    for file in files {
        // The controller fixture has its own fleet; the rest are placed on the example fleet.
        let own = file.with_file_name("fleet.yaml");
        let fleet = if own.exists() {
            own
        } else {
            root().join("examples/fleet.yaml")
        };
        let (code, list, stderr) = render(&file, &fleet);
        // 2 = some replica does not fit: its pod is printed as the gated pod it stays.
        assert!(
            code == 0 || code == 2,
            "{}: exit {code}: {stderr}",
            file.display()
        );
        let items = list["items"].as_array().unwrap();
        assert!(kinds(&list).contains(&"Service"), "{}", file.display());
        pods += kinds(&list).iter().filter(|k| **k == "Pod").count();
        validate(&file.display().to_string(), items);
    }
    assert!(pods >= 10, "only {pods} pods rendered");
}

#[test]
fn render_exit_codes_follow_plan() {
    let fleet = root().join("examples/fleet.yaml");
    // Bad input: a fleet file as the deployment.
    let out = Command::new(env!("CARGO_BIN_EXE_vllm-operator"))
        .args(["render", "-f"])
        .arg(&fleet)
        .arg("--fleet")
        .arg(&fleet)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("belong in --fleet"));

    // Does not fit: printed gated, exit 2, the reason on stderr.
    let dir = std::env::temp_dir().join(format!("vllm-operator-render-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big.yaml");
    std::fs::write(
        &big,
        "apiVersion: vllm-operator.io/v1alpha1\nkind: VllmDeployment\nmetadata: {name: huge}\nspec:\n  model: {name: meta-llama/Llama-3.1-8B-Instruct}\n  replicas: 1\n  minConcurrency: 100000\n",
    )
    .unwrap();
    let (code, list, stderr) = render(&big, &fleet);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("default/huge"), "{stderr}");
    let pod = &list["items"][1];
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["metadata"]["namespace"], "default");
    assert_eq!(
        pod["spec"]["schedulingGates"][0]["name"],
        "vllm-operator.io/placement"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn yaml_output_is_the_same_list() {
    let file = root().join("examples/llama-3.2-1b.yaml");
    let fleet = root().join("examples/fleet.yaml");
    let (_, json_list, _) = render(&file, &fleet);
    let out = Command::new(env!("CARGO_BIN_EXE_vllm-operator"))
        .args(["render", "-f"])
        .arg(&file)
        .arg("--fleet")
        .arg(&fleet)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let yaml: Value = serde_norway::from_slice(&out.stdout).unwrap();
    assert_eq!(yaml, json_list);
}

/// The vLLM container of a rendered pod.
fn vllm(pod: &Value) -> &Value {
    pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "vllm")
        .unwrap()
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn cache_volume(pod: &Value) -> &Value {
    pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "model-cache")
        .unwrap()
}

/// Bytes of a quantity as render prints them (`17Gi` or plain bytes).
fn bytes(q: &Value) -> u64 {
    let s = q.as_str().unwrap();
    match s.strip_suffix("Gi") {
        Some(n) => n.parse::<u64>().unwrap() << 30,
        None => s.parse().unwrap(),
    }
}

/// The rendered pods of `file` on the example fleet, checked by kubernetes-validate --strict.
fn rendered_pods(file: &str) -> Vec<Value> {
    let (code, list, stderr) = render(&root().join(file), &root().join("examples/fleet.yaml"));
    assert_eq!(code, 0, "{file}: {stderr}");
    let items = list["items"].as_array().unwrap();
    validate(file, items);
    let pods: Vec<Value> = items
        .iter()
        .filter(|i| i["kind"] == "Pod")
        .cloned()
        .collect();
    assert!(!pods.is_empty(), "{file}");
    pods
}

#[test]
fn weights_reach_the_pod_in_every_cache_mode() {
    // Llama-3.1-8B-Instruct: 8,030,261,248 bf16 parameters = 16,060,522,496 bytes of
    // safetensors (its index.json total_size).
    const CHECKPOINT: u64 = 16_060_522_496;

    // Default: an emptyDir sized from the checkpoint and requested as ephemeral storage.
    for pod in rendered_pods("examples/llama-3.1-8b.yaml") {
        let c = vllm(&pod);
        let token = env(c, "HF_TOKEN").unwrap();
        assert!(token.get("value").is_none(), "{token}");
        assert_eq!(
            token["valueFrom"]["secretKeyRef"],
            serde_json::json!({"name": "hf-token", "key": "token", "optional": false})
        );
        let home = env(c, "HF_HOME").unwrap()["value"].as_str().unwrap();
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "model-cache")
            .unwrap();
        let dir = mount["mountPath"].as_str().unwrap();
        assert!(
            home.starts_with(&format!("{dir}/")),
            "HF_HOME {home} outside {dir}"
        );
        let request = bytes(&c["resources"]["requests"]["ephemeral-storage"]);
        let limit = bytes(&cache_volume(&pod)["emptyDir"]["sizeLimit"]);
        assert!(request >= CHECKPOINT + (1 << 30), "{request}");
        assert_eq!(request, limit);
        assert_eq!(request, 17 << 30);
    }

    // Ephemeral: one claim per pod from the StorageClass, sized the same; no node disk asked;
    // the revision pinned for model and tokenizer; the user's chat template mounted.
    for pod in rendered_pods("tests/fixtures/weights/ephemeral-cache.yaml") {
        let c = vllm(&pod);
        let template = &cache_volume(&pod)["ephemeral"]["volumeClaimTemplate"]["spec"];
        assert_eq!(template["storageClassName"], "fast-ssd");
        assert_eq!(
            bytes(&template["resources"]["requests"]["storage"]),
            17 << 30
        );
        assert!(
            c["resources"]["requests"]
                .get("ephemeral-storage")
                .is_none()
        );
        let args: Vec<String> = serde_json::from_str(
            pod["metadata"]["annotations"]["vllm-operator.io/args"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let rev = "0e9e39f249a16976918f6564b8830bc894c89659";
        assert!(
            args.windows(2).any(|w| w == ["--revision", rev]),
            "{args:?}"
        );
        assert!(
            args.windows(2).any(|w| w == ["--tokenizer-revision", rev]),
            "{args:?}"
        );
        assert!(
            c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "templates" && m["mountPath"] == "/templates")
        );
    }

    // A shared claim holding a local copy: served from the directory, offline, under its name.
    for pod in rendered_pods("examples/llama-3.1-8b-local.yaml") {
        let c = vllm(&pod);
        assert_eq!(
            cache_volume(&pod)["persistentVolumeClaim"]["claimName"],
            "models"
        );
        let command: Vec<&str> = c["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            command[command.len() - 3..],
            ["vllm", "serve", "/model-cache/llama-3.1-8b-instruct"]
        );
        assert_eq!(env(c, "HF_HUB_OFFLINE").unwrap()["value"], "1");
        assert!(env(c, "HF_TOKEN").is_none());
        assert!(
            c["resources"]["requests"]
                .get("ephemeral-storage")
                .is_none()
        );
        let args = pod["metadata"]["annotations"]["vllm-operator.io/args"]
            .as_str()
            .unwrap();
        assert!(
            args.contains(r#""--served-model-name","meta-llama/Llama-3.1-8B-Instruct""#),
            "{args}"
        );
    }
}

/// The DRA example: each replica's ResourceClaim comes before its pod, asks for exactly the GPU
/// `plan` chose (by UUID, through the NVIDIA DeviceClass), and the pod references it from
/// `spec.resourceClaims` and the vLLM container's `resources.claims`, without `nvidia.com/gpu`;
/// everything passes kubernetes-validate --strict for 1.34. Without slices, no claim at all.
#[test]
fn dra_replicas_render_their_claims_before_their_pods_and_pass_1_34_strict() {
    let file = root().join("examples/dra-exact-gpus/llama-3.1-8b.yaml");
    let (code, list, stderr) = render(&file, &root().join("examples/dra-exact-gpus/fleet.yaml"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        kinds(&list),
        [
            "Service",
            "ResourceClaim",
            "Pod",
            "ResourceClaim",
            "Pod",
            "ResourceClaim",
            "Pod"
        ]
    );
    let items = list["items"].as_array().unwrap();
    let mut claimed = Vec::new();
    for pair in items[1..].chunks(2) {
        let (claim, pod) = (&pair[0], &pair[1]);
        let name = claim["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            pod["metadata"]["name"], name,
            "the claim is named after its pod"
        );
        assert_eq!(
            claim["metadata"]["ownerReferences"][0]["kind"],
            "VllmDeployment"
        );
        let requests = claim["spec"]["devices"]["requests"].as_array().unwrap();
        assert_eq!(requests.len(), 1, "tp 1: one GPU");
        let exactly = &requests[0]["exactly"];
        assert_eq!(exactly["deviceClassName"], "gpu.nvidia.com");
        assert_eq!(exactly["count"], 1);
        let cel = exactly["selectors"][0]["cel"]["expression"]
            .as_str()
            .unwrap();
        let uuid = pod["metadata"]["annotations"]["vllm-operator.io/gpu-uuids"]
            .as_str()
            .unwrap();
        assert_eq!(
            cel,
            format!("device.attributes[\"gpu.nvidia.com\"].uuid == \"{uuid}\"")
        );
        claimed.push(uuid.to_string());
        let refs = pod["spec"]["resourceClaims"].as_array().unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0]["resourceClaimName"], name);
        let container = vllm(pod);
        assert_eq!(container["resources"]["claims"][0]["name"], refs[0]["name"]);
        for kind in ["limits", "requests"] {
            assert!(
                container["resources"][kind].get("nvidia.com/gpu").is_none(),
                "{container}"
            );
        }
    }
    // GPUs 1, 2 and 3, one each; GPU 0 (60 GiB held outside Kubernetes) is claimed by none.
    claimed.sort();
    assert_eq!(
        claimed,
        (1..=3)
            .map(|i| format!("GPU-4d2c7e1a-000{i}-4b7e-8c1d-0000000d0a0{i}"))
            .collect::<Vec<_>>()
    );
    validate("dra-exact-gpus", items);

    // The same node with the device plugin: nothing placed, gated pods that count GPUs.
    for (fleet, extra) in [
        ("examples/dra-exact-gpus/fleet-device-plugin.yaml", &[][..]),
        (
            "examples/dra-exact-gpus/fleet.yaml",
            &["--gpu-allocation", "device-plugin"][..],
        ),
    ] {
        let (code, list, stderr) = render_with(&file, &root().join(fleet), extra);
        assert_eq!(code, 2, "{fleet}: {stderr}");
        assert!(stderr.contains("GPU 0"), "{stderr}");
        assert!(!kinds(&list).contains(&"ResourceClaim"), "{fleet}");
        for pod in list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["kind"] == "Pod")
        {
            assert!(pod["spec"].get("resourceClaims").is_none());
            assert_eq!(vllm(pod)["resources"]["limits"]["nvidia.com/gpu"], "1");
        }
    }
}
