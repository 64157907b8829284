//! The GpuNode writes, checked request by request with kube-rs's tower-test mock.

use http::{Request, Response};
use kube::client::Body;
use vllm_node_agent::publish::{Publisher, build_status};
use vllm_operator::api::{GpuInfo, GpuMemory};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

async fn body_json(req: Request<Body>) -> serde_json::Value {
    let bytes = req.into_body().collect_bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn respond(
    handle_send: tower_test::mock::SendResponse<Response<Body>>,
    code: u16,
    body: serde_json::Value,
) {
    let resp = Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    handle_send.send_response(resp);
}

fn gpunode(name: &str) -> serde_json::Value {
    serde_json::json!({"apiVersion":"vllm-operator.io/v1alpha1","kind":"GpuNode","metadata":{"name":name},"spec":{}})
}

fn node(name: &str, labels: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"apiVersion":"v1","kind":"Node","metadata":{"name":name,"uid":"node-uid-1","labels":labels}})
}

#[tokio::test]
async fn applies_the_gpunode_owned_by_its_node_then_the_status_as_vllm_node_agent() {
    let (service, mut handle): (_, Handle) = tower_test::mock::pair();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(async move {
        // The Node: its uid for the owner reference, its labels for GPU sharing.
        let (req, send) = handle.next_request().await.expect("GET Node");
        assert_eq!(req.method(), http::Method::GET);
        assert_eq!(req.uri().path(), "/api/v1/nodes/node-a");
        respond(
            send,
            200,
            node(
                "node-a",
                serde_json::json!({"nvidia.com/gpu.sharing-strategy": "time-slicing", "nvidia.com/gpu.replicas": "4"}),
            ),
        );

        // The object itself, created or updated by server-side apply, owned by the Node.
        let (req, send) = handle.next_request().await.expect("apply GpuNode");
        assert_eq!(req.method(), http::Method::PATCH);
        assert_eq!(
            req.uri().to_string(),
            "/apis/vllm-operator.io/v1alpha1/gpunodes/node-a?&force=true&fieldManager=vllm-node-agent"
        );
        assert_eq!(
            req.headers()["content-type"],
            "application/apply-patch+yaml"
        );
        let body = body_json(req).await;
        assert_eq!(
            body,
            serde_json::json!({
                "apiVersion": "vllm-operator.io/v1alpha1",
                "kind": "GpuNode",
                "metadata": {
                    "name": "node-a",
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "node-uid-1"}]
                },
                "spec": {}
            })
        );
        respond(send, 201, gpunode("node-a"));

        let (req, send) = handle.next_request().await.expect("PATCH");
        assert_eq!(req.method(), http::Method::PATCH);
        assert_eq!(
            req.uri().to_string(),
            "/apis/vllm-operator.io/v1alpha1/gpunodes/node-a/status?&force=true&fieldManager=vllm-node-agent"
        );
        assert_eq!(
            req.headers()["content-type"],
            "application/apply-patch+yaml"
        );
        let body = body_json(req).await;
        assert_eq!(body["apiVersion"], "vllm-operator.io/v1alpha1");
        assert_eq!(body["kind"], "GpuNode");
        assert!(body.get("spec").is_none(), "status only");
        assert!(body.get("metadata").is_none(), "status only");
        assert_eq!(body["status"]["nodeName"], "node-a");
        assert_eq!(body["status"]["gpuCount"], 1);
        assert_eq!(
            body["status"]["gpus"][0]["memory"]["freeBytes"],
            7_430_346_834u64
        );
        assert_eq!(body["status"]["freeSummary"], "6.9/8.0 GiB free, max 6.9");
        assert_eq!(body["status"]["observedAt"], "2023-11-14T22:13:20Z");
        // The device plugin time-slices this node's GPUs four ways.
        assert_eq!(body["status"]["sharing"], "Shared");
        assert_eq!(body["status"]["sharingStrategy"], "time-slicing");
        assert_eq!(body["status"]["replicasPerGpu"], 4);
        respond(send, 200, gpunode("node-a"));

        // Second publish: straight to the status apply.
        let (req, send) = handle.next_request().await.expect("PATCH 2");
        assert_eq!(req.method(), http::Method::PATCH);
        assert!(req.uri().path().ends_with("/status"));
        respond(send, 200, gpunode("node-a"));
    });

    let mut publisher = Publisher::new(client, "node-a");
    let status = status();
    publisher
        .apply_status(&status)
        .await
        .expect("first publish");
    publisher
        .apply_status(&status)
        .await
        .expect("second publish");
    server.await.unwrap();
}

fn status() -> vllm_operator::api::GpuNodeStatus {
    let gpus = vec![GpuInfo {
        uuid: "GPU-1".into(),
        memory: GpuMemory {
            total_bytes: 8_589_934_592,
            free_bytes: 7_430_346_834,
            used_bytes: 1_159_587_758,
            reserved_bytes: 0,
        },
        ..GpuInfo::default()
    }];
    let at = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap();
    build_status("node-a", Some("550.54.15".into()), gpus, vec![], at)
}

#[tokio::test]
async fn a_call_the_api_server_never_answers_fails_after_the_call_timeout() {
    let (service, mut handle): (_, Handle) = tower_test::mock::pair();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(async move {
        let (_, send) = handle.next_request().await.expect("GET Node");
        respond(send, 200, node("node-a", serde_json::json!({})));
        let (_, send) = handle.next_request().await.expect("apply GpuNode");
        respond(send, 200, gpunode("node-a"));
        // The status apply is never answered.
        let mut hung = Vec::new();
        while let Some(request) = handle.next_request().await {
            hung.push(request);
        }
    });
    let mut publisher =
        Publisher::new(client, "node-a").with_call_timeout(std::time::Duration::from_millis(200));
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        publisher.apply_status(&status()),
    )
    .await
    .expect("the publish must give up on its own")
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("apply GpuNode status for node node-a: no answer within 200ms"),
        "{err}"
    );
    server.abort();
}
