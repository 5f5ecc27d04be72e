//! The dashboard's JSON documents, computed from the hub's caches: pure functions of the
//! resources (and of what agents told the hub), so they are tested without a cluster.
//!
//! Nothing here copies a Secret, a token, a cluster's variables or the credentials of a Git
//! URL: only names, labels, revisions and the status the hub itself wrote.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kube::ResourceExt as _;
use serde::Serialize;

use crate::api::{
    Cluster, ClusterDeliveryStatus, Condition, Delivery, DeliveryClusterStatus, GitSource,
    LabelSelector, reason,
};
use crate::controller::util::{selector_matches, short_revision};
use crate::delivery::{AckOutcome, AckRecord, ReportRecord};

/// The state a grid cell shows, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum CellState {
    /// The build, apply or health check failed, or the objects are degraded.
    Failed,
    /// Objects were changed behind flotilla's back.
    Drifted,
    /// Work is under way, or held back (rollout, `dependsOn`, suspend).
    Progressing,
    /// The hub does not know (agent disconnected, cluster not accepted, no report yet).
    Unknown,
    /// Applied, healthy and not drifted at the newest revision.
    Synced,
}

impl CellState {
    /// Every state, in the order the legend lists them.
    pub const ALL: [CellState; 5] = [
        CellState::Synced,
        CellState::Progressing,
        CellState::Drifted,
        CellState::Failed,
        CellState::Unknown,
    ];

    /// The state's name, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CellState::Failed => "failed",
            CellState::Drifted => "drifted",
            CellState::Progressing => "progressing",
            CellState::Unknown => "unknown",
            CellState::Synced => "synced",
        }
    }
}

const FAILED_REASONS: &[&str] = &[
    reason::BUILD_FAILED,
    reason::APPLY_FAILED,
    reason::BUNDLE_REJECTED,
    reason::HEALTH_CHECK_FAILED,
    reason::SOURCE_VERIFICATION_FAILED,
    reason::FETCH_FAILED,
    reason::INVALID_SPEC,
];

const UNKNOWN_REASONS: &[&str] = &[
    reason::DISCONNECTED,
    reason::PENDING_ACCEPTANCE,
    reason::REVOKED,
];

/// The state of one (cluster, delivery) from the fields both status entries share.
pub fn cell_state(ready: bool, health: &str, drifted: u32, why: &str) -> CellState {
    if FAILED_REASONS.contains(&why) || health == "Degraded" {
        CellState::Failed
    } else if drifted > 0 || why == reason::DRIFT_DETECTED {
        CellState::Drifted
    } else if ready {
        CellState::Synced
    } else if UNKNOWN_REASONS.contains(&why) || why.is_empty() {
        CellState::Unknown
    } else {
        CellState::Progressing
    }
}

/// Removes credentials (`user:token@`) and query strings from a URL shown to viewers.
pub fn public_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    // Only the authority may hold credentials; `git@host:path` (scp-like) keeps its user, which
    // is a login name, not a secret.
    let host = match (scheme, host.rsplit_once('@')) {
        (Some(_), Some((_, h))) => h,
        _ => host,
    };
    match scheme {
        Some(s) => format!("{s}://{host}{path}"),
        None => format!("{host}{path}"),
    }
}

fn ready_condition(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
}

/// One delivery, as a column of the grid.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryColumn {
    /// `namespace/name`.
    pub key: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The revision being delivered.
    pub revision: Option<String>,
    /// Its first 12 digits.
    pub short_revision: Option<String>,
    /// `<ready>/<targeted>`.
    pub summary: Option<String>,
    /// The `Ready` condition's status.
    pub ready: bool,
    /// The `Ready` condition's reason.
    pub reason: String,
    /// The `Ready` condition's message.
    pub message: String,
    /// Held back by `spec.suspend`.
    pub suspended: bool,
}

