//! The vLLM pod the controller sends (as `render` prints it, from the controller's builders)
//! checked against Pod Security Admission, rule by rule. Each check below is written from
//! kubernetes staging/src/k8s.io/pod-security-admission/policy/<file> (the file is named at
//! each check); `visitContainers` there covers containers, init containers and ephemeral
//! containers, and so does `containers()` here.
//!
//! The pod must pass every `baseline` check, and every `restricted` check except the two that
//! need a non-root image (check_runAsNonRoot.go, check_runAsUser.go): the vLLM image runs as
//! root. With `spec.podSecurityContext` asking for non-root, it passes `restricted` whole.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, SecurityContext};
use serde_json::{Value, json};
use vllm_operator::api::VllmDeployment;
use vllm_operator::cli::plan::{load, plan_deployments};
use vllm_operator::cli::render::{DEFAULT_LAUNCHER_IMAGE, render_list};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The pods `render` prints for `deployments` on the example fleet.
fn rendered_pods(deployments: Vec<VllmDeployment>) -> Vec<Pod> {
    let (_, fleet, now) = load(&[], &root().join("examples/fleet.yaml"), None, 120).unwrap();
    let plans = plan_deployments(&deployments, &fleet, now);
    let list = render_list(&deployments, &plans, DEFAULT_LAUNCHER_IMAGE).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "Pod")
        .map(|i| serde_json::from_value(i.clone()).unwrap())
        .collect()
}

fn example_deployments() -> Vec<VllmDeployment> {
    let files: Vec<PathBuf> = ["llama-3.2-1b", "llama-3.1-8b", "llama-3.1-70b"]
        .iter()
        .map(|n| root().join(format!("examples/{n}.yaml")))
        .collect();
    load(&files, &root().join("examples/fleet.yaml"), None, 120)
        .unwrap()
        .0
}

fn containers(spec: &PodSpec) -> Vec<&Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect()
}

fn sc(c: &Container) -> Option<&SecurityContext> {
    c.security_context.as_ref()
}

/// Every `baseline` violation of `pod`, one line each.
fn baseline(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().unwrap();
    let psc = spec.security_context.as_ref();
    let mut out = Vec::new();
    // check_hostNamespaces.go: hostNetwork, hostPID, hostIPC must be unset or false.
    for (field, v) in [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
    ] {
        if v == Some(true) {
            out.push(format!("host namespaces: {field}=true"));
        }
    }
    // check_hostPathVolumes.go: no hostPath volumes.
    for v in spec.volumes.iter().flatten() {
        if v.host_path.is_some() {
            out.push(format!("hostPath volume {}", v.name));
        }
    }
    // check_sysctls.go: only the safe set (the 1.0 list, the strictest).
    const SAFE_SYSCTLS: [&str; 5] = [
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
    ];
    for s in psc.and_then(|p| p.sysctls.as_ref()).into_iter().flatten() {
        if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
            out.push(format!("forbidden sysctl {}", s.name));
        }
    }
    // check_seccompProfile_baseline.go: pod and containers must not be Unconfined.
    if psc
        .and_then(|p| p.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str())
        == Some("Unconfined")
    {
        out.push("pod seccompProfile Unconfined".into());
    }
    // check_appArmorProfile.go: if set, RuntimeDefault or Localhost.
    let apparmor_ok = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    if let Some(p) = psc.and_then(|p| p.app_armor_profile.as_ref())
        && !apparmor_ok(&p.type_)
    {
        out.push(format!("pod appArmorProfile {}", p.type_));
    }
    // check_seLinuxOptions.go: type only container_t/container_init_t/container_kvm_t (or
    // empty); user and role unset.
    let selinux_ok = |o: &k8s_openapi::api::core::v1::SELinuxOptions| {
        matches!(
            o.type_.as_deref().unwrap_or(""),
            "" | "container_t" | "container_init_t" | "container_kvm_t"
        ) && o.user.as_deref().unwrap_or("").is_empty()
            && o.role.as_deref().unwrap_or("").is_empty()
    };
    if let Some(o) = psc.and_then(|p| p.se_linux_options.as_ref())
        && !selinux_ok(o)
    {
        out.push("pod seLinuxOptions".into());
    }
    // check_windowsHostProcess.go
    if psc
        .and_then(|p| p.windows_options.as_ref())
        .and_then(|w| w.host_process)
        == Some(true)
    {
        out.push("pod windowsOptions.hostProcess".into());
    }
    // check_capabilities_baseline.go: only the container runtime's default set may be added.
    const DEFAULT_CAPS: [&str; 13] = [
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ];
    for c in containers(spec) {
        let name = &c.name;
        // check_privileged.go
        if sc(c).and_then(|s| s.privileged) == Some(true) {
            out.push(format!("{name}: privileged"));
        }
        for cap in sc(c)
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|k| k.add.as_ref())
            .into_iter()
            .flatten()
        {
            if !DEFAULT_CAPS.contains(&cap.as_str()) {
                out.push(format!("{name}: adds capability {cap}"));
            }
        }
        // check_hostPorts.go: hostPort unset or 0.
        for p in c.ports.iter().flatten() {
            if p.host_port.unwrap_or(0) != 0 {
                out.push(format!("{name}: hostPort {}", p.host_port.unwrap_or(0)));
            }
        }
        // check_procMount.go: Default or unset.
        if let Some(m) = sc(c).and_then(|s| s.proc_mount.as_deref())
            && m != "Default"
        {
            out.push(format!("{name}: procMount {m}"));
        }
        if sc(c)
            .and_then(|s| s.seccomp_profile.as_ref())
            .map(|p| p.type_.as_str())
            == Some("Unconfined")
        {
            out.push(format!("{name}: seccompProfile Unconfined"));
        }
        if let Some(p) = sc(c).and_then(|s| s.app_armor_profile.as_ref())
            && !apparmor_ok(&p.type_)
        {
            out.push(format!("{name}: appArmorProfile {}", p.type_));
        }
        if let Some(o) = sc(c).and_then(|s| s.se_linux_options.as_ref())
            && !selinux_ok(o)
        {
            out.push(format!("{name}: seLinuxOptions"));
        }
        if sc(c)
            .and_then(|s| s.windows_options.as_ref())
            .and_then(|w| w.host_process)
            == Some(true)
        {
            out.push(format!("{name}: windowsOptions.hostProcess"));
        }
        // check_hostProbesAndhostLifecycle.go: probes and lifecycle handlers may not name a host.
        for probe in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
            .into_iter()
            .flatten()
        {
            let host = probe
                .http_get
                .as_ref()
                .and_then(|h| h.host.clone())
                .or_else(|| probe.tcp_socket.as_ref().and_then(|t| t.host.clone()));
            if host.is_some_and(|h| !h.is_empty()) {
                out.push(format!("{name}: probe host"));
            }
        }
    }
    // check_appArmorProfile.go also reads the deprecated per-container annotations.
    for (k, v) in pod.metadata.annotations.iter().flatten() {
        if k.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && v != "runtime/default"
            && !v.starts_with("localhost/")
        {
            out.push(format!("AppArmor annotation {k}={v}"));
        }
    }
    out
}

