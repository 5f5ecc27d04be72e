//! The `flotilla` command-line tool used by platform engineers.

use std::io::Write as _;

use clap::{Parser, Subcommand};

/// flotilla: GitOps for fleets of Kubernetes clusters.
///
/// Register clusters, preview what each cluster would receive, and read fleet status.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about, long_about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub hub: crate::cli_cluster::HubArgs,

    #[command(flatten)]
    pub log: flotilla_telemetry::LogArgs,
}

/// The `flotilla` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the version of this CLI and of the wire protocol it speaks.
    Version,
    /// Render a directory exactly as the hub would for a cluster and print the YAML stream.
    ///
    /// A directory with a kustomization is built by flotilla's native Kustomize engine (same
    /// output as `kubectl kustomize`); any other directory is read as plain YAML. `--var`
    /// values are substituted into `${var}` references after the build.
    ///
    /// With `--helm-release FILE`, DIR is a chart (directory or `.tgz`) and the output is what
    /// the hub would deliver of that `HelmRelease` to the cluster named by `--cluster` (with
    /// `--label` and `--var` as its labels and variables); `--show-values` prints the values
    /// that cluster gets instead.
    Render(RenderArgs),
    /// Register, accept, revoke or remove workload clusters.
    #[command(subcommand)]
    Cluster(crate::cli_cluster::ClusterCommand),
    /// Ask the hub to fetch a source or re-deliver a delivery now.
    #[command(subcommand)]
    Reconcile(crate::cli_cluster::ReconcileCommand),
    /// Print the CustomResourceDefinitions of the hub's API (`flotilla.dev/v1alpha1`) as YAML.
    Crds,
    /// List clusters, deliveries or sources as a table (or `-o yaml|json`).
    Get(crate::cli_get::GetArgs),
    /// Summarise the fleet: clusters connected, deliveries ready, what is failing or drifted.
    Status(crate::cli_get::StatusArgs),
    /// Suspend a source (no more fetches) or a delivery (no new revisions reach the clusters).
    #[command(subcommand)]
    Suspend(crate::cli_get::SuspendTarget),
    /// Resume a suspended source or delivery.
    #[command(subcommand)]
    Resume(crate::cli_get::SuspendTarget),
    /// Show, per cluster, what a working tree or a commit would create, change or prune
    /// compared with what the cluster runs.
    ///
    /// Exit code: 0 no change, 1 changes, 2 error (e.g. a render error, naming file and line).
    /// Secret values are never printed.
    Diff(crate::cli_diff::DiffArgs),
    /// Install the hub into a management cluster and commit what makes it manage its own
    /// installation from Git.
    ///
    /// Renders the flotilla-hub and flotilla-agent charts into `<path>/<hub namespace>/`
    /// together with a `GitSource` and a `Delivery` for that path, commits and pushes them
    /// (unless unchanged), applies them, registers the management cluster with a bootstrap
    /// token kept out of Git, and waits until the hub reports the Delivery ready. Running it
    /// again changes only what differs. See docs/bootstrap.md.
    Bootstrap(Box<crate::cli_bootstrap::BootstrapArgs>),
}

/// Arguments of `flotilla render`.
#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// The source root: nothing outside it is ever read.
    pub dir: std::path::PathBuf,
    /// The directory to render, relative to DIR.
    #[arg(long, default_value = ".")]
    pub path: String,
    /// A post-build substitution variable, KEY=VALUE (repeatable).
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// A `HelmRelease` manifest: render the chart at DIR for one cluster as the hub would.
    #[arg(long, value_name = "FILE")]
    pub helm_release: Option<std::path::PathBuf>,
    /// The cluster's name (`${cluster_name}`), with `--helm-release`.
    #[arg(long, default_value = "local", requires = "helm_release")]
    pub cluster: String,
    /// A label of the cluster, KEY=VALUE (repeatable; `${cluster_labels_<key>}`), with
    /// `--helm-release`.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_var, requires = "helm_release")]
    pub labels: Vec<(String, String)>,
    /// A values file standing in for the release's `valuesFrom` (repeatable, merged in order
    /// before `spec.values`), with `--helm-release`.
    #[arg(long = "values", value_name = "FILE", requires = "helm_release")]
    pub values_files: Vec<std::path::PathBuf>,
    /// Print the cluster's values instead of the objects, with `--helm-release`.
    #[arg(long, requires = "helm_release")]
    pub show_values: bool,
    /// The `helm` binary, with `--helm-release`.
    #[arg(long, env = "FLOTILLA_HELM_BINARY", default_value = "helm")]
    pub helm_binary: std::path::PathBuf,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

