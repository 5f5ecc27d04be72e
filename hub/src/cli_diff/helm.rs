//! `flotilla diff` for `HelmRelease`s kept in Git.
//!
//! Every `HelmRelease` manifest of the proposal (working tree or `--revision`) is compared, per
//! cluster it targets, with what the hub last sent that cluster for the release of the same
//! namespace and name: the chart version in the release's status, the live release's values.
//! Both sides are built by [`crate::controller::build_once`] (same repository code, same chart
//! cache layout, values and `valuesFrom` read from the management cluster) and rendered by
//! [`crate::controller::HelmBuild::render`], the function the hub renders with — the same
//! `helm template` invocation and per-cluster substitution.

use std::collections::HashMap;

use anyhow::{Context as _, anyhow, bail};
use kube::{Client, ResourceExt as _};
use serde::Deserialize as _;
use serde_json::Value;

use super::{DeliveryDiff, compare};
use crate::api::{Cluster, HelmRelease};
use crate::controller::deliveries::{bundle_digest, helm_as_delivery, render_input, targets};
use crate::controller::{HelmBuild, build_once};
use crate::helm::HelmConfig;

/// A `HelmRelease` manifest found in the proposal.
#[derive(Debug, Clone)]
pub struct Found {
    /// The file it is in, relative to the repository root.
    pub file: String,
    /// The release (namespace defaulted to `default`).
    pub release: HelmRelease,
}

