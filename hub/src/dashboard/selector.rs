//! The label selector syntax of `kubectl get -l`, for the dashboard's cluster filter:
//! `region=eu,tier!=canary`, `env in (prod,staging)`, `env notin (dev)`, `gpu`, `!gpu`.
//! Parsed into the [`LabelSelector`] the rest of the hub matches with.

use crate::api::{LabelSelector, LabelSelectorRequirement};

/// Why a selector string does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A requirement has no key, e.g. `=eu` or `,,`.
    #[error("label selector {selector:?}: requirement {index} has no key")]
    MissingKey {
        /// The whole selector.
        selector: String,
        /// The requirement's position, from 1.
        index: usize,
    },
    /// `in` / `notin` without a parenthesised list of values.
    #[error("label selector {selector:?}: {operator} needs a list of values in parentheses")]
    MissingValues {
        /// The whole selector.
        selector: String,
        /// `in` or `notin`.
        operator: &'static str,
    },
    /// A key or value holds a character labels cannot hold.
    #[error("label selector {selector:?}: {what:?} is not a valid label key or value")]
    InvalidToken {
        /// The whole selector.
        selector: String,
        /// The offending key or value.
        what: String,
    },
}

/// Shorthand for results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn valid(token: &str) -> bool {
    token
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

/// Splits on commas that are not inside parentheses.
fn requirements(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Parses a selector string; an empty or blank string selects everything.
pub fn parse(selector: &str) -> Result<LabelSelector> {
    let mut out = LabelSelector::default();
    if selector.trim().is_empty() {
        return Ok(out);
    }
    let check = |t: &str| -> Result<String> {
        let t = t.trim();
        if valid(t) {
            Ok(t.to_owned())
        } else {
            Err(Error::InvalidToken {
                selector: selector.to_owned(),
                what: t.to_owned(),
            })
        }
    };
    let missing_key = |index| Error::MissingKey {
        selector: selector.to_owned(),
        index,
    };
    for (i, req) in requirements(selector).into_iter().enumerate() {
        let req = req.trim();
        let index = i + 1;
        if req.is_empty() {
            return Err(missing_key(index));
        }
        let requirement =
            |key: String, operator: &str, values: Vec<String>| LabelSelectorRequirement {
                key,
                operator: operator.to_owned(),
                values,
            };
        if let Some((k, v)) = req.split_once("!=") {
            let key = check(k)?;
            if key.is_empty() {
                return Err(missing_key(index));
            }
            out.match_expressions
                .push(requirement(key, "NotIn", vec![check(v)?]));
        } else if let Some((k, v)) = req.split_once('=') {
            let key = check(k)?;
            if key.is_empty() {
                return Err(missing_key(index));
            }
            let v = v.strip_prefix('=').unwrap_or(v);
            out.match_labels.insert(key, check(v)?);
        } else if let Some(k) = req.strip_prefix('!') {
            let key = check(k)?;
            if key.is_empty() {
                return Err(missing_key(index));
            }
            out.match_expressions
                .push(requirement(key, "DoesNotExist", vec![]));
        } else if let Some((key, operator, rest)) = set_based(req) {
            let key = check(key)?;
            let values = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or(Error::MissingValues {
                    selector: selector.to_owned(),
                    operator: if operator == "In" { "in" } else { "notin" },
                })?;
            let values = values
                .split(',')
                .map(check)
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .filter(|v| !v.is_empty())
                .collect::<Vec<_>>();
            if values.is_empty() {
                return Err(Error::MissingValues {
                    selector: selector.to_owned(),
                    operator: if operator == "In" { "in" } else { "notin" },
                });
            }
            out.match_expressions
                .push(requirement(key, operator, values));
        } else {
            let key = check(req)?;
            out.match_expressions
                .push(requirement(key, "Exists", vec![]));
        }
    }
    Ok(out)
}

/// `key in (…)` / `key notin (…)`: the key, the operator and what follows it.
fn set_based(req: &str) -> Option<(&str, &'static str, &str)> {
    let (key, rest) = req.split_once(char::is_whitespace)?;
    let rest = rest.trim_start();
    if let Some(r) = rest.strip_prefix("notin") {
        Some((key, "NotIn", r))
    } else {
        rest.strip_prefix("in").map(|r| (key, "In", r))
    }
}

/// Writes a selector back in the same syntax (for display, e.g. a delivery's target).
pub fn format(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for r in &selector.match_expressions {
        parts.push(match r.operator.as_str() {
            "In" => format!("{} in ({})", r.key, r.values.join(",")),
            "NotIn" if r.values.len() == 1 => format!("{}!={}", r.key, r.values[0]),
            "NotIn" => format!("{} notin ({})", r.key, r.values.join(",")),
            "Exists" => r.key.clone(),
            "DoesNotExist" => format!("!{}", r.key),
            other => format!("{} {other} ({})", r.key, r.values.join(",")),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::controller::util::selector_matches;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_kubectl_syntax_and_matches() {
        let eu = labels(&[("region", "eu"), ("tier", "prod"), ("gpu", "yes")]);
        let us = labels(&[("region", "us"), ("tier", "canary")]);
        let cases = [
            ("", true, true),
            ("region=eu", true, false),
            ("region==us", false, true),
            ("tier!=canary", true, false),
            ("region in (eu, ap)", true, false),
            ("region notin (eu)", false, true),
            ("gpu", true, false),
            ("!gpu", false, true),
            ("region in (eu,us),tier=prod", true, false),
        ];
        for (s, want_eu, want_us) in cases {
            let sel = parse(s).unwrap();
            assert_eq!(selector_matches(&sel, &eu), want_eu, "{s} on eu");
            assert_eq!(selector_matches(&sel, &us), want_us, "{s} on us");
        }
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        assert_eq!(
            parse("=eu").unwrap_err().to_string(),
            "label selector \"=eu\": requirement 1 has no key"
        );
        assert!(matches!(
            parse("region in eu").unwrap_err(),
            Error::MissingValues { .. }
        ));
        assert!(matches!(
            parse("region=<script>").unwrap_err(),
            Error::InvalidToken { .. }
        ));
        assert!(matches!(
            parse("a=b,,c").unwrap_err(),
            Error::MissingKey { index: 2, .. }
        ));
    }

    #[test]
    fn formats_back() {
        let s = "region=eu,tier in (a,b),canary!=x,gpu,!spot";
        let sel = parse(s).unwrap();
        assert_eq!(parse(&format(&sel)).unwrap(), sel);
        assert_eq!(format(&LabelSelector::default()), "");
    }
}
