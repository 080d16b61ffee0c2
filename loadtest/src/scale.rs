//! The scale scenarios' options, settings, results and table: `swarm` (relay
//! memory per idle tunnel), `watch` (many watches and a stalled reader) and
//! `storm` (relay restart under many tunnels). The code is in
//! [`crate::storm`] and [`crate::watches`].

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::storm::{StormResult, SwarmResult};
use crate::system::System;
use crate::watches::{Endpoint, Plan, WatchResult};
use crate::{Scenario, Settings};

/// Command-line options of the scale scenarios.
#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// `swarm`: idle tunnel counts, comma-separated, each adding to the last [default: 1000,10000; smoke: 20].
    #[arg(long, value_delimiter = ',')]
    pub swarm_tunnels: Option<Vec<usize>>,
    /// `storm`: tunnel counts to restart the relay under, comma-separated [default: 1000,10000; smoke: 20].
    #[arg(long, value_delimiter = ',')]
    pub storm_tunnels: Option<Vec<usize>>,
    /// Swarm agents per UDP socket of the driver [default: 50].
    #[arg(long)]
    pub swarm_per_socket: Option<usize>,
    /// Swarm tunnels are opened this many at a time, each batch once the relay has registered the
    /// last (0: all at once) [default: 100].
    #[arg(long)]
    pub swarm_ramp: Option<usize>,
    /// `swarm`: seconds each size is held after its memory is stable, then sampled again [default: 30; smoke: 0].
    #[arg(long)]
    pub swarm_hold: Option<f64>,
    /// Relay-opened streams each swarm tunnel accepts (the product's max_streams_per_tunnel is
    /// 16384, which costs the swarm ~1.5 MB per tunnel; the relay's side is the same) [default: 100].
    #[arg(long)]
    pub swarm_agent_streams: Option<u32>,
    /// `watch`: concurrent watches on the one loaded cluster [default: 10000; smoke: 50].
    #[arg(long)]
    pub watches: Option<usize>,
    /// `watch`: HTTP/2 connections the watches share [default: 12; the relay allows 1000 streams on each].
    #[arg(long)]
    pub watch_connections: Option<usize>,
    /// `watch`: milliseconds between one watch's events [default: 1000; smoke: 100].
    #[arg(long)]
    pub watch_interval_ms: Option<u64>,
    /// `watch`: seconds of each measured period (before, stalled) [default: 10; smoke: 0.5].
    #[arg(long)]
    pub watch_measure: Option<f64>,
    /// `watch`: also run the watches straight at the backend, as a baseline [default: on].
    #[arg(long)]
    pub watch_no_direct: bool,
    /// `storm` and `fleet`: model the agents before the quick redial (every refused attempt grows
    /// the swarm agent's backoff), not the product's agent of today.
    #[arg(long)]
    pub storm_grow_backoff_on_refusal: bool,
}

/// The scale scenarios' settings after defaults.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleSettings {
    /// `swarm` sizes.
    pub swarm_tunnels: Vec<usize>,
    /// `storm` sizes.
    pub storm_tunnels: Vec<usize>,
    /// Swarm agents per driver UDP socket.
    pub swarm_per_socket: usize,
    /// Swarm tunnels opened per batch (0: all at once).
    pub swarm_ramp: usize,
    /// Swarm agents as before the quick redial: refusals grow their backoff (not the product).
    pub storm_grow_backoff_on_refusal: bool,
    /// Seconds each swarm size is held after settling.
    pub swarm_hold_s: f64,
    /// Relay-opened streams each swarm tunnel accepts.
    pub swarm_agent_streams: u32,
    /// The swarm agents' reconnect settings (the product's defaults).
    pub swarm_reconnect: String,
    /// Concurrent watches.
    pub watches: usize,
    /// Their HTTP/2 connections.
    pub watch_connections: usize,
    /// Milliseconds between one watch's events.
    pub watch_interval_ms: u64,
    /// Seconds per measured period.
    pub watch_measure_s: f64,
    /// Bytes the stalled reader reads before it stops.
    pub watch_stall_read_bytes: u64,
    /// Whether the watches also run straight at the backend.
    pub watch_direct: bool,
    /// Stream limits in force for `watch`.
    pub watch_limits: String,
    /// RLIMIT_NOFILE of the driver (its children inherit it), as /proc/self/limits says.
    pub open_files_limit: String,
    /// net.core.rmem_default / rmem_max (the kernel's cap on `[tunnel] udp_buffer_bytes`).
    pub udp_rmem_default_max: String,
}

