//! How an agent applies a delivery, and the bundle payload that carries those settings inside
//! the signature.
//!
//! A payload is the canonical JSON object `{"objects":[...],"options":{...}}`: the digest in the
//! signed header covers the whole of it, so the hub's choice of prune, drift mode, conflict
//! policy and ignore rules cannot be changed on the way without failing verification. A payload
//! that is a bare JSON array (the first format) is read as those objects with default options.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical;

/// Per-delivery apply settings, chosen by the hub (the `Delivery` resource) and signed into the
/// bundle. Field names on the wire are camelCase: `prune`, `allowEmpty`, `conflicts`, `drift`,
/// `ignore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeliveryOptions {
    /// Delete objects that left the bundle.
    pub prune: bool,
    /// Accept an empty bundle (and so prune everything). Off by default: an empty bundle is far
    /// more often a broken render than an intent.
    pub allow_empty: bool,
    /// Conflicts with other field managers.
    pub conflicts: ConflictPolicy,
    /// Correct drift or only report it.
    pub drift: DriftMode,
    /// Fields left to other controllers once an object exists.
    pub ignore: Vec<IgnoreRule>,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            prune: true,
            allow_empty: false,
            conflicts: ConflictPolicy::Force,
            drift: DriftMode::Correct,
            ignore: Vec::new(),
        }
    }
}

/// What to do when another field manager owns a field the bundle sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictPolicy {
    /// Take the field over (`force`), as Flux does.
    #[default]
    Force,
    /// Leave it and report the object failed with the API server's conflict message.
    Report,
}

/// Whether drift is put back or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftMode {
    /// Report and correct.
    #[default]
    Correct,
    /// Report only.
    Report,
}

/// Fields flotilla stops owning once an object exists, so another controller can manage them
/// (for example `/spec/replicas` under a HorizontalPodAutoscaler). The manifest's value is used
/// when the object is created; drift in these fields is neither reported nor corrected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoreRule {
    /// JSON pointers (RFC 6901), e.g. `/spec/replicas`.
    pub paths: Vec<String>,
    /// Only objects of this kind (all kinds if empty).
    #[serde(default)]
    pub kind: String,
    /// Only objects with this name (all names if empty).
    #[serde(default)]
    pub name: String,
    /// Only objects in this namespace (all if empty).
    #[serde(default)]
    pub namespace: String,
}

impl IgnoreRule {
    /// True if the rule applies to the object `kind` `namespace`/`name`.
    pub fn matches(&self, kind: &str, namespace: &str, name: &str) -> bool {
        (self.kind.is_empty() || self.kind == kind)
            && (self.name.is_empty() || self.name == name)
            && (self.namespace.is_empty() || self.namespace == namespace)
    }
}

/// A decoded bundle payload.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Payload {
    /// The rendered objects, in render order.
    pub objects: Vec<Value>,
    /// How to apply them.
    pub options: DeliveryOptions,
}

/// Encodes objects and options as the canonical payload `{"objects":[...],"options":{...}}`.
pub fn encode_payload(objects: &[Value], options: &DeliveryOptions) -> Bytes {
    let options = serde_json::to_value(options).unwrap_or(Value::Null);
    let mut out = Vec::with_capacity(objects.len() * 512 + 256);
    // "objects" sorts before "options", so this is the canonical key order.
    out.extend_from_slice(br#"{"objects":"#);
    canonical::write_objects(&mut out, objects);
    out.extend_from_slice(br#","options":"#);
    canonical::write_value(&mut out, &options);
    out.push(b'}');
    Bytes::from(out)
}

/// Decodes a payload: the `{"objects","options"}` object, or a bare array of objects (read with
/// default options).
pub fn decode_payload(bytes: &[u8]) -> Result<Payload, serde_json::Error> {
    if bytes.first() == Some(&b'[') {
        return Ok(Payload {
            objects: canonical::decode_objects(bytes)?,
            options: DeliveryOptions::default(),
        });
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wire {
        objects: Vec<Value>,
        #[serde(default)]
        options: DeliveryOptions,
    }
    let wire: Wire = serde_json::from_slice(bytes)?;
    Ok(Payload {
        objects: wire.objects,
        options: wire.options,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn payload_is_canonical_and_round_trips() {
        let objects = vec![json!({"metadata": {"name": "a"}, "kind": "ConfigMap"})];
        let options = DeliveryOptions {
            prune: false,
            drift: DriftMode::Report,
            ignore: vec![IgnoreRule {
                paths: vec!["/spec/replicas".into()],
                kind: "Deployment".into(),
                name: String::new(),
                namespace: String::new(),
            }],
            ..DeliveryOptions::default()
        };
        let bytes = encode_payload(&objects, &options);
        // The same as canonically encoding the whole object.
        let whole = json!({"objects": objects, "options": serde_json::to_value(&options).unwrap()});
        assert_eq!(bytes.as_ref(), canonical::encode(&whole).as_slice());
        let back = decode_payload(&bytes).unwrap();
        assert_eq!(back.objects, objects);
        assert_eq!(back.options, options);
    }

    #[test]
    fn a_bare_array_has_default_options() {
        let bytes = canonical::encode_objects(&[json!({"kind": "Secret"})]);
        let p = decode_payload(&bytes).unwrap();
        assert_eq!(p.objects.len(), 1);
        assert_eq!(p.options, DeliveryOptions::default());
    }

    #[test]
    fn unknown_payload_fields_are_refused() {
        assert!(decode_payload(br#"{"objects":[],"extra":1}"#).is_err());
        assert!(decode_payload(br#"{"options":{}}"#).is_err());
    }

    #[test]
    fn ignore_rules_match_by_kind_name_and_namespace() {
        let rule = |kind: &str, name: &str| IgnoreRule {
            paths: vec!["/spec/replicas".into()],
            kind: kind.into(),
            name: name.into(),
            namespace: String::new(),
        };
        assert!(rule("", "").matches("Deployment", "apps", "web"));
        assert!(rule("Deployment", "web").matches("Deployment", "apps", "web"));
        assert!(!rule("StatefulSet", "").matches("Deployment", "apps", "web"));
        assert!(!rule("Deployment", "api").matches("Deployment", "apps", "web"));
    }
}
