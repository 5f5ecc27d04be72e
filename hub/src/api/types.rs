//! The custom resource types. Field docs become the CRD schema's descriptions (`kubectl explain`).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------------

/// A status condition, following the Kubernetes API conventions.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Reconciling` or `Stalled`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason, e.g. `BuildFailed`.
    pub reason: String,
    /// What happened, in words, naming files, lines, objects or clusters.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default)]
    pub last_transition_time: String,
    /// The `metadata.generation` this condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A reference to an object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectReference {
    /// The object's name.
    pub name: String,
}

/// A label selector, as in Kubernetes: every `matchLabels` entry and every `matchExpressions`
/// requirement must hold. An empty selector selects every cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One set-based label requirement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// Values for `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// GitSource
// ---------------------------------------------------------------------------------------------

/// A Git repository the hub fetches, and which revision of it to follow.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "flotilla.dev",
    version = "v1alpha1",
    kind = "GitSource",
    namespaced,
    status = "GitSourceStatus",
    shortname = "gs",
    category = "flotilla",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.artifact.revision"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GitSourceSpec {
    /// Repository URL: `https://`, `http://`, `ssh://`, `git@host:path`, or a local path.
    pub url: String,
    /// Which revision to follow; default: branch `main`.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<GitRefSpec>,
    /// Time between fetches, e.g. `1m`, `30s` (default `1m`). Webhooks fetch at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Delay before retrying a failed fetch; it doubles with each failure (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_interval: Option<String>,
    /// A Secret in the same namespace with credentials: `username` + `password` (HTTPS; a token
    /// goes in `password`), `bearerToken`, or `identity` (an SSH private key) + `known_hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// Refuse revisions whose commit or tag is not signed by a trusted key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<GitVerifySpec>,
    /// Stop fetching (the last revision stays in use).
    #[serde(default)]
    pub suspend: bool,
}

/// Exactly one of branch, tag, semver or commit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct GitRefSpec {
    /// A branch, e.g. `main`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// A tag, e.g. `v1.2.3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The highest tag in a semantic version range, e.g. `>=1.2.0 <2.0.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    /// An exact commit (40 hexadecimal digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// Signature verification of a source.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitVerifySpec {
    /// `HEAD` (the commit's signature) or `Tag` (the tag's signature).
    #[serde(default = "default_verify_mode")]
    pub mode: String,
    /// A Secret in the same namespace whose values are trusted keys (SSH public key lines and
    /// ASCII-armored OpenPGP public keys).
    pub secret_ref: LocalObjectReference,
}

fn default_verify_mode() -> String {
    "HEAD".into()
}

/// What the hub last fetched.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSourceStatus {
    /// `Ready` (the last fetch succeeded), `Stalled` (it cannot work as configured).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The revision in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// The generation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last reconcile request handled (value of the reconcile annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

/// One fetched revision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// `<ref>@sha1:<commit>`, e.g. `main@sha1:0f3c…`.
    pub revision: String,
    /// When it was fetched (RFC 3339).
    pub fetched_at: String,
    /// The key that verified it, when verification is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_by: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

/// A workload cluster registered with the hub (cluster-scoped: its name is the cluster's identity
/// in certificates and bundles). Its `metadata.labels` are what deliveries select on; its `variables` (and labels, as `cluster.labels.<key>`) feed post-build substitution.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "flotilla.dev",
    version = "v1alpha1",
    kind = "Cluster",
    status = "ClusterStatus",
    shortname = "fcl",
    category = "flotilla",
    printcolumn = r#"{"name":"Accepted","type":"boolean","jsonPath":".spec.accepted"}"#,
    printcolumn = r#"{"name":"Connected","type":"boolean","jsonPath":".status.connected"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Deliveries","type":"string","jsonPath":".status.summary"}"#,
    printcolumn = r#"{"name":"Drifted","type":"integer","jsonPath":".status.drifted"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Last-Seen","type":"date","jsonPath":".status.lastSeen"}"#,
    printcolumn = r#"{"name":"Agent","type":"string","jsonPath":".status.agentVersion","priority":1}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Whether the hub accepts this cluster's agent (double opt-in: the agent also needs a
    /// bootstrap token). `flotilla cluster accept` sets it.
    #[serde(default)]
    pub accepted: bool,
    /// A revoked cluster's stream is closed within seconds and it may not connect or register
    /// again. `flotilla cluster revoke` sets it.
    #[serde(default)]
    pub revoked: bool,
    /// Variables for post-build substitution (`${name}`) in everything delivered to this cluster.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
}

