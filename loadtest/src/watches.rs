//! `watch`: many concurrent watches with events flowing, then one stalled
//! reader among them.
//!
//! The backend's `GET /watch?interval_ms=N` never ends and sends one small
//! JSON event line every N ms, stamped with the wall-clock time it was made
//! (backend and driver share the machine's clock). The driver opens the
//! watches over a few HTTP/2 connections, waits until every watch has had
//! its first event (polled, with a deadline), then records each event's
//! delivery latency (receive time - stamp) for a period ("before"). Then it
//! starts one more stream on the first connection, a download of a huge
//! `/bulk` whose reader stops after `stall_read` bytes and never reads again,
//! and records the watches' latency for another period ("stalled").
//!
//! Through Hawser the agent gives each watch an HTTP/1.1 connection of its own
//! to the backend (the product sends watches to dedicated connections).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::PROGRESS;
use crate::backend::Body;
use crate::progress::Kind;
use crate::scenario::Meter;
use crate::stats::{CpuUse, Latency};

/// The backend's answer to `GET /watch?interval_ms=N` (N in 1..=60000, default 1000).
pub fn watch_body(query: Option<&str>) -> Response<Body> {
    let ms = query
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("interval_ms=")))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| (1..=60_000).contains(ms))
        .unwrap_or(1000);
    let mut ticker = tokio::time::interval(Duration::from_millis(ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resp = Response::new(Body::Watch(Box::new(ticker)));
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `/bulk` bytes the backend has produced so far (its `GET /stats`).
pub static BULK_SENT: AtomicU64 = AtomicU64::new(0);

/// The backend's answer to `GET /stats`.
pub fn stats_body() -> Response<Body> {
    let body = format!("{{\"bulk_sent\":{}}}", BULK_SENT.load(Ordering::Relaxed));
    Response::new(Body::Once(Some(Bytes::from(body))))
}

/// One watch event, stamped now.
pub fn event() -> Bytes {
    Bytes::from(format!(
        "{{\"type\":\"MODIFIED\",\"object\":{{\"kind\":\"Event\",\"metadata\":{{\"name\":\"loadtest\"}},\"ts\":{}}}}}\n",
        unix_nanos()
    ))
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn stamp_of(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = &text[text.find("\"ts\":")? + 5..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// What the scenario was asked to do.
pub struct Plan {
    /// Concurrent watches.
    pub watches: usize,
    /// HTTP/2 connections they share.
    pub connections: usize,
    /// Milliseconds between one watch's events.
    pub interval_ms: u64,
    /// Seconds of each measured period.
    pub measure: Duration,
    /// Bytes the stalled reader reads before it stops.
    pub stall_read: u64,
}

/// Figures of one target.
#[derive(Debug, Clone, Serialize)]
pub struct WatchResult {
    /// `direct` or `hawser`.
    pub target: &'static str,
    /// Concurrent watches.
    pub watches: usize,
    /// HTTP/2 connections they shared.
    pub connections: usize,
    /// Milliseconds between one watch's events.
    pub interval_ms: u64,
    /// Seconds of each measured period.
    pub measure_s: f64,
    /// Seconds from the first request until every watch had its first event.
    pub open_s: f64,
    /// Event latency before the stall.
    pub before: Latency,
    /// Event latency with the stalled reader.
    pub stalled: Latency,
    /// stalled p99 / before p99.
    pub p99_ratio: f64,
    /// Events per second received before and during the stall (expected: watches * 1000 / interval_ms).
    pub events_per_sec_before: f64,
    /// See `events_per_sec_before`.
    pub events_per_sec_stalled: f64,
    /// Watches that got no event at all in the period.
    pub starved_before: usize,
    /// See `starved_before`.
    pub starved_stalled: usize,
    /// Bytes the stalled reader read before it stopped.
    pub stalled_stream_read_bytes: u64,
    /// Bytes the backend produced for it beyond those: held in buffers and windows on the way.
    pub stalled_stream_held_bytes: u64,
    /// Seconds from its request until the backend stopped producing (no new byte for 0.5 s).
    pub stalled_stream_fill_s: f64,
    /// Bytes the backend produced for it during the stalled period (0: it really was stalled).
    pub stalled_stream_sent_during_bytes: u64,
    /// CPU during each period.
    pub cpu_before: CpuUse,
    /// See `cpu_before`.
    pub cpu_stalled: CpuUse,
    /// Watches that failed (error, status, or ended).
    pub failed: u64,
    /// A few of their messages.
    pub failure_messages: Vec<String>,
}

/// Shared by the watch tasks.
struct Recorder {
    /// 0: opening (not recorded), 1: before, 2: stalled, 3: over.
    phase: AtomicUsize,
    samples: [Mutex<Vec<u64>>; 2],
    counts: [Vec<AtomicU32>; 2],
    first: AtomicUsize,
    failed: AtomicU64,
    messages: Mutex<Vec<String>>,
}

impl Recorder {
    fn record(&self, watch: usize, latency_ns: u64) {
        let phase = self.phase.load(Ordering::Relaxed);
        if (1..=2).contains(&phase) {
            self.counts[phase - 1][watch].fetch_add(1, Ordering::Relaxed);
            self.samples[phase - 1]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(latency_ns);
        }
    }

    fn fail(&self, message: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        PROGRESS.failed.fetch_add(1, Ordering::Relaxed);
        let mut m = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() < 5 && !m.contains(&message) {
            m.push(message);
        }
    }

    fn take(&self, phase: usize) -> (Latency, usize, usize) {
        let mut samples = std::mem::take(&mut *self.samples[phase].lock().unwrap_or_else(|e| e.into_inner()));
        let starved = self.counts[phase]
            .iter()
            .filter(|c| c.load(Ordering::Relaxed) == 0)
            .count();
        let n = samples.len();
        (Latency::of(&mut samples), n, starved)
    }
}

/// Where the watches go.
pub struct Endpoint<'a> {
    /// `direct` or `hawser`.
    pub name: &'static str,
    /// The server.
    pub addr: std::net::SocketAddr,
    /// Its CA.
    pub ca: &'a std::path::Path,
    /// URL prefix (`https://ADDR` or `https://ADDR/clusters/NAME`).
    pub base: String,
    /// Bearer token, through the relay.
    pub token: Option<&'a str>,
}

/// Runs the scenario against one endpoint.
pub async fn run(to: &Endpoint<'_>, plan: &Plan, meter: &Meter, stats: &Probe) -> Result<WatchResult> {
    let n = plan.watches;
    let connector = TlsConnector::from(Arc::new(crate::tls::client_config(to.ca)?));
    let mut senders = Vec::new();
    for _ in 0..plan.connections.max(1) {
        senders.push(crate::client::open(&connector, to.addr).await?);
    }
    let auth = match to.token {
        Some(t) => Some(HeaderValue::try_from(format!("Bearer {t}"))?),
        None => None,
    };
    let rec = Arc::new(Recorder {
        phase: AtomicUsize::new(0),
        samples: Default::default(),
        counts: [(); 2].map(|_| (0..n).map(|_| AtomicU32::new(0)).collect()),
        first: AtomicUsize::new(0),
        failed: AtomicU64::new(0),
        messages: Mutex::default(),
    });
    let uri: Uri = format!("{}/watch?watch=true&interval_ms={}", to.base, plan.interval_ms).parse()?;
    PROGRESS.begin(
        &format!("watch {}: opening {n} watches", to.name),
        Kind::Requests,
        Duration::ZERO,
    );
    let started = Instant::now();
    // Opening is bounded so the relay's and agent's handshakes queue here, not in timeouts.
    let opening = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (sender, uri, auth, mine) = (
            senders[i % senders.len()].clone(),
            uri.clone(),
            auth.clone(),
            rec.clone(),
        );
        let permit = opening.clone().acquire_owned().await?;
        tasks.spawn(async move {
            if let Err(e) = watch(sender, uri, auth, i, &mine, permit).await {
                mine.fail(format!("{e:#}"));
            }
        });
        if rec.failed.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    let within = Duration::from_secs(60) + Duration::from_millis(10) * n as u32;
    let deadline = started + within;
    loop {
        let first = rec.first.load(Ordering::Relaxed);
        PROGRESS.ok.store(first as u64, Ordering::Relaxed);
        if rec.failed.load(Ordering::Relaxed) > 0 {
            bail!(
                "watch {}: {} watch(es) failed while opening: {:?}",
                to.name,
                rec.failed.load(Ordering::Relaxed),
                rec.messages.lock().unwrap_or_else(|e| e.into_inner())
            );
        }
        if first >= n {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "watch {}: only {first} of {n} watches had an event within {within:?}",
                to.name
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open_s = started.elapsed().as_secs_f64();
    PROGRESS.end();

    let cpu = |from: &crate::stats::CpuSnapshot| from.until(&meter.pids.snapshot(), meter.ticks_per_second);
    // An unrecorded period first: the opening's after-effects (connections, buffers) settle.
    PROGRESS.begin(
        &format!("watch {}: {n} watches, warm-up", to.name),
        Kind::Requests,
        plan.measure,
    );
    tokio::time::sleep(plan.measure).await;
    PROGRESS.end();
    PROGRESS.begin(
        &format!("watch {}: {n} watches, before", to.name),
        Kind::Requests,
        plan.measure,
    );
    rec.phase.store(1, Ordering::Relaxed);
    let snap = meter.pids.snapshot();
    tokio::time::sleep(plan.measure).await;
    rec.phase.store(9, Ordering::Relaxed);
    let cpu_before = cpu(&snap);
    let bulk_sent0 = backend_bulk_sent(stats).await?;
    PROGRESS.end();

    // The stalled reader: on the first connection, with its share of the watches.
    PROGRESS.begin(
        &format!("watch {}: one stalled reader, filling the path", to.name),
        Kind::Requests,
        Duration::ZERO,
    );
    rec.phase.store(9, Ordering::Relaxed);
    let stall_started = Instant::now();
    let bulk: Uri = format!("{}/bulk?bytes={}", to.base, 64u64 << 30).parse()?;
    let mut sender = senders[0].clone();
    let mut req = Request::get(bulk).body(Empty::<Bytes>::new())?;
    if let Some(a) = &auth {
        req.headers_mut().insert(http::header::AUTHORIZATION, a.clone());
    }
    sender.ready().await?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .context("the stalled stream's answer")??;
    if resp.status() != StatusCode::OK {
        bail!("the stalled stream answered {}", resp.status());
    }
    let mut stalled = resp.into_body();
    let mut read = 0u64;
    while read < plan.stall_read {
        let frame = tokio::time::timeout(Duration::from_secs(10), stalled.frame())
            .await
            .context("the stalled stream's first bytes")?
            .ok_or_else(|| anyhow!("the stalled stream ended"))??;
        read += frame.data_ref().map_or(0, |d| d.len() as u64);
    }
    // From here on nobody reads `stalled`. Stalled means the backend has stopped producing its
    // bytes: every buffer and window on the way is full. Polled, with a deadline.
    let sent0 = backend_bulk_sent(stats).await?;
    let mut last = (sent0, Instant::now());
    let stall_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = backend_bulk_sent(stats).await?;
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= Duration::from_millis(500) {
            break;
        }
        if Instant::now() >= stall_deadline {
            bail!("watch {}: the stalled stream's backend kept sending for 30 s", to.name);
        }
    }
    let held = last.0.saturating_sub(bulk_sent0).saturating_sub(read);
    let fill_s = (last.1 - stall_started).as_secs_f64();
    PROGRESS.end();
    PROGRESS.begin(
        &format!("watch {}: {n} watches, one stalled reader", to.name),
        Kind::Requests,
        plan.measure,
    );
    let snap = meter.pids.snapshot();
    rec.phase.store(2, Ordering::Relaxed);
    tokio::time::sleep(plan.measure).await;
    rec.phase.store(3, Ordering::Relaxed);
    let still = backend_bulk_sent(stats).await?;
    let cpu_stalled = cpu(&snap);
    PROGRESS.end();
    drop(stalled);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(senders);

    let (before, events_before, starved_before) = rec.take(0);
    let (stalled, events_stalled, starved_stalled) = rec.take(1);
    let secs = plan.measure.as_secs_f64();
    Ok(WatchResult {
        target: to.name,
        watches: n,
        connections: plan.connections,
        interval_ms: plan.interval_ms,
        measure_s: secs,
        open_s,
        p99_ratio: if before.p99_ms > 0.0 {
            stalled.p99_ms / before.p99_ms
        } else {
            f64::NAN
        },
        before,
        stalled,
        events_per_sec_before: events_before as f64 / secs,
        events_per_sec_stalled: events_stalled as f64 / secs,
        starved_before,
        starved_stalled,
        stalled_stream_read_bytes: read,
        stalled_stream_held_bytes: held,
        stalled_stream_fill_s: fill_s,
        stalled_stream_sent_during_bytes: still.saturating_sub(last.0),
        cpu_before,
        cpu_stalled,
        failed: rec.failed.load(Ordering::Relaxed),
        failure_messages: rec.messages.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    })
}

/// A connection of its own to the backend, for its `GET /stats`.
pub struct Probe {
    sender: SendRequest<Empty<Bytes>>,
    uri: Uri,
}

impl Probe {
    /// Connects to the backend at `addr`, trusting `ca`.
    pub async fn connect(addr: std::net::SocketAddr, ca: &std::path::Path) -> Result<Self> {
        let connector = TlsConnector::from(Arc::new(crate::tls::client_config(ca)?));
        Ok(Self {
            sender: crate::client::open(&connector, addr).await?,
            uri: format!("https://{addr}/stats").parse()?,
        })
    }
}

/// The backend's `/bulk` byte counter.
async fn backend_bulk_sent(probe: &Probe) -> Result<u64> {
    let mut sender = probe.sender.clone();
    sender.ready().await?;
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let resp = sender
            .send_request(Request::get(probe.uri.clone()).body(Empty::<Bytes>::new())?)
            .await?;
        Ok::<_, anyhow::Error>(resp.into_body().collect().await?.to_bytes())
    })
    .await
    .context("the backend's /stats within 5 s")??;
    let v: serde_json::Value = serde_json::from_slice(&answer)?;
    v.get("bulk_sent")
        .and_then(|n| n.as_u64())
        .context("no bulk_sent in the backend's /stats")
}

/// One watch: request, then read event lines until aborted.
async fn watch(
    mut sender: SendRequest<Empty<Bytes>>,
    uri: Uri,
    auth: Option<HeaderValue>,
    i: usize,
    rec: &Recorder,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<()> {
    let mut req = Request::get(uri).body(Empty::<Bytes>::new())?;
    if let Some(a) = auth {
        req.headers_mut().insert(http::header::AUTHORIZATION, a);
    }
    sender.ready().await.map_err(|e| anyhow!("connection: {e}"))?;
    let resp = sender.send_request(req).await.map_err(|e| anyhow!("request: {e}"))?;
    if resp.status() != StatusCode::OK {
        bail!("status {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut permit = Some(permit);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow!("body: {e}"))?;
        let Some(data) = frame.data_ref() else { continue };
        let now = unix_nanos();
        buf.extend_from_slice(data);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            if let Some(stamp) = stamp_of(&buf[..end]) {
                rec.record(i, now.saturating_sub(stamp));
                if permit.take().is_some() {
                    rec.first.fetch_add(1, Ordering::Relaxed);
                }
                PROGRESS.ok.fetch_add(1, Ordering::Relaxed);
            }
            buf.drain(..=end);
        }
    }
    bail!("the watch ended")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_their_stamp() {
        let e = event();
        assert!(e.ends_with(b"\n"));
        let stamp = stamp_of(&e[..e.len() - 1]).unwrap();
        assert!(stamp > 1_600_000_000_000_000_000);
        assert_eq!(stamp_of(b"{\"ts\":12}"), Some(12));
        assert_eq!(stamp_of(b"{}"), None);
    }
}
