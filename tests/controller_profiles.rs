//! The controller's MemoryProfile writes, request by request, against kube-rs's tower-test
//! mock: what a Ready pod's `/metrics` measured becomes a new profile (spec applied without
//! force, then status on its subresource), an existing Measured profile is updated, a Manual
//! profile's spec is never written, and a 409 on the apply is an event, not a failure.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::core::DeserializeGuard;
use serde_json::{Value, json};
use vllm_operator::api::{
    GpuNode, KvCacheDtype, MemoryProfile, MemoryProfileSpec, MemoryProfileStatus, ProfileSource,
    Quantization, VllmDeployment,
};
use vllm_operator::controller::context::{Context, GpuAllocation, Settings, Stores};
use vllm_operator::controller::metrics::Metrics;
use vllm_operator::controller::observe::{ScrapeError, ScrapeFuture, ScrapeTarget, Scraper};
use vllm_operator::controller::pod::{PodGpus, gated_pod, spec_hash};
use vllm_operator::controller::reconcile::reconcile;
use vllm_operator::model::hub::HubClient;
use vllm_operator::profile::{ProfileKey, profile_name};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Send = tower_test::mock::SendResponse<Response<Body>>;

const LAUNCHER: &str = "ghcr.io/vllm-operator/vllm-node-agent:0.1.0";
const APPLY: &str = "application/apply-patch+yaml";
const PROFILES: &str = "/apis/vllm-operator.io/v1alpha1/memoryprofiles";
/// The fixture's GPU: NVML total less reserved, as CUDA counts it.
const CUDA_TOTAL: u64 = 85_899_345_920 - 520_093_696;
/// Llama-3.2-1B, bf16 KV: 2 (K, V) x 16 layers x 8 KV heads x 64 dims x 2 bytes.
const KV_BYTES_PER_TOKEN: u64 = 2 * 16 * 8 * 64 * 2;
const BLOCKS: u64 = 140_000;
const PLANNED_NON_KV: u64 = 3 << 30;

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

fn now() -> Timestamp {
    "2026-11-26T12:00:10Z".parse().unwrap()
}

fn pod_name() -> String {
    format!("llama-1b-0-{}", spec_hash(&deployment().spec))
}

/// vLLM 0.11.0's `/metrics` line for the cache (labels of `CacheConfig`, `str()` of each).
fn metrics_body() -> String {
    format!(
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n# TYPE vllm:cache_config_info gauge\nvllm:cache_config_info{{block_size=\"16\",cache_dtype=\"auto\",engine=\"0\",gpu_memory_utilization=\"0.95\",num_gpu_blocks=\"{BLOCKS}\",num_gpu_blocks_override=\"None\",swap_space=\"4\"}} 1.0\n"
    )
}

/// Answers every scrape with `body`, and counts them.
struct FixedScraper {
    body: Result<String, String>,
    calls: std::sync::atomic::AtomicU32,
}

impl Scraper for FixedScraper {
    fn scrape<'a>(&'a self, target: &'a ScrapeTarget) -> ScrapeFuture<'a> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(target.url(), "http://10.0.0.7:8000/metrics");
        let r = self.body.clone().map_err(ScrapeError);
        Box::pin(async move { r })
    }
}

/// The replica released on a100-a with tp 1, Ready, with a pod IP.
fn ready_pod() -> Pod {
    let mut pod = gated_pod(
        &deployment(),
        0,
        &spec_hash(&deployment().spec),
        PodGpus::DevicePlugin(1),
        LAUNCHER,
        Some(4 << 30),
    )
    .unwrap();
    pod.metadata.uid = Some("pod-uid".into());
    pod.metadata.resource_version = Some("9".into());
    pod.spec.as_mut().unwrap().scheduling_gates = None;
    let placement = json!({
        "pod": pod_name(), "node": "a100-a", "tensorParallelSize": 1, "quantization": "none",
        "kvCacheDtype": "auto", "gpuMemoryUtilization": 0.95, "maxModelLen": 8192,
        "kvCacheTokens": 1000, "plannedNonKvBytes": PLANNED_NON_KV,
    });
    pod.metadata
        .annotations
        .get_or_insert_default()
        .insert("vllm-operator.io/placement".into(), placement.to_string());
    pod.status = Some(
        serde_json::from_value(json!({
            "phase": "Running",
            "podIP": "10.0.0.7",
            "conditions": [{"type": "Ready", "status": "True"}],
        }))
        .unwrap(),
    );
    pod
}

