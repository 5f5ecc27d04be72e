//! Strategic merge as kustomize v5.5 applies it (kyaml's `merge2` walker with lists prepended).
//!
//! This is not apimachinery's strategic merge: kyaml walks the target and the patch together,
//! field by field in sorted order, and its list merge has its own ordering and quirks (patch
//! elements first, then the target's remaining ones; `$setElementOrder`, `$retainKeys` and
//! `$deleteFromPrimitiveList` are not directives to it). The walk below follows it step by step,
//! because byte-compatibility with `kubectl kustomize` is the contract; the tests compare with
//! `kubectl kustomize` on the same input.

use serde_json::Value;

use super::Error;
use super::schema::{self, Schema};

/// The `$patch` directive key.
const DIRECTIVE: &str = "$patch";

/// Merges `patch` into `target`. `None` means the patch deleted the whole object.
pub(super) fn merge(target: Value, patch: Value) -> Result<Option<Value>, Error> {
    let mut walker = Walker { path: Vec::new() };
    Ok(walker.walk(Some(target), Some(patch), None)?.value)
}

/// What a `$patch` directive asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Directive {
    Merge,
    Replace,
    Delete,
}

/// The result of walking one position.
#[derive(Debug)]
struct Walked {
    /// The merged value; `None` removes the field or element.
    value: Option<Value>,
    /// Whether `value` is the target's node merged in place (kyaml mutates the target's node and
    /// later re-reads it from the target list; a replacement taken from the patch is not written
    /// back to the target list).
    from_dest: bool,
}

impl Walked {
    fn clear() -> Self {
        Self {
            value: None,
            from_dest: false,
        }
    }
}

/// The node kinds the walk distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Map,
    Seq,
    Scalar,
}

impl Kind {
    fn of(v: &Value) -> Option<Self> {
        match v {
            Value::Null => None,
            Value::Object(_) => Some(Kind::Map),
            Value::Array(_) => Some(Kind::Seq),
            _ => Some(Kind::Scalar),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Map => "a mapping",
            Kind::Seq => "a sequence",
            Kind::Scalar => "a scalar",
        }
    }
}

struct Walker {
    path: Vec<String>,
}

/// Missing or `null`.
fn missing_or_null(v: &Option<Value>) -> bool {
    matches!(v, None | Some(Value::Null))
}

/// The text of a scalar as YAML shows it; what kyaml compares merge keys by.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null | Value::Array(_) | Value::Object(_) => String::new(),
    }
}

/// kyaml's `IsNilOrEmpty`: null, an empty map or an empty list.
fn nil_or_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    }
}

fn is_empty_map(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.is_empty())
}

/// A key value kyaml writes back as a plain YAML scalar: typed as YAML would read it.
fn plain_scalar(s: &str) -> Value {
    serde_yaml::from_str::<Value>(s)
        .ok()
        .filter(|v| !matches!(v, Value::Object(_) | Value::Array(_) | Value::Null))
        .unwrap_or_else(|| Value::String(s.to_string()))
}

impl Walker {
    fn path(&self) -> String {
        if self.path.is_empty() {
            ".".to_string()
        } else {
            self.path.join(".")
        }
    }

    fn walk(
        &mut self,
        dest: Option<Value>,
        src: Option<Value>,
        schema: Schema,
    ) -> Result<Walked, Error> {
        let schema = schema.or_else(|| schema_from_meta(&dest).or_else(|| schema_from_meta(&src)));
        let kind = [&dest, &src].into_iter().flatten().find_map(Kind::of);
        for v in [&dest, &src].into_iter().flatten() {
            if let Some(found) = Kind::of(v) {
                let expected = kind.unwrap_or(found);
                if found != expected {
                    return Err(Error::KindMismatch {
                        path: self.path(),
                        expected: expected.name(),
                        found: found.name(),
                    });
                }
            }
        }
        match kind {
            Some(Kind::Map) | None => self.walk_map(dest, src, schema),
            Some(Kind::Seq) => self.walk_seq(dest, src, schema),
            Some(Kind::Scalar) => Ok(match src {
                Some(Value::Null) => Walked::clear(),
                Some(s) => Walked {
                    value: Some(s),
                    from_dest: false,
                },
                None => Walked {
                    value: dest,
                    from_dest: true,
                },
            }),
        }
    }