/// The stream limits and windows in force for `watch`, as the product's defaults say.
fn watch_limits() -> String {
    let tunnel = hawser::config::TunnelConfig::default();
    format!(
        "relay [limits] h2_max_concurrent_streams = 1000 (default) per caller connection, \
         max_streams_per_caller = 0 (unlimited); [tunnel] defaults on both sides: max_streams_per_tunnel = {}, \
         stream_receive_window = {} KiB, connection_receive_window {}, udp_buffer_bytes = {} KiB; \
         caller h2 windows 4 MiB per stream, 1 GiB per connection; backend h2 max_concurrent_streams 10000",
        tunnel.max_streams_per_tunnel,
        tunnel.stream_receive_window / 1024,
        tunnel
            .connection_receive_window
            .map_or("unlimited".to_owned(), |w| format!("{w} B")),
        tunnel.udp_buffer_bytes / 1024,
    )
}

impl ScaleSettings {
    /// From the options and the mode.
    pub fn from(args: &ScaleArgs, smoke: bool) -> Result<Self> {
        let sizes = |v: &Option<Vec<usize>>| v.clone().unwrap_or(if smoke { vec![20] } else { vec![1000, 10_000] });
        let s = Self {
            swarm_tunnels: sizes(&args.swarm_tunnels),
            storm_tunnels: sizes(&args.storm_tunnels),
            swarm_per_socket: args.swarm_per_socket.unwrap_or(50),
            swarm_ramp: args.swarm_ramp.unwrap_or(100),
            storm_grow_backoff_on_refusal: args.storm_grow_backoff_on_refusal,
            swarm_hold_s: args.swarm_hold.unwrap_or(if smoke { 0.0 } else { 30.0 }),
            swarm_agent_streams: args.swarm_agent_streams.unwrap_or(100),
            swarm_reconnect: format!("{:?}", hawser::config::ReconnectConfig::default()),
            watches: args.watches.unwrap_or(if smoke { 50 } else { 10_000 }),
            watch_connections: args.watch_connections.unwrap_or(12),
            watch_interval_ms: args.watch_interval_ms.unwrap_or(if smoke { 100 } else { 1000 }),
            watch_measure_s: args.watch_measure.unwrap_or(if smoke { 0.5 } else { 10.0 }),
            watch_stall_read_bytes: 1 << 20,
            watch_direct: !args.watch_no_direct,
            watch_limits: watch_limits(),
            open_files_limit: std::fs::read_to_string("/proc/self/limits")
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .map_or_else(
                    || "unknown".into(),
                    |l| l.split_whitespace().collect::<Vec<_>>().join(" "),
                ),
            udp_rmem_default_max: ["default", "max"]
                .map(|k| {
                    std::fs::read_to_string(format!("/proc/sys/net/core/rmem_{k}"))
                        .map_or("?".into(), |s| s.trim().to_owned())
                })
                .join(" / "),
        };
        let sorted = |v: &[usize]| v.windows(2).all(|w| w[0] < w[1]) && v.first().is_some_and(|&f| f > 0);
        anyhow::ensure!(
            sorted(&s.swarm_tunnels) && sorted(&s.storm_tunnels),
            "--swarm-tunnels and --storm-tunnels: positive and increasing"
        );
        anyhow::ensure!(
            s.watches > 0 && s.watch_connections > 0 && s.watch_interval_ms > 0 && s.watch_measure_s > 0.0,
            "--watches, --watch-connections, --watch-interval-ms and --watch-measure must be positive"
        );
        let need = s.watches as u64 + 64;
        if let Some(soft) = s
            .open_files_limit
            .split_whitespace()
            .nth(3)
            .and_then(|n| n.parse::<u64>().ok())
            && soft < need
        {
            crate::say(&format!(
                "warning: RLIMIT_NOFILE soft limit {soft} is below {need}: the agent and backend need a descriptor \
                 per watch (raise it with `ulimit -n` before running)"
            ));
        }
        Ok(s)
    }

