//! `HelmRepository` and `HelmRelease` resources → chart indexes read in the background, chart
//! versions resolved and archives downloaded (cached by digest), values gathered; the result is
//! a [`HelmBuild`] per release that the delivery machinery renders per cluster.
//!
//! Nothing here blocks a pass on the network: index reads and downloads run as tasks that wake
//! the controller when done; a release waits (`SourceNotReady`) until its archive is on disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client, ResourceExt as _};
use serde_json::Value;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::util::{condition, duration_or, rfc3339};
use crate::api::{HelmRelease, HelmRepository, HelmRepositoryStatus, RECONCILE_ANNOTATION, reason};
use crate::helm::HelmConfig;
use crate::helm::repo::{self, Access, Archive, Index};
use crate::helm::template::{self, HookPolicy, Template};

/// How long after a failed download or index read before trying again.
const RETRY: Duration = Duration::from_secs(10);

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Everything needed to render a release for a cluster, except the cluster.
#[derive(Debug, Clone)]
pub struct HelmBuild {
    /// The chart archive.
    pub archive: Archive,
    /// `.Release.Name`.
    pub release_name: String,
    /// `.Release.Namespace`.
    pub namespace: String,
    /// `--kube-version`.
    pub kube_version: String,
    /// Hook policy.
    pub hooks: HookPolicy,
    /// Emit the namespace.
    pub create_namespace: bool,
    /// `valuesFrom` merged with `values`, before per-cluster substitution.
    pub values: Value,
    /// The `helm` binary.
    pub helm: std::path::PathBuf,
}

impl HelmBuild {
    /// `<chart>@<version>@sha256:<digest>`.
    pub fn revision(&self) -> String {
        format!(
            "{}@{}@sha256:{}",
            self.archive.name, self.archive.version, self.archive.digest
        )
    }

    /// Changes whenever a render could differ (for every cluster alike).
    pub fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{}|{}|{:?}|{}|{}",
            self.revision(),
            self.release_name,
            self.namespace,
            self.kube_version,
            self.hooks,
            self.create_namespace,
            self.values
        )
    }

    /// The objects for one cluster, whose substitution variables are `vars`.
    pub async fn render(&self, vars: &BTreeMap<String, String>) -> Result<Vec<Value>, String> {
        let chart = format!("{}@{}", self.archive.name, self.archive.version);
        let values = template::substitute_values(&self.values, vars)
            .map_err(|e| format!("chart {chart}: substituting variables in values: {e}"))?;
        Template {
            helm: self.helm.clone(),
            archive: self.archive.path.clone(),
            chart,
            release_name: self.release_name.clone(),
            namespace: self.namespace.clone(),
            kube_version: self.kube_version.clone(),
            values,
            hooks: self.hooks,
            create_namespace: self.create_namespace,
        }
        .render()
        .await
        .map_err(|e| e.to_string())
    }
}

/// Why a release has no build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotBuilt {
    /// The spec cannot work (`InvalidSpec`).
    Invalid(String),
    /// Waiting for the repository or a download (`SourceNotReady`).
    Waiting(String),
    /// The chart cannot be had as asked (`BuildFailed`: no such version, digest mismatch, ...).
    Failed(String),
}

/// A release's build, or why there is none.
pub type BuildResult = Result<Arc<HelmBuild>, NotBuilt>;

#[derive(Debug, Default)]
struct RepoState {
    fingerprint: String,
    started: Option<Instant>,
    in_flight: bool,
    oci: bool,
    url: String,
    index: Option<Arc<Index>>,
    digest: Option<String>,
    fetched_at: Option<String>,
    error: Option<String>,
    access: Access,
}

/// (repository, chart, version) for HTTP repositories; (repository, chart, range) for OCI.
type ArchiveKey = (String, String, String);

#[derive(Debug, Clone)]
enum ArchiveState {
    InFlight,
    Ready(Archive, Instant),
    Failed(String, Instant),
}