/// Every `restricted` violation that does not need a non-root image.
fn restricted_except_non_root(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().unwrap();
    let mut out = Vec::new();
    // check_restrictedVolumes.go: only these volume sources.
    for v in spec.volumes.iter().flatten() {
        let allowed = v.config_map.is_some()
            || v.csi.is_some()
            || v.downward_api.is_some()
            || v.empty_dir.is_some()
            || v.ephemeral.is_some()
            || v.persistent_volume_claim.is_some()
            || v.projected.is_some()
            || v.secret.is_some();
        if !allowed {
            out.push(format!("restricted volume type: {}", v.name));
        }
    }
    // check_seccompProfile_restricted.go: RuntimeDefault or Localhost on the pod, or on every
    // container that does not set its own.
    let valid = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    let pod_profile = spec
        .security_context
        .as_ref()
        .and_then(|p| p.seccomp_profile.as_ref())
        .map(|p| p.type_.clone());
    if let Some(t) = &pod_profile
        && !valid(t)
    {
        out.push(format!("pod seccompProfile {t}"));
    }
    let pod_ok = pod_profile.as_deref().is_some_and(valid);
    for c in containers(spec) {
        let name = &c.name;
        match sc(c).and_then(|s| s.seccomp_profile.as_ref()) {
            Some(p) if !valid(&p.type_) => out.push(format!("{name}: seccompProfile {}", p.type_)),
            Some(_) => {}
            None if !pod_ok => out.push(format!("{name}: no seccompProfile (pod sets none)")),
            None => {}
        }
        // check_allowPrivilegeEscalation.go: must be false, explicitly.
        if sc(c).and_then(|s| s.allow_privilege_escalation) != Some(false) {
            out.push(format!("{name}: allowPrivilegeEscalation not false"));
        }
        // check_capabilities_restricted.go: drop ALL; add at most NET_BIND_SERVICE.
        let caps = sc(c).and_then(|s| s.capabilities.as_ref());
        if !caps
            .and_then(|k| k.drop.as_ref())
            .is_some_and(|d| d.iter().any(|x| x == "ALL"))
        {
            out.push(format!("{name}: capabilities.drop lacks ALL"));
        }
        for cap in caps.and_then(|k| k.add.as_ref()).into_iter().flatten() {
            if cap != "NET_BIND_SERVICE" {
                out.push(format!("{name}: adds {cap}"));
            }
        }
    }
    out
}

