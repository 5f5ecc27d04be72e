//! Where Kustomize's built-in transformers write: field specs (kind selector + path) and the
//! walk that finds (and, when asked, creates) the fields they name.
//!
//! The tables are flotilla's own transcription of the fields Kustomize v5.5 touches for each
//! transformer; paths descend implicitly into lists (`spec/containers/env` visits every
//! container), a trailing `[]` marks a field that must be a list.

use serde_json::{Map, Value};

use super::resource::Gvk;

/// One field a transformer acts on, for the objects its selector picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldSpec {
    /// Group the object must be in (`""` = any).
    pub group: String,
    /// Version the object must have (`""` = any).
    pub version: String,
    /// Kind the object must be (`""` = any).
    pub kind: String,
    /// Slash-separated path (`\/` escapes a slash inside a key).
    pub path: String,
    /// Whether missing fields along the path are created.
    pub create: bool,
    /// `path`, split.
    pub parts: Vec<String>,
}

impl FieldSpec {
    /// Whether this spec applies to an object of type `gvk`.
    pub fn selects(&self, gvk: &Gvk) -> bool {
        (self.kind.is_empty() || self.kind == gvk.kind)
            && (self.group.is_empty() || self.group == gvk.group)
            && (self.version.is_empty() || self.version == gvk.version)
    }
}

/// Parses a table of `kind group version path create` rows (`-` for empty).
pub(crate) fn table(rows: &str) -> Vec<FieldSpec> {
    rows.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let f = |i: usize| {
                let s = cols.get(i).copied().unwrap_or("-");
                if s == "-" {
                    String::new()
                } else {
                    s.to_string()
                }
            };
            FieldSpec::new(f(0), f(1), f(2), f(3), cols.get(4) == Some(&"create"))
        })
        .collect()
}

impl FieldSpec {
    /// A field spec; the path is split once here.
    pub fn new(kind: String, group: String, version: String, path: String, create: bool) -> Self {
        let parts = split_path(&path);
        Self {
            group,
            version,
            kind,
            path,
            create,
            parts,
        }
    }
}

