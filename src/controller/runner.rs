//! Runtime wiring of `vllm-operator run`: the CRD check, the metrics server, the caches, leader
//! election and the kube `Controller`, with graceful shutdown on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::ListParams;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config};
use tokio::sync::watch;
use tracing::{info, warn};

use super::context::{Context, GpuAllocation, Guarded, Settings, Stores};
use super::leader::{self, Elector, LeaderState};
use super::metrics::{Metrics, router};
use super::pod::{LABEL_MANAGED_BY, MANAGED_BY};
use super::reconcile::{error_policy, reconcile};
use crate::api::{GpuNode, MemoryProfile, VllmDeployment};
use crate::model::hub::HubClient;

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub metrics_addr: SocketAddr,
    pub leader_election: bool,
    pub lease_name: String,
    /// Namespace of the Lease (the controller's own).
    pub lease_namespace: Option<String>,
    pub identity: String,
    pub watch_nodes: bool,
    pub settings: Settings,
    pub hub: HubClient,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot connect to the Kubernetes API: {0}")]
    Connect(#[source] kube::Error),
    #[error("CRD {crd} is not installed: kubectl apply -f crds/")]
    CrdMissing { crd: &'static str },
    #[error("cannot list {what}: {source}")]
    CrdCheck {
        what: &'static str,
        source: kube::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("lost the leader lease {0}; exiting so that a fresh replica stands by")]
    LostLease(String),
}

/// Connecting to the API server gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Every request but a watch is answered within this long or fails, so that a hung call cannot
/// stall a reconcile. The API server gives up on its side after 34 s
/// (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go, requestTimeoutUpperBound).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The client configuration for requests (get, apply, delete, events, the Lease).
pub fn request_config(mut config: Config) -> Config {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.write_timeout = Some(REQUEST_TIMEOUT);
    // Count the read timeout from when the request is sent, not from when a pooled
    // connection went idle.
    config.reset_reader_on_write = true;
    config
}

/// The client configuration for watches: no per-read timeout (a quiet watch is healthy); kube's
/// watcher closes a watch that stays silent past the server's own watch timeout.
pub fn watch_config(mut config: Config) -> Config {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = None;
    config.write_timeout = Some(REQUEST_TIMEOUT);
    config
}

/// Fail fast, in one line, when a CRD is missing (a list answering 404).
pub async fn check_crds(client: &Client) -> Result<(), RunError> {
    let one = ListParams::default().limit(1);
    let check = |r: Result<(), kube::Error>, crd: &'static str, what: &'static str| match r {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(RunError::CrdMissing { crd }),
        Err(source) => Err(RunError::CrdCheck { what, source }),
    };
    let deployments = Api::<VllmDeployment>::all(client.clone())
        .list_metadata(&one)
        .await
        .map(|_| ());
    check(
        deployments,
        "vllmdeployments.vllm-operator.io",
        "VllmDeployments",
    )?;
    let gpunodes = Api::<GpuNode>::all(client.clone())
        .list_metadata(&one)
        .await
        .map(|_| ());
    check(gpunodes, "gpunodes.vllm-operator.io", "GpuNodes")
}

/// Whether the API server serves `resource.k8s.io/v1` to this controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DraApi {
    Served,
    /// Not served (a list answers 404: Kubernetes before 1.34, or the group turned off), or
    /// not readable (403: the chart's RBAC was changed), or not reachable: why, in a line.
    Unavailable(String),
}

/// Ask once whether ResourceSlices can be listed. Only a 404 or 403 is an answer about the
/// API; any other failure is retried a few times before it counts as unavailable.
pub async fn probe_dra(client: &Client) -> DraApi {
    let one = ListParams::default().limit(1);
    let api = Api::<ResourceSlice>::all(client.clone());
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        match api.list_metadata(&one).await {
            Ok(_) => return DraApi::Served,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return DraApi::Unavailable(
                    "resource.k8s.io/v1 is not served (Kubernetes before 1.34, or DRA turned off)"
                        .into(),
                );
            }
            Err(kube::Error::Api(s)) if s.code == 403 => {
                return DraApi::Unavailable(format!(
                    "the controller may not list resourceslices ({}); check the chart's ClusterRole",
                    s.message
                ));
            }
            Err(e) => last = e.to_string(),
        }
    }
    DraApi::Unavailable(format!("cannot list resourceslices: {last}"))
}

/// Whether MemoryProfiles can be listed: `Err` with why, in a line, when the CRD is not
/// installed (Helm installs `crds/` on install only, never on upgrade) or not readable. The
/// controller then learns in memory only and writes no profile.
pub async fn probe_profiles(client: &Client) -> Result<(), String> {
    let one = ListParams::default().limit(1);
    match Api::<MemoryProfile>::all(client.clone())
        .list_metadata(&one)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(
            "CRD memoryprofiles.vllm-operator.io is not installed (kubectl apply -f crds/)".into(),
        ),
        Err(kube::Error::Api(s)) if s.code == 403 => Err(format!(
            "the controller may not list memoryprofiles ({}); check the chart's ClusterRole",
            s.message
        )),
        Err(e) => Err(format!("cannot list memoryprofiles: {e}")),
    }
}

