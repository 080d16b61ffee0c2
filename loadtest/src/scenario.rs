//! The scenarios. Each runs the same way against each target (direct to the
//! backend, and through Hawser), so their figures can be compared as ratios.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::PROGRESS;
use crate::backend::SMALL_BODY;
use crate::client::Target;
use crate::progress::Kind;
use crate::stats::{CpuUse, Latency, Pids, nanos};
use crate::system::{self, System};

/// Distinct error messages kept per measurement.
const KEEP_ERRORS: usize = 5;

/// Where CPU time is read from, and at what scale.
pub struct Meter {
    /// The processes.
    pub pids: Pids,
    /// Clock ticks per second.
    pub ticks_per_second: f64,
}

/// Failures and a few of their messages.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Failures {
    /// Requests that failed (transport error, status other than 200, wrong body length).
    pub count: u64,
    /// Up to five distinct messages.
    pub messages: Vec<String>,
}

impl Failures {
    /// Counts a failure and keeps its message if it is new and there is room.
    pub(crate) fn add(&mut self, message: String) {
        self.count += 1;
        PROGRESS.failed.fetch_add(1, Ordering::Relaxed);
        if self.messages.len() < KEEP_ERRORS && !self.messages.contains(&message) {
            self.messages.push(message);
        }
    }

    pub(crate) fn merge(&mut self, other: Failures) {
        self.count += other.count;
        for m in other.messages {
            if self.messages.len() < KEEP_ERRORS && !self.messages.contains(&m) {
                self.messages.push(m);
            }
        }
    }
}

/// `small`: closed loop, M callers, as many requests as they can.
#[derive(Debug, Clone, Serialize)]
pub struct SmallResult {
    /// Concurrent callers.
    pub callers: usize,
    /// Requests answered correctly.
    pub ok: u64,
    /// Failed requests.
    pub failures: Failures,
    /// Measured wall time.
    pub elapsed_s: f64,
    /// Correct answers per second.
    pub requests_per_sec: f64,
    /// Latency of the correct answers.
    pub latency: Latency,
    /// CPU used meanwhile.
    pub cpu: CpuUse,
}

/// Runs `callers` closed-loop callers of GET /small for `warmup`, recording nothing; fails if
/// any request does.
pub async fn warm_up(target: &Arc<Target>, callers: usize, warmup: Duration) -> Result<()> {
    if warmup.is_zero() {
        return Ok(());
    }
    PROGRESS.begin(&format!("small {} warm-up", target.name), Kind::Requests, warmup);
    let (_, _, failures) = closed_loop(target, callers, warmup).await?;
    PROGRESS.end();
    if failures.count > 0 {
        bail!(
            "{} requests failed during the warm-up of {}: {:?}",
            failures.count,
            target.name,
            failures.messages
        );
    }
    Ok(())
}

/// Runs `callers` closed-loop callers of GET /small for `duration` after an unrecorded `warmup`.
pub async fn small(
    target: &Arc<Target>,
    callers: usize,
    duration: Duration,
    warmup: Duration,
    meter: &Meter,
) -> Result<SmallResult> {
    warm_up(target, callers, warmup).await?;
    PROGRESS.begin(&format!("small {}", target.name), Kind::Requests, duration);
    let before = meter.pids.snapshot();
    let started = Instant::now();
    let (mut samples, ok, failures) = closed_loop(target, callers, duration).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = before.until(&meter.pids.snapshot(), meter.ticks_per_second);
    PROGRESS.end();
    Ok(SmallResult {
        callers,
        ok,
        failures,
        elapsed_s: elapsed,
        requests_per_sec: ok as f64 / elapsed,
        latency: Latency::of(&mut samples),
        cpu,
    })
}

