//! `flotilla render` on bad input: what a user sees on stderr, and the exit code.

use std::process::{Command, Output};

fn flotilla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running flotilla")
}

fn write(root: &std::path::Path, path: &str, text: &str) {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

#[test]
fn missing_resource_fails_with_the_kustomization_and_entry() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "kustomization.yaml",
        "resources:\n  - missing.yaml\n",
    );
    let out = flotilla(&["render", dir.path().to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "nothing is printed on failure");
    assert_eq!(
        stderr.trim_end(),
        "error: kustomization.yaml: resource \"missing.yaml\" does not exist"
    );
}

#[test]
fn malformed_yaml_fails_with_file_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "manifests/web.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  a: \"1\"\n b: \"2\"\n",
    );
    let out = flotilla(&[
        "render",
        dir.path().to_str().expect("utf-8 path"),
        "--path",
        "manifests",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "nothing is printed on failure");
    assert_eq!(
        stderr.trim_end(),
        "error: manifests/web.yaml:7: invalid YAML: while parsing a block mapping, did not find expected key"
    );
}

#[test]
fn path_outside_the_root_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "clusters/a/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n",
    );
    let out = flotilla(&[
        "render",
        dir.path().to_str().expect("utf-8 path"),
        "--path",
        "clusters/../../etc",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "nothing is printed on failure");
    assert_eq!(
        stderr.trim_end(),
        "error: path clusters/../../etc is outside the source root"
    );
}
