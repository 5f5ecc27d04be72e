//! `helm template` of a downloaded chart archive, and what flotilla does with its output:
//! namespaces filled in, hooks mapped or refused, errors turned into chart / template / line.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use regex::Regex;
use serde_json::Value;

/// How long one `helm template` may run.
const TEMPLATE_TIMEOUT: Duration = Duration::from_secs(60);

/// An error rendering a chart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `helm` could not be started.
    #[error("running {binary} (set --helm-binary)")]
    Spawn {
        /// The binary.
        binary: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the values file failed.
    #[error("writing the values file")]
    Values(#[source] std::io::Error),
    /// `helm template` failed on a template: the chart, template and line.
    #[error("chart {chart}: template {template} line {line}: {message}")]
    Template {
        /// `<name>@<version>`.
        chart: String,
        /// The template, as `helm` names it (`<chart>/templates/<file>`).
        template: String,
        /// The line in the template (in the rendered document for YAML errors).
        line: u32,
        /// `helm`'s message.
        message: String,
    },
    /// `helm template` failed otherwise.
    #[error("chart {chart}: helm template failed: {message}")]
    Helm {
        /// `<name>@<version>`.
        chart: String,
        /// `helm`'s message.
        message: String,
    },
    /// `helm template` ran longer than the limit.
    #[error("chart {chart}: helm template did not finish within {}s", TEMPLATE_TIMEOUT.as_secs())]
    Timeout {
        /// `<name>@<version>`.
        chart: String,
    },
    /// A rendered document is not an object with `apiVersion`, `kind` and `metadata.name`.
    #[error("chart {chart}: template {template}: {message}")]
    Output {
        /// `<name>@<version>`.
        chart: String,
        /// The template the document came from.
        template: String,
        /// What is wrong.
        message: String,
    },
    /// The chart has a lifecycle hook and the release's hook policy is `Refuse`.
    #[error(
        "chart {chart}: template {template} defines {kind} {name} as a helm.sh/hook ({hook}); \
         flotilla runs no hooks: set spec.hooks to Skip (leave hooks out) or Apply (apply them \
         as ordinary objects, pre-* hooks first)"
    )]
    HookRefused {
        /// `<name>@<version>`.
        chart: String,
        /// The template.
        template: String,
        /// The hook object's kind.
        kind: String,
        /// The hook object's name.
        name: String,
        /// The annotation's value.
        hook: String,
    },
    /// `spec.hooks` is not one of the known policies.
    #[error("spec.hooks: {0:?} is not Refuse, Skip or Apply")]
    HookPolicy(String),
}

/// What to do with Helm hooks (`helm.sh/hook`) other than tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HookPolicy {
    /// Fail the build, naming the hook (the default: running a Job once as an ordinary object
    /// is not what a chart author who wrote a hook meant).
    #[default]
    Refuse,
    /// Leave hooks out.
    Skip,
    /// Apply hooks as ordinary objects; `pre-install`/`pre-upgrade` ones first.
    Apply,
}

impl HookPolicy {
    /// Parses `spec.hooks` (`None` is `Refuse`).
    pub fn parse(value: Option<&str>) -> Result<Self, Error> {
        match value {
            None | Some("Refuse") | Some("refuse") => Ok(Self::Refuse),
            Some("Skip") | Some("skip") => Ok(Self::Skip),
            Some("Apply") | Some("apply") => Ok(Self::Apply),
            Some(other) => Err(Error::HookPolicy(other.to_owned())),
        }
    }
}

/// One `helm template` run.
#[derive(Debug, Clone)]
pub struct Template {
    /// The `helm` binary.
    pub helm: PathBuf,
    /// The chart archive (`.tgz`).
    pub archive: PathBuf,
    /// `<name>@<version>`, for messages.
    pub chart: String,
    /// `.Release.Name`.
    pub release_name: String,
    /// `.Release.Namespace`, and the namespace of namespaced objects without one.
    pub namespace: String,
    /// `--kube-version`.
    pub kube_version: String,
    /// Values (merged, substituted).
    pub values: Value,
    /// Hooks.
    pub hooks: HookPolicy,
    /// Also emit the namespace.
    pub create_namespace: bool,
}