/// The settings the controller runs with: without `resource.k8s.io/v1` nothing can be placed
/// by exact GPU, so every mode works as `device-plugin` (`dra` too: a controller that places
/// nothing would be worse than one that falls back, and the start-up log says so).
pub fn effective_settings(settings: &Settings, dra_api: bool) -> Settings {
    let mut s = settings.clone();
    if !dra_api {
        s.gpu_allocation = GpuAllocation::DevicePlugin;
    }
    s
}

/// Deployments not fully admitted, oldest first: the ones a GpuNode change may unblock.
pub fn not_admitted(store: &Store<Guarded>) -> Vec<ObjectRef<Guarded>> {
    let mut waiting: Vec<_> = store
        .state()
        .into_iter()
        .filter(|g| match &g.0 {
            Ok(d) => !d.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Admitted" && c.status == "True")
            }),
            Err(_) => false,
        })
        .collect();
    waiting.sort_by_key(|g| {
        let m = &g.0.as_ref().map(|d| d.metadata.clone()).unwrap_or_default();
        (
            m.creation_timestamp.as_ref().map(|t| t.0),
            m.namespace.clone(),
            m.name.clone(),
        )
    });
    waiting
        .iter()
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}

fn managed() -> watcher::Config {
    watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"))
}

/// Objects the trigger channel of a cache hands to the controller.
type Triggers<K> = futures::channel::mpsc::UnboundedReceiver<Arc<K>>;

/// A reflector kept up to date in the background: one watch, whose store serves reconcile and
/// whose objects trigger the controller through the returned channel. The channel is
/// unbounded so that the initial list, read before the controller starts, cannot stall the
/// watch on backpressure (a subscribed broadcast would, once its buffer fills).
fn cache<K>(api: Api<K>, config: watcher::Config) -> (Store<K>, Triggers<K>)
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    tokio::spawn(stream.for_each(move |r| {
        match r {
            // A closed channel (nobody triggers on this kind) is fine.
            Ok(obj) => {
                let _ = tx.unbounded_send(Arc::new(obj));
            }
            Err(e) => warn!(error = %e, "watch failed; retrying"),
        }
        std::future::ready(())
    }));
    (store, rx)
}

