//! Races a rolling restart showed in CI: a relay answering callers before it read the registry,
//! and an agent's tunnel welcomed by a relay another of its tunnels holds.

use std::time::Duration;

use anyhow::{Result, ensure};

use super::version;
use crate::support::Testbed;
use crate::support::fleet::Fleet;
use crate::support::process::wait_for;

/// A relay that starts while etcd is away (as one a balancer sends callers before its `/readyz`
/// passes, seen in the rolling restart) has not read the registry: a request for a cluster whose
/// agent another relay holds gets a 503 saying so, not "offline" (the relay no longer answers
/// from an empty view); once etcd is back the request is forwarded.
pub fn a_relay_that_has_not_read_the_registry_says_so_rather_than_offline(tb: &Testbed) -> Result<()> {
    let fleet = Fleet::start(tb, 2, &["u1"])?;
    let one = format!("127.0.0.1:{}", fleet.ports[1].front);
    fleet.start_agent_at("u1", "agent-u1", &one, "connections = 1")?;
    let token = fleet.token_file("hawser-admin")?;
    let bearer = format!("Bearer {}", std::fs::read_to_string(&token)?.trim());
    let url = fleet.url(0);
    wait_for("u1 through relay-0", Duration::from_secs(30), || {
        Ok((version(&fleet, &url, &bearer, "u1")?.0 == 200).then_some(()))
    })?;
    fleet.kill_relay(0)?;
    fleet.etcd.stop();
    fleet.start_relay_unready(0)?;
    ensure!(fleet.readyz(0)? == Some(503), "relay-0 without etcd is not ready");
    let (status, body) = version(&fleet, &url, &bearer, "u1")?;
    ensure!(
        status == 503 && body.contains("not read the fleet's registry") && !body.contains("offline"),
        "before relay-0 read the registry: {status} {body}"
    );
    fleet.etcd.restart()?;
    wait_for(
        "u1 through relay-0 once it read the registry",
        Duration::from_secs(30),
        || Ok((version(&fleet, &url, &bearer, "u1")?.0 == 200).then_some(())),
    )?;
    Ok(())
}

/// An agent with `connections = 2` and one relay: both tunnels dial at once, before either knows
/// where the other is, so the relay welcomes (and registers, for its peers to route to) both.
/// The agent keeps one and retires the other as a moved tunnel (the relay routes nothing new to
/// it, and what it carries is served), rather than closing it under requests that may already be
/// on it: its session ends on record as retired. Requests go on through the tunnel kept.
pub fn two_tunnels_welcomed_by_one_relay_at_once_retire_the_duplicate_not_cut_it(tb: &Testbed) -> Result<()> {
    let fleet = Fleet::start(tb, 1, &["d1"])?;
    let zero = format!("127.0.0.1:{}", fleet.ports[0].front);
    fleet.start_agent_at("d1", "agent-d1", &zero, "connections = 2")?;
    let ends = wait_for(
        "the duplicate tunnel's session to end at relay-0",
        Duration::from_secs(30),
        || {
            let ends: Vec<String> = fleet
                .audit(0)?
                .into_iter()
                .filter(|l| l["agent"] == "agent-d1" && l["event"] == "agent_gone")
                .map(|l| l["reason"].as_str().unwrap_or_default().to_owned())
                .collect();
            Ok((!ends.is_empty()).then_some(ends))
        },
    )?;
    ensure!(
        ends.len() == 1 && ends[0].starts_with("retired"),
        "the duplicate was retired, not closed: {ends:?}"
    );
    let kubectl = fleet.kubectl(0, "d1")?;
    for _ in 0..3 {
        kubectl.ok(&["get", "--raw=/version"])?;
    }
    Ok(())
}
