//! `bench apply`: N app units shaped like the public Flux benchmark (each its own Namespace, a
//! Deployment with 0 replicas, a ServiceAccount, a Service and an Ingress), applied by the agent
//! binary on one fresh control plane and by `kubectl apply --server-side` on another, plus the
//! agent's resident memory idle (small bundle) and while it holds and watches the N units.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use flotilla_agent::reconcile::{DeliveryOptions, Desired};
use serde_json::{Value, json};

use super::{agent_binary, cores, kubectl, median, ms, out, proc_status_kib, to_yaml_stream};
use crate::TestCluster;

/// Options of `bench apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    /// App units (5 objects each: Namespace, Deployment, ServiceAccount, Service, Ingress).
    #[arg(long, default_value_t = 1000)]
    pub units: usize,
    /// Rounds (each on fresh control planes); medians are reported.
    #[arg(long, default_value_t = 1)]
    pub iterations: usize,
    /// kubectl binary used as the reference.
    #[arg(long, env = "KUBECTL", default_value = "kubectl")]
    pub kubectl: String,
    /// The agent binary (default: `flotilla-agent` next to this binary).
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Extra agent option for the measured apply, e.g. `--agent-arg=--apply-concurrency=32`
    /// (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub agent_arg: Vec<String>,
    /// Seconds the agent runs holding the N units before its memory is read.
    #[arg(long, default_value_t = 10)]
    pub holding_settle: u64,
    /// Seconds the agent runs holding a small bundle before its memory is read.
    #[arg(long, default_value_t = 5)]
    pub idle_settle: u64,
}

/// The objects of app unit `i`.
pub fn unit(i: usize) -> Vec<Value> {
    let ns = format!("unit-{i:04}");
    let app = "podinfo";
    let labels = json!({"app.kubernetes.io/name": app});
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": app, "namespace": ns}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": app, "namespace": ns, "labels": labels},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels},
                    "spec": {"serviceAccountName": app, "containers": [{
                        "name": app, "image": "ghcr.io/stefanprodan/podinfo:6.7.1",
                        "ports": [{"name": "http", "containerPort": 9898}],
                        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": app, "namespace": ns, "labels": labels},
            "spec": {"type": "ClusterIP", "selector": labels,
                "ports": [{"name": "http", "port": 9898, "targetPort": "http"}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": app, "namespace": ns},
            "spec": {"rules": [{"host": format!("{ns}.example.com"), "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": app, "port": {"name": "http"}}}}]}}]}}),
    ]
}

/// A bundle of `objects` for delivery `delivery`.
pub fn bundle(delivery: &str, objects: Vec<Value>) -> Desired {
    Desired {
        delivery: delivery.into(),
        revision: format!("bench@sha1:{:040}", 1),
        sequence: 1,
        objects,
        options: DeliveryOptions::default(),
    }
}

/// What one `flotilla-agent apply` run reported.
#[derive(Debug)]
struct AgentApply {
    wall_ms: u64,
    applied_ms: u64,
    healthy_ms: Option<u64>,
    peak_rss_kib: u64,
}

/// Runs `flotilla-agent ... apply --file bundle` as a child and parses its report.
async fn agent_apply(
    agent: &Path,
    kubeconfig: &Path,
    extra: &[String],
    bundle: &Path,
    wait_s: u64,
    store: bool,
    log: &Path,
) -> Result<AgentApply> {
    let mut cmd = tokio::process::Command::new(agent);
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(extra)
        .arg("apply")
        .arg("--file")
        .arg(bundle)
        .arg("--wait")
        .arg(wait_s.to_string())
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?);
    if store {
        cmd.arg("--store");
    }
    let started = Instant::now();
    let output = cmd
        .output()
        .await
        .with_context(|| format!("running {}", agent.display()))?;
    let wall_ms = ms(started.elapsed());
    let report: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "the agent ({}) printed no JSON report; its log is {}",
            output.status,
            log.display()
        )
    })?;
    if !output.status.success() || report["status"] != "Applied" {
        bail!(
            "the agent's apply failed ({}): {} ({} objects failed); its log is {}",
            output.status,
            report["message"],
            report["failed"].as_array().map(Vec::len).unwrap_or(0),
            log.display()
        );
    }
    Ok(AgentApply {
        wall_ms,
        applied_ms: report["appliedMs"]
            .as_u64()
            .context("no appliedMs in the report")?,
        healthy_ms: report["healthyMs"].as_u64(),
        peak_rss_kib: report["peakRssKiB"].as_u64().unwrap_or(0),
    })
}

/// Resident memory of `flotilla-agent run` once it resumed its stored bundles and ran `settle`.
#[derive(Debug)]
struct RunMemory {
    rss_kib: u64,
    hwm_kib: u64,
    resumed_ms: u64,
}

