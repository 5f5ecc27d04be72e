//! The agent's core: apply a verified bundle, prune, persist, and keep it in place.
//!
//! [`Reconciler::apply`] takes a verified bundle ([`Desired`]) through: persist it → write the
//! inventory as old ∪ new → server-side apply → (only if every object applied) prune old − new
//! and narrow the inventory. Drift watchers (one metadata-only watch per kind) report any change
//! to a field flotilla owns, or a deletion, and a correction task re-applies the object unless
//! the delivery is report-only.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use flotilla_bundle::TrustedKeys;
use futures::StreamExt as _;
use kube::api::DynamicObject;
use kube::core::{GroupVersionKind, PartialObjectMeta};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{info, warn};

use crate::apply::{Action, Applier, ApplyOptions, ConflictPolicy, FIELD_MANAGER, ObjectResult};
use crate::drift::{self, DriftEvent, DriftKind, DriftMode};
use crate::health::{self, HealthReport};
use crate::inventory::{self, InventoryStore};
use crate::object::{self, DELIVERY_LABEL, ObjectRef};
use crate::store::{self, BundleStore, StoredBundle};
use crate::verify::{self, VerifiedBundle};

/// A verified bundle: what one delivery must run in this cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Desired {
    /// Delivery name (a DNS label).
    pub delivery: String,
    /// Source revision the objects were rendered from.
    pub revision: String,
    /// Bundle sequence number; never lower than one already held.
    pub sequence: u64,
    /// The objects, in render order.
    pub objects: Vec<Value>,
    /// How to apply them.
    #[serde(default)]
    pub options: DeliveryOptions,
}

/// Per-delivery apply settings, set on the hub's `Delivery` and signed into its bundles.
pub use flotilla_bundle::DeliveryOptions;

/// How applying a bundle ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Every object applied, and pruning (if on) finished.
    Applied,
    /// At least one object failed; nothing was pruned.
    ApplyFailed,
    /// The bundle was refused before anything was applied.
    Refused,
}

/// The result of [`Reconciler::apply`]: what the agent acks to the hub.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Delivery.
    pub delivery: String,
    /// Source revision.
    pub revision: String,
    /// Bundle sequence.
    pub sequence: u64,
    /// How it ended.
    pub status: Status,
    /// One line for humans: what failed and why, or what was done.
    pub message: String,
    /// Per-object results, in bundle order.
    pub results: Vec<ObjectResult>,
    /// Objects deleted because they left the bundle.
    pub pruned: Vec<ObjectRef>,
    /// Objects that left the bundle but were kept because of the prune annotation.
    pub kept: Vec<ObjectRef>,
}

/// What the agent trusts when it resumes stored bundles: its identity from the hub.
#[derive(Debug, Clone)]
pub struct Trust {
    /// This agent's cluster: the audience a stored bundle must name.
    pub cluster: String,
    /// The hub keys a stored bundle must be signed by.
    pub keys: TrustedKeys,
    /// Deliveries the hub delivers to this cluster: an unsigned stored bundle for one of them
    /// is refused.
    pub hub_deliveries: BTreeSet<String>,
}

/// What [`Reconciler::resume`] did.
#[derive(Debug, Default)]
pub struct Resumed {
    /// One outcome per resumed bundle.
    pub outcomes: Vec<Outcome>,
    /// Sequence of each verified signed bundle resumed: what the agent holds from the hub.
    pub held: BTreeMap<String, u64>,
    /// Deliveries whose stored bundle was refused, and why. Nothing of them was applied.
    pub refused: Vec<(String, String)>,
}

/// The last apply of a delivery, as [`Reconciler::deliveries`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryState {
    /// The bundle's sequence.
    pub sequence: u64,
    /// Its source revision.
    pub revision: String,
    /// How applying it ended.
    pub status: Status,
    /// The outcome's message.
    pub message: String,
    /// Objects in the delivery's inventory.
    pub inventory: usize,
    /// Correct drift or only report it.
    pub drift: DriftMode,
}

