//! The controller's writes on the DRA path (exact GPUs through ResourceClaims), request by
//! request, against kube-rs's tower-test mock: the claim is created before the pod is released,
//! goes with its pod, and a claim of the name that the deployment does not own is never
//! touched.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::core::DeserializeGuard;
use serde_json::{Value, json};
use vllm_operator::api::{GpuNode, PodRef, VllmDeployment};
use vllm_operator::controller::apply::{Step, release_patch, run_steps};
use vllm_operator::controller::claim::resource_claim;
use vllm_operator::controller::context::{Context, GpuAllocation, Settings, Stores};
use vllm_operator::controller::metrics::Metrics;
use vllm_operator::controller::pod::{PodGpus, gated_pod, spec_hash};
use vllm_operator::controller::reconcile::reconcile;
use vllm_operator::controller::runner::{DraApi, effective_settings, probe_dra};
use vllm_operator::model::hub::HubClient;
use vllm_operator::plan::Reservation;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Send = tower_test::mock::SendResponse<Response<Body>>;

const LAUNCHER: &str = "ghcr.io/vllm-operator/vllm-node-agent:0.1.0";
const CLAIMS: &str = "/apis/resource.k8s.io/v1/namespaces/serving/resourceclaims";
const GPU: &str = "GPU-a100-0000";

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

/// The NVIDIA driver's slice for the fixture node: its one A100 as `gpu-0`, as the driver
/// publishes it (NVIDIA/k8s-dra-driver-gpu v25.8.1 `cmd/gpu-kubelet-plugin/deviceinfo.go`).
fn slice() -> ResourceSlice {
    serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
        "metadata": {"name": "a100-a-gpu.nvidia.com-x7k2p", "resourceVersion": "11"},
        "spec": {
            "driver": "gpu.nvidia.com", "nodeName": "a100-a",
            "pool": {"name": "a100-a", "generation": 1, "resourceSliceCount": 1},
            "devices": [{"name": "gpu-0", "attributes": {
                "type": {"string": "gpu"}, "uuid": {"string": GPU},
                "productName": {"string": "NVIDIA A100-SXM4-80GB"}},
                "capacity": {"memory": {"value": "80Gi"}}}]
        }
    }))
    .unwrap()
}

fn now() -> Timestamp {
    "2026-11-26T12:00:10Z".parse().unwrap()
}

fn context(client: kube::Client, pods: Vec<Pod>, claims: Vec<ResourceClaim>) -> Arc<Context> {
    let (gpunodes, nodes) = fleet();
    let stores = Stores::from_objects(vec![deployment()], gpunodes, nodes, pods)
        .with_dra(vec![slice()], claims);
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

async fn next(handle: &mut Handle) -> (http::Method, String, Value, Send) {
    let (req, send) = handle.next_request().await.expect("a request");
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (method, uri, body, send)
}

fn respond(send: Send, code: u16, body: &Value) {
    let resp = Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    send.send_response(resp);
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
           "code": code, "message": message})
}

fn pod_name() -> String {
    format!("llama-1b-0-{}", spec_hash(&deployment().spec))
}

/// A pod created for a claim, as the cache holds it.
fn claim_pod() -> Pod {
    let d = deployment();
    let mut pod = gated_pod(&d, 0, &spec_hash(&d.spec), PodGpus::Claim, LAUNCHER, None).unwrap();
    pod.metadata.uid = Some("pod-uid".into());
    pod.metadata.resource_version = Some("7".into());
    pod
}

/// The deployment's claim for `pod` on the fixture GPU, as the cache holds it.
fn our_claim(pod: &str) -> ResourceClaim {
    let d = deployment();
    let mut c = resource_claim(&d, pod, 0, &spec_hash(&d.spec), &[GPU.to_string()]).unwrap();
    c.metadata.uid = Some(format!("claim-uid-{pod}"));
    c
}

async fn expect_service_and_status(handle: &mut Handle) -> Value {
    let (method, uri, body, send) = next(handle).await;
    assert_eq!(method, http::Method::PATCH);
    assert!(
        uri.starts_with("/api/v1/namespaces/serving/services/llama-1b?"),
        "{uri}"
    );
    respond(send, 200, &body);
    let (method, uri, body, send) = next(handle).await;
    assert_eq!(method, http::Method::PATCH);
    assert!(uri.contains("/vllmdeployments/llama-1b/status?"), "{uri}");
    let mut echo = serde_json::to_value(deployment()).unwrap();
    echo["status"] = body["status"].clone();
    respond(send, 200, &echo);
    body
}

