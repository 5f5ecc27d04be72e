//! `flotilla cluster ...` and `flotilla reconcile ...`: registering clusters and asking for a
//! reconcile, by writing the hub's resources in the management cluster (as `kubectl` would).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::api::{Cluster, Delivery, GitSource, RECONCILE_ANNOTATION};
use crate::controller::util::{parse_duration, rfc3339};
use crate::fleet::{CLUSTER_LABEL, create_token};
use crate::state::HUB_INFO_CONFIGMAP;

/// Where the hub lives.
#[derive(Debug, Clone, clap::Args)]
pub struct HubArgs {
    /// Kubeconfig of the management cluster (default: `KUBECONFIG`, `~/.kube/config`).
    #[arg(long, env = "FLOTILLA_KUBECONFIG", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The hub's namespace (bootstrap tokens and the hub's ConfigMap live there).
    #[arg(
        long,
        env = "FLOTILLA_NAMESPACE",
        default_value = "flotilla-system",
        global = true
    )]
    pub hub_namespace: String,
}

/// `flotilla cluster` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Register a workload cluster: creates its `Cluster` (accepted unless `--pending`) and a
    /// single-use bootstrap token, and prints how to start its agent.
    Add {
        /// The cluster's name: its identity in certificates and bundles (lowercase letters,
        /// digits, '-' and '.').
        name: String,
        /// A label deliveries can select on (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_pair)]
        labels: Vec<(String, String)>,
        /// A post-build substitution variable for this cluster (repeatable).
        #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_pair)]
        vars: Vec<(String, String)>,
        /// Leave the cluster pending: its agent can register only after `flotilla cluster accept`.
        #[arg(long)]
        pending: bool,
        /// How long the bootstrap token stays valid.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        token_ttl: Duration,
        /// Write `token` (mode 0600) and `ca.crt` into this directory instead of printing the
        /// token.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
    /// Accept a pending cluster: its agent may register and receive bundles.
    Accept {
        /// The cluster.
        name: String,
    },
    /// Revoke a cluster: its stream closes within seconds and it may not connect again.
    Revoke {
        /// The cluster.
        name: String,
    },
    /// Remove a cluster: revokes it and deletes its `Cluster` and bootstrap tokens.
    Remove {
        /// The cluster.
        name: String,
    },
}

