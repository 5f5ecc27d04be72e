//! flotilla-hub: the management-cluster side of flotilla.
//!
//! The hub pulls Git sources, renders each registered cluster's desired state, signs it and
//! streams it to the agents. See `ARCHITECTURE.md` for the code map; each stage of the data flow
//! is one module here.

pub mod api;
pub mod bundle;
pub mod cli;
pub mod cli_bootstrap;
pub mod cli_cluster;
pub mod cli_diff;
pub mod cli_get;
pub mod controller;
pub mod dashboard;
pub mod delivery;
pub mod fleet;
pub mod helm;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod server;
pub mod source;
pub mod state;
pub mod webhook;

/// The version of this build, as printed by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds a Kubernetes client from an explicit kubeconfig path, or else the usual inference
/// (`KUBECONFIG`, `~/.kube/config`, in-cluster service account).
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    use anyhow::Context as _;
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("finding a kubeconfig")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}
