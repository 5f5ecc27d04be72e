//! `flotilla get`, `flotilla status`, `flotilla suspend` and `flotilla resume`: reading and
//! steering the hub's resources in the management cluster, with the tables a `kubectl` or
//! `flux` user expects.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};

use crate::api::{Cluster, Condition, Delivery, GitSource};
use crate::cli_cluster::HubArgs;
use crate::controller::util::parse_rfc3339;

/// What `flotilla get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// `Cluster` resources (cluster-scoped).
    #[value(alias = "cluster")]
    Clusters,
    /// `Delivery` resources.
    #[value(alias = "delivery", alias = "dl")]
    Deliveries,
    /// `GitSource` resources.
    #[value(alias = "source", alias = "gs")]
    Sources,
}

/// Output formats of `flotilla get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// The objects as YAML (a `List` unless one NAME is given).
    Yaml,
    /// The objects as JSON (a `List` unless one NAME is given).
    Json,
}

/// Which namespaces to look in.
#[derive(Debug, Clone, clap::Args)]
pub struct Namespaces {
    /// The namespace (default: the kubeconfig context's, as for kubectl).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
}

impl Namespaces {
    /// `None` for every namespace.
    fn resolve(&self, client: &Client) -> Option<String> {
        if self.all_namespaces {
            None
        } else {
            Some(
                self.namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_owned()),
            )
        }
    }
}

/// Arguments of `flotilla get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// What to list: clusters, deliveries or sources.
    pub kind: Kind,
    /// Only this object.
    pub name: Option<String>,
    /// Print the objects instead of a table.
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,
    #[command(flatten)]
    pub namespaces: Namespaces,
}

