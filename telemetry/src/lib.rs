//! Logging and tracing set-up shared by every flotilla binary.
//!
//! Each binary flattens [`LogArgs`] into its clap arguments and calls [`LogArgs::init`] once at
//! start-up, so `--log-level`/`FLOTILLA_LOG` and `--log-format`/`FLOTILLA_LOG_FORMAT` mean the
//! same thing everywhere. Logs go to stderr; stdout is left to command output.
//!
//! The hub and the agent also flatten [`OtlpArgs`] and call [`LogArgs::init_with_traces`]: with
//! an OTLP endpoint configured, spans are exported over OTLP/gRPC; without one nothing is
//! exported and [`traces_enabled`] is `false`, which the hot paths check before building spans
//! or trace contexts (see [`span!`](crate::span)).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, ValueEnum};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::{EnvFilter, Layer as _, fmt, prelude::*};

/// Set once an OTLP exporter is installed; read on hot paths.
static TRACES: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint is configured). When `false`, the flotilla
/// spans are not created at all and no trace context is carried in bundles.
#[inline]
pub fn traces_enabled() -> bool {
    TRACES.load(Ordering::Relaxed)
}

/// An `INFO` span when traces are exported, [`tracing::Span::none`] otherwise: the per-bundle
/// spans cost nothing (no allocation, no subscriber call) in a hub or agent without an OTLP
/// endpoint. Same syntax as [`tracing::info_span!`].
#[macro_export]
macro_rules! span {
    ($($tt:tt)*) => {
        if $crate::traces_enabled() {
            ::tracing::info_span!($($tt)*)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// The W3C `traceparent` of `span` (`00-<trace id>-<span id>-<flags>`), to carry to another
/// process; `None` when traces are off or the span is not sampled.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !traces_enabled() || span.is_none() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() || !sc.is_sampled() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote span named by a W3C `traceparent` (from
/// [`traceparent`]). Does nothing when traces are off, the span is disabled, or `traceparent`
/// is empty or malformed: a trace context is diagnostic and never fails the work it describes.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if !traces_enabled() || span.is_none() || traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        // Fails only for a span already started elsewhere; then it keeps its own parent.
        let _ = span.set_parent(cx);
    }
}

/// Trace export options of the hub and the agent.
#[derive(Debug, Clone, Default, Args)]
pub struct OtlpArgs {
    /// OTLP/gRPC endpoint to export traces to (e.g. `http://otel-collector:4317`). Unset: no
    /// traces are exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
}

/// Keeps the trace exporter running; dropping it flushes the spans not yet sent and stops it.
#[derive(Debug, Default)]
#[must_use = "dropping the guard stops the trace exporter"]
pub struct TraceGuard {
    provider: Option<SdkTracerProvider>,
}

impl TraceGuard {
    /// Sends the spans still queued and stops the exporter.
    pub fn shutdown(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        TRACES.store(false, Ordering::Relaxed);
        let flush = move || {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "flushing traces on shutdown");
            }
        };
        // The gRPC exporter runs on the Tokio runtime: do not block a runtime worker on it.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(flush)
            }
            _ => flush(),
        }
    }
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging options common to all flotilla binaries.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter: a level (`info`, `debug`, ...) or a tracing directive list such as
    /// `flotilla_hub=debug,kube=info`.
    #[arg(long, env = "FLOTILLA_LOG", default_value = "info", global = true)]
    pub log_level: String,

    /// Log line format.
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global tracing subscriber. Call once, before any work starts.
    pub fn init(&self) -> anyhow::Result<()> {
        let filter = EnvFilter::try_new(&self.log_level)
            .map_err(|e| anyhow::anyhow!("invalid --log-level {:?}: {e}", self.log_level))?;
        let registry = tracing_subscriber::registry().with(filter);
        let result = match self.log_format {
            LogFormat::Text => registry
                .with(fmt::layer().with_writer(std::io::stderr))
                .try_init(),
            LogFormat::Json => registry
                .with(fmt::layer().json().with_writer(std::io::stderr))
                .try_init(),
        };
        result.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
    }

    /// [`LogArgs::init`], plus span export over OTLP/gRPC when `otlp` names an endpoint, as
    /// `service` (the OpenTelemetry `service.name`). Call from within the Tokio runtime; keep
    /// the guard until the process ends. Flotilla's spans are exported whatever the log level.
    pub fn init_with_traces(
        &self,
        otlp: &OtlpArgs,
        service: &'static str,
    ) -> anyhow::Result<TraceGuard> {
        let Some(endpoint) = otlp.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
            self.init()?;
            return Ok(TraceGuard::default());
        };
        let filter = EnvFilter::try_new(&self.log_level)
            .map_err(|e| anyhow::anyhow!("invalid --log-level {:?}: {e}", self.log_level))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| anyhow::anyhow!("OTLP exporter for --otlp-endpoint {endpoint:?}: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service)
                    .build(),
            )
            .build();
        let tracer = provider.tracer(service);
        let spans = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(Targets::new().with_target("flotilla", tracing::Level::INFO));
        let registry = tracing_subscriber::registry().with(spans);
        let result = match self.log_format {
            LogFormat::Text => registry
                .with(
                    fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_filter(filter),
                )
                .try_init(),
            LogFormat::Json => registry
                .with(
                    fmt::layer()
                        .json()
                        .with_writer(std::io::stderr)
                        .with_filter(filter),
                )
                .try_init(),
        };
        result.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
        TRACES.store(true, Ordering::Relaxed);
        tracing::info!(endpoint, service, "exporting traces over OTLP/gRPC");
        Ok(TraceGuard {
            provider: Some(provider),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporter_no_span_is_made_and_no_context_carried() {
        assert!(!traces_enabled());
        let span = crate::span!("publish", cluster = "c");
        assert!(span.is_none());
        assert_eq!(traceparent(&tracing::info_span!("x")), None);
        // A context from elsewhere is ignored, malformed or not.
        set_parent(
            &span,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        set_parent(&span, "garbage");
    }

    #[test]
    fn rejects_an_invalid_filter_with_its_text() {
        let args = LogArgs {
            log_level: "flotilla=notalevel".into(),
            log_format: LogFormat::Text,
        };
        let err = args.init().unwrap_err().to_string();
        assert!(err.contains("flotilla=notalevel"), "{err}");
    }
}
