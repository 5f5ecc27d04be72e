//! Which objects a patch applies to, and what kind of patch it is: `patchesStrategicMerge`,
//! `patches` (strategic merge or JSON 6902, decided by content) and `patchesJson6902`.
//!
//! The merge itself is done by [`crate::patch`]; this module picks targets the way Kustomize
//! does (by the patch's own identity, or by a `target:` selector with regular expressions and
//! label/annotation selectors) and refuses a patch that matches nothing.

use regex::Regex;
use serde_json::Value;

use super::resource::{Gvk, Resource};
use super::types::{Kustomization, Patch, Selector};
use crate::source::Source;
use crate::yaml::{self, Doc};
use crate::{EntryKind, Error, RelPath};

/// The merge engines, provided by the `patch` module.
mod engine {
    use serde_json::Value;

    pub(super) fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), String> {
        crate::patch::strategic_merge(target, patch).map_err(|e| error_chain(&e))
    }

    pub(super) fn json6902(target: &mut Value, ops: &Value) -> Result<(), String> {
        // On error the render fails and `target` is dropped: no copy is needed to keep it.
        crate::patch::json6902_in_place(target, ops).map_err(|e| error_chain(&e))
    }

    fn error_chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }
}

/// Where a patch's text came from, for messages.
fn describe_source(path: Option<&str>, inline: &str) -> String {
    match path {
        Some(p) => format!("{p:?}"),
        None => {
            let first = inline.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            format!("(inline: {:?}...)", first.trim())
        }
    }
}

/// Loads a patch file relative to the kustomization.
fn load_patch_file(
    src: &Source<'_>,
    dir: &RelPath,
    file: &RelPath,
    entry: &str,
) -> Result<(RelPath, std::sync::Arc<Vec<Doc>>), Error> {
    let path = dir.join(entry).map_err(|_| Error::OutsideRoot {
        file: file.clone(),
        what: "patch",
        entry: entry.to_string(),
    })?;
    if src.tree.kind(&path)? != Some(EntryKind::File) {
        return Err(Error::Missing {
            file: file.clone(),
            what: "patch",
            entry: entry.to_string(),
        });
    }
    let docs = src.docs(&path)?;
    Ok((path, docs))
}

fn parse_inline(file: &RelPath, text: &str) -> Result<Vec<Doc>, Error> {
    yaml::parse_stream(text).map_err(|e| Error::Yaml {
        file: file.clone(),
        line: e.line,
        message: format!(
            "in an inline patch (line {} of the patch): {}",
            e.line, e.message
        ),
    })
}

/// `patchesStrategicMerge:` — each document patches the object with its identity.
pub(crate) fn strategic_merge_list(
    src: &Source<'_>,
    dir: &RelPath,
    file: &RelPath,
    k: &Kustomization,
    ra: &mut Vec<Resource>,
) -> Result<(), Error> {
    for entry in &k.patches_strategic_merge {
        // Like Kustomize: a single line naming an existing file is a path; anything else is
        // inline YAML (and a single line that parses to no mapping is a missing file).
        let as_file = !entry.contains('\n')
            && dir
                .join(entry.trim())
                .ok()
                .map(|p| src.tree.kind(&p))
                .transpose()?
                .flatten()
                .is_some();
        let (origin, docs): (RelPath, Vec<Doc>) = if as_file {
            let (p, d) = load_patch_file(src, dir, file, entry.trim())?;
            (p, d.as_ref().clone())
        } else {
            let docs = parse_inline(file, entry);
            match docs {
                Ok(d) if d.iter().any(|d| d.value.is_object()) => (file.clone(), d),
                _ if !entry.contains('\n') => {
                    return Err(Error::Missing {
                        file: file.clone(),
                        what: "patch",
                        entry: entry.clone(),
                    });
                }
                other => (file.clone(), other?),
            }
        };
        let label = describe_source(as_file.then_some(entry.as_str()), entry);
        let mut any = false;
        for d in docs.iter().filter(|d| !d.value.is_null()) {
            any = true;
            apply_smp_by_id(file, &origin, &label, &d.value, false, false, ra)?;
        }
        if !any {
            return Err(Error::Invalid {
                file: file.clone(),
                message: format!("patch {label} is empty"),
            });
        }
    }
    Ok(())
}

/// Identity of a patch document: type, name, namespace.
fn patch_identity(patch: &Value) -> (Gvk, String, String) {
    let s = |path: &[&str]| super::resource::str_at(patch, path).to_string();
    (
        Gvk::new(&s(&["apiVersion"]), &s(&["kind"])),
        s(&["metadata", "name"]),
        s(&["metadata", "namespace"]),
    )
}

