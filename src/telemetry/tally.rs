//! Requests and body bytes, summed in the process and read by the SDK at each collection through
//! observable counters (`hawser.requests`, `hawser.io`).
//!
//! Summed by hand because the SDK's counter hashes and compares every attribute of every `add`:
//! a request's three adds (requests, bytes in, bytes out) cost about 2 % of a small request's CPU
//! (perf, docs/benchmarks.md). Here a request costs one lookup by cluster name and a short scan
//! of that cluster's few series, and the attribute sets are built only at collection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use dashmap::DashMap;
use opentelemetry::{KeyValue, StringValue};

use super::metrics::CLUSTER;

/// One series of `hawser.requests` within a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Series {
    /// A verb from the bounded set.
    pub verb: &'static str,
    /// The status code, 0 for none.
    pub status: u16,
    /// A watch, followed log or upgrade.
    pub long_running: bool,
}

/// The sums of one cluster (or of the unknown-cluster value).
struct ClusterTally {
    /// The cluster's attribute, built once.
    attribute: KeyValue,
    /// Requests per series: a handful per cluster, so a scan beats a hash.
    requests: Mutex<Vec<(Series, u64)>>,
    received: AtomicU64,
    transmitted: AtomicU64,
}

/// Every cluster's sums; clusters are configured names (or the one unknown value), so bounded.
#[derive(Default)]
pub(super) struct Tally {
    clusters: DashMap<Box<str>, ClusterTally>,
}

impl Tally {
    /// Counts one request of `cluster` in `series` with its body bytes, and hands the cluster's
    /// attribute to `also` (for the SDK instruments recorded beside it).
    pub(super) fn add(
        &self,
        cluster: &str,
        series: Series,
        received: u64,
        transmitted: u64,
        also: impl FnOnce(&KeyValue),
    ) {
        let add = |tally: &ClusterTally| {
            {
                let mut requests = tally.requests.lock().unwrap_or_else(PoisonError::into_inner);
                match requests.iter_mut().find(|(s, _)| *s == series) {
                    Some((_, n)) => *n += 1,
                    None => requests.push((series, 1)),
                }
            }
            tally.received.fetch_add(received, Ordering::Relaxed);
            tally.transmitted.fetch_add(transmitted, Ordering::Relaxed);
            also(&tally.attribute);
        };
        // The guard is held only for these synchronous updates.
        match self.clusters.get(cluster) {
            Some(tally) => add(&tally),
            None => add(&self.clusters.entry(cluster.into()).or_insert_with(|| ClusterTally {
                attribute: KeyValue::new(CLUSTER, StringValue::from(Arc::<str>::from(cluster))),
                requests: Mutex::default(),
                received: AtomicU64::new(0),
                transmitted: AtomicU64::new(0),
            })),
        }
    }

    /// Every request series with its attributes and count.
    pub(super) fn requests(&self, mut observe: impl FnMut(u64, &[KeyValue])) {
        for tally in &self.clusters {
            let series = tally.requests.lock().unwrap_or_else(PoisonError::into_inner).clone();
            for (s, n) in series {
                observe(
                    n,
                    &[
                        tally.attribute.clone(),
                        KeyValue::new("hawser.verb", s.verb),
                        KeyValue::new("http.response.status_code", i64::from(s.status)),
                        KeyValue::new("hawser.long_running", s.long_running),
                    ],
                );
            }
        }
    }

    /// Every cluster's body bytes, by direction (`receive`: from the caller).
    pub(super) fn io(&self, mut observe: impl FnMut(u64, &[KeyValue])) {
        for tally in &self.clusters {
            for (direction, n) in [("receive", &tally.received), ("transmit", &tally.transmitted)] {
                observe(
                    n.load(Ordering::Relaxed),
                    &[
                        tally.attribute.clone(),
                        KeyValue::new("network.io.direction", direction),
                    ],
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(verb: &'static str, status: u16) -> Series {
        Series {
            verb,
            status,
            long_running: false,
        }
    }

    fn attribute(attributes: &[KeyValue], key: &str) -> String {
        let kv = attributes.iter().find(|kv| kv.key.as_str() == key).expect(key);
        kv.value.to_string()
    }

    #[test]
    fn requests_and_bytes_are_summed_per_cluster_and_series() {
        let tally = Tally::default();
        let mut seen = Vec::new();
        tally.add("a", series("get", 200), 0, 10, |kv| seen.push(kv.value.to_string()));
        tally.add("a", series("get", 200), 5, 20, |_| {});
        tally.add("a", series("list", 200), 0, 1, |_| {});
        tally.add("b", series("get", 404), 0, 0, |_| {});
        assert_eq!(seen, ["a"], "the cluster's attribute is handed on");

        let mut requests = Vec::new();
        tally.requests(|n, attributes| {
            requests.push((
                attribute(attributes, CLUSTER),
                attribute(attributes, "hawser.verb"),
                attribute(attributes, "http.response.status_code"),
                n,
            ));
        });
        requests.sort();
        let row = |c: &str, v: &str, s: &str, n| (c.to_owned(), v.to_owned(), s.to_owned(), n);
        assert_eq!(
            requests,
            [
                row("a", "get", "200", 2),
                row("a", "list", "200", 1),
                row("b", "get", "404", 1)
            ]
        );

        let mut io = Vec::new();
        tally.io(|n, attributes| {
            io.push((
                attribute(attributes, CLUSTER),
                attribute(attributes, "network.io.direction"),
                n,
            ));
        });
        io.sort();
        let row = |c: &str, d: &str, n| (c.to_owned(), d.to_owned(), n);
        assert_eq!(
            io,
            [
                row("a", "receive", 5),
                row("a", "transmit", 31),
                row("b", "receive", 0),
                row("b", "transmit", 0)
            ]
        );
    }
}
