//! The observability support alone, without the test bed: a collector reads back what is
//! posted to it over OTLP/HTTP, and another collector's own metrics pushed to it over OTLP.

use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::json;

use super::{SCRAPE_DEADLINE, SPANS_DEADLINE};
use crate::support::net::http;
use crate::support::otelcol::otlp::{MetricKind, MetricPoint, SpanKind};
use crate::support::otelcol::{Collector, OwnMetrics};
use crate::support::process::wait_for;

/// One span with an attribute of each OTLP kind, as OTLP/HTTP's JSON encoding sends it.
const PROBE_SPAN: &str = r#"{"resourceSpans":[{
  "resource":{"attributes":[{"key":"service.name","value":{"stringValue":"probe"}}]},
  "scopeSpans":[{"scope":{"name":"probe-scope"},"spans":[{
    "traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"1112131415161718",
    "parentSpanId":"2122232425262728","name":"probe span","kind":3,
    "startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000500000000",
    "links":[{"traceId":"3132333435363738393a3b3c3d3e3f40","spanId":"4142434445464748"}],
    "attributes":[
      {"key":"text","value":{"stringValue":"x"}},
      {"key":"int","value":{"intValue":"9007199254740993"}},
      {"key":"list","value":{"arrayValue":{"values":[{"boolValue":true},{"doubleValue":1.5}]}}},
      {"key":"map","value":{"kvlistValue":{"values":[{"key":"n","value":{"stringValue":"v"}}]}}}]}]}]}]}"#;

pub fn otlp_http_spans_and_a_collectors_own_metrics_pushed_over_otlp_are_read_back() -> Result<()> {
    let receiving = Collector::start()?;
    let pushing = Collector::start_with(OwnMetrics::PushTo(format!(
        "{}/v1/metrics",
        receiving.otlp_http_endpoint()
    )))?;

    // A span posted over OTLP/HTTP comes back from the file exporter field by field.
    let (status, body) = http(pushing.otlp_http_addr().port(), "POST", "/v1/traces", PROBE_SPAN)?;
    ensure!(
        status == 200,
        "the collector answered the posted span with {status}: {body}"
    );
    let span = pushing
        .traces()
        .wait_for("the posted span", SPANS_DEADLINE, |spans| spans.first().cloned())?;
    let expected_attributes = json!({"text": "x", "int": 9007199254740993_i64, "list": [true, 1.5], "map": {"n": "v"}});
    ensure!(
        (
            span.trace_id.as_str(),
            span.span_id.as_str(),
            span.parent_span_id.as_deref()
        ) == (
            "0102030405060708090a0b0c0d0e0f10",
            "1112131415161718",
            Some("2122232425262728")
        ) && (
            span.name.as_str(),
            span.kind,
            span.service_name.as_str(),
            span.scope.as_str()
        ) == ("probe span", SpanKind::Client, "probe", "probe-scope")
            && (span.start_unix_nano, span.end_unix_nano) == (1_700_000_000_000_000_000, 1_700_000_000_500_000_000)
            && span.links
                == [(
                    "3132333435363738393a3b3c3d3e3f40".to_owned(),
                    "4142434445464748".to_owned()
                )]
            && serde_json::to_value(&span.attributes)? == expected_attributes,
        "the span read back differs from the one posted: {span:?}"
    );

    // The pushing collector's own metrics about that request arrive at the receiving one: a
    // counter with its attributes, and its HTTP server's duration histogram.
    let arrived = |what: &str, matches: &dyn Fn(&MetricPoint) -> bool| {
        let what = format!("the pusher's {what}");
        receiving.metrics().wait_for(&what, SCRAPE_DEADLINE, |points| {
            points.iter().find(|p| matches(p)).cloned()
        })
    };
    let accepted = arrived("count of accepted spans", &|p| {
        p.name == "otelcol_receiver_accepted_spans"
            && p.kind == MetricKind::Sum
            && p.attributes.get("transport") == Some(&json!("http"))
            && p.value >= 1.0
    })?;
    ensure!(accepted.value == 1.0, "one span was posted: {accepted:?}");
    arrived("HTTP request histogram", &|p| {
        p.name == "http.server.request.duration"
            && p.kind == MetricKind::Histogram
            && p.attributes.get("http.route") == Some(&json!("/v1/traces"))
            && p.attributes.get("http.response.status_code") == Some(&json!(200))
            && p.count == Some(1)
            && p.value > 0.0
    })?;
    // A gauge of whole bytes (OTLP's asInt).
    arrived("resident memory", &|p| {
        p.name == "otelcol_process_memory_rss" && p.kind == MetricKind::Gauge && p.value > 1e6
    })?;
    let points = receiving.metrics().all()?;
    ensure!(
        points.iter().all(|p| p.service_name == "otelcol"
            && p.resource.contains_key("service.instance.id")
            && p.time_unix_nano > 0),
        "every point names the collector that sent it, and when: {points:?}"
    );

    // Dropping a collector stops it: its ports stop answering.
    let grpc = pushing.otlp_grpc_endpoint();
    drop(pushing);
    wait_for(
        "the dropped collector to stop listening",
        Duration::from_secs(10),
        || Ok(TcpStream::connect(&grpc).is_err().then_some(())),
    )?;
    Ok(())
}
