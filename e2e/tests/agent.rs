//! The agent's apply engine on real control planes: apply, health, prune, drift, restarts.
//! Runs with FLOTILLA_E2E=1 (set by scripts/test.sh and CI).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use flotilla_agent::apply::{Action, Applier, ApplyConfig, IgnoreRule};
use flotilla_agent::drift::{DriftEvent, DriftKind, DriftMode};
use flotilla_agent::reconcile::{DeliveryOptions, Desired, Reconciler, ReconcilerConfig, Status};
use flotilla_e2e::{TestCluster, eventually, skip_unless_e2e};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(30);

async fn reconciler(c: &TestCluster) -> Result<Reconciler> {
    let client = c.client().await?;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "flotilla-system"}}))?;
    Api::<Namespace>::all(client.clone())
        .patch(
            "flotilla-system",
            &PatchParams::apply("e2e"),
            &Patch::Apply(&ns),
        )
        .await?;
    Ok(Reconciler::new(
        Applier::new(client, ApplyConfig::default()),
        ReconcilerConfig {
            state_namespace: "flotilla-system".into(),
            watch_namespace: None,
        },
    ))
}

fn cm(ns: &str, name: &str, value: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns}, "data": {"value": value}})
}

fn deployment(ns: &str, name: &str, replicas: i64, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]}}}})
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn desired(delivery: &str, sequence: u64, objects: Vec<Value>) -> Desired {
    Desired {
        delivery: delivery.into(),
        revision: format!("main@sha1:{sequence:040}"),
        sequence,
        objects,
        options: DeliveryOptions::default(),
    }
}

fn kubectl(c: &TestCluster, args: &[&str], editor: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(c.kubeconfig()).args(args);
    if let Some(e) = editor {
        cmd.env("KUBE_EDITOR", e);
    }
    let out = cmd.output().context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The next drift event matching `pred`, within `WAIT`.
async fn next_event(
    rx: &mut broadcast::Receiver<DriftEvent>,
    pred: impl Fn(&DriftEvent) -> bool,
) -> Result<DriftEvent> {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = rx.recv().await?;
            if pred(&e) {
                return Ok(e);
            }
        }
    })
    .await
    .context("no matching drift event in time")?
}

#[tokio::test]
async fn a_thousand_objects_apply_and_become_healthy() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let c = TestCluster::start("agent-1k").await?;
    let rec = reconciler(&c).await?;
    let objects = bulk_objects();
    assert_eq!(objects.len(), 1001);
    let out = rec.apply(desired("bulk", 1, objects)).await?;
    assert_eq!(out.status, Status::Applied, "{}", out.message);
    assert_eq!(
        out.results
            .iter()
            .filter(|r| r.action == Action::Created)
            .count(),
        1001
    );

    let health = rec.wait_healthy("bulk", Duration::from_secs(120)).await;
    assert!(health.healthy, "not healthy: {:?}", health.not_ready);
    let d = Api::<Deployment>::namespaced(c.client().await?, "bulk")
        .get("app-249")
        .await?;
    assert_eq!(d.status.unwrap().available_replicas, Some(1));

    // Applying the same bundle again changes nothing.
    let again = rec.apply(desired("bulk", 2, bulk_objects())).await?;
    assert_eq!(again.status, Status::Applied);
    let unchanged = again
        .results
        .iter()
        .filter(|r| r.action == Action::Unchanged)
        .count();
    assert_eq!(unchanged, 1001, "{}", again.message);
    Ok(())
}

/// A namespace and 250 units of ConfigMap, ServiceAccount, Service and Deployment.
fn bulk_objects() -> Vec<Value> {
    let mut objects = vec![namespace("bulk")];
    for i in 0..250 {
        objects.push(cm("bulk", &format!("config-{i}"), "v1"));
        objects.push(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": format!("sa-{i}"), "namespace": "bulk"}}));
        objects.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": "bulk"},
            "spec": {"selector": {"app": format!("app-{i}")}, "ports": [{"port": 80}]}}));
        objects.push(deployment("bulk", &format!("app-{i}"), 1, "nginx:1.27"));
    }
    objects
}

