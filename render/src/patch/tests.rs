//! Both engines against `kubectl kustomize` (kustomize v5.5) on the same resource and patch:
//! every case builds a one-resource kustomization in a temp dir, runs kubectl, and compares the
//! parsed result with ours. No expectation here is written by hand. `KUBECTL` picks the kubectl
//! binary (default: `kubectl` on `PATH`); without one these tests fail.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::{Error, SmpOptions, json6902, strategic_merge, strategic_merge_with};

/// Parses a YAML stream into its documents.
fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn one(yaml: &str) -> Value {
    let mut d = docs(yaml);
    assert_eq!(d.len(), 1, "expected one document in:\n{yaml}");
    d.remove(0)
}

/// Runs `kubectl kustomize` on a kustomization with `resource` as its only resource and
/// `patch_entry` as its only `patches` entry (with `patch.yaml` holding `patch`). Returns the
/// output documents, or kubectl's error text.
fn kubectl(resource: &str, patch_entry: &str, patch: &str) -> Result<Vec<Value>, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).expect("write fixture");
    };
    write("resource.yaml", resource);
    write("patch.yaml", patch);
    write(
        "kustomization.yaml",
        &format!("resources:\n- resource.yaml\npatches:\n{patch_entry}"),
    );
    run_kubectl(dir.path())
}

