//! A real OpenTelemetry Collector (built by `tests/testbed/otelcol/build.sh` with the collector's
//! builder): OTLP over gRPC and HTTP on free loopback ports, its file exporter writing what
//! arrives as OTLP JSON lines into a temp dir of its own (kept with `HAWSER_E2E_KEEP=1`), which
//! [`Collector::traces`] and [`Collector::metrics`] read. Runs under reaper; dropping it stops it.

pub mod otlp;
pub mod received;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use tempfile::TempDir;

use super::binaries::binaries;
use super::net::{free_port, retry_if_port_taken};
use super::process::{Supervised, wait_for};
use otlp::{MetricPoint, Span, parse_metrics, parse_spans};
use received::Received;

/// How long the collector may take to listen.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// The files the exporters write, in the collector's dir.
const TRACES: &str = "traces.jsonl";
const METRICS: &str = "metrics.jsonl";
/// How often the file exporter flushes what it wrote (its default is a second).
const FLUSH_INTERVAL: &str = "100ms";

/// Where the collector's own metrics (its telemetry) go.
#[derive(Debug, Clone)]
pub enum OwnMetrics {
    /// A Prometheus endpoint on a free loopback port ([`Collector::telemetry_addr`]).
    Pull,
    /// Pushed every half second over OTLP/HTTP to this URL (e.g. another collector's
    /// `{otlp_http_endpoint}/v1/metrics`).
    PushTo(String),
}

/// A running collector; dropping it stops it.
pub struct Collector {
    // Field order is drop order: the process before the dir it writes in.
    _process: Supervised,
    dir: TempDir,
    grpc: SocketAddr,
    http: SocketAddr,
    telemetry: Option<SocketAddr>,
    traces: Received<Span>,
    metrics: Received<MetricPoint>,
}

impl Collector {
    /// Starts a collector whose own metrics are served for Prometheus, and waits until it listens.
    pub fn start() -> Result<Self> {
        Self::start_with(OwnMetrics::Pull)
    }

    /// Starts a collector whose own metrics go where `own_metrics` says, and waits until it listens.
    pub fn start_with(own_metrics: OwnMetrics) -> Result<Self> {
        retry_if_port_taken("otelcol", || Self::start_once(&own_metrics))
    }

    fn start_once(own_metrics: &OwnMetrics) -> Result<Self> {
        let bins = binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("hawser-otelcol-")
            .disable_cleanup(std::env::var_os("HAWSER_E2E_KEEP").is_some())
            .tempdir()?;
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let (grpc, http) = (loopback(free_port()?), loopback(free_port()?));
        let telemetry = match own_metrics {
            OwnMetrics::Pull => Some(loopback(free_port()?)),
            OwnMetrics::PushTo(_) => None,
        };
        let config = dir.path().join("otelcol.yaml");
        std::fs::write(&config, config_text(dir.path(), grpc, http, own_metrics, telemetry)?)?;
        let log = dir.path().join("otelcol.log");
        let mut process = Supervised::spawn(
            &bins.reaper,
            "otelcol",
            &bins.otelcol,
            &[format!("--config={}", config.display())],
            &log,
            false,
        )?;
        let ports: Vec<SocketAddr> = [grpc, http].into_iter().chain(telemetry).collect();
        wait_for("otelcol to listen", START_DEADLINE, || {
            process.ensure_running()?;
            Ok(ports.iter().all(|p| TcpStream::connect(p).is_ok()).then_some(()))
        })
        .with_context(|| format!("otelcol did not start; its log is {}", log.display()))?;
        Ok(Self {
            _process: process,
            traces: Received::new(dir.path().join(TRACES), parse_spans),
            metrics: Received::new(dir.path().join(METRICS), parse_metrics),
            dir,
            grpc,
            http,
            telemetry,
        })
    }

    /// The OTLP/gRPC endpoint as `127.0.0.1:PORT` (what kube-apiserver's tracing config takes).
    pub fn otlp_grpc_endpoint(&self) -> String {
        self.grpc.to_string()
    }

    /// The OTLP/HTTP endpoint as `http://127.0.0.1:PORT` (signals go to `/v1/traces`, ...).
    pub fn otlp_http_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The OTLP/HTTP listener's address.
    pub fn otlp_http_addr(&self) -> SocketAddr {
        self.http
    }

    /// Where the collector serves its own metrics for Prometheus, if it does ([`OwnMetrics::Pull`]).
    pub fn telemetry_addr(&self) -> Option<SocketAddr> {
        self.telemetry
    }

    /// The directory holding the collector's config, log and the files it writes.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every span that arrived: `all()`, or `wait_for(what, within, check)`.
    pub fn traces(&self) -> &Received<Span> {
        &self.traces
    }

    /// Every metric data point that arrived: `all()`, or `wait_for(what, within, check)`.
    pub fn metrics(&self) -> &Received<MetricPoint> {
        &self.metrics
    }

    /// Only the spans that arrive from now on: what a test of a shared collector reads.
    pub fn traces_from_now(&self) -> Result<Received<Span>> {
        Received::from_now(self.dir.path().join(TRACES), parse_spans)
    }

    /// Only the metric data points that arrive from now on.
    pub fn metrics_from_now(&self) -> Result<Received<MetricPoint>> {
        Received::from_now(self.dir.path().join(METRICS), parse_metrics)
    }
}

/// The collector's config: OTLP in, a file per signal out, its own metrics as asked.
fn config_text(
    dir: &Path,
    grpc: SocketAddr,
    http: SocketAddr,
    own_metrics: &OwnMetrics,
    telemetry: Option<SocketAddr>,
) -> Result<String> {
    // Left empty, the readers default to a Prometheus endpoint on the fixed port 8888.
    let reader = match (own_metrics, telemetry) {
        (OwnMetrics::PushTo(url), _) => json!({"periodic": {
            "interval": 500,
            "exporter": {"otlp": {"protocol": "http/protobuf", "endpoint": url}},
        }}),
        (OwnMetrics::Pull, Some(addr)) => json!({"pull": {
            "exporter": {"prometheus": {"host": addr.ip().to_string(), "port": addr.port()}},
        }}),
        (OwnMetrics::Pull, None) => anyhow::bail!("a pulled collector needs a telemetry port"),
    };
    let file = |name: &str| json!({"path": dir.join(name), "flush_interval": FLUSH_INTERVAL});
    let config = json!({
        "receivers": {"otlp": {"protocols": {
            "grpc": {"endpoint": grpc.to_string()},
            "http": {"endpoint": http.to_string()},
        }}},
        "exporters": {
            "file/traces": file(TRACES),
            "file/metrics": file(METRICS),
            "file/logs": file("logs.jsonl"),
        },
        "service": {
            "telemetry": {
                "logs": {"level": "info"},
                // detailed: also the OTLP servers' own request histograms (otelhttp, otelgrpc).
                "metrics": {"level": "detailed", "readers": [reader]},
            },
            "pipelines": {
                "traces": {"receivers": ["otlp"], "exporters": ["file/traces"]},
                "metrics": {"receivers": ["otlp"], "exporters": ["file/metrics"]},
                "logs": {"receivers": ["otlp"], "exporters": ["file/logs"]},
            },
        },
    });
    Ok(serde_yaml_ng::to_string(&config)?)
}
