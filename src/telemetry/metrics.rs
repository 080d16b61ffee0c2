//! The instruments relay and agent record into: OpenTelemetry metrics, named after the semantic
//! conventions where one fits (`http.server.*`, `network.*`), `hawser.*` otherwise. They are read
//! by OTLP and by Prometheus (`/metrics`), which renders `http.server.request.duration` as
//! `http_server_request_duration_seconds` and a counter `hawser.requests` as
//! `hawser_requests_total`. Every attribute value comes from a bounded set: a configured
//! cluster's name (never one a caller made up), a verb, a status code, a reason of the code's own.

use std::sync::{Arc, OnceLock};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableCounter, ObservableUpDownCounter, UpDownCounter};

use super::tally::{Series, Tally};

/// The values of a metric attribute that is a fixed set: a counter over it can show every value
/// at 0 from the start ([`start_at_zero`]), so `rate()` sees its first event.
pub trait Values: Copy + 'static {
    /// The attribute's key.
    const KEY: &'static str;
    /// Every value.
    const ALL: &'static [Self];
    /// The value as exported.
    fn as_str(self) -> &'static str;
    /// The attribute.
    fn attribute(self) -> KeyValue {
        KeyValue::new(Self::KEY, self.as_str())
    }
}

/// Defines an enum of an attribute's fixed values and its [`Values`]: `ALL` is written from the
/// same list as the variants, so no value can be left out of it.
macro_rules! attribute_values {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $key:literal {
            $($(#[$vmeta:meta])* $variant:ident = $value:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $crate::telemetry::metrics::Values for $name {
            const KEY: &'static str = $key;
            const ALL: &'static [Self] = &[$(Self::$variant),+];
            fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value,)+
                }
            }
        }
    };
}
pub(crate) use attribute_values;

/// The buckets of request durations, in seconds: 1 ms to 1 minute.
const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// The attribute of a cluster's name; `"(unknown)"` for a name no configured cluster has.
pub const CLUSTER: &str = "hawser.cluster";
/// The cluster attribute's value for a name the relay does not know.
pub const UNKNOWN_CLUSTER: &str = "(unknown)";

/// Every instrument of the process.
pub struct Metrics {
    /// Requests (by cluster, verb, status code and whether long-running) and body bytes (by
    /// cluster and direction), read at each collection as `hawser.requests` and `hawser.io`.
    tally: Arc<Tally>,
    _requests: ObservableCounter<u64>,
    _io: ObservableCounter<u64>,
    /// Durations of requests that are not long-running (watches, followed logs and upgrades are
    /// counted in `requests` only: their length is the caller's choice, not latency).
    pub duration: Histogram<f64>,
    /// Requests in flight, long-running ones included.
    pub active: UpDownCounter<i64>,
    /// Requests the relay answered itself, by reason.
    pub refusals: Counter<u64>,
    /// An agent's tunnel attempts after the first, by cause.
    pub reconnects: Counter<u64>,
    /// Requests forwarded to a peer relay, by result.
    pub forwards: Counter<u64>,
    /// Configuration reloads, by result.
    pub reloads: Counter<u64>,
}

impl Metrics {
    fn new(meter: &Meter) -> Self {
        let tally = Arc::new(Tally::default());
        let requests = tally.clone();
        let io = tally.clone();
        Self {
            tally,
            _requests: meter
                .u64_observable_counter("hawser.requests")
                .with_description("Requests, by cluster, verb, status code and whether long-running")
                .with_unit("{request}")
                .with_callback(move |observer| requests.requests(|n, attributes| observer.observe(n, attributes)))
                .build(),
            _io: meter
                .u64_observable_counter("hawser.io")
                .with_description("Body bytes, by cluster and direction (receive: from the caller)")
                .with_unit("By")
                .with_callback(move |observer| io.io(|n, attributes| observer.observe(n, attributes)))
                .build(),
            duration: meter
                .f64_histogram("http.server.request.duration")
                .with_description("Duration of requests that are not long-running (no watch, followed log or upgrade)")
                .with_unit("s")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            active: meter
                .i64_up_down_counter("http.server.active_requests")
                .with_description("Requests in flight, watches, followed logs and upgrades included")
                .with_unit("{request}")
                .build(),
            refusals: meter
                .u64_counter("hawser.refusals")
                .with_description(
                    "Requests the relay answered itself (authentication, access, limits, routing), by reason",
                )
                .with_unit("{request}")
                .build(),
            reconnects: meter
                .u64_counter("hawser.agent.reconnects")
                .with_description("Tunnel attempts after a tunnel ended or an attempt failed, by cause")
                .with_unit("{attempt}")
                .build(),
            forwards: meter
                .u64_counter("hawser.peer.forwards")
                .with_description("Requests forwarded to a peer relay of the fleet, by result")
                .with_unit("{request}")
                .build(),
            reloads: meter
                .u64_counter("hawser.config.reloads")
                .with_description("Configuration reloads (SIGHUP or a changed file), by result")
                .with_unit("{reload}")
                .build(),
        }
    }
}

