//! The hub's Prometheus metrics, served at `/metrics` on the HTTP listener.
//!
//! One [`HubMetrics`] per [`Hub`](crate::delivery::Hub): its own registry (no global state) and
//! the handles the controller and the delivery side count with. Labels stay bounded: deliveries
//! and controller kinds, never clusters × deliveries (see docs/metrics.md for every family).

use std::fmt;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Labels of a per-controller series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// Which controller: `sources`, `helm` or `deliveries`.
    pub controller: String,
}

/// Labels of a per-delivery series: `namespace/name` (a `HelmRelease`: `HelmRelease namespace/name`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The delivery's key.
    pub delivery: String,
}

/// Labels of an agent's acknowledgement.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AckLabels {
    /// The delivery's name on the wire.
    pub delivery: String,
    /// `applied`, `failed` or `rejected`.
    pub outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The hub's metric handles and the registry that encodes them.
#[derive(Clone)]
pub struct HubMetrics {
    registry: std::sync::Arc<Registry>,
    /// Duration of one reconcile pass of a controller.
    pub reconcile_duration: HistogramFamily<ControllerLabels>,
    /// Duration of one render of a delivery for one cluster.
    pub render_duration: HistogramFamily<DeliveryLabels>,
    /// Size of each published bundle's payload.
    pub bundle_size: Histogram,
    /// Agents connected now (set when scraped).
    pub connected_agents: Gauge,
    /// Bundles published, per delivery.
    pub bundles_published: Family<DeliveryLabels, Counter>,
    /// Acknowledgements received from agents, per delivery and outcome.
    pub acks: Family<AckLabels, Counter>,
    /// Bundles queued for connected agents and not yet being sent, summed over agents (set
    /// when scraped).
    pub agent_queue_depth: Gauge,
    /// The deepest single agent queue (set when scraped).
    pub agent_queue_depth_max: Gauge,
    /// Work a controller holds after its last pass, per controller.
    pub controller_queue_depth: Family<ControllerLabels, Gauge>,
}

