//! The Helm charts on real control planes: `helm template` of `charts/flotilla-hub` and
//! `charts/flotilla-agent` is applied to a management and a workload cluster, then the real
//! `flotilla-hub` and `flotilla-agent` binaries run with the environment, arguments and mounted
//! files of the charts' Deployments and under the identities the charts create (a token of the
//! chart's ServiceAccount from the TokenRequest API, never the admin kubeconfig). A commit must
//! reach the workload cluster with no `forbidden` in either log, so a permission the charts
//! lack fails this test; and a hub whose Role lacks one rule is shown to fail. Runs with
//! FLOTILLA_E2E=1.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};
use flotilla_e2e::controlplane::TestCluster;
use flotilla_e2e::fleet::{Process, Repo, WorkloadSpec, tail};
use flotilla_e2e::pods::{
    apply, assert_nothing_forbidden, command, forbidden_lines, free_port, helm_template, local_pod,
    scrape_metrics, service_account_kubeconfig, start_hub,
};
use flotilla_e2e::{eventually, skip_unless_e2e, workspace_binary};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::api::ListParams;
use serde::Deserialize as _;
use serde_json::Value;

const NS: &str = "flotilla-system";
const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn charts_install_and_their_identities_run_the_loop() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("flotilla-charts-")
        .tempdir()?;
    let mgmt = TestCluster::start("charts-mgmt").await?;
    let workload = TestCluster::start("charts-wl").await?;
    let spec = WorkloadSpec::example("workload-1", "eu");

    // The hub chart, as `helm install flotilla charts/flotilla-hub -n flotilla-system` would.
    let hub_docs = helm_template("flotilla-hub", "flotilla-hub", NS, &[], &[])?;
    apply(&mgmt, &hub_docs).await?;
    let (mut hub, reg, del) = start_hub(&mgmt, &hub_docs, NS, &dir.path().join("hub")).await?;

    // The chart's identity is not the admin: it may not even list namespaces.
    let sa = local_pod(&hub_docs, NS, &dir.path().join("probe"))?.service_account;
    let sa_config = service_account_kubeconfig(&mgmt, NS, &sa, &dir.path().join("probe")).await?;
    let sa_client = flotilla_e2e::controlplane::admin_client(&sa_config).await?;
    let denied = Api::<Namespace>::all(sa_client)
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(e)) if e.code == 403),
        "the hub's ServiceAccount should not list namespaces: {denied:?}"
    );

    let info = Api::<ConfigMap>::namespaced(mgmt.client().await?, NS);
    eventually("the hub's ConfigMap", Duration::from_secs(60), || async {
        info.get_opt("flotilla-hub").await.ok().flatten()
    })
    .await
    .with_context(|| format!("hub log:\n{}", tail(&hub.log_text(), 40)))?;

    // Register the cluster as an operator does (the CLI runs with the operator's credentials).
    let wdir = dir.path().join("workload-1");
    let flotilla = workspace_binary("flotilla-hub", "flotilla")?;
    let mut add = Command::new(&flotilla);
    add.arg("--kubeconfig")
        .arg(mgmt.kubeconfig())
        .args(["cluster", "add", &spec.name, "--write"])
        .arg(&wdir);
    for (k, v) in &spec.labels {
        add.args(["--label", &format!("{k}={v}")]);
    }
    let out = add.output()?;
    anyhow::ensure!(
        out.status.success(),
        "flotilla cluster add: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The agent chart with the hub's CA and the token, as the install guide says, and its
    // metrics on (on loopback: the agent runs on this host).
    let metrics_port = free_port()?;
    let agent_docs = helm_template(
        "flotilla-agent",
        "flotilla-agent",
        NS,
        &[
            format!("hub.url=https://127.0.0.1:{del}"),
            format!("hub.registrationUrl=https://127.0.0.1:{reg}"),
            format!("clusterName={}", spec.name),
            "metrics.enabled=true".to_owned(),
            format!("metrics.listen=127.0.0.1:{metrics_port}"),
        ],
        &[
            format!("hub.caCert={}", wdir.join("ca.crt").display()),
            format!("bootstrapToken.value={}", wdir.join("token").display()),
        ],
    )?;
    apply(&workload, &agent_docs).await?;
    let adir = dir.path().join("agent");
    let pod = local_pod(&agent_docs, NS, &adir.join("pod"))?;
    let kubeconfig = service_account_kubeconfig(&workload, NS, &pod.service_account, &adir).await?;
    let mut cmd = command(&workspace_binary("flotilla-agent", "flotilla-agent")?, &pod);
    cmd.arg("--kubeconfig").arg(&kubeconfig);
    let mut agent = Process::spawn(cmd, adir.join("agent.log"))?;

    // The example fleet, applied by the operator: it must reach the workload cluster.
    let repo = Repo::seed(&dir.path().join("fleet-repo"))?;
    let head = repo.head()?;
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet/hub/fleet.yaml"),
    )?
    .replace("REPO_URL", &repo.path.display().to_string());
    let mut fleet_docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc)?;
        if !v.is_null() {
            fleet_docs.push(v);
        }
    }
    apply(&mgmt, &fleet_docs).await?;

    let deliveries = Api::<flotilla_hub::api::Delivery>::namespaced(mgmt.client().await?, "fleet");
    let logs = |hub: &Process, agent: &Process| {
        format!(
            "hub log:\n{}\nagent log:\n{}",
            tail(&hub.log_text(), 30),
            tail(&agent.log_text(), 30)
        )
    };
    for name in ["infrastructure", "apps"] {
        eventually(
            &format!("delivery fleet/{name} Ready at {head}"),
            WAIT,
            || async {
                let s = deliveries.get(name).await.ok()?.status?;
                let ready = s
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                let at = !s.clusters.is_empty()
                    && s.clusters
                        .iter()
                        .all(|c| c.revision.as_deref().is_some_and(|r| r.ends_with(&head)));
                (ready && at).then_some(())
            },
        )
        .await
        .with_context(|| logs(&hub, &agent))?;
    }
    // What the deliveries hold is in the workload cluster, applied by the agent's identity.
    let ns = Api::<Namespace>::all(workload.client().await?)
        .get_opt("podinfo")
        .await?;
    let managed = ns
        .as_ref()
        .and_then(|n| n.metadata.managed_fields.as_ref())
        .is_some_and(|f| f.iter().any(|m| m.manager.as_deref() == Some("flotilla")));
    assert!(
        managed,
        "namespace podinfo should be applied by flotilla: {ns:?}"
    );
    // The Cluster's status is written by the hub's identity.
    let cluster = Api::<flotilla_hub::api::Cluster>::all(mgmt.client().await?)
        .get(&spec.name)
        .await?;
    assert!(
        cluster.status.is_some(),
        "Cluster {} has no status",
        spec.name
    );

    // The chart's --metrics-listen serves the agent's metrics, on the port its Service targets.
    let service = agent_docs
        .iter()
        .find(|d| d["kind"] == "Service")
        .context("the agent chart renders no metrics Service")?;
    assert_eq!(service["spec"]["ports"][0]["port"], metrics_port);
    let scrape = scrape_metrics(metrics_port).await?;
    assert!(
        scrape
            .lines()
            .any(|l| l == "flotilla_agent_hub_connected 1"),
        "the agent's scrape shows no open hub stream:\n{scrape}"
    );
    assert!(
        scrape.contains("# TYPE flotilla_agent_apply_queue_depth gauge"),
        "{scrape}"
    );

    // Nothing was refused to either identity along the way.
    assert_nothing_forbidden(&hub, &agent);
    hub.stop();
    agent.stop();

    // The check above does catch a missing permission: the same chart with the leader-election
    // rule taken out of the hub's Role never gets to serve.
    let neg_ns = "flotilla-neg";
    let mut neg_docs: Vec<Value> = helm_template("flotilla-hub", "neg", neg_ns, &[], &[])?
        .into_iter()
        .filter(|d| d["kind"] != "CustomResourceDefinition")
        .collect();
    let role = neg_docs
        .iter_mut()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "neg-flotilla-hub-state")
        .context("the hub chart renders no state Role")?;
    let rules = role["rules"].as_array_mut().context("Role without rules")?;
    let before = rules.len();
    rules.retain(|r| !r["resources"].to_string().contains("leases"));
    assert_eq!(rules.len(), before - 1, "no leases rule in the state Role");
    apply(&mgmt, &neg_docs).await?;
    let (neg_hub, _, _) = start_hub(&mgmt, &neg_docs, neg_ns, &dir.path().join("neg")).await?;
    eventually(
        "the hub without the leases rule to log forbidden",
        Duration::from_secs(60),
        || async { (!forbidden_lines(&neg_hub.log_text()).is_empty()).then_some(()) },
    )
    .await
    .with_context(|| format!("hub log:\n{}", tail(&neg_hub.log_text(), 30)))?;
    let published = Api::<ConfigMap>::namespaced(mgmt.client().await?, neg_ns)
        .get_opt("flotilla-hub")
        .await?;
    assert!(
        published.is_none(),
        "a hub that cannot take its Lease must not serve"
    );
    Ok(())
}