fn key() -> ProfileKey {
    ProfileKey {
        model: "meta-llama/Llama-3.2-1B-Instruct".into(),
        revision: None,
        image: "vllm/vllm-openai:v0.11.0".into(),
        gpu_product: "NVIDIA A100-SXM4-80GB".into(),
        tensor_parallel_size: 1,
        quantization: Quantization::None,
        kv_cache_dtype: KvCacheDtype::Auto,
    }
}

/// What the scraped cache says the non-KV memory was: vLLM's budget less its KV cache.
fn measured_non_kv() -> u64 {
    let requested = (CUDA_TOTAL as f64 * 0.95).ceil() as u64;
    requested - BLOCKS * 16 * KV_BYTES_PER_TOKEN
}

fn stored(source: ProfileSource, non_kv: u64) -> MemoryProfile {
    let k = key();
    let mut p = MemoryProfile::new(
        &profile_name(&k),
        MemoryProfileSpec {
            model: k.model,
            revision: None,
            image: k.image,
            gpu_product: k.gpu_product,
            tensor_parallel_size: 1,
            quantization: Quantization::None,
            kv_cache_dtype: KvCacheDtype::Auto,
            non_kv_bytes_per_gpu: non_kv,
            startup_overhead_bytes: None,
            observations: 1,
            source,
        },
    );
    p.metadata.resource_version = Some("41".into());
    p.status = Some(MemoryProfileStatus {
        observations: 1,
        observed_non_kv_bytes_per_gpu: Some(non_kv),
        recent_pods: vec!["serving/an-earlier-pod".into()],
        ..Default::default()
    });
    p
}

fn context(
    client: kube::Client,
    profiles: Vec<MemoryProfile>,
    scrape: Result<String, String>,
) -> (Arc<Context>, Arc<FixedScraper>) {
    context_with(client, profiles, scrape, vec![ready_pod()])
}

fn context_with(
    client: kube::Client,
    profiles: Vec<MemoryProfile>,
    scrape: Result<String, String>,
    pods: Vec<Pod>,
) -> (Arc<Context>, Arc<FixedScraper>) {
    let (gpunodes, nodes) = fleet();
    let stores =
        Stores::from_objects(vec![deployment()], gpunodes, nodes, pods).with_profiles(profiles);
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
    let scraper = Arc::new(FixedScraper {
        body: scrape,
        calls: Default::default(),
    });
    ctx.scraper = scraper.clone();
    (Arc::new(ctx), scraper)
}

fn mock() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

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

/// The spec apply: no force, the operator's field manager, spec only.
async fn expect_profile_apply(handle: &mut Handle) -> (Value, Send) {
    let (method, uri, ct, body, send) = next(handle).await;
    assert_eq!(method, http::Method::PATCH);
    assert_eq!(
        uri,
        format!(
            "{PROFILES}/{}?&fieldManager=vllm-operator",
            profile_name(&key())
        ),
        "applied without force"
    );
    assert_eq!(ct, APPLY);
    assert_eq!(body["apiVersion"], "vllm-operator.io/v1alpha1");
    assert_eq!(body["kind"], "MemoryProfile");
    assert!(body.get("status").is_none(), "{body}");
    (body, send)
}

/// The status apply on the subresource, forced.
async fn expect_profile_status(handle: &mut Handle) -> Value {
    let (method, uri, ct, body, send) = next(handle).await;
    assert_eq!(method, http::Method::PATCH);
    assert_eq!(
        uri,
        format!(
            "{PROFILES}/{}/status?&force=true&fieldManager=vllm-operator",
            profile_name(&key())
        )
    );
    assert_eq!(ct, APPLY);
    assert!(body.get("spec").is_none(), "{body}");
    let mut echo = serde_json::to_value(stored(ProfileSource::Measured, 0)).unwrap();
    echo["status"] = body["status"].clone();
    respond(send, 200, &echo);
    body
}

