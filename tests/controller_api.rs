//! The controller's Kubernetes writes, request by request, against kube-rs's tower-test mock:
//! one named scenario per path through reconcile.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use vllm_operator::api::{GpuNode, VllmDeployment};
use vllm_operator::controller::context::{Context, Error, GpuAllocation, Settings, Stores};
use vllm_operator::controller::leader::{self, Elector, LEASE_DURATION};
use vllm_operator::controller::metrics::Metrics;
use vllm_operator::controller::pod::{PodGpus, gated_pod, spec_hash};
use vllm_operator::controller::reconcile::{error_policy, reconcile};
use vllm_operator::controller::runner::{RunError, check_crds};
use vllm_operator::model::hub::HubClient;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Send = tower_test::mock::SendResponse<Response<Body>>;

const LAUNCHER: &str = "ghcr.io/vllm-operator/vllm-node-agent:0.1.0";
const APPLY: &str = "application/apply-patch+yaml";

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/controller/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn deployment() -> VllmDeployment {
    let mut d: VllmDeployment = serde_norway::from_str(&fixture("deployment.yaml")).unwrap();
    d.metadata.uid = Some("dep-uid".into());
    d
}

/// The GpuNodes and Nodes of the fleet fixture.
fn fleet() -> (Vec<GpuNode>, Vec<Node>) {
    let list: Value = serde_norway::from_str(&fixture("fleet.yaml")).unwrap();
    let items = list["items"].as_array().unwrap();
    let of = |kind: &str| {
        items
            .iter()
            .filter(|i| i["kind"] == kind)
            .cloned()
            .collect::<Vec<_>>()
    };
    (
        serde_json::from_value(Value::Array(of("GpuNode"))).unwrap(),
        serde_json::from_value(Value::Array(of("Node"))).unwrap(),
    )
}

fn now() -> Timestamp {
    "2026-11-26T12:00:10Z".parse().unwrap()
}

fn context(client: kube::Client, pods: Vec<Pod>) -> Arc<Context> {
    context_for(client, deployment(), pods)
}

fn context_for(client: kube::Client, dep: VllmDeployment, pods: Vec<Pod>) -> Arc<Context> {
    context_on(client, dep, pods, fleet())
}

fn context_on(
    client: kube::Client,
    dep: VllmDeployment,
    pods: Vec<Pod>,
    (gpunodes, nodes): (Vec<GpuNode>, Vec<Node>),
) -> Arc<Context> {
    let stores = Stores::from_objects(vec![dep], gpunodes, nodes, pods);
    let settings = Settings {
        launcher_image: LAUNCHER.into(),
        stale_after: Duration::from_secs(90),
        reservation_timeout: Duration::from_secs(300),
        gpu_allocation: GpuAllocation::Auto,
    };
    let mut ctx = Context::new(
        client,
        stores,
        settings,
        Arc::new(Metrics::default()),
        HubClient::default(),
    );
    ctx.clock = now;
    Arc::new(ctx)
}

fn mock() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// The next request: method, path+query, content type and JSON body.
async fn next(handle: &mut Handle) -> (http::Method, String, String, Value, Send) {
    let (req, send) = handle.next_request().await.expect("a request");
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (method, uri, content_type, body, send)
}

fn respond(send: Send, code: u16, body: &Value) {
    let resp = Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    send.send_response(resp);
}

fn pod_name() -> String {
    format!("llama-1b-0-{}", spec_hash(&deployment().spec))
}

/// A pod as the cache would hold it: created gated with `gpus` GPUs.
fn cached_gated_pod(gpus: u32) -> Pod {
    let mut pod = gated_pod(
        &deployment(),
        0,
        &spec_hash(&deployment().spec),
        PodGpus::DevicePlugin(gpus),
        LAUNCHER,
        Some(4 << 30),
    )
    .unwrap();
    pod.metadata.uid = Some("pod-uid".into());
    pod.metadata.resource_version = Some("7".into());
    pod
}

async fn expect_service_apply(handle: &mut Handle) {
    let (method, uri, ct, body, send) = next(handle).await;
    assert_eq!(method, http::Method::PATCH);
    assert_eq!(
        uri,
        "/api/v1/namespaces/serving/services/llama-1b?&fieldManager=vllm-operator"
    );
    assert_eq!(ct, APPLY);
    respond(send, 200, &body);
}

