//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vllm_operator::api::GpuInfo;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabels {
    pub node: String,
    pub gpu: String,
    pub uuid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    total_bytes: Family<GpuLabels, Gauge>,
    free_bytes: Family<GpuLabels, Gauge>,
    used_bytes: Family<GpuLabels, Gauge>,
    pub publishes: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    /// Last NVML read succeeded.
    pub nvml_ok: AtomicBool,
    /// Last publish succeeded, or a retry is scheduled within the backoff.
    pub publish_ok: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vllm_node_agent");
        let total_bytes = Family::<GpuLabels, Gauge>::default();
        let free_bytes = Family::<GpuLabels, Gauge>::default();
        let used_bytes = Family::<GpuLabels, Gauge>::default();
        let publishes = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "gpu_memory_total_bytes",
            "NVML total memory",
            total_bytes.clone(),
        );
        registry.register(
            "gpu_memory_free_bytes",
            "NVML free memory",
            free_bytes.clone(),
        );
        registry.register(
            "gpu_memory_used_bytes",
            "NVML used memory",
            used_bytes.clone(),
        );
        registry.register("publishes", "GpuNode status writes", publishes.clone());
        registry.register(
            "errors",
            "Errors by kind (nvml, publish, podresources)",
            errors.clone(),
        );
        Self {
            registry,
            total_bytes,
            free_bytes,
            used_bytes,
            publishes,
            errors,
            nvml_ok: AtomicBool::new(false),
            publish_ok: AtomicBool::new(true),
        }
    }
}

impl Metrics {
    pub fn observe(&self, node: &str, gpus: &[GpuInfo]) {
        for g in gpus {
            let labels = GpuLabels {
                node: node.to_string(),
                gpu: g.index.to_string(),
                uuid: g.uuid.clone(),
            };
            let as_i64 = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
            self.total_bytes
                .get_or_create(&labels)
                .set(as_i64(g.memory.total_bytes));
            self.free_bytes
                .get_or_create(&labels)
                .set(as_i64(g.memory.free_bytes));
            self.used_bytes
                .get_or_create(&labels)
                .set(as_i64(g.memory.used_bytes));
        }
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn ready(&self) -> bool {
        self.nvml_ok.load(Ordering::Relaxed) && self.publish_ok.load(Ordering::Relaxed)
    }
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [("content-type", vllm_operator::ops::OPENMETRICS_CONTENT_TYPE)],
                    m.encode(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .with_state(metrics)
}