/// Arguments of `flotilla status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only deliveries and sources of this namespace (default: every namespace).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// What `flotilla suspend` and `flotilla resume` act on.
#[derive(Debug, clap::Subcommand)]
pub enum SuspendTarget {
    /// A `GitSource`: suspended, it is not fetched (the last revision stays in use).
    Source {
        /// Its name.
        name: String,
        /// Its namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// A `Delivery`: suspended, new revisions are held back (drift is still corrected).
    Delivery {
        /// Its name.
        name: String,
        /// Its namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
    },
}

/// Runs `flotilla get`.
pub async fn get(hub: &HubArgs, args: GetArgs, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let client = crate::kube_client(hub.kubeconfig.as_deref()).await?;
    let ns = match args.kind {
        Kind::Clusters => None,
        _ => args.namespaces.resolve(&client),
    };
    let mut objects: Vec<Value> = match args.kind {
        Kind::Clusters => to_values(list_clusters(&client).await?)?,
        Kind::Deliveries => to_values(list::<Delivery>(&client, ns.as_deref()).await?)?,
        Kind::Sources => to_values(list::<GitSource>(&client, ns.as_deref()).await?)?,
    };
    if let Some(name) = &args.name {
        objects.retain(|o| o["metadata"]["name"] == name.as_str());
        if objects.is_empty() {
            let kind = match args.kind {
                Kind::Clusters => "Cluster".to_owned(),
                Kind::Deliveries => format!("Delivery in namespace {}", ns.unwrap_or_default()),
                Kind::Sources => format!("GitSource in namespace {}", ns.unwrap_or_default()),
            };
            bail!("{kind} {name:?} not found");
        }
    }
    if let Some(format) = args.output {
        for o in &mut objects {
            if let Some(m) = o["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
        }
        let doc = if args.name.is_some() {
            objects.remove(0)
        } else {
            json!({"apiVersion": "v1", "kind": "List", "items": objects})
        };
        match format {
            Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?,
            Output::Yaml => write!(out, "{}", serde_yaml::to_string(&doc)?)?,
        }
        return Ok(());
    }
    if objects.is_empty() {
        match &ns {
            Some(ns) if args.kind != Kind::Clusters => {
                writeln!(out, "No resources found in {ns} namespace.")?
            }
            _ => writeln!(out, "No resources found")?,
        }
        return Ok(());
    }
    let now = SystemTime::now();
    let all = ns.is_none() && args.kind != Kind::Clusters;
    let (headers, rows) = match args.kind {
        Kind::Clusters => cluster_table(&from_values(objects)?, now),
        Kind::Deliveries => delivery_table(&from_values(objects)?, all, now),
        Kind::Sources => source_table(&from_values(objects)?, all, now),
    };
    write!(out, "{}", table(&headers, &rows))?;
    Ok(())
}

/// Runs `flotilla status`.
pub async fn status(
    hub: &HubArgs,
    args: StatusArgs,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let client = crate::kube_client(hub.kubeconfig.as_deref()).await?;
    let ns = args.namespace.as_deref();
    let clusters = list_clusters(&client).await?;
    let deliveries = list::<Delivery>(&client, ns).await?;
    let sources = list::<GitSource>(&client, ns).await?;
    write!(out, "{}", summary(&clusters, &deliveries, &sources))?;
    Ok(())
}

/// Runs `flotilla suspend` (`suspend = true`) or `flotilla resume`.
pub async fn set_suspend(
    hub: &HubArgs,
    target: SuspendTarget,
    suspend: bool,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let client = crate::kube_client(hub.kubeconfig.as_deref()).await?;
    let patch = Patch::Merge(json!({"spec": {"suspend": suspend}}));
    let params = PatchParams::default();
    let (kind, name, ns, result) = match target {
        SuspendTarget::Source { name, namespace } => {
            let ns = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
            let r = Api::<GitSource>::namespaced(client, &ns)
                .patch(&name, &params, &patch)
                .await
                .map(|_| ());
            ("GitSource", name, ns, r)
        }
        SuspendTarget::Delivery { name, namespace } => {
            let ns = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
            let r = Api::<Delivery>::namespaced(client, &ns)
                .patch(&name, &params, &patch)
                .await
                .map(|_| ());
            ("Delivery", name, ns, r)
        }
    };
    match result {
        Ok(()) => {
            let verb = if suspend { "suspended" } else { "resumed" };
            writeln!(out, "{kind} {ns}/{name} {verb}")?;
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => bail!("{kind} {ns}/{name} does not exist"),
        Err(e) => Err(e).with_context(|| format!("updating {kind} {ns}/{name}")),
    }
}

async fn list<K>(client: &Client, namespace: Option<&str>) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    sorted(api).await
}

async fn list_clusters(client: &Client) -> anyhow::Result<Vec<Cluster>> {
    sorted(Api::<Cluster>::all(client.clone())).await
}

async fn sorted<K>(api: Api<K>) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let kind = K::kind(&());
    let mut items = api
        .list(&ListParams::default())
        .await
        .with_context(|| {
            format!(
                "listing {kind} resources (are the flotilla CRDs installed? \
                 `flotilla crds | kubectl apply -f -`)"
            )
        })?
        .items;
    items.sort_by(|a, b| {
        (a.meta().namespace.clone(), a.meta().name.clone())
            .cmp(&(b.meta().namespace.clone(), b.meta().name.clone()))
    });
    Ok(items)
}

fn to_values<K: serde::Serialize + kube::Resource<DynamicType = ()>>(
    items: Vec<K>,
) -> anyhow::Result<Vec<Value>> {
    items
        .into_iter()
        .map(|i| {
            let mut v = serde_json::to_value(&i)?;
            // Typed objects from a list carry no apiVersion/kind; users expect them.
            v["apiVersion"] = K::api_version(&()).into_owned().into();
            v["kind"] = K::kind(&()).into_owned().into();
            Ok(v)
        })
        .collect()
}

fn from_values<K: serde::de::DeserializeOwned>(items: Vec<Value>) -> anyhow::Result<Vec<K>> {
    items
        .into_iter()
        .map(|v| Ok(serde_json::from_value(v)?))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Pure formatting (unit-tested)
// ---------------------------------------------------------------------------------------------

/// Lays out rows under headers as `kubectl get` does: columns left-aligned, three spaces apart,
/// no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                l.push_str("   ");
            }
            l.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            l.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A duration as `kubectl` prints ages: `45s`, `3m20s`, `15m`, `2h5m`, `20h`, `3d4h`, `120d`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (m, h, day) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        match s % 60 {
            0 => format!("{m}m"),
            r => format!("{m}m{r}s"),
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            r => format!("{h}h{r}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        match h % 24 {
            0 => format!("{day}d"),
            r => format!("{day}d{r}h"),
        }
    } else if day < 365 * 2 {
        format!("{day}d")
    } else {
        format!("{}y", day / 365)
    }
}

/// How long ago an RFC 3339 timestamp was, or `<unknown>`.
fn age(timestamp: Option<&str>, now: SystemTime) -> String {
    timestamp
        .and_then(parse_rfc3339)
        .map(|t| human_duration(now.duration_since(t).unwrap_or_default()))
        .unwrap_or_else(|| "<unknown>".to_owned())
}