#[derive(Debug, Clone)]
struct ValuesState {
    fingerprint: String,
    read_at: Instant,
    result: Result<Value, String>,
}

/// The hub's Helm state; see the module docs.
pub struct Charts {
    client: Client,
    config: HelmConfig,
    trigger: Arc<Notify>,
    repos: Arc<Mutex<HashMap<String, RepoState>>>,
    /// Keyed by (repository, chart, version) for HTTP, (repository, chart, range) for OCI.
    archives: Arc<Mutex<HashMap<ArchiveKey, ArchiveState>>>,
    values: HashMap<String, ValuesState>,
}

impl std::fmt::Debug for Charts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charts")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Charts {
    /// No state yet.
    pub fn new(client: Client, config: HelmConfig, trigger: Arc<Notify>) -> Self {
        Self {
            client,
            config,
            trigger,
            repos: Arc::default(),
            archives: Arc::default(),
            values: HashMap::new(),
        }
    }

    /// Index reads and chart downloads under way.
    pub fn in_flight(&self) -> usize {
        let repos = lock(&self.repos).values().filter(|r| r.in_flight).count();
        let archives = lock(&self.archives)
            .values()
            .filter(|a| matches!(a, ArchiveState::InFlight))
            .count();
        repos + archives
    }

    /// Starts index reads that are due and returns each repository's status.
    pub fn sync(
        &mut self,
        repositories: &[Arc<HelmRepository>],
    ) -> Vec<(Arc<HelmRepository>, HelmRepositoryStatus)> {
        let mut out = Vec::new();
        let mut present = Vec::new();
        for r in repositories {
            let ns = r.namespace().unwrap_or_default();
            let k = key(&ns, &r.name_any());
            present.push(k.clone());
            let generation = r.metadata.generation;
            let prev = r.status.clone().unwrap_or_default().conditions;
            let mut status = HelmRepositoryStatus {
                observed_generation: generation,
                ..Default::default()
            };
            let url = r.spec.url.trim().to_owned();
            let oci = url.starts_with("oci://");
            let invalid = if !(oci || url.starts_with("http://") || url.starts_with("https://")) {
                Some(format!(
                    "spec.url: {url:?} is not an http://, https:// or oci:// URL"
                ))
            } else {
                duration_or(
                    "interval",
                    r.spec.interval.as_deref(),
                    Duration::from_secs(600),
                )
                .err()
            };
            if let Some(why) = invalid {
                status.conditions = vec![
                    condition(
                        &prev,
                        "Ready",
                        false,
                        reason::INVALID_SPEC,
                        &why,
                        generation,
                    ),
                    condition(
                        &prev,
                        "Stalled",
                        true,
                        reason::INVALID_SPEC,
                        &why,
                        generation,
                    ),
                ];
                lock(&self.repos).remove(&k);
                out.push((r.clone(), status));
                continue;
            }
            let interval = duration_or(
                "interval",
                r.spec.interval.as_deref(),
                Duration::from_secs(600),
            )
            .unwrap_or(Duration::from_secs(600));
            let fingerprint = format!(
                "{}|{:?}",
                serde_json::to_string(&r.spec).unwrap_or_default(),
                r.annotations().get(RECONCILE_ANNOTATION)
            );
            let mut repos = lock(&self.repos);
            let state = repos.entry(k.clone()).or_default();
            let changed = state.fingerprint != fingerprint;
            let due = changed
                || state.started.is_none_or(|t| {
                    t.elapsed() >= interval || (state.error.is_some() && t.elapsed() >= RETRY)
                });
            if due && !state.in_flight && !r.spec.suspend {
                state.fingerprint = fingerprint;
                state.started = Some(Instant::now());
                state.in_flight = true;
                state.oci = oci;
                state.url = url.clone();
                if changed {
                    state.index = None;
                    state.error = None;
                }
                self.spawn_read(k.clone(), r.clone(), url.clone(), oci);
            }
            status.charts = state.index.as_ref().map(|i| i.entries.len() as u32);
            status.index_digest = state.digest.clone();
            status.fetched_at = state.fetched_at.clone();
            let (ok, why, message) = match (&state.error, &state.index, oci) {
                (Some(e), _, _) => (false, reason::FETCH_FAILED, e.clone()),
                (None, _, true) if state.fetched_at.is_some() => (
                    true,
                    reason::SUCCEEDED,
                    "OCI registry: charts are pulled per release".to_owned(),
                ),
                (None, Some(i), false) => (
                    true,
                    reason::SUCCEEDED,
                    format!("index read: {} chart(s)", i.entries.len()),
                ),
                _ => (false, reason::PROGRESSING, "reading the index".to_owned()),
            };
            let mut conds = vec![condition(&prev, "Ready", ok, why, &message, generation)];
            if r.spec.suspend {
                conds[0].message.push_str("; suspended");
            }
            status.conditions = conds;
            out.push((r.clone(), status));
        }
        lock(&self.repos).retain(|k, _| present.contains(k));
        out
    }

    fn spawn_read(&self, k: String, r: Arc<HelmRepository>, url: String, oci: bool) {
        let repos = self.repos.clone();
        let trigger = self.trigger.clone();
        let client = self.client.clone();
        tokio::spawn(async move {
            let ns = r.namespace().unwrap_or_default();
            let result = async {
                let access = read_access(&client, &ns, &r).await?;
                if oci {
                    return Ok((access, None));
                }
                let (index, digest) = repo::fetch_index(&url, &access)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((access, Some((index, digest))))
            }
            .await;
            let mut repos = lock(&repos);
            let Some(state) = repos.get_mut(&k) else {
                return;
            };
            state.in_flight = false;
            match result {
                Ok((access, index)) => {
                    if let Some((index, digest)) = index {
                        info!(repository = %k, charts = index.entries.len(), "chart index read");
                        state.index = Some(Arc::new(index));
                        state.digest = Some(digest);
                    }
                    state.access = access;
                    state.error = None;
                    state.fetched_at = Some(rfc3339(SystemTime::now()));
                }
                Err(e) => {
                    warn!(repository = %k, error = %e, "reading the chart repository");
                    state.error = Some(e);
                }
            }
            drop(repos);
            trigger.notify_one();
        });
    }

    /// The build of each release (by `namespace/name`), or why there is none.
    pub async fn builds(&mut self, releases: &[Arc<HelmRelease>]) -> HashMap<String, BuildResult> {
        let mut out = HashMap::new();
        let mut present = Vec::new();
        for hr in releases {
            let ns = hr.namespace().unwrap_or_default();
            let k = key(&ns, &hr.name_any());
            present.push(k.clone());
            let b = self.build(hr, &ns, &k).await;
            out.insert(k, b);
        }
        self.values.retain(|k, _| present.contains(k));
        out
    }

    async fn build(&mut self, hr: &HelmRelease, ns: &str, k: &str) -> BuildResult {
        let spec = &hr.spec;
        let hooks = HookPolicy::parse(spec.hooks.as_deref())
            .map_err(|e| NotBuilt::Invalid(e.to_string()))?;
        if spec.chart.name.trim().is_empty() {
            return Err(NotBuilt::Invalid("spec.chart.name is empty".into()));
        }
        if let Some(r) = &spec.chart.version {
            repo::parse_range(r).map_err(|e| NotBuilt::Invalid(e.to_string()))?;
        }
        if let Some(v) = spec.values.as_ref()
            && !v.is_object()
        {
            return Err(NotBuilt::Invalid("spec.values must be a map".into()));
        }
        let interval = duration_or(
            "interval",
            spec.interval.as_deref(),
            Duration::from_secs(600),
        )
        .map_err(NotBuilt::Invalid)?;
        let repo_key = key(ns, &spec.chart.source_ref.name);
        let (oci, url, index, access, repo_error) = {
            let repos = lock(&self.repos);
            match repos.get(&repo_key) {
                None => {
                    return Err(NotBuilt::Waiting(format!(
                        "HelmRepository {repo_key} does not exist or is not valid"
                    )));
                }
                Some(s) => (
                    s.oci,
                    s.url.clone(),
                    s.index.clone(),
                    s.access.clone(),
                    s.error.clone(),
                ),
            }
        };
        let chart = spec.chart.name.clone();
        let range = spec.chart.version.clone();
        let mut entry = None;
        let archive_key = if oci {
            (
                repo_key.clone(),
                chart.clone(),
                range.clone().unwrap_or_default(),
            )
        } else {
            let Some(index) = index else {
                return Err(NotBuilt::Waiting(match repo_error {
                    Some(e) => format!("HelmRepository {repo_key}: {e}"),
                    None => format!("HelmRepository {repo_key} has not been read yet"),
                }));
            };
            let version = index
                .resolve(&url, &chart, range.as_deref())
                .map_err(|e| NotBuilt::Failed(e.to_string()))?;
            let k = (repo_key.clone(), chart.clone(), version.version.clone());
            entry = Some(version);
            k
        };
        let archive = self.archive(archive_key, oci, &url, entry, access, interval)?;
        let values = self.values(hr, ns, k, interval).await?;
        Ok(Arc::new(HelmBuild {
            archive,
            release_name: spec.release_name.clone().unwrap_or_else(|| hr.name_any()),
            namespace: spec
                .target_namespace
                .clone()
                .unwrap_or_else(|| ns.to_owned()),
            kube_version: spec
                .kube_version
                .clone()
                .unwrap_or_else(|| self.config.kube_version.clone()),
            hooks,
            create_namespace: spec.create_namespace,
            values,
            helm: self.config.binary.clone(),
        }))
    }

    /// The archive for `key` if on disk; otherwise starts getting it.
    fn archive(
        &self,
        key: ArchiveKey,
        oci: bool,
        url: &str,
        version: Option<repo::ChartVersion>,
        access: Access,
        interval: Duration,
    ) -> Result<Archive, NotBuilt> {
        let mut archives = lock(&self.archives);
        let what = format!("chart {}@{}", key.1, key.2);
        match archives.get(&key) {
            Some(ArchiveState::Ready(a, at)) if !oci || at.elapsed() < interval => {
                return Ok(a.clone());
            }
            Some(ArchiveState::InFlight) => {
                return Err(NotBuilt::Waiting(format!("downloading {what}")));
            }
            Some(ArchiveState::Failed(e, at)) if at.elapsed() < RETRY => {
                return Err(NotBuilt::Failed(e.clone()));
            }
            _ => {}
        }
        // An OCI re-resolution keeps the old archive in use meanwhile.
        let previous = match archives.get(&key) {
            Some(ArchiveState::Ready(a, _)) => Some(a.clone()),
            _ => None,
        };
        archives.insert(key.clone(), ArchiveState::InFlight);
        drop(archives);
        let cache = self.config.cache.clone();
        let helm = self.config.binary.clone();
        let url = url.to_owned();
        let archives = self.archives.clone();
        let trigger = self.trigger.clone();
        let k = key.clone();
        tokio::spawn(async move {
            let result = if oci {
                let range = (!k.2.is_empty()).then_some(k.2.as_str());
                repo::pull_oci(&helm, &url, &k.1, range, &access, &cache).await
            } else {
                match version {
                    Some(v) => repo::download(&url, &v, &access, &cache).await,
                    None => Err(repo::Error::NoChart {
                        chart: k.1.clone(),
                        url: url.clone(),
                    }),
                }
            };
            let state = match result {
                Ok(a) => {
                    info!(chart = %a.name, version = %a.version, digest = %a.digest, "chart archive ready");
                    ArchiveState::Ready(a, Instant::now())
                }
                Err(e) => {
                    warn!(chart = %k.1, error = %e, "getting the chart archive");
                    ArchiveState::Failed(e.to_string(), Instant::now())
                }
            };
            lock(&archives).insert(k, state);
            trigger.notify_one();
        });
        match previous {
            Some(a) => Ok(a),
            None => Err(NotBuilt::Waiting(format!("downloading {what}"))),
        }
    }

    /// `valuesFrom` merged with `values`, read again when the release changes or every
    /// `interval`.
    async fn values(
        &mut self,
        hr: &HelmRelease,
        ns: &str,
        k: &str,
        interval: Duration,
    ) -> Result<Value, NotBuilt> {
        let fingerprint = format!(
            "{:?}|{:?}",
            hr.metadata.generation,
            hr.annotations().get(RECONCILE_ANNOTATION)
        );
        if let Some(v) = self.values.get(k)
            && v.fingerprint == fingerprint
            && v.read_at.elapsed() < interval
            && v.result.is_ok()
        {
            return v.result.clone().map_err(NotBuilt::Failed);
        }
        let result = gather_values(&self.client, ns, hr).await;
        self.values.insert(
            k.to_owned(),
            ValuesState {
                fingerprint,
                read_at: Instant::now(),
                result: result.clone(),
            },
        );
        result.map_err(NotBuilt::Failed)
    }
}