async fn expect_status_apply(handle: &mut Handle) -> Value {
    let (method, uri, ct, body, send) = next(handle).await;
    assert_eq!(method, http::Method::PATCH);
    assert_eq!(
        uri,
        "/apis/vllm-operator.io/v1alpha1/namespaces/serving/vllmdeployments/llama-1b/status?&force=true&fieldManager=vllm-operator"
    );
    assert_eq!(ct, APPLY);
    let mut echo = serde_json::to_value(deployment()).unwrap();
    echo["status"] = body["status"].clone();
    respond(send, 200, &echo);
    body
}

/// Events about one pod are recorded on that pod, with the deployment as `related`.
const POD_EVENTS: &[&str] = &[
    "Placed",
    "ArgsReplaced",
    "Resized",
    "LauncherRefused",
    "GpuMemoryFailure",
    "PodFailed",
];

async fn expect_event(handle: &mut Handle, reason: &str) -> Value {
    let (method, uri, _, body, send) = next(handle).await;
    assert_eq!(method, http::Method::POST);
    assert_eq!(uri, "/apis/events.k8s.io/v1/namespaces/serving/events?");
    assert_eq!(body["reason"], reason, "{body}");
    if POD_EVENTS.contains(&reason) {
        assert_eq!(body["regarding"]["kind"], "Pod", "{body}");
        assert_eq!(body["regarding"]["apiVersion"], "v1");
        assert_eq!(body["regarding"]["name"], pod_name());
        assert_eq!(body["related"]["kind"], "VllmDeployment");
        assert_eq!(body["related"]["name"], "llama-1b");
    } else {
        assert_eq!(body["regarding"]["kind"], "VllmDeployment");
        assert_eq!(body["regarding"]["name"], "llama-1b");
    }
    assert_eq!(body["reportingController"], "vllm-operator");
    respond(send, 201, &body);
    body
}

#[tokio::test]
async fn scenario_new_replica_is_created_gated_by_server_side_apply() {
    let (client, mut handle) = mock();
    let ctx = context(client, vec![]);
    let server = tokio::spawn(async move {
        let (method, uri, ct, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::PATCH);
        assert_eq!(
            uri,
            format!(
                "/api/v1/namespaces/serving/pods/{}?&force=true&fieldManager=vllm-operator",
                pod_name()
            )
        );
        assert_eq!(ct, APPLY);
        assert_eq!(body["apiVersion"], "v1");
        assert_eq!(body["kind"], "Pod");
        assert_eq!(body["metadata"]["name"], pod_name());
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "dep-uid");
        assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(body["metadata"]["labels"]["vllm-operator.io/replica"], "0");
        assert_eq!(
            body["spec"]["schedulingGates"],
            json!([{"name": "vllm-operator.io/placement"}])
        );
        // The planner fits the 1B model on one GPU: the pod is sized for it at creation.
        assert_eq!(
            body["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
            "1"
        );
        assert!(body["spec"].get("nodeName").is_none());
        assert!(body["spec"].get("affinity").is_none());
        // The default model cache: an emptyDir sized from the 2.47 GB checkpoint (plus 5 % and
        // 1 GiB, in whole GiB), requested as ephemeral storage, with HF_HOME inside it.
        let vllm = &body["spec"]["containers"][0];
        assert_eq!(vllm["resources"]["requests"]["ephemeral-storage"], "4Gi");
        let volumes = body["spec"]["volumes"].as_array().unwrap();
        let cache = volumes.iter().find(|v| v["name"] == "model-cache").unwrap();
        assert_eq!(cache["emptyDir"]["sizeLimit"], "4Gi");
        assert!(
            vllm["volumeMounts"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "model-cache", "mountPath": "/model-cache"}))
        );
        assert_eq!(
            vllm["env"][0],
            json!({"name": "HF_HOME", "value": "/model-cache/huggingface"})
        );
        respond(send, 201, &body);

        expect_service_apply(&mut handle).await;
        let status = expect_status_apply(&mut handle).await;
        assert_eq!(status["status"]["placements"][0]["pod"], pod_name());
        assert_eq!(
            status["status"]["placements"][0]["reason"],
            "created; waiting for a placement"
        );
    });
    let action = reconcile(Arc::new(DeserializeGuard(Ok(deployment()))), ctx)
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

const JSON_PATCH: &str = "application/json-patch+json";

/// The op of a JSON patch at `path`.
fn op<'a>(ops: &'a Value, path: &str) -> &'a Value {
    ops.as_array()
        .unwrap()
        .iter()
        .find(|o| o["path"] == path)
        .unwrap_or_else(|| panic!("no op at {path}: {ops}"))
}

