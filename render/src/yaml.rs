//! YAML in and out, the way `kubectl kustomize` sees it.
//!
//! Parsing resolves plain scalars like the Go YAML library Kustomize reads with (so `010` is 8,
//! `yes` a string, `1.0` the integer 1 once it has been through JSON), keeps the line of every
//! document for error messages, and turns a stream into JSON values.
//!
//! Emitting reproduces the YAML Kustomize prints: keys sorted, block style, sequences not
//! indented under their key, strings quoted only when a reader would take them for something
//! else, long plain strings folded at 80 columns, multi-line strings as literal blocks.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One parsed YAML document and the line it starts on (1-based).
#[derive(Debug, Clone)]
pub struct Doc {
    /// The document as JSON.
    pub value: Value,
    /// The line of its first node.
    pub line: usize,
}

/// A YAML syntax or structure error, with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// The line the error is on (1-based).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses every document of a YAML (or JSON) stream. Empty documents (only comments, or `null`)
/// are kept as `Value::Null`; callers decide whether to skip them.
pub fn parse_stream(text: &str) -> Result<Vec<Doc>, YamlError> {
    let mut p = Loader {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
    };
    let mut docs = Vec::new();
    loop {
        let (ev, mark) = p.next()?;
        match ev {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart => {
                // Anchors do not cross documents.
                p.anchors.clear();
                let (ev, mark) = p.next()?;
                if matches!(ev, Event::DocumentEnd) {
                    docs.push(Doc {
                        value: Value::Null,
                        line: mark.line(),
                    });
                    continue;
                }
                let line = mark.line();
                let value = p.node(ev, mark)?;
                docs.push(Doc { value, line });
            }
            other => {
                return Err(YamlError {
                    line: mark.line(),
                    message: format!("unexpected YAML event {other:?}"),
                });
            }
        }
    }
    Ok(docs)
}

struct Loader<'a> {
    parser: Parser<std::str::Chars<'a>>,
    anchors: HashMap<usize, Value>,
}

impl Loader<'_> {
    fn next(&mut self) -> Result<(Event, Marker), YamlError> {
        self.parser.next_token().map_err(|e| YamlError {
            line: e.marker().line(),
            message: e.info().to_string(),
        })
    }

    fn node(&mut self, ev: Event, mark: Marker) -> Result<Value, YamlError> {
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let v = resolve_scalar(text, style, tag.as_ref()).map_err(|message| YamlError {
                    line: mark.line(),
                    message,
                })?;
                if anchor > 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                Ok(v)
            }
            Event::Alias(id) => self.anchors.get(&id).cloned().ok_or(YamlError {
                line: mark.line(),
                message: "alias to an unknown anchor".into(),
            }),
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (ev, m) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, m)?);
                }
                let v = Value::Array(items);
                if anchor > 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                Ok(v)
            }
            Event::MappingStart(anchor, _) => {
                let mut map = Map::new();
                let mut merges: Vec<Value> = Vec::new();
                loop {
                    let (ev, m) = self.next()?;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    let is_merge =
                        matches!(&ev, Event::Scalar(t, TScalarStyle::Plain, _, None) if t == "<<");
                    let key = self.node(ev, m)?;
                    let (vev, vm) = self.next()?;
                    let value = self.node(vev, vm)?;
                    if is_merge {
                        merges.push(value);
                        continue;
                    }
                    let key = match key {
                        Value::String(s) => s,
                        Value::Null => "null".to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) => n.to_string(),
                        _ => {
                            return Err(YamlError {
                                line: m.line(),
                                message: "a mapping key must be a scalar".into(),
                            });
                        }
                    };
                    if map.contains_key(&key) {
                        return Err(YamlError {
                            line: m.line(),
                            message: format!("mapping key {key:?} already defined"),
                        });
                    }
                    map.insert(key, value);
                }
                // `<<: *anchor` merge keys: explicit keys win, then earlier merged maps.
                for merged in merges {
                    let list = match merged {
                        Value::Array(items) => items,
                        other => vec![other],
                    };
                    for item in list {
                        if let Value::Object(m) = item {
                            for (k, v) in m {
                                map.entry(k).or_insert(v);
                            }
                        } else {
                            return Err(YamlError {
                                line: mark.line(),
                                message: "a merge key (<<) must refer to a mapping".into(),
                            });
                        }
                    }
                }
                let v = Value::Object(map);
                if anchor > 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                Ok(v)
            }
            other => Err(YamlError {
                line: mark.line(),
                message: format!("unexpected YAML event {other:?}"),
            }),
        }
    }
}

