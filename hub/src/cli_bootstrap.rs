//! `flotilla bootstrap`: installs the hub into a management cluster, with an agent for that
//! cluster itself, and commits the manifests together with the `GitSource` and `Delivery` that
//! make the hub manage its own installation from Git from then on.
//!
//! The steps, each idempotent, so running the command again changes nothing that is already
//! right (and never commits or mints a token without need):
//! 1. render `charts/flotilla-hub` and `charts/flotilla-agent` (embedded in this binary) with
//!    `helm template` into `<path>/<namespace>/{hub,agent,sync}.yaml`;
//! 2. commit them on the branch and push, unless the tree is unchanged;
//! 3. server-side apply the same objects (CRDs first, once established) with the agent's field
//!    manager, so the management agent's first apply finds the fields already its own;
//! 4. register the management `Cluster` (accepted, labelled `flotilla.dev/cluster=<name>`, which
//!    the bootstrap `Delivery` selects) and, until its agent has registered, a single-use
//!    bootstrap token in the Secret `<namespace>/flotilla-agent-bootstrap` — applied, never
//!    committed;
//! 5. wait until the hub reports the bootstrap `Delivery` ready at the pushed commit on the
//!    management cluster.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use git2::{CertificateCheckStatus, Cred, CredentialType, RemoteCallbacks, Repository};
use include_dir::{Dir, include_dir};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::Scope;
use kube::{Api, Client};
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::api::{Cluster, Delivery};
use crate::cli_cluster::HubArgs;
use crate::controller::util::parse_duration;
use crate::fleet::{CLUSTER_LABEL, USED_ANNOTATION, create_token};
use crate::source::{KnownHosts, redact_url, ssh_target};

/// The charts this binary installs: the repository's `charts/` directory at build time.
static CHARTS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../charts");

/// The field manager of the objects bootstrap applies: the agent's (`agent/src/apply.rs`).
const APPLY_MANAGER: &str = "flotilla";
/// The label the agent puts on every object it applies, naming its delivery
/// (`agent/src/object.rs` `DELIVERY_LABEL`). Bootstrap sets it too, so that what it applies is
/// exactly what the management agent applies: neither undoes the other's fields, and a second
/// bootstrap changes nothing the agent would then see as drift.
const DELIVERY_LABEL: &str = "flotilla.dev/delivery";
/// The field manager of the management `Cluster` (as `flotilla cluster add`).
const CLI_MANAGER: &str = "flotilla-cli";
/// Release names of the two charts; the hub's Service is then called `flotilla-hub`.
const HUB_RELEASE: &str = "flotilla-hub";
const AGENT_RELEASE: &str = "flotilla-agent";
/// The Secret holding the management agent's bootstrap token (never committed).
pub const AGENT_TOKEN_SECRET: &str = "flotilla-agent-bootstrap";
/// The Secret with the credentials the hub fetches the repository with, when bootstrap was given
/// some (never committed).
pub const GIT_CREDENTIALS_SECRET: &str = "flotilla-git-credentials";
/// The agent's identity Secret (`agent/src/identity.rs`): once present, the agent has registered.
const AGENT_IDENTITY_SECRET: &str = "flotilla-agent-identity";
/// The environment variable the HTTPS password or token for pushing is read from.
pub const PASSWORD_ENV: &str = "FLOTILLA_GIT_PASSWORD";

