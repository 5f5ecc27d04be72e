use super::*;

#[test]
fn committed_crds_match_the_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/flotilla-hub/crds/flotilla.dev.yaml"
    );
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == crds_yaml(),
        "{path} is out of date: run `cargo run -p flotilla-hub --bin flotilla -- crds > {path}`"
    );
}

#[test]
fn a_minimal_delivery_gets_the_documented_defaults() {
    let d: Delivery = serde_yaml::from_str(
        "apiVersion: flotilla.dev/v1alpha1\nkind: Delivery\nmetadata: {name: apps, namespace: fleet}\n\
         spec:\n  sourceRef: {name: fleet}\n  clusterSelector: {}\n",
    )
    .unwrap();
    assert_eq!(d.spec.path, "./");
    assert!(d.spec.prune);
    assert!(!d.spec.allow_empty);
    assert!(!d.spec.suspend);
    assert!(d.spec.cluster_selector.match_labels.is_empty());
}

#[test]
fn crds_have_status_subresources_and_printer_columns() {
    for crd in crds() {
        let v = &crd.spec.versions[0];
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(cols.contains(&"Ready"), "{}: {cols:?}", crd.spec.names.kind);
    }
    let cluster = Cluster::crd();
    assert_eq!(cluster.spec.scope, "Cluster");
}
