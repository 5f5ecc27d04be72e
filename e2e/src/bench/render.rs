//! `bench render`: generates a large fleet tree, renders every cluster with flotilla's engine
//! (in-process, one `Renderer` per round, as the hub renders one snapshot) and with `kubectl
//! kustomize` (one process per cluster, as a user would), checks both give the same objects,
//! and prints medians, the speed-up and flotilla's peak memory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flotilla_render::{FsTree, Options, RelPath, Renderer, Variables};
use serde_json::Value;

/// Arguments of `bench render`.
#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// Number of cluster overlays to generate (clusters/<name>).
    #[arg(long, default_value_t = 200)]
    pub clusters: usize,
    /// Rounds of each measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub iterations: usize,
    /// kubectl binary used as the reference.
    #[arg(long, env = "KUBECTL", default_value = "kubectl")]
    pub kubectl: String,
    /// Keep the generated tree in this directory instead of a temporary one.
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// Skip timing the conformance trees.
    #[arg(long)]
    pub no_conformance: bool,
}

/// Runs `bench render`.
pub fn run(a: &RenderArgs) -> Result<()> {
    render_bench(a)
}

/// The hidden `render-child` subcommand: renders every cluster of `dir` once and prints the
/// process's peak RSS, so memory is measured without the bench's own footprint.
pub fn run_child(dir: &Path, clusters: usize) -> Result<()> {
    let docs = render_all_flotilla(dir, clusters)?
        .iter()
        .map(Vec::len)
        .sum::<usize>();
    out(&format!("docs={docs} peak_rss_kib={}", peak_rss_kib()?));
    Ok(())
}

#[allow(clippy::print_stdout)]
fn out(line: &str) {
    println!("{line}");
}

// ---------------------------------------------------------------------------------------------
// The generated fleet.

/// The shared applications every cluster picks from.
const APPS: [&str; 5] = ["catalog", "checkout", "search", "ledger", "notify"];
/// The environments; cluster `i` belongs to `ENVS[i % 3]`.
const ENVS: [&str; 3] = ["dev", "staging", "production"];
const REGIONS: [&str; 4] = ["eu", "us", "ap", "sa"];

fn cluster_name(i: usize) -> String {
    format!(
        "{}-{}-{i:03}",
        ENVS[i % ENVS.len()],
        REGIONS[(i / 3) % REGIONS.len()]
    )
}

fn write(root: &Path, rel: &str, text: &str) -> Result<()> {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
}

