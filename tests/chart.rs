//! Tests of the Helm chart (charts/vllm-operator): least-privilege RBAC, locked-down pod
//! templates, CRDs identical to crds/, the node-agent admission policy's CEL (evaluated with
//! kube's CEL engine), and the Argo CD health check in Lua (run with a real Lua interpreter).
//!
//! Needs `helm` ($HELM or .tools/bin/helm) and `lua5.4` ($LUA or on PATH); both come from
//! scripts/install-tools.sh. A missing tool fails the test, it never skips it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use kube::core::cel::cel::{Context, Program, Value as CelValue};
use kube::core::cel::{AdmissionRequest, KubeCelExt, VapEvaluator, VapExpression};
use serde::Deserialize;
use serde_json::{Value, json};

const RELEASE: &str = "vllm-operator";
const NAMESPACE: &str = "vllm-system";
const ALL_ON: &str = "charts/vllm-operator/ci/all-on-values.yaml";
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("charts/vllm-operator")
}

fn tool_works(program: &Path, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn helm() -> PathBuf {
    let helm = std::env::var_os("HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/bin/helm"));
    assert!(
        tool_works(&helm, "version"),
        "helm not found at {} ($HELM or .tools/bin/helm): run scripts/install-tools.sh",
        helm.display()
    );
    helm
}

