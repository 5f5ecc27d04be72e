//! `Delivery` resources → per-cluster renders, gated publishes, and status.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kube::ResourceExt as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tracing::{Instrument as _, info, warn};

use super::Config;
use super::helm::{BuildResult, HelmBuild, NotBuilt};
use super::sources::{self, Sources};
use super::util::{
    cluster_variables, condition, duration_or, expand_path, max_unavailable, parse_rfc3339,
    rfc3339, selector_matches, short_revision, validate_selector,
};
use crate::api::{
    Cluster, ClusterDeliveryStatus, ClusterStatus, Delivery, DeliveryClusterStatus, DeliverySpec,
    DeliveryStatus, HelmRelease, HelmReleaseStatus, RECONCILE_ANNOTATION, reason,
};
use crate::delivery::{AckOutcome, Hub};
use crate::fleet::{ClusterState, KubeRegistry, Registry as _, cluster_state};
use crate::source::Snapshot;

type DeliveryKey = String;

/// What a delivery renders from: a Git revision, or a Helm chart with its values.
#[derive(Debug, Clone)]
enum Origin {
    Git(Snapshot),
    Helm(Arc<HelmBuild>),
}

impl Origin {
    /// The revision clusters are said to run: `<ref>@sha1:<commit>` or
    /// `<chart>@<version>@sha256:<digest>`.
    fn revision(&self) -> String {
        match self {
            Origin::Git(s) => s.revision(),
            Origin::Helm(b) => b.revision(),
        }
    }

    /// Changes whenever a render could differ.
    fn fingerprint(&self) -> String {
        match self {
            Origin::Git(s) => s.revision(),
            Origin::Helm(b) => b.fingerprint(),
        }
    }
}

/// Which kind of resource is being reconciled.
#[derive(Debug, Clone, Copy)]
enum Kind<'a> {
    Delivery,
    Helm(&'a BuildResult),
}

impl Kind<'_> {
    fn key(&self, namespace: &str, name: &str) -> DeliveryKey {
        match self {
            Kind::Delivery => key(namespace, name),
            Kind::Helm(_) => format!("HelmRelease {namespace}/{name}"),
        }
    }
}

/// A `HelmRelease` seen as the `Delivery` it behaves like (same targeting, timing, dependsOn
/// and suspend; always forced, drift corrected), so both share one reconcile path.
pub fn helm_as_delivery(hr: &HelmRelease) -> Delivery {
    let s = &hr.spec;
    let mut d = Delivery::new(
        &hr.name_any(),
        DeliverySpec {
            source_ref: s.chart.source_ref.clone(),
            path: "./".into(),
            cluster_selector: s.cluster_selector.clone(),
            variables: s.variables.clone(),
            prune: s.prune,
            allow_empty: false,
            interval: s.interval.clone(),
            retry_interval: s.retry_interval.clone(),
            timeout: s.timeout.clone(),
            depends_on: s.depends_on.clone(),
            suspend: s.suspend,
            drift: None,
            conflicts: None,
            rollout: None,
        },
    );
    d.metadata = hr.metadata.clone();
    d.status = hr
        .status
        .as_ref()
        .and_then(|st| serde_json::to_value(st).ok())
        .and_then(|v| serde_json::from_value(v).ok());
    d
}

fn helm_status(hr: &HelmRelease, build: &BuildResult, status: DeliveryStatus) -> HelmReleaseStatus {
    let mut out: HelmReleaseStatus = serde_json::to_value(&status)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    match build {
        Ok(b) => {
            out.chart_version = Some(b.archive.version.clone());
            out.chart_digest = Some(format!("sha256:{}", b.archive.digest));
        }
        Err(_) => {
            let prev = hr.status.clone().unwrap_or_default();
            out.chart_version = prev.chart_version;
            out.chart_digest = prev.chart_digest;
        }
    }
    out
}

/// A render waiting to be published.
#[derive(Debug, Clone)]
struct Candidate {
    revision: String,
    objects: Arc<Vec<Value>>,
    digest: String,
    /// W3C trace context of the render span, when traces are exported.
    traceparent: Option<String>,
}

/// What was last published to one cluster for one delivery.
#[derive(Debug, Clone)]
struct Published {
    sequence: u64,
    /// The revision the bundle was rendered from.
    revision: String,
    /// The source revision the cluster effectively runs (a newer commit that renders the same
    /// objects moves this without a new bundle).
    effective_revision: String,
    digest: String,
    at: Instant,
    /// Seeded from status after a hub restart: the hub does not hold the bundle in memory yet.
    restored: bool,
}

/// One (delivery, cluster).
#[derive(Debug, Default)]
struct Slot {
    input: Option<u64>,
    rendered_at: Option<Instant>,
    build_error: Option<String>,
    candidate: Option<Candidate>,
    published: Option<Published>,
    /// Why the candidate is held back.
    blocked: Option<(&'static str, String)>,
}

/// How one (delivery, cluster) stands.
#[derive(Debug, Clone, Default)]
struct View {
    ready: bool,
    failed: bool,
    reason: &'static str,
    message: String,
    health: String,
    drifted: u32,
    objects: u32,
}

/// Status of every delivery and cluster computed by a pass.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Each delivery and the status it should show.
    pub deliveries: Vec<(Arc<Delivery>, DeliveryStatus)>,
    /// Each cluster and the status it should show.
    pub clusters: Vec<(Arc<Cluster>, ClusterStatus)>,
    /// Each Helm release and the status it should show.
    pub helm_releases: Vec<(Arc<HelmRelease>, HelmReleaseStatus)>,
}

/// Per-(delivery, cluster) state of the controller.
#[derive(Debug)]
pub struct Deliveries {
    hub: Hub,
    config: Config,
    slots: HashMap<(DeliveryKey, String), Slot>,
    /// (delivery, cluster) ready at the end of the last pass, for `dependsOn`.
    ready: HashSet<(DeliveryKey, String)>,
    revoked: HashSet<String>,
    reconcile_handled: HashMap<DeliveryKey, String>,
    last_seen: HashMap<String, String>,
    render_options: flotilla_render::Options,
    notifier: Option<crate::notify::Notifier>,
}