#[tokio::test]
async fn drift_is_reverted_deleted_objects_return_and_prune_is_careful() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let c = TestCluster::start("agent-drift").await?;
    let client = c.client().await?;
    let rec = reconciler(&c).await?;
    let mut events = rec.subscribe();
    let bundle = vec![
        namespace("shop"),
        deployment("shop", "web", 1, "nginx:1.27"),
        cm("shop", "settings", "blue"),
        cm("shop", "legacy", "old"),
    ];
    let out = rec.apply(desired("shop", 1, bundle.clone())).await?;
    assert_eq!(out.status, Status::Applied, "{}", out.message);

    // `kubectl edit` of a field flotilla owns is reported and reverted.
    kubectl(
        &c,
        &["-n", "shop", "edit", "deployment/web"],
        Some("sed -i s#nginx:1.27#nginx:evil#"),
    )?;
    let detected = next_event(&mut events, |e| {
        e.object.name == "web" && e.corrected_ms.is_none()
    })
    .await?;
    match &detected.kind {
        DriftKind::Modified { fields, managers } => {
            assert_eq!(
                fields,
                &vec!["spec.template.spec.containers[name=app].image".to_string()]
            );
            assert_eq!(managers, &vec!["kubectl-edit".to_string()]);
        }
        other => panic!("expected a modification, got {other:?}"),
    }
    next_event(&mut events, |e| {
        e.object.name == "web" && e.corrected_ms.is_some()
    })
    .await?;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let image = deploys
        .get("web")
        .await?
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("nginx:1.27"));

    // A deleted object is recreated.
    kubectl(&c, &["-n", "shop", "delete", "configmap", "settings"], None)?;
    let e = next_event(&mut events, |e| {
        e.object.name == "settings" && e.corrected_ms.is_some()
    })
    .await?;
    assert_eq!(e.kind, DriftKind::Deleted);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    assert_eq!(cms.get("settings").await?.data.unwrap()["value"], "blue");

    // An invalid object fails by name, the rest apply, and nothing is pruned.
    let mut broken = vec![
        bundle[0].clone(),
        bundle[1].clone(),
        cm("shop", "settings", "green"),
    ];
    broken.push(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "Bad_Name", "namespace": "shop"}}));
    let out = rec.apply(desired("shop", 2, broken)).await?;
    assert_eq!(out.status, Status::ApplyFailed);
    assert!(
        out.message.contains("ConfigMap/shop/Bad_Name"),
        "{}",
        out.message
    );
    assert!(out.pruned.is_empty());
    assert_eq!(cms.get("settings").await?.data.unwrap()["value"], "green");
    assert!(
        cms.get_opt("legacy").await?.is_some(),
        "nothing may be pruned after a failed apply"
    );

    // An empty bundle is refused; nothing is pruned.
    let out = rec.apply(desired("shop", 3, vec![])).await?;
    assert_eq!(out.status, Status::Refused);
    assert!(
        out.message.contains("refused an empty bundle"),
        "{}",
        out.message
    );
    assert!(cms.get_opt("legacy").await?.is_some());

    // An object removed from the bundle is pruned once everything applies; one annotated to be
    // kept stays.
    cms.patch(
        "settings",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"flotilla.dev/prune": "disabled"}}})),
    )
    .await?;
    let out = rec
        .apply(desired(
            "shop",
            4,
            vec![bundle[0].clone(), bundle[1].clone()],
        ))
        .await?;
    assert_eq!(out.status, Status::Applied, "{}", out.message);
    let pruned: Vec<String> = out.pruned.iter().map(|r| r.to_string()).collect();
    assert_eq!(pruned, vec!["ConfigMap/shop/legacy".to_string()]);
    assert_eq!(out.kept.len(), 1);
    eventually("legacy to be deleted", WAIT, || {
        let cms = cms.clone();
        async move { cms.get_opt("legacy").await.ok()?.is_none().then_some(()) }
    })
    .await?;
    assert!(
        cms.get_opt("settings").await?.is_some(),
        "the annotated object is kept"
    );
    // Pruning is not drift: no event for legacy.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok(e) = events.try_recv() {
        assert_ne!(e.object.name, "legacy", "pruning reported as drift: {e:?}");
    }
    Ok(())
}

#[tokio::test]
async fn report_only_and_ignore_rules_leave_other_writers_alone() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let c = TestCluster::start("agent-report").await?;
    let client = c.client().await?;
    let rec = reconciler(&c).await?;
    let mut events = rec.subscribe();

    let mut watch_only = desired(
        "audit",
        1,
        vec![namespace("audit"), cm("audit", "cfg", "a")],
    );
    watch_only.options.drift = DriftMode::Report;
    assert_eq!(rec.apply(watch_only).await?.status, Status::Applied);

    let mut scaled = desired(
        "scaled",
        1,
        vec![deployment("audit", "api", 2, "nginx:1.27")],
    );
    scaled.options.ignore = vec![IgnoreRule {
        paths: vec!["/spec/replicas".into()],
        kind: "Deployment".into(),
        name: String::new(),
        namespace: String::new(),
    }];
    assert_eq!(rec.apply(scaled).await?.status, Status::Applied);

    // Report-only: the change is reported, not corrected.
    kubectl(
        &c,
        &[
            "-n",
            "audit",
            "patch",
            "configmap",
            "cfg",
            "-p",
            r#"{"data":{"value":"b"}}"#,
        ],
        None,
    )?;
    let e = next_event(&mut events, |e| e.object.name == "cfg").await?;
    assert!(e.report_only);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "audit");
    assert_eq!(cms.get("cfg").await?.data.unwrap()["value"], "b");

    // Ignored field: another writer scales, flotilla neither reports nor reverts.
    kubectl(
        &c,
        &["-n", "audit", "scale", "deployment/api", "--replicas=5"],
        None,
    )?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    while let Ok(e) = events.try_recv() {
        assert_ne!(e.object.name, "api", "an ignored field was reported: {e:?}");
    }
    let d = Api::<Deployment>::namespaced(client, "audit")
        .get("api")
        .await?;
    assert_eq!(d.spec.unwrap().replicas, Some(5));
    Ok(())
}

