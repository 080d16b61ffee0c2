//! What `telemetry` found: the phases, on against off, the spans; the readable table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::SCRAPE_EVERY;
use super::collector::Received;
use super::scrape::ScrapeStats;
use crate::scenario::SmallResult;

/// Everything `telemetry` measured.
#[derive(Debug, Serialize)]
pub struct TelemetryResult {
    /// Concurrent callers, as `small`.
    pub callers: usize,
    /// HTTP/2 connections per system.
    pub connections: usize,
    /// The experiment `--telemetry-metrics-only`: on had `[admin]` alone.
    pub metrics_only: bool,
    /// The phases in the order they ran: off, on, off, on, ...
    pub phases: Vec<Phase>,
    /// The figures the issue asks for.
    pub summary: Summary,
    /// What reached the collector, against what the relay counted.
    pub spans: Spans,
}

impl TelemetryResult {
    /// Failed requests and scrapes.
    pub fn failures(&self) -> u64 {
        self.phases
            .iter()
            .map(|p| p.small.failures.count + p.scrapes.as_ref().map_or(0, |s| s.failures.count))
            .sum()
    }
}

/// One measurement of one system.
#[derive(Debug, Serialize)]
pub struct Phase {
    /// Telemetry on.
    pub telemetry: bool,
    /// Which pair, from 1.
    pub pair: usize,
    /// The closed loop's figures (CPU: this system's relay, agents and backend; the driver).
    pub small: SmallResult,
    /// Relay and agents' CPU per answered request, µs.
    pub relay_agents_cpu_us_per_request: f64,
    /// The collector's CPU seconds meanwhile.
    pub collector_cpu_s: f64,
    /// The relay's VmRSS after the phase.
    pub relay_rss_kib: u64,
    /// The agents' VmRSS after the phase, summed.
    pub agents_rss_kib: u64,
    /// The driver's scrapes of `/metrics` meanwhile (on only).
    pub scrapes: Option<ScrapeStats>,
}

/// On against off.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Mean requests/s of the off phases.
    pub off_requests_per_sec: f64,
    /// Mean requests/s of the on phases.
    pub on_requests_per_sec: f64,
    /// on / off requests/s of each pair.
    pub pair_ratios: Vec<f64>,
    /// The mean of `pair_ratios`.
    pub ratio: f64,
    /// 1 − `ratio`: the share of throughput telemetry cost.
    pub cost: f64,
    /// The target for `cost`.
    pub target_cost: f64,
    /// `cost` ≤ `target_cost`.
    pub target_met: bool,
    /// Means over the phases of each kind: p50 and p99 latency (ms), relay and agents' CPU per
    /// request (µs).
    pub off: Means,
    /// See `off`.
    pub on: Means,
    /// on / off of the means.
    pub on_off: BTreeMap<&'static str, f64>,
}

/// Means over the phases of one kind.
#[derive(Debug, Serialize)]
pub struct Means {
    /// p50 latency, ms.
    pub p50_ms: f64,
    /// p99 latency, ms.
    pub p99_ms: f64,
    /// Relay and agents' CPU per request, µs.
    pub cpu_us_per_request: f64,
    /// The collector's CPU seconds per phase.
    pub collector_cpu_s: f64,
}

/// The spans the collector received.
#[derive(Debug, Serialize)]
pub struct Spans {
    /// The sampling ratio.
    pub sampling_ratio: f64,
    /// Requests the on relay counted (`hawser_requests_total` at the last scrape): warm-ups and
    /// readiness probes included, as they are traced too.
    pub relay_requests: u64,
    /// Requests the on agents counted, likewise.
    pub agent_requests: u64,
    /// ratio × relay_requests: the traces to expect (one per sampled request; the agent follows
    /// the relay's decision, so its span joins the relay's trace).
    pub expected_traces: f64,
    /// Received spans per received trace.
    pub spans_per_trace: f64,
    /// Received spans per relay request.
    pub spans_per_request: f64,
    /// Whether the on relay and agents exited by themselves after SIGTERM (their last spans out).
    pub relay_and_agents_stopped_cleanly: bool,
    /// What the collector wrote.
    pub received: Received,
    /// The collector's CPU seconds over the whole scenario.
    pub collector_cpu_s: f64,
}

pub(super) fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

fn mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, n) = values.into_iter().fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    ratio(sum, n as f64)
}