#[tokio::test]
async fn scenario_gated_pod_is_released_by_a_json_patch_that_tests_the_gate() {
    let (client, mut handle) = mock();
    let ctx = context(client, vec![cached_gated_pod(1)]);
    let server = tokio::spawn(async move {
        let (method, uri, ct, ops, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::PATCH);
        assert_eq!(
            uri,
            format!(
                "/api/v1/namespaces/serving/pods/{}?&fieldManager=vllm-operator",
                pod_name()
            )
        );
        assert_eq!(ct, JSON_PATCH);
        // First the test that the gate is still there, then its removal: a stale cache fails
        // the test instead of re-releasing a released pod.
        assert_eq!(
            ops[0],
            json!({"op": "test", "path": "/spec/schedulingGates/0/name", "value": "vllm-operator.io/placement"})
        );
        assert_eq!(
            ops[1],
            json!({"op": "remove", "path": "/spec/schedulingGates/0"})
        );
        // Only the paths that change: no resourceVersion, no containers sent back.
        let text = ops.to_string();
        assert!(!text.contains("resourceVersion"), "{text}");
        assert!(!text.contains("containers"), "{text}");
        assert!(!text.contains("nodeName"), "never nodeName: {text}");
        let affinity = &op(&ops, "/spec/affinity")["value"];
        assert_eq!(op(&ops, "/spec/affinity")["op"], "add");
        assert_eq!(
            affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
            // Pinned by node name, as the DaemonSet controller does; the hostname label may
            // differ from the name.
            json!({"nodeSelectorTerms": [{"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": ["a100-a"]}
            ]}]})
        );
        let text = serde_json::to_string(affinity).unwrap();
        assert!(text.contains("a100-a"), "{text}");
        let annotations = &op(&ops, "/metadata/annotations")["value"];
        let placement: Value =
            serde_json::from_str(annotations["vllm-operator.io/placement"].as_str().unwrap())
                .unwrap();
        assert_eq!(placement["node"], "a100-a");
        assert_eq!(placement["tensorParallelSize"], 1);
        let plan: Value = serde_json::from_str(
            annotations["vllm-operator.io/launch-plan"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert!(plan["required_bytes"].as_u64().unwrap() > 0, "{plan}");
        let args: Vec<String> =
            serde_json::from_str(annotations["vllm-operator.io/args"].as_str().unwrap()).unwrap();
        // The user's arguments first, the planned flags last (argparse keeps the last).
        assert_eq!(args[0], "--enable-prefix-caching");
        assert_eq!(args[args.len() - 2], "--gpu-memory-utilization");
        assert!(args.contains(&"--tensor-parallel-size".to_string()));
        // The user's --gpu-memory-utilization is replaced by the planned one, not repeated.
        let flag = args
            .iter()
            .position(|a| a == "--gpu-memory-utilization")
            .unwrap();
        assert_eq!(
            args.iter()
                .filter(|a| *a == "--gpu-memory-utilization")
                .count(),
            1,
            "{args:?}"
        );
        assert_eq!(
            args[flag + 1],
            format!("{:.2}", placement["gpuMemoryUtilization"].as_f64().unwrap())
        );
        // The patch applies to the pod as cached, and leaves it released.
        let patch: json_patch::Patch = serde_json::from_value(ops.clone()).unwrap();
        let mut doc = serde_json::to_value(cached_gated_pod(1)).unwrap();
        json_patch::patch(&mut doc, &patch.0).unwrap();
        assert_eq!(doc["spec"]["schedulingGates"], json!([]));
        respond(send, 200, &doc);

        expect_service_apply(&mut handle).await;
        let status = expect_status_apply(&mut handle).await;
        assert_eq!(status["status"]["placements"][0]["node"], "a100-a");
        expect_event(&mut handle, "ArgsReplaced").await;
        expect_event(&mut handle, "Placed").await;
    });
    reconcile(Arc::new(DeserializeGuard(Ok(deployment()))), ctx)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

fn unprocessable(message: &str) -> Value {
    json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Invalid","code":422,"message":message})
}

/// A release whose `test` fails: the pod is read back before anything is forgotten.
async fn release_rejected_then_read(found: Option<Pod>) -> Arc<Context> {
    let (client, mut handle) = mock();
    let ctx = context(client, vec![cached_gated_pod(1)]);
    let server = tokio::spawn(async move {
        let (method, _, ct, _, send) = next(&mut handle).await;
        assert_eq!((method, ct.as_str()), (http::Method::PATCH, JSON_PATCH));
        respond(
            send,
            422,
            &unprocessable("the server rejected our request due to an error in our request"),
        );
        let (method, uri, _, _, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::GET);
        assert_eq!(
            uri,
            format!("/api/v1/namespaces/serving/pods/{}", pod_name())
        );
        match found {
            Some(pod) => respond(send, 200, &serde_json::to_value(pod).unwrap()),
            None => respond(
                send,
                404,
                &json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}),
            ),
        }
    });
    let err = reconcile(Arc::new(DeserializeGuard(Ok(deployment()))), ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.stage(), "ReleasePod");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    ctx
}