/// Errors of the reconciler outside per-object results.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The inventory could not be read or written.
    #[error(transparent)]
    Inventory(#[from] inventory::Error),
    /// The bundle could not be persisted or loaded.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// What the reconciler remembers about an object it applied.
#[derive(Debug, Clone)]
struct Tracked {
    delivery: String,
    object: ObjectRef,
    manifest: Value,
    /// The fields flotilla owns after the last apply; `None` while an apply is in flight.
    owned: Option<Value>,
    resource_version: Option<String>,
}

type Key = (String, String, String, String);

/// What pruning one object did.
enum Pruned {
    Deleted,
    /// Kept because of the prune annotation.
    Kept,
    /// Already gone.
    Gone,
}

#[derive(Debug)]
struct Inner {
    metrics: crate::metrics::AgentMetrics,
    applier: Applier,
    inventory: InventoryStore,
    store: BundleStore,
    /// Objects flotilla applied, by (group, kind, namespace, name).
    tracked: DashMap<Key, Tracked>,
    /// Options of each delivery.
    options: DashMap<String, DeliveryOptions>,
    /// Objects being pruned: their deletion is not drift.
    pruning: DashMap<Key, ()>,
    /// Kinds with a running watcher.
    watched: Mutex<HashSet<GroupVersionKind>>,
    /// Only this namespace is watched, for namespace-scoped agents.
    namespace: Option<String>,
    drift_tx: mpsc::UnboundedSender<DriftEvent>,
    events: broadcast::Sender<DriftEvent>,
    /// Serialises applies of one delivery.
    apply_lock: tokio::sync::Mutex<()>,
    /// The last apply of each delivery.
    states: DashMap<String, DeliveryState>,
    /// Bumped after every apply.
    applied: watch::Sender<u64>,
}

/// The agent's reconciler for one workload cluster. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reconciler {
    inner: Arc<Inner>,
}

/// Where and how the reconciler works.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// Namespace for inventories and stored bundles.
    pub state_namespace: String,
    /// Restrict watches to one namespace (namespace-scoped agents); `None` watches cluster-wide.
    pub watch_namespace: Option<String>,
}

impl Reconciler {
    /// Starts a reconciler (and its drift-correction task) on `applier`'s cluster.
    pub fn new(applier: Applier, config: ReconcilerConfig) -> Self {
        let client = applier.client().clone();
        let (drift_tx, drift_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(4096);
        let r = Self {
            inner: Arc::new(Inner {
                metrics: crate::metrics::AgentMetrics::new(),
                inventory: InventoryStore::new(client.clone(), &config.state_namespace),
                store: BundleStore::new(client, &config.state_namespace),
                applier,
                tracked: DashMap::new(),
                options: DashMap::new(),
                pruning: DashMap::new(),
                watched: Mutex::new(HashSet::new()),
                namespace: config.watch_namespace,
                drift_tx,
                events,
                apply_lock: tokio::sync::Mutex::new(()),
                states: DashMap::new(),
                applied: watch::channel(0).0,
            }),
        };
        tokio::spawn(r.clone().correct_drift(drift_rx));
        r
    }

    /// The workload cluster's client.
    pub fn client(&self) -> &kube::Client {
        self.inner.applier.client()
    }

    /// This reconciler's Prometheus metrics.
    pub fn metrics(&self) -> &crate::metrics::AgentMetrics {
        &self.inner.metrics
    }

    /// Drift events (detections and corrections) from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<DriftEvent> {
        self.inner.events.subscribe()
    }