/// Resolves a scalar the way Go's yaml.v3 decodes it into an `interface{}`, then as
/// `encoding/json` would carry it (integral floats become integers).
fn resolve_scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    if let Some(tag) = tag {
        match tag.suffix.as_str() {
            "str" => return Ok(Value::String(text)),
            "null" => return Ok(Value::Null),
            "bool" | "int" | "float" => {
                let v = resolve_plain(&text);
                if matches!(v, Value::String(_)) {
                    return Err(format!("cannot decode {text:?} as !!{}", tag.suffix));
                }
                return check_number(v);
            }
            _ => {}
        }
    }
    if style != TScalarStyle::Plain {
        return Ok(Value::String(text));
    }
    check_number(resolve_plain(&text))
}

fn check_number(v: Value) -> Result<Value, String> {
    Ok(v)
}

/// Reads `text` as a plain YAML scalar would be read (number, bool, null or string).
pub(crate) fn parse_scalar(text: &str) -> Value {
    resolve_plain(text)
}

/// Resolution of an untagged plain scalar (YAML 1.2 core schema plus yaml.v3's extras: 1.1-style
/// octals like `0777`, `_` separators in numbers).
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let first = text.as_bytes()[0];
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        return Value::String(text.to_string());
    }
    let plain: String = text.chars().filter(|&c| c != '_').collect();
    if let Some(n) = parse_go_int(&plain) {
        return n;
    }
    if is_yaml_float(&plain)
        && let Ok(f) = plain.parse::<f64>()
    {
        return float_value(f);
    }
    let lower = plain.as_str();
    for (prefix, radix, neg) in [
        ("0b", 2, false),
        ("-0b", 2, true),
        ("0o", 8, false),
        ("-0o", 8, true),
    ] {
        if let Some(digits) = lower.strip_prefix(prefix)
            && let Ok(v) = i64::from_str_radix(digits, radix)
        {
            return Value::Number(Number::from(if neg { -v } else { v }));
        }
    }
    match text {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => {
            // JSON cannot carry these; kustomize fails on them too. Keep the text so the
            // object still renders rather than losing the value silently.
            Value::String(text.to_string())
        }
        _ => Value::String(text.to_string()),
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)` then `ParseUint(s, 0, 64)`.
fn parse_go_int(s: &str) -> Option<Value> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if body.is_empty() {
        return None;
    }
    let (radix, digits) = if let Some(d) = body.strip_prefix("0x").or(body.strip_prefix("0X")) {
        (16, d)
    } else if let Some(d) = body.strip_prefix("0o").or(body.strip_prefix("0O")) {
        (8, d)
    } else if let Some(d) = body.strip_prefix("0b").or(body.strip_prefix("0B")) {
        (2, d)
    } else if body.len() > 1 && body.starts_with('0') {
        (8, &body[1..])
    } else {
        (10, body)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let mag = u128::from_str_radix(digits, radix).ok()?;
    if neg {
        if mag <= (i64::MAX as u128) + 1 {
            return Some(Value::Number(Number::from((-(mag as i128)) as i64)));
        }
        None
    } else if mag <= i64::MAX as u128 {
        Some(Value::Number(Number::from(mag as i64)))
    } else if mag <= u64::MAX as u128 {
        Some(Value::Number(Number::from(mag as u64)))
    } else {
        None
    }
}

/// `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`
fn is_yaml_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            digits(&mut i);
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// A float as it comes out of `encoding/json` and back: integral values that fit an integer
/// become integers.
pub(crate) fn float_value(f: f64) -> Value {
    if f.fract() == 0.0 && f.is_finite() {
        // 2^63 and 2^64 are exact in f64.
        let two63 = 9_223_372_036_854_775_808_f64;
        if (-two63..two63).contains(&f) {
            return Value::Number(Number::from(f as i64));
        }
        if (0.0..2.0 * two63).contains(&f) {
            return Value::Number(Number::from(f as u64));
        }
    }
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

// ---------------------------------------------------------------------------------------------
// Emitting

/// Serialises objects as a `---`-separated YAML stream, byte for byte as `kubectl kustomize`
/// prints it.
pub fn to_yaml(objects: &[Value]) -> String {
    let mut out = String::new();
    for (i, obj) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        emit_document(&mut out, obj);
    }
    out
}

fn emit_document(out: &mut String, v: &Value) {
    match v {
        Value::Object(m) if !m.is_empty() => emit_map(out, m, 0),
        Value::Array(a) if !a.is_empty() => emit_seq(out, a, 0),
        other => {
            emit_inline(out, other, 0);
            out.push('\n');
        }
    }
}

fn sorted(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = m.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// Writes a mapping whose first key starts at the current position (already indented).
fn emit_map(out: &mut String, m: &Map<String, Value>, indent: usize) {
    for (i, (k, v)) in sorted(m).into_iter().enumerate() {
        if i > 0 {
            push_indent(out, indent);
        }
        let col = indent;
        emit_string(out, k, col, true, indent);
        out.push(':');
        match v {
            Value::Object(child) if !child.is_empty() => {
                out.push('\n');
                push_indent(out, indent + 2);
                emit_map(out, child, indent + 2);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                push_indent(out, indent);
                emit_seq(out, items, indent);
            }
            other => {
                out.push(' ');
                let col = current_column(out);
                emit_scalar(out, other, col, indent + 2);
                out.push('\n');
            }
        }
    }
}

/// Writes a sequence whose first `- ` starts at the current position (already indented).
fn emit_seq(out: &mut String, items: &[Value], indent: usize) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            push_indent(out, indent);
        }
        out.push_str("- ");
        match item {
            Value::Object(child) if !child.is_empty() => emit_map(out, child, indent + 2),
            Value::Array(inner) if !inner.is_empty() => emit_seq(out, inner, indent + 2),
            other => {
                let col = current_column(out);
                emit_scalar(out, other, col, indent + 2);
                out.push('\n');
            }
        }
    }
}

fn emit_inline(out: &mut String, v: &Value, indent: usize) {
    let col = current_column(out);
    emit_scalar(out, v, col, indent);
}

fn push_indent(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

fn current_column(out: &str) -> usize {
    let line_start = out.rfind('\n').map_or(0, |i| i + 1);
    out[line_start..].chars().count()
}

fn emit_scalar(out: &mut String, v: &Value, col: usize, indent: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&format_number(n)),
        Value::String(s) => emit_string(out, s, col, false, indent),
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
    }
}

/// Numbers as Go's YAML encoder prints them after a round trip through JSON.
pub(crate) fn format_number(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    go_format_g(f)
}

/// `strconv.FormatFloat(f, 'g', -1, 64)`.
fn go_format_g(f: f64) -> String {
    if f == 0.0 {
        return "0".into();
    }
    // Shortest round-trip digits and decimal exponent from Rust's `{:e}`.
    let e = format!("{:e}", f.abs());
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    // Go: shortest 'g' uses %e when exp < -4 || exp >= 6.
    let eprec = 6;
    if exp < -4 || exp >= eprec {
        let mut s = String::new();
        s.push_str(sign);
        s.push_str(&digits[..1]);
        if digits.len() > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        s.push('e');
        s.push(if exp < 0 { '-' } else { '+' });
        let _ = write!(s, "{:02}", exp.abs());
        s
    } else if exp < 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            format!("{sign}{digits}{}", "0".repeat(int_len - digits.len()))
        } else {
            format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
        }
    }
}

/// Whether Go's YAML decoder would read `s`, written plain, as something other than a string.
fn resolves_to_non_string(s: &str) -> bool {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return true,
        "y" | "Y" | "yes" | "Yes" | "YES" | "n" | "N" | "no" | "No" | "NO" | "true" | "True"
        | "TRUE" | "false" | "False" | "FALSE" | "on" | "On" | "ON" | "off" | "Off" | "OFF" => {
            return true;
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => return true,
        _ => {}
    }
    let first = s.as_bytes()[0];
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        return false;
    }
    let plain: String = s.chars().filter(|&c| c != '_').collect();
    if parse_go_int(&plain).is_some() || is_yaml_float(&plain) {
        return true;
    }
    if plain.starts_with("0b") || plain.starts_with("-0b") {
        return true;
    }
    is_base60_float(s) || is_timestamp(s)
}

/// `^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$`
fn is_base60_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    if i >= b.len() || !b[i].is_ascii_digit() {
        return false;
    }
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
        i += 1;
    }
    let mut groups = 0;
    while i < b.len() && b[i] == b':' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() && i - start < 2 {
            i += 1;
        }
        let n = i - start;
        if n == 0 || (n == 2 && b[start] > b'5') {
            return false;
        }
        groups += 1;
    }
    if groups == 0 {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
            i += 1;
        }
    }
    i == b.len()
}

/// Dates and date-times Go's YAML library recognises (`2006-1-2`, with optional time).
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let num = |i: &mut usize, min: usize, max: usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() && *i - start < max {
            *i += 1;
        }
        *i - start >= min
    };
    if !num(&mut i, 4, 4) || b.get(i) != Some(&b'-') {
        return false;
    }
    i += 1;
    if !num(&mut i, 1, 2) || b.get(i) != Some(&b'-') {
        return false;
    }
    i += 1;
    if !num(&mut i, 1, 2) {
        return false;
    }
    if i == b.len() {
        return true;
    }
    if !matches!(b[i], b'T' | b't' | b' ') {
        return false;
    }
    i += 1;
    if !num(&mut i, 1, 2) || b.get(i) != Some(&b':') {
        return false;
    }
    i += 1;
    if !num(&mut i, 1, 2) || b.get(i) != Some(&b':') {
        return false;
    }
    i += 1;
    if !num(&mut i, 1, 2) {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    let rest = &s[i..];
    rest.is_empty()
        || rest == "Z"
        || (rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':')
}

#[derive(Default)]
struct Analysis {
    multiline: bool,
    flow_plain: bool,
    block_plain: bool,
    single_quoted: bool,
    block: bool,
}

fn is_printable(c: char) -> bool {
    let u = c as u32;
    u == 0x0A
        || (0x20..=0x7E).contains(&u)
        || u == 0x85
        || (0xA0..=0xD7FF).contains(&u)
        || ((0xE000..=0xFFFD).contains(&u) && u != 0xFEFF)
        || (0x10000..=0x10FFFF).contains(&u)
}

fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn is_blankz(c: Option<char>) -> bool {
    match c {
        None => true,
        Some(c) => c == ' ' || c == '\t' || is_break(c) || c == '\0',
    }
}

/// libyaml's scalar analysis: which styles can represent `s` faithfully.
fn analyze(s: &str) -> Analysis {
    if s.is_empty() {
        return Analysis {
            multiline: false,
            flow_plain: false,
            block_plain: true,
            single_quoted: true,
            block: false,
        };
    }
    let chars: Vec<char> = s.chars().collect();
    let mut block_ind = false;
    let mut flow_ind = false;
    if s.starts_with("---") || s.starts_with("...") {
        block_ind = true;
        flow_ind = true;
    }
    let mut preceded_ws = true;
    let mut followed_ws = is_blankz(chars.get(1).copied());
    let (mut line_breaks, mut special) = (false, false);
    let (mut leading_space, mut leading_break, mut trailing_space, mut trailing_break) =
        (false, false, false, false);
    let (mut break_space, mut space_break, mut prev_space, mut prev_break) =
        (false, false, false, false);
    let n = chars.len();
    for (i, &c) in chars.iter().enumerate() {
        if i == 0 {
            if matches!(
                c,
                '#' | ','
                    | '['
                    | ']'
                    | '{'
                    | '}'
                    | '&'
                    | '*'
                    | '!'
                    | '|'
                    | '>'
                    | '\''
                    | '"'
                    | '%'
                    | '@'
                    | '`'
            ) {
                flow_ind = true;
                block_ind = true;
            }
            if c == '?' || c == ':' {
                flow_ind = true;
                if followed_ws {
                    block_ind = true;
                }
            }
            if c == '-' && followed_ws {
                flow_ind = true;
                block_ind = true;
            }
        } else {
            if matches!(c, ',' | '?' | '[' | ']' | '{' | '}') {
                flow_ind = true;
            }
            if c == ':' {
                flow_ind = true;
                if followed_ws {
                    block_ind = true;
                }
            }
            if c == '#' && preceded_ws {
                flow_ind = true;
                block_ind = true;
            }
        }
        if !is_printable(c) {
            special = true;
        }
        if is_break(c) {
            line_breaks = true;
        }
        if c == ' ' {
            if i == 0 {
                leading_space = true;
            }
            if i == n - 1 {
                trailing_space = true;
            }
            if prev_break {
                break_space = true;
            }
            prev_space = true;
            prev_break = false;
        } else if is_break(c) {
            if i == 0 {
                leading_break = true;
            }
            if i == n - 1 {
                trailing_break = true;
            }
            if prev_space {
                space_break = true;
            }
            prev_break = true;
            prev_space = false;
        } else {
            prev_space = false;
            prev_break = false;
        }
        preceded_ws = is_blankz(Some(c));
        followed_ws = is_blankz(chars.get(i + 2).copied());
    }
    let mut a = Analysis {
        multiline: line_breaks,
        flow_plain: true,
        block_plain: true,
        single_quoted: true,
        block: true,
    };
    if leading_space || leading_break || trailing_space || trailing_break {
        a.flow_plain = false;
        a.block_plain = false;
    }
    if trailing_space {
        a.block = false;
    }
    if break_space {
        a.flow_plain = false;
        a.block_plain = false;
        a.single_quoted = false;
    }
    if space_break || special {
        a.flow_plain = false;
        a.block_plain = false;
        a.single_quoted = false;
        a.block = false;
    }
    if line_breaks {
        a.flow_plain = false;
        a.block_plain = false;
    }
    if flow_ind {
        a.flow_plain = false;
    }
    if block_ind {
        a.block_plain = false;
    }
    a
}

