//! `k6mix` (issue #14): the request mix of `loadtest/k6/kubectl-mix.js`, run by this driver
//! (k6 itself cannot be installed on these machines: its licence), against each target in
//! turn, as k6 runs it: `vus` users loop list pods / get one pod / list configmaps in all
//! namespaces, while `watchers` users each hold a pod watch open for `watch_secs`
//! (`timeoutSeconds`, which the backend honours as kube-apiserver does) and open the next.
//! The backend answers with kube-apiserver-shaped bodies (`canned`). Figures: iterations and
//! requests per second, latency per kind of request, watches held and their events.

pub mod canned;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::PROGRESS;
use crate::client::Target;
use crate::progress::Kind;
use crate::report::Compared;
use crate::scenario::{Failures, Meter};
use crate::stats::{CpuUse, Latency, nanos};

/// Command-line options of `k6mix`.
#[derive(Debug, Clone, Args)]
pub struct K6MixArgs {
    /// `k6mix`: users looping list pods / get pod / list configmaps (k6's K6MIX_VUS) [default: 10; smoke: 4].
    #[arg(long)]
    pub k6mix_vus: Option<usize>,
    /// `k6mix`: users holding watches (K6MIX_WATCHERS) [default: 5; smoke: 2].
    #[arg(long)]
    pub k6mix_watchers: Option<usize>,
    /// `k6mix`: each watch's timeoutSeconds (K6MIX_WATCH_SECONDS) [default: 5; smoke: 1].
    #[arg(long)]
    pub k6mix_watch_secs: Option<u64>,
}

/// `k6mix`'s settings after defaults (its duration and warm-up are `--duration`, `--warmup`).
#[derive(Debug, Clone, Serialize)]
pub struct K6MixSettings {
    /// Users looping the three requests.
    pub vus: usize,
    /// Users holding watches.
    pub watchers: usize,
    /// Each watch's `timeoutSeconds`.
    pub watch_secs: u64,
    /// What the backend answers.
    pub backend: &'static str,
}

const BACKEND: &str = "kube-apiserver-shaped JSON from memory: PodList of 20 pods (about 28 KB), Pod (about 1.4 KB), \
    ConfigMapList of 40 (about 11 KB); watches send one ~100-byte event line a second and end at timeoutSeconds";

impl K6MixSettings {
    /// From the options.
    pub fn from(args: &K6MixArgs, smoke: bool) -> Result<Self> {
        let s = Self {
            vus: args.k6mix_vus.unwrap_or(if smoke { 4 } else { 10 }),
            watchers: args.k6mix_watchers.unwrap_or(if smoke { 2 } else { 5 }),
            watch_secs: args.k6mix_watch_secs.unwrap_or(if smoke { 1 } else { 5 }),
            backend: BACKEND,
        };
        anyhow::ensure!(s.vus >= 1, "--k6mix-vus: at least 1");
        anyhow::ensure!(
            (1..=3600).contains(&s.watch_secs),
            "--k6mix-watch-secs: 1 to 3600 seconds"
        );
        Ok(s)
    }
}

/// The mix's paths, as `loadtest/k6/kubectl-mix.js` builds them (`PATHS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// `kubectl get pods -n NS`.
    pub list_pods: String,
    /// `kubectl get pod NAME -n NS`.
    pub get_pod: String,
    /// `kubectl get configmaps -A`.
    pub list_configmaps: String,
    /// `kubectl get pods -n NS -w`, ended by the apiserver after `watch_secs`.
    pub watch: String,
}

impl Paths {
    /// For namespace `ns`, pod `pod` and watches of `watch_secs`.
    pub fn new(ns: &str, pod: &str, watch_secs: u64) -> Self {
        Self {
            list_pods: format!("/api/v1/namespaces/{ns}/pods?limit=500"),
            get_pod: format!("/api/v1/namespaces/{ns}/pods/{pod}"),
            list_configmaps: "/api/v1/configmaps?limit=500".to_owned(),
            watch: format!("/api/v1/namespaces/{ns}/pods?watch=1&timeoutSeconds={watch_secs}"),
        }
    }
}

