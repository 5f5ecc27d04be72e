//! Readiness of applied objects, with the reason for anything not ready.
//!
//! Kinds whose readiness shows in their status are checked by listing them (one request per
//! kind, selected by the delivery label): Deployments, StatefulSets, DaemonSets, Jobs, Pods,
//! PersistentVolumeClaims, LoadBalancer Services, CRDs, and any custom resource (ready when its
//! `Ready` condition is True, or when it reports no conditions). Everything else is ready once
//! applied.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kube::api::{DynamicObject, ListParams};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::apply::Applier;
use crate::object::{DELIVERY_LABEL, ObjectRef};

/// The readiness of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason")]
pub enum Health {
    /// Ready.
    Ready,
    /// Not ready yet; why.
    InProgress(String),
    /// Will not become ready without a change; why.
    Failed(String),
}

/// How many not-ready objects a report names.
pub const MAX_REPORTED: usize = 20;

/// True for kinds whose readiness must be read from the cluster.
pub fn needs_check(r: &ObjectRef) -> bool {
    match (r.group.as_str(), r.kind.as_str()) {
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet")
        | ("batch", "Job")
        | ("", "Pod" | "PersistentVolumeClaim" | "Service")
        | ("apiextensions.k8s.io", "CustomResourceDefinition") => true,
        // Built-in groups end in k8s.io or have no dot; custom resources have a domain.
        (g, _) => g.contains('.') && !g.ends_with(".k8s.io"),
    }
}

fn int(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn condition<'a>(v: &'a Value, kind: &str) -> Option<&'a Value> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

fn cond_true(v: &Value, kind: &str) -> bool {
    condition(v, kind)
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some("True")
}

fn cond_text(c: &Value) -> String {
    let s = |k| c.get(k).and_then(Value::as_str).unwrap_or_default();
    match (s("reason"), s("message")) {
        ("", m) => m.to_string(),
        (r, "") => r.to_string(),
        (r, m) => format!("{r}: {m}"),
    }
}

/// Assesses a live object.
pub fn assess(r: &ObjectRef, live: &Value) -> Health {
    let generation = int(live, "/metadata/generation");
    let observed = int(live, "/status/observedGeneration");
    let behind = live.pointer("/status/observedGeneration").is_some() && observed < generation;
    let progress = |what: &str| Health::InProgress(what.to_string());
    match (r.group.as_str(), r.kind.as_str()) {
        ("apps", "Deployment") => {
            let want = live
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            if let Some(c) = condition(live, "Progressing")
                && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
            {
                return Health::Failed(cond_text(c));
            }
            if live.pointer("/status/observedGeneration").is_none() || behind {
                return progress("rollout not yet observed by the deployment controller");
            }
            let updated = int(live, "/status/updatedReplicas");
            let available = int(live, "/status/availableReplicas");
            if updated < want {
                return Health::InProgress(format!("{updated} of {want} replicas updated"));
            }
            if available < want {
                return Health::InProgress(format!("{available} of {want} replicas available"));
            }
            Health::Ready
        }
        ("apps", "StatefulSet") => {
            let want = live
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let ready = int(live, "/status/readyReplicas");
            if live.pointer("/status/observedGeneration").is_none() || behind {
                progress("rollout not yet observed by the statefulset controller")
            } else if ready < want {
                Health::InProgress(format!("{ready} of {want} replicas ready"))
            } else {
                Health::Ready
            }
        }
        ("apps", "DaemonSet") => {
            let want = int(live, "/status/desiredNumberScheduled");
            let available = int(live, "/status/numberAvailable");
            let updated = int(live, "/status/updatedNumberScheduled");
            if live.pointer("/status/observedGeneration").is_none() || behind {
                progress("rollout not yet observed by the daemonset controller")
            } else if updated < want || available < want {
                Health::InProgress(format!(
                    "{available} of {want} pods available, {updated} updated"
                ))
            } else {
                Health::Ready
            }
        }
        ("batch", "Job") => {
            if cond_true(live, "Complete") {
                Health::Ready
            } else if cond_true(live, "Failed") {
                Health::Failed(condition(live, "Failed").map(cond_text).unwrap_or_default())
            } else {
                progress("job has not completed")
            }
        }
        ("", "Pod") => match live.pointer("/status/phase").and_then(Value::as_str) {
            Some("Succeeded") => Health::Ready,
            Some("Failed") => Health::Failed("pod failed".into()),
            _ if cond_true(live, "Ready") => Health::Ready,
            _ => progress("pod is not Ready"),
        },
        ("", "PersistentVolumeClaim") => {
            match live.pointer("/status/phase").and_then(Value::as_str) {
                Some("Bound") => Health::Ready,
                phase => Health::InProgress(format!("claim is {}", phase.unwrap_or("Pending"))),
            }
        }
        ("", "Service") => {
            let lb = live.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer");
            let has_ingress = live
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            if lb && !has_ingress {
                progress("load balancer has no ingress address yet")
            } else {
                Health::Ready
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            if cond_true(live, "Established") {
                Health::Ready
            } else {
                progress("CRD is not Established")
            }
        }
        _ => {
            if cond_true(live, "Stalled") {
                return Health::Failed(
                    condition(live, "Stalled")
                        .map(cond_text)
                        .unwrap_or_default(),
                );
            }
            if behind {
                return progress("status not yet observed for the latest generation");
            }
            match condition(live, "Ready") {
                Some(c) if c.get("status").and_then(Value::as_str) == Some("True") => Health::Ready,
                Some(c) => Health::InProgress(format!("Ready is not True: {}", cond_text(c))),
                None => Health::Ready,
            }
        }
    }
}

/// The readiness of a delivery's objects.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HealthReport {
    /// How many objects are not ready (all of them, though `not_ready` keeps only the first
    /// [`MAX_REPORTED`]).
    pub not_ready_count: usize,
    /// Objects that are not ready, with why.
    pub not_ready: BTreeMap<String, Health>,
    /// True when every object is ready.
    pub healthy: bool,
    /// True when waiting stopped because the timeout passed.
    pub timed_out: bool,
}

