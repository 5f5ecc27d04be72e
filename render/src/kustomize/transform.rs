//! The built-in transformers that are not patches: namespace, name prefix and suffix, labels,
//! annotations, replicas and images.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::fieldspec::{self, FieldSpec, Leaf, is_cluster_scoped, walk};
use super::resource::{Gvk, Resource};
use super::types::{Image, Kustomization};
use crate::{Error, RelPath};

fn walk_err(file: &RelPath, r: &Resource, spec: &str, e: fieldspec::WalkError) -> Error {
    Error::Invalid {
        file: file.clone(),
        message: format!("{}: field {spec}: {}", r.describe(), e.message),
    }
}

/// `namespace:` — sets the namespace of every namespaced object and of the fields that refer
/// to one.
pub(crate) fn namespace(
    file: &RelPath,
    k: &Kustomization,
    ra: &mut [Resource],
) -> Result<(), Error> {
    let Some(ns) = k.namespace.as_deref().filter(|n| !n.is_empty()) else {
        return Ok(());
    };
    let specs = fieldspec::cached(fieldspec::NAMESPACE);
    for r in ra.iter_mut() {
        r.store_previous_id();
        let gvk = r.gvk();
        let api_version = super::resource::str_at(&r.obj, &["apiVersion"]).to_string();
        if !is_cluster_scoped(&gvk) {
            r.metadata_mut()
                .insert("namespace".into(), Value::String(ns.to_string()));
        }
        for spec in specs {
            if !spec.selects(&gvk) || (spec.path == "metadata/name" && api_version != "v1") {
                continue;
            }
            let path = &spec.parts;
            let mut set = |v: &mut Value| {
                *v = Value::String(ns.to_string());
                Ok(())
            };
            if let Err(e) = walk(&mut r.obj, path, spec.create, Leaf::Scalar, &mut set) {
                return Err(walk_err(file, r, &spec.path, e));
            }
        }
        if matches!(gvk.kind.as_str(), "RoleBinding" | "ClusterRoleBinding")
            && let Some(Value::Array(subjects)) = r.obj.get_mut("subjects")
        {
            for s in subjects {
                if let Value::Object(m) = s
                    && m.get("name").and_then(Value::as_str) == Some("default")
                {
                    m.insert("namespace".into(), Value::String(ns.to_string()));
                }
            }
        }
    }
    check_unique(file, ns, ra)
}

/// Refuses two resources that now have the same identity.
fn check_unique(file: &RelPath, ns: &str, ra: &[Resource]) -> Result<(), Error> {
    let mut seen = std::collections::HashSet::new();
    for r in ra {
        if !seen.insert(r.id_key()) {
            return Err(Error::Conflict {
                file: file.clone(),
                message: format!(
                    "namespace {ns:?} makes two resources the same: {}",
                    r.describe()
                ),
            });
        }
    }
    Ok(())
}

/// Kinds whose names prefixes and suffixes never touch.
fn skips_prefix(org: &Gvk) -> bool {
    org.kind == "CustomResourceDefinition"
        || org.kind == "Namespace"
        || (org.kind == "APIService" && org.group == "apiregistration.k8s.io")
}

/// `namePrefix:` then `nameSuffix:`.
pub(crate) fn prefix_suffix(k: &Kustomization, ra: &mut [Resource]) {
    if let Some(p) = k.name_prefix.as_deref().filter(|p| !p.is_empty()) {
        for r in ra.iter_mut() {
            if skips_prefix(&r.org_id().gvk) {
                continue;
            }
            r.prefixes.push(p.to_string());
            r.store_previous_id();
            let name = format!("{p}{}", r.name());
            r.set_name(&name);
        }
    }
    if let Some(s) = k.name_suffix.as_deref().filter(|s| !s.is_empty()) {
        for r in ra.iter_mut() {
            if skips_prefix(&r.org_id().gvk) {
                continue;
            }
            r.suffixes.push(s.to_string());
            r.store_previous_id();
            let name = format!("{}{s}", r.name());
            r.set_name(&name);
        }
    }
}

