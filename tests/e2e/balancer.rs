//! A relay behind a real load balancer (nginx's stream module): agents reach it through the
//! balancer's UDP port (QUIC) or TCP port, callers through its TCP port. And the standalone etcd
//! that relays will share as their registry.

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::support::Testbed;
use crate::support::binaries::pinned_kubernetes_version;
use crate::support::etcd::Etcd;
use crate::support::hawser::{Extra, Hawser};
use crate::support::net::{free_tcp_and_udp_port, http};
use crate::support::nginx::{Balancer, Protocol};

/// A balancer test.
pub type Test = fn(&Testbed) -> Result<()>;

/// Every balancer test that needs the test bed, by name.
pub const TESTS: &[(&str, Test)] = &[
    (
        "quic_agent_and_kubectl_through_nginx",
        quic_agent_and_kubectl_through_nginx,
    ),
    (
        "tcp_agent_and_kubectl_through_nginx",
        tcp_agent_and_kubectl_through_nginx,
    ),
];

/// A test of the support alone, without the test bed.
pub type Standalone = fn() -> Result<()>;

/// Every test of the support alone, by name.
pub const STANDALONE: &[(&str, Standalone)] = &[(
    "etcd_stops_and_restarts_keeping_its_data",
    etcd_stops_and_restarts_keeping_its_data,
)];

fn quic_agent_and_kubectl_through_nginx(tb: &Testbed) -> Result<()> {
    through_nginx(tb, Protocol::Udp)
}

fn tcp_agent_and_kubectl_through_nginx(tb: &Testbed) -> Result<()> {
    through_nginx(tb, Protocol::Tcp)
}

/// One relay behind nginx; the agent knows only the balancer's address, over `agent` (UDP: the
/// QUIC transport, TCP: the TCP one), and kubectl reaches the relay through the balancer's TCP port.
fn through_nginx(tb: &Testbed, agent: Protocol) -> Result<()> {
    let relay_port = free_tcp_and_udp_port()?;
    let relay: SocketAddr = ([127, 0, 0, 1], relay_port).into();
    let mut lb = Balancer::start(&[relay], &[relay])?;
    let (address, transport) = match agent {
        Protocol::Udp => (lb.udp_addr(), "quic"),
        Protocol::Tcp => (lb.tcp_addr(), "tcp"),
    };
    // One transport only: `auto` could fall back to TCP and hide a broken UDP path. The agent
    // checks the relay's certificate for `localhost`, whatever address it dials.
    let agent_relay = format!("address = \"{address}\"\ntransport = \"{transport}\"");
    let hawser = Hawser::start_with(
        tb,
        &Extra {
            agent_relay: &agent_relay,
            relay_port: Some(relay_port),
            ..Extra::default()
        },
    )?;
    hawser.expect_agent_log(&format!("transport=\"{transport}\""))?;
    ensure!(
        lb.flows_to(relay, agent)? == 1,
        "nginx should have opened one {agent:?} flow to the relay, the agent's tunnel (log in {})",
        lb.dir().display()
    );
    let tcp_before = lb.flows_to(relay, Protocol::Tcp)?;
    if agent == Protocol::Udp {
        ensure!(
            tcp_before == 0,
            "a QUIC agent opened {tcp_before} TCP flows through nginx"
        );
    }

    let kubectl = hawser.kubeconfig_route_at(&format!("https://{}", lb.tcp_addr()), "hawser-admin", &[])?;
    let version: Value = serde_json::from_str(&kubectl.ok(&["get", "--raw=/version"])?)?;
    let pinned = pinned_kubernetes_version()?;
    ensure!(
        version["gitVersion"] == pinned.as_str(),
        "/version through nginx: {version}, expected gitVersion {pinned}"
    );
    let ns = tb.namespace("balancer")?;
    let listed = kubectl.ok(&["get", "namespace", &ns, "-o", "name"])?;
    ensure!(
        listed.trim() == format!("namespace/{ns}"),
        "kubectl get namespace printed {listed:?}"
    );

    // Each kubectl run is a connection of its own, and nginx logs each when it opens it upstream.
    let tcp_after = lb.flows_to(relay, Protocol::Tcp)?;
    ensure!(
        tcp_after >= tcp_before + 2,
        "two kubectl runs should have crossed nginx's TCP port; it opened {} flows to the relay",
        tcp_after - tcp_before
    );
    if agent == Protocol::Udp {
        let udp = lb.flows_to(relay, Protocol::Udp)?;
        ensure!(
            udp == 1,
            "the agent's tunnel should have stayed one UDP flow; nginx opened {udp}"
        );
    }

    // With the balancer gone, so is the route: nothing reached the relay another way.
    lb.stop();
    let out = kubectl.run(&["get", "--raw=/version", "--request-timeout=10s"])?;
    ensure!(
        !out.status.success(),
        "kubectl still reached the relay with nginx stopped"
    );
    Ok(())
}

fn etcd_stops_and_restarts_keeping_its_data() -> Result<()> {
    let etcd = Etcd::start()?;
    let port = etcd.client_port();
    ensure!(
        etcd.endpoint() == format!("http://127.0.0.1:{port}"),
        "endpoint {}",
        etcd.endpoint()
    );
    ensure!(etcd.healthy(), "etcd started but does not report itself healthy");
    // etcd's JSON gateway takes keys and values in base64.
    let (key, value) = (BASE64.encode("hawser/e2e"), BASE64.encode("kept across a restart"));
    let (status, body) = http(
        port,
        "POST",
        "/v3/kv/put",
        &json!({"key": key, "value": value}).to_string(),
    )?;
    ensure!(status == 200, "put: {status} {body}");

    etcd.stop();
    ensure!(!etcd.healthy(), "etcd still answers after stop");
    ensure!(
        http(port, "GET", "/health", "").is_err(),
        "something still listens on etcd's port after stop"
    );

    etcd.restart()?;
    ensure!(etcd.healthy(), "etcd restarted but does not report itself healthy");
    let (status, body) = http(port, "POST", "/v3/kv/range", &json!({"key": key}).to_string())?;
    ensure!(status == 200, "range: {status} {body}");
    let found: Value = serde_json::from_str(&body).with_context(|| format!("range answered {body}"))?;
    ensure!(
        found["kvs"][0]["value"] == value.as_str(),
        "the key written before the restart is gone or changed: {found}"
    );
    Ok(())
}
