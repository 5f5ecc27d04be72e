//! Small pure helpers of the controller: label selectors, durations, path templates, conditions.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::api::{Condition, LabelSelector};

/// Whether `labels` satisfy `selector` (Kubernetes semantics; an empty selector matches all).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && selector.match_expressions.iter().all(|r| {
            let value = labels.get(&r.key);
            match r.operator.as_str() {
                "In" => value.is_some_and(|v| r.values.contains(v)),
                "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// Checks a selector's operators, so a typo is reported instead of matching nothing.
pub fn validate_selector(selector: &LabelSelector) -> Result<(), String> {
    for r in &selector.match_expressions {
        match r.operator.as_str() {
            "In" | "NotIn" if r.values.is_empty() => {
                return Err(format!(
                    "selector on {:?}: {} needs values",
                    r.key, r.operator
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(format!(
                    "selector on {:?}: unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)",
                    r.key
                ));
            }
        }
    }
    Ok(())
}

/// Parses a Go-style duration (`30s`, `1m30s`, `2h`, `500ms`), as Flux users write them.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: use e.g. 30s, 5m, 1h30m");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(value * unit);
    }
    Ok(total)
}

/// A duration field with a default; a bad value is an error naming the field.
pub fn duration_or(
    field: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(v) => parse_duration(v).map_err(|e| format!("spec.{field}: {e}")),
    }
}

/// Expands `${cluster.name}` and `${cluster.labels.<key>}` in a delivery path.
pub fn expand_path(
    path: &str,
    cluster: &str,
    labels: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("path {path:?}: unclosed ${{"))?;
        let name = &after[..end];
        if name == "cluster.name" {
            out.push_str(cluster);
        } else if let Some(key) = name.strip_prefix("cluster.labels.") {
            let value = labels
                .get(key)
                .ok_or_else(|| format!("path {path:?}: cluster {cluster} has no label {key:?}"))?;
            out.push_str(value);
        } else {
            return Err(format!(
                "path {path:?}: unknown variable ${{{name}}} (use cluster.name or cluster.labels.<key>)"
            ));
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The post-build substitution variables for a cluster: `cluster_name`, each label as
/// `cluster_labels_<key>` (characters other than letters, digits and `_` become `_`), the
/// delivery's variables, then the cluster's own variables (which win).
pub fn cluster_variables(
    cluster: &str,
    labels: &BTreeMap<String, String>,
    delivery_vars: &BTreeMap<String, String>,
    cluster_vars: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    vars.insert("cluster_name".to_owned(), cluster.to_owned());
    for (k, v) in labels {
        let key: String = k
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        vars.insert(format!("cluster_labels_{key}"), v.clone());
    }
    vars.extend(delivery_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    vars.extend(cluster_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    vars
}

/// RFC 3339 UTC, seconds precision.
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parses what [`rfc3339`] writes (`YYYY-MM-DDTHH:MM:SSZ`).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    if s.len() != 20 || !s.ends_with('Z') {
        return None;
    }
    let month = time::Month::try_from(n(5..7)? as u8).ok()?;
    let date = time::Date::from_calendar_date(n(0..4)? as i32, month, n(8..10)? as u8).ok()?;
    let clock = time::Time::from_hms(n(11..13)? as u8, n(14..16)? as u8, n(17..19)? as u8).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, clock)
            .assume_utc()
            .into(),
    )
}

/// A condition; `previous` keeps its transition time when the status did not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| rfc3339(SystemTime::now()));
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message: message.into(),
        last_transition_time,
        observed_generation: generation,
    }
}

/// The first 12 hexadecimal digits of the commit in `<ref>@sha1:<commit>`; `<chart>@<version>`
/// of a chart revision `<chart>@<version>@sha256:<digest>`.
pub fn short_revision(revision: &str) -> String {
    if let Some((chart, _)) = revision.split_once("@sha256:") {
        return chart.to_owned();
    }
    let commit = revision.rsplit(':').next().unwrap_or(revision);
    commit.chars().take(12).collect()
}