fn created(meta: &kube::api::ObjectMeta) -> Option<String> {
    let t = meta.creation_timestamp.as_ref()?;
    serde_json::to_value(t).ok()?.as_str().map(str::to_owned)
}

fn ready_condition(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
}

fn ready_cells(conditions: &[Condition]) -> (String, String) {
    match ready_condition(conditions) {
        Some(c) => (c.status.clone(), c.message.clone()),
        None => ("Unknown".to_owned(), "waiting for the hub".to_owned()),
    }
}

fn title(b: bool) -> String {
    if b { "True" } else { "False" }.to_owned()
}

/// The `flotilla get clusters` table.
pub fn cluster_table(
    clusters: &[Cluster],
    now: SystemTime,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let headers = vec![
        "NAME",
        "ACCEPTED",
        "CONNECTED",
        "LAST SEEN",
        "DELIVERIES READY",
        "DRIFTED",
        "READY",
        "AGE",
    ];
    let rows = clusters
        .iter()
        .map(|c| {
            let st = c.status.clone().unwrap_or_default();
            let accepted = if c.spec.revoked {
                "Revoked".to_owned()
            } else {
                title(c.spec.accepted)
            };
            let ready = ready_condition(&st.conditions)
                .map(|c| {
                    if c.status == "True" {
                        c.status.clone()
                    } else {
                        format!("{} ({})", c.status, c.reason)
                    }
                })
                .unwrap_or_else(|| "Unknown".to_owned());
            vec![
                c.name_any(),
                accepted,
                title(st.connected),
                st.last_seen
                    .as_deref()
                    .map(|t| age(Some(t), now))
                    .unwrap_or_else(|| "never".to_owned()),
                st.summary.clone().unwrap_or_else(|| "-".to_owned()),
                st.drifted.to_string(),
                ready,
                age(created(&c.metadata).as_deref(), now),
            ]
        })
        .collect();
    (headers, rows)
}

/// The `flotilla get deliveries` table (with a NAMESPACE column when `all_namespaces`).
pub fn delivery_table(
    deliveries: &[Delivery],
    all_namespaces: bool,
    now: SystemTime,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut headers = vec![
        "NAME",
        "SOURCE",
        "PATH",
        "REVISION",
        "SUSPENDED",
        "READY",
        "CLUSTERS READY",
        "AGE",
        "MESSAGE",
    ];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let rows = deliveries
        .iter()
        .map(|d| {
            let st = d.status.clone().unwrap_or_default();
            let (ready, message) = ready_cells(&st.conditions);
            let mut row = vec![
                d.name_any(),
                d.spec.source_ref.name.clone(),
                d.spec.path.clone(),
                st.short_revision.clone().unwrap_or_else(|| "-".to_owned()),
                title(d.spec.suspend),
                ready,
                st.summary.clone().unwrap_or_else(|| "-".to_owned()),
                age(created(&d.metadata).as_deref(), now),
                message,
            ];
            if all_namespaces {
                row.insert(0, d.namespace().unwrap_or_default());
            }
            row
        })
        .collect();
    (headers, rows)
}

/// The `flotilla get sources` table (with a NAMESPACE column when `all_namespaces`).
pub fn source_table(
    sources: &[GitSource],
    all_namespaces: bool,
    now: SystemTime,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut headers = vec![
        "NAME",
        "URL",
        "REVISION",
        "SUSPENDED",
        "READY",
        "AGE",
        "MESSAGE",
    ];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let rows = sources
        .iter()
        .map(|s| {
            let st = s.status.clone().unwrap_or_default();
            let (ready, message) = ready_cells(&st.conditions);
            let mut row = vec![
                s.name_any(),
                crate::source::redact_url(&s.spec.url),
                st.artifact
                    .as_ref()
                    .map(|a| a.revision.clone())
                    .unwrap_or_else(|| "-".to_owned()),
                title(s.spec.suspend),
                ready,
                age(created(&s.metadata).as_deref(), now),
                message,
            ];
            if all_namespaces {
                row.insert(0, s.namespace().unwrap_or_default());
            }
            row
        })
        .collect();
    (headers, rows)
}

