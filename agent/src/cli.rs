//! The `flotilla-agent` command line.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args as ClapArgs, Parser, Subcommand};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::apply::{Applier, ApplyConfig, FIELD_MANAGER};
use crate::connect::{self, Agent, HubEndpoint, Snapshot};
use crate::identity::{Identity, IdentityStore};
use crate::reconcile::{Desired, Reconciler, ReconcilerConfig, Resumed, Status, Trust};
use crate::report::{Reporter, ReporterConfig};

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

    #[command(flatten)]
    pub otlp: flotilla_telemetry::OtlpArgs,
}

/// The agent's modes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run until stopped: resume every stored bundle, keep correcting drift, and, with `--hub`,
    /// receive bundles from the hub and report to it.
    Run(RunArgs),
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

/// How `run` reaches its hub. Without `--hub` the agent runs offline on its stored bundles.
#[derive(Debug, Clone, ClapArgs)]
pub struct RunArgs {
    /// The hub's delivery (mTLS) listener, `https://host:port`.
    #[arg(long, env = "FLOTILLA_HUB")]
    pub hub: Option<String>,

    /// The hub's registration listener, `https://host:port`, used once to register (default:
    /// `--hub`).
    #[arg(long, env = "FLOTILLA_HUB_REGISTRATION")]
    pub hub_registration: Option<String>,

    /// The name the hub's server certificate carries (default: the host of `--hub`).
    #[arg(long, env = "FLOTILLA_HUB_SERVER_NAME")]
    pub hub_server_name: Option<String>,

    /// PEM file of the hub CA that the hub's server certificate must chain to. Needed to
    /// register; afterwards the CA kept in the identity Secret is used if this is absent.
    #[arg(long, env = "FLOTILLA_HUB_CA")]
    pub hub_ca: Option<PathBuf>,

    /// The cluster this agent is for. Optional: it is checked against the registration and the
    /// stored identity.
    #[arg(long, env = "FLOTILLA_CLUSTER")]
    pub cluster: Option<String>,

    /// File holding the bootstrap token (`flotilla cluster add` prints it). Read once, at the
    /// first start; never logged. Not needed once the identity Secret exists.
    #[arg(long, env = "FLOTILLA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Serve Prometheus metrics at `http://ADDRESS/metrics` (e.g. `0.0.0.0:9464`). Empty or `0`
    /// (the default) serves none.
    #[arg(long, env = "FLOTILLA_METRICS_LISTEN", default_value = "", value_parser = metrics_listen)]
    pub metrics_listen: MetricsListen,
}

/// Where `--metrics-listen` serves, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<std::net::SocketAddr>);

fn metrics_listen(s: &str) -> Result<MetricsListen, String> {
    match s.trim() {
        "" | "0" => Ok(MetricsListen(None)),
        a => a.parse().map(|a| MetricsListen(Some(a))).map_err(|_| {
            format!("{s:?} is not an address such as 0.0.0.0:9464 (or empty to disable)")
        }),
    }
}

