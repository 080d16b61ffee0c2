//! Scenarios with many agent tunnels, all from one [`Swarm`] in this process:
//!
//! - `swarm`: relay memory per idle tunnel at each size (1,000 then 10,000);
//! - `storm`: with N tunnels up, the relay restarts on the same UDP port;
//!   how long until all N are registered again, the relay's CPU and peak
//!   memory meanwhile.
//!
//! "Registered" is the relay's own word: its `agent registered` log lines.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::PROGRESS;
use crate::progress::Kind;
use crate::scale::ScaleSettings;
use crate::swarm::{CountersSnapshot, Swarm};
use crate::system::{self, System};

/// How often the relay's memory and log are polled.
const POLL: Duration = Duration::from_millis(100);

/// Relay memory with one swarm size connected.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmSize {
    /// Idle tunnels connected.
    pub tunnels: usize,
    /// Seconds from starting the new agents until the relay had registered all of them.
    pub connect_s: f64,
    /// Seconds until the relay's VmRSS was stable (or the deadline passed: `stable` false).
    pub settle_s: f64,
    /// Whether it became stable: the last 8 samples (2 s) within max(256 KiB, 0.5 %).
    pub stable: bool,
    /// Relay VmRSS and RssAnon with them connected (the last sample), KiB.
    pub relay_rss_kib: u64,
    /// See `relay_rss_kib`.
    pub relay_anon_kib: u64,
    /// Largest VmRSS sampled since the swarm started, KiB.
    pub relay_rss_max_kib: u64,
    /// (VmRSS now - VmRSS before the swarm) / tunnels, KiB.
    pub relay_rss_per_tunnel_kib: f64,
    /// (RssAnon now - RssAnon before the swarm) / tunnels, KiB.
    pub relay_anon_per_tunnel_kib: f64,
    /// Relay CPU seconds while they connected and settled.
    pub relay_cpu_s: f64,
    /// Relay CPU per second of the last 2 s of settling (idle tunnels' keep-alives), in % of one core.
    pub relay_idle_cpu_percent: f64,
    /// This driver's VmRSS (the swarm's side), KiB.
    pub driver_rss_kib: u64,
    /// Seconds the tunnels were then held before the next size.
    pub hold_s: f64,
    /// Relay VmRSS at the end of the hold, KiB.
    pub relay_rss_held_kib: u64,
    /// (RssAnon at the end of the hold - before the swarm) / tunnels, KiB.
    pub relay_anon_per_tunnel_held_kib: f64,
}

/// `swarm`: relay memory per idle tunnel.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmResult {
    /// Relay VmRSS and RssAnon before the swarm, KiB.
    pub relay_rss_before_kib: u64,
    /// See `relay_rss_before_kib`.
    pub relay_anon_before_kib: u64,
    /// One entry per size, in the order run (each adds tunnels to the last).
    pub sizes: Vec<SwarmSize>,
    /// The swarm's UDP sockets at the largest size.
    pub endpoints: usize,
    /// The swarm's attempts and failures over the scenario.
    pub counters: CountersSnapshot,
}

/// `storm`: one relay restart with N tunnels up.
#[derive(Debug, Clone, Serialize)]
pub struct StormResult {
    /// Tunnels up before the restart.
    pub tunnels: usize,
    /// SIGTERM until the old relay exited.
    pub relay_exit_s: f64,
    /// SIGTERM until the new relay logged its listening line.
    pub relay_listening_s: f64,
    /// SIGTERM until the new relay had registered 50 %, 90 %, 99 % and all of them (null if never).
    pub back_50_s: Option<f64>,
    /// See `back_50_s`.
    pub back_90_s: Option<f64>,
    /// See `back_50_s`.
    pub back_99_s: Option<f64>,
    /// See `back_50_s`.
    pub back_all_s: Option<f64>,
    /// Registered when the deadline passed (if not all).
    pub registered: usize,
    /// The deadline, seconds after SIGTERM.
    pub deadline_s: f64,
    /// The new relay's CPU seconds from its start until all were back (or the deadline).
    pub relay_cpu_s: f64,
    /// That CPU over the same wall time, % of one core.
    pub relay_cpu_percent: f64,
    /// The new relay's peak VmRSS (VmHWM) when all were back, KiB.
    pub relay_peak_rss_kib: u64,
    /// Its VmRSS then, KiB.
    pub relay_rss_kib: u64,
    /// This driver's CPU seconds meanwhile (the swarm's handshakes).
    pub driver_cpu_s: f64,
    /// Machine-wide `Udp: RcvbufErrors` meanwhile.
    pub udp_rcvbuf_errors: u64,
    /// The swarm's attempts, registrations and failures from SIGTERM until the end.
    pub counters: CountersSnapshot,
    /// The same from SIGTERM until the new relay was listening (the old one's shutdown).
    pub counters_until_listening: CountersSnapshot,
}