#[tokio::test]
async fn a_restarted_agent_resumes_from_the_stored_bundle() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let c = TestCluster::start("agent-restart").await?;
    let client = c.client().await?;
    {
        let first = reconciler(&c).await?;
        let out = first
            .apply(desired(
                "app",
                7,
                vec![namespace("app"), cm("app", "cfg", "stored")],
            ))
            .await?;
        assert_eq!(out.status, Status::Applied);
    }
    // While no agent runs, someone deletes an object.
    kubectl(&c, &["-n", "app", "delete", "configmap", "cfg"], None)?;
    // A new agent with no hub resumes from what the previous one stored, and corrects drift.
    let second = reconciler(&c).await?;
    let resumed = second.resume(None).await?.outcomes;
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].sequence, 7);
    let cms: Api<ConfigMap> = Api::namespaced(client, "app");
    assert_eq!(cms.get("cfg").await?.data.unwrap()["value"], "stored");
    let mut events = second.subscribe();
    kubectl(
        &c,
        &[
            "-n",
            "app",
            "patch",
            "configmap",
            "cfg",
            "-p",
            r#"{"data":{"value":"x"}}"#,
        ],
        None,
    )?;
    next_event(&mut events, |e| {
        e.object.name == "cfg" && e.corrected_ms.is_some()
    })
    .await?;
    assert_eq!(cms.get("cfg").await?.data.unwrap()["value"], "stored");
    Ok(())
}

#[tokio::test]
async fn a_namespace_scoped_agent_reports_forbidden_objects_by_name() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let c = TestCluster::start("agent-rbac").await?;
    let admin = c.client().await?;
    // The namespace-scoped agent RBAC documented in docs/agent.md, for namespace team-a.
    for ns in ["team-a", "team-b"] {
        kubectl(&c, &["create", "namespace", ns], None)?;
    }
    let rbac = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/rbac/agent-namespaced.yaml"
    ))?
    .replace("NAMESPACE", "team-a");
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), rbac)?;
    kubectl(&c, &["apply", "-f", file.path().to_str().unwrap()], None)?;
    let token = kubectl(
        &c,
        &["-n", "team-a", "create", "token", "flotilla-agent"],
        None,
    )?;

    let mut config = kube::Config::new(c.server_url().parse()?);
    config.root_cert = Some(vec![pem_der(&c.ca_pem()?)?]);
    config.auth_info.token = Some(token.trim().to_string().into());
    let as_agent = kube::Client::try_from(config)?;
    let rec = Reconciler::new(
        Applier::new(as_agent, ApplyConfig::default()),
        ReconcilerConfig {
            state_namespace: "team-a".into(),
            watch_namespace: Some("team-a".into()),
        },
    );
    let out = rec
        .apply(desired(
            "team",
            1,
            vec![cm("team-a", "mine", "ok"), cm("team-b", "theirs", "no")],
        ))
        .await?;
    assert_eq!(out.status, Status::ApplyFailed);
    let theirs = out
        .results
        .iter()
        .find(|r| r.object.name == "theirs")
        .unwrap();
    assert_eq!(theirs.action, Action::Failed);
    let msg = theirs.message.as_deref().unwrap_or_default();
    assert!(msg.contains("forbidden") && msg.contains("team-b"), "{msg}");
    assert!(
        out.message.contains("ConfigMap/team-b/theirs"),
        "{}",
        out.message
    );
    let mine = out
        .results
        .iter()
        .find(|r| r.object.name == "mine")
        .unwrap();
    assert_eq!(mine.action, Action::Created);
    assert!(
        Api::<ConfigMap>::namespaced(admin.clone(), "team-a")
            .get_opt("mine")
            .await?
            .is_some()
    );
    assert!(
        Api::<ConfigMap>::namespaced(admin, "team-b")
            .get_opt("theirs")
            .await?
            .is_none()
    );
    Ok(())
}

fn pem_der(pem: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}
