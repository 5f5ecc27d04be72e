//! Real Kubernetes control planes on loopback, for tests and the local demo.
//!
//! A cluster is `etcd` + `kube-apiserver` + `kube-controller-manager` + `kube-scheduler` +
//! `kwok` (which plays the kubelet of one fake Node, so Pods run and Deployments become
//! Available), all built from the Go module proxy by `e2e/build-tools.sh` and started here with
//! free ports, a throw-away CA and an admin client certificate.
//!
//! Two faces share this one implementation: `e2e/cluster.sh` (through the `testcluster` binary)
//! starts clusters that live until `down`, and [`TestCluster`] starts one that is torn down when
//! the value is dropped. Each cluster keeps its state under `<run dir>/<name>/`; a cluster whose
//! owning test process died is torn down by the next run, and `up` of a cluster whose processes
//! died starts it afresh.

mod pki;
mod process;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::Api;
use kube::api::{Patch, PatchParams};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

pub use process::{ProcessRecord, log_tail, start_ticks as process_start_ticks};
use process::{Spawned, free_ports};

/// Name of the fake Node that kwok manages in every cluster.
pub const NODE_NAME: &str = "kwok-node-0";

/// How long any one component may take to become ready before start-up fails.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// How often start-up is retried with fresh ports when one was taken in the meantime.
const PORT_RETRIES: usize = 3;

/// Directory for the built tools and Go caches: `FLOTILLA_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/flotilla`, else `~/.cache/flotilla`. It lives outside the checkout so that a
/// fresh clone reuses it.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLOTILLA_CACHE_DIR") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache"));
    base.join("flotilla")
}

