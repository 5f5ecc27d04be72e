//! `flotilla diff`: what a working tree or a commit would change on each cluster, before it is
//! merged.
//!
//! For every delivery that follows the local repository and every cluster it targets, the CLI
//! renders two things with the hub's own functions ([`render_input`], [`render_tree`]):
//! - the **baseline**, what the cluster runs: the revision the cluster last applied for that
//!   delivery (from the `Cluster`'s status), rendered from the local repository with the
//!   cluster's current labels and variables. Its digest is checked against the digest of the
//!   bundle the hub last sent (from the `Delivery`'s status), so a baseline that is not what
//!   the cluster was sent is reported instead of silently trusted;
//! - the **proposal**: the working tree (or `--revision`), rendered the same way.
//!
//! Objects are matched by API group, kind, namespace and name; what only the proposal has is
//! created, what only the baseline has is pruned (or kept, when the delivery does not prune),
//! and objects that differ are shown as a unified diff of their YAML with Secret values
//! masked. Exit code: 0 no change, 1 changes, 2 error.
//!
//! `HelmRelease` manifests in the proposal are compared the same way, per cluster, with what
//! the hub last sent of the release (see [`helm`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail};
use kube::{Api, ResourceExt as _};
use serde_json::Value;

use crate::api::{Cluster, Delivery, GitSource, HelmRelease};
use crate::cli_cluster::HubArgs;
use crate::controller::deliveries::{bundle_digest, render_input, render_tree, targets};
use crate::controller::util::short_revision;
use crate::fleet::{ClusterState, cluster_state};
use crate::source::Snapshot;

/// Arguments of `flotilla diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// A directory inside a checkout of the Git repository a `GitSource` follows. Delivery
    /// paths are relative to the root of its work tree.
    #[arg(long, default_value = ".")]
    pub path: PathBuf,
    /// Preview this commit of the repository (a commit id, `HEAD~1`, a branch or tag) instead of
    /// the working tree.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    /// Only this delivery (`NAME` or `NAMESPACE/NAME`).
    #[arg(long, short = 'd', value_name = "[NAMESPACE/]NAME")]
    pub delivery: Option<String>,
    /// Only this cluster.
    #[arg(long, short = 'c', value_name = "NAME")]
    pub cluster: Option<String>,
    /// Only deliveries of this `GitSource` (`NAME` or `NAMESPACE/NAME`). Without it, the
    /// deliveries whose source's current commit is in the local repository are compared.
    #[arg(long, value_name = "[NAMESPACE/]NAME")]
    pub source: Option<String>,
    /// Only deliveries of this namespace.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The `helm` binary that renders `HelmRelease` charts (`helm template`), as the hub's.
    #[arg(long, env = "FLOTILLA_HELM_BINARY", default_value = "helm")]
    pub helm_binary: PathBuf,
    /// Kubernetes version charts are rendered for unless a `HelmRelease` sets
    /// `spec.kubeVersion`; keep it equal to the hub's `--helm-kube-version`.
    #[arg(long, env = "FLOTILLA_HELM_KUBE_VERSION", default_value = crate::helm::DEFAULT_KUBE_VERSION)]
    pub helm_kube_version: String,
    /// Where chart archives are cached by digest (default: `$XDG_CACHE_HOME/flotilla/charts`,
    /// else `~/.cache/flotilla/charts`).
    #[arg(long, value_name = "DIR")]
    pub chart_cache: Option<PathBuf>,
}

impl DiffArgs {
    /// How charts are fetched and rendered: like the hub, into the local chart cache.
    fn helm_config(&self) -> crate::helm::HelmConfig {
        let cache_root = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("flotilla");
        let mut config = crate::helm::HelmConfig::new(&cache_root);
        if let Some(c) = &self.chart_cache {
            config.cache = c.clone();
        }
        config.binary = self.helm_binary.clone();
        config.kube_version = self.helm_kube_version.clone();
        config
    }
}

