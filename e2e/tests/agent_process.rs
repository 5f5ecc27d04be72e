//! The real `flotilla-agent` process: killed with SIGKILL in the middle of an apply, restarted
//! with no hub, it ends in the right state without a spurious prune and keeps correcting drift.
//! Runs with FLOTILLA_E2E=1.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};
use flotilla_e2e::{TestCluster, eventually, skip_unless_e2e, workspace_binary};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bundle(sequence: u64, names: &[String]) -> Value {
    let mut objects =
        vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "crash"}})];
    for n in names {
        objects.push(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": n, "namespace": "crash"}, "data": {"seq": sequence.to_string()}}));
    }
    json!({"delivery": "crash", "revision": format!("rev-{sequence}"), "sequence": sequence, "objects": objects})
}

fn agent(c: &TestCluster, args: &[&str]) -> Result<Agent> {
    let bin = workspace_binary("flotilla-agent", "flotilla-agent")?;
    let child = Command::new(bin)
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        // A low rate so the apply is reliably still running when it is killed.
        .args([
            "--apply-concurrency",
            "2",
            "--kube-qps",
            "100",
            "--kube-burst",
            "10",
        ])
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .context("starting flotilla-agent")?;
    Ok(Agent(child))
}

async fn names_in(cms: &Api<ConfigMap>) -> Result<BTreeSet<String>> {
    Ok(cms
        .list(&ListParams::default().labels("flotilla.dev/delivery=crash"))
        .await?
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect())
}

#[tokio::test]
async fn kill_9_mid_apply_then_restart_without_hub_converges_without_spurious_prune() -> Result<()>
{
    if skip_unless_e2e() {
        return Ok(());
    }
    let c = TestCluster::start("agent-kill9").await?;
    let cms: Api<ConfigMap> = Api::namespaced(c.client().await?, "crash");
    let dir = tempfile::tempdir()?;

    // Revision 1: keep-me and old-only.
    let first: Vec<String> = vec!["keep-me".into(), "old-only".into()];
    let f1 = dir.path().join("b1.json");
    std::fs::write(&f1, serde_json::to_vec(&bundle(1, &first))?)?;
    let mut a = agent(
        &c,
        &[
            "apply",
            "--store",
            "--wait",
            "0",
            "--file",
            f1.to_str().unwrap(),
        ],
    )?;
    assert!(a.0.wait()?.success(), "first apply failed");

    // Revision 2: keep-me plus 400 new objects, old-only gone. Kill the agent mid-apply.
    let mut second: Vec<String> = (0..400).map(|i| format!("new-{i:03}")).collect();
    second.push("keep-me".into());
    let f2 = dir.path().join("b2.json");
    std::fs::write(&f2, serde_json::to_vec(&bundle(2, &second))?)?;
    let mut a = agent(
        &c,
        &[
            "apply",
            "--store",
            "--wait",
            "0",
            "--file",
            f2.to_str().unwrap(),
        ],
    )?;
    eventually("the second apply to be under way", WAIT, || {
        let cms = cms.clone();
        async move { (names_in(&cms).await.ok()?.len() >= 30).then_some(()) }
    })
    .await?;
    a.0.kill()?; // SIGKILL
    a.0.wait()?;
    let partial = names_in(&cms).await?;
    assert!(
        partial.len() < 401,
        "the apply finished before the kill ({} objects)",
        partial.len()
    );
    assert!(
        partial.contains("old-only"),
        "nothing may be pruned before the apply completes"
    );

    // Restart with no hub: the stored revision 2 is resumed, applied in full, and only
    // old-only is pruned.
    let _agent = agent(&c, &["run"])?;
    let want: BTreeSet<String> = second.iter().cloned().collect();
    eventually(
        "the restarted agent to converge on revision 2",
        WAIT,
        || {
            let (cms, want) = (cms.clone(), want.clone());
            async move { (names_in(&cms).await.ok()? == want).then_some(()) }
        },
    )
    .await?;
    let inventory: Api<ConfigMap> = Api::namespaced(c.client().await?, "flotilla-system");
    let inv = inventory.get("inventory-crash").await?.data.unwrap()["objects.json"].clone();
    let inv: Vec<Value> = serde_json::from_str(&inv)?;
    assert_eq!(
        inv.len(),
        402,
        "inventory is revision 2: namespace + 401 ConfigMaps"
    );

    // The restarted agent keeps correcting drift without a hub.
    cms.patch(
        "new-123",
        &PatchParams::apply("someone-else").force(),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "new-123", "namespace": "crash"}, "data": {"seq": "tampered"}})),
    )
    .await?;
    eventually("the tampered value to be put back", WAIT, || {
        let cms = cms.clone();
        async move {
            let cm = cms.get("new-123").await.ok()?;
            (cm.data?["seq"] == "2").then_some(())
        }
    })
    .await?;
    Ok(())
}
