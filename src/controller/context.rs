//! What every reconcile shares: the client, the event recorder, the metrics, the reservation
//! ledger and failure book (one per controller, so that concurrent reconciles of different
//! deployments never count on the same free bytes), and the reflector caches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::core::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;

use super::claim::ClaimError;
use super::failures::FailureBook;
use super::metrics::Metrics;
use super::model_source::{ModelResolver, Unavailable};
use super::observe::{HttpScraper, ScrapeBook, Scraper};
use super::pod::BuildError;
use crate::api::{GpuNode, MemoryProfile, VllmDeployment};
use crate::model::hub::HubClient;
use crate::plan::{Fleet, Ledger, ReportsSeen};

pub type Guarded = DeserializeGuard<VllmDeployment>;

/// One error per reconcile stage; the variant names the stage that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidObject(String),
    #[error("resolve model: {0}")]
    ResolveModel(#[source] Unavailable),
    #[error("build {what}: {source}")]
    Build { what: String, source: BuildError },
    #[error("build the resource claim of {what}: {source}")]
    BuildClaim { what: String, source: ClaimError },
    #[error("the shared ledger lock is poisoned")]
    Plan,
    #[error("create pod {pod}: {source}")]
    CreatePod { pod: String, source: kube::Error },
    #[error("release pod {pod}: {source}")]
    ReleasePod { pod: String, source: kube::Error },
    #[error("delete pod {pod}: {source}")]
    DeletePod { pod: String, source: kube::Error },
    #[error("create resource claim {claim}: {source}")]
    CreateClaim { claim: String, source: kube::Error },
    #[error("delete resource claim {claim}: {source}")]
    DeleteClaim { claim: String, source: kube::Error },
    #[error("apply service {name}: {source}")]
    ApplyService { name: String, source: kube::Error },
    #[error("patch status of {name}: {source}")]
    PatchStatus { name: String, source: kube::Error },
}

impl Error {
    /// The stage, as the `stage` label of the error metric.
    pub fn stage(&self) -> &'static str {
        match self {
            Error::InvalidObject(_) => "Read",
            Error::ResolveModel(_) => "ResolveModel",
            Error::Build { .. } | Error::BuildClaim { .. } => "Build",
            Error::Plan => "Plan",
            Error::CreatePod { .. } => "CreatePod",
            Error::ReleasePod { .. } => "ReleasePod",
            Error::DeletePod { .. } => "DeletePod",
            Error::CreateClaim { .. } => "CreateClaim",
            Error::DeleteClaim { .. } => "DeleteClaim",
            Error::ApplyService { .. } => "ApplyService",
            Error::PatchStatus { .. } => "PatchStatus",
        }
    }
}

/// The caches reconcile reads instead of the API.
#[derive(Clone)]
pub struct Stores {
    pub deployments: Store<Guarded>,
    pub gpunodes: Store<GpuNode>,
    /// Empty when Node objects are not watched.
    pub nodes: Store<Node>,
    /// Pods labelled `app.kubernetes.io/managed-by=vllm-operator`.
    pub pods: Store<Pod>,
    /// ResourceSlices (every driver's; the fleet keeps the NVIDIA driver's). Empty when
    /// `resource.k8s.io/v1` is not served or GPUs are allocated by the device plugin only.
    pub slices: Store<ResourceSlice>,
    /// ResourceClaims labelled `app.kubernetes.io/managed-by=vllm-operator`; empty when
    /// `resource.k8s.io/v1` is not served.
    pub claims: Store<ResourceClaim>,
    /// Whether the API server serves `resource.k8s.io/v1` (the claim and slice caches run).
    pub dra_api: bool,
    /// MemoryProfiles (cluster-scoped); empty when the CRD is not installed.
    pub profiles: Store<MemoryProfile>,
    /// Whether MemoryProfiles can be read (the CRD is installed and the watch runs): only then
    /// are learned profiles written.
    pub profiles_api: bool,
}

fn filled<K>(objects: Vec<K>) -> Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    store
}

