//! The agent's side of the hub connection: registration, the mTLS stream, verification of what
//! arrives, reconnection with exponential backoff and jitter, certificate renewal.
//!
//! What to do with a verified bundle is the [`BundleSink`]'s business: the real agent applies
//! it to the workload cluster; the simulated agent in `flotilla-e2e` acknowledges it. Nothing
//! reaches the sink that did not pass [`crate::verify`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flotilla_bundle::{SignedKeySet, TrustedKeys};
use flotilla_proto::{PROTOCOL_VERSION, check_compatible, convert, pb};
use rcgen::{CertificateParams, KeyPair};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{Instrument as _, debug, info, warn};

use crate::verify::{self, Verdict, VerifiedBundle, Verifier};

/// Errors of registering and talking to the hub.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hub address or TLS settings are unusable.
    #[error("configuring the connection to {url}")]
    Endpoint {
        /// The hub URL.
        url: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// Connecting (TCP, TLS handshake, HTTP/2) failed.
    #[error("connecting to {url}")]
    Connect {
        /// The hub URL.
        url: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The hub refused or ended a call.
    #[error("hub answered {}: {}", .0.code(), .0.message())]
    Status(#[source] Box<tonic::Status>),
    /// Generating the agent's key or CSR failed.
    #[error("generating the agent key and certificate request")]
    Key(#[source] rcgen::Error),
    /// The hub's answer is malformed.
    #[error("malformed answer from the hub")]
    Wire(#[source] convert::Error),
    /// The hub speaks an incompatible protocol.
    #[error(transparent)]
    Version(#[from] flotilla_proto::IncompatibleVersion),
    /// The hub's initial key set does not verify under its own keys.
    #[error("the hub's key set does not verify")]
    KeySet(#[source] flotilla_bundle::Error),
    /// The hub's stream went silent for three heartbeat intervals.
    #[error("no heartbeat from the hub for {0:?}")]
    HeartbeatTimeout(Duration),
    /// The stream ended before the hub said `Welcome`.
    #[error("the hub closed the stream before welcoming the agent")]
    NoWelcome,
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Self::Status(Box::new(s))
    }
}

impl Error {
    /// True when retrying cannot help: the hub revoked or does not know this cluster, or speaks
    /// another protocol. The operator must act (re-register, upgrade).
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Status(s) => matches!(
                s.code(),
                tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition
            ),
            Self::Version(_) => true,
            _ => false,
        }
    }
}

/// A convenient result type for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the hub is and which CA vouches for it.
#[derive(Clone, Debug)]
pub struct HubEndpoint {
    /// `https://host:port` of the listener.
    pub url: String,
    /// The name the hub's certificate must carry (`localhost`, `127.0.0.1`, a DNS name).
    pub server_name: String,
    /// The hub CA certificate, PEM (from the join instructions, then from registration).
    pub ca_pem: String,
}

/// The agent's client certificate and key. `Debug` hides the key.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The certificate, DER.
    pub cert_der: Bytes,
    /// The private key, PEM. It never leaves the agent.
    pub key_pem: String,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").finish_non_exhaustive()
    }
}

/// Wraps DER bytes in a PEM block.
pub(crate) fn der_to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl ClientIdentity {
    fn tonic_identity(&self) -> Identity {
        Identity::from_pem(der_to_pem("CERTIFICATE", &self.cert_der), &self.key_pem)
    }

    /// When the certificate stops being valid.
    pub fn not_after(&self) -> Option<SystemTime> {
        use x509_parser::prelude::{FromDer as _, X509Certificate};
        let (_, cert) = X509Certificate::from_der(&self.cert_der).ok()?;
        let secs = cert.validity().not_after.timestamp();
        Some(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
    }
}

/// What registration yields: enough to connect and verify.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The cluster the hub registered this agent as.
    pub cluster: String,
    /// The client certificate and key.
    pub identity: ClientIdentity,
    /// The hub CA, PEM.
    pub ca_pem: String,
    /// The bundle-signing keys to trust.
    pub key_set: SignedKeySet,
}

async fn channel(endpoint: &HubEndpoint, identity: Option<&ClientIdentity>) -> Result<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&endpoint.ca_pem))
        .domain_name(endpoint.server_name.clone());
    if let Some(id) = identity {
        tls = tls.identity(id.tonic_identity());
    }
    let url = endpoint.url.clone();
    Endpoint::from_shared(url.clone())
        .and_then(|e| e.tls_config(tls))
        .map_err(|source| Error::Endpoint {
            url: url.clone(),
            source,
        })?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|source| Error::Connect { url, source })
}

