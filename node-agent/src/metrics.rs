//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// When a GpuNode publish last succeeded (the agent's start before the first).
    last_publish: Mutex<Instant>,
    /// `/healthz` fails when no publish succeeded for this long.
    liveness_window: Duration,
}

/// Heartbeats without a successful publish after which the agent counts as hung.
pub const LIVENESS_HEARTBEATS: u32 = 4;
/// The shortest liveness window: room for two publish retries at the 60 s backoff cap.
pub const MIN_LIVENESS_WINDOW: Duration = Duration::from_secs(120);

/// How long the agent may go without a successful publish before `/healthz` fails: it
/// publishes at least once per heartbeat, so several heartbeats of silence mean the loop or an
/// API call hangs, which only a restart cures.
pub fn liveness_window(heartbeat: Duration) -> Duration {
    (heartbeat * LIVENESS_HEARTBEATS).max(MIN_LIVENESS_WINDOW)
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
            last_publish: Mutex::new(Instant::now()),
            liveness_window: liveness_window(Duration::from_secs(30)),
        }
    }
}

impl Metrics {
    /// Metrics whose liveness allows `window` without a successful publish.
    pub fn with_liveness_window(window: Duration) -> Self {
        Self {
            liveness_window: window,
            ..Self::default()
        }
    }

    /// A publish succeeded just now.
    pub fn published(&self) {
        self.published_at(Instant::now());
    }

    pub fn published_at(&self, at: Instant) {
        *self.last_publish.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// Alive at `now`: a publish succeeded within the liveness window.
    pub fn live_at(&self, now: Instant) -> bool {
        let last = *self.last_publish.lock().unwrap_or_else(|p| p.into_inner());
        now.saturating_duration_since(last) <= self.liveness_window
    }

    pub fn live(&self) -> bool {
        self.live_at(Instant::now())
    }

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
        .route(
            "/healthz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.live() {
                    (StatusCode::OK, "ok".to_string())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "no GpuNode publish succeeded in the last {}s",
                            m.liveness_window.as_secs()
                        ),
                    )
                }
            }),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_fails_after_several_heartbeats_without_a_publish() {
        assert_eq!(
            liveness_window(Duration::from_secs(30)),
            Duration::from_secs(120)
        );
        assert_eq!(
            liveness_window(Duration::from_secs(60)),
            Duration::from_secs(240)
        );
        let m = Metrics::with_liveness_window(Duration::from_secs(120));
        let t0 = Instant::now();
        m.published_at(t0);
        assert!(m.live_at(t0 + Duration::from_secs(120)));
        assert!(!m.live_at(t0 + Duration::from_secs(121)));
        m.published_at(t0 + Duration::from_secs(100));
        assert!(m.live_at(t0 + Duration::from_secs(200)));
    }

    #[tokio::test]
    async fn healthz_answers_503_when_no_publish_succeeds() {
        use tower::ServiceExt;
        let m = Arc::new(Metrics::with_liveness_window(Duration::from_secs(120)));
        let get = |m: Arc<Metrics>| async move {
            router(m)
                .oneshot(
                    axum::http::Request::get("/healthz")
                        .body(axum::body::Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap()
                .status()
        };
        assert_eq!(get(m.clone()).await, StatusCode::OK);
        let Some(long_ago) = Instant::now().checked_sub(Duration::from_secs(121)) else {
            return; // a monotonic clock this young cannot express it
        };
        m.published_at(long_ago);
        assert_eq!(get(m.clone()).await, StatusCode::SERVICE_UNAVAILABLE);
        m.published();
        assert_eq!(get(m).await, StatusCode::OK);
    }
}
