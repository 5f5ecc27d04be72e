//! The `flotilla-hub` process: loads its identity from the management cluster, serves
//! registration and delivery to agents, and runs the controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::controller::{self, Controller, Stores};
use crate::delivery::{self, Hub};
use crate::fleet::{FIELD_MANAGER, KubeRegistry};
use crate::leader::{LeaderElector, LeaseConfig};
use crate::source::GitCache;

/// Runs the flotilla hub in a management cluster.
///
/// The hub reads `GitSource`, `Cluster` and `Delivery` resources from the management cluster,
/// renders each delivery for each targeted cluster, and keeps every accepted cluster's agent
/// supplied with signed bundles over mTLS; it writes what the agents report into the resources'
/// status.
#[derive(Debug, Parser)]
#[command(name = "flotilla-hub", version, about, long_about)]
pub struct Args {
    /// Kubeconfig of the management cluster. Default: `KUBECONFIG`, `~/.kube/config`, or the
    /// in-cluster service account.
    #[arg(long, env = "FLOTILLA_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// The hub's own namespace: its CA, signing key, bootstrap tokens and the `flotilla-hub`
    /// ConfigMap live there. Created if missing.
    #[arg(long, env = "FLOTILLA_NAMESPACE", default_value = "flotilla-system")]
    pub namespace: String,

    /// Watch `GitSource` and `Delivery` resources only in this namespace (default: all).
    #[arg(long, env = "FLOTILLA_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Address of the registration listener (TLS; agents present a bootstrap token).
    #[arg(
        long,
        env = "FLOTILLA_REGISTRATION_LISTEN",
        default_value = "0.0.0.0:7441"
    )]
    pub registration_listen: SocketAddr,

    /// Address of the delivery listener (mTLS; agents present their client certificate).
    #[arg(long, env = "FLOTILLA_DELIVERY_LISTEN", default_value = "0.0.0.0:7443")]
    pub delivery_listen: SocketAddr,

    /// The host name or IP address agents dial; it goes into the server certificate and the
    /// `flotilla-hub` ConfigMap (repeat for several names; the first is advertised).
    #[arg(long = "server-name", env = "FLOTILLA_SERVER_NAME", default_values_t = ["localhost".to_string()])]
    pub server_names: Vec<String>,

    /// Address of the HTTP listener: the dashboard (`/`) and its JSON API (`/api/v1/…`),
    /// `/healthz`, `/readyz`, Prometheus metrics (`/metrics`) and the Git webhook receiver.
    #[arg(long, env = "FLOTILLA_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: SocketAddr,

    /// File holding the secret GitHub signs push events with (`/hooks/github`; disabled
    /// without it).
    #[arg(long, env = "FLOTILLA_GITHUB_WEBHOOK_SECRET_FILE")]
    pub github_webhook_secret_file: Option<PathBuf>,

    /// File holding the token GitLab sends with push events (`/hooks/gitlab`; disabled without
    /// it).
    #[arg(long, env = "FLOTILLA_GITLAB_WEBHOOK_TOKEN_FILE")]
    pub gitlab_webhook_token_file: Option<PathBuf>,

    /// Failure and recovery notifications: a YAML file of providers (see docs/hub.md).
    #[arg(long, env = "FLOTILLA_NOTIFICATIONS")]
    pub notifications: Option<PathBuf>,

    /// Run only while holding the `flotilla-hub` Lease in the hub's namespace, so two replicas
    /// never both write; a replica that loses the Lease exits (and is restarted to wait).
    #[arg(long, env = "FLOTILLA_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// This replica's identity in the Lease (default: `POD_NAME`, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Where fetched repositories are cached.
    #[arg(
        long,
        env = "FLOTILLA_CACHE_DIR",
        default_value = "/var/cache/flotilla"
    )]
    pub cache_dir: PathBuf,

    /// The `helm` binary that renders `HelmRelease` charts (`helm template`) and pulls charts
    /// from OCI registries.
    #[arg(long, env = "FLOTILLA_HELM_BINARY", default_value = "helm")]
    pub helm_binary: PathBuf,

    /// Kubernetes version charts are rendered for (`helm template --kube-version`) unless a
    /// `HelmRelease` sets `spec.kubeVersion`.
    #[arg(long, env = "FLOTILLA_HELM_KUBE_VERSION", default_value = crate::helm::DEFAULT_KUBE_VERSION)]
    pub helm_kube_version: String,

    #[command(flatten)]
    pub log: flotilla_telemetry::LogArgs,

    #[command(flatten)]
    pub otlp: flotilla_telemetry::OtlpArgs,
}

