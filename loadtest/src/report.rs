//! The results: a readable table on stdout and, with `--json`, every figure
//! with versions, the command line and the machine.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::process::Command;

use crate::Settings;
use crate::scenario::{BulkResult, IdleResult, RateResult, SmallResult};
use crate::stats::CpuUse;

/// Everything one run found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// This driver.
    pub tool: Tool,
    /// The system under test.
    pub hawser: HawserInfo,
    /// argv of this run.
    pub command_line: Vec<String>,
    /// When it started, UTC.
    pub started: String,
    /// When it ended, UTC.
    pub finished: String,
    /// The machine.
    pub machine: Machine,
    /// Settings after defaults.
    pub settings: Settings,
    /// `small`.
    pub small: Option<Compared<SmallResult>>,
    /// `rate`.
    pub rate: Option<Compared<RateResult>>,
    /// `bulk`: one stream, then the concurrent count.
    pub bulk: Vec<Compared<BulkResult>>,
    /// `idle` (no baseline: direct access has no tunnels).
    pub idle: Option<IdleResult>,
    /// `swarm`, `watch` and `storm`.
    pub scale: crate::scale::ScaleResults,
    /// Peers and the bare-quinn ceiling.
    pub peers: crate::peers::PeerResults,
    /// `fleet`.
    pub fleet: Option<crate::fleet::FleetResult>,
    /// `telemetry`.
    pub telemetry: Option<crate::telemetry::TelemetryResult>,
    /// `k6mix`.
    pub k6mix: Option<Compared<crate::k6mix::K6MixResult>>,
    /// Failed requests over every measurement.
    pub failed_requests: u64,
}

/// This driver.
#[derive(Debug, Serialize)]
pub struct Tool {
    /// Its name.
    pub name: &'static str,
    /// Its version.
    pub version: &'static str,
    /// `rustc --version` on PATH when it ran.
    pub rustc: String,
}

/// The binary under test.
#[derive(Debug, Serialize)]
pub struct HawserInfo {
    /// Its path.
    pub path: String,
    /// `hawser --version`.
    pub version: String,
    /// `git rev-parse HEAD` of the repository the driver belongs to.
    pub git_commit: String,
    /// Whether src/, Cargo.toml or Cargo.lock have uncommitted changes.
    pub git_dirty: bool,
    /// Whether the default binary is older than a file under src/ (a stale build).
    pub binary_older_than_sources: bool,
}

/// Facts about the machine.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub nproc: usize,
    /// The first `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// MemTotal of /proc/meminfo.
    pub mem_total_kib: u64,
    /// MemAvailable at the start.
    pub mem_available_kib: u64,
    /// /proc/sys/kernel/osrelease.
    pub kernel: String,
    /// /proc/loadavg at the start (other work on the machine shows here).
    pub loadavg_start: String,
    /// /proc/loadavg at the end.
    pub loadavg_end: String,
}

/// One figure set for both targets, and hawser/direct ratios.
#[derive(Debug, Serialize)]
pub struct Compared<T> {
    /// Straight to the backend over TLS.
    pub direct: T,
    /// Through the relay and an agent.
    pub hawser: T,
    /// hawser / direct per figure (throughput: higher is better; latency: lower is better).
    pub ratio: BTreeMap<&'static str, f64>,
}

fn ratio(h: f64, d: f64) -> f64 {
    if d == 0.0 { f64::NAN } else { h / d }
}

impl Compared<SmallResult> {
    /// With ratios of throughput and latency.
    pub fn small(direct: SmallResult, hawser: SmallResult) -> Self {
        let (d, h) = (&direct, &hawser);
        let ratio = BTreeMap::from([
            ("requests_per_sec", ratio(h.requests_per_sec, d.requests_per_sec)),
            ("p50_ms", ratio(h.latency.p50_ms, d.latency.p50_ms)),
            ("p99_ms", ratio(h.latency.p99_ms, d.latency.p99_ms)),
            ("p999_ms", ratio(h.latency.p999_ms, d.latency.p999_ms)),
        ]);
        Self { direct, hawser, ratio }
    }
}

impl Compared<RateResult> {
    /// With ratios of latency.
    pub fn rate(direct: RateResult, hawser: RateResult) -> Self {
        let (d, h) = (&direct.latency, &hawser.latency);
        let ratio = BTreeMap::from([
            ("p50_ms", ratio(h.p50_ms, d.p50_ms)),
            ("p90_ms", ratio(h.p90_ms, d.p90_ms)),
            ("p99_ms", ratio(h.p99_ms, d.p99_ms)),
            ("p999_ms", ratio(h.p999_ms, d.p999_ms)),
            ("max_ms", ratio(h.max_ms, d.max_ms)),
        ]);
        Self { direct, hawser, ratio }
    }
}

