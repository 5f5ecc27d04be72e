//! A whole flotilla fleet on loopback, as the demo runs it and as a user would: a management
//! control plane with the CRDs, the real `flotilla-hub` process, workload control planes each
//! with a real `flotilla-agent` process registered through `flotilla cluster add`, and a real
//! Git repository seeded from `examples/fleet` that the hub follows.
//!
//! Used by the fleet e2e tests and by `bench loop`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use flotilla_hub::api::{Cluster, Delivery};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::{TestCluster, eventually, workspace_binary};

/// A workload cluster of the fleet and how it registers.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// The flotilla cluster name (`workload-1`).
    pub name: String,
    /// Labels for delivery selectors.
    pub labels: BTreeMap<String, String>,
    /// Post-build substitution variables.
    pub vars: BTreeMap<String, String>,
    /// More `flotilla-agent run` arguments (e.g. `--otlp-endpoint`).
    pub agent_args: Vec<String>,
}

impl WorkloadSpec {
    /// A workload with `fleet.example/apps=enabled` (so the example `apps` delivery selects it)
    /// and `region` as label and variable.
    pub fn example(name: &str, region: &str) -> Self {
        Self {
            name: name.to_owned(),
            labels: BTreeMap::from([
                ("fleet.example/apps".to_owned(), "enabled".to_owned()),
                ("region".to_owned(), region.to_owned()),
            ]),
            vars: BTreeMap::from([("region".to_owned(), region.to_owned())]),
            agent_args: Vec::new(),
        }
    }
}

/// A child process killed when dropped, with its log file.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Where its stderr/stdout go.
    pub log: PathBuf,
}

impl Process {
    /// Starts `cmd` with stdout and stderr going to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Result<Self> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        Ok(Self { child, log })
    }

    /// Kills it with SIGKILL (a crash, not a shutdown).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it with SIGTERM and waits up to 10 s.
    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Git repository the hub follows.
#[derive(Debug)]
pub struct Repo {
    /// Its work tree (a non-bare repository; the hub fetches it by path).
    pub path: PathBuf,
}

impl Repo {
    fn git(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.path)
            .args([
                "-c",
                "user.name=flotilla-e2e",
                "-c",
                "user.email=e2e@flotilla.invalid",
            ])
            .args(args)
            .output()
            .context("running git")?;
        if !out.status.success() {
            bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Seeds a new repository at `path` from `examples/fleet` (without its `hub/` directory).
    pub fn seed(path: &Path) -> Result<Self> {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet");
        std::fs::create_dir_all(path)?;
        for entry in ["clusters", "infrastructure", "apps", "README.md"] {
            let status = Command::new("cp")
                .arg("-r")
                .arg(examples.join(entry))
                .arg(path)
                .status()?;
            anyhow::ensure!(status.success(), "copying examples/fleet/{entry}");
        }
        let repo = Self {
            path: path.to_owned(),
        };
        repo.git(&["init", "-q", "-b", "main"])?;
        repo.git(&["add", "-A"])?;
        repo.git(&["commit", "-q", "-m", "Seed the fleet"])?;
        Ok(repo)
    }

    /// Writes `content` to `file` (relative to the repository) and commits; returns the commit.
    pub fn commit_file(&self, file: &str, content: &str, message: &str) -> Result<String> {
        let path = self.path.join(file);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, content).with_context(|| format!("writing {file}"))?;
        self.git(&["add", "-A"])?;
        self.git(&["commit", "-q", "-m", message])?;
        self.head()
    }

    /// Reads a file of the work tree.
    pub fn read(&self, file: &str) -> Result<String> {
        std::fs::read_to_string(self.path.join(file)).with_context(|| format!("reading {file}"))
    }

    /// The commit `main` points at.
    pub fn head(&self) -> Result<String> {
        self.git(&["rev-parse", "HEAD"])
    }
}

