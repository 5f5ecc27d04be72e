//! Helm on real control planes, with the real hub, agents and the real `helm` binary (built by
//! the harness): a `HelmRelease` from a chart repository served on loopback reaches two clusters
//! with different per-cluster values; a chart version bump rolls out; a chart version with a
//! template error gives `BuildFailed` naming chart, template and line while the clusters keep
//! the last good release. Plus the hook policies on a real `helm template`, and `flotilla diff`
//! showing a values change of a `HelmRelease` kept in Git, per cluster, before it is merged.
//! Runs with FLOTILLA_E2E=1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use flotilla_e2e::fleet::{Fleet, WorkloadSpec, tail};
use flotilla_e2e::{eventually, helm_binary, skip_unless_e2e, workspace_binary};
use flotilla_hub::api::HelmRelease;
use flotilla_hub::helm::template::{HookPolicy, Template};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::{Value, json};
use sha2::Digest as _;

const WAIT: Duration = Duration::from_secs(120);

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes chart `name` at `version` with `templates` (file name → text) into `work` and
/// packages it into `repo` with the real `helm package`; returns the archive.
fn package(
    helm: &Path,
    work: &Path,
    repo: &Path,
    name: &str,
    version: &str,
    templates: &[(&str, &str)],
) -> Result<PathBuf> {
    let dir = work.join(format!("{name}-{version}")).join(name);
    std::fs::create_dir_all(dir.join("templates"))?;
    std::fs::write(
        dir.join("Chart.yaml"),
        format!("apiVersion: v2\nname: {name}\nversion: {version}\n"),
    )?;
    std::fs::write(
        dir.join("values.yaml"),
        "region: nowhere\ngreeting: hello\ncolor: none\nteam: none\n",
    )?;
    for (file, text) in templates {
        std::fs::write(dir.join("templates").join(file), text)?;
    }
    run(Command::new(helm)
        .arg("package")
        .arg(&dir)
        .arg("--destination")
        .arg(repo)
        .env("HELM_CACHE_HOME", work.join(".helm"))
        .env("HELM_CONFIG_HOME", work.join(".helm"))
        .env("HELM_DATA_HOME", work.join(".helm")))?;
    Ok(repo.join(format!("{name}-{version}.tgz")))
}

/// (Re)writes the repository's `index.yaml` with the real `helm repo index` (digests included).
fn index(helm: &Path, repo: &Path, url: &str) -> Result<()> {
    run(Command::new(helm)
        .args(["repo", "index"])
        .arg(repo)
        .args(["--url", url]))?;
    Ok(())
}

/// Serves the files of `dir` over HTTP on 127.0.0.1; returns the base URL.
async fn serve(dir: PathBuf) -> Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let dir = dir.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/')
                    .to_owned();
                let file = (!path.contains("..")).then(|| dir.join(&path));
                let response = match file.and_then(|f| std::fs::read(f).ok()) {
                    Some(body) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend(body);
                        r
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = conn.write_all(&response).await;
            });
        }
    });
    Ok(url)
}

const SETTINGS: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
data:
  region: {{ .Values.region | quote }}
  greeting: {{ .Values.greeting | quote }}
  color: {{ .Values.color | quote }}
  team: {{ .Values.team | quote }}
  chartVersion: {{ .Chart.Version | quote }}
"#;

const EXTRA: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-extra
data:
  added: "in 0.2.0"
"#;

/// Line 9 calls a function that does not exist.
const BROKEN: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
data:
  region: {{ .Values.region | quote }}
  greeting: {{ .Values.greeting | quote }}
  color: {{ .Values.color | quote }}
  chartVersion: {{ .Chart.Version | nosuchfunction }}
"#;

async fn settings(fleet: &Fleet, workload: &str, name: &str) -> Option<BTreeMap<String, String>> {
    let client = fleet.workload(workload).cluster.client().await.ok()?;
    Api::<ConfigMap>::namespaced(client, "demo")
        .get_opt(name)
        .await
        .ok()??
        .data
}

