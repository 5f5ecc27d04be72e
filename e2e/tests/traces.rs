//! Traces: a real hub and a real agent export spans over OTLP/gRPC to an in-process receiver,
//! and one revision's fetch, renders, publishes and sends on the hub and its apply on the agent
//! form one trace, the agent's apply a child of the hub span that sent the bundle.
//!
//! Runs with FLOTILLA_E2E=1.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use flotilla_e2e::fleet::{Fleet, WorkloadSpec};
use flotilla_e2e::{eventually, skip_unless_e2e};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

const WAIT: Duration = Duration::from_secs(120);

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
    error: bool,
}

/// An OTLP TraceService that keeps every span it is sent.
#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().expect("not poisoned");
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                out.push(Received {
                    service: service.clone(),
                    attributes: span
                        .attributes
                        .iter()
                        .filter_map(|kv| {
                            Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?)?))
                        })
                        .collect(),
                    error: span
                        .status
                        .is_some_and(|s| s.code == StatusCode::Error as i32),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(v: &AnyValue) -> Option<String> {
    Some(match v {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        _ => return None,
    })
}

/// Starts the receiver on 127.0.0.1; returns its `http://` endpoint.
async fn start_receiver(receiver: Receiver) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_and_agent_spans_of_a_revision_share_one_trace() -> Result<()> {
    if skip_unless_e2e() {
        return Ok(());
    }
    let receiver = Receiver::default();
    let endpoint = start_receiver(receiver.clone()).await?;
    let mut workload = WorkloadSpec::example("workload-1", "eu");
    workload.agent_args = vec!["--otlp-endpoint".into(), endpoint.clone()];
    let fleet = Fleet::start("traces", &[workload], &["--otlp-endpoint", &endpoint]).await?;
    fleet.apply_example(|_| {}).await?;
    let head = fleet.repo.head()?;
    fleet
        .wait_ready_at("fleet", "infrastructure", &head, WAIT)
        .await?;
    fleet.wait_ready_at("fleet", "apps", &head, WAIT).await?;

    // The hub's fetch of the commit starts the trace; spans are exported in batches, so wait
    // until every step of it has arrived.
    let is_head = |s: &Received| {
        s.attributes
            .get("revision")
            .is_some_and(|r| r.contains(&head))
    };
    let (trace, spans) = eventually("fetch, render, publish, send and apply spans", WAIT, || {
        let spans = receiver.spans.lock().expect("not poisoned").clone();
        async move {
            let fetch = spans
                .iter()
                .find(|s| s.service == "flotilla-hub" && s.name == "fetch" && is_head(s))?;
            let trace: Vec<Received> = spans
                .iter()
                .filter(|s| s.trace_id == fetch.trace_id)
                .cloned()
                .collect();
            let has = |service: &str, name: &str, delivery: &str| {
                trace.iter().any(|s| {
                    s.service == service
                        && s.name == name
                        && s.attributes
                            .get("delivery")
                            .is_some_and(|d| d.ends_with(delivery))
                })
            };
            ["infrastructure", "apps"]
                .iter()
                .all(|d| {
                    has("flotilla-hub", "render", d)
                        && has("flotilla-hub", "publish", d)
                        && has("flotilla-hub", "send", d)
                        && has("flotilla-agent", "apply", d)
                })
                .then(|| (fetch.trace_id.clone(), trace))
        }
    })
    .await
    .with_context(|| {
        let spans = receiver.spans.lock().expect("not poisoned");
        format!(
            "received {} spans: {:?}",
            spans.len(),
            spans
                .iter()
                .map(|s| format!("{}/{} {:?}", s.service, s.name, s.attributes))
                .collect::<Vec<_>>()
        )
    })?;

    let hub_spans: HashMap<&[u8], &Received> = spans
        .iter()
        .filter(|s| s.service == "flotilla-hub")
        .map(|s| (s.span_id.as_slice(), s))
        .collect();
    for apply in spans
        .iter()
        .filter(|s| s.service == "flotilla-agent" && s.name == "apply")
    {
        assert_eq!(apply.trace_id, trace);
        let parent = hub_spans
            .get(apply.parent_span_id.as_slice())
            .with_context(|| format!("the parent of the agent's apply {apply:?} is no hub span"))?;
        assert_eq!(parent.name, "send", "{parent:?}");
        assert_eq!(
            parent.attributes.get("cluster").map(String::as_str),
            Some("workload-1")
        );
        assert_eq!(
            apply.attributes.get("cluster").map(String::as_str),
            Some("workload-1")
        );
        assert!(is_head(apply), "{apply:?}");
        assert_eq!(
            apply.attributes.get("outcome").map(String::as_str),
            Some("applied")
        );
        assert!(!apply.error, "{apply:?}");
        let objects: usize = apply.attributes["objects"].parse()?;
        assert!(objects > 0, "{apply:?}");
        assert!(apply.attributes.contains_key("sequence"), "{apply:?}");
    }
    // Each hub step hangs off the one before (send ← publish ← render ← fetch) and names the
    // cluster and the revision.
    for (name, want) in [
        ("render", "fetch"),
        ("publish", "render"),
        ("send", "publish"),
    ] {
        for s in spans
            .iter()
            .filter(|s| s.service == "flotilla-hub" && s.name == name)
        {
            let parent = hub_spans
                .get(s.parent_span_id.as_slice())
                .with_context(|| format!("{s:?} has no hub parent"))?;
            assert_eq!(parent.name, want, "{s:?}");
            assert_eq!(
                s.attributes.get("cluster").map(String::as_str),
                Some("workload-1")
            );
            assert!(is_head(s), "{s:?}");
        }
    }
    Ok(())
}
