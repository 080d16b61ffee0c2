//! A real OpenTelemetry Collector (the e2e test bed's build): OTLP over gRPC in, on a free
//! loopback port; its file exporter writes what arrives as OTLP JSON lines into its directory,
//! which [`Received::read`] counts once the collector has stopped (stopping flushes it).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::system::Proc;

/// How long the collector may take to listen.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How often the file exporter flushes (its default is a second).
const FLUSH_INTERVAL: &str = "100ms";
/// Starts tried when the free port picked was taken before the collector bound it.
const START_ATTEMPTS: usize = 3;

/// A running collector; dropping it kills it.
pub struct Collector {
    /// The process.
    pub process: Proc,
    /// Its OTLP/gRPC receiver.
    pub grpc: SocketAddr,
    /// Its config, log and output files.
    pub dir: PathBuf,
}

impl Collector {
    /// Starts `bin` with its files in `dir` and waits until it listens.
    pub async fn start(bin: &Path, dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let mut attempt = 1;
        loop {
            match Self::start_once(bin, dir).await {
                Ok(c) => return Ok(c),
                Err(e) if attempt < START_ATTEMPTS && format!("{e:#}").contains("address already in use") => {
                    crate::say(&format!("telemetry: the collector's port was taken; again ({e:#})"));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_once(bin: &Path, dir: &Path) -> Result<Self> {
        let grpc: SocketAddr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let config = dir.join("otelcol.yaml");
        // JSON is YAML: the collector reads it as is.
        fs::write(&config, serde_json::to_vec_pretty(&config_json(dir, grpc))?)?;
        let log = dir.join("otelcol.log");
        let out = fs::File::create(&log)?;
        let child = Command::new(bin)
            .arg(format!("--config={}", config.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut process = Proc::new("otelcol".into(), child)?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Err(e) = process.ensure_running(&log) {
                let text = fs::read_to_string(&log).unwrap_or_default();
                let why = text.lines().rev().find(|l| l.contains("rror")).unwrap_or_default();
                bail!("{e:#}: {why}");
            }
            if tokio::net::TcpStream::connect(grpc).await.is_ok() {
                return Ok(Self {
                    process,
                    grpc,
                    dir: dir.to_owned(),
                });
            }
            if Instant::now() >= deadline {
                bail!(
                    "otelcol did not listen on {grpc} within {START_DEADLINE:?}; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `telemetry.otlp_endpoint` relay and agent export to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Stops it with SIGTERM (it writes out what it holds) and reads what it received; whether it
    /// exited by itself within `within` is in the answer.
    pub async fn stop(self, within: Duration) -> Result<Received> {
        let Self { process, dir, .. } = self;
        let pid = process.pid;
        let exited = crate::system::stop(vec![process], within).await?;
        let mut received = Received::read(&dir)?;
        received.stopped_cleanly = exited;
        if !exited {
            crate::say(&format!(
                "telemetry: otelcol ({pid}) did not stop within {within:?}; killed"
            ));
        }
        Ok(received)
    }
}

/// The collector's config: OTLP/gRPC in, a file per signal out, no metrics of its own (whose
/// default endpoint is the fixed port 8888).
fn config_json(dir: &Path, grpc: SocketAddr) -> Value {
    let file = |name: &str| json!({"path": dir.join(name), "flush_interval": FLUSH_INTERVAL});
    json!({
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": grpc.to_string()}}}},
        "exporters": {"file/traces": file("traces.jsonl"), "file/metrics": file("metrics.jsonl")},
        "service": {
            "telemetry": {"logs": {"level": "info"}, "metrics": {"level": "none"}},
            "pipelines": {
                "traces": {"receivers": ["otlp"], "exporters": ["file/traces"]},
                "metrics": {"receivers": ["otlp"], "exporters": ["file/metrics"]},
            },
        },
    })
}

/// What the collector wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Received {
    /// Spans in all.
    pub spans: u64,
    /// Spans by `service.name` (`hawser-relay`, `hawser-agent`).
    pub spans_by_service: BTreeMap<String, u64>,
    /// Spans by name (`relay get`, `agent get`, ...).
    pub spans_by_name: BTreeMap<String, u64>,
    /// Distinct trace ids.
    pub traces: u64,
    /// Traces with a span of both the relay and the agent.
    pub traces_with_relay_and_agent: u64,
    /// Metric exports (one `resourceMetrics` entry per process and export).
    pub metric_exports: u64,
    /// Metric data points in all.
    pub metric_points: u64,
    /// Whether the collector exited by itself after SIGTERM (so its files are complete).
    pub stopped_cleanly: bool,
}

impl Received {
    /// Reads `traces.jsonl` and `metrics.jsonl` in `dir` (missing: nothing arrived).
    pub fn read(dir: &Path) -> Result<Self> {
        let mut r = Self::default();
        let mut services_by_trace: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for request in lines(&dir.join("traces.jsonl"))? {
            for rs in array(&request, "resourceSpans") {
                let service = service_name(rs);
                for ss in array(rs, "scopeSpans") {
                    for span in array(ss, "spans") {
                        r.spans += 1;
                        *r.spans_by_service.entry(service.clone()).or_default() += 1;
                        let name = span.get("name").and_then(Value::as_str).unwrap_or_default();
                        *r.spans_by_name.entry(name.to_owned()).or_default() += 1;
                        let trace = span.get("traceId").and_then(Value::as_str).unwrap_or_default();
                        services_by_trace
                            .entry(trace.to_owned())
                            .or_default()
                            .insert(service.clone());
                    }
                }
            }
        }
        r.traces = services_by_trace.len() as u64;
        r.traces_with_relay_and_agent = services_by_trace
            .values()
            .filter(|s| s.contains("hawser-relay") && s.contains("hawser-agent"))
            .count() as u64;
        for request in lines(&dir.join("metrics.jsonl"))? {
            for rm in array(&request, "resourceMetrics") {
                r.metric_exports += 1;
                for sm in array(rm, "scopeMetrics") {
                    for metric in array(sm, "metrics") {
                        r.metric_points += ["gauge", "sum", "histogram", "exponentialHistogram", "summary"]
                            .iter()
                            .filter_map(|kind| metric.get(kind))
                            .map(|data| array(data, "dataPoints").len() as u64)
                            .sum::<u64>();
                    }
                }
            }
        }
        Ok(r)
    }
}

/// Each line of an OTLP JSON file; none if the file is missing.
fn lines(path: &Path) -> Result<Vec<Value>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1)))
        .collect()
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// `service.name` of a resource entry (empty if none).
fn service_name(resource_entry: &Value) -> String {
    let attributes = resource_entry
        .get("resource")
        .map_or(&[][..], |r| array(r, "attributes"));
    attributes
        .iter()
        .find(|a| a.get("key").and_then(Value::as_str) == Some("service.name"))
        .and_then(|a| a.pointer("/value/stringValue"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_traces_and_metric_points_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let resource =
            |service: &str| json!({"attributes": [{"key": "service.name", "value": {"stringValue": service}}]});
        let spans = |service: &str, spans: Value| json!({"resourceSpans": [{"resource": resource(service), "scopeSpans": [{"spans": spans}]}]});
        let traces = [
            spans(
                "hawser-relay",
                json!([{"traceId": "a", "name": "relay get"}, {"traceId": "b", "name": "relay get"}]),
            ),
            spans("hawser-agent", json!([{"traceId": "a", "name": "agent get"}])),
        ];
        let text: String = traces.iter().map(|t| format!("{t}\n")).collect();
        fs::write(dir.path().join("traces.jsonl"), text).unwrap();
        let metrics = json!({"resourceMetrics": [{"resource": resource("hawser-relay"), "scopeMetrics": [{"metrics": [
            {"name": "hawser.requests", "sum": {"dataPoints": [{}, {}]}},
            {"name": "http.server.request.duration", "histogram": {"dataPoints": [{}]}},
        ]}]}]});
        fs::write(dir.path().join("metrics.jsonl"), format!("{metrics}\n")).unwrap();

        let r = Received::read(dir.path()).unwrap();
        assert_eq!(r.spans, 3);
        assert_eq!(r.spans_by_service["hawser-relay"], 2);
        assert_eq!(r.spans_by_name["agent get"], 1);
        assert_eq!(r.traces, 2);
        assert_eq!(r.traces_with_relay_and_agent, 1);
        assert_eq!(r.metric_exports, 1);
        assert_eq!(r.metric_points, 3);
    }

    #[test]
    fn nothing_arrived_is_zero_and_a_broken_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Received::read(dir.path()).unwrap().spans, 0);
        fs::write(dir.path().join("traces.jsonl"), "{not json\n").unwrap();
        let e = Received::read(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("traces.jsonl line 1"), "{e:#}");
    }
}
