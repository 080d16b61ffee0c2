//! The command line and the settings after the mode's defaults.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::{fleet, k6mix, peers, scale, telemetry};

/// Load driver for Hawser: a real relay and real agents (separate `hawser`
/// processes) against a trivial HTTPS backend, with the same load sent
/// straight to the backend as the baseline in the same run.
///
/// Without options it runs `small`, `rate` and `bulk` with the full-run
/// defaults (about a minute and a half); `--smoke` runs every scenario with
/// tiny sizes in a few seconds and fails if any request failed. Every
/// option overrides the mode's default.
#[derive(Debug, Parser)]
#[command(name = "hawser-loadtest", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Sub>,
    /// The hawser binary [default: ../target/release/hawser next to loadtest/;
    /// build it with `cargo build --release` at the repository root].
    #[arg(long)]
    pub hawser: Option<PathBuf>,
    /// A few seconds in all: every scenario, tiny durations and sizes; exit 1 if any request failed.
    #[arg(long)]
    pub smoke: bool,
    /// Scenarios to run, comma-separated [default: small,rate,bulk; smoke: all].
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Option<Vec<Scenario>>,
    /// Clusters under load, one or more agents each; requests are spread over them [default: 1].
    #[arg(long)]
    pub clusters: Option<usize>,
    /// Agents per loaded cluster (distinct instances; the relay spreads streams over them) [default: 1].
    #[arg(long)]
    pub agents_per_cluster: Option<usize>,
    /// Concurrent callers in `small` [default: 32; smoke: 8].
    #[arg(long)]
    pub callers: Option<usize>,
    /// HTTP/2 connections the callers share, per target [default: 2].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Seconds each `small` and `rate` measurement lasts, per target [default: 10; smoke: 1].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Unrecorded seconds of `small` load before its measurement, per target [default: 2; smoke: 0.2].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// `rate`: requests per second (e.g. 500 or 500/s), or `half`: half the
    /// requests/s Hawser reached in `small` in this run [default: half; smoke: 100].
    #[arg(long)]
    pub rate: Option<RateArg>,
    /// `bulk`: MiB each stream downloads [default: 256; smoke: 1].
    #[arg(long)]
    pub bulk_mib: Option<f64>,
    /// `bulk`: the concurrent measurement's stream count (the other is 1) [default: 16].
    #[arg(long)]
    pub bulk_streams: Option<usize>,
    /// `idle`: idle agents (one process and one cluster each) [default: 100; smoke: 2].
    #[arg(long)]
    pub idle_agents: Option<usize>,
    /// `idle`: seconds to watch the relay's memory with all of them connected [default: 5; smoke: 0.5].
    #[arg(long)]
    pub idle_settle: Option<f64>,
    /// Seconds a request may take before it counts as failed; bulk downloads get
    /// this plus their size at 10 MB/s [default: 30; smoke: 10].
    #[arg(long)]
    pub request_timeout: Option<f64>,
    /// How the agents reach the relay: `quic`, or `tcp` (HTTP/2 over TLS over TCP) [default: quic].
    #[arg(long)]
    pub transport: Option<Transport>,
    /// Write every figure, the settings, versions and machine facts to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the working directory (configs, keys, logs) and print its path.
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub scale: scale::ScaleArgs,
    #[command(flatten)]
    pub peers: peers::PeerArgs,
    #[command(flatten)]
    pub fleet: fleet::FleetArgs,
    #[command(flatten)]
    pub telemetry: telemetry::TelemetryArgs,
    #[command(flatten)]
    pub k6mix: k6mix::K6MixArgs,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// The backend, as the driver starts it (internal).
    #[command(hide = true)]
    ServeBackend {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
}

