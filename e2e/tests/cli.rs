//! The `flotilla` CLI against a real fleet (management + two workload control planes, the real
//! hub and agents): `get`, `status`, `suspend`/`resume`, and `diff` showing exactly what a
//! working tree or a commit would change on each cluster, with its exit codes. Runs with
//! FLOTILLA_E2E=1.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};
use flotilla_e2e::fleet::{Fleet, WorkloadSpec};
use flotilla_e2e::{eventually, skip_unless_e2e, workspace_binary};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// Base64 of `hunter2` and `s3cret-new`, and of the unchanged user name `admin`.
const OLD_PASSWORD: &str = "aHVudGVyMg==";
const NEW_PASSWORD: &str = "czNjcmV0LW5ldw==";
const USER: &str = "YWRtaW4=";

fn secret(password: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db-credentials\n  namespace: kube-public\n\
         data:\n  password: {password}\n  username: {USER}\n"
    )
}

/// One run of the real `flotilla` binary.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn flotilla(fleet: &Fleet, args: &[&str]) -> Result<Run> {
    let bin = workspace_binary("flotilla-hub", "flotilla")?;
    let out = Command::new(bin)
        .arg("--kubeconfig")
        .arg(fleet.mgmt.kubeconfig())
        .args(args)
        .output()
        .context("running flotilla")?;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Keeps a command's output as a test artifact in `target/tmp/e2e-artifacts/cli/NAME.txt` (the
/// examples in docs/cli.md come from there).
fn keep(name: &str, r: &Run) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-artifacts/cli");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join(format!("{name}.txt")),
        format!(
            "exit code {}\n--- stdout\n{}--- stderr\n{}",
            r.code, r.stdout, r.stderr
        ),
    );
}

/// `flotilla ...` that must succeed; its stdout.
fn ok(fleet: &Fleet, args: &[&str]) -> Result<String> {
    let r = flotilla(fleet, args)?;
    anyhow::ensure!(r.code == 0, "flotilla {args:?} failed: {r:?}");
    Ok(r.stdout)
}