/// One cell of the grid.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cell {
    /// The state shown.
    pub state: CellState,
    /// The revision applied on the cluster.
    pub revision: Option<String>,
    /// The revision the hub wants there.
    pub desired_revision: Option<String>,
    /// `Healthy`, `Progressing`, `Degraded` or `Unknown`.
    pub health: String,
    /// Objects drifted now.
    pub drifted: u32,
    /// Objects in the inventory.
    pub objects: u32,
    /// Applied, healthy and not drifted.
    pub ready: bool,
    /// A condition reason.
    pub reason: String,
    /// Details: the last error names the file and line or the object.
    pub message: String,
}

/// One cluster, as a row of the grid.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRow {
    /// The cluster's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Whether its agent is connected.
    pub connected: bool,
    /// The agent's version.
    pub agent_version: Option<String>,
    /// When the hub last heard from the agent.
    pub last_seen: Option<String>,
    /// Revisions it runs (short).
    pub revision: Option<String>,
    /// `<ready>/<targeted>` deliveries.
    pub summary: Option<String>,
    /// Drifted objects over all deliveries.
    pub drifted: u32,
    /// The `Ready` condition's status.
    pub ready: bool,
    /// The `Ready` condition's reason.
    pub reason: String,
    /// The `Ready` condition's message.
    pub message: String,
    /// The worst state of its cells.
    pub state: CellState,
    /// One per column of [`Overview::deliveries`]; `None` where the delivery does not target
    /// this cluster.
    pub cells: Vec<Option<Cell>>,
}

/// What the overview asks for: filter and page.
#[derive(Debug, Clone, Default)]
pub struct OverviewQuery {
    /// Label selector over the clusters' labels.
    pub selector: LabelSelector,
    /// Case-insensitive text in the name, a label (`key=value`) or a cell's revision.
    pub search: String,
    /// Only clusters with at least one cell in this state.
    pub state: Option<CellState>,
    /// The page, from 1.
    pub page: usize,
    /// Clusters per page.
    pub page_size: usize,
}

/// Counts over the matching clusters.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Clusters the hub knows.
    pub clusters: usize,
    /// Clusters matching the filter.
    pub matched: usize,
    /// Cells per state over the matching clusters.
    pub cells: BTreeMap<&'static str, usize>,
}

/// Which page this is.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// The page, from 1.
    pub number: usize,
    /// Clusters per page.
    pub size: usize,
    /// Pages in all (at least 1).
    pub pages: usize,
}

/// `GET /api/v1/fleet`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    /// The hub's version.
    pub hub_version: &'static str,
    /// The columns.
    pub deliveries: Vec<DeliveryColumn>,
    /// Counts.
    pub totals: Totals,
    /// The page shown.
    pub page: Page,
    /// The rows of the page.
    pub clusters: Vec<ClusterRow>,
}

fn sorted<K: kube::Resource<DynamicType = ()>>(items: &[Arc<K>]) -> Vec<&Arc<K>> {
    let mut v: Vec<&Arc<K>> = items.iter().collect();
    v.sort_by(|a, b| {
        (a.meta().namespace.as_deref(), a.meta().name.as_deref())
            .cmp(&(b.meta().namespace.as_deref(), b.meta().name.as_deref()))
    });
    v
}

fn column(d: &Delivery) -> DeliveryColumn {
    let status = d.status.clone().unwrap_or_default();
    let ready = ready_condition(&status.conditions);
    let namespace = d.namespace().unwrap_or_default();
    let name = d.name_any();
    DeliveryColumn {
        key: format!("{namespace}/{name}"),
        namespace,
        name,
        short_revision: status
            .short_revision
            .clone()
            .or(status.revision.as_deref().map(short_revision)),
        revision: status.revision,
        summary: status.summary,
        ready: ready.is_some_and(|c| c.status == "True"),
        reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
        message: ready.map(|c| c.message.clone()).unwrap_or_default(),
        suspended: d.spec.suspend,
    }
}