impl Compared<BulkResult> {
    /// With the throughput ratio.
    pub fn bulk(direct: BulkResult, hawser: BulkResult) -> Self {
        let ratio = BTreeMap::from([("mb_per_sec", ratio(hawser.mb_per_sec, direct.mb_per_sec))]);
        Self { direct, hawser, ratio }
    }
}

impl Report {
    /// Versions, command line and machine, before anything runs.
    pub async fn begin(settings: &Settings, hawser: &Path, default_binary: bool) -> Result<Self> {
        let version = output(Command::new(hawser).arg("--version"))
            .await
            .with_context(|| format!("running {} --version", hawser.display()))?;
        let repo = crate::package_dir().parent().unwrap_or(crate::package_dir()).to_owned();
        let git_commit = output(Command::new("git").arg("-C").arg(&repo).args(["rev-parse", "HEAD"]))
            .await
            .unwrap_or_else(|_| "unknown".into());
        let git_dirty = output(Command::new("git").arg("-C").arg(&repo).args([
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "src",
            "Cargo.toml",
            "Cargo.lock",
        ]))
        .await
        .is_ok_and(|s| !s.is_empty());
        let binary_older_than_sources = default_binary && older_than_sources(hawser, &repo);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        Ok(Self {
            tool: Tool {
                name: env!("CARGO_PKG_NAME"),
                version: env!("CARGO_PKG_VERSION"),
                rustc: output(Command::new("rustc").arg("--version"))
                    .await
                    .unwrap_or_else(|_| "unknown".into()),
            },
            hawser: HawserInfo {
                path: hawser.display().to_string(),
                version,
                git_commit,
                git_dirty,
                binary_older_than_sources,
            },
            command_line: std::env::args().collect(),
            started: utc_now(),
            finished: String::new(),
            machine: Machine {
                nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
                cpu_model,
                mem_total_kib: mem("MemTotal:"),
                mem_available_kib: mem("MemAvailable:"),
                kernel: read_trim("/proc/sys/kernel/osrelease"),
                loadavg_start: read_trim("/proc/loadavg"),
                loadavg_end: String::new(),
            },
            settings: settings.clone(),
            small: None,
            rate: None,
            bulk: Vec::new(),
            idle: None,
            scale: Default::default(),
            peers: Default::default(),
            fleet: None,
            telemetry: None,
            k6mix: None,
            failed_requests: 0,
        })
    }

    /// Stamps the end and counts failures.
    pub fn finish(&mut self) {
        self.finished = utc_now();
        self.machine.loadavg_end = read_trim("/proc/loadavg");
        let mut failed = 0;
        if let Some(s) = &self.small {
            failed += s.direct.failures.count + s.hawser.failures.count;
        }
        if let Some(r) = &self.rate {
            failed += r.direct.failures.count + r.hawser.failures.count;
        }
        for b in &self.bulk {
            failed += b.direct.failures.count + b.hawser.failures.count;
        }
        failed += self.fleet.as_ref().map_or(0, |f| f.failures());
        failed += self.telemetry.as_ref().map_or(0, |t| t.failures());
        failed += self
            .k6mix
            .as_ref()
            .map_or(0, |k| k.direct.failures.count + k.hawser.failures.count);
        self.failed_requests = failed + self.scale.failures() + self.peers.failures();
    }