/// Arguments of `flotilla bootstrap`.
#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// The Git repository to commit to, as the hub will fetch it: `https://...`, `ssh://...`,
    /// `git@host:path`, or a path.
    #[arg(long)]
    pub repo: String,
    /// The branch to commit to and follow.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// The management cluster's directory in the repository, e.g. `clusters/mgmt`. Bootstrap
    /// writes `<path>/<hub namespace>/`; everything else below `<path>` is yours and is applied
    /// to the management cluster too.
    #[arg(long)]
    pub path: String,
    /// The management cluster's name on the hub (default: the last component of `--path`).
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// A label of the management `Cluster` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub labels: Vec<(String, String)>,
    /// A host name agents of other clusters dial to reach the hub (repeatable); it goes into
    /// the hub's certificate next to the Service's cluster DNS names.
    #[arg(long = "server-name", value_name = "HOST")]
    pub server_names: Vec<String>,
    /// A value of the flotilla-hub chart, as `helm --set` (repeatable).
    #[arg(long = "hub-set", value_name = "KEY=VALUE")]
    pub hub_set: Vec<String>,
    /// A value of the flotilla-agent chart, as `helm --set` (repeatable).
    #[arg(long = "agent-set", value_name = "KEY=VALUE")]
    pub agent_set: Vec<String>,
    /// How often the hub fetches the repository (webhooks fetch at once).
    #[arg(long, default_value = "1m")]
    pub interval: String,
    /// An existing Secret in the hub namespace the hub fetches the repository with (keys as in
    /// docs/hub.md). Default: one bootstrap writes from the credentials it pushed with, if any.
    #[arg(long, value_name = "NAME")]
    pub secret_ref: Option<String>,
    /// The user name for HTTPS pushes; the password or token is read from
    /// `FLOTILLA_GIT_PASSWORD`, never from the command line.
    #[arg(long, default_value = "git")]
    pub git_username: String,
    /// The SSH private key to push with, for `ssh://` and `user@host:path` URLs.
    #[arg(long, value_name = "FILE")]
    pub ssh_key_file: Option<PathBuf>,
    /// The accepted SSH host keys (default: `~/.ssh/known_hosts`).
    #[arg(long, value_name = "FILE")]
    pub known_hosts_file: Option<PathBuf>,
    /// The commit's author, `Name <email>`.
    #[arg(long, default_value = "flotilla <flotilla@localhost>")]
    pub author: String,
    /// How long the management agent's bootstrap token stays valid.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub token_ttl: Duration,
    /// How long to wait for the hub to report the bootstrap Delivery ready at the new commit
    /// (`0s`: do not wait).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub wait: Duration,
    /// The `helm` binary that renders the charts.
    #[arg(long, env = "FLOTILLA_HELM_BINARY", default_value = "helm")]
    pub helm_binary: PathBuf,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// One file bootstrap owns in the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
struct File {
    /// Path in the repository.
    path: String,
    text: String,
}

/// What bootstrap derives from its arguments before touching anything.
#[derive(Debug)]
struct Plan {
    cluster: String,
    namespace: String,
    /// `<path>` without `./` or trailing `/`.
    path: String,
    files: Vec<File>,
    /// The Secret the GitSource uses, and whether bootstrap writes it from its own credentials.
    secret_ref: Option<(String, bool)>,
}

/// Runs `flotilla bootstrap`.
pub async fn bootstrap(
    hub: &HubArgs,
    args: BootstrapArgs,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let auth = PushAuth::from_args(&args)?;
    let plan = plan(&args, &hub.hub_namespace, &auth)?;
    writeln!(
        out,
        "bootstrapping cluster {} from {} (branch {}, path {})",
        plan.cluster,
        redact_url(&args.repo),
        args.branch,
        plan.path
    )?;

    let pushed = tokio::task::block_in_place(|| publish(&args, &plan, &auth))?;
    match &pushed {
        Published::Committed(id) => writeln!(out, "committed and pushed {id}")?,
        Published::Unchanged(id) => writeln!(out, "repository already up to date at {id}")?,
    }
    let commit = pushed.id().to_owned();

    let client = crate::kube_client(hub.kubeconfig.as_deref()).await?;
    let objects = plan
        .files
        .iter()
        .map(parse_objects)
        .collect::<anyhow::Result<Vec<_>>>()?
        .concat();
    let objects: Vec<Value> = objects
        .into_iter()
        .map(|mut o| {
            // The bootstrap Delivery's wire name is its name: the namespace (see `sync_yaml`).
            o["metadata"]["labels"][DELIVERY_LABEL] = Value::String(plan.namespace.clone());
            o
        })
        .collect();
    let changed = apply(&client, &objects).await?;
    writeln!(
        out,
        "applied {} objects to the management cluster ({changed} changed)",
        objects.len()
    )?;

    register(&client, &args, &plan, &auth, out).await?;

    if args.wait.is_zero() {
        writeln!(
            out,
            "not waiting: `flotilla get deliveries -n {}` shows when the hub has taken over",
            plan.namespace
        )?;
        return Ok(());
    }
    wait_ready(&client, &plan, &commit, args.wait, out).await?;
    writeln!(
        out,
        "the hub manages its own installation from {}: commit changes below {} to change it",
        redact_url(&args.repo),
        plan.path
    )?;
    Ok(())
}