/// The two `restricted` checks that need a non-root image.
fn restricted_non_root(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().unwrap();
    let psc = spec.security_context.as_ref();
    let mut out = Vec::new();
    // check_runAsNonRoot.go: true on the pod (and no container sets false), or on every
    // container.
    let pod_non_root = psc.and_then(|p| p.run_as_non_root) == Some(true);
    // check_runAsUser.go: runAsUser must not be 0, on the pod or any container.
    if psc.and_then(|p| p.run_as_user) == Some(0) {
        out.push("pod runAsUser 0".into());
    }
    for c in containers(spec) {
        match sc(c).and_then(|s| s.run_as_non_root) {
            Some(false) => out.push(format!("{}: runAsNonRoot false", c.name)),
            None if !pod_non_root => out.push(format!("{}: runAsNonRoot unset", c.name)),
            _ => {}
        }
        if sc(c).and_then(|s| s.run_as_user) == Some(0) {
            out.push(format!("{}: runAsUser 0", c.name));
        }
    }
    out
}

#[test]
fn rendered_vllm_pods_pass_baseline_and_restricted_short_of_non_root() {
    let pods = rendered_pods(example_deployments());
    assert!(pods.len() >= 3, "{} pods", pods.len());
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        assert_eq!(baseline(pod), Vec::<String>::new(), "{name}");
        assert_eq!(
            restricted_except_non_root(pod),
            Vec::<String>::new(),
            "{name}"
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false), "{name}");
        // The vLLM image runs as root: only the non-root rules fail, and only on its container.
        let non_root = restricted_non_root(pod);
        assert_eq!(
            non_root,
            vec!["vllm: runAsNonRoot unset".to_string()],
            "{name}"
        );
    }
}

#[test]
fn a_deployment_asking_for_non_root_passes_restricted_whole() {
    let mut deployments = example_deployments();
    for d in &mut deployments {
        d.spec.pod_security_context = Some(
            serde_json::from_value(
                json!({"runAsNonRoot": true, "runAsUser": 1000, "fsGroup": 1000}),
            )
            .unwrap(),
        );
    }
    for pod in rendered_pods(deployments) {
        assert_eq!(baseline(&pod), Vec::<String>::new());
        assert_eq!(restricted_except_non_root(&pod), Vec::<String>::new());
        assert_eq!(restricted_non_root(&pod), Vec::<String>::new());
        // Merged over the default, not instead of it.
        let psc = pod.spec.as_ref().unwrap().security_context.clone().unwrap();
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert_eq!(psc.run_as_user, Some(1000));
    }
}

#[test]
fn the_container_security_context_is_merged_over_the_default() {
    let mut deployments = example_deployments();
    deployments.truncate(1);
    deployments[0].spec.security_context = Some(
        serde_json::from_value(json!({
            "readOnlyRootFilesystem": false,
            "capabilities": {"add": ["SYS_PTRACE"]}
        }))
        .unwrap(),
    );
    let pods = rendered_pods(deployments);
    let vllm = pods[0].spec.as_ref().unwrap().containers[0].clone();
    let got: Value = serde_json::to_value(vllm.security_context).unwrap();
    assert_eq!(
        got,
        json!({
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": false,
            "capabilities": {"add": ["SYS_PTRACE"], "drop": ["ALL"]}
        })
    );
    // And the checks see it: SYS_PTRACE is outside the baseline's default set.
    assert_eq!(
        baseline(&pods[0]),
        vec!["vllm: adds capability SYS_PTRACE".to_string()]
    );
}

#[test]
fn the_checks_catch_what_they_check() {
    // A pod as the controller built it before Pod Security was considered: no seccomp
    // profile, no securityContext on the vLLM container.
    let mut pod = rendered_pods(example_deployments()).remove(0);
    let spec = pod.spec.as_mut().unwrap();
    spec.security_context = None;
    spec.containers[0].security_context = None;
    let got = restricted_except_non_root(&pod);
    assert!(
        got.contains(&"vllm: no seccompProfile (pod sets none)".to_string()),
        "{got:?}"
    );
    assert!(got.contains(&"vllm: allowPrivilegeEscalation not false".to_string()));
    assert!(got.contains(&"vllm: capabilities.drop lacks ALL".to_string()));
    spec_mut(&mut pod).host_network = Some(true);
    assert_eq!(
        baseline(&pod),
        vec!["host namespaces: hostNetwork=true".to_string()]
    );
}

fn spec_mut(pod: &mut Pod) -> &mut PodSpec {
    pod.spec.as_mut().unwrap()
}
