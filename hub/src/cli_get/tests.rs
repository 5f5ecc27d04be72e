use std::time::{Duration, SystemTime};

use serde_json::json;

use super::*;
use crate::controller::util::parse_rfc3339;

fn at(s: &str) -> SystemTime {
    parse_rfc3339(s).expect("a timestamp")
}

fn cluster(v: serde_json::Value) -> Cluster {
    serde_json::from_value(v).expect("a Cluster")
}

#[test]
fn tables_align_columns_three_spaces_apart_without_trailing_spaces() {
    let t = table(
        &["NAME", "READY", "MESSAGE"],
        &[
            vec!["a".into(), "True".into(), "".into()],
            vec!["longer-name".into(), "False".into(), "why".into()],
        ],
    );
    assert_eq!(
        t,
        "NAME          READY   MESSAGE\n\
         a             True\n\
         longer-name   False   why\n"
    );
}

#[test]
fn durations_read_like_kubectl_ages() {
    let d = Duration::from_secs;
    assert_eq!(human_duration(d(0)), "0s");
    assert_eq!(human_duration(d(119)), "119s");
    assert_eq!(human_duration(d(200)), "3m20s");
    assert_eq!(human_duration(d(300)), "5m");
    assert_eq!(human_duration(d(45 * 60)), "45m");
    assert_eq!(human_duration(d(2 * 3600)), "120m");
    assert_eq!(human_duration(d(5 * 3600 + 7 * 60)), "5h7m");
    assert_eq!(human_duration(d(20 * 3600)), "20h");
    assert_eq!(human_duration(d(3 * 86400 + 4 * 3600)), "3d4h");
    assert_eq!(human_duration(d(120 * 86400)), "120d");
    assert_eq!(human_duration(d(3 * 365 * 86400)), "3y");
}

#[test]
fn cluster_table_shows_acceptance_connection_last_seen_and_deliveries() {
    let now = at("2026-01-01T12:00:00Z");
    let clusters = vec![
        cluster(json!({
            "apiVersion": "flotilla.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "eu-1", "creationTimestamp": "2026-01-01T10:00:00Z"},
            "spec": {"accepted": true},
            "status": {
                "connected": true, "lastSeen": "2026-01-01T11:59:55Z", "summary": "2/2",
                "drifted": 0,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded"}],
            },
        })),
        cluster(json!({
            "apiVersion": "flotilla.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "us-1", "creationTimestamp": "2025-12-30T12:00:00Z"},
            "spec": {"accepted": false},
        })),
        cluster(json!({
            "apiVersion": "flotilla.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "old", "creationTimestamp": "2025-12-30T12:00:00Z"},
            "spec": {"accepted": true, "revoked": true},
            "status": {"connected": false, "lastSeen": "2026-01-01T09:00:00Z", "summary": "0/1",
                "drifted": 3,
                "conditions": [{"type": "Ready", "status": "False", "reason": "Revoked"}]},
        })),
    ];
    let (headers, rows) = cluster_table(&clusters, now);
    assert_eq!(
        table(&headers, &rows),
        "NAME   ACCEPTED   CONNECTED   LAST SEEN   DELIVERIES READY   DRIFTED   READY             AGE\n\
         eu-1   True       True        5s          2/2                0         True              120m\n\
         us-1   False      False       never       -                  0         Unknown           2d\n\
         old    Revoked    False       3h          0/1                3         False (Revoked)   2d\n"
    );
}