async fn closed_loop(target: &Arc<Target>, callers: usize, duration: Duration) -> Result<(Vec<u64>, u64, Failures)> {
    let uris = (0..target.clusters())
        .map(|i| target.uri(i, "/small"))
        .collect::<Result<Vec<_>>>()?;
    let uris = Arc::new(uris);
    let deadline = Instant::now() + duration;
    let mut callers_set = JoinSet::new();
    for c in 0..callers {
        let (target, uris) = (target.clone(), uris.clone());
        callers_set.spawn(async move {
            let mut samples = Vec::new();
            let mut failures = Failures::default();
            let mut i = c;
            while Instant::now() < deadline {
                let uri = uris[i % uris.len()].clone();
                i += 1;
                let t0 = Instant::now();
                match target.get_expecting(uri, SMALL_BODY.len() as u64).await {
                    Ok(_) => {
                        samples.push(nanos(t0.elapsed()));
                        PROGRESS.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.add(format!("{e:#}")),
                }
            }
            (samples, failures)
        });
    }
    let mut all = Vec::new();
    let mut failures = Failures::default();
    while let Some(joined) = callers_set.join_next().await {
        let (samples, f) = joined?;
        all.extend(samples);
        failures.merge(f);
    }
    let ok = all.len() as u64;
    Ok((all, ok, failures))
}

/// `rate`: open loop at a fixed rate; latency from each request's intended send time.
#[derive(Debug, Clone, Serialize)]
pub struct RateResult {
    /// The schedule's rate.
    pub offered_per_sec: f64,
    /// Requests the schedule held.
    pub scheduled: u64,
    /// Requests answered correctly.
    pub ok: u64,
    /// Failed requests.
    pub failures: Failures,
    /// Requests not sent because too many were already in flight (the system fell behind).
    pub dropped: u64,
    /// Correct answers per second over the schedule.
    pub achieved_per_sec: f64,
    /// Latency from intended send time to the whole answer (no coordinated omission).
    pub latency: Latency,
    /// How late the pacer woke for each intended send (the driver's own error, included in `latency`).
    pub schedule_lag: Latency,
    /// CPU used meanwhile.
    pub cpu: CpuUse,
}

/// In-flight requests past which the open loop drops (and counts) rather than queue without bound.
const MAX_IN_FLIGHT: u64 = 10_000;

/// Sends GET /small at `rate` per second for `duration`.
///
/// The schedule is kept by a thread of its own sleeping with the OS's
/// high-resolution timer (tokio's timer ticks in whole milliseconds, which at
/// these rates would add up to a millisecond to every sample). Each request
/// is spawned onto the runtime at its intended time; its latency runs from
/// that intended time, so a system that falls behind is charged for the
/// wait (no coordinated omission). How late the pacer itself woke is
/// reported as `schedule_lag`.
pub async fn rate(target: &Arc<Target>, rate: f64, duration: Duration, meter: &Meter) -> Result<RateResult> {
    let scheduled = (rate * duration.as_secs_f64()).round() as u64;
    let uris = (0..target.clusters())
        .map(|i| target.uri(i, "/small"))
        .collect::<Result<Vec<_>>>()?;
    PROGRESS.begin(&format!("rate {} {rate:.0}/s", target.name), Kind::Requests, duration);
    let before = meter.pids.snapshot();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<u64, String>>();
    let runtime = tokio::runtime::Handle::current();
    let target = target.clone();
    let pacer = tokio::task::spawn_blocking(move || {
        let in_flight = Arc::new(AtomicU64::new(0));
        let mut lag = Vec::with_capacity(scheduled as usize);
        let mut dropped = 0u64;
        let start = Instant::now() + Duration::from_millis(5);
        for i in 0..scheduled {
            let intended = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            lag.push(nanos(intended.elapsed()));
            if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                dropped += 1;
                continue;
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let (target, uri, in_flight, tx) = (
                target.clone(),
                uris[i as usize % uris.len()].clone(),
                in_flight.clone(),
                tx.clone(),
            );
            runtime.spawn(async move {
                let answer = target.get_expecting(uri, SMALL_BODY.len() as u64).await;
                let latency = nanos(intended.elapsed());
                in_flight.fetch_sub(1, Ordering::Relaxed);
                let _ = tx.send(match answer {
                    Ok(_) => {
                        PROGRESS.ok.fetch_add(1, Ordering::Relaxed);
                        Ok(latency)
                    }
                    Err(e) => Err(format!("{e:#}")),
                });
            });
        }
        (Latency::of(&mut lag), dropped)
    });
    let mut samples = Vec::with_capacity(scheduled as usize);
    let mut failures = Failures::default();
    // Ends when the pacer and every request it spawned have dropped their senders.
    while let Some(result) = rx.recv().await {
        match result {
            Ok(ns) => samples.push(ns),
            Err(e) => failures.add(e),
        }
    }
    let (schedule_lag, dropped) = pacer.await?;
    let cpu = before.until(&meter.pids.snapshot(), meter.ticks_per_second);
    PROGRESS.end();
    let ok = samples.len() as u64;
    Ok(RateResult {
        offered_per_sec: rate,
        scheduled,
        ok,
        failures,
        dropped,
        achieved_per_sec: ok as f64 / duration.as_secs_f64(),
        latency: Latency::of(&mut samples),
        schedule_lag,
        cpu,
    })
}

/// `bulk`: concurrent downloads of N bytes each.
#[derive(Debug, Clone, Serialize)]
pub struct BulkResult {
    /// Concurrent streams.
    pub streams: usize,
    /// Bytes each stream downloads.
    pub bytes_per_stream: u64,
    /// Bytes received in all.
    pub total_bytes: u64,
    /// Wall time from the first request to the last byte.
    pub elapsed_s: f64,
    /// Aggregate throughput, 10^6 bytes per second.
    pub mb_per_sec: f64,
    /// Failed downloads.
    pub failures: Failures,
    /// CPU used meanwhile.
    pub cpu: CpuUse,
}

/// Downloads `bytes` on each of `streams` concurrent streams, after one unrecorded warm-up download.
pub async fn bulk(target: &Arc<Target>, streams: usize, bytes: u64, meter: &Meter) -> Result<BulkResult> {
    let path = format!("/bulk?bytes={bytes}");
    // The request timeout, plus the transfer at a floor of 10 MB/s.
    let within = |total: u64| target.timeout + Duration::from_secs_f64(total as f64 / 10e6);
    let warm = bytes.min(16 << 20);
    target
        .get_expecting_within(target.uri(0, &format!("/bulk?bytes={warm}"))?, warm, within(warm))
        .await
        .map_err(|e| anyhow::anyhow!("bulk warm-up download failed: {e:#}"))?;
    PROGRESS.begin(
        &format!("bulk {} x{streams}", target.name),
        Kind::Downloads,
        Duration::ZERO,
    );
    let before = meter.pids.snapshot();
    let started = Instant::now();
    let mut set = JoinSet::new();
    for s in 0..streams {
        let (target, uri, within) = (target.clone(), target.uri(s, &path)?, within(bytes * streams as u64));
        set.spawn(async move { target.get_expecting_within(uri, bytes, within).await });
    }
    let mut total = 0;
    let mut failures = Failures::default();
    while let Some(joined) = set.join_next().await {
        match joined? {
            Ok(n) => {
                total += n;
                PROGRESS.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => failures.add(format!("{e:#}")),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = before.until(&meter.pids.snapshot(), meter.ticks_per_second);
    PROGRESS.end();
    Ok(BulkResult {
        streams,
        bytes_per_stream: bytes,
        total_bytes: total,
        elapsed_s: elapsed,
        mb_per_sec: total as f64 / elapsed / 1e6,
        failures,
        cpu,
    })
}

/// `idle`: the relay's memory with N idle agent tunnels.
#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    /// Idle agents connected (one process and one cluster each).
    pub agents: usize,
    /// Seconds from starting the processes until the relay had registered them all.
    pub connect_s: f64,
    /// Seconds the relay was watched with all of them connected.
    pub settle_s: f64,
    /// Relay VmRSS before the idle agents came.
    pub relay_rss_before_kib: u64,
    /// Relay VmRSS with them connected (the last sample of the settle period).
    pub relay_rss_with_kib: u64,
    /// Largest relay VmRSS sampled while they were connected.
    pub relay_rss_max_kib: u64,
    /// (with - before) / agents.
    pub relay_rss_per_agent_kib: f64,
    /// Relay RssAnon before and with them (heap, without mapped files).
    pub relay_anon_before_kib: u64,
    /// See `relay_anon_before_kib`.
    pub relay_anon_with_kib: u64,
    /// (anon with - anon before) / agents.
    pub relay_anon_per_agent_kib: f64,
    /// Relay VmRSS after they all left (the relay logged them gone).
    pub relay_rss_after_kib: u64,
    /// Mean VmRSS of one idle agent process.
    pub agent_process_rss_mean_kib: f64,
}

/// Connects `n` idle agents, watches the relay's memory for `settle`, then stops them.
pub async fn idle(system: &System, n: usize, settle: Duration) -> Result<IdleResult> {
    if n > system.idle_clusters.len() {
        bail!("only {} idle clusters are configured", system.idle_clusters.len());
    }
    let relay = system.relay.pid;
    let (rss0, anon0) = system::rss_kib(relay)?;
    let already_gone = system.events().gone("idle-");
    PROGRESS.begin(&format!("idle: connecting {n} agents"), Kind::Agents, Duration::ZERO);
    let started = Instant::now();
    let mut agents = Vec::with_capacity(n);
    for (i, cluster) in system.idle_clusters.iter().take(n).enumerate() {
        agents.push(system.spawn_agent(cluster, &format!("idle-agent-{i:05}"))?);
    }
    // Polled with a deadline; the count shows on the progress line.
    let within = Duration::from_secs(60) + Duration::from_millis(100) * n as u32;
    let deadline = Instant::now() + within;
    loop {
        let events = system.events();
        let connected = events.connected("idle-");
        PROGRESS.ok.store(connected as u64, Ordering::Relaxed);
        if connected >= n {
            break;
        }
        if Instant::now() >= deadline {
            bail!("only {connected} of {n} idle agents registered within {within:?}");
        }
        system
            .wait_events("an idle agent", deadline - Instant::now(), |e| {
                e.connected("idle-") > connected
            })
            .await?;
    }
    let connect_s = started.elapsed().as_secs_f64();
    PROGRESS.end();

    PROGRESS.begin(
        &format!("idle: {n} agents connected, watching the relay"),
        Kind::Agents,
        settle,
    );
    let watch_started = Instant::now();
    let (mut rss, mut anon, mut max) = system::rss_kib(relay).map(|(r, a)| (r, a, r))?;
    while watch_started.elapsed() < settle {
        tokio::time::sleep(Duration::from_millis(250).min(settle)).await;
        (rss, anon) = system::rss_kib(relay)?;
        max = max.max(rss);
        PROGRESS
            .ok
            .store(system.events().connected("idle-") as u64, Ordering::Relaxed);
    }
    let still = system.events().connected("idle-");
    if still < n {
        bail!("only {still} of {n} idle agents stayed connected");
    }
    let agent_rss: Vec<u64> = agents
        .iter()
        .filter_map(|a| system::rss_kib(a.pid).ok().map(|(r, _)| r))
        .collect();
    let agent_mean = agent_rss.iter().sum::<u64>() as f64 / agent_rss.len().max(1) as f64;
    PROGRESS.end();

    PROGRESS.begin(&format!("idle: stopping {n} agents"), Kind::Agents, Duration::ZERO);
    PROGRESS.ok.store(n as u64, Ordering::Relaxed);
    system::stop(agents, Duration::from_secs(10)).await?;
    system
        .wait_events("the relay to see the idle agents go", Duration::from_secs(60), |e| {
            e.gone("idle-") >= already_gone + n
        })
        .await?;
    PROGRESS
        .ok
        .store(system.events().connected("idle-") as u64, Ordering::Relaxed);
    let (after, _) = system::rss_kib(relay)?;
    PROGRESS.end();
    let per = |with: u64, before: u64| (with as f64 - before as f64) / n.max(1) as f64;
    Ok(IdleResult {
        agents: n,
        connect_s,
        settle_s: settle.as_secs_f64(),
        relay_rss_before_kib: rss0,
        relay_rss_with_kib: rss,
        relay_rss_max_kib: max,
        relay_rss_per_agent_kib: per(rss, rss0),
        relay_anon_before_kib: anon0,
        relay_anon_with_kib: anon,
        relay_anon_per_agent_kib: per(anon, anon0),
        relay_rss_after_kib: after,
        agent_process_rss_mean_kib: agent_mean,
    })
}