#[derive(PartialEq, Clone, Copy)]
enum Style {
    Plain,
    Single,
    Double,
    Literal,
}

/// Writes a string scalar at column `col`; `indent` is the indentation of continuation lines.
fn emit_string(out: &mut String, s: &str, col: usize, is_key: bool, indent: usize) {
    // Fast path: a word of safe characters is always written plain.
    let b = s.as_bytes();
    if !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'-'))
        && b[0].is_ascii_alphabetic()
        && !resolves_to_non_string(s)
    {
        out.push_str(s);
        return;
    }
    let mut style = if s.contains('\n') {
        Style::Literal
    } else {
        Style::Plain
    };
    if resolves_to_non_string(s) {
        style = Style::Double;
    }
    let a = analyze(s);
    if is_key && a.multiline {
        style = Style::Double;
    }
    if style == Style::Plain && (!a.block_plain || (s.is_empty() && is_key)) {
        style = Style::Single;
    }
    if style == Style::Single && !a.single_quoted {
        style = Style::Double;
    }
    if style == Style::Literal && (!a.block || is_key) {
        style = Style::Double;
    }
    let allow_breaks = !is_key;
    match style {
        Style::Plain => write_plain(out, s, col, indent, allow_breaks),
        Style::Single => write_single(out, s, col, indent, allow_breaks),
        Style::Double => write_double(out, s, col, indent, allow_breaks),
        Style::Literal => write_literal(out, s, indent),
    }
}

