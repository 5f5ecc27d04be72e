//! `flotilla render --helm-release`: the values a cluster gets (no `helm` needed for
//! `--show-values`), and a clear error when `helm` is missing.

use std::process::{Command, Output};

fn flotilla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running flotilla")
}

const RELEASE: &str = r#"apiVersion: flotilla.dev/v1alpha1
kind: HelmRelease
metadata: {name: web, namespace: apps}
spec:
  chart: {name: demo, version: "^1.0", sourceRef: {name: charts}}
  clusterSelector: {}
  variables: {tier: gold}
  values:
    image: {tag: "2.0"}
    greeting: "hello ${cluster_name} in ${cluster_labels_region}, ${tier}"
"#;

#[test]
fn show_values_prints_the_values_one_cluster_gets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hr = dir.path().join("hr.yaml");
    std::fs::write(&hr, RELEASE).expect("write");
    let from = dir.path().join("from.yaml");
    std::fs::write(&from, "image: {repository: web, tag: \"1.0\"}\n").expect("write");
    let out = flotilla(&[
        "render",
        dir.path().to_str().expect("utf-8"),
        "--helm-release",
        hr.to_str().expect("utf-8"),
        "--cluster",
        "eu-1",
        "--label",
        "region=eu",
        "--var",
        "tier=silver",
        "--values",
        from.to_str().expect("utf-8"),
        "--show-values",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values: serde_json::Value = serde_yaml::from_str(&stdout).expect("YAML");
    assert_eq!(
        values,
        serde_json::json!({
            "image": {"repository": "web", "tag": "2.0"},
            "greeting": "hello eu-1 in eu, silver"
        }),
        "valuesFrom stand-in merged first, the cluster's variable wins over the release's"
    );
}

#[test]
fn a_missing_helm_binary_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hr = dir.path().join("hr.yaml");
    std::fs::write(&hr, RELEASE).expect("write");
    let out = flotilla(&[
        "render",
        dir.path().to_str().expect("utf-8"),
        "--helm-release",
        hr.to_str().expect("utf-8"),
        "--helm-binary",
        "/nonexistent/helm",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: running /nonexistent/helm (set --helm-binary)"),
        "{stderr}"
    );
}