/// Applies one strategic-merge patch to the single object it names.
fn apply_smp_by_id(
    file: &RelPath,
    origin: &RelPath,
    label: &str,
    patch: &Value,
    allow_name: bool,
    allow_kind: bool,
    ra: &mut Vec<Resource>,
) -> Result<(), Error> {
    if !patch.is_object() {
        return Err(Error::Invalid {
            file: origin.clone(),
            message: format!("patch {label} is not a mapping"),
        });
    }
    let (gvk, name, ns) = patch_identity(patch);
    let id = super::resource::ResId {
        gvk,
        name,
        namespace: ns,
    };
    let hits: Vec<usize> = ra
        .iter()
        .enumerate()
        .filter(|(_, r)| r.any_id(|rid| rid.equals(&id)))
        .map(|(i, _)| i)
        .collect();
    match hits.as_slice() {
        [] => Err(Error::PatchNoMatch {
            file: file.clone(),
            patch: format!("{label} ({})", id.display()),
        }),
        [i] => {
            let i = *i;
            let keep = apply_smp(file, label, patch, allow_name, allow_kind, &mut ra[i])?;
            if !keep {
                ra.remove(i);
            }
            Ok(())
        }
        _ => Err(Error::Invalid {
            file: file.clone(),
            message: format!("patch {label} ({}) matches several resources", id.display()),
        }),
    }
}

/// Applies a strategic-merge patch to one object, keeping its identity unless allowed to
/// change. Returns false when the patch deletes the object.
fn apply_smp(
    file: &RelPath,
    label: &str,
    patch: &Value,
    allow_name: bool,
    allow_kind: bool,
    r: &mut Resource,
) -> Result<bool, Error> {
    if patch.get("$patch").and_then(Value::as_str) == Some("delete") {
        return Ok(false);
    }
    let (name, ns, kind) = (
        r.name().to_string(),
        r.namespace().to_string(),
        r.kind().to_string(),
    );
    if allow_name || allow_kind {
        r.store_previous_id();
    }
    let mut p = patch.clone();
    if let Some(obj) = p.as_object_mut() {
        // The patch takes the target's apiVersion (Kustomize sets the patch's GVK to the
        // target's, then its own kind back).
        if let Some(av) = r.obj.get("apiVersion") {
            obj.insert("apiVersion".into(), av.clone());
        }
    }
    let linked = r.linked_values();
    engine::strategic_merge(&mut r.obj, &p).map_err(|message| Error::Invalid {
        file: file.clone(),
        message: format!("patch {label} on {}: {message}", r.describe()),
    })?;
    match &r.obj {
        Value::Null => return Ok(false),
        Value::Object(m) if m.is_empty() => return Ok(false),
        _ => {}
    }
    if !allow_kind && let Some(obj) = r.obj.as_object_mut() {
        obj.insert("kind".into(), Value::String(kind));
    }
    if !allow_name {
        r.set_name(&name);
    }
    r.set_namespace(&ns);
    r.propagate_linked(&linked);
    Ok(true)
}

/// `patches:` — strategic merge or JSON 6902, by content; with or without `target:`.
pub(crate) fn patches(
    src: &Source<'_>,
    dir: &RelPath,
    file: &RelPath,
    k: &Kustomization,
    ra: &mut Vec<Resource>,
) -> Result<(), Error> {
    for p in &k.patches {
        let (origin, docs, label) = patch_docs(src, dir, file, p)?;
        let allow_name = p.options.get("allowNameChange").copied().unwrap_or(false);
        let allow_kind = p.options.get("allowKindChange").copied().unwrap_or(false);
        for key in p.options.keys() {
            if key != "allowNameChange" && key != "allowKindChange" {
                return Err(Error::UnknownField {
                    file: file.clone(),
                    line: 1,
                    field: format!("options.{key}"),
                    context: format!("patch {label}"),
                });
            }
        }
        let docs: Vec<&Doc> = docs.iter().filter(|d| !d.value.is_null()).collect();
        let is_json = matches!(docs.first().map(|d| &d.value), Some(Value::Array(_)));
        if docs.is_empty() {
            return Err(Error::Invalid {
                file: file.clone(),
                message: format!("patch {label} is empty"),
            });
        }
        if is_json {
            let Some(target) = &p.target else {
                return Err(Error::Invalid {
                    file: file.clone(),
                    message: format!("JSON 6902 patch {label} needs a target"),
                });
            };
            if docs.len() > 1 {
                return Err(Error::Invalid {
                    file: origin,
                    message: format!("JSON 6902 patch {label} must be a single list of operations"),
                });
            }
            apply_json_to_selected(file, &label, target, &docs[0].value, true, ra)?;
            continue;
        }
        match &p.target {
            Some(target) => {
                if docs.len() > 1 {
                    return Err(Error::Invalid {
                        file: file.clone(),
                        message: format!(
                            "patch {label} has several documents; a patch with a target must have one"
                        ),
                    });
                }
                let selected = select(file, target, ra)?;
                if selected.is_empty() {
                    warn_no_match(file, &label, target);
                }
                let mut keep = vec![true; ra.len()];
                for i in selected {
                    keep[i] = apply_smp(
                        file,
                        &label,
                        &docs[0].value,
                        allow_name,
                        allow_kind,
                        &mut ra[i],
                    )?;
                }
                let mut it = keep.into_iter();
                ra.retain(|_| it.next().unwrap_or(true));
            }
            None => {
                for d in docs {
                    apply_smp_by_id(file, &origin, &label, &d.value, allow_name, allow_kind, ra)?;
                }
            }
        }
    }
    Ok(())
}

