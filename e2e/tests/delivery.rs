//! Delivery end to end, without Kubernetes: a real hub over mTLS on loopback and agents running
//! the real connection code with a simulated sink. Each refusal shows both the refusal and that
//! nothing was delivered or accepted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flotilla_agent::connect::{self, Agent, HubEndpoint};
use flotilla_bundle::SigningKey;
use flotilla_e2e::sim::{AckingSink, RunningHub, objects};
use flotilla_hub::delivery::{AckOutcome, Config, Hub, HubCa};
use flotilla_hub::fleet::{self, ClusterState, MemoryRegistry};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

async fn start() -> anyhow::Result<RunningHub> {
    Ok(start_with_ca(Config::default()).await?.0)
}

async fn start_with_ca(config: Config) -> anyhow::Result<(RunningHub, Arc<HubCa>)> {
    let ca = Arc::new(HubCa::generate("flotilla test hub")?);
    let hub = Hub::new(
        Arc::new(MemoryRegistry::default()),
        ca.clone(),
        SigningKey::generate()?,
        config,
    )?;
    Ok((RunningHub::start(hub).await?, ca))
}

struct RunningAgent {
    agent: Arc<Agent<AckingSink>>,
    sink: Arc<AckingSink>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<connect::Result<()>>,
}

fn spawn_agent(agent: Agent<AckingSink>, sink: Arc<AckingSink>) -> RunningAgent {
    let agent = Arc::new(agent);
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (agent, stop) = (agent.clone(), stop.clone());
        async move { agent.run(stop).await }
    });
    RunningAgent {
        agent,
        sink,
        stop,
        task,
    }
}

async fn agent_for(hub: &RunningHub, cluster: &str) -> anyhow::Result<RunningAgent> {
    let registration = hub.register(cluster).await?;
    let sink = Arc::new(AckingSink::default());
    Ok(spawn_agent(
        Agent::new(hub.agent_config(), registration, sink.clone()),
        sink,
    ))
}

async fn wait_connected(hub: &Hub, cluster: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while !hub.is_connected(cluster) {
        anyhow::ensure!(Instant::now() < deadline, "{cluster} never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn bundle_is_delivered_verified_acked_and_resumed_after_agent_restart() -> anyhow::Result<()>
{
    let hub = start().await?;
    let a = agent_for(&hub, "eu-1").await?;
    wait_connected(&hub.hub, "eu-1").await?;
    let seq1 = hub
        .hub
        .publish("eu-1", "apps", "rev1", &objects("eu-1", "rev1", 3))?;
    a.sink.wait_for(seq1, WAIT).await?;
    let ack = hub
        .hub
        .wait_for_ack("eu-1", "apps", seq1, WAIT)
        .await
        .context("no ack")?;
    assert_eq!(ack.outcome, AckOutcome::Applied);
    assert_eq!(ack.object_count, 3);
    let ack = hub
        .hub
        .ack_with_objects("eu-1", "apps")
        .context("ack kept")?;
    assert_eq!(ack.objects.len(), 3);
    assert_eq!(ack.objects[0], ("ConfigMap/apps/app-0".to_owned(), true));

    // Restart the agent from what it kept: Hello says it holds seq1, so the hub sends nothing.
    let snapshot = a.agent.snapshot();
    a.stop.cancel();
    a.task.await??;
    let sink = Arc::new(AckingSink::default());
    let b = spawn_agent(
        Agent::resume(hub.agent_config(), snapshot, sink.clone()),
        sink,
    );
    let mut progress = b.agent.progress();
    tokio::time::timeout(WAIT, progress.wait_for(|p| p.sessions == 1)).await??;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(b.sink.applied().is_empty(), "held bundle was sent again");
    // A large bundle (about 6 MiB, over gRPC's 4 MiB default) arrives in chunks.
    let big: Vec<_> = (0..1500)
        .map(|i| {
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("big-{i}")}, "data": {"blob": "x".repeat(4000)}})
        })
        .collect();
    let seq2 = hub.hub.publish("eu-1", "apps", "rev2", &big)?;
    b.sink.wait_for(seq2, WAIT).await?;
    assert_eq!(b.sink.applied()[0].objects()?.len(), 1500);
    assert!(b.sink.applied()[0].payload.len() > 6_000_000);
    b.stop.cancel();
    hub.stop().await
}