    /// Clusters the relay must know for the swarm.
    pub fn swarm_clusters(&self, settings: &Settings) -> usize {
        let mut n = 0;
        if settings.runs(Scenario::Swarm) {
            n = n.max(*self.swarm_tunnels.last().unwrap_or(&0));
        }
        if settings.runs(Scenario::Storm) {
            n = n.max(*self.storm_tunnels.last().unwrap_or(&0));
        }
        n
    }
}

/// The scale scenarios' results.
#[derive(Debug, Default, Serialize)]
pub struct ScaleResults {
    /// `swarm`.
    pub swarm: Option<SwarmResult>,
    /// `watch`, straight at the backend (baseline).
    pub watch_direct: Option<WatchResult>,
    /// `watch` through Hawser.
    pub watch_hawser: Option<WatchResult>,
    /// `storm`, one per size.
    pub storm: Vec<StormResult>,
}

/// `swarm`, which runs early, on a relay that has carried no load yet.
pub async fn before(settings: &Settings, sys: &System, results: &mut ScaleResults) -> Result<()> {
    let s = &settings.scale;
    if settings.runs(Scenario::Swarm) {
        results.swarm = Some(crate::storm::idle(sys, s).await?);
    }
    Ok(())
}

/// `watch`, then `storm` (last: it restarts the relay).
pub async fn after(
    settings: &Settings,
    sys: &mut System,
    results: &mut ScaleResults,
    meter: &crate::scenario::Meter,
) -> Result<()> {
    let s = &settings.scale;
    if settings.runs(Scenario::Watch) {
        let plan = Plan {
            watches: s.watches,
            connections: s.watch_connections,
            interval_ms: s.watch_interval_ms,
            measure: Duration::from_secs_f64(s.watch_measure_s),
            stall_read: s.watch_stall_read_bytes,
        };
        let probe = crate::watches::Probe::connect(sys.backend_addr, &sys.backend_ca).await?;
        if s.watch_direct {
            let direct = Endpoint {
                name: "direct",
                addr: sys.backend_addr,
                ca: &sys.backend_ca,
                base: format!("https://{}", sys.backend_addr),
                token: None,
            };
            results.watch_direct = Some(crate::watches::run(&direct, &plan, meter, &probe).await?);
        }
        let hawser = Endpoint {
            name: "hawser",
            addr: sys.relay_front,
            ca: &sys.relay_ca,
            base: format!("https://{}/clusters/{}", sys.relay_front, sys.clusters[0]),
            token: Some(&sys.token),
        };
        results.watch_hawser = Some(crate::watches::run(&hawser, &plan, meter, &probe).await?);
    }
    if settings.runs(Scenario::Storm) {
        results.storm = crate::storm::storm(sys, s).await?;
    }
    Ok(())
}

impl ScaleResults {
    /// Failed watches.
    pub fn failures(&self) -> u64 {
        [&self.watch_direct, &self.watch_hawser]
            .iter()
            .filter_map(|w| w.as_ref())
            .map(|w| w.failed)
            .sum()
    }