fn lua() -> PathBuf {
    let lua = std::env::var_os("LUA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("lua5.4"));
    assert!(
        tool_works(&lua, "-v"),
        "lua not found as {} ($LUA or lua5.4 on PATH): run scripts/install-tools.sh",
        lua.display()
    );
    lua
}

/// `helm template` the chart, with an optional values file, into one JSON value per document.
fn render(values: Option<&str>) -> Vec<Value> {
    let mut cmd = Command::new(helm());
    cmd.arg("template")
        .arg(RELEASE)
        .arg(chart())
        .args(["--namespace", NAMESPACE]);
    if let Some(values) = values {
        cmd.arg("-f").arg(root().join(values));
    }
    let out = cmd.output().expect("run helm template");
    assert!(
        out.status.success(),
        "helm template failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("helm output is UTF-8");
    parse_yaml_documents(&text)
}

/// `helm template` the chart with `--set` values.
fn render_set(sets: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(helm());
    cmd.arg("template")
        .arg(RELEASE)
        .arg(chart())
        .args(["--namespace", NAMESPACE]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("run helm template");
    assert!(
        out.status.success(),
        "helm template failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_yaml_documents(&String::from_utf8(out.stdout).expect("rendered YAML is UTF-8"))
}

fn parse_yaml_documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn both_renders() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        ("default values", render(None)),
        ("all-on values", render(Some(ALL_ON))),
    ]
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(docs: &'a [Value], k: &str, n: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == k && name(d) == n)
        .unwrap_or_else(|| panic!("no {k}/{n} rendered"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------- RBAC

#[test]
fn rbac_has_no_wildcards() {
    for (label, docs) in both_renders() {
        let roles: Vec<&Value> = docs
            .iter()
            .filter(|d| matches!(kind(d), "ClusterRole" | "Role"))
            .collect();
        assert!(
            roles.len() >= 3,
            "{label}: expected controller, agent and lease roles"
        );
        for role in roles {
            let rules = role["rules"].as_array().expect("rules");
            assert!(!rules.is_empty(), "{label}: {} has no rules", name(role));
            for rule in rules {
                for field in [
                    "verbs",
                    "resources",
                    "apiGroups",
                    "resourceNames",
                    "nonResourceURLs",
                ] {
                    for item in strings(&rule[field]) {
                        assert!(
                            !item.contains('*'),
                            "{label}: {} {}: wildcard {field} {item:?} in {rule}",
                            kind(role),
                            name(role)
                        );
                    }
                }
                assert!(
                    !strings(&rule["verbs"]).is_empty(),
                    "{label}: rule without verbs"
                );
                assert!(
                    !strings(&rule["resources"]).is_empty(),
                    "{label}: rule without resources"
                );
            }
            assert!(
                role.get("aggregationRule").is_none(),
                "{label}: {} aggregates other roles",
                name(role)
            );
        }
    }
}

/// (apiGroup, resource) → verbs, over every rule of a role.
fn grants(role: &Value) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role["rules"].as_array().expect("rules") {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                out.entry((group.to_string(), resource.to_string()))
                    .or_default()
                    .extend(strings(&rule["verbs"]).into_iter().map(String::from));
            }
        }
    }
    out
}

fn set(verbs: &[&str]) -> BTreeSet<String> {
    verbs.iter().map(|v| v.to_string()).collect()
}

#[test]
fn agent_may_only_touch_gpunodes() {
    let docs = render(None);
    let role = find(&docs, "ClusterRole", "vllm-operator-node-agent");
    let expected: BTreeMap<(String, String), BTreeSet<String>> = [
        (("vllm-operator.io", "gpunodes"), set(&["create", "patch"])),
        (("vllm-operator.io", "gpunodes/status"), set(&["patch"])),
        // Its own Node: uid for the owner reference, GPU sharing labels.
        (("", "nodes"), set(&["get"])),
    ]
    .into_iter()
    .map(|((g, r), v)| ((g.to_string(), r.to_string()), v))
    .collect();
    assert_eq!(grants(role), expected);
    // No namespaced Role for the agent.
    assert!(
        !docs
            .iter()
            .any(|d| kind(d) == "RoleBinding"
                && d["subjects"][0]["name"] == "vllm-operator-node-agent"),
        "the agent must not get a namespaced role"
    );
}

#[test]
fn controller_rbac_is_what_it_needs() {
    let docs = render(None);
    let g = grants(find(&docs, "ClusterRole", "vllm-operator-controller"));
    let get =
        |group: &str, resource: &str| g.get(&(group.to_string(), resource.to_string())).cloned();
    assert_eq!(
        get("vllm-operator.io", "vllmdeployments"),
        Some(set(&["list", "watch"]))
    );
    assert_eq!(
        get("vllm-operator.io", "vllmdeployments/status"),
        Some(set(&["patch"]))
    );
    assert_eq!(
        get("vllm-operator.io", "gpunodes"),
        Some(set(&["list", "watch"]))
    );
    assert_eq!(
        get("", "pods"),
        Some(set(&["get", "list", "watch", "create", "patch", "delete"]))
    );
    assert_eq!(
        get("", "pods/log"),
        None,
        "the termination message is in pod status"
    );
    assert_eq!(
        get("", "secrets"),
        Some(set(&["get"])),
        "secrets: get only, never list/watch"
    );
    assert_eq!(get("", "configmaps"), Some(set(&["get"])));
    assert_eq!(get("", "nodes"), Some(set(&["list", "watch"])));
    assert_eq!(
        get("events.k8s.io", "events"),
        Some(set(&["create", "patch"]))
    );
    assert_eq!(get("", "events"), None, "kube-rs writes events.k8s.io only");
    assert_eq!(get("vllm-operator.io", "gpunodes/status"), None);
    assert_eq!(
        get("vllm-operator.io", "memoryprofiles"),
        Some(set(&["list", "watch", "create", "patch"])),
        "profiles: applied without update or delete"
    );
    assert_eq!(
        get("vllm-operator.io", "memoryprofiles/status"),
        Some(set(&["patch"]))
    );
    assert_eq!(
        get("coordination.k8s.io", "leases"),
        None,
        "leases only in its namespace"
    );

    let lease = find(&docs, "Role", "vllm-operator-controller-leader-election");
    assert_eq!(lease["metadata"]["namespace"], NAMESPACE);
    for rule in lease["rules"].as_array().unwrap() {
        assert_eq!(strings(&rule["apiGroups"]), ["coordination.k8s.io"]);
        assert_eq!(strings(&rule["resources"]), ["leases"]);
        let verbs = strings(&rule["verbs"]);
        if verbs != ["create"] {
            assert_eq!(strings(&rule["resourceNames"]), ["vllm-operator-leader"]);
        }
    }
}

#[test]
fn memory_profiles_are_readable_by_all_and_editable_by_editors() {
    let docs = render(None);
    let viewer = find(&docs, "ClusterRole", "vllm-operator-memoryprofile-viewer");
    assert_eq!(
        grants(viewer),
        [(
            ("vllm-operator.io".to_string(), "memoryprofiles".to_string()),
            set(&["get", "list", "watch"])
        )]
        .into_iter()
        .collect()
    );
    let editor = find(&docs, "ClusterRole", "vllm-operator-memoryprofile-editor");
    assert_eq!(
        grants(editor),
        [(
            ("vllm-operator.io".to_string(), "memoryprofiles".to_string()),
            set(&[
                "get", "list", "watch", "create", "update", "patch", "delete"
            ])
        )]
        .into_iter()
        .collect(),
        "editors write specs, never the status"
    );
    for label in [
        "rbac.authorization.k8s.io/aggregate-to-edit",
        "rbac.authorization.k8s.io/aggregate-to-admin",
    ] {
        assert_eq!(editor["metadata"]["labels"][label], "true", "{label}");
        assert_eq!(viewer["metadata"]["labels"][label], "true", "{label}");
    }
    assert_eq!(
        viewer["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    assert!(
        editor["metadata"]["labels"]
            .get("rbac.authorization.k8s.io/aggregate-to-view")
            .is_none(),
        "viewers must not write profiles"
    );
    let binding = find(
        &docs,
        "ClusterRoleBinding",
        "vllm-operator-memoryprofile-viewer",
    );
    assert_eq!(
        binding["roleRef"]["name"],
        "vllm-operator-memoryprofile-viewer"
    );
    assert_eq!(binding["subjects"][0]["kind"], "Group");
    assert_eq!(binding["subjects"][0]["name"], "system:authenticated");
    // Off: no binding to every user; the roles stay for aggregation.
    let off = render_set(&["memoryProfiles.readableByAll=false"]);
    assert!(!off.iter().any(
        |d| kind(d) == "ClusterRoleBinding" && name(d) == "vllm-operator-memoryprofile-viewer"
    ));
    find(&off, "ClusterRole", "vllm-operator-memoryprofile-viewer");
}

/// One Kubernetes API call the code makes: the file and the code that makes it, and the RBAC
/// grant it needs.
struct Call {
    file: &'static str,
    code: &'static str,
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
}

/// Every call of the controller (`vllm-operator run`). A watch is a list then a watch.
/// Server-side apply creates an object that does not exist yet, so an apply to a new name
/// needs `create` besides `patch`.
const CONTROLLER_CALLS: &[Call] = &[
    Call {
        file: "src/controller/runner.rs",
        code: "Api::<Guarded>::all(watch_client.clone())",
        group: "vllm-operator.io",
        resource: "vllmdeployments",
        verbs: &["list", "watch"],
    },
    Call {
        file: "src/controller/runner.rs",
        code: ".list_metadata(&one)",
        group: "vllm-operator.io",
        resource: "vllmdeployments",
        verbs: &["list"],
    },
    Call {
        file: "src/controller/apply.rs",
        code: "api.patch_status(",
        group: "vllm-operator.io",
        resource: "vllmdeployments/status",
        verbs: &["patch"],
    },
    Call {
        file: "src/controller/runner.rs",
        code: "Api::<GpuNode>::all(watch_client.clone()),",
        group: "vllm-operator.io",
        resource: "gpunodes",
        verbs: &["list", "watch"],
    },
    Call {
        file: "src/controller/runner.rs",
        code: "cache(Api::<Pod>::all(watch_client.clone()), managed())",
        group: "",
        resource: "pods",
        verbs: &["list", "watch"],
    },
    Call {
        file: "src/controller/apply.rs",
        code: "&Patch::Apply(pod.as_ref())",
        group: "",
        resource: "pods",
        verbs: &["patch", "create"],
    },
    // The release: a JSON patch that tests the placement gate.
    Call {
        file: "src/controller/apply.rs",
        code: "api.patch(&name, &params, &Patch::Json::<()>(patch))",
        group: "",
        resource: "pods",
        verbs: &["patch"],
    },
    // After a failed release, the pod is read before its reservation is forgotten.
    Call {
        file: "src/controller/apply.rs",
        code: "api.get_opt(name)",
        group: "",
        resource: "pods",
        verbs: &["get"],
    },
    Call {
        file: "src/controller/apply.rs",
        code: "api.delete(name, &delete_params(uid))",
        group: "",
        resource: "pods",
        verbs: &["delete"],
    },
    Call {
        file: "src/controller/runner.rs",
        code: ".owns(Api::<Service>::all(watch_client.clone()), managed())",
        group: "",
        resource: "services",
        verbs: &["list", "watch"],
    },
    Call {
        file: "src/controller/apply.rs",
        code: "&Patch::Apply(&svc)",
        group: "",
        resource: "services",
        verbs: &["patch", "create"],
    },
    Call {
        file: "src/controller/runner.rs",
        code: "Api::<Node>::all(watch_client.clone())",
        group: "",
        resource: "nodes",
        verbs: &["list", "watch"],
    },
    Call {
        file: "src/controller/model_source.rs",
        code: ".get_opt(&r.name)",
        group: "",
        resource: "configmaps",
        verbs: &["get"],
    },
    Call {
        file: "src/controller/model_source.rs",
        code: "api.get_opt(name)",
        group: "",
        resource: "secrets",
        verbs: &["get"],
    },
    // DRA: is resource.k8s.io/v1 served (a one-item list at start-up), then the slices the
    // NVIDIA driver publishes (a watch).
    Call {
        file: "src/controller/runner.rs",
        code: "let api = Api::<ResourceSlice>::all(client.clone());",
        group: "resource.k8s.io",
        resource: "resourceslices",
        verbs: &["list"],
    },
    Call {
        file: "src/controller/runner.rs",
        code: "Api::<ResourceSlice>::all(watch_client.clone()),",
        group: "resource.k8s.io",
        resource: "resourceslices",
        verbs: &["list", "watch"],
    },
    // One ResourceClaim per replica on exact GPUs: watched (labelled), created before the
    // pod's release (POST, never apply), read after a 409, deleted with its pod.
    Call {
        file: "src/controller/runner.rs",
        code: "Api::<ResourceClaim>::all(watch_client.clone()),",
        group: "resource.k8s.io",
        resource: "resourceclaims",
        verbs: &["list", "watch"],
    },
    Call {
        file: "src/controller/apply.rs",
        code: "claims.create(&params, wanted)",
        group: "resource.k8s.io",
        resource: "resourceclaims",
        verbs: &["create"],
    },
    Call {
        file: "src/controller/apply.rs",
        code: "claims.get_opt(&name)",
        group: "resource.k8s.io",
        resource: "resourceclaims",
        verbs: &["get"],
    },
    Call {
        file: "src/controller/apply.rs",
        code: "claims.delete(name, &delete_params(uid))",
        group: "resource.k8s.io",
        resource: "resourceclaims",
        verbs: &["delete"],
    },
    // MemoryProfiles: is the CRD installed (a one-item list at start-up), then a watch; the
    // learned spec applied (creates a new name), the status applied on its subresource.
    Call {
        file: "src/controller/runner.rs",
        code: "match Api::<MemoryProfile>::all(client.clone()) .list_metadata(&one)",
        group: "vllm-operator.io",
        resource: "memoryprofiles",
        verbs: &["list"],
    },
    Call {
        file: "src/controller/runner.rs",
        code: "Api::<MemoryProfile>::all(watch_client.clone()),",
        group: "vllm-operator.io",
        resource: "memoryprofiles",
        verbs: &["list", "watch"],
    },
    Call {
        file: "src/controller/apply.rs",
        code: ".patch( &name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&body), )",
        group: "vllm-operator.io",
        resource: "memoryprofiles",
        verbs: &["patch", "create"],
    },
    Call {
        file: "src/controller/apply.rs",
        code: ".patch_status( &name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body), )",
        group: "vllm-operator.io",
        resource: "memoryprofiles/status",
        verbs: &["patch"],
    },
    // kube-runtime's Recorder: POST a new event, PATCH it when the series repeats.
    Call {
        file: "src/controller/apply.rs",
        code: "ctx.recorder.publish(",
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
    },
];

/// Grants no call needs but the API server does: owner references with blockOwnerDeletion
/// need update on the owner's finalizers under OwnerReferencesPermissionEnforcement.
const CONTROLLER_EXTRA: &[(&str, &str, &str)] =
    &[("vllm-operator.io", "vllmdeployments/finalizers", "update")];

/// The leader-election calls, granted by the namespaced Role.
const LEASE_CALLS: &[Call] = &[
    Call {
        file: "src/controller/leader.rs",
        code: "api.get_opt(name)",
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get"],
    },
    Call {
        file: "src/controller/leader.rs",
        code: "api.create(&params, &lease)",
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["create"],
    },
    Call {
        file: "src/controller/leader.rs",
        code: "api.replace(name, &params, &lease)",
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["update"],
    },
];

/// Every call of the node agent (`vllm-node-agent run`).
const AGENT_CALLS: &[Call] = &[
    Call {
        file: "node-agent/src/publish/apply.rs",
        code: ".get_opt(&self.node)",
        group: "",
        resource: "nodes",
        verbs: &["get"],
    },
    // Server-side apply of the object: creates it when absent, which the API server
    // authorizes as create (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go,
    // createAuthorizerAttributes).
    Call {
        file: "node-agent/src/publish/apply.rs",
        code: ".patch(&self.node, &params, &Patch::Apply(&body))",
        group: "vllm-operator.io",
        resource: "gpunodes",
        verbs: &["patch", "create"],
    },
    Call {
        file: "node-agent/src/publish/apply.rs",
        code: ".patch_status(&self.node, &params, &Patch::Apply(&body))",
        group: "vllm-operator.io",
        resource: "gpunodes/status",
        verbs: &["patch"],
    },
];

/// The grants `calls` need, after checking that each call is still in its file.
fn needed(calls: &[Call]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for c in calls {
        let text = std::fs::read_to_string(root().join(c.file)).unwrap();
        let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let code: String = c.code.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains(&code),
            "{}: no longer contains `{}`: update the call list (and the RBAC) to what the code does now",
            c.file,
            c.code
        );
        out.entry((c.group.to_string(), c.resource.to_string()))
            .or_default()
            .extend(c.verbs.iter().map(|v| v.to_string()));
    }
    out
}

/// The RBAC rules and the API calls side by side: every grant is used by a call (or listed as
/// needed by the API server itself), and every call is granted.
#[test]
fn rbac_grants_exactly_the_calls_the_code_makes() {
    // readSecrets is on by default; the Secret get is the only optional grant.
    let docs = render(None);
    let mut want = needed(CONTROLLER_CALLS);
    for (g, r, v) in CONTROLLER_EXTRA {
        want.entry((g.to_string(), r.to_string()))
            .or_default()
            .insert(v.to_string());
    }
    assert_eq!(
        grants(find(&docs, "ClusterRole", "vllm-operator-controller")),
        want,
        "controller ClusterRole vs the calls in CONTROLLER_CALLS"
    );
    assert_eq!(
        grants(find(
            &docs,
            "Role",
            "vllm-operator-controller-leader-election"
        )),
        needed(LEASE_CALLS),
        "leader-election Role vs LEASE_CALLS"
    );
    assert_eq!(
        grants(find(&docs, "ClusterRole", "vllm-operator-node-agent")),
        needed(AGENT_CALLS),
        "agent ClusterRole vs AGENT_CALLS"
    );
}

/// Every rule in the RBAC templates has a comment right above it saying why.
#[test]
fn every_rbac_rule_is_commented() {
    let mut checked = 0;
    for file in [
        "templates/controller-rbac.yaml",
        "templates/agent-rbac.yaml",
    ] {
        let text = std::fs::read_to_string(chart().join(file)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("- apiGroups:") {
                checked += 1;
                let previous = lines[..i]
                    .iter()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(|l| l.trim_start())
                    .unwrap_or_default();
                assert!(
                    previous.starts_with('#'),
                    "{file}:{}: rule without a comment above it",
                    i + 1
                );
            }
        }
    }
    assert!(checked >= 10, "found only {checked} rules");
}

// ------------------------------------------------------------------- pod templates

fn pod_templates(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter(|d| {
            matches!(
                kind(d),
                "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job"
            )
        })
        .map(|d| {
            (
                format!("{}/{}", kind(d), name(d)),
                &d["spec"]["template"]["spec"],
            )
        })
        .chain(docs.iter().filter(|d| kind(d) == "CronJob").map(|d| {
            (
                format!("CronJob/{}", name(d)),
                &d["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            )
        }))
        .collect()
}

#[test]
fn every_pod_template_is_locked_down() {
    for (label, docs) in both_renders() {
        let templates = pod_templates(&docs);
        assert_eq!(
            templates.len(),
            2,
            "{label}: expected the controller and the agent"
        );
        for (what, pod) in templates {
            let ctx = format!("{label}: {what}");
            let psc = &pod["securityContext"];
            assert_eq!(psc["runAsNonRoot"], true, "{ctx}: pod runAsNonRoot");
            let uid = psc["runAsUser"].as_i64().unwrap_or(0);
            assert!(uid > 0, "{ctx}: pod runAsUser must be a fixed non-root UID");
            assert_eq!(
                psc["seccompProfile"]["type"], "RuntimeDefault",
                "{ctx}: pod seccomp"
            );
            for host in ["hostPID", "hostIPC", "hostNetwork"] {
                assert_ne!(pod[host], true, "{ctx}: {host}");
            }
            let containers: Vec<&Value> = ["containers", "initContainers", "ephemeralContainers"]
                .iter()
                .flat_map(|k| pod[k].as_array().into_iter().flatten())
                .collect();
            assert!(!containers.is_empty(), "{ctx}: no containers");
            for c in containers {
                let ctx = format!("{ctx} container {}", c["name"]);
                let sc = &c["securityContext"];
                assert_eq!(
                    sc["allowPrivilegeEscalation"], false,
                    "{ctx}: allowPrivilegeEscalation"
                );
                assert_eq!(
                    sc["readOnlyRootFilesystem"], true,
                    "{ctx}: readOnlyRootFilesystem"
                );
                assert_eq!(sc["runAsNonRoot"], true, "{ctx}: runAsNonRoot");
                assert_ne!(sc["privileged"], true, "{ctx}: privileged");
                assert_ne!(sc["runAsUser"], 0, "{ctx}: runAsUser 0");
                assert_eq!(
                    sc["seccompProfile"]["type"], "RuntimeDefault",
                    "{ctx}: seccomp"
                );
                assert_eq!(
                    strings(&sc["capabilities"]["drop"]),
                    ["ALL"],
                    "{ctx}: drop ALL"
                );
                assert!(
                    sc["capabilities"].get("add").is_none(),
                    "{ctx}: adds capabilities"
                );
            }
        }
    }
}

fn env_value<'a>(container: &'a Value, var: &str) -> &'a Value {
    container["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == var))
        .unwrap_or_else(|| panic!("env {var} missing"))
}

/// The flags the binaries must accept, exactly as the chart passes them.
#[test]
fn controller_and_agent_command_lines() {
    let docs = render(None);
    let controller = &find(&docs, "Deployment", "vllm-operator-controller")["spec"];
    assert_eq!(controller["replicas"], 2);
    let c = &controller["template"]["spec"]["containers"][0];
    assert_eq!(strings(&c["command"]), ["vllm-operator"]);
    assert_eq!(
        strings(&c["args"]),
        [
            "run",
            "--metrics-addr=0.0.0.0:8080",
            "--leader-election=true",
            "--lease-name=vllm-operator-leader",
            "--stale-after-seconds=90",
            "--launcher-image=ghcr.io/vllm-operator/vllm-node-agent:0.1.0",
            "--gpu-allocation=auto",
        ]
    );
    assert_eq!(
        env_value(c, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env_value(c, "POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 8080);

    let pdb = find(&docs, "PodDisruptionBudget", "vllm-operator-controller");
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    let ds = &find(&docs, "DaemonSet", "vllm-operator-node-agent")["spec"]["template"]["spec"];
    let a = &ds["containers"][0];
    assert_eq!(strings(&a["command"]), ["vllm-node-agent"]);
    assert_eq!(
        strings(&a["args"]),
        [
            "run",
            "--node-name=$(NODE_NAME)",
            "--poll-interval-ms=1000",
            "--heartbeat-seconds=30",
            "--threshold-bytes=268435456",
            "--threshold-percent=1",
            "--metrics-addr=0.0.0.0:9400",
            "--pod-resources-socket=/var/lib/kubelet/pod-resources/kubelet.sock",
            "--proc-root=/host/proc",
        ]
    );
    assert_eq!(
        env_value(a, "NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(env_value(a, "NVIDIA_VISIBLE_DEVICES")["value"], "all");
    assert_eq!(
        env_value(a, "NVIDIA_DRIVER_CAPABILITIES")["value"],
        "utility"
    );
    assert_eq!(a["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(a["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(a["ports"][0]["containerPort"], 9400);
    // The agent sees every GPU without taking one from vLLM.
    for section in ["requests", "limits"] {
        assert!(
            a["resources"][section].get("nvidia.com/gpu").is_none(),
            "the agent must not request nvidia.com/gpu"
        );
    }
    assert_eq!(ds["nodeSelector"]["nvidia.com/gpu.present"], "true");
    assert!(
        ds["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "nvidia.com/gpu"
                && t["operator"] == "Exists"
                && t["effect"] == "NoSchedule")
    );
    assert!(
        ds.get("runtimeClassName").is_none(),
        "runtimeClassName is off by default"
    );
    // Host paths: read-only mounts only, of exactly the two directories the agent needs.
    let mounts = a["volumeMounts"].as_array().unwrap();
    for v in ds["volumes"].as_array().unwrap() {
        if let Some(path) = v["hostPath"]["path"].as_str() {
            assert!(
                ["/proc", "/var/lib/kubelet/pod-resources"].contains(&path),
                "unexpected hostPath {path}"
            );
            let m = mounts
                .iter()
                .find(|m| m["name"] == v["name"])
                .expect("mounted");
            assert_eq!(
                m["readOnly"], true,
                "hostPath {path} must be mounted read-only"
            );
        }
    }
    let mount = |n: &str| mounts.iter().find(|m| m["name"] == n).unwrap()["mountPath"].clone();
    assert_eq!(mount("host-proc"), "/host/proc");
    assert_eq!(mount("pod-resources"), "/var/lib/kubelet/pod-resources");

    let all_on = render(Some(ALL_ON));
    let ds = &find(&all_on, "DaemonSet", "vllm-operator-node-agent")["spec"]["template"]["spec"];
    assert_eq!(ds["runtimeClassName"], "nvidia");
    for k in ["ServiceMonitor", "NetworkPolicy"] {
        assert_eq!(
            all_on.iter().filter(|d| kind(d) == k).count(),
            2,
            "all-on: two {k}s"
        );
        assert!(
            !docs.iter().any(|d| kind(d) == k),
            "default: {k} must be off"
        );
    }
}

/// `gpuAllocation` reaches the controller's `--gpu-allocation`; a value the flag does not take
/// is refused by the schema at install time, not by a crash-looping controller.
#[test]
fn gpu_allocation_value_becomes_the_flag_and_only_its_modes_render() {
    for mode in ["auto", "dra", "device-plugin"] {
        let out = Command::new(helm())
            .arg("template")
            .arg(RELEASE)
            .arg(chart())
            .args(["--set", &format!("gpuAllocation={mode}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let docs = parse_yaml_documents(&String::from_utf8(out.stdout).unwrap());
        let c = &find(&docs, "Deployment", "vllm-operator-controller")["spec"]["template"]["spec"]
            ["containers"][0];
        let flag = format!("--gpu-allocation={mode}");
        assert!(strings(&c["args"]).contains(&flag.as_str()), "{mode}");
    }
    let out = Command::new(helm())
        .arg("template")
        .arg(RELEASE)
        .arg(chart())
        .args(["--set", "gpuAllocation=exact"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gpuAllocation"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn chart_refuses_two_controllers_without_leader_election() {
    let out = Command::new(helm())
        .arg("template")
        .arg(RELEASE)
        .arg(chart())
        .args(["--set", "controller.leaderElection=false"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "2 replicas without leader election must not render"
    );
    let out = Command::new(helm())
        .arg("template")
        .arg(RELEASE)
        .arg(chart())
        .args([
            "--set",
            "controller.leaderElection=false",
            "--set",
            "controller.replicas=1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = parse_yaml_documents(&String::from_utf8(out.stdout).unwrap());
    let c = &find(&docs, "Deployment", "vllm-operator-controller")["spec"]["template"]["spec"]["containers"]
        [0];
    assert!(strings(&c["args"]).contains(&"--leader-election=false"));
    assert!(!docs.iter().any(|d| kind(d) == "PodDisruptionBudget"));
}

// -------------------------------------------------------------------------- schema

fn assert_strict(schema: &Value, at: &str, objects: &mut usize) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") {
                *objects += 1;
                assert_eq!(
                    map.get("additionalProperties"),
                    Some(&Value::Bool(false)),
                    "values.schema.json: {at} has properties but allows others"
                );
            }
            for (k, v) in map {
                assert_strict(v, &format!("{at}/{k}"), objects);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                assert_strict(v, &format!("{at}/{i}"), objects);
            }
        }
        _ => {}
    }
}

#[test]
fn values_schema_is_strict() {
    let text = std::fs::read_to_string(chart().join("values.schema.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    let mut objects = 0;
    assert_strict(&schema, "", &mut objects);
    assert!(objects > 15, "only {objects} object schemas");
    let out = Command::new(helm())
        .arg("template")
        .arg(RELEASE)
        .arg(chart())
        .args(["--set", "agent.thresholdByte=1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt value must be rejected");
}

// ---------------------------------------------------------------------------- CRDs

#[test]
fn chart_crds_equal_generated_crds() {
    let list = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let generated = root().join("crds");
    let charted = chart().join("crds");
    let names = list(&generated);
    assert!(!names.is_empty(), "crds/ is empty");
    assert_eq!(
        names,
        list(&charted),
        "crds/ and charts/vllm-operator/crds/ hold different files"
    );
    for n in names {
        let a = std::fs::read(generated.join(&n)).unwrap();
        let b = std::fs::read(charted.join(&n)).unwrap();
        assert!(
            a == b,
            "charts/vllm-operator/crds/{n} differs from crds/{n}: run \
             `cargo run -p vllm-operator -- crd --out-dir crds --out-dir charts/vllm-operator/crds`"
        );
    }
}

// ---------------------------------------------------------- admission policy (CEL)

struct Policy {
    match_condition: String,
    validations: Vec<VapExpression>,
}

fn policy() -> Policy {
    let docs = render(None);
    let vap = docs
        .iter()
        .find(|d| kind(d) == "ValidatingAdmissionPolicy")
        .expect("a ValidatingAdmissionPolicy is rendered");
    assert_eq!(vap["apiVersion"], "admissionregistration.k8s.io/v1");
    let spec = &vap["spec"];
    assert_eq!(spec["failurePolicy"], "Fail");
    let rule = &spec["matchConstraints"]["resourceRules"][0];
    assert_eq!(strings(&rule["apiGroups"]), ["vllm-operator.io"]);
    assert_eq!(strings(&rule["operations"]), ["CREATE", "UPDATE"]);
    assert_eq!(strings(&rule["resources"]), ["gpunodes", "gpunodes/status"]);
    let binding = docs
        .iter()
        .find(|d| kind(d) == "ValidatingAdmissionPolicyBinding")
        .expect("a binding is rendered");
    assert_eq!(binding["spec"]["policyName"], vap["metadata"]["name"]);
    assert_eq!(strings(&binding["spec"]["validationActions"]), ["Deny"]);

    let conditions = spec["matchConditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 1);
    let validations = spec["validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| VapExpression {
            expression: v["expression"].as_str().unwrap().to_string(),
            message: v["message"].as_str().map(String::from),
            message_expression: v["messageExpression"].as_str().map(String::from),
        })
        .collect();
    Policy {
        match_condition: conditions[0]["expression"].as_str().unwrap().to_string(),
        validations,
    }
}

const AGENT_USER: &str = "system:serviceaccount:vllm-system:vllm-operator-node-agent";

fn gpunode(name: &str, node_name: &str) -> Value {
    json!({
        "apiVersion": "vllm-operator.io/v1alpha1",
        "kind": "GpuNode",
        "metadata": {"name": name},
        "status": {"nodeName": node_name, "gpus": []}
    })
}

/// Evaluates each expression the way kube-apiserver binds a VAP's variables, including
/// `request.userInfo.extra`, which kube-cel's `AdmissionRequest` does not carry. Uses the
/// same CEL engine and Kubernetes function library as `VapEvaluator`.
fn eval_with_extra(
    expressions: &[VapExpression],
    object: &Value,
    username: &str,
    extra: Option<Value>,
) -> Vec<bool> {
    let mut user = json!({"username": username, "uid": "1", "groups": ["system:serviceaccounts"]});
    if let Some(extra) = extra {
        user["extra"] = extra;
    }
    let request = json!({
        "operation": "UPDATE",
        "name": object["metadata"]["name"],
        "namespace": "",
        "dryRun": false,
        "kind": {"group": "vllm-operator.io", "version": "v1alpha1", "kind": "GpuNode"},
        "resource": {"group": "vllm-operator.io", "version": "v1alpha1", "resource": "gpunodes"},
        "subResource": "status",
        "userInfo": user,
    });
    let mut ctx = Context::default();
    ctx.register_all();
    let to_cel = |v: &Value| kube::core::cel::cel::to_value(v).expect("JSON converts to CEL");
    ctx.add_variable_from_value("object", to_cel(object));
    ctx.add_variable_from_value("oldObject", to_cel(object));
    ctx.add_variable_from_value("request", to_cel(&request));
    expressions
        .iter()
        .map(|e| {
            let program = Program::compile(&e.expression)
                .unwrap_or_else(|err| panic!("{}: does not compile: {err}", e.expression));
            match program.execute(&ctx) {
                Ok(CelValue::Bool(b)) => b,
                // An evaluation error denies the request (failurePolicy: Fail).
                Ok(other) => panic!("{}: non-boolean {other:?}", e.expression),
                Err(_) => false,
            }
        })
        .collect()
}

fn node_extra(nodes: &[&str]) -> Value {
    json!({ NODE_NAME_EXTRA: nodes, "authentication.kubernetes.io/pod-name": ["x"] })
}

/// The switch for clusters whose tokens lack the node-name extra: the policy and its binding
/// go, nothing else changes.
#[test]
fn admission_policy_can_be_switched_off() {
    let policy_kinds = [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    let on = render(None);
    for k in policy_kinds {
        assert_eq!(on.iter().filter(|d| kind(d) == k).count(), 1, "{k}");
    }
    let off = render_set(&["admissionPolicy.enabled=false"]);
    assert!(off.iter().all(|d| !policy_kinds.contains(&kind(d))));
    let others = |docs: &[Value]| {
        docs.iter()
            .filter(|d| !policy_kinds.contains(&kind(d)))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(others(&on), others(&off));
    // The values schema takes only a boolean.
    let out = Command::new(helm())
        .args(["template", RELEASE])
        .arg(chart())
        .args(["--set-string", "admissionPolicy.enabled=no"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a string was accepted for a boolean");
}

#[test]
fn admission_policy_applies_only_to_the_agent() {
    let p = policy();
    assert!(
        p.match_condition.contains(AGENT_USER),
        "{}",
        p.match_condition
    );
    let condition = [VapExpression {
        expression: p.match_condition.clone(),
        message: None,
        message_expression: None,
    }];
    let matches = |username: &str| {
        VapEvaluator::builder()
            .object(gpunode("gpu-a", "gpu-a"))
            .request(AdmissionRequest {
                operation: "UPDATE".into(),
                username: username.into(),
                ..Default::default()
            })
            .build()
            .evaluate(&condition)[0]
            .passed
    };
    assert!(matches(AGENT_USER));
    assert!(!matches(
        "system:serviceaccount:vllm-system:vllm-operator-controller"
    ));
    assert!(!matches("kubernetes-admin"));
}

#[test]
fn admission_policy_accepts_own_node_and_rejects_others() {
    let p = policy();
    let own = gpunode("gpu-a", "gpu-a");
    assert_eq!(
        eval_with_extra(
            &p.validations,
            &own,
            AGENT_USER,
            Some(node_extra(&["gpu-a"]))
        ),
        vec![true; p.validations.len()],
        "an agent writing its own node's GpuNode must be admitted"
    );

    let other = gpunode("gpu-b", "gpu-b");
    let results = eval_with_extra(
        &p.validations,
        &other,
        AGENT_USER,
        Some(node_extra(&["gpu-a"])),
    );
    assert!(
        !results[0],
        "an agent on gpu-a must not write GpuNode/gpu-b"
    );

    // Own name but claiming another node in status.
    let lying = gpunode("gpu-a", "gpu-b");
    let results = eval_with_extra(
        &p.validations,
        &lying,
        AGENT_USER,
        Some(node_extra(&["gpu-a"])),
    );
    assert!(
        results[0] && !results[1],
        "status.nodeName must match the name: {results:?}"
    );

    // A token without the node-name extra (not bound to a pod, or Kubernetes < 1.30).
    let results = eval_with_extra(&p.validations, &own, AGENT_USER, None);
    assert!(!results[0], "a token without extra must be rejected");
    let results = eval_with_extra(
        &p.validations,
        &own,
        AGENT_USER,
        Some(json!({"authentication.kubernetes.io/pod-name": ["x"]})),
    );
    assert!(
        !results[0],
        "a token without the node-name extra must be rejected"
    );
    let results = eval_with_extra(&p.validations, &own, AGENT_USER, Some(node_extra(&[])));
    assert!(!results[0], "an empty node-name extra must be rejected");

    // kube-cel's VapEvaluator binds request.userInfo without extra: the same rejection.
    let results = VapEvaluator::builder()
        .object(own)
        .request(AdmissionRequest {
            operation: "CREATE".into(),
            username: AGENT_USER.into(),
            name: "gpu-a".into(),
            ..Default::default()
        })
        .build()
        .evaluate(&p.validations);
    assert!(!results[0].passed, "{results:?}");
    assert!(
        results[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("own node"),
        "{results:?}"
    );
    assert!(results[1].passed, "{results:?}");
}

// -------------------------------------------------------------- Argo CD health (Lua)

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\n' => out.push_str("\\n"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

/// A Lua table constructor for a JSON value, as Argo CD hands objects to health scripts.
fn lua_value(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            format!(
                "{{{}}}",
                items.iter().map(lua_value).collect::<Vec<_>>().join(", ")
            )
        }
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

static SCRIPT_COUNTER: AtomicUsize = AtomicUsize::new(0);

fn argo_health(object: &Value) -> (String, String) {
    let script = std::fs::read_to_string(chart().join("files/vllmdeployment-health.lua")).unwrap();
    let program = format!(
        "obj = {}\nlocal function health(obj)\n{script}\nend\nlocal hs = health(obj)\n\
         io.write(hs.status .. '|' .. (hs.message or ''))\n",
        lua_value(object)
    );
    let path = std::env::temp_dir().join(format!(
        "vllm-operator-health-{}-{}.lua",
        std::process::id(),
        SCRIPT_COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, program).unwrap();
    let out = Command::new(lua()).arg(&path).output().expect("run lua");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "lua failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('|').expect("status|message");
    (status.to_string(), message.to_string())
}

#[test]
fn argocd_health_check_maps_every_sample() {
    // file → (expected status, a substring of the expected message)
    let expected: BTreeMap<&str, (&str, &str)> = [
        ("healthy.yaml", ("Healthy", "2/2 replicas ready")),
        ("progressing-no-status.yaml", ("Progressing", "observe")),
        (
            "progressing-old-generation.yaml",
            ("Progressing", "latest spec"),
        ),
        (
            "degraded-stalled.yaml",
            ("Degraded", "no allowed tensor-parallel size"),
        ),
        ("suspended.yaml", ("Suspended", "zero")),
        (
            "progressing-waiting-for-gpu-memory.yaml",
            (
                "Progressing",
                "Waiting for GPU memory: replica 1: best node gpu-node-3",
            ),
        ),
        (
            "progressing-reconciling.yaml",
            ("Progressing", "2 pods are loading the model"),
        ),
    ]
    .into_iter()
    .collect();
    let dir = root().join("tests/fixtures/argocd");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    assert_eq!(
        files.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        expected.keys().copied().collect::<BTreeSet<_>>(),
        "every sample needs an expectation"
    );
    let mut outcomes = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let object: Value = serde_norway::from_str(&text).unwrap();
        let (status, message) = argo_health(&object);
        let (want_status, want_message) = expected[file.as_str()];
        assert_eq!(status, want_status, "{file}: message {message:?}");
        assert!(
            message.contains(want_message),
            "{file}: message {message:?}"
        );
        outcomes.insert(status);
    }
    assert_eq!(
        outcomes,
        ["Degraded", "Healthy", "Progressing", "Suspended"]
            .map(String::from)
            .into(),
        "the samples cover every outcome"
    );
}

#[test]
fn readme_argocd_snippet_embeds_the_script() {
    let readme = std::fs::read_to_string(chart().join("README.md")).unwrap();
    let script = std::fs::read_to_string(chart().join("files/vllmdeployment-health.lua")).unwrap();
    assert!(readme.contains("resource.customizations.health.vllm-operator.io_VllmDeployment: |"));
    let indented: String = script
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("    {l}\n")
            }
        })
        .collect();
    assert!(
        readme.contains(&indented),
        "the argocd-cm snippet in charts/vllm-operator/README.md must embed \
         files/vllmdeployment-health.lua verbatim, indented by four spaces"
    );
}
