//! The harness fails with a clear message, never a hang, when its tools cannot be built.

use std::process::Command;

#[test]
fn build_tools_without_go_names_the_missing_tool() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/build-tools.sh"))
        .env("PATH", "/usr/bin:/bin")
        .env("FLOTILLA_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("go is not on PATH: install Go >= 1.24"),
        "stderr: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "no bin directory is printed on failure"
    );
}

#[test]
fn cluster_names_that_could_escape_the_run_dir_are_refused() {
    let err = flotilla_e2e::controlplane::down("../etc")
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid cluster name \"../etc\""), "{err}");
}
