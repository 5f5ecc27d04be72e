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

pub mod controlplane;

pub use controlplane::TestCluster;

/// True when end-to-end tests should run: `FLOTILLA_E2E=1`, as the project's test command and
/// CI set it. Without it, tests that need control planes say so and return, so that a plain
/// `cargo test` stays fast on a machine without Go.
pub fn e2e_enabled() -> bool {
    std::env::var("FLOTILLA_E2E").is_ok_and(|v| v == "1" || v == "true")
}
