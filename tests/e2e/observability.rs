//! The observability test bed proven with real data: kube-apiserver's own spans reach the
//! shared OpenTelemetry Collector, and so do a relay's and an agent's spans and metrics;
//! Prometheus scrapes real targets (kube-apiserver over TLS with a token, the collector's own
//! metrics) and answers queries; a collector's metrics pushed over OTLP/HTTP are read back
//! (`standalone`).

mod hop;
mod standalone;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;

use crate::support::cluster::MONITORING_USER;
use crate::support::hawser::{AgentCredential, CLUSTER, Hawser};
use crate::support::otelcol::otlp::{MetricKind, Span, SpanKind};
use crate::support::otelcol::received::Received;
use crate::support::process::wait_for;
use crate::support::prometheus::{Prometheus, Sample, ScrapeTarget};
use crate::support::{Kubectl, Testbed};

/// An observability test that needs the test bed.
pub type Test = fn(&Testbed) -> Result<()>;

/// Every observability test that needs the test bed, by name.
pub const TESTS: &[(&str, Test)] = &[
    (
        "kube_apiserver_traces_a_kubectl_request_into_the_collector",
        kube_apiserver_traces_a_kubectl_request_into_the_collector,
    ),
    (
        "prometheus_scrapes_kube_apiserver_over_tls_with_a_token_and_not_without",
        prometheus_scrapes_kube_apiserver_over_tls_with_a_token_and_not_without,
    ),
    (
        "prometheus_counts_at_least_the_spans_the_collector_wrote",
        prometheus_counts_at_least_the_spans_the_collector_wrote,
    ),
    (
        "relay_agent_and_apiserver_spans_of_one_request_and_relay_metrics_reach_the_collector",
        relay_agent_and_apiserver_spans_of_one_request_and_relay_metrics_reach_the_collector,
    ),
    (
        "one_trace_from_relay_through_agent_into_kube_apiserver_with_the_agent_in_system_monitoring",
        one_trace_from_relay_through_agent_into_kube_apiserver_with_the_agent_in_system_monitoring,
    ),
    (
        "a_request_forwarded_between_relays_is_one_trace_through_both_relays_and_the_agent",
        hop::a_request_forwarded_between_relays_is_one_trace_through_both_relays_and_the_agent,
    ),
];

/// A test of the support alone, without the test bed.
pub type Standalone = fn() -> Result<()>;

/// Every observability test of the support alone, by name.
pub const STANDALONE: &[(&str, Standalone)] = &[(
    "otlp_http_spans_and_a_collectors_own_metrics_pushed_over_otlp_are_read_back",
    standalone::otlp_http_spans_and_a_collectors_own_metrics_pushed_over_otlp_are_read_back,
)];

/// The `service.name` kube-apiserver gives its spans (k8s.io/apiserver's tracing options).
const APISERVER_SERVICE: &str = "apiserver";
/// How long kube-apiserver's spans may take to arrive (its exporter sends every 100 ms here).
const SPANS_DEADLINE: Duration = Duration::from_secs(15);
/// How long Prometheus may take to scrape (every second) and answer.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(15);

fn kube_apiserver_traces_a_kubectl_request_into_the_collector(tb: &Testbed) -> Result<()> {
    let ns = tb.namespace("traced")?;
    let traces = tb.collector().traces_from_now()?;
    let admin = tb.admin();
    admin.ok(&["create", "configmap", "traced", "-n", &ns])?;
    admin.ok(&["get", "configmap", "traced", "-n", &ns])?;

    let server = request_span(
        tb,
        &traces,
        "GET",
        &format!("/api/v1/namespaces/{ns}/configmaps/traced"),
    )?;
    ensure!(
        server.name == "GET /api/v1/namespaces/{:namespace}/configmaps/{:name}",
        "the server span is named by its route, not {:?}",
        server.name
    );
    ensure!(
        server
            .attribute("user_agent.original")
            .is_some_and(|ua| ua.starts_with("kubectl")),
        "the server span names kubectl as its user agent: {server:?}"
    );
    ensure!(
        server.trace_id.len() == 32 && server.span_id.len() == 16,
        "hex trace and span ids: {server:?}"
    );
    ensure!(
        server.start_unix_nano > 0 && server.start_unix_nano < server.end_unix_nano,
        "the span starts before it ends: {server:?}"
    );
    ensure!(
        server.resource.contains_key("service.instance.id"),
        "the resource names the apiserver's instance: {:?}",
        server.resource
    );
    // Below the server span, through the filters' spans: the handler's `Get`, and under it the
    // etcd client's call, each linked to its parent in the server span's trace.
    let ((get, range), trace) = traces.wait_for(
        "the handler's and etcd's spans under the server span",
        SPANS_DEADLINE,
        |spans| {
            let trace: Vec<Span> = spans
                .iter()
                .filter(|s| s.trace_id == server.trace_id)
                .cloned()
                .collect();
            let below = |name: &str, kind: SpanKind| {
                trace
                    .iter()
                    .find(|s| s.name == name && s.kind == kind && descends_from(s, &server, &trace))
                    .cloned()
            };
            let found = (
                below("Get", SpanKind::Internal)?,
                below("etcdserverpb.KV/Range", SpanKind::Client)?,
            );
            Some((found, trace))
        },
    )?;
    ensure!(
        descends_from(&range, &get, &trace),
        "etcd's call is below the handler's span: {range:?}"
    );
    Ok(())
}

