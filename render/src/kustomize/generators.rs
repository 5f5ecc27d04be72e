//! `configMapGenerator`, `secretGenerator`, `generatorOptions` and the content-hash name
//! suffix, computed exactly as Kustomize does (SHA-256 of a Go-JSON encoding of kind, name,
//! type and data; the first ten hex digits with `0 1 3 a e` swapped for `g h k m t`).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::resource::{Behavior, Resource};
use super::types::{GeneratorArgs, GeneratorOptions, Kustomization};
use crate::source::Source;
use crate::{Error, RelPath};

/// Runs the generators of one kustomization and absorbs their output into `ra`.
pub(crate) fn run(
    src: &Source<'_>,
    dir: &RelPath,
    file: &RelPath,
    k: &Kustomization,
    ra: &mut Vec<Resource>,
) -> Result<(), Error> {
    for (args, secret) in k
        .config_map_generator
        .iter()
        .map(|a| (a, false))
        .chain(k.secret_generator.iter().map(|a| (a, true)))
    {
        let r = generate(src, dir, file, args, secret, k.generator_options.as_ref())?;
        absorb(ra, r, file)?;
    }
    Ok(())
}

fn invalid(file: &RelPath, what: &str, name: &str, message: String) -> Error {
    Error::Invalid {
        file: file.clone(),
        message: format!("{what} {name:?}: {message}"),
    }
}

/// Merges generator-local options over the kustomization's `generatorOptions`.
fn merge_options(
    local: Option<&GeneratorOptions>,
    global: Option<&GeneratorOptions>,
) -> GeneratorOptions {
    let mut o = local.cloned().unwrap_or_default();
    if let Some(g) = global {
        for (k, v) in &g.labels {
            o.labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for (k, v) in &g.annotations {
            o.annotations.entry(k.clone()).or_insert_with(|| v.clone());
        }
        o.disable_name_suffix_hash |= g.disable_name_suffix_hash;
        o.immutable |= g.immutable;
    }
    o
}

fn is_env_var_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

fn is_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && k != "."
        && k != ".."
}

