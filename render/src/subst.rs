//! Post-build variable substitution, compatible with Flux's kustomize-controller.
//!
//! Flux runs a bash-like `envsubst` over each rendered object serialised as YAML and parses the
//! result again. flotilla evaluates the same expressions, but inside each string scalar (values
//! and map keys) of the parsed object, so a variable's value can never add fields, list items or
//! documents: a value with a newline or `: ` stays one string. The differences this makes are
//! listed in `docs/render.md`; in short:
//!
//! - Syntax as Flux: `${var}`, `${var:=default}`, `${var:-default}` (and `:?`, `:+`, `=`, which
//!   Flux also treats as "default when empty"), `${#var}`, `${var:offset[:length]}`,
//!   `${var^}`, `${var^^}`, `${var,}`, `${var,,}`, `${var#glob}`, `${var##glob}`, `${var%glob}`,
//!   `${var%%glob}`, `${var/old/new}`, `${var//old/new}`, `${var/#old/new}`, `${var/%old/new}`.
//!   `$var` without braces is left alone, and `$$` is an escaped `$` (so `$${var}` gives
//!   `${var}`).
//! - An undefined variable without a default becomes the empty string (Flux's default, non-strict
//!   mode). A defined but empty variable also takes the default.
//! - Newlines are removed from variable values, as Flux does.
//! - Typing: when a whole string scalar is one expression (`replicas: ${replicas}`) and the result
//!   reads as a YAML integer or `true`/`false`, it becomes that number or boolean, as it would in
//!   Flux for an unquoted scalar — except in fields Kubernetes defines as strings (labels,
//!   annotations, ConfigMap and Secret data, env values, command and args), which stay strings.
//!   Floats are never produced (`1.20` stays the string `"1.20"`).
//! - Substitution is skipped for an object labelled or annotated `flotilla.dev/substitute:
//!   disabled` or `kustomize.toolkit.fluxcd.io/substitute: disabled`, and entirely when there are
//!   no variables (as Flux skips it when `postBuild` defines none).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// Annotation or label value that turns substitution off for one object.
pub const DISABLED: &str = "disabled";
/// flotilla's opt-out key (annotation or label) with value [`DISABLED`].
pub const OPT_OUT_KEY: &str = "flotilla.dev/substitute";
/// Flux's opt-out key, honoured for users migrating from Flux.
pub const FLUX_OPT_OUT_KEY: &str = "kustomize.toolkit.fluxcd.io/substitute";

/// An error substituting variables into an object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A variable name that Flux would refuse (it must match `^[_a-zA-Z][_a-zA-Z0-9]*$`).
    #[error("{object}: invalid variable name {name:?}: must match ^[_a-zA-Z][_a-zA-Z0-9]*$")]
    InvalidName {
        /// The object being substituted, as `kind/namespace/name`.
        object: String,
        /// The offending name.
        name: String,
    },
    /// A `${...}` expression that does not parse.
    #[error("{object}: field {field}: {reason}{}", variable.as_ref().map(|v| format!(" (variable {v})")).unwrap_or_default())]
    Syntax {
        /// The object being substituted, as `kind/namespace/name`.
        object: String,
        /// The dotted path of the string holding the expression.
        field: String,
        /// The variable the expression names, when the parser got that far.
        variable: Option<String>,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Substitutes `vars` into every string of `object` (see the module documentation for the
/// exact rules). `object` is left untouched when it opts out or `vars` is empty.
pub fn substitute(object: &mut Value, vars: &BTreeMap<String, String>) -> Result<(), Error> {
    // Same order as Flux: an opted-out object, or no variables at all, is not looked at.
    if vars.is_empty() || opted_out(object) {
        return Ok(());
    }
    let id = object_id(object);
    for name in vars.keys() {
        if !valid_name(name) {
            return Err(Error::InvalidName {
                object: id,
                name: name.clone(),
            });
        }
    }
    let vars: BTreeMap<&str, String> = vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.replace('\n', "")))
        .collect();
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut walker = Walker {
        vars: &vars,
        object: id,
        kind,
        path: Vec::new(),
    };
    walker.value(object)
}