/// `valuesFrom` (read from the management cluster, in order) merged with `values`.
async fn gather_values(client: &Client, ns: &str, hr: &HelmRelease) -> Result<Value, String> {
    let mut merged = Value::Object(Default::default());
    for r in &hr.spec.values_from {
        if let Some(v) = read_values(client, ns, r).await? {
            template::merge_values(&mut merged, v);
        }
    }
    if let Some(v) = &hr.spec.values {
        template::merge_values(&mut merged, v.clone());
    }
    Ok(merged)
}

/// Builds `hr` once, outside the controller (for `flotilla diff`), as the controller would:
/// its `HelmRepository` and credentials read from the management cluster, the chart version
/// resolved (`version` overrides the release's range: the exact version a cluster runs), the
/// archive taken from `config.cache` or downloaded into it (cached by digest, checked against
/// the index), values gathered. Errors name the release, repository and chart.
pub async fn build_once(
    client: &Client,
    config: &HelmConfig,
    hr: &HelmRelease,
    version: Option<&str>,
) -> Result<HelmBuild, String> {
    let ns = hr.namespace().unwrap_or_else(|| "default".into());
    let spec = &hr.spec;
    let what = format!("HelmRelease {ns}/{}", hr.name_any());
    let hooks = HookPolicy::parse(spec.hooks.as_deref()).map_err(|e| format!("{what}: {e}"))?;
    if spec.chart.name.trim().is_empty() {
        return Err(format!("{what}: spec.chart.name is empty"));
    }
    let repo_name = &spec.chart.source_ref.name;
    let repository = Api::<HelmRepository>::namespaced(client.clone(), &ns)
        .get_opt(repo_name)
        .await
        .map_err(|e| format!("reading HelmRepository {ns}/{repo_name}: {e}"))?
        .ok_or_else(|| format!("{what}: HelmRepository {ns}/{repo_name} does not exist"))?;
    let url = repository.spec.url.trim().to_owned();
    let access = read_access(client, &ns, &repository).await?;
    let range = version.or(spec.chart.version.as_deref());
    let archive = if url.starts_with("oci://") {
        repo::pull_oci(
            &config.binary,
            &url,
            &spec.chart.name,
            range,
            &access,
            &config.cache,
        )
        .await
        .map_err(|e| e.to_string())?
    } else {
        let (index, _) = repo::fetch_index(&url, &access)
            .await
            .map_err(|e| e.to_string())?;
        let v = index
            .resolve(&url, &spec.chart.name, range)
            .map_err(|e| e.to_string())?;
        repo::download(&url, &v, &access, &config.cache)
            .await
            .map_err(|e| e.to_string())?
    };
    let values = gather_values(client, &ns, hr).await?;
    Ok(HelmBuild {
        archive,
        release_name: spec.release_name.clone().unwrap_or_else(|| hr.name_any()),
        namespace: spec.target_namespace.clone().unwrap_or_else(|| ns.clone()),
        kube_version: spec
            .kube_version
            .clone()
            .unwrap_or_else(|| config.kube_version.clone()),
        hooks,
        create_namespace: spec.create_namespace,
        values,
        helm: config.binary.clone(),
    })
}