/// A scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Closed loop: M callers, GET /small as fast as answers come.
    Small,
    /// Open loop at a fixed rate; latency percentiles.
    Rate,
    /// Downloads on one stream and on 16 at once.
    Bulk,
    /// Relay memory with N idle agents connected.
    Idle,
    /// Relay memory per idle tunnel with 1k and 10k tunnels from one process.
    Swarm,
    /// 10,000 watches with events flowing, then one stalled reader.
    Watch,
    /// Relay restart under many tunnels: time until all are back.
    Storm,
    /// Three relays behind nginx: requests/s against one relay and the fleet, the cost of a
    /// cross-relay hop, a rolling restart under many agents.
    Fleet,
    /// `small` with telemetry off and on (1 % of traces to a collector, /metrics scraped),
    /// interleaved: what telemetry costs.
    Telemetry,
    /// The k6 script's kubectl-like mix (loadtest/k6/kubectl-mix.js): list pods, get a pod,
    /// list configmaps in all namespaces, and watches held to their timeoutSeconds.
    K6mix,
}

/// How the agents reach the relay (the agent's `relay.transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC.
    Quic,
    /// HTTP/2 over TLS over TCP, to the relay's caller port.
    Tcp,
}

impl Transport {
    /// The agent's `relay.transport` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        }
    }
}

/// `--rate`: a number per second, or half of Hawser's `small` figure.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateArg {
    /// Requests per second.
    PerSecond(f64),
    /// Half of Hawser's requests/s in `small` in this run.
    Half,
}

impl std::str::FromStr for RateArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "half" {
            return Ok(Self::Half);
        }
        let n: f64 = s
            .trim_end_matches("/s")
            .parse()
            .map_err(|_| format!("{s:?} is neither a rate (500, 500/s) nor `half`"))?;
        if !(n > 0.0 && n.is_finite()) {
            return Err(format!("rate {n} must be positive"));
        }
        Ok(Self::PerSecond(n))
    }
}

/// How the system under test is set up (docs/benchmarks.md says more).
const SYSTEM: &str = "hawser relay and agents as separate processes on 127.0.0.1, RUST_LOG=info, JSON logs; \
    relay: built-in issuer (ES256 tokens), [audit] output = none, [limits] max_streams_per_caller = 0 and \
    auth_failures_per_minute = 0, [tunnel] defaults; agents: mode identity, [audit] output = none, relay assertions (their key from the relay's JWKS); \
    backend: hawser-loadtest serve-backend (hyper, rustls/ring, HTTP/2 and HTTP/1.1); \
    callers: hyper HTTP/2 client over rustls/ring";

/// Settings after the mode's defaults.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// `full` or `smoke`.
    pub mode: &'static str,
    /// In order of running.
    pub scenarios: Vec<Scenario>,
    /// Loaded clusters.
    pub clusters: usize,
    /// Agents per loaded cluster.
    pub agents_per_cluster: usize,
    /// How agents reach the relay.
    pub transport: Transport,
    /// `small` callers.
    pub callers: usize,
    /// HTTP/2 connections per target.
    pub connections: usize,
    /// Seconds per `small` and `rate` measurement.
    pub duration_s: f64,
    /// Unrecorded warm-up seconds before `small`.
    pub warmup_s: f64,
    /// `rate` as asked.
    pub rate: RateArg,
    /// Bytes per bulk stream.
    pub bulk_bytes: u64,
    /// The concurrent bulk measurement's streams.
    pub bulk_streams: usize,
    /// Idle agents.
    pub idle_agents: usize,
    /// Seconds the relay is watched with them.
    pub idle_settle_s: f64,
    /// Seconds before a request counts as failed.
    pub request_timeout_s: f64,
    /// How the driver configures the system under test.
    pub system: &'static str,
    /// Client HTTP/2 stream and connection windows.
    pub client_h2_windows: (u32, u32),
    /// `swarm`, `watch` and `storm`.
    pub scale: scale::ScaleSettings,
    /// Peers and the bare-quinn ceiling.
    pub peers: peers::PeerSettings,
    /// `fleet`.
    pub fleet: fleet::FleetSettings,
    /// `telemetry`.
    pub telemetry: telemetry::TelemetrySettings,
    /// `k6mix`.
    pub k6mix: k6mix::K6MixSettings,
}

