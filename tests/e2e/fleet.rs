//! Relays as a fleet (issue #12): a shared registry in a real etcd, requests forwarded one hop
//! to the relay that holds the cluster's agent, and what happens when a relay dies.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use crate::support::Testbed;
use crate::support::fleet::{Fleet, LEASE_TTL_SECS};
use crate::support::process::wait_for;

/// A fleet test.
pub type Test = fn(&Testbed) -> Result<()>;

/// Every fleet test, by name.
pub const TESTS: &[(&str, Test)] = &[
    ("any_relay_reaches_any_cluster", any_relay_reaches_any_cluster),
    (
        "a_killed_relays_clusters_fail_fast_then_its_entries_vanish",
        a_killed_relays_clusters_fail_fast_then_its_entries_vanish,
    ),
];

/// Three relays, two clusters whose agents hold one relay each: every relay reaches both, as
/// the caller (the agent checked the forwarding relay's assertion), and says which relay it
/// forwarded through; the registry holds exactly each relay and each session.
fn any_relay_reaches_any_cluster(tb: &Testbed) -> Result<()> {
    let fleet = Fleet::start(tb, 3, &["alpha", "beta"])?;
    fleet.start_agent("alpha", "agent-alpha", 0)?;
    fleet.start_agent("beta", "agent-beta", 1)?;
    for i in 0..3 {
        for cluster in ["alpha", "beta"] {
            let kubectl = fleet.kubectl(i, cluster)?;
            wait_for(
                &format!("cluster {cluster} to answer through relay-{i}"),
                Duration::from_secs(30),
                || Ok(kubectl.run(&["get", "--raw=/version"])?.status.success().then_some(())),
            )?;
            let user = kubectl.ok(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"])?;
            ensure!(
                user == "hawser-admin",
                "through relay-{i} to {cluster}: whoami says {user:?}"
            );
        }
    }
    let forwarded = fleet
        .audit(2)?
        .into_iter()
        .filter(|line| line["cluster"] == "beta" && line["status"] == 200)
        .collect::<Vec<_>>();
    ensure!(!forwarded.is_empty(), "relay-2 audited no request to beta");
    ensure!(
        forwarded.iter().all(|line| line["via"] == "relay-1"),
        "relay-2's audit of beta names relay-1 as the hop: {forwarded:?}"
    );
    let own = fleet.audit(1)?;
    ensure!(
        own.iter()
            .filter(|line| line["cluster"] == "beta")
            .all(|line| line.get("via").is_none()),
        "relay-1 holds beta's tunnel and forwards nothing"
    );
    let keys = fleet.registry_keys()?;
    let expected = [
        "/hawser-e2e/relays/relay-0",
        "/hawser-e2e/relays/relay-1",
        "/hawser-e2e/relays/relay-2",
        "/hawser-e2e/sessions/alpha/relay-0/agent-alpha",
        "/hawser-e2e/sessions/beta/relay-1/agent-beta",
    ];
    ensure!(keys == expected, "registry keys: {keys:?}");
    Ok(())
}

/// SIGKILL the relay that holds a cluster's agent: a request for that cluster through another
/// relay gets a 503 naming the cluster within the open-stream timeout (never a hang), and once
/// the dead relay's lease expires its entries are gone and the cluster is reported offline.
fn a_killed_relays_clusters_fail_fast_then_its_entries_vanish(tb: &Testbed) -> Result<()> {
    let fleet = Fleet::start(tb, 2, &["gamma"])?;
    fleet.start_agent("gamma", "agent-gamma", 1)?;
    let kubectl = fleet.kubectl(0, "gamma")?;
    wait_for("gamma to answer through relay-0", Duration::from_secs(30), || {
        Ok(kubectl.run(&["get", "--raw=/version"])?.status.success().then_some(()))
    })?;
    fleet.kill_relay(1)?;
    let killed = Instant::now();
    let out = kubectl.run(&["get", "--raw=/version", "--request-timeout=30s"])?;
    let took = killed.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "gamma answered with its relay dead");
    ensure!(
        stderr.contains("gamma")
            && (stderr.contains("unavailable") || stderr.contains("ServiceUnavailable") || stderr.contains("503")),
        "a 503 naming the cluster: {stderr}"
    );
    // open_stream_timeout_secs = 3 in the fleet's config, plus kubectl's own start.
    ensure!(took < Duration::from_secs(12), "the failure took {took:?}");
    wait_for(
        "relay-1's registry entries to expire",
        Duration::from_secs(LEASE_TTL_SECS * 3),
        || {
            let keys = fleet.registry_keys()?;
            Ok((!keys.iter().any(|k| k.contains("relay-1"))).then_some(keys))
        },
    )?;
    let out = kubectl.run(&["get", "--raw=/version"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("offline"),
        "with no relay holding it, gamma is offline: {stderr}"
    );
    Ok(())
}