/// One `valuesFrom` entry: `None` when optional and missing.
async fn read_values(
    client: &Client,
    ns: &str,
    r: &crate::api::ValuesReference,
) -> Result<Option<Value>, String> {
    let key = r.values_key.clone().unwrap_or_else(|| "values.yaml".into());
    let what = format!("{} {ns}/{}", r.kind, r.name);
    let text: Option<String> = match r.kind.as_str() {
        "ConfigMap" => {
            let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(&r.name)
                .await
                .map_err(|e| format!("reading {what}: {e}"))?;
            cm.and_then(|cm| cm.data.and_then(|d| d.get(&key).cloned()))
        }
        "Secret" => {
            let s = Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt(&r.name)
                .await
                .map_err(|e| format!("reading {what}: {e}"))?;
            match s.and_then(|s| s.data.and_then(|d| d.get(&key).cloned())) {
                Some(b) => Some(
                    String::from_utf8(b.0).map_err(|_| format!("{what} key {key}: not UTF-8"))?,
                ),
                None => None,
            }
        }
        other => {
            return Err(format!(
                "spec.valuesFrom: kind {other:?} is not ConfigMap or Secret"
            ));
        }
    };
    let Some(text) = text else {
        return if r.optional {
            Ok(None)
        } else {
            Err(format!("{what} has no key {key} (or does not exist)"))
        };
    };
    let v: Value = serde_yaml::from_str(&text)
        // serde_yaml's message names line and column, never the content.
        .map_err(|e| format!("{what} key {key}: invalid values YAML: {e}"))?;
    match v {
        Value::Null => Ok(None),
        Value::Object(_) => Ok(Some(v)),
        _ => Err(format!("{what} key {key}: values must be a map")),
    }
}