fn reserved(ctx: &Context) -> Option<String> {
    ctx.ledger
        .lock()
        .unwrap()
        .get(&vllm_operator::api::PodRef {
            namespace: "serving".into(),
            name: pod_name(),
        })
        .map(|r| r.node.clone())
}

#[tokio::test]
async fn scenario_failed_release_of_an_already_released_pod_keeps_its_reservation() {
    // An earlier release (whose answer was lost, or seen late by the cache) already removed the
    // gate and pinned the pod to a100-b: its memory is promised there.
    let mut released = cached_gated_pod(1);
    released.spec.as_mut().unwrap().scheduling_gates = Some(vec![]);
    released.metadata.annotations = Some(
        [(
            "vllm-operator.io/placement".to_string(),
            json!({"pod": pod_name(), "node": "a100-b", "tensorParallelSize": 1, "quantization": "none",
                   "kvCacheDtype": "auto", "gpuMemoryUtilization": 0.9, "maxModelLen": 8192,
                   "kvCacheTokens": 1000})
            .to_string(),
        )]
        .into(),
    );
    let ctx = release_rejected_then_read(Some(released)).await;
    assert_eq!(reserved(&ctx).as_deref(), Some("a100-b"));
}

#[tokio::test]
async fn scenario_failed_release_of_a_still_gated_or_gone_pod_forgets_its_reservation() {
    let ctx = release_rejected_then_read(Some(cached_gated_pod(1))).await;
    assert_eq!(reserved(&ctx), None);
    let ctx = release_rejected_then_read(None).await;
    assert_eq!(reserved(&ctx), None);
}

