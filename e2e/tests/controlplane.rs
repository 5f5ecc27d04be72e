//! Proof that the harness gives real, independent Kubernetes control planes: what later e2e
//! tests rely on. Runs with FLOTILLA_E2E=1 (set by scripts/test.sh and CI).

use std::time::Duration;

use anyhow::{Context as _, Result};
use flotilla_e2e::controlplane::{self, ClusterState, ProcessRecord};
use flotilla_e2e::{TestCluster, eventually, skip_unless_e2e};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn ssa() -> PatchParams {
    PatchParams::apply("flotilla-e2e-test").force()
}

#[tokio::test]
async fn two_clusters_are_independent() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let (a, b) = tokio::try_join!(TestCluster::start("indep-a"), TestCluster::start("indep-b"))?;
    assert_ne!(a.server_url(), b.server_url());
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "only-in-a", "namespace": "default" },
        "data": { "cluster": a.name() },
    }))?;
    let in_a: Api<ConfigMap> = Api::default_namespaced(a.client().await?);
    let in_b: Api<ConfigMap> = Api::default_namespaced(b.client().await?);
    in_a.create(&PostParams::default(), &cm).await?;

    let got = in_a.get("only-in-a").await?;
    assert_eq!(got.data.unwrap()["cluster"], a.name());
    assert!(
        in_b.get_opt("only-in-a").await?.is_none(),
        "a ConfigMap made in a shows up in b"
    );
    Ok(())
}

#[tokio::test]
async fn api_server_reports_the_pinned_version() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let c = TestCluster::start("version").await?;
    let pinned = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/versions.env"))?
        .lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VERSION="))
        .context("KUBERNETES_VERSION in versions.env")?
        .trim()
        .to_string();
    let info = c.client().await?.apiserver_version().await?;
    assert_eq!(info.git_version, pinned);
    Ok(())
}

#[tokio::test]
async fn server_side_applied_deployment_becomes_available() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let c = TestCluster::start("deploy").await?;
    let client = c.client().await?;
    let deploy: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web", "namespace": "default" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "nginx:1.27" }] },
            },
        },
    }))?;
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    api.patch("web", &ssa(), &Patch::Apply(&deploy)).await?;

    let available = eventually("deployment web to be Available", WAIT, || {
        let api = api.clone();
        async move {
            let d = api.get("web").await.ok()?;
            let status = d.status?;
            let cond = status
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "Available")?;
            (cond.status == "True" && status.available_replicas == Some(2)).then_some(cond)
        }
    })
    .await?;
    assert_eq!(
        available.reason.as_deref(),
        Some("MinimumReplicasAvailable")
    );

    let pods: Api<Pod> = Api::default_namespaced(client);
    let running = pods.list(&ListParams::default().labels("app=web")).await?;
    assert_eq!(running.items.len(), 2);
    for p in running.items {
        assert_eq!(
            p.spec.unwrap().node_name.as_deref(),
            Some(controlplane::NODE_NAME)
        );
        assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));
    }
    Ok(())
}

#[tokio::test]
async fn crd_becomes_established_and_serves_custom_objects() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let c = TestCluster::start("crd").await?;
    let client = c.client().await?;
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.example.flotilla.dev" },
        "spec": {
            "group": "example.flotilla.dev",
            "names": { "kind": "Widget", "plural": "widgets", "singular": "widget" },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": { "type": "object", "properties": {
                    "spec": { "type": "object", "properties": { "size": { "type": "integer" } } },
                } } },
            }],
        },
    }))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch("widgets.example.flotilla.dev", &ssa(), &Patch::Apply(&crd))
        .await?;
    eventually("CRD widgets to be Established", WAIT, || {
        let crds = crds.clone();
        async move {
            let crd = crds.get("widgets.example.flotilla.dev").await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        }
    })
    .await?;

    let gvk = GroupVersionKind::gvk("example.flotilla.dev", "v1", "Widget");
    let ar = ApiResource::from_gvk(&gvk);
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let w: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.flotilla.dev/v1", "kind": "Widget",
        "metadata": { "name": "w1" }, "spec": { "size": 3 },
    }))?;
    widgets.patch("w1", &ssa(), &Patch::Apply(&w)).await?;
    let got = widgets.get("w1").await?;
    assert_eq!(got.data["spec"]["size"], 3);
    Ok(())
}

#[tokio::test]
async fn rbac_refuses_a_service_account_without_rights() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let c = TestCluster::start("rbac").await?;
    let admin = c.client().await?;
    let sas: Api<ServiceAccount> = Api::default_namespaced(admin.clone());
    let sa: ServiceAccount = serde_json::from_value(json!({ "metadata": { "name": "nobody" } }))?;
    sas.create(&PostParams::default(), &sa).await?;
    let token = sas
        .create_token_request("nobody", &PostParams::default(), &TokenRequest::default())
        .await?
        .status
        .context("token request status")?
        .token;

    let mut config = kube::Config::new(c.server_url().parse()?);
    config.root_cert = Some(vec![pem_to_der(&c.ca_pem()?)?]);
    config.auth_info.token = Some(token.into());
    let as_sa = Client::try_from(config)?;
    let cms: Api<ConfigMap> = Api::default_namespaced(as_sa.clone());

    let err = cms.list(&ListParams::default()).await.unwrap_err();
    match &err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403, "{err}");
            assert!(
                s.message.contains("system:serviceaccount:default:nobody"),
                "the refusal names the identity: {}",
                s.message
            );
        }
        other => panic!("expected a 403 from the API server, got {other}"),
    }

    // The same token works once RBAC allows it, so the refusal above was authorization.
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "read-cm" },
        "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"] }],
    }))?;
    Api::<Role>::default_namespaced(admin.clone())
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "nobody-read-cm" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-cm" },
        "subjects": [{ "kind": "ServiceAccount", "name": "nobody", "namespace": "default" }],
    }))?;
    Api::<RoleBinding>::default_namespaced(admin)
        .create(&PostParams::default(), &binding)
        .await?;
    eventually("the role binding to take effect", WAIT, || {
        let cms = cms.clone();
        async move { cms.list(&ListParams::default()).await.ok() }
    })
    .await?;
    Ok(())
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}

#[tokio::test]
async fn teardown_leaves_no_process_or_port_and_crashed_owners_are_swept() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    // Dropping a TestCluster stops every process and frees the API server port.
    let c = TestCluster::start("teardown").await?;
    let state = c.state().clone();
    assert!(state.all_running());
    drop(c);
    for p in &state.processes {
        assert!(
            !p.is_alive(),
            "{} (pid {}) still running",
            p.component,
            p.pid
        );
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", state.api_port)).is_err(),
        "port {} still open",
        state.api_port
    );
    assert!(ClusterState::load(&state.name)?.is_none());

    // A cluster whose owning process died is torn down by the next run's sweep.
    let mut owner = std::process::Command::new("sleep").arg("600").spawn()?;
    let record = ProcessRecord {
        component: "owner".into(),
        pid: owner.id(),
        start_ticks: controlplane::process_start_ticks(owner.id()).context("owner start")?,
        log: Default::default(),
    };
    let name = format!("orphan-{}", std::process::id());
    let orphan = controlplane::up(&name, Some(record)).await?;
    owner.kill()?;
    owner.wait()?;
    controlplane::sweep_orphans()?;
    for p in &orphan.processes {
        assert!(
            !p.is_alive(),
            "{} of the orphaned cluster still running",
            p.component
        );
    }
    assert!(ClusterState::load(&name)?.is_none());
    Ok(())
}