impl Template {
    /// Runs `helm template` and returns the objects to apply, in order.
    pub async fn render(&self) -> Result<Vec<Value>, Error> {
        let dir = tempfile::tempdir().map_err(Error::Values)?;
        let values = dir.path().join("values.json");
        // JSON is YAML: helm reads it as a values file.
        std::fs::write(
            &values,
            serde_json::to_vec(&self.values).unwrap_or_else(|_| b"{}".to_vec()),
        )
        .map_err(Error::Values)?;
        let mut cmd = tokio::process::Command::new(&self.helm);
        cmd.arg("template")
            .arg(&self.release_name)
            .arg(&self.archive)
            .args(["--namespace", &self.namespace])
            .args(["--kube-version", &self.kube_version])
            .arg("--include-crds")
            .arg("--values")
            .arg(&values)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .envs(helm_homes(dir.path()))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(TEMPLATE_TIMEOUT, cmd.output()).await {
            Err(_) => {
                return Err(Error::Timeout {
                    chart: self.chart.clone(),
                });
            }
            Ok(r) => r.map_err(|source| Error::Spawn {
                binary: self.helm.display().to_string(),
                source,
            })?,
        };
        if !out.status.success() {
            return Err(helm_error(
                &self.chart,
                &String::from_utf8_lossy(&out.stderr),
            ));
        }
        let docs = parse_output(&self.chart, &String::from_utf8_lossy(&out.stdout))?;
        let mut objects = finish(&self.chart, docs, &self.namespace, self.hooks)?;
        if self.create_namespace {
            objects.insert(
                0,
                serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": self.namespace},
                }),
            );
        }
        Ok(objects)
    }
}

/// Helm's own directories, kept inside `dir` so a render neither reads nor writes the hub
/// user's Helm configuration.
pub(crate) fn helm_homes(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("HELM_CACHE_HOME", dir.join("cache")),
        ("HELM_CONFIG_HOME", dir.join("config")),
        ("HELM_DATA_HOME", dir.join("data")),
    ]
}

/// A document of `helm template`'s output and the template it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    /// `<chart>/templates/<file>` (from the `# Source:` comment).
    pub template: String,
    /// The parsed object.
    pub object: Value,
}

/// Splits `helm template` output into documents, each with its `# Source:` template.
pub fn parse_output(chart: &str, text: &str) -> Result<Vec<Doc>, Error> {
    let mut docs = Vec::new();
    let mut chunk = String::new();
    let mut flush = |chunk: &mut String| -> Result<(), Error> {
        let template = chunk
            .lines()
            .find_map(|l| l.strip_prefix("# Source: "))
            .unwrap_or("(unknown template)")
            .trim()
            .to_owned();
        let value: Value = serde_yaml::from_str(chunk).map_err(|e| Error::Output {
            chart: chart.to_owned(),
            template: template.clone(),
            message: format!("invalid YAML: {e}"),
        })?;
        chunk.clear();
        if value.is_null() {
            return Ok(());
        }
        let ok = value.get("apiVersion").and_then(Value::as_str).is_some()
            && value.get("kind").and_then(Value::as_str).is_some()
            && value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_some();
        if !ok {
            return Err(Error::Output {
                chart: chart.to_owned(),
                template,
                message: "a document without apiVersion, kind or metadata.name".into(),
            });
        }
        docs.push(Doc {
            template,
            object: value,
        });
        Ok(())
    };
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            flush(&mut chunk)?;
            continue;
        }
        chunk.push_str(line);
        chunk.push('\n');
    }
    flush(&mut chunk)?;
    Ok(docs)
}

const TEST_HOOKS: &[&str] = &["test", "test-success", "test-failure"];
const FIRST_HOOKS: &[&str] = &["pre-install", "pre-upgrade"];

