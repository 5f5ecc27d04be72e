//! `flotilla bootstrap` on a real control plane with a real (bare) Git repository: it commits
//! and applies the hub and agent charts plus the GitSource/Delivery that point back at them;
//! the real `flotilla-hub` and `flotilla-agent` then run with the containers of the Deployments
//! bootstrap applied (arguments, environment, mounted ConfigMaps and Secrets, a token of their
//! ServiceAccounts) until the hub reports its own Delivery ready, which is when bootstrap
//! exits 0. A second run changes nothing, and a commit to the management cluster's directory —
//! including a change to the hub's own Deployment — is applied by the hub's own loop.
//! Runs with FLOTILLA_E2E=1.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use flotilla_e2e::controlplane::TestCluster;
use flotilla_e2e::fleet::{Process, tail};
use flotilla_e2e::pods::{
    assert_nothing_forbidden, cluster_objects, command, local_pod, service_account_kubeconfig,
    start_hub,
};
use flotilla_e2e::{eventually, helm_binary, skip_unless_e2e, workspace_binary};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::ListParams;

const NS: &str = "flotilla-system";
const PATH: &str = "clusters/mgmt";

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=ops",
            "-c",
            "user.email=ops@flotilla.invalid",
        ])
        .args(args)
        .output()
        .context("running git")?;
    ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `flotilla bootstrap` against `mgmt` and `remote`, its output going to `log`.
fn start_bootstrap(mgmt: &TestCluster, remote: &Path, log: &Path) -> Result<Child> {
    let file = std::fs::File::create(log)?;
    Command::new(workspace_binary("flotilla-hub", "flotilla")?)
        .arg("--kubeconfig")
        .arg(mgmt.kubeconfig())
        .args(["bootstrap", "--repo"])
        .arg(remote)
        .args(["--path", PATH, "--interval", "5s", "--wait", "4m"])
        .arg("--helm-binary")
        .arg(helm_binary()?)
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .spawn()
        .context("starting flotilla bootstrap")
}

