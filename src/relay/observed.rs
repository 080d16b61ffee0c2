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
}

/// Registers the relay's observed instruments, and makes the series of its counters over a fixed
/// set exist at 0 (refusals by reason; in a fleet, forwards by result).
pub fn observe(state: &Arc<RelayState>, stats: &Arc<ListenerStats>) -> Observed {
    let counters = metrics();
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
    let fleet = state.fleet.clone();
    let registry_up = fleet.map(|fleet| {
        meter()
            .i64_observable_gauge("hawser.registry.up")
            .with_description("1 while the fleet's registry (etcd) answers within its lease TTL, else 0")
            .with_callback(move |observer| observer.observe(i64::from(fleet.registry_reachable()), &[]))
            .build()
    });
    Observed {
        _tunnels: observe_tunnels(move || registry.tunnel_counts()),
        _handshakes: handshakes,
        _registry: registry_up,
    }
}
