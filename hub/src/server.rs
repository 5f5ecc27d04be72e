//! The `flotilla-hub` process: connects to the management cluster and runs until told to stop.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use tracing::info;

/// Runs the flotilla hub in a management cluster.
///
/// The hub reads its configuration from custom resources in the management cluster and keeps
/// every registered workload cluster's agent supplied with signed bundles.
#[derive(Debug, Parser)]
#[command(name = "flotilla-hub", version, about, long_about)]
pub struct Args {
    /// Kubeconfig of the management cluster. Default: `KUBECONFIG`, `~/.kube/config`, or the
    /// in-cluster service account.
    #[arg(long, env = "FLOTILLA_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    #[command(flatten)]
    pub log: flotilla_telemetry::LogArgs,
}

impl Args {
    /// Runs the hub until SIGINT or SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        self.log.init()?;
        let client = crate::kube_client(self.kubeconfig.as_deref()).await?;
        let version = client
            .apiserver_version()
            .await
            .context("reaching the management cluster's API server")?;
        info!(version = %crate::VERSION, kubernetes = %version.git_version, "hub started");
        shutdown_signal().await;
        info!("hub stopped");
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
