//! W3C trace context across the hops: a caller's `traceparent` is continued at the relay, the
//! relay's span rides the tunnel's request head, the agent's span is passed on to kube-apiserver.
//! Without a trace exporter no span has an OpenTelemetry context, and a caller's `traceparent` is
//! passed on unchanged instead.

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header that carries trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Makes `span` (not yet entered) a child of the context a caller's `traceparent` names, else
/// the root of a trace of its own.
pub fn continue_from_headers(span: &Span, headers: &HeaderMap) {
    let traceparent = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok());
    continue_from(span, traceparent.unwrap_or_default());
}

/// Makes `span` (not yet entered) a child of the context `traceparent` names if it is valid,
/// else the root of a trace of its own: never a child of the long-lived connection or tunnel
/// span it runs in, whose trace would end only with the connection.
pub fn continue_from(span: &Span, traceparent: &str) {
    let parent = if parse(traceparent).is_some() {
        let carrier = std::collections::HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
        TraceContextPropagator::new().extract(&carrier)
    } else {
        opentelemetry::Context::new()
    };
    // Fails only for a span already entered: the callers make a span and continue it at once.
    let _ = span.set_parent(parent);
}

/// `span`'s own context as a `traceparent`, if it has one (traces are exported); else
/// `fallback` when that is a valid `traceparent` (passed on unchanged).
pub fn traceparent(span: &Span, fallback: Option<&str>) -> Option<String> {
    let context = span.context();
    let own = context.span().span_context().clone();
    if own.is_valid() {
        return Some(format!(
            "00-{}-{}-{:02x}",
            own.trace_id(),
            own.span_id(),
            own.trace_flags().to_u8()
        ));
    }
    fallback.filter(|f| parse(f).is_some()).map(str::to_owned)
}

/// The trace context a relay sent with a stream: the head's own field, or (from a relay of an
/// earlier version, which left it empty) the caller's `traceparent` among its headers.
pub fn of_head(head: &crate::wire::RequestHead) -> &str {
    if head.traceparent.is_empty() {
        head.headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    } else {
        &head.traceparent
    }
}

/// The trace id, parent id and flags of a version-00 `traceparent`, checked as the W3C
/// recommendation says: lower-case hex of the right lengths, ids not all zero.
fn parse(traceparent: &str) -> Option<(&str, &str, &str)> {
    let mut parts = traceparent.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    (version == "00"
        && parts.next().is_none()
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && !zero(trace)
        && !zero(parent))
    .then_some((trace, parent, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_traceparent_is_passed_on() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(parse(good).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1\n",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
        // No subscriber with OpenTelemetry here: the span has no context of its own.
        let span = tracing::info_span!("test");
        assert_eq!(traceparent(&span, Some(good)).as_deref(), Some(good));
        assert_eq!(traceparent(&span, Some("00-zz")), None);
        assert_eq!(traceparent(&span, None), None);
    }
}