#[tokio::test]
async fn agent_resumes_after_hub_restart() -> anyhow::Result<()> {
    let registry: Arc<MemoryRegistry> = Arc::new(MemoryRegistry::default());
    let ca = Arc::new(HubCa::generate("flotilla test hub")?);
    let key = SigningKey::generate()?;
    let first = Hub::new(registry.clone(), ca.clone(), key.clone(), Config::default())?;
    let hub = RunningHub::start(first).await?;
    let a = agent_for(&hub, "eu-1").await?;
    wait_connected(&hub.hub, "eu-1").await?;
    let seq1 = hub
        .hub
        .publish("eu-1", "apps", "rev1", &objects("eu-1", "rev1", 2))?;
    a.sink.wait_for(seq1, WAIT).await?;
    let addrs = hub.addrs;
    hub.stop().await?;
    // A new hub process: same CA, signing key and registry (its durable state), empty memory.
    let second = Hub::new(registry, ca, key, Config::default())?;
    let hub = RunningHub::start_at(second, addrs.0, addrs.1).await?;
    wait_connected(&hub.hub, "eu-1").await?;
    let seq2 = hub
        .hub
        .publish("eu-1", "apps", "rev2", &objects("eu-1", "rev2", 2))?;
    assert!(seq2 > seq1);
    a.sink.wait_for(seq2, WAIT).await?;
    assert_eq!(a.sink.applied().len(), 2);
    assert_eq!(a.agent.progress().borrow().sessions, 2);
    a.stop.cancel();
    hub.stop().await
}

#[tokio::test]
async fn registration_refuses_expired_reused_and_unaccepted_tokens() -> anyhow::Result<()> {
    let hub = start().await?;
    let registry = hub.hub.registry().clone();
    let code = |r: connect::Result<connect::Registration>| match r {
        Err(connect::Error::Status(s)) => (s.code(), s.message().to_owned()),
        other => panic!("expected a refusal, got {other:?}"),
    };

    // Expired token.
    registry.set_state("exp", ClusterState::Accepted).await;
    let token = fleet::issue_token(registry.as_ref(), "exp", Duration::from_millis(1)).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (c, m) = code(connect::register(&hub.registration, token.expose(), "t").await);
    assert_eq!(c, tonic::Code::Unauthenticated);
    assert_eq!(m, "bootstrap token for cluster exp expired");

    // Reused token: the first use works, the second is refused.
    let token = hub.accepted_cluster("once").await?;
    connect::register(&hub.registration, token.expose(), "t").await?;
    let (c, m) = code(connect::register(&hub.registration, token.expose(), "t").await);
    assert_eq!(c, tonic::Code::Unauthenticated);
    assert_eq!(m, "bootstrap token for cluster once was already used");

    // Token for a cluster nobody accepted: refused, and the token stays usable once accepted.
    registry.set_state("pending", ClusterState::Pending).await;
    let token = fleet::issue_token(registry.as_ref(), "pending", Duration::from_secs(60)).await?;
    let (c, m) = code(connect::register(&hub.registration, token.expose(), "t").await);
    assert_eq!(c, tonic::Code::PermissionDenied);
    assert_eq!(m, "cluster pending is pending, not accepted");
    registry.set_state("pending", ClusterState::Accepted).await;
    let ok = connect::register(&hub.registration, token.expose(), "t").await?;
    assert_eq!(ok.cluster, "pending");

    // An unknown token is refused without naming any cluster.
    let (c, m) = code(connect::register(&hub.registration, "flt1.guess", "t").await);
    assert_eq!(
        (c, m.as_str()),
        (tonic::Code::Unauthenticated, "bootstrap token is not known")
    );
    assert_eq!(hub.hub.connected_count(), 0);
    hub.stop().await
}

