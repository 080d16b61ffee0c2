//! What an exchange's record also tells the telemetry when it closes: the request metrics, and
//! the attributes of its span. From the same fields as the audit line, so the three never
//! disagree; never a header value or a token.

use opentelemetry::KeyValue;
use opentelemetry::trace::{Status, TraceContextExt};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::Fields;
use crate::telemetry::metrics::{self, Outcome};

/// One closed exchange.
pub(super) struct Closed<'a> {
    pub fields: &'a Fields,
    pub component: &'static str,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub seconds: f64,
    /// Whether the span may carry the caller's username.
    pub user_in_span: bool,
}

/// Records `closed` in the metrics and on `span` (a no-op without a trace exporter).
pub(super) fn record(closed: &Closed<'_>, span: Option<&tracing::Span>) {
    let f = closed.fields;
    metrics::metrics().end(Outcome {
        cluster: f.cluster.as_deref().filter(|_| f.known_cluster),
        verb: &f.verb,
        status: f.status,
        long_running: f.long_running,
        seconds: closed.seconds,
        bytes_in: closed.bytes_in,
        bytes_out: closed.bytes_out,
    });
    let Some(span) = span else {
        return;
    };
    // An unsampled span (or none: no trace exporter) records nothing: spare the per-request work.
    let context = span.context();
    if !context.span().is_recording() {
        return;
    }
    // A span name from a fixed set: a caller's made-up method is `other`.
    let verb = if f.verb.is_empty() {
        "request"
    } else {
        metrics::bounded_verb(&f.verb)
    };
    // On the started OpenTelemetry span itself: the bridge renames a span from its `otel.name`
    // field only before it is first entered.
    context.span().update_name(format!("{} {verb}", closed.component));
    let mut attributes = vec![
        KeyValue::new("http.request.method", f.method.clone()),
        KeyValue::new("url.path", f.path.clone()),
        KeyValue::new("hawser.verb", f.verb.clone()),
        KeyValue::new("http.request.body.size", closed.bytes_in as i64),
        KeyValue::new("http.response.body.size", closed.bytes_out as i64),
        KeyValue::new("hawser.long_running", f.long_running),
    ];
    if let Some(cluster) = &f.cluster {
        attributes.push(KeyValue::new(metrics::CLUSTER, cluster.clone()));
    }
    if !f.resource.is_empty() {
        attributes.push(KeyValue::new("hawser.resource", f.resource.clone()));
    }
    if let Some(namespace) = &f.namespace {
        attributes.push(KeyValue::new("k8s.namespace.name", namespace.clone()));
    }
    if let Some(status) = f.status {
        attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
        if status >= 500 {
            span.set_status(Status::error(format!("HTTP {status}")));
        }
    }
    if let Some(via) = &f.via {
        attributes.push(KeyValue::new("hawser.via", via.clone()));
    }
    if closed.user_in_span
        && let Some(user) = &f.caller
    {
        attributes.push(KeyValue::new("enduser.id", user.clone()));
    }
    for attribute in attributes {
        span.set_attribute(attribute.key, attribute.value);
    }
}