/// Fills in namespaces and applies the hook policy; `pre-*` hooks (under `Apply`) come first.
pub fn finish(
    chart: &str,
    docs: Vec<Doc>,
    namespace: &str,
    hooks: HookPolicy,
) -> Result<Vec<Value>, Error> {
    // Kinds the chart itself defines as cluster-scoped.
    let own_cluster_kinds: HashSet<String> = docs
        .iter()
        .filter(|d| {
            d.object.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition")
        })
        .filter(|d| d.object.pointer("/spec/scope").and_then(Value::as_str) == Some("Cluster"))
        .filter_map(|d| d.object.pointer("/spec/names/kind").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    let mut first = Vec::new();
    let mut rest = Vec::new();
    for Doc {
        template,
        mut object,
    } in docs
    {
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let hook = object
            .pointer("/metadata/annotations/helm.sh~1hook")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut early = false;
        if let Some(hook) = hook {
            let phases: Vec<&str> = hook.split(',').map(str::trim).collect();
            if phases.iter().any(|p| TEST_HOOKS.contains(p)) {
                continue;
            }
            match hooks {
                HookPolicy::Skip => continue,
                HookPolicy::Refuse => {
                    return Err(Error::HookRefused {
                        chart: chart.to_owned(),
                        template,
                        kind,
                        name: object
                            .pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        hook,
                    });
                }
                HookPolicy::Apply => early = phases.iter().any(|p| FIRST_HOOKS.contains(p)),
            }
        }
        let cluster_scoped =
            flotilla_render::is_cluster_scoped_kind(&kind) || own_cluster_kinds.contains(&kind);
        if !cluster_scoped
            && object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            && let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.insert("namespace".into(), Value::String(namespace.to_owned()));
        }
        if early {
            first.push(object);
        } else {
            rest.push(object);
        }
    }
    first.extend(rest);
    Ok(first)
}

fn template_line_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?:template: |at \()([^\s:()]+):(\d+)").expect("a valid regex"))
}

fn yaml_error_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"YAML parse error on ([^\s:]+):.*?line (\d+)").expect("a valid regex")
    })
}

/// Turns `helm template`'s stderr into an error naming the chart, template and line when helm
/// names them.
pub fn helm_error(chart: &str, stderr: &str) -> Error {
    let line = stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with("Error:"))
        .or_else(|| stderr.lines().map(str::trim).rfind(|l| !l.is_empty()))
        .unwrap_or("no message")
        .trim_start_matches("Error:")
        .trim()
        .to_owned();
    let found = yaml_error_re()
        .captures(&line)
        .or_else(|| template_line_re().captures(&line));
    match found {
        Some(c) => Error::Template {
            chart: chart.to_owned(),
            template: c[1].to_owned(),
            line: c[2].parse().unwrap_or(0),
            message: line.clone(),
        },
        None => Error::Helm {
            chart: chart.to_owned(),
            message: line,
        },
    }
}