/// A relay and an agent exporting to the test bed's collector (every trace sampled, metrics every
/// second) serve one `kubectl get`: the relay's request span, the agent's below it in its trace,
/// kube-apiserver's trace linked to the agent's span, and the relay's request count over OTLP.
fn relay_agent_and_apiserver_spans_of_one_request_and_relay_metrics_reach_the_collector(tb: &Testbed) -> Result<()> {
    let collector = tb.collector();
    let (traces, metrics) = (collector.traces_from_now()?, collector.metrics_from_now()?);
    let relayed = relayed_get(
        tb,
        &traces,
        "sampling_ratio = 1.0\nmetrics_export_secs = 1\n",
        AgentCredential::ServiceAccount,
    )?;

    // The agent's service account is in neither system:masters nor system:monitoring, so
    // kube-apiserver starts a trace of its own and links it to the agent's span
    // (docs/observability.md; the contrast is the test below).
    let apiserver = request_span(tb, &traces, "GET", &relayed.path)?;
    let agent_span = (relayed.agent.trace_id.clone(), relayed.agent.span_id.clone());
    traces.wait_for(
        "kube-apiserver's trace linked to the agent's span",
        SPANS_DEADLINE,
        |spans| {
            spans
                .iter()
                .find(|s| s.trace_id == apiserver.trace_id && s.links.contains(&agent_span))
                .cloned()
        },
    )?;

    metrics.wait_for("the relay's count of GETs over OTLP", SCRAPE_DEADLINE, |points| {
        points
            .iter()
            .find(|p| {
                p.service_name == "hawser-relay"
                    && p.name == "hawser.requests"
                    && p.kind == MetricKind::Sum
                    && p.attributes.get("hawser.verb") == Some(&json!("get"))
                    && p.value >= 1.0
            })
            .cloned()
    })?;
    Ok(())
}

/// The agent authenticating to kube-apiserver as a user in `system:monitoring` (and impersonating
/// the caller, as always): kube-apiserver continues the agent's trace, so one `kubectl get` is ONE
/// trace: the relay's request span its root, the relay's stream span below it, the agent's span
/// below that, and kube-apiserver's server span a child of the agent's, not linked to it.
fn one_trace_from_relay_through_agent_into_kube_apiserver_with_the_agent_in_system_monitoring(
    tb: &Testbed,
) -> Result<()> {
    // The agent's credential: the test bed's user in system:monitoring, and in no group but the
    // one every authenticated user is in.
    let whoami = Kubectl::new(
        tb.kubectl_bin(),
        &tb.token_kubeconfig("monitoring", tb.monitoring_token())?,
    )
    .ok(&["auth", "whoami", "-o", "json"])?;
    let user: serde_json::Value = serde_json::from_str(&whoami)?;
    ensure!(
        user["status"]["userInfo"]["username"] == json!(MONITORING_USER)
            && user["status"]["userInfo"]["groups"] == json!(["system:monitoring", "system:authenticated"]),
        "the agent's credential is {MONITORING_USER} in system:monitoring alone: {whoami}"
    );
    let traces = tb.collector().traces_from_now()?;
    let Relayed {
        path,
        relay,
        agent,
        trace,
        ..
    } = relayed_get(tb, &traces, "sampling_ratio = 1.0\n", AgentCredential::Monitoring)?;

    ensure!(
        relay.parent_span_id.is_none(),
        "the relay's request span is the trace's root: {relay:?}"
    );
    let stream = trace
        .iter()
        .find(|s| Some(&s.span_id) == agent.parent_span_id.as_ref())
        .with_context(|| format!("the agent's parent span is in the trace: {agent:?}"))?;
    ensure!(
        stream.service_name == "hawser-relay"
            && stream.parent_span_id.as_ref() == Some(&relay.span_id)
            && stream.attribute("cluster") == Some(CLUSTER),
        "the agent's parent is the relay's stream span, a child of the request span: {stream:?}"
    );
    // A link instead would mean the apiserver took the agent for an unprivileged user.
    let apiserver = request_span(tb, &traces, "GET", &path)?;
    ensure!(
        apiserver.trace_id == relay.trace_id
            && apiserver.parent_span_id.as_ref() == Some(&agent.span_id)
            && apiserver.links.is_empty(),
        "kube-apiserver's server span is in the relay's trace {}, a child of the agent's span {}, not \
         linked to it: trace {} parent {:?} links {:?}",
        relay.trace_id,
        agent.span_id,
        apiserver.trace_id,
        apiserver.parent_span_id,
        apiserver.links
    );
    Ok(())
}