/// What the hub knows of a cluster and its agent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// `Ready`: connected, and every delivery applied, healthy and without drift.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Whether the agent's stream is open now.
    #[serde(default)]
    pub connected: bool,
    /// The agent's version, from its last hello.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// When the hub last heard from the agent (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// The source revisions the cluster runs (short commits; several when deliveries differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// `<ready>/<targeted>` deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Objects currently drifted, over all deliveries.
    #[serde(default)]
    pub drifted: u32,
    /// Each delivery targeting this cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<ClusterDeliveryStatus>,
}

/// One delivery, as seen on one cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterDeliveryStatus {
    /// The delivery's name.
    pub name: String,
    /// The source revision applied on the cluster (`<ref>@sha1:<commit>`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The revision the hub wants there (differs while rolling out or when blocked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_revision: Option<String>,
    /// The bundle sequence applied.
    #[serde(default)]
    pub sequence: u64,
    /// Applied, healthy and not drifted at the desired revision.
    #[serde(default)]
    pub ready: bool,
    /// `Healthy`, `Progressing`, `Degraded` or `Unknown`.
    #[serde(default)]
    pub health: String,
    /// Objects drifted now.
    #[serde(default)]
    pub drifted: u32,
    /// Objects in the cluster's inventory for this delivery.
    #[serde(default)]
    pub objects: u32,
    /// Why it is not ready (a condition reason), or `Succeeded`.
    #[serde(default)]
    pub reason: String,
    /// Details, naming files, lines and objects.
    #[serde(default)]
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------------------------

/// What to deliver where: a directory of a source, rendered per cluster, applied by each
/// targeted cluster's agent.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "flotilla.dev",
    version = "v1alpha1",
    kind = "Delivery",
    namespaced,
    status = "DeliveryStatus",
    shortname = "dl",
    category = "flotilla",
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.sourceRef.name"}"#,
    printcolumn = r#"{"name":"Path","type":"string","jsonPath":".spec.path"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.shortRevision"}"#,
    printcolumn = r#"{"name":"Clusters","type":"string","jsonPath":".status.summary"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspend","priority":1}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// The `GitSource` (same namespace) to render from.
    pub source_ref: LocalObjectReference,
    /// Directory in the source, relative to its root. `${cluster.name}` and
    /// `${cluster.labels.<key>}` are replaced per cluster, e.g. `./clusters/${cluster.name}`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Which clusters receive it. An empty selector (`{}`) selects every cluster.
    pub cluster_selector: LabelSelector,
    /// Extra post-build substitution variables; a cluster's own variables win.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
    /// Delete objects that left Git (default true).
    #[serde(default = "default_true")]
    pub prune: bool,
    /// Accept an empty render (and so prune everything). Off by default: an empty render is far
    /// more often a mistake than an intent.
    #[serde(default)]
    pub allow_empty: bool,
    /// Time between re-renders without a new revision (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Time before retrying a failed render (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_interval: Option<String>,
    /// How long applied objects have to become ready before `HealthCheckFailed` (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Deliveries (same namespace) that must be ready on a cluster before this one is sent there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<LocalObjectReference>,
    /// Hold back new revisions (what clusters run stays, and drift is still corrected).
    #[serde(default)]
    pub suspend: bool,
    /// Drift handling on the clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftSpec>,
    /// Conflicts with other field managers: `Force` (take the fields, default) or `Report`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<String>,
    /// How fast a new revision spreads over the clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
}

fn default_path() -> String {
    "./".into()
}

fn default_true() -> bool {
    true
}

