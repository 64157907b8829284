//! What a real cluster tells about one start of vLLM, with the chart's privileges only, turned
//! into [`Observed`] for the decision to learn memory profiles from.
//!
//! Signals used:
//!
//! - **the vLLM container's termination message** (pod status, `state`/`lastState.terminated
//!   .message`). The pod sets `terminationMessagePolicy: FallbackToLogsOnError`
//!   ([`super::pod`]), so when vLLM exits with an error the kubelet puts the tail of its log
//!   there; vLLM's startup memory failures carry their figures ([`failure_figures`]).
//! - **the node agent's GpuNode report**: the bytes the pod's processes use on each GPU (NVML
//!   per-process memory, mapped to pods by the agent), or a GPU's used bytes when the kubelet
//!   allocated it to the pod and NVML lists no process.
//! - **vLLM's own `/metrics`**: `vllm:cache_config_info` with the labels `num_gpu_blocks` and
//!   `block_size` (and `gpu_memory_utilization`), scraped once per pod after it is Ready
//!   ([`HttpScraper`]; bounded: see [`SCRAPE_TIMEOUT`], [`MAX_BODY_BYTES`], [`MAX_TRIES`],
//!   [`MAX_SCRAPES_PER_RECONCILE`]).
//!
//! Not used: the launcher's NVML snapshot of free memory just before `exec`. The launcher
//! `exec`s vLLM, so it has no process left to report it, and the only channel back would be
//! the pod's log, which the chart does not let the controller read (no `pods/log`). Without it
//! the startup overhead (free before exec less vLLM's own free) is not measured on a cluster.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::decide::{PodPhase, PodView};
use super::failures::{FailureFigures, StartupCheckText, failure_figures};
use super::pod::VLLM_CONTAINER;
use crate::api::{self, PodRef, VllmDeploymentSpec};
use crate::model::{Architecture, GpuFacts, VllmFamily, estimate};
use crate::plan::{Fleet, candidate_shapes};
use crate::profile::Observed;

/// The metric vLLM exposes its cache configuration under: a gauge set to 1 whose labels are
/// every field of `CacheConfig`, each as Python's `str(value)` (vLLM 0.11.0
/// `vllm/v1/metrics/loggers.py:501-522` `log_metrics_info("cache_config", ...)`, called from
/// `log_engine_initialized` `:617-618` after the engine set `num_gpu_blocks`,
/// `vllm/v1/engine/core.py:91-94`; labels from `vllm/config/cache.py:157-160`
/// `metrics_info`; V0: `vllm/engine/metrics.py:558-569`). Unchanged in 0.33.0
/// (`vllm/v1/metrics/loggers.py:1114-1136`, `vllm/config/cache.py:440-443`), where
/// `CacheConfig` also holds private fields (`_block_size_resolved`), which become labels too.
pub const CACHE_CONFIG_INFO: &str = "vllm:cache_config_info";

/// One HTTP try gives up after this long.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// A `/metrics` body above this is cut off and the try fails.
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// Tries per pod; after the last the pod is not scraped again.
pub const MAX_TRIES: u32 = 3;
/// Pods scraped in one reconcile (concurrently).
pub const MAX_SCRAPES_PER_RECONCILE: usize = 8;

/// What `vllm:cache_config_info` says.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfigInfo {
    /// Blocks of the KV cache on each GPU (per worker: every tensor parallel rank holds the
    /// same number of blocks of its shard).
    pub num_gpu_blocks: u64,
    /// Tokens per block.
    pub block_size: u64,
    /// `--gpu-memory-utilization` vLLM ran with.
    pub gpu_memory_utilization: Option<f64>,
}

impl CacheConfigInfo {
    /// Tokens the KV cache holds on each GPU.
    pub fn tokens(&self) -> u64 {
        self.num_gpu_blocks.saturating_mul(self.block_size)
    }
}