impl Args {
    /// Runs the hub until SIGINT or SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        // Flushes the spans not yet exported when the hub returns.
        let _traces = self.log.init_with_traces(&self.otlp, "flotilla-hub")?;
        let client = crate::kube_client(self.kubeconfig.as_deref()).await?;
        let version = client
            .apiserver_version()
            .await
            .context("reaching the management cluster's API server")?;
        info!(version = %crate::VERSION, kubernetes = %version.git_version, "hub starting");
        let ns =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}});
        Api::<Namespace>::all(client.clone())
            .patch(
                &self.namespace,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(&ns),
            )
            .await
            .with_context(|| format!("creating the hub's namespace {}", self.namespace))?;

        let shutdown = CancellationToken::new();
        let mut leading = None;
        if self.leader_elect {
            let identity = self.identity.clone().unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "hub".into());
                format!("{host}-{}", std::process::id())
            });
            let elector = LeaderElector::new(
                client.clone(),
                LeaseConfig::new(&self.namespace, "flotilla-hub", &identity),
            )?;
            let leadership = elector.run(shutdown.clone());
            let mut rx = leadership.is_leader.clone();
            info!(%identity, "waiting to lead (Lease flotilla-hub)");
            tokio::select! {
                r = rx.wait_for(|leads| *leads) => { r.context("leader election stopped")?; }
                _ = shutdown_signal() => {
                    shutdown.cancel();
                    return Ok(());
                }
            }
            info!(%identity, "leading");
            leading = Some(leadership);
        }

        let ca = crate::state::load_or_create_ca(&client, &self.namespace).await?;
        let signing_key =
            crate::state::load_or_create_signing_key(&client, &self.namespace).await?;

        let trigger = Arc::new(Notify::new());
        let stores = Stores::start(
            &client,
            self.watch_namespace.as_deref(),
            trigger.clone(),
            shutdown.clone(),
        );
        let registry = Arc::new(KubeRegistry::new(
            client.clone(),
            self.namespace.clone(),
            stores.clusters.clone(),
        ));
        let mut server_names = self.server_names.clone();
        for n in ["localhost", "127.0.0.1"] {
            if !server_names.iter().any(|s| s == n) {
                server_names.push(n.to_owned());
            }
        }
        let hub = Hub::new(
            registry.clone(),
            Arc::new(ca),
            signing_key,
            delivery::Config {
                server_names,
                ..delivery::Config::default()
            },
        )?;

        let reg = TcpListener::bind(self.registration_listen)
            .await
            .with_context(|| {
                format!(
                    "binding the registration listener {}",
                    self.registration_listen
                )
            })?;
        let del = TcpListener::bind(self.delivery_listen)
            .await
            .with_context(|| format!("binding the delivery listener {}", self.delivery_listen))?;
        let advertised = self
            .server_names
            .first()
            .cloned()
            .unwrap_or_else(|| "localhost".into());
        let reg_url = format!("https://{advertised}:{}", reg.local_addr()?.port());
        let del_url = format!("https://{advertised}:{}", del.local_addr()?.port());
        crate::state::publish_hub_info(&client, &self.namespace, hub.ca_pem(), &reg_url, &del_url)
            .await?;
        info!(registration = %reg_url, delivery = %del_url, "serving agents");
        let serving = {
            let hub = hub.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { hub.serve(reg, del, stop.cancelled_owned()).await })
        };

        std::fs::create_dir_all(&self.cache_dir).with_context(|| {
            format!("creating the cache directory {}", self.cache_dir.display())
        })?;
        let cache = Arc::new(GitCache::new(&self.cache_dir)?);
        let dashboard =
            crate::dashboard::Dashboard::new(stores.clone(), hub.clone(), shutdown.clone());
        let metrics = crate::metrics::router(hub.clone());
        let controller = Controller::new(
            client,
            stores,
            registry,
            hub,
            cache,
            trigger,
            controller::Config::default(),
        );
        let mut controller = controller;
        controller.set_helm(crate::helm::HelmConfig {
            binary: self.helm_binary.clone(),
            kube_version: self.helm_kube_version.clone(),
            cache: self.cache_dir.join("charts"),
        });
        if let Some(path) = &self.notifications {
            let config = crate::notify::NotifyConfig::load(path)?;
            controller.set_notifier(crate::notify::Notifier::new(config));
        }
        let pushes = controller.push_sender();
        let running = tokio::spawn(controller.run(shutdown.clone()));
        let webhooks = crate::webhook::WebhookConfig::from_files(
            self.github_webhook_secret_file.as_deref(),
            self.gitlab_webhook_token_file.as_deref(),
        )?;
        let on_push: crate::webhook::OnPush = Arc::new(move |event: crate::webhook::PushEvent| {
            let _ = pushes.send(event.repository_urls);
        });

        let http = TcpListener::bind(self.http_listen)
            .await
            .with_context(|| format!("binding the HTTP listener {}", self.http_listen))?;
        info!(address = %http.local_addr()?, dashboard = %format!("http://{}/", http.local_addr()?), "serving HTTP");
        let router = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route("/readyz", axum::routing::get(|| async { "ok\n" }))
            .merge(crate::webhook::router(webhooks, on_push))
            .merge(dashboard.router())
            .merge(metrics);
        let http_task = {
            let stop = shutdown.clone();
            tokio::spawn(async move {
                axum::serve(http, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            })
        };

        let lost = async {
            match &leading {
                Some(l) => {
                    let mut rx = l.is_leader.clone();
                    let _ = rx.wait_for(|leads| !*leads).await;
                }
                None => std::future::pending().await,
            }
        };
        let lost_leadership = tokio::select! {
            _ = shutdown_signal() => false,
            _ = lost => true,
        };
        info!("hub stopping");
        shutdown.cancel();
        let _ = running.await;
        let _ = http_task.await;
        serving.await.context("the delivery server task")??;
        if let Some(l) = leading {
            // Cancelled above: the elector releases the Lease so another replica takes over now.
            let _ = l.task.await;
        }
        if lost_leadership {
            anyhow::bail!("lost the flotilla-hub Lease: stopping so that only the leader writes");
        }
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