/// Credentials and CA of a repository, from its Secrets.
async fn read_access(client: &Client, ns: &str, r: &HelmRepository) -> Result<Access, String> {
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let mut access = Access::default();
    let get = |name: String| {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_opt(&name)
                .await
                .map_err(|e| format!("reading Secret {ns}/{name}: {e}"))?
                .ok_or_else(|| format!("Secret {ns}/{name} does not exist"))
                .map(|s| s.data.unwrap_or_default())
        }
    };
    let text = |d: &BTreeMap<String, k8s_openapi::ByteString>, k: &str| {
        d.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
    };
    if let Some(s) = &r.spec.secret_ref {
        let data = get(s.name.clone()).await?;
        match (
            text(&data, "username"),
            text(&data, "password"),
            text(&data, "bearerToken"),
        ) {
            (Some(u), Some(p), _) => access.basic = Some((u, p)),
            (_, _, Some(t)) => access.bearer = Some(t),
            _ => {
                return Err(format!(
                    "Secret {ns}/{} has neither username + password nor bearerToken",
                    s.name
                ));
            }
        }
    }
    if let Some(s) = &r.spec.cert_secret_ref {
        let data = get(s.name.clone()).await?;
        access.ca_pem = Some(
            data.get("ca.crt")
                .map(|b| b.0.clone())
                .ok_or_else(|| format!("Secret {ns}/{} has no ca.crt", s.name))?,
        );
    }
    Ok(access)
}
