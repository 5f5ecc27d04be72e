//! Server-side apply of a bundle's objects, with per-object results.
//!
//! Order: CustomResourceDefinitions and Namespaces first, then — once every CRD is Established —
//! everything else. Objects within a phase are applied concurrently (bounded by
//! [`ApplyConfig::concurrency`]) under a client-side rate limit ([`ApplyConfig::qps`] and
//! [`ApplyConfig::burst`]). A failing object never stops the others; transient failures (429,
//! 5xx, connection errors, a namespace that is still being created) are retried with
//! exponential backoff and jitter.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, warn};

use crate::object::{DELIVERY_LABEL, ObjectRef};

/// The field manager flotilla applies as.
pub const FIELD_MANAGER: &str = "flotilla";

/// How fast and how hard the agent talks to its API server.
#[derive(Debug, Clone)]
pub struct ApplyConfig {
    /// Objects applied at the same time.
    pub concurrency: usize,
    /// Sustained requests per second to the API server.
    pub qps: u32,
    /// Requests allowed in a burst above `qps`.
    pub burst: u32,
    /// Retries of a transient failure before the object is reported failed.
    pub max_retries: u32,
    /// How long to wait for applied CRDs to become Established.
    pub crd_timeout: Duration,
}

impl Default for ApplyConfig {
    /// Defaults tuned with `bench apply` (see docs/benchmarks.md).
    fn default() -> Self {
        Self {
            concurrency: 16,
            qps: 500,
            burst: 1000,
            max_retries: 5,
            crd_timeout: Duration::from_secs(30),
        }
    }
}

// The apply settings travel signed inside bundles, so their types live in `flotilla-bundle`.
pub use flotilla_bundle::{ConflictPolicy, IgnoreRule};

/// What applying one object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The object did not exist and was created.
    Created,
    /// The object existed and at least one field flotilla owns changed.
    Configured,
    /// The object already matched the bundle.
    Unchanged,
    /// The API server refused the object; see the message.
    Failed,
}

/// The result of applying one object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectResult {
    /// Which object.
    pub object: ObjectRef,
    /// What happened.
    pub action: Action,
    /// For failures: the API server's message (or the transport error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The object's resourceVersion after the apply.
    #[serde(skip)]
    pub resource_version: Option<String>,
    /// The fields flotilla owns after the apply (`managedFields[].fieldsV1` of its Apply entry).
    #[serde(skip)]
    pub owned_fields: Option<Value>,
}

/// Errors of the applier outside a single object's result.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server does not serve the object's kind.
    #[error("the API server does not serve {gvk}")]
    UnknownKind {
        /// `group/version/Kind`.
        gvk: String,
        /// The discovery failure.
        #[source]
        source: kube::Error,
    },
    /// Deleting an object failed.
    #[error("deleting {object}")]
    Delete {
        /// The object.
        object: ObjectRef,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
}

/// Server-side applies objects to one cluster.
#[derive(Clone)]
pub struct Applier {
    client: Client,
    config: ApplyConfig,
    limiter: Arc<DefaultDirectRateLimiter>,
    kinds: Arc<Mutex<HashMap<GroupVersionKind, (ApiResource, bool)>>>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Per-delivery settings that change how objects are applied.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// The delivery the objects belong to (set as the [`DELIVERY_LABEL`]).
    pub delivery: String,
    /// Conflict policy.
    pub conflicts: ConflictPolicy,
    /// Ignore rules.
    pub ignore: Vec<IgnoreRule>,
}

impl Applier {
    /// An applier for the cluster `client` talks to.
    pub fn new(client: Client, config: ApplyConfig) -> Self {
        let qps = NonZeroU32::new(config.qps.max(1)).expect("non-zero");
        let burst = NonZeroU32::new(config.burst.max(1)).expect("non-zero");
        Self {
            client,
            limiter: Arc::new(RateLimiter::direct(
                Quota::per_second(qps).allow_burst(burst),
            )),
            config,
            kinds: Default::default(),
        }
    }

    /// The Kubernetes client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Waits for a request slot under the configured rate limit.
    pub async fn throttle(&self) {
        self.limiter.until_ready().await;
    }

