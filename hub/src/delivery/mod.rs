//! Delivery: the hub's gRPC server. It registers agents ([`registration`]), holds the latest
//! signed bundle per (cluster, delivery) and streams it to each connected agent over mTLS
//! ([`stream`]).
//!
//! Two listeners, both TLS, neither plaintext: the registration listener authenticates only
//! the hub (an agent has no certificate yet); the delivery listener requires a client
//! certificate chained to the hub CA and takes the agent's cluster from it.
//!
//! # What agents say back
//!
//! For the hub's controller (status of `Cluster` and `Delivery`), the dashboard and metrics:
//!
//! - [`Hub::ack`]: the last [`AckRecord`] per (cluster, delivery) — which sequence was applied,
//!   failed or rejected, with per-object results.
//! - [`Hub::report`]: the last [`ReportRecord`] per (cluster, delivery) — health, drifted and
//!   inventory object counts, a message in the user's words; [`Hub::reports`] lists a cluster's.
//! - [`Hub::agent_info`]: per cluster, whether its agent is connected, its version, when it was
//!   last heard from (any message, heartbeats included) and bundles sent on the current stream;
//!   [`Hub::agents`] lists them all.
//! - [`Hub::subscribe_changes`]: a broadcast of [`Change`]s — connected, disconnected, acked,
//!   reported — each naming what changed, not carrying it: read the state with the getters
//!   above. The state is kept whatever the receivers do, so a receiver that lags
//!   (`RecvError::Lagged`) recovers by reading [`Hub::agents`], [`Hub::reports`] and
//!   [`Hub::ack`] again.

pub mod ca;
mod registration;
mod stream;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use flotilla_bundle::{BundleMeta, KeyId, SignedBundle, SignedKeySet, SigningKey};
use flotilla_proto::pb;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{info, warn};

use crate::bundle::KeyRing;
use crate::fleet::{ClusterState, Event, Registry};
pub use ca::{HubCa, validate_cluster_id};
pub use flotilla_bundle::DeliveryOptions;
use stream::AgentConn;

/// A signed bundle as the hub holds it. Its payload is compressed for the wire once, on its
/// first send to an agent that accepts zstd, however many agents or reconnects it goes to.
#[derive(Debug)]
pub(crate) struct Sealed {
    bundle: Arc<SignedBundle>,
    zstd: OnceLock<Option<Bytes>>,
    /// W3C trace context of the span that published the bundle, when traces are exported: the
    /// parent of the send spans (and through them of the agent's apply). Not signed.
    traceparent: Option<String>,
}

impl Sealed {
    fn new(bundle: SignedBundle, traceparent: Option<String>) -> Self {
        Self {
            bundle: Arc::new(bundle),
            zstd: OnceLock::new(),
            traceparent,
        }
    }

    /// The trace context of the span that published the bundle, if traces are exported.
    pub(crate) fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// The payload as one zstd frame, or `None` when compressing does not make it smaller.
    pub(crate) fn zstd(&self) -> Option<&Bytes> {
        self.zstd
            .get_or_init(|| flotilla_proto::convert::compress_payload(&self.bundle.payload))
            .as_ref()
    }
}

impl std::ops::Deref for Sealed {
    type Target = SignedBundle;

    fn deref(&self) -> &SignedBundle {
        &self.bundle
    }
}

