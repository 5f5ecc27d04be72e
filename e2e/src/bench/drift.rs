//! `bench drift`: edits (an owned field changed by another field manager) and deletions of
//! objects the agent applied, one at a time, timing detection and correction from the agent's
//! drift events. In the same run, a Flux-style reference — `kubectl apply --server-side
//! --force-conflicts` of the same manifests every `--reference-interval` seconds — reverts the
//! same kinds of change on a copy of the objects, timed by polling.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use flotilla_agent::apply::{Applier, ApplyConfig};
use flotilla_agent::drift::{DriftEvent, DriftKind, now_ms};
use flotilla_agent::reconcile::{Reconciler, ReconcilerConfig, Status};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::apply::bundle;
use super::{cores, kubectl, ms, out, percentile, to_yaml_stream};
use crate::TestCluster;

/// Options of `bench drift`.
#[derive(Debug, Clone, clap::Args)]
pub struct DriftArgs {
    /// Edits of an owned field by another field manager (`kubectl-edit`).
    #[arg(long, default_value_t = 100)]
    pub edits: usize,
    /// Deletions.
    #[arg(long, default_value_t = 20)]
    pub deletes: usize,
    /// Deployments and ConfigMaps each in the bundle.
    #[arg(long, default_value_t = 50)]
    pub objects: usize,
    /// Seconds between the reference's periodic `kubectl apply --server-side` runs.
    #[arg(long, default_value_t = 10)]
    pub reference_interval: u64,
    /// kubectl binary used as the reference.
    #[arg(long, env = "KUBECTL", default_value = "kubectl")]
    pub kubectl: String,
}

const NS: &str = "drift-bench";
const REF_NS: &str = "drift-reference";
const IMAGE: &str = "ghcr.io/stefanprodan/podinfo:6.7.1";
const VALUE: &str = "from-git";

fn deployment(ns: &str, i: usize) -> Value {
    let labels = json!({"app": format!("app-{i}")});
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": format!("app-{i}"), "namespace": ns},
        "spec": {"replicas": 0, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": IMAGE}]}}}})
}

fn config_map(ns: &str, i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("config-{i}"), "namespace": ns}, "data": {"value": VALUE}})
}

fn objects(ns: &str, n: usize) -> Vec<Value> {
    let mut v = vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})];
    for i in 0..n {
        v.push(deployment(ns, i));
        v.push(config_map(ns, i));
    }
    v
}

/// One change made to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Edit,
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Deployment,
    ConfigMap,
}

/// The changes, in order: deletions spread evenly among edits; Deployments and ConfigMaps
/// alternate within each.
fn plan(edits: usize, deletes: usize, objects: usize) -> Vec<(Op, Kind, usize)> {
    let total = edits + deletes;
    (0..total)
        .map(|n| {
            // Deletion k goes at position (k + 0.5) * total / deletes.
            let k = if deletes > 0 {
                (n * deletes) / total
            } else {
                0
            };
            let is_delete = deletes > 0 && (k * total + total / 2) / deletes == n;
            let parity = if is_delete { k } else { n };
            let kind = if parity % 2 == 0 {
                Kind::Deployment
            } else {
                Kind::ConfigMap
            };
            let op = if is_delete { Op::Delete } else { Op::Edit };
            (op, kind, (n / 2) % objects)
        })
        .collect()
}

/// Makes one change to `kind` `i` in `ns` as another field manager; returns the Unix ms just
/// before the request was sent.
async fn change(
    client: &kube::Client,
    ns: &str,
    op: Op,
    kind: Kind,
    i: usize,
    n: usize,
) -> Result<u64> {
    let pp = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };
    let t0;
    match (op, kind) {
        (Op::Edit, Kind::Deployment) => {
            let patch = json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": format!("example.com/edited:{n}")}]}}}});
            let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
            t0 = now_ms();
            api.patch(&format!("app-{i}"), &pp, &Patch::Strategic(&patch))
                .await?;
        }
        (Op::Edit, Kind::ConfigMap) => {
            let patch = json!({"data": {"value": format!("edited-{n}")}});
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            t0 = now_ms();
            api.patch(&format!("config-{i}"), &pp, &Patch::Merge(&patch))
                .await?;
        }
        (Op::Delete, Kind::Deployment) => {
            let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
            t0 = now_ms();
            api.delete(&format!("app-{i}"), &DeleteParams::background())
                .await?;
        }
        (Op::Delete, Kind::ConfigMap) => {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            t0 = now_ms();
            api.delete(&format!("config-{i}"), &DeleteParams::default())
                .await?;
        }
    }
    Ok(t0)
}