/// A relay and an agent serving one `kubectl get namespace`, and their server spans of it.
struct Relayed {
    /// Runs until the test is done: its metrics go on being exported.
    _hawser: Hawser,
    /// The request's path, `/api/v1/namespaces/NAME`.
    path: String,
    /// The relay's server span of the request.
    relay: Span,
    /// The agent's server span, below the relay's in its trace, with the same request id.
    agent: Span,
    /// The spans of the relay's trace that had arrived, from the relay's to the agent's.
    trace: Vec<Span>,
}

/// Starts a relay and an agent exporting to the test bed's collector (`[telemetry]` keys `keys`),
/// the agent authenticating as `credential`, and has them serve one `kubectl get namespace` of a
/// fresh namespace (kubectl sends no `traceparent`); waits in `traces` (read from before the start)
/// for the relay's and the agent's server spans of it.
fn relayed_get(tb: &Testbed, traces: &Received<Span>, keys: &str, credential: AgentCredential) -> Result<Relayed> {
    let hawser = Hawser::start_exporting(tb, keys, credential)?;
    let ns = tb.namespace("relayed")?;
    hawser
        .kubeconfig_route("hawser-admin", &[])?
        .ok(&["get", "namespace", &ns, "-o", "name"])?;

    let path = format!("/api/v1/namespaces/{ns}");
    // Told apart by service, kind and path, not by name: the names are the product's to settle.
    let request = |s: &Span, service: &str| {
        s.service_name == service && s.kind == SpanKind::Server && s.attribute("url.path") == Some(&path)
    };
    let (relay, agent, trace) = traces
        .wait_for(
            "the relay's and the agent's spans of the request",
            SPANS_DEADLINE,
            |spans| {
                let relay = spans.iter().find(|s| request(s, "hawser-relay"))?;
                let trace: Vec<Span> = spans.iter().filter(|s| s.trace_id == relay.trace_id).cloned().collect();
                let agent = trace
                    .iter()
                    .find(|s| request(s, "hawser-agent") && descends_from(s, relay, &trace))?
                    .clone();
                Some((relay.clone(), agent, trace))
            },
        )
        .with_context(|| format!("the collector's files are in {}", tb.collector().dir().display()))?;
    ensure!(
        relay.attribute("request.id").is_some() && relay.attribute("request.id") == agent.attribute("request.id"),
        "relay and agent name one request id: {relay:?} {agent:?}"
    );
    Ok(Relayed {
        _hawser: hawser,
        path,
        relay,
        agent,
        trace,
    })
}

/// Whether `span` is below `ancestor`, following parent ids through `trace` (their trace's spans).
fn descends_from(span: &Span, ancestor: &Span, trace: &[Span]) -> bool {
    let mut parent = span.parent_span_id.clone();
    // Bounded by the trace's size, so a cycle in bad data cannot loop forever.
    for _ in 0..trace.len() {
        let Some(id) = parent else { return false };
        if id == ancestor.span_id {
            return true;
        }
        parent = trace
            .iter()
            .find(|s| s.span_id == id)
            .and_then(|s| s.parent_span_id.clone());
    }
    false
}

/// kube-apiserver's server span for `method path` among `traces` (read from the test bed's
/// collector), once it arrived.
fn request_span(tb: &Testbed, traces: &Received<Span>, method: &str, path: &str) -> Result<Span> {
    traces
        .wait_for(
            &format!("kube-apiserver's span of {method} {path}"),
            SPANS_DEADLINE,
            |spans| {
                spans
                    .iter()
                    .find(|s| {
                        s.service_name == APISERVER_SERVICE
                            && s.kind == SpanKind::Server
                            && s.attribute("url.path") == Some(path)
                            && s.attribute("http.request.method") == Some(method)
                    })
                    .cloned()
            },
        )
        .with_context(|| format!("the collector's files are in {}", tb.collector().dir().display()))
}