/// Drift handling.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftSpec {
    /// `Correct` (default): put drifted fields back. `Report`: only report them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Fields other controllers own once the object exists (e.g. `/spec/replicas` under an HPA).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<IgnoreSpec>,
}

/// Fields to leave alone, on matching objects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IgnoreSpec {
    /// JSON pointers, e.g. `/spec/replicas`.
    pub paths: Vec<String>,
    /// Only objects of this kind (any when empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only objects with this name (any when empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only objects in this namespace (any when empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Rollout of a new revision across clusters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// How many targeted clusters may be updating (sent the new revision, not yet ready) at once:
    /// a number or a percentage (default `100%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<String>,
    /// Ordered groups of clusters; a partition starts only when every earlier one is ready.
    /// Clusters matched by no partition form a last, implicit one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionSpec>,
    /// Stop the rollout when a cluster fails to apply or become healthy (default true).
    #[serde(default = "default_true")]
    pub pause_on_failure: bool,
}

/// One rollout partition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionSpec {
    /// A name shown in status.
    pub name: String,
    /// The clusters in this partition.
    pub cluster_selector: LabelSelector,
}

/// How a delivery stands, per cluster and overall.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStatus {
    /// `Ready`: every targeted cluster runs the newest revision, healthy and without drift.
    /// `Reconciling`: a rollout is under way. `Stalled`: it cannot go on without a change.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The source revision being delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The first 12 digits of its commit, for tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_revision: Option<String>,
    /// `<ready>/<targeted>` clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The last reconcile request handled (value of the reconcile annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// Each targeted cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<DeliveryClusterStatus>,
}

/// One targeted cluster, as seen by a delivery.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryClusterStatus {
    /// The cluster's name.
    pub name: String,
    /// The source revision last sent there (applied there once `ready`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The bundle sequence last sent there.
    #[serde(default)]
    pub sequence: u64,
    /// The digest (sha256, hex) of the bundle last sent there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Applied, healthy and not drifted at the newest revision.
    #[serde(default)]
    pub ready: bool,
    /// `Healthy`, `Progressing`, `Degraded` or `Unknown`.
    #[serde(default)]
    pub health: String,
    /// Objects drifted now.
    #[serde(default)]
    pub drifted: u32,
    /// A condition reason.
    #[serde(default)]
    pub reason: String,
    /// Details.
    #[serde(default)]
    pub message: String,
    /// The rollout partition the cluster is in, when partitions are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// HelmRepository
// ---------------------------------------------------------------------------------------------

/// A Helm chart repository: an HTTP(S) repository with an `index.yaml`, or an OCI registry
/// (`oci://`). The hub reads the index at each interval; charts are downloaded when a
/// `HelmRelease` needs them and cached by digest.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "flotilla.dev",
    version = "v1alpha1",
    kind = "HelmRepository",
    namespaced,
    status = "HelmRepositoryStatus",
    shortname = "hrepo",
    category = "flotilla",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Charts","type":"integer","jsonPath":".status.charts"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct HelmRepositorySpec {
    /// `https://` or `http://` URL of a repository holding `index.yaml`, or `oci://` of a
    /// registry namespace (charts are then `<url>/<chart>`).
    pub url: String,
    /// Time between reads of the index, e.g. `5m` (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// A Secret in the same namespace with credentials: `username` + `password` (basic auth),
    /// or `bearerToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// A Secret in the same namespace whose `ca.crt` is the CA that signs the repository's
    /// certificate (added to the system roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<LocalObjectReference>,
    /// Stop reading the index (the last one read stays in use).
    #[serde(default)]
    pub suspend: bool,
}

/// What the hub last read from a chart repository.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HelmRepositoryStatus {
    /// `Ready` (the last read succeeded), `Stalled` (it cannot work as configured).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of charts in the index (HTTP repositories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charts: Option<u32>,
    /// sha256 of the index last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    /// When the index was last read (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// HelmRelease
// ---------------------------------------------------------------------------------------------