/// The documents of a `patches`/`patchesJson6902` entry (inline or file).
fn patch_docs(
    src: &Source<'_>,
    dir: &RelPath,
    file: &RelPath,
    p: &Patch,
) -> Result<(RelPath, Vec<Doc>, String), Error> {
    match (&p.path, &p.patch) {
        (Some(_), Some(_)) => Err(Error::Invalid {
            file: file.clone(),
            message: "a patch cannot have both `path` and `patch`".into(),
        }),
        (None, None) => Err(Error::Invalid {
            file: file.clone(),
            message: "a patch needs `path` or `patch`".into(),
        }),
        (Some(path), None) => {
            let (origin, docs) = load_patch_file(src, dir, file, path)?;
            Ok((
                origin,
                docs.as_ref().clone(),
                describe_source(Some(path), ""),
            ))
        }
        (None, Some(text)) => Ok((
            file.clone(),
            parse_inline(file, text)?,
            describe_source(None, text),
        )),
    }
}

/// Kustomize applies a patch whose target selects nothing to nothing, silently; flotilla
/// matches its output and says so in the log.
fn warn_no_match(file: &RelPath, label: &str, t: &Selector) {
    if let Error::PatchNoMatch { patch, .. } = no_match(file, label, t) {
        tracing::warn!(file = %file, patch = %patch, "patch target selects no resource");
    }
}

fn no_match(file: &RelPath, label: &str, t: &Selector) -> Error {
    let mut parts = Vec::new();
    for (k, v) in [
        ("group", &t.group),
        ("version", &t.version),
        ("kind", &t.kind),
        ("name", &t.name),
        ("namespace", &t.namespace),
        ("labelSelector", &t.label_selector),
        ("annotationSelector", &t.annotation_selector),
    ] {
        if !v.is_empty() {
            parts.push(format!("{k}={v}"));
        }
    }
    Error::PatchNoMatch {
        file: file.clone(),
        patch: format!("{label} (target {})", parts.join(" ")),
    }
}

/// `patchesJson6902:`.
pub(crate) fn json6902_list(
    src: &Source<'_>,
    dir: &RelPath,
    file: &RelPath,
    k: &Kustomization,
    ra: &mut [Resource],
) -> Result<(), Error> {
    for p in &k.patches_json6902 {
        let (_, docs, label) = patch_docs(src, dir, file, p)?;
        let Some(target) = &p.target else {
            return Err(Error::Invalid {
                file: file.clone(),
                message: format!("patchesJson6902 entry {label} needs a target"),
            });
        };
        let docs: Vec<&Doc> = docs.iter().filter(|d| !d.value.is_null()).collect();
        let ops = match docs.as_slice() {
            [d] if d.value.is_array() => &d.value,
            _ => {
                return Err(Error::Invalid {
                    file: file.clone(),
                    message: format!("patchesJson6902 entry {label} must be a list of operations"),
                });
            }
        };
        apply_json_to_selected(file, &label, target, ops, false, ra)?;
    }
    Ok(())
}

fn apply_json_to_selected(
    file: &RelPath,
    label: &str,
    target: &Selector,
    ops: &Value,
    store_id: bool,
    ra: &mut [Resource],
) -> Result<(), Error> {
    let selected = select(file, target, ra)?;
    if selected.is_empty() {
        warn_no_match(file, label, target);
    }
    for i in selected {
        let r = &mut ra[i];
        if store_id {
            r.store_previous_id();
        }
        // The patch works on a JSON copy: shared YAML nodes are gone afterwards.
        r.links.clear();
        engine::json6902(&mut r.obj, ops).map_err(|message| Error::Invalid {
            file: file.clone(),
            message: format!("patch {label} on {}: {message}", r.describe()),
        })?;
    }
    Ok(())
}

fn anchored(
    file: &RelPath,
    field: &str,
    pattern: &str,
) -> Result<Option<std::sync::Arc<Regex>>, Error> {
    if pattern.is_empty() {
        return Ok(None);
    }
    super::regex(&format!("^(?:{pattern})$"))
        .map(Some)
        .map_err(|e| Error::Invalid {
            file: file.clone(),
            message: format!(
                "patch target {field} {pattern:?} is not a valid regular expression: {e}"
            ),
        })
}