const BEST_WIDTH: usize = 80;

fn write_plain(out: &mut String, s: &str, mut col: usize, indent: usize, allow_breaks: bool) {
    let chars: Vec<char> = s.chars().collect();
    let mut spaces = false;
    for (i, &c) in chars.iter().enumerate() {
        if c == ' ' {
            if allow_breaks && !spaces && col > BEST_WIDTH && chars.get(i + 1) != Some(&' ') {
                out.push('\n');
                push_indent(out, indent);
                col = indent;
            } else {
                out.push(c);
                col += 1;
            }
            spaces = true;
        } else {
            out.push(c);
            col += 1;
            spaces = false;
        }
    }
}

fn write_single(out: &mut String, s: &str, mut col: usize, indent: usize, allow_breaks: bool) {
    let chars: Vec<char> = s.chars().collect();
    out.push('\'');
    col += 1;
    let mut spaces = false;
    let n = chars.len();
    for (i, &c) in chars.iter().enumerate() {
        if c == ' ' {
            if allow_breaks
                && !spaces
                && col > BEST_WIDTH
                && i != 0
                && i != n - 1
                && chars.get(i + 1) != Some(&' ')
            {
                out.push('\n');
                push_indent(out, indent);
                col = indent;
            } else {
                out.push(c);
                col += 1;
            }
            spaces = true;
        } else {
            if c == '\'' {
                out.push('\'');
                col += 1;
            }
            out.push(c);
            col += 1;
            spaces = false;
        }
    }
    out.push('\'');
}