    /// The readable summary.
    pub fn table(&self) -> String {
        let mut t = Table::default();
        if let Some(s) = &self.small {
            let label = format!("small ({} callers)", s.direct.callers);
            t.row(
                &label,
                "requests/s",
                s.direct.requests_per_sec,
                s.hawser.requests_per_sec,
                0,
            );
            t.latency("", &s.direct.latency, &s.hawser.latency, false);
            t.failures(&s.direct.failures.count, &s.hawser.failures.count);
        }
        if let Some(r) = &self.rate {
            let label = format!("rate ({:.0}/s)", r.direct.offered_per_sec);
            t.row(
                &label,
                "achieved/s",
                r.direct.achieved_per_sec,
                r.hawser.achieved_per_sec,
                0,
            );
            t.latency("", &r.direct.latency, &r.hawser.latency, true);
            t.row("", "dropped", r.direct.dropped as f64, r.hawser.dropped as f64, 0);
            t.row(
                "",
                "pacer lag p99 ms",
                r.direct.schedule_lag.p99_ms,
                r.hawser.schedule_lag.p99_ms,
                3,
            );
            t.failures(&r.direct.failures.count, &r.hawser.failures.count);
        }
        for b in &self.bulk {
            let label = format!(
                "bulk x{} ({} MiB each)",
                b.direct.streams,
                b.direct.bytes_per_stream >> 20
            );
            t.row(&label, "MB/s", b.direct.mb_per_sec, b.hawser.mb_per_sec, 0);
            t.failures(&b.direct.failures.count, &b.hawser.failures.count);
        }
        if let Some(k) = &self.k6mix {
            k.rows(&mut t);
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{} · {} CPUs · {} · {} MiB · load {}",
            self.hawser.version,
            self.machine.nproc,
            self.machine.cpu_model,
            self.machine.mem_total_kib / 1024,
            self.machine.loadavg_start
        );
        if !t.rows.is_empty() {
            out.push_str(&t.render());
            out.push_str(&self.cpu_table());
        }
        if let Some(i) = &self.idle {
            let _ = writeln!(
                out,
                "\nidle: {} agents registered in {:.1}s; relay RSS {:.1} -> {:.1} MiB (max {:.1}) = {:.1} KiB per agent \
                 (RssAnon {:.1} KiB per agent); after they left {:.1} MiB; one agent process {:.1} MiB RSS",
                i.agents,
                i.connect_s,
                i.relay_rss_before_kib as f64 / 1024.0,
                i.relay_rss_with_kib as f64 / 1024.0,
                i.relay_rss_max_kib as f64 / 1024.0,
                i.relay_rss_per_agent_kib,
                i.relay_anon_per_agent_kib,
                i.relay_rss_after_kib as f64 / 1024.0,
                i.agent_process_rss_mean_kib / 1024.0,
            );
        }
        out.push_str(&self.peers.table(self));
        out.push_str(&self.scale.table());
        if let Some(f) = &self.fleet {
            out.push_str(&f.table());
        }
        if let Some(t) = &self.telemetry {
            out.push_str(&t.table());
        }
        let failures: Vec<String> = self.failure_messages();
        if !failures.is_empty() {
            let _ = writeln!(out, "\nfailures:");
            for f in failures {
                let _ = writeln!(out, "  {f}");
            }
        }
        out
    }

    fn failure_messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |what: String, messages: &[String]| {
            for m in messages {
                out.push(format!("{what}: {m}"));
            }
        };
        if let Some(s) = &self.small {
            add("small direct".into(), &s.direct.failures.messages);
            add("small hawser".into(), &s.hawser.failures.messages);
        }
        if let Some(r) = &self.rate {
            add("rate direct".into(), &r.direct.failures.messages);
            add("rate hawser".into(), &r.hawser.failures.messages);
        }
        for b in &self.bulk {
            add(
                format!("bulk x{} direct", b.direct.streams),
                &b.direct.failures.messages,
            );
            add(
                format!("bulk x{} hawser", b.hawser.streams),
                &b.hawser.failures.messages,
            );
        }
        if let Some(f) = &self.fleet {
            let t = &f.throughput;
            for r in [&t.one_relay, &t.each_relay, &t.balancer] {
                add(format!("fleet small {}", r.target), &r.small.failures.messages);
            }
            add("fleet hop local".into(), &f.hop.local.failures.messages);
            add("fleet hop forwarded".into(), &f.hop.forwarded.failures.messages);
        }
        if let Some(t) = &self.telemetry {
            out.extend(t.failure_messages());
        }
        if let Some(k) = &self.k6mix {
            out.extend(k.failure_messages());
        }
        out
    }

    fn cpu_table(&self) -> String {
        let mut rows: Vec<(String, f64, &CpuUse, Option<u64>)> = Vec::new();
        if let Some(s) = &self.small {
            rows.push((
                "small direct".into(),
                s.direct.elapsed_s,
                &s.direct.cpu,
                Some(s.direct.ok),
            ));
            rows.push((
                "small hawser".into(),
                s.hawser.elapsed_s,
                &s.hawser.cpu,
                Some(s.hawser.ok),
            ));
        }
        if let Some(r) = &self.rate {
            let secs = r.direct.scheduled as f64 / r.direct.offered_per_sec;
            rows.push(("rate direct".into(), secs, &r.direct.cpu, Some(r.direct.ok)));
            rows.push(("rate hawser".into(), secs, &r.hawser.cpu, Some(r.hawser.ok)));
        }
        for b in &self.bulk {
            rows.push((
                format!("bulk x{} direct", b.direct.streams),
                b.direct.elapsed_s,
                &b.direct.cpu,
                None,
            ));
            rows.push((
                format!("bulk x{} hawser", b.hawser.streams),
                b.hawser.elapsed_s,
                &b.hawser.cpu,
                None,
            ));
        }
        if let Some(k) = &self.k6mix {
            let requests =
                |r: &crate::k6mix::K6MixResult| r.list_pods.count + r.get_pod.count + r.list_configmaps.count;
            rows.push((
                "k6mix direct".into(),
                k.direct.elapsed_s,
                &k.direct.cpu,
                Some(requests(&k.direct) as u64),
            ));
            rows.push((
                "k6mix hawser".into(),
                k.hawser.elapsed_s,
                &k.hawser.cpu,
                Some(requests(&k.hawser) as u64),
            ));
        }
        let mut out = String::from(
            "\nCPU seconds (user+system) during each measurement; µs/req = (relay+agents) CPU per request; \
             udp drops = datagrams dropped for a full socket receive buffer (machine-wide)\n",
        );
        let _ = writeln!(
            out,
            "{:<22}{:>8}{:>9}{:>9}{:>9}{:>9}{:>10}{:>11}",
            "measurement", "wall", "relay", "agents", "backend", "driver", "µs/req", "udp drops"
        );
        for (name, wall, cpu, requests) in rows {
            let per_request = match requests {
                Some(n) if n > 0 && name.ends_with("hawser") => {
                    format!("{:.0}", (cpu.relay_s + cpu.agents_s) * 1e6 / n as f64)
                }
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "{name:<22}{wall:>8.2}{:>9.2}{:>9.2}{:>9.2}{:>9.2}{per_request:>10}{:>11}",
                cpu.relay_s, cpu.agents_s, cpu.backend_s, cpu.driver_s, cpu.udp_rcvbuf_errors
            );
        }
        out
    }
}

