//! The Helm charts on real control planes: `helm template` of `charts/flotilla-hub` and
//! `charts/flotilla-agent` is applied to a management and a workload cluster, then the real
//! `flotilla-hub` and `flotilla-agent` binaries run with the environment, arguments and mounted
//! files of the charts' Deployments and under the identities the charts create (a token of the
//! chart's ServiceAccount from the TokenRequest API, never the admin kubeconfig). A commit must
//! reach the workload cluster with no `forbidden` in either log, so a permission the charts
//! lack fails this test; and a hub whose Role lacks one rule is shown to fail. Runs with
//! FLOTILLA_E2E=1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use flotilla_e2e::controlplane::TestCluster;
use flotilla_e2e::fleet::{Process, Repo, WorkloadSpec, tail};
use flotilla_e2e::{eventually, helm_binary, skip_unless_e2e, workspace_binary};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde::Deserialize as _;
use serde_json::Value;

const NS: &str = "flotilla-system";
const WAIT: Duration = Duration::from_secs(120);

fn charts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts")
}

/// `helm template RELEASE charts/CHART -n NAMESPACE --include-crds` with `--set` and
/// `--set-file` values, as YAML documents.
fn helm_template(
    chart: &str,
    release: &str,
    namespace: &str,
    set: &[String],
    set_file: &[String],
) -> Result<Vec<Value>> {
    let mut cmd = Command::new(helm_binary()?);
    cmd.args(["template", release])
        .arg(charts_dir().join(chart))
        .args(["--namespace", namespace, "--include-crds"]);
    for s in set {
        cmd.args(["--set", s]);
    }
    for s in set_file {
        cmd.args(["--set-file", s]);
    }
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "helm template {chart} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v =
            Value::deserialize(doc).with_context(|| format!("parsing helm template {chart}"))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Server-side applies `docs` as the admin (CRDs first, waiting until they are established).
async fn apply(cluster: &TestCluster, docs: &[Value]) -> Result<()> {
    let client = cluster.client().await?;
    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}});
    let pp = PatchParams::apply("flotilla-e2e").force();
    let mut namespaces: Vec<&str> = docs
        .iter()
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    namespaces.dedup();
    for n in namespaces {
        let mut ns = ns.clone();
        ns["metadata"]["name"] = n.into();
        Api::<Namespace>::all(client.clone())
            .patch(n, &pp, &Patch::Apply(&ns))
            .await
            .with_context(|| format!("creating namespace {n}"))?;
    }
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
    {
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        crds.patch(&name, &pp, &Patch::Apply(doc))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        eventually(
            &format!("CRD {name} established"),
            Duration::from_secs(30),
            || async {
                let crd = crds.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await?;
    }
    let discovery = kube::Discovery::new(client.clone()).run().await?;
    for doc in docs
        .iter()
        .filter(|d| d["kind"] != "CustomResourceDefinition")
    {
        let obj: DynamicObject = serde_json::from_value(doc.clone())?;
        let gvk =
            kube::api::GroupVersionKind::try_from(obj.types.as_ref().context("apiVersion/kind")?)?;
        let (ar, caps) = discovery
            .resolve_gvk(&gvk)
            .with_context(|| format!("unknown kind {gvk:?}"))?;
        let name = obj.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = match (&obj.metadata.namespace, caps.scope) {
            (Some(ns), kube::discovery::Scope::Namespaced) => {
                Api::namespaced_with(client.clone(), ns, &ar)
            }
            _ => Api::all_with(client.clone(), &ar),
        };
        api.patch(&name, &pp, &Patch::Apply(doc))
            .await
            .with_context(|| format!("applying {} {name}", gvk.kind))?;
    }
    Ok(())
}

/// A kubeconfig holding a fresh token of ServiceAccount `namespace/name` (TokenRequest API).
async fn service_account_kubeconfig(
    cluster: &TestCluster,
    namespace: &str,
    name: &str,
    dir: &Path,
) -> Result<PathBuf> {
    let api = Api::<ServiceAccount>::namespaced(cluster.client().await?, namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let response: TokenRequest = api
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{name}"))?;
    let token = response
        .status
        .context("TokenRequest without status")?
        .token;
    std::fs::create_dir_all(dir)?;
    let ca = dir.join("apiserver-ca.crt");
    std::fs::write(&ca, cluster.ca_pem()?)?;
    let path = dir.join(format!("{name}.kubeconfig"));
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {
            "server": cluster.server_url(),
            "certificate-authority": ca.display().to_string(),
        }}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "c", "user": name, "namespace": namespace}}],
        "current-context": name,
    });
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path)
}