fn write_double(out: &mut String, s: &str, mut col: usize, indent: usize, allow_breaks: bool) {
    let chars: Vec<char> = s.chars().collect();
    out.push('"');
    col += 1;
    let mut spaces = false;
    let n = chars.len();
    for (i, &c) in chars.iter().enumerate() {
        if !is_printable(c) || is_break(c) || c == '"' || c == '\\' || c == '\u{FEFF}' {
            let esc = match c {
                '\0' => "\\0".to_string(),
                '\x07' => "\\a".to_string(),
                '\x08' => "\\b".to_string(),
                '\t' => "\\t".to_string(),
                '\n' => "\\n".to_string(),
                '\x0B' => "\\v".to_string(),
                '\x0C' => "\\f".to_string(),
                '\r' => "\\r".to_string(),
                '\x1B' => "\\e".to_string(),
                '"' => "\\\"".to_string(),
                '\\' => "\\\\".to_string(),
                '\u{85}' => "\\N".to_string(),
                '\u{A0}' => "\\_".to_string(),
                '\u{2028}' => "\\L".to_string(),
                '\u{2029}' => "\\P".to_string(),
                c if (c as u32) <= 0xFF => format!("\\x{:02X}", c as u32),
                c if (c as u32) <= 0xFFFF => format!("\\u{:04X}", c as u32),
                c => format!("\\U{:08X}", c as u32),
            };
            col += esc.len();
            out.push_str(&esc);
            spaces = false;
        } else if c == ' ' {
            if allow_breaks && !spaces && col > BEST_WIDTH && i != 0 && i != n - 1 {
                out.push('\n');
                push_indent(out, indent);
                col = indent;
                if chars.get(i + 1) == Some(&' ') {
                    out.push('\\');
                    col += 1;
                }
            } else {
                out.push(c);
                col += 1;
            }
            spaces = true;
        } else {
            out.push(c);
            col += 1;
            spaces = false;
        }
    }
    out.push('"');
}