/// One sample of the Prometheus text exposition format: name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parse one sample line (`name{l="v",...} value [timestamp]`), as the text format defines it
/// (prometheus/docs `content/docs/instrumenting/exposition_formats.md`: label values escape
/// `\\`, `\"` and `\n`; a trailing comma in the label set is allowed; whitespace may surround
/// the braces). `None` for comments, blank lines and anything malformed.
pub fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !valid_name {
        return None;
    }
    let mut rest = line[name_end..].trim_start();
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        let consumed;
        loop {
            // Skip whitespace and commas between pairs.
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() || c == ',' {
                    chars.next();
                } else {
                    break;
                }
            }
            let (i, c) = chars.next()?;
            if c == '}' {
                consumed = i + 1;
                break;
            }
            let mut key = String::from(c);
            loop {
                let (_, c) = chars.next()?;
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            let key = key.trim().to_string();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        other => {
                            value.push('\\');
                            value.push(other);
                        }
                    },
                    c => value.push(c),
                }
            }
            labels.push((key, value));
        }
        rest = after_brace[consumed..].trim_start();
    }
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A label value Python printed as an integer (`str(int)`); `None` for `None` and the rest.
fn int_label(labels: &[(String, String)], key: &str) -> Option<u64> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// `vllm:cache_config_info` from a `/metrics` body. With several engines (data parallel) the
/// smallest cache is taken. `None` when the metric is absent or its `num_gpu_blocks` is not a
/// number yet (`None` before the engine sized its cache) or zero.
pub fn cache_config_info(body: &str) -> Option<CacheConfigInfo> {
    body.lines()
        .filter(|l| l.contains(CACHE_CONFIG_INFO))
        .filter_map(parse_sample)
        .filter(|s| s.name == CACHE_CONFIG_INFO)
        .filter_map(|s| {
            let num_gpu_blocks = int_label(&s.labels, "num_gpu_blocks").filter(|n| *n > 0)?;
            let block_size = int_label(&s.labels, "block_size").filter(|n| *n > 0)?;
            let gpu_memory_utilization = s
                .labels
                .iter()
                .find(|(k, _)| k == "gpu_memory_utilization")
                .and_then(|(_, v)| v.trim().parse::<f64>().ok())
                .filter(|u| u.is_finite() && *u > 0.0 && *u <= 1.0);
            Some(CacheConfigInfo {
                num_gpu_blocks,
                block_size,
                gpu_memory_utilization,
            })
        })
        .min_by_key(CacheConfigInfo::tokens)
}

/// The vLLM container's termination message, current or from its last run (the kubelet's
/// fallback to the log tail included).
pub fn termination_message(pod: &Pod) -> Option<&str> {
    let status = pod
        .status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == VLLM_CONTAINER)?;
    let current = status.state.as_ref().and_then(|s| s.terminated.as_ref());
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    current
        .into_iter()
        .chain(last)
        .find_map(|t| t.message.as_deref().filter(|m| !m.trim().is_empty()))
}

/// What vLLM's failure text tells, each figure taken on its safe side for learning (the
/// message prints GiB to two decimals: see [`super::failures::PrintedGib`]): the KV memory
/// it had at its low bound (so the non-KV figure derived from it errs high), what one request
/// needs and the total at their high bounds, the free memory at its low bound. `bytes_per_token`
/// is the KV bytes per token per GPU of the pod's shape (for V0's token count).
pub fn observed_from_message(message: &str, bytes_per_token: Option<u64>) -> Observed {
    let mut o = Observed::default();
    match failure_figures(message) {
        Some(FailureFigures::StartupCheck {
            text,
            first,
            total,
            utilization,
            ..
        }) => {
            if text != StartupCheckText::ExternalWeightsExceed {
                o.free_bytes_at_start = Some(first.low_bytes());
            }
            o.total_bytes = Some(total.high_bytes());
            o.utilization = Some(utilization).filter(|u| *u > 0.0 && *u <= 1.0);
        }
        Some(FailureFigures::KvOneRequest {
            needed, available, ..
        }) => {
            o.kv_needed_bytes = Some(needed.high_bytes());
            o.kv_available_bytes = Some(available.low_bytes());
        }
        Some(FailureFigures::KvTokens { kv_tokens, .. }) => {
            o.kv_cache_bytes = bytes_per_token.map(|b| b.saturating_mul(kv_tokens));
        }
        // The KV budget was zero or below: vLLM's non-KV memory took at least all it requested.
        // A lower bound, which the learning rule (maximum of observations) may only raise.
        Some(FailureFigures::NoKvCache) => o.kv_available_bytes = Some(0),
        None => {}
    }
    o
}