/// Waits until the release is Ready with every cluster at `version`.
async fn wait_ready_at(fleet: &Fleet, version: &str) -> Result<HelmRelease> {
    let api = Api::<HelmRelease>::namespaced(fleet.mgmt.client().await?, "flotilla-system");
    let last = std::sync::Mutex::new(None);
    let prefix = format!("demo@{version}@sha256:");
    let r = eventually(
        &format!("HelmRelease web ready at {version}"),
        WAIT,
        || async {
            let hr = api.get("web").await.ok()?;
            *last.lock().unwrap_or_else(|e| e.into_inner()) = hr.status.clone();
            let s = hr.status.as_ref()?;
            let ready = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let at = s.clusters.len() == 2
                && s.clusters.iter().all(|c| {
                    c.ready
                        && c.revision
                            .as_deref()
                            .is_some_and(|r| r.starts_with(&prefix))
                });
            (ready && at).then_some(hr)
        },
    )
    .await;
    r.with_context(|| {
        format!(
            "last status: {}\nhub log tail:\n{}",
            serde_json::to_string_pretty(&*last.lock().unwrap_or_else(|e| e.into_inner()))
                .unwrap_or_default(),
            fleet
                .hub
                .as_ref()
                .map(|h| tail(&h.log_text(), 40))
                .unwrap_or_default()
        )
    })
}

