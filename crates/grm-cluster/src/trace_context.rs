//! W3C trace context across the cluster's gRPC calls: a caller puts its span's context in the
//! request metadata (`traceparent`, `tracestate`), the callee makes its span a child of it, so
//! one request is one trace across router, workers and aggregators. Without an exporter (no
//! OTEL_* configuration) the global propagator is a no-op and nothing is sent.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Inject<'a>(&'a mut MetadataMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct Extract<'a>(&'a MetadataMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Puts `span`'s trace context into an outgoing call's metadata.
pub fn inject(span: &Span, meta: &mut MetadataMap) {
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Inject(meta)));
}

/// Makes `span` (an incoming call's) a child of the caller's span, when the call carries one,
/// and records the trace id in its `trace_id` field for the logs.
pub fn continue_from(meta: &MetadataMap, span: Span) -> Span {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Extract(meta)));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
    record_trace_id(&span);
    span
}

/// Records the span's trace id (when traces are on) in its `trace_id` field.
/// The trace id of `span`, when it is traced.
pub fn trace_id(span: &Span) -> Option<String> {
    let id = span.context().span().span_context().trace_id();
    (id != opentelemetry::trace::TraceId::INVALID).then(|| id.to_string())
}

pub fn record_trace_id(span: &Span) {
    let id = span.context().span().span_context().trace_id();
    if id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(id));
    }
}
