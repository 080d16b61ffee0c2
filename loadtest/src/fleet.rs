//! `fleet`: three relays (`--fleet-relays`) sharing a registry in etcd, peered over QUIC with
//! mutual TLS, behind nginx (docs/fleet.md). Three measurements in one run:
//!
//! 1. small requests/s against ONE relay (the baseline), against every relay at once (the
//!    callers' connections spread over them) and through nginx: the same callers, the same
//!    connections, the same clusters and agents; the scaling factor is fleet / one relay;
//! 2. the latency of a request whose cluster's one tunnel is on the relay the caller talks to,
//!    against one that relay-1 forwards to relay-0 (open loop at a fixed rate): the hop's cost;
//! 3. a rolling restart under `--fleet-agents` swarm agents behind nginx: each relay in turn gets
//!    SIGTERM, drains (its agents move), exits and starts again; the registry in etcd says when
//!    every agent is registered on another relay again ("re-homed") and that none is lost.

mod registry;
mod setup;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use crate::client::Target;
use crate::progress::Kind;
use crate::scenario::{Meter, RateResult, SmallResult};
use crate::stats::Pids;
use crate::swarm::{CountersSnapshot, Swarm};
use crate::{PROGRESS, Settings};
use setup::{BENCH, Fleet, HOP_CLUSTER, SWARM};

/// The target for a rolling restart: every agent re-homed within this many seconds.
const REHOME_TARGET_S: f64 = 30.0;
/// How often the registry is read while something is awaited.
const POLL: Duration = Duration::from_millis(100);

/// Command-line options of `fleet`.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// `fleet`: the etcd binary [default: target/testbed/bin/etcd of this repository, which
    /// `cargo test` builds].
    #[arg(long)]
    pub etcd: Option<PathBuf>,
    /// `fleet`: the nginx binary (with the stream module at
    /// /usr/lib/nginx/modules/ngx_stream_module.so) [default: /usr/sbin/nginx].
    #[arg(long)]
    pub nginx: Option<PathBuf>,
    /// `fleet`: relays behind nginx [default: 3].
    #[arg(long)]
    pub fleet_relays: Option<usize>,
    /// `fleet`: clusters under load, one agent process each, dialling nginx [default: 3].
    #[arg(long)]
    pub fleet_clusters: Option<usize>,
    /// `fleet`: requests/s of the hop measurement (open loop), per target [default: 500; smoke: 50].
    #[arg(long)]
    pub fleet_rate: Option<f64>,
    /// `fleet`: swarm agents behind nginx during the rolling restart [default: 10000; smoke: 24].
    #[arg(long)]
    pub fleet_agents: Option<usize>,
    /// `fleet`: relays restarted in turn, relay-0 first [default: all; smoke: 1].
    #[arg(long)]
    pub fleet_restarts: Option<usize>,
    /// `fleet`: the relays' `[drain] timeout_secs`: how long a draining relay waits for its agents
    /// to move before it closes their tunnels [default: the product's, 30].
    #[arg(long)]
    pub fleet_drain_timeout: Option<u64>,
}

/// `fleet`'s settings after defaults.
#[derive(Debug, Clone, Serialize)]
pub struct FleetSettings {
    /// The etcd binary.
    pub etcd: PathBuf,
    /// The nginx binary.
    pub nginx: PathBuf,
    /// Relays.
    pub relays: usize,
    /// Loaded clusters (one agent process each).
    pub clusters: usize,
    /// Requests/s of the hop measurement.
    pub hop_rate: f64,
    /// Swarm agents in the rolling restart.
    pub agents: usize,
    /// Relays restarted in turn.
    pub restarts: usize,
    /// The relays' `[drain] timeout_secs`, if not the default.
    pub drain_timeout_s: Option<u64>,
    /// The target: all re-homed within this many seconds of a SIGTERM.
    pub rehome_target_s: f64,
    /// How the fleet is set up.
    pub system: &'static str,
}

const FLEET_SYSTEM: &str = "etcd (test bed build, --unsafe-no-fsync) as the registry ([registry] kind = \"etcd\", defaults: \
    lease_ttl_secs 10); relays as in `small` plus [peers] (QUIC, mutual TLS, fleet CA made with rcgen), one issuer, \
    assertion key and serving certificate for all, [drain] defaults (grace 0 s, timeout 30 s); nginx 2 workers, stream \
    module: TCP round robin, UDP hash $remote_addr$remote_port consistent, max_fails=0; loaded clusters' agents dial \
    nginx (two tunnels each, on distinct relays); the hop cluster's agent dials relay-0 with [relay] connections = 1";

