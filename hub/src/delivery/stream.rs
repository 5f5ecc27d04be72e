//! `Delivery.Connect`: one stream per agent.
//!
//! Each stream has one task. Publishing never waits on it: [`AgentConn`] holds at most one
//! pending bundle per delivery (a newer one replaces an unsent older one) and wakes the task,
//! which sends at the agent's pace.

use std::collections::{BTreeMap, HashMap};
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use flotilla_bundle::SignedKeySet;
use flotilla_proto::{PROTOCOL_VERSION, check_compatible, convert, pb};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument as _, debug, info, info_span, warn};

use super::{
    AckOutcome, AckRecord, AgentInfo, Change, Health, Hub, ReportRecord, Sealed, ca, unix_millis,
};
use crate::fleet::ClusterState;

/// The cluster named by the client certificate of an mTLS request.
pub(super) fn peer_cluster<T>(request: &Request<T>) -> Result<String, Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated("no client certificate: use the hub's mTLS listener")
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    ca::cluster_from_cert(leaf).map_err(|e| Status::unauthenticated(e.to_string()))
}

#[derive(Debug, Default)]
struct Pending {
    key_set: Option<SignedKeySet>,
    bundles: BTreeMap<String, Arc<Sealed>>,
    reconcile: Option<String>,
    close: Option<Status>,
}

/// The hub's handle on one agent's open stream.
#[derive(Debug)]
pub(super) struct AgentConn {
    id: u64,
    pending: Mutex<Pending>,
    wake: Notify,
}

impl AgentConn {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bundles queued and not yet taken by the stream's task.
    pub(super) fn queued_bundles(&self) -> usize {
        self.lock().bundles.len()
    }

    /// Queues a bundle, replacing an unsent older one for the same delivery.
    pub(super) fn offer_bundle(&self, bundle: Arc<Sealed>) {
        {
            let mut p = self.lock();
            let delivery = bundle.header.meta.delivery.clone();
            match p.bundles.get(&delivery) {
                Some(q) if q.header.meta.sequence >= bundle.header.meta.sequence => return,
                _ => p.bundles.insert(delivery, bundle),
            };
        }
        self.wake.notify_one();
    }

    pub(super) fn offer_key_set(&self, set: SignedKeySet) {
        {
            let mut p = self.lock();
            if p.key_set
                .as_ref()
                .is_some_and(|k| k.key_set.sequence >= set.key_set.sequence)
            {
                return;
            }
            p.key_set = Some(set);
        }
        self.wake.notify_one();
    }

    pub(super) fn offer_reconcile(&self, delivery: &str) {
        self.lock().reconcile = Some(delivery.to_owned());
        self.wake.notify_one();
    }

    /// Ends the stream with `status` as soon as its task wakes.
    pub(super) fn close(&self, status: Status) {
        self.lock().close = Some(status);
        self.wake.notify_one();
    }
}

pub(super) struct Service {
    pub(super) hub: Hub,
}

type HubStream = ReceiverStream<Result<pb::HubMessage, Status>>;

#[tonic::async_trait]
impl pb::delivery_server::Delivery for Service {
    type ConnectStream = HubStream;