/// The comparison table's rows.
#[derive(Default)]
pub(crate) struct Table {
    rows: Vec<[String; 5]>,
}

impl Table {
    pub(crate) fn row(&mut self, scenario: &str, figure: &str, direct: f64, hawser: f64, decimals: usize) {
        self.rows.push([
            scenario.to_owned(),
            figure.to_owned(),
            format!("{direct:.decimals$}"),
            format!("{hawser:.decimals$}"),
            if direct == 0.0 {
                "-".into()
            } else {
                format!("{:.2}", hawser / direct)
            },
        ]);
    }

    fn latency(&mut self, scenario: &str, d: &crate::stats::Latency, h: &crate::stats::Latency, p90: bool) {
        let mut figures = vec![("p50 ms", d.p50_ms, h.p50_ms)];
        if p90 {
            figures.push(("p90 ms", d.p90_ms, h.p90_ms));
        }
        figures.extend([
            ("p99 ms", d.p99_ms, h.p99_ms),
            ("p99.9 ms", d.p999_ms, h.p999_ms),
            ("max ms", d.max_ms, h.max_ms),
        ]);
        for (figure, direct, hawser) in figures {
            // No samples (every request failed): no figure, rather than a zero.
            let cell = |count: usize, v: f64| if count == 0 { "-".to_owned() } else { format!("{v:.3}") };
            let ratio = if d.count == 0 || h.count == 0 || direct == 0.0 {
                "-".to_owned()
            } else {
                format!("{:.2}", hawser / direct)
            };
            self.rows.push([
                scenario.to_owned(),
                figure.to_owned(),
                cell(d.count, direct),
                cell(h.count, hawser),
                ratio,
            ]);
        }
    }

    pub(crate) fn failures(&mut self, direct: &u64, hawser: &u64) {
        if *direct > 0 || *hawser > 0 {
            self.row("", "FAILED requests", *direct as f64, *hawser as f64, 0);
        }
    }

    fn render(&self) -> String {
        let header = ["scenario", "figure", "direct", "hawser", "hawser/direct"];
        let mut widths = header.map(str::len);
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: [&str; 5]| {
            let _ = writeln!(
                out,
                "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {:>w4$}",
                cells[0],
                cells[1],
                cells[2],
                cells[3],
                cells[4],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3],
                w4 = widths[4]
            );
        };
        line(&mut out, header);
        for row in &self.rows {
            line(&mut out, [&row[0], &row[1], &row[2], &row[3], &row[4]]);
        }
        out
    }
}

async fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(std::process::Stdio::null()).output().await?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "unknown".into(), |s| s.trim().to_owned())
}

/// Whether any file under `repo`/src (or its Cargo.toml, Cargo.lock) is newer than `binary`.
fn older_than_sources(binary: &Path, repo: &Path) -> bool {
    let Ok(built) = std::fs::metadata(binary).and_then(|m| m.modified()) else {
        return false;
    };
    let mut stack = vec![repo.join("src")];
    let mut newest = [repo.join("Cargo.toml"), repo.join("Cargo.lock")]
        .iter()
        .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .max();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if let Ok(m) = meta.modified() {
                newest = newest.max(Some(m));
            }
        }
    }
    newest.is_some_and(|n| n > built)
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    utc(secs)
}

fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