impl RenderArgs {
    /// Renders a `HelmRelease` (`--helm-release`) for one cluster and returns the YAML stream
    /// (or the cluster's values with `--show-values`).
    pub async fn render_helm(&self, file: &std::path::Path) -> anyhow::Result<String> {
        use anyhow::Context as _;
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let hr: crate::api::HelmRelease = serde_yaml::from_str(&text)
            .with_context(|| format!("{}: not a HelmRelease", file.display()))?;
        let mut values = serde_json::Value::Object(Default::default());
        for f in &self.values_files {
            let t =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let v: serde_json::Value = serde_yaml::from_str(&t)
                .with_context(|| format!("{}: invalid YAML", f.display()))?;
            if !v.is_null() {
                crate::helm::template::merge_values(&mut values, v);
            }
        }
        if let Some(v) = &hr.spec.values {
            crate::helm::template::merge_values(&mut values, v.clone());
        }
        let labels: std::collections::BTreeMap<String, String> =
            self.labels.iter().cloned().collect();
        let cluster_vars = self.vars.iter().cloned().collect();
        let vars = crate::controller::util::cluster_variables(
            &self.cluster,
            &labels,
            &hr.spec.variables,
            &cluster_vars,
        );
        let values = crate::helm::template::substitute_values(&values, &vars)
            .context("substituting variables in values")?;
        if self.show_values {
            return Ok(serde_yaml::to_string(&values)?);
        }
        let name = hr.metadata.name.clone().unwrap_or_default();
        let namespace = hr
            .spec
            .target_namespace
            .clone()
            .or(hr.metadata.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let objects = crate::helm::template::Template {
            helm: self.helm_binary.clone(),
            archive: self.dir.clone(),
            chart: format!("{} ({})", hr.spec.chart.name, self.dir.display()),
            release_name: hr.spec.release_name.clone().unwrap_or(name),
            namespace,
            kube_version: hr
                .spec
                .kube_version
                .clone()
                .unwrap_or_else(|| crate::helm::DEFAULT_KUBE_VERSION.into()),
            values,
            hooks: crate::helm::template::HookPolicy::parse(hr.spec.hooks.as_deref())?,
            create_namespace: hr.spec.create_namespace,
        }
        .render()
        .await?;
        Ok(flotilla_render::to_yaml(&objects))
    }

    /// Renders and returns the YAML stream.
    pub fn render(&self) -> anyhow::Result<String> {
        use anyhow::Context as _;
        let tree = flotilla_render::FsTree::new(&self.dir)
            .with_context(|| format!("opening source root {}", self.dir.display()))?;
        let path = flotilla_render::RelPath::new(&self.path)?;
        let vars: flotilla_render::Variables = self.vars.iter().cloned().collect();
        let objects =
            flotilla_render::render(&tree, &path, &vars, &flotilla_render::Options::default())?;
        Ok(flotilla_render::to_yaml(&objects))
    }
}

impl Args {
    /// Runs the chosen subcommand; output goes to stdout, logs to stderr. Returns the process
    /// exit code (`flotilla diff` has its own: 0 no change, 1 changes, 2 error).
    pub async fn run(self) -> anyhow::Result<std::process::ExitCode> {
        self.log.init()?;
        let mut out = std::io::stdout().lock();
        match self.command {
            Command::Version => {
                let p = flotilla_proto::PROTOCOL_VERSION;
                writeln!(
                    out,
                    "flotilla {} (protocol flotilla.v1 {}.{})",
                    crate::VERSION,
                    p.major,
                    p.minor
                )?;
            }
            Command::Cluster(cmd) => crate::cli_cluster::cluster(&self.hub, cmd, &mut out).await?,
            Command::Reconcile(cmd) => {
                crate::cli_cluster::reconcile(&self.hub, cmd, &mut out).await?
            }
            Command::Crds => out.write_all(crate::api::crds_yaml().as_bytes())?,
            Command::Get(args) => crate::cli_get::get(&self.hub, args, &mut out).await?,
            Command::Status(args) => crate::cli_get::status(&self.hub, args, &mut out).await?,
            Command::Suspend(target) => {
                crate::cli_get::set_suspend(&self.hub, target, true, &mut out).await?
            }
            Command::Resume(target) => {
                crate::cli_get::set_suspend(&self.hub, target, false, &mut out).await?
            }
            Command::Diff(args) => {
                let mut err = std::io::stderr().lock();
                let code = crate::cli_diff::diff(&self.hub, args, &mut out, &mut err).await?;
                out.flush()?;
                return Ok(std::process::ExitCode::from(code));
            }
            Command::Bootstrap(args) => {
                crate::cli_bootstrap::bootstrap(&self.hub, *args, &mut out).await?
            }
            Command::Render(args) => match match &args.helm_release {
                Some(f) => args.render_helm(f).await,
                None => args.render(),
            } {
                Ok(yaml) => out.write_all(yaml.as_bytes())?,
                Err(e) => {
                    // A render error is the user's input, not a crash: one line, no backtrace.
                    let mut err = std::io::stderr().lock();
                    writeln!(err, "error: {e:#}")?;
                    drop(out);
                    std::process::exit(1);
                }
            },
        }
        Ok(std::process::ExitCode::SUCCESS)
    }
}
