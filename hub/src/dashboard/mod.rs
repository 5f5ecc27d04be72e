//! The fleet dashboard and its JSON API, served on the hub's HTTP listener.
//!
//! - `GET /`: one HTML page (with `/assets/app.js` and `/assets/style.css`, compiled into the
//!   binary; nothing is loaded from elsewhere). Views: the fleet overview (clusters × deliveries),
//!   a cluster page and a delivery page, switched by the URL fragment.
//! - `GET /api/v1/fleet?selector=&search=&state=&page=&pageSize=`: the overview, one page of
//!   clusters ([`view::Overview`]).
//! - `GET /api/v1/clusters/{name}`: one cluster ([`view::ClusterDetail`]).
//! - `GET /api/v1/deliveries/{namespace}/{name}`: one delivery ([`view::DeliveryDetail`]).
//! - `GET /api/v1/events`: server-sent events; a `change` event (`{"seq": n}`) follows every
//!   change of the hub's caches or of what agents report, at most one per
//!   [`Dashboard::DEBOUNCE`], so a page re-reads what it shows instead of polling.
//!
//! Every answer is computed from the controller's reflector caches and the delivery server's
//! memory: a request costs no call to the API server. No Secret data, token, cluster variable
//! or URL credential is ever part of an answer (see [`view`]).

pub mod selector;
pub mod view;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt as _;
use kube::ResourceExt as _;
use serde::Deserialize;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::controller::Stores;
use crate::delivery::{Change, Hub};
use view::{CellState, DriftEvent, OverviewQuery};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Drift events kept per cluster.
const DRIFT_EVENTS_PER_CLUSTER: usize = 20;

/// Errors the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No cluster of that name.
    #[error("cluster {name} not found")]
    ClusterNotFound {
        /// The name asked for.
        name: String,
    },
    /// No delivery of that namespace and name.
    #[error("delivery {namespace}/{name} not found")]
    DeliveryNotFound {
        /// The namespace asked for.
        namespace: String,
        /// The name asked for.
        name: String,
    },
    /// The `selector` parameter does not parse.
    #[error("bad selector parameter")]
    Selector(#[source] selector::Error),
    /// The `state` parameter is not a state.
    #[error("bad state parameter {value:?}: use synced, progressing, drifted, failed or unknown")]
    State {
        /// What was given.
        value: String,
    },
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match self {
            Error::ClusterNotFound { .. } | Error::DeliveryNotFound { .. } => StatusCode::NOT_FOUND,
            Error::Selector(_) | Error::State { .. } => StatusCode::BAD_REQUEST,
        };
        let mut text = self.to_string();
        if let Some(cause) = std::error::Error::source(&self) {
            text = format!("{text}: {cause}");
        }
        no_store((status, Json(serde_json::json!({ "error": text }))).into_response())
    }
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The dashboard's state: the caches it reads, and what it remembers of drift.
#[derive(Clone, Debug)]
pub struct Dashboard {
    stores: Stores,
    hub: Hub,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Bumped (debounced) on every change; SSE clients wait on it.
    generation: watch::Sender<u64>,
    /// Last drift events per cluster, newest last.
    drift: Mutex<HashMap<String, VecDeque<DriftEvent>>>,
    /// The drifted objects last seen per (cluster, delivery).
    last_drift: Mutex<HashMap<(String, String), Vec<String>>>,
    shutdown: CancellationToken,
}

/// Query parameters of `/api/v1/fleet`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct FleetParams {
    /// A label selector in `kubectl -l` syntax.
    #[serde(default)]
    pub selector: String,
    /// Text to look for in names, labels and revisions.
    #[serde(default)]
    pub search: String,
    /// Only clusters with a cell in this state.
    #[serde(default)]
    pub state: String,
    /// The page, from 1.
    pub page: Option<usize>,
    /// Clusters per page (default 50, at most 1000).
    pub page_size: Option<usize>,
}

impl FleetParams {
    /// The query these parameters ask for.
    pub fn query(&self) -> Result<OverviewQuery, Error> {
        let state = match self.state.trim() {
            "" | "all" => None,
            s => Some(
                CellState::ALL
                    .into_iter()
                    .find(|c| c.as_str() == s)
                    .ok_or_else(|| Error::State {
                        value: s.to_owned(),
                    })?,
            ),
        };
        Ok(OverviewQuery {
            selector: selector::parse(&self.selector).map_err(Error::Selector)?,
            search: self.search.clone(),
            state,
            page: self.page.unwrap_or(1),
            page_size: self.page_size.unwrap_or(Dashboard::PAGE_SIZE),
        })
    }
}

impl Dashboard {
    /// Clusters per page unless asked otherwise.
    pub const PAGE_SIZE: usize = 50;
    /// Least time between two `change` events.
    pub const DEBOUNCE: Duration = Duration::from_millis(250);

    /// A dashboard over the controller's caches and the delivery server; it follows their
    /// changes until `shutdown`.
    pub fn new(stores: Stores, hub: Hub, shutdown: CancellationToken) -> Self {
        let dashboard = Self {
            inner: Arc::new(Inner {
                generation: watch::Sender::new(0),
                drift: Mutex::default(),
                last_drift: Mutex::default(),
                shutdown,
            }),
            stores,
            hub,
        };
        tokio::spawn(dashboard.clone().follow());
        dashboard
    }

