//! RFC 6902 JSON patch with RFC 6901 pointers, as kustomize v5.5 applies it
//! (evanphx/json-patch v4 semantics).
//!
//! Where that library departs from the RFC, kustomize's behaviour wins, since its output is the
//! contract: negative array indices count from the end, `replace` of a missing object member
//! adds it, `copy` from a missing object member copies `null`, and an operation without `value`
//! uses `null`. A pointer that does not start with `/`
//! (other than the empty pointer) is an error rather than being half-read.

use serde_json::Value;

use super::Error;

/// Applies `ops` (a list of operations) to `doc`, in order. On error `doc` may hold the result
/// of the operations before the failing one.
pub(super) fn apply(doc: &mut Value, ops: &Value) -> Result<(), Error> {
    let Value::Array(ops) = ops else {
        return Err(Error::InvalidJsonPatch {
            reason: "expected a list of operations".to_string(),
        });
    };
    for (index, op) in ops.iter().enumerate() {
        let Value::Object(fields) = op else {
            return Err(Error::InvalidJsonPatch {
                reason: format!("operation {index} is not a mapping"),
            });
        };
        let name = match fields.get("op") {
            Some(Value::String(s)) => s.as_str(),
            _ => {
                return Err(Error::InvalidJsonPatch {
                    reason: format!("operation {index} has no string `op`"),
                });
            }
        };
        let path = match fields.get("path") {
            Some(Value::String(s)) => s.as_str(),
            _ => {
                return Err(Error::InvalidJsonPatch {
                    reason: format!("operation {index} ({name}) has no string `path`"),
                });
            }
        };
        let value = fields.get("value").cloned().unwrap_or(Value::Null);
        let fail = |reason: String| Error::JsonPatchFailed {
            index,
            op: name.to_string(),
            path: path.to_string(),
            reason,
        };
        let from = || match fields.get("from") {
            Some(Value::String(s)) => Ok(s.as_str()),
            _ => Err(fail("missing string `from`".to_string())),
        };
        match name {
            "add" => add(doc, path, value).map_err(fail)?,
            "remove" => {
                remove(doc, path).map_err(fail)?;
            }
            "replace" => replace(doc, path, value).map_err(fail)?,
            "move" => {
                let from = from()?;
                let v = remove(doc, from).map_err(|e| fail(format!("from {from:?}: {e}")))?;
                add(doc, path, v).map_err(fail)?;
            }
            "copy" => {
                let from = from()?;
                // Like kustomize, copying a missing object member copies `null`, and the whole
                // document cannot be copied.
                if from.is_empty() {
                    return Err(fail(
                        "from \"\": cannot copy the whole document".to_string(),
                    ));
                }
                let v = get(doc, from)
                    .map_err(|e| fail(format!("from {from:?}: {e}")))?
                    .cloned()
                    .unwrap_or(Value::Null);
                add(doc, path, v).map_err(fail)?;
            }
            "test" => test(doc, path, &value).map_err(fail)?,
            other => {
                return Err(Error::InvalidJsonPatch {
                    reason: format!("operation {index} has unknown op {other:?}"),
                });
            }
        }
    }
    Ok(())
}

/// Decodes one reference token (`~1` is `/`, `~0` is `~`).
fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Splits a non-empty pointer into its parent's tokens and its last token.
fn split(path: &str) -> Result<(Vec<String>, String), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("a JSON pointer must be empty or start with '/'".to_string());
    };
    let mut tokens: Vec<String> = rest.split('/').map(unescape).collect();
    let last = tokens.pop().unwrap_or_default();
    Ok((tokens, last))
}

/// An array index as Go's `strconv.Atoi` reads it, negative counting from the end of `len`.
fn index(token: &str, len: usize) -> Result<usize, String> {
    let idx: i64 = token
        .parse()
        .map_err(|_| format!("{token:?} is not an array index"))?;
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    let resolved = if idx < 0 { idx + len } else { idx };
    if resolved < 0 || resolved >= len {
        return Err(format!("index {idx} is out of bounds"));
    }
    usize::try_from(resolved).map_err(|_| format!("index {idx} is out of bounds"))
}

/// The container the parent tokens lead to.
fn parent<'a>(doc: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for (depth, token) in tokens.iter().enumerate() {
        let next = match cur {
            Value::Object(m) => m.get_mut(token),
            Value::Array(a) => {
                let len = a.len();
                index(token, len).ok().and_then(move |i| a.get_mut(i))
            }
            _ => None,
        };
        cur = match next {
            Some(v @ (Value::Object(_) | Value::Array(_))) => v,
            _ => {
                let at: Vec<&str> = tokens[..=depth].iter().map(String::as_str).collect();
                return Err(format!(
                    "the document has no container at /{}",
                    at.join("/")
                ));
            }
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let (tokens, last) = split(path)?;
    match parent(doc, &tokens)? {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
            } else {
                // An insertion index may equal the length.
                let i = index(&last, a.len() + 1)?;
                a.insert(i, value);
            }
        }
        _ => unreachable_container()?,
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (tokens, last) = split(path)?;
    match parent(doc, &tokens)? {
        Value::Object(m) => m
            .shift_remove(&last)
            .ok_or_else(|| format!("no member {last:?} to remove")),
        Value::Array(a) => {
            let i = index(&last, a.len())?;
            Ok(a.remove(i))
        }
        _ => Err(unreachable_container().unwrap_err()),
    }
}

fn replace(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        if !matches!(value, Value::Object(_) | Value::Array(_)) {
            return Err("replacing the whole document needs a mapping or a list".to_string());
        }
        *doc = value;
        return Ok(());
    }
    let (tokens, last) = split(path)?;
    match parent(doc, &tokens)? {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            let i = index(&last, a.len())?;
            a[i] = value;
        }
        _ => unreachable_container()?,
    }
    Ok(())
}

fn get<'a>(doc: &'a mut Value, path: &str) -> Result<Option<&'a Value>, String> {
    if path.is_empty() {
        return Ok(Some(doc));
    }
    let (tokens, last) = split(path)?;
    Ok(match parent(doc, &tokens)? {
        Value::Object(m) => m.get(&last),
        Value::Array(a) => {
            let i = index(&last, a.len())?;
            a.get(i)
        }
        _ => None,
    })
}

fn test(doc: &mut Value, path: &str, value: &Value) -> Result<(), String> {
    let actual = get(doc, path)?;
    let equal = match actual {
        None => value.is_null(),
        Some(v) => v == value,
    };
    if equal {
        Ok(())
    } else {
        Err(match actual {
            None => format!("test failed: no member, expected {value}"),
            Some(v) => format!("test failed: found {v}, expected {value}"),
        })
    }
}

/// `parent` only returns objects and arrays.
fn unreachable_container() -> Result<(), String> {
    Err("internal error: parent is not a container".to_string())
}