fn sha256_file(path: &Path) -> Result<String> {
    Ok(hex::encode(sha2::Sha256::digest(std::fs::read(path)?)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_helm_release_reaches_both_clusters_upgrades_and_keeps_the_last_good_chart() -> Result<()>
{
    if skip_unless_e2e() {
        return Ok(());
    }
    let helm = helm_binary()?;
    let work = tempfile::tempdir()?;
    let repo = work.path().join("repo");
    std::fs::create_dir_all(&repo)?;
    let url = serve(repo.clone()).await?;
    let v1 = package(
        &helm,
        work.path(),
        &repo,
        "demo",
        "0.1.0",
        &[("settings.yaml", SETTINGS)],
    )?;
    index(&helm, &repo, &url)?;

    let fleet = Fleet::start(
        "helm",
        &[
            WorkloadSpec::example("workload-1", "eu"),
            WorkloadSpec::example("workload-2", "us"),
        ],
        &["--helm-binary", &helm.display().to_string()],
    )
    .await?;
    fleet
        .apply(&[
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "web-values", "namespace": "flotilla-system"},
                   "data": {"values.yaml": "color: blue\n"}}),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "web-secret-values", "namespace": "flotilla-system"},
                   "stringData": {"team.yaml": "team: platform\n"}}),
            json!({"apiVersion": "flotilla.dev/v1alpha1", "kind": "HelmRepository",
                   "metadata": {"name": "local", "namespace": "flotilla-system"},
                   "spec": {"url": url, "interval": "2s"}}),
            json!({"apiVersion": "flotilla.dev/v1alpha1", "kind": "HelmRelease",
            "metadata": {"name": "web", "namespace": "flotilla-system"},
            "spec": {
                "chart": {"name": "demo", "version": "<1.0.0", "sourceRef": {"name": "local"}},
                "targetNamespace": "demo",
                "createNamespace": true,
                "clusterSelector": {"matchLabels": {"fleet.example/apps": "enabled"}},
                "valuesFrom": [
                    {"kind": "ConfigMap", "name": "web-values"},
                    {"kind": "Secret", "name": "web-secret-values", "valuesKey": "team.yaml"}
                ],
                "values": {"region": "${region}", "greeting": "hello ${cluster_name}"}
            }}),
        ])
        .await?;

    // 0.1.0 on both clusters, each with its own values.
    let hr = wait_ready_at(&fleet, "0.1.0").await?;
    let status = hr.status.context("status")?;
    assert_eq!(status.chart_version.as_deref(), Some("0.1.0"));
    assert_eq!(
        status.chart_digest,
        Some(format!("sha256:{}", sha256_file(&v1)?)),
        "the digest of the archive served"
    );
    for (w, region) in [("workload-1", "eu"), ("workload-2", "us")] {
        let data = eventually(&format!("web-settings on {w}"), WAIT, || {
            settings(&fleet, w, "web-settings")
        })
        .await?;
        assert_eq!(data["region"], region, "{w}");
        assert_eq!(data["greeting"], format!("hello {w}"), "{w}");
        assert_eq!(data["color"], "blue", "{w}: from the ConfigMap");
        assert_eq!(data["team"], "platform", "{w}: from the Secret");
        assert_eq!(data["chartVersion"], "0.1.0", "{w}");
    }

    // A new version in the index, inside the range: it rolls out.
    package(
        &helm,
        work.path(),
        &repo,
        "demo",
        "0.2.0",
        &[("settings.yaml", SETTINGS), ("extra.yaml", EXTRA)],
    )?;
    index(&helm, &repo, &url)?;
    wait_ready_at(&fleet, "0.2.0").await?;
    for w in ["workload-1", "workload-2"] {
        let data = eventually(&format!("0.2.0 on {w}"), WAIT, || async {
            settings(&fleet, w, "web-settings")
                .await
                .filter(|d| d["chartVersion"] == "0.2.0")
        })
        .await?;
        assert_eq!(data["greeting"], format!("hello {w}"));
        assert!(
            settings(&fleet, w, "web-extra").await.is_some(),
            "{w}: new object of 0.2.0"
        );
    }

    // A broken version: BuildFailed with chart, template and line; clusters keep 0.2.0.
    package(
        &helm,
        work.path(),
        &repo,
        "demo",
        "0.3.0",
        &[("settings.yaml", BROKEN)],
    )?;
    index(&helm, &repo, &url)?;
    let api = Api::<HelmRelease>::namespaced(fleet.mgmt.client().await?, "flotilla-system");
    let cond = eventually("BuildFailed for demo 0.3.0", WAIT, || async {
        let hr = api.get("web").await.ok()?;
        hr.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "BuildFailed")
    })
    .await
    .with_context(|| {
        fleet
            .hub
            .as_ref()
            .map(|h| tail(&h.log_text(), 40))
            .unwrap_or_default()
    })?;
    for needle in [
        "chart demo@0.3.0",
        "template demo/templates/settings.yaml line 9",
        "nosuchfunction",
        "the cluster keeps demo@0.2.0",
    ] {
        assert!(
            cond.message.contains(needle),
            "{needle:?} not in {:?}",
            cond.message
        );
    }
    // Give the agents time to have applied anything they were (wrongly) sent.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for w in ["workload-1", "workload-2"] {
        let data = settings(&fleet, w, "web-settings")
            .await
            .context("settings kept")?;
        assert_eq!(
            data["chartVersion"], "0.2.0",
            "{w} keeps the last good release"
        );
        assert_eq!(data["region"], if w == "workload-1" { "eu" } else { "us" });
        assert!(
            settings(&fleet, w, "web-extra").await.is_some(),
            "{w}: nothing of the last good release is pruned"
        );
    }
    let hr = api.get("web").await?;
    let status = hr.status.context("status")?;
    assert_eq!(
        status.chart_version.as_deref(),
        Some("0.3.0"),
        "the version the range resolves to"
    );
    for c in &status.clusters {
        assert!(
            c.revision
                .as_deref()
                .is_some_and(|r| r.starts_with("demo@0.2.0@sha256:")),
            "{}: {:?}",
            c.name,
            c.revision
        );
        assert_eq!(c.reason, "BuildFailed");
    }
    Ok(())
}

const HOOK: &str = r#"apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .Release.Name }}-migrate
  annotations:
    "helm.sh/hook": pre-install,pre-upgrade
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: migrate
          image: busybox
