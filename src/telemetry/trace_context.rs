//! W3C trace context across the hops: a caller's `traceparent` is continued at the relay, the
//! relay's span rides the tunnel's request head, the agent's span is passed on to kube-apiserver.
//! Without a trace exporter no span has an OpenTelemetry context, and a caller's `traceparent` is
//! passed on unchanged instead.
//!
//! Whether a request is sampled is decided here, once, where its trace enters the process
//! ([`Sampled::decide`]), before its span is made: only a sampled request's spans are made for
//! the exporter ([`request_span!`]). The OpenTelemetry bridge costs on every span it sees, sampled
//! or not, and 99 % of requests are not (the default ratio); deciding in the SDK's sampler, when
//! the span is already built, made tracing at 1 % cost as much as tracing everything.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header that carries trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The target of the spans the trace exporter sees: a sampled request's.
pub const TRACED: &str = "hawser::traced";

/// Makes a request's span: `tracing::info_span!` with its name and fields, for the trace exporter
/// too when the first argument (a [`Sampled`]) says so. Two call sites, the exported one with the
/// target [`TRACED`]: the exporter's filter tells them apart by their metadata alone.
macro_rules! request_span {
    ($sampled:expr, $name:literal, $($fields:tt)*) => {
        if $sampled.exported() {
            tracing::info_span!(target: $crate::telemetry::trace_context::TRACED, $name, $($fields)*)
        } else {
            tracing::info_span!($name, $($fields)*)
        }
    };
}
pub(crate) use request_span;

/// The sampling ratio of traces started here, as `f64` bits; negative: no trace exporter.
static RATIO: AtomicU64 = AtomicU64::new(0xBFF0_0000_0000_0000); // -1.0

/// Sets the ratio of traces started here that are sampled; `None`: traces are not exported.
pub fn set_sampling(ratio: Option<f64>) {
    RATIO.store(ratio.unwrap_or(-1.0).to_bits(), Ordering::Relaxed);
}

/// Whether a request is sampled, decided where its trace enters this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sampled {
    /// Its spans are exported; what goes on is its own span's context.
    Yes,
    /// Not exported; what goes on is this `traceparent` (the caller's, or one that tells the
    /// next hops not to sample), if any.
    No(Option<String>),
}

impl Sampled {
    /// Parent-based: a valid incoming `traceparent` decides by its sampled flag; without one, the
    /// configured ratio does. An unsampled trace started here still passes a `traceparent` on
    /// (flags `00`), or the agent and kube-apiserver would each sample it again by their own ratio.
    pub fn decide(incoming: &str) -> Self {
        let ratio = f64::from_bits(RATIO.load(Ordering::Relaxed));
        let valid = parse(incoming).map(|(_, _, flags)| (incoming, flags));
        match valid {
            _ if ratio < 0.0 => Self::No(valid.map(|(t, _)| t.to_owned())),
            Some((_, flags)) if u8::from_str_radix(flags, 16).is_ok_and(|f| f & 1 == 1) => Self::Yes,
            Some((traceparent, _)) => Self::No(Some(traceparent.to_owned())),
            None if ratio > 0.0 && rand::random::<f64>() < ratio => Self::Yes,
            None => Self::No(Some(unsampled())),
        }
    }

    /// Whether the request's spans are exported.
    pub fn exported(&self) -> bool {
        matches!(self, Self::Yes)
    }

    /// The `traceparent` to pass on from `span`, the request's current span.
    pub fn passed_on(&self, span: &Span) -> Option<String> {
        match self {
            Self::Yes => traceparent(span),
            Self::No(traceparent) => traceparent.clone(),
        }
    }
}

/// A new trace's `traceparent` with the sampled flag clear.
fn unsampled() -> String {
    // Random ids, never all zero (invalid).
    let trace = rand::random::<u128>().max(1);
    let span = rand::random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-00")
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

/// `span`'s own context as a `traceparent`, if it has one (it is exported).
fn traceparent(span: &Span) -> Option<String> {
    let context = span.context();
    let own = context.span().span_context().clone();
    own.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            own.trace_id(),
            own.span_id(),
            own.trace_flags().to_u8()
        )
    })
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
    }

    #[test]
    fn sampling_follows_the_callers_flag_else_the_ratio_and_an_unsampled_trace_says_so_downstream() {
        let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        // One test touches the process-wide ratio, in order.
        set_sampling(None);
        assert_eq!(
            Sampled::decide(sampled),
            Sampled::No(Some(sampled.into())),
            "no exporter: passed on unchanged"
        );
        assert_eq!(Sampled::decide("00-zz"), Sampled::No(None));
        set_sampling(Some(0.0));
        assert_eq!(
            Sampled::decide(sampled),
            Sampled::Yes,
            "the caller's flag wins over the ratio"
        );
        assert_eq!(Sampled::decide(unsampled), Sampled::No(Some(unsampled.into())));
        let Sampled::No(Some(fresh)) = Sampled::decide("garbage") else {
            panic!("an unsampled trace started here is passed on");
        };
        let (_, _, flags) = parse(&fresh).expect("a valid traceparent");
        assert_eq!(flags, "00");
        assert_ne!(Sampled::decide(""), Sampled::No(Some(fresh)), "each trace its own id");
        set_sampling(Some(1.0));
        assert_eq!(Sampled::decide(""), Sampled::Yes);
        assert_eq!(
            Sampled::decide(unsampled),
            Sampled::No(Some(unsampled.into())),
            "parent-based"
        );
        set_sampling(None);
        // No subscriber with OpenTelemetry here: a span has no context of its own.
        assert_eq!(Sampled::Yes.passed_on(&tracing::info_span!("test")), None);
    }
}