/// The live value of the field the bench edits (`None`: the object does not exist).
async fn live_value(
    client: &kube::Client,
    ns: &str,
    kind: Kind,
    i: usize,
) -> Result<Option<String>> {
    Ok(match kind {
        Kind::Deployment => Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(&format!("app-{i}"))
            .await?
            .and_then(|d| d.spec?.template.spec?.containers.first()?.image.clone()),
        Kind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(&format!("config-{i}"))
            .await?
            .and_then(|c| c.data?.get("value").cloned()),
    })
}

fn original(kind: Kind) -> &'static str {
    match kind {
        Kind::Deployment => IMAGE,
        Kind::ConfigMap => VALUE,
    }
}

fn event_is(e: &DriftEvent, kind: Kind, i: usize, op: Op) -> bool {
    let (k, name) = match kind {
        Kind::Deployment => ("Deployment", format!("app-{i}")),
        Kind::ConfigMap => ("ConfigMap", format!("config-{i}")),
    };
    e.object.kind == k
        && e.object.name == name
        && e.object.namespace == NS
        && matches!(
            (&e.kind, op),
            (DriftKind::Modified { .. }, Op::Edit) | (DriftKind::Deleted, Op::Delete)
        )
}

/// Waits for the detection and then the correction event of one change.
async fn detect_and_correct(
    rx: &mut broadcast::Receiver<DriftEvent>,
    op: Op,
    kind: Kind,
    i: usize,
) -> Result<(u64, u64)> {
    let mut detected = None;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let e = match rx.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => bail!("missed {n} drift events"),
                Err(e) => return Err(e.into()),
            };
            if !event_is(&e, kind, i, op) {
                continue;
            }
            if let Some(err) = &e.error {
                bail!("the agent failed to correct {}: {err}", e.object);
            }
            match e.corrected_ms {
                None => detected = Some(e.detected_ms),
                Some(c) => return Ok((detected.unwrap_or(e.detected_ms), c)),
            }
        }
    })
    .await
    .with_context(|| format!("no detection and correction of {op:?} {kind:?} #{i} within 30 s"))?
}

/// One change of the reference run.
#[derive(Debug)]
struct Change {
    kind: Kind,
    i: usize,
    /// Unix ms just before the request.
    t0: u64,
    /// When the request returned.
    done: Instant,
}

/// Latency statistics of one series.
fn stats(v: &[u64]) -> String {
    format!(
        "n={:<3} p50={:>6} p99={:>6} max={:>6}",
        v.len(),
        percentile(v, 50.0),
        percentile(v, 99.0),
        v.iter().max().copied().unwrap_or(0)
    )
}