impl FleetSettings {
    /// From the options and the mode.
    pub fn from(args: &FleetArgs, smoke: bool) -> Result<Self> {
        let relays = args.fleet_relays.unwrap_or(3);
        let s = Self {
            etcd: args.etcd.clone().unwrap_or_else(|| {
                let package = crate::package_dir();
                package.parent().unwrap_or(package).join("target/testbed/bin/etcd")
            }),
            nginx: args.nginx.clone().unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx")),
            relays,
            clusters: args.fleet_clusters.unwrap_or(3),
            hop_rate: args.fleet_rate.unwrap_or(if smoke { 50.0 } else { 500.0 }),
            agents: args.fleet_agents.unwrap_or(if smoke { 24 } else { 10_000 }),
            restarts: args
                .fleet_restarts
                .unwrap_or(if smoke { 1 } else { relays })
                .min(relays),
            drain_timeout_s: args.fleet_drain_timeout,
            rehome_target_s: REHOME_TARGET_S,
            system: FLEET_SYSTEM,
        };
        anyhow::ensure!(s.relays >= 2, "--fleet-relays: at least 2");
        anyhow::ensure!(
            s.drain_timeout_s.is_none_or(|t| (1..=3600).contains(&t)),
            "--fleet-drain-timeout: 1 to 3600 seconds"
        );
        anyhow::ensure!(
            s.clusters >= 1 && s.agents >= 1,
            "--fleet-clusters and --fleet-agents: at least 1"
        );
        anyhow::ensure!(
            s.hop_rate > 0.0 && s.hop_rate.is_finite(),
            "--fleet-rate must be positive"
        );
        Ok(s)
    }
}

/// Everything `fleet` measured.
#[derive(Debug, Serialize)]
pub struct FleetResult {
    /// Which relays held which loaded cluster's tunnels during the throughput measurement.
    pub holders: BTreeMap<String, Vec<String>>,
    /// Small requests/s: one relay, every relay, nginx.
    pub throughput: Throughput,
    /// The cross-relay hop.
    pub hop: Hop,
    /// The rolling restart.
    pub restart: RollingRestart,
}

impl FleetResult {
    /// Failed requests.
    pub fn failures(&self) -> u64 {
        let t = &self.throughput;
        [&t.one_relay, &t.each_relay, &t.balancer]
            .iter()
            .map(|r| r.small.failures.count)
            .sum::<u64>()
            + self.hop.local.failures.count
            + self.hop.forwarded.failures.count
    }
}

/// One throughput measurement.
#[derive(Debug, Serialize)]
pub struct ThroughputRun {
    /// Where the callers' connections went.
    pub target: String,
    /// The closed loop's figures (its `cpu` counts the baseline relay as the relay).
    pub small: SmallResult,
    /// CPU seconds meanwhile, by process group (each relay, agents, nginx, etcd, backend, driver).
    pub cpu_s: BTreeMap<String, f64>,
    /// CPU of all relays and agents per answered request, µs.
    pub relays_agents_cpu_us_per_request: f64,
    /// Share of requests whose first relay held a tunnel of their cluster (the rest were
    /// forwarded), from the registry and an even spread of requests over clusters and relays.
    pub local_share: f64,
}

/// Small requests/s against one relay, every relay, nginx.
#[derive(Debug, Serialize)]
pub struct Throughput {
    /// Concurrent callers.
    pub callers: usize,
    /// HTTP/2 connections they share (the same number for every target).
    pub connections: usize,
    /// All connections to one relay (the baseline): the one whose share of the loaded clusters'
    /// tunnels is nearest the fleet's average.
    pub one_relay: ThroughputRun,
    /// The connections spread over every relay, directly.
    pub each_relay: ThroughputRun,
    /// All connections to nginx (round robin over the relays).
    pub balancer: ThroughputRun,
    /// each_relay / one_relay and balancer / one_relay, requests/s and latency.
    pub ratio: BTreeMap<&'static str, f64>,
}

/// The hop: the same cluster's requests, its one tunnel on relay-0, sent to relay-0 and to relay-1.
#[derive(Debug, Serialize)]
pub struct Hop {
    /// The open loop's rate, per target.
    pub rate: f64,
    /// To relay-0, which holds the tunnel.
    pub local: RateResult,
    /// To relay-1, which forwards to relay-0.
    pub forwarded: RateResult,
    /// CPU of all relays and the hop agent per answered request, µs: local.
    pub local_cpu_us_per_request: f64,
    /// The same, forwarded.
    pub forwarded_cpu_us_per_request: f64,
    /// CPU seconds by process group, local.
    pub local_cpu_s: BTreeMap<String, f64>,
    /// CPU seconds by process group, forwarded.
    pub forwarded_cpu_s: BTreeMap<String, f64>,
    /// forwarded − local, ms, at p50 / p90 / p99.
    pub extra_ms: BTreeMap<&'static str, f64>,
    /// forwarded / local at p50 / p90 / p99, and CPU per request.
    pub ratio: BTreeMap<&'static str, f64>,
}

