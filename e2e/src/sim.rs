//! A simulated fleet for delivery tests and the fan-out benchmark: a real hub serving over
//! mTLS on loopback, and simulated agents that register, verify and acknowledge bundles with
//! the real agent connection code, without any Kubernetes.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use flotilla_agent::connect::{self, ApplyResult, BundleSink, HubEndpoint, ObjectResult};
use flotilla_agent::verify::VerifiedBundle;
use flotilla_hub::delivery::Hub;
use flotilla_hub::fleet::{self, BootstrapToken, ClusterState};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A hub serving its two listeners on 127.0.0.1.
#[derive(Debug)]
pub struct RunningHub {
    /// The hub.
    pub hub: Hub,
    /// Its registration listener (server-authenticated TLS).
    pub registration: HubEndpoint,
    /// Its delivery listener (mTLS).
    pub delivery: HubEndpoint,
    /// The two listener addresses, to restart on the same ports.
    pub addrs: (SocketAddr, SocketAddr),
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

fn endpoint(addr: SocketAddr, ca_pem: &str) -> HubEndpoint {
    HubEndpoint {
        url: format!("https://{addr}"),
        server_name: "localhost".into(),
        ca_pem: ca_pem.to_owned(),
    }
}

impl RunningHub {
    /// Serves `hub` on two fresh loopback ports.
    pub async fn start(hub: Hub) -> anyhow::Result<Self> {
        Self::start_at(hub, "127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?).await
    }

    /// Serves `hub` on the given addresses (e.g. those of a stopped hub, to restart it).
    pub async fn start_at(
        hub: Hub,
        registration: SocketAddr,
        delivery: SocketAddr,
    ) -> anyhow::Result<Self> {
        let reg = TcpListener::bind(registration)
            .await
            .context("binding the registration listener")?;
        let del = TcpListener::bind(delivery)
            .await
            .context("binding the delivery listener")?;
        let addrs = (reg.local_addr()?, del.local_addr()?);
        let stop = CancellationToken::new();
        let serving = hub.clone();
        let signal = stop.clone();
        let task = tokio::spawn(async move {
            serving
                .serve(reg, del, signal.cancelled_owned())
                .await
                .context("serving the hub")
        });
        Ok(Self {
            registration: endpoint(addrs.0, hub.ca_pem()),
            delivery: endpoint(addrs.1, hub.ca_pem()),
            hub,
            addrs,
            stop,
            task,
        })
    }

    /// Stops serving and closes every stream.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("hub task panicked")?
    }

    /// Creates an accepted cluster and a bootstrap token for it.
    pub async fn accepted_cluster(&self, cluster: &str) -> anyhow::Result<BootstrapToken> {
        let registry = self.hub.registry();
        registry.set_state(cluster, ClusterState::Accepted).await;
        Ok(fleet::issue_token(registry.as_ref(), cluster, Duration::from_secs(600)).await?)
    }

    /// Creates an accepted cluster and registers an agent for it.
    pub async fn register(&self, cluster: &str) -> anyhow::Result<connect::Registration> {
        let token = self.accepted_cluster(cluster).await?;
        Ok(connect::register(&self.registration, token.expose(), "sim").await?)
    }

    /// Agent settings for this hub, with quick reconnection for tests.
    pub fn agent_config(&self) -> connect::Config {
        let mut config = connect::Config::new(self.delivery.clone());
        config.backoff_initial = Duration::from_millis(50);
        config.backoff_max = Duration::from_secs(1);
        config
    }
}

/// A sink that records what it is given and acknowledges it as applied, with one result per
/// object (kind, namespace, name read from the payload).
#[derive(Debug)]
pub struct AckingSink {
    applied: Mutex<Vec<VerifiedBundle>>,
    keep_applied: bool,
    applied_at: Mutex<Option<std::time::Instant>>,
    rejected: Mutex<Vec<String>>,
    latest: watch::Sender<u64>,
}

impl Default for AckingSink {
    fn default() -> Self {
        Self {
            applied: Mutex::default(),
            keep_applied: true,
            applied_at: Mutex::default(),
            rejected: Mutex::default(),
            latest: watch::channel(0).0,
        }
    }
}

impl AckingSink {
    /// A sink that keeps only the newest sequence and when it was applied, not the bundles: for
    /// benchmarks with thousands of agents.
    pub fn counting() -> Self {
        Self {
            keep_applied: false,
            ..Self::default()
        }
    }

    /// When the newest bundle was verified and handed to this sink.
    pub fn applied_at(&self) -> Option<std::time::Instant> {
        *self.applied_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bundles applied so far, in order.
    pub fn applied(&self) -> Vec<VerifiedBundle> {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Verification errors seen so far.
    pub fn rejected(&self) -> Vec<String> {
        self.rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Watches the sequence of the newest bundle applied.
    pub fn latest(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Waits until a bundle with `sequence` or newer was applied.
    pub async fn wait_for(&self, sequence: u64, timeout: Duration) -> anyhow::Result<()> {
        let mut rx = self.latest();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s >= sequence))
            .await
            .with_context(|| format!("waiting {timeout:?} for sequence {sequence}"))?
            .context("sink dropped")?;
        Ok(())
    }
}

impl BundleSink for AckingSink {
    async fn apply(&self, bundle: VerifiedBundle) -> ApplyResult {
        let objects = match bundle.objects() {
            Ok(objects) => objects,
            Err(e) => {
                return ApplyResult {
                    applied: false,
                    message: format!("payload is not objects and options: {e}"),
                    objects: Vec::new(),
                };
            }
        };
        let field = |o: &serde_json::Value, path: &[&str]| {
            path.iter()
                .try_fold(o, |v, k| v.get(k))
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let results = objects
            .iter()
            .map(|o| ObjectResult {
                api_version: field(o, &["apiVersion"]),
                kind: field(o, &["kind"]),
                namespace: field(o, &["metadata", "namespace"]),
                name: field(o, &["metadata", "name"]),
                ok: true,
                message: String::new(),
            })
            .collect();
        let sequence = bundle.meta.sequence;
        if self.keep_applied {
            self.applied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(bundle);
        }
        *self.applied_at.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::time::Instant::now());
        self.latest.send_modify(|s| *s = (*s).max(sequence));
        ApplyResult {
            applied: true,
            message: format!(
                "{} objects acknowledged by the simulated agent",
                objects.len()
            ),
            objects: results,
        }
    }

    fn rejected(&self, error: &flotilla_agent::verify::Error) {
        self.rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(error.to_string());
    }
}

/// `count` ConfigMaps for `cluster`, about 300 bytes each, as a renderer would produce them.
pub fn objects(cluster: &str, revision: &str, count: usize) -> Vec<serde_json::Value> {
    (0..count)
        .map(|i| {
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": format!("app-{i}"),
                    "namespace": "apps",
                    "labels": {"app.kubernetes.io/managed-by": "flotilla", "cluster": cluster},
                },
                "data": {
                    "revision": revision,
                    "settings.yaml": format!("replicas: {}\nimage: registry.example/app-{i}:{revision}\nlog: info\n", i % 5 + 1),
                },
            })
        })
        .collect()
}