fn key(namespace: &str, name: &str) -> DeliveryKey {
    format!("{namespace}/{name}")
}

/// The agent-side apply options a delivery asks for, as carried in the signed bundle.
pub fn delivery_options(d: &Delivery) -> Result<Value, String> {
    let spec = &d.spec;
    let conflicts = match spec.conflicts.as_deref().unwrap_or("Force") {
        "Force" | "force" => "force",
        "Report" | "report" => "report",
        other => return Err(format!("spec.conflicts: {other:?} is not Force or Report")),
    };
    let drift = spec.drift.clone().unwrap_or_default();
    let mode = match drift.mode.as_deref().unwrap_or("Correct") {
        "Correct" | "correct" => "correct",
        "Report" | "report" => "report",
        other => {
            return Err(format!(
                "spec.drift.mode: {other:?} is not Correct or Report"
            ));
        }
    };
    let ignore: Vec<Value> = drift
        .ignore
        .iter()
        .map(|i| {
            json!({
                "paths": i.paths,
                "kind": i.kind.clone().unwrap_or_default(),
                "name": i.name.clone().unwrap_or_default(),
                "namespace": i.namespace.clone().unwrap_or_default(),
            })
        })
        .collect();
    for (n, i) in drift.ignore.iter().enumerate() {
        if let Some(p) = i.paths.iter().find(|p| !p.starts_with('/')) {
            return Err(format!(
                "spec.drift.ignore[{n}].paths: {p:?} is not a JSON pointer (it starts with /)"
            ));
        }
    }
    Ok(json!({
        "prune": spec.prune,
        "allowEmpty": spec.allow_empty,
        "conflicts": conflicts,
        "drift": mode,
        "ignore": ignore,
    }))
}

/// Digest of what a cluster would apply: the objects and the options.
fn render_digest(objects: &[Value], options: &Value) -> String {
    let mut h = Sha256::new();
    h.update(crate::bundle::encode(objects));
    h.update(options.to_string().as_bytes());
    hex::encode(h.finalize())
}

struct Limits {
    interval: Duration,
    retry: Duration,
    timeout: Duration,
}

fn limits(d: &Delivery) -> Result<Limits, String> {
    Ok(Limits {
        interval: duration_or(
            "interval",
            d.spec.interval.as_deref(),
            Duration::from_secs(600),
        )?,
        retry: duration_or(
            "retryInterval",
            d.spec.retry_interval.as_deref(),
            Duration::from_secs(30),
        )?,
        timeout: duration_or(
            "timeout",
            d.spec.timeout.as_deref(),
            Duration::from_secs(300),
        )?,
    })
}

/// Severity order of reasons: the first one present explains a delivery or cluster.
const REASON_ORDER: &[&str] = &[
    reason::INVALID_SPEC,
    reason::REVOKED,
    reason::BUILD_FAILED,
    reason::BUNDLE_REJECTED,
    reason::APPLY_FAILED,
    reason::HEALTH_CHECK_FAILED,
    reason::ROLLOUT_PAUSED,
    reason::DRIFT_DETECTED,
    reason::DEPENDENCY_NOT_READY,
    reason::SOURCE_NOT_READY,
    reason::DISCONNECTED,
    reason::PENDING_ACCEPTANCE,
    reason::SUSPENDED,
    reason::ROLLOUT_WAITING,
    reason::PROGRESSING,
];

fn severity(r: &str) -> usize {
    REASON_ORDER
        .iter()
        .position(|x| *x == r)
        .unwrap_or(REASON_ORDER.len())
}

fn is_failure(r: &str) -> bool {
    matches!(
        r,
        reason::BUILD_FAILED
            | reason::BUNDLE_REJECTED
            | reason::APPLY_FAILED
            | reason::HEALTH_CHECK_FAILED
    )
}

/// "first: why; second: why (and 3 more)".
fn summarise<'a>(items: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let items: Vec<_> = items.collect();
    let mut out: Vec<String> = items
        .iter()
        .take(3)
        .map(|(who, why)| format!("{who}: {why}"))
        .collect();
    if items.len() > 3 {
        out.push(format!("and {} more", items.len() - 3));
    }
    out.join("; ")
}

impl Deliveries {
    /// No state yet.
    pub fn new(hub: Hub, config: Config) -> Self {
        Self {
            hub,
            config,
            slots: HashMap::new(),
            ready: HashSet::new(),
            revoked: HashSet::new(),
            reconcile_handled: HashMap::new(),
            last_seen: HashMap::new(),
            render_options: flotilla_render::Options::default(),
            notifier: None,
        }
    }

    /// Sends failure and recovery notifications through `notifier`.
    pub fn set_notifier(&mut self, notifier: crate::notify::Notifier) {
        self.notifier = Some(notifier);
    }

    /// The delivery side this controller publishes through.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Closes the streams of clusters that were revoked or removed since the last pass.
    pub async fn revoke_gone(&mut self, clusters: &[Arc<Cluster>], registry: &KubeRegistry) {
        let present: HashMap<String, ClusterState> = clusters
            .iter()
            .map(|c| (c.name_any(), cluster_state(c)))
            .collect();
        for (name, state) in &present {
            if *state == ClusterState::Revoked && self.revoked.insert(name.clone()) {
                info!(cluster = %name, "cluster revoked: closing its stream");
                registry.announce_revoked(name);
            }
            if *state != ClusterState::Revoked {
                self.revoked.remove(name);
            }
        }
        // Removed clusters: whatever was connected goes.
        let connected: Vec<String> = self
            .slots
            .keys()
            .map(|(_, c)| c.clone())
            .filter(|c| !present.contains_key(c))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for name in connected {
            if registry.state(&name).await.is_none() && self.hub.is_connected(&name) {
                info!(cluster = %name, "cluster removed: closing its stream");
                registry.announce_revoked(&name);
            }
        }
    }

    /// Renders waiting to be published (held back by `dependsOn` or the rollout), over every
    /// delivery and cluster.
    pub fn queued(&self) -> usize {
        self.slots
            .values()
            .filter(|s| s.candidate.is_some())
            .count()
    }