/// Writes the fleet tree: `apps/base/<app>`, `apps/<env>/<app>`, `infrastructure/`, and
/// `clusters/<name>` for `clusters` clusters. Deterministic: same input, same bytes.
fn generate(root: &Path, clusters: usize) -> Result<()> {
    for (n, app) in APPS.iter().enumerate() {
        let port = 8080 + n;
        write(
            root,
            &format!("apps/base/{app}/kustomization.yaml"),
            &format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
labels:
  - pairs:
      app.kubernetes.io/name: {app}
    includeSelectors: true
resources:
  - namespace.yaml
  - serviceaccount.yaml
  - rbac.yaml
  - deployment.yaml
  - service.yaml
  - hpa.yaml
  - pdb.yaml
configMapGenerator:
  - name: {app}-settings
    literals:
      - LOG_FORMAT=json
      - HTTP_PORT={port}
      - UPSTREAM=http://{next}.{next}.svc:80
",
                next = APPS[(n + 1) % APPS.len()]
            ),
        )?;
        write(
            root,
            &format!("apps/base/{app}/namespace.yaml"),
            &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {app}\n"),
        )?;
        write(
            root,
            &format!("apps/base/{app}/serviceaccount.yaml"),
            &format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {app}\n"),
        )?;
        write(
            root,
            &format!("apps/base/{app}/rbac.yaml"),
            &format!(
                "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {app}-reader
rules:
  - apiGroups: [\"\"]
    resources: [\"configmaps\", \"secrets\"]
    verbs: [\"get\", \"list\", \"watch\"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {app}-reader
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {app}-reader
subjects:
  - kind: ServiceAccount
    name: {app}
"
            ),
        )?;
        write(
            root,
            &format!("apps/base/{app}/deployment.yaml"),
            &format!(
                "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {app}
spec:
  replicas: 2
  selector:
    matchLabels:
      app: {app}
  template:
    metadata:
      labels:
        app: {app}
    spec:
      serviceAccountName: {app}
      containers:
        - name: {app}
          image: registry.example.org/shop/{app}:1.0.0
          ports:
            - name: http
              containerPort: {port}
          envFrom:
            - configMapRef:
                name: {app}-settings
          env:
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
          resources:
            requests:
              cpu: 100m
              memory: 128Mi
          readinessProbe:
            httpGet:
              path: /ready
              port: http
          volumeMounts:
            - name: settings
              mountPath: /etc/{app}
      volumes:
        - name: settings
          configMap:
            name: {app}-settings
"
            ),
        )?;
        write(
            root,
            &format!("apps/base/{app}/service.yaml"),
            &format!(
                "apiVersion: v1
kind: Service
metadata:
  name: {app}
spec:
  selector:
    app: {app}
  ports:
    - name: http
      port: 80
      targetPort: http
"
            ),
        )?;
        write(
            root,
            &format!("apps/base/{app}/hpa.yaml"),
            &format!(
                "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {app}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {app}
  minReplicas: 2
  maxReplicas: 10
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: 75
"
            ),
        )?;
        write(
            root,
            &format!("apps/base/{app}/pdb.yaml"),
            &format!(
                "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {app}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      app: {app}
"
            ),
        )?;
        for (e, env) in ENVS.iter().enumerate() {
            write(
                root,
                &format!("apps/{env}/{app}/kustomization.yaml"),
                &format!(
                    "namespace: {app}
resources:
  - ../../base/{app}
labels:
  - pairs:
      environment: {env}
images:
  - name: registry.example.org/shop/{app}
    newTag: 1.{e}.0
patches:
  - path: resources.yaml
configMapGenerator:
  - name: {app}-settings
    behavior: merge
    literals:
      - ENVIRONMENT={env}
"
                ),
            )?;
            write(
                root,
                &format!("apps/{env}/{app}/resources.yaml"),
                &format!(
                    "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {app}
spec:
  template:
    spec:
      containers:
        - name: {app}
          resources:
            limits:
              memory: {}Mi
          env:
            - name: ENVIRONMENT
              value: {env}
",
                    256 * (e + 1)
                ),
            )?;
        }
    }
    write(
        root,
        "infrastructure/kustomization.yaml",
        "resources:\n  - node-exporter.yaml\ncommonLabels:\n  fleet.example.org/layer: infrastructure\n",
    )?;
    write(
        root,
        "infrastructure/node-exporter.yaml",
        "apiVersion: v1
kind: Namespace
metadata:
  name: monitoring
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: node-exporter
  namespace: monitoring
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: node-exporter
rules:
  - apiGroups: [\"\"]
    resources: [\"nodes\", \"nodes/metrics\"]
    verbs: [\"get\", \"list\"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: node-exporter
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: node-exporter
subjects:
  - kind: ServiceAccount
    name: node-exporter
    namespace: monitoring
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: node-exporter
  namespace: monitoring
spec:
  selector:
    matchLabels:
      app: node-exporter
  template:
    metadata:
      labels:
        app: node-exporter
    spec:
      serviceAccountName: node-exporter
      hostNetwork: true
      containers:
        - name: node-exporter
          image: quay.io/prometheus/node-exporter:v1.8.2
          args: [\"--path.rootfs=/host\"]
",
    )?;
    for i in 0..clusters {
        let name = cluster_name(i);
        let env = ENVS[i % ENVS.len()];
        let region = REGIONS[(i / 3) % REGIONS.len()];
        let a = APPS[i % APPS.len()];
        let b = APPS[(i + 2) % APPS.len()];
        write(
            root,
            &format!("clusters/{name}/kustomization.yaml"),
            &format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namePrefix: {region}-
resources:
  - ../../infrastructure
  - ../../apps/{env}/{a}
  - ../../apps/{env}/{b}
labels:
  - pairs:
      fleet.example.org/cluster: {name}
      fleet.example.org/region: {region}
commonAnnotations:
  fleet.example.org/rendered-for: {name}
images:
  - name: registry.example.org/shop/{a}
    newTag: 1.{minor}.{i}
patches:
  - target:
      kind: Deployment
    patch: |-
      - op: replace
        path: /spec/replicas
        value: {replicas}
  - target:
      kind: HorizontalPodAutoscaler
      name: {b}
    patch: |-
      apiVersion: autoscaling/v2
      kind: HorizontalPodAutoscaler
      metadata:
        name: {b}
      spec:
        maxReplicas: {max}
configMapGenerator:
  - name: cluster-info
    namespace: kube-public
    literals:
      - name={name}
      - region={region}
      - environment={env}
",
                minor = i % 7,
                replicas = 1 + i % 4,
                max = 10 + i % 20,
            ),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rendering both ways.

fn render_flotilla(tree: &FsTree, path: &str) -> Result<Vec<Value>> {
    let rel = RelPath::new(path)?;
    flotilla_render::render(tree, &rel, &Variables::new(), &Options::default())
        .with_context(|| format!("flotilla render {path}"))
}

/// Renders every cluster with one [`Renderer`] over the tree, as the hub renders every cluster of
/// one snapshot: shared bases are built once per call (a fresh renderer each time, so every
/// measured round pays for them).
fn render_all_flotilla(root: &Path, clusters: usize) -> Result<Vec<Vec<Value>>> {
    let tree = FsTree::new(root)?;
    let renderer = Renderer::new(&tree, Options::default());
    (0..clusters)
        .map(|i| {
            let path = format!("clusters/{}", cluster_name(i));
            renderer
                .render(&RelPath::new(&path)?, &Variables::new())
                .with_context(|| format!("flotilla render {path}"))
        })
        .collect()
}

fn kubectl_kustomize(kubectl: &str, dir: &Path) -> Result<String> {
    let o = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .with_context(|| format!("running {kubectl} (install kubectl or set --kubectl)"))?;
    if !o.status.success() {
        bail!(
            "kubectl kustomize {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8(o.stdout)?)
}

fn parse_stream(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(de)?;
        if !v.is_null() {
            docs.push(serde_json::to_value(v)?);
        }
    }
    Ok(docs)
}

/// The first difference between kubectl's and flotilla's documents, for the abort message.
fn first_difference(want: &[Value], got: &[Value]) -> String {
    if want.len() != got.len() {
        return format!(
            "kubectl printed {} documents, flotilla {}",
            want.len(),
            got.len()
        );
    }
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        if w != g {
            return format!(
                "document {i} ({} {}) differs:\n  kubectl:  {w}\n  flotilla: {g}",
                w["kind"].as_str().unwrap_or("?"),
                w["metadata"]["name"].as_str().unwrap_or("?")
            );
        }
    }
    "no difference".into()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The process's peak resident set size (VmHWM) in KiB.
fn peak_rss_kib() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn render_bench(a: &RenderArgs) -> Result<()> {
    if a.clusters == 0 || a.iterations == 0 {
        bail!("--clusters and --iterations must be at least 1");
    }
    let scratch = tempfile::tempdir()?;
    let root = match &a.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => scratch.path().to_path_buf(),
    };
    generate(&root, a.clusters)?;
    out(&format!(
        "generated fleet tree: {} clusters in {}",
        a.clusters,
        root.display()
    ));

    // flotilla, in-process, every cluster per iteration.
    let mut flotilla_times = Vec::new();
    let mut rendered = Vec::new();
    for _ in 0..a.iterations {
        let t = Instant::now();
        let out = render_all_flotilla(&root, a.clusters)?;
        flotilla_times.push(t.elapsed());
        // Dropping the previous round's output is not part of this round's rendering.
        rendered = out;
    }
    let docs: usize = rendered.iter().map(Vec::len).sum();

    // kubectl, one process per cluster, as a user would run it.
    let mut kubectl_times = Vec::new();
    let mut kubectl_out = Vec::new();
    for _ in 0..a.iterations {
        let t = Instant::now();
        kubectl_out = (0..a.clusters)
            .map(|i| kubectl_kustomize(&a.kubectl, &root.join("clusters").join(cluster_name(i))))
            .collect::<Result<Vec<_>>>()?;
        kubectl_times.push(t.elapsed());
    }
    for (i, (text, got)) in kubectl_out.iter().zip(&rendered).enumerate() {
        let want = parse_stream(text)?;
        if &want != got {
            bail!(
                "flotilla's output differs from kubectl kustomize for clusters/{}: {}",
                cluster_name(i),
                first_difference(&want, got)
            );
        }
    }
    out(&format!(
        "checked: flotilla's objects equal kubectl kustomize's for all {} clusters",
        a.clusters
    ));

    // Peak memory of a process that does nothing but render every cluster once.
    let child = Command::new(std::env::current_exe()?)
        .args([
            "render-child",
            "--clusters",
            &a.clusters.to_string(),
            "--dir",
        ])
        .arg(&root)
        .output()
        .context("running the render-child process")?;
    if !child.status.success() {
        bail!(
            "render-child failed: {}",
            String::from_utf8_lossy(&child.stderr).trim()
        );
    }
    let child_out = String::from_utf8(child.stdout)?;
    let peak_kib: u64 = child_out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("peak_rss_kib="))
        .and_then(|v| v.parse().ok())
        .context("render-child printed no peak_rss_kib")?;

    let f = median(flotilla_times.clone());
    let k = median(kubectl_times.clone());
    let speedup = k.as_secs_f64() / f.as_secs_f64().max(1e-9);
    let peak_mib = peak_kib as f64 / 1024.0;

    let mut table = String::new();
    writeln!(
        table,
        "\nlarge fleet tree ({} clusters, {docs} documents)",
        a.clusters
    )?;
    writeln!(table, "  iterations                   {}", a.iterations)?;
    writeln!(
        table,
        "  flotilla, all clusters       median {:.1} ms (runs: {})",
        ms(f),
        fmt_runs(&flotilla_times)
    )?;
    writeln!(
        table,
        "  kubectl kustomize, all       median {:.1} ms (runs: {})",
        ms(k),
        fmt_runs(&kubectl_times)
    )?;
    writeln!(
        table,
        "  per cluster                  flotilla {:.3} ms, kubectl {:.1} ms",
        ms(f) / a.clusters as f64,
        ms(k) / a.clusters as f64
    )?;
    writeln!(table, "  speed-up                     {speedup:.1}x")?;
    writeln!(
        table,
        "  flotilla peak RSS            {peak_mib:.1} MiB (child process rendering every cluster once)"
    )?;
    out(&table);

    if !a.no_conformance {
        conformance_bench(a)?;
    }

    out(&format!(
        "RESULT render clusters={} docs={docs} flotilla_ms={:.1} kubectl_ms={:.1} speedup={speedup:.1} peak_rss_mib={peak_mib:.1} cores={}",
        a.clusters,
        ms(f),
        ms(k),
        cores()
    ));
    Ok(())
}

fn fmt_runs(runs: &[Duration]) -> String {
    runs.iter()
        .map(|d| format!("{:.1}", ms(*d)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Times the conformance trees both ways: every build path of every fixture that flotilla
/// renders identically to kubectl (the others are reported, not timed).
fn conformance_bench(a: &RenderArgs) -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../render/tests/conformance");
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    fixtures.sort();
    let mut builds: Vec<(PathBuf, String)> = Vec::new();
    for fixture in &fixtures {
        let paths = match std::fs::read_to_string(fixture.join("BUILD")) {
            Ok(t) => t
                .lines()
                .map(|l| l.split('#').next().unwrap_or_default().trim().to_string())
                .filter(|l| !l.is_empty())
                .collect(),
            Err(_) => vec![String::new()],
        };
        for p in paths {
            let has_kustomization = ["kustomization.yaml", "kustomization.yml", "Kustomization"]
                .iter()
                .any(|n| fixture.join(&p).join(n).is_file());
            // Plain directories need a generated kustomization for kubectl; the suite covers them.
            if has_kustomization {
                builds.push((fixture.clone(), p));
            }
        }
    }

    let mut matching = Vec::new();
    let mut mismatched = BTreeMap::new();
    for (fixture, p) in &builds {
        let want = parse_stream(&kubectl_kustomize(&a.kubectl, &fixture.join(p))?)?;
        let tree = FsTree::new(fixture)?;
        match render_flotilla(&tree, p) {
            Ok(got) if got == want => matching.push((fixture.clone(), p.clone(), want.len())),
            Ok(_) => {
                mismatched.insert(fixture.display().to_string(), "differs".to_string());
            }
            Err(e) => {
                mismatched.insert(fixture.display().to_string(), format!("{e:#}"));
            }
        }
    }
    let docs: usize = matching.iter().map(|m| m.2).sum();
    let mut ftimes = Vec::new();
    let mut ktimes = Vec::new();
    for _ in 0..a.iterations {
        let t = Instant::now();
        for (fixture, p, _) in &matching {
            let tree = FsTree::new(fixture)?;
            render_flotilla(&tree, p)?;
        }
        ftimes.push(t.elapsed());
        let t = Instant::now();
        for (fixture, p, _) in &matching {
            kubectl_kustomize(&a.kubectl, &fixture.join(p))?;
        }
        ktimes.push(t.elapsed());
    }
    let f = median(ftimes);
    let k = median(ktimes);
    let mut table = String::new();
    writeln!(
        table,
        "conformance trees ({} of {} builds identical to kubectl and timed, {docs} documents)",
        matching.len(),
        builds.len()
    )?;
    writeln!(
        table,
        "  flotilla, all timed builds   median {:.1} ms",
        ms(f)
    )?;
    writeln!(
        table,
        "  kubectl kustomize, same      median {:.1} ms",
        ms(k)
    )?;
    writeln!(
        table,
        "  speed-up                     {:.1}x",
        k.as_secs_f64() / f.as_secs_f64().max(1e-9)
    )?;
    if !mismatched.is_empty() {
        writeln!(
            table,
            "  not timed (not yet identical): {}",
            mismatched.len()
        )?;
    }
    out(&table);
    Ok(())
}