/// Waits until every object of `delivery` in `objects` is ready, one has failed, or `timeout`
/// passes, polling every second.
pub async fn wait_healthy(
    applier: &Applier,
    delivery: &str,
    objects: &[ObjectRef],
    timeout: Duration,
) -> HealthReport {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut by_kind: HashMap<_, Vec<&ObjectRef>> = HashMap::new();
    for r in objects.iter().filter(|r| needs_check(r)) {
        by_kind.entry(r.gvk()).or_default().push(r);
    }
    loop {
        let mut not_ready = BTreeMap::new();
        for (gvk, refs) in &by_kind {
            let live = list_kind(applier, gvk, delivery).await;
            for r in refs {
                let health = match &live {
                    Err(e) => Health::InProgress(format!("cannot read {}: {e}", gvk.kind)),
                    Ok(map) => match map.get(&(r.namespace.clone(), r.name.clone())) {
                        Some(v) => assess(r, v),
                        None => Health::InProgress("not found in the cluster".into()),
                    },
                };
                if health != Health::Ready {
                    not_ready.insert(r.to_string(), health);
                }
            }
        }
        let failed = not_ready.values().any(|h| matches!(h, Health::Failed(_)));
        let now = tokio::time::Instant::now();
        if not_ready.is_empty() || failed || now >= deadline {
            let not_ready_count = not_ready.len();
            // Failures first, then the rest, up to a readable number.
            let (mut keep, rest): (BTreeMap<_, _>, BTreeMap<_, _>) = not_ready
                .into_iter()
                .partition(|(_, h)| matches!(h, Health::Failed(_)));
            for (k, v) in rest {
                if keep.len() >= MAX_REPORTED {
                    break;
                }
                keep.insert(k, v);
            }
            let not_ready = keep;
            return HealthReport {
                not_ready_count,
                healthy: not_ready_count == 0,
                timed_out: not_ready_count > 0 && !failed,
                not_ready,
            };
        }
        tokio::time::sleep(Duration::from_secs(1).min(deadline - now)).await;
    }
}

async fn list_kind(
    applier: &Applier,
    gvk: &kube::core::GroupVersionKind,
    delivery: &str,
) -> Result<HashMap<(String, String), Value>, String> {
    let (ar, _) = applier.resolve(gvk).await.map_err(|e| e.to_string())?;
    let api: kube::Api<DynamicObject> = kube::Api::all_with(applier.client().clone(), &ar);
    applier.throttle().await;
    let list = api
        .list(&ListParams::default().labels(&format!("{DELIVERY_LABEL}={delivery}")))
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .into_iter()
        .map(|o| {
            let key = (
                o.metadata.namespace.clone().unwrap_or_default(),
                o.metadata.name.clone().unwrap_or_default(),
            );
            (key, serde_json::to_value(o).unwrap_or_default())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(api: &str, kind: &str) -> ObjectRef {
        ObjectRef::of(
            &json!({"apiVersion": api, "kind": kind, "metadata": {"name": "x"}}),
            0,
        )
        .unwrap()
    }

    #[test]
    fn deployment_readiness_says_why_not() {
        let d = r("apps/v1", "Deployment");
        let mut live = json!({"metadata": {"generation": 2}, "spec": {"replicas": 3},
            "status": {"observedGeneration": 1}});
        assert_eq!(
            assess(&d, &live),
            Health::InProgress("rollout not yet observed by the deployment controller".into())
        );
        live["status"] =
            json!({"observedGeneration": 2, "updatedReplicas": 3, "availableReplicas": 1});
        assert_eq!(
            assess(&d, &live),
            Health::InProgress("1 of 3 replicas available".into())
        );
        live["status"]["availableReplicas"] = json!(3);
        assert_eq!(assess(&d, &live), Health::Ready);
        live["status"]["conditions"] = json!([{"type": "Progressing", "status": "False",
            "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"x\" has timed out progressing."}]);
        assert!(
            matches!(assess(&d, &live), Health::Failed(m) if m.starts_with("ProgressDeadlineExceeded: "))
        );
    }

    #[test]
    fn jobs_custom_resources_and_plain_kinds() {
        let job = r("batch/v1", "Job");
        let failed = json!({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}});
        assert_eq!(
            assess(&job, &failed),
            Health::Failed("BackoffLimitExceeded".into())
        );
        let cr = r("example.flotilla.dev/v1", "Widget");
        assert!(needs_check(&cr));
        assert_eq!(assess(&cr, &json!({})), Health::Ready);
        let not_ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "message": "waiting"}]}});
        assert_eq!(
            assess(&cr, &not_ready),
            Health::InProgress("Ready is not True: waiting".into())
        );
        assert!(!needs_check(&r("v1", "ConfigMap")));
        assert!(!needs_check(&r("networking.k8s.io/v1", "Ingress")));
    }
}