fn cell(
    from_cluster: Option<&ClusterDeliveryStatus>,
    from_delivery: &DeliveryClusterStatus,
) -> Cell {
    match from_cluster {
        Some(c) => Cell {
            state: cell_state(c.ready, &c.health, c.drifted, &c.reason),
            revision: c.revision.clone(),
            desired_revision: c.desired_revision.clone(),
            health: c.health.clone(),
            drifted: c.drifted,
            objects: c.objects,
            ready: c.ready,
            reason: c.reason.clone(),
            message: c.message.clone(),
        },
        None => {
            let d = from_delivery;
            Cell {
                state: cell_state(d.ready, &d.health, d.drifted, &d.reason),
                revision: d.ready.then(|| d.revision.clone()).flatten(),
                desired_revision: d.revision.clone(),
                health: d.health.clone(),
                drifted: d.drifted,
                objects: 0,
                ready: d.ready,
                reason: d.reason.clone(),
                message: d.message.clone(),
            }
        }
    }
}

/// Per delivery (in column order): the clusters it targets, with their entries.
fn targets<'a>(
    deliveries: &[&'a Arc<Delivery>],
) -> Vec<HashMap<&'a str, &'a DeliveryClusterStatus>> {
    deliveries
        .iter()
        .map(|d| {
            d.status
                .as_ref()
                .map(|s| s.clusters.iter().map(|c| (c.name.as_str(), c)).collect())
                .unwrap_or_default()
        })
        .collect()
}

fn row(
    c: &Cluster,
    deliveries: &[&Arc<Delivery>],
    targets: &[HashMap<&str, &DeliveryClusterStatus>],
) -> ClusterRow {
    let name = c.name_any();
    let status = c.status.clone().unwrap_or_default();
    let cells: Vec<Option<Cell>> = deliveries
        .iter()
        .zip(targets)
        .map(|(d, t)| {
            let entry = t.get(name.as_str())?;
            let own = status.deliveries.iter().find(|e| e.name == d.name_any());
            Some(cell(own, entry))
        })
        .collect();
    let ready = ready_condition(&status.conditions);
    let cluster_reason = ready.map(|c| c.reason.clone()).unwrap_or_default();
    let state = cells.iter().flatten().map(|c| c.state).min().unwrap_or(
        if UNKNOWN_REASONS.contains(&cluster_reason.as_str()) {
            CellState::Unknown
        } else if ready.is_some_and(|c| c.status == "True") {
            CellState::Synced
        } else {
            CellState::Unknown
        },
    );
    ClusterRow {
        labels: c.labels().clone(),
        connected: status.connected,
        agent_version: status.agent_version,
        last_seen: status.last_seen,
        revision: status.revision,
        summary: status.summary,
        drifted: status.drifted,
        ready: ready.is_some_and(|c| c.status == "True"),
        reason: cluster_reason,
        message: ready.map(|c| c.message.clone()).unwrap_or_default(),
        state,
        cells,
        name,
    }
}

/// What filtering and counting need of one cluster, borrowed: cheap for thousands of clusters,
/// so that only the rows of the page shown are built in full.
struct Sketch<'a> {
    cluster: &'a Cluster,
    /// Per column: the cell's state and applied revision, `None` where not targeted.
    cells: Vec<Option<(CellState, Option<&'a str>)>>,
    /// The cluster's own state when no delivery targets it.
    fallback: CellState,
}

fn sketch<'a>(
    c: &'a Cluster,
    names: &[String],
    targets: &[HashMap<&'a str, &'a DeliveryClusterStatus>],
) -> Sketch<'a> {
    let name = c.metadata.name.as_deref().unwrap_or_default();
    let own: &'a [ClusterDeliveryStatus] = c
        .status
        .as_ref()
        .map(|s| s.deliveries.as_slice())
        .unwrap_or_default();
    let cells = names
        .iter()
        .zip(targets)
        .map(|(dname, t)| {
            let e = t.get(name)?;
            Some(match own.iter().find(|o| &o.name == dname) {
                Some(o) => (
                    cell_state(o.ready, &o.health, o.drifted, &o.reason),
                    o.revision.as_deref(),
                ),
                None => (
                    cell_state(e.ready, &e.health, e.drifted, &e.reason),
                    e.ready.then_some(e.revision.as_deref()).flatten(),
                ),
            })
        })
        .collect();
    let ready = c
        .status
        .as_ref()
        .and_then(|s| ready_condition(&s.conditions))
        .is_some_and(|r| r.status == "True");
    Sketch {
        cluster: c,
        cells,
        fallback: if ready {
            CellState::Synced
        } else {
            CellState::Unknown
        },
    }
}

