//! `replacements:` — copy a field of one object into fields of others, as Kustomize does
//! (field paths with `[key=value]` list selectors, `*`, indices; `delimiter`/`index`;
//! `create`). A scalar target keeps its type: only its text changes.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::resource::{Gvk, ResId, Resource};
use super::types::Selector;
use crate::source::Source;
use crate::{EntryKind, Error, RelPath};

/// An entry of `replacements`: inline, or `path:` to a file of them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Entry {
    pub path: Option<String>,
    pub source: Option<SourceSel>,
    #[serde(default)]
    pub targets: Vec<Target>,
}

/// One replacement.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Replacement {
    pub source: SourceSel,
    #[serde(default)]
    pub targets: Vec<Target>,
}

/// Where the value comes from.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SourceSel {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub field_path: String,
    pub options: Option<Options>,
}

/// Where the value goes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Target {
    pub select: Option<Selector>,
    #[serde(default)]
    pub reject: Vec<Selector>,
    #[serde(default)]
    pub field_paths: Vec<String>,
    pub options: Option<Options>,
}

/// `delimiter`, `index`, `create`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Options {
    #[serde(default)]
    pub delimiter: String,
    #[serde(default)]
    pub index: i64,
    #[serde(default)]
    pub create: bool,
}

fn invalid(file: &RelPath, message: String) -> Error {
    Error::Invalid {
        file: file.clone(),
        message: format!("replacements: {message}"),
    }
}

/// Loads the replacements of a kustomization (inline entries and `path:` files).
pub(crate) fn load(
    src: &Source<'_>,
    dir: &RelPath,
    file: &RelPath,
    entries: &[Entry],
) -> Result<Vec<Replacement>, Error> {
    let mut out = Vec::new();
    for e in entries {
        match (&e.path, e.source.is_some()) {
            (Some(p), false) => {
                let path = dir.join(p).map_err(|_| Error::OutsideRoot {
                    file: file.clone(),
                    what: "replacement file",
                    entry: p.clone(),
                })?;
                if src.tree.kind(&path)? != Some(EntryKind::File) {
                    return Err(Error::Missing {
                        file: file.clone(),
                        what: "replacement file",
                        entry: p.clone(),
                    });
                }
                for d in src.docs(&path)?.iter().filter(|d| !d.value.is_null()) {
                    let list = match &d.value {
                        Value::Array(a) => a.clone(),
                        other => vec![other.clone()],
                    };
                    for v in list {
                        out.push(
                            serde_json::from_value(v)
                                .map_err(|err| invalid(&path, format!("line {}: {err}", d.line)))?,
                        );
                    }
                }
            }
            (None, true) => {
                if let Some(source) = &e.source {
                    out.push(Replacement {
                        source: clone_source(source),
                        targets: e.targets.iter().map(clone_target).collect(),
                    });
                }
            }
            _ => {
                return Err(invalid(
                    file,
                    "an entry needs either `path` or `source` (with `targets`)".into(),
                ));
            }
        }
    }
    Ok(out)
}

fn clone_options(o: &Option<Options>) -> Option<Options> {
    o.as_ref().map(|o| Options {
        delimiter: o.delimiter.clone(),
        index: o.index,
        create: o.create,
    })
}

fn clone_source(s: &SourceSel) -> SourceSel {
    SourceSel {
        group: s.group.clone(),
        version: s.version.clone(),
        kind: s.kind.clone(),
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        field_path: s.field_path.clone(),
        options: clone_options(&s.options),
    }
}

fn clone_target(t: &Target) -> Target {
    Target {
        select: t.select.clone(),
        reject: t.reject.clone(),
        field_paths: t.field_paths.clone(),
        options: clone_options(&t.options),
    }
}

/// Kustomize's `IsSelectedBy`: exact name, effective namespace, type with empty = any.
fn selected_by(id: &ResId, sel_gvk: &Gvk, name: &str, namespace: &str) -> bool {
    (name.is_empty() || name == id.name)
        && (namespace.is_empty()
            || ResId {
                gvk: id.gvk.clone(),
                name: String::new(),
                namespace: namespace.to_string(),
            }
            .effective_namespace()
                == id.effective_namespace())
        && id.gvk.is_selected(sel_gvk)
}

fn ids(r: &Resource) -> Vec<ResId> {
    let mut v = vec![r.cur_id()];
    v.extend(r.prev.iter().cloned());
    v
}