/// A workload cluster with its agent.
#[derive(Debug)]
pub struct Workload {
    /// Its name and registration.
    pub spec: WorkloadSpec,
    /// Its control plane.
    pub cluster: TestCluster,
    /// Its agent, when running.
    pub agent: Option<Process>,
    /// The agent's metrics address (`127.0.0.1:port`, `--metrics-listen`).
    pub metrics: String,
    dir: PathBuf,
}

/// The whole fleet; everything stops when it is dropped.
#[derive(Debug)]
pub struct Fleet {
    /// The management cluster.
    pub mgmt: TestCluster,
    /// The workload clusters.
    pub workloads: Vec<Workload>,
    /// The Git repository.
    pub repo: Repo,
    /// The hub process, when running.
    pub hub: Option<Process>,
    /// The hub's HTTP address (`127.0.0.1:port`).
    pub http: String,
    hub_args: Vec<String>,
    dir: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Fleet {
    /// Starts the control planes, the hub, the agents, seeds the repository and applies the
    /// example fleet's `GitSource` and `Delivery` resources (with `interval`) .
    pub async fn start(
        prefix: &str,
        workloads: &[WorkloadSpec],
        extra_hub_args: &[&str],
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("flotilla-{prefix}-"))
            .tempdir()?;
        let mgmt = TestCluster::start(&format!("{prefix}-mgmt")).await?;
        let mut clusters = Vec::new();
        for w in workloads {
            clusters.push(TestCluster::start(&format!("{prefix}-{}", w.name)).await?);
        }
        let repo = Repo::seed(&dir.path().join("fleet-repo"))?;

        let flotilla = workspace_binary("flotilla-hub", "flotilla")?;
        let crds = run(Command::new(&flotilla).arg("crds"))?;
        let mgmt_client = mgmt.client().await?;
        for doc in crds.split("\n---\n").skip(1) {
            let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
                serde_yaml::from_str(doc).context("parsing a generated CRD")?;
            let name = crd.metadata.name.clone().unwrap_or_default();
            Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(mgmt_client.clone())
                .patch(&name, &PatchParams::apply("flotilla-e2e").force(), &Patch::Apply(&crd))
                .await
                .with_context(|| format!("applying CRD {name}"))?;
        }
        let crd_api = Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(mgmt_client.clone());
        for name in [
            "gitsources.flotilla.dev",
            "clusters.flotilla.dev",
            "deliveries.flotilla.dev",
            "helmrepositories.flotilla.dev",
            "helmreleases.flotilla.dev",
        ] {
            eventually(
                &format!("CRD {name} established"),
                Duration::from_secs(30),
                || async {
                    let crd = crd_api.get(name).await.ok()?;
                    crd.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                },
            )
            .await?;
        }

        let http = format!("127.0.0.1:{}", free_port()?);
        let hub_args: Vec<String> = [
            "--kubeconfig",
            &mgmt.kubeconfig().display().to_string(),
            "--namespace",
            "flotilla-system",
            // Fixed ports, so a restarted hub is where the agents look for it.
            "--registration-listen",
            &format!("127.0.0.1:{}", free_port()?),
            "--delivery-listen",
            &format!("127.0.0.1:{}", free_port()?),
            "--http-listen",
            &http,
            "--cache-dir",
            &dir.path().join("cache").display().to_string(),
            "--log-level",
            "info,flotilla_hub=debug",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(extra_hub_args.iter().map(|s| s.to_string()))
        .collect();
        let mut fleet = Self {
            mgmt,
            workloads: Vec::new(),
            repo,
            hub: None,
            http,
            hub_args,
            dir,
        };
        fleet.start_hub()?;
        let info = fleet.hub_info().await?;

        for (spec, cluster) in workloads.iter().cloned().zip(clusters) {
            let wdir = fleet.dir.path().join(&spec.name);
            let mut cmd = Command::new(&flotilla);
            cmd.arg("--kubeconfig")
                .arg(fleet.mgmt.kubeconfig())
                .args(["cluster", "add", &spec.name, "--write"])
                .arg(&wdir);
            for (k, v) in &spec.labels {
                cmd.args(["--label", &format!("{k}={v}")]);
            }
            for (k, v) in &spec.vars {
                cmd.args(["--var", &format!("{k}={v}")]);
            }
            run(&mut cmd)?;
            fleet.workloads.push(Workload {
                spec,
                cluster,
                agent: None,
                metrics: format!("127.0.0.1:{}", free_port()?),
                dir: wdir,
            });
        }
        for i in 0..fleet.workloads.len() {
            fleet.start_agent(i, &info)?;
        }
        Ok(fleet)
    }

    /// Applies the example fleet's hub resources (`examples/fleet/hub/fleet.yaml`) pointing at
    /// the repository, after `edit` had a chance to change them.
    pub async fn apply_example(
        &self,
        edit: impl FnOnce(&mut Vec<serde_json::Value>),
    ) -> Result<()> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet/hub/fleet.yaml");
        let text = std::fs::read_to_string(&path)?
            .replace("REPO_URL", &self.repo.path.display().to_string());
        let mut docs: Vec<serde_json::Value> = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_json::Value::deserialize(doc)?;
            if !v.is_null() {
                docs.push(v);
            }
        }
        edit(&mut docs);
        self.apply(&docs).await
    }

    /// Server-side applies objects to the management cluster.
    pub async fn apply(&self, docs: &[serde_json::Value]) -> Result<()> {
        let client = self.mgmt.client().await?;
        let discovery = kube::Discovery::new(client.clone()).run().await?;
        for doc in docs {
            let obj: kube::api::DynamicObject = serde_json::from_value(doc.clone())?;
            let gvk = kube::api::GroupVersionKind::try_from(
                obj.types.as_ref().context("apiVersion/kind")?,
            )?;
            let (ar, caps) = discovery
                .resolve_gvk(&gvk)
                .with_context(|| format!("unknown kind {gvk:?}"))?;
            let name = obj.metadata.name.clone().unwrap_or_default();
            let api: Api<kube::api::DynamicObject> = match (&obj.metadata.namespace, caps.scope) {
                (Some(ns), kube::discovery::Scope::Namespaced) => {
                    Api::namespaced_with(client.clone(), ns, &ar)
                }
                _ => Api::all_with(client.clone(), &ar),
            };
            api.patch(
                &name,
                &PatchParams::apply("flotilla-e2e").force(),
                &Patch::Apply(doc),
            )
            .await
            .with_context(|| format!("applying {} {name}", gvk.kind))?;
        }
        Ok(())
    }

    /// Starts (or restarts) the hub.
    pub fn start_hub(&mut self) -> Result<()> {
        let bin = workspace_binary("flotilla-hub", "flotilla-hub")?;
        let mut cmd = Command::new(bin);
        cmd.args(&self.hub_args);
        let n = std::fs::read_dir(self.dir.path())?.count();
        let log = self.dir.path().join(format!("hub-{n}.log"));
        self.hub = Some(Process::spawn(cmd, log)?);
        Ok(())
    }

    /// The addresses and CA the running hub published.
    pub async fn hub_info(&self) -> Result<BTreeMap<String, String>> {
        let api = Api::<ConfigMap>::namespaced(self.mgmt.client().await?, "flotilla-system");
        let log = self.hub.as_ref().map(|h| h.log.clone());
        eventually("the hub's ConfigMap", Duration::from_secs(60), || async {
            api.get_opt("flotilla-hub")
                .await
                .ok()
                .flatten()
                .and_then(|cm| cm.data)
        })
        .await
        .with_context(|| {
            format!(
                "hub log: {:?}",
                log.map(|l| std::fs::read_to_string(l).unwrap_or_default())
            )
        })
    }

    /// Starts workload `i`'s agent (the binary, as users run it).
    pub fn start_agent(&mut self, i: usize, info: &BTreeMap<String, String>) -> Result<()> {
        let bin = workspace_binary("flotilla-agent", "flotilla-agent")?;
        let w = &mut self.workloads[i];
        let mut cmd = Command::new(bin);
        cmd.arg("--kubeconfig")
            .arg(w.cluster.kubeconfig())
            .args(["run", "--cluster", &w.spec.name])
            .args([
                "--hub",
                info.get("deliveryUrl")
                    .map(String::as_str)
                    .unwrap_or_default(),
            ])
            .args([
                "--hub-registration",
                info.get("registrationUrl")
                    .map(String::as_str)
                    .unwrap_or_default(),
            ])
            .arg("--hub-ca")
            .arg(w.dir.join("ca.crt"))
            .arg("--token-file")
            .arg(w.dir.join("token"))
            .args(["--metrics-listen", &w.metrics])
            .args(&w.spec.agent_args);
        let log = w.dir.join("agent.log");
        w.agent = Some(Process::spawn(cmd, log)?);
        Ok(())
    }

    /// A delivery of the management cluster.
    pub async fn delivery(&self, namespace: &str, name: &str) -> Result<Delivery> {
        Ok(
            Api::<Delivery>::namespaced(self.mgmt.client().await?, namespace)
                .get(name)
                .await?,
        )
    }

    /// A cluster resource of the management cluster.
    pub async fn cluster(&self, name: &str) -> Result<Cluster> {
        Ok(Api::<Cluster>::all(self.mgmt.client().await?)
            .get(name)
            .await?)
    }

    /// Waits until `namespace/name` is Ready with every targeted cluster at `commit`.
    pub async fn wait_ready_at(
        &self,
        namespace: &str,
        name: &str,
        commit: &str,
        timeout: Duration,
    ) -> Result<Delivery> {
        let api = Api::<Delivery>::namespaced(self.mgmt.client().await?, namespace);
        let last = std::sync::Mutex::new(None);
        let r = eventually(
            &format!("delivery {namespace}/{name} ready at {commit}"),
            timeout,
            || async {
                let d = api.get(name).await.ok()?;
                *last.lock().unwrap_or_else(|e| e.into_inner()) = d.status.clone();
                let s = d.status.as_ref()?;
                let ready = s
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                let at = !s.clusters.is_empty()
                    && s.clusters
                        .iter()
                        .all(|c| c.revision.as_deref().is_some_and(|r| r.ends_with(commit)));
                (ready && at).then_some(d)
            },
        )
        .await;
        r.with_context(|| {
            format!(
                "last status: {}\nhub log tail:\n{}",
                serde_json::to_string_pretty(&*last.lock().unwrap_or_else(|e| e.into_inner()))
                    .unwrap_or_default(),
                self.hub
                    .as_ref()
                    .map(|h| tail(&h.log_text(), 30))
                    .unwrap_or_default()
            )
        })
    }

    /// A workload by name.
    pub fn workload(&self, name: &str) -> &Workload {
        self.workloads
            .iter()
            .find(|w| w.spec.name == name)
            .expect("a workload of this fleet")
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

use serde::Deserialize as _;

impl Fleet {
    /// Asks the hub to fetch `namespace/name` now, as `flotilla reconcile source` does (a merge
    /// patch of the reconcile annotation; errors are returned, not swallowed).
    pub async fn reconcile_source(&self, namespace: &str, name: &str) -> Result<()> {
        let api =
            Api::<flotilla_hub::api::GitSource>::namespaced(self.mgmt.client().await?, namespace);
        let patch = json!({"metadata": {"annotations": {
            flotilla_hub::api::RECONCILE_ANNOTATION: format!("{:?}", std::time::SystemTime::now())
        }}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("annotating GitSource {namespace}/{name}"))?;
        Ok(())
    }
}
