//! A Prometheus scrape of a real hub and its real agents parses, and shows what a user checks:
//! as many connected agents as clusters, applied acks and publishes on the hub, created objects,
//! inventories and an open hub stream on each agent.
//!
//! Runs with FLOTILLA_E2E=1.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use flotilla_e2e::fleet::{Fleet, WorkloadSpec};
use flotilla_e2e::{eventually, skip_unless_e2e};
use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(120);

/// A parsed scrape and the declared type of each family (`# TYPE` lines): prometheus-parse
/// reads OpenMetrics counters as untyped, so types are checked on the text.
struct Scraped {
    parsed: Scrape,
    types: std::collections::HashMap<String, String>,
}

impl std::ops::Deref for Scraped {
    type Target = Scrape;
    fn deref(&self) -> &Scrape {
        &self.parsed
    }
}

/// `GET /metrics` (HTTP/1.0, so the body ends with the connection), parsed.
async fn scrape(addr: &str) -> Result<Scraped> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8(buf).context("the scrape is not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {addr}/metrics: {head}"
    );
    ensure!(
        body.ends_with("# EOF\n"),
        "the scrape of {addr} is cut short:\n{body}"
    );
    let types = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect();
    let parsed =
        Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).context("parsing the scrape")?;
    Ok(Scraped { parsed, types })
}

/// Fails unless the scrape declares `family` with type `kind`.
fn typed(scrape: &Scraped, family: &str, kind: &str) {
    assert_eq!(
        scrape.types.get(family).map(String::as_str),
        Some(kind),
        "family {family} of type {kind} missing; families: {:?}",
        scrape.types
    );
}

/// The value of the series `metric` with `labels` (summed when several match); fails when no
/// such series exists, so a renamed metric cannot pass as zero.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))),
        "no series {metric} {labels:?} in the scrape"
    );
    sum(scrape, metric, labels)
}

/// The sum of the plain samples named `metric` whose labels include `labels`.
fn sum(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// True when `scrape` has a histogram named `metric` (with `labels`) that observed something.
fn observed(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> bool {
    scrape.samples.iter().any(|s| {
        s.metric == metric
            && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            && matches!(&s.value, Value::Histogram(h) if h.iter().any(|b| b.count > 0.0))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_metrics_scrape_of_the_hub_and_its_agents_parses() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let fleet = Fleet::start(
        "metrics",
        &[
            WorkloadSpec::example("workload-1", "eu"),
            WorkloadSpec::example("workload-2", "us"),
        ],
        &[],
    )
    .await?;
    fleet.apply_example(|_| {}).await?;
    let head = fleet.repo.head()?;
    fleet
        .wait_ready_at("fleet", "infrastructure", &head, WAIT)
        .await?;
    fleet.wait_ready_at("fleet", "apps", &head, WAIT).await?;

    // Status is written from acks, so acks are counted by now; the gauge is read at scrape time.
    let hub = eventually("a hub scrape with both agents", WAIT, || async {
        let s = scrape(&fleet.http).await.ok()?;
        (sum(&s, "flotilla_hub_connected_agents", &[]) == 2.0).then_some(s)
    })
    .await?;
    for (family, kind) in [
        ("flotilla_hub_connected_agents", "gauge"),
        ("flotilla_hub_acks", "counter"),
        ("flotilla_hub_bundles_published", "counter"),
        ("flotilla_hub_render_duration_seconds", "histogram"),
        ("flotilla_hub_bundle_size_bytes", "histogram"),
        ("flotilla_hub_reconcile_duration_seconds", "histogram"),
        ("flotilla_hub_agent_queue_depth", "gauge"),
        ("flotilla_hub_agent_queue_depth_max", "gauge"),
        ("flotilla_hub_controller_queue_depth", "gauge"),
    ] {
        typed(&hub, family, kind);
    }
    // Settled: both deliveries are ready at HEAD on both clusters, so nothing waits to be sent
    // or published.
    assert_eq!(value(&hub, "flotilla_hub_agent_queue_depth", &[]), 0.0);
    assert_eq!(value(&hub, "flotilla_hub_agent_queue_depth_max", &[]), 0.0);
    assert_eq!(
        value(
            &hub,
            "flotilla_hub_controller_queue_depth",
            &[("controller", "deliveries")]
        ),
        0.0
    );
    let helm_queue = value(
        &hub,
        "flotilla_hub_controller_queue_depth",
        &[("controller", "helm")],
    );
    assert!(helm_queue >= 0.0, "helm queue {helm_queue}");
    for delivery in ["infrastructure", "apps"] {
        let acks = value(
            &hub,
            "flotilla_hub_acks_total",
            &[("delivery", delivery), ("outcome", "applied")],
        );
        assert!(
            acks >= 2.0,
            "{delivery}: {acks} applied acks, want one per cluster"
        );
        let published = value(
            &hub,
            "flotilla_hub_bundles_published_total",
            &[("delivery", delivery)],
        );
        assert!(
            published >= 2.0,
            "{delivery}: {published} bundles published"
        );
    }
    // No rejected series at all is the healthy state; the family itself is checked above.
    assert_eq!(
        sum(&hub, "flotilla_hub_acks_total", &[("outcome", "rejected")]),
        0.0
    );
    assert!(observed(
        &hub,
        "flotilla_hub_render_duration_seconds",
        &[("delivery", "fleet/apps")]
    ));
    assert!(observed(&hub, "flotilla_hub_bundle_size_bytes", &[]));
    assert!(observed(
        &hub,
        "flotilla_hub_reconcile_duration_seconds",
        &[("controller", "deliveries")]
    ));

    for w in &fleet.workloads {
        let agent = scrape(&w.metrics).await?;
        let name = &w.spec.name;
        // (`flotilla_agent_drift_events` has no series, hence no family, until a first drift.)
        for (family, kind) in [
            ("flotilla_agent_apply_results", "counter"),
            ("flotilla_agent_apply_duration_seconds", "histogram"),
            ("flotilla_agent_inventory_objects", "gauge"),
            ("flotilla_agent_hub_connected", "gauge"),
            ("flotilla_agent_apply_queue_depth", "gauge"),
        ] {
            typed(&agent, family, kind);
        }
        assert_eq!(
            value(&agent, "flotilla_agent_apply_queue_depth", &[]),
            0.0,
            "{name}: applies still waiting once ready"
        );
        let created = value(
            &agent,
            "flotilla_agent_apply_results_total",
            &[("action", "created")],
        );
        assert!(created > 0.0, "{name}: no object created");
        // No failed series at all is the healthy state; the family is checked above.
        assert_eq!(
            sum(
                &agent,
                "flotilla_agent_apply_results_total",
                &[("action", "failed")]
            ),
            0.0,
            "{name}"
        );
        assert_eq!(
            value(&agent, "flotilla_agent_hub_connected", &[]),
            1.0,
            "{name}"
        );
        let inventory = value(
            &agent,
            "flotilla_agent_inventory_objects",
            &[("delivery", "apps")],
        );
        assert!(inventory > 0.0, "{name}: apps inventory {inventory}");
        assert!(observed(
            &agent,
            "flotilla_agent_apply_duration_seconds",
            &[("delivery", "apps")]
        ));
    }
    Ok(())
}
