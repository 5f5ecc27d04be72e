//! The hub as a Kubernetes controller: it watches `GitSource`, `Cluster` and `Delivery`
//! resources in the management cluster, keeps a poller per source, renders each delivery for
//! each targeted cluster, publishes signed bundles through [`crate::delivery::Hub`], and writes
//! what the agents report back into the resources' status.
//!
//! One reconcile pass looks at everything; passes run when anything changes (a watched resource,
//! a fetched revision, an agent's ack or report) — debounced, so a burst of agent reports makes
//! one pass — and at least once a second for timeouts. A pass renders only what changed (by a
//! hash of the render inputs), publishes only what differs (by a digest of the output), and
//! writes a status only when it differs from the one stored, so thousands of agents reporting do
//! not flood the API server.
//!
//! The management cluster is the only durable store. After a restart the hub reads each
//! delivery's per-cluster sequence and digest back from its status; an unchanged render is
//! re-sealed under the same sequence ([`crate::delivery::Hub::restore_encoded`]), so agents are
//! not sent again what they already hold.

pub mod deliveries;
mod helm;
mod observed;
mod sources;
pub mod util;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::{Cluster, Delivery, GitSource, HelmRelease, HelmRepository};
use crate::delivery::Hub;
use crate::fleet::KubeRegistry;
use crate::source::GitCache;

pub use deliveries::Deliveries;
pub use helm::{BuildResult, Charts, HelmBuild, NotBuilt, build_once};
pub use sources::Sources;

/// The reflector caches of the hub's resources.
#[derive(Clone, Debug)]
pub struct Stores {
    /// Every `GitSource` watched.
    pub sources: Store<GitSource>,
    /// Every `Cluster`.
    pub clusters: Store<Cluster>,
    /// Every `Delivery` watched.
    pub deliveries: Store<Delivery>,
    /// Every `HelmRepository` watched.
    pub helm_repositories: Store<HelmRepository>,
    /// Every `HelmRelease` watched.
    pub helm_releases: Store<HelmRelease>,
    /// Counts the changes seen by the watches, for readers other than the controller
    /// (the dashboard's live updates) that want to know *that* something changed.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Stores {
    /// Starts watching (Clusters everywhere; sources and deliveries in `namespace`, or in all
    /// namespaces when `None`). Every change wakes `trigger`.
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
        trigger: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> Self {
        fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
        where
            K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
            K::DynamicType: Default,
        {
            match ns {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        let changes = tokio::sync::watch::Sender::new(0);
        Self {
            sources: watch(
                scoped(client, namespace),
                trigger.clone(),
                changes.clone(),
                shutdown.clone(),
            ),
            clusters: watch(
                Api::all(client.clone()),
                trigger.clone(),
                changes.clone(),
                shutdown.clone(),
            ),
            deliveries: watch(
                scoped(client, namespace),
                trigger.clone(),
                changes.clone(),
                shutdown.clone(),
            ),
            helm_repositories: watch(
                scoped(client, namespace),
                trigger.clone(),
                changes.clone(),
                shutdown.clone(),
            ),
            helm_releases: watch(
                scoped(client, namespace),
                trigger,
                changes.clone(),
                shutdown,
            ),
            changes,
        }
    }

    /// A receiver that sees a new value after every change to any of the caches.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Waits until every cache holds a first full list.
    pub async fn ready(&self) {
        let _ = self.sources.wait_until_ready().await;
        let _ = self.clusters.wait_until_ready().await;
        let _ = self.deliveries.wait_until_ready().await;
        // CRDs of an older install may lack the Helm kinds: do not wait forever for them.
        let helm = async {
            let _ = self.helm_repositories.wait_until_ready().await;
            let _ = self.helm_releases.wait_until_ready().await;
        };
        if tokio::time::timeout(Duration::from_secs(10), helm)
            .await
            .is_err()
        {
            warn!("HelmRepository/HelmRelease not listed within 10s: are the CRDs installed?");
        }
    }
}

fn watch<K>(
    api: Api<K>,
    trigger: Arc<Notify>,
    changes: tokio::sync::watch::Sender<u64>,
    shutdown: CancellationToken,
) -> Store<K>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .touched_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                item = stream.next() => match item {
                    Some(Ok(_)) => {
                        trigger.notify_one();
                        changes.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    Some(Err(e)) => warn!(kind = %K::kind(&Default::default()), error = %e, "watching the management cluster"),
                    None => break,
                },
            }
        }
    });
    store
}

/// Tunables of the controller.
#[derive(Clone, Debug)]
pub struct Config {
    /// Least time between two passes; changes arriving meanwhile are handled together.
    pub debounce: Duration,
    /// Longest time between two passes.
    pub resync: Duration,
    /// Least time between two `lastSeen` updates of a connected cluster.
    pub last_seen_granularity: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(100),
            resync: Duration::from_secs(1),
            last_seen_granularity: Duration::from_secs(30),
        }
    }
}