#[tokio::test]
async fn scenario_gated_pod_sized_for_another_tp_is_deleted_with_its_uid() {
    let (client, mut handle) = mock();
    let ctx = context(client, vec![cached_gated_pod(2)]);
    let server = tokio::spawn(async move {
        let (method, uri, _, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::DELETE);
        assert_eq!(
            uri,
            format!("/api/v1/namespaces/serving/pods/{}?", pod_name())
        );
        assert_eq!(body["preconditions"]["uid"], "pod-uid");
        respond(
            send,
            200,
            &serde_json::to_value(cached_gated_pod(2)).unwrap(),
        );
        let event = expect_event(&mut handle, "Resized").await;
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .contains("created for 2 GPU(s), placed with tensor parallel size 1")
        );
        expect_service_apply(&mut handle).await;
        expect_status_apply(&mut handle).await;
        expect_event(&mut handle, "ArgsReplaced").await;
        expect_event(&mut handle, "Placed").await;
    });
    reconcile(Arc::new(DeserializeGuard(Ok(deployment()))), ctx)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn scenario_launcher_refusal_deletes_the_pod_and_waits_for_it_to_go() {
    let mut failed = cached_gated_pod(1);
    failed.spec.as_mut().unwrap().scheduling_gates = Some(vec![]);
    failed.status = Some(
        serde_json::from_value(json!({
            "phase": "Failed",
            "containerStatuses": [{
                "name": "vllm", "ready": false, "restartCount": 0, "image": "vllm", "imageID": "",
                "state": {"terminated": {"exitCode": 75, "message":
                    "vllm-operator: insufficient-gpu-memory: GPU 0 (GPU-a100-0000) needs 9 bytes free (0.00 GiB), has 1 bytes free (0.00 GiB)"}}
            }]
        }))
        .unwrap(),
    );
    let (client, mut handle) = mock();
    let ctx = context(client, vec![failed]);
    let server = tokio::spawn(async move {
        let (method, uri, _, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::DELETE);
        assert_eq!(
            uri,
            format!("/api/v1/namespaces/serving/pods/{}?", pod_name())
        );
        assert_eq!(body["preconditions"]["uid"], "pod-uid");
        respond(
            send,
            200,
            &serde_json::to_value(cached_gated_pod(1)).unwrap(),
        );
        // No create under the name of the pod being deleted: the apply would patch it.
        expect_service_apply(&mut handle).await;
        let status = expect_status_apply(&mut handle).await;
        assert!(
            status["status"]["placements"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("waiting for the previous pod"),
            "{status}"
        );
        let event = expect_event(&mut handle, "LauncherRefused").await;
        assert_eq!(event["type"], "Warning");
    });
    reconcile(Arc::new(DeserializeGuard(Ok(deployment()))), ctx)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn scenario_status_is_applied_to_the_status_subresource_with_kstatus_conditions() {
    let (client, mut handle) = mock();
    let ctx = context(client, vec![cached_gated_pod(1)]);
    let server = tokio::spawn(async move {
        let (_, _, _, _, send) = next(&mut handle).await; // the release
        respond(
            send,
            200,
            &serde_json::to_value(cached_gated_pod(1)).unwrap(),
        );
        expect_service_apply(&mut handle).await;
        let body = expect_status_apply(&mut handle).await;
        assert_eq!(body["apiVersion"], "vllm-operator.io/v1alpha1");
        assert_eq!(body["kind"], "VllmDeployment");
        assert!(body.get("spec").is_none(), "status only");
        let status = &body["status"];
        assert_eq!(status["observedGeneration"], 3);
        let condition = |t: &str| {
            status["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .cloned()
                .unwrap()
        };
        assert_eq!(condition("Admitted")["status"], "True");
        assert_eq!(condition("Admitted")["reason"], "Placed");
        assert_eq!(condition("Ready")["status"], "False");
        assert_eq!(condition("Reconciling")["status"], "True");
        assert_eq!(condition("Stalled")["status"], "False");
        assert_eq!(
            condition("Ready")["lastTransitionTime"],
            "2026-11-26T12:00:10Z"
        );
        assert_eq!(condition("Ready")["observedGeneration"], 3);
        assert_eq!(status["ready"], "0/1");
        assert_eq!(status["tensorParallel"], "1");
        assert_eq!(status["state"], "Progressing");
        // The scale subresource's labelSelectorPath (.status.selector): HPA and KEDA find
        // the replicas' pods with it.
        assert_eq!(
            status["selector"],
            "app.kubernetes.io/instance=llama-1b,app.kubernetes.io/managed-by=vllm-operator,app.kubernetes.io/name=vllm"
        );
        assert_eq!(status["serviceName"], "llama-1b");
        assert_eq!(condition("ServiceReady")["status"], "True");
        assert_eq!(condition("ServiceReady")["reason"], "Applied");
        expect_event(&mut handle, "ArgsReplaced").await;
        expect_event(&mut handle, "Placed").await;
    });
    reconcile(Arc::new(DeserializeGuard(Ok(deployment()))), ctx)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn scenario_service_selects_the_deployments_pods_on_its_port() {
    let (client, mut handle) = mock();
    let ctx = context(client, vec![cached_gated_pod(1)]);
    let server = tokio::spawn(async move {
        let (_, _, _, _, send) = next(&mut handle).await; // the release
        respond(
            send,
            200,
            &serde_json::to_value(cached_gated_pod(1)).unwrap(),
        );
        let (method, uri, ct, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::PATCH);
        assert_eq!(
            uri,
            "/api/v1/namespaces/serving/services/llama-1b?&fieldManager=vllm-operator"
        );
        assert_eq!(ct, APPLY);
        assert_eq!(body["apiVersion"], "v1");
        assert_eq!(body["kind"], "Service");
        assert_eq!(
            body["metadata"]["ownerReferences"][0]["kind"],
            "VllmDeployment"
        );
        assert_eq!(
            body["spec"],
            json!({
                "type": "ClusterIP",
                "publishNotReadyAddresses": false,
                "selector": {
                    "app.kubernetes.io/instance": "llama-1b",
                    "app.kubernetes.io/managed-by": "vllm-operator",
                    "app.kubernetes.io/name": "vllm"
                },
                "ports": [{"name": "http", "port": 8000, "protocol": "TCP", "targetPort": "http"}]
            })
        );
        respond(send, 200, &body);
        expect_status_apply(&mut handle).await;
        expect_event(&mut handle, "ArgsReplaced").await;
        expect_event(&mut handle, "Placed").await;
    });
    reconcile(Arc::new(DeserializeGuard(Ok(deployment()))), ctx)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn scenario_malformed_object_gets_an_event_and_waits_for_a_change() {
    let (client, mut handle) = mock();
    let ctx = context(client, vec![]);
    let invalid = InvalidObject {
        error: "spec.replicas: invalid type: string \"two\", expected i32".into(),
        metadata: deployment().metadata,
    };
    let server = tokio::spawn(async move {
        let body = expect_event(&mut handle, "InvalidSpec").await;
        assert_eq!(body["type"], "Warning");
        assert!(body["note"].as_str().unwrap().contains("expected i32"));
    });
    let obj = Arc::new(DeserializeGuard::<VllmDeployment>(Err(invalid)));
    let err = reconcile(obj.clone(), ctx.clone()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidObject(_)));
    assert_eq!(error_policy(obj, &err, ctx), Action::await_change());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn scenario_missing_crd_fails_fast_with_one_line() {
    let (client, mut handle) = mock();
    let server = tokio::spawn(async move {
        let (method, uri, _, _, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::GET);
        assert_eq!(
            uri,
            "/apis/vllm-operator.io/v1alpha1/vllmdeployments?&limit=1"
        );
        respond(
            send,
            404,
            &json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"the server could not find the requested resource"}),
        );
    });
    let err = check_crds(&client).await.unwrap_err();
    assert!(matches!(err, RunError::CrdMissing { .. }));
    assert_eq!(
        err.to_string(),
        "CRD vllmdeployments.vllm-operator.io is not installed: kubectl apply -f crds/"
    );
    server.await.unwrap();
}

fn lease(holder: &str, resource_version: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "vllm-operator-leader", "namespace": "ops", "resourceVersion": resource_version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "renewTime": "2026-11-26T12:00:05.000000Z", "leaseTransitions": 0}
    })
}

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";