/// Directory that holds one sub-directory per running cluster: `FLOTILLA_RUN_DIR`, else
/// `$TMPDIR/flotilla-e2e` (`/tmp/flotilla-e2e`).
pub fn run_dir() -> PathBuf {
    std::env::var_os("FLOTILLA_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("flotilla-e2e"))
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// Builds the control-plane tools if they are not cached yet (once per process) and returns
/// the directory that holds them.
pub fn tools_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_tools().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_tools() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("build-tools.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .env("FLOTILLA_CACHE_DIR", cache_dir())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}); its messages are above, and the build logs are in {}",
            script.display(),
            out.status,
            cache_dir().join("tools/logs").display()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bin = stdout.lines().last().unwrap_or_default().trim();
    if bin.is_empty() {
        bail!("{} printed no bin directory", script.display());
    }
    Ok(PathBuf::from(bin))
}

/// What is recorded about a running cluster in `<run dir>/<name>/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterState {
    /// Cluster name (also its directory name).
    pub name: String,
    /// Port of the API server on 127.0.0.1.
    pub api_port: u16,
    /// Port of etcd's client endpoint on 127.0.0.1.
    pub etcd_port: u16,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The test process that owns the cluster; `None` for clusters started by `cluster.sh`,
    /// which live until `down`.
    pub owner: Option<ProcessRecord>,
    /// The control-plane processes, in start order.
    pub processes: Vec<ProcessRecord>,
}

impl ClusterState {
    fn path(name: &str) -> PathBuf {
        run_dir().join(name).join("state.json")
    }

    /// Reads the state of cluster `name`, if it exists.
    pub fn load(name: &str) -> Result<Option<Self>> {
        let path = Self::path(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self) -> Result<()> {
        let path = Self::path(&self.name);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// True while every recorded process is running.
    pub fn all_running(&self) -> bool {
        !self.processes.is_empty() && self.processes.iter().all(ProcessRecord::is_alive)
    }

    /// True when the owning test process has gone without tearing the cluster down.
    pub fn orphaned(&self) -> bool {
        self.owner.as_ref().is_some_and(|o| !o.is_alive())
    }

    /// Resident memory of all processes, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.processes
            .iter()
            .filter_map(ProcessRecord::rss_kib)
            .sum()
    }
}

/// Holds the per-cluster lock file while a cluster is being started or stopped, so two
/// commands never work on the same cluster at once.
fn lock(name: &str) -> Result<Flock<std::fs::File>> {
    let dir = run_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!(".{name}.lock"));
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
}

/// Names of every cluster with a directory under [`run_dir`].
pub fn list() -> Result<Vec<String>> {
    let dir = run_dir();
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Stops every process of cluster `name` and removes its directory. Stopping a cluster that
/// does not exist is not an error.
pub fn down(name: &str) -> Result<()> {
    validate_name(name)?;
    let lock = lock(name)?;
    down_locked(name)?;
    // The lock file goes too, so a stopped cluster leaves nothing behind; a concurrent `up`
    // that opened it before the removal still holds a valid lock on the unlinked file.
    let _ = std::fs::remove_file(run_dir().join(format!(".{name}.lock")));
    drop(lock);
    Ok(())
}

fn down_locked(name: &str) -> Result<()> {
    if let Some(state) = ClusterState::load(name)? {
        // Reverse start order: clients of the API server first, etcd last.
        for p in state.processes.iter().rev() {
            p.stop(Duration::from_secs(10));
        }
        info!(cluster = name, "cluster stopped");
    }
    let dir = run_dir().join(name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Stops every cluster under [`run_dir`].
pub fn down_all() -> Result<()> {
    for name in list()? {
        down(&name)?;
    }
    Ok(())
}

/// Tears down test clusters whose owning process has died (a crashed or killed test run).
pub fn sweep_orphans() -> Result<()> {
    for name in list()? {
        if let Some(state) = ClusterState::load(&name)?
            && state.orphaned()
        {
            warn!(cluster = %name, owner = state.owner.as_ref().map(|o| o.pid), "tearing down a cluster left behind by a crashed run");
            down(&name)?;
        }
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if !ok {
        bail!(
            "invalid cluster name {name:?}: use lowercase letters, digits and '-', at most 63 characters"
        );
    }
    Ok(())
}

/// Starts cluster `name`, or returns the running one if it is already up and healthy.
///
/// `owner` is the test process that owns it, or `None` for a cluster that lives until
/// [`down`]. Returns the cluster's state; its kubeconfig is `state.kubeconfig`.
pub async fn up(name: &str, owner: Option<ProcessRecord>) -> Result<ClusterState> {
    validate_name(name)?;
    sweep_orphans()?;
    let bin = tools_bin()?;
    let _lock = lock(name)?;
    if let Some(state) = ClusterState::load(name)? {
        if state.all_running() && !state.orphaned() && api_ready(&state).await {
            info!(cluster = name, "cluster already running");
            return Ok(state);
        }
        info!(
            cluster = name,
            "cleaning up a cluster whose processes are gone"
        );
        down_locked(name)?;
    }
    let mut last_err = None;
    for attempt in 1..=PORT_RETRIES {
        match start(name, &bin, owner.clone()).await {
            Ok(mut started) => {
                // The processes now belong to the state file, not to this value.
                let state = started.state.clone();
                started.detach();
                return Ok(state);
            }
            Err(e)
                if attempt < PORT_RETRIES
                    && format!("{e:#}").contains("address already in use") =>
            {
                warn!(cluster = name, attempt, error = %format!("{e:#}"), "a port was taken during start-up; retrying with fresh ports");
                down_locked(name)?;
                last_err = Some(e);
            }
            Err(e) => {
                down_locked(name)?;
                return Err(e);
            }
        }
    }
    Err(last_err.expect("the loop ran at least once"))
}

/// A cluster being started: the processes are stopped when this is dropped unless
/// [`Starting::detach`] was called.
#[derive(Debug)]
struct Starting {
    state: ClusterState,
    spawned: Vec<Spawned>,
}

impl Starting {
    fn spawn(&mut self, component: &str, bin: &Path, args: Vec<String>) -> Result<()> {
        let log = run_dir()
            .join(&self.state.name)
            .join("logs")
            .join(format!("{component}.log"));
        let p = Spawned::start(component, &bin.join(component), &args, &log)?;
        debug!(cluster = %self.state.name, component, pid = p.record.pid, "started");
        self.state.processes.push(p.record.clone());
        self.spawned.push(p);
        self.state.save()
    }

    fn check_running(&mut self) -> Result<()> {
        let name = self.state.name.clone();
        self.spawned
            .iter_mut()
            .try_for_each(|p| p.check_running(&name))
    }

    /// Polls `ready` every 100 ms until it holds, failing early if a process exits and after
    /// [`READY_TIMEOUT`] with the log of `component`.
    async fn wait_for<F, Fut>(&mut self, component: &str, what: &str, mut ready: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        loop {
            self.check_running()?;
            if ready().await {
                debug!(cluster = %self.state.name, what, elapsed_ms = started.elapsed().as_millis() as u64, "ready");
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                let log = run_dir()
                    .join(&self.state.name)
                    .join("logs")
                    .join(format!("{component}.log"));
                bail!(
                    "cluster {}: {what} not ready after {}s; the log of {component} is {}:\n{}",
                    self.state.name,
                    READY_TIMEOUT.as_secs(),
                    log.display(),
                    log_tail(&log, 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn detach(&mut self) {
        self.spawned.clear();
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        for p in self.spawned.iter_mut().rev() {
            p.stop(Duration::from_secs(5));
        }
    }
}

async fn start(name: &str, bin: &Path, owner: Option<ProcessRecord>) -> Result<Starting> {
    let t0 = Instant::now();
    let dir = run_dir().join(name);
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let pki = pki::write(&dir.join("pki"), name)?;
    let ports = free_ports(3)?;
    let (etcd_port, peer_port, api_port) = (ports[0], ports[1], ports[2]);
    let kubeconfig = dir.join("kubeconfig");
    pki::write_kubeconfig(&kubeconfig, name, api_port, &pki)?;

    let mut c = Starting {
        state: ClusterState {
            name: name.into(),
            api_port,
            etcd_port,
            kubeconfig: kubeconfig.clone(),
            owner,
            processes: Vec::new(),
        },
        spawned: Vec::new(),
    };
    c.state.save()?;

    let s = |p: &Path| p.display().to_string();
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    c.spawn(
        "etcd",
        bin,
        vec![
            format!("--name={name}"),
            format!("--data-dir={}", s(&dir.join("etcd"))),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster={name}={peer_url}"),
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ],
    )?;
    c.wait_for("etcd", "etcd", || etcd_healthy(etcd_port))
        .await?;

    c.spawn(
        "kube-apiserver",
        bin,
        vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={api_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--cert-dir={}", s(&dir.join("pki"))),
            format!("--tls-cert-file={}", s(&pki.server_cert)),
            format!("--tls-private-key-file={}", s(&pki.server_key)),
            format!("--client-ca-file={}", s(&pki.ca_cert)),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.0.0.0/16".into(),
            format!("--service-account-issuer=https://127.0.0.1:{api_port}"),
            format!("--service-account-key-file={}", s(&pki.sa_pub)),
            format!("--service-account-signing-key-file={}", s(&pki.sa_key)),
            "--allow-privileged=true".into(),
            // The built-in endpoint reconciler would publish 127.0.0.1 as the `kubernetes`
            // Service's endpoint, which Endpoints validation refuses; nothing here needs it.
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
        ],
    )?;
    let client = admin_client(&kubeconfig).await?;
    c.wait_for("kube-apiserver", "kube-apiserver /readyz", || {
        readyz(client.clone())
    })
    .await?;

    let kc = format!("--kubeconfig={}", s(&kubeconfig));
    c.spawn(
        "kube-controller-manager",
        bin,
        vec![
            kc.clone(),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            format!("--root-ca-file={}", s(&pki.ca_cert)),
            format!("--service-account-private-key-file={}", s(&pki.sa_key)),
            "--use-service-account-credentials=false".into(),
            // The defaults (20 QPS, 5 workers) take minutes to roll out hundreds of
            // Deployments; tests and benchmarks apply thousands of objects.
            "--kube-api-qps=300".into(),
            "--kube-api-burst=600".into(),
            "--concurrent-deployment-syncs=20".into(),
            "--concurrent-replicaset-syncs=20".into(),
            // A loaded 2-core machine can delay kwok's heartbeats; don't evict for that.
            "--node-monitor-grace-period=2m".into(),
        ],
    )?;
    c.spawn(
        "kube-scheduler",
        bin,
        vec![
            kc.clone(),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
        ],
    )?;
    c.spawn(
        "kwok",
        bin,
        vec![
            kc.clone(),
            "--manage-all-nodes=true".into(),
            "--server-address=".into(),
            // Without a node lease kwok refreshes the node's status only about once a
            // minute, past the controller manager's grace period on a busy machine: the node
            // turns NotReady and every Pod with it. A lease is renewed every few seconds.
            "--node-lease-duration-seconds=40".into(),
        ],
    )?;
    create_node(&client).await?;

    // Pods can be created only once the service-account controller has made `default`, and
    // scheduled only once kwok has marked the node Ready: wait for both, so a test's first
    // Deployment does not race the cluster's own start-up.
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    c.wait_for("kube-controller-manager", "default service account", || {
        let sa = sa.clone();
        async move { matches!(sa.get_opt("default").await, Ok(Some(_))) }
    })
    .await?;
    let nodes: Api<Node> = Api::all(client.clone());
    c.wait_for("kwok", "node kwok-node-0 Ready", || {
        let nodes = nodes.clone();
        async move { node_ready(&nodes).await }
    })
    .await?;
    info!(
        cluster = name,
        api_port,
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "cluster up"
    );
    Ok(c)
}

async fn etcd_healthy(port: u16) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut body)).await;
    body.contains("\"health\":\"true\"")
}

async fn readyz(client: kube::Client) -> bool {
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .expect("a valid request");
    matches!(client.request_text(req).await, Ok(body) if body.trim() == "ok")
}

async fn api_ready(state: &ClusterState) -> bool {
    match admin_client(&state.kubeconfig).await {
        Ok(client) => readyz(client).await,
        Err(_) => false,
    }
}

/// Builds an admin client from a kubeconfig written by this harness.
pub async fn admin_client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(30));
    Ok(kube::Client::try_from(config)?)
}

async fn create_node(client: &kube::Client) -> Result<()> {
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
            "annotations": { "kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0" },
        },
        "status": {
            "allocatable": { "cpu": "32", "memory": "256Gi", "pods": "1000" },
            "capacity": { "cpu": "32", "memory": "256Gi", "pods": "1000" },
        },
    }))?;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            NODE_NAME,
            &PatchParams::apply("flotilla-e2e"),
            &Patch::Apply(&node),
        )
        .await
        .with_context(|| format!("creating node {NODE_NAME}"))?;
    Ok(())
}

