//! Bad input: each test builds a small tree, renders it, and asserts on the exact error a user
//! reads — which file, which line, which field or object.

use std::path::Path;

use flotilla_render::{FsTree, Options, RelPath, Variables};

/// Writes `files` (path, content) under a fresh temporary root.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().expect("file has a parent")).expect("mkdir");
        std::fs::write(p, text).expect("write fixture file");
    }
    dir
}

/// Renders `path` of `root` with `opts` and returns the error's full text (with causes).
fn render_err_with(root: &Path, path: &str, opts: &Options) -> String {
    let t = FsTree::new(root).expect("fs tree");
    match flotilla_render::render(
        &t,
        &RelPath::new(path).expect("rel path"),
        &Variables::new(),
        opts,
    ) {
        Ok(objects) => panic!("expected an error, got {} objects", objects.len()),
        Err(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

fn render_err(root: &Path, path: &str) -> String {
    render_err_with(root, path, &Options::default())
}

const CONFIGMAP: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: \"1\"\n";

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      containers:
        - name: web
          image: example/web:1
";

#[test]
fn malformed_yaml_names_file_and_line() {
    let dir = tree(&[(
        "apps/web.yaml",
        // Line 7 is indented less than the mapping it continues.
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  a: \"1\"\n b: \"2\"\n",
    )]);
    let err = render_err(dir.path(), "apps");
    assert_eq!(
        err,
        "apps/web.yaml:7: invalid YAML: while parsing a block mapping, did not find expected key"
    );
}

#[test]
fn malformed_yaml_in_kustomization_names_file_and_line() {
    let dir = tree(&[
        (
            "kustomization.yaml",
            "resources:\n  - cm.yaml\nnamePrefix: a-\n namespace: broken\n",
        ),
        ("cm.yaml", CONFIGMAP),
    ]);
    let err = render_err(dir.path(), "");
    assert_eq!(
        err,
        "kustomization.yaml:4: invalid YAML: mapping values are not allowed in this context"
    );
}

#[test]
fn missing_resource_names_kustomization_and_entry() {
    let dir = tree(&[
        (
            "overlay/kustomization.yaml",
            "resources:\n  - deployment.yaml\n  - missing.yaml\n",
        ),
        ("overlay/deployment.yaml", DEPLOYMENT),
    ]);
    let err = render_err(dir.path(), "overlay");
    assert_eq!(
        err,
        "overlay/kustomization.yaml: resource \"missing.yaml\" does not exist"
    );
}

#[test]
fn resource_climbing_out_of_the_root_is_refused() {
    let dir = tree(&[("app/kustomization.yaml", "resources:\n  - ../../outside\n")]);
    let err = render_err(dir.path(), "app");
    assert_eq!(
        err,
        "app/kustomization.yaml: resource \"../../outside\" is outside the source root"
    );
}

#[test]
fn absolute_resource_path_is_refused() {
    let dir = tree(&[(
        "kustomization.yaml",
        "resources:\n  - /etc/kubernetes/admin.yaml\n",
    )]);
    let err = render_err(dir.path(), "");
    assert_eq!(
        err,
        "kustomization.yaml: resource \"/etc/kubernetes/admin.yaml\" is outside the source root"
    );
}

#[test]
fn render_path_escaping_the_root_is_refused() {
    // The path a Delivery asks for is checked too, before anything is read.
    let err = RelPath::new("clusters/../../secrets").unwrap_err();
    assert_eq!(
        err.to_string(),
        "path clusters/../../secrets is outside the source root"
    );
}

#[cfg(unix)]
#[test]
fn symlink_leaving_the_root_is_refused() {
    let outside = tree(&[("secret.yaml", CONFIGMAP)]);
    let dir = tree(&[("kustomization.yaml", "resources:\n  - linked.yaml\n")]);
    std::os::unix::fs::symlink(
        outside.path().join("secret.yaml"),
        dir.path().join("linked.yaml"),
    )
    .expect("symlink");
    let err = render_err(dir.path(), "");
    assert_eq!(
        err,
        "kustomization.yaml: resource \"linked.yaml\" is outside the source root"
    );
}

#[cfg(unix)]
#[test]
fn symlink_leaving_the_root_in_a_plain_directory_is_refused() {
    let outside = tree(&[("secret.yaml", CONFIGMAP)]);
    let dir = tree(&[("manifests/ok.yaml", CONFIGMAP)]);
    std::os::unix::fs::symlink(outside.path(), dir.path().join("manifests/escape"))
        .expect("symlink");
    let err = render_err(dir.path(), "manifests");
    assert_eq!(
        err,
        "manifests/escape is a symlink that leaves the source root"
    );
}

#[test]
fn patch_matching_nothing_names_the_patch() {
    let dir = tree(&[
        (
            "kustomization.yaml",
            "resources:\n  - deployment.yaml\npatches:\n  - path: scale-api.yaml\n",
        ),
        ("deployment.yaml", DEPLOYMENT),
        (
            "scale-api.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\nspec:\n  replicas: 3\n",
        ),
    ]);
    let err = render_err(dir.path(), "");
    assert_eq!(
        err,
        "kustomization.yaml: patch \"scale-api.yaml\" (Deployment.v1.apps/api.[noNs]) matches no resource"
    );
}

#[test]
fn kustomization_cycle_shows_the_chain() {
    let dir = tree(&[
        ("a/kustomization.yaml", "resources:\n  - ../b\n"),
        ("b/kustomization.yaml", "resources:\n  - ../c\n"),
        ("c/kustomization.yaml", "resources:\n  - ../a\n"),
    ]);
    let err = render_err(dir.path(), "a");
    assert_eq!(err, "kustomization cycle: a -> b -> c -> a");
}

#[test]
fn unknown_kustomization_field_names_file_line_and_field() {
    let dir = tree(&[
        (
            "kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - cm.yaml\nnamePrefx: typo-\n",
        ),
        ("cm.yaml", CONFIGMAP),
    ]);
    let err = render_err(dir.path(), "");
    assert_eq!(
        err,
        "kustomization.yaml:5: unknown field \"namePrefx\" in kustomization"
    );
}

#[test]
fn remote_base_is_refused_by_default() {
    let dir = tree(&[(
        "kustomization.yaml",
        "resources:\n  - https://github.com/example/fleet//apps/base?ref=v1.0.0\n",
    )]);
    let err = render_err(dir.path(), "");
    assert_eq!(
        err,
        "kustomization.yaml: remote resource \"https://github.com/example/fleet//apps/base?ref=v1.0.0\" refused: remote resources are disabled"
    );
}

#[test]
fn file_over_the_size_limit_is_refused() {
    let big = format!("{CONFIGMAP}  padding: \"{}\"\n", "x".repeat(4096));
    let dir = tree(&[("manifests/big.yaml", &big)]);
    let opts = Options {
        max_file_bytes: 1024,
        ..Options::default()
    };
    let err = render_err_with(dir.path(), "manifests", &opts);
    assert_eq!(
        err,
        format!(
            "manifests/big.yaml is {} bytes, over the limit of 1024 bytes",
            big.len()
        )
    );
}

#[test]
fn too_many_files_is_refused() {
    let files: Vec<(String, &str)> = (0..5)
        .map(|i| (format!("m/cm{i}.yaml"), CONFIGMAP))
        .collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), *t)).collect();
    let dir = tree(&refs);
    let opts = Options {
        max_files: 3,
        ..Options::default()
    };
    let err = render_err_with(dir.path(), "m", &opts);
    assert_eq!(err, "m/cm3.yaml: reading more than the limit of 3 files");
}