#[tokio::test]
async fn scenario_a_failed_claim_pod_is_deleted_with_its_claim() {
    let mut failed = claim_pod();
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
    let ctx = context(client, vec![failed], vec![our_claim(&pod_name())]);
    let server = tokio::spawn(async move {
        let (method, uri, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::DELETE);
        assert_eq!(
            uri,
            format!("/api/v1/namespaces/serving/pods/{}?", pod_name())
        );
        assert_eq!(body["preconditions"]["uid"], "pod-uid");
        respond(send, 200, &serde_json::to_value(claim_pod()).unwrap());
        // Then its claim, by uid: a claim re-created under the name meanwhile stays.
        let (method, uri, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::DELETE);
        assert_eq!(uri, format!("{CLAIMS}/{}?", pod_name()));
        assert_eq!(
            body["preconditions"]["uid"],
            format!("claim-uid-{}", pod_name())
        );
        respond(
            send,
            200,
            &serde_json::to_value(our_claim(&pod_name())).unwrap(),
        );
        expect_service_and_status(&mut handle).await;
        let (_, uri, body, send) = next(&mut handle).await;
        assert!(uri.contains("/events"), "{uri}");
        assert_eq!(body["reason"], "LauncherRefused");
        respond(send, 201, &body);
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
async fn scenario_a_claim_whose_pod_is_gone_is_deleted_and_another_owners_claim_is_not() {
    // Replica 1's claim, left from when the deployment had two replicas (its pod is gone),
    // and a claim of the same instance label that another owner holds.
    let leftover = our_claim("llama-1b-1-0123456789");
    let mut foreign = our_claim("llama-1b-2-0123456789");
    foreign.metadata.owner_references.as_mut().unwrap()[0].uid = "someone-else".into();
    // Replica 0 serves (released, ready) with its own claim.
    let mut serving = claim_pod();
    serving.spec.as_mut().unwrap().scheduling_gates = Some(vec![]);
    serving.status = Some(
        serde_json::from_value(json!({
            "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]
        }))
        .unwrap(),
    );
    let (client, mut handle) = mock();
    let ctx = context(
        client,
        vec![serving],
        vec![our_claim(&pod_name()), leftover, foreign],
    );
    let server = tokio::spawn(async move {
        let mut deleted = Vec::new();
        loop {
            let (method, uri, body, send) = next(&mut handle).await;
            if method == http::Method::DELETE {
                assert!(uri.starts_with(CLAIMS), "{uri}");
                deleted.push((uri, body["preconditions"]["uid"].clone()));
                respond(send, 200, &json!({}));
                continue;
            }
            // Anything else (the release, the service, the status) is answered as applied.
            let echo = if uri.contains("/status?") {
                let mut echo = serde_json::to_value(deployment()).unwrap();
                echo["status"] = body["status"].clone();
                echo
            } else if uri.starts_with(CLAIMS) {
                body.clone()
            } else if uri.contains("/pods/") {
                serde_json::to_value(claim_pod()).unwrap()
            } else {
                body.clone()
            };
            let done = uri.contains("/status?");
            respond(
                send,
                if method == http::Method::POST {
                    201
                } else {
                    200
                },
                &echo,
            );
            if done {
                break;
            }
        }
        assert_eq!(
            deleted,
            vec![(
                format!("{CLAIMS}/llama-1b-1-0123456789?"),
                json!("claim-uid-llama-1b-1-0123456789")
            )]
        );
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
async fn scenario_an_api_server_without_resource_k8s_io_v1_is_said_once_not_fatal() {
    let (client, mut handle) = mock();
    let server = tokio::spawn(async move {
        let (method, uri, _, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::GET);
        assert_eq!(uri, "/apis/resource.k8s.io/v1/resourceslices?&limit=1");
        respond(
            send,
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    });
    let answer = probe_dra(&client).await;
    assert_eq!(
        answer,
        DraApi::Unavailable(
            "resource.k8s.io/v1 is not served (Kubernetes before 1.34, or DRA turned off)".into()
        )
    );
    server.await.unwrap();

    // 403: the chart's RBAC was changed; said as such.
    let (client, mut handle) = mock();
    let server = tokio::spawn(async move {
        let (_, _, _, send) = next(&mut handle).await;
        respond(
            send,
            403,
            &status(
                403,
                "Forbidden",
                "resourceslices.resource.k8s.io is forbidden",
            ),
        );
    });
    let DraApi::Unavailable(why) = probe_dra(&client).await else {
        panic!("served")
    };
    assert!(why.contains("may not list resourceslices"), "{why}");
    server.await.unwrap();

    let (client, mut handle) = mock();
    let server = tokio::spawn(async move {
        let (_, _, _, send) = next(&mut handle).await;
        respond(
            send,
            200,
            &json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []}),
        );
    });
    assert_eq!(probe_dra(&client).await, DraApi::Served);
    server.await.unwrap();
}

/// The release step of the cached claim pod, with its claim on `uuids`: what `apply::steps`
/// builds for a placement on exact GPUs (the claim first, then the JSON patch of the pod).
fn release_step(uuids: &[&str]) -> Step {
    let current = claim_pod();
    let mut released = current.clone();
    released.spec.as_mut().unwrap().scheduling_gates = Some(vec![]);
    let patch = release_patch(&current, &released).unwrap();
    let d = deployment();
    let uuids: Vec<String> = uuids.iter().map(|u| u.to_string()).collect();
    let claim = resource_claim(&d, &pod_name(), 0, &spec_hash(&d.spec), &uuids).unwrap();
    Step::Release {
        pod: Box::new(released),
        patch,
        claim: Some(Box::new(claim)),
    }
}

fn reserve(ctx: &Context) {
    ctx.ledger.lock().unwrap().reserve(Reservation {
        pod: PodRef {
            namespace: "serving".into(),
            name: pod_name(),
        },
        node: "a100-a".into(),
        gpus: 1,
        shared_bytes: 0,
        exact_gpus: vec![GPU.into()],
        created_at: now(),
    });
}

fn reserved(ctx: &Context) -> bool {
    ctx.ledger
        .lock()
        .unwrap()
        .get(&PodRef {
            namespace: "serving".into(),
            name: pod_name(),
        })
        .is_some()
}

#[tokio::test]
async fn scenario_the_claim_is_created_before_the_pod_is_released() {
    let (client, mut handle) = mock();
    let ctx = context(client, vec![claim_pod()], vec![]);
    let server = tokio::spawn(async move {
        let (method, uri, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::POST);
        assert_eq!(uri, format!("{CLAIMS}?&fieldManager=vllm-operator"));
        assert_eq!(body["apiVersion"], "resource.k8s.io/v1");
        assert_eq!(body["kind"], "ResourceClaim");
        assert_eq!(body["metadata"]["name"], pod_name());
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "dep-uid");
        assert_eq!(
            body["spec"]["devices"]["requests"][0]["exactly"]["selectors"][0]["cel"]["expression"],
            format!("device.attributes[\"gpu.nvidia.com\"].uuid == \"{GPU}\"")
        );
        respond(send, 201, &body);
        let (method, uri, _, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::PATCH);
        assert_eq!(
            uri,
            format!(
                "/api/v1/namespaces/serving/pods/{}?&fieldManager=vllm-operator",
                pod_name()
            )
        );
        respond(send, 200, &serde_json::to_value(claim_pod()).unwrap());
    });
    let problems = run_steps(&ctx, &deployment(), vec![release_step(&[GPU])])
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn scenario_a_claim_of_the_name_another_owner_holds_keeps_the_pod_gated() {
    let (client, mut handle) = mock();
    let ctx = context(client, vec![claim_pod()], vec![]);
    reserve(&ctx);
    let server = tokio::spawn(async move {
        let (method, _, _, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::POST);
        respond(
            send,
            409,
            &status(
                409,
                "AlreadyExists",
                "resourceclaims.resource.k8s.io \"x\" already exists",
            ),
        );
        let (method, uri, _, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::GET);
        assert_eq!(uri, format!("{CLAIMS}/{}", pod_name()));
        let mut theirs = our_claim(&pod_name());
        theirs.metadata.owner_references = None;
        respond(send, 200, &serde_json::to_value(theirs).unwrap());
        // No delete, no release: the mock sees nothing more.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), handle.next_request())
                .await
                .is_err(),
            "nothing after the read"
        );
    });
    let problems = run_steps(&ctx, &deployment(), vec![release_step(&[GPU])])
        .await
        .unwrap();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].reason, "ClaimConflict");
    assert_eq!(problems[0].pod, pod_name());
    assert!(
        !reserved(&ctx),
        "a pod that stays gated holds no reservation"
    );
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn scenario_our_stale_claim_is_deleted_by_uid_and_our_same_claim_reused() {
    // Ours, on another GPU (an earlier placement): deleted with its uid, pod stays gated.
    let (client, mut handle) = mock();
    let ctx = context(client, vec![claim_pod()], vec![]);
    let server = tokio::spawn(async move {
        let (_, _, _, send) = next(&mut handle).await;
        respond(send, 409, &status(409, "AlreadyExists", "already exists"));
        let (_, _, _, send) = next(&mut handle).await;
        let d = deployment();
        let mut stale =
            resource_claim(&d, &pod_name(), 0, &spec_hash(&d.spec), &["GPU-01d".into()]).unwrap();
        stale.metadata.uid = Some("stale-uid".into());
        respond(send, 200, &serde_json::to_value(stale).unwrap());
        let (method, uri, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::DELETE);
        assert_eq!(uri, format!("{CLAIMS}/{}?", pod_name()));
        assert_eq!(body["preconditions"]["uid"], "stale-uid");
        respond(send, 200, &json!({}));
    });
    let problems = run_steps(&ctx, &deployment(), vec![release_step(&[GPU])])
        .await
        .unwrap();
    assert_eq!(problems[0].reason, "ClaimPending");
    server.await.unwrap();

    // Ours, same GPU (a release that failed after its claim went in): reused, pod released.
    let (client, mut handle) = mock();
    let ctx = context(client, vec![claim_pod()], vec![]);
    let server = tokio::spawn(async move {
        let (_, _, _, send) = next(&mut handle).await;
        respond(send, 409, &status(409, "AlreadyExists", "already exists"));
        let (_, _, _, send) = next(&mut handle).await;
        respond(
            send,
            200,
            &serde_json::to_value(our_claim(&pod_name())).unwrap(),
        );
        let (method, uri, _, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::PATCH);
        assert!(uri.contains("/pods/"), "{uri}");
        respond(send, 200, &serde_json::to_value(claim_pod()).unwrap());
    });
    let problems = run_steps(&ctx, &deployment(), vec![release_step(&[GPU])])
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    server.await.unwrap();

    // 403 and 422 are conditions, not errors: the pod stays gated.
    for (code, reason) in [(403, "ClaimForbidden"), (422, "ClaimInvalid")] {
        let (client, mut handle) = mock();
        let ctx = context(client, vec![claim_pod()], vec![]);
        let server = tokio::spawn(async move {
            let (_, _, _, send) = next(&mut handle).await;
            respond(send, code, &status(code, "X", "no"));
        });
        let problems = run_steps(&ctx, &deployment(), vec![release_step(&[GPU])])
            .await
            .unwrap();
        assert_eq!(problems[0].reason, reason);
        server.await.unwrap();
    }
}

#[test]
fn without_the_dra_api_every_mode_runs_as_device_plugin() {
    let settings = Settings {
        launcher_image: LAUNCHER.into(),
        stale_after: Duration::from_secs(90),
        reservation_timeout: Duration::from_secs(300),
        gpu_allocation: GpuAllocation::Dra,
    };
    assert_eq!(
        effective_settings(&settings, false).gpu_allocation,
        GpuAllocation::DevicePlugin
    );
    assert_eq!(
        effective_settings(&settings, true).gpu_allocation,
        GpuAllocation::Dra
    );
}

/// Every request one reconcile sends, answered as the API server would accept it (writes
/// echoed, creates 201), until it has been quiet for a moment.
async fn record(mut handle: Handle) -> Vec<(http::Method, String, Value)> {
    let mut seen = Vec::new();
    while let Ok(Some((req, send))) =
        tokio::time::timeout(Duration::from_millis(500), handle.next_request()).await
    {
        let method = req.method().clone();
        let uri = req.uri().to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let echo = if uri.contains("/status?") {
            let mut echo = serde_json::to_value(deployment()).unwrap();
            echo["status"] = body["status"].clone();
            echo
        } else if body.is_array() {
            // A JSON patch (the release): the pod as it now is.
            serde_json::to_value(claim_pod()).unwrap()
        } else {
            let mut echo = body.clone();
            if echo.is_object() {
                echo["metadata"]["uid"] = json!("new-uid");
            }
            echo
        };
        let code = if method == http::Method::POST {
            201
        } else {
            200
        };
        respond(send, code, &echo);
        seen.push((method, uri, body));
    }
    seen
}

/// From nothing to a released pod on the DRA fleet, through `reconcile` itself: the first
/// reconcile creates the replica's pod gated, already referencing its claim by name (both
/// references are immutable) and without `nvidia.com/gpu`; the next one, with that pod in the
/// cache, creates the ResourceClaim for the planned GPU and only then releases the pod.
#[tokio::test]
async fn scenario_reconcile_creates_the_gated_claim_pod_then_the_claim_then_releases_it() {
    // 1. No pod yet.
    let (client, handle) = mock();
    let ctx = context(client, vec![], vec![]);
    let server = tokio::spawn(record(handle));
    reconcile(Arc::new(DeserializeGuard(Ok(deployment()))), ctx)
        .await
        .unwrap();
    let seen = server.await.unwrap();
    let pods: Vec<&Value> = seen
        .iter()
        .filter(|(m, u, _)| {
            (*m == http::Method::POST || *m == http::Method::PATCH) && u.contains("/pods")
        })
        .map(|(_, _, b)| b)
        .collect();
    assert_eq!(pods.len(), 1, "{seen:#?}");
    assert!(
        !seen.iter().any(|(_, u, _)| u.starts_with(CLAIMS)),
        "no claim before the pod exists: {seen:#?}"
    );
    let created: Pod = serde_json::from_value(pods[0].clone()).unwrap();
    assert_eq!(created.metadata.name.as_deref(), Some(pod_name().as_str()));
    let spec = created.spec.clone().unwrap();
    assert!(
        spec.scheduling_gates
            .iter()
            .flatten()
            .any(|g| g.name.starts_with("vllm-operator.io/")),
        "created gated: {spec:?}"
    );
    let refs = spec.resource_claims.clone().unwrap_or_default();
    assert_eq!(refs.len(), 1, "{spec:?}");
    assert_eq!(
        refs[0].resource_claim_name.as_deref(),
        Some(pod_name().as_str())
    );
    let vllm = spec.containers.iter().find(|c| c.name == "vllm").unwrap();
    let resources = vllm.resources.clone().unwrap();
    assert_eq!(resources.claims.unwrap()[0].name, refs[0].name);
    for q in [resources.limits, resources.requests].into_iter().flatten() {
        assert!(!q.contains_key("nvidia.com/gpu"), "{q:?}");
    }

    // 2. The gated pod is in the cache: claim first, then the release of the pod.
    let mut cached = created;
    cached.metadata.uid = Some("pod-uid".into());
    cached.metadata.resource_version = Some("7".into());
    let (client, handle) = mock();
    let ctx = context(client, vec![cached], vec![]);
    let server = tokio::spawn(record(handle));
    reconcile(Arc::new(DeserializeGuard(Ok(deployment()))), ctx)
        .await
        .unwrap();
    let seen = server.await.unwrap();
    let claim = seen
        .iter()
        .position(|(m, u, _)| *m == http::Method::POST && u.starts_with(CLAIMS))
        .unwrap_or_else(|| panic!("no claim created: {seen:#?}"));
    let release = seen
        .iter()
        .position(|(m, u, _)| {
            *m == http::Method::PATCH && u.contains(&format!("/pods/{}", pod_name()))
        })
        .unwrap_or_else(|| panic!("no release: {seen:#?}"));
    assert!(
        claim < release,
        "the claim goes in before the pod is released"
    );
    let body = &seen[claim].2;
    assert_eq!(body["metadata"]["name"], pod_name());
    assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "dep-uid");
    assert_eq!(
        body["spec"]["devices"]["requests"][0]["exactly"]["selectors"][0]["cel"]["expression"],
        format!("device.attributes[\"gpu.nvidia.com\"].uuid == \"{GPU}\"")
    );
    let patch = seen[release].2.to_string();
    assert!(patch.contains("schedulingGates"), "{patch}");
    assert!(
        patch.contains(GPU),
        "the planned UUID is annotated: {patch}"
    );
}
