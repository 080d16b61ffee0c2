//! `telemetry` (issue #13): what tracing at 1 % sampling and metrics cost small requests. Two
//! systems as `small` runs them, both up for the whole scenario, each with its own backend:
//! **off** (no `[telemetry]`, no `[admin]`) and **on** (`[telemetry]` exporting over OTLP/gRPC to
//! a real OpenTelemetry Collector at `sampling_ratio` 0.01, and `[admin]` whose `/metrics` the
//! driver scrapes once a second, as Prometheus would). The `small` closed loop runs against them
//! in turn — off, on, off, on (`--telemetry-pairs`) — so that drift on a shared machine falls on
//! both alike; the figure is on/off requests/s, the mean of the pairs. Afterwards the on
//! system's relay and agents stop (flushing their last spans), then the collector, and the
//! spans it wrote are counted against the requests the relay's own counter saw.

mod collector;
mod results;
mod scrape;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use crate::Settings;
use crate::client::Target;
use crate::scenario::{Meter, small, warm_up};
use crate::stats::{Pids, ticks, ticks_per_second};
use crate::system::{self, System};
use collector::Collector;
pub use results::TelemetryResult;
use results::{Phase, Spans, ratio, summarize};
use scrape::Scraper;

/// Issue #13's target: telemetry on costs at most this share of small-request throughput.
const TARGET_COST: f64 = 0.05;
/// How often the driver scrapes `/metrics` while telemetry is on.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);
/// How long relay and agents get to stop (the relay's drain, then the last spans out).
const STOP_WITHIN: Duration = Duration::from_secs(40);
/// From this many expected traces on, none arriving fails the scenario (by chance alone that
/// happens with a probability of e^-8, 0.03 %).
const EXPECT_SOME_TRACES_FROM: f64 = 8.0;

/// Command-line options of `telemetry`.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// `telemetry`: the OpenTelemetry Collector binary [default: target/testbed/bin/otelcol of
    /// this repository, which `cargo test` builds with the e2e test bed].
    #[arg(long)]
    pub otelcol: Option<PathBuf>,
    /// `telemetry`: off/on pairs, run interleaved: off, on, off, on, ... [default: 2].
    #[arg(long)]
    pub telemetry_pairs: Option<usize>,
    /// `telemetry`: `[telemetry] sampling_ratio` of relay and agents when on [default: 0.01].
    #[arg(long)]
    pub telemetry_sampling: Option<f64>,
    /// `telemetry`: `[telemetry] metrics_export_secs` when on [default: unset, the product's 60].
    #[arg(long)]
    pub telemetry_export_secs: Option<u64>,
    /// `telemetry`, an experiment: on is `[admin]` alone (metrics for the scrapes, no
    /// `[telemetry]`: no tracer, no OTLP), to tell the metrics' cost from the traces'.
    #[arg(long)]
    pub telemetry_metrics_only: bool,
}

/// `telemetry`'s settings after defaults.
#[derive(Debug, Clone, Serialize)]
pub struct TelemetrySettings {
    /// The collector binary.
    pub otelcol: PathBuf,
    /// Off/on pairs.
    pub pairs: usize,
    /// `sampling_ratio` when on.
    pub sampling_ratio: f64,
    /// `metrics_export_secs` when on; `None`: not set (the product's default).
    pub metrics_export_secs: Option<u64>,
    /// The experiment: on without `[telemetry]`, `[admin]` alone.
    pub metrics_only: bool,
    /// Seconds between the driver's scrapes of `/metrics` while on.
    pub scrape_every_s: f64,
    /// The target: on costs at most this share of off's requests/s.
    pub target_cost: f64,
    /// How the two systems differ.
    pub system: &'static str,
}

const TELEMETRY_SYSTEM: &str = "two systems as in `small` (a relay, --clusters x --agents-per-cluster agents, a backend \
    each), both up throughout, used in turn; off: no [telemetry], no [admin]; on: relay and agents with [telemetry] \
    otlp_endpoint = the collector (OTLP/gRPC), sampling_ratio, metrics_export_secs if given, and [admin] listen = \
    127.0.0.1:0, whose /metrics the driver GETs every second during the on measurements (keep-alive HTTP/1.1, one \
    connection per listener); otelcol (the test bed's build): OTLP gRPC receiver, file exporters (flush 100 ms), no \
    processors, its own metrics off";