/// Merges `overlay` into `base` as Helm merges values files: maps merge key by key, anything
/// else replaces.
pub fn merge_values(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_values(existing, v)
                    }
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Substitutes per-cluster variables into every string of `values` (the same expressions and
/// rules as post-build substitution of a `Delivery`).
pub fn substitute_values(
    values: &Value,
    vars: &BTreeMap<String, String>,
) -> Result<Value, flotilla_render::subst::Error> {
    let mut v = values.clone();
    flotilla_render::subst::substitute(&mut v, vars)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_template_execution_error_names_template_and_line() {
        let e = helm_error(
            "demo@0.3.0",
            "Error: template: demo/templates/configmap.yaml:7:20: executing \
             \"demo/templates/configmap.yaml\" at <.Values.missing.key>: nil pointer evaluating \
             interface {}.key\n\nUse --debug flag to render out invalid YAML\n",
        );
        let Error::Template { template, line, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(template, "demo/templates/configmap.yaml");
        assert_eq!(*line, 7);
        assert!(e.to_string().starts_with(
            "chart demo@0.3.0: template demo/templates/configmap.yaml line 7: template:"
        ));
    }

    #[test]
    fn parse_and_yaml_errors_name_template_and_line() {
        let e = helm_error(
            "demo@1.0.0",
            "Error: parse error at (demo/templates/cm.yaml:5): function \"nope\" not defined\n",
        );
        assert!(
            matches!(&e, Error::Template { template, line: 5, .. } if template == "demo/templates/cm.yaml"),
            "{e:?}"
        );
        let e = helm_error(
            "demo@1.0.0",
            "Error: YAML parse error on demo/templates/cm.yaml: error converting YAML to JSON: \
             yaml: line 4: could not find expected ':'\n",
        );
        assert!(
            matches!(&e, Error::Template { template, line: 4, .. } if template == "demo/templates/cm.yaml"),
            "{e:?}"
        );
        let e = helm_error("demo@1.0.0", "Error: chart requires kubeVersion: >=1.40\n");
        assert_eq!(
            e.to_string(),
            "chart demo@1.0.0: helm template failed: chart requires kubeVersion: >=1.40"
        );
    }

    const OUTPUT: &str = "---
# Source: demo/templates/sa.yaml
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
---
# Source: demo/templates/crb.yaml
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: web
---
# Source: demo/templates/job.yaml
apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
  annotations:
    helm.sh/hook: pre-install,pre-upgrade
spec: {}
---
# Source: demo/templates/tests/t.yaml
apiVersion: v1
kind: Pod
metadata:
  name: web-test
  annotations:
    helm.sh/hook: test
";

    #[test]
    fn output_gets_namespaces_and_hooks_follow_the_policy() {
        let docs = parse_output("demo@1.0.0", OUTPUT).expect("parses");
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[2].template, "demo/templates/job.yaml");

        let e = finish("demo@1.0.0", docs.clone(), "apps", HookPolicy::Refuse).unwrap_err();
        assert_eq!(
            e.to_string(),
            "chart demo@1.0.0: template demo/templates/job.yaml defines Job migrate as a \
             helm.sh/hook (pre-install,pre-upgrade); flotilla runs no hooks: set spec.hooks to \
             Skip (leave hooks out) or Apply (apply them as ordinary objects, pre-* hooks first)"
        );

        let skipped = finish("demo@1.0.0", docs.clone(), "apps", HookPolicy::Skip).unwrap();
        let names: Vec<&str> = skipped
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["web", "web"]);
        assert_eq!(skipped[0]["metadata"]["namespace"], "apps");
        assert!(
            skipped[1]["metadata"].get("namespace").is_none(),
            "ClusterRole is cluster-scoped"
        );

        let applied = finish("demo@1.0.0", docs, "apps", HookPolicy::Apply).unwrap();
        let kinds: Vec<&str> = applied
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["Job", "ServiceAccount", "ClusterRole"],
            "pre-install hook first, test left out"
        );
    }

    #[test]
    fn a_document_without_a_name_is_refused_naming_its_template() {
        let e = parse_output(
            "demo@1.0.0",
            "---\n# Source: demo/templates/x.yaml\napiVersion: v1\nkind: ConfigMap\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "chart demo@1.0.0: template demo/templates/x.yaml: a document without apiVersion, kind or metadata.name"
        );
    }

    #[test]
    fn values_merge_like_helm_and_substitute_per_cluster() {
        let mut base = json!({"image": {"tag": "1", "repo": "web"}, "list": [1, 2]});
        merge_values(&mut base, json!({"image": {"tag": "2"}, "list": [3]}));
        assert_eq!(
            base,
            json!({"image": {"tag": "2", "repo": "web"}, "list": [3]})
        );
        let vars = BTreeMap::from([("cluster_name".to_owned(), "eu-1".to_owned())]);
        let v = substitute_values(&json!({"greeting": "hello ${cluster_name}"}), &vars).unwrap();
        assert_eq!(v, json!({"greeting": "hello eu-1"}));
    }

    #[test]
    fn hook_policies_parse() {
        assert_eq!(HookPolicy::parse(None).unwrap(), HookPolicy::Refuse);
        assert_eq!(HookPolicy::parse(Some("Apply")).unwrap(), HookPolicy::Apply);
        assert_eq!(
            HookPolicy::parse(Some("Run")).unwrap_err().to_string(),
            "spec.hooks: \"Run\" is not Refuse, Skip or Apply"
        );
    }
}