/// Opens a Delivery stream with an arbitrary client identity and returns how it ended.
async fn try_stream(endpoint: &HubEndpoint, identity: Option<(String, String)>) -> String {
    use flotilla_proto::pb;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&endpoint.ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = match Endpoint::from_shared(endpoint.url.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
    {
        Ok(c) => c,
        Err(e) => return format!("connect: {e:?}"),
    };
    let mut client = pb::delivery_client::DeliveryClient::new(channel);
    let hello = pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            protocol: Some(flotilla_proto::PROTOCOL_VERSION),
            cluster_id: "eu-1".into(),
            ..Default::default()
        })),
    };
    match client.connect(tokio_stream::iter(vec![hello])).await {
        Ok(mut s) => match s.get_mut().message().await {
            Ok(m) => format!("accepted: {m:?}"),
            Err(e) => format!("status: {e}"),
        },
        Err(e) => format!("status: {e}"),
    }
}

#[tokio::test]
async fn foreign_ca_expired_and_missing_client_certificates_are_refused_at_handshake()
-> anyhow::Result<()> {
    let (hub, hub_ca) = start_with_ca(Config::default()).await?;
    hub.accepted_cluster("eu-1").await?;
    let foreign = HubCa::generate("someone else")?;
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    let pem = |der: &[u8]| {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<_> = b64
            .as_bytes()
            .chunks(64)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    };
    let now = std::time::SystemTime::now();
    let foreign_cert = foreign.issue_client("eu-1", csr.der(), now, Duration::from_secs(600))?;
    // An expired certificate from the right CA, and what a valid one gets (the control).
    let expired = hub_ca.issue_client(
        "eu-1",
        csr.der(),
        now - Duration::from_secs(7200),
        Duration::from_secs(3600),
    )?;
    let valid = hub_ca.issue_client("eu-1", csr.der(), now, Duration::from_secs(600))?;

    let r = try_stream(
        &hub.delivery,
        Some((pem(&foreign_cert), key.serialize_pem())),
    )
    .await;
    assert!(
        r.starts_with("connect:") || r.contains("transport"),
        "foreign CA: {r}"
    );
    let r = try_stream(&hub.delivery, Some((pem(&expired), key.serialize_pem()))).await;
    assert!(
        r.starts_with("connect:") || r.contains("transport"),
        "expired: {r}"
    );
    let r = try_stream(&hub.delivery, None).await;
    assert!(
        r.starts_with("connect:") || r.contains("transport"),
        "no certificate: {r}"
    );
    assert_eq!(hub.hub.connected_count(), 0, "nothing was accepted");
    let r = try_stream(&hub.delivery, Some((pem(&valid), key.serialize_pem()))).await;
    assert!(r.starts_with("accepted:"), "valid certificate: {r}");
    hub.stop().await
}

fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<_> = b64
        .as_bytes()
        .chunks(64)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

#[tokio::test]
async fn plaintext_connections_are_refused() -> anyhow::Result<()> {
    use flotilla_proto::pb;
    let hub = start().await?;
    let token = hub.accepted_cluster("eu-1").await?;
    for addr in [hub.addrs.0, hub.addrs.1] {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let mut client = pb::registration_client::RegistrationClient::new(channel);
        let err = client
            .register(pb::RegisterRequest {
                protocol: Some(flotilla_proto::PROTOCOL_VERSION),
                bootstrap_token: token.expose().to_owned(),
                csr_der: Default::default(),
                agent_version: "plain".into(),
            })
            .await
            .expect_err("plaintext must not be served");
        // The TLS listener drops the cleartext HTTP/2 preface: a transport error, no answer.
        assert!(
            matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
                && err.message().contains("transport error"),
            "{addr}: {err}"
        );
    }
    // The token was never seen by the hub: it still registers over TLS.
    connect::register(&hub.registration, token.expose(), "t").await?;
    hub.stop().await
}

