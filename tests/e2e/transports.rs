//! The agent's transports beyond the baseline routes: `auto` falling back to TCP and coming back
//! to QUIC without cutting what is in flight, a hung agent noticed over TCP, a relay restart
//! on TCP, and a killed relay's QUIC tunnels reset by the relay restarted in its place.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::routes::Deployment;
use crate::support::Testbed;
use crate::support::hawser::{Extra, Hawser};
use crate::support::net::UdpGate;
use crate::support::process::wait_for;

/// A transport test.
pub type Test = fn(&Testbed, &Deployment) -> Result<()>;

/// Every transport test, by name.
pub const TESTS: &[(&str, Test)] = &[
    (
        "auto_falls_back_to_tcp_and_returns_to_quic_without_cutting_a_watch",
        auto_falls_back_to_tcp_and_returns_to_quic_without_cutting_a_watch,
    ),
    (
        "a_hung_tcp_agent_is_noticed_within_the_idle_timeout",
        a_hung_tcp_agent_is_noticed_within_the_idle_timeout,
    ),
    (
        "relay_restart_a_tcp_agent_reconnects",
        relay_restart_a_tcp_agent_reconnects,
    ),
    (
        "a_killed_relay_restarted_resets_its_quic_tunnels_at_once",
        a_killed_relay_restarted_resets_its_quic_tunnels_at_once,
    ),
    (
        "stalled_readers_on_tcp_slow_only_their_own_streams",
        stalled_readers_on_tcp_slow_only_their_own_streams,
    ),
];

/// A deployment whose agent uses the TCP transport only, with `tunnel` (TOML tables) in both configs.
fn tcp_only(tb: &Testbed, tunnel: &str) -> Result<Hawser> {
    Hawser::start_with(
        tb,
        &Extra {
            tunnel,
            agent_relay: "address = \"127.0.0.1:{port}\"\ntransport = \"tcp\"",
            ..Extra::default()
        },
    )
}

fn version_ok(hawser: &Hawser) -> Result<bool> {
    let kubectl = hawser.kubeconfig_route("hawser-admin", &[])?;
    Ok(kubectl.run(&["get", "--raw=/version"])?.status.success())
}

fn auto_falls_back_to_tcp_and_returns_to_quic_without_cutting_a_watch(tb: &Testbed, _: &Deployment) -> Result<()> {
    // UDP to the relay is blocked until the gate opens.
    let gate = UdpGate::new()?;
    let agent_relay = format!(
        "address = \"{quic}\"\ntcp_address = \"127.0.0.1:{{port}}\"\ntransport = \"auto\"\n\
         quic_fallback_secs = 1\nquic_probe_secs = 10",
        quic = gate.addr
    );
    let hawser = Hawser::start_with(
        tb,
        &Extra {
            agent_relay: &agent_relay,
            ..Extra::default()
        },
    )?;
    hawser.expect_agent_log("no QUIC handshake with the relay; using TCP")?;
    let kubectl = hawser.kubeconfig_route("hawser-admin", &[])?;
    let ns = tb.namespace("auto-transport")?;
    tb.set_value(&ns, "watched", "one")?;
    let mut watch = kubectl.watch_values(&ns, "watched")?;
    watch.wait_for_line("the initial value, over TCP", Duration::from_secs(30), |l| l == "one")?;

    gate.open_to(([127, 0, 0, 1], hawser.relay_port()).into());
    wait_for(
        "the agent's QUIC probe (every 10 s) to move the tunnel to QUIC",
        Duration::from_secs(40),
        || {
            Ok(hawser
                .agent_logged("QUIC reachable again: tunnel moved to QUIC")?
                .then_some(()))
        },
    )?;
    // Over a window of some seconds (a relay that closed the replaced tunnel did so within one):
    // the watch begun over TCP must still be running.
    ensure!(
        watch.wait_exit(Duration::from_secs(3)).is_err(),
        "the watch begun over TCP ended when the tunnel moved to QUIC"
    );
    ensure!(
        !hawser.agent_logged("tcp tunnel ended")?,
        "the TCP tunnel ended while a watch was still on it"
    );
    tb.set_value(&ns, "watched", "two")?;
    watch.wait_for_line(
        "the change, on the watch begun over TCP",
        Duration::from_secs(30),
        |l| l == "two",
    )?;
    ensure!(version_ok(&hawser)?, "a new request failed after the move to QUIC");
    // The retired TCP tunnel ends with the last stream it carries.
    watch.interrupt()?;
    wait_for(
        "the retired TCP tunnel to end once its watch ended",
        Duration::from_secs(30),
        || Ok(hawser.agent_logged("retired: its streams are done")?.then_some(())),
    )?;
    ensure!(version_ok(&hawser)?, "requests failed after the TCP tunnel ended");
    Ok(())
}

