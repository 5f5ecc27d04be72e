//! Identifying the objects of a bundle: `ObjectRef` (group, version, kind, namespace, name).

use std::fmt;

use kube::core::GroupVersionKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Label put on every applied object: the delivery it belongs to. Drift watchers and health
/// checks select by it.
pub const DELIVERY_LABEL: &str = "flotilla.dev/delivery";

/// Annotations that keep an object from being pruned (`disabled`): flotilla's own, and Flux's
/// for users who migrate.
pub const PRUNE_ANNOTATIONS: [&str; 2] =
    ["flotilla.dev/prune", "kustomize.toolkit.fluxcd.io/prune"];

/// Errors describing a bundle object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object lacks a field every Kubernetes object needs.
    #[error("object #{index} has no {field}")]
    MissingField {
        /// Position of the object in the bundle.
        index: usize,
        /// `apiVersion`, `kind` or `metadata.name`.
        field: &'static str,
    },
}

/// The identity of an object: what the inventory stores and what errors name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    /// API group (`""` for the core group).
    pub group: String,
    /// API version within the group.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Namespace; empty for cluster-scoped objects (filled in by the applier for namespaced
    /// kinds that the bundle left without one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectRef {
    /// Reads the identity of bundle object number `index`.
    pub fn of(obj: &Value, index: usize) -> Result<Self, Error> {
        let s = |ptr: &str| obj.pointer(ptr).and_then(Value::as_str).unwrap_or_default();
        let api_version = s("/apiVersion");
        if api_version.is_empty() {
            return Err(Error::MissingField {
                index,
                field: "apiVersion",
            });
        }
        let kind = s("/kind");
        if kind.is_empty() {
            return Err(Error::MissingField {
                index,
                field: "kind",
            });
        }
        let name = s("/metadata/name");
        if name.is_empty() {
            return Err(Error::MissingField {
                index,
                field: "metadata.name",
            });
        }
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        Ok(Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            namespace: s("/metadata/namespace").into(),
            name: name.into(),
        })
    }

    /// Group, version and kind.
    pub fn gvk(&self) -> GroupVersionKind {
        GroupVersionKind::gvk(&self.group, &self.version, &self.kind)
    }

    /// `apiVersion` as written in manifests.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The identity without the version: two refs that differ only in version name the same
    /// stored object.
    pub fn key(&self) -> (String, String, String, String) {
        (
            self.group.clone(),
            self.kind.clone(),
            self.namespace.clone(),
            self.name.clone(),
        )
    }

    /// True for the kinds applied before everything else.
    pub fn is_crd(&self) -> bool {
        self.group == "apiextensions.k8s.io" && self.kind == "CustomResourceDefinition"
    }

    /// True for Namespaces.
    pub fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.kind == "Namespace"
    }
}

impl fmt::Display for ObjectRef {
    /// `Kind/namespace/name`, or `Kind/name` for cluster-scoped objects — how users name
    /// objects in errors and status.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Makes `r` and `obj` agree with the kind's scope: namespaced objects without a namespace go
/// to `default` (as kubectl does); cluster-scoped objects lose any namespace they carry.
pub fn normalise_scope(r: &mut ObjectRef, obj: &mut Value, namespaced: bool) {
    if namespaced && r.namespace.is_empty() {
        r.namespace = "default".into();
        obj["metadata"]["namespace"] = Value::String("default".into());
    } else if !namespaced && !r.namespace.is_empty() {
        r.namespace.clear();
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
    }
}

/// True if the object says it must never be pruned.
pub fn prune_disabled(obj: &Value) -> bool {
    PRUNE_ANNOTATIONS.iter().any(|a| {
        obj.pointer("/metadata/annotations")
            .and_then(|m| m.get(a))
            .and_then(Value::as_str)
            == Some("disabled")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_identity_and_names_it_like_users_do() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"}});
        let r = ObjectRef::of(&d, 0).unwrap();
        assert_eq!((r.group.as_str(), r.version.as_str()), ("apps", "v1"));
        assert_eq!(r.to_string(), "Deployment/shop/web");
        assert_eq!(r.api_version(), "apps/v1");
        let ns = ObjectRef::of(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
            1,
        )
        .unwrap();
        assert!(ns.is_namespace());
        assert_eq!(ns.to_string(), "Namespace/shop");
        assert_eq!(ns.api_version(), "v1");
    }

    #[test]
    fn a_nameless_object_is_refused_by_position() {
        let err = ObjectRef::of(
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}),
            7,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "object #7 has no metadata.name");
    }

    #[test]
    fn prune_opt_out_by_either_annotation() {
        let keep =
            json!({"metadata": {"annotations": {"kustomize.toolkit.fluxcd.io/prune": "disabled"}}});
        assert!(prune_disabled(&keep));
        assert!(!prune_disabled(&json!({"metadata": {}})));
    }
}
