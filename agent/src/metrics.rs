//! The agent's Prometheus metrics, served at `/metrics` on `--metrics-listen`.
//!
//! One [`AgentMetrics`] per [`Reconciler`](crate::reconcile::Reconciler): its own registry (no
//! global state) and the handles the reconciler counts with. An agent serves one cluster, so
//! series are labelled by delivery at most (see docs/metrics.md for every family).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;

use crate::apply::Action;
use crate::reconcile::Reconciler;

/// Errors of the metrics listener.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("binding the metrics listener {address}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Labels of an object's apply result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `created`, `configured`, `unchanged` or `failed`.
    pub action: String,
}

/// Labels of a per-delivery series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The delivery.
    pub delivery: String,
}

/// Labels of a drift event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    /// `detected`, `corrected` or `failed` (correction failed).
    pub event: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The agent's metric handles and the registry that encodes them.
#[derive(Clone)]
pub struct AgentMetrics {
    registry: Arc<Registry>,
    /// Objects applied, by result.
    pub apply_results: Family<ActionLabels, Counter>,
    /// Duration of applying one bundle, per delivery.
    pub apply_duration: HistogramFamily<DeliveryLabels>,
    /// Drift events, by what happened.
    pub drift_events: Family<DriftLabels, Counter>,
    /// Objects in each delivery's inventory (set when scraped).
    pub inventory_objects: Family<DeliveryLabels, Gauge>,
    /// 1 while a stream to the hub is open, else 0.
    pub hub_connected: Gauge,
    /// Bundles received and waiting for the apply in progress to finish.
    pub apply_queue_depth: Gauge,
}

impl fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    /// A fresh registry with every agent family registered under `flotilla_agent_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flotilla_agent");
        let apply_results = Family::<ActionLabels, Counter>::default();
        registry.register(
            "apply_results",
            "Objects applied, by result",
            apply_results.clone(),
        );
        let apply_duration =
            HistogramFamily::<DeliveryLabels>::new_with_constructor(duration_histogram as _);
        registry.register_with_unit(
            "apply_duration",
            "Duration of applying one bundle, per delivery",
            Unit::Seconds,
            apply_duration.clone(),
        );
        let drift_events = Family::<DriftLabels, Counter>::default();
        registry.register(
            "drift_events",
            "Drift events: detected, corrected, or failed to correct",
            drift_events.clone(),
        );
        let inventory_objects = Family::<DeliveryLabels, Gauge>::default();
        registry.register(
            "inventory_objects",
            "Objects in each delivery's inventory",
            inventory_objects.clone(),
        );
        let hub_connected = Gauge::default();
        registry.register(
            "hub_connected",
            "1 while a stream to the hub is open, else 0",
            hub_connected.clone(),
        );
        let apply_queue_depth = Gauge::default();
        registry.register(
            "apply_queue_depth",
            "Bundles received and waiting for the apply in progress to finish",
            apply_queue_depth.clone(),
        );
        Self {
            registry: Arc::new(registry),
            apply_results,
            apply_duration,
            drift_events,
            inventory_objects,
            hub_connected,
            apply_queue_depth,
        }
    }

    /// Records one bundle's apply.
    pub fn applied<'a>(
        &self,
        delivery: &str,
        took: Duration,
        actions: impl IntoIterator<Item = &'a Action>,
    ) {
        self.apply_duration
            .get_or_create(&DeliveryLabels {
                delivery: delivery.to_owned(),
            })
            .observe(took.as_secs_f64());
        for a in actions {
            let action = match a {
                Action::Created => "created",
                Action::Configured => "configured",
                Action::Unchanged => "unchanged",
                Action::Failed => "failed",
            };
            self.apply_results
                .get_or_create(&ActionLabels {
                    action: action.to_owned(),
                })
                .inc();
        }
    }

    /// Records one drift event: `detected`, `corrected` or `failed`.
    pub fn drift(&self, event: &str) {
        self.drift_events
            .get_or_create(&DriftLabels {
                event: event.to_owned(),
            })
            .inc();
    }

    /// Every family in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`AgentMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics` for `reconciler`'s metrics.
pub fn router(reconciler: Reconciler) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let r = reconciler.clone();
            async move {
                let m = r.metrics();
                for (delivery, state) in r.deliveries() {
                    m.inventory_objects
                        .get_or_create(&DeliveryLabels { delivery })
                        .set(state.inventory as i64);
                }
                (
                    [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                    m.encode(),
                )
            }
        }),
    )
}

/// Binds `address` and serves `/metrics` until `stop`; returns the bound address.
pub async fn serve(
    address: SocketAddr,
    reconciler: Reconciler,
    stop: CancellationToken,
) -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| Error::Bind { address, source })?;
    let bound = listener.local_addr().unwrap_or(address);
    let app = router(reconciler);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_output_has_every_family_with_its_samples() {
        let m = AgentMetrics::new();
        m.applied(
            "web",
            Duration::from_millis(40),
            &[Action::Created, Action::Created, Action::Failed],
        );
        m.drift("detected");
        m.drift("corrected");
        m.inventory_objects
            .get_or_create(&DeliveryLabels {
                delivery: "web".into(),
            })
            .set(2);
        m.hub_connected.set(1);
        m.apply_queue_depth.inc();
        let text = m.encode();
        for family in [
            "# TYPE flotilla_agent_apply_results counter",
            "# TYPE flotilla_agent_apply_duration_seconds histogram",
            "# TYPE flotilla_agent_drift_events counter",
            "# TYPE flotilla_agent_inventory_objects gauge",
            "# TYPE flotilla_agent_hub_connected gauge",
            "# TYPE flotilla_agent_apply_queue_depth gauge",
        ] {
            assert!(text.contains(family), "{family} missing from:\n{text}");
        }
        assert!(text.contains("flotilla_agent_apply_results_total{action=\"created\"} 2"));
        assert!(text.contains("flotilla_agent_apply_results_total{action=\"failed\"} 1"));
        assert!(text.contains("flotilla_agent_drift_events_total{event=\"corrected\"} 1"));
        assert!(text.contains("flotilla_agent_inventory_objects{delivery=\"web\"} 2"));
        assert!(text.contains("flotilla_agent_apply_duration_seconds_count{delivery=\"web\"} 1"));
        assert!(text.contains("flotilla_agent_hub_connected 1"));
        assert!(text.contains("flotilla_agent_apply_queue_depth 1"));
    }
}