/// What `flotilla reconcile` targets.
#[derive(Debug, clap::Subcommand)]
pub enum ReconcileCommand {
    /// Fetch a `GitSource` now.
    Source {
        /// The source.
        name: String,
        /// Its namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Render a `Delivery` again and have every targeted agent re-apply it now.
    Delivery {
        /// The delivery.
        name: String,
        /// Its namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
    },
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

impl HubArgs {
    async fn client(&self) -> anyhow::Result<Client> {
        crate::kube_client(self.kubeconfig.as_deref()).await
    }
}

/// Runs a `flotilla cluster` subcommand.
pub async fn cluster(
    hub: &HubArgs,
    cmd: ClusterCommand,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let client = hub.client().await?;
    let clusters = Api::<Cluster>::all(client.clone());
    match cmd {
        ClusterCommand::Add {
            name,
            labels,
            vars,
            pending,
            token_ttl,
            write,
        } => {
            crate::delivery::validate_cluster_id(&name)
                .with_context(|| format!("cluster name {name:?}"))?;
            let labels: serde_json::Map<String, serde_json::Value> =
                labels.into_iter().map(|(k, v)| (k, v.into())).collect();
            let vars: serde_json::Map<String, serde_json::Value> =
                vars.into_iter().map(|(k, v)| (k, v.into())).collect();
            let cluster = json!({
                "apiVersion": "flotilla.dev/v1alpha1",
                "kind": "Cluster",
                "metadata": {"name": name, "labels": labels},
                "spec": {"accepted": !pending, "variables": vars},
            });
            clusters
                .patch(&name, &PatchParams::apply("flotilla-cli"), &Patch::Apply(&cluster))
                .await
                .with_context(|| format!("creating Cluster {name} (are the flotilla CRDs installed? `flotilla crds | kubectl apply -f -`)"))?;
            let token = create_token(&client, &hub.hub_namespace, &name, token_ttl).await?;
            let info = Api::<ConfigMap>::namespaced(client.clone(), &hub.hub_namespace)
                .get_opt(HUB_INFO_CONFIGMAP)
                .await
                .context("reading the hub's ConfigMap")?
                .and_then(|cm| cm.data)
                .unwrap_or_default();
            let get = |k: &str| {
                info.get(k)
                    .cloned()
                    .unwrap_or_else(|| format!("<{k}: is the hub running?>"))
            };
            let state = if pending {
                "pending (run `flotilla cluster accept` to let it in)"
            } else {
                "accepted"
            };
            writeln!(out, "cluster {name} added, {state}")?;
            let (token_arg, ca_arg) = match &write {
                Some(dir) => {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    let token_path = dir.join("token");
                    write_private(&token_path, token.expose())?;
                    let ca_path = dir.join("ca.crt");
                    std::fs::write(&ca_path, get("ca.crt"))
                        .with_context(|| format!("writing {}", ca_path.display()))?;
                    writeln!(
                        out,
                        "wrote {} and {}",
                        token_path.display(),
                        ca_path.display()
                    )?;
                    (
                        token_path.display().to_string(),
                        ca_path.display().to_string(),
                    )
                }
                None => {
                    writeln!(
                        out,
                        "bootstrap token (shown once, valid {}s, single use):\n  {}",
                        token_ttl.as_secs(),
                        token.expose()
                    )?;
                    writeln!(
                        out,
                        "hub CA: kubectl -n {} get configmap {HUB_INFO_CONFIGMAP} -o jsonpath='{{.data.ca\\.crt}}' > ca.crt",
                        hub.hub_namespace
                    )?;
                    ("<file with the token>".to_owned(), "ca.crt".to_owned())
                }
            };
            writeln!(
                out,
                "start its agent with the workload cluster's kubeconfig:"
            )?;
            writeln!(
                out,
                "  flotilla-agent run --cluster {name} --hub {} --hub-registration {} --hub-ca {ca_arg} --token-file {token_arg}",
                get("deliveryUrl"),
                get("registrationUrl"),
            )?;
        }
        ClusterCommand::Accept { name } => {
            patch_spec(
                &clusters,
                &name,
                json!({"accepted": true, "revoked": false}),
            )
            .await?;
            writeln!(out, "cluster {name} accepted")?;
        }
        ClusterCommand::Revoke { name } => {
            patch_spec(&clusters, &name, json!({"revoked": true})).await?;
            writeln!(
                out,
                "cluster {name} revoked: its agent is disconnected and may not return"
            )?;
        }
        ClusterCommand::Remove { name } => {
            // Revoke first, so a connected agent is cut off even if deletion is slow.
            let _ = patch_spec(&clusters, &name, json!({"revoked": true})).await;
            match clusters.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => bail!("cluster {name} does not exist"),
                Err(e) => return Err(e).with_context(|| format!("deleting Cluster {name}")),
            }
            let secrets = Api::<Secret>::namespaced(client.clone(), &hub.hub_namespace);
            let tokens = secrets
                .list(&ListParams::default().labels(&format!("{CLUSTER_LABEL}={name}")))
                .await
                .context("listing the cluster's bootstrap tokens")?;
            for s in tokens {
                if let Some(n) = s.metadata.name {
                    let _ = secrets.delete(&n, &DeleteParams::default()).await;
                }
            }
            writeln!(out, "cluster {name} removed")?;
        }
    }
    Ok(())
}

async fn patch_spec(
    clusters: &Api<Cluster>,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<()> {
    match clusters
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => bail!("cluster {name} does not exist"),
        Err(e) => Err(e).with_context(|| format!("updating Cluster {name}")),
    }
}

fn write_private(path: &std::path::Path, content: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(content.as_bytes())?;
    Ok(())
}

/// Runs `flotilla reconcile`.
pub async fn reconcile(
    hub: &HubArgs,
    cmd: ReconcileCommand,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let client = hub.client().await?;
    let now = rfc3339(std::time::SystemTime::now());
    let patch = json!({"metadata": {"annotations": {RECONCILE_ANNOTATION: now}}});
    let (kind, name, namespace, result) = match cmd {
        ReconcileCommand::Source { name, namespace } => {
            let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
            let r = Api::<GitSource>::namespaced(client, &namespace)
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ());
            ("GitSource", name, namespace, r)
        }
        ReconcileCommand::Delivery { name, namespace } => {
            let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
            let r = Api::<Delivery>::namespaced(client, &namespace)
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ());
            ("Delivery", name, namespace, r)
        }
    };
    match result {
        Ok(()) => writeln!(out, "asked the hub to reconcile {kind} {namespace}/{name}")?,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            bail!("{kind} {namespace}/{name} does not exist")
        }
        Err(e) => return Err(e).with_context(|| format!("annotating {kind} {namespace}/{name}")),
    }
    Ok(())
}