fn prometheus_scrapes_kube_apiserver_over_tls_with_a_token_and_not_without(tb: &Testbed) -> Result<()> {
    let ns = tb.namespace("scraped")?;
    // A service account allowed to GET /metrics, and nothing else.
    let admin = tb.admin();
    let role = format!("metrics-reader-{ns}");
    admin.ok(&[
        "create",
        "clusterrole",
        &role,
        "--verb=get",
        "--non-resource-url=/metrics",
    ])?;
    admin.ok(&[
        "create",
        "clusterrolebinding",
        &role,
        &format!("--clusterrole={role}"),
        &format!("--serviceaccount={ns}:scraper"),
    ])?;
    let token = tb.service_account_token(&ns, "scraper")?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token)?;

    let address = tb.server.trim_start_matches("https://");
    let prometheus = Prometheus::start(&[
        ScrapeTarget::https("apiserver", address, &tb.pki.ca_cert).bearer_token_file(&token_file),
        ScrapeTarget::https("anonymous", address, &tb.pki.ca_cert),
    ])?;
    // The token's target comes up (RBAC may take a moment to allow it); the anonymous one is
    // scraped, over verified TLS, and refused.
    let mut last = Vec::new();
    wait_for("the token's target up, the anonymous one refused", SCRAPE_DEADLINE, || {
        last = prometheus.targets()?;
        let health = |job: &str| last.iter().find(|t| t.job == job);
        Ok(matches!(
            (health("apiserver"), health("anonymous")),
            (Some(ok), Some(refused)) if ok.health == "up" && refused.health == "down" && refused.last_error.contains("403")
        )
        .then_some(()))
    })
    .with_context(|| format!("the targets: {last:?}; prometheus's files are in {}", prometheus.dir().display()))?;
    let scraped = format!("{}/metrics", tb.server);
    ensure!(
        last.iter().all(|t| t.scrape_url == scraped),
        "both scrape {scraped}: {last:?}"
    );

    // A request the counter has not seen: the scraped count of 404s for config maps grows.
    let not_found = r#"sum(apiserver_request_total{resource="configmaps",verb="GET",code="404"})"#;
    let before = total(&prometheus.query(not_found)?);
    let out = admin.run(&["get", "configmap", "absent", "-n", &ns])?;
    ensure!(!out.status.success(), "kubectl found a config map that does not exist");
    prometheus.wait_for(not_found, SCRAPE_DEADLINE, |samples| total(samples) > before)?;
    admin.ok(&["delete", "clusterrolebinding", &role])?;
    admin.ok(&["delete", "clusterrole", &role])?;
    Ok(())
}

/// The sum of a query's samples (0 for none: a counter not yet incremented has no series).
fn total(samples: &[Sample]) -> f64 {
    samples.iter().map(|s| s.value).sum()
}

fn prometheus_counts_at_least_the_spans_the_collector_wrote(tb: &Testbed) -> Result<()> {
    let collector = tb.collector();
    let telemetry = collector
        .telemetry_addr()
        .context("the test bed's collector serves its own metrics")?;
    let prometheus = Prometheus::start(&[ScrapeTarget::http("otelcol", &telemetry.to_string())])?;
    prometheus.targets_up(SCRAPE_DEADLINE)?;
    let accepted = r#"{__name__=~"otelcol_receiver_accepted_spans(_total)?",receiver="otlp"}"#;
    // The test bed's start alone made kube-apiserver export spans.
    let before = total(&prometheus.wait_for(accepted, SCRAPE_DEADLINE, |samples| total(samples) > 0.0)?);

    let ns = tb.namespace("counted")?;
    let traces = collector.traces_from_now()?;
    tb.admin().ok(&["get", "namespace", &ns])?;
    request_span(tb, &traces, "GET", &format!("/api/v1/namespaces/{ns}"))?;
    // The receiver counts every span it accepts, before the exporter writes it: the count is at
    // least what was written since we began reading; and our request came after `before` was
    // scraped, so the count grows past it.
    let written = traces.all()?.len() as f64;
    let samples = prometheus.wait_for(accepted, SCRAPE_DEADLINE, |samples| {
        total(samples) > before && total(samples) >= written
    })?;
    // kube-apiserver exports over gRPC.
    ensure!(
        samples
            .iter()
            .any(|s| s.labels.get("transport").map(String::as_str) == Some("grpc") && s.value > 0.0),
        "spans accepted over gRPC: {samples:?}"
    );
    Ok(())
}