/// Runs `bench drift`.
pub async fn run(a: &DriftArgs) -> Result<()> {
    if a.objects == 0 || a.edits + a.deletes == 0 || a.reference_interval == 0 {
        bail!("--objects, --reference-interval and --edits + --deletes must be at least 1");
    }
    let c = TestCluster::start("bench-drift").await?;
    let client = c.client().await?;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "flotilla-system"}}))?;
    Api::<Namespace>::all(client.clone())
        .patch(
            "flotilla-system",
            &PatchParams::apply("bench"),
            &Patch::Apply(&ns),
        )
        .await?;
    let rec = Reconciler::new(
        Applier::new(client.clone(), ApplyConfig::default()),
        ReconcilerConfig {
            state_namespace: "flotilla-system".into(),
            watch_namespace: None,
        },
    );
    let outcome = rec.apply(bundle("drift", objects(NS, a.objects))).await?;
    if outcome.status != Status::Applied {
        bail!("applying the bundle failed: {}", outcome.message);
    }
    let health = rec.wait_healthy("drift", Duration::from_secs(120)).await;
    if !health.healthy {
        bail!("the bundle did not become healthy: {health:?}");
    }
    // Let the watches settle (initial lists done, controllers' status writes seen).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut rx = rec.subscribe();
    let steps = plan(a.edits, a.deletes, a.objects);
    out(&format!(
        "bench drift: {} Deployments + {} ConfigMaps, {} edits, {} deletes, {} cores",
        a.objects,
        a.objects,
        a.edits,
        a.deletes,
        cores()
    ));

    let mut lat: HashMap<Op, (Vec<u64>, Vec<u64>)> = HashMap::new();
    for (n, &(op, kind, i)) in steps.iter().enumerate() {
        let t0 = change(&client, NS, op, kind, i, n).await?;
        let (d, corr) = detect_and_correct(&mut rx, op, kind, i).await?;
        // What a user observes: the object is back as in Git.
        let back = live_value(&client, NS, kind, i).await?;
        if back.as_deref() != Some(original(kind)) {
            bail!(
                "after correction, {kind:?} #{i} holds {back:?}, not {:?}",
                original(kind)
            );
        }
        let e = lat.entry(op).or_default();
        e.0.push(d.saturating_sub(t0));
        e.1.push(corr.saturating_sub(t0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(rx);

    let reference = reference(&c, &client, a, &steps).await?;

    let detect: Vec<u64> = lat.values().flat_map(|v| v.0.iter().copied()).collect();
    let correct: Vec<u64> = lat.values().flat_map(|v| v.1.iter().copied()).collect();
    let empty = (vec![], vec![]);
    let edits = lat.get(&Op::Edit).unwrap_or(&empty);
    let deletes = lat.get(&Op::Delete).unwrap_or(&empty);
    out("series                           latency from the change, ms");
    out(&format!(
        "flotilla detect  (edits)         {}",
        stats(&edits.0)
    ));
    out(&format!(
        "flotilla correct (edits)         {}",
        stats(&edits.1)
    ));
    out(&format!(
        "flotilla detect  (deletes)       {}",
        stats(&deletes.0)
    ));
    out(&format!(
        "flotilla correct (deletes)       {}",
        stats(&deletes.1)
    ));
    out(&format!(
        "flotilla detect  (all)           {}",
        stats(&detect)
    ));
    out(&format!(
        "flotilla correct (all)           {}",
        stats(&correct)
    ));
    out(&format!(
        "reference correct, every {:>3} s  {}",
        a.reference_interval,
        stats(&reference)
    ));
    out(&format!(
        "RESULT drift edits={} deletes={} detect_p50_ms={} detect_p99_ms={} correct_p50_ms={} \
         correct_p99_ms={} reference_correct_p50_ms={} reference_correct_p99_ms={} \
         reference_interval_s={} cores={}",
        edits.0.len(),
        deletes.0.len(),
        percentile(&detect, 50.0),
        percentile(&detect, 99.0),
        percentile(&correct, 50.0),
        percentile(&correct, 99.0),
        percentile(&reference, 50.0),
        percentile(&reference, 99.0),
        a.reference_interval,
        cores()
    ));
    Ok(())
}

/// The Flux-style reference on a copy of the objects (unlabelled, so the agent ignores them):
/// a loop runs `kubectl apply --server-side --force-conflicts` every interval; the same
/// changes are made, spread over three intervals, each to a distinct object, and polled until
/// reverted. Returns the correction latencies.
async fn reference(
    c: &TestCluster,
    client: &kube::Client,
    a: &DriftArgs,
    steps: &[(Op, Kind, usize)],
) -> Result<Vec<u64>> {
    let dir = tempfile::tempdir()?;
    let yaml = dir.path().join("reference.yaml");
    std::fs::write(&yaml, to_yaml_stream(&objects(REF_NS, a.objects))?)?;
    let apply_args = [
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &yaml.to_string_lossy(),
    ]
    .map(String::from);
    kubectl(
        &a.kubectl,
        c.kubeconfig(),
        &apply_args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;

    // One change per object: 2 × objects distinct targets at most.
    let mut targets: Vec<(Op, Kind, usize)> = Vec::new();
    let mut used = std::collections::HashSet::new();
    for &(op, kind, _) in steps {
        if let Some(i) = (0..a.objects).find(|i| !used.contains(&(kind, *i))) {
            used.insert((kind, i));
            targets.push((op, kind, i));
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let interval = Duration::from_secs(a.reference_interval);
    let loop_task = {
        let stop = stop.clone();
        let kubectl_bin = a.kubectl.clone();
        let kubeconfig = c.kubeconfig().to_path_buf();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await; // the first tick is immediate: the objects were just applied
            let mut runs = 0u64;
            let mut worst_ms = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let started = Instant::now();
                let (k, kc, args) = (kubectl_bin.clone(), kubeconfig.clone(), apply_args.clone());
                let res = tokio::task::spawn_blocking(move || {
                    kubectl(
                        &k,
                        &kc,
                        &args.iter().map(String::as_str).collect::<Vec<_>>(),
                    )
                })
                .await;
                if let Ok(Err(e)) = res {
                    tracing::warn!(error = %format!("{e:#}"), "reference apply failed");
                }
                runs += 1;
                worst_ms = worst_ms.max(ms(started.elapsed()));
            }
            (runs, worst_ms)
        })
    };

    // Make the changes, spread over three intervals, while polling below.
    let spacing = interval * 3 / targets.len().max(1) as u32;
    let changed: Arc<Mutex<Vec<Change>>> = Arc::default();
    let changes_task = {
        let (client, changed) = (client.clone(), changed.clone());
        tokio::spawn(async move {
            for (n, &(op, kind, i)) in targets.iter().enumerate() {
                let t0 = change(&client, REF_NS, op, kind, i, n).await?;
                changed.lock().expect("changes lock").push(Change {
                    kind,
                    i,
                    t0,
                    done: Instant::now(),
                });
                tokio::time::sleep(spacing).await;
            }
            anyhow::Ok(targets.len())
        })
    };
    // Poll every 100 ms (two lists) until every change is reverted.
    let mut reverted: HashMap<(Kind, usize), u64> = HashMap::new();
    let deadline = Instant::now() + interval * 6 + Duration::from_secs(60);
    let lp = ListParams::default();
    loop {
        let total = changes_task
            .is_finished()
            .then(|| changed.lock().expect("changes lock").len());
        if total == Some(reverted.len()) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the reference reverted only {} changes in time",
                reverted.len()
            );
        }
        let (now, listed_at) = (now_ms(), Instant::now());
        let deps = Api::<Deployment>::namespaced(client.clone(), REF_NS)
            .list(&lp)
            .await?;
        let cms = Api::<ConfigMap>::namespaced(client.clone(), REF_NS)
            .list(&lp)
            .await?;
        let mut live: HashMap<(Kind, usize), String> = HashMap::new();
        for d in deps {
            let name = d.metadata.name.clone().unwrap_or_default();
            if let (Some(i), Some(img)) = (
                name.strip_prefix("app-").and_then(|s| s.parse().ok()),
                d.spec
                    .and_then(|s| s.template.spec)
                    .and_then(|s| s.containers.first().and_then(|c| c.image.clone())),
            ) {
                live.insert((Kind::Deployment, i), img);
            }
        }
        for cm in cms {
            let name = cm.metadata.name.clone().unwrap_or_default();
            if let (Some(i), Some(v)) = (
                name.strip_prefix("config-").and_then(|s| s.parse().ok()),
                cm.data.and_then(|d| d.get("value").cloned()),
            ) {
                live.insert((Kind::ConfigMap, i), v);
            }
        }
        // Only changes that had completed before the lists started count as observed.
        for ch in changed.lock().expect("changes lock").iter() {
            if ch.done < listed_at
                && !reverted.contains_key(&(ch.kind, ch.i))
                && live.get(&(ch.kind, ch.i)).map(String::as_str) == Some(original(ch.kind))
            {
                reverted.insert((ch.kind, ch.i), now.saturating_sub(ch.t0));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let made = changes_task.await??;
    stop.store(true, Ordering::Relaxed);
    let (runs, worst) = loop_task.await?;
    out(&format!(
        "reference: {made} changes on {REF_NS}, {runs} periodic applies (slowest {worst} ms)"
    ));
    Ok(reverted.into_values().collect())
}
