//! The whole delivery path into a real cluster: a hub publishes a signed bundle, the agent's
//! connection verifies it over mTLS and the reconciler applies it with server-side apply; the
//! hub receives per-object results. Runs with FLOTILLA_E2E=1.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use flotilla_agent::apply::{Applier, ApplyConfig};
use flotilla_agent::connect::Agent;
use flotilla_agent::reconcile::{Reconciler, ReconcilerConfig};
use flotilla_bundle::SigningKey;
use flotilla_e2e::sim::RunningHub;
use flotilla_e2e::{TestCluster, skip_unless_e2e};
use flotilla_hub::delivery::{AckOutcome, Config, Hub, HubCa};
use flotilla_hub::fleet::MemoryRegistry;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_published_bundle_is_applied_in_the_workload_cluster_and_acked_per_object() -> Result<()>
{
    if skip_unless_e2e() {
        return Ok(());
    }
    let cluster = TestCluster::start("hub-to-cluster").await?;
    let client = cluster.client().await?;
    let ns =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flotilla-system"}});
    Api::<Namespace>::all(client.clone())
        .patch(
            "flotilla-system",
            &PatchParams::apply("e2e"),
            &Patch::Apply(&ns),
        )
        .await?;

    let hub = Hub::new(
        Arc::new(MemoryRegistry::default()),
        Arc::new(HubCa::generate("flotilla e2e hub")?),
        SigningKey::generate()?,
        Config::default(),
    )?;
    let hub = RunningHub::start(hub).await?;
    let registration = hub.register("workload-1").await?;
    let reconciler = Arc::new(Reconciler::new(
        Applier::new(client.clone(), ApplyConfig::default()),
        ReconcilerConfig {
            state_namespace: "flotilla-system".into(),
            watch_namespace: None,
        },
    ));
    let agent = Arc::new(Agent::new(hub.agent_config(), registration, reconciler));
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (agent, stop) = (agent.clone(), stop.clone());
        async move { agent.run(stop).await }
    });

    let objects = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "settings", "namespace": "shop"}, "data": {"colour": "blue"}}),
    ];
    let seq = hub
        .hub
        .publish("workload-1", "shop", "main@sha1:0001", &objects)?;
    let ack = hub
        .hub
        .wait_for_ack("workload-1", "shop", seq, WAIT)
        .await
        .context("no ack from the agent")?;
    assert_eq!(ack.outcome, AckOutcome::Applied, "{}", ack.message);
    // Everything applied: a summary ack (a count, no list); the hub lists them from the bundle.
    assert_eq!((ack.object_count, ack.objects.len()), (2, 0));
    let listed = hub
        .hub
        .ack_with_objects("workload-1", "shop")
        .context("ack kept")?;
    assert_eq!(
        listed.objects,
        vec![
            ("Namespace/shop".to_string(), true),
            ("ConfigMap/shop/settings".to_string(), true)
        ]
    );
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "shop")
        .get("settings")
        .await?;
    assert_eq!(cm.data.unwrap()["colour"], "blue");

    // A bundle with an invalid object: acked as failed, naming it; the valid one still applies.
    let objects = vec![
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "settings", "namespace": "shop"}, "data": {"colour": "green"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Not_Valid", "namespace": "shop"}}),
    ];
    let seq = hub
        .hub
        .publish("workload-1", "shop", "main@sha1:0002", &objects)?;
    let ack = hub
        .hub
        .wait_for_ack("workload-1", "shop", seq, WAIT)
        .await
        .context("no ack for the second bundle")?;
    assert_eq!(ack.outcome, AckOutcome::Failed);
    assert_eq!(ack.object_count, 2, "a failed bundle is acked in full");
    assert!(
        ack.message.contains("ConfigMap/shop/Not_Valid"),
        "{}",
        ack.message
    );
    assert!(
        ack.objects
            .contains(&("ConfigMap/shop/Not_Valid".to_string(), false))
    );
    let cm = Api::<ConfigMap>::namespaced(client, "shop")
        .get("settings")
        .await?;
    assert_eq!(cm.data.unwrap()["colour"], "green");

    stop.cancel();
    task.await??;
    hub.stop().await
}
