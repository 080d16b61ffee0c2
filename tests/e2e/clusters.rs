//! `hawser clusters` against a fleet: any relay answers an admin with every cluster, the agents
//! connected to it and the relays holding them; a caller no admin rule names gets a 403.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hawser::overview::Overview;

use crate::support::Testbed;
use crate::support::fleet::Fleet;
use crate::support::process::wait_for;

/// A `hawser clusters` test.
pub type Test = fn(&Testbed) -> Result<()>;

/// Every `hawser clusters` test, by name.
pub const TESTS: &[(&str, Test)] = &[(
    "every_relay_lists_each_clusters_agents_and_their_relays_to_admins_only",
    every_relay_lists_each_clusters_agents_and_their_relays_to_admins_only,
)];

/// Two relays, alpha's agent on relay-0 and beta's on relay-1: asked at either relay, the
/// admin sees both clusters with their agent, relay and transport (QUIC), both relays with
/// their peer addresses, in JSON and as a table; a caller without an admin rule gets a
/// one-line 403 and a non-zero exit.
fn every_relay_lists_each_clusters_agents_and_their_relays_to_admins_only(tb: &Testbed) -> Result<()> {
    let fleet = Fleet::start(tb, 2, &["alpha", "beta"])?;
    fleet.start_agent("alpha", "agent-alpha", 0)?;
    fleet.start_agent("beta", "agent-beta", 1)?;
    let admin = fleet.token_file("hawser-admin")?;
    let protocol = hawser::proto::VERSION;
    let expected_agents = |overview: &Overview| -> Vec<String> {
        overview
            .clusters
            .iter()
            .map(|c| {
                let agents: Vec<String> = c
                    .agents
                    .iter()
                    .map(|a| format!("{} {} {} {} {}", c.name, a.agent, a.relay, a.transport, a.protocol))
                    .collect();
                agents.join(", ")
            })
            .collect()
    };
    let want = [
        format!("alpha agent-alpha relay-0 quic {protocol}"),
        format!("beta agent-beta relay-1 quic {protocol}"),
    ];
    for i in 0..2 {
        // Each relay learns of the other's agent through the registry's watch.
        let overview = wait_for(
            &format!("relay-{i} to list alpha's agent on relay-0 and beta's on relay-1"),
            Duration::from_secs(30),
            || {
                let out = clusters(&fleet, i, &admin, &["--output", "json"])?;
                ensure!(out.status.success(), "hawser clusters: {}", stderr(&out));
                let overview: Overview = serde_json::from_slice(&out.stdout).context("the JSON output")?;
                Ok((expected_agents(&overview) == want).then_some(overview))
            },
        )?;
        ensure!(overview.relay == format!("relay-{i}"), "answered by {}", overview.relay);
        let relays: Vec<String> = overview
            .relays
            .iter()
            .map(|r| format!("{} {:?} {} {}", r.name, r.peer, r.draining, r.protocol))
            .collect();
        let want_relays: Vec<String> = (0..2)
            .map(|j| {
                let peer = Some(format!("127.0.0.1:{}", fleet.ports[j].peer));
                format!("relay-{j} {peer:?} false {protocol}")
            })
            .collect();
        ensure!(relays == want_relays, "relays through relay-{i}: {relays:?}");
        for agent in overview.clusters.iter().flat_map(|c| &c.agents) {
            ensure!(
                agent.since.len() >= 20 && agent.since.ends_with('Z'),
                "since is an RFC 3339 time: {agent:?}"
            );
        }

        let out = clusters(&fleet, i, &admin, &[])?;
        ensure!(out.status.success(), "hawser clusters: {}", stderr(&out));
        let table = String::from_utf8(out.stdout)?;
        let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
        let header = ["CLUSTER", "AGENT", "RELAY", "TRANSPORT", "PROTOCOL", "SINCE"];
        ensure!(
            rows.first().is_some_and(|r| r == &header),
            "the table's header:\n{table}"
        );
        let protocol = protocol.to_string();
        for (cluster, agent, relay) in [("alpha", "agent-alpha", "relay-0"), ("beta", "agent-beta", "relay-1")] {
            ensure!(
                rows.iter()
                    .any(|r| r.len() == 6 && r[..5] == [cluster, agent, relay, "quic", protocol.as_str()]),
                "a row for {cluster}'s agent on {relay}:\n{table}"
            );
        }
    }

    let viewer = fleet.token_file("hawser-viewer")?;
    for i in 0..2 {
        let out = clusters(&fleet, i, &viewer, &[])?;
        let err = stderr(&out);
        ensure!(!out.status.success(), "a caller without an admin rule got: {err}");
        ensure!(out.stdout.is_empty(), "and printed nothing on stdout");
        ensure!(
            err.trim().lines().count() == 1
                && err.contains("403 Forbidden")
                && err.contains("\"hawser-viewer\"")
                && err.contains("admin = true"),
            "a one-line 403 naming the caller and the admin rule: {err}"
        );
    }
    // Audit lines are written just after the answer.
    wait_for(
        "relay-1's audit line of the refused report",
        Duration::from_secs(10),
        || {
            let refused: Vec<_> = fleet
                .audit(1)?
                .into_iter()
                .filter(|line| line["path"] == hawser::overview::PATH && line["status"] == 403)
                .collect();
            ensure!(refused.len() <= 1, "one refused report, audited once: {refused:?}");
            Ok(refused
                .first()
                .is_some_and(|line| line["caller"] == "hawser-viewer")
                .then_some(()))
        },
    )?;
    Ok(())
}

/// `hawser clusters` against relay `i` with the token in `token` and `extra` arguments.
fn clusters(fleet: &Fleet, i: usize, token: &Path, extra: &[&str]) -> Result<Output> {
    fleet.clusters_at(&fleet.url(i), token, extra)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