    /// Renders, gates and publishes every delivery for every targeted cluster, and computes
    /// the status of every delivery and cluster.
    pub async fn reconcile(
        &mut self,
        deliveries: &[Arc<Delivery>],
        helm_releases: &[Arc<HelmRelease>],
        builds: &HashMap<String, BuildResult>,
        clusters: &[Arc<Cluster>],
        sources: &Sources,
    ) -> Outcome {
        let mut sorted: Vec<&Arc<Delivery>> = deliveries.iter().collect();
        sorted.sort_by_key(|d| key(&d.namespace().unwrap_or_default(), &d.name_any()));
        let mut clusters_sorted: Vec<&Arc<Cluster>> = clusters.iter().collect();
        clusters_sorted.sort_by_key(|c| c.name_any());

        let mut outcome = Outcome::default();
        let mut per_cluster: HashMap<String, Vec<ClusterDeliveryStatus>> = HashMap::new();
        let mut ready = HashSet::new();
        let mut live: HashSet<(DeliveryKey, String)> = HashSet::new();
        // The wire name of a delivery is its name; two deliveries with one name on one cluster
        // would overwrite each other's objects.
        let mut wire_names: HashMap<(String, String), DeliveryKey> = HashMap::new();

        for d in sorted {
            let status = self
                .reconcile_one(
                    d,
                    Kind::Delivery,
                    &clusters_sorted,
                    sources,
                    &mut per_cluster,
                    &mut ready,
                    &mut live,
                    &mut wire_names,
                )
                .await;
            outcome.deliveries.push((d.clone(), status));
        }
        let mut releases: Vec<&Arc<HelmRelease>> = helm_releases.iter().collect();
        releases.sort_by_key(|r| key(&r.namespace().unwrap_or_default(), &r.name_any()));
        let waiting = Err(NotBuilt::Waiting("not looked at yet".into()));
        for hr in releases {
            let build = builds
                .get(&key(&hr.namespace().unwrap_or_default(), &hr.name_any()))
                .unwrap_or(&waiting);
            let d = Arc::new(helm_as_delivery(hr));
            let status = self
                .reconcile_one(
                    &d,
                    Kind::Helm(build),
                    &clusters_sorted,
                    sources,
                    &mut per_cluster,
                    &mut ready,
                    &mut live,
                    &mut wire_names,
                )
                .await;
            outcome
                .helm_releases
                .push((hr.clone(), helm_status(hr, build, status)));
        }
        self.ready = ready;
        self.slots.retain(|k, _| live.contains(k));

        for c in clusters_sorted {
            let status =
                self.cluster_status(c, per_cluster.remove(&c.name_any()).unwrap_or_default());
            outcome.clusters.push((c.clone(), status));
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn reconcile_one(
        &mut self,
        d: &Arc<Delivery>,
        kind: Kind<'_>,
        clusters: &[&Arc<Cluster>],
        sources: &Sources,
        per_cluster: &mut HashMap<String, Vec<ClusterDeliveryStatus>>,
        ready: &mut HashSet<(DeliveryKey, String)>,
        live: &mut HashSet<(DeliveryKey, String)>,
        wire_names: &mut HashMap<(String, String), DeliveryKey>,
    ) -> DeliveryStatus {
        let ns = d.namespace().unwrap_or_default();
        let name = d.name_any();
        let dkey = kind.key(&ns, &name);
        let generation = d.metadata.generation;
        let previous = d.status.clone().unwrap_or_default();
        let prev = previous.conditions.clone();
        let mut status = DeliveryStatus {
            observed_generation: generation,
            last_handled_reconcile_at: previous.last_handled_reconcile_at.clone(),
            ..Default::default()
        };

        let stalled = |message: String, status: &mut DeliveryStatus| {
            status.conditions = vec![
                condition(
                    &prev,
                    "Ready",
                    false,
                    reason::INVALID_SPEC,
                    &message,
                    generation,
                ),
                condition(
                    &prev,
                    "Stalled",
                    true,
                    reason::INVALID_SPEC,
                    &message,
                    generation,
                ),
            ];
        };
        let (options, limits) = match (
            delivery_options(d),
            limits(d),
            validate_selector(&d.spec.cluster_selector),
        ) {
            (Ok(o), Ok(l), Ok(())) => (o, l),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                stalled(e, &mut status);
                return status;
            }
        };
        if let Some(r) = &d.spec.rollout {
            if let Err(e) = max_unavailable(r.max_unavailable.as_deref(), 1) {
                stalled(e, &mut status);
                return status;
            }
            if let Some(e) = r
                .partitions
                .iter()
                .find_map(|p| validate_selector(&p.cluster_selector).err())
            {
                stalled(format!("spec.rollout.partitions: {e}"), &mut status);
                return status;
            }
        }

        let wire_options: crate::delivery::DeliveryOptions =
            match serde_json::from_value(options.clone()) {
                Ok(o) => o,
                Err(e) => {
                    stalled(format!("delivery options: {e}"), &mut status);
                    return status;
                }
            };
        let source_key = sources::key(&ns, &d.spec.source_ref.name);
        // What to render from; a reason it cannot be had that clusters should show; why there
        // is nothing yet.
        let (snapshot, origin_failure, missing) = match kind {
            Kind::Delivery => {
                let missing = if sources.urls().iter().any(|(k, _)| *k == source_key) {
                    format!("GitSource {source_key} has no revision yet")
                } else {
                    format!("GitSource {source_key} does not exist or cannot start")
                };
                (
                    sources.snapshot(&source_key).map(Origin::Git),
                    None,
                    missing,
                )
            }
            Kind::Helm(Ok(b)) => (Some(Origin::Helm(b.clone())), None, String::new()),
            Kind::Helm(Err(NotBuilt::Invalid(e))) => {
                stalled(e.clone(), &mut status);
                return status;
            }
            Kind::Helm(Err(NotBuilt::Failed(e))) => (None, Some(e.clone()), e.clone()),
            Kind::Helm(Err(NotBuilt::Waiting(e))) => (None, None, e.clone()),
        };
        if let Some(s) = &snapshot {
            status.revision = Some(s.revision());
            status.short_revision = Some(short_revision(&s.revision()));
        }

        // Reconcile request: render again and tell the agents to re-apply.
        let requested = d.annotations().get(RECONCILE_ANNOTATION).cloned();
        let reconcile_now = requested.is_some()
            && requested.as_ref() != self.reconcile_handled.get(&dkey)
            && requested != previous.last_handled_reconcile_at;
        if let Some(r) = &requested {
            self.reconcile_handled.insert(dkey.clone(), r.clone());
            status.last_handled_reconcile_at = Some(r.clone());
        }

        let targets: Vec<&Arc<Cluster>> =
            clusters.iter().copied().filter(|c| targets(d, c)).collect();

        // Seed slots from status after a restart.
        for c in &targets {
            let cname = c.name_any();
            live.insert((dkey.clone(), cname.clone()));
            let slot = self.slots.entry((dkey.clone(), cname.clone())).or_default();
            if slot.published.is_none()
                && let Some(s) = previous.clusters.iter().find(|s| s.name == cname)
                && let (Some(digest), Some(revision)) = (&s.digest, &s.revision)
                && s.sequence > 0
            {
                slot.published = Some(Published {
                    sequence: s.sequence,
                    revision: revision.clone(),
                    effective_revision: revision.clone(),
                    digest: digest.clone(),
                    at: Instant::now(),
                    restored: true,
                });
            }
        }

        // Phase 1: render what changed.
        for c in &targets {
            let cname = c.name_any();
            if cluster_state(c) != ClusterState::Accepted {
                continue;
            }
            let slot_key = (dkey.clone(), cname.clone());
            if let Some(other) = wire_names.get(&(cname.clone(), name.clone()))
                && *other != dkey
            {
                let slot = self.slots.get_mut(&slot_key).expect("seeded above");
                slot.build_error = Some(format!(
                    "delivery {other} already delivers a delivery named {name} to cluster {cname}; \
                     names must be unique per cluster"
                ));
                slot.candidate = None;
                continue;
            }
            wire_names.insert((cname.clone(), name.clone()), dkey.clone());
            if d.spec.suspend {
                continue;
            }
            let slot = self.slots.get_mut(&slot_key).expect("seeded above");
            if let Some(e) = &origin_failure {
                slot.build_error = Some(e.clone());
                slot.candidate = None;
                slot.input = None;
                continue;
            }
            let Some(snapshot) = &snapshot else { continue };
            let (path, vars) = render_input(d, c);
            let input = {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                snapshot.fingerprint().hash(&mut h);
                format!("{path:?}").hash(&mut h);
                vars.hash(&mut h);
                options.to_string().hash(&mut h);
                generation.hash(&mut h);
                h.finish()
            };
            let since = slot.rendered_at.map(|t| t.elapsed());
            let due = slot.input != Some(input)
                || reconcile_now
                || since.is_none_or(|s| s >= limits.interval)
                || (slot.build_error.is_some() && since.is_none_or(|s| s >= limits.retry));
            if !due {
                continue;
            }
            slot.input = Some(input);
            slot.rendered_at = Some(Instant::now());
            let path = match path {
                Ok(p) => p,
                Err(e) => {
                    slot.build_error = Some(e);
                    slot.candidate = None;
                    continue;
                }
            };
            let render_started = Instant::now();
            let span = flotilla_telemetry::span!(
                "render",
                delivery = %dkey,
                cluster = %cname,
                revision = tracing::field::Empty,
                objects = tracing::field::Empty,
                outcome = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            if !span.is_none() {
                span.record("revision", snapshot.revision().as_str());
                if let Origin::Git(s) = snapshot
                    && let Some(tp) = s.traceparent()
                {
                    flotilla_telemetry::set_parent(&span, tp);
                }
            }
            let rendered = match snapshot {
                Origin::Git(s) => {
                    render(s.clone(), path.clone(), vars, self.render_options.clone())
                        .instrument(span.clone())
                        .await
                }
                Origin::Helm(b) => b.render(&vars).instrument(span.clone()).await,
            };
            match &rendered {
                Ok(objects) => {
                    span.record("objects", objects.len());
                    span.record("outcome", "rendered");
                }
                Err(_) => {
                    span.record("outcome", "failed");
                    span.record("otel.status_code", "ERROR");
                }
            }
            let traceparent = flotilla_telemetry::traceparent(&span);
            drop(span);
            self.hub
                .metrics()
                .observe_render(&dkey, render_started.elapsed());
            match rendered {
                Ok(objects) if objects.is_empty() && matches!(snapshot, Origin::Helm(_)) => {
                    slot.build_error = Some(format!(
                        "chart {} renders no objects for this cluster; nothing was sent",
                        short_revision(&snapshot.revision())
                    ));
                    slot.candidate = None;
                }
                Ok(objects) if objects.is_empty() && !d.spec.allow_empty => {
                    slot.build_error = Some(format!(
                        "{path} renders no objects at {}; nothing was sent (set spec.allowEmpty \
                         to deliver an empty set and prune everything)",
                        short_revision(&snapshot.revision())
                    ));
                    slot.candidate = None;
                }
                Ok(objects) => {
                    let digest = render_digest(&objects, &options);
                    slot.build_error = None;
                    slot.candidate = Some(Candidate {
                        revision: snapshot.revision(),
                        objects: Arc::new(objects),
                        digest,
                        traceparent,
                    });
                }
                Err(e) => {
                    warn!(delivery = %dkey, cluster = %cname, error = %e, "render failed");
                    slot.build_error = Some(match snapshot {
                        Origin::Git(_) => {
                            format!("{e} (at {})", short_revision(&snapshot.revision()))
                        }
                        // A Helm error already names the chart and version.
                        Origin::Helm(_) => e,
                    });
                    slot.candidate = None;
                }
            }
        }

        // Phase 2: candidates identical to what a cluster already has need no new bundle.
        for c in &targets {
            let cname = c.name_any();
            let Some(slot) = self.slots.get_mut(&(dkey.clone(), cname.clone())) else {
                continue;
            };
            let same = match (&slot.candidate, &slot.published) {
                (Some(cand), Some(p)) => cand.digest == p.digest,
                _ => false,
            };
            if !same {
                continue;
            }
            let cand = slot.candidate.take().expect("checked");
            let p = slot.published.as_mut().expect("checked");
            if p.restored {
                // After a restart: hold the bundle again under the sequence the agent has.
                let payload = crate::bundle::encode_with_options(&cand.objects, &wire_options);
                match self
                    .hub
                    .restore_encoded(&cname, &name, &p.revision, payload, p.sequence)
                {
                    Ok(()) => p.restored = false,
                    Err(e) => {
                        warn!(delivery = %dkey, cluster = %cname, error = %e, "restoring a bundle")
                    }
                }
            }
            p.effective_revision = cand.revision;
            if reconcile_now {
                self.hub.reconcile_now(&cname, &name);
            }
        }

        // Phase 3: gates (dependsOn, rollout), then publish.
        let views: HashMap<String, View> = targets
            .iter()
            .map(|c| {
                let cname = c.name_any();
                let v = self.observe(c, &name, &dkey, &limits);
                (cname, v)
            })
            .collect();
        let allowed = self.rollout_allowance(d, &dkey, &targets, &views, snapshot.as_ref());
        for c in &targets {
            let cname = c.name_any();
            let Some(slot) = self.slots.get_mut(&(dkey.clone(), cname.clone())) else {
                continue;
            };
            slot.blocked = None;
            let Some(cand) = slot.candidate.clone() else {
                continue;
            };
            let waiting: Vec<String> = d
                .spec
                .depends_on
                .iter()
                .filter(|dep| {
                    !self
                        .ready
                        .contains(&(kind.key(&ns, &dep.name), cname.clone()))
                })
                .map(|dep| dep.name.clone())
                .collect();
            if !waiting.is_empty() {
                slot.blocked = Some((
                    reason::DEPENDENCY_NOT_READY,
                    format!(
                        "waiting for {} to be ready on this cluster before sending {}",
                        waiting.join(", "),
                        short_revision(&cand.revision)
                    ),
                ));
                continue;
            }
            if let Some(why) = allowed.get(&cname).and_then(|a| a.clone()) {
                slot.blocked = Some(why);
                continue;
            }
            let span = flotilla_telemetry::span!(
                "publish",
                delivery = %dkey,
                cluster = %cname,
                revision = %cand.revision,
                objects = cand.objects.len(),
                sequence = tracing::field::Empty,
                outcome = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            if let Some(tp) = &cand.traceparent {
                flotilla_telemetry::set_parent(&span, tp);
            }
            // The hub puts this span's trace context in the bundle for the agent's apply.
            let published = span.in_scope(|| {
                self.hub.publish_with_options(
                    &cname,
                    &name,
                    &cand.revision,
                    &cand.objects,
                    &wire_options,
                )
            });
            match &published {
                Ok(sequence) => {
                    span.record("sequence", sequence);
                    span.record("outcome", "published");
                }
                Err(_) => {
                    span.record("outcome", "failed");
                    span.record("otel.status_code", "ERROR");
                }
            }
            drop(span);
            match published {
                Ok(sequence) => {
                    info!(delivery = %dkey, cluster = %cname, revision = %cand.revision, sequence, objects = cand.objects.len(), "published");
                    slot.published = Some(Published {
                        sequence,
                        revision: cand.revision.clone(),
                        effective_revision: cand.revision,
                        digest: cand.digest,
                        at: Instant::now(),
                        restored: false,
                    });
                    slot.candidate = None;
                }
                Err(e) => {
                    slot.build_error = Some(format!("publishing: {e}"));
                }
            }
        }

        // Phase 4: status.
        let mut entries = Vec::new();
        let mut n_ready = 0;
        for c in &targets {
            let cname = c.name_any();
            let view = self.observe(c, &name, &dkey, &limits);
            let slot = self.slots.get(&(dkey.clone(), cname.clone()));
            let published = slot.and_then(|s| s.published.as_ref());
            if view.ready {
                n_ready += 1;
                ready.insert((dkey.clone(), cname.clone()));
            }
            // Only settled states are news: ready (a recovery, if it failed before) or a
            // failure; work under way is neither.
            if let Some(n) = &self.notifier
                && (view.ready || is_failure(view.reason) || view.reason == reason::DRIFT_DETECTED)
            {
                n.observe(crate::notify::Observation {
                    cluster: cname.clone(),
                    delivery: dkey.clone(),
                    revision: snapshot
                        .as_ref()
                        .map(Origin::revision)
                        .or_else(|| published.map(|p| p.effective_revision.clone()))
                        .unwrap_or_default(),
                    ready: view.ready,
                    reason: view.reason.to_owned(),
                    message: view.message.clone(),
                });
            }
            let partition = d.spec.rollout.as_ref().and_then(|r| {
                r.partitions
                    .iter()
                    .find(|p| selector_matches(&p.cluster_selector, c.labels()))
                    .map(|p| p.name.clone())
            });
            let applied = published
                .filter(|_| view.objects > 0 || view.ready || view.reason == reason::DRIFT_DETECTED)
                .map(|p| p.effective_revision.clone());
            entries.push(DeliveryClusterStatus {
                name: cname.clone(),
                revision: published.map(|p| p.effective_revision.clone()),
                sequence: published.map(|p| p.sequence).unwrap_or(0),
                digest: published.map(|p| p.digest.clone()),
                ready: view.ready,
                health: view.health.clone(),
                drifted: view.drifted,
                reason: view.reason.to_owned(),
                message: view.message.clone(),
                partition,
            });
            per_cluster
                .entry(cname)
                .or_default()
                .push(ClusterDeliveryStatus {
                    name: name.clone(),
                    revision: applied,
                    desired_revision: snapshot.as_ref().map(Origin::revision),
                    sequence: published.map(|p| p.sequence).unwrap_or(0),
                    ready: view.ready,
                    health: view.health,
                    drifted: view.drifted,
                    objects: view.objects,
                    reason: view.reason.to_owned(),
                    message: view.message,
                });
        }
        let total = targets.len();
        status.summary = Some(format!("{n_ready}/{total}"));
        status.conditions =
            self.delivery_conditions(d, &prev, &entries, snapshot.is_some(), missing);
        status.clusters = entries;
        status
    }

    fn delivery_conditions(
        &self,
        d: &Delivery,
        prev: &[crate::api::Condition],
        entries: &[DeliveryClusterStatus],
        has_snapshot: bool,
        why: String,
    ) -> Vec<crate::api::Condition> {
        let generation = d.metadata.generation;
        if !has_snapshot
            && entries.iter().all(|e| e.sequence == 0)
            && entries.iter().all(|e| e.reason != reason::BUILD_FAILED)
        {
            return vec![condition(
                prev,
                "Ready",
                false,
                reason::SOURCE_NOT_READY,
                why,
                generation,
            )];
        }
        if entries.is_empty() {
            return vec![condition(
                prev,
                "Ready",
                false,
                reason::NO_CLUSTERS,
                "no accepted cluster matches spec.clusterSelector",
                generation,
            )];
        }
        if entries.iter().all(|e| e.ready) {
            let rev = entries
                .first()
                .and_then(|e| e.revision.clone())
                .unwrap_or_default();
            let mut conds = vec![condition(
                prev,
                "Ready",
                true,
                reason::SUCCEEDED,
                format!(
                    "{} applied and healthy on {} cluster(s)",
                    short_revision(&rev),
                    entries.len()
                ),
                generation,
            )];
            if d.spec.suspend {
                conds[0]
                    .message
                    .push_str("; suspended: new revisions are held back");
            }
            return conds;
        }
        let worst = entries
            .iter()
            .filter(|e| !e.ready)
            .map(|e| e.reason.as_str())
            .min_by_key(|r| severity(r))
            .unwrap_or(reason::PROGRESSING)
            .to_owned();
        let message = summarise(
            entries
                .iter()
                .filter(|e| e.reason == worst)
                .map(|e| (e.name.as_str(), e.message.as_str())),
        );
        let mut conds = vec![condition(
            prev, "Ready", false, &worst, &message, generation,
        )];
        if matches!(
            worst.as_str(),
            reason::PROGRESSING | reason::ROLLOUT_WAITING | reason::DEPENDENCY_NOT_READY
        ) {
            conds.push(condition(
                prev,
                "Reconciling",
                true,
                &worst,
                &message,
                generation,
            ));
        }
        if is_failure(&worst) || worst == reason::ROLLOUT_PAUSED {
            conds.push(condition(
                prev, "Stalled", true, &worst, &message, generation,
            ));
        }
        conds
    }

    /// Which clusters may get their candidate now (`None`) and why others wait.
    fn rollout_allowance(
        &self,
        d: &Delivery,
        dkey: &str,
        targets: &[&Arc<Cluster>],
        views: &HashMap<String, View>,
        snapshot: Option<&Origin>,
    ) -> HashMap<String, Option<(&'static str, String)>> {
        let mut out = HashMap::new();
        let Some(rollout) = &d.spec.rollout else {
            return out;
        };
        let desired = snapshot.map(Origin::revision).unwrap_or_default();
        let partition_of = |c: &Cluster| {
            rollout
                .partitions
                .iter()
                .position(|p| selector_matches(&p.cluster_selector, c.labels()))
                .unwrap_or(rollout.partitions.len())
        };
        let mut ordered: Vec<(usize, &Arc<Cluster>)> =
            targets.iter().map(|c| (partition_of(c), *c)).collect();
        ordered.sort_by_key(|(p, c)| (*p, c.name_any()));
        let slot = |c: &str| self.slots.get(&(dkey.to_owned(), c.to_owned()));
        let up_to_date = |c: &str| {
            views.get(c).is_some_and(|v| v.ready)
                && slot(c).is_some_and(|s| {
                    s.candidate.is_none()
                        && s.published
                            .as_ref()
                            .is_some_and(|p| p.effective_revision == desired)
                })
        };
        let failed_current: Vec<&str> = ordered
            .iter()
            .map(|(_, c)| c.name_any())
            .filter(|c| {
                views.get(c.as_str()).is_some_and(|v| v.failed)
                    && slot(c).is_some_and(|s| {
                        s.published.as_ref().is_some_and(|p| p.revision == desired)
                    })
            })
            .map(|c| {
                targets
                    .iter()
                    .find(|t| t.name_any() == c)
                    .map(|t| t.metadata.name.as_deref().unwrap_or_default())
                    .unwrap_or_default()
            })
            .collect();
        let paused = rollout.pause_on_failure && !failed_current.is_empty();
        let current = ordered
            .iter()
            .find(|(_, c)| !up_to_date(&c.name_any()))
            .map(|(p, _)| *p)
            .unwrap_or(usize::MAX);
        let in_flight = ordered
            .iter()
            .filter(|(_, c)| {
                let n = c.name_any();
                slot(&n).is_some_and(|s| s.published.is_some())
                    && !views.get(&n).is_some_and(|v| v.ready)
            })
            .count();
        let max = max_unavailable(rollout.max_unavailable.as_deref(), targets.len()).unwrap_or(1);
        let mut budget = max.saturating_sub(in_flight);
        for (p, c) in ordered {
            let n = c.name_any();
            if slot(&n).is_none_or(|s| s.candidate.is_none()) {
                continue;
            }
            let partition_name = rollout
                .partitions
                .get(p)
                .map(|x| x.name.clone())
                .unwrap_or_else(|| "the remaining clusters".into());
            let verdict = if paused {
                Some((
                    reason::ROLLOUT_PAUSED,
                    format!(
                        "rollout of {} paused: it failed on {}",
                        short_revision(&desired),
                        failed_current.join(", ")
                    ),
                ))
            } else if p > current {
                Some((
                    reason::ROLLOUT_WAITING,
                    format!("waiting for earlier partitions before {partition_name}"),
                ))
            } else if budget == 0 {
                Some((
                    reason::ROLLOUT_WAITING,
                    format!("waiting: {max} cluster(s) already updating (maxUnavailable)"),
                ))
            } else {
                // A cluster already updating (in flight) takes a new revision without using budget.
                let counted = slot(&n).is_none_or(|s| s.published.is_none())
                    || views.get(&n).is_some_and(|v| v.ready);
                if counted {
                    budget -= 1;
                }
                None
            };
            out.insert(n, verdict);
        }
        out
    }

    /// How (delivery, cluster) stands, from the hub's acks and the agent's reports.
    fn observe(&self, c: &Cluster, name: &str, dkey: &str, limits: &Limits) -> View {
        let cname = c.name_any();
        let slot = self.slots.get(&(dkey.to_owned(), cname.clone()));
        let mut v = View {
            health: "Unknown".into(),
            ..Default::default()
        };
        match cluster_state(c) {
            ClusterState::Pending => {
                v.reason = reason::PENDING_ACCEPTANCE;
                v.message = format!(
                    "cluster {cname} is not accepted yet (flotilla cluster accept {cname})"
                );
                return v;
            }
            ClusterState::Revoked => {
                v.reason = reason::REVOKED;
                v.message = format!("cluster {cname} is revoked");
                return v;
            }
            ClusterState::Accepted => {}
        }
        let Some(slot) = slot else {
            v.reason = reason::PROGRESSING;
            v.message = "waiting for the first render".into();
            return v;
        };
        match &slot.published {
            None => {
                if let Some(e) = &slot.build_error {
                    v.reason = reason::BUILD_FAILED;
                    v.failed = true;
                    v.message = e.clone();
                } else if let Some((r, m)) = &slot.blocked {
                    v.reason = r;
                    v.message = m.clone();
                } else {
                    v.reason = reason::SOURCE_NOT_READY;
                    v.message = "waiting for a revision of the source".into();
                    if slot.candidate.is_some() || slot.rendered_at.is_some() {
                        v.reason = reason::PROGRESSING;
                        v.message = "rendered; sending".into();
                    }
                }
                return v;
            }
            Some(p) => self.observe_published(&cname, name, p, limits, &mut v),
        }
        // A newer revision that cannot be built or sent explains more than the old one's health.
        if let Some(e) = &slot.build_error {
            let keeps = slot
                .published
                .as_ref()
                .map(|p| {
                    format!(
                        "; the cluster keeps {}",
                        short_revision(&p.effective_revision)
                    )
                })
                .unwrap_or_default();
            v.ready = false;
            v.failed = true;
            v.reason = reason::BUILD_FAILED;
            v.message = format!("{e}{keeps}");
        } else if let Some((r, m)) = &slot.blocked {
            v.ready = false;
            v.reason = r;
            v.message = m.clone();
        }
        v
    }

    fn observe_published(
        &self,
        cname: &str,
        name: &str,
        p: &Published,
        limits: &Limits,
        v: &mut View,
    ) {
        let overdue = p.at.elapsed() >= limits.timeout;
        let connected = self.hub.is_connected(cname);
        let mut ack = self.hub.ack(cname, name);
        // A restarted hub has no acks of bundles the agents applied before: an agent's report
        // for the same sequence (sent at every reconnection) says it holds and applied it.
        if ack.as_ref().is_none_or(|a| a.sequence != p.sequence)
            && super::observed::report_for(&self.hub, cname, name)
                .is_some_and(|r| r.sequence == p.sequence)
        {
            ack = Some(crate::delivery::AckRecord {
                sequence: p.sequence,
                outcome: AckOutcome::Applied,
                message: String::new(),
                objects: Vec::new(),
                object_count: 0,
            });
        }
        match ack {
            Some(a) if a.sequence == p.sequence => match a.outcome {
                AckOutcome::Applied => {
                    v.objects = a.object_count;
                    let report = super::observed::report_for(&self.hub, cname, name)
                        .filter(|r| r.sequence == p.sequence);
                    match report {
                        None => {
                            v.ready = true;
                            v.health = "Healthy".into();
                            v.reason = reason::SUCCEEDED;
                            v.message =
                                format!("applied {}", short_revision(&p.effective_revision));
                        }
                        Some(r) => {
                            v.health = r.health.clone();
                            v.drifted = r.drifted_objects;
                            v.objects = r.inventory_objects.max(v.objects);
                            match r.health.as_str() {
                                "Healthy" if r.drifted_objects == 0 => {
                                    v.ready = true;
                                    v.reason = reason::SUCCEEDED;
                                    v.message = format!(
                                        "{} applied, {} objects healthy",
                                        short_revision(&p.effective_revision),
                                        v.objects
                                    );
                                }
                                "Healthy" => {
                                    v.reason = reason::DRIFT_DETECTED;
                                    v.message = if r.message.is_empty() {
                                        format!("{} object(s) drifted", r.drifted_objects)
                                    } else {
                                        r.message.clone()
                                    };
                                }
                                "Degraded" => {
                                    v.failed = true;
                                    v.reason = reason::HEALTH_CHECK_FAILED;
                                    v.message = r.message.clone();
                                }
                                _ if overdue => {
                                    v.failed = true;
                                    v.reason = reason::HEALTH_CHECK_FAILED;
                                    v.message = format!(
                                        "not ready after {}s: {}",
                                        limits.timeout.as_secs(),
                                        r.message
                                    );
                                }
                                _ => {
                                    v.reason = reason::PROGRESSING;
                                    v.message = format!("waiting for readiness: {}", r.message);
                                }
                            }
                        }
                    }
                }
                AckOutcome::Failed => {
                    v.failed = true;
                    v.reason = reason::APPLY_FAILED;
                    let failed: Vec<&str> = a
                        .objects
                        .iter()
                        .filter(|(_, ok)| !ok)
                        .map(|(id, _)| id.as_str())
                        .collect();
                    v.message = if failed.is_empty() {
                        a.message.clone()
                    } else {
                        format!("{} (failed: {})", a.message, failed.join(", "))
                    };
                }
                AckOutcome::Rejected => {
                    v.failed = true;
                    v.reason = reason::BUNDLE_REJECTED;
                    v.message = format!("the agent refused the bundle: {}", a.message);
                }
            },
            _ if !connected => {
                v.reason = reason::DISCONNECTED;
                v.message = format!(
                    "agent not connected; {} (sequence {}) waits for it",
                    short_revision(&p.revision),
                    p.sequence
                );
            }
            _ if overdue => {
                v.failed = true;
                v.reason = reason::HEALTH_CHECK_FAILED;
                v.message = format!(
                    "sequence {} not acknowledged within {}s",
                    p.sequence,
                    limits.timeout.as_secs()
                );
            }
            _ => {
                v.reason = reason::PROGRESSING;
                v.message = format!(
                    "sent {} (sequence {}), waiting for the agent",
                    short_revision(&p.revision),
                    p.sequence
                );
            }
        }
    }

    fn cluster_status(
        &mut self,
        c: &Cluster,
        deliveries: Vec<ClusterDeliveryStatus>,
    ) -> ClusterStatus {
        let name = c.name_any();
        let previous = c.status.clone().unwrap_or_default();
        let prev = &previous.conditions;
        let generation = c.metadata.generation;
        let connected = self.hub.is_connected(&name);
        let info = super::observed::agent_info_for(&self.hub, &name);
        // lastSeen moves only at a coarse grain while connected, so it does not cause a write
        // per heartbeat.
        let last_seen = match (&info, connected) {
            (Some(i), _) if i.last_seen.is_some() => i.last_seen.map(rfc3339),
            (_, true) => {
                let now = SystemTime::now();
                let keep = previous
                    .last_seen
                    .as_ref()
                    .filter(|s| seen_within(s, now, self.config.last_seen_granularity));
                Some(keep.cloned().unwrap_or_else(|| rfc3339(now)))
            }
            _ => previous.last_seen.clone(),
        };
        let last_seen = match (last_seen, self.last_seen.get(&name)) {
            (Some(new), Some(old))
                if seen_within(
                    old,
                    parse_rfc3339(&new).unwrap_or(SystemTime::now()),
                    self.config.last_seen_granularity,
                ) =>
            {
                Some(old.clone())
            }
            (new, _) => new,
        };
        if let Some(s) = &last_seen {
            self.last_seen.insert(name.clone(), s.clone());
        }
        let mut revisions: Vec<String> = deliveries
            .iter()
            .filter_map(|d| d.revision.as_deref().map(short_revision))
            .collect();
        revisions.sort();
        revisions.dedup();
        let n_ready = deliveries.iter().filter(|d| d.ready).count();
        let drifted = deliveries.iter().map(|d| d.drifted).sum();
        let (ok, why, message) = match cluster_state(c) {
            ClusterState::Revoked => (
                false,
                reason::REVOKED,
                "revoked: its agent may not connect".to_owned(),
            ),
            ClusterState::Pending => (
                false,
                reason::PENDING_ACCEPTANCE,
                format!("waiting to be accepted: flotilla cluster accept {name}"),
            ),
            ClusterState::Accepted if !connected => (
                false,
                reason::DISCONNECTED,
                match &last_seen {
                    Some(t) => format!("agent not connected; last seen {t}"),
                    None => "agent has not connected yet".to_owned(),
                },
            ),
            ClusterState::Accepted => {
                let worst = deliveries
                    .iter()
                    .filter(|d| !d.ready)
                    .min_by_key(|d| severity(&d.reason));
                match worst {
                    None => (
                        true,
                        reason::SUCCEEDED,
                        format!("{} deliveries applied and healthy", deliveries.len()),
                    ),
                    Some(w) => {
                        let r = REASON_ORDER
                            .iter()
                            .find(|r| **r == w.reason)
                            .copied()
                            .unwrap_or(reason::PROGRESSING);
                        (
                            false,
                            r,
                            summarise(
                                deliveries
                                    .iter()
                                    .filter(|d| d.reason == w.reason)
                                    .map(|d| (d.name.as_str(), d.message.as_str())),
                            ),
                        )
                    }
                }
            }
        };
        ClusterStatus {
            conditions: vec![condition(prev, "Ready", ok, why, message, generation)],
            connected,
            agent_version: info
                .as_ref()
                .and_then(|i| i.agent_version.clone())
                .or(previous.agent_version.clone()),
            last_seen,
            revision: (!revisions.is_empty()).then(|| revisions.join(",")),
            summary: Some(format!("{n_ready}/{}", deliveries.len())),
            drifted,
            deliveries,
        }
    }
}

fn seen_within(old: &str, now: SystemTime, grain: Duration) -> bool {
    parse_rfc3339(old)
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|d| d < grain)
}

async fn render(
    snapshot: Snapshot,
    path: String,
    vars: BTreeMap<String, String>,
    options: flotilla_render::Options,
) -> Result<Vec<Value>, String> {
    tokio::task::spawn_blocking(move || render_tree(&snapshot, &path, &vars, &options))
        .await
        .map_err(|e| format!("render task failed: {e}"))?
}

// What follows is how the hub turns (delivery, cluster, tree) into objects; `flotilla diff`
// calls the same functions so that its preview is what the hub would send.

/// Whether `delivery` targets `cluster`: its selector matches and the cluster is not revoked.
pub fn targets(delivery: &Delivery, cluster: &Cluster) -> bool {
    cluster_state(cluster) != ClusterState::Revoked
        && selector_matches(&delivery.spec.cluster_selector, cluster.labels())
}

/// The directory (its `${cluster.*}` references expanded, or why that failed) and the
/// post-build variables the hub renders `delivery` with for `cluster`.
pub fn render_input(
    delivery: &Delivery,
    cluster: &Cluster,
) -> (Result<String, String>, BTreeMap<String, String>) {
    let name = cluster.name_any();
    let path = expand_path(&delivery.spec.path, &name, cluster.labels());
    let vars = cluster_variables(
        &name,
        cluster.labels(),
        &delivery.spec.variables,
        &cluster.spec.variables,
    );
    (path, vars)
}

/// Renders `path` of `tree` with `vars` as the hub does; the error names file and line.
pub fn render_tree(
    tree: &dyn flotilla_render::Tree,
    path: &str,
    vars: &BTreeMap<String, String>,
    options: &flotilla_render::Options,
) -> Result<Vec<Value>, String> {
    let rel = flotilla_render::RelPath::new(path).map_err(|e| format!("{e}"))?;
    flotilla_render::render(tree, &rel, vars, options).map_err(|e| super::util::error_chain(&e))
}

/// The digest the hub records in a delivery's per-cluster status (`digest`) for a render:
/// the canonical objects and the delivery's apply options. `flotilla diff` compares it with
/// status to prove its baseline is what the cluster was sent.
pub fn bundle_digest(delivery: &Delivery, objects: &[Value]) -> Result<String, String> {
    Ok(render_digest(objects, &delivery_options(delivery)?))
}