/// One target's figures.
#[derive(Debug, Clone, Serialize)]
pub struct K6MixResult {
    /// Users looping the three requests.
    pub vus: usize,
    /// Measured wall time of the loop (watches may run up to one `watch_secs` longer).
    pub elapsed_s: f64,
    /// Whole iterations (all three requests right).
    pub iterations: u64,
    /// Iterations per second.
    pub iterations_per_sec: f64,
    /// Correct answers to the three kinds per second.
    pub requests_per_sec: f64,
    /// `list_pods` latency.
    pub list_pods: Latency,
    /// `get_pod` latency.
    pub get_pod: Latency,
    /// `list_configmaps` latency.
    pub list_configmaps: Latency,
    /// Watches the backend ended at `timeoutSeconds` with every event intact.
    pub watches: u64,
    /// Events those watches delivered.
    pub watch_events: u64,
    /// Shortest and longest watch, seconds (a relay cutting watches would show here).
    pub watch_held_s: (f64, f64),
    /// Failed requests and watches.
    pub failures: Failures,
    /// CPU used meanwhile.
    pub cpu: CpuUse,
}

/// Runs the mix against `target` for `duration` after an unrecorded `warmup` (the loop alone).
pub async fn run(
    target: &Arc<Target>,
    settings: &K6MixSettings,
    duration: Duration,
    warmup: Duration,
    meter: &Meter,
) -> Result<K6MixResult> {
    let paths = Arc::new(
        (0..canned::PODS)
            .map(|i| Paths::new(canned::NAMESPACE, &canned::pod_name(i), settings.watch_secs))
            .collect::<Vec<_>>(),
    );
    if !warmup.is_zero() {
        PROGRESS.begin(&format!("k6mix {} warm-up", target.name), Kind::Requests, warmup);
        let (.., failures) = kubectl_loop(target, &paths, settings.vus, Instant::now() + warmup).await?;
        PROGRESS.end();
        if failures.count > 0 {
            bail!(
                "{} k6mix requests failed during the warm-up of {}: {:?}",
                failures.count,
                target.name,
                failures.messages
            );
        }
    }
    PROGRESS.begin(&format!("k6mix {}", target.name), Kind::Requests, duration);
    let before = meter.pids.snapshot();
    let started = Instant::now();
    let deadline = started + duration;
    let watch_secs = Duration::from_secs(settings.watch_secs);
    let mut watchers = JoinSet::new();
    for w in 0..settings.watchers {
        let (target, paths) = (target.clone(), paths.clone());
        watchers.spawn(async move { watch_loop(&target, &paths[w % paths.len()].watch, watch_secs, deadline).await });
    }
    let (samples, iterations, mut failures) = kubectl_loop(target, &paths, settings.vus, deadline).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let (mut watches, mut events, mut held) = (0, 0, Vec::new());
    while let Some(joined) = watchers.join_next().await {
        let w = joined?;
        watches += w.held.len() as u64;
        events += w.events;
        held.extend(w.held);
        failures.merge(w.failures);
    }
    let cpu = before.until(&meter.pids.snapshot(), meter.ticks_per_second);
    PROGRESS.end();
    let [mut list_pods, mut get_pod, mut list_configmaps] = samples;
    let answered = (list_pods.len() + get_pod.len() + list_configmaps.len()) as f64;
    let held_min = held.iter().copied().fold(f64::INFINITY, f64::min);
    let held_max = held.iter().copied().fold(0.0, f64::max);
    Ok(K6MixResult {
        vus: settings.vus,
        elapsed_s: elapsed,
        iterations,
        iterations_per_sec: iterations as f64 / elapsed,
        requests_per_sec: answered / elapsed,
        list_pods: Latency::of(&mut list_pods),
        get_pod: Latency::of(&mut get_pod),
        list_configmaps: Latency::of(&mut list_configmaps),
        watches,
        watch_events: events,
        watch_held_s: (if held.is_empty() { 0.0 } else { held_min }, held_max),
        failures,
        cpu,
    })
}