/// Indices of the resources a `target:` selects.
pub(crate) fn select(file: &RelPath, t: &Selector, ra: &[Resource]) -> Result<Vec<usize>, Error> {
    let group = anchored(file, "group", &t.group)?;
    let version = anchored(file, "version", &t.version)?;
    let kind = anchored(file, "kind", &t.kind)?;
    let name = anchored(file, "name", &t.name)?;
    let namespace = anchored(file, "namespace", &t.namespace)?;
    let labels = parse_selector(file, "labelSelector", &t.label_selector)?;
    let annotations = parse_selector(file, "annotationSelector", &t.annotation_selector)?;
    let m = |re: &Option<std::sync::Arc<Regex>>, s: &str| re.as_ref().is_none_or(|r| r.is_match(s));
    let mut out = Vec::new();
    // Cheap tests first, on borrowed strings; ids and label maps only when a selector needs them.
    for (i, r) in ra.iter().enumerate() {
        let api_version = super::resource::str_at(&r.obj, &["apiVersion"]);
        let (g, v) = api_version.split_once('/').unwrap_or(("", api_version));
        if !m(&kind, r.kind()) || !m(&group, g) || !m(&version, v) {
            continue;
        }
        if name.is_some() {
            let org_name = r.prev.first().map_or(r.name(), |p| p.name.as_str());
            if !m(&name, org_name) && !m(&name, r.name()) {
                continue;
            }
        }
        if namespace.is_some() {
            let (cur, org) = (r.cur_id(), r.org_id());
            if !m(&namespace, org.effective_namespace())
                && !m(&namespace, cur.effective_namespace())
            {
                continue;
            }
        }
        if !labels.is_empty() && !matches_selector(&labels, &r.string_map("labels")) {
            continue;
        }
        if !annotations.is_empty() && !matches_selector(&annotations, &r.string_map("annotations"))
        {
            continue;
        }
        out.push(i);
    }
    Ok(out)
}

/// Parsed label and annotation selectors.
pub(crate) struct LabelSelectors {
    labels: Vec<Req>,
    annotations: Vec<Req>,
}

impl LabelSelectors {
    pub(crate) fn new(file: &RelPath, labels: &str, annotations: &str) -> Result<Self, Error> {
        Ok(Self {
            labels: parse_selector(file, "labelSelector", labels)?,
            annotations: parse_selector(file, "annotationSelector", annotations)?,
        })
    }

    pub(crate) fn matches(&self, r: &Resource) -> bool {
        matches_selector(&self.labels, &r.string_map("labels"))
            && matches_selector(&self.annotations, &r.string_map("annotations"))
    }
}

/// One requirement of a Kubernetes label selector.
#[derive(Debug)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// Parses `a=b,c!=d,e in (x,y),f notin (z),g,!h`.
fn parse_selector(file: &RelPath, field: &str, s: &str) -> Result<Vec<Req>, Error> {
    let bad = |msg: &str| Error::Invalid {
        file: file.clone(),
        message: format!("patch target {field} {s:?}: {msg}"),
    };
    // Split on commas outside parentheses.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    let mut reqs = Vec::new();
    for p in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let set = |rest: &str| -> Result<Vec<String>, Error> {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| bad("expected a parenthesised list"))?;
            Ok(inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect())
        };
        if let Some((k, v)) = p.split_once("!=") {
            reqs.push(Req::NotEq(k.trim().into(), v.trim().into()));
        } else if let Some((k, v)) = p.split_once("==") {
            reqs.push(Req::Eq(k.trim().into(), v.trim().into()));
        } else if let Some((k, v)) = p.split_once('=') {
            reqs.push(Req::Eq(k.trim().into(), v.trim().into()));
        } else if let Some((k, rest)) = p.split_once(" notin ") {
            reqs.push(Req::NotIn(k.trim().into(), set(rest)?));
        } else if let Some((k, rest)) = p.split_once(" in ") {
            reqs.push(Req::In(k.trim().into(), set(rest)?));
        } else if let Some(k) = p.strip_prefix('!') {
            reqs.push(Req::NotExists(k.trim().into()));
        } else if p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            reqs.push(Req::Exists(p.into()));
        } else {
            return Err(bad("cannot parse"));
        }
    }
    Ok(reqs)
}

fn matches_selector(reqs: &[Req], labels: &[(String, String)]) -> bool {
    let get = |k: &str| {
        labels
            .iter()
            .find(|(lk, _)| lk == k)
            .map(|(_, v)| v.as_str())
    };
    reqs.iter().all(|r| match r {
        Req::Eq(k, v) => get(k) == Some(v),
        Req::NotEq(k, v) => get(k) != Some(v),
        Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        Req::Exists(k) => get(k).is_some(),
        Req::NotExists(k) => get(k).is_none(),
    })
}