"#;

const TEST_HOOK: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: {{ .Release.Name }}-test
  annotations:
    "helm.sh/hook": test
spec:
  containers:
    - name: t
      image: busybox
"#;

/// The hook policies on the real `helm template` output: refused by default, naming the
/// template and object; skipped; or applied with pre-install hooks first. Tests never.
#[tokio::test]
async fn helm_hooks_are_refused_skipped_or_applied_first() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let helm = helm_binary()?;
    let work = tempfile::tempdir()?;
    let repo = work.path().join("repo");
    let archive = package(
        &helm,
        work.path(),
        &repo,
        "hooked",
        "1.0.0",
        &[
            ("settings.yaml", SETTINGS),
            ("migrate.yaml", HOOK),
            ("test.yaml", TEST_HOOK),
        ],
    )?;
    let template = |hooks| Template {
        helm: helm.clone(),
        archive: archive.clone(),
        chart: "hooked@1.0.0".into(),
        release_name: "rel".into(),
        namespace: "apps".into(),
        kube_version: "v1.34.0".into(),
        values: json!({"region": "eu"}),
        hooks,
        create_namespace: false,
    };
    let err = template(HookPolicy::Refuse).render().await.unwrap_err();
    assert!(
        err.to_string().starts_with(
            "chart hooked@1.0.0: template hooked/templates/migrate.yaml defines Job rel-migrate \
             as a helm.sh/hook (pre-install,pre-upgrade)"
        ),
        "{err}"
    );
    let skipped = template(HookPolicy::Skip).render().await?;
    let ids: Vec<String> = skipped
        .iter()
        .map(|o: &Value| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(ids, ["ConfigMap/rel-settings"]);
    assert_eq!(skipped[0]["metadata"]["namespace"], "apps");
    assert_eq!(skipped[0]["data"]["region"], "eu");
    let applied = template(HookPolicy::Apply).render().await?;
    let ids: Vec<String> = applied
        .iter()
        .map(|o: &Value| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(ids, ["Job/rel-migrate", "ConfigMap/rel-settings"]);
    Ok(())
}

/// The `HelmRelease` as kept in Git, with `greeting` and `color` as given.
fn release_yaml(greeting: &str, color: &str) -> String {
    format!(
        r#"apiVersion: flotilla.dev/v1alpha1
kind: HelmRelease
metadata:
  name: web
  namespace: flotilla-system
spec:
  chart:
    name: demo
    version: "0.1.0"
    sourceRef:
      name: local
  targetNamespace: demo
  createNamespace: true
  clusterSelector:
    matchLabels:
      fleet.example/apps: enabled
  values:
    region: "${{region}}"
    greeting: "{greeting}"
    color: {color}
"#
    )
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    run(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=flotilla-e2e",
            "-c",
            "user.email=e2e@flotilla.invalid",
        ])
        .args(args))
}

