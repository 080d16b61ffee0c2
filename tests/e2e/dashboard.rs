//! The Grafana dashboard (`docs/dashboards/hawser.json`, issue #13) on real data. Grafana cannot
//! be installed here, so the test does what Grafana would: with its variables set to "All", it
//! runs every panel's queries on a real Prometheus that scrapes a fleet under load, and every
//! template variable's query, and each must return data.

mod grafana;

use std::fs;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::support::Testbed;
use crate::support::fleet::Fleet;
use crate::support::https;
use crate::support::net::http;
use crate::support::process::wait_for;
use crate::support::prometheus::{Prometheus, Sample, ScrapeTarget};
use grafana::{Dashboard, Query};

/// A dashboard test.
pub type Test = fn(&Testbed) -> Result<()>;

/// Every dashboard test, by name.
pub const TESTS: &[(&str, Test)] = &[(
    "every_panel_and_variable_of_the_dashboard_has_data_on_prometheus_after_a_fleet_load",
    every_panel_and_variable_of_the_dashboard_has_data_on_prometheus_after_a_fleet_load,
)];

/// The cluster whose agent holds a tunnel to relay-1.
const SERVED: &str = "dash";
/// A configured cluster no agent serves: its requests are 503 (offline, no relay holds it).
const UNSERVED: &str = "unserved";
/// How long Prometheus (scraping every second) may take to show what the load did.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(20);

/// What a panel must show after the load, beyond some data: (panel id, target, label, value,
/// whether that series must be above 0). Panel ids are stable in the dashboard. A relay's refusal's
/// rate is above 0 after a single one: its series was scraped at 0 before it. The agent's one
/// refusal is checked on its own `/metrics` (a rate over one event depends on scrape timing).
const EXPECTED: &[(u64, &str, &str, &str, bool)] = &[
    (2, "A", "hawser_cluster", SERVED, false),
    (3, "A", "hawser_cluster", UNSERVED, false),
    (3, "B", "hawser_cluster", SERVED, false),
    (8, "A", "hawser_reason", "unauthenticated", true),
    (8, "A", "hawser_reason", "offline", true),
    (8, "A", "hawser_reason", "caller_busy", false),
    (8, "B", "hawser_reason", "wrong_mode", false),
    (8, "B", "hawser_reason", "reviews_exhausted", false),
    (10, "A", "network_transport", "quic", false),
    (12, "A", "hawser_result", "accepted", false),
    (13, "A", "hawser_cause", "closed", false),
    (13, "A", "hawser_cause", "moved", false),
    (18, "A", "hawser_result", "forwarded", false),
    (18, "A", "hawser_result", "none_holds", false),
    (18, "A", "hawser_result", "unreachable", false),
    (20, "A", "hawser_peer", "relay-1", false),
];
/// The panel of open streams (its target A: at the relays).
const STREAMS_PANEL: u64 = 5;