impl Sketch<'_> {
    fn matches(&self, needle: &str, state: Option<CellState>) -> bool {
        let search = needle.is_empty()
            || self.cluster.name_any().to_lowercase().contains(needle)
            || self
                .cluster
                .labels()
                .iter()
                .any(|(k, v)| format!("{k}={v}").to_lowercase().contains(needle))
            || self
                .cells
                .iter()
                .flatten()
                .any(|(_, rev)| rev.is_some_and(|r| r.to_lowercase().contains(needle)));
        let state = state.is_none_or(|s| {
            self.cells.iter().flatten().any(|(c, _)| *c == s)
                || (self.cells.iter().all(Option::is_none) && self.fallback == s)
        });
        search && state
    }
}

/// The fleet overview: every delivery as a column, the matching clusters of one page as rows.
pub fn overview(
    clusters: &[Arc<Cluster>],
    deliveries: &[Arc<Delivery>],
    q: &OverviewQuery,
) -> Overview {
    let deliveries = sorted(deliveries);
    let targets = targets(&deliveries);
    let names: Vec<String> = deliveries.iter().map(|d| d.name_any()).collect();
    let needle = q.search.trim().to_lowercase();
    let mut totals = Totals {
        clusters: clusters.len(),
        ..Totals::default()
    };
    for s in CellState::ALL {
        totals.cells.insert(s.as_str(), 0);
    }
    let matched: Vec<Sketch<'_>> = sorted(clusters)
        .into_iter()
        .filter(|c| selector_matches(&q.selector, c.labels()))
        .map(|c| sketch(c, &names, &targets))
        .filter(|s| s.matches(&needle, q.state))
        .collect();
    for s in &matched {
        for (state, _) in s.cells.iter().flatten() {
            *totals.cells.entry(state.as_str()).or_default() += 1;
        }
    }
    totals.matched = matched.len();
    let size = q.page_size.clamp(1, 1000);
    let pages = matched.len().div_ceil(size).max(1);
    let number = q.page.clamp(1, pages);
    let page = matched
        .iter()
        .skip((number - 1) * size)
        .take(size)
        .map(|s| row(s.cluster, &deliveries, &targets))
        .collect();
    Overview {
        hub_version: crate::VERSION,
        deliveries: deliveries.iter().map(|d| column(d)).collect(),
        totals,
        page: Page {
            number,
            size,
            pages,
        },
        clusters: page,
    }
}

/// One applied object, as the agent acknowledged it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectResult {
    /// `Kind/namespace/name`.
    pub object: String,
    /// Applied without error.
    pub ok: bool,
}

/// The agent's last acknowledgement of a delivery.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AckView {
    /// The bundle's sequence.
    pub sequence: u64,
    /// `applied`, `failed` or `rejected`.
    pub outcome: &'static str,
    /// Why it failed or was refused.
    pub message: String,
    /// Per-object results (empty when the agent sent a summary ack and the hub no longer holds
    /// the bundle to list them from).
    pub objects: Vec<ObjectResult>,
    /// How many objects the bundle had.
    pub object_count: u32,
}

impl From<AckRecord> for AckView {
    fn from(a: AckRecord) -> Self {
        Self {
            sequence: a.sequence,
            outcome: match a.outcome {
                AckOutcome::Applied => "applied",
                AckOutcome::Failed => "failed",
                AckOutcome::Rejected => "rejected",
            },
            message: a.message,
            object_count: a.object_count,
            objects: a
                .objects
                .into_iter()
                .map(|(object, ok)| ObjectResult { object, ok })
                .collect(),
        }
    }
}