async fn expect_service_and_status(handle: &mut Handle) -> Value {
    let (method, uri, _, body, send) = next(handle).await;
    assert_eq!(method, http::Method::PATCH);
    assert!(
        uri.starts_with("/api/v1/namespaces/serving/services/llama-1b?"),
        "{uri}"
    );
    respond(send, 200, &body);
    let (method, uri, _, body, send) = next(handle).await;
    assert_eq!(method, http::Method::PATCH);
    assert!(
        uri.starts_with(
            "/apis/vllm-operator.io/v1alpha1/namespaces/serving/vllmdeployments/llama-1b/status?"
        ),
        "{uri}"
    );
    let mut echo = serde_json::to_value(deployment()).unwrap();
    echo["status"] = body["status"].clone();
    respond(send, 200, &echo);
    body
}

async fn expect_event(handle: &mut Handle, reason: &str) -> Value {
    let (method, uri, _, body, send) = next(handle).await;
    assert_eq!(method, http::Method::POST);
    assert_eq!(uri, "/apis/events.k8s.io/v1/namespaces/serving/events?");
    assert_eq!(body["reason"], reason, "{body}");
    respond(send, 201, &body);
    body
}

/// Nothing else was sent: the handle sees no request within a moment.
async fn expect_nothing_more(handle: &mut Handle) {
    if let Ok(Some((req, _))) =
        tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
    {
        let (method, uri) = (req.method().clone(), req.uri().to_string());
        let body = req.into_body().collect_bytes().await.unwrap();
        panic!(
            "unexpected request {method} {uri}: {}",
            String::from_utf8_lossy(&body)
        );
    }
}

async fn run(ctx: Arc<Context>) {
    reconcile(Arc::new(DeserializeGuard(Ok(deployment()))), ctx)
        .await
        .expect("the reconcile goes on");
}