    /// The API resource of `gvk` and whether it is namespaced, from discovery (cached).
    pub async fn resolve(&self, gvk: &GroupVersionKind) -> Result<(ApiResource, bool), Error> {
        if let Some(found) = self.kinds.lock().expect("kinds lock").get(gvk) {
            return Ok(found.clone());
        }
        self.throttle().await;
        let (ar, caps) = kube::discovery::pinned_kind(&self.client, gvk)
            .await
            .map_err(|source| Error::UnknownKind {
                gvk: format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind),
                source,
            })?;
        let found = (ar, caps.scope == Scope::Namespaced);
        self.kinds
            .lock()
            .expect("kinds lock")
            .insert(gvk.clone(), found.clone());
        Ok(found)
    }

    /// A dynamic API handle for `r` (whose namespace must already be filled in).
    pub async fn api(&self, r: &ObjectRef) -> Result<Api<DynamicObject>, Error> {
        let (ar, namespaced) = self.resolve(&r.gvk()).await?;
        Ok(if namespaced {
            Api::namespaced_with(self.client.clone(), &r.namespace, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        })
    }

    /// Fills in the namespace of namespaced objects that have none (`default`, as kubectl
    /// does) and clears it on cluster-scoped ones. Fails if the kind is not served.
    pub async fn normalise(&self, r: &mut ObjectRef, obj: &mut Value) -> Result<(), Error> {
        let (_, namespaced) = self.resolve(&r.gvk()).await?;
        crate::object::normalise_scope(r, obj, namespaced);
        Ok(())
    }

    /// Applies every object: CRDs and Namespaces first, then the rest once CRDs are
    /// Established. `known` gives the resourceVersion the caller last saw for an object, or
    /// `None` if it believes the object does not exist. Results are in bundle order.
    pub async fn apply_all(
        &self,
        objects: &[(ObjectRef, Value)],
        opts: &ApplyOptions,
        known: &(dyn Fn(&ObjectRef) -> Option<String> + Sync),
    ) -> Vec<ObjectResult> {
        let (first, rest): (Vec<usize>, Vec<usize>) =
            (0..objects.len()).partition(|&i| objects[i].0.is_crd() || objects[i].0.is_namespace());
        let mut results: Vec<Option<ObjectResult>> = vec![None; objects.len()];
        for (i, r) in self.apply_indices(objects, &first, opts, known).await {
            results[i] = Some(r);
        }
        let crds: Vec<&ObjectRef> = first
            .iter()
            .filter(|&&i| objects[i].0.is_crd())
            .map(|&i| &objects[i].0)
            .collect();
        if !crds.is_empty() {
            self.wait_established(&crds).await;
            // Kinds a new CRD serves may have been looked up (and failed) before.
            self.kinds.lock().expect("kinds lock").clear();
        }
        for (i, r) in self.apply_indices(objects, &rest, opts, known).await {
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.expect("every object applied"))
            .collect()
    }

    async fn apply_indices(
        &self,
        objects: &[(ObjectRef, Value)],
        indices: &[usize],
        opts: &ApplyOptions,
        known: &(dyn Fn(&ObjectRef) -> Option<String> + Sync),
    ) -> Vec<(usize, ObjectResult)> {
        // Closures over owned indices (not `&usize`) keep the future `Send` for any caller.
        futures::stream::iter(indices.iter().copied().map(|i| {
            let (r, obj) = &objects[i];
            let known_rv = known(r);
            async move { (i, self.apply_one(r, obj, opts, known_rv).await) }
        }))
        .buffer_unordered(self.config.concurrency.max(1))
        .collect()
        .await
    }

    /// Applies one object, retrying transient failures.
    pub async fn apply_one(
        &self,
        r: &ObjectRef,
        obj: &Value,
        opts: &ApplyOptions,
        known_rv: Option<String>,
    ) -> ObjectResult {
        let failed = |message: String| ObjectResult {
            object: r.clone(),
            action: Action::Failed,
            message: Some(message),
            resource_version: None,
            owned_fields: None,
        };
        let api = match self.api(r).await {
            Ok(api) => api,
            Err(e) => return failed(error_chain(&e)),
        };
        let mut body = obj.clone();
        body["metadata"]["labels"][DELIVERY_LABEL] = Value::String(opts.delivery.clone());
        if known_rv.is_some() {
            for rule in opts
                .ignore
                .iter()
                .filter(|rule| rule.matches(&r.kind, &r.namespace, &r.name))
            {
                for p in &rule.paths {
                    remove_pointer(&mut body, p);
                }
            }
        }
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if opts.conflicts == ConflictPolicy::Force {
            params = params.force();
        }
        let started = chrono_now_seconds();
        let mut attempt = 0;
        loop {
            self.throttle().await;
            match api.patch(&r.name, &params, &Patch::Apply(&body)).await {
                Ok(live) => return classify(r, live, known_rv.as_deref(), started),
                Err(e) if attempt < self.config.max_retries && transient(&e) => {
                    attempt += 1;
                    let delay = backoff(attempt);
                    debug!(object = %r, attempt, error = %e, delay_ms = delay.as_millis() as u64, "retrying apply");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return failed(api_message(&e)),
            }
        }
    }

    /// Waits (up to [`ApplyConfig::crd_timeout`]) for CRDs to be Established. A CRD that is not
    /// shows up as failures of its custom objects, which name the missing kind.
    async fn wait_established(&self, crds: &[&ObjectRef]) {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let deadline = tokio::time::Instant::now() + self.config.crd_timeout;
        for crd in crds {
            loop {
                self.throttle().await;
                let established = api
                    .get_opt(&crd.name)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|c| {
                        c.status
                            .and_then(|s| s.conditions)
                            .unwrap_or_default()
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                if established {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    warn!(crd = %crd.name, "CRD not Established in time");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Deletes `r` (background propagation). Returns false if it was already gone.
    pub async fn delete(&self, r: &ObjectRef) -> Result<bool, Error> {
        let api = self.api(r).await?;
        self.throttle().await;
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        match api.delete(&r.name, &params).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(source) => Err(Error::Delete {
                object: r.clone(),
                source,
            }),
        }
    }
}

/// The current time in whole seconds, as Kubernetes timestamps are.
fn chrono_now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Decides created / configured / unchanged from the applied object.
fn classify(
    r: &ObjectRef,
    live: DynamicObject,
    known_rv: Option<&str>,
    started: i64,
) -> ObjectResult {
    let rv = live.metadata.resource_version.clone();
    let entry = live
        .metadata
        .managed_fields
        .as_ref()
        .and_then(|m| {
            m.iter().find(|e| {
                e.manager.as_deref() == Some(FIELD_MANAGER)
                    && e.operation.as_deref() == Some("Apply")
            })
        })
        .cloned();
    let created_at = live
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or_default();
    let changed_at = entry
        .as_ref()
        .and_then(|e| e.time.as_ref())
        .map(|t| t.0.as_second())
        .unwrap_or(i64::MAX);
    let action = if known_rv.is_some() && known_rv == rv.as_deref() {
        Action::Unchanged
    } else if known_rv.is_none() && created_at >= started {
        Action::Created
    } else if changed_at < started {
        // flotilla's fields were last changed before this apply: it was a no-op.
        Action::Unchanged
    } else {
        Action::Configured
    };
    ObjectResult {
        object: r.clone(),
        action,
        message: None,
        resource_version: rv,
        owned_fields: entry.and_then(|e| e.fields_v1).map(|f| f.0),
    }
}

/// True for failures worth retrying.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            matches!(s.code, 429 | 500 | 502 | 503 | 504)
                // The namespace is being created by this same apply.
                || (s.code == 404 && s.message.contains("namespaces"))
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Exponential backoff with full jitter: up to 100 ms · 2^(attempt-1), at most 5 s.
pub fn backoff(attempt: u32) -> Duration {
    let cap = (100u64 << attempt.saturating_sub(1).min(6)).min(5_000);
    Duration::from_millis(rand::random_range(cap / 2..=cap))
}

/// The API server's own message for a refused request, else the error chain.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => error_chain(other),
    }
}

/// An error with its causes, `a: b: c`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Removes the value at JSON pointer `p` from `v`, if present.
pub fn remove_pointer(v: &mut Value, p: &str) {
    let Some((parent, last)) = p.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match v.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.remove(&last);
        }
        Some(Value::Array(a)) => {
            if let Ok(i) = last.parse::<usize>()
                && i < a.len()
            {
                a.remove(i);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn remove_pointer_handles_maps_arrays_and_escapes() {
        let mut v = json!({"spec": {"replicas": 3, "a/b": 1, "list": [1, 2, 3]}});
        remove_pointer(&mut v, "/spec/replicas");
        remove_pointer(&mut v, "/spec/a~1b");
        remove_pointer(&mut v, "/spec/list/1");
        remove_pointer(&mut v, "/spec/missing/deeper");
        assert_eq!(v, json!({"spec": {"list": [1, 3]}}));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..10 {
            let d = backoff(attempt);
            assert!(d <= Duration::from_secs(5), "{d:?}");
        }
        assert!(backoff(1) <= Duration::from_millis(100));
        assert!(backoff(4) >= Duration::from_millis(400));
    }
}