/// Resolves `maxUnavailable` (a count or a percentage, at least 1) against `total`.
pub fn max_unavailable(value: Option<&str>, total: usize) -> Result<usize, String> {
    let Some(v) = value else {
        return Ok(total.max(1));
    };
    let n = if let Some(p) = v.strip_suffix('%') {
        let p: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("spec.rollout.maxUnavailable: {v:?} is not a percentage"))?;
        (total as f64 * p / 100.0).floor() as usize
    } else {
        v.trim()
            .parse()
            .map_err(|_| format!("spec.rollout.maxUnavailable: {v:?} is not a number"))?
    };
    Ok(n.max(1))
}

/// An error and its causes, `outer: inner: ...`, for statuses and logs that show one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let l = labels(&[("env", "prod"), ("region", "eu")]);
        assert!(selector_matches(&LabelSelector::default(), &l));
        let mut s = LabelSelector::default();
        s.match_labels.insert("env".into(), "prod".into());
        assert!(selector_matches(&s, &l));
        s.match_expressions.push(LabelSelectorRequirement {
            key: "region".into(),
            operator: "NotIn".into(),
            values: vec!["eu".into()],
        });
        assert!(!selector_matches(&s, &l));
        let bad = LabelSelector {
            match_expressions: vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "in".into(),
                values: vec!["x".into()],
            }],
            ..Default::default()
        };
        assert!(
            validate_selector(&bad)
                .unwrap_err()
                .contains("unknown operator \"in\"")
        );
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
        assert!(
            duration_or("interval", Some("1x"), Duration::ZERO)
                .unwrap_err()
                .starts_with("spec.interval: invalid duration \"1x\"")
        );
    }

    #[test]
    fn paths_expand_cluster_name_and_labels() {
        let l = labels(&[("env", "staging")]);
        assert_eq!(
            expand_path("./clusters/${cluster.name}", "eu-1", &l).unwrap(),
            "./clusters/eu-1"
        );
        assert_eq!(
            expand_path("apps/${cluster.labels.env}", "eu-1", &l).unwrap(),
            "apps/staging"
        );
        assert!(
            expand_path("apps/${cluster.labels.tier}", "eu-1", &l)
                .unwrap_err()
                .contains("has no label \"tier\"")
        );
        assert!(expand_path("apps/${nope}", "eu-1", &l).is_err());
    }

    #[test]
    fn cluster_variables_layer_in_order() {
        let v = cluster_variables(
            "eu-1",
            &labels(&[("topology.kubernetes.io/region", "eu")]),
            &labels(&[("replicas", "1"), ("domain", "a")]),
            &labels(&[("replicas", "3")]),
        );
        assert_eq!(v["cluster_name"], "eu-1");
        assert_eq!(v["cluster_labels_topology_kubernetes_io_region"], "eu");
        assert_eq!(v["replicas"], "3");
        assert_eq!(v["domain"], "a");
    }

    #[test]
    fn max_unavailable_counts_and_percentages() {
        assert_eq!(max_unavailable(None, 10).unwrap(), 10);
        assert_eq!(max_unavailable(Some("25%"), 10).unwrap(), 2);
        assert_eq!(max_unavailable(Some("1%"), 10).unwrap(), 1);
        assert_eq!(max_unavailable(Some("3"), 10).unwrap(), 3);
        assert!(max_unavailable(Some("lots"), 10).is_err());
    }

    #[test]
    fn conditions_keep_their_transition_time_while_unchanged() {
        let first = condition(&[], "Ready", true, "Succeeded", "ok", Some(1));
        let mut old = first.clone();
        old.last_transition_time = "2020-01-01T00:00:00Z".into();
        let again = condition(
            &[old.clone()],
            "Ready",
            true,
            "Succeeded",
            "still ok",
            Some(2),
        );
        assert_eq!(again.last_transition_time, "2020-01-01T00:00:00Z");
        let flipped = condition(&[old], "Ready", false, "BuildFailed", "x", Some(2));
        assert_ne!(flipped.last_transition_time, "2020-01-01T00:00:00Z");
    }
}