#[tokio::test]
async fn scenario_a_ready_pods_metrics_create_a_profile_then_its_status() {
    let (client, mut handle) = mock();
    let (ctx, scraper) = context(client, vec![], Ok(metrics_body()));
    let server = tokio::spawn(async move {
        let (body, send) = expect_profile_apply(&mut handle).await;
        let spec = &body["spec"];
        assert_eq!(spec["model"], "meta-llama/Llama-3.2-1B-Instruct");
        assert_eq!(spec["gpuProduct"], "NVIDIA A100-SXM4-80GB");
        assert_eq!(spec["tensorParallelSize"], 1);
        assert_eq!(spec["source"], "Measured");
        assert_eq!(spec["observations"], 1);
        assert_eq!(spec["nonKvBytesPerGpu"], measured_non_kv());
        assert_eq!(body["metadata"]["name"], profile_name(&key()));
        respond(send, 201, &body);
        let status = expect_profile_status(&mut handle).await;
        assert_eq!(status["status"]["observations"], 1);
        assert_eq!(
            status["status"]["observedNonKvBytesPerGpu"],
            measured_non_kv()
        );
        assert_eq!(
            status["status"]["recentPods"],
            json!([format!("serving/{}", pod_name())])
        );
        let dep = expect_service_and_status(&mut handle).await;
        // The replica's status: planned vs observed non-KV memory.
        let pl = &dep["status"]["placements"][0];
        assert_eq!(pl["plannedNonKvBytes"], PLANNED_NON_KV);
        assert_eq!(pl["observedNonKvBytes"], measured_non_kv());
        expect_nothing_more(&mut handle).await;
        handle
    });
    run(ctx.clone()).await;
    let mut handle = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(scraper.calls.load(std::sync::atomic::Ordering::Relaxed), 1);

    // The next reconcile neither scrapes the pod again nor writes the profile again.
    let second = tokio::spawn(async move {
        expect_service_and_status(&mut handle).await;
        expect_nothing_more(&mut handle).await;
    });
    run(ctx).await;
    tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(scraper.calls.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn scenario_an_existing_measured_profile_is_updated_by_the_maximum() {
    let (client, mut handle) = mock();
    let lower = measured_non_kv() - (1 << 30);
    let (ctx, _) = context(
        client,
        vec![stored(ProfileSource::Measured, lower)],
        Ok(metrics_body()),
    );
    let server = tokio::spawn(async move {
        let (body, send) = expect_profile_apply(&mut handle).await;
        assert_eq!(body["spec"]["observations"], 2);
        assert_eq!(body["spec"]["nonKvBytesPerGpu"], measured_non_kv());
        assert_eq!(body["spec"]["source"], "Measured");
        // Only name, spec and type: never a resourceVersion (apply, not update).
        assert_eq!(body["metadata"], json!({"name": profile_name(&key())}));
        respond(send, 200, &body);
        let status = expect_profile_status(&mut handle).await;
        assert_eq!(status["status"]["observations"], 2);
        assert_eq!(
            status["status"]["recentPods"],
            json!(["serving/an-earlier-pod", format!("serving/{}", pod_name())])
        );
        expect_service_and_status(&mut handle).await;
        expect_nothing_more(&mut handle).await;
    });
    run(ctx).await;
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn scenario_a_manual_profiles_spec_is_never_written() {
    let (client, mut handle) = mock();
    let (ctx, _) = context(
        client,
        vec![stored(ProfileSource::Manual, 2 << 30)],
        Ok(metrics_body()),
    );
    let server = tokio::spawn(async move {
        // No spec apply: straight to the status, which records the observation.
        let status = expect_profile_status(&mut handle).await;
        assert_eq!(status["status"]["observations"], 2);
        assert_eq!(
            status["status"]["observedNonKvBytesPerGpu"],
            measured_non_kv()
        );
        expect_service_and_status(&mut handle).await;
        expect_nothing_more(&mut handle).await;
    });
    run(ctx).await;
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn scenario_a_conflict_on_the_apply_is_an_event_and_the_reconcile_goes_on() {
    let (client, mut handle) = mock();
    let (ctx, _) = context(
        client,
        vec![stored(ProfileSource::Measured, 2 << 30)],
        Ok(metrics_body()),
    );
    let server = tokio::spawn(async move {
        let (_, send) = expect_profile_apply(&mut handle).await;
        respond(
            send,
            409,
            &json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                "message": "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using vllm-operator.io/v1alpha1: .spec.nonKvBytesPerGpu",
            }),
        );
        // What was observed is still recorded.
        let status = expect_profile_status(&mut handle).await;
        assert_eq!(status["status"]["observations"], 2);
        expect_service_and_status(&mut handle).await;
        let event = expect_event(&mut handle, "ProfileConflict").await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["regarding"]["kind"], "VllmDeployment");
        let note = event["note"].as_str().unwrap();
        assert!(note.contains(&profile_name(&key())), "{note}");
        assert!(note.contains("kubectl-edit"), "{note}");
        expect_nothing_more(&mut handle).await;
        handle
    });
    run(ctx.clone()).await;
    let mut handle = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains("vllm_operator_profile_writes_total{result=\"conflict\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vllm_operator_vllm_scrapes_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    // No retry storm: the next reconcile does not apply again.
    let second = tokio::spawn(async move {
        expect_service_and_status(&mut handle).await;
        expect_nothing_more(&mut handle).await;
    });
    run(ctx).await;
    tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn scenario_a_pod_whose_metrics_do_not_answer_is_tried_three_times_then_left() {
    let (client, mut handle) = mock();
    let (ctx, scraper) = context(client, vec![], Err("connection refused".into()));
    let server = tokio::spawn(async move {
        for _ in 0..4 {
            expect_service_and_status(&mut handle).await;
        }
        expect_nothing_more(&mut handle).await;
    });
    for _ in 0..4 {
        run(ctx.clone()).await;
    }
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(scraper.calls.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert!(
        ctx.metrics
            .encode()
            .contains("vllm_operator_vllm_scrapes_total{result=\"failed\"} 3")
    );
}

/// The README's GitOps example is a valid Manual profile.
#[test]
fn readme_manual_profile_example_reads_as_a_manual_profile() {
    let readme =
        std::fs::read_to_string(format!("{}/README.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let section = &readme[readme.find("## Memory profiles").expect("section")..];
    let start = section.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = start + section[start..].find("```").unwrap();
    let p: MemoryProfile = serde_norway::from_str(&section[start..end]).unwrap();
    assert_eq!(p.spec.source, ProfileSource::Manual);
    assert_eq!(p.spec.tensor_parallel_size, 1);
    assert!(p.spec.non_kv_bytes_per_gpu > 0);
    assert!(
        vllm_operator::validate::dns1123_subdomain(p.metadata.name.as_deref().unwrap()).is_ok()
    );
}

/// vLLM 0.11.0's one-request check failed (`vllm/v1/core/kv_cache_utils.py:700-727`): the
/// termination message (the kubelet's log tail) says how much KV memory vLLM had, which gives
/// the non-KV memory; the profile is written as the failed pod goes.
#[tokio::test]
async fn scenario_a_failed_starts_termination_message_creates_a_profile() {
    let mut failed = ready_pod();
    failed.status = Some(
        serde_json::from_value(json!({
            "phase": "Failed",
            "containerStatuses": [{
                "name": "vllm", "ready": false, "restartCount": 0, "image": "vllm", "imageID": "",
                "state": {"terminated": {"exitCode": 1, "message":
                    "(EngineCore_DP0 pid=77) ValueError: To serve at least one request with the models's max seq len (8192), (0.25 GiB KV cache is needed, which is larger than the available KV cache memory (0.21 GiB). Based on the available memory, the estimated maximum model length is 6880. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.\n"}}
            }]
        }))
        .unwrap(),
    );
    let (client, mut handle) = mock();
    let (ctx, scraper) = context_with(client, vec![], Ok(metrics_body()), vec![failed]);
    // 0.21 GiB printed: at least 0.205 GiB, so the non-KV memory is at most this.
    let available_low = (41u64 << 30).div_ceil(200);
    let non_kv = (CUDA_TOTAL as f64 * 0.95).ceil() as u64 - available_low;
    let server = tokio::spawn(async move {
        let (method, uri, _, _, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::DELETE);
        assert_eq!(
            uri,
            format!("/api/v1/namespaces/serving/pods/{}?", pod_name())
        );
        respond(send, 200, &serde_json::to_value(ready_pod()).unwrap());
        let (body, send) = expect_profile_apply(&mut handle).await;
        assert_eq!(body["spec"]["nonKvBytesPerGpu"], non_kv);
        assert_eq!(body["spec"]["observations"], 1);
        respond(send, 201, &body);
        let status = expect_profile_status(&mut handle).await;
        assert!(
            status["status"]["lastObservation"]
                .as_str()
                .unwrap()
                .contains("vLLM had 0.21 GiB for KV cache"),
            "{status}"
        );
        expect_service_and_status(&mut handle).await;
        let event = expect_event(&mut handle, "GpuMemoryFailure").await;
        assert!(
            event["note"].as_str().unwrap().contains("non-KV"),
            "{event}"
        );
        expect_nothing_more(&mut handle).await;
    });
    run(ctx).await;
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    // A failed pod is not scraped.
    assert_eq!(scraper.calls.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// A stored profile that breaks the fleet-file rules (here 2 PiB per GPU) is left out of
/// planning and learning: the observation starts a fresh count under the key's name.
#[tokio::test]
async fn scenario_a_broken_stored_profile_is_ignored() {
    let (client, mut handle) = mock();
    let (ctx, _) = context(
        client,
        vec![stored(ProfileSource::Measured, 2 << 50)],
        Ok(metrics_body()),
    );
    let server = tokio::spawn(async move {
        let (body, send) = expect_profile_apply(&mut handle).await;
        assert_eq!(body["spec"]["observations"], 1);
        assert_eq!(body["spec"]["nonKvBytesPerGpu"], measured_non_kv());
        respond(send, 200, &body);
        let status = expect_profile_status(&mut handle).await;
        assert_eq!(status["status"]["observations"], 1);
        let dep = expect_service_and_status(&mut handle).await;
        assert!(
            dep["status"]["placements"][0]
                .get("memoryProfile")
                .is_none()
        );
        expect_nothing_more(&mut handle).await;
    });
    run(ctx).await;
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}