/// [`table`], parsed once per process.
pub(crate) fn cached(rows: &'static str) -> &'static [FieldSpec] {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static TABLES: OnceLock<Mutex<HashMap<usize, &'static [FieldSpec]>>> = OnceLock::new();
    let mut tables = TABLES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tables
        .entry(rows.as_ptr() as usize)
        .or_insert_with(|| Box::leak(table(rows).into_boxed_slice()))
}

/// Metadata labels of objects and of the pod (and claim) templates inside workloads.
pub(crate) const METADATA_LABELS: &str = "
- - - metadata/labels create
ReplicationController - v1 spec/template/metadata/labels create
Deployment - - spec/template/metadata/labels create
ReplicaSet - - spec/template/metadata/labels create
DaemonSet - - spec/template/metadata/labels create
StatefulSet apps - spec/template/metadata/labels create
StatefulSet apps - spec/volumeClaimTemplates[]/metadata/labels create
Job batch - spec/template/metadata/labels create
CronJob batch - spec/jobTemplate/metadata/labels create
CronJob batch - spec/jobTemplate/spec/template/metadata/labels create
";

/// Selectors that `commonLabels` (and `labels` with `includeSelectors`) also extend.
pub(crate) const SELECTOR_LABELS: &str = "
Service - v1 spec/selector create
ReplicationController - v1 spec/selector create
Deployment - - spec/selector/matchLabels create
Deployment apps - spec/template/spec/affinity/podAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels
Deployment apps - spec/template/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels
Deployment apps - spec/template/spec/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels
Deployment apps - spec/template/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels
Deployment apps - spec/template/spec/topologySpreadConstraints/labelSelector/matchLabels
ReplicaSet - - spec/selector/matchLabels create
DaemonSet - - spec/selector/matchLabels create
StatefulSet apps - spec/selector/matchLabels create
StatefulSet apps - spec/template/spec/affinity/podAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels
StatefulSet apps - spec/template/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels
StatefulSet apps - spec/template/spec/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels
StatefulSet apps - spec/template/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels
StatefulSet apps - spec/template/spec/topologySpreadConstraints/labelSelector/matchLabels
Job batch - spec/selector/matchLabels
CronJob batch - spec/jobTemplate/spec/selector/matchLabels
PodDisruptionBudget policy - spec/selector/matchLabels
NetworkPolicy networking.k8s.io - spec/podSelector/matchLabels
NetworkPolicy networking.k8s.io - spec/ingress/from/podSelector/matchLabels
NetworkPolicy networking.k8s.io - spec/egress/to/podSelector/matchLabels
";

/// Where `commonAnnotations` go.
pub(crate) const ANNOTATIONS: &str = "
- - - metadata/annotations create
ReplicationController - v1 spec/template/metadata/annotations create
Deployment - - spec/template/metadata/annotations create
ReplicaSet - - spec/template/metadata/annotations create
DaemonSet - - spec/template/metadata/annotations create
StatefulSet - - spec/template/metadata/annotations create
Job batch - spec/template/metadata/annotations create
CronJob batch - spec/jobTemplate/metadata/annotations create
CronJob batch - spec/jobTemplate/spec/template/metadata/annotations create
";

/// Namespace fields besides `metadata/namespace`.
pub(crate) const NAMESPACE: &str = "
Namespace - v1 metadata/name create
APIService apiregistration.k8s.io - spec/service/namespace create
CustomResourceDefinition apiextensions.k8s.io - spec/conversion/webhook/clientConfig/service/namespace
";

/// Replica counts.
pub(crate) const REPLICAS: &str = "
Deployment - - spec/replicas create
ReplicationController - - spec/replicas create
ReplicaSet - - spec/replicas create
StatefulSet - - spec/replicas create
";

/// Where `commonLabels` go: selectors and metadata.
pub(crate) fn common_labels() -> &'static [FieldSpec] {
    static SPECS: std::sync::OnceLock<Vec<FieldSpec>> = std::sync::OnceLock::new();
    SPECS.get_or_init(|| {
        let mut v = table(SELECTOR_LABELS);
        v.extend(table(METADATA_LABELS));
        v
    })
}

/// Kinds Kubernetes knows as cluster-scoped (the rest, custom kinds included, are namespaced).
pub(crate) fn is_cluster_scoped(gvk: &Gvk) -> bool {
    is_cluster_scoped_kind(&gvk.kind)
}

/// [`is_cluster_scoped`] by kind alone (the group does not matter).
pub fn is_cluster_scoped_kind(kind: &str) -> bool {
    matches!(
        kind,
        "Namespace"
            | "Node"
            | "PersistentVolume"
            | "ComponentStatus"
            | "ClusterRole"
            | "ClusterRoleBinding"
            | "CustomResourceDefinition"
            | "StorageClass"
            | "CSIDriver"
            | "CSINode"
            | "VolumeAttachment"
            | "PriorityClass"
            | "RuntimeClass"
            | "IngressClass"
            | "APIService"
            | "MutatingWebhookConfiguration"
            | "ValidatingWebhookConfiguration"
            | "ValidatingAdmissionPolicy"
            | "ValidatingAdmissionPolicyBinding"
            | "MutatingAdmissionPolicy"
            | "MutatingAdmissionPolicyBinding"
            | "PodSecurityPolicy"
            | "CertificateSigningRequest"
            | "FlowSchema"
            | "PriorityLevelConfiguration"
            | "TokenReview"
            | "SelfSubjectAccessReview"
            | "SelfSubjectRulesReview"
            | "SelfSubjectReview"
            | "SubjectAccessReview"
            | "StorageVersion"
            | "StorageVersionMigration"
            | "ClusterTrustBundle"
            | "IPAddress"
            | "ServiceCIDR"
            | "DeviceClass"
            | "ResourceSlice"
            | "VolumeAttributesClass"
    )
}

