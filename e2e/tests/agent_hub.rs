//! The real `flotilla-agent run --hub ...` process against a real hub over mTLS: registration
//! that waits for the cluster to be accepted, signed bundles carrying delivery options, acks and
//! reports reaching the hub, the identity kept across SIGKILL, and stored bundles verified again
//! at restart. Runs with FLOTILLA_E2E=1.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use base64::Engine as _;
use flotilla_bundle::{DeliveryOptions, DriftMode, SigningKey};
use flotilla_e2e::sim::RunningHub;
use flotilla_e2e::{TestCluster, eventually, skip_unless_e2e, workspace_binary};
use flotilla_hub::delivery::{AckOutcome, Change, Config, Health, Hub, HubCa};
use flotilla_hub::fleet::{self, ClusterState, MemoryRegistry};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// A running `flotilla-agent` whose log (stderr) goes to a file; killed when dropped.
struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs.
    fn kill_9(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    cluster: TestCluster,
    dir: tempfile::TempDir,
    /// The hub's delivery and registration URLs.
    urls: (String, String),
}

async fn setup(name: &str) -> Result<(Setup, RunningHub)> {
    let cluster = TestCluster::start(name).await?;
    let hub = Hub::new(
        Arc::new(MemoryRegistry::default()),
        Arc::new(HubCa::generate("flotilla e2e hub")?),
        SigningKey::generate()?,
        Config::default(),
    )?;
    let hub = RunningHub::start(hub).await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("hub-ca.pem"), hub.hub.ca_pem())?;
    let urls = (hub.delivery.url.clone(), hub.registration.url.clone());
    Ok((Setup { cluster, dir, urls }, hub))
}

impl Setup {
    fn agent(&self, cluster: &str, token: Option<&Path>, log: &str) -> Result<AgentProcess> {
        let bin = workspace_binary("flotilla-agent", "flotilla-agent")?;
        let log = self.dir.path().join(log);
        let mut cmd = Command::new(bin);
        cmd.arg("--kubeconfig")
            .arg(self.cluster.kubeconfig())
            .arg("run")
            .args(["--hub", &self.urls.0])
            .args(["--hub-registration", &self.urls.1])
            .arg("--hub-ca")
            .arg(self.dir.path().join("hub-ca.pem"))
            .args(["--cluster", cluster]);
        if let Some(token) = token {
            cmd.arg("--token-file").arg(token);
        }
        let child = cmd
            .env("FLOTILLA_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting flotilla-agent run")?;
        Ok(AgentProcess { child, log })
    }
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn cm(ns: &str, name: &str, colour: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns}, "data": {"colour": colour}})
}

async fn colour(cms: &Api<ConfigMap>, name: &str) -> Option<String> {
    cms.get_opt(name).await.ok()??.data?.get("colour").cloned()
}