/// What the chart's Deployment gives its container, made local: its ServiceAccount, its `args`,
/// and its environment with every mounted volume a directory under `dir` (ConfigMap and Secret
/// volumes filled from the chart's own objects, as the kubelet would).
struct LocalPod {
    service_account: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn local_pod(docs: &[Value], namespace: &str, dir: &Path) -> Result<LocalPod> {
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .context("the chart renders no Deployment")?;
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let object = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .with_context(|| format!("the chart renders no {kind} {name}"))
    };
    let mut mounts = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = m["name"].as_str().context("volumeMount without name")?;
        let path = m["mountPath"]
            .as_str()
            .context("volumeMount without path")?;
        let local = dir.join("volumes").join(name);
        std::fs::create_dir_all(&local)?;
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == name)
            .with_context(|| format!("no volume {name}"))?;
        if let Some(cm) = volume["configMap"]["name"].as_str() {
            for (k, v) in object("ConfigMap", cm)?["data"]
                .as_object()
                .into_iter()
                .flatten()
            {
                std::fs::write(local.join(k), v.as_str().unwrap_or_default())?;
            }
        } else if let Some(s) = volume["secret"]["secretName"].as_str() {
            for (k, v) in object("Secret", s)?["data"]
                .as_object()
                .into_iter()
                .flatten()
            {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())?;
                std::fs::write(local.join(k), bytes)?;
            }
        } else if volume.get("emptyDir").is_none() {
            bail!("volume {name}: only configMap, secret and emptyDir are made local");
        }
        mounts.push((path.to_owned(), local));
    }
    let mut env = Vec::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().context("env without name")?.to_owned();
        let value = match (
            e["value"].as_str(),
            e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Some(v), _) => v.to_owned(),
            (None, Some("metadata.namespace")) => namespace.to_owned(),
            (None, Some("metadata.name")) => "chart-pod-0".to_owned(),
            _ => bail!("env {name}: not a value or a known fieldRef"),
        };
        let value = mounts
            .iter()
            .find_map(|(p, local)| {
                value
                    .strip_prefix(p.as_str())
                    .map(|rest| format!("{}{rest}", local.display()))
            })
            .unwrap_or(value);
        env.push((name, value));
    }
    let args = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    Ok(LocalPod {
        service_account: pod["serviceAccountName"]
            .as_str()
            .context("no serviceAccountName")?
            .to_owned(),
        args,
        env,
    })
}

fn command(bin: &Path, pod: &LocalPod) -> Command {
    let mut cmd = Command::new(bin);
    for k in ["KUBECONFIG", "FLOTILLA_KUBECONFIG"] {
        cmd.env_remove(k);
    }
    cmd.envs(pod.env.iter().map(|(k, v)| (k, v)))
        .args(&pod.args);
    cmd
}

/// `GET http://127.0.0.1:PORT/metrics`, the body.
async fn scrape_metrics(port: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to the agent's metrics port {port}"))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8(buf)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    anyhow::ensure!(head.contains(" 200 "), "GET /metrics: {head}");
    Ok(body.to_owned())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn forbidden_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
        .collect()
}

/// Starts the hub of `docs` (rendered for `namespace`) under its chart identity.
async fn start_hub(
    mgmt: &TestCluster,
    docs: &[Value],
    namespace: &str,
    dir: &Path,
) -> Result<(Process, u16, u16)> {
    let pod = local_pod(docs, namespace, &dir.join("pod"))?;
    let kubeconfig = service_account_kubeconfig(mgmt, namespace, &pod.service_account, dir).await?;
    let (reg, del) = (free_port()?, free_port()?);
    let mut cmd = command(&workspace_binary("flotilla-hub", "flotilla-hub")?, &pod);
    cmd.arg("--kubeconfig")
        .arg(&kubeconfig)
        // Loopback ports instead of the Pod's 0.0.0.0:744x, so tests can run side by side.
        .args(["--registration-listen", &format!("127.0.0.1:{reg}")])
        .args(["--delivery-listen", &format!("127.0.0.1:{del}")])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port()?)]);
    Ok((Process::spawn(cmd, dir.join("hub.log"))?, reg, del))
}

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
    let (hub_log, agent_log) = (hub.log_text(), agent.log_text());
    assert!(
        forbidden_lines(&hub_log).is_empty() && forbidden_lines(&agent_log).is_empty(),
        "the charts' RBAC refused something:\nhub: {:#?}\nagent: {:#?}",
        forbidden_lines(&hub_log),
        forbidden_lines(&agent_log)
    );
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