/// The agent's last report on a delivery.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportView {
    /// The bundle sequence it runs.
    pub sequence: u64,
    /// Its health.
    pub health: String,
    /// Objects drifted now.
    pub drifted_objects: u32,
    /// Objects in the inventory.
    pub inventory_objects: u32,
    /// The drifted objects (at most 20).
    pub drifted: Vec<String>,
    /// What the agent says.
    pub message: String,
    /// When the hub received it.
    pub received_at: String,
}

impl From<ReportRecord> for ReportView {
    fn from(r: ReportRecord) -> Self {
        Self {
            sequence: r.sequence,
            health: format!("{:?}", r.health),
            drifted_objects: r.drifted_objects,
            inventory_objects: r.inventory_objects,
            drifted: r.drifted,
            message: r.message,
            received_at: crate::controller::util::rfc3339(r.received_at),
        }
    }
}

/// A change of the drifted objects of one delivery on one cluster.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DriftEvent {
    /// When the hub received the report (RFC 3339).
    pub at: String,
    /// The delivery (its name on the wire).
    pub delivery: String,
    /// Objects drifted now; empty when the drift is gone (corrected or accepted in Git).
    pub objects: Vec<String>,
    /// What the agent said.
    pub message: String,
}

/// One delivery on the cluster page.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterDelivery {
    /// `namespace/name` (empty namespace when the delivery is gone from the caches).
    pub key: String,
    /// The state.
    pub state: CellState,
    /// What the hub wrote in the cluster's status.
    #[serde(flatten)]
    pub status: ClusterDeliveryStatus,
    /// What the agent last acknowledged (this hub process only).
    pub ack: Option<AckView>,
    /// What the agent last reported (this hub process only).
    pub report: Option<ReportView>,
}

/// `GET /api/v1/clusters/{name}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterDetail {
    /// The cluster's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Accepted on the hub.
    pub accepted: bool,
    /// Revoked.
    pub revoked: bool,
    /// Its agent's stream is open.
    pub connected: bool,
    /// The agent's version.
    pub agent_version: Option<String>,
    /// When the hub last heard from it.
    pub last_seen: Option<String>,
    /// Revisions it runs.
    pub revision: Option<String>,
    /// `<ready>/<targeted>`.
    pub summary: Option<String>,
    /// Drifted objects.
    pub drifted: u32,
    /// Its conditions.
    pub conditions: Vec<Condition>,
    /// The worst state of its deliveries.
    pub state: CellState,
    /// Each delivery targeting it.
    pub deliveries: Vec<ClusterDelivery>,
    /// The last drift changes seen by this hub process, newest first.
    pub drift_events: Vec<DriftEvent>,
}

/// The cluster page; `ack` and `report` give what agents told this hub for (cluster, delivery).
pub fn cluster_detail(
    c: &Cluster,
    deliveries: &[Arc<Delivery>],
    ack: impl Fn(&str) -> Option<AckRecord>,
    report: impl Fn(&str) -> Option<ReportRecord>,
    drift_events: Vec<DriftEvent>,
) -> ClusterDetail {
    let name = c.name_any();
    let status = c.status.clone().unwrap_or_default();
    let entries: Vec<ClusterDelivery> = status
        .deliveries
        .iter()
        .map(|e| {
            // The delivery of that name that targets this cluster.
            let key = deliveries
                .iter()
                .find(|d| {
                    d.name_any() == e.name
                        && d.status
                            .as_ref()
                            .is_some_and(|s| s.clusters.iter().any(|t| t.name == name))
                })
                .map(|d| format!("{}/{}", d.namespace().unwrap_or_default(), e.name))
                .unwrap_or_else(|| format!("/{}", e.name));
            ClusterDelivery {
                key,
                state: cell_state(e.ready, &e.health, e.drifted, &e.reason),
                status: e.clone(),
                ack: ack(&e.name).map(AckView::from),
                report: report(&e.name).map(ReportView::from),
            }
        })
        .collect();
    let ready = ready_condition(&status.conditions);
    let state = entries.iter().map(|e| e.state).min().unwrap_or(
        if ready.is_some_and(|c| c.status == "True") {
            CellState::Synced
        } else {
            CellState::Unknown
        },
    );
    ClusterDetail {
        labels: c.labels().clone(),
        accepted: c.spec.accepted,
        revoked: c.spec.revoked,
        connected: status.connected,
        agent_version: status.agent_version,
        last_seen: status.last_seen,
        revision: status.revision,
        summary: status.summary,
        drifted: status.drifted,
        conditions: status.conditions,
        state,
        deliveries: entries,
        drift_events,
        name,
    }
}