impl Stores {
    /// Stores holding exactly these objects (tests, and `simulate`-like tools).
    pub fn from_objects(
        deployments: Vec<VllmDeployment>,
        gpunodes: Vec<GpuNode>,
        nodes: Vec<Node>,
        pods: Vec<Pod>,
    ) -> Self {
        Stores {
            deployments: filled(
                deployments
                    .into_iter()
                    .map(|d| DeserializeGuard(Ok(d)))
                    .collect(),
            ),
            gpunodes: filled(gpunodes),
            nodes: filled(nodes),
            pods: filled(pods),
            slices: filled(Vec::new()),
            claims: filled(Vec::new()),
            dra_api: false,
            profiles: filled(Vec::new()),
            profiles_api: true,
        }
    }

    /// These stores with these MemoryProfiles stored.
    pub fn with_profiles(self, profiles: Vec<MemoryProfile>) -> Self {
        Stores {
            profiles: filled(profiles),
            ..self
        }
    }

    /// These stores on a cluster that serves `resource.k8s.io/v1`, with these slices and claims.
    pub fn with_dra(self, slices: Vec<ResourceSlice>, claims: Vec<ResourceClaim>) -> Self {
        Stores {
            slices: filled(slices),
            claims: filled(claims),
            dra_api: true,
            ..self
        }
    }
}

/// Which GPUs the controller may place by exact device (`--gpu-allocation`): the planner's
/// own setting, so that controller, `plan`, `simulate` and `render` decide alike.
pub use crate::plan::GpuAllocation;

/// Controller settings from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub launcher_image: String,
    /// GpuNode reports older than this are not trusted.
    pub stale_after: Duration,
    /// Reservations the agent has not confirmed within this long are dropped.
    pub reservation_timeout: Duration,
    pub gpu_allocation: GpuAllocation,
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub ledger: Mutex<Ledger>,
    pub failures: Mutex<FailureBook>,
    pub stores: Stores,
    pub models: ModelResolver,
    pub settings: Settings,
    /// Consecutive transient failures per deployment, for the requeue backoff.
    pub retries: Mutex<HashMap<ObjectRef<Guarded>, u32>>,
    pub clock: fn() -> Timestamp,
    /// The fleet built from the GpuNode and Node caches, reused while the caches hold the same
    /// object versions (for up to a second, since staleness depends on the clock): building it
    /// from 5,000 GpuNodes takes about 20 ms, too much for every reconcile.
    pub fleet: Mutex<Option<(std::time::Instant, u64, Arc<Fleet>)>>,
    /// When each agent report was seen to change, on this controller's clock: the basis of
    /// staleness (see [`ReportsSeen`]).
    pub reports_seen: Mutex<ReportsSeen>,
    /// Reads the `/metrics` of Ready vLLM pods ([`HttpScraper`]; tests hand in text).
    pub scraper: Arc<dyn Scraper>,
    /// What each pod's scrapes gave.
    pub scrapes: Mutex<ScrapeBook>,
    /// Learned profiles whose write failed for a reason other than a conflict, retried on the
    /// next reconciles (by name, with the tries made).
    pub unwritten_profiles: Mutex<HashMap<String, (MemoryProfile, u32)>>,
    /// Profiles whose spec apply answered 409 (another field manager owns a field), with the
    /// resourceVersion the conflict was met at: not applied again until the object changes.
    pub profile_conflicts: Mutex<HashMap<String, Option<String>>>,
    /// Stored profiles found broken (`name@resourceVersion`), logged once each.
    pub invalid_profiles: Mutex<std::collections::HashSet<String>>,
}

pub const REPORTER: &str = "vllm-operator";

impl Context {
    pub fn new(
        client: Client,
        stores: Stores,
        settings: Settings,
        metrics: Arc<Metrics>,
        hub: HubClient,
    ) -> Self {
        let reporter = Reporter {
            controller: REPORTER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            ledger: Mutex::new(Ledger::default()),
            failures: Mutex::new(FailureBook::default()),
            stores,
            models: ModelResolver::new(hub),
            settings,
            retries: Mutex::new(HashMap::new()),
            clock: Timestamp::now,
            fleet: Mutex::new(None),
            reports_seen: Mutex::new(ReportsSeen::default()),
            scraper: Arc::new(HttpScraper),
            scrapes: Mutex::new(ScrapeBook::default()),
            unwritten_profiles: Mutex::new(HashMap::new()),
            profile_conflicts: Mutex::new(HashMap::new()),
            invalid_profiles: Mutex::new(Default::default()),
        }
    }

