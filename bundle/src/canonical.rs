//! Canonical JSON: the one byte sequence a rendered object set is signed as.
//!
//! Object keys are sorted by their UTF-8 bytes, there is no insignificant whitespace, strings use
//! serde_json's escaping and numbers its shortest round-trip form. Two renders of the same objects
//! therefore produce the same bytes and the same digest, whatever map order the renderer used.

use std::io::Write as _;

use serde_json::Value;

/// The sha256 digest of a bundle's canonical payload.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        // ring's assembly is about twice as fast as a portable sha256 on CPUs without the SHA
        // extensions, and every bundle is digested by the hub and again by its agent.
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        Self(d.as_ref().try_into().expect("sha256 is 32 bytes"))
    }

    /// Reads a digest from its 32 raw bytes; `None` when the length is wrong.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Encodes a list of objects as a canonical JSON array.
pub fn encode_objects(objects: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(objects.len() * 512);
    write_objects(&mut out, objects);
    out
}

/// Appends a list of objects to `out` as a canonical JSON array.
pub fn write_objects(out: &mut Vec<u8>, objects: &[Value]) {
    out.push(b'[');
    for (i, object) in objects.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_value(out, object);
    }
    out.push(b']');
}

/// Encodes one value canonically.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_value(&mut out, value);
    out
}

/// Appends one value to `out`, encoded canonically.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        // Keys already in byte order (always, unless serde_json's `preserve_order` feature is
        // on in the build) are written as they come, without collecting and sorting them.
        Value::Object(map) if map.keys().is_sorted_by(|a, b| a.as_bytes() <= b.as_bytes()) => {
            write_entries(out, map.iter());
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            write_entries(out, entries.into_iter());
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, v);
            }
            out.push(b']');
        }
        scalar => write_scalar(out, scalar),
    }
}

fn write_entries<'a>(out: &mut Vec<u8>, entries: impl Iterator<Item = (&'a String, &'a Value)>) {
    out.push(b'{');
    for (i, (key, v)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // A key is written as the JSON string it is, without a copy into a `Value`.
        let _ = serde_json::to_writer(&mut *out, key.as_str());
        out.push(b':');
        write_value(out, v);
    }
    out.push(b'}');
}

fn write_scalar(out: &mut Vec<u8>, value: &Value) {
    // Writing a scalar to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
    let _ = out.flush();
}

/// Decodes a canonical payload back into its objects.
pub fn decode_objects(bytes: &[u8]) -> Result<Vec<Value>, serde_json::Error> {
    serde_json::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn digest_is_sha256() {
        assert_eq!(
            format!("{:?}", super::Digest::of(b"abc")),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    use serde_json::json;

    use super::*;

    #[test]
    fn keys_are_sorted_and_whitespace_dropped() {
        let a = json!({"kind": "ConfigMap", "apiVersion": "v1", "data": {"b": "2", "a": 1.5}});
        assert_eq!(
            String::from_utf8(encode(&a)).unwrap(),
            r#"{"apiVersion":"v1","data":{"a":1.5,"b":"2"},"kind":"ConfigMap"}"#
        );
    }

    #[test]
    fn same_objects_same_digest_whatever_the_key_order() {
        let a: Value = serde_json::from_str(r#"{"z":1,"a":[{"y":"q","b":null}]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":[{"b":null,"y":"q"}],"z":1}"#).unwrap();
        assert_eq!(
            Digest::of(&encode_objects(std::slice::from_ref(&a))),
            Digest::of(&encode_objects(&[b]))
        );
        let c = json!({"z": 2, "a": [{"b": null, "y": "q"}]});
        assert_ne!(
            Digest::of(&encode_objects(&[a])),
            Digest::of(&encode_objects(&[c]))
        );
    }

    #[test]
    fn keys_are_escaped_like_strings_and_ordered_by_bytes() {
        // Keys that need escaping, and an order where bytes and chars would disagree if keys
        // were compared as anything but UTF-8 bytes ("Z" < "a" < "é").
        let v: Value =
            serde_json::from_str(r#"{"é":1,"a\"b":{"y":[],"x":{}},"Z\n":true}"#).unwrap();
        assert_eq!(
            String::from_utf8(encode(&v)).unwrap(),
            r#"{"Z\n":true,"a\"b":{"x":{},"y":[]},"é":1}"#
        );
        let payload =
            crate::encode_payload(std::slice::from_ref(&v), &crate::DeliveryOptions::default());
        let expected = format!(
            r#"{{"objects":[{}],"options":{}}}"#,
            String::from_utf8(encode(&v)).unwrap(),
            String::from_utf8(encode(
                &serde_json::to_value(crate::DeliveryOptions::default()).unwrap()
            ))
            .unwrap()
        );
        assert_eq!(String::from_utf8(payload.to_vec()).unwrap(), expected);
    }

    #[test]
    fn round_trips() {
        let objects = vec![json!({"a": "é\n\"x\""}), json!([1, 2, {"k": true}])];
        let bytes = encode_objects(&objects);
        assert_eq!(decode_objects(&bytes).unwrap(), objects);
    }
}
