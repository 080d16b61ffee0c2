//! What recording one request's metrics costs, in ns, single-threaded, with the meter provider
//! read by Prometheus as `/metrics` is: the product's `Metrics::begin`/`end` (requests and bytes
//! summed by hand, one SDK histogram record) against the SDK counters it used before (requests,
//! two byte counters and the histogram, every attribute hashed on every add). Best of 15 rounds.
//!
//! `cargo run --release --manifest-path loadtest/Cargo.toml --example metrics_record`

use std::time::Instant;

use hawser::telemetry::metrics::{Outcome, metrics};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};

const BUCKETS: [f64; 16] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 60.0,
];
const ROUNDS: usize = 15;
const PER_ROUND: usize = 200_000;

/// The instruments and `end` as they were before the sums by hand (commit 25a3098).
struct Before {
    requests: Counter<u64>,
    io: Counter<u64>,
    duration: Histogram<f64>,
    active: UpDownCounter<i64>,
}

impl Before {
    fn end(&self, o: &Outcome<'_>) {
        self.active.add(-1, &[]);
        let cluster = KeyValue::new("hawser.cluster", o.cluster.unwrap_or("(unknown)").to_owned());
        let verb = KeyValue::new("hawser.verb", "get");
        let status = KeyValue::new("http.response.status_code", i64::from(o.status.unwrap_or(0)));
        self.requests.add(
            1,
            &[
                cluster.clone(),
                verb.clone(),
                status.clone(),
                KeyValue::new("hawser.long_running", o.long_running),
            ],
        );
        if !o.long_running {
            self.duration.record(o.seconds, &[cluster.clone(), verb, status]);
        }
        if o.bytes_in > 0 {
            self.io.add(
                o.bytes_in,
                &[cluster.clone(), KeyValue::new("network.io.direction", "receive")],
            );
        }
        if o.bytes_out > 0 {
            self.io.add(
                o.bytes_out,
                &[cluster, KeyValue::new("network.io.direction", "transmit")],
            );
        }
    }
}

fn outcome(i: usize) -> Outcome<'static> {
    const CLUSTERS: [&str; 3] = ["cluster-a", "cluster-b", "cluster-c"];
    Outcome {
        cluster: Some(CLUSTERS[i % CLUSTERS.len()]),
        verb: "get",
        status: Some(200),
        long_running: false,
        seconds: 0.003,
        bytes_in: 0,
        bytes_out: 1200,
    }
}

/// ns per request of `record`, over one round.
fn round(mut record: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    for i in 0..PER_ROUND {
        record(i);
    }
    start.elapsed().as_nanos() as f64 / PER_ROUND as f64
}

fn main() -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()?;
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(exporter)
        .build();
    opentelemetry::global::set_meter_provider(provider);
    let meter = opentelemetry::global::meter("before");
    let before = Before {
        requests: meter.u64_counter("before.requests").build(),
        io: meter.u64_counter("before.io").build(),
        duration: meter
            .f64_histogram("before.duration")
            .with_boundaries(BUCKETS.to_vec())
            .build(),
        active: meter.i64_up_down_counter("before.active").build(),
    };
    let (mut sdk, mut summed) = (f64::MAX, f64::MAX);
    // Interleaved rounds: drift on a shared machine falls on both.
    for _ in 0..ROUNDS {
        sdk = sdk.min(round(|i| {
            before.active.add(1, &[]);
            before.end(&outcome(i));
        }));
        summed = summed.min(round(|i| {
            metrics().begin();
            metrics().end(outcome(i));
        }));
    }
    let families = registry.gather().len();
    println!(
        "ns per request, best of {ROUNDS} rounds of {PER_ROUND}: SDK counters {sdk:.0}, summed by hand {summed:.0} \
         ({families} metric families read back)"
    );
    Ok(())
}
