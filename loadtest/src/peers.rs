//! Peers and the bare-quinn ceiling, in the same run as direct and Hawser.
//!
//! Peers (rathole, frp with its TCP mux, chisel, Konnectivity) run as server
//! and client processes on 127.0.0.1, tunnelling TCP to the same backend; the
//! callers speak the same HTTPS (same client, same HTTP/2 windows) through the
//! peer's local port. Binaries come from `loadtest/peers/build.sh`
//! (`loadtest/target/peers/bin`). docs/benchmarks.md has the setup.

mod launch;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::ceiling::{CeilingResult, CeilingSettings};
use crate::report::Report;
use crate::scenario::{self, BulkResult, Meter, RateResult, SmallResult};
use crate::stats::Pids;
use crate::{Scenario, Settings, say};

/// A peer tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    /// rathole (crates.io), plain TCP transport.
    Rathole,
    /// frp (frps + frpc), TCP proxy over its TCP mux (yamux).
    Frp,
    /// chisel (SSH over WebSocket), reverse port forward.
    Chisel,
    /// Konnectivity (apiserver-network-proxy): proxy-server in http-connect mode + proxy-agent (gRPC).
    Konnectivity,
}

const ALL: [Peer; 4] = [Peer::Rathole, Peer::Frp, Peer::Chisel, Peer::Konnectivity];

impl Peer {
    /// Its name, as `--peers` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rathole => "rathole",
            Self::Frp => "frp",
            Self::Chisel => "chisel",
            Self::Konnectivity => "konnectivity",
        }
    }

    fn binaries(self) -> &'static [&'static str] {
        match self {
            Self::Rathole => &["rathole"],
            Self::Frp => &["frps", "frpc"],
            Self::Chisel => &["chisel"],
            Self::Konnectivity => &["proxy-server", "proxy-agent"],
        }
    }
}

/// Options for peers and the ceiling.
#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// Peers to compare in small, rate and bulk: rathole, frp, chisel, konnectivity, or `none`
    /// [default: those built in loadtest/target/peers/bin by loadtest/peers/build.sh; smoke: none].
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// Skip the bare-quinn ceiling that runs with `bulk`.
    #[arg(long)]
    no_quinn_ceiling: bool,
}

/// Peer settings after defaults.
#[derive(Debug, Clone, Serialize)]
pub struct PeerSettings {
    /// Peers to run.
    pub peers: Vec<Peer>,
    /// Peers asked for (or looked for) but not built: why.
    pub missing: Vec<String>,
    /// Where their binaries are.
    pub bin_dir: PathBuf,
    /// Whether the bare-quinn ceiling runs with `bulk`.
    pub quinn_ceiling: bool,
}

impl PeerSettings {
    /// Picks the peers: those asked for (each must be built), or by default those built.
    pub fn from(args: &PeerArgs, smoke: bool) -> Result<Self> {
        let bin_dir = crate::package_dir().join("target/peers/bin");
        let built = |p: Peer| p.binaries().iter().all(|b| bin_dir.join(b).is_file());
        let mut peers = Vec::new();
        let mut missing = Vec::new();
        match &args.peers {
            Some(names) if names.iter().any(|n| n == "none") => {}
            Some(names) => {
                for name in names {
                    let Some(p) = ALL.iter().copied().find(|p| p.name() == name) else {
                        bail!("--peers: unknown peer {name:?} (known: rathole, frp, chisel, konnectivity, none)");
                    };
                    if !built(p) {
                        bail!(
                            "--peers {name}: {} not found in {}; build it with loadtest/peers/build.sh {name}",
                            p.binaries().join(" and "),
                            bin_dir.display()
                        );
                    }
                    if !peers.contains(&p) {
                        peers.push(p);
                    }
                }
            }
            None if smoke => {}
            None => {
                for p in ALL {
                    if built(p) {
                        peers.push(p);
                    } else {
                        missing.push(format!(
                            "{}: not built ({} missing in {}); run loadtest/peers/build.sh {}",
                            p.name(),
                            p.binaries().join(", "),
                            bin_dir.display(),
                            p.name()
                        ));
                    }
                }
            }
        }
        Ok(Self {
            peers,
            missing,
            bin_dir,
            quinn_ceiling: !args.no_quinn_ceiling,
        })
    }
}

/// One peer's figures and ratios.
#[derive(Debug, Serialize)]
pub struct PeerRun {
    /// Which.
    pub peer: Peer,
    /// The version built (loadtest/target/peers/NAME.version).
    pub version: String,
    /// `small`.
    pub small: Option<SmallResult>,
    /// `rate`, at the same rate as direct and Hawser.
    pub rate: Option<RateResult>,
    /// `bulk`: one stream, then the concurrent count.
    pub bulk: Vec<BulkResult>,
    /// `peer_over_direct.FIGURE` and `hawser_over_peer.FIGURE`.
    pub ratio: BTreeMap<String, f64>,
}