#[tokio::test]
async fn identity_comes_from_the_certificate_not_from_hello() -> anyhow::Result<()> {
    let (hub, ca) = start_with_ca(Config::default()).await?;
    hub.accepted_cluster("eu-1").await?;
    hub.accepted_cluster("us-1").await?;
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    let us = ca.issue_client(
        "us-1",
        csr.der(),
        std::time::SystemTime::now(),
        Duration::from_secs(600),
    )?;
    // try_stream says hello as eu-1 with a certificate for us-1.
    let r = try_stream(&hub.delivery, Some((pem(&us), key.serialize_pem()))).await;
    assert!(
        r.contains("PermissionDenied")
            || r.contains("certificate is for cluster us-1, hello claims eu-1"),
        "{r}"
    );
    assert!(!hub.hub.is_connected("eu-1") && !hub.hub.is_connected("us-1"));
    hub.stop().await
}

#[tokio::test]
async fn revoked_cluster_is_closed_within_5s_and_refused_afterwards() -> anyhow::Result<()> {
    let hub = start().await?;
    let a = agent_for(&hub, "eu-1").await?;
    wait_connected(&hub.hub, "eu-1").await?;
    let seq1 = hub
        .hub
        .publish("eu-1", "apps", "rev1", &objects("eu-1", "rev1", 1))?;
    a.sink.wait_for(seq1, WAIT).await?;
    let snapshot = a.agent.snapshot();

    let t0 = Instant::now();
    hub.hub.revoke("eu-1").await;
    let ended = tokio::time::timeout(Duration::from_secs(5), a.task)
        .await
        .context("stream still open 5 s after revocation")??;
    let err = ended.expect_err("agent must stop on revocation");
    assert!(err.is_fatal(), "{err}");
    assert!(err.to_string().contains("revoked"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(!hub.hub.is_connected("eu-1"));

    // Reconnecting with the same, still unexpired certificate is refused, and nothing published
    // after the revocation reaches it.
    hub.hub
        .publish("eu-1", "apps", "rev2", &objects("eu-1", "rev2", 1))?;
    let sink = Arc::new(AckingSink::default());
    let again = Agent::resume(hub.agent_config(), snapshot, sink.clone());
    let err = tokio::time::timeout(WAIT, again.run(CancellationToken::new()))
        .await?
        .expect_err("reconnection must be refused");
    assert!(
        err.is_fatal() && err.to_string().contains("revoked"),
        "{err}"
    );
    assert!(sink.applied().is_empty());
    assert_eq!(again.progress().borrow().sessions, 0);
    hub.stop().await
}

#[tokio::test]
async fn key_rollover_has_no_gap_in_delivery() -> anyhow::Result<()> {
    let hub = start().await?;
    let a = agent_for(&hub, "eu-1").await?;
    wait_connected(&hub.hub, "eu-1").await?;
    let publish = |rev: &str| {
        hub.hub
            .publish("eu-1", "apps", rev, &objects("eu-1", rev, 1))
    };
    let s1 = publish("r1")?;
    a.sink.wait_for(s1, WAIT).await?;
    let old = a
        .agent
        .snapshot()
        .trusted
        .0
        .keys()
        .next()
        .unwrap()
        .id()
        .clone();
    let new = SigningKey::generate()?;
    hub.hub.add_signing_key(new.clone());
    let s2 = publish("r2")?; // still the old key
    hub.hub.activate_signing_key(new.id())?;
    let s3 = publish("r3")?; // the new key
    a.sink.wait_for(s3, WAIT).await?;
    hub.hub.retire_signing_key(&old)?;
    let s4 = publish("r4")?;
    a.sink.wait_for(s4, WAIT).await?;
    assert!(a.sink.rejected().is_empty(), "{:?}", a.sink.rejected());
    let trusted: Vec<_> = a
        .agent
        .snapshot()
        .trusted
        .0
        .keys()
        .map(|k| k.id().clone())
        .collect();
    assert_eq!(trusted, vec![new.id().clone()]);
    let seqs: Vec<_> = a.sink.applied().iter().map(|b| b.meta.sequence).collect();
    assert!(
        seqs.contains(&s1) && seqs.contains(&s3) && seqs.contains(&s4),
        "{seqs:?} {s2}"
    );
    assert_eq!(a.agent.progress().borrow().sessions, 1);
    a.stop.cancel();
    hub.stop().await
}

#[tokio::test]
async fn certificate_renews_before_expiry_without_dropping_the_stream() -> anyhow::Result<()> {
    let config = Config {
        client_cert_ttl: Duration::from_secs(3),
        ..Config::default()
    };
    let (hub, _) = start_with_ca(config).await?;
    let a = agent_for(&hub, "eu-1").await?;
    wait_connected(&hub.hub, "eu-1").await?;
    let first_cert = a.agent.snapshot().identity.cert_der;
    // Publish every 250 ms for 5 s, past the first certificate's expiry.
    let mut last = 0;
    for i in 0..20 {
        let rev = format!("r{i}");
        last = hub
            .hub
            .publish("eu-1", "apps", &rev, &objects("eu-1", &rev, 1))?;
        a.sink.wait_for(last, WAIT).await?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let progress = a.agent.progress().borrow().clone();
    assert_eq!(progress.sessions, 1, "the stream was never dropped");
    assert!(progress.renewals >= 2, "{progress:?}");
    assert_eq!(a.sink.applied().len(), 20, "no gap");
    let snapshot = a.agent.snapshot();
    assert_ne!(snapshot.identity.cert_der, first_cert);
    // A fresh connection after the first certificate expired uses the renewed one.
    a.stop.cancel();
    a.task.await??;
    let sink = Arc::new(AckingSink::default());
    let b = spawn_agent(
        Agent::resume(hub.agent_config(), snapshot, sink.clone()),
        sink,
    );
    let mut p = b.agent.progress();
    tokio::time::timeout(WAIT, p.wait_for(|p| p.sessions == 1)).await??;
    let next = hub
        .hub
        .publish("eu-1", "apps", "after", &objects("eu-1", "after", 1))?;
    assert!(next > last);
    b.sink.wait_for(next, WAIT).await?;
    b.stop.cancel();
    hub.stop().await
}

/// Opens a Delivery stream as `cluster` with a Hello that accepts `encodings`, and returns the
/// chunks of the first bundle the hub sends.
async fn first_bundle_chunks(
    endpoint: &HubEndpoint,
    ca: &HubCa,
    cluster: &str,
    encodings: Vec<i32>,
) -> anyhow::Result<Vec<flotilla_proto::pb::BundleChunk>> {
    use flotilla_proto::pb;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    let cert = ca.issue_client(
        cluster,
        csr.der(),
        std::time::SystemTime::now(),
        Duration::from_secs(600),
    )?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&endpoint.ca_pem))
        .domain_name("localhost")
        .identity(Identity::from_pem(pem(&cert), key.serialize_pem()));
    let channel = Endpoint::from_shared(endpoint.url.clone())?
        .tls_config(tls)?
        .connect()
        .await?;
    let hello = pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            protocol: Some(flotilla_proto::PROTOCOL_VERSION),
            cluster_id: cluster.into(),
            accept_payload_encodings: encodings,
            ..Default::default()
        })),
    };
    // The request stream stays open (no end after Hello) until this function returns.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(hello).await?;
    let mut client = pb::delivery_client::DeliveryClient::new(channel);
    let mut inbound = client
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut chunks = Vec::new();
    loop {
        let m = tokio::time::timeout(WAIT, inbound.message())
            .await
            .context("no bundle in time")??
            .context("stream ended before a bundle")?;
        if let Some(pb::hub_message::Kind::Bundle(c)) = m.kind {
            let last = c.index + 1 == c.count;
            chunks.push(c);
            if last {
                return Ok(chunks);
            }
        }
    }
}