/// The change lines of a `flotilla diff` report, per cluster: `+ created  Kind ns/name`, ...
fn changes(report: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut cluster = String::new();
    for line in report.lines() {
        if let Some(c) = line.strip_prefix("cluster ") {
            cluster = c.to_owned();
            out.entry(cluster.clone()).or_default();
        } else if let Some(rest) = line.strip_prefix("    ")
            && (rest.starts_with("+ created")
                || rest.starts_with("~ changed")
                || rest.starts_with("- pruned"))
        {
            out.entry(cluster.clone())
                .or_default()
                .insert(rest.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=flotilla-e2e",
            "-c",
            "user.email=e2e@flotilla.invalid",
        ])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn replicas(fleet: &Fleet, workload: &str) -> Option<i32> {
    let client = fleet.workload(workload).cluster.client().await.ok()?;
    let d = Api::<Deployment>::namespaced(client, "podinfo")
        .get_opt("podinfo")
        .await
        .ok()??;
    d.spec?.replicas
}

fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_reads_steers_and_diffs_the_fleet() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let fleet = Fleet::start(
        "cli",
        &[
            WorkloadSpec::example("workload-1", "eu"),
            WorkloadSpec::example("workload-2", "us"),
        ],
        &[],
    )
    .await?;
    // A Secret every cluster runs, so the diff of a changed Secret is seen not to print values.
    std::fs::write(
        fleet.repo.path.join("infrastructure/credentials.yaml"),
        secret(OLD_PASSWORD),
    )?;
    let infra = fleet.repo.read("infrastructure/kustomization.yaml")?;
    fleet.repo.commit_file(
        "infrastructure/kustomization.yaml",
        &infra.replace(
            "  - cluster-info.yaml\n",
            "  - cluster-info.yaml\n  - credentials.yaml\n",
        ),
        "infrastructure: database credentials",
    )?;
    fleet.apply_example(|_| {}).await?;
    let first = fleet.repo.head()?;
    fleet
        .wait_ready_at("fleet", "infrastructure", &first, WAIT)
        .await?;
    fleet.wait_ready_at("fleet", "apps", &first, WAIT).await?;
    // Cluster status (applied revisions) trails delivery status by a pass.
    eventually("both clusters 2/2 ready", WAIT, || async {
        let mut all = true;
        for w in ["workload-1", "workload-2"] {
            let s = fleet.cluster(w).await.ok()?.status?;
            all &= s.summary.as_deref() == Some("2/2")
                && s.deliveries.iter().all(|d| d.revision.is_some());
        }
        all.then_some(())
    })
    .await?;

    // --- get and status -----------------------------------------------------------------------
    let clusters = ok(&fleet, &["get", "clusters"])?;
    keep("get-clusters", &flotilla(&fleet, &["get", "clusters"])?);
    keep(
        "get-deliveries",
        &flotilla(&fleet, &["get", "deliveries", "-n", "fleet"])?,
    );
    keep("get-sources", &flotilla(&fleet, &["get", "sources", "-A"])?);
    keep("status", &flotilla(&fleet, &["status"])?);
    assert!(
        clusters.starts_with(
            "NAME         ACCEPTED   CONNECTED   LAST SEEN   DELIVERIES READY   DRIFTED   READY   AGE"
        ),
        "{clusters}"
    );
    for w in ["workload-1", "workload-2"] {
        let r = row(&clusters, w);
        assert_eq!(r[1..3], ["True", "True"], "{clusters}");
        assert_eq!(r[4..7], ["2/2", "0", "True"], "{clusters}");
    }
    let deliveries = ok(&fleet, &["get", "deliveries", "-n", "fleet"])?;
    for d in ["apps", "infrastructure"] {
        let r = row(&deliveries, d);
        assert_eq!(r[1], "fleet", "{deliveries}");
        assert_eq!(r[3], &first[..12], "{deliveries}");
        assert_eq!(r[4..7], ["False", "True", "2/2"], "{deliveries}");
    }
    let all = ok(&fleet, &["get", "deliveries", "-A"])?;
    assert!(all.starts_with("NAMESPACE   NAME"), "{all}");
    let sources = ok(&fleet, &["get", "sources", "-n", "fleet"])?;
    assert!(
        row(&sources, "fleet")[2] == format!("main@sha1:{first}"),
        "{sources}"
    );
    let json: Value = serde_json::from_str(&ok(
        &fleet,
        &["get", "deliveries", "-n", "fleet", "-o", "json"],
    )?)?;
    assert_eq!(json["kind"], "List");
    assert_eq!(json["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["items"][0]["kind"], "Delivery");
    let yaml = ok(&fleet, &["get", "cluster", "workload-1", "-o", "yaml"])?;
    let one: Value = serde_yaml::from_str(&yaml)?;
    assert_eq!(one["metadata"]["name"], "workload-1");
    assert_eq!(one["kind"], "Cluster");
    assert_eq!(one["spec"]["accepted"], true);
    assert!(one["metadata"].get("managedFields").is_none(), "{yaml}");
    let missing = flotilla(&fleet, &["get", "deliveries", "nope", "-n", "fleet"])?;
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("\"nope\" not found"), "{missing:?}");

    let status = ok(&fleet, &["status"])?;
    assert!(
        status.starts_with(
            "Clusters:    2/2 connected, 2/2 ready\n\
             Deliveries:  2/2 ready\n\
             Sources:     1/1 ready\n"
        ),
        "{status}"
    );

    // --- diff: an unchanged working tree changes nothing ---------------------------------------
    let work = tempfile::tempdir()?;
    let copy = work.path().join("fleet");
    git(
        work.path(),
        &[
            "clone",
            "-q",
            &fleet.repo.path.display().to_string(),
            "fleet",
        ],
    )?;
    let path = copy.display().to_string();
    let same = flotilla(&fleet, &["diff", "--path", &path])?;
    assert_eq!(same.code, 0, "{same:?}");
    assert!(
        same.stdout.ends_with("no changes on 2 cluster(s)\n"),
        "{same:?}"
    );
    assert_eq!(
        changes(&same.stdout),
        BTreeMap::from([
            ("workload-1".to_owned(), BTreeSet::new()),
            ("workload-2".to_owned(), BTreeSet::new())
        ])
    );
    // A subdirectory of the checkout works too (paths are relative to the work tree's root).
    let sub = flotilla(
        &fleet,
        &["diff", "--path", &copy.join("apps").display().to_string()],
    )?;
    assert_eq!(sub.code, 0, "{sub:?}");

    // --- diff: bump an image in the production overlay, add an object to staging, remove the
    // Service from the base.
    let prod = std::fs::read_to_string(copy.join("apps/production/kustomization.yaml"))?;
    std::fs::write(
        copy.join("apps/production/kustomization.yaml"),
        format!("{prod}images:\n  - name: ghcr.io/stefanprodan/podinfo\n    newTag: 6.8.0\n"),
    )?;
    std::fs::write(
        copy.join("apps/staging/extra.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\n  namespace: podinfo\ndata:\n  hello: world\n",
    )?;
    let staging = std::fs::read_to_string(copy.join("apps/staging/kustomization.yaml"))?;
    std::fs::write(
        copy.join("apps/staging/kustomization.yaml"),
        staging.replace("  - ../base\n", "  - ../base\n  - extra.yaml\n"),
    )?;
    let base = std::fs::read_to_string(copy.join("apps/base/kustomization.yaml"))?;
    std::fs::write(
        copy.join("apps/base/kustomization.yaml"),
        base.replace("  - service.yaml\n", ""),
    )?;
    std::fs::write(
        copy.join("infrastructure/credentials.yaml"),
        secret(NEW_PASSWORD),
    )?;
    let expected = BTreeMap::from([
        (
            "workload-1".to_owned(),
            set(&[
                "+ created ConfigMap podinfo/extra",
                "- pruned Service podinfo/podinfo",
                "~ changed Secret kube-public/db-credentials",
            ]),
        ),
        (
            "workload-2".to_owned(),
            set(&[
                "~ changed Deployment podinfo/podinfo",
                "- pruned Service podinfo/podinfo",
                "~ changed Secret kube-public/db-credentials",
            ]),
        ),
    ]);
    let d = flotilla(&fleet, &["diff", "--path", &path])?;
    keep("diff-changes", &d);
    assert_eq!(d.code, 1, "{d:?}");
    assert_eq!(changes(&d.stdout), expected, "{}", d.stdout);
    assert!(
        d.stdout
            .contains("-        image: ghcr.io/stefanprodan/podinfo:6.7.0\n")
            && d.stdout
                .contains("+        image: ghcr.io/stefanprodan/podinfo:6.8.0\n"),
        "the image bump is shown as a unified diff:\n{}",
        d.stdout
    );
    // The Secret's change is visible, its values are not (neither encoded nor decoded).
    for value in [
        OLD_PASSWORD,
        NEW_PASSWORD,
        USER,
        "hunter2",
        "s3cret-new",
        "admin",
    ] {
        assert!(
            !d.stdout.contains(value) && !d.stderr.contains(value),
            "diff printed the secret value {value}:\n{}",
            d.stdout
        );
    }
    for line in [
        "-  password: '*** (before)'\n",
        "+  password: '*** (after)'\n",
        "      username: '***'\n",
    ] {
        assert!(d.stdout.contains(line), "{line:?} in\n{}", d.stdout);
    }
    assert!(
        d.stdout
            .ends_with("1 to create, 3 to change, 2 to prune on 2 of 2 cluster(s)\n"),
        "{}",
        d.stdout
    );

    // One cluster, one delivery.
    let one = flotilla(
        &fleet,
        &[
            "diff",
            "--path",
            &path,
            "--cluster",
            "workload-2",
            "--delivery",
            "fleet/apps",
        ],
    )?;
    assert_eq!(one.code, 1, "{one:?}");
    assert_eq!(
        changes(&one.stdout),
        BTreeMap::from([(
            "workload-2".to_owned(),
            set(&[
                "~ changed Deployment podinfo/podinfo",
                "- pruned Service podinfo/podinfo",
            ])
        )])
    );
    assert!(!one.stdout.contains("infrastructure"), "{}", one.stdout);

    // The same change as a commit: --revision compares that commit, whatever the work tree.
    git(&copy, &["add", "-A"])?;
    git(&copy, &["commit", "-q", "-m", "bump, add, remove"])?;
    let rev = flotilla(&fleet, &["diff", "--path", &path, "--revision", "HEAD"])?;
    assert_eq!(rev.code, 1, "{rev:?}");
    assert_eq!(changes(&rev.stdout), expected, "{}", rev.stdout);
    let back = flotilla(&fleet, &["diff", "--path", &path, "--revision", "HEAD~1"])?;
    assert_eq!(back.code, 0, "the commit the clusters run: {back:?}");

    // A broken kustomization: exit 2, naming the file and line.
    std::fs::write(
        copy.join("clusters/workload-1/kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../../apps/staging\n",
    )?;
    let broken = flotilla(&fleet, &["diff", "--path", &path])?;
    keep("diff-broken", &broken);
    assert_eq!(broken.code, 2, "{broken:?}");
    assert!(
        broken
            .stderr
            .contains("delivery fleet/apps, cluster workload-1")
            && broken
                .stderr
                .contains("clusters/workload-1/kustomization.yaml:"),
        "{broken:?}"
    );
    git(&copy, &["checkout", "-q", "--", "."])?;

    // --- suspend holds a commit back; diff shows what the cluster still runs; resume ------------
    let out = ok(&fleet, &["suspend", "delivery", "apps", "-n", "fleet"])?;
    assert_eq!(out, "Delivery fleet/apps suspended\n");
    assert!(fleet.delivery("fleet", "apps").await?.spec.suspend);
    let suspended = ok(&fleet, &["get", "deliveries", "-n", "fleet"])?;
    assert_eq!(row(&suspended, "apps")[4], "True", "{suspended}");
    let prod = fleet.repo.read("apps/production/kustomization.yaml")?;
    let second = fleet.repo.commit_file(
        "apps/production/kustomization.yaml",
        &prod.replace("count: 2", "count: 3"),
        "production: 3 replicas",
    )?;
    ok(&fleet, &["reconcile", "source", "fleet", "-n", "fleet"])?;
    eventually("the source at the held commit", WAIT, || async {
        let s = ok(&fleet, &["get", "sources", "-n", "fleet"]).ok()?;
        s.contains(&second).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        replicas(&fleet, "workload-2").await,
        Some(2),
        "suspended: nothing delivered"
    );
    // The fleet's own checkout is at the held commit: diff shows what the clusters would get.
    let held = flotilla(
        &fleet,
        &["diff", "--path", &fleet.repo.path.display().to_string()],
    )?;
    keep("diff-suspended", &held);
    keep("status-suspended", &flotilla(&fleet, &["status"])?);
    assert_eq!(held.code, 1, "{held:?}");
    assert_eq!(
        changes(&held.stdout),
        BTreeMap::from([
            ("workload-1".to_owned(), BTreeSet::new()),
            (
                "workload-2".to_owned(),
                set(&["~ changed Deployment podinfo/podinfo"])
            ),
        ]),
        "{}",
        held.stdout
    );
    assert!(
        held.stdout.contains("-  replicas: 2\n") && held.stdout.contains("+  replicas: 3\n"),
        "{}",
        held.stdout
    );
    assert!(held.stdout.contains("note: the delivery is suspended"));

    let out = ok(&fleet, &["resume", "delivery", "apps", "-n", "fleet"])?;
    assert_eq!(out, "Delivery fleet/apps resumed\n");
    fleet.wait_ready_at("fleet", "apps", &second, WAIT).await?;
    assert_eq!(replicas(&fleet, "workload-2").await, Some(3));
    let settled = eventually("diff settles once delivered", WAIT, || async {
        let r = flotilla(
            &fleet,
            &["diff", "--path", &fleet.repo.path.display().to_string()],
        )
        .ok()?;
        (r.code == 0).then_some(r)
    })
    .await?;
    assert!(settled.stdout.ends_with("no changes on 2 cluster(s)\n"));

    // Sources suspend and resume the same way.
    assert_eq!(
        ok(&fleet, &["suspend", "source", "fleet", "-n", "fleet"])?,
        "GitSource fleet/fleet suspended\n"
    );
    let s: Value = serde_json::from_str(&ok(
        &fleet,
        &["get", "sources", "fleet", "-n", "fleet", "-o", "json"],
    )?)?;
    assert_eq!(s["spec"]["suspend"], true);
    ok(&fleet, &["resume", "source", "fleet", "-n", "fleet"])?;
    let s: Value = serde_json::from_str(&ok(
        &fleet,
        &["get", "sources", "fleet", "-n", "fleet", "-o", "json"],
    )?)?;
    assert_eq!(s["spec"]["suspend"], false);
    let missing = flotilla(&fleet, &["suspend", "delivery", "nope", "-n", "fleet"])?;
    assert_ne!(missing.code, 0);
    assert!(
        missing
            .stderr
            .contains("Delivery fleet/nope does not exist"),
        "{missing:?}"
    );
    Ok(())
}
