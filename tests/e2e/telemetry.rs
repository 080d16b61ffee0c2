//! What operators see (issue #13): the admin listener's Prometheus `/metrics` of a relay and an
//! agent serving the test bed, and that the callers' port serves none of it.

use std::time::Duration;

use anyhow::{Result, ensure};

use crate::support::Testbed;
use crate::support::hawser::{CLUSTER, Extra, Hawser};
use crate::support::https;
use crate::support::net::{free_port, http};
use crate::support::process::wait_for;

/// A telemetry test.
pub type Test = fn(&Testbed) -> Result<()>;

/// Every telemetry test, by name.
pub const TESTS: &[(&str, Test)] = &[
    (
        "relay_and_agent_metrics_count_requests_tunnels_and_refusals_on_the_admin_port_only",
        relay_and_agent_metrics_count_requests_tunnels_and_refusals_on_the_admin_port_only,
    ),
    (
        "a_callers_sampled_traceparent_is_continued_and_no_token_header_value_or_user_reaches_a_span",
        a_callers_sampled_traceparent_is_continued_and_no_token_header_value_or_user_reaches_a_span,
    ),
];

/// A relay and an agent with admin listeners. Before any request, the relay's `/metrics` has a
/// refusal series at 0 for every reason the relay records, and a handshake series for every
/// result, and no peer forwards (no fleet); the agent's, every reason the agent records at 0 and
/// every reconnect cause. After a list through the tunnel, a refused token, a request for a
/// cluster nobody configured, one for a path the relay does not serve and one with a cluster
/// token (which the identity-mode agent refuses), the relay's `/metrics` counts the list by
/// cluster and verb (with its latency), the agent's QUIC tunnel, the accepted handshake and its
/// three refusals by reason (not the agent's), and names neither the made-up cluster nor the
/// token; the agent's counts the list, its tunnel and its refusal by reason. Both answer
/// `/readyz`. The callers' port has no `/metrics`.
fn relay_and_agent_metrics_count_requests_tunnels_and_refusals_on_the_admin_port_only(tb: &Testbed) -> Result<()> {
    let (relay_admin, agent_admin) = (free_port()?, free_port()?);
    let relay = format!("[admin]\nlisten = \"127.0.0.1:{relay_admin}\"\n");
    let agent = format!("[admin]\nlisten = \"127.0.0.1:{agent_admin}\"\n");
    let hawser = Hawser::start_with(
        tb,
        &Extra {
            relay: &relay,
            agent: &agent,
            ..Extra::default()
        },
    )?;
    all_at_zero_from_the_start(relay_admin, agent_admin)?;
    let admin = hawser.kubeconfig_route("hawser-admin", &[])?;
    admin.ok(&["get", "namespaces", "-o", "name"])?;
    let bogus_token = "not-a-token-4b1d0c9e";
    let (status, _) = https::get(
        &format!("{}/clusters/{CLUSTER}/api/v1/namespaces", hawser.relay_url),
        &hawser.relay_ca,
        &[("Authorization", &format!("Bearer {bogus_token}"))],
    )?;
    ensure!(status == 401, "a bogus token: {status}");
    let token = hawser.issue_token("hawser-admin", &[])?;
    let (status, _) = https::get(
        &format!("{}/clusters/made-up-cluster-77/version", hawser.relay_url),
        &hawser.relay_ca,
        &[("Authorization", &format!("Bearer {token}"))],
    )?;
    ensure!(status == 404, "an unknown cluster: {status}");
    let (status, _) = https::get(&format!("{}/nowhere", hawser.relay_url), &hawser.relay_ca, &[])?;
    ensure!(status == 404, "a path outside /clusters/: {status}");
    let (status, body) = https::get(
        &format!("{}/clusters/{CLUSTER}/api/v1/namespaces", hawser.relay_url),
        &hawser.relay_ca,
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Hawser-Cluster-Authorization", "Bearer made-up"),
        ],
    )?;
    ensure!(
        status == 403,
        "a cluster token to an identity-mode agent: {status} {body}"
    );

    let cluster = format!("hawser_cluster=\"{CLUSTER}\"");
    let relay_metrics = wait_for(
        "the relay's metrics to count the list, the tunnel and its three refusals",
        Duration::from_secs(10),
        || {
            let text = metrics(relay_admin)?;
            let all = [
                has(
                    &text,
                    "hawser_requests_total",
                    &[&cluster, "hawser_verb=\"list\"", "http_response_status_code=\"200\""],
                ),
                has(
                    &text,
                    "http_server_request_duration_seconds_count",
                    &[&cluster, "hawser_verb=\"list\""],
                ),
                has(&text, "hawser_tunnels", &[&cluster, "network_transport=\"quic\""]),
                has(&text, "hawser_agent_handshakes_total", &["hawser_result=\"accepted\""]),
                has(&text, "hawser_refusals_total", &["hawser_reason=\"unauthenticated\""]),
                has(&text, "hawser_refusals_total", &["hawser_reason=\"unknown_cluster\""]),
                has(&text, "hawser_refusals_total", &["hawser_reason=\"not_found\""]),
                has(
                    &text,
                    "hawser_io_bytes_total",
                    &[&cluster, "network_io_direction=\"transmit\""],
                ),
            ];
            Ok(all.iter().all(|&ok| ok).then_some(text))
        },
    )?;
    ensure!(
        !relay_metrics.contains("made-up-cluster-77") && !relay_metrics.contains(bogus_token),
        "the relay's metrics name a caller's made-up cluster or token"
    );
    ensure!(
        relay_metrics.contains("hawser_cluster=\"(unknown)\""),
        "the unknown cluster's request is counted under (unknown)"
    );
    // The agent's 403 passes through the relay as the agent's answer, not a refusal of the relay's.
    ensure!(
        value(&relay_metrics, "hawser_refusals_total", "hawser_reason=\"forbidden\"") == Some(0.0)
            && !relay_metrics.contains("wrong_mode"),
        "the relay counts the agent's refusal as its own"
    );
    wait_for(
        "the agent's metrics to count the list, its tunnel and its refusal",
        Duration::from_secs(10),
        || {
            let text = metrics(agent_admin)?;
            Ok(
                (has(&text, "hawser_requests_total", &[&cluster, "hawser_verb=\"list\""])
                    && has(&text, "hawser_tunnels", &[&cluster, "network_transport=\"quic\""])
                    && has(&text, "hawser_refusals_total", &["hawser_reason=\"wrong_mode\""])
                    && has(
                        &text,
                        "hawser_requests_total",
                        &[&cluster, "http_response_status_code=\"403\""],
                    ))
                .then_some(()),
            )
        },
    )?;
    for port in [relay_admin, agent_admin] {
        let (status, body) = http(port, "GET", "/readyz", "")?;
        ensure!(status == 200, "/readyz on admin port {port}: {status} {body}");
    }
    let (status, body) = https::get(&format!("{}/metrics", hawser.relay_url), &hawser.relay_ca, &[])?;
    ensure!(
        status == 404 && !body.contains("hawser_requests"),
        "the callers' port serves no metrics: {status} {body}"
    );
    Ok(())
}