    async fn connect(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        // Identity comes from the certificate, never from a message field.
        let cluster = peer_cluster(&request)?;
        match self.hub.inner.registry.state(&cluster).await {
            Some(ClusterState::Accepted) => {}
            state => {
                warn!(cluster = %cluster, ?state, "stream refused");
                return Err(Status::permission_denied(format!(
                    "cluster {cluster} is {}",
                    state.map_or("unknown".to_owned(), |s| s.to_string())
                )));
            }
        }
        let (tx, rx) = mpsc::channel(8);
        let hub = self.hub.clone();
        let inbound = request.into_inner();
        let span = info_span!("stream", cluster = %cluster);
        tokio::spawn(run(hub, cluster, inbound, tx).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

enum Sent {
    Ok,
    Gone,
}

async fn send(
    tx: &mpsc::Sender<Result<pb::HubMessage, Status>>,
    kind: pb::hub_message::Kind,
) -> Sent {
    match tx.send(Ok(pb::HubMessage { kind: Some(kind) })).await {
        Ok(()) => Sent::Ok,
        Err(_) => Sent::Gone,
    }
}

async fn run(
    hub: Hub,
    cluster: String,
    mut inbound: Streaming<pb::AgentMessage>,
    tx: mpsc::Sender<Result<pb::HubMessage, Status>>,
) {
    let config = &hub.inner.config;
    let hello = match tokio::time::timeout(config.hello_timeout, inbound.message()).await {
        Ok(Ok(Some(pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Hello(h)),
        }))) => h,
        Ok(Ok(_)) => {
            let _ = tx
                .send(Err(Status::invalid_argument(
                    "the first message must be Hello",
                )))
                .await;
            return;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "stream failed before hello");
            return;
        }
        Err(_) => {
            let _ = tx
                .send(Err(Status::deadline_exceeded("no Hello received in time")))
                .await;
            return;
        }
    };
    if let Err(e) = check_compatible(hello.protocol.as_ref()) {
        warn!(error = %e, "agent refused");
        let _ = tx
            .send(Err(Status::failed_precondition(e.to_string())))
            .await;
        return;
    }
    if hello.cluster_id != cluster {
        warn!(claimed = %hello.cluster_id, "hello names another cluster than the certificate");
        let _ = tx
            .send(Err(Status::permission_denied(format!(
                "certificate is for cluster {cluster}, hello claims {}",
                hello.cluster_id
            ))))
            .await;
        return;
    }
    if let Sent::Gone = send(
        &tx,
        pb::hub_message::Kind::Welcome(pb::Welcome {
            protocol: Some(PROTOCOL_VERSION),
            hub_version: crate::VERSION.to_owned(),
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u32,
            accepts_ack_summary: true,
        }),
    )
    .await
    {
        return;
    }

    // Register first, then queue what the store holds: a publish in between is then queued by
    // the publisher or seen here, never lost.
    let conn = Arc::new(AgentConn {
        id: hub.inner.next_conn_id.fetch_add(1, Ordering::Relaxed),
        pending: Mutex::default(),
        wake: Notify::new(),
    });
    if let Some(old) = hub.inner.agents.insert(cluster.clone(), conn.clone()) {
        old.close(Status::aborted(
            "superseded by a newer stream from the same cluster",
        ));
    }
    // A revocation that raced the registry check above must still close this stream.
    if hub.inner.registry.state(&cluster).await != Some(ClusterState::Accepted) {
        conn.close(Status::permission_denied(format!(
            "cluster {cluster} is revoked"
        )));
    }
    let key_set = hub.key_set();
    if key_set.key_set.sequence > hello.key_set_sequence {
        conn.offer_key_set(key_set);
    }
    let mut sent: HashMap<String, u64> = hello.last_sequence.into_iter().collect();
    let zstd = hello
        .accept_payload_encodings
        .contains(&(pb::PayloadEncoding::Zstd as i32));
    if let Some(bundles) = hub.inner.store.get(&cluster) {
        for bundle in bundles.values() {
            conn.offer_bundle(bundle.clone());
        }
    }
    let now = std::time::SystemTime::now();
    hub.inner.agent_info.insert(
        cluster.clone(),
        AgentInfo {
            connected: true,
            agent_version: hello.agent_version.clone(),
            last_seen: now,
            connected_at: now,
            bundles_sent: 0,
        },
    );
    hub.changed(Change::Connected {
        cluster: cluster.clone(),
    });
    info!(agent_version = %hello.agent_version, "agent connected");