fn run_kubectl(dir: &Path) -> Result<Vec<Value>, String> {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string());
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {kubectl} (set KUBECTL to choose another): {e}"));
    if out.status.success() {
        Ok(docs(&String::from_utf8_lossy(&out.stdout)))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Asserts our strategic merge of `patch` into `resource` equals kustomize's (both succeed with
/// the same object, both delete it, or both fail).
fn check_smp(resource: &str, patch: &str) {
    check_smp_entry(resource, patch, "- path: patch.yaml\n");
}

fn check_smp_entry(resource: &str, patch: &str, entry: &str) {
    check_smp_options(resource, patch, entry, SmpOptions::default());
}

fn check_smp_options(resource: &str, patch: &str, entry: &str, options: SmpOptions) {
    let expected = kubectl(resource, entry, patch);
    let mut target = one(resource);
    let ours = if options == SmpOptions::default() {
        strategic_merge(&mut target, &one(patch))
    } else {
        strategic_merge_with(&mut target, &one(patch), options)
    };
    match (expected, ours) {
        (Ok(mut objs), Ok(())) => {
            if target.is_null() {
                assert!(
                    objs.is_empty(),
                    "we deleted the object, kustomize kept {objs:?}"
                );
            } else {
                assert_eq!(objs.len(), 1, "kustomize output: {objs:?}");
                let want = objs.remove(0);
                assert_eq!(
                    target,
                    want,
                    "\nours:\n{}\nkustomize:\n{}",
                    serde_yaml::to_string(&target).unwrap_or_default(),
                    serde_yaml::to_string(&want).unwrap_or_default()
                );
            }
        }
        (Err(e), Err(ours)) => {
            eprintln!("both fail: kustomize: {e}; ours: {ours}");
        }
        (Ok(objs), Err(ours)) => panic!("we fail with {ours}, kustomize gives {objs:?}"),
        (Err(e), Ok(())) => panic!("kustomize fails with {e}, we give {target:?}"),
    }
}

/// Asserts our JSON patch result equals kustomize's for a patch targeting the resource by kind.
/// Returns our error when both fail, so callers can check its wording.
fn check_json(resource: &str, ops: &str) -> Option<Error> {
    let mut target = one(resource);
    let kind = target["kind"].as_str().expect("kind").to_string();
    let entry = format!("- path: patch.yaml\n  target:\n    kind: {kind}\n");
    let expected = kubectl(resource, &entry, ops);
    let ops_value: Value = if ops.trim_start().starts_with('[') {
        serde_json::from_str(ops).expect("JSON ops")
    } else {
        serde_yaml::from_str(ops).expect("YAML ops")
    };
    let before = target.clone();
    let ours = json6902(&mut target, &ops_value);
    match (expected, ours) {
        (Ok(mut objs), Ok(())) => {
            assert_eq!(objs.len(), 1, "kustomize output: {objs:?}");
            assert_eq!(target, objs.remove(0));
            None
        }
        (Err(_), Err(ours)) => {
            assert_eq!(
                target, before,
                "a failed patch must leave the target unchanged"
            );
            Some(ours)
        }
        (Ok(objs), Err(ours)) => panic!("we fail with {ours}, kustomize gives {objs:?}"),
        (Err(e), Ok(())) => panic!("kustomize fails with {e}, we give {target:?}"),
    }
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
    tier: front
  finalizers: [a, b]
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
  template:
    metadata:
      labels:
        app: web
      creationTimestamp: null
    spec:
      containers:
      - name: app
        image: app:1
        args: ["--a", "--b"]
        ports:
        - containerPort: 80
          protocol: TCP
        - containerPort: 9090
        env:
        - name: E1
          value: "1"
        - name: E2
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        volumeMounts:
        - name: data
          mountPath: /data
        resources:
          limits:
            cpu: 100m
            memory: 64Mi
      - name: sidecar
        image: side:1
      initContainers:
      - name: init
        image: init:1
      tolerations:
      - key: k1
        effect: NoSchedule
      imagePullSecrets:
      - name: reg
      volumes:
      - name: data
        emptyDir: {}
      - name: cfg
        configMap:
          name: cfg
"#;

fn deployment_patch(spec: &str) -> String {
    format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n{spec}")
}

#[test]
fn smp_merges_containers_by_name_patch_elements_first() {
    check_smp(
        DEPLOYMENT,
        &deployment_patch(
            r#"spec:
  template:
    spec:
      containers:
      - name: new
        image: new:1
      - name: app
        image: app:2
"#,
        ),
    );
    check_smp(
        DEPLOYMENT,
        &deployment_patch(
            r#"spec:
  template:
    spec:
      containers:
      - name: sidecar
        image: side:2
      - name: other
        image: o
"#,
        ),
    );
}

#[test]
fn smp_merges_env_ports_mounts_and_volumes_by_their_keys() {
    check_smp(
        DEPLOYMENT,
        &deployment_patch(
            r#"spec:
  template:
    spec:
      containers:
      - name: app
        env:
        - name: E0
          value: "0"
        - name: E2
          value: two
        ports:
        - containerPort: 80
          protocol: UDP
        - containerPort: 8080
        volumeMounts:
        - name: cfg
          mountPath: /cfg
        - name: data2
          mountPath: /data
      volumes:
      - name: data
        emptyDir:
          medium: Memory
      - name: new
        secret:
          secretName: s
"#,
        ),
    );
}

#[test]
fn smp_matches_ports_with_and_without_protocol_as_kustomize_does() {
    for ports in [
        "- containerPort: 80\n        - containerPort: 81",
        "- containerPort: 9090\n          protocol: TCP",
        "- containerPort: 80\n          protocol: TCP\n          name: http",
        "- containerPort: 9090\n          name: metrics",
    ] {
        check_smp(
            DEPLOYMENT,
            &deployment_patch(&format!(
                "spec:\n  template:\n    spec:\n      containers:\n      - name: app\n        ports:\n        {ports}\n"
            )),
        );
    }
}

#[test]
fn smp_replaces_lists_without_merge_key() {
    check_smp(
        DEPLOYMENT,
        &deployment_patch(
            r#"spec:
  template:
    spec:
      tolerations:
      - key: k2
        operator: Exists
      containers:
      - name: app
        args: ["--c"]
"#,
        ),
    );
}

#[test]
fn smp_merges_primitive_lists_with_merge_strategy_as_sets() {
    check_smp(DEPLOYMENT, &deployment_patch("  finalizers: [c, a]\n"));
    check_smp(DEPLOYMENT, &deployment_patch("  finalizers: [b]\n"));
}

#[test]
fn smp_null_deletes_fields_and_map_entries() {
    check_smp(
        DEPLOYMENT,
        &deployment_patch(
            r#"  labels:
    tier: null
    new: x
spec:
  replicas: null
  strategy:
    rollingUpdate: null
  template:
    spec:
      containers:
      - name: app
        resources:
          limits:
            memory: null
        newfield:
          a: null
          b: 1
"#,
        ),
    );
}

#[test]
fn smp_directives_on_maps_elements_and_lists() {
    // Delete a list element.
    check_smp(
        DEPLOYMENT,
        &deployment_patch(
            "spec:\n  template:\n    spec:\n      containers:\n      - name: sidecar\n        $patch: delete\n",
        ),
    );
    // Replace a map.
    check_smp(
        DEPLOYMENT,
        &deployment_patch("spec:\n  strategy:\n    $patch: replace\n    type: Recreate\n"),
    );
    // Delete a map.
    check_smp(
        DEPLOYMENT,
        &deployment_patch("spec:\n  strategy:\n    $patch: delete\n"),
    );
    // Explicit merge.
    check_smp(
        DEPLOYMENT,
        &deployment_patch("spec:\n  strategy:\n    $patch: merge\n    type: Recreate\n"),
    );
    // Replace a whole list.
    check_smp(
        DEPLOYMENT,
        &deployment_patch(
            "spec:\n  template:\n    spec:\n      volumes:\n      - $patch: replace\n      - name: only\n        emptyDir: {}\n",
        ),
    );
    // Delete a whole list.
    check_smp(
        DEPLOYMENT,
        &deployment_patch(
            "spec:\n  template:\n    spec:\n      initContainers:\n      - $patch: delete\n",
        ),
    );
    // Replace one list element.
    check_smp(
        DEPLOYMENT,
        &deployment_patch(
            "spec:\n  template:\n    spec:\n      containers:\n      - name: app\n        $patch: replace\n        image: only:1\n",
        ),
    );
}

#[test]
fn smp_top_level_delete_removes_the_object() {
    check_smp(DEPLOYMENT, &deployment_patch("$patch: delete\n"));
}

#[test]
fn smp_unknown_directive_fails_like_kustomize() {
    check_smp(
        DEPLOYMENT,
        &deployment_patch("spec:\n  strategy:\n    $patch: frobnicate\n"),
    );
}

#[test]
fn smp_apimachinery_only_directives_are_plain_fields_to_kustomize() {
    check_smp(
        DEPLOYMENT,
        &deployment_patch(
            r#"  $deleteFromPrimitiveList/finalizers: [a]
spec:
  template:
    spec:
      $setElementOrder/containers:
      - name: sidecar
      - name: app
      containers:
      - name: app
        image: app:3
  strategy:
    $retainKeys: [type]
    type: Recreate
"#,
        ),
    );
}

#[test]
fn smp_kind_mismatch_fails_like_kustomize() {
    check_smp(
        DEPLOYMENT,
        &deployment_patch("spec:\n  replicas:\n    a: 1\n"),
    );
    check_smp(
        DEPLOYMENT,
        &deployment_patch("spec:\n  template:\n    spec:\n      containers:\n        name: x\n"),
    );
}

#[test]
fn smp_keeps_kind_name_and_namespace_of_the_target() {
    let resource = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n  namespace: ns\ndata:\n  a: \"1\"\n";
    let patch = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other\n  namespace: elsewhere\n  labels:\n    x: y\ndata:\n  b: \"2\"\n";
    check_smp_entry(
        resource,
        patch,
        "- path: patch.yaml\n  target:\n    kind: ConfigMap\n",
    );
    let no_ns = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\ndata:\n  a: \"1\"\n";
    check_smp_entry(
        no_ns,
        patch,
        "- path: patch.yaml\n  target:\n    kind: ConfigMap\n",
    );
}

#[test]
fn smp_replaces_every_list_of_a_custom_resource() {
    let crd = r#"apiVersion: example.com/v1
kind: Widget
metadata:
  name: w
spec:
  items:
  - name: a
    v: 1
  - name: b
    v: 2
  plain: [1, 2]
  nested:
    keep: true
    change: 1
"#;
    check_smp(
        crd,
        r#"apiVersion: example.com/v1
kind: Widget
metadata:
  name: w
spec:
  items:
  - name: a
    v: 9
  plain: [3]
  nested:
    change: 2
    added: x
"#,
    );
    // A directive element in a list kustomize does not merge is kept as data.
    check_smp(
        crd,
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\nspec:\n  items:\n  - name: a\n    $patch: delete\n",
    );
}

#[test]
fn smp_uses_the_schema_of_embedded_built_in_objects() {
    let crd = r#"apiVersion: example.com/v1
kind: Wrapper
metadata:
  name: w
spec:
  template:
    apiVersion: apps/v1
    kind: Deployment
    spec:
      template:
        spec:
          containers:
          - name: a
            image: a
"#;
    check_smp(
        crd,
        r#"apiVersion: example.com/v1
kind: Wrapper
metadata:
  name: w
spec:
  template:
    apiVersion: apps/v1
    kind: Deployment
    spec:
      template:
        spec:
          containers:
          - name: b
            image: b
"#,
    );
}

#[test]
fn smp_service_ports_merge_by_port_and_protocol() {
    let svc = r#"apiVersion: v1
kind: Service
metadata:
  name: s
spec:
  selector:
    app: s
  ports:
  - name: http
    port: 80
    targetPort: 8080
  - name: dns
    port: 53
    protocol: UDP
"#;
    check_smp(
        svc,
        r#"apiVersion: v1
kind: Service
metadata:
  name: s
spec:
  ports:
  - port: 80
    targetPort: 9090
  - name: dns-tcp
    port: 53
    protocol: TCP
  - port: 443
"#,
    );
}

#[test]
fn smp_other_keyed_lists_of_built_in_kinds() {
    check_smp(
        DEPLOYMENT,
        &deployment_patch(
            r#"spec:
  template:
    spec:
      initContainers:
      - name: init2
        image: i
      imagePullSecrets:
      - name: other
      hostAliases:
      - ip: 10.0.0.1
        hostnames: [a]
      topologySpreadConstraints:
      - topologyKey: zone
        whenUnsatisfiable: DoNotSchedule
        maxSkew: 1
"#,
        ),
    );
    let sa = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa\nsecrets:\n- name: a\n";
    check_smp(
        sa,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa\nsecrets:\n- name: b\n",
    );
    let role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: rb\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: r\nsubjects:\n- kind: User\n  name: a\n";
    check_smp(
        role,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: rb\nsubjects:\n- kind: User\n  name: b\n",
    );
}

#[test]
fn smp_target_quirks_nulls_empty_elements_and_missing_keys() {
    // A target list element without its merge key, a duplicate and an empty element.
    let odd = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      containers:
      - name: a
        image: a
      - image: nameless
      - name: a
        image: dup
      volumes:
      - name: v
      - {}
"#;
    check_smp(
        odd,
        &deployment_patch(
            "spec:\n  template:\n    spec:\n      containers:\n      - name: b\n        image: b\n",
        ),
    );
    check_smp(odd, &deployment_patch("spec:\n  replicas: 3\n"));
}

#[test]
fn smp_adds_new_maps_and_lists_with_directives_and_nulls_inside() {
    let bare = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n";
    check_smp(
        bare,
        &deployment_patch(
            r#"spec:
  template:
    spec:
      containers:
      - name: a
        image: a
        env:
        - name: X
          value: null
      - name: a
        image: again
      - name: gone
        $patch: delete
  strategy:
    $patch: replace
    type: Recreate
    rollingUpdate: null
"#,
        ),
    );
}

#[test]
fn json6902_operations_match_kustomize() {
    check_json(
        DEPLOYMENT,
        r#"
- op: replace
  path: /spec/replicas
  value: 5
- op: add
  path: /metadata/annotations
  value:
    a/b: c
- op: add
  path: /metadata/annotations/x~1y~0z
  value: escaped
- op: add
  path: /spec/template/spec/containers/-
  value:
    name: appended
    image: x
- op: add
  path: /spec/template/spec/containers/0
  value:
    name: first
    image: img-y
- op: remove
  path: /spec/template/spec/tolerations
- op: copy
  from: /spec/template/spec/containers/1/image
  path: /metadata/labels/image
- op: move
  from: /metadata/labels/tier
  path: /metadata/labels/moved
- op: test
  path: /spec/replicas
  value: 5
- op: remove
  path: /spec/template/spec/containers/-1
- op: replace
  path: /metadata/labels/missing
  value: added-by-replace
- op: copy
  from: /metadata/nothere
  path: /metadata/labels/copied-null
"#,
    );
    check_json(
        DEPLOYMENT,
        r#"[{"op": "add", "path": "/spec/template/spec/containers/-2", "value": {"name": "neg"}},
            {"op": "replace", "path": "/spec/template/spec/containers/-1/image", "value": "z"}]"#,
    );
}

#[test]
fn json6902_failures_match_kustomize_and_name_the_operation() {
    let err = check_json(
        DEPLOYMENT,
        "- op: add\n  path: /spec/replicas\n  value: 1\n- op: remove\n  path: /spec/nothere\n",
    )
    .expect("both fail");
    let msg = err.to_string();
    assert!(msg.contains("operation 1 (remove /spec/nothere)"), "{msg}");

    for ops in [
        "- op: add\n  path: /missing/deep\n  value: 1\n",
        "- op: replace\n  path: /spec/template/spec/containers/7\n  value: {}\n",
        "- op: test\n  path: /spec/replicas\n  value: 3\n",
        "- op: add\n  path: /spec/template/spec/containers/9\n  value: {}\n",
        "- op: move\n  from: /nothere\n  path: /x\n",
        "- op: copy\n  from: /spec/template/spec/containers/5\n  path: /x\n",
        "- op: frob\n  path: /x\n",
        "- op: remove\n  path: /spec/template/spec/containers/-\n",
    ] {
        check_json(DEPLOYMENT, ops).expect("both fail");
    }
}

#[test]
fn smp_more_built_in_shapes() {
    // Keys compare by their text: a string "80" matches the number 80.
    check_smp(
        DEPLOYMENT,
        &deployment_patch(
            "spec:\n  template:\n    spec:\n      containers:\n      - name: app\n        ports:\n        - containerPort: \"80\"\n          protocol: TCP\n          name: http\n",
        ),
    );
    // An empty list in the patch, a null list in the target, env value next to valueFrom.
    check_smp(
        DEPLOYMENT,
        &deployment_patch(
            r#"spec:
  template:
    spec:
      initContainers: []
      containers:
      - name: app
        env:
        - name: E2
          value: plain
      - name: sidecar
        env:
        - name: NEW
          value: x
      volumes:
      - name: cfg
        $patch: delete
"#,
        ),
    );
    let null_list = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers: null\n  volumes: ~\n";
    check_smp(
        null_list,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: a\n    image: a\n",
    );
    let cronjob = r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: cj
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: a
            image: a
"#;
    check_smp(
        cronjob,
        "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: cj\nspec:\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers:\n          - name: b\n            image: b\n",
    );
    // A kind newer than kustomize's embedded schema has no merge keys: lists are replaced.
    let hpa = r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: h
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: web
  maxReplicas: 3
  metrics:
  - type: Resource
    resource:
      name: cpu
      target:
        type: Utilization
        averageUtilization: 50
"#;
    check_smp(
        hpa,
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: h\nspec:\n  maxReplicas: 5\n  metrics:\n  - type: Resource\n    resource:\n      name: memory\n      target:\n        type: Utilization\n        averageUtilization: 70\n",
    );
    let sts = r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: s
spec:
  serviceName: s
  template:
    spec:
      containers:
      - name: a
        image: a
        volumeMounts:
        - name: d
          mountPath: /d
  volumeClaimTemplates:
  - metadata:
      name: d
    spec:
      resources:
        requests:
          storage: 1Gi
"#;
    check_smp(
        sts,
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: s\nspec:\n  template:\n    spec:\n      containers:\n      - name: a\n        volumeMounts:\n        - name: e\n          mountPath: /e\n  volumeClaimTemplates:\n  - metadata:\n      name: e\n",
    );
}

#[test]
fn smp_labels_annotations_and_data_maps() {
    let cm =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\ndata:\n  a: \"1\"\n  b: \"2\"\n";
    check_smp(
        cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n  labels:\n    gone: null\n    x: y\n  annotations:\n    note: \"hi\"\ndata:\n  a: null\n  c: \"3\"\n",
    );
    check_smp(
        cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\ndata:\n  $patch: replace\n  only: \"1\"\n",
    );
}

#[test]
fn smp_options_allow_name_and_kind_change() {
    let resource = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n  namespace: ns\ndata:\n  a: \"1\"\n";
    let patch = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: renamed\n  namespace: other\n";
    check_smp_options(
        resource,
        patch,
        "- path: patch.yaml\n  target:\n    kind: ConfigMap\n  options:\n    allowNameChange: true\n",
        SmpOptions {
            allow_name_change: true,
            ..SmpOptions::default()
        },
    );
    let patch = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: cm\n";
    check_smp_options(
        resource,
        patch,
        "- path: patch.yaml\n  target:\n    kind: ConfigMap\n  options:\n    allowKindChange: true\n",
        SmpOptions {
            allow_kind_change: true,
            ..SmpOptions::default()
        },
    );
}

#[test]
fn smp_malformed_lists_fail_or_merge_like_kustomize() {
    check_smp(DEPLOYMENT, &deployment_patch("  finalizers:\n  - a: 1\n"));
    check_smp(
        DEPLOYMENT,
        &deployment_patch(
            "spec:\n  template:\n    spec:\n      containers:\n      - just-a-string\n",
        ),
    );
    check_smp(
        DEPLOYMENT,
        &deployment_patch(
            "spec:\n  template:\n    spec:\n      containers:\n      - null\n      - {}\n",
        ),
    );
    check_smp(DEPLOYMENT, &deployment_patch("spec: null\n"));
    check_smp(
        DEPLOYMENT,
        &deployment_patch("spec:\n  template:\n    spec:\n      containers: null\n"),
    );
}

/// A small deterministic generator (xorshift) so the randomised comparison is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// A random subset of `items`, in random order.
    fn subset<'a>(&mut self, items: &[&'a str]) -> Vec<&'a str> {
        let mut out: Vec<&str> = items.iter().copied().filter(|_| self.chance(50)).collect();
        for i in (1..out.len()).rev() {
            let j = self.below(i + 1);
            out.swap(i, j);
        }
        out
    }
}