/// Relay and agent export traces, the relay with a sampling ratio of 0, the agent with 1: a request
/// without a `traceparent` is traced by neither (the agent follows the relay's decision); one whose
/// caller sent a sampled `traceparent` is traced anyway (parent-based), the relay's span a child of the
/// caller's, the agent's below it in the same trace, named `relay get` and `agent get` with the
/// request's attributes; and nothing exported names the caller's token, a header's value or
/// (without `record_user`) the caller.
fn a_callers_sampled_traceparent_is_continued_and_no_token_header_value_or_user_reaches_a_span(
    tb: &Testbed,
) -> Result<()> {
    let collector = tb.collector();
    let traces = collector.traces_from_now()?;
    // The agent would trace everything it decided itself: it must follow the relay instead.
    let telemetry = |ratio: &str| {
        format!(
            "[telemetry]\notlp_endpoint = \"http://{}\"\nsampling_ratio = {ratio}\n",
            collector.otlp_grpc_endpoint()
        )
    };
    let (relay_telemetry, agent_telemetry) = (telemetry("0.0"), telemetry("1.0"));
    let hawser = Hawser::start_with(
        tb,
        &Extra {
            relay: &relay_telemetry,
            agent: &agent_telemetry,
            ..Extra::default()
        },
    )?;
    let token = hawser.issue_token("hawser-admin", &[])?;
    // First a request the relay does not sample (no traceparent, ratio 0).
    let unsampled_path = "/api/v1/namespaces/kube-system";
    let (status, body) = https::get(
        &format!("{}/clusters/{CLUSTER}{unsampled_path}", hawser.relay_url),
        &hawser.relay_ca,
        &[("Authorization", &format!("Bearer {token}"))],
    )?;
    ensure!(status == 200, "the unsampled request: {status} {body}");
    let (trace_id, parent) = ("5e1ec7ed0000000000000000000c0ffe", "00000000000ca11e");
    let secret_header = "header-value-7d3f1a";
    let (status, body) = https::get(
        &format!("{}/clusters/{CLUSTER}/api/v1/namespaces/default", hawser.relay_url),
        &hawser.relay_ca,
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("X-Hawser-Test", secret_header),
            ("traceparent", &format!("00-{trace_id}-{parent}-01")),
        ],
    )?;
    ensure!(status == 200, "the traced request: {status} {body}");
    let (relay, agent) = traces.wait_for(
        "the relay's and the agent's spans in the caller's trace",
        Duration::from_secs(15),
        |spans| {
            let mine: Vec<_> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
            let relay = mine
                .iter()
                .find(|s| s.service_name == "hawser-relay" && s.parent_span_id.as_deref() == Some(parent))?;
            let agent = mine.iter().find(|s| s.service_name == "hawser-agent")?;
            Some(((*relay).clone(), (*agent).clone()))
        },
    )?;
    ensure!(
        relay.name == "relay get" && agent.name == "agent get",
        "span names: {:?} and {:?}",
        relay.name,
        agent.name
    );
    for (span, cluster) in [(&relay, CLUSTER), (&agent, CLUSTER)] {
        ensure!(
            span.attribute("hawser.cluster") == Some(cluster)
                && span.attribute("hawser.verb") == Some("get")
                && span.attribute("hawser.resource") == Some("namespaces")
                && span.attributes.contains_key("http.response.status_code"),
            "the request's attributes on {}: {:?}",
            span.name,
            span.attributes
        );
    }
    // Each process exports its spans in the order they end: the unsampled request's, had any been
    // made, would have come before the traced request's.
    let all = traces.all()?;
    ensure!(
        !all.iter()
            .any(|s| s.service_name.starts_with("hawser-") && s.attribute("url.path") == Some(unsampled_path)),
        "the agent (ratio 1) traced a request the relay (ratio 0) did not sample"
    );
    // Hawser's spans only: kube-apiserver's own may name the user it was asked to impersonate.
    let hawser_spans: Vec<_> = all
        .into_iter()
        .filter(|s| s.service_name.starts_with("hawser-"))
        .collect();
    let everything = format!("{hawser_spans:?}");
    for (what, text) in [
        ("the token", token.as_str()),
        ("a header value", secret_header),
        ("the caller", "hawser-admin"),
    ] {
        ensure!(!everything.contains(text), "{what} reached an exported span");
    }
    Ok(())
}