/// The bytes the pod uses on each of its GPUs, as the node agent reports them: the sum of the
/// pod's processes per GPU; for a GPU allocated to the pod whose processes NVML does not list,
/// the GPU's used bytes. The largest over its GPUs.
pub fn agent_used_bytes(fleet: &Fleet, node: &str, pod: &PodRef) -> Option<u64> {
    let node = fleet.node(node)?;
    node.gpus
        .iter()
        .filter_map(|g| {
            let mine: u64 = g
                .processes
                .iter()
                .filter(|(_, _, p)| p.as_ref() == Some(pod))
                .map(|(_, used, _)| *used)
                .fold(0u64, u64::saturating_add);
            if mine > 0 {
                Some(mine)
            } else if g.allocated_to.as_ref() == Some(pod) && g.processes.is_empty() {
                let used = g
                    .total_bytes
                    .saturating_sub(g.free_bytes)
                    .saturating_sub(g.reserved_bytes);
                (used > 0).then_some(used)
            } else {
                None
            }
        })
        .max()
}

/// KV bytes per token on one GPU in the placement's shape, as the planner's estimate counts
/// them (the same arithmetic that sized the plan); `None` when the shape no longer estimates.
pub fn kv_bytes_per_token(
    spec: &VllmDeploymentSpec,
    arch: &Architecture,
    family: VllmFamily,
    placement: &api::Placement,
    fleet: &Fleet,
) -> Option<u64> {
    let shape = candidate_shapes(spec, placement.max_model_len, family)
        .into_iter()
        .find(|s| {
            s.tensor_parallel_size == placement.tensor_parallel_size
                && s.quantization == placement.quantization
                && s.kv_cache_dtype == placement.kv_cache_dtype
        })?;
    let gpu = placement
        .node
        .as_deref()
        .and_then(|n| fleet.node(n))
        .and_then(|n| {
            n.gpus
                .iter()
                .find(|g| placement.gpu_uuids.contains(&g.uuid))
                .or_else(|| {
                    n.gpus
                        .iter()
                        .find(|g| placement.candidate_gpus.contains(&g.index))
                })
                .or_else(|| n.gpus.first())
        });
    let facts = gpu
        .map(|g| GpuFacts {
            total_bytes: Some(g.total_bytes),
            compute_capability: g.compute_capability,
            product: Some(g.product.clone()),
        })
        .unwrap_or_default();
    estimate(arch, &shape, &facts)
        .ok()
        .map(|e| e.kv_cache_bytes_per_token_per_gpu)
        .filter(|b| *b > 0)
}

/// Everything observed of one pod: its termination message, the agent's report of its GPUs,
/// and its `/metrics` (when scraped). Pure.
pub fn observe(
    pod: &Pod,
    view: &PodView,
    fleet: &Fleet,
    bytes_per_token: Option<u64>,
    metrics: Option<&CacheConfigInfo>,
) -> Observed {
    let mut o = match (&view.phase, termination_message(pod)) {
        (PodPhase::Failed { .. }, Some(m)) => observed_from_message(m, bytes_per_token),
        _ => Observed::default(),
    };
    let node = view.placement.as_ref().and_then(|p| p.node.as_deref());
    if let (Some(node), Some(ns)) = (node, pod.metadata.namespace.as_ref()) {
        let me = PodRef {
            namespace: ns.clone(),
            name: view.name.clone(),
        };
        o.used_bytes_per_gpu = agent_used_bytes(fleet, node, &me);
    }
    if let Some(info) = metrics {
        o.kv_cache_bytes = bytes_per_token.map(|b| b.saturating_mul(info.tokens()));
        if o.utilization.is_none() {
            o.utilization = info.gpu_memory_utilization;
        }
    }
    o
}

/// Why a scrape failed, in a line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScrapeError(pub String);

/// Where to scrape one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrapeTarget {
    pub pod_ip: String,
    pub port: i32,
}

impl ScrapeTarget {
    pub fn url(&self) -> String {
        // An IPv6 pod IP needs brackets in a URL.
        if self.pod_ip.contains(':') {
            format!("http://[{}]:{}/metrics", self.pod_ip, self.port)
        } else {
            format!("http://{}:{}/metrics", self.pod_ip, self.port)
        }
    }
}

pub type ScrapeFuture<'a> = Pin<Box<dyn Future<Output = Result<String, ScrapeError>> + Send + 'a>>;

/// Reads a pod's `/metrics` body; a trait so that tests hand in text.
pub trait Scraper: Send + Sync {
    fn scrape<'a>(&'a self, target: &'a ScrapeTarget) -> ScrapeFuture<'a>;
}