    fn walk_map(
        &mut self,
        dest: Option<Value>,
        mut src: Option<Value>,
        schema: Schema,
    ) -> Result<Walked, Error> {
        // kyaml's Merger.VisitMap.
        let (node, from_dest) = if missing_or_null(&dest) {
            // Errors are ignored here, as kyaml does: an unknown `$patch` stays in place.
            if map_directive(&mut src, &self.path).ok() == Some(Directive::Delete) {
                return Ok(Walked::clear());
            }
            match (&dest, &src) {
                // A null the target has and the patch does not mention survives.
                (Some(Value::Null), None) => {
                    return Ok(Walked {
                        value: dest,
                        from_dest: true,
                    });
                }
                (_, None) | (_, Some(Value::Null)) => return Ok(Walked::clear()),
                _ => (src.clone(), false),
            }
        } else {
            if matches!(src, Some(Value::Null)) {
                return Ok(Walked::clear());
            }
            match map_directive(&mut src, &self.path)? {
                Directive::Delete => return Ok(Walked::clear()),
                Directive::Replace => (src.clone(), false),
                Directive::Merge => (dest, true),
            }
        };
        let Some(Value::Object(mut map)) = node else {
            return Ok(Walked {
                value: node,
                from_dest,
            });
        };
        let mut names: Vec<String> = map.keys().cloned().collect();
        if let Some(Value::Object(s)) = &src {
            names.extend(s.keys().cloned());
        }
        names.sort();
        names.dedup();
        let src_map = match &src {
            Some(Value::Object(s)) => Some(s),
            _ => None,
        };
        for name in names {
            let s = src_map.and_then(|s| s.get(&name)).cloned();
            if s.is_none() {
                // A field only the target has is left as it is unless it holds a map or a
                // merged list, which kyaml walks (and so normalises) too.
                let walked_anyway = match map.get(&name) {
                    Some(Value::Object(_)) => true,
                    Some(Value::Array(_)) => {
                        schema::merge_keys(schema::field(schema, &name)).is_some()
                    }
                    _ => false,
                };
                if !walked_anyway {
                    continue;
                }
            }
            let d = map.get_mut(&name).map(std::mem::take);
            self.path.push(name.clone());
            let walked = self.walk(d, s, schema::field(schema, &name))?;
            self.path.pop();
            match walked.value {
                None => {
                    map.shift_remove(&name);
                }
                Some(v) => {
                    map.insert(name, v);
                }
            }
        }
        Ok(Walked {
            value: Some(Value::Object(map)),
            from_dest,
        })
    }

    fn walk_seq(
        &mut self,
        dest: Option<Value>,
        mut src: Option<Value>,
        schema: Schema,
    ) -> Result<Walked, Error> {
        let Some(keys) = schema::merge_keys(schema) else {
            // A list the schema does not merge: the patch's list replaces the target's as is.
            return Ok(match src {
                Some(Value::Null) => Walked::clear(),
                Some(s) => Walked {
                    value: Some(s),
                    from_dest: false,
                },
                None => Walked {
                    value: dest,
                    from_dest: true,
                },
            });
        };
        // kyaml's Merger.VisitList for an associative list.
        let (node, from_dest) = if missing_or_null(&dest) {
            (src.clone(), false)
        } else {
            if matches!(src, Some(Value::Null)) {
                return Ok(Walked::clear());
            }
            match seq_directive(&mut src, &self.path)? {
                Directive::Delete => return Ok(Walked::clear()),
                Directive::Replace => (src.clone(), false),
                Directive::Merge => (dest, true),
            }
        };
        let Some(Value::Array(dest_list)) = node else {
            return Ok(Walked {
                value: node,
                from_dest,
            });
        };
        let src_list = match &src {
            Some(Value::Array(a)) => Some(a.as_slice()),
            _ => None,
        };
        let elem_schema = schema::elements(schema);
        let merged = if keys.is_empty() {
            let values = primitive_values(src_list, &dest_list);
            self.set_elements(values, &[""], dest_list, src_list, elem_schema)?
        } else {
            let values = element_values(src_list, &dest_list, keys);
            self.set_elements(values, keys, dest_list, src_list, elem_schema)?
        };
        Ok(Walked {
            value: Some(Value::Array(merged)),
            from_dest,
        })
    }

