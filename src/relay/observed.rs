//! The relay's metrics read at each collection rather than recorded as they change: agent
//! tunnels (from the session registry), agent handshakes (from the QUIC listener's counts) and,
//! in a fleet, the registry's health. Nothing on the request path pays for them. Also where the
//! relay's counters over a fixed set start at 0.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{ObservableCounter, ObservableGauge, ObservableUpDownCounter};

use super::RelayState;
use super::agents::ListenerStats;
use super::refusal::Reason;
use super::route::Forward;
use crate::telemetry::metrics::{meter, metrics, observe_tunnels, start_at_zero};

/// The relay's observed instruments; their callbacks stay registered while it lives.
pub struct Observed {
    _tunnels: ObservableUpDownCounter<i64>,
    _handshakes: ObservableCounter<u64>,
    _registry: Option<ObservableGauge<i64>>,
    _peers: Option<ObservableGauge<i64>>,
}

/// Registers the relay's observed instruments, and makes the series of its counters over a fixed
/// set exist at 0 (refusals by reason; in a fleet, forwards by result).
pub fn observe(state: &Arc<RelayState>, stats: &Arc<ListenerStats>) -> Observed {
    let counters = metrics();
    // Every relay has the series, idle or not: the dashboard's variables are read from it.
    counters.active.add(0, &[]);
    start_at_zero::<Reason>(&counters.refusals);
    if state.fleet.is_some() {
        start_at_zero::<Forward>(&counters.forwards);
    }
    let registry = state.registry.clone();
    let stats = stats.clone();
    let handshakes = meter()
        .u64_observable_counter("hawser.agent.handshakes")
        .with_description(
            "Agent connection attempts at the QUIC listener, by what the relay did: accepted (handshake started), \
             retried (asked to prove its address), ignored (no handshake slot, or stopping), throttled (its source \
             spent its hello failures)",
        )
        .with_unit("{attempt}")
        .with_callback(move |observer| {
            for (result, n) in [
                ("accepted", &stats.accepted),
                ("retried", &stats.retried),
                ("ignored", &stats.ignored),
                ("throttled", &stats.throttled),
            ] {
                observer.observe(n.load(Ordering::Relaxed), &[KeyValue::new("hawser.result", result)]);
            }
        })
        .build();
    let registry_up = state.fleet.clone().map(|fleet| {
        meter()
            .i64_observable_gauge("hawser.registry.up")
            .with_description("1 while the fleet's registry (etcd) answers within its lease TTL, else 0")
            .with_callback(move |observer| observer.observe(i64::from(fleet.registry_reachable()), &[]))
            .build()
    });
    // Peer relays are the fleet's configured instances: a bounded set of names.
    let peers_up = state.fleet.clone().map(|fleet| {
        meter()
            .i64_observable_gauge("hawser.peer.up")
            .with_description(
                "1 while this relay's connection to a peer relay it has forwarded to is up, else 0, by peer",
            )
            .with_callback(move |observer| {
                for (peer, up) in fleet.peers.links() {
                    observer.observe(i64::from(up), &[KeyValue::new("hawser.peer", peer)]);
                }
            })
            .build()
    });
    let clusters = state.clusters.clone();
    Observed {
        _tunnels: observe_tunnels(move || with_zeros(registry.tunnel_counts(), clusters.current().names())),
        _handshakes: handshakes,
        _registry: registry_up,
        _peers: peers_up,
    }
}

/// `counts` with a 0 for every configured cluster and transport it lacks: a series that vanished
/// when a cluster's last tunnel ended would show a gap, and `hawser_tunnels == 0` could never alert.
fn with_zeros<'a>(
    counts: Vec<(String, &'static str, i64)>,
    configured: impl Iterator<Item = &'a str>,
) -> Vec<(String, &'static str, i64)> {
    let mut all: std::collections::BTreeMap<(String, &'static str), i64> =
        counts.into_iter().map(|(c, t, n)| ((c, t), n)).collect();
    for cluster in configured {
        for transport in ["quic", "tcp"] {
            all.entry((cluster.to_owned(), transport)).or_insert(0);
        }
    }
    all.into_iter().map(|((c, t), n)| (c, t, n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configured_cluster_and_transport_is_counted_even_at_zero() {
        let counts = with_zeros(vec![("dev".into(), "quic", 2)], ["dev", "prod"].into_iter());
        assert_eq!(
            counts,
            vec![
                ("dev".into(), "quic", 2),
                ("dev".into(), "tcp", 0),
                ("prod".into(), "quic", 0),
                ("prod".into(), "tcp", 0),
            ]
        );
    }
}
