use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use super::view::{self, CellState, OverviewQuery};
use super::{Error, FleetParams};
use crate::api::*;
use crate::delivery::{AckOutcome, AckRecord, Health, ReportRecord};

fn cluster(name: &str, region: &str, entries: Vec<ClusterDeliveryStatus>) -> Arc<Cluster> {
    let mut c = Cluster::new(
        name,
        ClusterSpec {
            accepted: true,
            variables: BTreeMap::from([("token".into(), "s3cr3t-variable".into())]),
            ..Default::default()
        },
    );
    c.metadata.labels = Some(BTreeMap::from([("region".into(), region.into())]));
    c.status = Some(ClusterStatus {
        connected: true,
        agent_version: Some("0.1.0".into()),
        last_seen: Some("2026-01-01T00:00:00Z".into()),
        deliveries: entries,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Succeeded".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    Arc::new(c)
}

fn entry(name: &str, ready: bool, drifted: u32, why: &str, message: &str) -> ClusterDeliveryStatus {
    ClusterDeliveryStatus {
        name: name.into(),
        revision: Some("main@sha1:0123456789abcdef".into()),
        desired_revision: Some("main@sha1:0123456789abcdef".into()),
        sequence: 3,
        ready,
        health: if ready { "Healthy" } else { "Progressing" }.into(),
        drifted,
        objects: 4,
        reason: why.into(),
        message: message.into(),
    }
}

fn delivery(ns: &str, name: &str, targets: &[(&str, bool, &str, &str)]) -> Arc<Delivery> {
    let mut d = Delivery::new(
        name,
        DeliverySpec {
            source_ref: LocalObjectReference {
                name: "fleet".into(),
            },
            path: "./apps".into(),
            cluster_selector: LabelSelector::default(),
            depends_on: vec![LocalObjectReference {
                name: "infra".into(),
            }],
            ..Default::default()
        },
    );
    d.metadata.namespace = Some(ns.into());
    d.status = Some(DeliveryStatus {
        revision: Some("main@sha1:0123456789abcdef".into()),
        summary: Some("1/2".into()),
        clusters: targets
            .iter()
            .map(|(c, ready, why, message)| DeliveryClusterStatus {
                name: (*c).into(),
                ready: *ready,
                reason: (*why).into(),
                message: (*message).into(),
                health: "Healthy".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    Arc::new(d)
}

fn query(selector: &str, search: &str, page: usize, page_size: usize) -> OverviewQuery {
    OverviewQuery {
        selector: super::selector::parse(selector).unwrap(),
        search: search.into(),
        state: None,
        page,
        page_size,
    }
}

#[test]
fn cell_states_follow_the_reasons() {
    use view::cell_state;
    assert_eq!(
        cell_state(true, "Healthy", 0, "Succeeded"),
        CellState::Synced
    );
    assert_eq!(
        cell_state(false, "Healthy", 1, "DriftDetected"),
        CellState::Drifted
    );
    assert_eq!(
        cell_state(false, "Unknown", 0, "BuildFailed"),
        CellState::Failed
    );
    assert_eq!(
        cell_state(false, "Degraded", 0, "Progressing"),
        CellState::Failed
    );
    assert_eq!(
        cell_state(false, "Progressing", 0, "DependencyNotReady"),
        CellState::Progressing
    );
    assert_eq!(
        cell_state(false, "Unknown", 0, "Disconnected"),
        CellState::Unknown
    );
    assert_eq!(cell_state(false, "", 0, ""), CellState::Unknown);
}

#[test]
fn overview_is_a_grid_of_the_matching_page() {
    let clusters = vec![
        cluster("b-eu", "eu", vec![entry("apps", true, 0, "Succeeded", "")]),
        cluster(
            "a-us",
            "us",
            vec![entry(
                "apps",
                false,
                2,
                "DriftDetected",
                "ConfigMap/x/y drifted",
            )],
        ),
        cluster("c-eu", "eu", vec![]),
    ];
    let deliveries = vec![delivery(
        "fleet",
        "apps",
        &[
            ("a-us", false, "DriftDetected", ""),
            ("b-eu", true, "Succeeded", ""),
        ],
    )];
    let all = view::overview(&clusters, &deliveries, &query("", "", 1, 50));
    assert_eq!(all.deliveries.len(), 1);
    assert_eq!(all.deliveries[0].key, "fleet/apps");
    let names: Vec<&str> = all.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a-us", "b-eu", "c-eu"]);
    let a = &all.clusters[0];
    let cell = a.cells[0].as_ref().unwrap();
    assert_eq!((cell.state, cell.drifted), (CellState::Drifted, 2));
    assert_eq!(cell.message, "ConfigMap/x/y drifted");
    assert_eq!(
        all.clusters[1].cells[0].as_ref().unwrap().state,
        CellState::Synced
    );
    assert!(all.clusters[2].cells[0].is_none(), "not targeted");
    assert_eq!(all.totals.cells["drifted"], 1);
    assert_eq!(all.totals.cells["synced"], 1);

    let eu = view::overview(&clusters, &deliveries, &query("region=eu", "", 1, 50));
    assert_eq!(eu.totals.matched, 2);
    assert_eq!(eu.totals.clusters, 3);

    let search = view::overview(&clusters, &deliveries, &query("", "B-E", 1, 50));
    assert_eq!(search.clusters.len(), 1);
    assert_eq!(search.clusters[0].name, "b-eu");

    let page2 = view::overview(&clusters, &deliveries, &query("", "", 2, 2));
    assert_eq!((page2.page.number, page2.page.pages), (2, 2));
    assert_eq!(page2.clusters.len(), 1);
    assert_eq!(page2.clusters[0].name, "c-eu");
    // A page past the end shows the last one.
    let past = view::overview(&clusters, &deliveries, &query("", "", 9, 2));
    assert_eq!(past.page.number, 2);

    let mut drifted = query("", "", 1, 50);
    drifted.state = Some(CellState::Drifted);
    let only = view::overview(&clusters, &deliveries, &drifted);
    assert_eq!(only.clusters.len(), 1);
    assert_eq!(only.clusters[0].name, "a-us");
}

#[test]
fn a_thousand_clusters_page_quickly() {
    let clusters: Vec<_> = (0..1000)
        .map(|i| {
            cluster(
                &format!("sim-{i:04}"),
                "eu",
                vec![entry("apps", i % 7 != 0, 0, "Succeeded", "")],
            )
        })
        .collect();
    let names: Vec<String> = (0..1000).map(|i| format!("sim-{i:04}")).collect();
    let targets: Vec<(&str, bool, &str, &str)> = names
        .iter()
        .map(|n| (n.as_str(), true, "Succeeded", ""))
        .collect();
    let deliveries = vec![delivery("fleet", "apps", &targets)];
    let o = view::overview(&clusters, &deliveries, &query("", "", 3, 50));
    assert_eq!(o.totals.matched, 1000);
    assert_eq!(o.page.pages, 20);
    assert_eq!(o.clusters.len(), 50);
    assert_eq!(o.clusters[0].name, "sim-0100");
}

#[test]
fn answers_carry_no_secret() {
    let c = cluster("a", "eu", vec![entry("apps", true, 0, "Succeeded", "")]);
    let d = delivery("fleet", "apps", &[("a", true, "Succeeded", "")]);
    let mut source = GitSource::new(
        "fleet",
        GitSourceSpec {
            url: "https://deploy:ghp_t0ken@git.example/org/fleet.git?access_token=abc".into(),
            ..Default::default()
        },
    );
    source.metadata.namespace = Some("fleet".into());
    let overview = view::overview(
        std::slice::from_ref(&c),
        std::slice::from_ref(&d),
        &query("", "", 1, 50),
    );
    let detail = view::delivery_detail(&d, std::slice::from_ref(&d), &[Arc::new(source)]);
    assert_eq!(
        detail.source.url.as_deref(),
        Some("https://git.example/org/fleet.git")
    );
    let cluster = view::cluster_detail(&c, &[d], |_| None, |_| None, vec![]);
    for text in [
        serde_json::to_string(&overview).unwrap(),
        serde_json::to_string(&detail).unwrap(),
        serde_json::to_string(&cluster).unwrap(),
    ] {
        for secret in ["s3cr3t-variable", "ghp_t0ken", "access_token", "deploy:"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
    assert_eq!(
        view::public_url("git@host:org/repo.git"),
        "git@host:org/repo.git"
    );
    assert_eq!(view::public_url("/tmp/repo"), "/tmp/repo");
    assert_eq!(view::public_url("ssh://git@host/repo"), "ssh://host/repo");
}

#[test]
fn cluster_page_has_objects_and_reports() {
    let c = cluster(
        "a",
        "eu",
        vec![entry(
            "apps",
            false,
            1,
            "DriftDetected",
            "ConfigMap/p/cfg drifted",
        )],
    );
    let d = delivery("fleet", "apps", &[("a", false, "DriftDetected", "")]);
    let detail = view::cluster_detail(
        &c,
        &[d],
        |name| {
            (name == "apps").then(|| AckRecord {
                sequence: 3,
                outcome: AckOutcome::Applied,
                message: String::new(),
                objects: vec![("ConfigMap/p/cfg".into(), true)],
                object_count: 1,
            })
        },
        |_| {
            Some(ReportRecord {
                sequence: 3,
                health: Health::Healthy,
                drifted_objects: 1,
                inventory_objects: 1,
                message: "ConfigMap/p/cfg drifted (data changed by kubectl)".into(),
                drifted: vec!["ConfigMap/p/cfg".into()],
                received_at: SystemTime::UNIX_EPOCH,
            })
        },
        vec![],
    );
    assert_eq!(detail.state, CellState::Drifted);
    let e = &detail.deliveries[0];
    assert_eq!(e.key, "fleet/apps");
    assert_eq!(e.ack.as_ref().unwrap().objects[0].object, "ConfigMap/p/cfg");
    assert_eq!(e.report.as_ref().unwrap().drifted, ["ConfigMap/p/cfg"]);
    assert_eq!(
        e.report.as_ref().unwrap().received_at,
        "1970-01-01T00:00:00Z"
    );
}

#[test]
fn delivery_page_shows_progress_errors_and_dependencies() {
    let d = delivery(
        "fleet",
        "apps",
        &[
            ("a", true, "Succeeded", ""),
            (
                "b",
                false,
                "BuildFailed",
                "clusters/b/kustomization.yaml:3: unknown field",
            ),
            (
                "c",
                false,
                "DependencyNotReady",
                "waiting for infra to be ready on this cluster",
            ),
        ],
    );
    let infra = delivery("fleet", "infra", &[("a", true, "Succeeded", "")]);
    let detail = view::delivery_detail(&d, &[d.clone(), infra], &[]);
    assert_eq!(detail.progress.targeted, 3);
    assert_eq!(detail.progress.percent, 33);
    assert_eq!(detail.progress.states["failed"], 1);
    assert_eq!(detail.errors.len(), 1);
    assert!(detail.errors[0].message.contains("kustomization.yaml:3"));
    assert_eq!(detail.depends_on[0].key, "fleet/infra");
    assert!(detail.depends_on[0].exists);
    assert_eq!(detail.depends_on[0].waiting_clusters, ["c"]);
    assert!(!detail.source.exists);
}

#[test]
fn bad_parameters_are_named() {
    let p = FleetParams {
        state: "green".into(),
        ..Default::default()
    };
    assert!(matches!(p.query(), Err(Error::State { .. })));
    let p = FleetParams {
        selector: "region in".into(),
        ..Default::default()
    };
    let e = p.query().unwrap_err();
    assert!(matches!(e, Error::Selector(_)));
}