fn csr(key: &KeyPair) -> Result<Bytes> {
    let params = CertificateParams::default();
    let csr = params.serialize_request(key).map_err(Error::Key)?;
    Ok(Bytes::from(csr.der().to_vec()))
}

/// Registers with the hub: generates a key pair (kept here), sends a CSR with the bootstrap
/// token, and returns the certificate the hub issued for the token's cluster.
pub async fn register(
    endpoint: &HubEndpoint,
    bootstrap_token: &str,
    agent_version: &str,
) -> Result<Registration> {
    let key = KeyPair::generate().map_err(Error::Key)?;
    let channel = channel(endpoint, None).await?;
    let mut client = pb::registration_client::RegistrationClient::new(channel);
    let resp = client
        .register(pb::RegisterRequest {
            protocol: Some(PROTOCOL_VERSION),
            bootstrap_token: bootstrap_token.to_owned(),
            csr_der: csr(&key)?,
            agent_version: agent_version.to_owned(),
        })
        .await?
        .into_inner();
    check_compatible(resp.protocol.as_ref())?;
    let key_set =
        convert::key_set_from_pb(resp.key_set.ok_or(Error::Wire(convert::Error::Missing {
            message: "RegisterResponse",
            field: "key_set",
        }))?)
        .map_err(Error::Wire)?;
    // First contact: trust the set the CA-authenticated hub hands out, if it is self-consistent.
    key_set
        .verify(&TrustedKeys::new(key_set.key_set.keys.clone()))
        .map_err(Error::KeySet)?;
    info!(cluster = %resp.cluster_id, "registered with the hub");
    Ok(Registration {
        cluster: resp.cluster_id,
        identity: ClientIdentity {
            cert_der: resp.certificate_der,
            key_pem: key.serialize_pem(),
        },
        ca_pem: der_to_pem("CERTIFICATE", &resp.ca_certificate_der),
        key_set,
    })
}

/// One object's outcome, as reported in an ack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectResult {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// Namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Whether it was applied.
    pub ok: bool,
    /// Why not, when it was not.
    pub message: String,
}

/// What the sink did with a bundle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyResult {
    /// True when every object was applied.
    pub applied: bool,
    /// A summary, or why it failed.
    pub message: String,
    /// Per-object results.
    pub objects: Vec<ObjectResult>,
}

/// Receives verified bundles. Called with one bundle at a time, in stream order.
pub trait BundleSink: Send + Sync + 'static {
    /// Applies a verified, new bundle.
    fn apply(&self, bundle: VerifiedBundle) -> impl Future<Output = ApplyResult> + Send;
    /// Told about each bundle verification refused; nothing of it reaches [`BundleSink::apply`].
    fn rejected(&self, _error: &verify::Error) {}
}

/// Tunables of the agent's connection.
#[derive(Clone, Debug)]
pub struct Config {
    /// The hub's mTLS listener.
    pub hub: HubEndpoint,
    /// First reconnection delay.
    pub backoff_initial: Duration,
    /// Largest reconnection delay.
    pub backoff_max: Duration,
    /// Heartbeat interval used until the hub's `Welcome` says otherwise.
    pub heartbeat_interval: Duration,
    /// Renew the certificate once this fraction of its remaining lifetime has passed.
    pub renew_fraction: f64,
}

impl Config {
    /// Defaults for a hub at `hub`.
    pub fn new(hub: HubEndpoint) -> Self {
        Self {
            hub,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(15),
            renew_fraction: 0.5,
        }
    }
}

/// The delay before reconnection attempt `attempt` (1-based): exponential, capped, with full
/// jitter so that thousands of agents do not reconnect in step after a hub restart.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(max);
    cap.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// What a caller can observe of a running agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Streams opened and welcomed so far.
    pub sessions: u64,
    /// Bundles applied (new sequences) so far.
    pub applied: u64,
    /// Bundles refused by verification so far.
    pub rejected: u64,
    /// Certificates renewed so far.
    pub renewals: u64,
    /// Newer key sets adopted so far.
    pub key_sets: u64,
    /// True while a stream to the hub is open and welcomed.
    pub connected: bool,
}