/// A bootstrap token; `Debug` does not show it.
struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
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
        // Flushes the spans not yet exported when the agent returns.
        let _traces = self.log.init_with_traces(&self.otlp, "flotilla-agent")?;
        let reconciler = self.cluster.reconciler().await?;
        match self.command {
            Command::Run(run) => run.run(reconciler, &self.cluster.state_namespace).await,
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

impl RunArgs {
    /// Resumes stored bundles, then runs offline or connected to the hub until stopped.
    async fn run(self, reconciler: Reconciler, state_namespace: &str) -> anyhow::Result<()> {
        let ids = IdentityStore::new(reconciler.client().clone(), state_namespace);
        let identity = ids.load().await.context("loading the agent identity")?;
        if let (Some(id), Some(want)) = (&identity, &self.cluster)
            && &id.snapshot.cluster != want
        {
            anyhow::bail!(
                "the identity Secret {state_namespace}/{} is for cluster {}, but --cluster is {want}",
                crate::identity::SECRET_NAME,
                id.snapshot.cluster
            );
        }
        let trust = identity.as_ref().map(|id| Trust {
            cluster: id.snapshot.cluster.clone(),
            keys: id.snapshot.trusted.0.clone(),
            hub_deliveries: id.snapshot.held.keys().cloned().collect(),
        });
        let resumed = reconciler
            .resume(trust.as_ref())
            .await
            .context("resuming stored bundles")?;
        info!(
            deliveries = resumed.outcomes.len(),
            refused = resumed.refused.len(),
            "resumed stored bundles; watching for drift"
        );
        let metrics_stop = CancellationToken::new();
        let _metrics_guard = metrics_stop.clone().drop_guard();
        if let Some(address) = self.metrics_listen.0 {
            let bound = crate::metrics::serve(address, reconciler.clone(), metrics_stop).await?;
            info!(address = %bound, "serving metrics at /metrics");
        }
        let mut events = reconciler.subscribe();
        tokio::spawn(async move {
            while let Ok(e) = events.recv().await {
                if let Some(err) = &e.error {
                    warn!(object = %e.object, error = %err, "drift not corrected");
                }
            }
        });
        let Some(hub) = self.hub.clone() else {
            shutdown_signal().await;
            info!("agent stopped");
            return Ok(());
        };
        let stop = CancellationToken::new();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown_signal().await;
                stop.cancel();
            }
        });
        let result = self
            .connected(&hub, reconciler, ids, identity, resumed, stop)
            .await;
        info!("agent stopped");
        result
    }

    async fn connected(
        &self,
        hub: &str,
        reconciler: Reconciler,
        ids: IdentityStore,
        identity: Option<Identity>,
        resumed: Resumed,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let server_name = match &self.hub_server_name {
            Some(n) => n.clone(),
            None => host_of(hub)?,
        };
        let ca_pem = match (&self.hub_ca, &identity) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the hub CA {}", path.display()))?,
            (None, Some(id)) => id.ca_pem.clone(),
            (None, None) => anyhow::bail!("--hub-ca is required to register with the hub"),
        };
        let endpoint = |url: &str| HubEndpoint {
            url: url.to_owned(),
            server_name: server_name.clone(),
            ca_pem: ca_pem.clone(),
        };
        let mut identity = match identity {
            Some(mut id) => {
                if self.token_file.is_some() {
                    info!(cluster = %id.snapshot.cluster, "identity found; not registering again (the token file is not read)");
                }
                // Hold exactly what is stored and verified: a delivery whose stored bundle was
                // refused or is missing is then sent again by the hub.
                id.snapshot.held = resumed.held.clone();
                id.ca_pem = ca_pem.clone();
                id
            }
            None => {
                let token = self.read_token()?;
                let url = self.hub_registration.as_deref().unwrap_or(hub);
                let Some(registration) = register(&endpoint(url), &token, &stop).await? else {
                    return Ok(());
                };
                drop(token);
                if let Some(want) = &self.cluster
                    && &registration.cluster != want
                {
                    anyhow::bail!(
                        "the bootstrap token is for cluster {}, but --cluster is {want}",
                        registration.cluster
                    );
                }
                let trusted =
                    flotilla_bundle::TrustedKeys::new(registration.key_set.key_set.keys.clone());
                Identity {
                    snapshot: Snapshot {
                        cluster: registration.cluster,
                        identity: registration.identity,
                        trusted: (trusted, registration.key_set.key_set.sequence),
                        held: resumed.held.clone(),
                    },
                    ca_pem: registration.ca_pem,
                }
            }
        };
        ids.save(&identity)
            .await
            .context("saving the agent identity")?;
        let cluster = identity.snapshot.cluster.clone();
        let mut config = connect::Config::new(endpoint(hub));
        config.backoff_initial = Duration::from_millis(500);
        config.backoff_max = Duration::from_secs(30);
        let agent = Arc::new(Agent::resume(
            config,
            identity.snapshot.clone(),
            Arc::new(reconciler.clone()),
        ));

        // Renewed certificates, new key sets and held sequences go back to the identity Secret.
        let persist = tokio::spawn({
            let (agent, stop) = (agent.clone(), stop.clone());
            let mut progress = agent.progress();
            async move {
                let mut written = identity.to_data();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        r = progress.changed() => if r.is_err() { return },
                    }
                    identity.snapshot = agent.snapshot();
                    let data = identity.to_data();
                    if data == written {
                        continue;
                    }
                    match ids.save(&identity).await {
                        Ok(()) => written = data,
                        Err(e) => {
                            warn!(error = %crate::apply::error_chain(&e), "saving the agent identity failed; retrying");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            progress.mark_changed();
                        }
                    }
                }
            }
        });
        tokio::spawn({
            let (metrics, stop) = (reconciler.metrics().clone(), stop.clone());
            let mut progress = agent.progress();
            async move {
                loop {
                    metrics
                        .hub_connected
                        .set(i64::from(progress.borrow_and_update().connected));
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        r = progress.changed() => if r.is_err() { return },
                    }
                }
            }
        });
        let reporter = Reporter::new(reconciler, agent.reports(), ReporterConfig::default());
        tokio::spawn(reporter.run(agent.progress(), stop.clone()));

        info!(cluster = %cluster, hub = %hub, "connecting to the hub");
        let result = agent.run(stop.clone()).await;
        stop.cancel();
        let _ = persist.await;
        result.map_err(|e| {
            error!(cluster = %cluster, error = %crate::apply::error_chain(&e), "the hub refused this agent");
            anyhow::Error::new(e).context(format!("connecting cluster {cluster} to the hub"))
        })
    }

    fn read_token(&self) -> anyhow::Result<Token> {
        let Some(path) = &self.token_file else {
            anyhow::bail!(
                "this agent has not registered with the hub yet (no identity Secret): give it a bootstrap token with --token-file"
            );
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the bootstrap token file {}", path.display()))?;
        let token = text.trim();
        anyhow::ensure!(
            !token.is_empty(),
            "the bootstrap token file {} is empty",
            path.display()
        );
        Ok(Token(token.to_owned()))
    }
}