/// A rolling restart under many agents.
#[derive(Debug, Serialize)]
pub struct RollingRestart {
    /// Swarm agents (one tunnel and one cluster each) behind nginx.
    pub agents: usize,
    /// Swarm agents per UDP socket of the driver (QUIC).
    pub agents_per_socket: usize,
    /// `--storm-grow-backoff-on-refusal`: the swarm agents modelled the agents before the quick
    /// redial (every refused attempt grew the backoff), not the product's of today.
    pub old_agents_grow_backoff_on_refusal: bool,
    /// Their transport.
    pub transport: &'static str,
    /// Seconds until all were registered, from the first dial.
    pub connect_s: f64,
    /// Swarm sessions per relay before the first SIGTERM.
    pub sessions_per_relay_before: BTreeMap<String, usize>,
    /// Swarm clusters registered before / after.
    pub registered_before: usize,
    /// See `registered_before`.
    pub registered_after: usize,
    /// Swarm session keys before / after (one per agent when nothing is in flight).
    pub sessions_before: usize,
    /// See `sessions_before`.
    pub sessions_after: usize,
    /// registered_before − registered_after.
    pub lost: i64,
    /// Each relay's turn.
    pub steps: Vec<RestartStep>,
    /// Whether every step re-homed within the target and none was lost.
    pub target_met: bool,
    /// The swarm's attempts, moves and failures over the whole restart.
    pub counters: CountersSnapshot,
}

/// One relay's turn in a rolling restart; times in seconds from its SIGTERM.
#[derive(Debug, Serialize)]
pub struct RestartStep {
    /// The relay.
    pub relay: String,
    /// Swarm sessions on it at SIGTERM (the agents that had to move).
    pub swarm_sessions_on_it: usize,
    /// Loaded clusters' sessions on it at SIGTERM.
    pub bench_sessions_on_it: usize,
    /// Until every swarm agent was registered again and none on this relay's old process: on
    /// another relay, or on this one started again (an agent that had not moved when the drain
    /// deadline closed its tunnel).
    pub rehomed_s: Option<f64>,
    /// Until the process had exited (its drain done, or its deadline passed).
    pub exited_s: Option<f64>,
    /// Until it, started again, answered `/readyz` with 200.
    pub ready_s: Option<f64>,
    /// Until it was ready and the registry held exactly one session per swarm agent and two
    /// relays per loaded cluster again.
    pub settled_s: Option<f64>,
    /// Agents told to move whose tunnel ended before a replacement was welcomed (the drain's
    /// deadline closed it): they were offline until they dialled again.
    pub unmoved: u64,
    /// The fewest swarm clusters registered at any read of the registry during the turn.
    pub fewest_registered: usize,
    /// The fewest loaded clusters registered at any read.
    pub fewest_bench_registered: usize,
    /// Registry reads during the turn.
    pub reads: usize,
    /// The swarm's attempts, moves and failures during the turn.
    pub counters: CountersSnapshot,
    /// Machine-wide `Udp: RcvbufErrors` during the turn.
    pub udp_rcvbuf_errors: u64,
}

/// Runs `fleet` with a fleet of its own.
pub async fn run(settings: &Settings, hawser: &Path, keep: bool) -> Result<FleetResult> {
    let f = &settings.fleet;
    let options = setup::Options {
        hawser: hawser.to_owned(),
        etcd: f.etcd.clone(),
        nginx: f.nginx.clone(),
        relays: f.relays,
        clusters: f.clusters,
        swarm_clusters: f.agents,
        drain_timeout_s: f.drain_timeout_s,
        transport: settings.transport.as_str(),
        keep,
    };
    let mut fleet = Fleet::start(&options).await?;
    let measured = measure(settings, &mut fleet).await;
    if measured.is_err() || keep {
        fleet.keep_dir();
        crate::say(&format!(
            "fleet: kept the working directory (configs, logs): {}",
            fleet.dir.display()
        ));
    }
    measured
}