/// `vus` users looping the three requests until `deadline`: latency samples per kind, whole
/// iterations, failures. Each user gets the pods in turn, as the k6 script picks one of the list.
async fn kubectl_loop(
    target: &Arc<Target>,
    paths: &Arc<Vec<Paths>>,
    vus: usize,
    deadline: Instant,
) -> Result<([Vec<u64>; 3], u64, Failures)> {
    let mut users = JoinSet::new();
    for u in 0..vus {
        let (target, paths) = (target.clone(), paths.clone());
        users.spawn(async move {
            let mut samples: [Vec<u64>; 3] = Default::default();
            let (mut iterations, mut failures) = (0u64, Failures::default());
            let mut i = u;
            while Instant::now() < deadline {
                let p = &paths[i % paths.len()];
                i += 1;
                let mut whole = true;
                let requests = [
                    (&p.list_pods, canned::POD_LIST.len()),
                    (&p.get_pod, canned::POD_BODIES[(i - 1) % canned::PODS].len()),
                    (&p.list_configmaps, canned::CONFIGMAP_LIST.len()),
                ];
                for (kind, (path, expected)) in requests.into_iter().enumerate() {
                    let t0 = Instant::now();
                    let answer = match target.uri(i, path) {
                        Ok(uri) => target.get_expecting(uri, expected as u64).await,
                        Err(e) => Err(e),
                    };
                    match answer {
                        Ok(_) => {
                            samples[kind].push(nanos(t0.elapsed()));
                            PROGRESS.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            whole = false;
                            failures.add(format!("{path}: {e:#}"));
                        }
                    }
                }
                iterations += u64::from(whole);
            }
            (samples, iterations, failures)
        });
    }
    let mut all: [Vec<u64>; 3] = Default::default();
    let (mut iterations, mut failures) = (0, Failures::default());
    while let Some(joined) = users.join_next().await {
        let (samples, n, f) = joined?;
        for (into, from) in all.iter_mut().zip(samples) {
            into.extend(from);
        }
        iterations += n;
        failures.merge(f);
    }
    Ok((all, iterations, failures))
}

struct Watched {
    /// Seconds each good watch was held.
    held: Vec<f64>,
    events: u64,
    failures: Failures,
}