/// The health of a delivery, as reported to the hub.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Health {
    /// Not known yet.
    #[default]
    Unknown,
    /// Applied and every object ready.
    Healthy,
    /// Applied, some objects not ready yet.
    Progressing,
    /// Applying failed, or an object will not become ready without a change.
    Degraded,
}

/// The state of one delivery in the workload cluster, for the hub.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The delivery.
    pub delivery: String,
    /// The sequence of the bundle it runs.
    pub sequence: u64,
    /// Its health.
    pub health: Health,
    /// Objects drifted now.
    pub drifted_objects: u32,
    /// Objects in its inventory.
    pub inventory_objects: u32,
    /// Why, in a user's words.
    pub message: String,
    /// The drifted objects (Kind/namespace/name), at most 20.
    pub drifted: Vec<String>,
}

impl Report {
    fn to_pb(&self) -> pb::AgentMessage {
        let health = match self.health {
            Health::Unknown => pb::Health::Unspecified,
            Health::Healthy => pb::Health::Healthy,
            Health::Progressing => pb::Health::Progressing,
            Health::Degraded => pb::Health::Degraded,
        };
        pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Report(pb::Report {
                delivery: self.delivery.clone(),
                sequence: self.sequence,
                health: health as i32,
                drifted_objects: self.drifted_objects,
                inventory_objects: self.inventory_objects,
                message: self.message.clone(),
                drifted: self.drifted.clone(),
            })),
        }
    }
}

/// Reports waiting to go to the hub: at most one per delivery (a newer one replaces an unsent
/// older one). Kept while disconnected and sent once the stream is up again. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ReportQueue {
    inner: Arc<(Mutex<BTreeMap<String, Report>>, Notify)>,
}

impl ReportQueue {
    /// Queues `report`, replacing an unsent one for the same delivery.
    pub fn push(&self, report: Report) {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(report.delivery.clone(), report);
        self.inner.1.notify_one();
    }

    fn take(&self) -> Vec<Report> {
        std::mem::take(&mut *self.inner.0.lock().unwrap_or_else(|e| e.into_inner()))
            .into_values()
            .collect()
    }

    /// Puts back reports that could not be sent, unless newer ones were queued meanwhile.
    fn put_back(&self, reports: Vec<Report>) {
        let mut q = self.inner.0.lock().unwrap_or_else(|e| e.into_inner());
        for r in reports {
            q.entry(r.delivery.clone()).or_insert(r);
        }
    }
}

#[derive(Debug)]
struct State {
    verifier: Verifier,
    identity: ClientIdentity,
}

/// A connected agent: run it with [`Agent::run`].
#[derive(Debug)]
pub struct Agent<S> {
    config: Config,
    state: Mutex<State>,
    sink: Arc<S>,
    progress: watch::Sender<Progress>,
    reports: ReportQueue,
}