async fn node_ready(nodes: &Api<Node>) -> bool {
    let Ok(node) = nodes.get(NODE_NAME).await else {
        return false;
    };
    node.status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// A control plane owned by a test: started by [`TestCluster::start`] and torn down (no
/// process, port or directory left behind) when dropped.
#[derive(Debug)]
pub struct TestCluster {
    state: ClusterState,
}

impl TestCluster {
    /// Starts a fresh cluster. The actual name is `prefix` plus this process's id and a counter,
    /// so tests running at the same time never share one.
    pub async fn start(prefix: &str) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let state = up(&name, Some(ProcessRecord::current()?)).await?;
        Ok(Self { state })
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.state.kubeconfig
    }

    /// The recorded state (ports, processes).
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// An admin client (`system:masters`).
    pub async fn client(&self) -> Result<kube::Client> {
        admin_client(&self.state.kubeconfig).await
    }

    /// URL of the API server.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.state.api_port)
    }

    /// The CA certificate that signs the API server's serving certificate, PEM.
    pub fn ca_pem(&self) -> Result<String> {
        let path = run_dir().join(&self.state.name).join("pki/ca.crt");
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Err(e) = down(&self.state.name) {
            warn!(cluster = %self.state.name, error = %format!("{e:#}"), "tearing down the test cluster failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("mgmt").is_ok());
        assert!(validate_name("workload-1").is_ok());
        for bad in ["", "-a", "A", "a/b", "../x", "a b"] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains("invalid cluster name"), "{bad}: {err}");
        }
    }
}