pub(super) fn summarize(phases: &[Phase], target_cost: f64) -> Summary {
    let of = |on: bool| phases.iter().filter(move |p| p.telemetry == on);
    let means = |on: bool| Means {
        p50_ms: mean(of(on).map(|p| p.small.latency.p50_ms)),
        p99_ms: mean(of(on).map(|p| p.small.latency.p99_ms)),
        cpu_us_per_request: mean(of(on).map(|p| p.relay_agents_cpu_us_per_request)),
        collector_cpu_s: mean(of(on).map(|p| p.collector_cpu_s)),
    };
    let rps = |on: bool| mean(of(on).map(|p| p.small.requests_per_sec));
    let pair_ratios: Vec<f64> = of(false)
        .zip(of(true))
        .map(|(off, on)| ratio(on.small.requests_per_sec, off.small.requests_per_sec))
        .collect();
    let r = mean(pair_ratios.iter().copied());
    let (off, on) = (means(false), means(true));
    let on_off = BTreeMap::from([
        ("p50_ms", ratio(on.p50_ms, off.p50_ms)),
        ("p99_ms", ratio(on.p99_ms, off.p99_ms)),
        (
            "cpu_us_per_request",
            ratio(on.cpu_us_per_request, off.cpu_us_per_request),
        ),
    ]);
    Summary {
        off_requests_per_sec: rps(false),
        on_requests_per_sec: rps(true),
        pair_ratios,
        ratio: r,
        cost: 1.0 - r,
        target_cost,
        target_met: 1.0 - r <= target_cost,
        off,
        on,
        on_off,
    }
}

impl TelemetryResult {
    /// The readable summary.
    pub fn table(&self) -> String {
        let mut out = format!(
            "\ntelemetry ({} callers on {} connections; on: {}, /metrics scraped every {} s)\n",
            self.callers,
            self.connections,
            if self.metrics_only {
                "[admin] alone (an experiment: no traces, no OTLP)".to_owned()
            } else {
                format!("sampling {}, OTLP to otelcol", self.spans.sampling_ratio)
            },
            SCRAPE_EVERY.as_secs()
        );
        let _ = writeln!(
            out,
            "{:<8}{:>12}{:>10}{:>10}{:>11}{:>9}{:>9}{:>11}{:>10}{:>10}",
            "phase", "requests/s", "p50 ms", "p99 ms", "µs/req", "relay", "agents", "collector", "scrapes", "KiB/scr"
        );
        for p in &self.phases {
            let (scrapes, kib) = match &p.scrapes {
                Some(s) => (
                    format!("{}", s.ok),
                    format!("{:.1}", ratio(s.bytes as f64, s.ok as f64) / 1024.0),
                ),
                None => ("-".into(), "-".into()),
            };
            let _ = writeln!(
                out,
                "{:<8}{:>12.0}{:>10.3}{:>10.3}{:>11.0}{:>9.2}{:>9.2}{:>11.2}{:>10}{:>10}",
                format!("{} {}", if p.telemetry { "on" } else { "off" }, p.pair),
                p.small.requests_per_sec,
                p.small.latency.p50_ms,
                p.small.latency.p99_ms,
                p.relay_agents_cpu_us_per_request,
                p.small.cpu.relay_s,
                p.small.cpu.agents_s,
                p.collector_cpu_s,
                scrapes,
                kib
            );
        }
        let s = &self.summary;
        let pairs: Vec<String> = s.pair_ratios.iter().map(|r| format!("{r:.3}")).collect();
        let _ = writeln!(
            out,
            "on/off requests/s by pair {}; mean {:.3}: telemetry costs {:.1} % (target ≤ {:.0} %: {}); \
             µs/req on/off {:.2}, p50 {:.2}, p99 {:.2}",
            pairs.join(", "),
            s.ratio,
            s.cost * 100.0,
            s.target_cost * 100.0,
            if s.target_met { "met" } else { "MISSED" },
            s.on_off["cpu_us_per_request"],
            s.on_off["p50_ms"],
            s.on_off["p99_ms"],
        );
        let sp = &self.spans;
        let by = |service: &str| sp.received.spans_by_service.get(service).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "spans at the collector: {} ({} relay, {} agent) in {} traces ({} with both), {:.2} per trace; the relay \
             counted {} requests, so about {:.0} traces expected; {:.4} spans per request; {} metric exports ({} points); \
             collector CPU {:.2} s",
            sp.received.spans,
            by("hawser-relay"),
            by("hawser-agent"),
            sp.received.traces,
            sp.received.traces_with_relay_and_agent,
            sp.spans_per_trace,
            sp.relay_requests,
            sp.expected_traces,
            sp.spans_per_request,
            sp.received.metric_exports,
            sp.received.metric_points,
            sp.collector_cpu_s,
        );
        out
    }

    /// Failure messages, for the report's list.
    pub fn failure_messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.phases {
            let name = format!("telemetry {} {}", if p.telemetry { "on" } else { "off" }, p.pair);
            out.extend(p.small.failures.messages.iter().map(|m| format!("{name}: {m}")));
            if let Some(s) = &p.scrapes {
                out.extend(s.failures.messages.iter().map(|m| format!("{name} scrape: {m}")));
            }
        }
        out
    }
}