#[tokio::test]
async fn scenario_lease_is_created_when_absent() {
    let (client, mut handle) = mock();
    let server = tokio::spawn(async move {
        let (method, uri, _, _, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::GET);
        assert_eq!(uri, format!("{LEASE_PATH}/vllm-operator-leader"));
        respond(
            send,
            404,
            &json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}),
        );
        let (method, uri, _, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::POST);
        assert_eq!(uri, format!("{LEASE_PATH}?&fieldManager=vllm-operator"));
        assert_eq!(body["metadata"]["name"], "vllm-operator-leader");
        assert_eq!(body["spec"]["holderIdentity"], "controller-a");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(body["spec"]["renewTime"], "2026-11-26T12:00:10.000000Z");
        respond(send, 201, &body);
    });
    let api = kube::Api::namespaced(client, "ops");
    let mut elector = Elector::new("controller-a", LEASE_DURATION);
    assert!(
        leader::round(&api, "vllm-operator-leader", &mut elector, now())
            .await
            .unwrap()
    );
    server.await.unwrap();
}

#[tokio::test]
async fn scenario_lease_renewal_is_guarded_by_resource_version() {
    let (client, mut handle) = mock();
    let server = tokio::spawn(async move {
        let (_, _, _, _, send) = next(&mut handle).await;
        respond(send, 200, &lease("controller-a", "42"));
        let (method, uri, _, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::PUT);
        assert_eq!(
            uri,
            format!("{LEASE_PATH}/vllm-operator-leader?&fieldManager=vllm-operator")
        );
        assert_eq!(body["metadata"]["resourceVersion"], "42");
        assert_eq!(body["spec"]["holderIdentity"], "controller-a");
        // Another replica wrote first: 409, and this round does not lead.
        respond(
            send,
            409,
            &json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Conflict","code":409}),
        );
    });
    let api = kube::Api::namespaced(client, "ops");
    let mut elector = Elector::new("controller-a", LEASE_DURATION);
    assert!(
        !leader::round(&api, "vllm-operator-leader", &mut elector, now())
            .await
            .unwrap()
    );
    server.await.unwrap();
}

#[tokio::test]
async fn scenario_live_lease_of_another_replica_is_left_alone() {
    let (client, mut handle) = mock();
    let server = tokio::spawn(async move {
        let (_, _, _, _, send) = next(&mut handle).await;
        respond(send, 200, &lease("controller-b", "42"));
        assert!(handle.next_request().await.is_none(), "no write");
    });
    let api = kube::Api::namespaced(client, "ops");
    let mut elector = Elector::new("controller-a", LEASE_DURATION);
    assert!(
        !leader::round(&api, "vllm-operator-leader", &mut elector, now())
            .await
            .unwrap()
    );
    drop(api);
    server.await.unwrap();
}