/// One user's watches until `deadline`: at least one; another only if it can end by then.
async fn watch_loop(target: &Target, path: &str, watch_secs: Duration, deadline: Instant) -> Watched {
    let mut out = Watched {
        held: Vec::new(),
        events: 0,
        failures: Failures::default(),
    };
    let event_len = crate::watches::event().len() as u64;
    // At most one event line per WATCH_EVERY, the first at once.
    let most = watch_secs.as_secs_f64() / canned::WATCH_EVERY.as_secs_f64() + 1.0;
    loop {
        let t0 = Instant::now();
        let answer = match target.uri(0, path) {
            Ok(uri) => tokio::time::timeout(watch_secs + target.timeout, target.get(uri))
                .await
                .map_err(|_| anyhow::anyhow!("watch not ended within timeoutSeconds + {:?}", target.timeout))
                .and_then(|a| a),
            Err(e) => Err(e),
        };
        let held = t0.elapsed();
        match answer {
            // Ended by the backend's timeoutSeconds, not earlier (a relay's own timeout), with
            // whole event lines only.
            Ok(a)
                if a.status == http::StatusCode::OK
                    && held + Duration::from_millis(100) >= watch_secs
                    && a.bytes % event_len == 0
                    && a.bytes > 0
                    && (a.bytes / event_len) as f64 <= most =>
            {
                out.held.push(held.as_secs_f64());
                out.events += a.bytes / event_len;
                PROGRESS.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(a) => out.failures.add(format!(
                "watch: status {}, {} bytes after {held:?} (timeoutSeconds {})",
                a.status,
                a.bytes,
                watch_secs.as_secs()
            )),
            Err(e) => out.failures.add(format!("watch: {e:#}")),
        }
        if Instant::now() + watch_secs > deadline {
            return out;
        }
    }
}

impl Compared<K6MixResult> {
    /// With ratios of throughput and latency per kind.
    pub fn k6mix(direct: K6MixResult, hawser: K6MixResult) -> Self {
        let (d, h) = (&direct, &hawser);
        let r = |h: f64, d: f64| if d == 0.0 { f64::NAN } else { h / d };
        let ratio = std::collections::BTreeMap::from([
            ("requests_per_sec", r(h.requests_per_sec, d.requests_per_sec)),
            ("list_pods_p50_ms", r(h.list_pods.p50_ms, d.list_pods.p50_ms)),
            ("list_pods_p99_ms", r(h.list_pods.p99_ms, d.list_pods.p99_ms)),
            ("get_pod_p50_ms", r(h.get_pod.p50_ms, d.get_pod.p50_ms)),
            ("get_pod_p99_ms", r(h.get_pod.p99_ms, d.get_pod.p99_ms)),
            (
                "list_configmaps_p50_ms",
                r(h.list_configmaps.p50_ms, d.list_configmaps.p50_ms),
            ),
            (
                "list_configmaps_p99_ms",
                r(h.list_configmaps.p99_ms, d.list_configmaps.p99_ms),
            ),
        ]);
        Self { direct, hawser, ratio }
    }

    /// The rows of the comparison table.
    pub(crate) fn rows(&self, t: &mut crate::report::Table) {
        let (d, h) = (&self.direct, &self.hawser);
        let label = format!("k6mix ({} vus)", d.vus);
        t.row(&label, "iterations/s", d.iterations_per_sec, h.iterations_per_sec, 1);
        t.row("", "requests/s", d.requests_per_sec, h.requests_per_sec, 0);
        for (kind, dl, hl) in [
            ("list pods", &d.list_pods, &h.list_pods),
            ("get pod", &d.get_pod, &h.get_pod),
            ("list configmaps -A", &d.list_configmaps, &h.list_configmaps),
        ] {
            t.row("", &format!("{kind} p50 ms"), dl.p50_ms, hl.p50_ms, 3);
            t.row("", &format!("{kind} p99 ms"), dl.p99_ms, hl.p99_ms, 3);
        }
        t.row("", "watches held", d.watches as f64, h.watches as f64, 0);
        t.row("", "watch events", d.watch_events as f64, h.watch_events as f64, 0);
        t.row("", "shortest watch s", d.watch_held_s.0, h.watch_held_s.0, 2);
        t.failures(&d.failures.count, &h.failures.count);
    }

    /// Failure messages, labelled.
    pub fn failure_messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, r) in [("direct", &self.direct), ("hawser", &self.hawser)] {
            for m in &r.failures.messages {
                let mut line = String::new();
                let _ = write!(line, "k6mix {name}: {m}");
                out.push(line);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust mix sends what the k6 script sends: its `PATHS`, as node evaluates them.
    #[test]
    fn same_paths_as_the_k6_script() {
        let check = crate::package_dir().join("k6/check/check.mjs");
        let out = std::process::Command::new("node")
            .arg(&check)
            .arg("--paths")
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run node ({e}): install Node.js (apt-get install nodejs) to check the k6 scripts")
            });
        assert!(
            out.status.success(),
            "node {} --paths failed: {}",
            check.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let js: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from check.mjs --paths");
        let rust = Paths::new("default", "NAME", 30);
        assert_eq!(js["list_pods"], rust.list_pods.as_str());
        assert_eq!(js["get_pod"], rust.get_pod.as_str());
        assert_eq!(js["list_configmaps"], rust.list_configmaps.as_str());
        assert_eq!(js["watch"], rust.watch.as_str());
    }

    #[test]
    fn the_stand_in_answers_the_mix() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let p = Paths::new(canned::NAMESPACE, &canned::pod_name(3), 1);
            let split = |pq: &str| {
                let (path, query) = pq.split_once('?').map_or((pq, None), |(a, b)| (a, Some(b)));
                canned::answer(path, query)
            };
            for (pq, body) in [
                (&p.list_pods, &*canned::POD_LIST),
                (&p.get_pod, &canned::POD_BODIES[3]),
                (&p.list_configmaps, &*canned::CONFIGMAP_LIST),
            ] {
                let resp = split(pq);
                assert_eq!(resp.status(), http::StatusCode::OK, "{pq}");
                let got = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                assert_eq!(&got, body, "{pq}");
                let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
                assert!(v["kind"].is_string(), "{pq}: no kind");
            }
            assert_eq!(
                split("/api/v1/namespaces/default/pods/nope").status(),
                http::StatusCode::NOT_FOUND
            );
            assert_eq!(
                split("/api/v1/namespaces/default/pods?watch=1").status(),
                http::StatusCode::BAD_REQUEST
            );
            // The watch ends by itself at timeoutSeconds (1 s), after one or two events.
            let t0 = Instant::now();
            let got = http_body_util::BodyExt::collect(split(&p.watch).into_body())
                .await
                .unwrap()
                .to_bytes();
            let held = t0.elapsed();
            assert!(
                held >= Duration::from_secs(1) && held < Duration::from_secs(3),
                "{held:?}"
            );
            let lines = got.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
            assert!((1..=2).contains(&lines), "{lines} events");
        });
    }
}