pub async fn run(cfg: RunConfig) -> Result<(), RunError> {
    let inferred = Config::infer()
        .await
        .map_err(|e| RunError::Connect(kube::Error::InferConfig(e)))?;
    let client = Client::try_from(request_config(inferred.clone())).map_err(RunError::Connect)?;
    let watch_client = Client::try_from(watch_config(inferred)).map_err(RunError::Connect)?;
    check_crds(&client).await?;
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(cfg.metrics_addr)
        .await
        .map_err(|source| RunError::Listen {
            addr: cfg.metrics_addr,
            source,
        })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::ops::shutdown_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let mut http_stop = stop_rx.clone();
    let app = router(metrics.clone());
    tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|s| *s).await;
        });
        if let Err(e) = server.await {
            warn!(error = %e, "metrics server stopped");
        }
    });

    // Only the leader runs the controller; a standby waits here, ready.
    let mut lost = None;
    let mut election = None;
    if cfg.leader_election {
        let namespace = cfg
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let api: Api<Lease> = Api::namespaced(client.clone(), &namespace);
        let (state_tx, mut state_rx) = watch::channel(LeaderState::default());
        let elector = Elector::new(cfg.identity.clone(), leader::LEASE_DURATION);
        election = Some(tokio::spawn(leader::run(
            api,
            cfg.lease_name.clone(),
            elector,
            state_tx,
            stop_rx.clone(),
        )));
        let mut stop = stop_rx.clone();
        loop {
            let s = *state_rx.borrow_and_update();
            metrics.leader.store(s.leader, Ordering::Relaxed);
            metrics.election_healthy.store(s.healthy, Ordering::Relaxed);
            if s.leader {
                break;
            }
            tokio::select! {
                r = state_rx.changed() => if r.is_err() { return Ok(()) },
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        }
        info!(lease = %cfg.lease_name, identity = %cfg.identity, "acquired the leader lease");
        lost = Some(state_rx);
    } else {
        metrics.leader.store(true, Ordering::Relaxed);
    }

    // One watch per kind: the caches below also trigger the controller.
    let (gpunodes, gpunode_events) = cache(
        Api::<GpuNode>::all(watch_client.clone()),
        watcher::Config::default(),
    );
    let (pods, pod_events) = cache(Api::<Pod>::all(watch_client.clone()), managed());
    // DRA: told once, here, whether exact GPUs are possible; the controller keeps working on
    // the device-plugin path either way.
    let dra_api = match probe_dra(&client).await {
        DraApi::Served => true,
        DraApi::Unavailable(why) => {
            if cfg.settings.gpu_allocation == GpuAllocation::DevicePlugin {
                info!(%why, "resource.k8s.io/v1 unavailable; GPUs come from the device plugin (--gpu-allocation=device-plugin)");
            } else {
                warn!(%why, gpu_allocation = ?cfg.settings.gpu_allocation, "resource.k8s.io/v1 unavailable: exact GPUs through DRA are off, GPUs come from the device plugin until the controller restarts");
            }
            false
        }
    };
    let read_slices = dra_api && cfg.settings.gpu_allocation != GpuAllocation::DevicePlugin;
    let (slices, slice_events) = if read_slices {
        let (store, events) = cache(
            Api::<ResourceSlice>::all(watch_client.clone()),
            watcher::Config::default(),
        );
        (store, Some(events))
    } else {
        (reflector::store().0, None)
    };
    // Claims are watched whenever the API is served, so that claims left from a DRA run are
    // still deleted with their pods after a switch to the device plugin.
    let (claims, claim_events) = if dra_api {
        let (store, events) = cache(Api::<ResourceClaim>::all(watch_client.clone()), managed());
        (store, Some(events))
    } else {
        (reflector::store().0, None)
    };
    // Memory profiles survive restarts in their objects: read them all before the first plan.
    let profiles_api = match probe_profiles(&client).await {
        Ok(()) => true,
        Err(why) => {
            warn!(%why, "memory profiles are learned in memory only and lost on restart");
            false
        }
    };
    let (profiles, profile_events) = if profiles_api {
        let (store, events) = cache(
            Api::<MemoryProfile>::all(watch_client.clone()),
            watcher::Config::default(),
        );
        (store, Some(events))
    } else {
        (reflector::store().0, None)
    };
    let stores = Stores {
        deployments: reflector::store().0,
        gpunodes,
        nodes: if cfg.watch_nodes {
            cache(
                Api::<Node>::all(watch_client.clone()),
                watcher::Config::default(),
            )
            .0
        } else {
            reflector::store().0
        },
        pods,
        slices,
        claims,
        dra_api,
        profiles,
        profiles_api,
    };
    // Deciding on half-filled caches would re-create pods that exist.
    for (what, ready) in [
        ("GpuNodes", stores.gpunodes.wait_until_ready().await),
        ("Pods", stores.pods.wait_until_ready().await),
    ] {
        if ready.is_err() {
            warn!(what, "cache writer dropped before it was ready");
        }
    }
    if cfg.watch_nodes {
        let _ = stores.nodes.wait_until_ready().await;
    }
    if read_slices {
        let _ = stores.slices.wait_until_ready().await;
    }
    if dra_api {
        let _ = stores.claims.wait_until_ready().await;
    }
    if profiles_api {
        let _ = stores.profiles.wait_until_ready().await;
    }

    let controller = Controller::new(
        Api::<Guarded>::all(watch_client.clone()),
        watcher::Config::default().any_semantic(),
    );
    let deployments = controller.store();
    let stores = Stores {
        deployments: deployments.clone(),
        ..stores
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        stores,
        effective_settings(&cfg.settings, dra_api),
        metrics.clone(),
        cfg.hub.clone(),
    ));

    let mut stop = stop_rx.clone();
    let lease_name = cfg.lease_name.clone();
    let (lost_tx, mut lost_rx) = watch::channel(false);
    let shutdown = async move {
        match lost {
            Some(mut state) => {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => {}
                    _ = state.wait_for(|s| !s.leader) => { let _ = lost_tx.send(true); }
                }
            }
            None => {
                let _ = stop.wait_for(|s| *s).await;
            }
        }
    };
    let mut controller = controller
        .owns_shared_stream(pod_events)
        .owns(Api::<Service>::all(watch_client.clone()), managed());
    if let Some(events) = claim_events {
        controller = controller.owns_shared_stream(events);
    }
    // A new or changed profile may let a refused deployment fit.
    if let Some(events) = profile_events {
        let deployments = deployments.clone();
        controller = controller.watches_shared_stream(events, move |_| not_admitted(&deployments));
    }
    if let Some(events) = slice_events {
        let deployments = deployments.clone();
        controller = controller.watches_shared_stream(events, move |_| not_admitted(&deployments));
    }
    controller
        .watches_shared_stream(gpunode_events, move |_| not_admitted(&deployments))
        .with_config(controller::Config::default().debounce(Duration::from_secs(1)))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                warn!(error = %e, "controller");
            }
            std::future::ready(())
        })
        .await;
    if *lost_rx.borrow_and_update() {
        return Err(RunError::LostLease(lease_name));
    }
    // Let the election loop hand the lease back, so a standby takes over at once.
    if let Some(election) = election {
        let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
    }
    Ok(())
}
