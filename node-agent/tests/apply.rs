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

fn not_found() -> serde_json::Value {
    serde_json::json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"})
}

fn gpunode(name: &str) -> serde_json::Value {
    serde_json::json!({"apiVersion":"vllm-operator.io/v1alpha1","kind":"GpuNode","metadata":{"name":name},"spec":{}})
}

#[tokio::test]
async fn creates_when_absent_then_applies_status_as_vllm_node_agent() {
    let (service, mut handle): (_, Handle) = tower_test::mock::pair();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("GET");
        assert_eq!(req.method(), http::Method::GET);
        assert_eq!(
            req.uri().path(),
            "/apis/vllm-operator.io/v1alpha1/gpunodes/node-a"
        );
        respond(send, 404, not_found());

        let (req, send) = handle.next_request().await.expect("POST");
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(req.uri().path(), "/apis/vllm-operator.io/v1alpha1/gpunodes");
        let body = body_json(req).await;
        assert_eq!(body["metadata"]["name"], "node-a");
        assert_eq!(body["spec"], serde_json::json!({}));
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
        assert_eq!(body["status"]["nodeName"], "node-a");
        assert_eq!(body["status"]["gpuCount"], 1);
        assert_eq!(
            body["status"]["gpus"][0]["memory"]["freeBytes"],
            7_430_346_834u64
        );
        assert_eq!(body["status"]["freeSummary"], "6.9/8.0 GiB free, max 6.9");
        assert_eq!(body["status"]["observedAt"], "2023-11-14T22:13:20Z");
        respond(send, 200, gpunode("node-a"));

        // Second publish: no GET/POST again, straight to the apply.
        let (req, send) = handle.next_request().await.expect("PATCH 2");
        assert_eq!(req.method(), http::Method::PATCH);
        respond(send, 200, gpunode("node-a"));
    });

    let mut publisher = Publisher::new(client, "node-a");
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
    let status = build_status("node-a", Some("550.54.15".into()), gpus, vec![], at);
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