#[tokio::test]
async fn scenario_a_renewal_that_hangs_ends_leadership_at_the_renew_deadline() {
    let deadline = Duration::from_millis(400);
    let (client, mut handle) = mock();
    let started = std::time::Instant::now();
    let server = tokio::spawn(async move {
        let (_, _, _, _, send) = next(&mut handle).await;
        respond(
            send,
            404,
            &json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}),
        );
        let (method, _, _, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::POST);
        respond(send, 201, &body);
        // From now on the API server answers nothing.
        let mut hung = Vec::new();
        while let Some(request) = handle.next_request().await {
            hung.push(request);
        }
    });
    let (state_tx, mut state_rx) = tokio::sync::watch::channel(leader::LeaderState::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let election = tokio::spawn(leader::run_with(
        kube::Api::namespaced(client, "ops"),
        "vllm-operator-leader".into(),
        Elector::new("controller-a", LEASE_DURATION),
        (deadline, Duration::from_millis(50)),
        state_tx,
        stop_rx,
    ));
    tokio::time::timeout(Duration::from_secs(5), state_rx.wait_for(|s| s.leader))
        .await
        .expect("acquired")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), state_rx.wait_for(|s| !s.leader))
        .await
        .expect("leadership must end although the renewal never answers")
        .unwrap();
    // Not before the deadline, counted from before the acquiring request was sent.
    assert!(started.elapsed() >= deadline, "{:?}", started.elapsed());
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), election)
        .await
        .unwrap()
        .unwrap();
    server.abort();
}

#[tokio::test]
async fn scenario_config_map_not_created_yet_is_retried_with_backoff() {
    let mut dep = deployment();
    dep.spec.model.config_map_ref = Some(vllm_operator::api::ConfigMapKeyRef {
        name: "llama-config".into(),
        key: "config.json".into(),
    });
    let (client, mut handle) = mock();
    let ctx = context(client, vec![]);
    let server = tokio::spawn(async move {
        let (method, uri, _, _, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::GET);
        assert_eq!(uri, "/api/v1/namespaces/serving/configmaps/llama-config");
        respond(
            send,
            404,
            &json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}),
        );
    });
    let obj = Arc::new(DeserializeGuard(Ok(dep)));
    let err = reconcile(obj.clone(), ctx.clone()).await.unwrap_err();
    assert_eq!(err.stage(), "ResolveModel");
    assert!(
        err.to_string().contains("ConfigMap serving/llama-config"),
        "{err}"
    );
    assert_eq!(
        error_policy(obj.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(obj, &err, ctx),
        Action::requeue(Duration::from_secs(10))
    );
    server.await.unwrap();
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

#[tokio::test]
async fn scenario_service_held_by_another_manager_is_reported_not_overwritten() {
    let (client, mut handle) = mock();
    let ctx = context(client, vec![cached_gated_pod(1)]);
    let server = tokio::spawn(async move {
        let (_, _, _, _, send) = next(&mut handle).await; // the release
        respond(
            send,
            200,
            &serde_json::to_value(cached_gated_pod(1)).unwrap(),
        );
        let (method, uri, _, _, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::PATCH);
        assert!(!uri.contains("force"), "never force the Service: {uri}");
        respond(
            send,
            409,
            &json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                "message": "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using v1: .spec.selector"
            }),
        );
        // The status is still written, and says why.
        let status = expect_status_apply(&mut handle).await;
        let c = condition(&status, "ServiceReady");
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], "ServiceConflict");
        assert!(
            c["message"]
                .as_str()
                .unwrap()
                .contains("kubectl-client-side-apply"),
            "{c}"
        );
        expect_event(&mut handle, "ArgsReplaced").await;
        expect_event(&mut handle, "Placed").await;
        let e = expect_event(&mut handle, "ServiceConflict").await;
        assert_eq!(e["type"], "Warning");
    });
    let action = reconcile(Arc::new(DeserializeGuard(Ok(deployment()))), ctx)
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

/// A VllmDeployment named `llama-3.1-8b` (valid for a custom resource, not for a Service).
fn dotted_deployment() -> VllmDeployment {
    let mut d = deployment();
    d.metadata.name = Some("llama-3.1-8b".into());
    d
}