fn plan(args: &BootstrapArgs, namespace: &str, auth: &PushAuth) -> anyhow::Result<Plan> {
    let path = normalise_path(&args.path)?;
    let cluster = match &args.cluster_name {
        Some(c) => c.clone(),
        None => path.rsplit('/').next().unwrap_or_default().to_owned(),
    };
    crate::delivery::validate_cluster_id(&cluster).with_context(|| {
        format!("cluster name {cluster:?} (from --path; set --cluster-name to choose another)")
    })?;
    let secret_ref = match (&args.secret_ref, auth) {
        (Some(name), _) => Some((name.clone(), false)),
        (None, PushAuth::None) => None,
        (None, _) => Some((GIT_CREDENTIALS_SECRET.to_owned(), true)),
    };
    let charts = tempfile::Builder::new()
        .prefix("flotilla-charts-")
        .tempdir()
        .context("creating a directory for the charts")?;
    CHARTS
        .extract(charts.path())
        .context("writing the embedded charts")?;

    let svc = format!("{HUB_RELEASE}.{namespace}.svc");
    let mut hub_set = Vec::new();
    if !args.server_names.is_empty() {
        let mut names = args.server_names.clone();
        names.extend([
            svc.clone(),
            format!("{svc}.cluster.local"),
            HUB_RELEASE.into(),
        ]);
        hub_set.push(format!("hub.serverNames={{{}}}", names.join(",")));
    }
    hub_set.extend(args.hub_set.iter().cloned());
    let hub = helm_template(
        &args.helm_binary,
        &charts.path().join("flotilla-hub"),
        HUB_RELEASE,
        namespace,
        &hub_set,
    )?;
    let mut agent_set = vec![
        format!("hub.url=https://{svc}:7443"),
        format!("hub.registrationUrl=https://{svc}:7441"),
        format!("hub.serverName={svc}"),
        format!(
            "hub.existingCaConfigMap={}",
            crate::state::HUB_INFO_CONFIGMAP
        ),
        format!("clusterName={cluster}"),
        format!("bootstrapToken.existingSecret={AGENT_TOKEN_SECRET}"),
    ];
    agent_set.extend(args.agent_set.iter().cloned());
    let agent = helm_template(
        &args.helm_binary,
        &charts.path().join("flotilla-agent"),
        AGENT_RELEASE,
        namespace,
        &agent_set,
    )?;

    let header = format!(
        "# Written by `flotilla bootstrap` (flotilla {}). Change it by running bootstrap again\n\
         # with other values: edits to this file are overwritten then.\n",
        crate::VERSION
    );
    let namespace_doc =
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n");
    let dir = format!("{path}/{namespace}");
    let files = vec![
        File {
            path: format!("{dir}/hub.yaml"),
            text: format!("{header}---\n{namespace_doc}{hub}"),
        },
        File {
            path: format!("{dir}/agent.yaml"),
            text: format!("{header}{agent}"),
        },
        File {
            path: format!("{dir}/sync.yaml"),
            text: format!(
                "{header}{}",
                sync_yaml(args, namespace, &cluster, &path, secret_ref.as_ref())?
            ),
        },
    ];
    Ok(Plan {
        cluster,
        namespace: namespace.to_owned(),
        path,
        files,
        secret_ref,
    })
}