/// An object's identity: the same key in two renders is the same object in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// API group (empty for the core group); the version may change without a new object.
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Namespace (empty when cluster-scoped or unset).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// The key of a rendered object.
    pub fn of(obj: &Value) -> Self {
        let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or("");
        let api_version = s("/apiVersion");
        let group = api_version
            .rsplit_once('/')
            .map(|(g, _)| g)
            .unwrap_or("")
            .to_owned();
        Self {
            group,
            kind: s("/kind").to_owned(),
            namespace: s("/metadata/namespace").to_owned(),
            name: s("/metadata/name").to_owned(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// What a proposal does to one object of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Only the proposal has it.
    Created(ObjectKey),
    /// Both have it and it differs: a unified diff of its YAML, Secret values masked.
    Changed(ObjectKey, String),
    /// Only the baseline has it: the agent deletes it, unless the delivery does not prune
    /// (`kept`).
    Pruned {
        /// The object.
        key: ObjectKey,
        /// The delivery has `prune: false`, so it stays in the cluster.
        kept: bool,
    },
}

/// One delivery on one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryDiff {
    /// `namespace/name`.
    pub delivery: String,
    /// The revision the cluster runs, `None` when it has applied nothing yet.
    pub from: Option<String>,
    /// What is proposed (`working tree` or a revision).
    pub to: String,
    /// Remarks shown with the delivery (suspended, approximate baseline, ...).
    pub notes: Vec<String>,
    /// The changes, in render order, prunes last.
    pub changes: Vec<Change>,
}

/// Every delivery of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDiff {
    /// The cluster's name.
    pub cluster: String,
    /// Its deliveries, by namespace and name.
    pub deliveries: Vec<DeliveryDiff>,
}

/// Replaces the values of a Secret's `data` and `stringData` by `***`; a value that differs
/// between the two sides becomes `*** (before)` / `*** (after)` so the change stays visible
/// without being shown.
pub fn mask_secrets(old: Option<&mut Value>, new: Option<&mut Value>) {
    let is_secret = |v: &Option<&mut Value>| {
        v.as_ref()
            .is_some_and(|v| v["kind"] == "Secret" && v["apiVersion"] == "v1")
    };
    if !is_secret(&old) && !is_secret(&new) {
        return;
    }
    let (mut old, mut new) = (old, new);
    for field in ["data", "stringData"] {
        let before: BTreeMap<String, Value> = old
            .as_deref()
            .and_then(|v| v.get(field)?.as_object().cloned())
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        let after: BTreeMap<String, Value> = new
            .as_deref()
            .and_then(|v| v.get(field)?.as_object().cloned())
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        for (side, mine, theirs, suffix) in [
            (old.as_deref_mut(), &before, &after, " (before)"),
            (new.as_deref_mut(), &after, &before, " (after)"),
        ] {
            let Some(map) = side.and_then(|v| v.get_mut(field)?.as_object_mut()) else {
                continue;
            };
            for (k, v) in map.iter_mut() {
                let same = theirs.get(k).is_none_or(|t| Some(t) == mine.get(k));
                *v = if same {
                    "***".into()
                } else {
                    format!("***{suffix}").into()
                };
            }
        }
    }
}

/// A unified diff (3 lines of context) between two texts, `None` when they are equal.
pub fn unified(old: &str, new: &str, old_label: &str, new_label: &str) -> Option<String> {
    lines::unified(old, new, old_label, new_label, 3)
}

