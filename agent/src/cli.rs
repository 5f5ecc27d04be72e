//! The `flotilla-agent` command line.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args as ClapArgs, Parser, Subcommand};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tracing::{info, warn};

use crate::apply::{Applier, ApplyConfig, FIELD_MANAGER};
use crate::reconcile::{Desired, Reconciler, ReconcilerConfig, Status};

/// Runs the flotilla agent in a workload cluster.
///
/// The agent applies the bundles the hub signs for this cluster with server-side apply, prunes
/// what left Git, and watches what it applied to put back any change within seconds. It keeps
/// the last bundle of each delivery in the cluster, so it goes on correcting drift while the hub
/// is unreachable and after a restart.
#[derive(Debug, Parser)]
#[command(name = "flotilla-agent", version, about, long_about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub cluster: ClusterArgs,

    #[command(flatten)]
    pub log: flotilla_telemetry::LogArgs,
}

/// The agent's modes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run until stopped: resume every stored bundle, then keep correcting drift.
    Run,
    /// Apply one bundle file (JSON: delivery, revision, sequence, objects, options) once, wait
    /// for health, print the outcome as JSON and exit: for operators and benchmarks. Exits 1 if
    /// anything failed.
    Apply {
        /// The bundle file.
        #[arg(long)]
        file: PathBuf,
        /// How long to wait for the applied objects to become ready (0: don't wait).
        #[arg(long, value_parser = humantime_secs, default_value = "300")]
        wait: Duration,
        /// Also store the bundle as the delivery's last verified one, so `run` resumes it.
        #[arg(long)]
        store: bool,
    },
}

/// How the agent reaches and treats its workload cluster.
#[derive(Debug, Clone, ClapArgs)]
pub struct ClusterArgs {
    /// Kubeconfig of the workload cluster. Default: `KUBECONFIG`, `~/.kube/config`, or the
    /// in-cluster service account.
    #[arg(long, env = "FLOTILLA_KUBECONFIG", global = true)]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace for the agent's own state (inventories, stored bundles); created if missing.
    #[arg(
        long,
        env = "FLOTILLA_STATE_NAMESPACE",
        default_value = "flotilla-system",
        global = true
    )]
    pub state_namespace: String,

    /// Watch only this namespace (namespace-scoped agents, see docs/agent.md#rbac).
    #[arg(long, env = "FLOTILLA_WATCH_NAMESPACE", global = true)]
    pub watch_namespace: Option<String>,

    /// Objects applied at the same time.
    #[arg(long, default_value_t = ApplyConfig::default().concurrency, global = true)]
    pub apply_concurrency: usize,

    /// Sustained requests per second to the API server.
    #[arg(long, default_value_t = ApplyConfig::default().qps, global = true)]
    pub kube_qps: u32,

    /// Requests per second allowed in bursts.
    #[arg(long, default_value_t = ApplyConfig::default().burst, global = true)]
    pub kube_burst: u32,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let secs = s.trim_end_matches('s');
    secs.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?} is not a number of seconds"))
}

impl Args {
    /// Runs the chosen mode.
    pub async fn run(self) -> anyhow::Result<()> {
        self.log.init()?;
        let reconciler = self.cluster.reconciler().await?;
        match self.command {
            Command::Run => {
                let outcomes = reconciler
                    .resume()
                    .await
                    .context("resuming stored bundles")?;
                info!(
                    deliveries = outcomes.len(),
                    "resumed stored bundles; watching for drift"
                );
                let mut events = reconciler.subscribe();
                tokio::spawn(async move {
                    while let Ok(e) = events.recv().await {
                        if let Some(err) = &e.error {
                            warn!(object = %e.object, error = %err, "drift not corrected");
                        }
                    }
                });
                crate::cli::shutdown_signal().await;
                info!("agent stopped");
                Ok(())
            }
            Command::Apply { file, wait, store } => {
                let text =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let desired: Desired = serde_json::from_slice(&text)
                    .with_context(|| format!("parsing bundle file {}", file.display()))?;
                let delivery = desired.delivery.clone();
                let started = std::time::Instant::now();
                let outcome = if store {
                    reconciler.apply(desired).await?
                } else {
                    reconciler.apply_unstored(desired).await?
                };
                let applied_ms = started.elapsed().as_millis() as u64;
                let health = if wait.is_zero() || outcome.status != Status::Applied {
                    None
                } else {
                    Some(reconciler.wait_healthy(&delivery, wait).await)
                };
                let healthy = health.as_ref().is_none_or(|h| h.healthy);
                let report = json!({
                    "status": outcome.status,
                    "message": outcome.message,
                    "appliedMs": applied_ms,
                    "healthyMs": health.as_ref().map(|_| started.elapsed().as_millis() as u64),
                    "health": health,
                    "failed": outcome.results.iter().filter(|r| r.action == crate::apply::Action::Failed).collect::<Vec<_>>(),
                    "pruned": outcome.pruned,
                    "peakRssKiB": peak_rss_kib(),
                });
                writeln!(
                    std::io::stdout().lock(),
                    "{}",
                    serde_json::to_string_pretty(&report)?
                )?;
                if outcome.status != Status::Applied || !healthy {
                    std::process::exit(1);
                }
                Ok(())
            }
        }
    }
}

impl ClusterArgs {
    /// Connects to the workload cluster, makes sure the state namespace exists, and builds the
    /// reconciler.
    pub async fn reconciler(&self) -> anyhow::Result<Reconciler> {
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
        info!(version = crate::VERSION, kubernetes = %version.git_version, "agent started");
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.state_namespace}});
        Api::<Namespace>::all(client.clone())
            .patch(
                &self.state_namespace,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(&ns),
            )
            .await
            .with_context(|| format!("creating the state namespace {}", self.state_namespace))?;
        let applier = Applier::new(
            client,
            ApplyConfig {
                concurrency: self.apply_concurrency,
                qps: self.kube_qps,
                burst: self.kube_burst,
                ..ApplyConfig::default()
            },
        );
        Ok(Reconciler::new(
            applier,
            ReconcilerConfig {
                state_namespace: self.state_namespace.clone(),
                watch_namespace: self.watch_namespace.clone(),
            },
        ))
    }
}

/// Peak resident memory of this process in KiB (`VmHWM`), for reports and benchmarks.
pub fn peak_rss_kib() -> Option<u64> {
    proc_status_kib("VmHWM:")
}

/// Current resident memory of this process in KiB (`VmRSS`).
pub fn rss_kib() -> Option<u64> {
    proc_status_kib("VmRSS:")
}

fn proc_status_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
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
