//! The output order: Kustomize's legacy kind order by default (Namespaces and CRDs first,
//! webhooks last), or as read with `sortOptions: {order: fifo}`.

use std::cmp::Ordering;
use std::collections::HashMap;

use super::resource::{Gvk, Resource};
use super::types::SortOptions;

const ORDER_FIRST: &[&str] = &[
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
];

const ORDER_LAST: &[&str] = &[
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

fn gvk_key(g: &Gvk) -> String {
    let or = |s: &str, d: &str| {
        if s.is_empty() {
            d.to_string()
        } else {
            s.to_string()
        }
    };
    format!(
        "{}_{}_{}",
        or(&g.group, "~G"),
        or(&g.version, "~V"),
        or(&g.kind, "~K")
    )
}

/// `Kind.version.group|namespace|name` with Kustomize's placeholders.
fn id_key(r: &Resource, g: &Gvk) -> String {
    let or = |s: &str, d: &str| {
        if s.is_empty() {
            d.to_string()
        } else {
            s.to_string()
        }
    };
    format!(
        "{}.{}.{}|{}|{}",
        or(&g.kind, "[noKind]"),
        or(&g.version, "[noVer]"),
        or(&g.group, "[noGrp]"),
        or(r.namespace(), "~X"),
        or(r.name(), "~N")
    )
}

/// Sorts the build's output.
pub(crate) fn sort(ra: &mut Vec<Resource>, opts: Option<&SortOptions>) -> Result<(), String> {
    let (first, last): (Vec<String>, Vec<String>) = match opts {
        None => (
            ORDER_FIRST.iter().map(|s| s.to_string()).collect(),
            ORDER_LAST.iter().map(|s| s.to_string()).collect(),
        ),
        Some(o) => {
            match o.order.as_str() {
                "fifo" => {
                    if o.legacy_sort_options.is_some() {
                        return Err("sortOptions.legacySortOptions is set but the order is fifo, not legacy".into());
                    }
                    return Ok(());
                }
                "legacy" => match &o.legacy_sort_options {
                    Some(l) => (l.order_first.clone(), l.order_last.clone()),
                    None => (
                        ORDER_FIRST.iter().map(|s| s.to_string()).collect(),
                        ORDER_LAST.iter().map(|s| s.to_string()).collect(),
                    ),
                },
                other => {
                    return Err(format!(
                        "sortOptions.order must be legacy or fifo, not {other:?}"
                    ));
                }
            }
        }
    };
    let mut rank: HashMap<&str, i64> = HashMap::new();
    for (i, k) in first.iter().enumerate() {
        rank.insert(k, i as i64 - first.len() as i64);
    }
    for (i, k) in last.iter().enumerate() {
        rank.insert(k, 1 + i as i64);
    }
    let mut keyed: Vec<(i64, Gvk, String, String, Resource)> = ra
        .drain(..)
        .map(|r| {
            let g = r.gvk();
            let rk = rank.get(g.kind.as_str()).copied().unwrap_or(0);
            let gk = gvk_key(&g);
            let ik = id_key(&r, &g);
            (rk, g, gk, ik, r)
        })
        .collect();
    keyed.sort_by(|a, b| {
        if a.1 != b.1 {
            if a.0 != b.0 {
                return a.0.cmp(&b.0);
            }
            if a.1.kind == "Namespace"
                && b.1.kind == "Namespace"
                && (a.1.group.is_empty() || b.1.group.is_empty())
            {
                return b.2.cmp(&a.2);
            }
            return a.2.cmp(&b.2);
        }
        a.3.cmp(&b.3).then(Ordering::Equal)
    });
    ra.extend(keyed.into_iter().map(|k| k.4));
    Ok(())
}