async fn measure(settings: &Settings, fleet: &mut Fleet) -> Result<FleetResult> {
    let f = &settings.fleet;
    let timeout = Duration::from_secs_f64(settings.request_timeout_s);
    let connections = settings.connections * f.relays;
    let fronts: Vec<SocketAddr> = fleet.relays.iter().map(|r| r.front).collect();
    let bases = |authority: SocketAddr, clusters: &[String]| -> Vec<String> {
        clusters
            .iter()
            .map(|c| format!("https://{authority}/clusters/{c}"))
            .collect()
    };
    let (ca, token) = (fleet.relay_ca.clone(), fleet.token.clone());
    let connect = |name: &'static str, addrs: Vec<SocketAddr>, clusters: Vec<String>, n: usize| {
        let (ca, token) = (ca.clone(), token.clone());
        async move {
            let target =
                Target::connect_spread(name, &addrs, &ca, n, bases(addrs[0], &clusters), Some(&token), timeout).await?;
            // The first forwarded request also dials the peer link.
            crate::system::wait_answering(&target, || Ok(())).await?;
            Ok::<_, anyhow::Error>(target)
        }
    };

    // 1. Throughput. The baseline relay is the one whose share of the loaded clusters' tunnels
    // is nearest the fleet's average, so that it forwards as large a share of requests as the
    // fleet does (agents place their tunnels through nginx, so any relay may hold them all).
    let clusters = fleet.clusters.clone();
    let sessions = fleet.sessions().await?;
    let holders: BTreeMap<String, Vec<String>> = clusters
        .iter()
        .map(|c| (c.clone(), sessions.holders(c).into_iter().collect()))
        .collect();
    let held_by = |relay: &str| holders.values().filter(|h| h.iter().any(|r| r == relay)).count() as f64;
    let shares: Vec<f64> = fleet
        .relays
        .iter()
        .map(|r| held_by(&r.name) / clusters.len() as f64)
        .collect();
    let all_share = shares.iter().sum::<f64>() / f.relays as f64;
    let base = (0..f.relays)
        .min_by(|&a, &b| (shares[a] - all_share).abs().total_cmp(&(shares[b] - all_share).abs()))
        .unwrap_or(0);
    let one = connect("one relay", vec![fronts[base]], clusters.clone(), connections).await?;
    let each = connect("each relay", fronts.clone(), clusters.clone(), connections).await?;
    let balancer = connect("nginx", vec![fleet.balancer], clusters.clone(), connections).await?;
    crate::say(&format!(
        "fleet: answering through one relay ({}), each relay and nginx",
        fleet.relays[base].name
    ));
    let meter = Meter {
        pids: Pids {
            relay: fleet.relay_pids()[base],
            agents: fleet.agents.iter().map(|a| a.pid).collect(),
            backend: fleet.backend.pid,
        },
        ticks_per_second: crate::stats::ticks_per_second(),
    };
    let probe = CpuProbe::of(fleet);
    let (duration, warmup) = (
        Duration::from_secs_f64(settings.duration_s),
        Duration::from_secs_f64(settings.warmup_s),
    );
    let mut runs = Vec::new();
    for (target, share) in [(&one, shares[base]), (&each, all_share), (&balancer, all_share)] {
        // The warm-up apart, so that the CPU read below covers the measurement alone.
        crate::scenario::warm_up(target, settings.callers, warmup).await?;
        let before = probe.snapshot();
        let small = crate::scenario::small(target, settings.callers, duration, Duration::ZERO, &meter).await?;
        let cpu_s = probe.until(&before);
        let busy: f64 = cpu_s
            .iter()
            .filter(|(k, _)| k.starts_with("relay-") || *k == "agents")
            .map(|(_, v)| v)
            .sum();
        let name = match target.name {
            "one relay" => format!("one relay ({})", fleet.relays[base].name),
            other => other.to_owned(),
        };
        runs.push(ThroughputRun {
            target: name,
            relays_agents_cpu_us_per_request: per_request(busy, small.ok),
            small,
            cpu_s,
            local_share: share,
        });
    }
    let [one_relay, each_relay, balancer_run]: [ThroughputRun; 3] =
        runs.try_into().map_err(|_| anyhow::anyhow!("three runs"))?;
    let rps = |r: &ThroughputRun| r.small.requests_per_sec;
    let ratios = BTreeMap::from([
        ("each_relay_requests_per_sec", ratio(rps(&each_relay), rps(&one_relay))),
        ("nginx_requests_per_sec", ratio(rps(&balancer_run), rps(&one_relay))),
        (
            "each_relay_p99_ms",
            ratio(each_relay.small.latency.p99_ms, one_relay.small.latency.p99_ms),
        ),
        (
            "nginx_p99_ms",
            ratio(balancer_run.small.latency.p99_ms, one_relay.small.latency.p99_ms),
        ),
    ]);
    let throughput = Throughput {
        callers: settings.callers,
        connections,
        one_relay,
        each_relay,
        balancer: balancer_run,
        ratio: ratios,
    };
    drop((one, each, balancer));

    // 2. The hop.
    let hop_holders = sessions.holders(HOP_CLUSTER);
    if hop_holders.len() != 1 || !hop_holders.contains(&fleet.relays[0].name) {
        bail!("{HOP_CLUSTER} should be on relay-0 alone; the registry says {hop_holders:?}");
    }
    let hop = [HOP_CLUSTER.to_owned()];
    let local = connect("local", vec![fronts[0]], hop.to_vec(), settings.connections).await?;
    let forwarded = connect("forwarded", vec![fronts[1]], hop.to_vec(), settings.connections).await?;
    let hop_pid = fleet.hop_agent.as_ref().map_or(0, |a| a.pid);
    let hop_meter = Meter {
        pids: Pids {
            relay: fleet.relay_pids()[0],
            agents: vec![hop_pid],
            backend: fleet.backend.pid,
        },
        ticks_per_second: meter.ticks_per_second,
    };
    let hop_probe = CpuProbe::with_agents(fleet, vec![hop_pid]);
    let mut hop_runs = Vec::new();
    for target in [&local, &forwarded] {
        let before = hop_probe.snapshot();
        let r = crate::scenario::rate(target, f.hop_rate, duration, &hop_meter).await?;
        let cpu = hop_probe.until(&before);
        hop_runs.push((r, cpu));
    }
    drop((local, forwarded));
    let [(local, local_cpu_s), (forwarded, forwarded_cpu_s)]: [(RateResult, BTreeMap<String, f64>); 2] =
        hop_runs.try_into().map_err(|_| anyhow::anyhow!("two runs"))?;
    let busy = |cpu: &BTreeMap<String, f64>| -> f64 {
        cpu.iter()
            .filter(|(k, _)| k.starts_with("relay-") || *k == "agents")
            .map(|(_, v)| v)
            .sum()
    };
    let (lcpu, fcpu) = (
        per_request(busy(&local_cpu_s), local.ok),
        per_request(busy(&forwarded_cpu_s), forwarded.ok),
    );
    let (l, w) = (&local.latency, &forwarded.latency);
    let hop = Hop {
        rate: f.hop_rate,
        extra_ms: BTreeMap::from([
            ("p50", w.p50_ms - l.p50_ms),
            ("p90", w.p90_ms - l.p90_ms),
            ("p99", w.p99_ms - l.p99_ms),
        ]),
        ratio: BTreeMap::from([
            ("p50_ms", ratio(w.p50_ms, l.p50_ms)),
            ("p90_ms", ratio(w.p90_ms, l.p90_ms)),
            ("p99_ms", ratio(w.p99_ms, l.p99_ms)),
            ("cpu_us_per_request", ratio(fcpu, lcpu)),
        ]),
        local_cpu_us_per_request: lcpu,
        forwarded_cpu_us_per_request: fcpu,
        local,
        forwarded,
        local_cpu_s,
        forwarded_cpu_s,
    };
    // The hop agent dials relay-0 alone: it would be offline while relay-0 restarts.
    if let Some(agent) = fleet.hop_agent.take() {
        crate::system::stop(vec![agent], Duration::from_secs(10)).await?;
    }

    // 3. The rolling restart.
    let restart = rolling_restart(settings, fleet).await?;
    Ok(FleetResult {
        holders,
        throughput,
        hop,
        restart,
    })
}