/// `clusters/mgmt` from `./clusters/mgmt/`; refuses absolute paths, `..` and the root.
fn normalise_path(path: &str) -> anyhow::Result<String> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if path.starts_with('/') || parts.contains(&"..") || parts.is_empty() {
        bail!("--path {path:?}: expected a directory inside the repository such as clusters/mgmt");
    }
    Ok(parts.join("/"))
}

/// The `GitSource` and `Delivery` that close the loop.
fn sync_yaml(
    args: &BootstrapArgs,
    namespace: &str,
    cluster: &str,
    path: &str,
    secret_ref: Option<&(String, bool)>,
) -> anyhow::Result<String> {
    let mut source_spec = json!({
        "url": args.repo,
        "ref": {"branch": args.branch},
        "interval": args.interval,
    });
    if let Some((name, _)) = secret_ref {
        source_spec["secretRef"] = json!({"name": name});
    }
    let source = json!({
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "GitSource",
        "metadata": {"name": namespace, "namespace": namespace},
        "spec": source_spec,
    });
    let delivery = json!({
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "Delivery",
        "metadata": {"name": namespace, "namespace": namespace},
        "spec": {
            "sourceRef": {"name": namespace},
            "path": path,
            "clusterSelector": {"matchLabels": {CLUSTER_LABEL: cluster}},
            "prune": true,
        },
    });
    Ok(format!(
        "---\n{}---\n{}",
        serde_yaml::to_string(&source)?,
        serde_yaml::to_string(&delivery)?
    ))
}

fn helm_template(
    helm: &Path,
    chart: &Path,
    release: &str,
    namespace: &str,
    set: &[String],
) -> anyhow::Result<String> {
    let mut cmd = std::process::Command::new(helm);
    cmd.args(["template", release])
        .arg(chart)
        .args(["--namespace", namespace, "--include-crds"]);
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().with_context(|| {
        format!(
            "running {} (install Helm or pass --helm-binary)",
            helm.display()
        )
    })?;
    if !out.status.success() {
        bail!(
            "helm template {release}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("helm template {release}: not UTF-8"))
}

fn parse_objects(file: &File) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&file.text) {
        let v = Value::deserialize(doc).with_context(|| format!("parsing {}", file.path))?;
        if !v.is_null() {
            objects.push(v);
        }
    }
    Ok(objects)
}

/// How bootstrap authenticates its push (and, unless `--secret-ref`, how the hub fetches).
enum PushAuth {
    None,
    Basic {
        username: String,
        password: crate::source::Secret,
    },
    Ssh {
        private_key: crate::source::Secret,
        known_hosts: String,
    },
}

impl std::fmt::Debug for PushAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PushAuth::None => "None",
            PushAuth::Basic { .. } => "Basic",
            PushAuth::Ssh { .. } => "Ssh",
        })
    }
}

impl PushAuth {
    fn from_args(args: &BootstrapArgs) -> anyhow::Result<Self> {
        let ssh = ssh_target(&args.repo).is_some();
        if ssh {
            let key_file = args.ssh_key_file.as_ref().with_context(|| {
                format!(
                    "{}: an SSH URL needs --ssh-key-file",
                    redact_url(&args.repo)
                )
            })?;
            let private_key = std::fs::read_to_string(key_file)
                .with_context(|| format!("reading {}", key_file.display()))?;
            let known_hosts_file = match &args.known_hosts_file {
                Some(f) => f.clone(),
                None => PathBuf::from(std::env::var("HOME").unwrap_or_default())
                    .join(".ssh/known_hosts"),
            };
            let known_hosts = std::fs::read_to_string(&known_hosts_file).with_context(|| {
                format!(
                    "reading {} (the accepted host keys; --known-hosts-file)",
                    known_hosts_file.display()
                )
            })?;
            KnownHosts::parse(&known_hosts)
                .with_context(|| format!("parsing {}", known_hosts_file.display()))?;
            return Ok(PushAuth::Ssh {
                private_key: private_key.into(),
                known_hosts,
            });
        }
        match std::env::var(PASSWORD_ENV) {
            Ok(p) if !p.is_empty() => Ok(PushAuth::Basic {
                username: args.git_username.clone(),
                password: p.into(),
            }),
            _ => Ok(PushAuth::None),
        }
    }