    /// Records drift and bumps the generation (debounced) on every change.
    async fn follow(self) {
        let mut caches = self.stores.subscribe();
        let mut agents = self.hub.subscribe_changes();
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            let wait = async {
                match due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => break,
                r = caches.changed() => {
                    if r.is_err() {
                        break;
                    }
                    due.get_or_insert_with(|| tokio::time::Instant::now() + Self::DEBOUNCE);
                }
                change = agents.recv() => {
                    match change {
                        Ok(change) => self.observe(&change),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            debug!(missed = n, "dashboard lagged behind agent changes");
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                    due.get_or_insert_with(|| tokio::time::Instant::now() + Self::DEBOUNCE);
                }
                _ = wait => {
                    due = None;
                    self.inner.generation.send_modify(|n| *n += 1);
                }
            }
        }
    }

    /// Remembers a change of the drifted objects of a (cluster, delivery).
    fn observe(&self, change: &Change) {
        let Change::Reported { cluster, delivery } = change else {
            return;
        };
        let Some(report) = self.hub.report(cluster, delivery) else {
            return;
        };
        let key = (cluster.clone(), delivery.clone());
        {
            let mut last = self
                .inner
                .last_drift
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let before = last.get(&key).cloned().unwrap_or_default();
            if before == report.drifted {
                return;
            }
            last.insert(key, report.drifted.clone());
        }
        let event = DriftEvent {
            at: crate::controller::util::rfc3339(report.received_at),
            delivery: delivery.clone(),
            objects: report.drifted,
            message: report.message,
        };
        let mut drift = self.inner.drift.lock().unwrap_or_else(|e| e.into_inner());
        let events = drift.entry(cluster.clone()).or_default();
        events.push_back(event);
        while events.len() > DRIFT_EVENTS_PER_CLUSTER {
            events.pop_front();
        }
    }

    fn drift_events(&self, cluster: &str) -> Vec<DriftEvent> {
        let drift = self.inner.drift.lock().unwrap_or_else(|e| e.into_inner());
        drift
            .get(cluster)
            .map(|e| e.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// The routes, to merge into the hub's HTTP router.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(index))
            .route("/assets/app.js", get(app_js))
            .route("/assets/style.css", get(style_css))
            .route("/api/v1/fleet", get(fleet))
            .route("/api/v1/clusters/{name}", get(cluster))
            .route("/api/v1/deliveries/{namespace}/{name}", get(delivery))
            .route("/api/v1/events", get(events))
            .with_state(self)
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Everything comes from the hub itself: no script, style, font or image from elsewhere.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    r
}

async fn index() -> Response {
    no_store(asset("text/html; charset=utf-8", INDEX_HTML))
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

async fn fleet(
    State(d): State<Dashboard>,
    Query(params): Query<FleetParams>,
) -> Result<Response, Error> {
    let q = params.query()?;
    let overview = view::overview(&d.stores.clusters.state(), &d.stores.deliveries.state(), &q);
    Ok(no_store(Json(overview).into_response()))
}

async fn cluster(State(d): State<Dashboard>, Path(name): Path<String>) -> Result<Response, Error> {
    let c = d
        .stores
        .clusters
        .state()
        .into_iter()
        .find(|c| c.name_any() == name)
        .ok_or(Error::ClusterNotFound { name: name.clone() })?;
    let detail = view::cluster_detail(
        &c,
        &d.stores.deliveries.state(),
        |delivery| d.hub.ack_with_objects(&name, delivery),
        |delivery| d.hub.report(&name, delivery),
        d.drift_events(&name),
    );
    Ok(no_store(Json(detail).into_response()))
}

async fn delivery(
    State(d): State<Dashboard>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, Error> {
    let deliveries = d.stores.deliveries.state();
    let found = deliveries
        .iter()
        .find(|x| x.namespace().as_deref() == Some(namespace.as_str()) && x.name_any() == name)
        .ok_or_else(|| Error::DeliveryNotFound {
            namespace: namespace.clone(),
            name: name.clone(),
        })?;
    let detail = view::delivery_detail(found, &deliveries, &d.stores.sources.state());
    Ok(no_store(Json(detail).into_response()))
}

async fn events(State(d): State<Dashboard>) -> Response {
    let rx = d.inner.generation.subscribe();
    let first = *rx.borrow();
    let hello = futures::stream::once(async move {
        Ok::<_, Infallible>(
            Event::default()
                .event("hello")
                .data(format!("{{\"seq\":{first}}}")),
        )
    });
    let changes = futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let n = *rx.borrow_and_update();
        Some((
            Ok::<_, Infallible>(
                Event::default()
                    .event("change")
                    .data(format!("{{\"seq\":{n}}}")),
            ),
            rx,
        ))
    });
    // Ends with the hub, so a graceful shutdown does not wait for open pages.
    let stream = hello
        .chain(changes)
        .take_until(d.inner.shutdown.clone().cancelled_owned());
    no_store(
        Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response(),
    )
}