/// The process's instruments. Made on first use from the global meter provider, so telemetry
/// must be started before anything records (`Otel::start` comes first in both commands); in
/// tests without it they record nowhere.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new(&meter()))
}

/// The meter of observable instruments registered by their owners (handshake counts, the
/// registry's health, the audit queue).
pub fn meter() -> Meter {
    opentelemetry::global::meter("hawser")
}

/// Observes `count` as `hawser.tunnels` (agent tunnels up, by cluster and transport) at each
/// collection; the handle keeps the callback registered.
pub fn observe_tunnels(
    count: impl Fn() -> Vec<(String, &'static str, i64)> + Send + Sync + 'static,
) -> ObservableUpDownCounter<i64> {
    meter()
        .i64_observable_up_down_counter("hawser.tunnels")
        .with_description("Agent tunnels up, by cluster and transport")
        .with_unit("{tunnel}")
        .with_callback(move |observer| {
            for (cluster, transport, n) in count() {
                observer.observe(
                    n,
                    &[
                        KeyValue::new(CLUSTER, cluster),
                        KeyValue::new("network.transport", transport),
                    ],
                );
            }
        })
        .build()
}

/// One request's outcome, recorded when its exchange is over.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// A configured cluster, or `None`.
    pub cluster: Option<&'a str>,
    /// The Kubernetes verb (empty for a path the apiserver would not decode).
    pub verb: &'a str,
    /// The response status, if one was given.
    pub status: Option<u16>,
    /// A watch, followed log or upgrade.
    pub long_running: bool,
    /// Seconds from the request to the end of its response.
    pub seconds: f64,
    /// Body bytes from the caller.
    pub bytes_in: u64,
    /// Body bytes to the caller.
    pub bytes_out: u64,
}

impl Metrics {
    /// Records a request the process answered itself, for `reason`.
    pub fn refused(&self, reason: impl Values) {
        self.refusals.add(1, &[reason.attribute()]);
    }

    /// Records a request that has begun.
    pub fn begin(&self) {
        self.active.add(1, &[]);
    }

    /// Records a request's outcome; it is no longer in flight.
    pub fn end(&self, o: Outcome<'_>) {
        self.active.add(-1, &[]);
        let series = Series {
            verb: bounded_verb(o.verb),
            status: o.status.unwrap_or(0),
            long_running: o.long_running,
        };
        let cluster = o.cluster.unwrap_or(UNKNOWN_CLUSTER);
        self.tally.add(cluster, series, o.bytes_in, o.bytes_out, |cluster| {
            if !o.long_running {
                self.duration.record(
                    o.seconds,
                    &[
                        cluster.clone(),
                        KeyValue::new("hawser.verb", series.verb),
                        KeyValue::new("http.response.status_code", i64::from(series.status)),
                    ],
                );
            }
        });
    }
}

/// Counts one event of `value` in `counter`.
pub fn count(counter: &Counter<u64>, value: impl Values) {
    counter.add(1, &[value.attribute()]);
}

/// Makes `counter`'s series of every value of `V` exist at 0, so that a first event is a rise
/// from 0 that `rate()` sees, not a new series at 1 (the SDK's cumulative sum keeps a series from
/// its first `add`, of 0 too).
pub fn start_at_zero<V: Values>(counter: &Counter<u64>) {
    for value in V::ALL {
        counter.add(0, &[value.attribute()]);
    }
}

/// `verb` if it is one the apiserver knows, else `"other"`: a non-resource request's verb is its
/// method, which a caller may make up.
pub(crate) fn bounded_verb(verb: &str) -> &'static str {
    const VERBS: [&str; 13] = [
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
        "proxy",
        "post",
        "put",
        "head",
        "options",
    ];
    VERBS.into_iter().find(|v| *v == verb).unwrap_or("other")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Checks that every value of `V` is distinct and has its row in the refusal table of
    /// docs/observability.md, `side` (`relay`, `agent`) among those that record it.
    pub(crate) fn documented<V: Values + std::fmt::Debug>(side: &str) {
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/observability.md"))
            .expect("docs/observability.md");
        let mut seen = std::collections::HashSet::new();
        for value in V::ALL {
            let name = value.as_str();
            assert!(seen.insert(name), "{name} twice in {}", V::KEY);
            let row = docs
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}` |")))
                .unwrap_or_else(|| panic!("{name} ({value:?}) has no row in docs/observability.md"));
            let sides = row.split('|').nth(3).unwrap_or_default();
            assert!(
                sides.contains(side),
                "{name}: docs/observability.md does not say the {side} records it"
            );
        }
    }

    #[test]
    fn a_made_up_verb_is_other() {
        assert_eq!(bounded_verb("list"), "list");
        assert_eq!(bounded_verb("deletecollection"), "deletecollection");
        assert_eq!(bounded_verb("frobnicate"), "other");
        assert_eq!(bounded_verb(""), "other");
    }
}