#[test]
fn delivery_table_has_a_namespace_column_only_for_all_namespaces() {
    let now = at("2026-01-01T12:00:00Z");
    let d: Delivery = serde_json::from_value(json!({
        "apiVersion": "flotilla.dev/v1alpha1", "kind": "Delivery",
        "metadata": {"name": "apps", "namespace": "fleet",
            "creationTimestamp": "2026-01-01T11:00:00Z"},
        "spec": {"sourceRef": {"name": "fleet"}, "path": "./clusters/${cluster.name}",
            "clusterSelector": {}, "suspend": true},
        "status": {"shortRevision": "0123456789ab", "summary": "1/2",
            "conditions": [{"type": "Ready", "status": "False", "reason": "BuildFailed",
                "message": "workload-2: clusters/workload-2/kustomization.yaml:3: invalid YAML"}]},
    }))
    .unwrap();
    let (h, r) = delivery_table(std::slice::from_ref(&d), false, now);
    assert_eq!(
        table(&h, &r),
        "NAME   SOURCE   PATH                         REVISION       SUSPENDED   READY   CLUSTERS READY   AGE   MESSAGE\n\
         apps   fleet    ./clusters/${cluster.name}   0123456789ab   True        False   1/2              60m   workload-2: clusters/workload-2/kustomization.yaml:3: invalid YAML\n"
    );
    let (h, r) = delivery_table(&[d], true, now);
    assert_eq!(h[0], "NAMESPACE");
    assert_eq!(r[0][0], "fleet");
}

#[test]
fn source_table_hides_credentials_in_urls() {
    let now = at("2026-01-01T12:00:00Z");
    let s: GitSource = serde_json::from_value(json!({
        "apiVersion": "flotilla.dev/v1alpha1", "kind": "GitSource",
        "metadata": {"name": "fleet", "namespace": "fleet",
            "creationTimestamp": "2026-01-01T11:58:00Z"},
        "spec": {"url": "https://user:hunter2@git.example/fleet.git"},
        "status": {"artifact": {"revision": "main@sha1:abc", "fetchedAt": "2026-01-01T11:59:00Z"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded",
                "message": "fetched main@sha1:abc"}]},
    }))
    .unwrap();
    let (h, r) = source_table(&[s], false, now);
    let t = table(&h, &r);
    assert!(!t.contains("hunter2"), "{t}");
    assert!(t.contains("main@sha1:abc"), "{t}");
    assert!(t.starts_with("NAME    URL"), "{t}");
}

#[test]
fn status_counts_and_names_what_is_failing_or_drifted() {
    let clusters = vec![
        cluster(json!({
            "metadata": {"name": "workload-1"}, "spec": {"accepted": true},
            "status": {"connected": true, "drifted": 1,
                "conditions": [{"type": "Ready", "status": "False", "reason": "DriftDetected"}],
                "deliveries": [{"name": "apps", "ready": false, "drifted": 1,
                    "reason": "DriftDetected", "revision": "main@sha1:0123456789abcdef"}]},
        })),
        cluster(json!({
            "metadata": {"name": "workload-2"}, "spec": {"accepted": true},
            "status": {"connected": false, "lastSeen": "2026-01-01T09:00:00Z",
                "conditions": [{"type": "Ready", "status": "False", "reason": "BuildFailed"}],
                "deliveries": [{"name": "apps", "ready": false, "reason": "BuildFailed",
                    "message": "clusters/workload-2/kustomization.yaml:3: invalid YAML",
                    "revision": "main@sha1:0123456789abcdef"}]},
        })),
        cluster(json!({"metadata": {"name": "new"}, "spec": {"accepted": false}})),
    ];
    let deliveries: Vec<Delivery> = vec![serde_json::from_value(json!({
        "metadata": {"name": "apps", "namespace": "fleet"},
        "spec": {"sourceRef": {"name": "fleet"}, "clusterSelector": {}, "suspend": true},
        "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "BuildFailed"}],
            "clusters": [{"name": "workload-1"}]},
    }))
    .unwrap()];
    let sources: Vec<GitSource> =
        vec![serde_json::from_value(json!({
        "metadata": {"name": "fleet", "namespace": "fleet"},
        "spec": {"url": "/srv/fleet"},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded"}]},
    }))
    .unwrap()];
    assert_eq!(
        summary(&clusters, &deliveries, &sources),
        "Clusters:    1/2 connected, 0/2 ready (1 pending)\n\
         Deliveries:  0/1 ready (1 suspended)\n\
         Sources:     1/1 ready\n\
         \n\
         Disconnected:\n  workload-2: last seen 2026-01-01T09:00:00Z\n\
         \n\
         Not ready:\n  workload-2: apps: BuildFailed: clusters/workload-2/kustomization.yaml:3: invalid YAML (runs 0123456789ab)\n\
         \n\
         Drifted:\n  workload-1: apps: 1 object drifted\n"
    );
}
