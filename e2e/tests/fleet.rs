//! The whole loop on real control planes, with the real hub, CLI and agent processes: a commit
//! reaches both workload clusters with their differences; a broken commit gives `BuildFailed`
//! with file and line while clusters keep the last good revision; `dependsOn` and `suspend` hold
//! what they should; a hub killed mid-rollout finishes it after a restart. Runs with
//! FLOTILLA_E2E=1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use flotilla_e2e::fleet::{Fleet, WorkloadSpec, tail};
use flotilla_e2e::{eventually, skip_unless_e2e};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// A local HTTP receiver of notifications: it answers 200 and keeps every request body.
async fn receiver() -> Result<(String, Arc<Mutex<Vec<Value>>>)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/notify", listener.local_addr()?);
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = got.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some(head_end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            if k.eq_ignore_ascii_case("content-length") {
                                v.trim().parse::<usize>().ok()
                            } else {
                                None
                            }
                        })
                        .unwrap_or(0);
                    if buf.len() < head_end + 4 + length {
                        continue;
                    }
                    if let Ok(v) =
                        serde_json::from_slice::<Value>(&buf[head_end + 4..head_end + 4 + length])
                    {
                        store.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                    }
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
            });
        }
    });
    Ok((url, got))
}

fn set_suspend(docs: &mut [Value], delivery: &str, suspend: bool) {
    for d in docs.iter_mut() {
        if d["kind"] == "Delivery" && d["metadata"]["name"] == delivery {
            d["spec"]["suspend"] = Value::Bool(suspend);
        }
    }
}