/// Starts `flotilla-agent run`, waits until it has resumed the stored bundles, lets it settle,
/// reads its VmRSS/VmHWM and stops it with SIGTERM.
async fn agent_run_memory(
    agent: &Path,
    kubeconfig: &Path,
    settle: Duration,
    log: &Path,
) -> Result<RunMemory> {
    let mut child = tokio::process::Command::new(agent)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} run", agent.display()))?;
    let pid = child.id().context("the agent exited at once")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the agent exited ({status}) before resuming; its log is {}",
                log.display()
            );
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("resumed stored bundles") {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            bail!(
                "the agent did not resume within 180 s; its log is {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed_ms = ms(started.elapsed());
    tokio::time::sleep(settle).await;
    let rss_kib = proc_status_kib(pid, "VmRSS:")?;
    let hwm_kib = proc_status_kib(pid, "VmHWM:")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .context("stopping the agent")?;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .context("the agent did not stop within 10 s of SIGTERM")??;
    if !status.success() {
        bail!(
            "the agent exited with {status} on SIGTERM; its log is {}",
            log.display()
        );
    }
    Ok(RunMemory {
        rss_kib,
        hwm_kib,
        resumed_ms,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Runs `bench apply`.
pub async fn run(a: &ApplyArgs) -> Result<()> {
    if a.units == 0 || a.iterations == 0 {
        bail!("--units and --iterations must be at least 1");
    }
    let agent = agent_binary(a.agent.as_deref())?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let objects: Vec<Value> = (0..a.units).flat_map(unit).collect();
    let n_objects = objects.len();
    let bundle_path = dir.path().join("bundle.json");
    let yaml_path = dir.path().join("manifests.yaml");
    std::fs::write(&yaml_path, to_yaml_stream(&objects)?)?;
    std::fs::write(&bundle_path, serde_json::to_vec(&bundle("bench", objects))?)?;
    // The idle agent's small bundle: two units (10 objects).
    let small_path = dir.path().join("small.json");
    std::fs::write(
        &small_path,
        serde_json::to_vec(&bundle("small", (0..2).flat_map(unit).collect()))?,
    )?;
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    out(&format!(
        "bench apply: {} units = {n_objects} objects, {} iteration(s), {} cores",
        a.units,
        a.iterations,
        cores()
    ));

    let (mut wall, mut applied, mut healthy, mut reference, mut peak) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut holding = None;
    let mut idle = None;
    out("iter  agent_wall_ms  applied_ms  healthy_ms  kubectl_ms  ratio  agent_peak_mib");
    for it in 0..a.iterations {
        // The agent, on its own fresh control plane.
        let c = TestCluster::start("bench-apply-agent").await?;
        let r = agent_apply(
            &agent,
            c.kubeconfig(),
            &a.agent_arg,
            &bundle_path,
            300,
            false,
            &log("agent-apply"),
        )
        .await?;
        let healthy_ms = r
            .healthy_ms
            .context("the agent's report has no healthyMs: health was not waited for")?;
        if holding.is_none() {
            // Store the N units as the delivery's bundle, then measure `run` holding them.
            agent_apply(
                &agent,
                c.kubeconfig(),
                &a.agent_arg,
                &bundle_path,
                0,
                true,
                &log("agent-store"),
            )
            .await?;
            holding = Some(
                agent_run_memory(
                    &agent,
                    c.kubeconfig(),
                    Duration::from_secs(a.holding_settle),
                    &log("agent-run-holding"),
                )
                .await?,
            );
        }
        drop(c);

        // kubectl, on another fresh control plane.
        let c = TestCluster::start("bench-apply-kubectl").await?;
        let started = Instant::now();
        let stdout = kubectl(
            &a.kubectl,
            c.kubeconfig(),
            &["apply", "--server-side", "-f", &yaml_path.to_string_lossy()],
        )?;
        let kubectl_ms = ms(started.elapsed());
        let lines = stdout
            .lines()
            .filter(|l| l.contains("serverside-applied"))
            .count();
        if lines != n_objects {
            bail!("kubectl reported {lines} applied objects, expected {n_objects}");
        }
        if idle.is_none() {
            agent_apply(
                &agent,
                c.kubeconfig(),
                &[],
                &small_path,
                60,
                true,
                &log("agent-small"),
            )
            .await?;
            idle = Some(
                agent_run_memory(
                    &agent,
                    c.kubeconfig(),
                    Duration::from_secs(a.idle_settle),
                    &log("agent-run-idle"),
                )
                .await?,
            );
        }
        drop(c);

        out(&format!(
            "{it:>4}  {:>13}  {:>10}  {healthy_ms:>10}  {kubectl_ms:>10}  {:>5.2}  {:>14.1}",
            r.wall_ms,
            r.applied_ms,
            r.wall_ms as f64 / kubectl_ms as f64,
            mib(r.peak_rss_kib)
        ));
        wall.push(r.wall_ms);
        applied.push(r.applied_ms);
        healthy.push(healthy_ms);
        reference.push(kubectl_ms);
        peak.push(r.peak_rss_kib);
    }
    let holding = holding.context("no holding measurement")?;
    let idle = idle.context("no idle measurement")?;
    out(&format!(
        "agent run holding {n_objects} objects: resumed in {} ms, VmRSS {:.1} MiB (VmHWM {:.1} MiB) after {} s",
        holding.resumed_ms,
        mib(holding.rss_kib),
        mib(holding.hwm_kib),
        a.holding_settle
    ));
    out(&format!(
        "agent run holding 10 objects:   resumed in {} ms, VmRSS {:.1} MiB (VmHWM {:.1} MiB) after {} s",
        idle.resumed_ms,
        mib(idle.rss_kib),
        mib(idle.hwm_kib),
        a.idle_settle
    ));
    let (f, k) = (median(&wall), median(&reference));
    out(&format!(
        "RESULT apply units={} objects={n_objects} flotilla_ms={f} healthy_ms={} kubectl_ms={k} ratio={:.2} \
         agent_peak_rss_mib={:.1} agent_idle_rss_mib={:.1} agent_holding_rss_mib={:.1} cores={}",
        a.units,
        median(&healthy),
        f as f64 / k as f64,
        mib(median(&peak)),
        mib(idle.rss_kib),
        mib(holding.rss_kib),
        cores()
    ));
    Ok(())
}