    /// Whether ResourceSlices go into the fleet: the API serves them and the flag allows DRA.
    pub fn reads_slices(&self) -> bool {
        self.stores.dra_api && self.settings.gpu_allocation != GpuAllocation::DevicePlugin
    }

    /// The deployment's ResourceClaims from the cache: same namespace, instance label and
    /// controller owner uid (a claim another owner holds is never the controller's to touch).
    pub fn owned_claims(&self, dep: &VllmDeployment) -> Vec<Arc<ResourceClaim>> {
        let ns = dep.metadata.namespace.as_deref();
        let name = dep.metadata.name.as_deref();
        let Some(uid) = dep.metadata.uid.as_deref() else {
            return Vec::new();
        };
        let mut claims = self.stores.claims.state_filter(|c| {
            c.metadata.namespace.as_deref() == ns
                && c.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(super::pod::LABEL_INSTANCE))
                    .map(String::as_str)
                    == name
                && super::claim::owned_by(c, uid)
        });
        claims.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        claims
    }

    /// The fleet as the caches hold it now.
    pub fn fleet(&self, now: Timestamp) -> Arc<Fleet> {
        use std::hash::{Hash, Hasher};
        let gpunodes = self.stores.gpunodes.state();
        let nodes = self.stores.nodes.state();
        let slices = if self.reads_slices() {
            self.stores.slices.state()
        } else {
            Vec::new()
        };
        // Which object versions the caches hold: a change of any invalidates the snapshot.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for g in &gpunodes {
            (&g.metadata.name, &g.metadata.resource_version).hash(&mut h);
        }
        for n in &nodes {
            (&n.metadata.name, &n.metadata.resource_version).hash(&mut h);
        }
        for s in &slices {
            (&s.metadata.name, &s.metadata.resource_version).hash(&mut h);
        }
        let profiles = self.stores.profiles.state();
        for p in &profiles {
            (&p.metadata.name, &p.metadata.resource_version).hash(&mut h);
        }
        let versions = h.finish();
        let mut cache = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built, seen, fleet)) = cache.as_ref()
            && *seen == versions
            && built.elapsed() < FLEET_REUSE
        {
            return fleet.clone();
        }
        let mut seen = self.reports_seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.observe(gpunodes.iter().map(|g| g.as_ref()), now);
        let mut fleet = Fleet::from_refs_seen(
            gpunodes.iter().map(|g| g.as_ref()),
            nodes.iter().map(|n| n.as_ref()),
            now,
            self.settings.stale_after,
            Some(&seen),
        );
        if !slices.is_empty() {
            fleet.attach_slices(slices.iter().map(|s| s.as_ref()));
        }
        if !profiles.is_empty() {
            fleet = fleet.with_profiles(self.valid_profiles(&profiles));
        }
        let fleet = Arc::new(fleet);
        *cache = Some((std::time::Instant::now(), versions, fleet.clone()));
        fleet
    }
}

impl Context {
    /// The stored profiles that pass the rules `plan` and `simulate` apply to fleet files
    /// ([`crate::validate::memory_profile`]); each broken one is logged once per version and
    /// left out of planning.
    fn valid_profiles(&self, stored: &[Arc<MemoryProfile>]) -> crate::profile::Profiles {
        let mut warned = self
            .invalid_profiles
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let valid = stored.iter().filter(|p| {
            let problems = crate::validate::memory_profile(p);
            if problems.is_empty() {
                return true;
            }
            let at = format!(
                "{}@{}",
                p.metadata.name.as_deref().unwrap_or(""),
                p.metadata.resource_version.as_deref().unwrap_or("")
            );
            if warned.insert(at) {
                tracing::warn!(
                    profile = p.metadata.name.as_deref().unwrap_or(""),
                    problems = %crate::validate::join(&problems),
                    "MemoryProfile ignored by the planner"
                );
            }
            false
        });
        crate::profile::Profiles::from_objects(valid.map(|p| p.as_ref()))
    }
}

/// How long one fleet snapshot serves reconciles; the agents themselves poll once a second.
pub const FLEET_REUSE: std::time::Duration = std::time::Duration::from_secs(1);
