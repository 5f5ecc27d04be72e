//! `GitSource` resources → running [`SourcePoller`]s, and their status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt as _};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::util::{condition, duration_or, rfc3339};
use crate::api::{
    Artifact, GitSource, GitSourceSpec, GitSourceStatus, RECONCILE_ANNOTATION, reason,
};
use crate::source::{
    self, Auth, GitCache, GitRef, PollOptions, Snapshot, SourcePoller, Verification, VerifyMode,
};

/// A source's key: `namespace/name`.
pub type SourceKey = String;

struct Running {
    spec: GitSourceSpec,
    /// The Secrets' resource versions the poller was built with.
    secret_versions: Vec<String>,
    poller: SourcePoller,
    forward: JoinHandle<()>,
    reconcile_handled: Option<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

/// Why a source could not even start.
struct Invalid {
    spec: GitSourceSpec,
    secret_versions: Vec<String>,
    message: String,
}

/// The pollers of every `GitSource`.
pub struct Sources {
    client: Client,
    cache: Arc<GitCache>,
    trigger: Arc<Notify>,
    running: HashMap<SourceKey, Running>,
    invalid: HashMap<SourceKey, Invalid>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("running", &self.running.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Key of a source.
pub fn key(namespace: &str, name: &str) -> SourceKey {
    format!("{namespace}/{name}")
}

impl Sources {
    /// No sources yet; fetched repositories go to `cache`, changes wake `trigger`.
    pub fn new(client: Client, cache: Arc<GitCache>, trigger: Arc<Notify>) -> Self {
        Self {
            client,
            cache,
            trigger,
            running: HashMap::new(),
            invalid: HashMap::new(),
        }
    }

    /// The latest good snapshot of a source.
    pub fn snapshot(&self, key: &str) -> Option<Snapshot> {
        self.running
            .get(key)
            .and_then(|r| r.poller.snapshot().borrow().clone())
    }

    /// Fetches a source now (webhooks, reconcile requests).
    pub fn fetch_now(&self, key: &str) -> bool {
        self.running
            .get(key)
            .map(|r| r.poller.fetch_now())
            .is_some()
    }

    /// The keys and URLs of running sources, for matching webhook pushes.
    pub fn urls(&self) -> Vec<(SourceKey, String)> {
        self.running
            .iter()
            .map(|(k, r)| (k.clone(), r.spec.url.clone()))
            .collect()
    }

    /// Starts, restarts and stops pollers so they match `sources`.
    pub async fn sync(&mut self, sources: &[Arc<GitSource>]) {
        let wanted: HashMap<SourceKey, &Arc<GitSource>> = sources
            .iter()
            .map(|s| (key(&s.namespace().unwrap_or_default(), &s.name_any()), s))
            .collect();
        self.running.retain(|k, _| wanted.contains_key(k));
        self.invalid.retain(|k, _| wanted.contains_key(k));
        for (k, gs) in wanted {
            let ns = gs.namespace().unwrap_or_default();
            let versions = self.secret_versions(&ns, &gs.spec).await;
            let current = self
                .running
                .get(&k)
                .map(|r| (&r.spec, &r.secret_versions))
                .or_else(|| self.invalid.get(&k).map(|i| (&i.spec, &i.secret_versions)));
            let unchanged = current.is_some_and(|(spec, v)| *spec == gs.spec && *v == versions);
            if !unchanged {
                self.running.remove(&k);
                self.invalid.remove(&k);
                if gs.spec.suspend {
                    continue;
                }
                match self.build(&ns, gs).await {
                    Ok((source, options)) => {
                        let poller = SourcePoller::spawn(self.cache.clone(), source, options);
                        let forward = forward_changes(&poller, self.trigger.clone());
                        self.running.insert(
                            k.clone(),
                            Running {
                                spec: gs.spec.clone(),
                                secret_versions: versions,
                                poller,
                                forward,
                                reconcile_handled: None,
                            },
                        );
                    }
                    Err(message) => {
                        self.invalid.insert(
                            k.clone(),
                            Invalid {
                                spec: gs.spec.clone(),
                                secret_versions: versions,
                                message,
                            },
                        );
                    }
                }
            }
            // A reconcile request fetches at once.
            if let Some(r) = self.running.get_mut(&k) {
                let requested = gs.annotations().get(RECONCILE_ANNOTATION).cloned();
                if requested.is_some() && requested != r.reconcile_handled {
                    r.poller.fetch_now();
                    r.reconcile_handled = requested;
                }
            }
        }
    }

    /// The status a source should show now.
    pub fn status(&self, gs: &GitSource) -> GitSourceStatus {
        let k = key(&gs.namespace().unwrap_or_default(), &gs.name_any());
        let previous = gs.status.clone().unwrap_or_default();
        let generation = gs.metadata.generation;
        let mut status = GitSourceStatus {
            observed_generation: generation,
            artifact: previous.artifact.clone(),
            last_handled_reconcile_at: previous.last_handled_reconcile_at.clone(),
            ..Default::default()
        };
        let prev = &previous.conditions;
        if gs.spec.suspend {
            status.conditions = vec![condition(
                prev,
                "Ready",
                status.artifact.is_some(),
                reason::SUSPENDED,
                "fetching is suspended; the last revision stays in use",
                generation,
            )];
            return status;
        }
        if let Some(invalid) = self.invalid.get(&k) {
            status.conditions = vec![
                condition(
                    prev,
                    "Ready",
                    false,
                    reason::INVALID_SPEC,
                    &invalid.message,
                    generation,
                ),
                condition(
                    prev,
                    "Stalled",
                    true,
                    reason::INVALID_SPEC,
                    &invalid.message,
                    generation,
                ),
            ];
            return status;
        }
        let Some(running) = self.running.get(&k) else {
            return status;
        };
        status.last_handled_reconcile_at = running
            .reconcile_handled
            .clone()
            .or(status.last_handled_reconcile_at);
        let s = running.poller.status().borrow().clone();
        if let Some(snapshot) = running.poller.snapshot().borrow().as_ref() {
            status.artifact = Some(Artifact {
                revision: snapshot.revision(),
                fetched_at: rfc3339(snapshot.fetched_at()),
                verified_by: snapshot.verified_by().map(str::to_owned),
            });
        }
        status.conditions = match (&s.last_error, s.reason) {
            (Some(error), Some(why)) => {
                let reason = match why {
                    source::FailureReason::SourceVerificationFailed => {
                        reason::SOURCE_VERIFICATION_FAILED
                    }
                    _ => reason::FETCH_FAILED,
                };
                let keeping = match &status.artifact {
                    Some(a) => format!("; still using {}", a.revision),
                    None => String::new(),
                };
                vec![condition(
                    prev,
                    "Ready",
                    false,
                    reason,
                    format!("{why}: {error}{keeping}"),
                    generation,
                )]
            }
            _ if status.artifact.is_some() => vec![condition(
                prev,
                "Ready",
                true,
                reason::SUCCEEDED,
                format!(
                    "fetched revision {}",
                    status
                        .artifact
                        .as_ref()
                        .map(|a| a.revision.as_str())
                        .unwrap_or_default()
                ),
                generation,
            )],
            _ => vec![condition(
                prev,
                "Reconciling",
                true,
                reason::PROGRESSING,
                "fetching",
                generation,
            )],
        };
        status
    }

    async fn secret_versions(&self, ns: &str, spec: &GitSourceSpec) -> Vec<String> {
        let api = Api::<Secret>::namespaced(self.client.clone(), ns);
        let mut out = Vec::new();
        let names = spec
            .secret_ref
            .iter()
            .map(|r| r.name.as_str())
            .chain(spec.verify.iter().map(|v| v.secret_ref.name.as_str()));
        for name in names {
            let v = match api.get_metadata_opt(name).await {
                Ok(Some(m)) => m.resource_version().unwrap_or_default(),
                Ok(None) => "missing".into(),
                Err(_) => "unreadable".into(),
            };
            out.push(v);
        }
        out
    }

    async fn build(
        &self,
        ns: &str,
        gs: &GitSource,
    ) -> Result<(source::GitSource, PollOptions), String> {
        let spec = &gs.spec;
        let reference = match &spec.reference {
            None => GitRef::Branch("main".into()),
            Some(r) => match (&r.branch, &r.tag, &r.semver, &r.commit) {
                (Some(b), None, None, None) => GitRef::Branch(b.clone()),
                (None, Some(t), None, None) => GitRef::Tag(t.clone()),
                (None, None, Some(s), None) => GitRef::Semver(s.clone()),
                (None, None, None, Some(c)) => GitRef::Commit(c.clone()),
                (None, None, None, None) => GitRef::Branch("main".into()),
                _ => return Err("spec.ref: set exactly one of branch, tag, semver, commit".into()),
            },
        };
        let mut source = source::GitSource::new(gs.name_any(), spec.url.clone(), reference);
        let api = Api::<Secret>::namespaced(self.client.clone(), ns);
        if let Some(r) = &spec.secret_ref {
            let data = read_secret(&api, ns, &r.name).await?;
            let get = |k: &str| data.get(k).cloned();
            source.auth = if let Some(key) = get("identity") {
                Auth::SshKey {
                    username: get("username").unwrap_or_default(),
                    private_key: key.into(),
                    passphrase: get("password").map(Into::into),
                    known_hosts: get("known_hosts").ok_or_else(|| {
                        format!("Secret {ns}/{}: an SSH identity needs known_hosts", r.name)
                    })?,
                }
            } else if let Some(token) = get("bearerToken") {
                Auth::Bearer {
                    token: token.into(),
                }
            } else if let (Some(username), Some(password)) = (get("username"), get("password")) {
                Auth::Basic {
                    username,
                    password: password.into(),
                }
            } else {
                return Err(format!(
                    "Secret {ns}/{} has none of identity, bearerToken, username+password",
                    r.name
                ));
            };
        }
        if let Some(v) = &spec.verify {
            let mode = match v.mode.as_str() {
                "HEAD" | "head" | "Commit" => VerifyMode::Commit,
                "Tag" | "tag" => VerifyMode::Tag,
                other => return Err(format!("spec.verify.mode: {other:?} is not HEAD or Tag")),
            };
            let data = read_secret(&api, ns, &v.secret_ref.name).await?;
            let text: String = data.values().map(|s| format!("{s}\n")).collect();
            source.verify = Some(
                Verification::parse(mode, &text)
                    .map_err(|e| format!("Secret {ns}/{}: {e}", v.secret_ref.name))?,
            );
        }
        let options = PollOptions {
            interval: duration_or(
                "interval",
                spec.interval.as_deref(),
                Duration::from_secs(60),
            )?,
            retry_interval: duration_or(
                "retryInterval",
                spec.retry_interval.as_deref(),
                Duration::from_secs(5),
            )?,
            ..PollOptions::default()
        };
        Ok((source, options))
    }
}

async fn read_secret(
    api: &Api<Secret>,
    ns: &str,
    name: &str,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {ns}/{name}: {e}"))?
        .ok_or_else(|| format!("Secret {ns}/{name} not found"))?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, v)))
        .collect())
}

/// Wakes the controller whenever the poller publishes a status (after every attempt).
fn forward_changes(poller: &SourcePoller, trigger: Arc<Notify>) -> JoinHandle<()> {
    let mut status = poller.status();
    tokio::spawn(async move {
        while status.changed().await.is_ok() {
            trigger.notify_one();
        }
    })
}