/// Compares two renders of one delivery for one cluster.
pub fn compare(
    old: &[Value],
    new: &[Value],
    prune: bool,
    old_label: &str,
    new_label: &str,
) -> Vec<Change> {
    let before: HashMap<ObjectKey, &Value> = old.iter().map(|o| (ObjectKey::of(o), o)).collect();
    let after: HashMap<ObjectKey, &Value> = new.iter().map(|o| (ObjectKey::of(o), o)).collect();
    let mut changes = Vec::new();
    for obj in new {
        let key = ObjectKey::of(obj);
        match before.get(&key) {
            None => changes.push(Change::Created(key)),
            Some(prev) if *prev != obj => {
                let (mut a, mut b) = ((*prev).clone(), obj.clone());
                mask_secrets(Some(&mut a), Some(&mut b));
                let a = flotilla_render::to_yaml(&[a]);
                let b = flotilla_render::to_yaml(&[b]);
                let diff = unified(
                    &a,
                    &b,
                    &format!("{key} ({old_label})"),
                    &format!("{key} ({new_label})"),
                )
                // Equal once masked cannot happen (masking keeps changed values apart), but if
                // it did, say so rather than print an empty diff.
                .unwrap_or_else(|| "(only masked values differ)\n".to_owned());
                changes.push(Change::Changed(key, diff));
            }
            Some(_) => {}
        }
    }
    for obj in old {
        let key = ObjectKey::of(obj);
        if !after.contains_key(&key) {
            changes.push(Change::Pruned { key, kept: !prune });
        }
    }
    changes
}

/// Counts of a report: (created, changed, pruned).
pub fn totals(report: &[ClusterDiff]) -> (usize, usize, usize) {
    let mut t = (0, 0, 0);
    for c in report
        .iter()
        .flat_map(|c| &c.deliveries)
        .flat_map(|d| &d.changes)
    {
        match c {
            Change::Created(_) => t.0 += 1,
            Change::Changed(..) => t.1 += 1,
            Change::Pruned { .. } => t.2 += 1,
        }
    }
    t
}

/// The text `flotilla diff` prints.
pub fn format_report(report: &[ClusterDiff]) -> String {
    let mut out = String::new();
    for c in report {
        let _ = writeln!(out, "cluster {}", c.cluster);
        for d in &c.deliveries {
            let from = d
                .from
                .as_deref()
                .map(short_revision)
                .unwrap_or_else(|| "nothing applied".to_owned());
            let status = if d.changes.is_empty() {
                ": no changes"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  delivery {} ({from} -> {}){status}",
                d.delivery, d.to
            );
            for n in &d.notes {
                let _ = writeln!(out, "    note: {n}");
            }
            for change in &d.changes {
                match change {
                    Change::Created(k) => {
                        let _ = writeln!(out, "    + created  {k}");
                    }
                    Change::Changed(k, diff) => {
                        let _ = writeln!(out, "    ~ changed  {k}");
                        for line in diff.lines() {
                            let _ = writeln!(out, "        {line}");
                        }
                    }
                    Change::Pruned { key, kept: false } => {
                        let _ = writeln!(out, "    - pruned   {key}");
                    }
                    Change::Pruned { key, kept: true } => {
                        let _ = writeln!(
                            out,
                            "    - left Git {key} (kept in the cluster: prune is off)"
                        );
                    }
                }
            }
        }
    }
    let (created, changed, pruned) = totals(report);
    let touched = report
        .iter()
        .filter(|c| c.deliveries.iter().any(|d| !d.changes.is_empty()))
        .count();
    if created + changed + pruned == 0 {
        let _ = writeln!(out, "no changes on {} cluster(s)", report.len());
    } else {
        let _ = writeln!(
            out,
            "{created} to create, {changed} to change, {pruned} to prune on {touched} of {} cluster(s)",
            report.len()
        );
    }
    out
}

/// Splits `[NAMESPACE/]NAME`.
fn split_ref(s: &str) -> (Option<&str>, &str) {
    match s.split_once('/') {
        Some((ns, n)) => (Some(ns), n),
        None => (None, s),
    }
}

/// What the diff found, and what went wrong on the way.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Per cluster.
    pub report: Vec<ClusterDiff>,
    /// Errors (each names the delivery, the cluster and the file and line when a render failed).
    pub errors: Vec<String>,
    /// Deliveries left out, and why.
    pub skipped: Vec<String>,
}