/// Grows a swarm behind nginx to `--fleet-agents`, then restarts the relays in turn.
async fn rolling_restart(settings: &Settings, fleet: &mut Fleet) -> Result<RollingRestart> {
    let f = &settings.fleet;
    let s = &settings.scale;
    let n = f.agents;
    let tcp = (settings.transport == crate::Transport::Tcp).then_some(fleet.balancer);
    // nginx sends every agent of one UDP socket to one relay: at least a dozen sockets, so that
    // an agent told to move finds one that leads elsewhere.
    let per_socket = s.swarm_per_socket.min(n.div_ceil(12)).max(1);
    let mut swarm = Swarm::new(
        fleet.balancer,
        tcp,
        &fleet.relay_ca,
        fleet.agent_token.clone(),
        per_socket,
        s.swarm_agent_streams,
    )?;
    swarm.behind_balancer();
    if s.storm_grow_backoff_on_refusal {
        swarm.grow_backoff_on_refusal();
    }
    PROGRESS.begin(
        &format!("fleet: connecting {n} swarm agents through nginx"),
        Kind::Agents,
        Duration::ZERO,
    );
    let started = Instant::now();
    let step = if s.swarm_ramp == 0 { n } else { s.swarm_ramp };
    while swarm.len() < n {
        let next = (swarm.len() + step).min(n);
        swarm.grow_to(next)?;
        let enough = (next - step.min(next) / 10) as u64;
        let deadline = Instant::now() + deadline_for(step);
        loop {
            let up = swarm.counters().up.load(Ordering::Relaxed);
            PROGRESS.ok.store(up, Ordering::Relaxed);
            if up >= enough {
                break;
            }
            if Instant::now() >= deadline {
                bail!("fleet: {up} of {next} swarm agents up within {:?}", deadline_for(step));
            }
            tokio::time::sleep(POLL).await;
        }
    }
    let before = fleet
        .wait_registry("every swarm agent in the registry", deadline_for(n), |r| {
            PROGRESS.ok.store(r.registered(SWARM) as u64, Ordering::Relaxed);
            r.registered(SWARM) == n && r.sessions(SWARM) == n
        })
        .await?;
    let connect_s = started.elapsed().as_secs_f64();
    PROGRESS.end();
    let sessions_per_relay_before = fleet
        .relays
        .iter()
        .map(|r| (r.name.clone(), before.on(SWARM, &r.name)))
        .collect();
    let counters0 = swarm.counters().snapshot();
    let mut steps = Vec::new();
    for i in 0..f.restarts {
        steps.push(restart_one(fleet, &swarm, i, n).await?);
    }
    let after = fleet.sessions().await?;
    let counters = counters0.until(&swarm.counters().snapshot());
    PROGRESS.begin("fleet: closing the swarm", Kind::Agents, Duration::ZERO);
    drop(swarm);
    fleet
        .wait_registry("the swarm's sessions to go", deadline_for(n), |r| {
            r.sessions(SWARM) == 0
        })
        .await?;
    PROGRESS.end();
    let lost = before.registered(SWARM) as i64 - after.registered(SWARM) as i64;
    let target_met = lost == 0 && steps.iter().all(|s| s.rehomed_s.is_some_and(|t| t <= REHOME_TARGET_S));
    Ok(RollingRestart {
        agents: n,
        agents_per_socket: per_socket,
        old_agents_grow_backoff_on_refusal: s.storm_grow_backoff_on_refusal,
        transport: settings.transport.as_str(),
        connect_s,
        sessions_per_relay_before,
        registered_before: before.registered(SWARM),
        registered_after: after.registered(SWARM),
        sessions_before: before.sessions(SWARM),
        sessions_after: after.sessions(SWARM),
        lost,
        steps,
        target_met,
        counters,
    })
}