/// Every reason the relay records (`Refusal::reason`, docs/observability.md).
const RELAY_REASONS: [&str; 16] = [
    "method_not_allowed",
    "not_found",
    "bad_request",
    "unknown_cluster",
    "source_throttled",
    "issuer_unavailable",
    "unauthenticated",
    "token_not_for_cluster",
    "forbidden",
    "internal",
    "offline",
    "caller_busy",
    "saturated",
    "unreachable",
    "peer_unreachable",
    "bad_gateway",
];

/// Every reason the agent records (`Failure::reason`, docs/observability.md).
const AGENT_REASONS: [&str; 11] = [
    "method_not_allowed",
    "bad_request",
    "other_credential",
    "unauthenticated",
    "issuer_unavailable",
    "cluster_token_refused",
    "review_unavailable",
    "reviews_exhausted",
    "wrong_mode",
    "internal",
    "bad_gateway",
];

/// Checks the fresh relay's and agent's counters over a fixed set: a series of every value, the
/// refusals at 0 (nothing was refused yet), before the first scrape can have seen any event.
fn all_at_zero_from_the_start(relay_admin: u16, agent_admin: u16) -> Result<()> {
    let relay = metrics(relay_admin)?;
    let agent = metrics(agent_admin)?;
    let checks: [(&str, &str, &str, &[&str], bool); 6] = [
        (&relay, "hawser_refusals_total", "hawser_reason", &RELAY_REASONS, true),
        (
            &relay,
            "hawser_agent_handshakes_total",
            "hawser_result",
            &["accepted", "retried", "ignored", "throttled"],
            false,
        ),
        (&agent, "hawser_refusals_total", "hawser_reason", &AGENT_REASONS, true),
        (
            &agent,
            "hawser_agent_reconnects_total",
            "hawser_cause",
            &["closed", "failed", "relay_elsewhere", "moved"],
            false,
        ),
        (
            &relay,
            "hawser_config_reloads_total",
            "hawser_result",
            &["applied", "refused"],
            true,
        ),
        (
            &agent,
            "hawser_config_reloads_total",
            "hawser_result",
            &["applied", "refused"],
            true,
        ),
    ];
    for (text, name, key, values, zero) in checks {
        for v in values {
            let found = value(text, name, &format!("{key}=\"{v}\""));
            // The start-up waits for the cluster to answer through the relay: on a busy machine a
            // first try can come before the agent's tunnel and be refused as `offline`.
            let zero = zero && *v != "offline";
            ensure!(
                found.is_some_and(|n| !zero || n == 0.0),
                "{name} {key}={v} at the start: {found:?}\n{text}"
            );
        }
    }
    ensure!(
        !relay.contains("hawser_peer_forwards_total{"),
        "a relay without a fleet has peer forwards:\n{relay}"
    );
    let reasons = |text: &str| text.lines().filter(|l| l.starts_with("hawser_refusals_total{")).count();
    ensure!(
        (reasons(&relay), reasons(&agent)) == (RELAY_REASONS.len(), AGENT_REASONS.len()),
        "refusal series beyond the reasons each side records:\n{relay}\n{agent}"
    );
    Ok(())
}

/// The value of the sample of `name` with `label`, if there is one.
fn value(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')) && line.contains(label))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The Prometheus text of the admin listener on `port`.
fn metrics(port: u16) -> Result<String> {
    let (status, body) = http(port, "GET", "/metrics", "")?;
    ensure!(status == 200, "/metrics on port {port}: {status} {body}");
    Ok(body)
}

/// Whether `text` has a sample of `name` with every one of `labels` and a value above zero.
fn has(text: &str, name: &str, labels: &[&str]) -> bool {
    text.lines().any(|line| {
        line.strip_prefix(name).is_some_and(|rest| rest.starts_with('{'))
            && labels.iter().all(|l| line.contains(l))
            && line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
    })
}