#[tokio::test]
async fn agent_registers_once_applies_signed_options_reports_and_resumes_after_kill_9() -> Result<()>
{
    if skip_unless_e2e() {
        return Ok(());
    }
    let (s, running) = setup("agent-hub").await?;
    let hub = &running.hub;
    let client = s.cluster.client().await?;
    let registry = hub.registry().clone();

    // The operator issued a token but has not accepted the cluster yet.
    registry.set_state("edge-1", ClusterState::Pending).await;
    let token = fleet::issue_token(registry.as_ref(), "edge-1", Duration::from_secs(600)).await?;
    let token_file = s.dir.path().join("token");
    std::fs::write(&token_file, format!("{}\n", token.expose()))?;
    let mut agent = s.agent("edge-1", Some(&token_file), "agent-1.log")?;
    eventually("the agent to say the hub has not accepted it", WAIT, || {
        let log = agent.log();
        async move {
            log.contains("has not accepted this cluster yet")
                .then_some(())
        }
    })
    .await?;
    assert!(!hub.is_connected("edge-1"));
    registry.set_state("edge-1", ClusterState::Accepted).await;
    let info = eventually("the agent to connect once accepted", WAIT, || async move {
        hub.agent_info("edge-1").filter(|a| a.connected)
    })
    .await?;
    assert_eq!(info.agent_version, flotilla_agent::VERSION);
    let identity = Api::<Secret>::namespaced(client.clone(), "flotilla-system")
        .get("flotilla-agent-identity")
        .await?;
    let data = identity.data.unwrap_or_default();
    for key in ["tls.key", "tls.crt", "ca.crt", "state.json"] {
        assert!(data.contains_key(key), "identity Secret lacks {key}");
    }

    // A bundle with options: report drift only, never prune.
    let options = DeliveryOptions {
        prune: false,
        drift: DriftMode::Report,
        ..DeliveryOptions::default()
    };
    let objects = vec![
        namespace("web"),
        cm("web", "cfg", "blue"),
        cm("web", "extra", "green"),
    ];
    let seq1 = hub.publish_with_options("edge-1", "web", "rev-1", &objects, &options)?;
    let ack = hub
        .wait_for_ack("edge-1", "web", seq1, WAIT)
        .await
        .context("no ack for the first bundle")?;
    assert_eq!(ack.outcome, AckOutcome::Applied, "{}", ack.message);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "web");
    assert_eq!(colour(&cms, "cfg").await.as_deref(), Some("blue"));
    let report = eventually(
        "a healthy report of the first bundle",
        WAIT,
        || async move {
            hub.report("edge-1", "web")
                .filter(|r| r.sequence == seq1 && r.health == Health::Healthy)
        },
    )
    .await?;
    assert_eq!((report.inventory_objects, report.drifted_objects), (3, 0));
    assert!(report.message.contains("rev-1"), "{}", report.message);

    // Someone edits an object: reported as drift, and (report mode) left as it is.
    cms.patch(
        "cfg",
        &PatchParams::apply("someone-else").force(),
        &Patch::Apply(cm("web", "cfg", "red")),
    )
    .await?;
    let report = eventually("a drift report", WAIT, || async move {
        hub.report("edge-1", "web")
            .filter(|r| r.drifted_objects == 1)
    })
    .await?;
    assert_eq!(report.drifted, vec!["ConfigMap/web/cfg".to_string()]);
    assert!(
        // The whole of `data` moved to the other manager, so that is the drifted field.
        report
            .message
            .contains("ConfigMap/web/cfg drifted (data changed by someone-else)")
            && report.message.contains("not corrected"),
        "{}",
        report.message
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(colour(&cms, "cfg").await.as_deref(), Some("red"));

    // The next bundle drops `extra`; with prune off it stays. It puts `cfg` back.
    let objects = vec![namespace("web"), cm("web", "cfg", "blue")];
    let seq2 = hub.publish_with_options("edge-1", "web", "rev-2", &objects, &options)?;
    let ack = hub
        .wait_for_ack("edge-1", "web", seq2, WAIT)
        .await
        .context("no ack for the second bundle")?;
    assert_eq!(ack.outcome, AckOutcome::Applied, "{}", ack.message);
    assert_eq!(colour(&cms, "cfg").await.as_deref(), Some("blue"));
    assert_eq!(
        colour(&cms, "extra").await.as_deref(),
        Some("green"),
        "prune: false keeps what left the bundle"
    );
    eventually("a clean report of the second bundle", WAIT, || async move {
        hub.report("edge-1", "web")
            .filter(|r| r.sequence == seq2 && r.health == Health::Healthy && r.drifted_objects == 0)
    })
    .await?;

    // SIGKILL, then restart without any token: the stored identity reconnects, and the hub
    // sends nothing the agent already holds.
    agent.kill_9()?;
    let first_log = agent.log();
    eventually("the hub to see the agent gone", WAIT, || async move {
        hub.agent_info("edge-1").filter(|a| !a.connected)
    })
    .await?;
    std::fs::remove_file(&token_file)?;
    let acked = hub.ack("edge-1", "web");
    let restarted = SystemTime::now();
    let mut changes = hub.subscribe_changes();
    let agent = s.agent("edge-1", None, "agent-2.log")?;
    eventually("the restarted agent to reconnect", WAIT, || async move {
        hub.agent_info("edge-1")
            .filter(|a| a.connected && a.connected_at >= restarted)
    })
    .await?;
    let report = eventually("a report after the reconnection", WAIT, || async move {
        hub.report("edge-1", "web")
            .filter(|r| r.received_at >= restarted)
    })
    .await?;
    assert_eq!(report.sequence, seq2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let info = hub.agent_info("edge-1").context("agent info")?;
    assert!(info.connected);
    assert_eq!(
        info.bundles_sent, 0,
        "the hub re-sent a bundle the agent held"
    );
    assert_eq!(hub.ack("edge-1", "web"), acked, "the agent acked again");
    while let Ok(change) = changes.try_recv() {
        assert!(
            !matches!(&change, Change::Acked { cluster, .. } if cluster == "edge-1"),
            "{change:?}"
        );
    }
    let second_log = agent.log();
    assert!(
        !second_log.contains("registered with the hub"),
        "{second_log}"
    );
    for log in [&first_log, &second_log] {
        assert!(!log.contains(token.expose()), "the token was logged");
        assert!(!log.contains("PRIVATE KEY"), "the key was logged");
    }
    drop(agent);
    running.stop().await
}

/// Decodes the gzip JSON of a stored bundle Secret, lets `edit` change it, and writes it back.
fn edit_stored(secret: &mut Secret, edit: impl FnOnce(&mut Value)) -> Result<()> {
    let data = secret.data.as_mut().context("stored bundle has no data")?;
    let gz = data.get("bundle.json.gz").context("no bundle.json.gz")?;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&gz.0[..]).read_to_end(&mut json)?;
    let mut v: Value = serde_json::from_slice(&json)?;
    edit(&mut v);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &serde_json::to_vec(&v)?)?;
    data.insert("bundle.json.gz".into(), ByteString(enc.finish()?));
    Ok(())
}