/// A Helm chart from a `HelmRepository`, rendered on the hub with `helm template` for each
/// selected cluster (with that cluster's values) and delivered as a signed bundle like a
/// `Delivery`: agents need no Helm.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "flotilla.dev",
    version = "v1alpha1",
    kind = "HelmRelease",
    namespaced,
    status = "HelmReleaseStatus",
    shortname = "hr",
    category = "flotilla",
    printcolumn = r#"{"name":"Chart","type":"string","jsonPath":".spec.chart.name"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.chartVersion"}"#,
    printcolumn = r#"{"name":"Clusters","type":"string","jsonPath":".status.summary"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspend","priority":1}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct HelmReleaseSpec {
    /// Which chart, in which versions, from where.
    pub chart: HelmChartSpec,
    /// The Helm release name (`.Release.Name`); default: the HelmRelease's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_name: Option<String>,
    /// Namespace of the release (`.Release.Namespace`, and of namespaced objects the chart
    /// leaves without one); default: the HelmRelease's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_namespace: Option<String>,
    /// Also deliver the target namespace itself.
    #[serde(default)]
    pub create_namespace: bool,
    /// Which clusters receive it. An empty selector (`{}`) selects every cluster.
    pub cluster_selector: LabelSelector,
    /// Values, after those of `valuesFrom`. Strings may use `${cluster_name}`,
    /// `${cluster_labels_<key>}` and the cluster's variables, substituted per cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub values: Option<serde_json::Value>,
    /// ConfigMaps and Secrets (same namespace) whose keys hold values YAML, merged in order
    /// before `values`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_from: Vec<ValuesReference>,
    /// Extra substitution variables for `values`; a cluster's own variables win.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
    /// Kubernetes version the chart is rendered for (`.Capabilities.KubeVersion`); default:
    /// the hub's `--helm-kube-version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_version: Option<String>,
    /// Helm hooks (`helm.sh/hook`) other than tests: `Refuse` (default: the build fails,
    /// naming the hook), `Skip` (left out) or `Apply` (applied as ordinary objects, `pre-*`
    /// hooks first). Test hooks are always left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<String>,
    /// Delete objects that left the chart (default true).
    #[serde(default = "default_true")]
    pub prune: bool,
    /// Time between re-renders without a change (default `10m`); also how often `valuesFrom`
    /// is read again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Time before retrying a failed render (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_interval: Option<String>,
    /// How long applied objects have to become ready before `HealthCheckFailed` (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// HelmReleases (same namespace) that must be ready on a cluster before this one is sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<LocalObjectReference>,
    /// Hold back new chart versions and values (what clusters run stays).
    #[serde(default)]
    pub suspend: bool,
}

fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// The chart of a release.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HelmChartSpec {
    /// The chart's name in the repository.
    pub name: String,
    /// A semantic version range, e.g. `>=1.0.0 <2.0.0`, `^1.2` or `1.2.3` (default `*`: the
    /// highest stable version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The `HelmRepository` (same namespace).
    pub source_ref: LocalObjectReference,
}

/// Values from a key of a ConfigMap or Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValuesReference {
    /// `ConfigMap` or `Secret`.
    pub kind: String,
    /// Its name (same namespace).
    pub name: String,
    /// The key holding values YAML (default `values.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values_key: Option<String>,
    /// Do not fail when the object or key is missing.
    #[serde(default)]
    pub optional: bool,
}

/// How a release stands, per cluster and overall.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HelmReleaseStatus {
    /// `Ready`: every targeted cluster runs the newest chart version and values, healthy and
    /// without drift. `BuildFailed` names the chart, template and line.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The chart version the range resolves to now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart_version: Option<String>,
    /// sha256 of that chart archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart_digest: Option<String>,
    /// `<chart>@<version>@sha256:<digest>`: what is being delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// `<chart>@<version>`, for tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_revision: Option<String>,
    /// `<ready>/<targeted>` clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The last reconcile request handled (value of the reconcile annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// Each targeted cluster; its `revision` is the chart version and digest sent there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<DeliveryClusterStatus>,
}