    /// Re-applies every persisted bundle: what an agent does at start, before (or without) a
    /// hub. A signed bundle is verified again against `trust` (signature by a trusted hub key,
    /// audience this cluster); an unsigned one (stored by `flotilla-agent apply --store`) is
    /// resumed only for a delivery the hub does not deliver. A refused bundle is logged and
    /// nothing of it is applied; the other deliveries resume.
    pub async fn resume(&self, trust: Option<&Trust>) -> Result<Resumed, Error> {
        let mut out = Resumed::default();
        for (delivery, loaded) in self.inner.store.load_all().await? {
            let refuse = |out: &mut Resumed, why: String| {
                warn!(delivery = %delivery, "refused the stored bundle of delivery {delivery}, nothing of it applied: {why}");
                out.refused.push((delivery.clone(), why));
            };
            let desired = match loaded {
                Err(e) => {
                    refuse(&mut out, crate::apply::error_chain(&e));
                    continue;
                }
                Ok(StoredBundle::Operator(desired)) => {
                    if trust.is_some_and(|t| t.hub_deliveries.contains(&desired.delivery)) {
                        refuse(
                            &mut out,
                            "it is unsigned (stored by `flotilla-agent apply --store`) and the hub delivers this delivery".into(),
                        );
                        continue;
                    }
                    desired
                }
                Ok(StoredBundle::Signed(bundle)) => {
                    let Some(trust) = trust else {
                        refuse(
                            &mut out,
                            "it is signed by the hub, and this agent holds no hub identity to verify it with".into(),
                        );
                        continue;
                    };
                    let verified = match verify::verify_stored(bundle, &trust.cluster, &trust.keys)
                    {
                        Ok(v) => v,
                        Err(e) => {
                            refuse(&mut out, crate::apply::error_chain(&e));
                            continue;
                        }
                    };
                    match desired_of(&verified) {
                        Ok(d) => {
                            out.held.insert(d.delivery.clone(), d.sequence);
                            d
                        }
                        Err(e) => {
                            refuse(&mut out, format!("its payload is malformed: {e}"));
                            continue;
                        }
                    }
                }
            };
            info!(delivery = %desired.delivery, sequence = desired.sequence, revision = %desired.revision, "resuming from the stored bundle");
            out.outcomes.push(self.apply_inner(desired, None).await?);
        }
        Ok(out)
    }

    /// Applies a verified bundle. Objects are applied even if some fail; nothing is pruned
    /// unless all succeed. It is stored unsigned, as operator-applied: for `flotilla-agent
    /// apply --store`, tests and benchmarks. Bundles from the hub go through
    /// [`Reconciler::apply_verified`].
    pub async fn apply(&self, desired: Desired) -> Result<Outcome, Error> {
        let stored = StoredBundle::Operator(desired.clone());
        self.apply_inner(desired, Some(stored)).await
    }

    /// Applies a bundle from the hub that passed verification, with the delivery options signed
    /// into it, and stores it signed so a restart can verify it again.
    pub async fn apply_verified(&self, bundle: &VerifiedBundle) -> Result<Outcome, Error> {
        let desired = match desired_of(bundle) {
            Ok(d) => d,
            Err(e) => {
                let m = &bundle.meta;
                let outcome = Outcome {
                    delivery: m.delivery.clone(),
                    revision: m.revision.clone(),
                    sequence: m.sequence,
                    status: Status::Refused,
                    message: format!(
                        "refused bundle {}#{}: its payload is not objects and options: {e}",
                        m.delivery, m.sequence
                    ),
                    results: vec![],
                    pruned: vec![],
                    kept: vec![],
                };
                self.record(&outcome, None);
                return Ok(outcome);
            }
        };
        let stored = StoredBundle::Signed(bundle.to_signed());
        self.apply_inner(desired, Some(stored)).await
    }

    /// Applies a bundle without storing it as the delivery's last verified one: for one-shot
    /// local applies (`flotilla-agent apply`).
    pub async fn apply_unstored(&self, desired: Desired) -> Result<Outcome, Error> {
        self.apply_inner(desired, None).await
    }