#[tokio::test]
async fn a_tampered_stored_bundle_is_refused_at_restart_and_the_hub_sends_the_real_one()
-> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let (s, running) = setup("agent-tamper").await?;
    let client = s.cluster.client().await?;
    let token = running.accepted_cluster("edge-2").await?;
    let token_file = s.dir.path().join("token");
    std::fs::write(&token_file, token.expose())?;
    let mut agent = s.agent("edge-2", Some(&token_file), "agent-1.log")?;
    let objects = vec![namespace("shop"), cm("shop", "settings", "blue")];
    let seq = running.hub.publish("edge-2", "shop", "rev-1", &objects)?;
    let ack = running
        .hub
        .wait_for_ack("edge-2", "shop", seq, WAIT)
        .await
        .context("no ack")?;
    assert_eq!(ack.outcome, AckOutcome::Applied, "{}", ack.message);
    agent.kill_9()?;

    // With the hub down, someone rewrites the stored bundle to change the ConfigMap.
    let (hub, addrs) = (running.hub.clone(), running.addrs);
    running.stop().await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "flotilla-system");
    let stored = secrets
        .list(&ListParams::default().labels("flotilla.dev/bundle-delivery=shop"))
        .await?
        .items;
    assert_eq!(stored.len(), 1, "one chunk");
    let mut secret = stored.into_iter().next().context("no stored bundle")?;
    assert_eq!(
        secret.metadata.labels.clone().unwrap_or_default()["flotilla.dev/bundle-origin"],
        "signed"
    );
    edit_stored(&mut secret, |v| {
        let b64 = base64::engine::general_purpose::STANDARD;
        let payload = v["signed"]["payload"].as_str().unwrap_or_default();
        let text = String::from_utf8(b64.decode(payload).unwrap_or_default()).unwrap_or_default();
        assert!(text.contains("\"blue\""), "{text}");
        v["signed"]["payload"] = json!(b64.encode(text.replace("\"blue\"", "\"evil\"")));
    })?;
    let name = secret.metadata.name.clone().context("unnamed Secret")?;
    secret.metadata.managed_fields = None;
    secrets
        .replace(&name, &PostParams::default(), &secret)
        .await?;

    // The restarted agent refuses it and applies nothing of it.
    let agent = s.agent("edge-2", None, "agent-2.log")?;
    let refusal = eventually("the agent to refuse the tampered bundle", WAIT, || {
        let log = agent.log();
        async move {
            log.lines()
                .find(|l| l.contains("refused the stored bundle of delivery shop"))
                .map(str::to_owned)
        }
    })
    .await?;
    assert!(refusal.contains("failed verification"), "{refusal}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    assert_eq!(colour(&cms, "settings").await.as_deref(), Some("blue"));

    // Back online, the agent no longer claims to hold the delivery: the hub sends the real
    // bundle again and it is applied.
    let mut changes = hub.subscribe_changes();
    let running = RunningHub::start_at(hub.clone(), addrs.0, addrs.1).await?;
    tokio::time::timeout(WAIT, async {
        loop {
            match changes.recv().await {
                Ok(Change::Acked { cluster, delivery })
                    if cluster == "edge-2" && delivery == "shop" =>
                {
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("change stream: {e}")),
            }
        }
    })
    .await
    .context("no new ack after the hub came back")??;
    let ack = hub.ack("edge-2", "shop").context("ack")?;
    assert_eq!(
        (ack.outcome, ack.sequence),
        (AckOutcome::Applied, seq),
        "{}",
        ack.message
    );
    assert!(hub.agent_info("edge-2").context("info")?.bundles_sent >= 1);
    assert_eq!(colour(&cms, "settings").await.as_deref(), Some("blue"));
    assert!(
        !agent.log().contains(token.expose()),
        "the token was logged"
    );
    drop(agent);
    running.stop().await
}