/// Everything this module measured.
#[derive(Debug, Default, Serialize)]
pub struct PeerResults {
    /// The ceiling's settings (Hawser's tunnel defaults).
    pub quinn_ceiling_settings: Option<CeilingSettings>,
    /// Bare quinn, one connection: one stream, then the concurrent count.
    pub quinn_ceiling: Vec<CeilingResult>,
    /// `hawser_over_bare_quinn.xN`: Hawser's bulk MB/s over the ceiling's.
    pub quinn_ceiling_ratio: BTreeMap<String, f64>,
    /// The peers, in order of running.
    pub peers: Vec<PeerRun>,
    /// Peers not run, and why.
    pub skipped: Vec<String>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

impl PeerResults {
    /// Failed requests through peers.
    pub fn failures(&self) -> u64 {
        self.peers
            .iter()
            .map(|p| {
                p.small.as_ref().map_or(0, |s| s.failures.count)
                    + p.rate.as_ref().map_or(0, |r| r.failures.count)
                    + p.bulk.iter().map(|b| b.failures.count).sum::<u64>()
            })
            .sum()
    }

    /// The readable part of the report.
    pub fn table(&self, report: &Report) -> String {
        let mut out = String::new();
        if !self.quinn_ceiling.is_empty() {
            let _ = writeln!(
                out,
                "\nbare quinn (one connection, Hawser's [tunnel] defaults) vs hawser:"
            );
            for c in &self.quinn_ceiling {
                let h = report.bulk.iter().find(|b| b.hawser.streams == c.streams);
                let hawser = h.map_or(f64::NAN, |b| b.hawser.mb_per_sec);
                let _ = writeln!(
                    out,
                    "  bulk x{:<3} bare quinn {:>8.0} MB/s   hawser {:>8.0} MB/s   hawser/bare-quinn {:.3}",
                    c.streams,
                    c.mb_per_sec,
                    hawser,
                    ratio(hawser, c.mb_per_sec)
                );
            }
        }
        if !self.peers.is_empty() {
            let _ = writeln!(
                out,
                "\npeers (same backend, same client); per peer: value, peer/direct, hawser/peer"
            );
            let mut header = format!("{:<26}", "figure");
            for p in &self.peers {
                let _ = write!(header, "{:>36}", format!("{} {}", p.peer.name(), p.version));
            }
            let _ = writeln!(out, "{header}");
            let figures: [(&str, &str); 5] = [
                ("small requests/s", "small_requests_per_sec"),
                ("small p99 ms", "small_p99_ms"),
                ("rate p99 ms", "rate_p99_ms"),
                ("bulk x1 MB/s", "bulk_x1_mb_per_sec"),
                ("bulk xN MB/s", "bulk_xn_mb_per_sec"),
            ];
            for (label, key) in figures {
                let mut line = format!("{label:<26}");
                for p in &self.peers {
                    let v = p.ratio.get(&format!("value.{key}")).copied().unwrap_or(f64::NAN);
                    let pd = p
                        .ratio
                        .get(&format!("peer_over_direct.{key}"))
                        .copied()
                        .unwrap_or(f64::NAN);
                    let hp = p
                        .ratio
                        .get(&format!("hawser_over_peer.{key}"))
                        .copied()
                        .unwrap_or(f64::NAN);
                    let _ = write!(line, "{:>14.3}{:>11.3}{:>11.3}", v, pd, hp);
                }
                let _ = writeln!(out, "{line}");
            }
            let _ = writeln!(
                out,
                "CPU (user+system) of the peer's server + client: small µs/request; bulk x1, xN seconds"
            );
            for p in &self.peers {
                let per_request = p.small.as_ref().map_or(f64::NAN, |s| {
                    (s.cpu.relay_s + s.cpu.agents_s) * 1e6 / s.ok.max(1) as f64
                });
                let bulk: Vec<String> = p
                    .bulk
                    .iter()
                    .map(|b| format!("{:.2}+{:.2} s in {:.2} s", b.cpu.relay_s, b.cpu.agents_s, b.elapsed_s))
                    .collect();
                let _ = writeln!(
                    out,
                    "  {:<14}{per_request:>8.0} µs/req   bulk {}",
                    p.peer.name(),
                    bulk.join(", ")
                );
            }
            for p in &self.peers {
                let f = p.small.as_ref().map_or(0, |s| s.failures.count)
                    + p.rate.as_ref().map_or(0, |r| r.failures.count)
                    + p.bulk.iter().map(|b| b.failures.count).sum::<u64>();
                if f > 0 {
                    let _ = writeln!(out, "  {}: {f} FAILED requests", p.peer.name());
                }
            }
        }
        for s in &self.skipped {
            let _ = writeln!(out, "peer skipped: {s}");
        }
        out
    }
}

/// Runs the ceiling (with `bulk`) and each peer's small, rate and bulk; after direct and Hawser.
pub async fn measure(settings: &Settings, sys: &crate::system::System, report: &mut Report) -> Result<()> {
    let ps = &settings.peers;
    let mut results = PeerResults {
        skipped: ps.missing.clone(),
        ..Default::default()
    };
    for m in &ps.missing {
        say(&format!("peer skipped: {m}"));
    }
    let mut counts = vec![1, settings.bulk_streams];
    counts.dedup();
    if settings.runs(Scenario::Bulk) && ps.quinn_ceiling {
        let (cs, ceiling) = crate::ceiling::measure(&counts, settings.bulk_bytes).await?;
        for c in &ceiling {
            if let Some(b) = report.bulk.iter().find(|b| b.hawser.streams == c.streams) {
                results.quinn_ceiling_ratio.insert(
                    format!("hawser_over_bare_quinn.x{}", c.streams),
                    ratio(b.hawser.mb_per_sec, c.mb_per_sec),
                );
            }
        }
        results.quinn_ceiling_settings = Some(cs);
        results.quinn_ceiling = ceiling;
    }
    let timeout = Duration::from_secs_f64(settings.request_timeout_s);
    for &peer in &ps.peers {
        if !(settings.runs(Scenario::Small) || settings.runs(Scenario::Rate) || settings.runs(Scenario::Bulk)) {
            break;
        }
        let version = std::fs::read_to_string(ps.bin_dir.join(format!("../{}.version", peer.name())))
            .map_or_else(|_| "unknown".into(), |v| v.trim().to_owned());
        say(&format!("peer {} {version}: starting", peer.name()));
        let mut running = launch::start(peer, &ps.bin_dir, &sys.dir, sys.backend_addr).await?;
        let target = launch::wait_answering(peer, &mut running, &sys.backend_ca, settings.connections, timeout).await?;
        say(&format!("peer {}: answering on {}", peer.name(), running.addr));
        // CPU: the peer's server counts as "relay", its client as "agents".
        let meter = Meter {
            pids: Pids {
                relay: running.pids.0,
                agents: vec![running.pids.1],
                backend: sys.backend.pid,
            },
            ticks_per_second: crate::stats::ticks_per_second(),
        };
        let secs = Duration::from_secs_f64;
        let mut run = PeerRun {
            peer,
            version,
            small: None,
            rate: None,
            bulk: Vec::new(),
            ratio: BTreeMap::new(),
        };
        if settings.runs(Scenario::Small) {
            let (d, w) = (secs(settings.duration_s), secs(settings.warmup_s));
            run.small = Some(scenario::small(&target, settings.callers, d, w, &meter).await?);
        }
        if let Some(r) = &report.rate {
            let rate = r.direct.offered_per_sec;
            run.rate = Some(scenario::rate(&target, rate, secs(settings.duration_s), &meter).await?);
        }
        if settings.runs(Scenario::Bulk) {
            for &streams in &counts {
                run.bulk
                    .push(scenario::bulk(&target, streams, settings.bulk_bytes, &meter).await?);
            }
        }
        drop(target);
        drop(running);
        run.ratio = ratios(&run, report);
        results.peers.push(run);
    }
    report.peers = results;
    Ok(())
}

/// value.F, peer_over_direct.F and hawser_over_peer.F for each figure both have.
fn ratios(run: &PeerRun, report: &Report) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut put = |key: &str, peer: f64, direct: f64, hawser: f64| {
        out.insert(format!("value.{key}"), peer);
        out.insert(format!("peer_over_direct.{key}"), ratio(peer, direct));
        out.insert(format!("hawser_over_peer.{key}"), ratio(hawser, peer));
    };
    if let (Some(p), Some(c)) = (&run.small, &report.small) {
        put(
            "small_requests_per_sec",
            p.requests_per_sec,
            c.direct.requests_per_sec,
            c.hawser.requests_per_sec,
        );
        put(
            "small_p99_ms",
            p.latency.p99_ms,
            c.direct.latency.p99_ms,
            c.hawser.latency.p99_ms,
        );
    }
    if let (Some(p), Some(c)) = (&run.rate, &report.rate) {
        put(
            "rate_p99_ms",
            p.latency.p99_ms,
            c.direct.latency.p99_ms,
            c.hawser.latency.p99_ms,
        );
    }
    for b in &run.bulk {
        if let Some(c) = report.bulk.iter().find(|c| c.direct.streams == b.streams) {
            let key = if b.streams == 1 {
                "bulk_x1_mb_per_sec".to_owned()
            } else {
                "bulk_xn_mb_per_sec".to_owned()
            };
            put(&key, b.mb_per_sec, c.direct.mb_per_sec, c.hawser.mb_per_sec);
        }
    }
    out
}