/// The controller; see the module docs.
pub struct Controller {
    client: Client,
    stores: Stores,
    registry: Arc<KubeRegistry>,
    sources: Sources,
    deliveries: Deliveries,
    charts: Charts,
    trigger: Arc<Notify>,
    config: Config,
    pushes: (
        tokio::sync::mpsc::UnboundedSender<Vec<String>>,
        tokio::sync::mpsc::UnboundedReceiver<Vec<String>>,
    ),
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("sources", &self.sources)
            .field("deliveries", &self.deliveries)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// A controller over `stores` (already started with the same `trigger`), publishing through
    /// `hub` and fetching into `cache`. Charts are rendered with `helm`'s defaults
    /// ([`crate::helm::HelmConfig::new`] under a temporary directory) until
    /// [`Controller::set_helm`].
    pub fn new(
        client: Client,
        stores: Stores,
        registry: Arc<KubeRegistry>,
        hub: Hub,
        cache: Arc<GitCache>,
        trigger: Arc<Notify>,
        config: Config,
    ) -> Self {
        Self {
            sources: Sources::new(client.clone(), cache, trigger.clone()),
            deliveries: Deliveries::new(hub, config.clone()),
            charts: Charts::new(
                client.clone(),
                crate::helm::HelmConfig::new(&std::env::temp_dir().join("flotilla-hub")),
                trigger.clone(),
            ),
            client,
            stores,
            registry,
            trigger,
            config,
            pushes: tokio::sync::mpsc::unbounded_channel(),
        }
    }

    /// How charts are fetched and rendered.
    pub fn set_helm(&mut self, config: crate::helm::HelmConfig) {
        self.charts = Charts::new(self.client.clone(), config, self.trigger.clone());
    }

    /// Sends failure and recovery notifications of each (cluster, delivery) through `notifier`.
    pub fn set_notifier(&mut self, notifier: crate::notify::Notifier) {
        self.deliveries.set_notifier(notifier);
    }

    /// Where the webhook receiver sends the repository URLs of a push: every source whose URL
    /// names the same repository is fetched at once.
    pub fn push_sender(&self) -> tokio::sync::mpsc::UnboundedSender<Vec<String>> {
        self.pushes.0.clone()
    }

    fn fetch_pushed(&self, urls: &[String]) {
        let mut matched = false;
        for (key, url) in self.sources.urls() {
            if urls
                .iter()
                .any(|u| crate::webhook::same_repository(u, &url))
            {
                info!(source = %key, "push received: fetching now");
                self.sources.fetch_now(&key);
                matched = true;
            }
        }
        if !matched {
            info!(?urls, "push received for a repository no GitSource follows");
        }
    }

    /// Fetches every source whose URL is the pushed repository (for the webhook receiver).
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// Runs passes until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // Agents' acks, reports and connections wake the controller too.
        let mut changes = self.deliveries.hub().subscribe_changes();
        let trigger = self.trigger.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    change = changes.recv() => match change {
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => trigger.notify_one(),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        });
        self.stores.ready().await;
        info!(
            sources = self.stores.sources.state().len(),
            clusters = self.stores.clusters.state().len(),
            deliveries = self.stores.deliveries.state().len(),
            "controller started"
        );
        loop {
            self.pass().await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.trigger.notified() => {}
                Some(urls) = self.pushes.1.recv() => self.fetch_pushed(&urls),
                _ = tokio::time::sleep(self.config.resync) => {}
            }
            tokio::time::sleep(self.config.debounce).await;
        }
        info!("controller stopped");
    }

    /// One reconcile pass over everything.
    pub async fn pass(&mut self) {
        let sources = self.stores.sources.state();
        let clusters = self.stores.clusters.state();
        let deliveries = self.stores.deliveries.state();

        let metrics = self.deliveries.hub().metrics().clone();
        let started = std::time::Instant::now();
        self.sources.sync(&sources).await;
        for gs in &sources {
            let status = self.sources.status(gs);
            write_status(&self.client, gs.as_ref(), &gs.status, &status).await;
        }
        metrics.observe_reconcile("sources", started.elapsed());

        let started = std::time::Instant::now();
        let repositories = self.stores.helm_repositories.state();
        let releases = self.stores.helm_releases.state();
        for (r, status) in self.charts.sync(&repositories) {
            write_status(&self.client, r.as_ref(), &r.status, &status).await;
        }
        let builds = self.charts.builds(&releases).await;
        metrics.observe_reconcile("helm", started.elapsed());

        let started = std::time::Instant::now();
        self.deliveries.revoke_gone(&clusters, &self.registry).await;
        let outcome = self
            .deliveries
            .reconcile(&deliveries, &releases, &builds, &clusters, &self.sources)
            .await;
        metrics.observe_reconcile("deliveries", started.elapsed());
        for (r, status) in outcome.helm_releases {
            write_status(&self.client, r.as_ref(), &r.status, &status).await;
        }
        for (d, status) in outcome.deliveries {
            write_status(&self.client, d.as_ref(), &d.status, &status).await;
        }
        for (c, status) in outcome.clusters {
            write_status(&self.client, c.as_ref(), &c.status, &status).await;
        }
        metrics.set_controller_queue("deliveries", self.deliveries.queued());
        metrics.set_controller_queue("helm", self.charts.in_flight());
    }
}

/// Writes `status` if it differs from `current` (what the cache holds).
async fn write_status<K, S>(client: &Client, object: &K, current: &Option<S>, status: &S)
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
    S: serde::Serialize,
{
    let new = serde_json::to_value(status).unwrap_or_default();
    let old = current
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or_default();
    if new == old {
        return;
    }
    let name = object.name_any();
    let resource = kube::discovery::ApiResource::erase::<K>(&Default::default());
    let api: Api<kube::api::DynamicObject> = match object.meta().namespace.as_deref() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let kind = K::kind(&Default::default()).to_string();
    match api
        .patch_status(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({ "status": new })),
        )
        .await
    {
        Ok(_) => debug!(%kind, %name, "status written"),
        // Deleted meanwhile: nothing to do.
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => warn!(%kind, %name, error = %e, "writing status"),
    }
}
