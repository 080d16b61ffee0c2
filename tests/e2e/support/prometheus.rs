//! A real Prometheus (Debian's `prometheus` package) scraping the targets a test names every
//! second, on a free loopback port, its config and storage in a temp dir of its own (kept with
//! `HAWSER_E2E_KEEP=1`); tests read it through its HTTP API. Runs under reaper; dropping it
//! stops it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use tempfile::TempDir;

use super::binaries::binaries;
use super::net::{free_port, http, retry_if_port_taken};
use super::process::{Supervised, wait_for};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const INSTALL: &str = "install it with `apt-get install prometheus` (.ci/run installs it)";
/// How long Prometheus may take to answer ready.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// One thing to scrape: a job of one target.
#[derive(Debug, Clone)]
pub struct ScrapeTarget {
    job: String,
    address: String,
    ca_file: Option<PathBuf>,
    bearer_token_file: Option<PathBuf>,
}

impl ScrapeTarget {
    /// `http://ADDRESS/metrics` as job `job`; `address` is `host:port`.
    pub fn http(job: &str, address: &str) -> Self {
        Self {
            job: job.to_owned(),
            address: address.to_owned(),
            ca_file: None,
            bearer_token_file: None,
        }
    }

    /// `https://ADDRESS/metrics`, its certificate checked against `ca_file`.
    pub fn https(job: &str, address: &str, ca_file: &Path) -> Self {
        Self {
            ca_file: Some(ca_file.to_owned()),
            ..Self::http(job, address)
        }
    }

    /// Sends `Authorization: Bearer` with the token in `file` (read at each scrape).
    pub fn bearer_token_file(self, file: &Path) -> Self {
        Self {
            bearer_token_file: Some(file.to_owned()),
            ..self
        }
    }

    fn scrape_config(&self) -> Value {
        let mut job = json!({
            "job_name": self.job,
            "metrics_path": "/metrics",
            "scheme": if self.ca_file.is_some() { "https" } else { "http" },
            "static_configs": [{"targets": [self.address]}],
        });
        if let Some(ca) = &self.ca_file {
            job["tls_config"] = json!({"ca_file": ca});
        }
        if let Some(token) = &self.bearer_token_file {
            job["authorization"] = json!({"type": "Bearer", "credentials_file": token});
        }
        job
    }
}

/// One series of a query's answer.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Its labels, `__name__` included where the series has one.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// What Prometheus says of one target.
#[derive(Debug, Clone)]
pub struct TargetState {
    /// The target's job.
    pub job: String,
    /// The URL it scrapes.
    pub scrape_url: String,
    /// `up`, `down` or `unknown` (not scraped yet).
    pub health: String,
    /// Why the last scrape failed (empty if it did not).
    pub last_error: String,
}

/// A running Prometheus; dropping it stops it.
pub struct Prometheus {
    _process: Supervised,
    dir: TempDir,
    port: u16,
    jobs: usize,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` every second, and waits until it is ready.
    pub fn start(targets: &[ScrapeTarget]) -> Result<Self> {
        ensure!(Path::new(PROMETHEUS).exists(), "{PROMETHEUS} is missing: {INSTALL}");
        retry_if_port_taken("prometheus", || Self::start_once(targets))
    }

    fn start_once(targets: &[ScrapeTarget]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hawser-prometheus-")
            .disable_cleanup(std::env::var_os("HAWSER_E2E_KEEP").is_some())
            .tempdir()?;
        let port = free_port()?;
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": targets.iter().map(ScrapeTarget::scrape_config).collect::<Vec<_>>(),
        });
        let config_file = dir.path().join("prometheus.yml");
        fs::write(&config_file, serde_yaml_ng::to_string(&config)?)?;
        let args = [
            format!("--config.file={}", config_file.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ];
        let log = dir.path().join("prometheus.log");
        let mut process = Supervised::spawn(
            &binaries()?.reaper,
            "prometheus",
            Path::new(PROMETHEUS),
            &args,
            &log,
            false,
        )?;
        wait_for("prometheus to be ready", START_DEADLINE, || {
            process.ensure_running()?;
            Ok(matches!(http(port, "GET", "/-/ready", ""), Ok((200, _))).then_some(()))
        })
        .with_context(|| format!("prometheus did not start; its log is {}", log.display()))?;
        Ok(Self {
            _process: process,
            dir,
            port,
            jobs: targets.len(),
        })
    }

    /// The directory holding its config, log and storage.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An instant query (`/api/v1/query`): one sample per series, or one unlabelled sample for
    /// a scalar.
    pub fn query(&self, expr: &str) -> Result<Vec<Sample>> {
        let data = self.api(&format!(
            "/api/v1/query?query={}",
            utf8_percent_encode(expr, NON_ALPHANUMERIC)
        ))?;
        let result = &data["result"];
        match data["resultType"].as_str() {
            Some("vector") => result
                .as_array()
                .into_iter()
                .flatten()
                .map(|series| {
                    let labels = serde_json::from_value(series["metric"].clone())?;
                    Ok(Sample {
                        labels,
                        value: value(&series["value"])?,
                    })
                })
                .collect(),
            Some("scalar") => Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: value(result)?,
            }]),
            other => bail!("{expr:?} gave a result of type {other:?}, not a vector or scalar"),
        }
    }

    /// Waits until `expr`'s samples satisfy `accept`, and returns them.
    pub fn wait_for(&self, expr: &str, within: Duration, accept: impl Fn(&[Sample]) -> bool) -> Result<Vec<Sample>> {
        let mut last = Vec::new();
        wait_for(&format!("prometheus to answer {expr:?} as expected"), within, || {
            last = self.query(expr)?;
            Ok(accept(&last).then(|| last.clone()))
        })
        .with_context(|| format!("its last answer: {last:?}"))
    }

    /// What Prometheus says of each of its targets now (`/api/v1/targets`).
    pub fn targets(&self) -> Result<Vec<TargetState>> {
        let data = self.api("/api/v1/targets?state=active")?;
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Ok(data["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| TargetState {
                job: text(&t["labels"]["job"]),
                scrape_url: text(&t["scrapeUrl"]),
                health: text(&t["health"]),
                last_error: text(&t["lastError"]),
            })
            .collect())
    }

    /// Waits until every target has been scraped and is up; on time-out, says why each is not.
    pub fn targets_up(&self, within: Duration) -> Result<()> {
        let mut last = Vec::new();
        wait_for("every prometheus target to be up", within, || {
            last = self.targets()?;
            Ok((last.len() == self.jobs && last.iter().all(|t| t.health == "up")).then_some(()))
        })
        .with_context(|| format!("the targets: {last:?}"))
    }

    /// The `data` of a successful API answer; an error answer fails with Prometheus's words.
    fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = http(self.port, "GET", path, "")?;
        let answer: Value = serde_json::from_str(&body)
            .with_context(|| format!("prometheus answered {path} with {status} and no JSON: {body}"))?;
        if answer["status"] != "success" {
            bail!(
                "prometheus answered {path} with {status}: {} ({})",
                answer["error"].as_str().unwrap_or_default(),
                answer["errorType"].as_str().unwrap_or_default()
            );
        }
        Ok(answer["data"].clone())
    }
}

/// The value of a `[time, "value"]` pair.
fn value(pair: &Value) -> Result<f64> {
    let text = pair[1].as_str().with_context(|| format!("no value in {pair}"))?;
    // Prometheus writes NaN and infinities as words, which parse() takes too.
    text.parse()
        .with_context(|| format!("a value that is not a number: {text}"))
}