/// Splits a field path on `.` outside `[...]`.
fn split(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut cur, mut depth) = (String::new(), 0);
    for c in path.chars() {
        match c {
            '[' => {
                depth += 1;
                cur.push(c);
            }
            ']' => {
                depth -= 1;
                cur.push(c);
            }
            '.' if depth == 0 => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(crate::yaml::format_number(n)),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => None,
        _ => None,
    }
}

/// Follows `path` (no creation) to one node.
fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = if let Some(inner) = p.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
            let (k, val) = inner.split_once('=')?;
            cur.as_array()?
                .iter()
                .find(|e| e.get(k).and_then(scalar_text).as_deref() == Some(val))?
        } else if let Ok(i) = p.parse::<usize>() {
            cur.as_array()?.get(i)?
        } else {
            cur.as_object()?.get(p)?
        };
    }
    Some(cur)
}

/// Visits every node `path` matches, creating missing parts when `create` is set.
fn visit(
    v: &mut Value,
    path: &[String],
    create: bool,
    f: &mut dyn FnMut(&mut Value) -> Result<(), String>,
) -> Result<bool, String> {
    let Some(p) = path.first() else {
        f(v)?;
        return Ok(true);
    };
    let rest = &path[1..];
    let fresh = |next: Option<&String>| match next {
        Some(n) if n.starts_with('[') || n == "*" || n.parse::<usize>().is_ok() => {
            Value::Array(Vec::new())
        }
        Some(_) => Value::Object(Map::new()),
        None => Value::Null,
    };
    if p == "*" {
        let Value::Array(items) = v else {
            return Ok(false);
        };
        let mut any = false;
        for item in items {
            any |= visit(item, rest, create, f)?;
        }
        return Ok(any);
    }
    if let Some(inner) = p.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
        let (k, val) = inner
            .split_once('=')
            .ok_or_else(|| format!("cannot parse list selector {p:?}"))?;
        if v.is_null() && create {
            *v = Value::Array(Vec::new());
        }
        let Value::Array(items) = v else {
            return Ok(false);
        };
        let re = super::regex(&format!("^{val}$")).map_err(|e| e.to_string())?;
        let mut any = false;
        for item in items.iter_mut() {
            let matches = if k.is_empty() {
                scalar_text(item).is_some_and(|t| re.is_match(&t))
            } else {
                item.get(k)
                    .and_then(scalar_text)
                    .is_some_and(|t| re.is_match(&t))
            };
            if matches {
                any |= visit(item, rest, create, f)?;
            }
        }
        if !any && create {
            let elem = if k.is_empty() {
                Value::String(val.to_string())
            } else {
                let mut m = Map::new();
                m.insert(k.to_string(), Value::String(val.to_string()));
                Value::Object(m)
            };
            items.push(elem);
            let last = items.last_mut().expect("just pushed");
            return visit(last, rest, create, f);
        }
        return Ok(any);
    }
    if let Ok(i) = p.parse::<usize>()
        && let Value::Array(items) = v
    {
        if items.len() == i && create {
            items.push(fresh(rest.first()));
        }
        return match items.get_mut(i) {
            Some(item) => visit(item, rest, create, f),
            None => Err(format!(
                "index {i} specified but only {} elements found",
                items.len()
            )),
        };
    }
    if v.is_null() && create {
        *v = Value::Object(Map::new());
    }
    let Value::Object(m) = v else {
        return Ok(false);
    };
    if !m.contains_key(p.as_str()) {
        if !create {
            return Ok(false);
        }
        m.insert(p.clone(), fresh(rest.first()));
    }
    visit(m.get_mut(p.as_str()).expect("present"), rest, create, f)
}