/// Every `flotilla.dev` `HelmRelease` in the YAML files of `tree` (hidden directories such as
/// `.git` skipped). A file that mentions `HelmRelease` but does not parse is an error naming the
/// file and line.
pub fn releases_in(tree: &dyn flotilla_render::Tree) -> anyhow::Result<Vec<Found>> {
    let mut out = Vec::new();
    let mut dirs = vec![flotilla_render::RelPath::root()];
    while let Some(dir) = dirs.pop() {
        let entries = tree.list(&dir).with_context(|| format!("listing {dir}"))?;
        for e in entries {
            if e.name.starts_with('.') {
                continue;
            }
            let path = dir.join(&e.name)?;
            match e.kind {
                flotilla_render::EntryKind::Dir => dirs.push(path),
                flotilla_render::EntryKind::File
                    if e.name.ends_with(".yaml") || e.name.ends_with(".yml") =>
                {
                    let bytes = tree
                        .read(&path)
                        .with_context(|| format!("reading {path}"))?;
                    let Ok(text) = std::str::from_utf8(&bytes) else {
                        continue;
                    };
                    if !text.contains("HelmRelease") {
                        continue;
                    }
                    let file = path.to_string();
                    out.extend(parse(&file, text)?);
                }
                flotilla_render::EntryKind::File => {}
            }
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

/// The `HelmRelease` documents of one file.
fn parse(file: &str, text: &str) -> anyhow::Result<Vec<Found>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        // serde_yaml's message names line and column.
        let v = Value::deserialize(doc).map_err(|e| anyhow!("{file}: {e}"))?;
        let api = v["apiVersion"].as_str().unwrap_or("");
        if v["kind"] != "HelmRelease" || !api.starts_with("flotilla.dev/") {
            continue;
        }
        let name = v["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let mut release: HelmRelease =
            serde_json::from_value(v).map_err(|e| anyhow!("{file}: HelmRelease {name}: {e}"))?;
        if release.metadata.namespace.is_none() {
            release.metadata.namespace = Some("default".into());
        }
        out.push(Found {
            file: file.to_owned(),
            release,
        });
    }
    Ok(out)
}

/// `HelmRelease namespace/name`, as the hub names a release next to deliveries.
pub fn label(hr: &HelmRelease) -> String {
    format!(
        "HelmRelease {}/{}",
        hr.namespace().unwrap_or_default(),
        hr.name_any()
    )
}

/// Builds and renders, keeping builds by chart version so each is downloaded and its values read
/// once per run.
pub struct Builder<'a> {
    client: &'a Client,
    config: &'a HelmConfig,
    builds: HashMap<String, Result<HelmBuild, String>>,
}

impl std::fmt::Debug for Builder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<'a> Builder<'a> {
    /// Builds with `config`, reading repositories, credentials and values through `client`.
    pub fn new(client: &'a Client, config: &'a HelmConfig) -> Self {
        Self {
            client,
            config,
            builds: HashMap::new(),
        }
    }

    async fn build(
        &mut self,
        side: &str,
        hr: &HelmRelease,
        version: Option<&str>,
    ) -> Result<HelmBuild, String> {
        let key = format!("{side}|{}|{version:?}", label(hr));
        if let Some(b) = self.builds.get(&key) {
            return b.clone();
        }
        let b = build_once(self.client, self.config, hr, version).await;
        self.builds.insert(key, b.clone());
        b
    }

    /// What `proposed` (from `to`) changes on cluster `c` compared with what the hub last sent it
    /// of `live`; `None` when neither targets the cluster.
    pub async fn diff(
        &mut self,
        proposed: &HelmRelease,
        live: Option<&HelmRelease>,
        c: &Cluster,
        to: &str,
    ) -> Option<anyhow::Result<DeliveryDiff>> {
        let new_d = helm_as_delivery(proposed);
        let old_d = live.map(helm_as_delivery);
        let wanted = targets(&new_d, c);
        let had = old_d.as_ref().is_some_and(|d| targets(d, c));
        if !wanted && !had {
            return None;
        }
        Some(self.diff_targeted(proposed, live, c, to, wanted).await)
    }

    async fn diff_targeted(
        &mut self,
        proposed: &HelmRelease,
        live: Option<&HelmRelease>,
        c: &Cluster,
        to: &str,
        wanted: bool,
    ) -> anyhow::Result<DeliveryDiff> {
        let cname = c.name_any();
        let mut notes = Vec::new();
        if proposed.spec.suspend {
            notes.push(
                "the release is suspended: nothing reaches the cluster until it is resumed"
                    .to_owned(),
            );
        }
        let (new, to_label) = if wanted {
            let b = self
                .build("new", proposed, None)
                .await
                .map_err(|e| anyhow!("{to}: {e}"))?;
            let (_, vars) = render_input(&helm_as_delivery(proposed), c);
            let objects = b.render(&vars).await.map_err(|e| anyhow!("{to}: {e}"))?;
            if objects.is_empty() {
                bail!(
                    "{to}: chart {}@{} renders no objects for this cluster; the hub would send \
                     nothing",
                    b.archive.name,
                    b.archive.version
                );
            }
            (
                objects,
                format!("{to}, {}@{}", b.archive.name, b.archive.version),
            )
        } else {
            notes.push("the release no longer selects this cluster".to_owned());
            (Vec::new(), to.to_owned())
        };

        // What the hub last sent this cluster: the release's per-cluster status.
        let sent = live.and_then(|l| {
            l.status
                .as_ref()?
                .clusters
                .iter()
                .find(|x| x.name == cname)
                .cloned()
        });
        let applied = sent.as_ref().and_then(|s| s.revision.clone());
        let old: Vec<Value> = match (live, &applied) {
            (None, _) => {
                notes.push("the release is not on the hub yet".to_owned());
                Vec::new()
            }
            (Some(_), None) => Vec::new(),
            (Some(l), Some(rev)) => {
                // `<chart>@<version>@sha256:<digest>`.
                let mut parts = rev.splitn(3, '@');
                let (_, version, digest) = (parts.next(), parts.next(), parts.next());
                let version = version
                    .ok_or_else(|| anyhow!("the hub sent {rev:?}, which names no chart version"))?;
                let b = self
                    .build("old", l, Some(version))
                    .await
                    .map_err(|e| anyhow!("the chart the cluster runs ({rev}): {e}"))?;
                if digest.is_some_and(|d| d.trim_start_matches("sha256:") != b.archive.digest) {
                    notes.push(format!(
                        "the repository now serves another archive for {}@{} than the cluster \
                         runs: the baseline is approximate",
                        b.archive.name, b.archive.version
                    ));
                }
                let (_, vars) = render_input(&helm_as_delivery(l), c);
                let objects = b
                    .render(&vars)
                    .await
                    .map_err(|e| anyhow!("rendering what the cluster runs ({rev}): {e}"))?;
                if let Some(d) = sent.as_ref().and_then(|s| s.digest.as_ref()) {
                    match bundle_digest(&helm_as_delivery(l), &objects) {
                        Ok(mine) if mine == *d => {}
                        Ok(_) => notes.push(
                            "the render of what the cluster runs differs from the bundle the hub \
                             sent (values, valuesFrom, the cluster's labels or the hub's \
                             --helm-kube-version differ): the baseline is approximate"
                                .to_owned(),
                        ),
                        Err(e) => notes.push(format!("cannot check the baseline: {e}")),
                    }
                }
                objects
            }
        };
        if let Some(s) = &sent
            && !s.ready
            && !s.reason.is_empty()
        {
            notes.push(format!("not ready on the cluster: {}", s.reason));
        }
        let old_label = applied
            .as_deref()
            .map(crate::controller::util::short_revision)
            .unwrap_or_else(|| "nothing applied".to_owned());
        Ok(DeliveryDiff {
            delivery: label(proposed),
            from: applied,
            to: to_label.clone(),
            notes,
            changes: compare(&old, &new, proposed.spec.prune, &old_label, &to_label),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_helm_releases_in_yaml_files_and_names_the_file_and_line_of_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("releases")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(
            root.join("releases/web.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: not-me\n---\n\
             apiVersion: flotilla.dev/v1alpha1\nkind: HelmRelease\nmetadata:\n  name: web\n  \
             namespace: flotilla-system\nspec:\n  chart:\n    name: demo\n    sourceRef:\n      \
             name: local\n  clusterSelector: {}\n  values:\n    greeting: hi\n",
        )
        .unwrap();
        // No namespace: `default`, as the API server would.
        std::fs::write(
            root.join("db.yml"),
            "apiVersion: flotilla.dev/v1alpha1\nkind: HelmRelease\nmetadata:\n  name: db\n\
             spec:\n  clusterSelector: {}\n  chart:\n    name: pg\n    sourceRef:\n      name: local\n",
        )
        .unwrap();
        // Flux's HelmRelease is not ours; hidden directories are not read.
        std::fs::write(
            root.join("flux.yaml"),
            "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata:\n  name: f\n",
        )
        .unwrap();
        std::fs::write(root.join(".git/x.yaml"), "kind: HelmRelease\n: [").unwrap();
        let tree = flotilla_render::FsTree::new(root).unwrap();
        let found = releases_in(&tree).unwrap();
        let names: Vec<(String, String)> = found
            .iter()
            .map(|f| (f.file.clone(), label(&f.release)))
            .collect();
        assert_eq!(
            names,
            [
                ("db.yml".to_owned(), "HelmRelease default/db".to_owned()),
                (
                    "releases/web.yaml".to_owned(),
                    "HelmRelease flotilla-system/web".to_owned()
                ),
            ]
        );
        assert_eq!(
            found[1].release.spec.values,
            Some(serde_json::json!({"greeting": "hi"}))
        );

        std::fs::write(
            root.join("releases/bad.yaml"),
            "apiVersion: flotilla.dev/v1alpha1\nkind: HelmRelease\nmetadata:\n  name: [x\n",
        )
        .unwrap();
        let err = releases_in(&tree).unwrap_err().to_string();
        assert!(err.starts_with("releases/bad.yaml: "), "{err}");
        assert!(err.contains("line 4"), "{err}");
        std::fs::write(
            root.join("releases/bad.yaml"),
            "apiVersion: flotilla.dev/v1alpha1\nkind: HelmRelease\nmetadata:\n  name: bad\nspec:\n  chart: 3\n",
        )
        .unwrap();
        let err = releases_in(&tree).unwrap_err().to_string();
        assert!(
            err.starts_with("releases/bad.yaml: HelmRelease bad: "),
            "{err}"
        );
    }
}