#[tokio::test]
async fn payload_encoding_is_negotiated_per_agent() -> anyhow::Result<()> {
    use flotilla_proto::convert::Reassembler;
    use flotilla_proto::pb::PayloadEncoding;
    let (hub, ca) = start_with_ca(Config::default()).await?;
    hub.accepted_cluster("eu-1").await?;
    hub.hub
        .publish("eu-1", "apps", "r1", &objects("eu-1", "r1", 20))?;

    // An agent of protocol 1.0 lists no encodings: it gets the payload as it is.
    let plain = first_bundle_chunks(&hub.delivery, &ca, "eu-1", Vec::new()).await?;
    let header = plain[0]
        .header
        .clone()
        .context("first chunk has the header")?;
    assert_eq!(header.payload_encoding(), PayloadEncoding::Identity);
    let sent: usize = plain.iter().map(|c| c.data.len()).sum();
    assert_eq!(sent as u64, header.payload_size);

    // One that accepts zstd gets fewer bytes on the wire, and the same signed bundle.
    let packed = first_bundle_chunks(
        &hub.delivery,
        &ca,
        "eu-1",
        vec![PayloadEncoding::Zstd as i32],
    )
    .await?;
    let header = packed[0]
        .header
        .clone()
        .context("first chunk has the header")?;
    assert_eq!(header.payload_encoding(), PayloadEncoding::Zstd);
    let sent_packed: usize = packed.iter().map(|c| c.data.len()).sum();
    assert!(
        sent_packed * 2 < sent,
        "zstd sent {sent_packed} bytes for a {sent}-byte payload"
    );

    let reassemble = |chunks: Vec<flotilla_proto::pb::BundleChunk>| {
        let mut r = Reassembler::default();
        let mut out = None;
        for c in chunks {
            out = r.push(c)?;
        }
        out.context("bundle incomplete")
    };
    let (a, b) = (reassemble(plain)?, reassemble(packed)?);
    assert_eq!(a, b, "both encodings carry the same signed bundle");
    let latest = hub.hub.latest("eu-1", "apps").context("bundle stored")?;
    assert_eq!(a, *latest);
    hub.stop().await
}

