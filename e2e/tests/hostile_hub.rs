//! The agent against a hostile hub: a Delivery server holding a valid server certificate from
//! the hub CA (so mTLS succeeds) that sends bundles the real hub would never send. Each test
//! shows the agent's refusal (a REJECTED ack naming why) and that nothing reached its sink.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flotilla_agent::connect::Agent;
use flotilla_bundle::{BundleMeta, SignedBundle, SigningKey};
use flotilla_e2e::sim::{AckingSink, RunningHub, objects};
use flotilla_hub::delivery::{Config, Hub, HubCa};
use flotilla_hub::fleet::MemoryRegistry;
use flotilla_proto::{PROTOCOL_VERSION, convert, pb};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

struct Rogue {
    script: Vec<pb::HubMessage>,
    acks: mpsc::UnboundedSender<pb::Ack>,
}

#[tonic::async_trait]
impl pb::delivery_server::Delivery for Rogue {
    type ConnectStream = ReceiverStream<Result<pb::HubMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let script = self.script.clone();
        let acks = self.acks.clone();
        tokio::spawn(async move {
            let _hello = inbound.message().await;
            let welcome = pb::hub_message::Kind::Welcome(pb::Welcome {
                protocol: Some(PROTOCOL_VERSION),
                hub_version: "rogue".into(),
                heartbeat_interval_ms: 15_000,
                // Like a hub before protocol 1.2: agents send it full acks.
                accepts_ack_summary: false,
            });
            let _ = tx
                .send(Ok(pb::HubMessage {
                    kind: Some(welcome),
                }))
                .await;
            for m in script {
                let _ = tx.send(Ok(m)).await;
            }
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(pb::agent_message::Kind::Ack(a)) = m.kind {
                    let _ = acks.send(a);
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Setup {
    key: SigningKey,
    sink: Arc<AckingSink>,
    acks: mpsc::UnboundedReceiver<pb::Ack>,
    stop: CancellationToken,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Registers agent `eu-1` with a real hub, then points it at a rogue server that sends what
/// `script` builds from the hub's real signing key.
async fn against_rogue(
    script: impl FnOnce(&SigningKey) -> Vec<SignedBundle>,
) -> anyhow::Result<Setup> {
    let ca = Arc::new(HubCa::generate("flotilla test hub")?);
    let key = SigningKey::generate()?;
    let hub = Hub::new(
        Arc::new(MemoryRegistry::default()),
        ca.clone(),
        key.clone(),
        Config::default(),
    )?;
    let hub = RunningHub::start(hub).await?;
    let registration = hub.register("eu-1").await?;

    let server_id = ca.issue_server(&["localhost".into()], Duration::from_secs(600))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (ack_tx, acks) = mpsc::unbounded_channel();
    let messages = script(&key)
        .iter()
        .flat_map(|b| convert::bundle_to_chunks(b, 1 << 20))
        .map(|c| pb::HubMessage {
            kind: Some(pb::hub_message::Kind::Bundle(c)),
        })
        .collect();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&server_id.cert_pem, &server_id.key_pem))
        .client_ca_root(Certificate::from_pem(ca.cert_pem()));
    let rogue = Rogue {
        script: messages,
        acks: ack_tx,
    };
    tokio::spawn(
        Server::builder()
            .tls_config(tls)?
            .add_service(
                pb::delivery_server::DeliveryServer::new(rogue)
                    .accept_compressed(tonic::codec::CompressionEncoding::Zstd),
            )
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let mut config = hub.agent_config();
    config.hub.url = format!("https://{addr}");
    let sink = Arc::new(AckingSink::default());
    let agent = Arc::new(Agent::new(config, registration, sink.clone()));
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move { agent.run(stop).await }
    });
    Ok(Setup {
        key,
        sink,
        acks,
        stop,
    })
}

fn bundle(key: &SigningKey, cluster: &str, sequence: u64, expires_at: u64) -> SignedBundle {
    key.seal(
        BundleMeta {
            cluster: cluster.into(),
            delivery: "apps".into(),
            revision: format!("rev{sequence}"),
            sequence,
            expires_at,
        },
        Bytes::from(flotilla_bundle::canonical::encode_objects(&objects(
            cluster, "rev", 2,
        ))),
    )
}

async fn next_ack(s: &mut Setup) -> pb::Ack {
    tokio::time::timeout(Duration::from_secs(10), s.acks.recv())
        .await
        .expect("no ack within 10 s")
        .expect("ack channel closed")
}

fn assert_rejected(ack: &pb::Ack, sequence: u64, reason: &str) {
    assert_eq!(ack.outcome, pb::AckOutcome::Rejected as i32, "{ack:?}");
    assert_eq!(ack.sequence, sequence);
    assert!(
        ack.message.contains(reason),
        "{:?} lacks {reason:?}",
        ack.message
    );
}

#[tokio::test]
async fn tampered_bundle_is_refused() -> anyhow::Result<()> {
    let mut s = against_rogue(|k| {
        let mut b = bundle(k, "eu-1", 7, unix_now() + 600);
        let mut payload = b.payload.to_vec();
        let at = payload.len() / 2;
        payload[at] ^= 0x20;
        b.payload = Bytes::from(payload);
        vec![b]
    })
    .await?;
    let ack = next_ack(&mut s).await;
    assert_rejected(&ack, 7, "failed verification");
    assert!(s.sink.applied().is_empty());
    assert!(s.sink.rejected()[0].contains("eu-1"));
    s.stop.cancel();
    Ok(())
}

#[tokio::test]
async fn replayed_older_sequence_is_refused() -> anyhow::Result<()> {
    let mut s = against_rogue(|k| {
        vec![
            bundle(k, "eu-1", 9, unix_now() + 600),
            bundle(k, "eu-1", 8, unix_now() + 600),
        ]
    })
    .await?;
    let first = next_ack(&mut s).await;
    assert_eq!(first.outcome, pb::AckOutcome::Applied as i32);
    let second = next_ack(&mut s).await;
    assert_rejected(&second, 8, "older than the held sequence 9");
    let applied: Vec<_> = s.sink.applied().iter().map(|b| b.meta.sequence).collect();
    assert_eq!(applied, vec![9], "only the newer bundle was applied");
    let _ = &s.key;
    s.stop.cancel();
    Ok(())
}

#[tokio::test]
async fn bundle_signed_for_another_cluster_is_refused() -> anyhow::Result<()> {
    let mut s = against_rogue(|k| vec![bundle(k, "us-1", 3, unix_now() + 600)]).await?;
    let ack = next_ack(&mut s).await;
    assert_rejected(&ack, 3, "is for cluster us-1, this agent is cluster eu-1");
    assert!(s.sink.applied().is_empty());
    s.stop.cancel();
    Ok(())
}

#[tokio::test]
async fn expired_bundle_is_refused() -> anyhow::Result<()> {
    let mut s = against_rogue(|k| vec![bundle(k, "eu-1", 4, unix_now() - 1)]).await?;
    let ack = next_ack(&mut s).await;
    assert_rejected(&ack, 4, "expired at unix time");
    assert!(s.sink.applied().is_empty());
    s.stop.cancel();
    Ok(())
}

#[tokio::test]
async fn bundle_from_unknown_signing_key_is_refused() -> anyhow::Result<()> {
    let stranger = SigningKey::generate()?;
    let mut s = against_rogue(|_| vec![bundle(&stranger, "eu-1", 5, unix_now() + 600)]).await?;
    let ack = next_ack(&mut s).await;
    assert_rejected(&ack, 5, "failed verification");
    assert!(s.sink.rejected()[0].contains("failed verification"));
    assert!(s.sink.applied().is_empty());
    s.stop.cancel();
    Ok(())
}

#[tokio::test]
async fn a_hub_that_takes_no_summary_acks_gets_full_acks() -> anyhow::Result<()> {
    // The rogue hub's Welcome is that of a hub before protocol 1.2.
    let mut s = against_rogue(|k| vec![bundle(k, "eu-1", 7, unix_now() + 600)]).await?;
    let ack = next_ack(&mut s).await;
    assert_eq!(ack.outcome, pb::AckOutcome::Applied as i32, "{ack:?}");
    assert_eq!(ack.objects_applied, 0, "no summary to an older hub");
    let names: Vec<&str> = ack.objects.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["app-0", "app-1"]);
    assert!(ack.objects.iter().all(|o| o.ok));
    s.stop.cancel();
    Ok(())
}