    /// The last apply of every delivery applied or resumed since start.
    pub fn deliveries(&self) -> BTreeMap<String, DeliveryState> {
        self.inner
            .states
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// Changes after every apply (a counter), to wake whoever reads [`Reconciler::deliveries`].
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// Readiness of what `delivery` applied, read once now.
    pub async fn health_now(&self, delivery: &str) -> HealthReport {
        self.wait_healthy(delivery, Duration::ZERO).await
    }

    fn record(&self, outcome: &Outcome, inventory: Option<usize>) {
        let drift = self
            .inner
            .options
            .get(&outcome.delivery)
            .map(|o| o.drift)
            .unwrap_or_default();
        let inventory = inventory.unwrap_or_else(|| {
            self.inner
                .tracked
                .iter()
                .filter(|t| t.delivery == outcome.delivery)
                .count()
        });
        self.inner.states.insert(
            outcome.delivery.clone(),
            DeliveryState {
                sequence: outcome.sequence,
                revision: outcome.revision.clone(),
                status: outcome.status,
                message: outcome.message.clone(),
                inventory,
                drift,
            },
        );
        self.inner.applied.send_modify(|n| *n += 1);
    }

    async fn apply_inner(
        &self,
        desired: Desired,
        persist: Option<StoredBundle>,
    ) -> Result<Outcome, Error> {
        let started = std::time::Instant::now();
        let outcome = self.apply_locked(desired, persist).await?;
        self.inner.metrics.applied(
            &outcome.delivery,
            started.elapsed(),
            outcome.results.iter().map(|r| &r.action),
        );
        self.record(&outcome, None);
        Ok(outcome)
    }

    async fn apply_locked(
        &self,
        desired: Desired,
        persist: Option<StoredBundle>,
    ) -> Result<Outcome, Error> {
        // Waiting for the lock is the apply queue: one atomic each way, dropped even when the
        // caller gives up while waiting.
        let queued = &self.inner.metrics.apply_queue_depth;
        queued.inc();
        let waiting = Dec(queued);
        let _guard = self.inner.apply_lock.lock().await;
        drop(waiting);
        let d = desired.delivery.clone();
        let outcome = |status, message: String, results, pruned, kept| Outcome {
            delivery: d.clone(),
            revision: desired.revision.clone(),
            sequence: desired.sequence,
            status,
            message,
            results,
            pruned,
            kept,
        };
        if desired.objects.is_empty() && !desired.options.allow_empty {
            warn!(delivery = %d, "refusing an empty bundle");
            return Ok(outcome(
                Status::Refused,
                format!(
                    "refused an empty bundle for delivery {d}: nothing applied or pruned (set allowEmpty to accept one)"
                ),
                vec![],
                vec![],
                vec![],
            ));
        }
        let mut objects = Vec::with_capacity(desired.objects.len());
        let crd_scopes = crd_scopes(&desired.objects);
        for (i, obj) in desired.objects.iter().enumerate() {
            let mut obj = obj.clone();
            let mut r = match ObjectRef::of(&obj, i) {
                Ok(r) => r,
                Err(e) => {
                    return Ok(outcome(
                        Status::Refused,
                        format!("refused the bundle of delivery {d}: {e}"),
                        vec![],
                        vec![],
                        vec![],
                    ));
                }
            };
            match crd_scopes.get(&(r.group.clone(), r.kind.clone())) {
                Some(&namespaced) => object::normalise_scope(&mut r, &mut obj, namespaced),
                None => {
                    // Unknown kinds are reported per object by the applier.
                    let _ = self.inner.applier.normalise(&mut r, &mut obj).await;
                }
            }
            objects.push((r, obj));
        }
        if let Some(stored) = &persist {
            self.inner.store.save(stored).await?;
        }
        self.inner
            .options
            .insert(d.clone(), desired.options.clone());

        let old = self.inner.inventory.load(&d).await?;
        let new: BTreeSet<ObjectRef> = objects.iter().map(|(r, _)| r.clone()).collect();
        self.inner
            .inventory
            .save(&d, &old.union(&new).cloned().collect())
            .await?;

        for (r, obj) in &objects {
            let mut t = self
                .inner
                .tracked
                .entry(r.key())
                .or_insert_with(|| Tracked {
                    delivery: d.clone(),
                    object: r.clone(),
                    manifest: obj.clone(),
                    owned: None,
                    resource_version: None,
                });
            t.delivery = d.clone();
            t.object = r.clone();
            t.manifest = obj.clone();
            t.owned = None;
        }
        let opts = ApplyOptions {
            delivery: d.clone(),
            conflicts: desired.options.conflicts,
            ignore: desired.options.ignore.clone(),
        };
        let tracked = &self.inner.tracked;
        let known = |r: &ObjectRef| {
            tracked
                .get(&r.key())
                .and_then(|t| t.resource_version.clone())
        };
        let results = self.inner.applier.apply_all(&objects, &opts, &known).await;
        for res in &results {
            if res.action != Action::Failed
                && let Some(mut t) = self.inner.tracked.get_mut(&res.object.key())
            {
                t.owned = res.owned_fields.clone();
                t.resource_version = res.resource_version.clone();
            }
        }
        for r in &new {
            self.ensure_watch(r.gvk()).await;
        }
        let failed: Vec<&ObjectResult> = results
            .iter()
            .filter(|r| r.action == Action::Failed)
            .collect();
        if !failed.is_empty() {
            let names: Vec<String> = failed
                .iter()
                .take(5)
                .map(|f| format!("{}: {}", f.object, f.message.as_deref().unwrap_or("failed")))
                .collect();
            let more = failed.len().saturating_sub(5);
            let message = format!(
                "{} of {} objects failed, nothing pruned: {}{}",
                failed.len(),
                results.len(),
                names.join("; "),
                if more > 0 {
                    format!("; and {more} more")
                } else {
                    String::new()
                }
            );
            warn!(delivery = %d, revision = %desired.revision, "{message}");
            // Keep tracking everything that may exist: the old inventory and what applied.
            let applied = results
                .iter()
                .filter(|r| r.action != Action::Failed)
                .map(|r| r.object.clone());
            let keep: BTreeSet<ObjectRef> = old.iter().cloned().chain(applied).collect();
            self.inner.inventory.save(&d, &keep).await?;
            for f in &failed {
                if !old.contains(&f.object) {
                    self.inner.tracked.remove(&f.object.key());
                }
            }
            return Ok(outcome(
                Status::ApplyFailed,
                message,
                results,
                vec![],
                vec![],
            ));
        }

        let mut pruned = Vec::new();
        let mut kept = Vec::new();
        if desired.options.prune {
            let new_keys: HashSet<Key> = new.iter().map(ObjectRef::key).collect();
            for r in old.iter().filter(|r| !new_keys.contains(&r.key())) {
                match self.prune_one(r).await {
                    Ok(Pruned::Deleted) => pruned.push(r.clone()),
                    Ok(Pruned::Kept) => kept.push(r.clone()),
                    Ok(Pruned::Gone) => {}
                    Err(e) => {
                        let message =
                            format!("pruning {r} failed: {}", crate::apply::error_chain(&e));
                        warn!(delivery = %d, "{message}");
                        return Ok(outcome(Status::ApplyFailed, message, results, pruned, kept));
                    }
                }
            }
        }
        self.inner.inventory.save(&d, &new).await?;
        let counts = count(&results);
        let message = format!(
            "applied revision {}: {} created, {} configured, {} unchanged, {} pruned",
            desired.revision,
            counts[0],
            counts[1],
            counts[2],
            pruned.len()
        );
        info!(delivery = %d, sequence = desired.sequence, "{message}");
        Ok(outcome(Status::Applied, message, results, pruned, kept))
    }

    /// Deletes `r` unless its live copy opts out of pruning.
    async fn prune_one(&self, r: &ObjectRef) -> Result<Pruned, crate::apply::Error> {
        let api = self.inner.applier.api(r).await?;
        self.inner.applier.throttle().await;
        if let Ok(Some(live)) = api.get_opt(&r.name).await
            && object::prune_disabled(&serde_json::to_value(&live).unwrap_or_default())
        {
            info!(object = %r, "kept: pruning disabled by annotation");
            self.inner.tracked.remove(&r.key());
            return Ok(Pruned::Kept);
        }
        self.inner.pruning.insert(r.key(), ());
        self.inner.tracked.remove(&r.key());
        let existed = self.inner.applier.delete(r).await?;
        if existed {
            info!(object = %r, "pruned");
        } else {
            self.inner.pruning.remove(&r.key());
        }
        Ok(if existed {
            Pruned::Deleted
        } else {
            Pruned::Gone
        })
    }

    /// Waits for the readiness of everything `delivery` applied.
    pub async fn wait_healthy(&self, delivery: &str, timeout: Duration) -> HealthReport {
        let objects: Vec<ObjectRef> = self
            .inner
            .tracked
            .iter()
            .filter(|t| t.delivery == delivery && !is_itself(&t.object, delivery))
            .map(|t| t.object.clone())
            .collect();
        health::wait_healthy(&self.inner.applier, delivery, &objects, timeout).await
    }

    /// Starts a metadata-only watch of `gvk` (selected by the delivery label), once.
    async fn ensure_watch(&self, gvk: GroupVersionKind) {
        if !self
            .inner
            .watched
            .lock()
            .expect("watched lock")
            .insert(gvk.clone())
        {
            return;
        }
        let Ok((ar, namespaced)) = self.inner.applier.resolve(&gvk).await else {
            self.inner
                .watched
                .lock()
                .expect("watched lock")
                .remove(&gvk);
            return;
        };
        let client = self.inner.applier.client().clone();
        let api: kube::Api<PartialObjectMeta<DynamicObject>> =
            match (&self.inner.namespace, namespaced) {
                (Some(ns), true) => kube::Api::namespaced_with(client, ns, &ar),
                _ => kube::Api::all_with(client, &ar),
            };
        let this = self.clone();
        tokio::spawn(async move {
            let config = watcher::Config::default().labels(DELIVERY_LABEL);
            let mut stream = watcher(api, config).boxed();
            let mut seen: HashSet<Key> = HashSet::new();
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::Init) => seen.clear(),
                    Ok(watcher::Event::InitApply(m)) => {
                        if let Some(k) = this.key_of(&gvk, &m) {
                            seen.insert(k);
                        }
                        this.observe(&gvk, &m);
                    }
                    Ok(watcher::Event::InitDone) => this.missing_after_relist(&gvk, &seen),
                    Ok(watcher::Event::Apply(m)) => this.observe(&gvk, &m),
                    Ok(watcher::Event::Delete(m)) => {
                        if let Some(k) = this.key_of(&gvk, &m) {
                            this.deleted(k);
                        }
                    }
                    Err(e) => {
                        warn!(kind = %gvk.kind, error = %e, "drift watch interrupted; it resumes by itself");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
    }

    fn key_of(&self, gvk: &GroupVersionKind, m: &PartialObjectMeta<DynamicObject>) -> Option<Key> {
        Some((
            gvk.group.clone(),
            gvk.kind.clone(),
            m.metadata.namespace.clone().unwrap_or_default(),
            m.metadata.name.clone()?,
        ))
    }

    /// Compares an object's current ownership with what flotilla applied.
    fn observe(&self, gvk: &GroupVersionKind, m: &PartialObjectMeta<DynamicObject>) {
        let Some(key) = self.key_of(gvk, m) else {
            return;
        };
        let Some(mut t) = self.inner.tracked.get_mut(&key) else {
            return;
        };
        t.resource_version = m.metadata.resource_version.clone();
        let Some(expected) = t.owned.clone() else {
            return;
        };
        let managed: Vec<(String, Value)> = m
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|e| Some((e.manager.clone()?, e.fields_v1.as_ref()?.0.clone())))
            .collect();
        let ours = m
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .find(|e| {
                e.manager.as_deref() == Some(FIELD_MANAGER)
                    && e.operation.as_deref() == Some("Apply")
            })
            .and_then(|e| e.fields_v1.as_ref())
            .map(|f| f.0.clone())
            .unwrap_or(Value::Object(Default::default()));
        let ignore = self
            .inner
            .options
            .get(&t.delivery)
            .map(|o| o.ignore.clone())
            .unwrap_or_default();
        let lost: Vec<Vec<String>> = drift::lost_fields(&expected, &ours)
            .into_iter()
            .filter(|path| !drift::ignored(&ignore, &t.object, path))
            .collect();
        if lost.is_empty() {
            // Fields given up to ignore rules are no longer expected.
            t.owned = Some(ours);
            return;
        }
        let others: Vec<(String, Value)> = managed
            .into_iter()
            .filter(|(n, _)| n != FIELD_MANAGER)
            .collect();
        let mut managers: Vec<String> = lost
            .iter()
            .flat_map(|p| drift::owners_of(&others, p))
            .collect();
        managers.sort();
        managers.dedup();
        let fields = lost.iter().map(|p| drift::display_path(p)).collect();
        // Until corrected, don't report the same drift again for every event.
        t.owned = None;
        let event = self.drift_event(&t, DriftKind::Modified { fields, managers });
        drop(t);
        self.report(event);
    }

    fn deleted(&self, key: Key) {
        if self.inner.pruning.remove(&key).is_some() {
            return;
        }
        let Some(mut t) = self.inner.tracked.get_mut(&key) else {
            return;
        };
        if t.owned.is_none() {
            // An apply or correction is in flight; it will recreate or report the object.
            return;
        }
        t.owned = None;
        t.resource_version = None;
        let event = self.drift_event(&t, DriftKind::Deleted);
        drop(t);
        self.report(event);
    }

    fn missing_after_relist(&self, gvk: &GroupVersionKind, seen: &HashSet<Key>) {
        let missing: Vec<Key> = self
            .inner
            .tracked
            .iter()
            .filter(|t| t.key().0 == gvk.group && t.key().1 == gvk.kind && !seen.contains(t.key()))
            .map(|t| t.key().clone())
            .collect();
        for k in missing {
            self.deleted(k);
        }
    }

    fn drift_event(&self, t: &Tracked, kind: DriftKind) -> DriftEvent {
        let report_only = self
            .inner
            .options
            .get(&t.delivery)
            .is_some_and(|o| o.drift == DriftMode::Report);
        DriftEvent {
            delivery: t.delivery.clone(),
            object: t.object.clone(),
            kind,
            detected_ms: drift::now_ms(),
            corrected_ms: None,
            error: None,
            report_only,
        }
    }

    fn report(&self, event: DriftEvent) {
        info!(delivery = %event.delivery, object = %event.object, drift = ?event.kind, "drift detected");
        self.inner.metrics.drift("detected");
        let _ = self.inner.events.send(event.clone());
        let _ = self.inner.drift_tx.send(event);
    }

    /// Re-applies drifted objects (unless their delivery is report-only).
    async fn correct_drift(self, mut rx: mpsc::UnboundedReceiver<DriftEvent>) {
        while let Some(mut event) = rx.recv().await {
            if event.report_only {
                continue;
            }
            let Some(t) = self
                .inner
                .tracked
                .get(&event.object.key())
                .map(|t| t.clone())
            else {
                continue;
            };
            let opts = self
                .inner
                .options
                .get(&t.delivery)
                .map(|o| o.clone())
                .unwrap_or_default();
            let apply_opts = ApplyOptions {
                delivery: t.delivery.clone(),
                conflicts: ConflictPolicy::Force,
                ignore: opts.ignore,
            };
            let known = match event.kind {
                DriftKind::Deleted => None,
                DriftKind::Modified { .. } => t.resource_version.clone(),
            };
            let this = self.clone();
            tokio::spawn(async move {
                let res: ObjectResult = this
                    .inner
                    .applier
                    .apply_one(&t.object, &t.manifest, &apply_opts, known)
                    .await;
                if res.action == Action::Failed {
                    event.error = res.message.clone();
                    warn!(object = %t.object, error = ?res.message, "drift correction failed");
                    this.inner.metrics.drift("failed");
                } else {
                    if let Some(mut cur) = this.inner.tracked.get_mut(&t.object.key()) {
                        cur.owned = res.owned_fields.clone();
                        cur.resource_version = res.resource_version.clone();
                    }
                    event.corrected_ms = Some(drift::now_ms());
                    info!(object = %t.object, "drift corrected");
                    this.inner.metrics.drift("corrected");
                }
                let _ = this.inner.events.send(event);
            });
        }
    }
}

/// The reconciler's input from a verified bundle: its objects, with the options signed into it.
fn desired_of(bundle: &VerifiedBundle) -> Result<Desired, serde_json::Error> {
    let payload = bundle.decode()?;
    Ok(Desired {
        delivery: bundle.meta.delivery.clone(),
        revision: bundle.meta.revision.clone(),
        sequence: bundle.meta.sequence,
        objects: payload.objects,
        options: payload.options,
    })
}

/// Scope of the kinds that CRDs in the bundle define: (group, kind) → namespaced.
fn crd_scopes(objects: &[Value]) -> HashMap<(String, String), bool> {
    objects
        .iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition"))
        .filter_map(|o| {
            let spec = o.get("spec")?;
            Some((
                (
                    spec.get("group")?.as_str()?.to_string(),
                    spec.pointer("/names/kind")?.as_str()?.to_string(),
                ),
                spec.get("scope").and_then(Value::as_str) != Some("Cluster"),
            ))
        })
        .collect()
}

fn count(results: &[ObjectResult]) -> [usize; 3] {
    let mut c = [0; 3];
    for r in results {
        match r.action {
            Action::Created => c[0] += 1,
            Action::Configured => c[1] += 1,
            Action::Unchanged => c[2] += 1,
            Action::Failed => {}
        }
    }
    c
}

/// Decrements a gauge when dropped.
struct Dec<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for Dec<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Whether `object` is the flotilla `Delivery` that delivers it, as in the management cluster
/// that `flotilla bootstrap` sets up. A bundle names its delivery by the Delivery's name (unique
/// among the deliveries that reach one cluster). Its readiness waits on this very health check,
/// so it is applied and watched for drift like any object but not waited on (Flux's
/// kustomize-controller skips itself the same way).
fn is_itself(object: &ObjectRef, delivery: &str) -> bool {
    object.group == "flotilla.dev" && object.kind == "Delivery" && object.name == delivery
}

#[cfg(test)]
mod self_reference_tests {
    use super::*;

    fn obj(group: &str, kind: &str, namespace: &str, name: &str) -> ObjectRef {
        ObjectRef {
            group: group.into(),
            version: "v1alpha1".into(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn only_the_delivery_itself_is_not_waited_on() {
        let d = "flotilla-system";
        assert!(is_itself(
            &obj(
                "flotilla.dev",
                "Delivery",
                "flotilla-system",
                "flotilla-system"
            ),
            d
        ));
        for other in [
            obj("flotilla.dev", "Delivery", "flotilla-system", "apps"),
            obj(
                "flotilla.dev",
                "GitSource",
                "flotilla-system",
                "flotilla-system",
            ),
            obj(
                "example.com",
                "Delivery",
                "flotilla-system",
                "flotilla-system",
            ),
        ] {
            assert!(!is_itself(&other, d), "{other:?}");
        }
    }
}