/// Applies the replacements to `ra`.
pub(crate) fn apply(
    file: &RelPath,
    reps: &[Replacement],
    ra: &mut [Resource],
) -> Result<(), Error> {
    for rep in reps {
        let s = &rep.source;
        let sel = Gvk {
            group: s.group.clone(),
            version: s.version.clone(),
            kind: s.kind.clone(),
        };
        let hits: Vec<usize> = (0..ra.len())
            .filter(|&i| {
                ids(&ra[i])
                    .iter()
                    .any(|id| selected_by(id, &sel, &s.name, &s.namespace))
            })
            .collect();
        let src_desc = format!(
            "{}/{}",
            if s.kind.is_empty() { "*" } else { &s.kind },
            s.name
        );
        let i = match hits.as_slice() {
            [i] => *i,
            [] => return Err(invalid(file, format!("source {src_desc} selects nothing"))),
            _ => {
                return Err(invalid(
                    file,
                    format!("source {src_desc} selects several objects"),
                ));
            }
        };
        let fp = if s.field_path.is_empty() {
            "metadata.name"
        } else {
            &s.field_path
        };
        let mut value = match lookup(&ra[i].obj, &split(fp)) {
            Some(v) if !v.is_null() && v != &Value::String(String::new()) => v.clone(),
            _ => {
                return Err(invalid(
                    file,
                    format!("fieldPath `{fp}` is missing for replacement source {src_desc}"),
                ));
            }
        };
        if let Some(o) = &s.options
            && !o.delimiter.is_empty()
        {
            let text = scalar_text(&value).ok_or_else(|| {
                invalid(
                    file,
                    "delimiter option can only be used with scalar nodes".into(),
                )
            })?;
            let parts: Vec<&str> = text.split(o.delimiter.as_str()).collect();
            let part = usize::try_from(o.index)
                .ok()
                .and_then(|ix| parts.get(ix))
                .ok_or_else(|| {
                    invalid(
                        file,
                        format!(
                            "options.index {} is out of bounds for value {text}",
                            o.index
                        ),
                    )
                })?;
            value = Value::String(part.to_string());
        }
        for t in &rep.targets {
            let Some(select) = &t.select else {
                return Err(invalid(
                    file,
                    "target must specify resources to select".into(),
                ));
            };
            let tsel = Gvk {
                group: select.group.clone(),
                version: select.version.clone(),
                kind: select.kind.clone(),
            };
            let label_sel = super::patches::LabelSelectors::new(
                file,
                &select.label_selector,
                &select.annotation_selector,
            )?;
            let paths: Vec<String> = if t.field_paths.is_empty() {
                vec!["metadata.name".into()]
            } else {
                t.field_paths.clone()
            };
            let create = t.options.as_ref().is_some_and(|o| o.create);
            for r in ra.iter_mut() {
                if !label_sel.matches(r) {
                    continue;
                }
                let mut rejected = false;
                for rej in &t.reject {
                    if !rej.annotation_selector.is_empty() || !rej.label_selector.is_empty() {
                        let ls = super::patches::LabelSelectors::new(
                            file,
                            &rej.label_selector,
                            &rej.annotation_selector,
                        )?;
                        if ls.matches(r) {
                            rejected = true;
                        }
                    }
                    let empty_id = rej.group.is_empty()
                        && rej.version.is_empty()
                        && rej.kind.is_empty()
                        && rej.name.is_empty()
                        && rej.namespace.is_empty();
                    if !empty_id {
                        let rg = Gvk {
                            group: rej.group.clone(),
                            version: rej.version.clone(),
                            kind: rej.kind.clone(),
                        };
                        if ids(r)
                            .iter()
                            .any(|id| selected_by(id, &rg, &rej.name, &rej.namespace))
                        {
                            rejected = true;
                        }
                    }
                }
                if rejected
                    || !ids(r)
                        .iter()
                        .any(|id| selected_by(id, &tsel, &select.name, &select.namespace))
                {
                    continue;
                }
                for fp in &paths {
                    let mut set =
                        |target: &mut Value| set_value(target, &value, t.options.as_ref());
                    let found = visit(&mut r.obj, &split(fp), create, &mut set)
                        .map_err(|m| invalid(file, format!("{}: {m}", r.describe())))?;
                    if !found {
                        return Err(invalid(
                            file,
                            format!(
                                "unable to find{} field {fp:?} in replacement target {}",
                                if create { " or create" } else { "" },
                                r.describe()
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn set_value(target: &mut Value, value: &Value, opts: Option<&Options>) -> Result<(), String> {
    let mut value = value.clone();
    if let Some(o) = opts
        && !o.delimiter.is_empty()
    {
        let Some(tv) = scalar_text(target).or_else(|| target.is_null().then(String::new)) else {
            return Err("delimiter option can only be used with scalar nodes".into());
        };
        let mut parts: Vec<String> = tv.split(o.delimiter.as_str()).map(str::to_string).collect();
        let v = scalar_text(&value).unwrap_or_default();
        if o.index < 0 {
            parts.insert(0, v);
        } else if o.index as usize >= parts.len() {
            parts.push(v);
        } else {
            parts[o.index as usize] = v;
        }
        value = Value::String(parts.join(&o.delimiter));
    }
    // A scalar target keeps its type; only its text is replaced.
    *target = match (&*target, scalar_text(&value)) {
        (Value::String(_), Some(text)) => Value::String(text),
        (Value::Number(_), Some(text)) => match crate::yaml::parse_scalar(&text) {
            v @ Value::Number(_) => v,
            _ => Value::String(text),
        },
        (Value::Bool(_), Some(text)) => match text.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(text),
        },
        _ => value,
    };
    Ok(())
}