/// Two relays of a fleet and an agent holding one tunnel to relay-1, each with an admin listener
/// that a real Prometheus scrapes every second. The load: the agent's tunnel cut by a relay
/// restart (a reconnect), kubectl through relay-0 (forwarded to relay-1: a create that sends a
/// body, a list) and through relay-1 (a get), a watch (while it is open, the streams panel shows
/// it at relay-0), a request without a token (401), one for a cluster no agent serves (503) and
/// one with a cluster token, which the identity-mode agent refuses (403). Then every panel's every
/// query, with Grafana's variables substituted as "All" and a rate interval of one minute,
/// returns at least one sample, and the panels that name what the load did show it (each
/// refusal's rate above 0, at the relay or the agent, and reasons, causes and results that did
/// not happen at 0); every template variable's query finds values (the jobs, the instances and
/// both clusters).
fn every_panel_and_variable_of_the_dashboard_has_data_on_prometheus_after_a_fleet_load(tb: &Testbed) -> Result<()> {
    let dashboard = Dashboard::load()?;
    // The dashboard's shape first: a broken one fails before anything starts.
    let queries = dashboard.queries()?;
    let variables = dashboard.variables()?;
    let fleet = Fleet::start_with_admin(tb, 2, &[SERVED, UNSERVED])?;
    // One tunnel, to relay-1; a relay killed is noticed within 3 s, not the default 20.
    let agent_admin = fleet.start_agent_with_admin(
        SERVED,
        "agent-dash",
        1,
        "connections = 1",
        "[tunnel]\nkeep_alive_secs = 1\nidle_timeout_secs = 3\n",
    )?;
    let relay_admin = |i: usize| fleet.ports[i].admin.context("the fleet's relays have admin ports");
    let address = |port: u16| format!("127.0.0.1:{port}");
    let targets = [
        ("hawser-relay-0", relay_admin(0)?),
        ("hawser-relay-1", relay_admin(1)?),
        ("hawser-agent", agent_admin),
    ];
    let prometheus = Prometheus::start(
        &targets
            .iter()
            .map(|&(job, port)| ScrapeTarget::http(job, &address(port)))
            .collect::<Vec<_>>(),
    )?;

    let direct = fleet.kubectl(1, SERVED)?;
    let answers = |what: &str| {
        wait_for(what, Duration::from_secs(30), || {
            Ok(direct.run(&["get", "--raw=/version"])?.status.success().then_some(()))
        })
    };
    answers("the cluster to answer through relay-1")?;
    // A tunnel that was up ends: the agent reconnects (cause `closed`) once relay-1 is back.
    fleet.kill_relay(1)?;
    fleet.start_relay(1)?;
    answers("the cluster to answer through relay-1 after its restart")?;

    let ns = tb.namespace("dashboard")?;
    let forwarded = fleet.kubectl(0, SERVED)?;
    forwarded.ok(&["create", "configmap", "panel", "-n", &ns, "--from-literal=v=1"])?;
    forwarded.ok(&["get", "configmaps", "-n", &ns])?;
    direct.ok(&["get", "configmap", "panel", "-n", &ns])?;
    let mut watch = forwarded.spawn(&["get", "configmaps", "-n", &ns, "--watch", "--request-timeout=0"])?;
    watch.wait_for_line("the watched config map", Duration::from_secs(30), |l| {
        l.starts_with("panel")
    })?;
    let streams = dashboard.query(STREAMS_PANEL, "A")?;
    let relay_0 = address(relay_admin(0)?);
    prometheus
        .wait_for(&streams.promql, SCRAPE_DEADLINE, |samples| {
            samples
                .iter()
                .any(|s| s.labels.get("instance") == Some(&relay_0) && s.value >= 1.0)
        })
        .with_context(|| {
            format!(
                "panel {:?} shows no stream open at relay-0 during a watch",
                streams.panel
            )
        })?;
    drop(watch);

    let url = |cluster: &str| format!("{}/clusters/{cluster}/api/v1/namespaces", fleet.url(0));
    let (status, _) = https::get(&url(SERVED), &fleet.ca_file(), &[])?;
    ensure!(status == 401, "a request without a token: {status}");
    let token = fs::read_to_string(fleet.token_file("hawser-admin")?)?;
    let bearer = format!("Bearer {}", token.trim());
    let (status, _) = https::get(&url(UNSERVED), &fleet.ca_file(), &[("Authorization", &bearer)])?;
    ensure!(status == 503, "a request for a cluster no agent serves: {status}");
    // The agent refuses a cluster token: it is in identity mode (reason wrong_mode).
    let (status, body) = https::get(
        &url(SERVED),
        &fleet.ca_file(),
        &[
            ("Authorization", &bearer),
            ("Hawser-Cluster-Authorization", "Bearer made-up"),
        ],
    )?;
    ensure!(
        status == 403,
        "a cluster token to an identity-mode agent: {status} {body}"
    );
    let (status, text) = http(agent_admin, "GET", "/metrics", "")?;
    ensure!(
        status == 200
            && text.lines().any(|l| {
                l.starts_with("hawser_refusals_total{")
                    && l.contains("hawser_reason=\"wrong_mode\"")
                    && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) == Some(1.0)
            }),
        "the agent counted its refusal (wrong_mode): {status}\n{text}"
    );

    every_query_returns_data(&prometheus, &queries)?;

    for variable in variables {
        let samples = prometheus
            .query(&variable.promql)
            .with_context(|| format!("variable ${}: {}", variable.name, variable.promql))?;
        let values: Vec<&str> = samples
            .iter()
            .filter_map(|s| s.labels.get(&variable.label).map(String::as_str))
            .collect();
        let expected: Vec<String> = match variable.label.as_str() {
            "job" => targets.iter().map(|&(job, _)| job.to_owned()).collect(),
            "instance" => targets.iter().map(|&(_, port)| address(port)).collect(),
            "hawser_cluster" => vec![SERVED.to_owned(), UNSERVED.to_owned()],
            _ => Vec::new(),
        };
        ensure!(
            !values.is_empty() && expected.iter().all(|e| values.contains(&e.as_str())),
            "variable ${} ({}) finds {values:?}, expected at least {expected:?}",
            variable.name,
            variable.promql
        );
    }
    Ok(())
}

/// Checks that Prometheus takes every query, then waits until each returns a sample and every
/// [`EXPECTED`] value shows; at the deadline, names every panel still without its data.
fn every_query_returns_data(prometheus: &Prometheus, queries: &[Query]) -> Result<()> {
    for query in queries {
        prometheus.query(&query.promql).with_context(|| query.to_string())?;
    }
    let mut missing = Vec::new();
    wait_for("every panel's queries to return data", SCRAPE_DEADLINE, || {
        missing.clear();
        for query in queries {
            let samples = prometheus.query(&query.promql)?;
            if let Some(why) = lacks(query, &samples) {
                missing.push(format!("{query}: {why}; its answer: {samples:?}"));
            }
        }
        Ok(missing.is_empty().then_some(()))
    })
    .with_context(|| format!("panels without their data:\n{}", missing.join("\n")))
}

/// Why `samples` are not what `query`'s panel must show, if they are not.
fn lacks(query: &Query, samples: &[Sample]) -> Option<String> {
    if samples.is_empty() {
        return Some("no data".into());
    }
    EXPECTED
        .iter()
        .filter(|&&(panel, target, ..)| panel == query.panel_id && target == query.ref_id)
        .find(|&&(_, _, label, value, positive)| {
            !samples
                .iter()
                .any(|s| s.labels.get(label).map(String::as_str) == Some(value) && (!positive || s.value > 0.0))
        })
        .map(|&(_, _, label, value, positive)| {
            format!(
                "no series with {label}={value:?}{}",
                if positive { " above 0" } else { "" }
            )
        })
}
