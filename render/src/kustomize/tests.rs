//! Engine tests: small trees rendered by flotilla and by `kubectl kustomize` at test time
//! (the expected side is never written by hand), and the exact errors bad input gets.

use std::path::Path;
use std::process::Command;

use crate::{Error, FsTree, Options, RelPath, Variables, render, to_yaml};

/// Writes `=== path` sections of `spec` into a fresh temp dir.
fn tree(spec: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut current: Option<(String, String)> = None;
    let flush = |c: Option<(String, String)>| {
        if let Some((p, body)) = c {
            let full = dir.path().join(p);
            std::fs::create_dir_all(full.parent().expect("has parent")).expect("mkdir");
            std::fs::write(full, body).expect("write");
        }
    };
    for line in spec.lines() {
        if let Some(p) = line.strip_prefix("=== ") {
            flush(current.take());
            current = Some((p.trim().to_string(), String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    flush(current.take());
    dir
}

fn flotilla(root: &Path, sub: &str) -> Result<String, Error> {
    let t = FsTree::new(root).expect("tree");
    let objs = render(
        &t,
        &RelPath::new(sub).expect("path"),
        &Variables::new(),
        &Options::default(),
    )?;
    Ok(to_yaml(&objs))
}

fn kubectl(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl (v1.32, kustomize v5.5) must be installed to compare with it");
    assert!(
        out.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Renders `sub` of the tree with both engines; the YAML streams must be identical.
fn check(spec: &str, sub: &str) {
    let dir = tree(spec);
    let want = kubectl(&dir.path().join(sub));
    let got = flotilla(dir.path(), sub).unwrap_or_else(|e| panic!("flotilla failed: {e}"));
    assert_eq!(got, want, "flotilla and kubectl kustomize differ");
}

fn error(spec: &str, sub: &str) -> String {
    let dir = tree(spec);
    match flotilla(dir.path(), sub) {
        Ok(y) => panic!("expected an error, got:\n{y}"),
        Err(e) => e.to_string(),
    }
}

const BASE: &str = r#"
=== base/kustomization.yaml
resources:
- app.yaml
- rbac.yaml
configMapGenerator:
- name: settings
  literals: [LOG=debug, MODE="fast"]
secretGenerator:
- name: creds
  literals: [password=hunter2]
=== base/app.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      serviceAccountName: web
      containers:
      - name: web
        image: nginx:1.25
        envFrom:
        - configMapRef: {name: settings}
        env:
        - name: PW
          valueFrom:
            secretKeyRef: {name: creds, key: password}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
=== base/rbac.yaml
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: web
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects:
- {kind: ServiceAccount, name: web}
- {kind: ServiceAccount, name: default}
"#;

#[test]
fn base_with_generators_matches_kubectl() {
    check(BASE, "base");
}

#[test]
fn overlay_prefix_namespace_labels_images_replicas_match_kubectl() {
    let spec = format!(
        "{BASE}{}",
        r#"
=== prod/kustomization.yaml
namespace: prod
namePrefix: prod-
nameSuffix: -eu
commonLabels: {env: prod}
commonAnnotations: {owner: platform}
labels:
- pairs: {tier: web}
  includeTemplates: true
resources:
- ../base
- ns.yaml
images:
- name: nginx
  newName: registry.example.com/nginx
  newTag: "1.27"
replicas:
- name: web
  count: 4
configMapGenerator:
- name: settings
  behavior: merge
  literals: [EXTRA=1]
=== prod/ns.yaml
apiVersion: v1
kind: Namespace
metadata:
  name: prod
"#
    );
    check(&spec, "prod");
}

#[test]
fn patches_of_every_kind_match_kubectl() {
    let spec = format!(
        "{BASE}{}",
        r#"
=== dev/kustomization.yaml
resources: [../base]
namePrefix: dev-
patchesStrategicMerge:
- limits.yaml
patches:
- target: {kind: Deploy.*, labelSelector: "app in (web)"}
  patch: |-
    - op: replace
      path: /spec/replicas
      value: 2
- patch: |-
    apiVersion: v1
    kind: Service
    metadata:
      name: web
    spec:
      type: NodePort
- patch: |-
    $patch: delete
    apiVersion: rbac.authorization.k8s.io/v1
    kind: RoleBinding
    metadata:
      name: web
patchesJson6902:
- target: {version: v1, kind: ServiceAccount, name: web}
  path: sa.yaml
=== dev/limits.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      containers:
      - name: web
        resources:
          limits: {memory: 64Mi}
=== dev/sa.yaml
- op: add
  path: /automountServiceAccountToken
  value: false
"#
    );
    check(&spec, "dev");
}

#[test]
fn components_and_fifo_order_match_kubectl() {
    let spec = r#"
=== app/kustomization.yaml
resources: [svc.yaml, deploy.yaml]
components: [../monitoring]
sortOptions: {order: fifo}
=== app/svc.yaml
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  ports: [{port: 80}]
=== app/deploy.yaml
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers: [{name: api, image: api:1}]
=== monitoring/kustomization.yaml
apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
resources: [monitor.yaml]
commonAnnotations: {prometheus.io/scrape: "true"}
=== monitoring/monitor.yaml
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: api}
spec:
  endpoints: [{port: http}]
"#;
    check(spec, "app");
}

#[test]
fn yaml_output_quotes_and_folds_like_kubectl() {
    let spec = r#"
=== kustomization.yaml
resources: [cm.yaml]
=== cm.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: quoting
  annotations:
    long: "aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll mmmm nnnn oooo pppp qqqq"
data:
  "n": "123"
  bool: "yes"
  colon: "a: b"
  hash: "x #y"
  lead: " x"
  multi: "a\nb\n"
  keep: "a\n\n"
  strip: "a\nb"
  tab: "a\tb"
  star: "*x"
  empty: ""
  date: "2024-01-02"
  ver: "1.2.3"
  num: 010
"#;
    check(spec, ".");
}

#[test]
fn plain_directory_renders_every_manifest_in_path_order() {
    let dir = tree(
        r#"
=== b.yaml
apiVersion: v1
kind: ConfigMap
metadata: {name: b}
=== a/x.yml
apiVersion: v1
kind: ConfigMap
metadata: {name: ax}
---
# only a comment
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ax2}
=== a.json
{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ajson"}}
=== README.md
not yaml: [
=== skip/ignored.yaml
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
=== .sourceignore
skip/
*.tmp.yaml
=== c.tmp.yaml
apiVersion: v1
kind: ConfigMap
metadata: {name: tmp}
"#,
    );
    let y = flotilla(dir.path(), ".").expect("renders");
    let names: Vec<&str> = y
        .lines()
        .filter_map(|l| l.strip_prefix("  name: "))
        .collect();
    // Byte order of paths: "a.json" < "a/x.yml" < "b.yaml".
    assert_eq!(names, ["ajson", "ax", "ax2", "b"]);
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let e = error(
        "=== kustomization.yaml\nresources: [a.yaml]\n=== a.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [x\n",
        ".",
    );
    assert!(e.starts_with("a.yaml:"), "{e}");
    assert!(e.contains("invalid YAML"), "{e}");
}

#[test]
fn missing_resource_is_named() {
    let e = error("=== k/kustomization.yaml\nresources: [gone.yaml]\n", "k");
    assert_eq!(
        e,
        r#"k/kustomization.yaml: resource "gone.yaml" does not exist"#
    );
}

#[test]
fn escaping_the_root_is_refused() {
    let e = error("=== k/kustomization.yaml\nresources: [../../etc]\n", "k");
    assert_eq!(
        e,
        r#"k/kustomization.yaml: resource "../../etc" is outside the source root"#
    );
    let dir = tree("=== k/kustomization.yaml\nresources: [link]\n");
    let outside = tempfile::tempdir().expect("tmp");
    std::os::unix::fs::symlink(outside.path(), dir.path().join("k/link")).expect("symlink");
    let e = flotilla(dir.path(), "k").expect_err("escape").to_string();
    assert_eq!(
        e,
        r#"k/kustomization.yaml: resource "link" is outside the source root"#
    );
}

#[test]
fn patch_matching_nothing_is_an_error() {
    // A `target:` that selects nothing is a no-op in Kustomize; flotilla matches that.
    check(
        r#"
=== kustomization.yaml
resources: [cm.yaml]
patches:
- target: {kind: Deployment}
  patch: |-
    - op: add
      path: /x
      value: 1
=== cm.yaml
apiVersion: v1
kind: ConfigMap
metadata: {name: a}
"#,
        ".",
    );
    // A strategic-merge patch names its target; naming nothing is an error.
    let e = error(
        "=== kustomization.yaml\nresources: [cm.yaml]\npatchesStrategicMerge: [p.yaml]\n=== cm.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n=== p.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
        ".",
    );
    assert_eq!(
        e,
        r#"kustomization.yaml: patch "p.yaml" (ConfigMap.v1.[noGrp]/b.[noNs]) matches no resource"#
    );
}

#[test]
fn cycles_are_named() {
    let e = error(
        "=== a/kustomization.yaml\nresources: [../b]\n=== b/kustomization.yaml\nresources: [../a]\n",
        "a",
    );
    assert_eq!(e, "kustomization cycle: a -> b -> a");
}

#[test]
fn unknown_and_unsupported_fields_are_named() {
    let e = error(
        "=== kustomization.yaml\nresources: []\nnamePrefx: x-\n",
        ".",
    );
    assert_eq!(
        e,
        r#"kustomization.yaml:2: unknown field "namePrefx" in kustomization"#
    );
    let e = error("=== kustomization.yaml\nhelmCharts:\n- name: redis\n", ".");
    assert_eq!(
        e,
        r#"kustomization.yaml: kustomization field "helmCharts" is not supported by flotilla's renderer"#
    );
    let e = error(
        "=== kustomization.yaml\nconfigMapGenerator:\n- name: x\n  literal: [a=b]\n",
        ".",
    );
    assert!(e.contains("unknown field `literal`"), "{e}");
}

#[test]
fn remote_resources_are_refused() {
    let e = error(
        "=== kustomization.yaml\nresources:\n- https://github.com/org/repo//deploy?ref=v1\n",
        ".",
    );
    assert_eq!(
        e,
        r#"kustomization.yaml: remote resource "https://github.com/org/repo//deploy?ref=v1" refused: remote resources are disabled"#
    );
}

#[test]
fn limits_are_enforced() {
    let dir = tree(
        "=== kustomization.yaml\nresources: [a.yaml]\n=== a.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
    );
    let t = FsTree::new(dir.path()).expect("tree");
    let opts = Options {
        max_files: 1,
        ..Options::default()
    };
    let e = render(&t, &RelPath::root(), &Variables::new(), &opts).expect_err("limit");
    assert_eq!(
        e.to_string(),
        "a.yaml: reading more than the limit of 1 files"
    );
    let opts = Options {
        max_file_bytes: 10,
        ..Options::default()
    };
    let e = render(&t, &RelPath::root(), &Variables::new(), &opts).expect_err("limit");
    assert!(e.to_string().contains("over the limit of 10 bytes"), "{e}");
}

#[test]
fn labels_shared_by_kustomize_change_together() {
    // commonLabels in a base adds one YAML node to metadata, selector and template; a later
    // `labels` entry or strategic-merge patch changing it in place changes all three.
    let base = r#"
=== base/kustomization.yaml
commonLabels: {team: core}
commonAnnotations: {note: base}
resources: [app.yaml]
=== base/app.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: signal
  annotations: {}
spec:
  selector:
    matchLabels: {app: signal}
  template:
    metadata:
      labels: {app: signal}
    spec:
      containers: [{name: s, image: s}]
"#;
    let labels = format!(
        "{base}=== top/kustomization.yaml\nresources: [../base]\nlabels:\n- pairs: {{team: edge}}\n"
    );
    check(&labels, "top");
    let smp = format!(
        "{base}=== top/kustomization.yaml\nresources: [../base]\npatches:\n- patch: |-\n    apiVersion: apps/v1\n    kind: Deployment\n    metadata:\n      name: signal\n      labels: {{team: edge}}\n      annotations: {{note: top}}\n"
    );
    check(&smp, "top");
    let json = format!(
        "{base}=== top/kustomization.yaml\nresources: [../base]\npatches:\n- target: {{kind: Deployment}}\n  patch: |-\n    - op: add\n      path: /spec/paused\n      value: false\nlabels:\n- pairs: {{team: edge}}\n"
    );
    check(&json, "top");
}

#[test]
fn replacements_match_kubectl() {
    let spec = r#"
=== kustomization.yaml
resources: [res.yaml]
namePrefix: x-
replacements:
- source: {kind: ConfigMap, name: env, fieldPath: data.HOST}
  targets:
  - select: {kind: Deployment}
    fieldPaths:
    - spec.template.spec.containers.[name=app].env.[name=HOST].value
    - spec.template.metadata.annotations.host
    options: {create: true}
- source: {kind: ConfigMap, name: env, fieldPath: data.REPLICAS}
  targets:
  - select: {kind: Deployment, name: app}
    fieldPaths: [spec.replicas]
- source:
    kind: Deployment
    fieldPath: spec.template.spec.containers.0.image
    options: {delimiter: ":", index: 1}
  targets:
  - select: {kind: ConfigMap}
    reject: [{name: other}]
    fieldPaths: [data.VERSION]
    options: {create: true}
- path: more.yaml
=== more.yaml
- source: {kind: Service, name: web}
  targets:
  - select: {kind: Ingress}
    fieldPaths: [spec.rules.*.http.paths.*.backend.service.name]
=== res.yaml
apiVersion: v1
kind: ConfigMap
metadata: {name: env}
data: {HOST: app.example.com, REPLICAS: "3"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other}
data: {a: b}
---
apiVersion: v1
kind: Service
metadata: {name: web}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  replicas: 1
  template:
    spec:
      containers:
      - name: app
        image: repo/app:1.2.3
        env:
        - {name: HOST, value: x}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: ing}
spec:
  rules:
  - host: a.example.com
    http:
      paths:
      - path: /
        backend: {service: {name: svc, port: {number: 80}}}
"#;
    check(spec, ".");
    let e = error(
        "=== kustomization.yaml\nresources: [a.yaml]\nreplacements:\n- source: {kind: Secret, name: nope}\n  targets:\n  - select: {kind: ConfigMap}\n=== a.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
        ".",
    );
    assert_eq!(
        e,
        "kustomization.yaml: replacements: source Secret/nope selects nothing"
    );
}

#[test]
fn variables_are_substituted_after_the_build() {
    let dir = tree(
        "=== kustomization.yaml\nresources: [a.yaml]\n=== a.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata:\n  region: ${region}\n  zone: ${zone:=z1}\n",
    );
    let t = FsTree::new(dir.path()).expect("tree");
    let vars: Variables = [("region".to_string(), "eu-west".to_string())].into();
    let objs = render(&t, &RelPath::root(), &vars, &Options::default()).expect("renders");
    assert_eq!(objs[0]["data"]["region"], "eu-west");
    assert_eq!(objs[0]["data"]["zone"], "z1");
}