/// Relay `i`'s turn: SIGTERM, the drain (its agents move), its exit, its start again; the
/// registry is read every 100 ms throughout.
async fn restart_one(fleet: &mut Fleet, swarm: &Swarm, i: usize, n: usize) -> Result<RestartStep> {
    let name = fleet.relays[i].name.clone();
    let clusters = fleet.clusters.len();
    let two = fleet.relays.len().min(2);
    let at_start = fleet.sessions().await?;
    let counters0 = swarm.counters().snapshot();
    let udp0 = crate::storm::udp_rcvbuf_errors();
    PROGRESS.begin(
        &format!("fleet: rolling restart, {name} (registered swarm agents)"),
        Kind::Agents,
        Duration::ZERO,
    );
    let within = Duration::from_secs(120).max(deadline_for(n));
    let term = Instant::now();
    fleet.terminate_relay(i).await?;
    let (mut rehomed, mut exited, mut ready) = (None, None, None);
    let (mut fewest, mut fewest_bench, mut reads) = (usize::MAX, usize::MAX, 0);
    let settled = loop {
        let t = term.elapsed().as_secs_f64();
        if exited.is_none() && fleet.relay_exited(i)? {
            exited = Some(t);
            fleet.spawn_relay(i)?;
        }
        if exited.is_some() && ready.is_none() && fleet.relay_ready(i).await? {
            ready = Some(term.elapsed().as_secs_f64());
        }
        let r = fleet.sessions().await?;
        reads += 1;
        let t = term.elapsed().as_secs_f64();
        fewest = fewest.min(r.registered(SWARM));
        fewest_bench = fewest_bench.min(r.registered(BENCH));
        PROGRESS.ok.store(r.registered(SWARM) as u64, Ordering::Relaxed);
        // Every agent registered, none of them on the draining process: on another relay, or (an
        // agent whose tunnel the drain closed before it had moved) on this relay started again.
        let off_old = if exited.is_some() {
            r.registered(SWARM)
        } else {
            r.registered_elsewhere(SWARM, &name)
        };
        if rehomed.is_none() && off_old == n && (exited.is_some() || r.on(SWARM, &name) == 0) {
            rehomed = Some(t);
        }
        let bench_whole = fleet.clusters.iter().all(|c| r.holders(c).len() >= two);
        if ready.is_some() && rehomed.is_some() && r.registered(SWARM) == n && r.sessions(SWARM) == n && bench_whole {
            break Some(t);
        }
        if term.elapsed() >= within {
            bail!(
                "fleet: {name}'s turn did not settle within {within:?} of its SIGTERM: exited {exited:?}, ready {ready:?}, \
                 re-homed {rehomed:?}; {} of {n} swarm agents registered ({} sessions, {} on {name}), {} of {clusters} \
                 loaded clusters",
                r.registered(SWARM),
                r.sessions(SWARM),
                r.on(SWARM, &name),
                r.registered(BENCH)
            );
        }
        tokio::time::sleep(POLL).await;
    };
    PROGRESS.end();
    let counters = counters0.until(&swarm.counters().snapshot());
    crate::say(&format!(
        "fleet: {name}: re-homed after {:.1}s, exited after {:.1}s, ready after {:.1}s",
        rehomed.unwrap_or(f64::NAN),
        exited.unwrap_or(f64::NAN),
        ready.unwrap_or(f64::NAN)
    ));
    Ok(RestartStep {
        relay: name.clone(),
        swarm_sessions_on_it: at_start.on(SWARM, &name),
        bench_sessions_on_it: at_start.on(BENCH, &name),
        rehomed_s: rehomed,
        exited_s: exited,
        ready_s: ready,
        settled_s: settled,
        unmoved: counters.move_notices.saturating_sub(counters.moved),
        fewest_registered: fewest,
        fewest_bench_registered: fewest_bench,
        reads,
        counters,
        udp_rcvbuf_errors: crate::storm::udp_rcvbuf_errors().saturating_sub(udp0),
    })
}