/// Sets string entries in every mapping found at `specs` (creating where the spec says).
fn set_entries(
    file: &RelPath,
    ra: &mut [Resource],
    entries: &BTreeMap<String, String>,
    specs: &[FieldSpec],
) -> Result<(), Error> {
    if entries.is_empty() {
        return Ok(());
    }
    // Per entry once, not per object: the value and the key as a JSON-pointer segment.
    let entries: Vec<(&String, Value, std::borrow::Cow<'_, str>)> = entries
        .iter()
        .map(|(k, v)| (k, Value::String(v.clone()), fieldspec::pointer_segment(k)))
        .collect();
    for r in ra.iter_mut() {
        let gvk = r.gvk();
        for (key, value, seg) in &entries {
            let (key, value) = (*key, value);
            let (mut inserted, mut overwritten) = (Vec::new(), Vec::new());
            for spec in specs {
                if !spec.selects(&gvk) {
                    continue;
                }
                let path = &spec.parts;
                let mut set = |v: &mut Value, ptr: &str| {
                    if v.is_null() {
                        *v = Value::Object(Map::new());
                    }
                    match v {
                        Value::Object(m) => {
                            let p = format!("{ptr}/{seg}");
                            if m.insert(key.clone(), value.clone()).is_some() {
                                overwritten.push(p);
                            } else {
                                inserted.push(p);
                            }
                            Ok(())
                        }
                        _ => Err(fieldspec::WalkError {
                            message: "expected a mapping".into(),
                        }),
                    }
                };
                if let Err(e) =
                    fieldspec::walk_with_pointer(&mut r.obj, path, spec.create, Leaf::Map, &mut set)
                {
                    return Err(walk_err(file, r, &spec.path, e));
                }
            }
            for p in &overwritten {
                r.set_linked(p, value);
            }
            if inserted.len() > 1 {
                r.links.push(inserted);
            }
        }
    }
    Ok(())
}

/// Appends `more` to `specs`, skipping exact duplicates (Kustomize's `MergeAll`).
fn merge_specs(specs: &mut Vec<FieldSpec>, more: Vec<FieldSpec>) {
    for s in more {
        if let Some(existing) = specs.iter_mut().find(|e| {
            e.path == s.path && e.kind == s.kind && e.group == s.group && e.version == s.version
        }) {
            existing.create |= s.create;
        } else {
            specs.push(s);
        }
    }
}

/// `labels:` entries, then `commonLabels:`.
pub(crate) fn labels(file: &RelPath, k: &Kustomization, ra: &mut [Resource]) -> Result<(), Error> {
    for l in &k.labels {
        for key in l.pairs.keys() {
            if k.common_labels.contains_key(key) {
                return Err(Error::Invalid {
                    file: file.clone(),
                    message: format!("label name {key:?} exists in both commonLabels and labels"),
                });
            }
        }
    }
    for l in &k.labels {
        let mut specs: Vec<FieldSpec> = l
            .fields
            .iter()
            .map(|f| {
                FieldSpec::new(
                    f.kind.clone(),
                    f.group.clone(),
                    f.version.clone(),
                    f.path.clone(),
                    f.create,
                )
            })
            .collect();
        if l.include_selectors {
            merge_specs(&mut specs, common_label_specs().to_vec());
        } else {
            if l.include_templates {
                merge_specs(
                    &mut specs,
                    fieldspec::cached(fieldspec::METADATA_LABELS).to_vec(),
                );
            }
            merge_specs(
                &mut specs,
                fieldspec::cached("- - - metadata/labels create").to_vec(),
            );
        }
        set_entries(file, ra, &l.pairs, &specs)?;
    }
    set_entries(file, ra, &k.common_labels, common_label_specs())
}

fn common_label_specs() -> &'static [FieldSpec] {
    fieldspec::common_labels()
}

/// `commonAnnotations:`.
pub(crate) fn annotations(
    file: &RelPath,
    k: &Kustomization,
    ra: &mut [Resource],
) -> Result<(), Error> {
    set_entries(
        file,
        ra,
        &k.common_annotations,
        fieldspec::cached(fieldspec::ANNOTATIONS),
    )
}

/// `replicas:`.
pub(crate) fn replicas(
    file: &RelPath,
    k: &Kustomization,
    ra: &mut [Resource],
) -> Result<(), Error> {
    let specs = fieldspec::cached(fieldspec::REPLICAS);
    for rep in &k.replicas {
        let mut found = false;
        for spec in specs {
            let sel = Gvk {
                group: spec.group.clone(),
                version: spec.version.clone(),
                kind: spec.kind.clone(),
            };
            for r in ra.iter_mut() {
                if !r.any_id(|id| id.name == rep.name && id.gvk.is_selected(&sel)) {
                    continue;
                }
                found = true;
                let Some(obj) = r.obj.as_object_mut() else {
                    continue;
                };
                let spec_v = obj
                    .entry("spec")
                    .or_insert_with(|| Value::Object(Map::new()));
                if spec_v.is_null() {
                    *spec_v = Value::Object(Map::new());
                }
                if let Value::Object(s) = spec_v {
                    s.insert("replicas".into(), Value::from(rep.count));
                }
            }
        }
        if !found {
            return Err(Error::Invalid {
                file: file.clone(),
                message: format!(
                    "replicas: no Deployment, ReplicationController, ReplicaSet or StatefulSet named {:?}",
                    rep.name
                ),
            });
        }
    }
    Ok(())
}