fn write_literal(out: &mut String, s: &str, indent: usize) {
    out.push('|');
    let first = s.chars().next();
    if first == Some(' ') || first.is_some_and(is_break) {
        out.push('2');
    }
    let mut rev = s.chars().rev();
    let last = rev.next();
    if !last.is_some_and(is_break) {
        out.push('-');
    } else if s.chars().count() == 1 || rev.next().is_some_and(is_break) {
        out.push('+');
    }
    // Content lines; a trailing break closes the block and is not followed by indentation.
    let body = s.strip_suffix('\n').unwrap_or(s);
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            push_indent(out, indent);
            out.push_str(line);
        }
    }
    // The final newline is written by the caller.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_resolve_like_go_yaml() {
        let docs = parse_stream(
            "a: 010\nb: yes\nc: 1.0\nd: 0x10\ne: ~\nf: '1'\ng: 1.5\nh: 100000000000000000000\n",
        )
        .unwrap();
        let v = &docs[0].value;
        assert_eq!(v["a"], 8);
        assert_eq!(v["b"], "yes");
        assert_eq!(v["c"], 1);
        assert_eq!(v["d"], 16);
        assert!(v["e"].is_null());
        assert_eq!(v["f"], "1");
        assert_eq!(v["g"], 1.5);
        assert_eq!(to_yaml(&[v["h"].clone()]), "1e+20\n");
    }

    #[test]
    fn documents_keep_their_lines_and_errors_name_a_line() {
        let docs = parse_stream("a: 1\n---\n# only a comment\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[2].line, 5);
        let err = parse_stream("a: 1\nb: [\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
        let err = parse_stream("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn emits_strings_with_kustomize_quoting() {
        let v: Value = serde_json::json!({
            "n": "123", "y": "yes", "s": "plain", "e": "", "c": "a: b", "m": "a\nb\n",
            "k": "a\nb", "t": "a\tb", "d": "- x",
        });
        assert_eq!(
            to_yaml(&[v]),
            "c: 'a: b'\nd: '- x'\ne: \"\"\nk: |-\n  a\n  b\nm: |\n  a\n  b\n\"n\": \"123\"\ns: plain\nt: \"a\\tb\"\n\"y\": \"yes\"\n"
        );
    }

    #[test]
    fn go_float_format() {
        assert_eq!(go_format_g(1.5), "1.5");
        assert_eq!(go_format_g(1e20), "1e+20");
        assert_eq!(go_format_g(1e-7), "1e-07");
        assert_eq!(go_format_g(0.000001), "1e-06");
        assert_eq!(go_format_g(0.0001), "0.0001");
        assert_eq!(go_format_g(123456.5), "123456.5");
    }
}