/// `kind/namespace/name` (namespace omitted when empty) for messages.
fn object_id(object: &Value) -> String {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
    let kind = s(object.get("kind"));
    let meta = object.get("metadata");
    let ns = s(meta.and_then(|m| m.get("namespace")));
    let name = s(meta.and_then(|m| m.get("name")));
    if ns.is_empty() {
        format!("{kind}/{name}")
    } else {
        format!("{kind}/{ns}/{name}")
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn opted_out(object: &Value) -> bool {
    let Some(meta) = object.get("metadata") else {
        return false;
    };
    ["labels", "annotations"].iter().any(|field| {
        meta.get(field).is_some_and(|m| {
            [OPT_OUT_KEY, FLUX_OPT_OUT_KEY]
                .iter()
                .any(|k| m.get(k).and_then(Value::as_str) == Some(DISABLED))
        })
    })
}

struct Walker<'a> {
    vars: &'a BTreeMap<&'a str, String>,
    object: String,
    kind: String,
    path: Vec<String>,
}

impl Walker<'_> {
    fn value(&mut self, v: &mut Value) -> Result<(), Error> {
        match v {
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('$')) {
                    let old = std::mem::take(map);
                    for (k, mut child) in old {
                        let key = if k.contains('$') {
                            self.path.push(k.clone());
                            let r = self.expand(&k);
                            self.path.pop();
                            r?.0
                        } else {
                            k
                        };
                        self.path.push(key.clone());
                        self.value(&mut child)?;
                        self.path.pop();
                        map.insert(key, child);
                    }
                } else {
                    for (k, child) in map.iter_mut() {
                        self.path.push(k.clone());
                        self.value(child)?;
                        self.path.pop();
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter_mut().enumerate() {
                    self.path.push(i.to_string());
                    self.value(child)?;
                    self.path.pop();
                }
            }
            Value::String(s) if s.contains('$') => {
                let (out, whole) = self.expand(s)?;
                *v = if whole && !self.string_only() {
                    retype(out)
                } else {
                    Value::String(out)
                };
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether Kubernetes defines the current field as a string whatever it looks like.
    fn string_only(&self) -> bool {
        let p: Vec<&str> = self.path.iter().map(String::as_str).collect();
        let n = p.len();
        let is_index = |s: &str| s.parse::<usize>().is_ok();
        (n >= 3 && p[n - 3] == "metadata" && matches!(p[n - 2], "labels" | "annotations"))
            || (n == 2
                && matches!(self.kind.as_str(), "ConfigMap" | "Secret")
                && matches!(p[0], "data" | "binaryData" | "stringData"))
            || (n >= 3 && p[n - 3] == "env" && is_index(p[n - 2]) && p[n - 1] == "value")
            || (n >= 2 && matches!(p[n - 2], "command" | "args") && is_index(p[n - 1]))
    }

    fn field(&self) -> String {
        self.path.join(".")
    }

    fn syntax(&self, variable: Option<&str>, reason: &'static str) -> Error {
        Error::Syntax {
            object: self.object.clone(),
            field: self.field(),
            variable: variable.map(str::to_string),
            reason,
        }
    }

    /// Expands a string. Also returns whether the string was exactly one `${...}` expression.
    fn expand(&self, s: &str) -> Result<(String, bool), Error> {
        let chars: Vec<char> = s.chars().collect();
        let mut p = Parser {
            chars: &chars,
            pos: 0,
        };
        let mut out = String::new();
        let mut expressions = 0;
        let mut literal = false;
        while p.pos < chars.len() {
            if p.starts_with("${") {
                p.pos += 2;
                let e = self.expression(&mut p)?;
                out.push_str(&e);
                expressions += 1;
            } else if p.starts_with("$$") {
                out.push('$');
                p.pos += 2;
                literal = true;
            } else {
                out.push(chars[p.pos]);
                p.pos += 1;
                literal = true;
            }
        }
        Ok((out, expressions == 1 && !literal))
    }

    /// Parses and evaluates one expression; `p` is just after `${`.
    fn expression(&self, p: &mut Parser<'_>) -> Result<String, Error> {
        if p.peek() == Some('#') {
            p.pos += 1;
            let name = p.ident();
            if name.is_empty() || !p.eat('}') {
                return Err(self.syntax(None, "bad substitution"));
            }
            return Ok(self.lookup(&name).len().to_string());
        }
        let name = p.ident();
        if name.is_empty() {
            return Err(self.syntax(None, "unable to parse variable name"));
        }
        let value = self.lookup(&name);
        let var = Some(name.as_str());
        match p.peek() {
            Some('}') => {
                p.pos += 1;
                Ok(value)
            }
            Some(':') if matches!(p.peek_at(1), Some('=' | '-' | '?' | '+')) => {
                p.pos += 2;
                let default = self.default_args(p, var)?;
                Ok(if value.is_empty() { default } else { value })
            }
            Some('=') => {
                p.pos += 1;
                let default = self.default_args(p, var)?;
                Ok(if value.is_empty() { default } else { value })
            }
            Some(':') => {
                p.pos += 1;
                let offset = p.until(&[':', '}']);
                let length = if p.eat(':') {
                    Some(p.until(&['}']))
                } else {
                    None
                };
                if !p.eat('}') {
                    return Err(self.syntax(var, "bad substitution"));
                }
                Ok(substring(&value, &offset, length.as_deref()))
            }
            Some(c @ (',' | '^')) => {
                let mut op = String::from(c);
                p.pos += 1;
                if let Some(c2 @ (',' | '^')) = p.peek() {
                    op.push(c2);
                    p.pos += 1;
                }
                if !p.eat('}') {
                    return Err(self.syntax(var, "bad substitution"));
                }
                Ok(match op.as_str() {
                    "^^" => value.to_uppercase(),
                    ",," => value.to_lowercase(),
                    "^" => map_first(&value, char::to_uppercase),
                    "," => map_first(&value, char::to_lowercase),
                    _ => value,
                })
            }
            Some(c @ ('#' | '%')) => {
                p.pos += 1;
                let longest = p.eat(c);
                let pattern = p.until(&['}']);
                if !p.eat('}') {
                    return Err(self.syntax(var, "bad substitution"));
                }
                Ok(trim(&value, &pattern, c == '#', longest))
            }
            Some('/') => {
                p.pos += 1;
                let mode = match p.peek() {
                    Some(c @ ('/' | '#' | '%')) => {
                        p.pos += 1;
                        c
                    }
                    _ => ' ',
                };
                let old = p.until_unescaped('/');
                if !p.eat('/') {
                    return Err(self.syntax(var, "bad substitution"));
                }
                let new = p.until_unescaped('}');
                if !p.eat('}') {
                    return Err(self.syntax(var, "bad substitution"));
                }
                Ok(replace(&value, &old, &new, mode))
            }
            _ => Err(self.syntax(var, "missing closing brace")),
        }
    }

    /// The default of `${var:=default}`: text and nested expressions up to the closing brace.
    fn default_args(&self, p: &mut Parser<'_>, var: Option<&str>) -> Result<String, Error> {
        let mut out = String::new();
        loop {
            match p.peek() {
                Some('}') => {
                    p.pos += 1;
                    return Ok(out);
                }
                None => {
                    return Err(self.syntax(var, "unable to parse substitution within function"));
                }
                _ if p.starts_with("${") => {
                    p.pos += 2;
                    out.push_str(&self.expression(p)?);
                }
                Some(c) => {
                    out.push(c);
                    p.pos += 1;
                }
            }
        }
    }

    fn lookup(&self, name: &str) -> String {
        self.vars.get(name).cloned().unwrap_or_default()
    }
}

/// A string scalar that was one expression, typed as YAML would read it unquoted (integers and
/// `true`/`false` only).
fn retype(s: String) -> Value {
    if s == "true" || s == "false" {
        return Value::Bool(s == "true");
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(&s);
    // Leading zeros (`0123`) stay strings: YAML 1.1 would read octal, YAML 1.2 decimal, and such
    // values (zip codes, ids) are rarely meant as numbers.
    let leading_zero = digits.len() > 1 && digits.starts_with('0');
    if !digits.is_empty() && !leading_zero && digits.chars().all(|c| c.is_ascii_digit()) {
        let unsigned = s.strip_prefix('+').unwrap_or(&s);
        if let Ok(i) = unsigned.parse::<i64>() {
            return Value::from(i);
        }
        if let Ok(u) = unsigned.parse::<u64>() {
            return Value::from(u);
        }
    }
    Value::String(s)
}

struct Parser<'a> {
    chars: &'a [char],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.pos + n).copied()
    }

    fn starts_with(&self, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(i, c)| self.chars.get(self.pos + i) == Some(&c))
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// A run of letters, digits and `_`.
    fn ident(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    /// Text up to (not including) one of `stops`.
    fn until(&mut self, stops: &[char]) -> String {
        let start = self.pos;
        while self.peek().is_some_and(|c| !stops.contains(&c)) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    /// Text up to `stop`, where `\/` and `\\` are escapes.
    fn until_unescaped(&mut self, stop: char) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if c == '\\' && matches!(self.peek_at(1), Some('/' | '\\')) {
                out.push(self.chars[self.pos + 1]);
                self.pos += 2;
                continue;
            }
            if c == stop {
                break;
            }
            out.push(c);
            self.pos += 1;
        }
        out
    }
}

fn map_first<I: Iterator<Item = char>>(s: &str, f: impl Fn(char) -> I) -> String {
    let mut chars = s.chars();
    match chars.next() {
        None => String::new(),
        Some(c) => f(c).chain(chars).collect(),
    }
}

/// `${var:offset[:length]}` as Flux's envsubst computes it (bash-like, on bytes).
fn substring(s: &str, offset: &str, length: Option<&str>) -> String {
    let bytes = s.as_bytes();
    let len = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
    let Ok(mut pos) = offset.parse::<i64>() else {
        return s.to_string();
    };
    if pos < 0 {
        pos = (len + pos).max(0);
    }
    let slice = |a: i64, b: i64| -> String {
        let (a, b) = (a.clamp(0, len) as usize, b.clamp(0, len) as usize);
        if a >= b {
            String::new()
        } else {
            String::from_utf8_lossy(&bytes[a..b]).into_owned()
        }
    };
    match length {
        None => slice(pos, len),
        Some(l) => {
            let Ok(l) = l.parse::<i64>() else {
                return s.to_string();
            };
            if l < 0 {
                let end = len + l;
                if end < pos {
                    return String::new();
                }
                slice(pos, end)
            } else {
                slice(pos, pos.saturating_add(l))
            }
        }
    }
}

/// `${var#glob}`, `${var##glob}` (prefix) and `${var%glob}`, `${var%%glob}` (suffix), as
/// Flux's envsubst does them: Go `path.Match` globs (`*` and `?` do not match `/`), and a suffix
/// is matched by reversing both the value and the pattern.
fn trim(s: &str, pattern: &str, prefix: bool, longest: bool) -> String {
    let (text, pat): (Vec<char>, Vec<char>) = if prefix {
        (s.chars().collect(), pattern.chars().collect())
    } else {
        (s.chars().rev().collect(), pattern.chars().rev().collect())
    };
    let n = text.len();
    let mut cut = None;
    // Candidate prefixes from the longest down to one character.
    for len in (1..=n).rev() {
        if glob(&pat, &text[..len]) {
            cut = Some(len);
            if longest {
                break;
            }
        }
    }
    let Some(cut) = cut else {
        return s.to_string();
    };
    if prefix {
        text[cut..].iter().collect()
    } else {
        text[cut..].iter().rev().collect()
    }
}

/// Go's `path.Match`: `*` (any run without `/`), `?` (one character but `/`), `[...]` classes
/// with `^` negation and ranges, `\` escapes.
fn glob(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => {
            for i in 0..=t.len() {
                if i > 0 && t[i - 1] == '/' {
                    break;
                }
                if glob(&p[1..], &t[i..]) {
                    return true;
                }
            }
            false
        }
        Some('?') => t.first().is_some_and(|c| *c != '/') && glob(&p[1..], &t[1..]),
        Some('[') => {
            let Some(c) = t.first() else { return false };
            let mut i = 1;
            let negate = p.get(1) == Some(&'^');
            if negate {
                i += 1;
            }
            let mut matched = false;
            let mut first = true;
            while i < p.len() && (first || p[i] != ']') {
                first = false;
                if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|e| *e != ']') {
                    if p[i] <= *c && *c <= p[i + 2] {
                        matched = true;
                    }
                    i += 3;
                } else {
                    if p[i] == *c {
                        matched = true;
                    }
                    i += 1;
                }
            }
            if i >= p.len() {
                // Unterminated class: Go reports a bad pattern, which Flux treats as no match.
                return false;
            }
            matched != negate && glob(&p[i + 1..], &t[1..])
        }
        Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && glob(&p[2..], &t[1..]),
        Some(c) => t.first() == Some(c) && glob(&p[1..], &t[1..]),
    }
}