    /// kyaml's `setAssociativeSequenceElements` with lists prepended.
    ///
    /// kyaml shares nodes between the target list and the list it builds (a merged element is
    /// the target's node, changed in place). The nodes live in an arena here and both lists hold
    /// indices into it, which keeps those semantics without copying elements.
    fn set_elements(
        &mut self,
        mut values_list: Vec<Vec<String>>,
        keys: &[&str],
        dest: Vec<Value>,
        src: Option<&[Value]>,
        elem_schema: Schema,
    ) -> Result<Vec<Value>, Error> {
        let mut arena = dest;
        let mut dest: Vec<usize> = (0..arena.len()).collect();
        let mut items: Vec<usize> = Vec::new();
        if keys.len() > 1 {
            merge_values(&mut values_list);
        }
        let mut valid_keys: Vec<&str> = Vec::new();
        for values in &values_list {
            if values.is_empty() {
                continue;
            }
            let (vk, vv) = validate_keys(&values_list, values, keys);
            valid_keys.clone_from(&vk);
            let (lk, lv) = validate_keys(std::slice::from_ref(&vv), &vv, &vk);
            let d_node = dest
                .iter()
                .copied()
                .find(|&i| element_matches(&arena[i], &lk, &lv));
            let s = src.and_then(|s| s.iter().find(|e| element_matches(e, &lk, &lv)).cloned());
            // When the walk merges into the target's element, move it out rather than copy it;
            // the merged node goes back to the same arena slot below.
            let in_place = d_node.is_some_and(|i| merges_in_place(&arena[i], s.as_ref()));
            let d = d_node.map(|i| {
                if in_place {
                    std::mem::take(&mut arena[i])
                } else {
                    arena[i].clone()
                }
            });
            let walked = self.walk(d, s, elem_schema)?;
            debug_assert!(!in_place || walked.from_dest);
            let node = match (walked.value, d_node) {
                (None, _) => None,
                (Some(v), Some(i)) if walked.from_dest => {
                    arena[i] = v;
                    Some(i)
                }
                (Some(v), _) => {
                    arena.push(v);
                    Some(arena.len() - 1)
                }
            };
            let mut exit = false;
            for (i, key) in vk.iter().enumerate() {
                let gone = node.is_none_or(|n| arena[n].is_null() || is_empty_map(&arena[n]));
                if gone {
                    element_setter(&mut dest, &arena, None, &vk, &vv, &self.path)?;
                    exit = true;
                } else if let Some(Value::Object(m)) = node.map(|n| &mut arena[n])
                    && !m.contains_key(*key)
                    && !vv[i].is_empty()
                {
                    m.insert((*key).to_string(), plain_scalar(&vv[i]));
                }
            }
            if exit {
                continue;
            }
            element_setter(&mut items, &arena, node, &vk, &vv, &self.path)?;
        }
        let result = if values_list.is_empty() {
            dest
        } else {
            append_list(items, dest, &valid_keys, &arena, &self.path)?
        };
        Ok(materialize(arena, &result))
    }
}

/// The values a list of arena indices stands for (a node listed twice is copied once).
fn materialize(arena: Vec<Value>, list: &[usize]) -> Vec<Value> {
    let mut remaining = vec![0usize; arena.len()];
    for &i in list {
        remaining[i] += 1;
    }
    let mut arena: Vec<Option<Value>> = arena.into_iter().map(Some).collect();
    list.iter()
        .map(|&i| {
            remaining[i] -= 1;
            if remaining[i] == 0 {
                arena[i].take().unwrap_or_default()
            } else {
                arena[i].clone().unwrap_or_default()
            }
        })
        .collect()
}

/// Whether walking `dest` with `src` merges into `dest`'s own node (kyaml's VisitMap returning
/// the target): a target mapping, and a patch side that is absent or a mapping without a
/// `$patch` other than `merge`.
fn merges_in_place(dest: &Value, src: Option<&Value>) -> bool {
    dest.is_object()
        && match src {
            None => true,
            Some(Value::Object(m)) => m.get(DIRECTIVE).is_none_or(|v| text(v) == "merge"),
            Some(_) => false,
        }
}

/// The schema of a node that names its own apiVersion and kind (kyaml looks a schema up this way
/// wherever it has none).
fn schema_from_meta(v: &Option<Value>) -> Schema {
    let Some(Value::Object(m)) = v else {
        return None;
    };
    match (m.get("apiVersion"), m.get("kind")) {
        (Some(Value::String(a)), Some(Value::String(k))) if !a.is_empty() && !k.is_empty() => {
            schema::for_kind(a, k)
        }
        _ => None,
    }
}

fn parse_directive(value: &Value, path: &[String]) -> Result<Directive, Error> {
    match text(value).as_str() {
        "merge" => Ok(Directive::Merge),
        "replace" => Ok(Directive::Replace),
        "delete" => Ok(Directive::Delete),
        other => Err(Error::UnknownDirective {
            path: join(path),
            value: other.to_string(),
        }),
    }
}

fn join(path: &[String]) -> String {
    if path.is_empty() {
        ".".to_string()
    } else {
        path.join(".")
    }
}

