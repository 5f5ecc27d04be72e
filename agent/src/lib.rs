//! flotilla-agent: the workload-cluster side of flotilla.
//!
//! The agent receives signed bundles from the hub, verifies them, applies them with server-side
//! apply, prunes what left Git, and watches what it applied to correct drift.

pub mod verify;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use tracing::info;

/// The version of this build, as printed by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the flotilla agent in a workload cluster.
///
/// The agent connects to the hub, applies the bundles the hub signs for this cluster and keeps
/// them in place.
#[derive(Debug, Parser)]
#[command(name = "flotilla-agent", version, about, long_about)]
pub struct Args {
    /// Kubeconfig of the workload cluster. Default: `KUBECONFIG`, `~/.kube/config`, or the
    /// in-cluster service account.
    #[arg(long, env = "FLOTILLA_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    #[command(flatten)]
    pub log: flotilla_telemetry::LogArgs,
}

impl Args {
    /// Runs the agent until SIGINT or SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        self.log.init()?;
        let config = match &self.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
            }
            None => kube::Config::infer()
                .await
                .context("finding a kubeconfig")?,
        };
        let client = kube::Client::try_from(config)?;
        let version = client
            .apiserver_version()
            .await
            .context("reaching the workload cluster's API server")?;
        info!(version = VERSION, kubernetes = %version.git_version, "agent started");
        tokio::signal::ctrl_c().await?;
        Ok(())
    }
}