#[test]
fn remote_base_is_refused_even_when_allowed_because_rendering_never_fetches() {
    let dir = tree(&[(
        "kustomization.yaml",
        "resources:\n  - github.com/example/fleet/apps/base?ref=main\n",
    )]);
    let opts = Options {
        allow_remote: true,
        ..Options::default()
    };
    let err = render_err_with(dir.path(), "", &opts);
    assert_eq!(
        err,
        "kustomization.yaml: remote resource \"github.com/example/fleet/apps/base?ref=main\" refused: remote fetching is not implemented by flotilla's renderer"
    );
}

#[test]
fn unsupported_kustomize_field_is_named() {
    let dir = tree(&[
        (
            "apps/kustomization.yaml",
            "resources:\n  - cm.yaml\nhelmCharts:\n  - name: redis\n    repo: https://charts.example.org\n",
        ),
        ("apps/cm.yaml", CONFIGMAP),
    ]);
    let err = render_err(dir.path(), "apps");
    assert_eq!(
        err,
        "apps/kustomization.yaml: kustomization field \"helmCharts\" is not supported by flotilla's renderer"
    );
}

#[test]
fn unknown_field_in_a_generator_entry_is_named() {
    let dir = tree(&[(
        "kustomization.yaml",
        "configMapGenerator:\n  - name: settings\n    literal:\n      - a=1\n",
    )]);
    let err = render_err(dir.path(), "");
    // The line is the document's, not yet the field's (3).
    assert!(err.starts_with("kustomization.yaml: line "), "{err}");
    assert!(
        err.ends_with(
            "unknown field `literal`, expected one of `name`, `namespace`, `behavior`, `literals`, `files`, `envs`, `env`, `options`, `type`"
        ),
        "{err}"
    );
}