/// Reads and removes a map's `$patch` directive.
fn map_directive(src: &mut Option<Value>, path: &[String]) -> Result<Directive, Error> {
    match src {
        None => Ok(Directive::Merge),
        Some(Value::Object(m)) => match m.get(DIRECTIVE) {
            None => Ok(Directive::Merge),
            Some(v) => {
                let d = parse_directive(v, path)?;
                m.shift_remove(DIRECTIVE);
                Ok(d)
            }
        },
        Some(Value::Array(_)) => seq_directive(src, path),
        Some(_) => Err(Error::KindMismatch {
            path: join(path),
            expected: "a mapping or a sequence",
            found: "a scalar",
        }),
    }
}

/// Reads and removes a list's `{$patch: ...}` element.
fn seq_directive(src: &mut Option<Value>, path: &[String]) -> Result<Directive, Error> {
    let Some(Value::Array(list)) = src else {
        return Ok(Directive::Merge);
    };
    let Some(Value::Object(m)) = list
        .iter()
        .find(|e| matches!(e, Value::Object(m) if m.contains_key(DIRECTIVE)))
    else {
        return Ok(Directive::Merge);
    };
    if m.len() > 1 {
        return Ok(Directive::Merge);
    }
    let value = text(&m[DIRECTIVE]);
    let d = parse_directive(&m[DIRECTIVE], path)?;
    element_setter_values(list, &[DIRECTIVE], &[value], path)?;
    Ok(d)
}

/// The merge-key values of every element, patch first, each once.
fn element_values(src: Option<&[Value]>, dest: &[Value], keys: &[&str]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for list in [src.unwrap_or_default(), dest] {
        for elem in list {
            let values: Vec<String> = keys
                .iter()
                .map(|k| {
                    let f = elem.as_object().and_then(|m| m.get(*k));
                    if nil_or_empty(f) {
                        String::new()
                    } else {
                        f.map(text).unwrap_or_default()
                    }
                })
                .collect();
            if !values.is_empty() && !out.contains(&values) {
                out.push(values);
            }
        }
    }
    out
}