#[tokio::test]
async fn scenario_dotted_name_gets_a_valid_service_name_recorded_in_status() {
    let (client, mut handle) = mock();
    let ctx = context_for(client, dotted_deployment(), vec![]);
    let server = tokio::spawn(async move {
        let (_, _, _, body, send) = next(&mut handle).await; // the gated pod
        respond(send, 201, &body);
        let (method, uri, _, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::PATCH);
        assert_eq!(
            uri,
            "/api/v1/namespaces/serving/services/llama-3-1-8b?&fieldManager=vllm-operator"
        );
        assert_eq!(body["metadata"]["name"], "llama-3-1-8b");
        assert_eq!(
            body["spec"]["selector"]["app.kubernetes.io/instance"],
            "llama-3.1-8b"
        );
        respond(send, 201, &body);
        let (method, uri, _, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::PATCH);
        assert!(
            uri.contains("/vllmdeployments/llama-3.1-8b/status?"),
            "{uri}"
        );
        assert_eq!(body["status"]["serviceName"], "llama-3-1-8b");
        assert_eq!(condition(&body, "ServiceReady")["status"], "True");
        let mut echo = serde_json::to_value(dotted_deployment()).unwrap();
        echo["status"] = body["status"].clone();
        respond(send, 200, &echo);
    });
    reconcile(Arc::new(DeserializeGuard(Ok(dotted_deployment()))), ctx)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn scenario_status_is_written_even_when_the_service_apply_fails() {
    let (client, mut handle) = mock();
    let ctx = context_for(client, dotted_deployment(), vec![]);
    let server = tokio::spawn(async move {
        let (_, _, _, body, send) = next(&mut handle).await; // the gated pod
        respond(send, 201, &body);
        let (_, uri, _, _, send) = next(&mut handle).await;
        assert!(uri.starts_with("/api/v1/namespaces/serving/services/llama-3-1-8b?"));
        respond(
            send,
            422,
            &json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
                "message": "Service \"llama-3-1-8b\" is invalid: spec.ports[0].port: Invalid value"
            }),
        );
        let (method, uri, _, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::PATCH);
        assert!(
            uri.contains("/vllmdeployments/llama-3.1-8b/status?"),
            "{uri}"
        );
        let c = condition(&body, "ServiceReady");
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], "ApplyFailed");
        assert!(
            c["message"].as_str().unwrap().contains("Invalid value"),
            "{c}"
        );
        let mut echo = serde_json::to_value(dotted_deployment()).unwrap();
        echo["status"] = body["status"].clone();
        respond(send, 200, &echo);
    });
    let err = reconcile(Arc::new(DeserializeGuard(Ok(dotted_deployment()))), ctx)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ApplyService { .. }), "{err}");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn scenario_placed_events_of_two_pods_are_two_series_on_their_pods() {
    let mut dep = deployment();
    dep.spec.replicas = 2;
    let hash = spec_hash(&dep.spec);
    let pods: Vec<Pod> = (0..2)
        .map(|i| {
            let mut pod = gated_pod(
                &dep,
                i,
                &hash,
                PodGpus::DevicePlugin(1),
                LAUNCHER,
                Some(4 << 30),
            )
            .unwrap();
            pod.metadata.uid = Some(format!("pod-uid-{i}"));
            pod.metadata.resource_version = Some("7".into());
            pod
        })
        .collect();
    // The fixture node with a second, identical GPU: room for both replicas.
    let (mut gpunodes, mut nodes) = fleet();
    let status = gpunodes[0].status.as_mut().unwrap();
    let mut second = status.gpus[0].clone();
    second.index = 1;
    second.uuid = "GPU-a100-0001".into();
    status.gpus.push(second);
    nodes[0].status.as_mut().unwrap().allocatable = Some(
        [("nvidia.com/gpu".to_string(), Quantity("2".into()))]
            .into_iter()
            .collect(),
    );
    let (client, mut handle) = mock();
    let ctx = context_on(client, dep.clone(), pods, (gpunodes, nodes));
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let (method, uri, ct, body, send) = next(&mut handle).await; // the releases
            assert_eq!(method, http::Method::PATCH, "{uri} {body}");
            assert_eq!(ct, JSON_PATCH);
            respond(
                send,
                200,
                &serde_json::to_value(cached_gated_pod(1)).unwrap(),
            );
        }
        let (_, _, _, body, send) = next(&mut handle).await; // the Service
        respond(send, 200, &body);
        expect_status_apply(&mut handle).await;
        let mut placed = Vec::new();
        for _ in 0..4 {
            let (method, _, _, body, send) = next(&mut handle).await;
            // A new event each time: on the deployment, the second pod's `Placed` would have
            // been a PATCH of the first pod's series.
            assert_eq!(method, http::Method::POST, "{body}");
            assert_eq!(body["regarding"]["kind"], "Pod");
            if body["reason"] == "Placed" {
                placed.push((
                    body["regarding"]["name"].as_str().unwrap().to_string(),
                    body["regarding"]["uid"].as_str().unwrap().to_string(),
                ));
            }
            respond(send, 201, &body);
        }
        assert_eq!(
            placed,
            vec![
                (format!("llama-1b-0-{hash}"), "pod-uid-0".to_string()),
                (format!("llama-1b-1-{hash}"), "pod-uid-1".to_string()),
            ]
        );
    });
    reconcile(Arc::new(DeserializeGuard(Ok(dep))), ctx)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}
