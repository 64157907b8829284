//! The controller's Prometheus metrics and its `/metrics`, `/healthz`, `/readyz` endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    /// MemoryProfile writes by result: `applied`, `conflict` (409 on the spec apply), `failed`.
    pub profile_writes: Family<ResultLabels, Counter>,
    /// Scrapes of vLLM pods' `/metrics` by result: `ok`, `no_metric`, `failed`.
    pub vllm_scrapes: Family<ResultLabels, Counter>,
    pub reconciles: Counter,
    pub reconcile_seconds: Histogram,
    pub errors: Family<StageLabels, Counter>,
    /// Replicas released to a node.
    pub placements: Counter,
    /// Reconciles that left a replica unplaced for lack of GPU memory.
    pub refusals: Counter,
    /// Placements whose user args had operator-owned flags replaced.
    pub args_replaced: Counter,
    /// Deployments waiting for GPU memory (Admitted=False, InsufficientGpuMemory).
    pub queue_length: Gauge,
    /// This replica holds the lease (always true without leader election).
    pub leader: AtomicBool,
    /// The lease loop read the Lease in its last round (or there is no election).
    pub election_healthy: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vllm_operator");
        let reconciles = Counter::default();
        // 1 ms .. ~16 s.
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let errors = Family::<StageLabels, Counter>::default();
        let placements = Counter::default();
        let refusals = Counter::default();
        let args_replaced = Counter::default();
        let queue_length = Gauge::default();
        let profile_writes = Family::<ResultLabels, Counter>::default();
        let vllm_scrapes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "profile_writes",
            "MemoryProfile writes by result (applied, conflict, failed)",
            profile_writes.clone(),
        );
        registry.register(
            "vllm_scrapes",
            "Scrapes of vLLM pods' /metrics by result (ok, no_metric, failed)",
            vllm_scrapes.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles of a VllmDeployment",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, API calls included",
            reconcile_seconds.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by the stage that failed",
            errors.clone(),
        );
        registry.register(
            "placements",
            "Replicas released to a node",
            placements.clone(),
        );
        registry.register(
            "refusals",
            "Reconciles that left a replica unplaced for lack of GPU memory",
            refusals.clone(),
        );
        registry.register(
            "args_replaced",
            "Placements whose operator-owned vllm flags were replaced in spec.args",
            args_replaced.clone(),
        );
        registry.register(
            "admission_queue_length",
            "VllmDeployments waiting for GPU memory",
            queue_length.clone(),
        );
        Metrics {
            registry,
            profile_writes,
            vllm_scrapes,
            reconciles,
            reconcile_seconds,
            errors,
            placements,
            refusals,
            args_replaced,
            queue_length,
            leader: AtomicBool::new(false),
            election_healthy: AtomicBool::new(true),
        }
    }
}

impl Metrics {
    pub fn observe_reconcile(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    /// Count one result in `family`.
    pub fn count(family: &Family<ResultLabels, Counter>, result: &str) {
        family
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn error(&self, stage: &str) {
        self.errors
            .get_or_create(&StageLabels {
                stage: stage.to_string(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Ready when leading, or when standing by with a working election loop: a standby that
    /// can read the Lease is ready to take over.
    pub fn ready(&self) -> bool {
        self.leader.load(Ordering::Relaxed) || self.election_healthy.load(Ordering::Relaxed)
    }
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [("content-type", crate::ops::OPENMETRICS_CONTENT_TYPE)],
                    m.encode(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                match (m.leader.load(Ordering::Relaxed), m.ready()) {
                    (true, _) => (StatusCode::OK, "ready: leader"),
                    (false, true) => (StatusCode::OK, "ready: standby"),
                    (false, false) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: cannot read the leader Lease",
                    ),
                }
            }),
        )
        .with_state(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_with_the_prefix() {
        let m = Metrics::default();
        m.observe_reconcile(Duration::from_millis(3));
        m.error("PatchStatus");
        m.placements.inc();
        m.queue_length.set(2);
        let text = m.encode();
        assert!(text.contains("vllm_operator_reconciles_total 1"), "{text}");
        assert!(
            text.contains("vllm_operator_reconcile_errors_total{stage=\"PatchStatus\"} 1"),
            "{text}"
        );
        assert!(text.contains("vllm_operator_placements_total 1"), "{text}");
        assert!(
            text.contains("vllm_operator_admission_queue_length 2"),
            "{text}"
        );
        assert!(
            text.contains("vllm_operator_reconcile_duration_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn readiness_says_leader_or_standby() {
        let m = Metrics::default();
        assert!(m.ready());
        m.election_healthy.store(false, Ordering::Relaxed);
        assert!(!m.ready());
        m.leader.store(true, Ordering::Relaxed);
        assert!(m.ready());
    }
}
