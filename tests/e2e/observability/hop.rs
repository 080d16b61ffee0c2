//! The fleet's relay-to-relay hop in one trace (issue #13): a request to the relay that does not
//! hold the cluster's tunnel is forwarded to the one that does, and every hop's span is in the
//! request's trace, each the child of the one before.

use anyhow::{Context, Result, ensure};
use serde_json::json;

use super::{SPANS_DEADLINE, request_span};
use crate::support::Testbed;
use crate::support::fleet::Fleet;
use crate::support::otelcol::otlp::{Span, SpanKind};
use crate::support::process::wait_for;

/// Two relays of a fleet and an agent exporting every trace to the test bed's collector, the
/// agent's tunnel on relay-1 only; one `kubectl get namespace` through relay-0 is one trace:
/// relay-0's request span (root) → its `stream` span (client, `via` relay-1) → relay-1's span of
/// the forwarded stream (server) → the agent's span; kube-apiserver's trace is linked to the
/// agent's span (its service account is not privileged).
pub fn a_request_forwarded_between_relays_is_one_trace_through_both_relays_and_the_agent(tb: &Testbed) -> Result<()> {
    let collector = tb.collector();
    let traces = collector.traces_from_now()?;
    let telemetry = format!(
        "[telemetry]\notlp_endpoint = \"http://{}\"\nsampling_ratio = 1.0\n",
        collector.otlp_grpc_endpoint()
    );
    let fleet = Fleet::start_with_tables(tb, 2, &["hop"], &telemetry)?;
    fleet.start_agent_with_tables("hop", "agent-hop", 1, &telemetry)?;
    let kubectl = fleet.kubectl(0, "hop")?;
    wait_for("cluster hop to answer through relay-0", SPANS_DEADLINE * 2, || {
        Ok(kubectl.run(&["get", "--raw=/version"])?.status.success().then_some(()))
    })?;
    let ns = tb.namespace("hop")?;
    kubectl.ok(&["get", "namespace", &ns, "-o", "name"])?;
    let path = format!("/api/v1/namespaces/{ns}");

    let instance = |s: &Span, name: &str| s.resource.get("service.instance.id") == Some(&json!(name));
    // Found by process and request id, not by parent: the parents are what is checked below.
    let (request, agent, trace) = traces
        .wait_for(
            "relay-0's, relay-1's and the agent's spans of the request",
            SPANS_DEADLINE,
            |spans| {
                let request = spans.iter().find(|s| {
                    instance(s, "relay-0") && s.kind == SpanKind::Server && s.attribute("url.path") == Some(&path)
                })?;
                let id = request.attribute("request.id")?;
                let agent = spans.iter().find(|s| {
                    s.service_name == "hawser-agent"
                        && s.kind == SpanKind::Server
                        && s.attribute("request.id") == Some(id)
                })?;
                // relay-1's span of the hop, and relay-0's stream span.
                spans
                    .iter()
                    .find(|s| instance(s, "relay-1") && s.attribute("request.id") == Some(id))?;
                spans
                    .iter()
                    .find(|s| instance(s, "relay-0") && s.parent_span_id.as_ref() == Some(&request.span_id))?;
                let trace: Vec<Span> = spans
                    .iter()
                    .filter(|s| s.trace_id == request.trace_id)
                    .cloned()
                    .collect();
                Some((request.clone(), agent.clone(), trace))
            },
        )
        .with_context(|| format!("the collector's files are in {}", collector.dir().display()))?;

    ensure!(
        request.parent_span_id.is_none(),
        "relay-0's request span is the trace's root (kubectl sends no traceparent): {request:?}"
    );
    let parent = |child: &Span, what: &str| {
        trace
            .iter()
            .find(|s| Some(&s.span_id) == child.parent_span_id.as_ref())
            .cloned()
            .with_context(|| format!("{what} is in the trace {}: {child:?}", request.trace_id))
    };
    let forwarded = parent(&agent, "the agent's parent")?;
    ensure!(
        instance(&forwarded, "relay-1")
            && forwarded.service_name == "hawser-relay"
            && forwarded.kind == SpanKind::Server
            && forwarded.name == "relay forward"
            && forwarded.attribute("cluster") == Some("hop")
            && forwarded.attribute("request.id") == request.attribute("request.id"),
        "the agent's parent is relay-1's span of the forwarded stream (server, `relay forward`, its \
         cluster and the request id): {forwarded:?}"
    );
    let stream = parent(&forwarded, "relay-1's parent")?;
    ensure!(
        instance(&stream, "relay-0")
            && stream.kind == SpanKind::Client
            && stream.attribute("via") == Some("relay-1")
            && stream.attribute("cluster") == Some("hop")
            && stream.parent_span_id.as_ref() == Some(&request.span_id),
        "relay-1's parent is relay-0's stream span (client, via relay-1), a child of its request span: {stream:?}"
    );
    for span in [&request, &stream, &forwarded, &agent] {
        ensure!(
            !span
                .attributes
                .keys()
                .any(|k| k.contains("token") || k.contains("credential")),
            "no credential in a span: {span:?}"
        );
    }

    let apiserver = request_span(tb, &traces, "GET", &path)?;
    let agent_span = (agent.trace_id.clone(), agent.span_id.clone());
    ensure!(
        apiserver.parent_span_id.as_ref() == Some(&agent.span_id) || apiserver.links.contains(&agent_span),
        "kube-apiserver's span is the agent's child or linked to it: {apiserver:?} {agent:?}"
    );
    Ok(())
}