/// Splits a field-spec path on unescaped `/`.
pub(crate) fn split_path(path: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&'/') {
            cur.push('/');
            chars.next();
        } else if c == '/' {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
}

/// What to create at the end of a path when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leaf {
    /// A mapping (labels, annotations).
    Map,
    /// A scalar (namespace, replicas): created as `null` for the setter to fill.
    Scalar,
    /// Never create the leaf.
    None,
}

/// A path walk failed because a field on the way is a scalar.
#[derive(Debug)]
pub(crate) struct WalkError {
    pub message: String,
}

/// Visits every node at `path` in `obj`, creating missing fields when `create` is set, and
/// calls `set` on each (the node may be `null` when it was just created as a scalar).
pub(crate) fn walk(
    obj: &mut Value,
    path: &[String],
    create: bool,
    leaf: Leaf,
    set: &mut dyn FnMut(&mut Value) -> Result<(), WalkError>,
) -> Result<(), WalkError> {
    walk_at(obj, path, create, leaf, None, &mut |v, _| set(v))
}

/// Like [`walk`], also giving `set` the JSON pointer of each node it visits.
pub(crate) fn walk_with_pointer(
    obj: &mut Value,
    path: &[String],
    create: bool,
    leaf: Leaf,
    set: &mut dyn FnMut(&mut Value, &str) -> Result<(), WalkError>,
) -> Result<(), WalkError> {
    let mut ptr = String::new();
    walk_at(obj, path, create, leaf, Some(&mut ptr), set)
}

/// Escapes one JSON-pointer segment.
pub(crate) fn pointer_segment(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['~', '/']) {
        s.replace('~', "~0").replace('/', "~1").into()
    } else {
        s.into()
    }
}

fn walk_at(
    obj: &mut Value,
    path: &[String],
    create: bool,
    leaf: Leaf,
    mut ptr: Option<&mut String>,
    set: &mut dyn FnMut(&mut Value, &str) -> Result<(), WalkError>,
) -> Result<(), WalkError> {
    if path.is_empty() {
        return set(obj, ptr.as_deref().map_or("", |p| p.as_str()));
    }
    let len = ptr.as_ref().map_or(0, |p| p.len());
    match obj {
        Value::Null => Ok(()),
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                if let Some(p) = ptr.as_deref_mut() {
                    p.push('/');
                    p.push_str(&i.to_string());
                }
                let r = walk_at(item, path, create, leaf, ptr.as_deref_mut(), set);
                if let Some(p) = ptr.as_deref_mut() {
                    p.truncate(len);
                }
                r?;
            }
            Ok(())
        }
        Value::Object(map) => {
            let (name, is_seq) = match path[0].strip_suffix("[]") {
                Some(n) => (n, true),
                None => (path[0].as_str(), false),
            };
            let last = path.len() == 1;
            let create_here = create && !is_seq && !(last && leaf == Leaf::None);
            if let Some(p) = ptr.as_deref_mut() {
                p.push('/');
                p.push_str(&pointer_segment(name));
            }
            // One lookup in the common case (the field exists).
            let r = match map.get_mut(name) {
                Some(v) if !(create_here && v.is_null()) => {
                    walk_at(v, &path[1..], create, leaf, ptr.as_deref_mut(), set)
                }
                None if !create_here => Ok(()),
                _ => {
                    let fresh = if last && leaf == Leaf::Scalar {
                        Value::Null
                    } else {
                        Value::Object(Map::new())
                    };
                    map.insert(name.to_string(), fresh);
                    let child = map.get_mut(name).expect("inserted above");
                    walk_at(child, &path[1..], create, leaf, ptr.as_deref_mut(), set)
                }
            };
            if let Some(p) = ptr {
                p.truncate(len);
            }
            r
        }
        _ => Err(WalkError {
            message: format!("expected a mapping or list at {:?}", path[0]),
        }),
    }
}