/// Errors of the delivery server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Issuing the hub's server certificate failed.
    #[error("issuing the hub server certificate")]
    ServerCert(#[source] ca::Error),
    /// A listener could not be configured or failed while serving.
    #[error("serving the {listener} listener")]
    Serve {
        /// Which listener.
        listener: &'static str,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// A key rollover step was refused.
    #[error("rolling over signing keys")]
    Keys(#[source] crate::bundle::Error),
    /// The cluster id cannot be used.
    #[error("publishing to cluster {cluster}")]
    Cluster {
        /// The cluster.
        cluster: String,
        /// Why.
        #[source]
        source: ca::Error,
    },
}

/// A convenient result type for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Tunables of the delivery server.
#[derive(Clone, Debug)]
pub struct Config {
    /// DNS names and IP addresses the hub's server certificate is valid for.
    pub server_names: Vec<String>,
    /// Lifetime of the client certificates issued to agents.
    pub client_cert_ttl: Duration,
    /// Lifetime of a signed bundle.
    pub bundle_ttl: Duration,
    /// Interval of heartbeats on the stream; three missed ones end it.
    pub heartbeat_interval: Duration,
    /// Largest payload slice per gRPC message.
    pub chunk_size: usize,
    /// How long an agent has to send `Hello` after opening the stream.
    pub hello_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            client_cert_ttl: Duration::from_secs(30 * 24 * 3600),
            bundle_ttl: Duration::from_secs(7 * 24 * 3600),
            heartbeat_interval: Duration::from_secs(15),
            chunk_size: flotilla_proto::convert::DEFAULT_CHUNK_SIZE,
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// What an agent last acknowledged for one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckRecord {
    /// The bundle's sequence.
    pub sequence: u64,
    /// Applied, failed or rejected.
    pub outcome: AckOutcome,
    /// The agent's message (why it failed or was rejected).
    pub message: String,
    /// Per-object results: (kind/namespace/name, ok). Empty after a summary ack (every object
    /// applied, none listed); [`Hub::ack_with_objects`] then lists them from the bundle.
    pub objects: Vec<(String, bool)>,
    /// How many objects the acknowledged bundle had: `objects.len()`, or the count a summary
    /// ack gave.
    pub object_count: u32,
}

/// The outcome an agent reported for a bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// Verified and applied.
    Applied,
    /// Verified, applying failed.
    Failed,
    /// Refused by verification: nothing applied.
    Rejected,
}

/// A delivery's health as its agent last reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Health {
    /// Applied and every object ready.
    Healthy,
    /// Applied, some objects not ready yet.
    Progressing,
    /// Applying failed, or an object will not become ready without a change.
    Degraded,
    /// The agent does not know yet.
    #[default]
    Unknown,
}

/// What an agent last reported for one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRecord {
    /// The sequence of the bundle the delivery runs.
    pub sequence: u64,
    /// Its health.
    pub health: Health,
    /// Objects drifted now (changed behind flotilla's back, not put back yet or report-only).
    pub drifted_objects: u32,
    /// Objects in the delivery's inventory.
    pub inventory_objects: u32,
    /// Why, in the user's words, e.g. `Deployment/apps/web: 0 of 2 replicas available`.
    pub message: String,
    /// The drifted objects as `Kind/namespace/name` (at most 20).
    pub drifted: Vec<String>,
    /// When the hub received it.
    pub received_at: SystemTime,
}

/// A cluster's agent as the hub sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    /// True while its stream is open.
    pub connected: bool,
    /// The version its `Hello` named.
    pub agent_version: String,
    /// When it last sent anything (heartbeats included).
    pub last_seen: SystemTime,
    /// When its current (or last) stream opened.
    pub connected_at: SystemTime,
    /// Bundles sent on its current (or last) stream. Zero after a reconnection means the agent
    /// already held everything.
    pub bundles_sent: u64,
}

/// Something agents changed; read the new state with [`Hub::agent_info`], [`Hub::ack`] and
/// [`Hub::report`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The cluster's agent opened a stream.
    Connected {
        /// The cluster.
        cluster: String,
    },
    /// The cluster's agent has no open stream any more.
    Disconnected {
        /// The cluster.
        cluster: String,
    },
    /// The agent acknowledged a bundle of the delivery.
    Acked {
        /// The cluster.
        cluster: String,
        /// The delivery.
        delivery: String,
    },
    /// The agent reported on the delivery.
    Reported {
        /// The cluster.
        cluster: String,
        /// The delivery.
        delivery: String,
    },
}

/// How many changes a slow subscriber may fall behind before it lags.
const CHANGES_CAPACITY: usize = 4096;

