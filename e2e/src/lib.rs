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

pub use controlplane::TestCluster;

/// True when end-to-end tests should run: `FLOTILLA_E2E=1`, as the project's test command and
/// CI set it. Without it, tests that need control planes say so and return, so that a plain
/// `cargo test` stays fast on a machine without Go.
pub fn e2e_enabled() -> bool {
    std::env::var("FLOTILLA_E2E").is_ok_and(|v| v == "1" || v == "true")
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