/// One targeted cluster on the delivery page.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryTarget {
    /// The state.
    pub state: CellState,
    /// What the hub wrote in the delivery's status.
    #[serde(flatten)]
    pub status: DeliveryClusterStatus,
}

/// A `dependsOn` delivery and where this one waits on it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    /// `namespace/name`.
    pub key: String,
    /// Whether it exists.
    pub exists: bool,
    /// Its `Ready` condition's status.
    pub ready: bool,
    /// Its `Ready` condition's reason.
    pub reason: String,
    /// `<ready>/<targeted>`.
    pub summary: Option<String>,
    /// Clusters where this delivery waits for it (`DependencyNotReady`).
    pub waiting_clusters: Vec<String>,
}

/// The source a delivery renders from (no credentials).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceView {
    /// Its name.
    pub name: String,
    /// Whether it exists.
    pub exists: bool,
    /// Its URL without credentials.
    pub url: Option<String>,
    /// The revision fetched.
    pub revision: Option<String>,
    /// Its `Ready` condition's status.
    pub ready: bool,
    /// Its `Ready` condition's message.
    pub message: String,
}

/// An error on one cluster, naming file and line or object as the hub reported it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetError {
    /// The cluster.
    pub cluster: String,
    /// The condition reason.
    pub reason: String,
    /// The message.
    pub message: String,
}

/// Rollout progress over the targeted clusters.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Clusters targeted.
    pub targeted: usize,
    /// Per state.
    pub states: BTreeMap<&'static str, usize>,
    /// Clusters synced at the newest revision, in percent (rounded down).
    pub percent: usize,
}

/// A rollout partition and how far it got.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionProgress {
    /// The partition (`(rest)` for clusters in none).
    pub name: String,
    /// Clusters in it.
    pub clusters: usize,
    /// Of which synced.
    pub synced: usize,
}

/// `GET /api/v1/deliveries/{namespace}/{name}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryDetail {
    /// The column summary (revision, ready, reason, message).
    #[serde(flatten)]
    pub column: DeliveryColumn,
    /// The source.
    pub source: SourceView,
    /// The path rendered.
    pub path: String,
    /// The cluster selector, in `kubectl -l` syntax (empty: every cluster).
    pub cluster_selector: String,
    /// `Correct` or `Report`.
    pub drift_mode: String,
    /// Prune objects that left Git.
    pub prune: bool,
    /// Every condition.
    pub conditions: Vec<Condition>,
    /// Rollout progress.
    pub progress: Progress,
    /// Per partition, when partitions are used.
    pub partitions: Vec<PartitionProgress>,
    /// What it waits on.
    pub depends_on: Vec<Dependency>,
    /// Failing clusters with their errors.
    pub errors: Vec<TargetError>,
    /// Every targeted cluster.
    pub clusters: Vec<DeliveryTarget>,
}

