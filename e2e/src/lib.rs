//! flotilla's end-to-end harness: real Kubernetes control planes on loopback for tests, the
//! local demo and benchmarks.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cluster = flotilla_e2e::TestCluster::start("demo").await?;
//! let client = cluster.client().await?;
//! // ... use the cluster; it is torn down when `cluster` is dropped.
//! # Ok(()) }
//! ```

pub mod bench;
pub mod controlplane;
pub mod fleet;
pub mod pods;
pub mod sim;

pub use controlplane::TestCluster;

/// True when end-to-end tests should run: `FLOTILLA_E2E=1`, as the project's test command and
/// CI set it. Without it, tests that need control planes say so and return, so that a plain
/// `cargo test` stays fast on a machine without Go.
pub fn e2e_enabled() -> bool {
    std::env::var("FLOTILLA_E2E").is_ok_and(|v| v == "1" || v == "true")
}

/// The `helm` binary the harness builds into the tools cache (see `e2e/build-tools.sh`), for
/// the hub's `--helm-binary` and for packaging test charts.
pub fn helm_binary() -> anyhow::Result<std::path::PathBuf> {
    Ok(controlplane::tools_bin()?.join("helm"))
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout` naming `what`.
/// For tests that wait on what a cluster eventually shows, e.g. a Deployment becoming Available.
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {}s waiting for {what}", timeout.as_secs());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Skips the calling test unless [`e2e_enabled`], printing why. Use at the top of every test that
/// starts a control plane: `if flotilla_e2e::skip_unless_e2e() { return Ok(()); }`.
#[allow(clippy::print_stderr)]
pub fn skip_unless_e2e() -> bool {
    if e2e_enabled() {
        return false;
    }
    eprintln!(
        "skipped: set FLOTILLA_E2E=1 to run tests on real control planes (scripts/test.sh does)"
    );
    true
}

/// Path of a binary of this workspace (e.g. `flotilla-agent`), built with the same profile as
/// the running test if needed, so e2e tests can run real flotilla processes.
pub fn workspace_binary(package: &str, bin: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    let exe = std::env::current_exe().context("locating the test executable")?;
    // Test executables live in <target>/<profile>/deps/, binaries (bench) in <target>/<profile>/.
    let parent = exe
        .parent()
        .context("locating the test executable's directory")?;
    let profile_dir = if parent.file_name().is_some_and(|n| n == "deps") {
        parent
            .parent()
            .context("the test executable is not in <target>/<profile>/deps")?
    } else {
        parent
    }
    .to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let status = cmd.status().with_context(|| format!("building {bin}"))?;
    anyhow::ensure!(status.success(), "building {bin} failed ({status})");
    let path = profile_dir.join(bin);
    anyhow::ensure!(path.is_file(), "{} was not built", path.display());
    Ok(path)
}