/// The relay's `agent registered` minus `agent gone` for swarm clusters.
fn registered(sys: &System) -> usize {
    sys.events().connected("swarm-")
}

/// Polls until the relay has `n` swarm tunnels registered, or fails at `within`.
async fn wait_registered(sys: &System, n: usize, within: Duration, what: &str) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let now = registered(sys);
        PROGRESS.ok.store(now as u64, Ordering::Relaxed);
        if now == n {
            return Ok(());
        }
        if sys.events().exited() {
            bail!("the relay exited; see {}", sys.dir.join("relay.log").display());
        }
        if Instant::now() >= deadline {
            bail!("{what}: {now} swarm tunnels registered, not {n}, within {within:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A deadline that grows with the number of tunnels.
fn deadline_for(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(20) * n as u32
}

/// Starts a swarm for this system.
pub fn swarm(sys: &System, s: &ScaleSettings) -> Result<Swarm> {
    let token = std::fs::read_to_string(sys.dir.join("agent.token"))?;
    Swarm::new(
        sys.relay_udp,
        (sys.transport == "tcp").then_some(sys.relay_front),
        &sys.relay_ca,
        token.trim().to_owned(),
        s.swarm_per_socket,
        s.swarm_agent_streams,
    )
}

/// Grows the swarm to `n` in steps of `ramp`, each started once the relay has registered all but
/// a tenth of a step (a straggler's retry does not hold the next step up), then waits for all.
async fn ramp_to(sys: &System, swarm: &mut Swarm, n: usize, ramp: usize) -> Result<()> {
    let step = if ramp == 0 { n } else { ramp };
    while swarm.len() < n {
        let next = (swarm.len() + step).min(n);
        swarm.grow_to(next)?;
        let enough = next - step.min(next) / 10;
        let deadline = Instant::now() + deadline_for(step);
        while registered(sys) < enough {
            if Instant::now() >= deadline || sys.events().exited() {
                bail!("swarm: {} of {next} tunnels registered", registered(sys));
            }
            PROGRESS.ok.store(registered(sys) as u64, Ordering::Relaxed);
            tokio::time::sleep(POLL).await;
        }
    }
    wait_registered(sys, n, deadline_for(n), "swarm").await
}

/// `swarm`: grows the swarm through `sizes`, measuring the relay's memory at each, then stops it.
pub async fn idle(sys: &System, s: &ScaleSettings) -> Result<SwarmResult> {
    let relay = sys.relay.pid;
    let ticks = crate::stats::ticks_per_second();
    let (rss0, anon0) = system::rss_kib(relay)?;
    let mut swarm = swarm(sys, s)?;
    let counters0 = swarm.counters().snapshot();
    let mut max = rss0;
    let mut out = Vec::new();
    for &n in &s.swarm_tunnels {
        PROGRESS.begin(&format!("swarm: connecting {n} tunnels"), Kind::Agents, Duration::ZERO);
        let started = Instant::now();
        let cpu0 = cpu_ticks(relay);
        ramp_to(sys, &mut swarm, n, s.swarm_ramp).await?;
        let connect_s = started.elapsed().as_secs_f64();
        PROGRESS.end();
        PROGRESS.begin(
            &format!("swarm: {n} tunnels, waiting for stable relay memory"),
            Kind::Agents,
            Duration::ZERO,
        );
        let settle_started = Instant::now();
        let deadline = settle_started + Duration::from_secs(60);
        let mut samples: Vec<(u64, u64, u64)> = Vec::new();
        let stable = loop {
            let (rss, anon) = system::rss_kib(relay)?;
            max = max.max(rss);
            samples.push((rss, anon, cpu_ticks(relay)));
            PROGRESS.ok.store(registered(sys) as u64, Ordering::Relaxed);
            if let Some(last) = samples.get(samples.len().saturating_sub(8)..).filter(|l| l.len() == 8) {
                let lo = last.iter().map(|s| s.0).min().unwrap_or(0);
                let hi = last.iter().map(|s| s.0).max().unwrap_or(0);
                if hi - lo <= (hi / 200).max(256) {
                    break true;
                }
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let settle_s = settle_started.elapsed().as_secs_f64();
        // Then held for `swarm_hold`, in case a tunnel's memory grows with its age.
        let hold_until = Instant::now() + Duration::from_secs_f64(s.swarm_hold_s);
        while Instant::now() < hold_until {
            tokio::time::sleep(Duration::from_millis(250)).await;
            PROGRESS.ok.store(registered(sys) as u64, Ordering::Relaxed);
        }
        let (rss_held, anon_held) = system::rss_kib(relay)?;
        max = max.max(rss_held);
        if registered(sys) != n {
            bail!("swarm: only {} of {n} tunnels stayed registered", registered(sys));
        }
        let (rss, anon, cpu_end) = *samples.last().unwrap_or(&(0, 0, 0));
        let tail = samples[samples.len().saturating_sub(9)..].to_vec();
        let idle_cpu = tail
            .last()
            .map_or(0, |l| l.2)
            .saturating_sub(tail.first().map_or(0, |f| f.2));
        let tail_s = (tail.len().saturating_sub(1)) as f64 * 0.25;
        PROGRESS.end();
        out.push(SwarmSize {
            tunnels: n,
            connect_s,
            settle_s,
            stable,
            relay_rss_kib: rss,
            relay_anon_kib: anon,
            relay_rss_max_kib: max,
            relay_rss_per_tunnel_kib: (rss as f64 - rss0 as f64) / n as f64,
            relay_anon_per_tunnel_kib: (anon as f64 - anon0 as f64) / n as f64,
            relay_cpu_s: cpu_end.saturating_sub(cpu0) as f64 / ticks,
            relay_idle_cpu_percent: if tail_s > 0.0 {
                idle_cpu as f64 / ticks / tail_s * 100.0
            } else {
                0.0
            },
            driver_rss_kib: system::rss_kib(std::process::id()).map_or(0, |r| r.0),
            hold_s: s.swarm_hold_s,
            relay_rss_held_kib: rss_held,
            relay_anon_per_tunnel_held_kib: (anon_held as f64 - anon0 as f64) / n as f64,
        });
    }
    let counters = counters0.until(&swarm.counters().snapshot());
    let endpoints = swarm.endpoints();
    PROGRESS.begin("swarm: closing the tunnels", Kind::Agents, Duration::ZERO);
    let n = swarm.len();
    drop(swarm);
    wait_registered(sys, 0, deadline_for(n), "swarm closing").await?;
    PROGRESS.end();
    Ok(SwarmResult {
        relay_rss_before_kib: rss0,
        relay_anon_before_kib: anon0,
        sizes: out,
        endpoints,
        counters,
    })
}

/// `storm`: for each size, brings the swarm to it, restarts the relay and times the way back.
pub async fn storm(sys: &mut System, s: &ScaleSettings) -> Result<Vec<StormResult>> {
    let mut out = Vec::new();
    for &n in &s.storm_tunnels {
        // A fresh swarm per size: every agent's backoff starts from its first step,
        // as for agents whose tunnels had been up longer than `stable_after_secs`.
        PROGRESS.begin(&format!("storm: connecting {n} tunnels"), Kind::Agents, Duration::ZERO);
        let mut swarm = swarm(sys, s)?;
        if s.storm_grow_backoff_on_refusal {
            swarm.grow_backoff_on_refusal();
        }
        ramp_to(sys, &mut swarm, n, s.swarm_ramp).await?;
        PROGRESS.end();
        out.push(restart(sys, &swarm, n).await?);
        PROGRESS.begin("storm: closing the tunnels", Kind::Agents, Duration::ZERO);
        drop(swarm);
        wait_registered(sys, 0, deadline_for(n), "storm closing").await?;
        PROGRESS.end();
    }
    Ok(out)
}

async fn restart(sys: &mut System, swarm: &Swarm, n: usize) -> Result<StormResult> {
    let ticks = crate::stats::ticks_per_second();
    let counters0 = swarm.counters().snapshot();
    let driver0 = cpu_ticks(std::process::id());
    let udp0 = udp_rcvbuf_errors();
    PROGRESS.begin(
        &format!("storm: restarting the relay under {n} tunnels"),
        Kind::Agents,
        Duration::ZERO,
    );
    let restarted = restart_relay(sys, Duration::from_secs(30)).await?;
    let counters_listening = swarm.counters().snapshot();
    let relay = sys.relay.pid;
    let within = Duration::from_secs(120).max(deadline_for(n));
    let deadline = restarted.term + within;
    let marks = [n.div_ceil(2), (n * 9).div_ceil(10), (n * 99).div_ceil(100), n];
    let mut back: [Option<f64>; 4] = [None; 4];
    let (mut rss, mut peak) = (0, 0);
    let mut cpu = 0;
    loop {
        let now = registered(sys);
        PROGRESS.ok.store(now as u64, Ordering::Relaxed);
        let t = restarted.term.elapsed().as_secs_f64();
        for (mark, at) in marks.iter().zip(back.iter_mut()) {
            if now >= *mark && at.is_none() {
                *at = Some(t);
            }
        }
        if let Ok((r, _)) = system::rss_kib(relay) {
            rss = r;
        }
        peak = peak.max(hwm_kib(relay)).max(rss);
        cpu = cpu.max(cpu_ticks(relay));
        if now >= n || Instant::now() >= deadline || sys.events().exited() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    PROGRESS.end();
    let registered_now = registered(sys);
    let wall = (restarted.term.elapsed() - restarted.listening).as_secs_f64();
    let relay_cpu_s = cpu as f64 / ticks;
    Ok(StormResult {
        tunnels: n,
        relay_exit_s: restarted.exited.as_secs_f64(),
        relay_listening_s: restarted.listening.as_secs_f64(),
        back_50_s: back[0],
        back_90_s: back[1],
        back_99_s: back[2],
        back_all_s: back[3],
        registered: registered_now,
        deadline_s: within.as_secs_f64(),
        relay_cpu_s,
        relay_cpu_percent: if wall > 0.0 { relay_cpu_s / wall * 100.0 } else { 0.0 },
        relay_peak_rss_kib: peak,
        relay_rss_kib: rss,
        driver_cpu_s: cpu_ticks(std::process::id()).saturating_sub(driver0) as f64 / ticks,
        udp_rcvbuf_errors: udp_rcvbuf_errors().saturating_sub(udp0),
        counters_until_listening: counters0.until(&counters_listening),
        counters: counters0.until(&swarm.counters().snapshot()),
    })
}

/// A relay restart's timeline.
struct Restarted {
    /// When SIGTERM was sent.
    term: Instant,
    /// From SIGTERM until the old relay had exited.
    exited: Duration,
    /// From SIGTERM until the new relay logged its listening line.
    listening: Duration,
}

/// Restarts the relay on the same ports: SIGTERM, wait for it to exit, start it again with its
/// listeners pinned to the addresses it had; returns when it logs its listening line. The old
/// log is kept as `relay-N.log`.
async fn restart_relay(sys: &mut System, within: Duration) -> Result<Restarted> {
    let config = sys.dir.join("relay.toml");
    let pinned = std::fs::read_to_string(&config)?
        .replacen(
            "agent_listen = \"127.0.0.1:0\"",
            &format!("agent_listen = \"{}\"", sys.relay_udp),
            1,
        )
        .replacen(
            "\nlisten = \"127.0.0.1:0\"",
            &format!("\nlisten = \"{}\"", sys.relay_front),
            1,
        );
    std::fs::write(&config, pinned)?;
    let term = Instant::now();
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &sys.relay.pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill -TERM {} failed", sys.relay.pid);
    if tokio::time::timeout(within, sys.relay.child.wait()).await.is_err() {
        bail!("the relay did not exit within {within:?} of SIGTERM");
    }
    let exited = term.elapsed();
    let n = (1..)
        .find(|n| !sys.dir.join(format!("relay-{n}.log")).exists())
        .unwrap_or(0);
    std::fs::rename(sys.dir.join("relay.log"), sys.dir.join(format!("relay-{n}.log")))?;
    let (relay, events) = system::spawn_relay(&sys.hawser, &sys.dir, &config)?;
    sys.relay = relay;
    sys.events = events;
    let e = sys
        .wait_events("the restarted relay to listen", within, |e| e.listening.is_some())
        .await?;
    anyhow::ensure!(
        e.listening == Some((sys.relay_front, sys.relay_udp)),
        "the restarted relay listens on {:?}",
        e.listening
    );
    Ok(Restarted {
        term,
        exited,
        listening: term.elapsed(),
    })
}

/// utime + stime of a process, in clock ticks (0 if unreadable).
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    get(14) + get(15)
}

/// VmHWM (peak resident set) of a process, KiB.
fn hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|r| r.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Machine-wide `Udp: RcvbufErrors`.
pub fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}