    let interval = config.heartbeat_interval;
    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    // Heartbeats only keep an idle stream alive: one is skipped when anything else was sent
    // within half the interval, so the agent still hears from the hub at least every 1.5 intervals
    // (it gives up after three) and a busy hub does not send 10,000 of them per interval.
    let mut last_sent = tokio::time::Instant::now();
    let end: Option<Status> = loop {
        let wake = conn.wake.notified();
        let mut wake = pin!(wake);
        wake.as_mut().enable();
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(m)) => {
                    last_heard = tokio::time::Instant::now();
                    if let Some(mut info) = hub.inner.agent_info.get_mut(&cluster) {
                        info.last_seen = std::time::SystemTime::now();
                    }
                    handle_agent_message(&hub, &cluster, m);
                }
                Ok(None) => break None,
                Err(e) => {
                    debug!(error = %e, "stream error");
                    break None;
                }
            },
            _ = &mut wake => {
                if let Some(status) = drain(&hub, &cluster, &conn, zstd, &mut sent, &tx).await {
                    break status;
                }
                last_sent = tokio::time::Instant::now();
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > interval * 3 {
                    break Some(Status::unavailable("agent missed three heartbeats"));
                }
                if last_sent.elapsed() < interval / 2 {
                    continue;
                }
                last_sent = tokio::time::Instant::now();
                let beat = pb::hub_message::Kind::Heartbeat(pb::Heartbeat { unix_millis: unix_millis() });
                if let Sent::Gone = send(&tx, beat).await {
                    break None;
                }
            }
        }
    };
    if let Some(status) = end {
        info!(reason = %status.message(), "closing stream");
        // The agent may be too slow to take it; the stream ends either way when tx drops.
        let _ = tx.try_send(Err(status));
    } else {
        info!("agent disconnected");
    }
    hub.inner.agents.remove_if(&cluster, |_, c| c.id == conn.id);
    // Unless a newer stream of the same cluster took over, the agent is now disconnected.
    if !hub.inner.agents.contains_key(&cluster) {
        if let Some(mut info) = hub.inner.agent_info.get_mut(&cluster) {
            info.connected = false;
        }
        hub.changed(Change::Disconnected { cluster });
    }
}

/// Sends what is pending. Returns `Some(outcome)` when the stream must end.
async fn drain(
    hub: &Hub,
    cluster: &str,
    conn: &AgentConn,
    zstd: bool,
    sent: &mut HashMap<String, u64>,
    tx: &mpsc::Sender<Result<pb::HubMessage, Status>>,
) -> Option<Option<Status>> {
    let pending = std::mem::take(&mut *conn.lock());
    if let Some(status) = pending.close {
        return Some(Some(status));
    }
    if let Some(set) = pending.key_set {
        let kind = pb::hub_message::Kind::KeySet(convert::key_set_to_pb(&set));
        if let Sent::Gone = send(tx, kind).await {
            return Some(None);
        }
    }
    for (delivery, bundle) in pending.bundles {
        let seq = bundle.header.meta.sequence;
        if sent.get(&delivery).is_some_and(|&s| s >= seq) {
            continue;
        }
        // One span per bundle sent, child of the publish, parent of the agent's apply; none
        // (and no trace context in the header) unless traces are exported.
        let span = match bundle.traceparent() {
            Some(parent) => {
                let span = flotilla_telemetry::span!(
                    "send",
                    cluster = %cluster,
                    delivery = %delivery,
                    revision = %bundle.header.meta.revision,
                    sequence = seq,
                    payload_bytes = bundle.payload.len(),
                    outcome = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                );
                flotilla_telemetry::set_parent(&span, parent);
                span
            }
            None => tracing::Span::none(),
        };
        let traceparent = flotilla_telemetry::traceparent(&span).unwrap_or_default();
        // Woken again while sending: a close must not wait behind a large bundle.
        let encoded = if zstd { bundle.zstd() } else { None };
        let chunks = convert::bundle_to_chunks_traced(
            &bundle,
            encoded,
            traceparent,
            hub.inner.config.chunk_size,
        );
        for chunk in chunks {
            if conn.lock().close.is_some() {
                span.record("outcome", "interrupted");
                span.record("otel.status_code", "ERROR");
                return Some(conn.lock().close.take());
            }
            if let Sent::Gone = send(tx, pb::hub_message::Kind::Bundle(chunk)).await {
                span.record("outcome", "disconnected");
                span.record("otel.status_code", "ERROR");
                return Some(None);
            }
        }
        span.record("outcome", "sent");
        drop(span);
        debug!(delivery = %delivery, sequence = seq, "bundle sent");
        if let Some(mut info) = hub.inner.agent_info.get_mut(cluster) {
            info.bundles_sent += 1;
        }
        sent.insert(delivery, seq);
    }
    if let Some(delivery) = pending.reconcile {
        let kind = pb::hub_message::Kind::ReconcileNow(pb::ReconcileNow { delivery });
        if let Sent::Gone = send(tx, kind).await {
            return Some(None);
        }
    }
    None
}