    /// The data of the GitSource's Secret (the keys `controller::sources` reads).
    fn secret_data(&self) -> Option<Value> {
        match self {
            PushAuth::None => None,
            PushAuth::Basic { username, password } => {
                Some(json!({"username": username, "password": password.expose()}))
            }
            PushAuth::Ssh {
                private_key,
                known_hosts,
            } => Some(json!({"identity": private_key.expose(), "known_hosts": known_hosts})),
        }
    }

    fn callbacks<'a>(
        &'a self,
        url: &'a str,
        refusal: &'a RefCell<Option<String>>,
    ) -> RemoteCallbacks<'a> {
        let mut callbacks = RemoteCallbacks::new();
        let offered = std::cell::Cell::new(false);
        callbacks.credentials(move |_url, user_from_url, allowed| {
            if offered.replace(true) && !allowed.contains(CredentialType::USERNAME) {
                return Err(git2::Error::from_str("credentials were rejected"));
            }
            match self {
                PushAuth::Basic { username, password }
                    if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) =>
                {
                    Cred::userpass_plaintext(username, password.expose())
                }
                PushAuth::Ssh { private_key, .. } => {
                    let user = user_from_url.unwrap_or("git");
                    if allowed.contains(CredentialType::USERNAME) {
                        return Cred::username(user);
                    }
                    Cred::ssh_key_from_memory(user, None, private_key.expose(), None)
                }
                _ => Err(git2::Error::from_str(&format!(
                    "the remote asks for credentials: set {PASSWORD_ENV} (HTTPS) or --ssh-key-file (SSH)"
                ))),
            }
        });
        callbacks.certificate_check(move |cert, host| {
            let Some(hostkey) = cert.as_hostkey() else {
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let PushAuth::Ssh { known_hosts, .. } = self else {
                return Err(git2::Error::from_str("no known_hosts configured"));
            };
            let port = ssh_target(url).map_or(22, |t| t.port);
            let known = KnownHosts::parse(known_hosts)
                .map_err(|e| git2::Error::from_str(&e.to_string()))?;
            let check = match hostkey.hostkey() {
                Some(key) => known.check(host, port, key).map_err(|e| e.to_string()),
                None => Err(format!("{host} sent no host key")),
            };
            match check {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(message) => {
                    *refusal.borrow_mut() = Some(message.clone());
                    Err(git2::Error::from_str(&message))
                }
            }
        });
        callbacks
    }
}

#[derive(Debug)]
enum Published {
    Committed(String),
    Unchanged(String),
}

impl Published {
    fn id(&self) -> &str {
        match self {
            Published::Committed(id) | Published::Unchanged(id) => id,
        }
    }
}

