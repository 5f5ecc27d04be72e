//! A resource during a Kustomize build: the object plus what the build remembers about it
//! (earlier names, applied prefixes and suffixes, generator behaviour).

use serde_json::{Map, Value};

use super::fieldspec::{is_cluster_scoped, is_cluster_scoped_kind};
use crate::RelPath;

/// Group, version and kind of an object.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub(crate) struct Gvk {
    pub group: String,
    pub version: String,
    pub kind: String,
}

impl Gvk {
    /// Splits an `apiVersion` into group and version.
    pub fn new(api_version: &str, kind: &str) -> Self {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.to_string()),
        };
        Self {
            group,
            version,
            kind: kind.to_string(),
        }
    }

    /// Whether `sel` (empty fields = any) selects this type.
    pub fn is_selected(&self, sel: &Gvk) -> bool {
        (sel.group.is_empty() || sel.group == self.group)
            && (sel.version.is_empty() || sel.version == self.version)
            && (sel.kind.is_empty() || sel.kind == self.kind)
    }

    /// `Kind.version.group` with placeholders, as Kustomize prints ids.
    pub fn display(&self) -> String {
        let or = |s: &str, d: &str| {
            if s.is_empty() {
                d.to_string()
            } else {
                s.to_string()
            }
        };
        format!(
            "{}.{}.{}",
            or(&self.kind, "[noKind]"),
            or(&self.version, "[noVer]"),
            or(&self.group, "[noGrp]")
        )
    }
}

/// The identity of a resource at some point of the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResId {
    pub gvk: Gvk,
    pub name: String,
    pub namespace: String,
}

/// What cluster-scoped objects have instead of a namespace when ids are compared.
const NOT_A_NAMESPACE: &str = "_non_namespaceable_";

impl ResId {
    /// The namespace as Kubernetes would see it: `default` when unset, nothing for
    /// cluster-scoped kinds.
    pub fn effective_namespace(&self) -> &str {
        if is_cluster_scoped(&self.gvk) {
            NOT_A_NAMESPACE
        } else if self.namespace.is_empty() {
            "default"
        } else {
            &self.namespace
        }
    }

    /// Same type, name and effective namespace.
    pub fn equals(&self, o: &ResId) -> bool {
        self.gvk == o.gvk
            && self.name == o.name
            && self.effective_namespace() == o.effective_namespace()
    }

    /// For error messages: `Kind.version.group/name.namespace`.
    pub fn display(&self) -> String {
        let ns = if self.namespace.is_empty() {
            "[noNs]"
        } else {
            &self.namespace
        };
        format!("{}/{}.{}", self.gvk.display(), self.name, ns)
    }
}

/// How a generated ConfigMap or Secret combines with one of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Behavior {
    /// A new object (the default); clashing names are an error.
    #[default]
    Create,
    /// Replaces the existing object's data.
    Replace,
    /// Adds to (and overrides keys of) the existing object's data.
    Merge,
}

/// An object being built.
#[derive(Debug, Clone)]
pub(crate) struct Resource {
    /// The object.
    pub obj: Value,
    /// Earlier identities, oldest first (Kustomize's `previousNames` build annotations).
    pub prev: Vec<ResId>,
    /// Name prefixes applied, innermost kustomization first.
    pub prefixes: Vec<String>,
    /// Name suffixes applied, innermost kustomization first.
    pub suffixes: Vec<String>,
    /// For generated objects: how they combine with existing ones.
    pub behavior: Behavior,
    /// For generated objects: whether the name gets a content-hash suffix.
    pub needs_hash: bool,
    /// Groups of JSON pointers that hold one shared value: Kustomize adds a new label or
    /// annotation to all its fields as one YAML node, so a later in-place change of one (a
    /// `labels` entry, a strategic-merge patch) shows in all. A JSON patch re-creates the
    /// object and ends the sharing.
    pub links: Vec<Vec<String>>,
    /// The file the object was read from (or the kustomization that generated it).
    pub source: RelPath,
}

pub(crate) fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(n) => cur = n,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

impl Resource {
    pub fn new(obj: Value, source: RelPath) -> Self {
        Self {
            obj,
            prev: Vec::new(),
            prefixes: Vec::new(),
            suffixes: Vec::new(),
            behavior: Behavior::Create,
            needs_hash: false,
            links: Vec::new(),
            source,
        }
    }

    pub fn kind(&self) -> &str {
        str_at(&self.obj, &["kind"])
    }

    pub fn name(&self) -> &str {
        str_at(&self.obj, &["metadata", "name"])
    }

    pub fn namespace(&self) -> &str {
        str_at(&self.obj, &["metadata", "namespace"])
    }

    pub fn gvk(&self) -> Gvk {
        Gvk::new(str_at(&self.obj, &["apiVersion"]), self.kind())
    }

