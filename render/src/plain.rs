//! Plain YAML directories: every `.yaml`, `.yml` and `.json` file below a directory, in byte
//! order of their paths, each document in file order, minus what `.sourceignore` files exclude.

use std::path::PathBuf;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use serde_json::Value;

use crate::source::Source;
use crate::{EntryKind, Error, RelPath};

/// Renders every manifest file below `dir`.
pub(crate) fn render_dir(src: &Source<'_>, dir: &RelPath) -> Result<Vec<Value>, Error> {
    let mut files = Vec::new();
    let mut ignores = Vec::new();
    walk(src, dir, 0, &mut ignores, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for f in &files {
        out.extend(render_file(src, f)?);
    }
    Ok(out)
}

/// Renders one manifest file.
pub(crate) fn render_file(src: &Source<'_>, file: &RelPath) -> Result<Vec<Value>, Error> {
    let docs = src.docs(file)?;
    let mut out = Vec::new();
    for doc in docs.iter() {
        push_objects(file, doc.line, &doc.value, &mut out)?;
    }
    Ok(out)
}

/// Appends the object(s) of one document: nothing for an empty document, the items of a
/// `kind: *List` with `items`, else the object itself once checked to be a manifest.
pub(crate) fn push_objects(
    file: &RelPath,
    line: usize,
    value: &Value,
    out: &mut Vec<Value>,
) -> Result<(), Error> {
    match value {
        Value::Null => Ok(()),
        Value::Object(m) => {
            let kind = m.get("kind").and_then(Value::as_str).unwrap_or_default();
            if kind.ends_with("List")
                && let Some(items) = m.get("items")
            {
                {
                    let Value::Array(items) = items else {
                        return Err(Error::Invalid {
                            file: file.clone(),
                            message: format!("line {line}: {kind} items must be a list"),
                        });
                    };
                    for item in items {
                        push_objects(file, line, item, out)?;
                    }
                    return Ok(());
                }
            }
            if kind.is_empty() {
                return Err(Error::Invalid {
                    file: file.clone(),
                    message: format!(
                        "line {line}: document has no kind, it is not a Kubernetes object"
                    ),
                });
            }
            if m.get("apiVersion").and_then(Value::as_str).is_none() {
                return Err(Error::Invalid {
                    file: file.clone(),
                    message: format!("line {line}: {kind} has no apiVersion"),
                });
            }
            out.push(value.clone());
            Ok(())
        }
        _ => Err(Error::Invalid {
            file: file.clone(),
            message: format!(
                "line {line}: document is not a mapping, it is not a Kubernetes object"
            ),
        }),
    }
}

fn is_manifest(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json")
}

/// Builds the matcher for a `.sourceignore` in `dir`.
fn load_ignore(src: &Source<'_>, dir: &RelPath) -> Result<Option<Gitignore>, Error> {
    let file = dir.join(".sourceignore")?;
    if src.tree.kind(&file)? != Some(EntryKind::File) {
        return Ok(None);
    }
    let text = src.read_text(&file)?;
    let mut b = GitignoreBuilder::new(virtual_path(dir));
    for (i, line) in text.lines().enumerate() {
        b.add_line(None, line).map_err(|e| Error::Invalid {
            file: file.clone(),
            message: format!("line {}: {e}", i + 1),
        })?;
    }
    let gi = b.build().map_err(|e| Error::Invalid {
        file: file.clone(),
        message: e.to_string(),
    })?;
    Ok(Some(gi))
}

/// Paths are matched against `.sourceignore` patterns as if the source root were `/`.
fn virtual_path(p: &RelPath) -> PathBuf {
    PathBuf::from(format!("/{}", p.as_str()))
}

fn ignored(ignores: &[Gitignore], path: &RelPath, is_dir: bool) -> bool {
    let vp = virtual_path(path);
    // Deeper files override shallower ones, as with nested `.gitignore`s.
    for gi in ignores.iter().rev() {
        if !vp.starts_with(gi.path()) {
            continue;
        }
        let m = gi.matched(&vp, is_dir);
        if m.is_ignore() {
            return true;
        }
        if m.is_whitelist() {
            return false;
        }
    }
    false
}

fn walk(
    src: &Source<'_>,
    dir: &RelPath,
    depth: usize,
    ignores: &mut Vec<Gitignore>,
    files: &mut Vec<RelPath>,
) -> Result<(), Error> {
    if depth > src.opts.max_depth {
        return Err(Error::TooDeep {
            file: dir.clone(),
            limit: src.opts.max_depth,
        });
    }
    let pushed = match load_ignore(src, dir)? {
        Some(gi) => {
            ignores.push(gi);
            true
        }
        None => false,
    };
    for entry in src.tree.list(dir)? {
        let path = dir.join(&entry.name)?;
        match entry.kind {
            EntryKind::Dir => {
                if entry.name == ".git" || ignored(ignores, &path, true) {
                    continue;
                }
                walk(src, &path, depth + 1, ignores, files)?;
            }
            EntryKind::File => {
                if is_manifest(&entry.name) && !ignored(ignores, &path, false) {
                    files.push(path);
                }
            }
        }
    }
    if pushed {
        ignores.pop();
    }
    Ok(())
}
