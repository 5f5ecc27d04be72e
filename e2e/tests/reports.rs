//! What agents tell the hub, without Kubernetes: a real hub over mTLS on loopback and an agent
//! running the real connection code with a simulated sink. Connection, acks and reports show up
//! in the hub's state and as changes; delivery options arrive signed in the bundle.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flotilla_agent::connect::{self, Agent, Report};
use flotilla_bundle::{ConflictPolicy, DeliveryOptions, DriftMode, IgnoreRule, SigningKey};
use flotilla_e2e::sim::{AckingSink, RunningHub, objects};
use flotilla_hub::delivery::{Change, Config, Health, Hub, HubCa};
use flotilla_hub::fleet::MemoryRegistry;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

async fn next_change(
    rx: &mut broadcast::Receiver<Change>,
    want: impl Fn(&Change) -> bool,
) -> anyhow::Result<Change> {
    tokio::time::timeout(WAIT, async {
        loop {
            let c = rx.recv().await?;
            if want(&c) {
                return Ok::<_, anyhow::Error>(c);
            }
        }
    })
    .await
    .context("waiting for a change")?
}

#[tokio::test]
async fn connection_acks_and_reports_reach_the_hub_state_and_its_change_stream()
-> anyhow::Result<()> {
    let hub = Hub::new(
        Arc::new(MemoryRegistry::default()),
        Arc::new(HubCa::generate("flotilla test hub")?),
        SigningKey::generate()?,
        Config::default(),
    )?;
    let hub = RunningHub::start(hub).await?;
    let registration = hub.register("eu-1").await?;
    let mut changes = hub.hub.subscribe_changes();
    assert!(hub.hub.agent_info("eu-1").is_none());

    let sink = Arc::new(AckingSink::default());
    let agent = Arc::new(Agent::new(hub.agent_config(), registration, sink.clone()));
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (agent, stop) = (agent.clone(), stop.clone());
        async move { agent.run(stop).await }
    });
    next_change(
        &mut changes,
        |c| matches!(c, Change::Connected { cluster } if cluster == "eu-1"),
    )
    .await?;
    let info = hub.hub.agent_info("eu-1").context("agent info")?;
    assert!(info.connected);
    assert_eq!(info.agent_version, flotilla_agent::VERSION);

    // Options travel inside the signed payload.
    let options = DeliveryOptions {
        prune: false,
        allow_empty: true,
        conflicts: ConflictPolicy::Report,
        drift: DriftMode::Report,
        ignore: vec![IgnoreRule {
            paths: vec!["/spec/replicas".into()],
            kind: "Deployment".into(),
            name: String::new(),
            namespace: String::new(),
        }],
    };
    let seq =
        hub.hub
            .publish_with_options("eu-1", "apps", "r1", &objects("eu-1", "r1", 3), &options)?;
    next_change(&mut changes, |c| {
        matches!(c, Change::Acked { cluster, delivery } if cluster == "eu-1" && delivery == "apps")
    })
    .await?;
    assert_eq!(hub.hub.ack("eu-1", "apps").context("ack")?.sequence, seq);
    let applied = sink.applied();
    let payload = applied[0].decode()?;
    assert_eq!(payload.options, options);
    assert_eq!(payload.objects.len(), 3);
    assert_eq!(hub.hub.agent_info("eu-1").context("info")?.bundles_sent, 1);

    // A report queued by the agent lands in the hub's state.
    agent.reports().push(Report {
        delivery: "apps".into(),
        sequence: seq,
        health: connect::Health::Progressing,
        drifted_objects: 1,
        inventory_objects: 3,
        message: "Deployment/apps/web: 0 of 2 replicas available".into(),
        drifted: vec!["ConfigMap/apps/app-0".into()],
    });
    next_change(&mut changes, |c| {
        matches!(c, Change::Reported { cluster, delivery } if cluster == "eu-1" && delivery == "apps")
    })
    .await?;
    let report = hub.hub.report("eu-1", "apps").context("report")?;
    assert_eq!(report.sequence, seq);
    assert_eq!(report.health, Health::Progressing);
    assert_eq!((report.drifted_objects, report.inventory_objects), (1, 3));
    assert_eq!(
        report.message,
        "Deployment/apps/web: 0 of 2 replicas available"
    );
    assert_eq!(report.drifted, vec!["ConfigMap/apps/app-0".to_string()]);
    assert_eq!(hub.hub.reports("eu-1").len(), 1);

    // A lagged subscriber recovers from the state: it is all still there.
    stop.cancel();
    task.await??;
    next_change(
        &mut changes,
        |c| matches!(c, Change::Disconnected { cluster } if cluster == "eu-1"),
    )
    .await?;
    let info = hub.hub.agent_info("eu-1").context("info")?;
    assert!(!info.connected);
    assert!(hub.hub.agents().contains_key("eu-1"));
    assert!(hub.hub.report("eu-1", "apps").is_some());
    hub.stop().await
}