/// Waits for `child` to exit within `timeout`; its exit status must be success.
fn finished(child: &mut Child, timeout: Duration, log: &Path) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(log)?;
            ensure!(
                status.success(),
                "flotilla bootstrap exited with {status}:\n{text}"
            );
            return Ok(text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "flotilla bootstrap still runs after {timeout:?}:\n{}",
                std::fs::read_to_string(log)?
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Bootstrap tokens of cluster `mgmt` stored by the hub's registry.
async fn token_secrets(mgmt: &TestCluster) -> Result<usize> {
    Ok(Api::<Secret>::namespaced(mgmt.client().await?, NS)
        .list(&ListParams::default().labels("flotilla.dev/cluster=mgmt"))
        .await?
        .items
        .len())
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_installs_a_hub_that_then_manages_itself_from_git() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("flotilla-bootstrap-")
        .tempdir()?;
    let dir = dir.path();
    let mgmt = TestCluster::start("bootstrap-mgmt").await?;
    let remote = dir.join("fleet.git");
    git(dir, &["init", "-q", "--bare", "-b", "main", "fleet.git"])?;

    let log = dir.join("bootstrap-1.log");
    let mut run = start_bootstrap(&mgmt, &remote, &log)?;
    let client = mgmt.client().await?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), NS);
    let secrets = Api::<Secret>::namespaced(client.clone(), NS);
    eventually(
        "bootstrap to apply the agent and its token",
        Duration::from_secs(120),
        || async {
            deployments.get_opt("flotilla-agent").await.ok().flatten()?;
            secrets
                .get_opt("flotilla-agent-bootstrap")
                .await
                .ok()
                .flatten()
        },
    )
    .await
    .with_context(|| {
        format!(
            "bootstrap log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })?;

    // The containers of the Deployments bootstrap applied, run here under their identities.
    let hub_objects = cluster_objects(&mgmt, NS, "flotilla-hub").await?;
    let (mut hub, reg, del) = start_hub(&mgmt, &hub_objects, NS, &dir.join("hub")).await?;
    let info = Api::<ConfigMap>::namespaced(client.clone(), NS);
    eventually("the hub's ConfigMap", Duration::from_secs(60), || async {
        info.get_opt("flotilla-hub").await.ok().flatten()
    })
    .await
    .with_context(|| format!("hub log:\n{}", tail(&hub.log_text(), 40)))?;
    let agent_objects = cluster_objects(&mgmt, NS, "flotilla-agent").await?;
    let adir = dir.join("agent");
    let mut pod = local_pod(&agent_objects, NS, &adir.join("pod"))?;
    // The Service's DNS name is this host: dial the hub's loopback ports, keep the name the
    // hub's certificate carries.
    let svc = "flotilla-hub.flotilla-system.svc";
    for (k, v) in &mut pod.env {
        match k.as_str() {
            "FLOTILLA_HUB" => {
                assert_eq!(v, &format!("https://{svc}:7443"));
                *v = format!("https://127.0.0.1:{del}");
            }
            "FLOTILLA_HUB_REGISTRATION" => {
                assert_eq!(v, &format!("https://{svc}:7441"));
                *v = format!("https://127.0.0.1:{reg}");
            }
            _ => {}
        }
    }
    let kubeconfig = service_account_kubeconfig(&mgmt, NS, &pod.service_account, &adir).await?;
    let mut cmd = command(&workspace_binary("flotilla-agent", "flotilla-agent")?, &pod);
    cmd.arg("--kubeconfig").arg(&kubeconfig);
    let mut agent = Process::spawn(cmd, adir.join("agent.log"))?;
    let logs = |hub: &Process, agent: &Process| {
        format!(
            "hub log:\n{}\nagent log:\n{}",
            tail(&hub.log_text(), 30),
            tail(&agent.log_text(), 30)
        )
    };

    // Bootstrap returns once the hub reports its own Delivery ready at the commit it pushed.
    let out = tokio::task::block_in_place(|| finished(&mut run, Duration::from_secs(270), &log))
        .with_context(|| logs(&hub, &agent))?;
    let head = git(&remote, &["rev-parse", "main"])?;
    assert!(
        out.contains(&format!("committed and pushed {head}")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "delivery flotilla-system/flotilla-system is ready on mgmt at {head}"
        )),
        "{out}"
    );
    let files = git(&remote, &["ls-tree", "-r", "--name-only", "main"])?;
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        [
            "clusters/mgmt/flotilla-system/agent.yaml",
            "clusters/mgmt/flotilla-system/hub.yaml",
            "clusters/mgmt/flotilla-system/sync.yaml",
        ]
    );
    // The token is in the cluster, never in Git.
    let token = secrets.get("flotilla-agent-bootstrap").await?;
    let token = String::from_utf8(
        token.data.context("token Secret without data")?["token"]
            .0
            .clone(),
    )?;
    ensure!(token.len() > 20, "a bootstrap token that short is no token");
    let log_all = git(&remote, &["log", "-p", "main"])?;
    assert!(
        !log_all.contains(&token),
        "the bootstrap token was committed"
    );
    assert!(!out.contains(&token), "bootstrap printed the token:\n{out}");

    // The management agent applied the hub's installation: the Delivery lists it on `mgmt`.
    let delivery = Api::<flotilla_hub::api::Delivery>::namespaced(client.clone(), NS)
        .get(NS)
        .await?;
    let status = delivery
        .status
        .context("the bootstrap Delivery has no status")?;
    let on_mgmt = status
        .clusters
        .iter()
        .find(|c| c.name == "mgmt")
        .context("the bootstrap Delivery does not target mgmt")?;
    assert!(on_mgmt.ready, "{on_mgmt:?}");
    let cluster = Api::<flotilla_hub::api::Cluster>::all(client.clone())
        .get("mgmt")
        .await?;
    assert!(cluster.status.is_some_and(|s| s.connected));

    // Running it again changes nothing: no commit, no new token, nothing re-applied.
    let tokens = token_secrets(&mgmt).await?;
    let generation = deployments.get("flotilla-hub").await?.metadata.generation;
    let log2 = dir.join("bootstrap-2.log");
    let mut again = start_bootstrap(&mgmt, &remote, &log2)?;
    let out2 =
        tokio::task::block_in_place(|| finished(&mut again, Duration::from_secs(120), &log2))
            .with_context(|| logs(&hub, &agent))?;
    assert!(
        out2.contains(&format!("repository already up to date at {head}")),
        "{out2}"
    );
    assert!(out2.contains("(0 changed)"), "{out2}");
    assert!(
        out2.contains("cluster mgmt: its agent is registered already"),
        "{out2}"
    );
    assert_eq!(git(&remote, &["rev-parse", "main"])?, head);
    assert_eq!(token_secrets(&mgmt).await?, tokens);
    assert_eq!(
        deployments.get("flotilla-hub").await?.metadata.generation,
        generation
    );

    // From now on Git drives the management cluster, the hub's own Deployment included.
    let work = dir.join("work");
    git(
        dir,
        &["clone", "-q", remote.to_str().context("path")?, "work"],
    )?;
    let hub_file = work.join(PATH).join("flotilla-system/hub.yaml");
    let text = std::fs::read_to_string(&hub_file)?;
    let from = "name: FLOTILLA_LOG\n              value: \"info\"";
    ensure!(
        text.contains(from),
        "hub.yaml has no FLOTILLA_LOG=info:\n{text}"
    );
    std::fs::write(
        &hub_file,
        text.replace(from, "name: FLOTILLA_LOG\n              value: \"debug\""),
    )?;
    std::fs::create_dir_all(work.join(PATH).join("team"))?;
    std::fs::write(
        work.join(PATH).join("team/settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: team-settings\n  namespace: default\ndata:\n  owner: platform\n",
    )?;
    git(&work, &["add", "-A"])?;
    git(
        &work,
        &[
            "commit",
            "-q",
            "-m",
            "Debug logs for the hub; team settings",
        ],
    )?;
    git(&work, &["push", "-q", "origin", "main"])?;
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), "default");
    eventually(
        "the commit applied by the hub's own loop",
        Duration::from_secs(120),
        || async {
            configmaps.get_opt("team-settings").await.ok().flatten()?;
            let d = deployments.get("flotilla-hub").await.ok()?;
            let env = d.spec?.template.spec?.containers.first()?.env.clone()?;
            env.iter()
                .any(|e| e.name == "FLOTILLA_LOG" && e.value.as_deref() == Some("debug"))
                .then_some(())
        },
    )
    .await
    .with_context(|| logs(&hub, &agent))?;

    assert_nothing_forbidden(&hub, &agent);
    hub.stop();
    agent.stop();
    Ok(())
}