fn remove_quotes(s: &str) -> &str {
    let b = s.as_bytes();
    if b.len() >= 2 && b[0] == b[b.len() - 1] && (b[0] == b'"' || b[0] == b'\'') {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

/// Builds one generated ConfigMap or Secret.
fn generate(
    src: &Source<'_>,
    dir: &RelPath,
    file: &RelPath,
    args: &GeneratorArgs,
    secret: bool,
    global: Option<&GeneratorOptions>,
) -> Result<Resource, Error> {
    let what = if secret {
        "secretGenerator"
    } else {
        "configMapGenerator"
    };
    if args.name.is_empty() {
        return Err(Error::Invalid {
            file: file.clone(),
            message: format!("{what} entry has no name"),
        });
    }
    let name = args.name.as_str();
    // Pairs in Kustomize's order: env files, literals, files. Values are bytes (files may be
    // binary).
    let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
    let envs: Vec<&String> = args
        .envs
        .iter()
        .chain(std::iter::once(&args.env).filter(|e| !e.is_empty()))
        .collect();
    for env in envs {
        let path = dir.join(env).map_err(|_| Error::OutsideRoot {
            file: file.clone(),
            what: "env file",
            entry: env.clone(),
        })?;
        if src.tree.kind(&path)?.is_none() {
            return Err(Error::Missing {
                file: file.clone(),
                what: "env file",
                entry: env.clone(),
            });
        }
        let text = src.read_text(&path)?;
        for (i, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let line = if i == 0 {
                line.trim_start_matches('\u{feff}')
            } else {
                line
            };
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            if !is_env_var_name(key) {
                return Err(Error::Invalid {
                    file: path.clone(),
                    message: format!(
                        "line {}: {key:?} is not a valid environment variable name",
                        i + 1
                    ),
                });
            }
            pairs.push((key.to_string(), value.as_bytes().to_vec()));
        }
    }
    for lit in &args.literals {
        match lit.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                pairs.push((k.to_string(), remove_quotes(v).as_bytes().to_vec()));
            }
            _ => {
                return Err(invalid(
                    file,
                    what,
                    name,
                    format!("invalid literal {lit:?}, expected key=value"),
                ));
            }
        }
    }
    for f in &args.files {
        let (key, rel) = match f.matches('=').count() {
            0 => (f.rsplit('/').next().unwrap_or(f).to_string(), f.as_str()),
            1 => {
                let (k, p) = f.split_once('=').expect("one separator");
                if k.is_empty() || p.is_empty() {
                    return Err(invalid(
                        file,
                        what,
                        name,
                        format!("invalid file source {f:?}"),
                    ));
                }
                (k.to_string(), p)
            }
            _ => {
                return Err(invalid(
                    file,
                    what,
                    name,
                    format!("file source {f:?}: key name or file path contains '='"),
                ));
            }
        };
        let path = dir.join(rel).map_err(|_| Error::OutsideRoot {
            file: file.clone(),
            what: "file",
            entry: rel.to_string(),
        })?;
        if src.tree.kind(&path)?.is_none() {
            return Err(Error::Missing {
                file: file.clone(),
                what: "file",
                entry: rel.to_string(),
            });
        }
        pairs.push((key, src.read_bytes(&path)?));
    }
    let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (k, v) in pairs {
        if !is_config_key(&k) {
            return Err(invalid(
                file,
                what,
                name,
                format!("{k:?} is not a valid key (letters, digits, '-', '_' or '.')"),
            ));
        }
        if data.insert(k.clone(), v).is_some() {
            return Err(invalid(file, what, name, format!("repeats the key {k:?}")));
        }
    }

    let opts = merge_options(args.options.as_ref(), global);
    let mut meta = Map::new();
    meta.insert("name".into(), Value::String(name.to_string()));
    if !args.namespace.is_empty() {
        meta.insert("namespace".into(), Value::String(args.namespace.clone()));
    }
    if !opts.labels.is_empty() {
        meta.insert("labels".into(), string_map(&opts.labels));
    }
    if !opts.annotations.is_empty() {
        meta.insert("annotations".into(), string_map(&opts.annotations));
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String("v1".into()));
    obj.insert(
        "kind".into(),
        Value::String(if secret { "Secret" } else { "ConfigMap" }.into()),
    );
    obj.insert("metadata".into(), Value::Object(meta));
    if secret {
        let t = if args.type_.is_empty() {
            "Opaque"
        } else {
            &args.type_
        };
        obj.insert("type".into(), Value::String(t.to_string()));
        let mut d = Map::new();
        for (k, v) in &data {
            d.insert(k.clone(), Value::String(encode_base64(v)));
        }
        obj.insert("data".into(), Value::Object(d));
    } else {
        let mut d = Map::new();
        let mut bin = Map::new();
        for (k, v) in &data {
            match std::str::from_utf8(v) {
                Ok(s) => {
                    d.insert(k.clone(), Value::String(s.to_string()));
                }
                Err(_) => {
                    bin.insert(k.clone(), Value::String(encode_base64(v)));
                }
            }
        }
        if !d.is_empty() {
            obj.insert("data".into(), Value::Object(d));
        }
        if !bin.is_empty() {
            obj.insert("binaryData".into(), Value::Object(bin));
        }
    }
    if opts.immutable {
        obj.insert("immutable".into(), Value::Bool(true));
    }
    let mut r = Resource::new(Value::Object(obj), file.clone());
    r.behavior = match args.behavior.as_str() {
        "" | "create" => Behavior::Create,
        "merge" => Behavior::Merge,
        "replace" => Behavior::Replace,
        other => {
            return Err(invalid(
                file,
                what,
                name,
                format!("behavior {other:?} is not one of create, merge, replace"),
            ));
        }
    };
    r.needs_hash = !opts.disable_name_suffix_hash;
    Ok(r)
}