/// The hub's delivery side; cheap to clone.
#[derive(Clone, Debug)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    metrics: crate::metrics::HubMetrics,
    registry: Arc<dyn Registry>,
    ca: Arc<HubCa>,
    keys: RwLock<KeyRing>,
    config: Config,
    server_identity: ca::PemIdentity,
    /// Latest signed bundle per cluster, per delivery.
    store: DashMap<String, BTreeMap<String, Arc<Sealed>>>,
    /// The open stream per cluster.
    agents: DashMap<String, Arc<AgentConn>>,
    acks: DashMap<(String, String), AckRecord>,
    ack_changed: Notify,
    /// Latest report per (cluster, delivery).
    reports: DashMap<(String, String), ReportRecord>,
    /// Per cluster: its agent's connection.
    agent_info: DashMap<String, AgentInfo>,
    changes: broadcast::Sender<Change>,
    next_conn_id: std::sync::atomic::AtomicU64,
    /// Last sequence allocated per (cluster, delivery).
    sequences: DashMap<(String, String), u64>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Hub {
    /// A hub with its CA, registry and first signing key. Issues its server certificate.
    pub fn new(
        registry: Arc<dyn Registry>,
        ca: Arc<HubCa>,
        signing_key: SigningKey,
        config: Config,
    ) -> Result<Self> {
        let server_identity = ca
            .issue_server(&config.server_names, Duration::from_secs(365 * 24 * 3600))
            .map_err(Error::ServerCert)?;
        Ok(Self {
            inner: Arc::new(Inner {
                metrics: crate::metrics::HubMetrics::new(),
                registry,
                ca,
                keys: RwLock::new(KeyRing::new(signing_key)),
                config,
                server_identity,
                store: DashMap::new(),
                agents: DashMap::new(),
                acks: DashMap::new(),
                ack_changed: Notify::new(),
                reports: DashMap::new(),
                agent_info: DashMap::new(),
                changes: broadcast::channel(CHANGES_CAPACITY).0,
                next_conn_id: 0.into(),
                sequences: DashMap::new(),
            }),
        })
    }

    /// This hub's Prometheus metrics.
    pub fn metrics(&self) -> &crate::metrics::HubMetrics {
        &self.inner.metrics
    }

    /// The registry this hub uses.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.inner.registry
    }

    /// The CA certificate agents must trust, PEM.
    pub fn ca_pem(&self) -> &str {
        self.inner.ca.cert_pem()
    }

    fn keys(&self) -> std::sync::RwLockReadGuard<'_, KeyRing> {
        self.inner.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn keys_mut(&self) -> std::sync::RwLockWriteGuard<'_, KeyRing> {
        self.inner.keys.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The key set agents should trust now.
    pub fn key_set(&self) -> SignedKeySet {
        self.keys().key_set().clone()
    }

    /// Publishes a rendered object set to (cluster, delivery) with default [`DeliveryOptions`]:
    /// encodes, signs with a sequence newer than any before, stores it as the latest and offers
    /// it to the cluster's agent if connected. Never waits on the agent. Returns the sequence.
    pub fn publish(
        &self,
        cluster: &str,
        delivery: &str,
        revision: &str,
        objects: &[Value],
    ) -> Result<u64> {
        self.publish_with_options(
            cluster,
            delivery,
            revision,
            objects,
            &DeliveryOptions::default(),
        )
    }

    /// [`Hub::publish`] with the delivery's apply settings (prune, allowEmpty, conflicts, drift
    /// mode, ignore rules), signed into the bundle with the objects.
    pub fn publish_with_options(
        &self,
        cluster: &str,
        delivery: &str,
        revision: &str,
        objects: &[Value],
        options: &DeliveryOptions,
    ) -> Result<u64> {
        self.publish_encoded(
            cluster,
            delivery,
            revision,
            crate::bundle::encode_with_options(objects, options),
        )
    }

    /// [`Hub::publish`] for a payload already in canonical encoding
    /// ([`flotilla_bundle::encode_payload`]).
    pub fn publish_encoded(
        &self,
        cluster: &str,
        delivery: &str,
        revision: &str,
        payload: Bytes,
    ) -> Result<u64> {
        ca::validate_cluster_id(cluster).map_err(|source| Error::Cluster {
            cluster: cluster.to_owned(),
            source,
        })?;
        let sequence = {
            let mut last = self
                .inner
                .sequences
                .entry((cluster.to_owned(), delivery.to_owned()))
                .or_insert(0);
            // Wall-clock milliseconds keep sequences increasing across hub restarts without a
            // durable counter; +1 keeps them strictly increasing within one millisecond.
            *last = (*last + 1).max(unix_millis());
            *last
        };
        self.inner.metrics.published(delivery, payload.len());
        self.seal_and_offer(cluster, delivery, revision, payload, sequence);
        Ok(sequence)
    }

    /// After a hub restart: re-seals a payload the cluster was already sent, under the sequence
    /// it was sent with, so an agent that holds it is not sent it again (its `Hello` names that
    /// sequence) while one that does not still gets it. Later publishes get higher sequences.
    pub fn restore_encoded(
        &self,
        cluster: &str,
        delivery: &str,
        revision: &str,
        payload: Bytes,
        sequence: u64,
    ) -> Result<()> {
        ca::validate_cluster_id(cluster).map_err(|source| Error::Cluster {
            cluster: cluster.to_owned(),
            source,
        })?;
        {
            let mut last = self
                .inner
                .sequences
                .entry((cluster.to_owned(), delivery.to_owned()))
                .or_insert(0);
            *last = (*last).max(sequence);
        }
        self.seal_and_offer(cluster, delivery, revision, payload, sequence);
        Ok(())
    }

    fn seal_and_offer(
        &self,
        cluster: &str,
        delivery: &str,
        revision: &str,
        payload: Bytes,
        sequence: u64,
    ) {
        let meta = BundleMeta {
            cluster: cluster.to_owned(),
            delivery: delivery.to_owned(),
            revision: revision.to_owned(),
            sequence,
            expires_at: unix_now() + self.inner.config.bundle_ttl.as_secs(),
        };
        // `None`, without even looking up the current span, unless traces are exported.
        let traceparent = flotilla_telemetry::traces_enabled()
            .then(|| flotilla_telemetry::traceparent(&tracing::Span::current()))
            .flatten();
        let bundle = Arc::new(Sealed::new(self.keys().seal(meta, payload), traceparent));
        {
            let mut per_cluster = self.inner.store.entry(cluster.to_owned()).or_default();
            let slot = per_cluster
                .entry(delivery.to_owned())
                .or_insert(bundle.clone());
            // A concurrent publish may have stored a newer one already.
            if slot.header.meta.sequence < sequence {
                *slot = bundle.clone();
            }
        }
        if let Some(conn) = self.inner.agents.get(cluster) {
            conn.offer_bundle(bundle);
        }
    }

    /// The latest signed bundle for (cluster, delivery).
    pub fn latest(&self, cluster: &str, delivery: &str) -> Option<Arc<SignedBundle>> {
        self.inner
            .store
            .get(cluster)
            .and_then(|m| m.get(delivery).map(|s| s.bundle.clone()))
    }

    /// Asks a connected agent to reconcile now (all deliveries when `delivery` is empty).
    pub fn reconcile_now(&self, cluster: &str, delivery: &str) -> bool {
        match self.inner.agents.get(cluster) {
            Some(conn) => {
                conn.offer_reconcile(delivery);
                true
            }
            None => false,
        }
    }

    fn broadcast_key_set(&self, set: SignedKeySet) {
        for conn in self.inner.agents.iter() {
            conn.offer_key_set(set.clone());
        }
    }

    /// Rollover step 1: trusts a new key alongside the active one and sends the new key set
    /// (signed by the active key) to every connected agent.
    pub fn add_signing_key(&self, key: SigningKey) {
        let set = self.keys_mut().add(key).clone();
        info!(sequence = set.key_set.sequence, "signing key added");
        self.broadcast_key_set(set);
    }

    /// Rollover step 2: signs with a trusted key from now on.
    pub fn activate_signing_key(&self, id: &KeyId) -> Result<()> {
        self.keys_mut().activate(id).map_err(Error::Keys)?;
        info!(key = %id, "signing key activated");
        Ok(())
    }

    /// Rollover step 3: stops trusting a key that no longer signs.
    pub fn retire_signing_key(&self, id: &KeyId) -> Result<()> {
        let set = self.keys_mut().retire(id).map_err(Error::Keys)?.clone();
        info!(key = %id, "signing key retired");
        self.broadcast_key_set(set);
        Ok(())
    }

    /// Revokes a cluster: its stream closes at once and it cannot connect or register again.
    pub async fn revoke(&self, cluster: &str) {
        self.inner
            .registry
            .set_state(cluster, ClusterState::Revoked)
            .await;
    }

    /// True while the cluster's agent has an open stream.
    pub fn is_connected(&self, cluster: &str) -> bool {
        self.inner.agents.contains_key(cluster)
    }

    /// How many agents have an open stream.
    pub fn connected_count(&self) -> usize {
        self.inner.agents.len()
    }

    /// Bundles queued for connected agents and not yet being sent: (sum over agents, deepest
    /// queue). Walks the agents (for a scrape), so publishing counts nothing.
    pub fn agent_queue_depths(&self) -> (usize, usize) {
        self.inner.agents.iter().fold((0, 0), |(total, max), conn| {
            let n = conn.queued_bundles();
            (total + n, max.max(n))
        })
    }

    /// What the cluster's agent last acknowledged for a delivery.
    pub fn ack(&self, cluster: &str, delivery: &str) -> Option<AckRecord> {
        self.inner
            .acks
            .get(&(cluster.to_owned(), delivery.to_owned()))
            .map(|a| a.clone())
    }

    /// [`Hub::ack`], with a summary ack's objects listed from the bundle it acknowledged (all
    /// applied), as long as the hub still holds that bundle. For pages that show the objects;
    /// [`Hub::ack`] is the cheap one.
    pub fn ack_with_objects(&self, cluster: &str, delivery: &str) -> Option<AckRecord> {
        let mut ack = self.ack(cluster, delivery)?;
        if ack.objects.is_empty() && ack.object_count > 0 {
            let bundle = self
                .inner
                .store
                .get(cluster)
                .and_then(|b| b.get(delivery).cloned())
                .filter(|b| b.header.meta.sequence == ack.sequence);
            if let Some(payload) =
                bundle.and_then(|b| flotilla_bundle::decode_payload(&b.payload).ok())
            {
                ack.objects = payload
                    .objects
                    .iter()
                    .map(|o| (object_id(o), true))
                    .collect();
            }
        }
        Some(ack)
    }

    /// The sequence the cluster's agent last acknowledged for a delivery, without copying the
    /// per-object results (cheap enough to poll across thousands of clusters).
    pub fn acked_sequence(&self, cluster: &str, delivery: &str) -> Option<u64> {
        self.inner
            .acks
            .get(&(cluster.to_owned(), delivery.to_owned()))
            .map(|a| a.sequence)
    }

    /// What the cluster's agent last reported for a delivery.
    pub fn report(&self, cluster: &str, delivery: &str) -> Option<ReportRecord> {
        self.inner
            .reports
            .get(&(cluster.to_owned(), delivery.to_owned()))
            .map(|r| r.clone())
    }

    /// Every delivery's last report from the cluster's agent, by delivery.
    pub fn reports(&self, cluster: &str) -> BTreeMap<String, ReportRecord> {
        self.inner
            .reports
            .iter()
            .filter(|e| e.key().0 == cluster)
            .map(|e| (e.key().1.clone(), e.value().clone()))
            .collect()
    }

    /// The cluster's agent as last seen, if it ever connected to this hub.
    pub fn agent_info(&self, cluster: &str) -> Option<AgentInfo> {
        self.inner.agent_info.get(cluster).map(|a| a.clone())
    }

    /// Every agent that connected to this hub, by cluster.
    pub fn agents(&self) -> BTreeMap<String, AgentInfo> {
        self.inner
            .agent_info
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// Changes from now on. See the module documentation for recovering from a lag.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    fn changed(&self, change: Change) {
        // No subscriber is fine: the state is kept in the maps.
        let _ = self.inner.changes.send(change);
    }

    /// Waits until the agent acknowledged `sequence` or newer for the delivery, or `timeout`.
    pub async fn wait_for_ack(
        &self,
        cluster: &str,
        delivery: &str,
        sequence: u64,
        timeout: Duration,
    ) -> Option<AckRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.inner.ack_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(a) = self
                .ack(cluster, delivery)
                .filter(|a| a.sequence >= sequence)
            {
                return Some(a);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// Serves registration on `registration` (TLS, server authenticated) and registration plus
    /// delivery on `delivery` (mTLS) until `shutdown` resolves.
    pub async fn serve(
        &self,
        registration: TcpListener,
        delivery: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let identity = Identity::from_pem(
            &self.inner.server_identity.cert_pem,
            &self.inner.server_identity.key_pem,
        );
        let ca = Certificate::from_pem(self.inner.ca.cert_pem());
        let stop = tokio_util::sync::CancellationToken::new();
        let watcher = self.spawn_revocation_watcher(stop.clone());

        let reg_tls = ServerTlsConfig::new().identity(identity.clone());
        let mtls = ServerTlsConfig::new().identity(identity).client_ca_root(ca);
        let registration_svc = || {
            pb::registration_server::RegistrationServer::new(registration::Service {
                hub: self.clone(),
            })
            .accept_compressed(CompressionEncoding::Zstd)
            .accept_compressed(CompressionEncoding::Gzip)
        };
        // No per-message compression towards agents: bundle payloads are compressed once per
        // bundle (`PayloadEncoding::Zstd`) for agents that say they accept it, and the rest of
        // what the hub sends is a few bytes.
        let delivery_svc =
            pb::delivery_server::DeliveryServer::new(stream::Service { hub: self.clone() })
                .accept_compressed(CompressionEncoding::Zstd)
                .accept_compressed(CompressionEncoding::Gzip);

        let reg_server = Server::builder()
            .tls_config(reg_tls)
            .map_err(|source| Error::Serve {
                listener: "registration",
                source,
            })?
            .add_service(registration_svc())
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(registration),
                stop.clone().cancelled_owned(),
            );
        let mtls_server = Server::builder()
            .tls_config(mtls)
            .map_err(|source| Error::Serve {
                listener: "delivery",
                source,
            })?
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(registration_svc())
            .add_service(delivery_svc)
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(delivery),
                stop.clone().cancelled_owned(),
            );
        let closer = self.clone();
        let stopper = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            // Streams are long-lived: end them so the servers can finish.
            closer.close_all("hub shutting down");
            stopper.cancel();
        });
        let (a, b) = tokio::join!(reg_server, mtls_server);
        watcher.abort();
        a.map_err(|source| Error::Serve {
            listener: "registration",
            source,
        })?;
        b.map_err(|source| Error::Serve {
            listener: "delivery",
            source,
        })
    }

    fn close_all(&self, reason: &'static str) {
        for conn in self.inner.agents.iter() {
            conn.close(tonic::Status::unavailable(reason));
        }
    }

    fn spawn_revocation_watcher(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let mut events = self.inner.registry.subscribe();
        let hub = self.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    e = events.recv() => e,
                };
                match event {
                    Ok(Event::Revoked(cluster)) => {
                        if let Some((_, conn)) = hub.inner.agents.remove(&cluster) {
                            warn!(cluster = %cluster, "cluster revoked, closing its stream");
                            conn.close(tonic::Status::permission_denied(format!(
                                "cluster {cluster} is revoked"
                            )));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Missed events: re-check every connected cluster against the registry.
                        warn!(
                            missed = n,
                            "registry events lagged, re-checking connections"
                        );
                        let ids: Vec<String> =
                            hub.inner.agents.iter().map(|c| c.key().clone()).collect();
                        for id in ids {
                            if hub.inner.registry.state(&id).await != Some(ClusterState::Accepted)
                                && let Some((_, conn)) = hub.inner.agents.remove(&id)
                            {
                                conn.close(tonic::Status::permission_denied(format!(
                                    "cluster {id} is not accepted"
                                )));
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    }
}

/// `Kind/namespace/name`, or `Kind/name` for a cluster-scoped object, as acks name objects.
pub(crate) fn object_id(object: &Value) -> String {
    let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let kind = field(object, "kind");
    let meta = object.get("metadata").cloned().unwrap_or(Value::Null);
    let (namespace, name) = (field(&meta, "namespace"), field(&meta, "name"));
    if namespace.is_empty() {
        format!("{kind}/{name}")
    } else {
        format!("{kind}/{namespace}/{name}")
    }
}