/// A deadline that grows with the number of agents.
fn deadline_for(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(20) * n as u32
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

fn per_request(cpu_s: f64, requests: u64) -> f64 {
    if requests == 0 {
        f64::NAN
    } else {
        cpu_s * 1e6 / requests as f64
    }
}

/// CPU time of the fleet's processes, by group.
struct CpuProbe {
    groups: Vec<(String, Vec<u32>)>,
    ticks_per_second: f64,
}

impl CpuProbe {
    /// Each relay, the loaded clusters' agents, nginx, etcd, the backend and this driver.
    fn of(fleet: &Fleet) -> Self {
        Self::with_agents(fleet, fleet.agents.iter().map(|a| a.pid).collect())
    }

    /// The same, with `agents` as the agents.
    fn with_agents(fleet: &Fleet, agents: Vec<u32>) -> Self {
        let mut groups: Vec<(String, Vec<u32>)> = fleet
            .relays
            .iter()
            .zip(fleet.relay_pids())
            .map(|(r, pid)| (r.name.clone(), vec![pid]))
            .collect();
        groups.push(("agents".into(), agents));
        groups.push(("nginx".into(), fleet.nginx_pids()));
        groups.push(("etcd".into(), vec![fleet.etcd.pid]));
        groups.push(("backend".into(), vec![fleet.backend.pid]));
        groups.push(("driver".into(), vec![std::process::id()]));
        Self {
            groups,
            ticks_per_second: crate::stats::ticks_per_second(),
        }
    }

    fn snapshot(&self) -> Vec<u64> {
        self.groups
            .iter()
            .map(|(_, pids)| pids.iter().map(|p| crate::stats::ticks(&p.to_string())).sum())
            .collect()
    }

    fn until(&self, before: &[u64]) -> BTreeMap<String, f64> {
        self.groups
            .iter()
            .zip(self.snapshot().iter().zip(before))
            .map(|((name, _), (now, then))| (name.clone(), now.saturating_sub(*then) as f64 / self.ticks_per_second))
            .collect()
    }
}

impl FleetResult {
    /// The readable summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let t = &self.throughput;
        let _ = writeln!(
            out,
            "\nfleet: small requests, {} callers on {} HTTP/2 connections (loaded clusters on {})",
            t.callers,
            t.connections,
            self.holders
                .iter()
                .map(|(c, h)| format!("{c}: {}", h.join("+")))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            out,
            "{:<24}{:>12}{:>9}{:>9}{:>9}{:>8}{:>10}{:>9}{:>11}{:>9}",
            "target", "requests/s", "/ one", "p50 ms", "p99 ms", "local", "relays s", "nginx s", "µs/req", "failed"
        );
        for r in [&t.one_relay, &t.each_relay, &t.balancer] {
            let relays: f64 = r
                .cpu_s
                .iter()
                .filter(|(k, _)| k.starts_with("relay-"))
                .map(|(_, v)| v)
                .sum();
            let _ = writeln!(
                out,
                "{:<24}{:>12.0}{:>9.2}{:>9.3}{:>9.3}{:>7.0}%{:>10.2}{:>9.2}{:>11.0}{:>9}",
                r.target,
                r.small.requests_per_sec,
                ratio(r.small.requests_per_sec, t.one_relay.small.requests_per_sec),
                r.small.latency.p50_ms,
                r.small.latency.p99_ms,
                r.local_share * 100.0,
                relays,
                r.cpu_s.get("nginx").copied().unwrap_or(0.0),
                r.relays_agents_cpu_us_per_request,
                r.small.failures.count
            );
        }
        let h = &self.hop;
        let _ = writeln!(
            out,
            "\nfleet: the hop ({HOP_CLUSTER}'s one tunnel on relay-0; {:.0}/s open loop per target)",
            h.rate
        );
        let _ = writeln!(
            out,
            "{:<24}{:>10}{:>9}{:>9}{:>9}{:>9}{:>11}{:>9}",
            "target", "achieved/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "µs/req", "failed"
        );
        for (label, r, cpu) in [
            ("local (to relay-0)", &h.local, h.local_cpu_us_per_request),
            ("forwarded (to relay-1)", &h.forwarded, h.forwarded_cpu_us_per_request),
        ] {
            let _ = writeln!(
                out,
                "{label:<24}{:>10.0}{:>9.3}{:>9.3}{:>9.3}{:>9.3}{cpu:>11.0}{:>9}",
                r.achieved_per_sec,
                r.latency.p50_ms,
                r.latency.p90_ms,
                r.latency.p99_ms,
                r.latency.max_ms,
                r.failures.count
            );
        }
        let _ = writeln!(
            out,
            "the hop adds p50 {:+.3} ms (x{:.2}), p99 {:+.3} ms (x{:.2}); CPU per request x{:.2}",
            h.extra_ms["p50"], h.ratio["p50_ms"], h.extra_ms["p99"], h.ratio["p99_ms"], h.ratio["cpu_us_per_request"]
        );
        let r = &self.restart;
        let _ = writeln!(
            out,
            "\nfleet: rolling restart under {} swarm agents behind nginx ({}{}; all up after {:.1}s; per relay before: {}); \
             seconds from each SIGTERM:",
            r.agents,
            r.transport,
            if r.old_agents_grow_backoff_on_refusal {
                ", OLD AGENTS: refusals grow the backoff"
            } else {
                ""
            },
            r.connect_s,
            r.sessions_per_relay_before
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            out,
            "{:<9}{:>8}{:>10}{:>8}{:>8}{:>9}{:>9}{:>8}{:>8}{:>10}{:>10}{:>11}",
            "relay",
            "on it",
            "re-homed",
            "exited",
            "ready",
            "settled",
            "fewest",
            "moved",
            "notices",
            "attempts",
            "failures",
            "udp drops"
        );
        let secs = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        for s in &r.steps {
            let _ = writeln!(
                out,
                "{:<9}{:>8}{:>10}{:>8}{:>8}{:>9}{:>9}{:>8}{:>8}{:>9}{:>10}{:>10}{:>11}",
                s.relay,
                s.swarm_sessions_on_it,
                secs(s.rehomed_s),
                secs(s.exited_s),
                secs(s.ready_s),
                secs(s.settled_s),
                s.fewest_registered,
                s.counters.moved,
                s.counters.move_notices,
                s.unmoved,
                s.counters.attempts,
                s.counters.failures.values().sum::<u64>(),
                s.udp_rcvbuf_errors
            );
        }
        let _ = writeln!(
            out,
            "registered before {} ({} sessions), after {} ({} sessions): lost {}; target (all re-homed within {:.0}s, \
             none lost): {}",
            r.registered_before,
            r.sessions_before,
            r.registered_after,
            r.sessions_after,
            r.lost,
            REHOME_TARGET_S,
            if r.target_met { "met" } else { "MISSED" }
        );
        if !r.counters.failures.is_empty() {
            let _ = writeln!(out, "swarm failures: {:?}", r.counters.failures);
        }
        out
    }
}