/// What the agent keeps across restarts: identity, trusted keys and held sequences.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The cluster.
    pub cluster: String,
    /// Certificate and key.
    pub identity: ClientIdentity,
    /// Trusted keys and the key set sequence.
    pub trusted: (TrustedKeys, u64),
    /// Newest sequence held per delivery.
    pub held: BTreeMap<String, u64>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl<S: BundleSink> Agent<S> {
    /// An agent from a fresh registration.
    pub fn new(config: Config, registration: Registration, sink: Arc<S>) -> Self {
        let trusted = TrustedKeys::new(registration.key_set.key_set.keys.clone());
        Self::resume(
            config,
            Snapshot {
                cluster: registration.cluster,
                identity: registration.identity,
                trusted: (trusted, registration.key_set.key_set.sequence),
                held: BTreeMap::new(),
            },
            sink,
        )
    }

    /// An agent restarting from what it kept.
    pub fn resume(config: Config, snapshot: Snapshot, sink: Arc<S>) -> Self {
        let verifier = Verifier::new(snapshot.cluster, snapshot.trusted.0, snapshot.trusted.1)
            .with_held(snapshot.held);
        Self {
            config,
            state: Mutex::new(State {
                verifier,
                identity: snapshot.identity,
            }),
            sink,
            progress: watch::channel(Progress::default()).0,
            reports: ReportQueue::default(),
        }
    }

    /// The queue of reports this agent sends to the hub.
    pub fn reports(&self) -> ReportQueue {
        self.reports.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What to keep for a restart.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.lock();
        Snapshot {
            cluster: s.verifier.cluster().to_owned(),
            identity: s.identity.clone(),
            trusted: (s.verifier.trusted().clone(), s.verifier.key_set_sequence()),
            held: s.verifier.held().clone(),
        }
    }

    /// Watches sessions, applied and rejected bundles, renewals and key sets: what changes the
    /// [`Agent::snapshot`].
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Connects and stays connected until `shutdown`, reconnecting with exponential backoff and
    /// jitter. Returns an error only when retrying cannot help ([`Error::is_fatal`]).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let mut attempt = 0u32;
        loop {
            let sessions_before = self.progress.borrow().sessions;
            let result = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = self.session(&shutdown) => r,
            };
            self.progress
                .send_if_modified(|p| std::mem::replace(&mut p.connected, false));
            if self.progress.borrow().sessions > sessions_before {
                attempt = 0;
            }
            match result {
                Ok(()) if shutdown.is_cancelled() => return Ok(()),
                Ok(()) => info!("stream ended, reconnecting"),
                Err(e) if e.is_fatal() => {
                    warn!(error = %e, "hub refused this agent, not retrying");
                    return Err(e);
                }
                Err(e) => warn!(error = %e, "stream failed, reconnecting"),
            }
            attempt += 1;
            let delay = backoff(
                attempt,
                self.config.backoff_initial,
                self.config.backoff_max,
            );
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn hello(&self) -> pb::AgentMessage {
        let s = self.lock();
        pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
                protocol: Some(PROTOCOL_VERSION),
                cluster_id: s.verifier.cluster().to_owned(),
                agent_version: crate::VERSION.to_owned(),
                last_sequence: s.verifier.held().clone().into_iter().collect(),
                key_set_sequence: s.verifier.key_set_sequence(),
                accept_payload_encodings: vec![pb::PayloadEncoding::Zstd as i32],
            })),
        }
    }

    fn renew_after(&self) -> Duration {
        let not_after = self.lock().identity.not_after();
        let remaining = not_after
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        remaining.mul_f64(self.config.renew_fraction)
    }

    /// One stream, from connect to its end.
    async fn session(&self, shutdown: &CancellationToken) -> Result<()> {
        let identity = self.lock().identity.clone();
        let channel = channel(&self.config.hub, Some(&identity)).await?;
        // Bundles arrive compressed once by the hub (`PayloadEncoding::Zstd`); the agent's own
        // messages are small, so no per-message compression either way.
        let mut client = pb::delivery_client::DeliveryClient::new(channel.clone())
            .accept_compressed(CompressionEncoding::Zstd)
            .accept_compressed(CompressionEncoding::Gzip);
        let (tx, rx) = mpsc::channel(16);
        // The receiver is alive: it was created just above.
        let _ = tx.send(self.hello()).await;
        let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
        let welcome = match inbound.message().await? {
            Some(pb::HubMessage {
                kind: Some(pb::hub_message::Kind::Welcome(w)),
            }) => w,
            _ => return Err(Error::NoWelcome),
        };
        check_compatible(welcome.protocol.as_ref())?;
        let interval = match welcome.heartbeat_interval_ms {
            0 => self.config.heartbeat_interval,
            ms => Duration::from_millis(ms.into()),
        };
        self.progress.send_modify(|p| {
            p.sessions += 1;
            p.connected = true;
        });
        debug!(hub_version = %welcome.hub_version, "welcomed by the hub");
        // A hub of protocol 1.2 or later takes a count instead of the list when all applied.
        let summary_acks = welcome.accepts_ack_summary;

        let mut heartbeat = tokio::time::interval(interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = tokio::time::Instant::now();
        // A heartbeat is skipped when an ack or report went out within half the interval: the hub
        // still hears from this agent at least every 1.5 intervals (it gives up after three).
        let mut last_sent = tokio::time::Instant::now();
        let renew = tokio::time::sleep(self.renew_after());
        tokio::pin!(renew);
        let mut reassembler = convert::Reassembler::default();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                msg = inbound.message() => {
                    let Some(msg) = msg? else { return Ok(()) };
                    last_heard = tokio::time::Instant::now();
                    if let Some(ack) = self.handle(msg, &mut reassembler, summary_acks).await {
                        if tx.send(ack).await.is_err() {
                            return Ok(());
                        }
                        last_sent = tokio::time::Instant::now();
                    }
                }
                _ = self.reports.inner.1.notified() => {
                    let reports = self.reports.take();
                    let mut unsent = Vec::new();
                    for r in reports {
                        if !unsent.is_empty() || tx.send(r.to_pb()).await.is_err() {
                            unsent.push(r);
                        }
                    }
                    if !unsent.is_empty() {
                        // The stream is gone; the next session sends them.
                        self.reports.put_back(unsent);
                        return Ok(());
                    }
                    last_sent = tokio::time::Instant::now();
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > interval * 3 {
                        return Err(Error::HeartbeatTimeout(interval * 3));
                    }
                    if last_sent.elapsed() < interval / 2 {
                        continue;
                    }
                    last_sent = tokio::time::Instant::now();
                    let beat = pb::AgentMessage {
                        kind: Some(pb::agent_message::Kind::Heartbeat(pb::Heartbeat {
                            unix_millis: unix_now() * 1000,
                        })),
                    };
                    if tx.send(beat).await.is_err() {
                        return Ok(());
                    }
                }
                _ = &mut renew => {
                    // Renewal goes over the open, still-valid connection; the stream stays up
                    // and the next connection uses the new certificate.
                    match self.renew(channel.clone()).await {
                        Ok(()) => info!("client certificate renewed"),
                        Err(e) if e.is_fatal() => return Err(e),
                        Err(e) => warn!(error = %e, "certificate renewal failed, will retry"),
                    }
                    let next = self.renew_after().max(Duration::from_secs(1));
                    renew.as_mut().reset(tokio::time::Instant::now() + next);
                }
            }
        }
    }

    async fn renew(&self, channel: Channel) -> Result<()> {
        let key_pem = self.lock().identity.key_pem.clone();
        let key = KeyPair::from_pem(&key_pem).map_err(Error::Key)?;
        let mut client = pb::registration_client::RegistrationClient::new(channel);
        let resp = client
            .renew(pb::RenewRequest {
                csr_der: csr(&key)?,
            })
            .await?
            .into_inner();
        self.lock().identity = ClientIdentity {
            cert_der: resp.certificate_der,
            key_pem,
        };
        self.progress.send_modify(|p| p.renewals += 1);
        if let Some(set) = resp.key_set {
            self.adopt_key_set(set);
        }
        Ok(())
    }

    fn adopt_key_set(&self, set: pb::KeySet) {
        match convert::key_set_from_pb(set) {
            Ok(set) => match self.lock().verifier.accept_key_set(set) {
                Ok(true) => {
                    info!("trusted signing keys updated");
                    self.progress.send_modify(|p| p.key_sets += 1);
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "key set refused"),
            },
            Err(e) => warn!(error = %e, "malformed key set"),
        }
    }

    /// Handles one hub message; returns the ack to send, if any: a summary ack when every object
    /// applied and `summary_acks` (the hub said it takes them).
    async fn handle(
        &self,
        msg: pb::HubMessage,
        reassembler: &mut convert::Reassembler,
        summary_acks: bool,
    ) -> Option<pb::AgentMessage> {
        let chunk = match msg.kind? {
            pb::hub_message::Kind::Bundle(chunk) => chunk,
            pb::hub_message::Kind::KeySet(set) => {
                self.adopt_key_set(set);
                return None;
            }
            pb::hub_message::Kind::ReconcileNow(r) => {
                debug!(delivery = %r.delivery, "reconcile requested");
                return None;
            }
            pb::hub_message::Kind::Heartbeat(_) | pb::hub_message::Kind::Welcome(_) => {
                return None;
            }
        };
        let (bundle, traceparent) = match reassembler.push_traced(chunk) {
            Ok(Some(b)) => b,
            Ok(None) => return None,
            Err(e) => {
                warn!(error = %e, "malformed bundle chunks dropped");
                return None;
            }
        };
        let (delivery, sequence) = (
            bundle.header.meta.delivery.clone(),
            bundle.header.meta.sequence,
        );
        // Verify, apply and ack of this bundle, a child of the hub's span that sent it (the
        // header's unsigned trace context); no span at all unless traces are exported.
        let span = flotilla_telemetry::span!(
            "apply",
            cluster = %bundle.header.meta.cluster,
            delivery = %delivery,
            revision = %bundle.header.meta.revision,
            sequence,
            objects = tracing::field::Empty,
            failed_objects = tracing::field::Empty,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        flotilla_telemetry::set_parent(&span, &traceparent);
        let ack = self
            .verify_and_apply(bundle, delivery, sequence, summary_acks, &span)
            .instrument(span.clone())
            .await;
        drop(span);
        ack
    }

    /// Verifies a reassembled bundle, applies it if new, and returns the ack to send; records
    /// the outcome on `span`.
    async fn verify_and_apply(
        &self,
        bundle: flotilla_bundle::SignedBundle,
        delivery: String,
        sequence: u64,
        summary_acks: bool,
        span: &tracing::Span,
    ) -> Option<pb::AgentMessage> {
        let verdict = self.lock().verifier.verify(bundle, unix_now());
        let ack = |outcome: pb::AckOutcome, message: String, objects: Vec<ObjectResult>| {
            // Every object applied: a count says as much as the list, for a fraction of the bytes
            // and of the hub's decoding; failures always go in full.
            let objects_applied = if summary_acks
                && outcome == pb::AckOutcome::Applied
                && objects.iter().all(|o| o.ok)
            {
                objects.len() as u32
            } else {
                0
            };
            let objects = if objects_applied > 0 {
                Vec::new()
            } else {
                objects
            };
            Some(pb::AgentMessage {
                kind: Some(pb::agent_message::Kind::Ack(pb::Ack {
                    delivery: delivery.clone(),
                    sequence,
                    outcome: outcome as i32,
                    message,
                    objects_applied,
                    objects: objects
                        .into_iter()
                        .map(|o| pb::ObjectResult {
                            api_version: o.api_version,
                            kind: o.kind,
                            namespace: o.namespace,
                            name: o.name,
                            ok: o.ok,
                            message: o.message,
                        })
                        .collect(),
                })),
            })
        };
        match verdict {
            Ok(Verdict::New(bundle)) => {
                let result = self.sink.apply(bundle).await;
                self.progress.send_modify(|p| p.applied += 1);
                let outcome = if result.applied {
                    pb::AckOutcome::Applied
                } else {
                    pb::AckOutcome::Failed
                };
                if !span.is_none() {
                    let failed = result.objects.iter().filter(|o| !o.ok).count();
                    span.record("objects", result.objects.len());
                    span.record("failed_objects", failed);
                    span.record("outcome", if result.applied { "applied" } else { "failed" });
                    if !result.applied {
                        span.record("otel.status_code", "ERROR");
                    }
                }
                ack(outcome, result.message, result.objects)
            }
            Ok(Verdict::Duplicate(_)) => {
                span.record("outcome", "duplicate");
                ack(
                    pb::AckOutcome::Applied,
                    "already held".to_owned(),
                    Vec::new(),
                )
            }
            Err(e) => {
                span.record("outcome", "rejected");
                span.record("otel.status_code", "ERROR");
                warn!(error = %e, "bundle refused");
                self.sink.rejected(&e);
                self.progress.send_modify(|p| p.rejected += 1);
                ack(pb::AckOutcome::Rejected, e.to_string(), Vec::new())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 1..30 {
            let d = backoff(attempt, i, m);
            let cap = i.saturating_mul(1 << (attempt - 1).min(20)).min(m);
            assert!(
                d >= cap / 2 && d <= cap,
                "attempt {attempt}: {d:?} vs {cap:?}"
            );
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| backoff(10, i, m)).collect();
        assert!(samples.len() > 1, "jitter varies the delay");
    }

    #[test]
    fn pem_wraps_der_in_base64() {
        let pem = der_to_pem("CERTIFICATE", b"hello world!?");
        assert_eq!(
            pem,
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQhPw==\n-----END CERTIFICATE-----\n"
        );
    }
}