fn string_map(m: &BTreeMap<String, String>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// Base64 as Kustomize writes Secret data: lines of 70 characters, each ended by a newline
/// once the value needs more than one.
fn encode_base64(v: &[u8]) -> String {
    let enc = base64::engine::general_purpose::STANDARD.encode(v);
    if enc.len() / 70 == 0 {
        return enc;
    }
    let mut out = String::with_capacity(enc.len() + enc.len() / 70 + 1);
    for chunk in enc.as_bytes().chunks(70) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out
}

/// Adds a generated object: new, or merged into / replacing the one it names.
fn absorb(ra: &mut Vec<Resource>, mut r: Resource, file: &RelPath) -> Result<(), Error> {
    let id = r.cur_id();
    let matches: Vec<usize> = ra
        .iter()
        .enumerate()
        .filter(|(_, o)| o.any_id(|oid| oid.equals(&id)))
        .map(|(i, _)| i)
        .collect();
    match (matches.as_slice(), r.behavior) {
        ([], Behavior::Create) => {
            ra.push(r);
            Ok(())
        }
        ([], b) => Err(Error::Invalid {
            file: file.clone(),
            message: format!(
                "{} has behavior {} but there is no {} {:?} to {}",
                r.describe(),
                if b == Behavior::Merge {
                    "merge"
                } else {
                    "replace"
                },
                r.kind(),
                r.name(),
                if b == Behavior::Merge {
                    "merge into"
                } else {
                    "replace"
                }
            ),
        }),
        ([i], Behavior::Create) => Err(Error::Conflict {
            file: file.clone(),
            message: format!(
                "{} already exists (from {}); use behavior merge or replace",
                r.describe(),
                ra[*i].source
            ),
        }),
        ([i], b) => {
            let old = &ra[*i];
            let merged_labels = merge_maps(&old.string_map("labels"), &r.string_map("labels"));
            let merged_ann =
                merge_maps(&old.string_map("annotations"), &r.string_map("annotations"));
            let (name, ns) = (old.name().to_string(), old.namespace().to_string());
            if b == Behavior::Merge {
                for field in ["data", "binaryData"] {
                    let old_map = old.obj.get(field).and_then(Value::as_object).cloned();
                    let new_map = r.obj.get(field).and_then(Value::as_object).cloned();
                    if old_map.is_none() && new_map.is_none() {
                        continue;
                    }
                    let mut m = old_map.unwrap_or_default();
                    for (k, v) in new_map.unwrap_or_default() {
                        m.insert(k, v);
                    }
                    if let Some(obj) = r.obj.as_object_mut() {
                        obj.insert(field.into(), Value::Object(m));
                    }
                }
            }
            let meta = r.metadata_mut();
            set_or_remove(meta, "labels", merged_labels);
            set_or_remove(meta, "annotations", merged_ann);
            r.set_name(&name);
            r.set_namespace(&ns);
            // Build annotations come from the old object only: a hash suffix needs both.
            r.needs_hash = r.needs_hash && old.needs_hash;
            r.prev = old.prev.clone();
            r.prefixes = old.prefixes.clone();
            r.suffixes = old.suffixes.clone();
            r.source = old.source.clone();
            ra[*i] = r;
            Ok(())
        }
        (_, _) => Err(Error::Conflict {
            file: file.clone(),
            message: format!("several objects could accept {}", r.describe()),
        }),
    }
}

fn merge_maps(old: &[(String, String)], new: &[(String, String)]) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in old.iter().chain(new) {
        m.insert(k.clone(), Value::String(v.clone()));
    }
    m
}

fn set_or_remove(meta: &mut Map<String, Value>, key: &str, m: Map<String, Value>) {
    if m.is_empty() {
        meta.remove(key);
    } else {
        meta.insert(key.into(), Value::Object(m));
    }
}

/// Appends `-<hash>` to the name of every generated object that wants it.
pub(crate) fn add_hash_suffixes(ra: &mut [Resource]) -> Result<(), Error> {
    for r in ra.iter_mut() {
        if !r.needs_hash {
            continue;
        }
        let h = content_hash(&r.obj);
        r.store_previous_id();
        let name = format!("{}-{h}", r.name());
        r.set_name(&name);
    }
    Ok(())
}

/// Kustomize's hash of a ConfigMap or Secret.
pub(crate) fn content_hash(obj: &Value) -> String {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let field = |k: &str| -> Value {
        match obj.get(k) {
            None => Value::String(String::new()),
            Some(v) => v.clone(),
        }
    };
    // Kustomize looks the name up as a single field literally called `metadata/name`, which
    // never exists: the name is always hashed as "". Matching its output means doing the same.
    let name = Value::String(String::new());
    let mut m = Map::new();
    m.insert("kind".into(), Value::String(kind.to_string()));
    m.insert("name".into(), name);
    m.insert("data".into(), field("data"));
    if kind == "Secret" {
        m.insert("type".into(), field("type"));
        if let Some(Value::Object(sd)) = obj.get("stringData") {
            m.insert("stringData".into(), Value::Object(sd.clone()));
        }
    } else if let Some(Value::Object(bd)) = obj.get("binaryData") {
        m.insert("binaryData".into(), Value::Object(bd.clone()));
    }
    let mut json = String::new();
    go_json(&Value::Object(m), &mut json);
    let hex = format!("{:x}", Sha256::digest(json.as_bytes()));
    hex[..10]
        .chars()
        .map(|c| match c {
            '0' => 'g',
            '1' => 'h',
            '3' => 'k',
            'a' => 'm',
            'e' => 't',
            c => c,
        })
        .collect()
}

/// Go's `encoding/json` output: sorted keys, no spaces, `<`, `>`, `&`, U+2028 and U+2029
/// escaped.
fn go_json(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&crate::yaml::format_number(n)),
        Value::String(s) => go_json_string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_json(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_json_string(k, out);
                out.push(':');
                go_json(&m[k], out);
            }
            out.push('}');
        }
    }
}

fn go_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