impl TelemetrySettings {
    /// From the options.
    pub fn from(args: &TelemetryArgs) -> Result<Self> {
        let s = Self {
            otelcol: args.otelcol.clone().unwrap_or_else(|| {
                let package = crate::package_dir();
                package.parent().unwrap_or(package).join("target/testbed/bin/otelcol")
            }),
            pairs: args.telemetry_pairs.unwrap_or(2),
            sampling_ratio: args.telemetry_sampling.unwrap_or(0.01),
            metrics_export_secs: args.telemetry_export_secs,
            metrics_only: args.telemetry_metrics_only,
            scrape_every_s: SCRAPE_EVERY.as_secs_f64(),
            target_cost: TARGET_COST,
            system: TELEMETRY_SYSTEM,
        };
        anyhow::ensure!(s.pairs >= 1, "--telemetry-pairs: at least 1");
        anyhow::ensure!(
            (0.0..=1.0).contains(&s.sampling_ratio),
            "--telemetry-sampling: between 0 and 1"
        );
        anyhow::ensure!(
            s.metrics_export_secs.is_none_or(|t| (1..=3600).contains(&t)),
            "--telemetry-export-secs: 1 to 3600 seconds"
        );
        Ok(s)
    }
}

/// Runs `telemetry` with systems and a collector of its own.
pub async fn run(settings: &Settings, hawser: &Path, keep: bool) -> Result<TelemetryResult> {
    let t = &settings.telemetry;
    if !t.otelcol.is_file() {
        bail!(
            "telemetry: no OpenTelemetry Collector at {}: `cargo test` at the repository root builds it into \
             target/testbed/bin/ with the e2e test bed (needs Go), or pass --otelcol PATH",
            t.otelcol.display()
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("hawser-loadtest-telemetry-")
        .disable_cleanup(true)
        .tempdir()?
        .path()
        .to_owned();
    crate::say(&format!("telemetry: working directory {}", dir.display()));
    let outcome = measure(settings, hawser, keep, &dir).await;
    if outcome.is_err() || keep {
        crate::say(&format!(
            "telemetry: kept the working directory (configs, logs, the collector's files): {}",
            dir.display()
        ));
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

/// The `[telemetry]` and `[admin]` tables of the on system.
fn on_toml(t: &TelemetrySettings, endpoint: &str) -> String {
    let mut toml = String::from("[admin]\nlisten = \"127.0.0.1:0\"\n");
    if t.metrics_only {
        return toml;
    }
    let _ = write!(
        toml,
        "\n[telemetry]\notlp_endpoint = \"{endpoint}\"\nsampling_ratio = {}\n",
        t.sampling_ratio
    );
    if let Some(secs) = t.metrics_export_secs {
        let _ = writeln!(toml, "metrics_export_secs = {secs}");
    }
    toml
}

async fn measure(settings: &Settings, hawser: &Path, keep: bool, dir: &Path) -> Result<TelemetryResult> {
    let t = &settings.telemetry;
    let collector = Collector::start(&t.otelcol, &dir.join("otelcol")).await?;
    crate::say(&format!(
        "telemetry: otelcol listening on {} (OTLP/gRPC)",
        collector.grpc
    ));
    let options = |extra_toml: String, name: &str| system::Options {
        hawser: hawser.to_owned(),
        clusters: settings.clusters,
        agents_per_cluster: settings.agents_per_cluster,
        idle_agents: 0,
        swarm_clusters: 0,
        keep,
        transport: settings.transport.as_str(),
        extra_toml,
        dir: Some(dir.join(name)),
    };
    let mut off = System::start(&options(String::new(), "off")).await?;
    let mut on = System::start(&options(on_toml(t, &collector.endpoint()), "on")).await?;
    let outcome = phases(settings, &mut off, &mut on, collector).await;
    if outcome.is_err() {
        off.keep_dir();
        on.keep_dir();
    }
    outcome
}

async fn phases(
    settings: &Settings,
    off: &mut System,
    on: &mut System,
    collector: Collector,
) -> Result<TelemetryResult> {
    let t = &settings.telemetry;
    let timeout = Duration::from_secs_f64(settings.request_timeout_s);
    let off_target = off
        .hawser_target_named("telemetry off", settings.connections, timeout)
        .await?;
    let on_target = on
        .hawser_target_named("telemetry on", settings.connections, timeout)
        .await?;
    off.wait_answering(&off_target).await?;
    on.wait_answering(&on_target).await?;
    let admins = on.admin_addrs(Duration::from_secs(30)).await?;
    crate::say(&format!(
        "telemetry: both systems answering; on's admin listeners {}",
        admins.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    ));
    let tps = ticks_per_second();
    let meter = |s: &System| Meter {
        pids: Pids {
            relay: s.relay.pid,
            agents: s.agent_pids(),
            backend: s.backend.pid,
        },
        ticks_per_second: tps,
    };
    let (off_meter, on_meter) = (meter(off), meter(on));
    let collector_pid = collector.process.pid.to_string();
    let collector_start = ticks(&collector_pid);

    let mut phases = Vec::new();
    for pair in 1..=t.pairs {
        for (telemetry, system, target, meter) in [
            (false, &*off, &off_target, &off_meter),
            (true, &*on, &on_target, &on_meter),
        ] {
            phases.push(
                phase(
                    settings,
                    telemetry,
                    pair,
                    system,
                    target,
                    meter,
                    &admins,
                    &collector_pid,
                )
                .await?,
            );
        }
    }

    // What the on relay and agents counted, then their last spans out, then the collector's.
    let mut counted = Vec::new();
    for addr in &admins {
        counted.push(scrape::counter_sum(&scrape::scrape(*addr).await?, "hawser_requests_total") as u64);
    }
    drop((off_target, on_target));
    let collector_cpu_s = (ticks(&collector_pid).saturating_sub(collector_start)) as f64 / tps;
    let stopped_cleanly = on.stop_relay_and_agents(STOP_WITHIN).await?;
    let received = collector.stop(Duration::from_secs(10)).await?;
    let relay_requests = counted.first().copied().unwrap_or(0);
    // The experiment exports nothing.
    let sampled = if t.metrics_only { 0.0 } else { t.sampling_ratio };
    let expected_traces = sampled * relay_requests as f64;
    if received.traces == 0 && expected_traces >= EXPECT_SOME_TRACES_FROM {
        bail!(
            "telemetry: the collector received no trace, where about {expected_traces:.0} were expected \
             ({relay_requests} requests at sampling ratio {}); see otelcol/ and on/ in the working directory",
            t.sampling_ratio
        );
    }
    let spans = Spans {
        sampling_ratio: t.sampling_ratio,
        relay_requests,
        agent_requests: counted.iter().skip(1).sum(),
        expected_traces,
        spans_per_trace: ratio(received.spans as f64, received.traces as f64),
        spans_per_request: ratio(received.spans as f64, relay_requests as f64),
        relay_and_agents_stopped_cleanly: stopped_cleanly,
        received,
        collector_cpu_s,
    };
    Ok(TelemetryResult {
        callers: settings.callers,
        connections: settings.connections,
        metrics_only: t.metrics_only,
        summary: summarize(&phases, t.target_cost),
        phases,
        spans,
    })
}

/// One unrecorded warm-up, then one measurement of `target`; while telemetry is on, `/metrics`
/// of `admins` is scraped during the measurement.
#[allow(clippy::too_many_arguments)]
async fn phase(
    settings: &Settings,
    telemetry: bool,
    pair: usize,
    system: &System,
    target: &Arc<Target>,
    meter: &Meter,
    admins: &[std::net::SocketAddr],
    collector_pid: &str,
) -> Result<Phase> {
    let (duration, warmup) = (
        Duration::from_secs_f64(settings.duration_s),
        Duration::from_secs_f64(settings.warmup_s),
    );
    // The warm-up apart, so that the collector's CPU read covers the measurement alone.
    warm_up(target, settings.callers, warmup).await?;
    let scraper = telemetry.then(|| Scraper::start(admins.to_vec(), SCRAPE_EVERY));
    let collector_before = ticks(collector_pid);
    let measured = small(target, settings.callers, duration, Duration::ZERO, meter).await?;
    let collector_cpu_s = ticks(collector_pid).saturating_sub(collector_before) as f64 / meter.ticks_per_second;
    let scrapes = match scraper {
        Some(s) => Some(s.stop().await?),
        None => None,
    };
    let rss = |pid: u32| system::rss_kib(pid).map_or(0, |(rss, _)| rss);
    Ok(Phase {
        telemetry,
        pair,
        relay_agents_cpu_us_per_request: ratio(
            (measured.cpu.relay_s + measured.cpu.agents_s) * 1e6,
            measured.ok as f64,
        ),
        small: measured,
        collector_cpu_s,
        relay_rss_kib: rss(system.relay.pid),
        agents_rss_kib: system.agent_pids().into_iter().map(rss).sum(),
        scrapes,
    })
}