/// Fetches the branch, writes the plan's files into its tree (replacing what was in
/// `<path>/<namespace>/`), and commits and pushes when that changed the tree.
fn publish(args: &BootstrapArgs, plan: &Plan, auth: &PushAuth) -> anyhow::Result<Published> {
    let url = &args.repo;
    let shown = redact_url(url);
    if !url.contains("://") && ssh_target(url).is_none() && !Path::new(url).exists() {
        bail!(
            "--repo {shown}: no such directory (create the repository first, e.g. `git init --bare`)"
        );
    }
    let scratch = tempfile::Builder::new()
        .prefix("flotilla-bootstrap-")
        .tempdir()?;
    let repo = Repository::init_bare(scratch.path())?;
    let refusal = RefCell::new(None);
    let remote_err = |e: git2::Error, what: &str| {
        let cause = refusal
            .borrow()
            .clone()
            .unwrap_or_else(|| e.message().to_owned());
        anyhow::anyhow!("{what} {shown}: {cause}")
    };
    let tracking = format!("refs/remotes/origin/{}", args.branch);
    {
        let mut remote = repo.remote_anonymous(url)?;
        let mut options = git2::FetchOptions::new();
        options.remote_callbacks(auth.callbacks(url, &refusal));
        remote
            .fetch(
                &[format!("+refs/heads/{}:{tracking}", args.branch)],
                Some(&mut options),
                None,
            )
            .map_err(|e| remote_err(e, "fetching"))?;
    }
    let parent = match repo.find_reference(&tracking) {
        Ok(r) => Some(r.peel_to_commit()?),
        Err(e) if e.code() == git2::ErrorCode::NotFound => None,
        Err(e) => return Err(e.into()),
    };

    let mut index = git2::Index::new()?;
    if let Some(p) = &parent {
        index.read_tree(&p.tree()?)?;
    }
    let owned = format!("{}/{}/", plan.path, plan.namespace);
    let stale: Vec<Vec<u8>> = index
        .iter()
        .filter(|e| e.path.starts_with(owned.as_bytes()))
        .map(|e| e.path)
        .collect();
    for p in stale {
        index.remove_path(Path::new(&String::from_utf8_lossy(&p).into_owned()))?;
    }
    for f in &plan.files {
        let blob = repo.blob(f.text.as_bytes())?;
        index.add(&git2::IndexEntry {
            ctime: git2::IndexTime::new(0, 0),
            mtime: git2::IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            file_size: f.text.len() as u32,
            id: blob,
            flags: 0,
            flags_extended: 0,
            path: f.path.as_bytes().to_vec(),
        })?;
    }
    let tree_id = index.write_tree_to(&repo)?;
    if let Some(p) = &parent
        && p.tree_id() == tree_id
    {
        return Ok(Published::Unchanged(p.id().to_string()));
    }
    let tree = repo.find_tree(tree_id)?;
    let signature = author(&args.author)?;
    let message = format!(
        "flotilla bootstrap: {} in {}\n\nThe hub, an agent for cluster {} and the GitSource and Delivery through\nwhich the hub manages them from this repository.\n",
        plan.cluster, plan.path, plan.cluster
    );
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    let commit = repo.commit(None, &signature, &signature, &message, &tree, &parents)?;
    let local = format!("refs/heads/{}", args.branch);
    repo.reference(&local, commit, true, "flotilla bootstrap")?;

    let rejected = RefCell::new(None);
    {
        let mut remote = repo.remote_anonymous(url)?;
        let mut callbacks = auth.callbacks(url, &refusal);
        callbacks.push_update_reference(|name, status| {
            if let Some(status) = status {
                *rejected.borrow_mut() = Some(format!("{name}: {status}"));
            }
            Ok(())
        });
        let mut options = git2::PushOptions::new();
        options.remote_callbacks(callbacks);
        remote
            .push(&[format!("{local}:{local}")], Some(&mut options))
            .map_err(|e| remote_err(e, "pushing to"))?;
    }
    if let Some(why) = rejected.into_inner() {
        bail!(
            "pushing to {shown} was refused ({why}); if the branch moved meanwhile, run bootstrap again"
        );
    }
    Ok(Published::Committed(commit.to_string()))
}

/// `Name <email>` as a signature.
fn author(s: &str) -> anyhow::Result<git2::Signature<'static>> {
    let (name, email) = s
        .trim()
        .strip_suffix('>')
        .and_then(|s| s.split_once('<'))
        .with_context(|| format!("--author {s:?}: expected `Name <email>`"))?;
    Ok(git2::Signature::now(name.trim(), email.trim())?)
}