    /// The readable summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mib = |k: u64| k as f64 / 1024.0;
        if let Some(s) = &self.swarm {
            let _ = writeln!(
                out,
                "\nswarm (idle tunnels from one process, {} UDP sockets): relay VmRSS before {:.1} MiB",
                s.endpoints,
                mib(s.relay_rss_before_kib)
            );
            let _ = writeln!(
                out,
                "{:>8}{:>11}{:>10}{:>12}{:>14}{:>16}{:>12}{:>13}",
                "tunnels",
                "connect s",
                "settle s",
                "relay MiB",
                "KiB/tunnel",
                "anon KiB/tunnel",
                "idle CPU %",
                "driver MiB"
            );
            for z in &s.sizes {
                let _ = writeln!(
                    out,
                    "{:>8}{:>11.1}{:>9.1}{}{:>12.1}{:>14.1}{:>16.1}{:>12.1}{:>13.1}",
                    z.tunnels,
                    z.connect_s,
                    z.settle_s,
                    if z.stable { " " } else { "!" },
                    mib(z.relay_rss_kib),
                    z.relay_rss_per_tunnel_kib,
                    z.relay_anon_per_tunnel_kib,
                    z.relay_idle_cpu_percent,
                    mib(z.driver_rss_kib)
                );
                if z.hold_s > 0.0 {
                    let _ = writeln!(
                        out,
                        "  after {:.0}s more: relay {:.1} MiB, {:.1} anon KiB/tunnel",
                        z.hold_s,
                        mib(z.relay_rss_held_kib),
                        z.relay_anon_per_tunnel_held_kib
                    );
                }
            }
        }
        for w in [&self.watch_direct, &self.watch_hawser].into_iter().flatten() {
            let _ = writeln!(
                out,
                "\nwatch {} ({} watches on {} connections, an event every {} ms each; opened in {:.1}s):",
                w.target, w.watches, w.connections, w.interval_ms, w.open_s
            );
            for (label, l, eps, starved) in [
                ("before", &w.before, w.events_per_sec_before, w.starved_before),
                ("stalled", &w.stalled, w.events_per_sec_stalled, w.starved_stalled),
            ] {
                let _ = writeln!(
                    out,
                    "  {label:<8} events/s {eps:>8.0}  p50 {:>8.3} ms  p99 {:>8.3} ms  p99.9 {:>8.3} ms  max {:>8.3} ms  \
                     starved {starved}",
                    l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
                );
            }
            let _ = writeln!(
                out,
                "  stalled stream: read {} KiB, then {} KiB held on the way (filled in {:.2}s), {} bytes sent while stalled",
                w.stalled_stream_read_bytes >> 10,
                w.stalled_stream_held_bytes >> 10,
                w.stalled_stream_fill_s,
                w.stalled_stream_sent_during_bytes
            );
            let _ = writeln!(
                out,
                "  stalled/before p99 {:.3}; CPU s before: relay {:.2} agents {:.2} backend {:.2} driver {:.2}; \
                 failed watches {}",
                w.p99_ratio,
                w.cpu_before.relay_s,
                w.cpu_before.agents_s,
                w.cpu_before.backend_s,
                w.cpu_before.driver_s,
                w.failed
            );
        }
        if !self.storm.is_empty() {
            let _ = writeln!(
                out,
                "\nstorm (relay SIGTERM and restart on the same UDP port; seconds from SIGTERM):"
            );
            let _ = writeln!(
                out,
                "{:>8}{:>7}{:>10}{:>8}{:>8}{:>8}{:>8}{:>11}{:>8}{:>10}{:>10}{:>11}",
                "tunnels",
                "exit",
                "listening",
                "50%",
                "90%",
                "99%",
                "all",
                "relay CPU",
                "CPU %",
                "peak MiB",
                "attempts",
                "udp drops"
            );
            let t = |v: Option<f64>| v.map_or("-".to_owned(), |s| format!("{s:.1}"));
            for s in &self.storm {
                let _ = writeln!(
                    out,
                    "{:>8}{:>7.2}{:>10.2}{:>8}{:>8}{:>8}{:>8}{:>11.2}{:>8.0}{:>10.1}{:>10}{:>11}",
                    s.tunnels,
                    s.relay_exit_s,
                    s.relay_listening_s,
                    t(s.back_50_s),
                    t(s.back_90_s),
                    t(s.back_99_s),
                    t(s.back_all_s),
                    s.relay_cpu_s,
                    s.relay_cpu_percent,
                    mib(s.relay_peak_rss_kib),
                    s.counters.attempts,
                    s.udp_rcvbuf_errors
                );
                for (reason, n) in &s.counters.failures {
                    let early = s.counters_until_listening.failures.get(reason).copied().unwrap_or(0);
                    let _ = writeln!(
                        out,
                        "    failed attempts: {n} x {reason} ({early} of them before the new relay listened)"
                    );
                }
            }
        }
        out
    }
}