/// Registers, retrying with backoff while the hub is unreachable or has not accepted the
/// cluster yet (the token is not spent then). `None` if stopped first.
async fn register(
    endpoint: &HubEndpoint,
    token: &Token,
    stop: &CancellationToken,
) -> anyhow::Result<Option<connect::Registration>> {
    let mut attempt = 0u32;
    loop {
        match connect::register(endpoint, &token.0, crate::VERSION).await {
            Ok(r) => return Ok(Some(r)),
            Err(connect::Error::Status(s)) if s.code() == tonic::Code::PermissionDenied => {
                warn!(hub = %endpoint.url, reason = %s.message(), "the hub has not accepted this cluster yet; retrying registration (the token stays valid)");
            }
            Err(e) if registration_may_succeed_later(&e) => {
                warn!(hub = %endpoint.url, error = %crate::apply::error_chain(&e), "cannot register with the hub yet; retrying");
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("registering with the hub at {}", endpoint.url)));
            }
        }
        attempt += 1;
        let delay = connect::backoff(attempt, Duration::from_secs(1), Duration::from_secs(30));
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// True for failures retrying can cure (hub unreachable or overloaded); false when the token is
/// unknown, used or expired, the CSR is refused, or the protocol differs: the operator must act.
fn registration_may_succeed_later(e: &connect::Error) -> bool {
    match e {
        connect::Error::Connect { .. } => true,
        connect::Error::Status(s) => !matches!(
            s.code(),
            tonic::Code::Unauthenticated
                | tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
        ),
        _ => false,
    }
}

/// The host of `https://host:port`.
fn host_of(url: &str) -> anyhow::Result<String> {
    let uri: tonic::transport::Uri = url
        .parse()
        .with_context(|| format!("--hub {url:?} is not a URL"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("https"),
        "--hub {url:?} must be an https:// URL"
    );
    let host = uri
        .host()
        .with_context(|| format!("--hub {url:?} names no host"))?;
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_name_the_server_and_must_be_https() {
        assert_eq!(host_of("https://hub.example:7443").unwrap(), "hub.example");
        assert_eq!(host_of("https://127.0.0.1:7443").unwrap(), "127.0.0.1");
        assert_eq!(host_of("https://[::1]:7443").unwrap(), "::1");
        let err = host_of("http://hub:7443").unwrap_err().to_string();
        assert!(err.contains("must be an https:// URL"), "{err}");
    }

    #[test]
    fn only_a_bad_token_or_protocol_stops_registration() {
        let status = |code| connect::Error::from(tonic::Status::new(code, "x"));
        assert!(registration_may_succeed_later(&status(
            tonic::Code::Unavailable
        )));
        for code in [
            tonic::Code::Unauthenticated,
            tonic::Code::InvalidArgument,
            tonic::Code::FailedPrecondition,
        ] {
            assert!(!registration_may_succeed_later(&status(code)), "{code:?}");
        }
    }

    #[test]
    fn the_token_never_shows_in_debug() {
        let t = Token("flt1.secret".into());
        assert_eq!(format!("{t:?}"), "Token(***)");
    }
}
