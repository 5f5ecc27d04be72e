//! flotilla-agent: the workload-cluster side of flotilla.
//!
//! The agent receives signed bundles from the hub, verifies them, applies them with server-side
//! apply, prunes what left Git, and watches what it applied to correct drift.

pub mod apply;
pub mod cli;
pub mod connect;
pub mod drift;
pub mod health;
pub mod identity;
pub mod inventory;
pub mod metrics;
pub mod object;
pub mod reconcile;
pub mod report;
pub mod sink;
pub mod store;
pub mod verify;

pub use cli::Args;

/// The version of this build, as printed by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