impl Settings {
    /// The mode's defaults under the options given.
    pub fn from(cli: &Cli) -> Result<Self> {
        let smoke = cli.smoke;
        let pick = |v: Option<f64>, full: f64, quick: f64| v.unwrap_or(if smoke { quick } else { full });
        let mut scenarios = cli.scenarios.clone().unwrap_or_else(|| {
            if smoke {
                vec![
                    Scenario::Idle,
                    Scenario::Small,
                    Scenario::Rate,
                    Scenario::Bulk,
                    Scenario::K6mix,
                    Scenario::Swarm,
                    Scenario::Watch,
                    Scenario::Storm,
                    Scenario::Fleet,
                    Scenario::Telemetry,
                ]
            } else {
                vec![Scenario::Small, Scenario::Rate, Scenario::Bulk]
            }
        });
        // Idle first, on a relay that has carried no load yet; then the order above.
        let order = |s: &Scenario| match s {
            Scenario::Idle => 0,
            Scenario::Swarm => 0,
            Scenario::Watch => 4,
            Scenario::Storm => 5,
            Scenario::Fleet => 6,
            Scenario::Telemetry => 7,
            Scenario::Small => 1,
            Scenario::Rate => 2,
            Scenario::Bulk => 3,
            Scenario::K6mix => 3,
        };
        scenarios.sort_by_key(order);
        scenarios.dedup();
        let settings = Self {
            mode: if smoke { "smoke" } else { "full" },
            clusters: cli.clusters.unwrap_or(1),
            agents_per_cluster: cli.agents_per_cluster.unwrap_or(1),
            transport: cli.transport.unwrap_or(Transport::Quic),
            callers: cli.callers.unwrap_or(if smoke { 8 } else { 32 }),
            connections: cli.connections.unwrap_or(2),
            duration_s: pick(cli.duration, 10.0, 1.0),
            warmup_s: pick(cli.warmup, 2.0, 0.2),
            rate: cli.rate.unwrap_or(if smoke {
                RateArg::PerSecond(100.0)
            } else {
                RateArg::Half
            }),
            bulk_bytes: (pick(cli.bulk_mib, 256.0, 1.0) * 1024.0 * 1024.0).round() as u64,
            bulk_streams: cli.bulk_streams.unwrap_or(16),
            idle_agents: cli.idle_agents.unwrap_or(if smoke { 2 } else { 100 }),
            idle_settle_s: pick(cli.idle_settle, 5.0, 0.5),
            request_timeout_s: pick(cli.request_timeout, 30.0, 10.0),
            system: SYSTEM,
            client_h2_windows: (4 << 20, 1 << 30),
            scale: scale::ScaleSettings::from(&cli.scale, smoke)?,
            peers: peers::PeerSettings::from(&cli.peers, smoke)?,
            fleet: fleet::FleetSettings::from(&cli.fleet, smoke)?,
            telemetry: telemetry::TelemetrySettings::from(&cli.telemetry)?,
            k6mix: k6mix::K6MixSettings::from(&cli.k6mix, smoke)?,
            scenarios,
        };
        if settings.clusters == 0 || settings.agents_per_cluster == 0 {
            bail!("--clusters and --agents-per-cluster must be at least 1");
        }
        if settings.callers == 0 || settings.connections == 0 || settings.bulk_streams == 0 {
            bail!("--callers, --connections and --bulk-streams must be at least 1");
        }
        if !(settings.duration_s > 0.0 && settings.warmup_s >= 0.0 && settings.idle_settle_s >= 0.0) {
            bail!("--duration must be positive, --warmup and --idle-settle not negative");
        }
        if settings.request_timeout_s.is_nan() || settings.request_timeout_s <= 0.0 {
            bail!("--request-timeout must be positive");
        }
        if settings.bulk_bytes == 0 {
            bail!("--bulk-mib must be positive");
        }
        if matches!(settings.rate, RateArg::Half)
            && settings.scenarios.contains(&Scenario::Rate)
            && !settings.scenarios.contains(&Scenario::Small)
        {
            bail!("--rate half needs the small scenario in the same run; give a number (--rate 500)");
        }
        Ok(settings)
    }

    /// Whether `s` is to run.
    pub fn runs(&self, s: Scenario) -> bool {
        self.scenarios.contains(&s)
    }
}
