//! A relay's drain and an agent's stop as their operators read them: each logs the signal it got
//! and what it does, and every end of a tunnel session is in the relay's audit trail, once.

use std::time::Duration;

use anyhow::{Result, ensure};

use crate::support::Testbed;
use crate::support::fleet::Fleet;
use crate::support::process::wait_for;

/// A tunnel event of relay-i's audit trail: event, session, reason.
type Event = (String, u64, String);

/// `agent`'s tunnel events in relay `i`'s audit trail.
fn events(fleet: &Fleet, i: usize, agent: &str) -> Result<Vec<Event>> {
    Ok(fleet
        .audit(i)?
        .into_iter()
        .filter(|l| l["agent"] == agent && l.get("event").is_some())
        .map(|l| {
            let text = |key: &str| l[key].as_str().unwrap_or_default().to_owned();
            (text("event"), l["session"].as_u64().unwrap_or_default(), text("reason"))
        })
        .collect())
}

/// The sessions `events` registered, each with the reasons of its `agent_gone` events.
fn ends(events: &[Event]) -> Vec<(u64, Vec<&str>)> {
    events
        .iter()
        .filter(|(event, ..)| event == "agent_registered")
        .map(|(_, session, _)| {
            let gone = events
                .iter()
                .filter(|(event, s, _)| event == "agent_gone" && s == session)
                .map(|(.., reason)| reason.as_str())
                .collect();
            (*session, gone)
        })
        .collect()
}

/// Two relays behind nginx, one agent with one tunnel (QUIC). SIGTERM to the relay holding it:
/// the relay logs that it drains, naming the signal, `grace_secs` and `timeout_secs`; the agent
/// moves to the other relay and retires its tunnel, whose end is on record once (`agent_gone`,
/// reason `retired`); the other relay, which had forwarded a request over the peer link, logs
/// once that the connection was lost. SIGTERM to the agent: it logs it, and the relay it had
/// moved to records that session's end.
pub fn a_drained_relay_and_a_stopped_agent_say_so_and_their_sessions_end_on_record(tb: &Testbed) -> Result<()> {
    let fleet = Fleet::start(tb, 2, &["d1"])?;
    let balancer = fleet.balancer()?;
    let address = balancer.tcp_addr().to_string();
    fleet.start_agent_at("d1", "agent-d1", &address, "connections = 1")?;
    let registered = |i: usize| -> Result<bool> {
        Ok(events(&fleet, i, "agent-d1")?
            .iter()
            .any(|(event, ..)| event == "agent_registered"))
    };
    let held = wait_for("agent-d1 to register", Duration::from_secs(30), || {
        Ok((0..2).find(|&i| registered(i).unwrap_or(false)))
    })?;
    let other = 1 - held;
    let kubectl = fleet.kubectl(other, "d1")?;
    wait_for(
        &format!("d1 to answer through relay-{other} (a hop)"),
        Duration::from_secs(30),
        || Ok(kubectl.run(&["get", "--raw=/version"])?.status.success().then_some(())),
    )?;

    fleet.terminate_relay(held)?;
    let log = fleet.log(&format!("relay-{held}"))?;
    ensure!(
        log.lines().any(|l| l.contains("draining")
            && l.contains("signal=SIGTERM")
            && l.contains("grace_secs=")
            && l.contains("timeout_secs=")),
        "relay-{held} logs its drain and why:\n{log}"
    );
    let drained = events(&fleet, held, "agent-d1")?;
    let drained_ends = ends(&drained);
    ensure!(
        !drained_ends.is_empty() && drained_ends.iter().all(|(_, gone)| gone.len() == 1),
        "each session on relay-{held} ended once on record: {drained:?}"
    );
    ensure!(
        drained_ends.iter().any(|(_, gone)| gone[0].starts_with("retired")),
        "the tunnel the agent moved away from is recorded as retired: {drained:?}"
    );
    ensure!(registered(other)?, "agent-d1 moved to relay-{other}");
    let lost = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("the connection to a peer relay was lost") && l.contains(&format!("peer=relay-{held}"))
            })
            .count()
    };
    let other_log = format!("relay-{other}");
    wait_for(
        &format!("relay-{other} to log the lost peer connection"),
        Duration::from_secs(10),
        || Ok((lost(&fleet.log(&other_log)?) > 0).then_some(())),
    )?;
    let log = fleet.log(&other_log)?;
    ensure!(lost(&log) == 1, "logged once:\n{log}");

    fleet.terminate_agent("agent-d1")?;
    let log = fleet.log("agent-d1")?;
    ensure!(
        log.lines()
            .any(|l| l.contains("agent shutting down") && l.contains("signal=SIGTERM")),
        "the agent logs its stop and why:\n{log}"
    );
    let moved_to = wait_for(
        &format!("relay-{other} to record the agent's session gone"),
        Duration::from_secs(10),
        || {
            let events = events(&fleet, other, "agent-d1")?;
            let done = ends(&events).iter().all(|(_, gone)| !gone.is_empty());
            Ok(done.then_some(events))
        },
    )?;
    ensure!(
        ends(&moved_to)
            .iter()
            .all(|(_, gone)| gone.len() == 1 && gone[0].starts_with("closed by peer")),
        "the agent's close is on record, once: {moved_to:?}"
    );
    Ok(())
}