/// `images:` (and the legacy `imageTags:`).
pub(crate) fn images(file: &RelPath, k: &Kustomization, ra: &mut [Resource]) -> Result<(), Error> {
    for img in k.images.iter().chain(&k.image_tags) {
        let re = super::regex(&format!(
            "^{}(:[a-zA-Z0-9_.{{}}-]*)?(@sha256:[a-zA-Z0-9_.{{}}-]*)?$",
            img.name
        ))
        .map_err(|e| Error::Invalid {
            file: file.clone(),
            message: format!("images: name {:?} is not usable: {e}", img.name),
        })?;
        for r in ra.iter_mut() {
            if r.kind() == "CustomResourceDefinition" {
                continue;
            }
            update_images(&mut r.obj, img, &re);
        }
    }
    Ok(())
}

/// Visits every `containers` and `initContainers` list anywhere in the object.
fn update_images(v: &mut Value, img: &Image, re: &regex::Regex) {
    match v {
        Value::Object(m) => {
            for (key, child) in m.iter_mut() {
                update_images(child, img, re);
                if (key == "containers" || key == "initContainers")
                    && let Value::Array(items) = child
                {
                    for c in items {
                        if let Some(Value::String(image)) = c.get_mut("image")
                            && re.is_match(image)
                        {
                            *image = new_image(image, img);
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                update_images(item, img, re);
            }
        }
        _ => {}
    }
}

/// Splits `name[:tag][@digest]` (a `:` before the first `/` is a registry port).
fn split_image(image: &str) -> (String, String, String) {
    let slash = image.find('/').filter(|&i| i > 0).unwrap_or(0);
    let search = &image[slash..];
    let at = search.find('@');
    let colon = search.find(':');
    match (colon, at) {
        (None, None) => (image.to_string(), String::new(), String::new()),
        (c, Some(a)) if c.is_none() || a < c.unwrap_or(usize::MAX) => (
            image[..slash + a].to_string(),
            String::new(),
            image[slash + a + 1..].to_string(),
        ),
        (Some(c), Some(a)) => (
            image[..slash + c].to_string(),
            image[slash + c + 1..slash + a].to_string(),
            image[slash + a + 1..].to_string(),
        ),
        (Some(c), None) => (
            image[..slash + c].to_string(),
            image[slash + c + 1..].to_string(),
            String::new(),
        ),
        (None, Some(_)) => unreachable!("covered by the digest-only arm"),
    }
}

fn new_image(image: &str, img: &Image) -> String {
    let (mut name, mut tag, mut digest) = split_image(image);
    if !img.new_name.is_empty() {
        name = img.new_name.clone();
    }
    if !img.new_tag.is_empty() && !img.digest.is_empty() {
        tag = img.new_tag.clone();
        digest = img.digest.clone();
    } else if !img.new_tag.is_empty() {
        tag = img.new_tag.clone();
        digest.clear();
    } else if !img.digest.is_empty() {
        tag.clear();
        digest = img.digest.clone();
    } else if !img.tag_suffix.is_empty() {
        tag.push_str(&img.tag_suffix);
        digest.clear();
    }
    if !tag.is_empty() {
        name.push(':');
        name.push_str(&tag);
    }
    if !digest.is_empty() {
        name.push('@');
        name.push_str(&digest);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_split_like_kustomize() {
        assert_eq!(
            split_image("reg:5000/app:1.0@sha256:abc"),
            ("reg:5000/app".into(), "1.0".into(), "sha256:abc".into())
        );
        assert_eq!(
            split_image("nginx@sha256:abc"),
            ("nginx".into(), "".into(), "sha256:abc".into())
        );
        assert_eq!(split_image("nginx"), ("nginx".into(), "".into(), "".into()));
        let img = Image {
            name: "nginx".into(),
            new_tag: "2".into(),
            ..Default::default()
        };
        assert_eq!(new_image("nginx:1@sha256:x", &img), "nginx:2");
    }
}