fn random_container(rng: &mut Rng, name: &str, patch: bool) -> Value {
    let mut c = serde_json::Map::new();
    c.insert("name".into(), Value::from(name));
    if !patch || rng.chance(60) {
        c.insert(
            "image".into(),
            Value::from(format!("{name}:{}", rng.below(3))),
        );
    }
    if patch && rng.chance(15) {
        c.insert(
            "$patch".into(),
            Value::from(rng.pick(&["delete", "replace"])),
        );
    }
    if rng.chance(50) {
        let ports: Vec<Value> = rng
            .subset(&["80", "443", "9090"])
            .into_iter()
            .map(|p| {
                let mut port = serde_json::json!({"containerPort": p.parse::<u16>().unwrap_or(80)});
                if rng.chance(40) {
                    port["protocol"] = Value::from(rng.pick(&["TCP", "UDP"]));
                }
                if rng.chance(30) {
                    port["name"] = Value::from(format!("p{}", rng.below(9)));
                }
                port
            })
            .collect();
        c.insert("ports".into(), Value::Array(ports));
    }
    if rng.chance(50) {
        let env: Vec<Value> = rng
            .subset(&["A", "B", "C", "D"])
            .into_iter()
            .map(|n| {
                if patch && rng.chance(20) {
                    serde_json::json!({"name": n, "$patch": "delete"})
                } else if patch && rng.chance(20) {
                    serde_json::json!({"name": n, "value": null})
                } else {
                    serde_json::json!({"name": n, "value": format!("{}", rng.below(5))})
                }
            })
            .collect();
        c.insert("env".into(), Value::Array(env));
    }
    if rng.chance(40) {
        let mounts: Vec<Value> = rng
            .subset(&["/a", "/b", "/c"])
            .into_iter()
            .map(|m| serde_json::json!({"name": format!("v{}", rng.below(3)), "mountPath": m}))
            .collect();
        c.insert("volumeMounts".into(), Value::Array(mounts));
    }
    if rng.chance(30) {
        let args: Vec<Value> = rng
            .subset(&["-x", "-y", "-z"])
            .into_iter()
            .map(Value::from)
            .collect();
        c.insert("args".into(), Value::Array(args));
    }
    if patch && rng.chance(15) {
        c.insert("image".into(), Value::Null);
    }
    Value::Object(c)
}