/// Plain HTTP GET of `http://podIP:port/metrics`, within [`SCRAPE_TIMEOUT`] and
/// [`MAX_BODY_BYTES`]. vLLM serves `/metrics` on its API port (vLLM 0.11.0
/// `vllm/entrypoints/openai/api_server.py:270-284`, a `prometheus_client` ASGI app; 0.33.0
/// `vllm/entrypoints/serve/instrumentator/metrics.py:66-77`) and its `--api-key` guards only
/// `/v1` routes (0.11.0 `api_server.py:1296-1300`; 0.33.0 `/v1`, `/v2`, `/inference`,
/// `/cohere`, `vllm/entrypoints/serve/middleware/authenticate.py:11,55-59`), so no
/// credentials are needed.
#[derive(Clone, Debug, Default)]
pub struct HttpScraper;

impl Scraper for HttpScraper {
    fn scrape<'a>(&'a self, target: &'a ScrapeTarget) -> ScrapeFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(SCRAPE_TIMEOUT, http_get(&target.url())).await {
                Ok(r) => r,
                Err(_) => Err(ScrapeError(format!(
                    "GET {}: no answer within {} s",
                    target.url(),
                    SCRAPE_TIMEOUT.as_secs()
                ))),
            }
        })
    }
}

async fn http_get(url: &str) -> Result<String, ScrapeError> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper::body::Bytes;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    let fail = |why: String| ScrapeError(format!("GET {url}: {why}"));
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = http::Request::get(url)
        .header(http::header::ACCEPT, "text/plain")
        .header(http::header::USER_AGENT, "vllm-operator")
        .body(Empty::new())
        .map_err(|e| fail(e.to_string()))?;
    let resp = client.request(req).await.map_err(|e| fail(e.to_string()))?;
    if resp.status() != http::StatusCode::OK {
        return Err(fail(format!("status {}", resp.status())));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| fail(format!("body: {e}")))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| fail("body is not UTF-8".into()))
}

/// What became of one pod's scrapes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScrapeState {
    pub tries: u32,
    pub info: Option<CacheConfigInfo>,
    pub last_error: Option<String>,
}

impl ScrapeState {
    fn wanted(&self) -> bool {
        self.info.is_none() && self.tries < MAX_TRIES
    }
}

/// The scrapes of every deployment's pods, by deployment (`namespace/name`) then pod uid; a
/// deployment's entry keeps only its current pods.
#[derive(Debug, Default)]
pub struct ScrapeBook {
    by_deployment: HashMap<String, HashMap<String, ScrapeState>>,
}

impl ScrapeBook {
    /// The result for a pod, if scraped.
    pub fn info(&self, deployment: &str, uid: &str) -> Option<&CacheConfigInfo> {
        self.by_deployment.get(deployment)?.get(uid)?.info.as_ref()
    }

    /// Forget pods of `deployment` not in `uids` (and the deployment when it has none).
    pub fn keep_only(&mut self, deployment: &str, uids: &[&str]) {
        if uids.is_empty() {
            self.by_deployment.remove(deployment);
            return;
        }
        if let Some(m) = self.by_deployment.get_mut(deployment) {
            m.retain(|uid, _| uids.contains(&uid.as_str()));
        }
    }

    /// Whether the pod still wants a scrape.
    pub fn wanted(&self, deployment: &str, uid: &str) -> bool {
        self.by_deployment
            .get(deployment)
            .and_then(|m| m.get(uid))
            .is_none_or(ScrapeState::wanted)
    }

    /// Record one try's result (a body without the metric counts as a failed try).
    pub fn record(&mut self, deployment: &str, uid: &str, result: Result<String, ScrapeError>) {
        let s = self
            .by_deployment
            .entry(deployment.to_string())
            .or_default()
            .entry(uid.to_string())
            .or_default();
        s.tries = s.tries.saturating_add(1);
        match result.map(|body| cache_config_info(&body)) {
            Ok(Some(info)) => {
                s.info = Some(info);
                s.last_error = None;
            }
            Ok(None) => {
                s.last_error = Some(format!("no {CACHE_CONFIG_INFO} with num_gpu_blocks"));
            }
            Err(e) => s.last_error = Some(e.0),
        }
    }

    /// Pods of `deployment` with tries left but no result.
    pub fn pending(&self, deployment: &str) -> usize {
        self.by_deployment.get(deployment).map_or(0, |m| {
            m.values().filter(|s| s.wanted() && s.tries > 0).count()
        })
    }
}