/// The lines of one cluster's section of a `flotilla diff` report, trimmed.
fn section<'a>(report: &'a str, cluster: &str) -> Vec<&'a str> {
    let head = format!("cluster {cluster}");
    report
        .lines()
        .skip_while(|l| *l != head)
        .skip(1)
        .take_while(|l| !l.starts_with("cluster ") && l.starts_with(' '))
        .map(str::trim)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn flotilla_diff_shows_a_helm_values_change_per_cluster_before_it_is_merged() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let helm = helm_binary()?;
    let work = tempfile::tempdir()?;
    let repo = work.path().join("charts");
    std::fs::create_dir_all(&repo)?;
    let url = serve(repo.clone()).await?;
    package(
        &helm,
        work.path(),
        &repo,
        "demo",
        "0.1.0",
        &[("settings.yaml", SETTINGS)],
    )?;
    index(&helm, &repo, &url)?;

    // The release lives in Git; what is merged is what the hub runs.
    let checkout = work.path().join("fleet-repo");
    std::fs::create_dir_all(checkout.join("releases"))?;
    git(&checkout, &["init", "-q", "-b", "main"])?;
    let merged = release_yaml("hello ${cluster_name}", "blue");
    std::fs::write(checkout.join("releases/web.yaml"), &merged)?;
    git(&checkout, &["add", "."])?;
    git(&checkout, &["commit", "-q", "-m", "web"])?;

    let fleet = Fleet::start(
        "helmdiff",
        &[
            WorkloadSpec::example("workload-1", "eu"),
            WorkloadSpec::example("workload-2", "us"),
        ],
        &["--helm-binary", &helm.display().to_string()],
    )
    .await?;
    let release: Value = serde_yaml::from_str(&merged)?;
    fleet
        .apply(&[
            json!({"apiVersion": "flotilla.dev/v1alpha1", "kind": "HelmRepository",
                   "metadata": {"name": "local", "namespace": "flotilla-system"},
                   "spec": {"url": url, "interval": "2s"}}),
            release,
        ])
        .await?;
    wait_ready_at(&fleet, "0.1.0").await?;

    let flotilla = |args: &[&str]| -> Result<(i32, String, String)> {
        let out = Command::new(workspace_binary("flotilla-hub", "flotilla")?)
            .arg("--kubeconfig")
            .arg(fleet.mgmt.kubeconfig())
            .arg("diff")
            .arg("--path")
            .arg(&checkout)
            .arg("--helm-binary")
            .arg(&helm)
            .arg("--chart-cache")
            .arg(work.path().join("cache"))
            .args(args)
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };

    // What is merged is what runs: nothing to change.
    let (code, out, err) = flotilla(&[])?;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.ends_with("no changes on 2 cluster(s)\n"), "{out}");

    // A values change in the working tree, not committed, not applied.
    std::fs::write(
        checkout.join("releases/web.yaml"),
        release_yaml("hi ${cluster_name}", "green"),
    )?;
    let (code, out, err) = flotilla(&[])?;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-artifacts/cli");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("diff-helm.txt"),
        format!("exit code {code}\n{out}{err}"),
    );
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.is_empty(), "{err}");
    for w in ["workload-1", "workload-2"] {
        let lines = section(&out, w);
        assert_eq!(
            lines.first().copied(),
            Some(
                "delivery HelmRelease flotilla-system/web (demo@0.1.0 -> working tree, demo@0.1.0)"
            ),
            "{w}:\n{out}"
        );
        let changes: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| {
                ["+ created", "~ changed", "- pruned"]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .collect();
        assert_eq!(
            changes,
            ["~ changed  ConfigMap demo/web-settings"],
            "{w}:\n{out}"
        );
        // Exactly the two values, each with this cluster's own substitution.
        assert!(
            !lines.iter().any(|l| l.starts_with("note:")),
            "{w}: the baseline must be exactly the bundle the hub sent:\n{out}"
        );
        let mut edits: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| {
                (l.starts_with('-') || l.starts_with('+'))
                    && !l.starts_with("---")
                    && !l.starts_with("+++")
                    && !l.starts_with("- pruned")
                    && !l.starts_with("+ created")
            })
            .collect();
        edits.sort_unstable();
        assert_eq!(
            edits,
            [
                "+  color: green".to_owned(),
                format!("+  greeting: hi {w}"),
                "-  color: blue".to_owned(),
                format!("-  greeting: hello {w}"),
            ],
            "{w}:\n{out}"
        );
        // Before it is merged: the cluster still runs the old values.
        let data = settings(&fleet, w, "web-settings")
            .await
            .context("web-settings")?;
        assert_eq!(data["greeting"], format!("hello {w}"));
    }
    assert!(
        out.ends_with("0 to create, 2 to change, 0 to prune on 2 of 2 cluster(s)\n"),
        "{out}"
    );

    // The committed revision is still what runs.
    let (code, out, err) = flotilla(&["--revision", "HEAD"])?;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    Ok(())
}
