//! `bench loop`: commit to applied-and-healthy on every workload cluster.
//!
//! A whole fleet runs on loopback ([`crate::fleet::Fleet`]: management and two workload control
//! planes, the real hub, CLI and agent processes, a real Git repository seeded from
//! `examples/fleet`). Each round commits a change to the application's base (a new pod-template
//! annotation, so every cluster's Deployment rolls out) and times, from the commit, until both
//! workload clusters run a Deployment with that annotation that is fully updated and available.
//!
//! - **webhook**: right after the commit, a GitHub-style push event signed with the hub's
//!   webhook secret is POSTed to the hub (as a Git server would);
//! - **poll**: nothing tells the hub; it finds the commit by polling (`--poll-interval`).
//! - **reference**, same run: what a per-cluster reconciler does when told of the commit (Flux's
//!   kustomize-controller with a notification receiver): for each cluster at once,
//!   `kubectl kustomize clusters/<name>` and `kubectl apply --server-side` of the result (into a
//!   copy namespace, so it does not fight the agent), timed to the same readiness criterion.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;

use super::{out, percentile};
use crate::fleet::{Fleet, WorkloadSpec};

/// Arguments of `bench loop`.
#[derive(Debug, Args)]
pub struct LoopArgs {
    /// Commits measured per mode.
    #[arg(long, default_value_t = 10)]
    pub commits: usize,
    /// The hub's Git polling interval in the poll mode (seconds).
    #[arg(long, default_value_t = 5)]
    pub poll_interval: u64,
    /// Skip the polling mode.
    #[arg(long)]
    pub no_poll: bool,
    /// Skip the kubectl reference.
    #[arg(long)]
    pub no_reference: bool,
}

const SECRET: &str = "bench-loop-webhook-secret";
const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the benchmark.
pub async fn run(args: &LoopArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, SECRET)?;
    let secret_arg = secret_file.display().to_string();
    let fleet = Fleet::start(
        "loop",
        &[
            WorkloadSpec::example("workload-1", "eu"),
            WorkloadSpec::example("workload-2", "us"),
        ],
        &["--github-webhook-secret-file", &secret_arg],
    )
    .await?;
    // Long polling interval while the webhook mode runs, so only the webhook can be fast.
    set_interval(&fleet, "10m").await?;
    let first = fleet.repo.head()?;
    fleet
        .wait_ready_at("fleet", "apps", &first, TIMEOUT)
        .await?;
    out(&format!(
        "bench loop: 2 workload clusters, {} commits per mode, {} cores",
        args.commits,
        super::cores()
    ));

    let mut webhook = Vec::new();
    for i in 0..args.commits {
        let t = commit_round(&fleet, &format!("w{i}"), true).await?;
        webhook.push(t);
    }
    let mut poll = Vec::new();
    if !args.no_poll {
        set_interval(&fleet, &format!("{}s", args.poll_interval)).await?;
        for i in 0..args.commits.min(5) {
            poll.push(commit_round(&fleet, &format!("p{i}"), false).await?);
        }
    }
    let mut reference = Vec::new();
    if !args.no_reference {
        for i in 0..args.commits {
            reference.push(reference_round(&fleet, &format!("r{i}")).await?);
        }
    }

    let row = |name: &str, v: &[u64]| {
        if v.is_empty() {
            out(&format!("{name:<34} -"));
        } else {
            out(&format!(
                "{name:<34} n={:<3} p50={:>6} p99={:>6} max={:>6}",
                v.len(),
                percentile(v, 50.0),
                percentile(v, 99.0),
                v.iter().max().copied().unwrap_or(0)
            ));
        }
    };
    out("commit → applied and available on both clusters, ms");
    row("flotilla, webhook", &webhook);
    row(
        &format!("flotilla, polling every {}s", args.poll_interval),
        &poll,
    );
    row("reference: kustomize + SSA per cluster", &reference);
    let p = |v: &[u64], q| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            percentile(v, q).to_string()
        }
    };
    out(&format!(
        "RESULT loop clusters=2 commits={} webhook_p50_ms={} webhook_p99_ms={} poll_p50_ms={} poll_p99_ms={} poll_interval_s={} reference_p50_ms={} reference_p99_ms={} cores={}",
        args.commits,
        p(&webhook, 50.0),
        p(&webhook, 99.0),
        p(&poll, 50.0),
        p(&poll, 99.0),
        args.poll_interval,
        p(&reference, 50.0),
        p(&reference, 99.0),
        super::cores()
    ));
    Ok(())
}

async fn set_interval(fleet: &Fleet, interval: &str) -> Result<()> {
    fleet
        .apply_example(|docs| {
            for d in docs.iter_mut() {
                if d["kind"] == "GitSource" {
                    d["spec"]["interval"] = interval.into();
                }
            }
        })
        .await
}