/// The `flotilla status` report: counts, then every cluster that is disconnected, failing or
/// drifted, with the reason.
pub fn summary(clusters: &[Cluster], deliveries: &[Delivery], sources: &[GitSource]) -> String {
    let is_ready = |c: &[Condition]| ready_condition(c).is_some_and(|c| c.status == "True");
    let accepted: Vec<&Cluster> = clusters
        .iter()
        .filter(|c| c.spec.accepted && !c.spec.revoked)
        .collect();
    let connected = accepted
        .iter()
        .filter(|c| c.status.as_ref().is_some_and(|s| s.connected))
        .count();
    let pending = clusters
        .iter()
        .filter(|c| !c.spec.accepted && !c.spec.revoked)
        .count();
    let revoked = clusters.iter().filter(|c| c.spec.revoked).count();
    let cl_ready = accepted
        .iter()
        .filter(|c| c.status.as_ref().is_some_and(|s| is_ready(&s.conditions)))
        .count();
    let d_ready = deliveries
        .iter()
        .filter(|d| d.status.as_ref().is_some_and(|s| is_ready(&s.conditions)))
        .count();
    let suspended = deliveries.iter().filter(|d| d.spec.suspend).count();
    let s_ready = sources
        .iter()
        .filter(|s| s.status.as_ref().is_some_and(|s| is_ready(&s.conditions)))
        .count();
    let s_suspended = sources.iter().filter(|s| s.spec.suspend).count();

    let mut out = String::new();
    let mut extra = Vec::new();
    if pending > 0 {
        extra.push(format!("{pending} pending"));
    }
    if revoked > 0 {
        extra.push(format!("{revoked} revoked"));
    }
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(" ({})", extra.join(", "))
    };
    let _ = writeln!(
        out,
        "Clusters:    {connected}/{} connected, {cl_ready}/{} ready{extra}",
        accepted.len(),
        accepted.len()
    );
    let _ = writeln!(
        out,
        "Deliveries:  {d_ready}/{} ready{}",
        deliveries.len(),
        if suspended > 0 {
            format!(" ({suspended} suspended)")
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "Sources:     {s_ready}/{} ready{}",
        sources.len(),
        if s_suspended > 0 {
            format!(" ({s_suspended} suspended)")
        } else {
            String::new()
        }
    );

    let mut disconnected = Vec::new();
    let mut failed = Vec::new();
    let mut drifted = Vec::new();
    for c in &accepted {
        let name = c.name_any();
        let st = c.status.clone().unwrap_or_default();
        if !st.connected {
            let seen = st
                .last_seen
                .as_deref()
                .map(|t| format!("last seen {t}"))
                .unwrap_or_else(|| "never connected".to_owned());
            disconnected.push(format!("{name}: {seen}"));
        }
        for d in &st.deliveries {
            if d.drifted > 0 {
                drifted.push(format!(
                    "{name}: {}: {} object{} drifted",
                    d.name,
                    d.drifted,
                    if d.drifted == 1 { "" } else { "s" }
                ));
            } else if !d.ready && d.reason != "Disconnected" {
                let rev = d
                    .revision
                    .as_deref()
                    .map(|r| format!(" (runs {})", crate::controller::util::short_revision(r)))
                    .unwrap_or_default();
                failed.push(format!(
                    "{name}: {}: {}: {}{rev}",
                    d.name, d.reason, d.message
                ));
            }
        }
    }
    for (head, items) in [
        ("Disconnected", disconnected),
        ("Not ready", failed),
        ("Drifted", drifted),
    ] {
        if !items.is_empty() {
            let _ = writeln!(out, "\n{head}:");
            for i in items {
                let _ = writeln!(out, "  {i}");
            }
        }
    }
    let stalled: Vec<String> = deliveries
        .iter()
        .filter_map(|d| {
            let c = ready_condition(&d.status.as_ref()?.conditions)?;
            (c.status != "True" && d.status.as_ref()?.clusters.is_empty()).then(|| {
                format!(
                    "{}/{}: {}: {}",
                    d.namespace().unwrap_or_default(),
                    d.name_any(),
                    c.reason,
                    c.message
                )
            })
        })
        .chain(sources.iter().filter_map(|s| {
            let c = ready_condition(&s.status.as_ref()?.conditions)?;
            (c.status != "True").then(|| {
                format!(
                    "source {}/{}: {}: {}",
                    s.namespace().unwrap_or_default(),
                    s.name_any(),
                    c.reason,
                    c.message
                )
            })
        }))
        .collect();
    if !stalled.is_empty() {
        let _ = writeln!(out, "\nBlocked:");
        for s in stalled {
            let _ = writeln!(out, "  {s}");
        }
    }
    out
}

#[cfg(test)]
mod tests;