fn random_deployment(rng: &mut Rng, name: &str, patch: bool) -> Value {
    let containers: Vec<Value> = rng
        .subset(&["a", "b", "c", "d"])
        .into_iter()
        .map(|n| random_container(rng, n, patch))
        .collect();
    let mut spec = serde_json::Map::new();
    if !containers.is_empty() || !patch {
        let mut list = containers;
        if patch && rng.chance(10) {
            list.insert(0, serde_json::json!({"$patch": "replace"}));
        }
        spec.insert("containers".into(), Value::Array(list));
    }
    if rng.chance(40) {
        let volumes: Vec<Value> = rng
            .subset(&["v0", "v1", "v2"])
            .into_iter()
            .map(|v| serde_json::json!({"name": v, "emptyDir": {}}))
            .collect();
        spec.insert("volumes".into(), Value::Array(volumes));
    }
    if rng.chance(30) {
        let tolerations: Vec<Value> = rng
            .subset(&["k1", "k2"])
            .into_iter()
            .map(|k| serde_json::json!({"key": k, "operator": "Exists"}))
            .collect();
        spec.insert("tolerations".into(), Value::Array(tolerations));
    }
    let mut meta = serde_json::json!({"name": name});
    if rng.chance(50) {
        let fins: Vec<Value> = rng
            .subset(&["f1", "f2", "f3"])
            .into_iter()
            .map(Value::from)
            .collect();
        meta["finalizers"] = Value::Array(fins);
    }
    if rng.chance(50) {
        let mut labels = serde_json::Map::new();
        for l in rng.subset(&["x", "y", "z"]) {
            let v = if patch && rng.chance(30) {
                Value::Null
            } else {
                Value::from(format!("{}", rng.below(3)))
            };
            labels.insert(l.into(), v);
        }
        meta["labels"] = Value::Object(labels);
    }
    let mut d = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {"template": {"spec": Value::Object(spec)}},
    });
    if patch && rng.chance(10) {
        d["spec"]["replicas"] = Value::from(rng.below(4));
    }
    if !patch {
        d["spec"]["replicas"] = Value::from(1);
        d["spec"]["selector"] = serde_json::json!({"matchLabels": {"app": name}});
    }
    d
}

