//! Patch engines: strategic merge and JSON 6902, applied exactly as kustomize v5.5 does.
//!
//! The caller chooses the target (by the patch's own apiVersion/kind/name, or by a `target`
//! selector) and hands each target here with the parsed patch. Both engines work on parsed
//! objects (`serde_json::Value`), so how the YAML was written (quotes, comments) plays no part.

mod json6902;
mod schema;
mod schema_table;
mod smp;

#[cfg(test)]
mod tests;

use serde_json::Value;

/// An error applying a patch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The strategic merge patch is not a mapping.
    #[error("a strategic merge patch must be a mapping, found {found}")]
    PatchNotMapping {
        /// What the patch is instead.
        found: &'static str,
    },
    /// Target and patch disagree on the kind of node at a field (e.g. a list patched with a
    /// mapping).
    #[error("wrong node kind at {path}: expected {expected}, found {found}")]
    KindMismatch {
        /// The dotted field path.
        path: String,
        /// The kind the target (or the first non-null side) has.
        expected: &'static str,
        /// The kind the other side has.
        found: &'static str,
    },
    /// A `$patch` directive with a value other than `merge`, `replace` or `delete`.
    #[error("unknown patch strategy {value:?} at {path}")]
    UnknownDirective {
        /// The dotted field path.
        path: String,
        /// The directive's value.
        value: String,
    },
    /// The JSON patch is not a list of well-formed operations.
    #[error("invalid JSON patch: {reason}")]
    InvalidJsonPatch {
        /// What is wrong with it.
        reason: String,
    },
    /// A JSON patch operation does not apply to the target.
    #[error("JSON patch operation {index} ({op} {path}) failed: {reason}")]
    JsonPatchFailed {
        /// The operation's position in the patch, from 0.
        index: usize,
        /// The operation (`add`, `remove`, ...).
        op: String,
        /// The operation's `path`.
        path: String,
        /// Why it does not apply.
        reason: String,
    },
}

/// Applies a strategic merge patch to `target` as kustomize v5.5 does.
///
/// Maps merge recursively and `null` deletes a field. Lists of built-in kinds merge by the keys
/// of the Kubernetes OpenAPI schema kustomize embeds (containers by `name`, container ports by
/// `containerPort` and `protocol`, volumeMounts by `mountPath`, finalizers as a set, ...), the
/// patch's elements first; every other list, and every list of a custom resource, is replaced.
/// `$patch: replace | merge | delete` works on maps, list elements and lists. Like kustomize,
/// `$setElementOrder`, `$retainKeys` and `$deleteFromPrimitiveList` get no special meaning.
///
/// The target keeps its kind, `metadata.name` and `metadata.namespace`, as in kustomize (which
/// identifies the target by them). A top-level `$patch: delete` deletes the whole object:
/// `target` becomes `null` and the caller drops it from the output.
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), Error> {
    strategic_merge_with(target, patch, SmpOptions::default())
}

/// kustomize's `patches[].options` for strategic merge patches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SmpOptions {
    /// `allowNameChange`: the patch's `metadata.name` replaces the target's.
    pub allow_name_change: bool,
    /// `allowKindChange`: the patch's `kind` replaces the target's.
    pub allow_kind_change: bool,
}

/// [`strategic_merge`] with kustomize's patch options.
pub fn strategic_merge_with(
    target: &mut Value,
    patch: &Value,
    options: SmpOptions,
) -> Result<(), Error> {
    if !patch.is_object() {
        return Err(Error::PatchNotMapping {
            found: match patch {
                Value::Array(_) => "a list",
                Value::Null => "null",
                _ => "a scalar",
            },
        });
    }
    let kind = target.get("kind").cloned();
    let metadata = target.get("metadata");
    let name = metadata.and_then(|m| m.get("name")).cloned();
    let namespace = metadata.and_then(|m| m.get("namespace")).cloned();
    let merged = smp::merge(std::mem::take(target), patch.clone())?;
    let Some(mut merged) = merged else {
        *target = Value::Null;
        return Ok(());
    };
    if let Value::Object(obj) = &mut merged {
        if !options.allow_kind_change {
            restore(obj, "kind", kind);
        }
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(meta) = meta {
            if !options.allow_name_change {
                restore(meta, "name", name);
            }
            restore(meta, "namespace", namespace);
        }
        if obj
            .get("metadata")
            .is_some_and(|m| m.as_object().is_some_and(|m| m.is_empty()))
        {
            obj.shift_remove("metadata");
        }
    }
    *target = merged;
    Ok(())
}

/// Puts back a field the patch may not change (removes it if the target had none).
fn restore(obj: &mut serde_json::Map<String, Value>, key: &str, value: Option<Value>) {
    match value {
        Some(v) => {
            obj.insert(key.to_string(), v);
        }
        None => {
            obj.shift_remove(key);
        }
    }
}

/// Applies a JSON 6902 patch (`ops`, a list of operations) to `target` as kustomize v5.5 does.
///
/// Supports `add`, `remove`, `replace`, `move`, `copy` and `test` with RFC 6901 pointers (`~0`,
/// `~1`, `-` to append). Errors name the failing operation's index, op and path. On error
/// `target` is left unchanged.
pub fn json6902(target: &mut Value, ops: &Value) -> Result<(), Error> {
    let mut work = target.clone();
    json6902::apply(&mut work, ops)?;
    *target = work;
    Ok(())
}

/// [`json6902`] without the copy that keeps `target` unchanged on error: for callers that
/// discard `target` when the patch fails (a failed patch fails the whole render).
pub(crate) fn json6902_in_place(target: &mut Value, ops: &Value) -> Result<(), Error> {
    json6902::apply(target, ops)
}
