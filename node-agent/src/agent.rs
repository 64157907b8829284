//! `vllm-node-agent run`: poll NVML, attribute processes to pods, publish on change or heartbeat.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tracing::{info, warn};
use vllm_operator::api::GpuInfo;

use crate::metrics::{Metrics, liveness_window, router};
use crate::nvml::{GpuInventory, InventorySnapshot};
use crate::podresources;
use crate::publish::{
    ConditionState, Conditions, Publisher, Thresholds, build_status, publish_reason,
};

pub struct AgentConfig {
    pub node_name: String,
    pub poll_interval: Duration,
    pub thresholds: Thresholds,
    pub metrics_addr: SocketAddr,
    pub pod_resources_socket: PathBuf,
    pub proc_root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("kube client: {0}")]
    Client(kube::Error),
}

/// How long the kubelet's PodResources API may take to answer one List.
pub const PODRESOURCES_TIMEOUT: Duration = Duration::from_secs(10);

/// Exponential backoff, doubling from the poll interval and capped.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            failures: 0,
        }
    }
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.base
            .saturating_mul(1u32 << self.failures.min(16).saturating_sub(1))
            .min(self.cap)
    }
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What one poll produced and whether it was written.
struct State {
    conditions: Conditions,
    conditions_dirty: bool,
    last_published: Option<Vec<GpuInfo>>,
    last_publish_at: Instant,
    retry_at: Option<Instant>,
    publish_backoff: Backoff,
    nvml_backoff: Backoff,
    last_snapshot: InventorySnapshot,
}

pub async fn run(
    config: AgentConfig,
    inventory: Arc<dyn GpuInventory>,
    client: kube::Client,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let metrics = Arc::new(Metrics::with_liveness_window(liveness_window(
        config.thresholds.heartbeat,
    )));
    let listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|source| AgentError::Bind {
            addr: config.metrics_addr,
            source,
        })?;
    let mut http_shutdown = shutdown.clone();
    let server = tokio::spawn(
        axum::serve(listener, router(metrics.clone()))
            .with_graceful_shutdown(async move {
                let _ = http_shutdown.wait_for(|s| *s).await;
            })
            .into_future(),
    );
    let mut publisher = Publisher::new(client, &config.node_name);
    let cap = Duration::from_secs(60).max(config.poll_interval);
    let mut state = State {
        conditions: Conditions::default(),
        conditions_dirty: true,
        last_published: None,
        last_publish_at: Instant::now(),
        retry_at: None,
        publish_backoff: Backoff::new(config.poll_interval, cap),
        nvml_backoff: Backoff::new(config.poll_interval, cap),
        last_snapshot: InventorySnapshot::default(),
    };
    info!(node = %config.node_name, "node agent started");
    loop {
        let wait = poll_once(&config, &inventory, &mut publisher, &metrics, &mut state).await;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    info!("shutting down");
    let _ = server.await;
    Ok(())
}

/// One poll; returns how long to sleep before the next.
async fn poll_once(
    config: &AgentConfig,
    inventory: &Arc<dyn GpuInventory>,
    publisher: &mut Publisher,
    metrics: &Metrics,
    state: &mut State,
) -> Duration {
    let now = Timestamp::now();
    let inv = inventory.clone();
    let read = tokio::task::spawn_blocking(move || inv.snapshot()).await;
    let mut wait = config.poll_interval;
    let nvml_state = match read {
        Ok(Ok(snapshot)) => {
            metrics.nvml_ok.store(true, Ordering::Relaxed);
            state.nvml_backoff.reset();
            state.last_snapshot = snapshot;
            ConditionState {
                type_: "NvmlHealthy",
                ok: true,
                reason: "ReadOk".into(),
                message: format!("{} GPUs read", state.last_snapshot.gpus.len()),
            }
        }
        Ok(Err(e)) => nvml_failed(metrics, state, &mut wait, e.to_string()),
        Err(join) => nvml_failed(
            metrics,
            state,
            &mut wait,
            format!("NVML read task failed: {join}"),
        ),
    };
    state.conditions_dirty |= state.conditions.set(nvml_state, now);

    let mut gpus = state.last_snapshot.gpus.clone();
    let listed = tokio::time::timeout(
        PODRESOURCES_TIMEOUT,
        podresources::list(&config.pod_resources_socket),
    )
    .await
    .unwrap_or_else(|_| {
        Err(podresources::PodResourcesError::Timeout {
            path: config.pod_resources_socket.display().to_string(),
            after: PODRESOURCES_TIMEOUT,
        })
    });
    let allocations = match listed {
        Ok(resp) => {
            state.conditions_dirty |= state.conditions.set(
                ConditionState {
                    type_: "PodResourcesAvailable",
                    ok: true,
                    reason: "ListOk".into(),
                    message: format!(
                        "kubelet PodResources at {}",
                        config.pod_resources_socket.display()
                    ),
                },
                now,
            );
            Some(podresources::allocations(&resp))
        }
        Err(e) => {
            metrics.error("podresources");
            state.conditions_dirty |= state.conditions.set(
                ConditionState {
                    type_: "PodResourcesAvailable",
                    ok: false,
                    reason: "SocketUnavailable".into(),
                    message: e.to_string(),
                },
                now,
            );
            None
        }
    };
    podresources::attribute(&mut gpus, allocations.as_ref(), &config.proc_root);
    metrics.observe(&config.node_name, &gpus);

    let in_backoff = state.retry_at.is_some_and(|t| Instant::now() < t);
    let reason = publish_reason(
        state.last_published.as_deref(),
        &gpus,
        state.conditions_dirty,
        state.last_publish_at.elapsed(),
        &config.thresholds,
    );
    if let Some(reason) = reason.filter(|_| !in_backoff) {
        let status = build_status(
            &config.node_name,
            state.last_snapshot.driver_version.clone(),
            gpus.clone(),
            state.conditions.to_vec(),
            now,
        );
        match publisher.apply_status(&status).await {
            Ok(()) => {
                tracing::debug!(?reason, "published");
                metrics.publishes.inc();
                metrics.publish_ok.store(true, Ordering::Relaxed);
                metrics.published();
                state.last_published = Some(gpus);
                state.last_publish_at = Instant::now();
                state.conditions_dirty = false;
                state.retry_at = None;
                state.publish_backoff.reset();
            }
            Err(e) => {
                metrics.error("publish");
                let delay = state.publish_backoff.fail();
                warn!(error = %e, retry_in = ?delay, "publish failed");
                state.retry_at = Some(Instant::now() + delay);
                // Ready while a retry is scheduled; not once the backoff is at its cap.
                metrics
                    .publish_ok
                    .store(delay < Duration::from_secs(60), Ordering::Relaxed);
            }
        }
    }
    wait
}

fn nvml_failed(
    metrics: &Metrics,
    state: &mut State,
    wait: &mut Duration,
    message: String,
) -> ConditionState {
    metrics.nvml_ok.store(false, Ordering::Relaxed);
    metrics.error("nvml");
    *wait = state.nvml_backoff.fail();
    warn!(error = %message, retry_in = ?wait, "NVML read failed");
    ConditionState {
        type_: "NvmlHealthy",
        ok: false,
        reason: "ReadFailed".into(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let seq: Vec<u64> = (0..8).map(|_| b.fail().as_secs()).collect();
        assert_eq!(seq, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        b.reset();
        assert_eq!(b.fail().as_secs(), 1);
    }
}