#[test]
fn document_that_is_not_an_object_names_file_and_line() {
    let dir = tree(&[(
        "m/values.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ok\n---\nreplicaCount: 3\nimage: nginx\n",
    )]);
    let err = render_err(dir.path(), "m");
    assert_eq!(
        err,
        "m/values.yaml: line 6: document has no kind, it is not a Kubernetes object"
    );
}

#[test]
fn nesting_over_the_depth_limit_is_refused() {
    let dir = tree(&[
        ("a/kustomization.yaml", "resources:\n  - b\n"),
        ("a/b/kustomization.yaml", "resources:\n  - c\n"),
        ("a/b/c/kustomization.yaml", "resources:\n  - cm.yaml\n"),
        ("a/b/c/cm.yaml", CONFIGMAP),
    ]);
    let opts = Options {
        max_depth: 2,
        ..Options::default()
    };
    let err = render_err_with(dir.path(), "a", &opts);
    assert_eq!(
        err,
        "a/b/kustomization.yaml: nesting deeper than the limit of 2"
    );
}

/// The error text of rendering `path` through `renderer` (which may reuse earlier builds).
fn renderer_err(renderer: &flotilla_render::Renderer<FsTree>, path: &str) -> String {
    match renderer.render(&RelPath::new(path).expect("rel path"), &Variables::new()) {
        Ok(objects) => panic!("expected an error, got {} objects", objects.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_reused_base_still_counts_against_the_depth_limit() {
    // `x` includes `b` at depth 2; `y` includes it at depth 3, one level too deep.
    let dir = tree(&[
        ("x/kustomization.yaml", "resources:\n  - ../b\n"),
        ("y/kustomization.yaml", "resources:\n  - ../w\n"),
        ("w/kustomization.yaml", "resources:\n  - ../b\n"),
        ("b/kustomization.yaml", "resources:\n  - ../c\n"),
        ("c/kustomization.yaml", "resources:\n  - cm.yaml\n"),
        ("c/cm.yaml", CONFIGMAP),
    ]);
    let opts = Options {
        max_depth: 3,
        ..Options::default()
    };
    let renderer =
        flotilla_render::Renderer::new(FsTree::new(dir.path()).expect("tree"), opts.clone());
    let x = renderer
        .render(&RelPath::new("x").expect("path"), &Variables::new())
        .expect("x is within the limit");
    assert_eq!(x.len(), 1);
    let expected = "b/kustomization.yaml: nesting deeper than the limit of 3";
    assert_eq!(render_err_with(dir.path(), "y", &opts), expected);
    assert_eq!(renderer_err(&renderer, "y"), expected);
}

#[test]
fn a_reused_base_still_counts_against_the_file_limit() {
    // `o1` reads 4 files (its kustomization, the base's and two ConfigMaps), `o2` one more.
    let cm = |name: &str| CONFIGMAP.replace("settings", name);
    let (a, b, c) = (cm("a"), cm("b"), cm("c"));
    let dir = tree(&[
        ("o1/kustomization.yaml", "resources:\n  - ../base\n"),
        (
            "o2/kustomization.yaml",
            "resources:\n  - ../base\n  - c.yaml\n",
        ),
        ("o2/c.yaml", &c),
        (
            "base/kustomization.yaml",
            "resources:\n  - a.yaml\n  - b.yaml\n",
        ),
        ("base/a.yaml", &a),
        ("base/b.yaml", &b),
    ]);
    let opts = Options {
        max_files: 4,
        ..Options::default()
    };
    let renderer =
        flotilla_render::Renderer::new(FsTree::new(dir.path()).expect("tree"), opts.clone());
    for _ in 0..2 {
        let o1 = renderer
            .render(&RelPath::new("o1").expect("path"), &Variables::new())
            .expect("o1 reads 4 files");
        assert_eq!(o1.len(), 2);
    }
    let expected = "o2/c.yaml: reading more than the limit of 4 files";
    assert_eq!(render_err_with(dir.path(), "o2", &opts), expected);
    assert_eq!(renderer_err(&renderer, "o2"), expected);
}