/// `${var/old/new}` (first), `${var//old/new}` (all), `${var/#old/new}` (prefix),
/// `${var/%old/new}` (suffix); literal matching, as Flux does.
fn replace(s: &str, old: &str, new: &str, mode: char) -> String {
    match mode {
        '/' => s.replace(old, new),
        '#' => match s.strip_prefix(old) {
            Some(rest) => {
                let mut out = new.to_string();
                out.push_str(rest);
                out
            }
            None => s.to_string(),
        },
        '%' => match s.strip_suffix(old) {
            Some(rest) => {
                let mut out = rest.to_string();
                let _ = write!(out, "{new}");
                out
            }
            None => s.to_string(),
        },
        _ => s.replacen(old, new, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}, "data": data})
    }

    fn sub(v: Value, pairs: &[(&str, &str)]) -> Value {
        let mut v = v;
        substitute(&mut v, &vars(pairs)).expect("substitutes");
        v
    }

    #[test]
    fn plain_default_and_undefined_variables() {
        let out = sub(
            cm(json!({
                "a": "${x}",
                "b": "pre-${x}-post",
                "c": "${missing}",
                "d": "${missing:=dflt}",
                "e": "${missing:-other}",
                "f": "${x:=unused}",
                "g": "${empty:=filled}",
                "h": "${missing:=${x}-nested}",
                "i": "$x stays",
            })),
            &[("x", "X"), ("empty", "")],
        );
        assert_eq!(
            out["data"],
            json!({"a": "X", "b": "pre-X-post", "c": "", "d": "dflt", "e": "other",
                   "f": "X", "g": "filled", "h": "X-nested", "i": "$x stays"})
        );
    }

    #[test]
    fn dollar_dollar_escapes() {
        let out = sub(
            cm(json!({"a": "$${x}", "b": "cost: $$5", "c": "$$$${x}", "d": "$$${x}", "e": "a$b"})),
            &[("x", "X")],
        );
        assert_eq!(
            out["data"],
            json!({"a": "${x}", "b": "cost: $5", "c": "$${x}", "d": "$X", "e": "a$b"})
        );
    }

    #[test]
    fn string_functions() {
        let out = sub(
            cm(json!({
                "len": "${#v}",
                "upper": "${v^^}", "upper1": "${v^}", "lower": "${u,,}", "lower1": "${u,}",
                "sub": "${v:1}", "sub2": "${v:1:3}", "dflt": "${v:-3}", "subneglen": "${v:1:-1}",
                "pre": "${path#*/}", "prelong": "${path##*/}",
                "suf": "${path%/*}", "suflong": "${path%%/*}",
                "rep": "${path/a/X}", "repall": "${path//a/X}",
                "reppre": "${path/#aa/Y}", "repsuf": "${path/%cc/Z}",
            })),
            &[("v", "hello"), ("u", "HELLO"), ("path", "aa/bb/cc")],
        );
        assert_eq!(
            out["data"],
            json!({
                "len": "5",
                "upper": "HELLO", "upper1": "Hello", "lower": "hello", "lower1": "hELLO",
                "sub": "ello", "sub2": "ell", "dflt": "hello", "subneglen": "ell",
                "pre": "bb/cc", "prelong": "bb/cc", "suf": "aa/bb", "suflong": "aa/bb",
                "rep": "Xa/bb/cc", "repall": "XX/bb/cc", "reppre": "Y/bb/cc", "repsuf": "aa/bb/Z",
            })
        );
    }

    #[test]
    fn whole_expressions_are_typed_except_in_string_fields() {
        let deploy = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"n": "${n}"}, "annotations": {"b": "${yes}"}},
            "spec": {
                "replicas": "${n}",
                "paused": "${yes}",
                "version": "${ver}",
                "zip": "${zip}",
                "neg": "${neg}",
                "mixed": "n=${n}",
                "template": {"spec": {"containers": [{
                    "name": "c",
                    "args": ["${n}"],
                    "env": [{"name": "N", "value": "${n}"}],
                    "ports": [{"containerPort": "${port}"}],
                }]}},
            },
        });
        let out = sub(
            deploy,
            &[
                ("n", "3"),
                ("yes", "true"),
                ("ver", "1.20"),
                ("port", "8080"),
                ("zip", "01234"),
                ("neg", "-5"),
            ],
        );
        assert_eq!(out["metadata"]["labels"]["n"], json!("3"));
        assert_eq!(out["metadata"]["annotations"]["b"], json!("true"));
        assert_eq!(out["spec"]["replicas"], json!(3));
        assert_eq!(out["spec"]["paused"], json!(true));
        assert_eq!(out["spec"]["version"], json!("1.20"));
        assert_eq!(out["spec"]["zip"], json!("01234"));
        assert_eq!(out["spec"]["neg"], json!(-5));
        assert_eq!(out["spec"]["mixed"], json!("n=3"));
        let c = &out["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["args"][0], json!("3"));
        assert_eq!(c["env"][0]["value"], json!("3"));
        assert_eq!(c["ports"][0]["containerPort"], json!(8080));
        // ConfigMap data stays a string.
        let out = sub(cm(json!({"n": "${n}"})), &[("n", "3")]);
        assert_eq!(out["data"]["n"], json!("3"));
    }

    #[test]
    fn values_cannot_inject_structure() {
        let out = sub(
            cm(json!({"a": "${evil}", "b": "${multi}"})),
            &[("evil", "x\"\nb: injected\n- item"), ("multi", "one\ntwo")],
        );
        assert_eq!(out["data"]["a"], json!("x\"b: injected- item"));
        assert_eq!(out["data"]["b"], json!("onetwo"));
        assert_eq!(out["data"].as_object().map(|m| m.len()), Some(2));
    }

    #[test]
    fn keys_are_substituted() {
        let out = sub(cm(json!({"${k}.conf": "v"})), &[("k", "app")]);
        assert_eq!(out["data"], json!({"app.conf": "v"}));
    }

    #[test]
    fn opt_out_by_annotation_or_label_and_no_vars_is_a_no_op() {
        for (field, key) in [
            ("annotations", OPT_OUT_KEY),
            ("labels", FLUX_OPT_OUT_KEY),
            ("annotations", FLUX_OPT_OUT_KEY),
        ] {
            let mut obj = cm(json!({"a": "${x}"}));
            obj["metadata"][field] = json!({key: "disabled"});
            let before = obj.clone();
            assert_eq!(sub(obj, &[("x", "X")]), before);
        }
        let obj = cm(json!({"a": "${x:=d}"}));
        assert_eq!(sub(obj.clone(), &[]), obj);
        // As in Flux, an opted-out object is not even checked for bad variable names.
        let mut obj = cm(json!({"a": "${x}"}));
        obj["metadata"]["annotations"] = json!({OPT_OUT_KEY: "disabled"});
        let before = obj.clone();
        assert_eq!(sub(obj, &[("bad-name", "v")]), before);
    }

    #[test]
    fn errors_name_object_field_and_variable() {
        let mut obj = cm(json!({"script": "echo ${x"}));
        let err = substitute(&mut obj, &vars(&[("x", "X")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ConfigMap/n/c: field data.script: missing closing brace (variable x)"
        );
        let mut obj = cm(json!({"a": "${}"}));
        let err = substitute(&mut obj, &vars(&[("x", "X")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ConfigMap/n/c: field data.a: unable to parse variable name"
        );
        let mut obj = cm(json!({"a": "${x:=oops"}));
        let err = substitute(&mut obj, &vars(&[("x", "")])).unwrap_err();
        assert!(err.to_string().contains("(variable x)"), "{err}");
        let mut obj = cm(json!({}));
        let err = substitute(&mut obj, &vars(&[("bad-name", "v")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ConfigMap/n/c: invalid variable name \"bad-name\": must match ^[_a-zA-Z][_a-zA-Z0-9]*$"
        );
        assert!(matches!(
            substitute(&mut cm(json!({})), &vars(&[("1x", "v")])),
            Err(Error::InvalidName { .. })
        ));
    }
}