/// Runs `flotilla diff`; returns the exit code (0 no change, 1 changes, 2 error).
pub async fn diff(
    hub: &HubArgs,
    args: DiffArgs,
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
) -> std::io::Result<u8> {
    let outcome = match compute(hub, &args).await {
        Ok(o) => o,
        Err(e) => {
            writeln!(err, "error: {e:#}")?;
            return Ok(2);
        }
    };
    for s in &outcome.skipped {
        writeln!(err, "skipped: {s}")?;
    }
    write!(out, "{}", format_report(&outcome.report))?;
    for e in &outcome.errors {
        writeln!(err, "error: {e}")?;
    }
    let (a, b, c) = totals(&outcome.report);
    Ok(if !outcome.errors.is_empty() {
        2
    } else if a + b + c > 0 {
        1
    } else {
        0
    })
}

/// Reads the fleet, renders both sides and compares them.
pub async fn compute(hub: &HubArgs, args: &DiffArgs) -> anyhow::Result<Outcome> {
    let repo = git2::Repository::discover(&args.path).with_context(|| {
        format!(
            "{} is not inside a Git repository (flotilla diff compares with commits the clusters run)",
            args.path.display()
        )
    })?;
    let max_file_bytes = crate::source::Limits::default().max_file_bytes;
    let options = flotilla_render::Options::default();
    let (proposal, to): (Box<dyn flotilla_render::Tree>, String) = match &args.revision {
        Some(rev) => {
            let snap = Snapshot::open_local(&args.path, rev, max_file_bytes)?;
            let label = format!("{rev} ({})", short_revision(&snap.commit()));
            (Box::new(snap), label)
        }
        None => {
            let root = repo
                .workdir()
                .ok_or_else(|| anyhow!("the repository has no working tree: use --revision"))?;
            let tree = flotilla_render::FsTree::new(root)
                .with_context(|| format!("opening {}", root.display()))?;
            (Box::new(tree), "working tree".to_owned())
        }
    };

    let client = crate::kube_client(hub.kubeconfig.as_deref()).await?;
    let clusters = Api::<Cluster>::all(client.clone())
        .list(&Default::default())
        .await
        .context("listing Cluster resources (are the flotilla CRDs installed?)")?
        .items;
    let delivery_api: Api<Delivery> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut deliveries = delivery_api
        .list(&Default::default())
        .await
        .context("listing Delivery resources")?
        .items;
    let sources = Api::<GitSource>::all(client.clone())
        .list(&Default::default())
        .await
        .context("listing GitSource resources")?
        .items;
    deliveries.sort_by_key(|d| (d.namespace().unwrap_or_default(), d.name_any()));

    let mut outcome = Outcome::default();
    let named = args.delivery.is_some() || args.source.is_some();
    deliveries.retain(|d| {
        let ns = d.namespace().unwrap_or_default();
        let matches = |r: &Option<String>, name: &str| {
            r.as_deref().is_none_or(|r| {
                let (rns, rname) = split_ref(r);
                rname == name && rns.is_none_or(|x| x == ns)
            })
        };
        matches(&args.delivery, &d.name_any()) && matches(&args.source, &d.spec.source_ref.name)
    });
    // HelmReleases kept in the repository (a GitSource filter leaves them out: they have none).
    let mut releases: Vec<helm::Found> = if args.source.is_some() {
        Vec::new()
    } else {
        helm::releases_in(&*proposal)?
    };
    releases.retain(|f| {
        let ns = f.release.namespace().unwrap_or_default();
        args.namespace.as_deref().is_none_or(|n| n == ns)
            && args.delivery.as_deref().is_none_or(|r| {
                let (rns, rname) = split_ref(r);
                rname == f.release.name_any() && rns.is_none_or(|x| x == ns)
            })
    });
    let live_releases: Vec<HelmRelease> = if releases.is_empty() {
        Vec::new()
    } else {
        Api::<HelmRelease>::all(client.clone())
            .list(&Default::default())
            .await
            .context("listing HelmRelease resources")?
            .items
    };
    if deliveries.is_empty() && releases.is_empty() {
        bail!("no delivery or HelmRelease matches (see `flotilla get deliveries -A`)");
    }
    if !named && !deliveries.is_empty() {
        // Only the deliveries whose source follows this repository: the source's current
        // commit must be here.
        deliveries.retain(|d| {
            let ns = d.namespace().unwrap_or_default();
            let source = sources.iter().find(|s| {
                s.namespace().as_deref() == Some(ns.as_str())
                    && s.name_any() == d.spec.source_ref.name
            });
            let commit = source
                .and_then(|s| s.status.as_ref()?.artifact.as_ref())
                .map(|a| a.revision.rsplit(':').next().unwrap_or("").to_owned());
            let here = commit.as_deref().is_some_and(|c| {
                git2::Oid::from_str(c).is_ok_and(|oid| repo.find_commit(oid).is_ok())
            });
            if !here {
                outcome.skipped.push(format!(
                    "delivery {ns}/{}: its source {ns}/{} is at {}, which is not in this \
                     repository (another repository, or run `git fetch`; --delivery or \
                     --source selects it anyway)",
                    d.name_any(),
                    d.spec.source_ref.name,
                    commit
                        .as_deref()
                        .map(short_revision)
                        .unwrap_or_else(|| "no revision yet".to_owned()),
                ));
            }
            here
        });
        if deliveries.is_empty() && releases.is_empty() {
            bail!(
                "no delivery follows the repository at {}: {}",
                args.path.display(),
                outcome.skipped.join("; ")
            );
        }
    }

    let mut sorted: Vec<&Cluster> = clusters
        .iter()
        .filter(|c| args.cluster.as_deref().is_none_or(|n| c.name_any() == n))
        .collect();
    if sorted.is_empty() {
        bail!(
            "cluster {:?} not found (see `flotilla get clusters`)",
            args.cluster.as_deref().unwrap_or_default()
        );
    }
    sorted.sort_by_key(|c| c.name_any());

    let mut baselines: HashMap<String, Snapshot> = HashMap::new();
    let helm_config = args.helm_config();
    let mut builder = helm::Builder::new(&client, &helm_config);
    for c in sorted {
        let cname = c.name_any();
        let mut entry = ClusterDiff {
            cluster: cname.clone(),
            deliveries: Vec::new(),
        };
        for d in &deliveries {
            // The hub renders for accepted clusters only; a pending one runs nothing yet.
            if !targets(d, c) || cluster_state(c) != ClusterState::Accepted {
                continue;
            }
            let dname = format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any());
            let what = format!("delivery {dname}, cluster {cname}");
            match diff_one(
                d,
                c,
                &*proposal,
                &to,
                &repo,
                &args.path,
                &mut baselines,
                &options,
            ) {
                Ok(dd) => entry.deliveries.push(dd),
                Err(e) => outcome.errors.push(format!("{what}: {e:#}")),
            }
        }
        if cluster_state(c) == ClusterState::Accepted {
            for f in &releases {
                let ns = f.release.namespace().unwrap_or_default();
                let live = live_releases.iter().find(|l| {
                    l.namespace().as_deref() == Some(ns.as_str())
                        && l.name_any() == f.release.name_any()
                });
                match builder.diff(&f.release, live, c, &to).await {
                    None => {}
                    Some(Ok(dd)) => entry.deliveries.push(dd),
                    Some(Err(e)) => outcome.errors.push(format!(
                        "{} ({}), cluster {cname}: {e:#}",
                        helm::label(&f.release),
                        f.file
                    )),
                }
            }
        }
        if !entry.deliveries.is_empty() {
            outcome.report.push(entry);
        }
    }
    if outcome.report.is_empty() && outcome.errors.is_empty() {
        bail!("the selected deliveries target no accepted cluster");
    }
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
fn diff_one(
    d: &Delivery,
    c: &Cluster,
    proposal: &dyn flotilla_render::Tree,
    to: &str,
    repo: &git2::Repository,
    repo_path: &std::path::Path,
    baselines: &mut HashMap<String, Snapshot>,
    options: &flotilla_render::Options,
) -> anyhow::Result<DeliveryDiff> {
    let cname = c.name_any();
    let (path, vars) = render_input(d, c);
    let path = path.map_err(|e| anyhow!("{e}"))?;
    let mut notes = Vec::new();
    if d.spec.suspend {
        notes.push(
            "the delivery is suspended: nothing reaches the cluster until it is resumed".to_owned(),
        );
    }

    let new = render_tree(proposal, &path, &vars, options)
        .map_err(|e| anyhow!("rendering {path} ({to}): {e}"))?;
    if new.is_empty() && !d.spec.allow_empty {
        bail!(
            "{path} renders no objects ({to}); the hub would refuse to send it (set \
             spec.allowEmpty to deliver an empty set)"
        );
    }

    // What the cluster runs: the revision it applied for this delivery.
    let applied = c
        .status
        .as_ref()
        .and_then(|s| s.deliveries.iter().find(|x| x.name == d.name_any()))
        .and_then(|x| x.revision.clone());
    let old = match &applied {
        None => Vec::new(),
        Some(rev) => {
            let commit = rev.rsplit(':').next().unwrap_or(rev).to_owned();
            let snap = match baselines.get(&commit) {
                Some(s) => s.clone(),
                None => {
                    let oid = git2::Oid::from_str(&commit)
                        .map_err(|_| anyhow!("applied revision {rev:?} names no commit"))?;
                    repo.find_commit(oid).map_err(|_| {
                        anyhow!(
                            "the cluster runs {rev}, which is not in the local repository (run \
                             `git fetch`)"
                        )
                    })?;
                    let s = Snapshot::open_local(
                        repo_path,
                        &commit,
                        crate::source::Limits::default().max_file_bytes,
                    )?;
                    baselines.insert(commit.clone(), s.clone());
                    s
                }
            };
            render_tree(&snap, &path, &vars, options).map_err(|e| {
                anyhow!(
                    "rendering {path} at the applied revision {}: {e}",
                    short_revision(rev)
                )
            })?
        }
    };

    // Is the baseline what the hub sent? The delivery's status holds the digest of the bundle
    // last sent to this cluster, rendered from the same revision.
    if let Some(rev) = &applied
        && let Some(sent) = d
            .status
            .as_ref()
            .and_then(|s| s.clusters.iter().find(|x| x.name == cname))
        && sent.revision.as_deref() == Some(rev.as_str())
        && let Some(digest) = &sent.digest
    {
        match bundle_digest(d, &old) {
            Ok(mine) if mine == *digest => {}
            Ok(_) => notes.push(format!(
                "the render of {} differs from the bundle the hub sent (the cluster's labels or \
                 variables, or the delivery, changed since): the baseline is approximate",
                short_revision(rev)
            )),
            Err(e) => notes.push(format!("cannot check the baseline: {e}")),
        }
    }
    if let Some(entry) = c
        .status
        .as_ref()
        .and_then(|s| s.deliveries.iter().find(|x| x.name == d.name_any()))
        && !entry.ready
        && !entry.reason.is_empty()
    {
        notes.push(format!("not ready on the cluster: {}", entry.reason));
    }

    let old_label = applied
        .as_deref()
        .map(short_revision)
        .unwrap_or_else(|| "nothing applied".to_owned());
    Ok(DeliveryDiff {
        delivery: format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()),
        from: applied,
        to: to.to_owned(),
        notes,
        changes: compare(&old, &new, d.spec.prune, &old_label, to),
    })
}

pub mod helm;
mod lines;

#[cfg(test)]
mod tests;