/// Server-side applies `objects` (CRDs first, waiting until established; then Namespaces) and
/// returns how many changed.
async fn apply(client: &Client, objects: &[Value]) -> anyhow::Result<usize> {
    let pp = PatchParams::apply(APPLY_MANAGER).force();
    let mut changed = 0;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
    {
        let name = crd["metadata"]["name"].as_str().unwrap_or_default();
        let before = crds
            .get_opt(name)
            .await?
            .and_then(|c| c.metadata.resource_version);
        let after = crds
            .patch(name, &pp, &Patch::Apply(crd))
            .await
            .with_context(|| format!("applying CustomResourceDefinition {name}"))?;
        changed += usize::from(before != after.metadata.resource_version);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let established = crds.get(name).await?.status.is_some_and(|s| {
                s.conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            if Instant::now() > deadline {
                bail!("CustomResourceDefinition {name} is not established after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let discovery = kube::Discovery::new(client.clone())
        .run()
        .await
        .context("reading the API server's discovery")?;
    let rank = |o: &&Value| u8::from(o["kind"] != "Namespace");
    let mut rest: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] != "CustomResourceDefinition")
        .collect();
    rest.sort_by_key(rank);
    for object in rest {
        let obj: DynamicObject = serde_json::from_value(object.clone())?;
        let types = obj
            .types
            .as_ref()
            .context("an object without apiVersion/kind")?;
        let name = obj.metadata.name.clone().unwrap_or_default();
        let what = format!(
            "{} {}{name}",
            types.kind,
            obj.metadata
                .namespace
                .as_ref()
                .map(|n| format!("{n}/"))
                .unwrap_or_default()
        );
        let gvk = kube::api::GroupVersionKind::try_from(types)?;
        let (resource, caps) = discovery.resolve_gvk(&gvk).with_context(|| {
            format!(
                "{what}: the API server does not serve {}",
                types.api_version
            )
        })?;
        let api: Api<DynamicObject> = match (&obj.metadata.namespace, caps.scope) {
            (Some(ns), Scope::Namespaced) => Api::namespaced_with(client.clone(), ns, &resource),
            _ => Api::all_with(client.clone(), &resource),
        };
        let before = api
            .get_opt(&name)
            .await
            .with_context(|| format!("reading {what}"))?
            .and_then(|o| o.metadata.resource_version);
        let after = api
            .patch(&name, &pp, &Patch::Apply(object))
            .await
            .with_context(|| format!("applying {what}"))?;
        changed += usize::from(before != after.metadata.resource_version);
    }
    Ok(changed)
}

/// Registers the management `Cluster` and, until its agent has an identity, a bootstrap token
/// for it; writes the GitSource's credentials Secret when bootstrap owns it.
async fn register(
    client: &Client,
    args: &BootstrapArgs,
    plan: &Plan,
    auth: &PushAuth,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let (name, ns) = (&plan.cluster, &plan.namespace);
    let mut labels: serde_json::Map<String, Value> = args
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    labels.insert(CLUSTER_LABEL.into(), name.clone().into());
    let cluster = json!({
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": name, "labels": labels},
        "spec": {"accepted": true},
    });
    Api::<Cluster>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply(CLI_MANAGER),
            &Patch::Apply(&cluster),
        )
        .await
        .with_context(|| format!("registering Cluster {name}"))?;

    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    if let (Some((secret, true)), Some(data)) = (&plan.secret_ref, auth.secret_data()) {
        let s = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": secret, "namespace": ns},
            "type": "Opaque",
            "stringData": data,
        });
        secrets
            .patch(
                secret,
                &PatchParams::apply(CLI_MANAGER).force(),
                &Patch::Apply(&s),
            )
            .await
            .with_context(|| format!("writing Secret {ns}/{secret}"))?;
        writeln!(
            out,
            "the hub fetches with the credentials in Secret {ns}/{secret} (not committed)"
        )?;
    }

    if secrets.get_opt(AGENT_IDENTITY_SECRET).await?.is_some() {
        writeln!(out, "cluster {name}: its agent is registered already")?;
        return Ok(());
    }
    // Tokens of earlier runs that nobody redeemed are superseded by the new one.
    let earlier = secrets
        .list(&ListParams::default().labels(&format!("{CLUSTER_LABEL}={name}")))
        .await
        .context("listing bootstrap tokens")?;
    for s in earlier.items {
        let used = s
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(USED_ANNOTATION));
        if let (false, Some(n)) = (used, &s.metadata.name) {
            secrets.delete(n, &DeleteParams::default()).await?;
        }
    }
    let token = create_token(client, ns, name, args.token_ttl).await?;
    let s = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": AGENT_TOKEN_SECRET, "namespace": ns},
        "type": "Opaque",
        "stringData": {"token": token.expose()},
    });
    secrets
        .patch(
            AGENT_TOKEN_SECRET,
            &PatchParams::apply(CLI_MANAGER).force(),
            &Patch::Apply(&s),
        )
        .await
        .with_context(|| format!("writing Secret {ns}/{AGENT_TOKEN_SECRET}"))?;
    writeln!(
        out,
        "cluster {name} registered; its agent's single-use token (valid {}) is in Secret {ns}/{AGENT_TOKEN_SECRET}, not in Git",
        humantime(args.token_ttl)
    )?;
    Ok(())
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Waits until the bootstrap Delivery is ready at `commit` on the management cluster, printing
/// each new state; on timeout, says what was seen last.
async fn wait_ready(
    client: &Client,
    plan: &Plan,
    commit: &str,
    timeout: Duration,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let deliveries = Api::<Delivery>::namespaced(client.clone(), &plan.namespace);
    let clusters = Api::<Cluster>::all(client.clone());
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let state = match deliveries.get_opt(&plan.namespace).await {
            Ok(Some(d)) => {
                let here = d
                    .status
                    .as_ref()
                    .and_then(|s| s.clusters.iter().find(|c| c.name == plan.cluster));
                match here {
                    Some(c)
                        if c.ready
                            && c.revision.as_deref().is_some_and(|r| r.ends_with(commit)) =>
                    {
                        writeln!(
                            out,
                            "delivery {0}/{0} is ready on {1} at {commit}",
                            plan.namespace, plan.cluster
                        )?;
                        return Ok(());
                    }
                    Some(c) => format!(
                        "delivery on {}: {} {}",
                        plan.cluster,
                        if c.reason.is_empty() {
                            "waiting"
                        } else {
                            &c.reason
                        },
                        c.message
                    ),
                    None => {
                        let connected = clusters
                            .get_opt(&plan.cluster)
                            .await
                            .ok()
                            .flatten()
                            .and_then(|c| c.status)
                            .is_some_and(|s| s.connected);
                        let ready = d.status.as_ref().and_then(|s| {
                            s.conditions
                                .iter()
                                .find(|c| c.type_ == "Ready")
                                .map(|c| c.message.clone())
                        });
                        match (connected, ready) {
                            (false, _) => format!(
                                "waiting for the hub (Deployment {0}/{HUB_RELEASE}) and the agent (Deployment {0}/{AGENT_RELEASE}) to connect",
                                plan.namespace
                            ),
                            (true, Some(m)) => format!("agent connected; delivery: {m}"),
                            (true, None) => "agent connected; waiting for the hub to render".into(),
                        }
                    }
                }
            }
            Ok(None) => format!("delivery {0}/{0} not found yet", plan.namespace),
            Err(e) => format!("reading delivery {0}/{0}: {e}", plan.namespace),
        };
        if state != last {
            writeln!(out, "{state}")?;
            last = state;
        }
        if Instant::now() > deadline {
            bail!(
                "the hub did not report delivery {0}/{0} ready on cluster {1} at {commit} within {2}; last seen: {last}. \
                 The manifests are committed and applied: check `kubectl -n {0} get pods` and \
                 `flotilla get deliveries -n {0}`, or run bootstrap again",
                plan.namespace,
                plan.cluster,
                humantime(timeout)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests;
