//! What the collector's file exporter writes — one OTLP JSON request a line
//! (`ExportTraceServiceRequest`, `ExportMetricsServiceRequest`) — read into flat spans and metric
//! points.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Deserialize;
use serde_json::Value;

/// Attributes as JSON values: strings, numbers (OTLP's `intValue` too), booleans, arrays and
/// objects (`kvlistValue`); bytes stay base64 strings.
pub type Attributes = BTreeMap<String, Value>;

/// One span as it arrived.
#[derive(Debug, Clone)]
pub struct Span {
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex id of the parent span; `None` for a root span.
    pub parent_span_id: Option<String>,
    /// The span's name, e.g. `GET /api/v1/namespaces/{:namespace}/configmaps/{:name}`.
    pub name: String,
    /// The span's kind.
    pub kind: SpanKind,
    /// The resource's `service.name` (empty if it had none).
    pub service_name: String,
    /// Every resource attribute, `service.name` included.
    pub resource: Attributes,
    /// The instrumentation scope's name.
    pub scope: String,
    /// The span's attributes.
    pub attributes: Attributes,
    /// The spans this one links to (of other traces, e.g. kube-apiserver's root span to the
    /// caller's span when it does not continue the caller's trace): (trace id, span id).
    pub links: Vec<(String, String)>,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// End, in nanoseconds since the Unix epoch.
    pub end_unix_nano: u64,
}

impl Span {
    /// A string attribute of the span.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }
}

/// OTLP's span kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Not given.
    Unspecified,
    /// An operation inside a service.
    Internal,
    /// Serving a request.
    Server,
    /// Making a request.
    Client,
    /// Sending a message.
    Producer,
    /// Receiving a message.
    Consumer,
}

impl SpanKind {
    fn from_json(value: &Value) -> Self {
        // pdata writes the enum's number; protojson may write its name.
        match value {
            Value::Number(n) => match n.as_u64() {
                Some(1) => Self::Internal,
                Some(2) => Self::Server,
                Some(3) => Self::Client,
                Some(4) => Self::Producer,
                Some(5) => Self::Consumer,
                _ => Self::Unspecified,
            },
            Value::String(s) => match s.as_str() {
                "SPAN_KIND_INTERNAL" => Self::Internal,
                "SPAN_KIND_SERVER" => Self::Server,
                "SPAN_KIND_CLIENT" => Self::Client,
                "SPAN_KIND_PRODUCER" => Self::Producer,
                "SPAN_KIND_CONSUMER" => Self::Consumer,
                _ => Self::Unspecified,
            },
            _ => Self::Unspecified,
        }
    }
}

/// One data point of a metric as it arrived.
#[derive(Debug, Clone)]
pub struct MetricPoint {
    /// The metric's name.
    pub name: String,
    /// The resource's `service.name` (empty if it had none).
    pub service_name: String,
    /// Every resource attribute.
    pub resource: Attributes,
    /// The point's attributes.
    pub attributes: Attributes,
    /// Which kind of metric the point belongs to.
    pub kind: MetricKind,
    /// A gauge's or sum's value; a histogram's or summary's sum (0 if it had none).
    pub value: f64,
    /// A histogram's or summary's count.
    pub count: Option<u64>,
    /// When the point was taken, in nanoseconds since the Unix epoch.
    pub time_unix_nano: u64,
}

/// OTLP's kinds of metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A value at a time.
    Gauge,
    /// A sum (a counter when monotonic).
    Sum,
    /// Explicit-bucket histogram.
    Histogram,
    /// Exponential histogram.
    ExponentialHistogram,
    /// Quantiles.
    Summary,
}

const METRIC_KINDS: [(&str, MetricKind); 5] = [
    ("gauge", MetricKind::Gauge),
    ("sum", MetricKind::Sum),
    ("histogram", MetricKind::Histogram),
    ("exponentialHistogram", MetricKind::ExponentialHistogram),
    ("summary", MetricKind::Summary),
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TracesLine {
    #[serde(default)]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans {
    #[serde(default)]
    resource: Resource,
    #[serde(default)]
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Deserialize, Default)]
struct Resource {
    #[serde(default)]
    attributes: Vec<KeyValue>,
}