async fn replicas(fleet: &Fleet, workload: &str) -> Option<i32> {
    let client = fleet.workload(workload).cluster.client().await.ok()?;
    let d = Api::<Deployment>::namespaced(client, "podinfo")
        .get_opt("podinfo")
        .await
        .ok()??;
    d.spec?.replicas
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_reaches_every_cluster_and_a_broken_one_keeps_the_last_good_revision() -> Result<()>
{
    if skip_unless_e2e() {
        return Ok(());
    }
    let (notify_url, notifications) = receiver().await?;
    let notify_dir = tempfile::tempdir()?;
    let notify_file = notify_dir.path().join("notifications.yaml");
    std::fs::write(
        &notify_file,
        format!("providers:\n  - name: e2e\n    type: generic\n    url: {notify_url}\n"),
    )?;
    let mut fleet = Fleet::start(
        "fleet",
        &[
            WorkloadSpec::example("workload-1", "eu"),
            WorkloadSpec::example("workload-2", "us"),
        ],
        &["--notifications", &notify_file.display().to_string()],
    )
    .await?;
    // The infrastructure starts suspended: apps must wait for it on each cluster (dependsOn).
    fleet
        .apply_example(|docs| set_suspend(docs, "infrastructure", true))
        .await?;
    let first = fleet.repo.head()?;

    let apps = eventually("apps waiting on infrastructure", WAIT, || async {
        let d = fleet.delivery("fleet", "apps").await.ok()?;
        let s = d.status?;
        (s.clusters.len() == 2
            && s.clusters
                .iter()
                .all(|c| c.reason == "DependencyNotReady" && c.sequence == 0))
        .then_some(s)
    })
    .await
    .context("apps should wait for infrastructure")?;
    assert!(
        apps.clusters[0].message.contains("infrastructure"),
        "{:?}",
        apps.clusters[0]
    );
    for w in ["workload-1", "workload-2"] {
        assert_eq!(
            replicas(&fleet, w).await,
            None,
            "{w} got apps before its infrastructure"
        );
    }

    fleet
        .apply_example(|docs| set_suspend(docs, "infrastructure", false))
        .await?;
    fleet
        .wait_ready_at("fleet", "infrastructure", &first, WAIT)
        .await?;
    fleet.wait_ready_at("fleet", "apps", &first, WAIT).await?;
    // Per-cluster differences: staging has 1 replica, production 2; variables substituted.
    assert_eq!(replicas(&fleet, "workload-1").await, Some(1));
    assert_eq!(replicas(&fleet, "workload-2").await, Some(2));
    for (w, region) in [("workload-1", "eu"), ("workload-2", "us")] {
        let client = fleet.workload(w).cluster.client().await?;
        let info = Api::<ConfigMap>::namespaced(client, "kube-public")
            .get("cluster-info")
            .await?;
        let data = info.data.unwrap_or_default();
        assert_eq!(data.get("name").map(String::as_str), Some(w));
        assert_eq!(data.get("region").map(String::as_str), Some(region));
    }
    let cluster = fleet.cluster("workload-2").await?;
    let cs = cluster.status.context("cluster status")?;
    assert!(cs.connected);
    assert_eq!(cs.summary.as_deref(), Some("2/2"));

    // A commit with per-cluster effect.
    let prod = fleet.repo.read("apps/production/kustomization.yaml")?;
    let second = fleet.repo.commit_file(
        "apps/production/kustomization.yaml",
        &prod.replace("count: 2", "count: 3"),
        "production: 3 replicas",
    )?;
    fleet.reconcile_source("fleet", "fleet").await?;
    fleet.wait_ready_at("fleet", "apps", &second, WAIT).await?;
    assert_eq!(replicas(&fleet, "workload-2").await, Some(3));
    assert_eq!(replicas(&fleet, "workload-1").await, Some(1));

    // A malformed commit: BuildFailed naming file and line; clusters keep the last good state.
    let deployment = fleet.repo.read("apps/base/deployment.yaml")?;
    let broken = fleet.repo.commit_file(
        "apps/base/deployment.yaml",
        &deployment.replace("  replicas: 1\n", "  replicas: 1\n    oops: [unclosed\n"),
        "break the deployment",
    )?;
    let failed = eventually("apps BuildFailed", WAIT, || async {
        let d = fleet.delivery("fleet", "apps").await.ok()?;
        let ready = d
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (ready.reason == "BuildFailed").then_some(ready)
    })
    .await
    .with_context(|| {
        tail(
            &fleet.hub.as_ref().map(|h| h.log_text()).unwrap_or_default(),
            40,
        )
    })?;
    assert!(
        failed.message.contains("apps/base/deployment.yaml"),
        "{}",
        failed.message
    );
    // The line: the 7th of the file holds the bad YAML.
    assert!(
        failed
            .message
            .contains("apps/base/deployment.yaml:7: invalid YAML"),
        "{}",
        failed.message
    );
    assert!(
        failed.message.contains(&broken[..12]),
        "names the broken revision: {}",
        failed.message
    );
    assert_eq!(
        replicas(&fleet, "workload-2").await,
        Some(3),
        "the last good revision stays"
    );

    // The failure reached the notification receiver, naming what failed.
    let failure = eventually("a BuildFailed notification", WAIT, || async {
        let got = notifications
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        got.into_iter()
            .find(|n| n.to_string().contains("BuildFailed"))
    })
    .await?;
    let text = failure.to_string();
    for needle in [
        "fleet/apps",
        "workload-",
        &broken[..12],
        "apps/base/deployment.yaml:7",
    ] {
        assert!(text.contains(needle), "notification lacks {needle}: {text}");
    }

    // The fix recovers.
    let fixed = fleet.repo.commit_file(
        "apps/base/deployment.yaml",
        &deployment,
        "fix the deployment",
    )?;
    fleet.wait_ready_at("fleet", "apps", &fixed, WAIT).await?;
    eventually("recovery notifications for both clusters", WAIT, || async {
        let got = notifications
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let recoveries = got
            .iter()
            .filter(|n| n.to_string().contains("recover"))
            .count();
        let failures = got
            .iter()
            .filter(|n| n.to_string().contains("BuildFailed"))
            .count();
        (recoveries >= 2 && failures == 2).then_some(())
    })
    .await
    .with_context(|| {
        format!(
            "{:#?}",
            notifications.lock().unwrap_or_else(|e| e.into_inner())
        )
    })?;

    // Suspend holds a change; resume lets it through.
    fleet
        .apply_example(|docs| set_suspend(docs, "apps", true))
        .await?;
    let held = fleet.repo.commit_file(
        "apps/production/kustomization.yaml",
        &prod.replace("count: 2", "count: 4"),
        "production: 4 replicas",
    )?;
    eventually("the source at the held commit", WAIT, || async {
        let client = fleet.mgmt.client().await.ok()?;
        let gs = Api::<flotilla_hub::api::GitSource>::namespaced(client, "fleet")
            .get("fleet")
            .await
            .ok()?;
        gs.status?.artifact?.revision.ends_with(&held).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        replicas(&fleet, "workload-2").await,
        Some(3),
        "suspended: held back"
    );
    fleet
        .apply_example(|docs| set_suspend(docs, "apps", false))
        .await?;
    fleet.wait_ready_at("fleet", "apps", &held, WAIT).await?;
    assert_eq!(replicas(&fleet, "workload-2").await, Some(4));

    // A restarted hub sends the agents nothing they already hold.
    let applies = |fleet: &Fleet| -> Vec<usize> {
        fleet
            .workloads
            .iter()
            .map(|w| {
                w.agent
                    .as_ref()
                    .map(|a| a.log_text().matches("applied revision").count())
                    .unwrap_or(0)
            })
            .collect()
    };
    let sequences = |d: flotilla_hub::api::Delivery| -> Vec<u64> {
        d.status
            .map(|s| s.clusters.iter().map(|c| c.sequence).collect())
            .unwrap_or_default()
    };
    let applied_before = applies(&fleet);
    let sequences_before = sequences(fleet.delivery("fleet", "apps").await?);
    fleet.hub.as_mut().context("hub")?.kill();
    fleet.start_hub()?;
    eventually("both agents reconnected to the new hub", WAIT, || async {
        let log = fleet.hub.as_ref()?.log_text();
        let connected = log
            .lines()
            .filter(|l| l.contains("agent connected"))
            .count();
        (connected >= 2).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    fleet.wait_ready_at("fleet", "apps", &held, WAIT).await?;
    assert_eq!(
        applies(&fleet),
        applied_before,
        "agents re-applied after a hub restart"
    );
    assert_eq!(
        sequences(fleet.delivery("fleet", "apps").await?),
        sequences_before
    );

    // A hub killed in the middle of a rollout completes it after a restart.
    let mid = fleet.repo.commit_file(
        "apps/production/kustomization.yaml",
        &prod.replace("count: 2", "count: 5"),
        "production: 5 replicas",
    )?;
    fleet.reconcile_source("fleet", "fleet").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    fleet.hub.as_mut().context("hub")?.kill();
    fleet.start_hub()?;
    fleet.wait_ready_at("fleet", "apps", &mid, WAIT).await?;
    assert_eq!(replicas(&fleet, "workload-2").await, Some(5));
    Ok(())
}