fn with_annotation(deployment_yaml: &str, value: &str) -> String {
    // The base Deployment's pod template gets (or changes) one annotation.
    let marker = "  template:\n";
    let annotated = format!(
        "  template:\n    metadata:\n      annotations:\n        bench.flotilla.dev/round: \"{value}\"\n"
    );
    match deployment_yaml
        .find("    metadata:\n      annotations:\n        bench.flotilla.dev/round:")
    {
        Some(_) => {
            let mut out = String::new();
            for line in deployment_yaml.lines() {
                if line.trim_start().starts_with("bench.flotilla.dev/round:") {
                    out.push_str(&format!("        bench.flotilla.dev/round: \"{value}\"\n"));
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            out
        }
        None => deployment_yaml.replacen(marker, &annotated, 1),
    }
}

async fn rolled_out(fleet: &Fleet, namespace: &str, value: &str) -> Result<bool> {
    for w in &fleet.workloads {
        let api = Api::<Deployment>::namespaced(w.cluster.client().await?, namespace);
        let Some(d) = api.get_opt("podinfo").await? else {
            return Ok(false);
        };
        let annotated = d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("bench.flotilla.dev/round"))
            .is_some_and(|v| v == value);
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let done = d.status.as_ref().is_some_and(|s| {
            s.observed_generation == d.metadata.generation
                && s.updated_replicas.unwrap_or(0) == want
                && s.available_replicas.unwrap_or(0) == want
                && s.replicas.unwrap_or(0) == want
        });
        if !(annotated && done) {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn wait_rolled_out(
    fleet: &Fleet,
    namespace: &str,
    value: &str,
    start: Instant,
) -> Result<u64> {
    loop {
        if rolled_out(fleet, namespace, value).await? {
            return Ok(start.elapsed().as_millis() as u64);
        }
        if start.elapsed() > TIMEOUT {
            bail!(
                "round {value}: not rolled out on both clusters within {}s",
                TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn commit_round(fleet: &Fleet, value: &str, webhook: bool) -> Result<u64> {
    let base = fleet.repo.read("apps/base/deployment.yaml")?;
    let content = with_annotation(&base, value);
    let start = Instant::now();
    let commit = fleet.repo.commit_file(
        "apps/base/deployment.yaml",
        &content,
        &format!("round {value}"),
    )?;
    if webhook {
        push_event(&fleet.http, &fleet.repo.path.display().to_string(), &commit).await?;
    }
    wait_rolled_out(fleet, "podinfo", value, start).await
}

/// POSTs a GitHub push event for `commit`, signed like GitHub does.
async fn push_event(http: &str, repo_url: &str, commit: &str) -> Result<()> {
    use hmac::Mac as _;
    let body = serde_json::json!({
        "ref": "refs/heads/main",
        "after": commit,
        "repository": {"clone_url": repo_url, "html_url": repo_url, "full_name": "bench/fleet"},
    })
    .to_string();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes())?;
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let status = post(
        http,
        "/hooks/github",
        &body,
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &signature),
        ],
    )
    .await?;
    if !(200..300).contains(&status) {
        bail!("the hub answered the push event with HTTP {status}");
    }
    Ok(())
}

async fn post(addr: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> Result<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp).await?;
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("unparsable HTTP response: {resp:.200}"))
}

/// The reference round: render each cluster with kubectl and apply it into `podinfo-ref`.
async fn reference_round(fleet: &Fleet, value: &str) -> Result<u64> {
    let base = fleet.repo.read("apps/base/deployment.yaml")?;
    let content = with_annotation(&base, value);
    let start = Instant::now();
    fleet.repo.commit_file(
        "apps/base/deployment.yaml",
        &content,
        &format!("reference {value}"),
    )?;
    let mut tasks = Vec::new();
    for w in &fleet.workloads {
        let dir = fleet.repo.path.join("clusters").join(&w.spec.name);
        let kubeconfig = w.cluster.kubeconfig().to_path_buf();
        tasks.push(tokio::task::spawn_blocking(move || -> Result<()> {
            let rendered = std::process::Command::new("kubectl")
                .arg("kustomize")
                .arg(&dir)
                .output()?;
            anyhow::ensure!(
                rendered.status.success(),
                "kubectl kustomize: {}",
                String::from_utf8_lossy(&rendered.stderr)
            );
            let yaml = String::from_utf8(rendered.stdout)?
                .replace("namespace: podinfo\n", "namespace: podinfo-ref\n");
            let yaml = format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: podinfo-ref\n---\n{yaml}"
            );
            let mut child = std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args([
                    "apply",
                    "--server-side",
                    "--field-manager",
                    "reference",
                    "-f",
                    "-",
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()?;
            use std::io::Write as _;
            child
                .stdin
                .take()
                .context("kubectl stdin")?
                .write_all(yaml.as_bytes())?;
            anyhow::ensure!(child.wait()?.success(), "kubectl apply failed");
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    wait_rolled_out(fleet, "podinfo-ref", value, start).await
}