#[test]
fn smp_randomised_deployments_match_kustomize() {
    const CASES: usize = 300;
    let mut rng = Rng(0x5eed_f107_111a_0001);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut kustomization = String::from("resources:\n- resources.yaml\npatches:\n");
    let mut resources = String::new();
    let mut cases = Vec::new();
    for i in 0..CASES {
        let name = format!("web-{i}");
        let target = random_deployment(&mut rng, &name, false);
        let patch = random_deployment(&mut rng, &name, true);
        resources.push_str("---\n");
        resources.push_str(&serde_yaml::to_string(&target).expect("yaml"));
        let file = format!("patch-{i}.yaml");
        std::fs::write(
            dir.path().join(&file),
            serde_yaml::to_string(&patch).expect("yaml"),
        )
        .expect("write patch");
        kustomization.push_str(&format!("- path: {file}\n"));
        cases.push((name, target, patch));
    }
    std::fs::write(dir.path().join("resources.yaml"), resources).expect("write");
    std::fs::write(dir.path().join("kustomization.yaml"), kustomization).expect("write");
    let output = run_kubectl(dir.path()).expect("kustomize builds the randomised tree");
    let by_name = |name: &str| {
        output
            .iter()
            .find(|o| o["metadata"]["name"].as_str() == Some(name))
            .cloned()
    };
    let mut mismatches = Vec::new();
    for (name, mut target, patch) in cases {
        strategic_merge(&mut target, &patch).expect("our merge succeeds where kustomize did");
        let want = by_name(&name);
        let ours = (!target.is_null()).then_some(target);
        if ours != want {
            mismatches.push(format!(
                "{name}\npatch:\n{}\nours:\n{}\nkustomize:\n{}",
                serde_yaml::to_string(&patch).unwrap_or_default(),
                serde_yaml::to_string(&ours).unwrap_or_default(),
                serde_yaml::to_string(&want).unwrap_or_default(),
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {CASES} differ; first:\n{}",
        mismatches.len(),
        mismatches[0]
    );
}

/// A random RFC 6901 pointer into `doc`, sometimes one step beyond what exists, never touching
/// what identifies the object (kustomize rejects a patch that breaks the object's identity,
/// which is not the patch engine's business).
fn random_pointer(rng: &mut Rng, doc: &Value, for_add: bool) -> String {
    loop {
        let p = random_pointer_any(rng, doc, for_add);
        let identity = ["/kind", "/apiVersion", "/metadata/name"]
            .iter()
            .any(|id| p == *id || p.starts_with(&format!("{id}/")));
        if !identity && p != "/metadata" && !p.is_empty() {
            return p;
        }
    }
}

fn random_pointer_any(rng: &mut Rng, doc: &Value, for_add: bool) -> String {
    let mut path = String::new();
    let mut cur = doc;
    loop {
        let stop = rng.chance(30);
        match cur {
            Value::Object(m) if !m.is_empty() && !stop => {
                let keys: Vec<&String> = m.keys().collect();
                let k = keys[rng.below(keys.len())];
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                cur = &m[k];
            }
            Value::Array(a) if !a.is_empty() && !stop => {
                let len = a.len() as i64;
                let i = rng.below(a.len()) as i64;
                let i = if rng.chance(20) { i - len } else { i };
                path.push_str(&format!("/{i}"));
                cur = &a[rng.below(a.len())];
                if i < 0 {
                    // Keep following a real element; the index text is what matters.
                    cur = &a[(i + len) as usize];
                }
            }
            Value::Array(_) if for_add => {
                let t = ["-", "0", "1"][rng.below(3)];
                path.push_str(&format!("/{t}"));
                return path;
            }
            Value::Object(_) if for_add => {
                path.push_str(&format!("/new{}", rng.below(3)));
                return path;
            }
            _ => return path,
        }
    }
}

#[test]
fn json6902_randomised_operations_match_kustomize() {
    const CASES: usize = 200;
    let mut rng = Rng(0x6902_6902_6902_0001);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut kustomization = String::from("resources:\n- resources.yaml\npatches:\n");
    let mut resources = String::new();
    let mut compared = Vec::new();
    let mut rejected = Vec::new();
    let values = [
        serde_json::json!("s"),
        serde_json::json!(7),
        serde_json::json!({"k": "v"}),
        serde_json::json!(["x"]),
        Value::Null,
    ];
    for i in 0..CASES {
        let name = format!("web-{i}");
        // A custom kind, so kustomize's own transformers (name references) cannot trip over
        // the shapes the random operations create.
        let mut target = random_deployment(&mut rng, &name, false);
        target["apiVersion"] = Value::from("example.com/v1");
        target["kind"] = Value::from("Widget");
        let ops: Vec<Value> = (0..1 + rng.below(3))
            .map(|_| {
                let op = rng.pick(&["add", "remove", "replace", "move", "copy", "test"]);
                let path = random_pointer(&mut rng, &target, op != "remove");
                let mut o = serde_json::json!({"op": op, "path": path});
                match op {
                    "move" | "copy" => {
                        o["from"] = Value::from(random_pointer(&mut rng, &target, false))
                    }
                    "remove" => {}
                    _ => o["value"] = values[rng.below(values.len())].clone(),
                }
                o
            })
            .collect();
        let ops = Value::Array(ops);
        let mut ours = target.clone();
        if json6902(&mut ours, &ops).is_err() {
            rejected.push((target, ops));
            continue;
        }
        resources.push_str("---\n");
        resources.push_str(&serde_yaml::to_string(&target).expect("yaml"));
        let file = format!("ops-{i}.json");
        std::fs::write(dir.path().join(&file), ops.to_string()).expect("write ops");
        kustomization.push_str(&format!(
            "- path: {file}\n  target:\n    kind: Widget\n    name: {name}\n"
        ));
        compared.push((name, ours, ops));
    }
    assert!(
        compared.len() > CASES / 3,
        "too few applicable cases: {}",
        compared.len()
    );
    std::fs::write(dir.path().join("resources.yaml"), resources).expect("write");
    std::fs::write(dir.path().join("kustomization.yaml"), kustomization).expect("write");
    let output = run_kubectl(dir.path())
        .expect("kustomize applies every patch we accepted (it failed on one of them)");
    for (name, ours, ops) in &compared {
        let want = output.iter().find(|o| *o == ours);
        assert!(
            want.is_some(),
            "{name}: ops {ops} give\n{}\nwhich kustomize does not produce",
            serde_yaml::to_string(ours).unwrap_or_default()
        );
    }
    assert_eq!(output.len(), compared.len());
    // Operations we reject must fail in kustomize too (checked one kustomization each).
    for (target, ops) in rejected.iter().take(15) {
        let yaml = serde_yaml::to_string(target).expect("yaml");
        let result = kubectl(
            &yaml,
            "- path: patch.yaml\n  target:\n    kind: Widget\n",
            &ops.to_string(),
        );
        assert!(
            result.is_err(),
            "we reject {ops} on\n{yaml}\nbut kustomize gives {result:?}"
        );
    }
}

#[test]
fn json6902_pointer_without_leading_slash_is_an_error() {
    // kustomize silently drops the first segment (`spec/replicas` writes a top-level
    // `replicas`); flotilla refuses the pointer instead.
    let mut target = one(DEPLOYMENT);
    let before = target.clone();
    let ops = serde_json::json!([{"op": "replace", "path": "spec/replicas", "value": 3}]);
    let err = json6902(&mut target, &ops).unwrap_err();
    assert_eq!(
        err.to_string(),
        "JSON patch operation 0 (replace spec/replicas) failed: a JSON pointer must be empty or start with '/'"
    );
    assert_eq!(target, before);
}