#[derive(Deserialize, Default)]
struct Scope {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScopeSpans {
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    spans: Vec<RawSpan>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpan {
    #[serde(default)]
    trace_id: String,
    #[serde(default)]
    span_id: String,
    #[serde(default)]
    parent_span_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    kind: Value,
    #[serde(default)]
    attributes: Vec<KeyValue>,
    #[serde(default)]
    links: Vec<RawLink>,
    #[serde(default)]
    start_time_unix_nano: Value,
    #[serde(default)]
    end_time_unix_nano: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLink {
    #[serde(default)]
    trace_id: String,
    #[serde(default)]
    span_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetricsLine {
    #[serde(default)]
    resource_metrics: Vec<ResourceMetrics>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceMetrics {
    #[serde(default)]
    resource: Resource,
    #[serde(default)]
    scope_metrics: Vec<ScopeMetrics>,
}

#[derive(Deserialize)]
struct ScopeMetrics {
    #[serde(default)]
    metrics: Vec<BTreeMap<String, Value>>,
}

/// The spans of one line of the traces file.
pub fn parse_spans(line: &str) -> Result<Vec<Span>> {
    let parsed: TracesLine = serde_json::from_str(line)?;
    let mut spans = Vec::new();
    for rs in parsed.resource_spans {
        let resource = attributes(rs.resource.attributes);
        let service_name = service_name(&resource);
        for ss in rs.scope_spans {
            for raw in ss.spans {
                spans.push(Span {
                    trace_id: raw.trace_id,
                    span_id: raw.span_id,
                    parent_span_id: Some(raw.parent_span_id).filter(|p| !p.is_empty()),
                    name: raw.name,
                    kind: SpanKind::from_json(&raw.kind),
                    service_name: service_name.clone(),
                    resource: resource.clone(),
                    scope: ss.scope.name.clone(),
                    attributes: attributes(raw.attributes),
                    links: raw.links.into_iter().map(|l| (l.trace_id, l.span_id)).collect(),
                    start_unix_nano: number(&raw.start_time_unix_nano) as u64,
                    end_unix_nano: number(&raw.end_time_unix_nano) as u64,
                });
            }
        }
    }
    Ok(spans)
}

/// The data points of one line of the metrics file.
pub fn parse_metrics(line: &str) -> Result<Vec<MetricPoint>> {
    let parsed: MetricsLine = serde_json::from_str(line)?;
    let mut points = Vec::new();
    for rm in parsed.resource_metrics {
        let resource = attributes(rm.resource.attributes);
        let service_name = service_name(&resource);
        for metric in rm.scope_metrics.into_iter().flat_map(|sm| sm.metrics) {
            let name = metric.get("name").and_then(Value::as_str).unwrap_or_default();
            for (field, kind) in METRIC_KINDS {
                let Some(data) = metric.get(field) else { continue };
                for point in data["dataPoints"].as_array().into_iter().flatten() {
                    let raw: Vec<KeyValue> = serde_json::from_value(point["attributes"].clone()).unwrap_or_default();
                    let (value, count) = match kind {
                        MetricKind::Gauge | MetricKind::Sum => {
                            (number(&point["asDouble"]) + number(&point["asInt"]), None)
                        }
                        _ => (number(&point["sum"]), Some(number(&point["count"]) as u64)),
                    };
                    points.push(MetricPoint {
                        name: name.to_owned(),
                        service_name: service_name.clone(),
                        resource: resource.clone(),
                        attributes: attributes(raw),
                        kind,
                        value,
                        count,
                        time_unix_nano: number(&point["timeUnixNano"]) as u64,
                    });
                }
            }
        }
    }
    Ok(points)
}

fn service_name(resource: &Attributes) -> String {
    resource
        .get("service.name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn attributes(list: Vec<KeyValue>) -> Attributes {
    list.into_iter().map(|kv| (kv.key, any_value(kv.value))).collect()
}

/// OTLP's `AnyValue` as plain JSON.
fn any_value(value: Value) -> Value {
    let Value::Object(mut map) = value else {
        return Value::Null;
    };
    if let Some(v) = map.remove("intValue") {
        // 64-bit integers travel as strings in OTLP JSON.
        return match &v {
            Value::String(s) => s.parse::<i64>().map(Value::from).unwrap_or(v),
            _ => v,
        };
    }
    if let Some(Value::Object(mut array)) = map.remove("arrayValue") {
        let values = array
            .remove("values")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        return Value::Array(values.into_iter().map(any_value).collect());
    }
    if let Some(Value::Object(mut kvlist)) = map.remove("kvlistValue") {
        let values = kvlist.remove("values").unwrap_or_default();
        let list: Vec<KeyValue> = serde_json::from_value(values).unwrap_or_default();
        return Value::Object(list.into_iter().map(|kv| (kv.key, any_value(kv.value))).collect());
    }
    ["stringValue", "boolValue", "doubleValue", "bytesValue"]
        .into_iter()
        .find_map(|key| map.remove(key))
        .unwrap_or(Value::Null)
}

/// A number that OTLP JSON may write as a number or, for 64-bit ones, a string (0 if neither).
fn number(value: &Value) -> f64 {
    match value {
        Value::Number(n) => n.as_f64().unwrap_or_default(),
        Value::String(s) => s.parse().unwrap_or_default(),
        _ => 0.0,
    }
}
