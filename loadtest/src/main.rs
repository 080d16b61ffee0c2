//! hawser-loadtest: drives a real Hawser relay and real agents (the `hawser`
//! binary, as separate processes) against a trivial HTTPS backend, and the
//! same load straight at the backend as the baseline, in one run; reports
//! hawser/direct ratios. See docs/benchmarks.md.
#![forbid(unsafe_code)]

mod backend;
mod ceiling;
mod cli;
mod client;
mod fleet;
mod k6mix;
mod peers;
mod progress;
mod report;
mod scale;
mod scenario;
mod stats;
mod storm;
mod swarm;
mod system;
mod telemetry;
mod tls;
mod watches;

use std::path::Path;
use std::process::ExitCode;
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::cli::{Cli, Sub};
pub use crate::cli::{RateArg, Scenario, Settings, Transport};
use crate::progress::Progress;
use crate::report::{Compared, Report};

/// The progress line every part reports to.
pub static PROGRESS: LazyLock<Progress> = LazyLock::new(Progress::new);

/// A message on its own line of stderr.
pub fn say(message: &str) {
    PROGRESS.say(message);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hawser-loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Sub::ServeBackend { cert, key }) = &cli.command {
        return match runtime.block_on(backend::serve(cert, key)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hawser-loadtest backend: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = run(&cli) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = terminated() => Err(anyhow::anyhow!("terminated (SIGTERM)")),
        }
    });
    match outcome {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("hawser-loadtest: FAILED: {failed} request(s) failed (see the table above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("hawser-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM, so the children are killed (on drop) as on Ctrl-C.
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// The driver's package directory (loadtest/), as built.
fn package_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the whole thing; returns how many requests failed.
async fn run(cli: &Cli) -> Result<u64> {
    let settings = Settings::from(cli)?;
    let default_binary = cli.hawser.is_none();
    let hawser = match &cli.hawser {
        Some(p) => p.clone(),
        None => package_dir().join("../target/release/hawser"),
    };
    if !hawser.is_file() {
        bail!(
            "no hawser binary at {}. Build it first with `cargo build --release` at the repository root \
             ({}), or pass --hawser PATH",
            hawser.display(),
            package_dir().parent().unwrap_or(package_dir()).display()
        );
    }
    let hawser = std::fs::canonicalize(&hawser).with_context(|| format!("resolving {}", hawser.display()))?;
    let mut report = Report::begin(&settings, &hawser, default_binary).await?;
    if report.hawser.binary_older_than_sources {
        say(&format!(
            "warning: {} is older than the sources in src/; rebuild with `cargo build --release` for current figures",
            hawser.display()
        ));
    }
    say(&format!(
        "hawser-loadtest {} ({} mode): {} against {}",
        env!("CARGO_PKG_VERSION"),
        settings.mode,
        report.hawser.version,
        hawser.display()
    ));

    // The progress ticker.
    let ticker = tokio::spawn(async {
        loop {
            tokio::time::sleep(PROGRESS.interval()).await;
            PROGRESS.tick();
        }
    });

    // Everything but `fleet` and `telemetry` runs on one relay; they set up their own after it.
    if settings
        .scenarios
        .iter()
        .any(|s| !matches!(s, Scenario::Fleet | Scenario::Telemetry))
    {
        let options = system::Options {
            hawser: hawser.clone(),
            clusters: settings.clusters,
            agents_per_cluster: settings.agents_per_cluster,
            idle_agents: if settings.runs(Scenario::Idle) {
                settings.idle_agents
            } else {
                0
            },
            swarm_clusters: settings.scale.swarm_clusters(&settings),
            keep: cli.keep,
            transport: settings.transport.as_str(),
            extra_toml: String::new(),
            dir: None,
        };
        let mut sys = system::System::start(&options).await?;
        let measured = measure(&settings, &mut sys, &mut report).await;
        if measured.is_err() || cli.keep {
            sys.keep_dir();
            say(&format!(
                "kept the working directory (configs, logs): {}",
                sys.dir.display()
            ));
        }
        measured?;
    }
    if settings.runs(Scenario::Fleet) {
        report.fleet = Some(fleet::run(&settings, &hawser, cli.keep).await?);
    }
    if settings.runs(Scenario::Telemetry) {
        report.telemetry = Some(telemetry::run(&settings, &hawser, cli.keep).await?);
    }
    ticker.abort();

    report.finish();
    println!("{}", report.table());
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        say(&format!("wrote {}", path.display()));
    }
    Ok(report.failed_requests)
}

async fn measure(settings: &Settings, sys: &mut system::System, report: &mut Report) -> Result<()> {
    let timeout = Duration::from_secs_f64(settings.request_timeout_s);
    let direct = sys.direct_target(settings.connections, timeout).await?;
    let hawser = sys.hawser_target(settings.connections, timeout).await?;
    sys.wait_answering(&direct).await?;
    sys.wait_answering(&hawser).await?;
    say("backend answering directly and through the relay");
    let meter = scenario::Meter {
        pids: stats::Pids {
            relay: sys.relay.pid,
            agents: sys.agent_pids(),
            backend: sys.backend.pid,
        },
        ticks_per_second: stats::ticks_per_second(),
    };
    let secs = Duration::from_secs_f64;

    if settings.runs(Scenario::Idle) {
        report.idle = Some(scenario::idle(sys, settings.idle_agents, secs(settings.idle_settle_s)).await?);
    }
    scale::before(settings, sys, &mut report.scale).await?;
    if settings.runs(Scenario::Small) {
        let (duration, warmup) = (secs(settings.duration_s), secs(settings.warmup_s));
        let d = scenario::small(&direct, settings.callers, duration, warmup, &meter).await?;
        let h = scenario::small(&hawser, settings.callers, duration, warmup, &meter).await?;
        report.small = Some(Compared::small(d, h));
    }
    if settings.runs(Scenario::Rate) {
        let rate = match settings.rate {
            RateArg::PerSecond(r) => r,
            RateArg::Half => {
                let small = report.small.as_ref().context("--rate half needs the small scenario")?;
                (small.hawser.requests_per_sec / 2.0).round().max(1.0)
            }
        };
        let duration = secs(settings.duration_s);
        let d = scenario::rate(&direct, rate, duration, &meter).await?;
        let h = scenario::rate(&hawser, rate, duration, &meter).await?;
        report.rate = Some(Compared::rate(d, h));
    }
    if settings.runs(Scenario::Bulk) {
        let mut counts = vec![1, settings.bulk_streams];
        counts.dedup();
        for streams in counts {
            let d = scenario::bulk(&direct, streams, settings.bulk_bytes, &meter).await?;
            let h = scenario::bulk(&hawser, streams, settings.bulk_bytes, &meter).await?;
            report.bulk.push(Compared::bulk(d, h));
        }
    }
    if settings.runs(Scenario::K6mix) {
        let (duration, warmup) = (secs(settings.duration_s), secs(settings.warmup_s));
        let d = k6mix::run(&direct, &settings.k6mix, duration, warmup, &meter).await?;
        let h = k6mix::run(&hawser, &settings.k6mix, duration, warmup, &meter).await?;
        report.k6mix = Some(Compared::k6mix(d, h));
    }
    peers::measure(settings, sys, report).await?;
    scale::after(settings, sys, &mut report.scale, &meter).await?;
    Ok(())
}
