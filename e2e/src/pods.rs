//! Running the charts' workloads on this host: `helm template` of a chart in `charts/`, server-side
//! apply of its objects as the admin, and a chart Deployment's container made local — its
//! arguments, environment and mounted ConfigMaps/Secrets as files — to run under a token of
//! the chart's ServiceAccount, so its RBAC is what the process really gets.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde::Deserialize as _;
use serde_json::Value;

use crate::controlplane::TestCluster;
use crate::fleet::Process;
use crate::{eventually, helm_binary, workspace_binary};

/// The repository's `charts/` directory.
pub fn charts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts")
}

/// `helm template RELEASE charts/CHART -n NAMESPACE --include-crds` with `--set` and
/// `--set-file` values, as YAML documents.
pub fn helm_template(
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
pub async fn apply(cluster: &TestCluster, docs: &[Value]) -> Result<()> {
    let client = cluster.client().await?;
    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ""}});
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
pub async fn service_account_kubeconfig(
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
#[derive(Debug, Clone)]
pub struct LocalPod {
    /// The Pod's ServiceAccount.
    pub service_account: String,
    /// The container's arguments.
    pub args: Vec<String>,
    /// The container's environment, mount paths replaced by local directories.
    pub env: Vec<(String, String)>,
}

/// The first Deployment of `docs` made local under `dir`, its volumes filled from the
/// ConfigMaps and Secrets in `docs`.
pub fn local_pod(docs: &[Value], namespace: &str, dir: &Path) -> Result<LocalPod> {
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

/// `bin` with the local Pod's arguments and environment (and no admin kubeconfig).
pub fn command(bin: &Path, pod: &LocalPod) -> Command {
    let mut cmd = Command::new(bin);
    for k in ["KUBECONFIG", "FLOTILLA_KUBECONFIG"] {
        cmd.env_remove(k);
    }
    cmd.envs(pod.env.iter().map(|(k, v)| (k, v)))
        .args(&pod.args);
    cmd
}

/// `GET http://127.0.0.1:PORT/metrics`, the body.
pub async fn scrape_metrics(port: u16) -> Result<String> {
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

/// Panics with the offending lines when the hub's or the agent's log reports an RBAC refusal.
pub fn assert_nothing_forbidden(hub: &Process, agent: &Process) {
    let (hub_log, agent_log) = (hub.log_text(), agent.log_text());
    let (h, a) = (forbidden_lines(&hub_log), forbidden_lines(&agent_log));
    assert!(
        h.is_empty() && a.is_empty(),
        "the charts' RBAC refused something:\nhub: {h:#?}\nagent: {a:#?}"
    );
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The lines of a log that report an RBAC refusal.
pub fn forbidden_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
        .collect()
}

/// What a kubelet would see of `namespace`: Deployment `deployment` and every ConfigMap and
/// Secret of the namespace, as JSON objects for [`local_pod`].
pub async fn cluster_objects(
    cluster: &TestCluster,
    namespace: &str,
    deployment: &str,
) -> Result<Vec<Value>> {
    let client = cluster.client().await?;
    let d = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), namespace)
        .get(deployment)
        .await
        .with_context(|| format!("reading Deployment {namespace}/{deployment}"))?;
    let mut docs = vec![serde_json::to_value(&d)?];
    for cm in Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await?
    {
        let mut v = serde_json::to_value(&cm)?;
        v["kind"] = "ConfigMap".into();
        docs.push(v);
    }
    for s in Api::<Secret>::namespaced(client, namespace)
        .list(&ListParams::default())
        .await?
    {
        let mut v = serde_json::to_value(&s)?;
        v["kind"] = "Secret".into();
        docs.push(v);
    }
    Ok(docs)
}

/// Starts the hub of `docs` (rendered for `namespace`) under its chart identity.
pub async fn start_hub(
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