/// Applies like a cluster where object `app-0` is refused (by admission, say) while the others
/// apply: the bundle fails.
struct RefusesAppZero;

impl connect::BundleSink for RefusesAppZero {
    async fn apply(&self, bundle: flotilla_agent::verify::VerifiedBundle) -> connect::ApplyResult {
        let objects = bundle.objects().unwrap_or_default();
        let results: Vec<connect::ObjectResult> = objects
            .iter()
            .map(|o| {
                let name = o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let ok = name != "app-0";
                connect::ObjectResult {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    namespace: "apps".into(),
                    message: if ok {
                        String::new()
                    } else {
                        "denied by policy".into()
                    },
                    name,
                    ok,
                }
            })
            .collect();
        connect::ApplyResult {
            applied: results.iter().all(|r| r.ok),
            message: "1 of the objects failed".into(),
            objects: results,
        }
    }
}

#[tokio::test]
async fn acks_are_summarised_only_when_every_object_applied() -> anyhow::Result<()> {
    let hub = start().await?;
    // All applied: the agent sends a count; the hub still knows, and lists, every object.
    let a = agent_for(&hub, "eu-1").await?;
    wait_connected(&hub.hub, "eu-1").await?;
    let seq = hub
        .hub
        .publish("eu-1", "apps", "r1", &objects("eu-1", "r1", 20))?;
    let ack = hub
        .hub
        .wait_for_ack("eu-1", "apps", seq, WAIT)
        .await
        .context("no ack")?;
    assert_eq!(ack.outcome, AckOutcome::Applied);
    assert_eq!(
        (ack.object_count, ack.objects.len()),
        (20, 0),
        "a summary ack"
    );
    let listed = hub
        .hub
        .ack_with_objects("eu-1", "apps")
        .context("ack kept")?;
    let expected: Vec<(String, bool)> = (0..20)
        .map(|i| (format!("ConfigMap/apps/app-{i}"), true))
        .collect();
    assert_eq!(listed.objects, expected);
    assert_eq!(listed.object_count, 20);
    a.stop.cancel();

    // One object failed: the ack lists every object with its result, the failed one named.
    let registration = hub.register("eu-2").await?;
    let agent = Arc::new(Agent::new(
        hub.agent_config(),
        registration,
        Arc::new(RefusesAppZero),
    ));
    let stop = CancellationToken::new();
    tokio::spawn({
        let (agent, stop) = (agent.clone(), stop.clone());
        async move { agent.run(stop).await }
    });
    wait_connected(&hub.hub, "eu-2").await?;
    let seq = hub
        .hub
        .publish("eu-2", "apps", "r1", &objects("eu-2", "r1", 3))?;
    let ack = hub
        .hub
        .wait_for_ack("eu-2", "apps", seq, WAIT)
        .await
        .context("no ack")?;
    assert_eq!(ack.outcome, AckOutcome::Failed);
    assert_eq!(ack.object_count, 3);
    assert_eq!(
        ack.objects,
        vec![
            ("ConfigMap/apps/app-0".to_owned(), false),
            ("ConfigMap/apps/app-1".to_owned(), true),
            ("ConfigMap/apps/app-2".to_owned(), true),
        ]
    );
    stop.cancel();
    hub.stop().await
}