impl fmt::Debug for HubMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubMetrics").finish_non_exhaustive()
    }
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HubMetrics {
    /// A fresh registry with every hub family registered under `flotilla_hub_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flotilla_hub");
        let reconcile_duration =
            HistogramFamily::<ControllerLabels>::new_with_constructor(duration_histogram as _);
        registry.register_with_unit(
            "reconcile_duration",
            "Duration of one reconcile pass, per controller",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let render_duration =
            HistogramFamily::<DeliveryLabels>::new_with_constructor(duration_histogram as _);
        registry.register_with_unit(
            "render_duration",
            "Duration of rendering a delivery for one cluster",
            Unit::Seconds,
            render_duration.clone(),
        );
        // 1 KiB … 64 MiB.
        let bundle_size = Histogram::new(exponential_buckets(1024.0, 4.0, 9));
        registry.register_with_unit(
            "bundle_size",
            "Size of each published bundle's payload",
            Unit::Bytes,
            bundle_size.clone(),
        );
        let connected_agents = Gauge::default();
        registry.register(
            "connected_agents",
            "Agents connected to this hub now",
            connected_agents.clone(),
        );
        let bundles_published = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "bundles_published",
            "Bundles published, per delivery",
            bundles_published.clone(),
        );
        let acks = Family::<AckLabels, Counter>::default();
        registry.register(
            "acks",
            "Acknowledgements received from agents, per delivery and outcome",
            acks.clone(),
        );
        let agent_queue_depth = Gauge::default();
        registry.register(
            "agent_queue_depth",
            "Bundles queued for connected agents and not yet being sent, summed over agents",
            agent_queue_depth.clone(),
        );
        let agent_queue_depth_max = Gauge::default();
        registry.register(
            "agent_queue_depth_max",
            "Bundles queued for the agent with the deepest queue",
            agent_queue_depth_max.clone(),
        );
        let controller_queue_depth = Family::<ControllerLabels, Gauge>::default();
        registry.register(
            "controller_queue_depth",
            "Work a controller holds after its last pass: renders waiting to be published \
             (deliveries), chart index reads and downloads under way (helm)",
            controller_queue_depth.clone(),
        );
        Self {
            registry: std::sync::Arc::new(registry),
            reconcile_duration,
            render_duration,
            bundle_size,
            connected_agents,
            bundles_published,
            acks,
            agent_queue_depth,
            agent_queue_depth_max,
            controller_queue_depth,
        }
    }

    /// Sets the work `controller` holds after a pass.
    pub fn set_controller_queue(&self, controller: &str, depth: usize) {
        self.controller_queue_depth
            .get_or_create(&ControllerLabels {
                controller: controller.to_owned(),
            })
            .set(depth as i64);
    }

    /// Records one reconcile pass of `controller`.
    pub fn observe_reconcile(&self, controller: &str, took: Duration) {
        self.reconcile_duration
            .get_or_create(&ControllerLabels {
                controller: controller.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records one render of `delivery`.
    pub fn observe_render(&self, delivery: &str, took: Duration) {
        self.render_duration
            .get_or_create(&DeliveryLabels {
                delivery: delivery.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records one published bundle.
    pub fn published(&self, delivery: &str, payload_bytes: usize) {
        self.bundles_published
            .get_or_create(&DeliveryLabels {
                delivery: delivery.to_owned(),
            })
            .inc();
        self.bundle_size.observe(payload_bytes as f64);
    }

    /// Records one acknowledgement.
    pub fn acked(&self, delivery: &str, outcome: &str) {
        self.acks
            .get_or_create(&AckLabels {
                delivery: delivery.to_owned(),
                outcome: outcome.to_owned(),
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

/// The content type of [`HubMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics` on the hub's HTTP listener.
pub fn router(hub: crate::delivery::Hub) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let hub = hub.clone();
            async move {
                let m = hub.metrics();
                m.connected_agents.set(hub.connected_count() as i64);
                // Read here, not counted on the publish path: the fan-out pays nothing.
                let (total, max) = hub.agent_queue_depths();
                m.agent_queue_depth.set(total as i64);
                m.agent_queue_depth_max.set(max as i64);
                ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], m.encode())
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_output_has_every_family_with_its_samples() {
        let m = HubMetrics::new();
        m.observe_reconcile("deliveries", Duration::from_millis(12));
        m.observe_render("apps/web", Duration::from_millis(3));
        m.published("web", 2048);
        m.acked("web", "applied");
        m.acked("web", "applied");
        m.connected_agents.set(2);
        m.agent_queue_depth.set(3);
        m.agent_queue_depth_max.set(2);
        m.set_controller_queue("deliveries", 4);
        let text = m.encode();
        for family in [
            "# TYPE flotilla_hub_reconcile_duration_seconds histogram",
            "# TYPE flotilla_hub_render_duration_seconds histogram",
            "# TYPE flotilla_hub_bundle_size_bytes histogram",
            "# TYPE flotilla_hub_connected_agents gauge",
            "# TYPE flotilla_hub_bundles_published counter",
            "# TYPE flotilla_hub_acks counter",
            "# TYPE flotilla_hub_agent_queue_depth gauge",
            "# TYPE flotilla_hub_agent_queue_depth_max gauge",
            "# TYPE flotilla_hub_controller_queue_depth gauge",
        ] {
            assert!(text.contains(family), "{family} missing from:\n{text}");
        }
        assert!(text.contains("flotilla_hub_acks_total{delivery=\"web\",outcome=\"applied\"} 2"));
        assert!(text.contains("flotilla_hub_connected_agents 2"));
        assert!(text.contains("flotilla_hub_agent_queue_depth 3"));
        assert!(text.contains("flotilla_hub_agent_queue_depth_max 2"));
        assert!(text.contains("flotilla_hub_controller_queue_depth{controller=\"deliveries\"} 4"));
        assert!(text.contains(
            "flotilla_hub_reconcile_duration_seconds_count{controller=\"deliveries\"} 1"
        ));
        assert!(text.contains("flotilla_hub_bundle_size_bytes_sum 2048.0"));
        assert!(text.ends_with("# EOF\n"));
    }
}