fn handle_agent_message(hub: &Hub, cluster: &str, message: pb::AgentMessage) {
    match message.kind {
        Some(pb::agent_message::Kind::Ack(ack)) => {
            let outcome = match pb::AckOutcome::try_from(ack.outcome) {
                Ok(pb::AckOutcome::Applied) => AckOutcome::Applied,
                Ok(pb::AckOutcome::Failed) => AckOutcome::Failed,
                _ => AckOutcome::Rejected,
            };
            hub.inner.metrics.acked(
                &ack.delivery,
                match outcome {
                    AckOutcome::Applied => "applied",
                    AckOutcome::Failed => "failed",
                    AckOutcome::Rejected => "rejected",
                },
            );
            if outcome != AckOutcome::Applied {
                warn!(delivery = %ack.delivery, sequence = ack.sequence, ?outcome, message = %ack.message, "bundle not applied");
            }
            // A summary ack (protocol 1.2) lists no objects: all `objects_applied` of them applied.
            let object_count = if ack.objects.is_empty() && outcome == AckOutcome::Applied {
                ack.objects_applied
            } else {
                ack.objects.len() as u32
            };
            let record = AckRecord {
                sequence: ack.sequence,
                outcome,
                message: ack.message,
                object_count,
                objects: ack
                    .objects
                    .into_iter()
                    .map(|o| {
                        // Kind/namespace/name, or Kind/name for cluster-scoped objects.
                        let id = if o.namespace.is_empty() {
                            format!("{}/{}", o.kind, o.name)
                        } else {
                            format!("{}/{}/{}", o.kind, o.namespace, o.name)
                        };
                        (id, o.ok)
                    })
                    .collect(),
            };
            // The cluster is the stream's, whatever the message says.
            hub.inner
                .acks
                .insert((cluster.to_owned(), ack.delivery.clone()), record);
            hub.inner.ack_changed.notify_waiters();
            hub.changed(Change::Acked {
                cluster: cluster.to_owned(),
                delivery: ack.delivery,
            });
        }
        Some(pb::agent_message::Kind::Report(report)) => {
            debug!(delivery = %report.delivery, health = report.health, drifted = report.drifted_objects, "report");
            let health = match pb::Health::try_from(report.health) {
                Ok(pb::Health::Healthy) => Health::Healthy,
                Ok(pb::Health::Progressing) => Health::Progressing,
                Ok(pb::Health::Degraded) => Health::Degraded,
                _ => Health::Unknown,
            };
            let record = ReportRecord {
                sequence: report.sequence,
                health,
                drifted_objects: report.drifted_objects,
                inventory_objects: report.inventory_objects,
                message: report.message,
                drifted: report.drifted,
                received_at: std::time::SystemTime::now(),
            };
            hub.inner
                .reports
                .insert((cluster.to_owned(), report.delivery.clone()), record);
            hub.changed(Change::Reported {
                cluster: cluster.to_owned(),
                delivery: report.delivery,
            });
        }
        Some(pb::agent_message::Kind::Heartbeat(_)) => {}
        Some(pb::agent_message::Kind::Hello(_)) | None => {
            debug!("ignoring unexpected agent message");
        }
    }
}