#[tokio::test]
async fn an_agent_of_protocol_1_1_sends_full_acks_and_is_understood() -> anyhow::Result<()> {
    use flotilla_proto::pb;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let (hub, ca) = start_with_ca(Config::default()).await?;
    hub.accepted_cluster("eu-1").await?;
    let seq = hub
        .hub
        .publish("eu-1", "apps", "r1", &objects("eu-1", "r1", 2))?;

    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    let cert = ca.issue_client(
        "eu-1",
        csr.der(),
        std::time::SystemTime::now(),
        Duration::from_secs(600),
    )?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&hub.delivery.ca_pem))
        .domain_name("localhost")
        .identity(Identity::from_pem(pem(&cert), key.serialize_pem()));
    let channel = Endpoint::from_shared(hub.delivery.url.clone())?
        .tls_config(tls)?
        .connect()
        .await?;
    // What a 1.1 agent sends: its version, and no field it does not know.
    let hello = pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            protocol: Some(pb::ProtocolVersion { major: 1, minor: 1 }),
            cluster_id: "eu-1".into(),
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello).await?;
    let mut inbound = pb::delivery_client::DeliveryClient::new(channel)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut welcomed = false;
    loop {
        let m = tokio::time::timeout(WAIT, inbound.message())
            .await
            .context("no message in time")??
            .context("stream ended")?;
        match m.kind {
            Some(pb::hub_message::Kind::Welcome(w)) => {
                assert!(w.accepts_ack_summary, "a 1.2 hub says it takes summaries");
                welcomed = true;
            }
            Some(pb::hub_message::Kind::Bundle(c)) if c.index + 1 == c.count => break,
            _ => {}
        }
    }
    assert!(welcomed);
    let result = |name: &str, ok: bool| pb::ObjectResult {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: "apps".into(),
        name: name.into(),
        ok,
        message: String::new(),
    };
    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Ack(pb::Ack {
            delivery: "apps".into(),
            sequence: seq,
            outcome: pb::AckOutcome::Applied as i32,
            message: "applied".into(),
            objects: vec![result("app-0", true), result("app-1", true)],
            ..Default::default()
        })),
    })
    .await?;
    let ack = hub
        .hub
        .wait_for_ack("eu-1", "apps", seq, WAIT)
        .await
        .context("no ack")?;
    assert_eq!(ack.outcome, AckOutcome::Applied);
    assert_eq!(ack.object_count, 2);
    assert_eq!(
        ack.objects,
        vec![
            ("ConfigMap/apps/app-0".to_owned(), true),
            ("ConfigMap/apps/app-1".to_owned(), true)
        ]
    );
    drop(tx);
    hub.stop().await
}
