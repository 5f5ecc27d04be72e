use serde_json::{Value, json};

use super::*;

fn deploy(image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "app"},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "web", "image": image}]}}}})
}

fn cm(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "app"}, "data": {"a": "1"}})
}

fn secret(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "creds", "namespace": "app"}, "data": data})
}

#[test]
fn keys_use_the_group_not_the_version_and_print_like_errors() {
    let k = ObjectKey::of(&deploy("x"));
    assert_eq!(k.group, "apps");
    assert_eq!(k.to_string(), "Deployment app/web");
    let ns = ObjectKey::of(&json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "app"}}));
    assert_eq!(ns.group, "");
    assert_eq!(ns.to_string(), "Namespace app");
    let mut v2 = deploy("x");
    v2["apiVersion"] = "apps/v2".into();
    assert_eq!(ObjectKey::of(&v2), k);
}

#[test]
fn compare_finds_created_changed_and_pruned_in_order() {
    let old = vec![deploy("web:1"), cm("gone"), cm("same")];
    let new = vec![deploy("web:2"), cm("same"), cm("new")];
    let changes = compare(&old, &new, true, "0123456789ab", "working tree");
    assert_eq!(changes.len(), 3, "{changes:?}");
    let Change::Changed(k, diff) = &changes[0] else {
        panic!("{changes:?}")
    };
    assert_eq!(k.to_string(), "Deployment app/web");
    assert_eq!(
        diff,
        "--- Deployment app/web (0123456789ab)\n\
         +++ Deployment app/web (working tree)\n\
         @@ -8,5 +8,5 @@\n   template:\n     spec:\n       containers:\n\
         -      - image: web:1\n\
         +      - image: web:2\n         name: web\n"
    );
    assert_eq!(changes[1], Change::Created(ObjectKey::of(&cm("new"))));
    assert_eq!(
        changes[2],
        Change::Pruned {
            key: ObjectKey::of(&cm("gone")),
            kept: false
        }
    );
    assert!(compare(&old, &old, true, "a", "b").is_empty());
    let kept = compare(&[cm("gone")], &[], false, "a", "b");
    assert_eq!(
        kept,
        vec![Change::Pruned {
            key: ObjectKey::of(&cm("gone")),
            kept: true
        }]
    );
}

#[test]
fn secret_values_are_never_printed_but_their_changes_are_visible() {
    // "hunter2" and "s3cret" base64-encoded.
    let old = vec![secret(
        json!({"password": "aHVudGVyMg==", "user": "YWRtaW4="}),
    )];
    let new = vec![secret(
        json!({"password": "czNjcmV0", "user": "YWRtaW4=", "token": "eHl6"}),
    )];
    let changes = compare(&old, &new, true, "old", "new");
    let Change::Changed(_, diff) = &changes[0] else {
        panic!("{changes:?}")
    };
    for value in ["aHVudGVyMg==", "czNjcmV0", "YWRtaW4=", "eHl6"] {
        assert!(
            !diff.contains(value),
            "secret value {value} printed:\n{diff}"
        );
    }
    assert!(diff.contains("-  password: '*** (before)'"), "{diff}");
    assert!(diff.contains("+  password: '*** (after)'"), "{diff}");
    assert!(diff.contains("+  token: '***'"), "{diff}");
    assert!(diff.contains("   user: '***'"), "{diff}");

    let mut s = secret(json!({"k": "dmFsdWU="}));
    s["stringData"] = json!({"plain": "visible?"});
    mask_secrets(Some(&mut s), None);
    assert_eq!(s["data"]["k"], "***");
    assert_eq!(s["stringData"]["plain"], "***");
    // Other kinds are left alone.
    let mut c = cm("x");
    mask_secrets(Some(&mut c), None);
    assert_eq!(c["data"]["a"], "1");
}

#[test]
fn the_report_groups_by_cluster_and_counts_changes() {
    let changes = compare(
        &[deploy("web:1"), cm("gone")],
        &[deploy("web:2"), cm("new")],
        true,
        "0123456789ab",
        "working tree",
    );
    let report = vec![
        ClusterDiff {
            cluster: "workload-1".into(),
            deliveries: vec![
                DeliveryDiff {
                    delivery: "fleet/apps".into(),
                    from: Some("main@sha1:0123456789abcdef0123".into()),
                    to: "working tree".into(),
                    notes: vec!["the delivery is suspended".into()],
                    changes,
                },
                DeliveryDiff {
                    delivery: "fleet/infrastructure".into(),
                    from: Some("main@sha1:0123456789abcdef0123".into()),
                    to: "working tree".into(),
                    notes: vec![],
                    changes: vec![],
                },
            ],
        },
        ClusterDiff {
            cluster: "workload-2".into(),
            deliveries: vec![DeliveryDiff {
                delivery: "fleet/apps".into(),
                from: None,
                to: "working tree".into(),
                notes: vec![],
                changes: vec![Change::Created(ObjectKey::of(&cm("new")))],
            }],
        },
    ];
    assert_eq!(
        format_report(&report),
        "cluster workload-1\n\
         \x20 delivery fleet/apps (0123456789ab -> working tree)\n\
         \x20   note: the delivery is suspended\n\
         \x20   ~ changed  Deployment app/web\n\
         \x20       --- Deployment app/web (0123456789ab)\n\
         \x20       +++ Deployment app/web (working tree)\n\
         \x20       @@ -8,5 +8,5 @@\n\
         \x20          template:\n\
         \x20            spec:\n\
         \x20              containers:\n\
         \x20       -      - image: web:1\n\
         \x20       +      - image: web:2\n\
         \x20                name: web\n\
         \x20   + created  ConfigMap app/new\n\
         \x20   - pruned   ConfigMap app/gone\n\
         \x20 delivery fleet/infrastructure (0123456789ab -> working tree): no changes\n\
         cluster workload-2\n\
         \x20 delivery fleet/apps (nothing applied -> working tree)\n\
         \x20   + created  ConfigMap app/new\n\
         2 to create, 1 to change, 1 to prune on 2 of 2 cluster(s)\n"
    );
    assert_eq!(totals(&report), (2, 1, 1));
    let none = vec![ClusterDiff {
        cluster: "a".into(),
        deliveries: vec![],
    }];
    assert_eq!(
        format_report(&none),
        "cluster a\nno changes on 1 cluster(s)\n"
    );
}
