//! Drift detection from server-side-apply field ownership.
//!
//! After every apply the agent remembers the fields flotilla owns (the `fieldsV1` of its
//! `Apply` entry in `managedFields`). When anyone else changes one of those fields — `kubectl
//! edit`, another controller, a forced apply — the API server moves the field to that manager,
//! so flotilla's set shrinks. A metadata-only watch per kind (selected by the delivery label)
//! sees that within milliseconds; comparing the sets tells exactly which fields drifted and who
//! took them, without fetching whole objects or diffing against defaults.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::apply::IgnoreRule;
use crate::object::ObjectRef;

/// What happened to a drifted object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum DriftKind {
    /// Fields flotilla owns were changed by other managers.
    Modified {
        /// The fields, as paths such as `spec.template.spec.containers[name=web].image`.
        fields: Vec<String>,
        /// Field managers that now own them (e.g. `kubectl-edit`).
        managers: Vec<String>,
    },
    /// The object was deleted.
    Deleted,
}

/// One drift: reported when detected, and again when corrected (or when correction failed).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftEvent {
    /// The delivery that owns the object.
    pub delivery: String,
    /// The object.
    pub object: ObjectRef,
    /// What changed.
    pub kind: DriftKind,
    /// When the agent saw it (Unix time, milliseconds).
    pub detected_ms: u64,
    /// When the agent put it back (Unix time, milliseconds), if it did.
    pub corrected_ms: Option<u64>,
    /// Why correction failed, if it did.
    pub error: Option<String>,
    /// True when the delivery is report-only, so nothing was corrected.
    pub report_only: bool,
}

pub use flotilla_bundle::DriftMode;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The `fieldsV1` paths present in `expected` but missing from `current`, each as a list of
/// raw `fieldsV1` keys (`f:spec`, `k:{"name":"web"}`, ...).
pub fn lost_fields(expected: &Value, current: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    walk_lost(expected, Some(current), &mut Vec::new(), &mut out);
    out
}

fn walk_lost(
    expected: &Value,
    current: Option<&Value>,
    path: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    let Some(exp) = expected.as_object() else {
        return;
    };
    for (k, sub) in exp {
        if k == "." {
            continue;
        }
        path.push(k.clone());
        match current.and_then(|c| c.get(k)) {
            None => out.push(path.clone()),
            Some(cur) => walk_lost(sub, Some(cur), path, out),
        }
        path.pop();
    }
}

/// Renders raw `fieldsV1` keys as a readable path: `spec.containers[name=web].image`.
pub fn display_path(keys: &[String]) -> String {
    let mut s = String::new();
    for k in keys {
        if let Some(f) = k.strip_prefix("f:") {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(f);
        } else if let Some(key) = k.strip_prefix("k:") {
            let fields: serde_json::Map<String, Value> =
                serde_json::from_str(key).unwrap_or_default();
            let inner: Vec<String> = fields
                .iter()
                .map(|(n, v)| {
                    format!(
                        "{n}={}",
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string())
                    )
                })
                .collect();
            s.push_str(&format!("[{}]", inner.join(",")));
        } else if let Some(v) = k.strip_prefix("v:") {
            s.push_str(&format!("[{v}]"));
        } else if let Some(i) = k.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

/// True if an ignore rule for `object` covers the field at `keys`: the rule's pointer segments
/// match the path's field names from the start, `*` (or any index) matching a list element.
pub fn ignored(rules: &[IgnoreRule], object: &ObjectRef, keys: &[String]) -> bool {
    let segments: Vec<String> = keys
        .iter()
        .map(|k| {
            k.strip_prefix("f:")
                .map(str::to_string)
                .unwrap_or_else(|| "*".into())
        })
        .collect();
    rules
        .iter()
        .filter(|r| r.matches(&object.kind, &object.namespace, &object.name))
        .any(|r| {
            r.paths.iter().any(|p| {
                let want: Vec<String> = p
                    .split('/')
                    .skip(1)
                    .map(|s| s.replace("~1", "/").replace("~0", "~"))
                    .collect();
                want.len() <= segments.len()
                    && want.iter().zip(&segments).all(|(w, s)| {
                        w == s || s == "*" && (w == "*" || w.parse::<usize>().is_ok())
                    })
            })
        })
}

/// Which managers other than flotilla own the field at `keys`, from an object's managedFields.
pub fn owners_of(managed: &[(String, Value)], keys: &[String]) -> Vec<String> {
    let mut owners: Vec<String> = managed
        .iter()
        .filter(|(_, fields)| {
            let mut cur = fields;
            keys.iter().all(|k| match cur.get(k) {
                Some(next) => {
                    cur = next;
                    true
                }
                None => false,
            })
        })
        .map(|(m, _)| m.clone())
        .collect();
    owners.sort();
    owners.dedup();
    owners
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expected() -> Value {
        json!({"f:metadata": {"f:labels": {"f:app": {}}},
               "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                   "k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}})
    }

    #[test]
    fn finds_fields_taken_by_another_manager() {
        let mut current = expected();
        current["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]
            .as_object_mut()
            .unwrap()
            .remove("f:image");
        let lost = lost_fields(&expected(), &current);
        assert_eq!(lost.len(), 1);
        assert_eq!(
            display_path(&lost[0]),
            "spec.template.spec.containers[name=web].image"
        );
        assert!(lost_fields(&expected(), &expected()).is_empty());
        // Extra fields in the current set (flotilla applied more since) are not drift.
        let mut more = expected();
        more["f:spec"]["f:paused"] = json!({});
        assert!(lost_fields(&expected(), &more).is_empty());
    }

    #[test]
    fn ignore_rules_match_field_paths_with_wildcards() {
        let obj = ObjectRef::of(
            &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}),
            0,
        )
        .unwrap();
        let rule = |p: &str| IgnoreRule {
            paths: vec![p.into()],
            kind: String::new(),
            name: String::new(),
            namespace: String::new(),
        };
        let replicas = vec!["f:spec".to_string(), "f:replicas".to_string()];
        assert!(ignored(&[rule("/spec/replicas")], &obj, &replicas));
        assert!(ignored(&[rule("/spec")], &obj, &replicas));
        assert!(!ignored(&[rule("/spec/paused")], &obj, &replicas));
        let image: Vec<String> = [
            "f:spec",
            "f:template",
            "f:spec",
            "f:containers",
            "k:{\"name\":\"web\"}",
            "f:image",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert!(ignored(
            &[rule("/spec/template/spec/containers/*/image")],
            &obj,
            &image
        ));
        assert!(ignored(
            &[rule("/spec/template/spec/containers/0/image")],
            &obj,
            &image
        ));
        assert!(!ignored(
            &[rule("/spec/template/spec/containers/*/name")],
            &obj,
            &image
        ));
    }

    #[test]
    fn names_the_new_owner() {
        let managed = vec![
            ("flotilla".to_string(), json!({"f:spec": {"f:paused": {}}})),
            (
                "kubectl-edit".to_string(),
                json!({"f:spec": {"f:replicas": {}}}),
            ),
        ];
        let keys = vec!["f:spec".to_string(), "f:replicas".to_string()];
        assert_eq!(owners_of(&managed, &keys), vec!["kubectl-edit".to_string()]);
    }
}