/// The values of a list of primitives, patch first, each once.
fn primitive_values(src: Option<&[Value]>, dest: &[Value]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for list in [src.unwrap_or_default(), dest] {
        for item in list {
            let t = vec![text(item)];
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

/// Treats key tuples that differ only where one side is empty as the same element (a port with
/// and without `protocol`).
fn merge_values(list: &mut [Vec<String>]) {
    for i in 0..list.len() {
        let v1 = list[i].clone();
        for j in 0..list.len() {
            if let Some(m) = match_values(&v1, &list[j]) {
                list[i].clone_from(&m);
                list[j] = m;
            }
        }
    }
}

fn match_values(a: &[String], b: &[String]) -> Option<Vec<String>> {
    if a.len() != b.len() {
        return None;
    }
    let mut common = false;
    let mut res = Vec::with_capacity(a.len());
    for (x, y) in a.iter().zip(b) {
        if x == y {
            common = true;
            res.push(x.clone());
        } else if !x.is_empty() && !y.is_empty() {
            return None;
        } else if !x.is_empty() {
            res.push(x.clone());
        } else {
            res.push(y.clone());
        }
    }
    common.then_some(res)
}

/// Drops the keys no element has a value for (falls back to all keys if none has any).
fn validate_keys<'k>(
    values_list: &[Vec<String>],
    values: &[String],
    keys: &[&'k str],
) -> (Vec<&'k str>, Vec<String>) {
    let valid: Vec<bool> = (0..keys.len())
        .map(|i| {
            values_list
                .iter()
                .any(|vs| vs.get(i).is_some_and(|v| !v.is_empty()))
        })
        .collect();
    if !valid.iter().any(|v| *v) {
        return (keys.to_vec(), values.to_vec());
    }
    let vk = keys
        .iter()
        .zip(&valid)
        .filter(|(_, v)| **v)
        .map(|(k, _)| *k)
        .collect();
    let vv = values
        .iter()
        .enumerate()
        .filter(|(i, v)| !v.is_empty() || valid.get(*i).copied().unwrap_or(false))
        .map(|(_, v)| v.clone())
        .collect();
    (vk, vv)
}

/// Whether an element's keys have these values (kyaml's `ElementList` match).
fn element_matches(e: &Value, keys: &[&str], values: &[String]) -> bool {
    let first = values.first().map(String::as_str).unwrap_or("");
    if keys.is_empty() || keys[0].is_empty() {
        return text(e) == first;
    }
    if keys.len() != values.len() {
        return false;
    }
    let Value::Object(m) = e else {
        return false;
    };
    keys.iter()
        .zip(values)
        .all(|(k, v)| m.get(*k).is_some_and(|f| text(f) == *v))
}

/// kyaml's `FieldMatcher` as `ElementSetter` uses it: does `elem` have `name` (equal to `value`
/// unless `value` is empty)? For a primitive list `name` is empty and the element itself is
/// compared.
fn field_matches(elem: &Value, name: &str, value: &str, path: &[String]) -> Result<bool, Error> {
    if elem.is_null() {
        return Ok(false);
    }
    if name.is_empty() {
        if matches!(elem, Value::Object(_) | Value::Array(_)) {
            return Err(Error::KindMismatch {
                path: join(path),
                expected: "a scalar list element",
                found: Kind::of(elem).map(Kind::name).unwrap_or("null"),
            });
        }
        return Ok(text(elem) == value);
    }
    let Value::Object(m) = elem else {
        return Err(Error::KindMismatch {
            path: join(path),
            expected: "a mapping list element",
            found: Kind::of(elem).map(Kind::name).unwrap_or("null"),
        });
    };
    Ok(match m.get(name) {
        None => false,
        Some(_) if value.is_empty() => true,
        Some(f) => text(f) == value,
    })
}

/// kyaml's `ElementSetter` on a list of arena nodes: replaces every element matching
/// `keys`=`values` with `element` (removes them when `element` is `None`), appending `element`
/// if none matched. Like kyaml it also drops null and empty-map elements on the way.
fn element_setter(
    list: &mut Vec<usize>,
    arena: &[Value],
    element: Option<usize>,
    keys: &[&str],
    values: &[String],
    path: &[String],
) -> Result<(), Error> {
    let keys: &[&str] = if keys.is_empty() { &[""] } else { keys };
    let mapping_setter = !keys[0].is_empty() && values.first().is_some_and(|v| !v.is_empty());
    let mut out = Vec::with_capacity(list.len() + 1);
    let mut matched = false;
    for &i in list.iter() {
        let elem = &arena[i];
        if elem.is_null() || is_empty_map(elem) {
            continue;
        }
        if !elem.is_object() && mapping_setter {
            out.push(i);
            continue;
        }
        let mut found = true;
        let mut last = false;
        for (j, key) in keys.iter().enumerate() {
            if let Some(v) = values.get(j) {
                last = field_matches(elem, key, v, path)?;
            }
            if !last {
                found = false;
                break;
            }
        }
        if !found {
            if !values.is_empty() {
                out.push(i);
            }
            continue;
        }
        matched = true;
        if let Some(e) = element {
            out.push(e);
        }
    }
    *list = out;
    if let Some(e) = element
        && !matched
        && !arena[e].is_null()
    {
        list.push(e);
    }
    Ok(())
}

/// [`element_setter`] on a plain list (used to elide a list's `$patch` element).
fn element_setter_values(
    list: &mut Vec<Value>,
    keys: &[&str],
    values: &[String],
    path: &[String],
) -> Result<(), Error> {
    let arena = std::mem::take(list);
    let mut idx: Vec<usize> = (0..arena.len()).collect();
    element_setter(&mut idx, &arena, None, keys, values, path)?;
    *list = materialize(arena, &idx);
    Ok(())
}

/// kyaml's `appendListNode`: sets each element of `src` into `dst` by its keys.
fn append_list(
    mut dst: Vec<usize>,
    src: Vec<usize>,
    keys: &[&str],
    arena: &[Value],
    path: &[String],
) -> Result<Vec<usize>, Error> {
    for elem in src {
        if keys.first().is_none_or(|k| k.is_empty()) {
            let t = text(&arena[elem]);
            element_setter(&mut dst, arena, Some(elem), &[""], &[t], path)?;
            continue;
        }
        let mut v: Vec<String> = Vec::new();
        for key in keys {
            let field = match &arena[elem] {
                Value::Null => None,
                Value::Object(m) => m.get(*key),
                other => {
                    return Err(Error::KindMismatch {
                        path: join(path),
                        expected: "a mapping list element",
                        found: Kind::of(other).map(Kind::name).unwrap_or("null"),
                    });
                }
            };
            match field {
                None => dst.push(elem),
                Some(f) => v.push(text(f)),
            }
        }
        if keys.len() > 1 {
            element_setter(&mut dst, arena, None, keys, &v, path)?;
        }
        element_setter(&mut dst, arena, Some(elem), keys, &v, path)?;
    }
    Ok(dst)
}