/// The delivery page.
pub fn delivery_detail(
    d: &Delivery,
    deliveries: &[Arc<Delivery>],
    sources: &[Arc<GitSource>],
) -> DeliveryDetail {
    let ns = d.namespace().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    let targets: Vec<DeliveryTarget> = status
        .clusters
        .iter()
        .map(|c| DeliveryTarget {
            state: cell_state(c.ready, &c.health, c.drifted, &c.reason),
            status: c.clone(),
        })
        .collect();
    let mut progress = Progress {
        targeted: targets.len(),
        ..Progress::default()
    };
    for s in CellState::ALL {
        progress.states.insert(s.as_str(), 0);
    }
    for t in &targets {
        *progress.states.entry(t.state.as_str()).or_default() += 1;
    }
    let synced = progress.states.get("synced").copied().unwrap_or(0);
    progress.percent = (synced * 100).checked_div(targets.len()).unwrap_or(0);

    let mut partitions: Vec<PartitionProgress> = Vec::new();
    if d.spec
        .rollout
        .as_ref()
        .is_some_and(|r| !r.partitions.is_empty())
    {
        let names = d
            .spec
            .rollout
            .iter()
            .flat_map(|r| r.partitions.iter().map(|p| p.name.clone()))
            .chain(std::iter::once("(rest)".to_owned()));
        for name in names {
            let members: Vec<&DeliveryTarget> = targets
                .iter()
                .filter(|t| t.status.partition.as_deref().unwrap_or("(rest)") == name)
                .collect();
            partitions.push(PartitionProgress {
                clusters: members.len(),
                synced: members
                    .iter()
                    .filter(|t| t.state == CellState::Synced)
                    .count(),
                name,
            });
        }
    }

    let depends_on = d
        .spec
        .depends_on
        .iter()
        .map(|dep| {
            let found = deliveries.iter().find(|o| {
                o.namespace().as_deref() == Some(ns.as_str()) && o.name_any() == dep.name
            });
            let col = found.map(|o| column(o));
            Dependency {
                key: format!("{ns}/{}", dep.name),
                exists: found.is_some(),
                ready: col.as_ref().is_some_and(|c| c.ready),
                reason: col.as_ref().map(|c| c.reason.clone()).unwrap_or_default(),
                summary: col.and_then(|c| c.summary),
                waiting_clusters: targets
                    .iter()
                    .filter(|t| {
                        t.status.reason == reason::DEPENDENCY_NOT_READY
                            && t.status.message.contains(&dep.name)
                    })
                    .map(|t| t.status.name.clone())
                    .collect(),
            }
        })
        .collect();

    let errors = targets
        .iter()
        .filter(|t| t.state == CellState::Failed)
        .map(|t| TargetError {
            cluster: t.status.name.clone(),
            reason: t.status.reason.clone(),
            message: t.status.message.clone(),
        })
        .collect();

    let source_name = d.spec.source_ref.name.clone();
    let source = sources
        .iter()
        .find(|s| s.namespace().as_deref() == Some(ns.as_str()) && s.name_any() == source_name);
    let source = SourceView {
        exists: source.is_some(),
        url: source.map(|s| public_url(&s.spec.url)),
        revision: source
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.artifact.as_ref())
            .map(|a| a.revision.clone()),
        ready: source
            .and_then(|s| s.status.as_ref())
            .and_then(|s| ready_condition(&s.conditions))
            .is_some_and(|c| c.status == "True"),
        message: source
            .and_then(|s| s.status.as_ref())
            .and_then(|s| ready_condition(&s.conditions))
            .map(|c| c.message.clone())
            .unwrap_or_default(),
        name: source_name,
    };

    DeliveryDetail {
        column: column(d),
        source,
        path: d.spec.path.clone(),
        cluster_selector: super::selector::format(&d.spec.cluster_selector),
        drift_mode: d
            .spec
            .drift
            .as_ref()
            .and_then(|x| x.mode.clone())
            .unwrap_or_else(|| "Correct".into()),
        prune: d.spec.prune,
        conditions: status.conditions,
        progress,
        partitions,
        depends_on,
        errors,
        clusters: targets,
    }
}