fn a_hung_tcp_agent_is_noticed_within_the_idle_timeout(tb: &Testbed, _: &Deployment) -> Result<()> {
    // A stopped process's kernel still acknowledges TCP, so only the pings (every 3 s, 4 s to
    // answer) can tell: within 7 s of the last answer.
    let hawser = tcp_only(tb, "[tunnel]\nkeep_alive_secs = 3\nidle_timeout_secs = 7\n")?;
    let kubectl = hawser.kubeconfig_route("hawser-admin", &[])?;
    let ns = tb.namespace("tcp-hung")?;
    tb.set_value(&ns, "watched", "one")?;
    let mut watch = kubectl.watch_values(&ns, "watched")?;
    watch.wait_for_line("the initial value", Duration::from_secs(30), |l| l == "one")?;
    hawser.freeze_agent(true)?;
    let started = Instant::now();
    let ended = watch.wait_exit(Duration::from_secs(15));
    let noticed = started.elapsed();
    hawser.freeze_agent(false)?;
    ended.context("kubectl kept watching a cluster whose agent hung")?;
    ensure!(
        noticed < Duration::from_millis(7600),
        "noticed only after {noticed:?}: the documented bound is idle_timeout_secs (7 s)"
    );
    eprintln!("hung TCP agent noticed after {noticed:?} (bound 7 s)");
    wait_for("the thawed agent to be back", Duration::from_secs(30), || {
        Ok(version_ok(&hawser)?.then_some(()))
    })
}

fn relay_restart_a_tcp_agent_reconnects(tb: &Testbed, _: &Deployment) -> Result<()> {
    let hawser = tcp_only(tb, "")?;
    hawser.stop_relay();
    wait_for(
        "the agent to hear why its tunnel closed",
        Duration::from_secs(15),
        || {
            Ok(hawser
                .agent_logged("the relay closed the tunnel (3): relay shutting down")?
                .then_some(()))
        },
    )?;
    hawser.start_relay()?;
    wait_for(
        "the agent to reconnect over TCP to the restarted relay",
        Duration::from_secs(30),
        || Ok(version_ok(&hawser)?.then_some(())),
    )
}

/// The stalled-reader tests of the QUIC tunnel, on a TCP tunnel: a port-forward nobody reads, then
/// forty log followers nobody reads, and the same tunnel still serves a watch and plain requests.
fn stalled_readers_on_tcp_slow_only_their_own_streams(tb: &Testbed, _: &Deployment) -> Result<()> {
    let hawser = tcp_only(tb, "")?;
    hawser.expect_agent_log("transport=\"tcp\"")?;
    crate::tunnel::stalled_port_forward_beside_others(tb, &hawser)?;
    crate::tunnel::many_stalled_streams_on(tb, &hawser)
}

/// A relay killed (SIGKILL: it closes nothing) and started again on the same ports: the agent's
/// next packet on its old QUIC tunnel (a keep-alive, every 2 s) reaches a process that does not
/// know the connection and answers with a stateless reset, which the agent takes because the key
/// is derived from the relay's serving key and identity, not drawn per process
/// (`tunnel::reset`). The idle timeout is 60 s, so only the reset can bring the agent back
/// within the deadline.
fn a_killed_relay_restarted_resets_its_quic_tunnels_at_once(tb: &Testbed, _: &Deployment) -> Result<()> {
    let hawser = Hawser::start_with(
        tb,
        &Extra {
            tunnel: "[tunnel]\nkeep_alive_secs = 2\nidle_timeout_secs = 60\n",
            ..Extra::default()
        },
    )?;
    hawser.expect_agent_log("transport=\"quic\"")?;
    ensure!(version_ok(&hawser)?, "not working before the kill");
    hawser.kill_relay()?;
    hawser.start_relay()?;
    let port = hawser.relay_port();
    wait_for("the restarted relay to listen", Duration::from_secs(30), || {
        Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok().then_some(()))
    })?;
    let restarted = Instant::now();
    // A keep-alive interval (2 s), the reset, the agent's first backoff and a new handshake.
    wait_for(
        "the agent to be back on the restarted relay well before its idle timeout (60 s)",
        Duration::from_secs(10),
        || Ok(version_ok(&hawser)?.then_some(())),
    )?;
    let back = restarted.elapsed();
    ensure!(
        hawser.agent_logged("reset by peer")?,
        "the agent came back, but its log names no stateless reset (\"reset by peer\") as why its \
         tunnel closed"
    );
    eprintln!("agent back {back:?} after the killed relay was restarted (idle timeout 60 s)");
    Ok(())
}