/// The pods to scrape now: Ready, placed, with a pod IP and a uid, still wanted; at most
/// [`MAX_SCRAPES_PER_RECONCILE`]. A pod whose vLLM serves TLS (`--ssl-keyfile` among the
/// user's arguments) is not scraped: the scraper speaks plain HTTP.
pub fn scrape_targets(
    book: &ScrapeBook,
    deployment: &str,
    spec: &VllmDeploymentSpec,
    pods: &[(&Pod, &PodView)],
) -> Vec<(String, ScrapeTarget)> {
    if spec.args.iter().any(|a| a.starts_with("--ssl-keyfile")) {
        return Vec::new();
    }
    pods.iter()
        .filter(|(_, v)| v.phase == PodPhase::Ready && v.placement.is_some())
        .filter_map(|(p, _)| {
            let uid = p.metadata.uid.clone()?;
            let ip = p
                .status
                .as_ref()?
                .pod_ip
                .clone()
                .filter(|ip| !ip.is_empty())?;
            book.wanted(deployment, &uid).then_some((
                uid,
                ScrapeTarget {
                    pod_ip: ip,
                    port: spec.port,
                },
            ))
        })
        .take(MAX_SCRAPES_PER_RECONCILE)
        .collect()
}

/// How long to wait before trying a pod's `/metrics` again.
pub const SCRAPE_RETRY: Duration = Duration::from_secs(20);