    pub fn cur_id(&self) -> ResId {
        ResId {
            gvk: self.gvk(),
            name: self.name().to_string(),
            namespace: self.namespace().to_string(),
        }
    }

    /// A key of the current identity, equal for ids that [`ResId::equals`] considers equal.
    pub fn id_key(&self) -> String {
        let api_version = str_at(&self.obj, &["apiVersion"]);
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let (kind, name, ns) = (self.kind(), self.name(), self.namespace());
        let ns = if is_cluster_scoped_kind(kind) {
            NOT_A_NAMESPACE
        } else if ns.is_empty() {
            "default"
        } else {
            ns
        };
        let mut key = String::with_capacity(
            group.len() + version.len() + kind.len() + name.len() + ns.len() + 4,
        );
        for (i, part) in [group, version, kind, name, ns].into_iter().enumerate() {
            if i > 0 {
                key.push('\u{0}');
            }
            key.push_str(part);
        }
        key
    }

    /// The identity the object had when it was read.
    pub fn org_id(&self) -> ResId {
        self.prev.first().cloned().unwrap_or_else(|| self.cur_id())
    }

    /// Remembers the current identity before it changes.
    pub fn store_previous_id(&mut self) {
        let cur = self.cur_id();
        let ns = cur.effective_namespace().to_string();
        self.prev.push(ResId {
            namespace: ns,
            ..cur
        });
    }

    /// Whether the current or any earlier identity satisfies `f`.
    pub fn any_id(&self, f: impl Fn(&ResId) -> bool) -> bool {
        self.prev.iter().any(&f) || f(&self.cur_id())
    }

    pub fn metadata_mut(&mut self) -> &mut Map<String, Value> {
        let obj = self.obj.as_object_mut().expect("resources are mappings");
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            *meta = Value::Object(Map::new());
        }
        meta.as_object_mut().expect("just made a mapping")
    }

    pub fn set_name(&mut self, name: &str) {
        self.metadata_mut()
            .insert("name".into(), Value::String(name.to_string()));
    }

    pub fn set_namespace(&mut self, ns: &str) {
        let meta = self.metadata_mut();
        if ns.is_empty() {
            meta.remove("namespace");
        } else {
            meta.insert("namespace".into(), Value::String(ns.to_string()));
        }
    }

    /// A string map under `metadata` (`labels` or `annotations`).
    pub fn string_map(&self, field: &str) -> Vec<(String, String)> {
        match self.obj.get("metadata").and_then(|m| m.get(field)) {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_string),
                    )
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Sets the value at `ptr` and at every pointer sharing its node.
    pub fn set_linked(&mut self, ptr: &str, value: &Value) {
        let group: Vec<String> = self
            .links
            .iter()
            .find(|g| g.iter().any(|p| p == ptr))
            .cloned()
            .unwrap_or_default();
        for p in group.iter().filter(|p| p.as_str() != ptr) {
            if let Some(v) = self.obj.pointer_mut(p) {
                *v = value.clone();
            }
        }
    }

    /// Current values at every linked pointer (to detect in-place changes by a patch).
    pub fn linked_values(&self) -> Vec<Vec<Option<Value>>> {
        self.links
            .iter()
            .map(|g| g.iter().map(|p| self.obj.pointer(p).cloned()).collect())
            .collect()
    }

    /// After a strategic-merge patch: a shared value changed at one place changes everywhere.
    pub fn propagate_linked(&mut self, before: &[Vec<Option<Value>>]) {
        for (gi, group) in self.links.clone().into_iter().enumerate() {
            let changed = group.iter().enumerate().find_map(|(i, p)| {
                let now = self.obj.pointer(p)?;
                (before[gi][i].as_ref() != Some(now)).then(|| now.clone())
            });
            if let Some(v) = changed {
                for p in &group {
                    if let Some(slot) = self.obj.pointer_mut(p) {
                        *slot = v.clone();
                    }
                }
            }
        }
    }

    /// Annotations as Kustomize re-writes them: values as strings, an empty map removed.
    pub fn normalize_annotations(&mut self) {
        let Some(meta) = self.obj.get_mut("metadata").and_then(Value::as_object_mut) else {
            return;
        };
        let Some(ann) = meta.get_mut("annotations") else {
            return;
        };
        let keep = match ann {
            Value::Object(m) => {
                for v in m.values_mut() {
                    let s = match &*v {
                        Value::String(_) => continue,
                        Value::Null => String::new(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) => crate::yaml::format_number(n),
                        other => other.to_string(),
                    };
                    *v = Value::String(s);
                }
                !m.is_empty()
            }
            _ => false,
        };
        if !keep {
            meta.remove("annotations");
        }
    }

    /// Describes the object for error messages: `Kind namespace/name`.
    pub fn describe(&self) -> String {
        let ns = self.namespace();
        if ns.is_empty() {
            format!("{} {}", self.kind(), self.name())
        } else {
            format!("{} {}/{}", self.kind(), ns, self.name())
        }
    }
}