/// The deployment's pods as the decision sees them, each with what was observed of its start;
/// Ready pods' `/metrics` are scraped first (bounded, concurrently). Also returns whether a
/// scrape failed with tries left (the caller looks again after [`SCRAPE_RETRY`]).
pub async fn observe_pods(
    ctx: &super::context::Context,
    dep: &crate::api::VllmDeployment,
    arch: Option<&Architecture>,
    pods: &[std::sync::Arc<Pod>],
    fleet: &Fleet,
) -> (Vec<PodView>, bool) {
    let key = format!(
        "{}/{}",
        dep.metadata.namespace.as_deref().unwrap_or(""),
        dep.metadata.name.as_deref().unwrap_or("")
    );
    let pairs: Vec<(&Pod, PodView)> = pods
        .iter()
        .filter_map(|p| super::view::pod_view(p).map(|v| (p.as_ref(), v)))
        .collect();
    let refs: Vec<(&Pod, &PodView)> = pairs.iter().map(|(p, v)| (*p, v)).collect();
    let targets = {
        let mut book = ctx.scrapes.lock().unwrap_or_else(|p| p.into_inner());
        let uids: Vec<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        book.keep_only(&key, &uids);
        scrape_targets(&book, &key, &dep.spec, &refs)
    };
    if !targets.is_empty() {
        let scraper = ctx.scraper.clone();
        let results =
            futures::future::join_all(targets.iter().map(|(_, target)| scraper.scrape(target)))
                .await;
        let mut book = ctx.scrapes.lock().unwrap_or_else(|p| p.into_inner());
        for ((uid, target), result) in targets.iter().zip(results) {
            if let Err(e) = &result {
                tracing::debug!(pod_ip = %target.pod_ip, error = %e, "scrape of vLLM /metrics failed");
            }
            let counted = match &result {
                Ok(body) if cache_config_info(body).is_some() => "ok",
                Ok(_) => "no_metric",
                Err(_) => "failed",
            };
            super::metrics::Metrics::count(&ctx.metrics.vllm_scrapes, counted);
            book.record(&key, uid, result);
        }
    }
    let book = ctx.scrapes.lock().unwrap_or_else(|p| p.into_inner());
    let family = crate::cli::plan::family_from_image(&dep.spec.image);
    let views = pairs
        .into_iter()
        .map(|(pod, mut view)| {
            let bytes_per_token = match (arch, view.placement.as_ref()) {
                (Some(a), Some(pl)) => kv_bytes_per_token(&dep.spec, a, family, pl, fleet),
                _ => None,
            };
            let info = pod
                .metadata
                .uid
                .as_deref()
                .and_then(|uid| book.info(&key, uid));
            view.observed = observe(pod, &view, fleet, bytes_per_token, info);
            view
        })
        .collect();
    (views, book.pending(&key) > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::view::pod_view;

    const GIB: u64 = 1 << 30;

    /// `/metrics` of vLLM 0.11.0 as its `prometheus_client` registry prints it: HELP/TYPE
    /// lines, then the gauge with `CacheConfig`'s fields as labels in declaration order
    /// (`vllm/config/cache.py:36-121`), each `str(value)`, and the `engine` label the V1 logger
    /// adds (`loggers.py:502-503`).
    pub const VLLM_0_11_METRICS: &str = r#"# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12345.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",calculate_kv_scales="False",cpu_kvcache_space_bytes="None",cpu_offload_gb="0",enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.87",is_attention_free="False",kv_cache_memory_bytes="None",kv_sharing_fast_prefill="False",mamba_cache_dtype="auto",mamba_page_size_padded="None",mamba_ssm_cache_dtype="auto",num_cpu_blocks="None",num_gpu_blocks="2943",num_gpu_blocks_override="None",prefix_caching_hash_algo="sha256",sliding_window="None",swap_space="4",swap_space_bytes="4294967296"} 1.0
# HELP vllm:kv_cache_usage_perc KV-Cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
"#;

    #[test]
    fn cache_config_info_of_vllm_0_11() {
        let info = cache_config_info(VLLM_0_11_METRICS).unwrap();
        assert_eq!(info.num_gpu_blocks, 2943);
        assert_eq!(info.block_size, 16);
        assert_eq!(info.gpu_memory_utilization, Some(0.87));
        assert_eq!(info.tokens(), 2943 * 16);
    }

    /// 0.33.0: `CacheConfig`'s private fields are labels too (`vllm/config/cache.py:440-446`).
    #[test]
    fn cache_config_info_of_vllm_0_33_with_private_fields() {
        let line = "vllm:cache_config_info{_block_size_resolved=\"True\",block_size=\"16\",cache_dtype=\"fp8\",engine=\"0\",gpu_memory_utilization=\"0.9\",num_gpu_blocks=\"51200\"} 1.0\n";
        let info = cache_config_info(line).unwrap();
        assert_eq!(info.num_gpu_blocks, 51200);
        assert_eq!(info.gpu_memory_utilization, Some(0.9));
    }

    #[test]
    fn sample_lines_parse_as_the_text_format_defines() {
        let s = parse_sample(r#"  a:b_c { x = "1" , y="q\"uo\\te\nd", } 2.5e3 1712345678000 "#)
            .unwrap();
        assert_eq!(s.name, "a:b_c");
        assert_eq!(
            s.labels,
            vec![
                ("x".to_string(), "1".to_string()),
                ("y".to_string(), "q\"uo\\te\nd".to_string())
            ]
        );
        assert_eq!(s.value, 2500.0);
        assert_eq!(parse_sample("up 1").unwrap().labels, vec![]);
        assert!(parse_sample("x +Inf").unwrap().value.is_infinite());
        for bad in [
            "",
            "# HELP x y",
            "1x 2",
            "x{a=\"1\" 2",
            "x{a=1} 2",
            "x{=\"1\"} 2",
            "x{a=\"1\"}",
            "x{a=\"1\"} two",
            "x{a=\"unterminated} 1",
            "x{a-b=\"1\"} 1",
        ] {
            assert_eq!(parse_sample(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cache_config_info_needs_blocks() {
        // Before the engine sized its cache, num_gpu_blocks prints as None.
        let before =
            VLLM_0_11_METRICS.replace("num_gpu_blocks=\"2943\"", "num_gpu_blocks=\"None\"");
        assert_eq!(cache_config_info(&before), None);
        assert_eq!(cache_config_info("vllm:cache_config_info 1\n"), None);
        assert_eq!(cache_config_info(""), None);
        assert_eq!(cache_config_info("garbage {{{ \u{0} \n# x"), None);
        // A metric whose name only starts the same is not it.
        let other =
            VLLM_0_11_METRICS.replace("vllm:cache_config_info{", "vllm:cache_config_info_x{");
        assert_eq!(cache_config_info(&other), None);
        // Two engines: the smaller cache.
        let two = format!(
            "{VLLM_0_11_METRICS}vllm:cache_config_info{{block_size=\"16\",engine=\"1\",num_gpu_blocks=\"100\"}} 1.0\n"
        );
        assert_eq!(cache_config_info(&two).unwrap().num_gpu_blocks, 100);
    }

    #[test]
    fn failure_texts_become_observations_on_their_safe_side() {
        // vLLM 0.11.0 `vllm/v1/core/kv_cache_utils.py:700-727`.
        let kv = "ValueError: To serve at least one request with the models's max seq len (131072), (16.00 GiB KV cache is needed, which is larger than the available KV cache memory (3.21 GiB). Based on the available memory, the estimated maximum model length is 26288. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.";
        let o = observed_from_message(kv, None);
        assert_eq!(
            o.kv_available_bytes,
            Some((3.205 * GIB as f64).ceil() as u64)
        );
        assert_eq!(o.kv_needed_bytes, Some((16.005 * GIB as f64) as u64));
        // vLLM 0.11.0 `vllm/v1/worker/gpu_worker.py:186-194`.
        let free = "ValueError: Free memory on device (6.92/8.0 GiB) on startup is less than desired GPU memory utilization (0.9, 7.2 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.";
        let o = observed_from_message(free, None);
        assert_eq!(
            o.free_bytes_at_start,
            Some((6.915 * GIB as f64).ceil() as u64)
        );
        assert_eq!(o.total_bytes, Some((8.05 * GIB as f64) as u64));
        assert_eq!(o.utilization, Some(0.9));
        // V0: tokens times the shape's bytes per token.
        let v0 = "ValueError: The model's max seq len (8192) is larger than the maximum number of tokens that can be stored in KV cache (4096). Try increasing";
        assert_eq!(
            observed_from_message(v0, Some(131_072)).kv_cache_bytes,
            Some(4096 * 131_072)
        );
        assert_eq!(observed_from_message(v0, None), Observed::default());
        let none = "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine.";
        assert_eq!(
            observed_from_message(none, None).kv_available_bytes,
            Some(0)
        );
        assert!(observed_from_message("Killed", None).is_empty());
    }

    fn pod(yaml: &str) -> Pod {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn observe_a_failed_pod_from_its_termination_message() {
        let p = pod(r#"
metadata:
  name: llama-0-abc
  namespace: serving
  uid: u1
  labels: {vllm-operator.io/replica: "0", vllm-operator.io/spec-hash: abc}
  annotations:
    vllm-operator.io/placement: '{"pod":"llama-0-abc","node":"a10-a","tensorParallelSize":1,"quantization":"none","kvCacheDtype":"auto","gpuMemoryUtilization":0.9,"maxModelLen":131072,"kvCacheTokens":1000}'
status:
  phase: Running
  containerStatuses:
  - name: vllm
    ready: false
    restartCount: 1
    image: vllm
    imageID: ""
    state: {waiting: {reason: CrashLoopBackOff}}
    lastState:
      terminated:
        exitCode: 1
        message: |
          INFO 11-26 12:00:00 [gpu_worker.py:298] Available KV cache memory: 3.21 GiB
          ValueError: To serve at least one request with the models's max seq len (131072), (16.00 GiB KV cache is needed, which is larger than the available KV cache memory (3.21 GiB). Based on the available memory, the estimated maximum model length is 26288.
"#);
        let v = pod_view(&p).unwrap();
        let fleet = Fleet::default();
        let o = observe(&p, &v, &fleet, None, None);
        assert_eq!(
            o.kv_available_bytes,
            Some((3.205 * GIB as f64).ceil() as u64)
        );
        assert_eq!(o.used_bytes_per_gpu, None);
        // A running pod's message is not read as a failure (there is none), but its metrics are.
        let ready = pod(r#"
metadata:
  name: llama-0-abc
  namespace: serving
  uid: u1
  labels: {vllm-operator.io/replica: "0", vllm-operator.io/spec-hash: abc}
status:
  phase: Running
  podIP: 10.0.0.7
  conditions: [{type: Ready, status: "True"}]
"#);
        let v = pod_view(&ready).unwrap();
        let info = cache_config_info(VLLM_0_11_METRICS).unwrap();
        let o = observe(&ready, &v, &fleet, Some(131_072), Some(&info));
        assert_eq!(o.kv_cache_bytes, Some(2943 * 16 * 131_072));
        assert_eq!(o.utilization, Some(0.87));
        assert_eq!(o.kv_available_bytes, None);
    }

    #[test]
    fn agent_bytes_are_the_pods_processes_per_gpu() {
        let text = r#"
apiVersion: vllm-operator.io/v1alpha1
kind: GpuNode
metadata: {name: n1}
spec: {}
status:
  nodeName: n1
  observedAt: "2026-11-26T12:00:00Z"
  gpus:
  - index: 0
    uuid: GPU-0
    product: NVIDIA A10
    computeCapability: "8.6"
    memory: {totalBytes: 24000000000, freeBytes: 4000000000, usedBytes: 20000000000}
    allocatedTo: {namespace: serving, name: p}
    processes:
    - {pid: 1, usedBytes: 15000000000, pod: {namespace: serving, name: p}}
    - {pid: 2, usedBytes: 500000000, pod: {namespace: serving, name: p}}
    - {pid: 3, usedBytes: 4000000000, pod: {namespace: other, name: q}}
  - index: 1
    uuid: GPU-1
    product: NVIDIA A10
    computeCapability: "8.6"
    memory: {totalBytes: 24000000000, freeBytes: 8000000000, usedBytes: 16000000000}
    allocatedTo: {namespace: serving, name: p}
"#;
        let g: crate::api::GpuNode = serde_norway::from_str(text).unwrap();
        let now = "2026-11-26T12:00:01Z".parse().unwrap();
        let fleet = Fleet::from_refs_seen(
            std::iter::once(&g),
            std::iter::empty(),
            now,
            Duration::from_secs(90),
            None,
        );
        let me = PodRef {
            namespace: "serving".into(),
            name: "p".into(),
        };
        // GPU 0: 15.5 GB of the pod's processes; GPU 1: no process listed, allocated: its used.
        assert_eq!(agent_used_bytes(&fleet, "n1", &me), Some(16_000_000_000));
        let nobody = PodRef {
            namespace: "serving".into(),
            name: "zzz".into(),
        };
        assert_eq!(agent_used_bytes(&fleet, "n1", &nobody), None);
        assert_eq!(agent_used_bytes(&fleet, "n2", &me), None);
    }

    #[test]
    fn scrape_book_tries_three_times_and_keeps_the_result() {
        let mut book = ScrapeBook::default();
        assert!(book.wanted("ns/d", "u1"));
        book.record("ns/d", "u1", Err(ScrapeError("refused".into())));
        book.record("ns/d", "u1", Ok("nothing here".into()));
        assert!(book.wanted("ns/d", "u1"));
        assert_eq!(book.pending("ns/d"), 1);
        book.record("ns/d", "u1", Err(ScrapeError("refused".into())));
        assert!(!book.wanted("ns/d", "u1"));
        assert_eq!(book.pending("ns/d"), 0);
        book.record("ns/d", "u2", Ok(VLLM_0_11_METRICS.into()));
        assert!(!book.wanted("ns/d", "u2"));
        assert_eq!(book.info("ns/d", "u2").unwrap().num_gpu_blocks, 2943);
        book.keep_only("ns/d", &["u1"]);
        assert_eq!(book.info("ns/d", "u2"), None);
        book.keep_only("ns/d", &[]);
        assert!(book.wanted("ns/d", "u1"));
    }

    /// A one-connection HTTP server on 127.0.0.1 that answers with `response` (raw bytes)
    /// after reading the request, or never answers when `response` is `None`.
    async fn serve_once(response: Option<Vec<u8>>) -> ScrapeTarget {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            assert!(seen.starts_with(b"GET /metrics HTTP/1.1\r\n"));
            match response {
                Some(r) => {
                    let _ = sock.write_all(&r).await;
                }
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
        });
        ScrapeTarget {
            pod_ip: "127.0.0.1".into(),
            port: i32::from(port),
        }
    }

    fn http_ok(body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    #[tokio::test]
    async fn http_scraper_reads_metrics_over_real_http() {
        let target = serve_once(Some(http_ok(VLLM_0_11_METRICS.as_bytes()))).await;
        let body = HttpScraper.scrape(&target).await.unwrap();
        assert_eq!(cache_config_info(&body).unwrap().num_gpu_blocks, 2943);
    }

    #[tokio::test]
    async fn http_scraper_bounds_time_size_and_status() {
        let target = serve_once(None).await;
        let started = std::time::Instant::now();
        let err = HttpScraper.scrape(&target).await.unwrap_err();
        assert!(err.0.contains("no answer within 3 s"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(6));
        let huge = vec![b'#'; MAX_BODY_BYTES + 1];
        let target = serve_once(Some(http_ok(&huge))).await;
        let err = HttpScraper.scrape(&target).await.unwrap_err();
        assert!(err.0.contains("body"), "{err}");
        let target = serve_once(Some(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
        ))
        .await;
        let err = HttpScraper.scrape(&target).await.unwrap_err();
        assert!(err.0.contains("404"), "{err}");
        // Nothing listens.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = HttpScraper
            .scrape(&ScrapeTarget {
                pod_ip: "127.0.0.1".into(),
                port: i32::from(closed),
            })
            .await
            .unwrap_err();
        assert!(err.0.starts_with("GET http://127.0.0.1:"), "{err}");
    }

    #[test]
    fn scrape_urls() {
        let t = ScrapeTarget {
            pod_ip: "10.1.2.3".into(),
            port: 8000,
        };
        assert_eq!(t.url(), "http://10.1.2.3:8000/metrics");
        let t = ScrapeTarget {
            pod_ip: "fd00::5".into(),
            port: 8000,
        };
        assert_eq!(t.url(), "http://[fd00::5]:8000/metrics");
    }
}
