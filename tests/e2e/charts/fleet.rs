//! The relay chart's fleet: two relays from the StatefulSet's per-relay configs, sharing a real
//! etcd and peered with the certificates the chart names, route a cluster whose agent holds a
//! tunnel to one of them through either.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;

use super::helm::{AGENT, Helm, RELAY, Release};
use super::install::caller;
use super::pod::{Agent, Ports, Relay};
use super::{Setup, install, work_dir};
use crate::support::etcd::Etcd;
use crate::support::fleet::{ca, peer_cert};
use crate::support::net::{free_port, http};
use crate::support::process::wait_for;
use crate::support::{PodSpec, Testbed};

/// The chart rendered with `replicaCount: 2` and `fleet.enabled` (etcd the test's, the fleet
/// Secret's files made as deploy.md says: the fleet CA and a peer certificate per relay named
/// after its pod); each relay run from its own `hawser-relay-N.toml`, rewritten only where a pod
/// differs (listeners on loopback ports, its advertised peer name resolved to its loopback peer
/// port, the mounts); both ready. An agent from the agent chart holds one tunnel, to relay 0;
/// a caller through relay 1 lists the namespace's pod, and relay 1's audit line says it went
/// via relay 0.
pub fn the_relay_charts_fleet_routes_through_either_relay(tb: &Testbed) -> Result<()> {
    let (helm, namespace, dir) = (Helm::new()?, tb.namespace("charts-fleet")?, work_dir("charts-fleet")?);
    let etcd = Etcd::start()?;
    // Each relay's callers' port, admin port and peer port.
    let mut relays = Vec::new();
    for _ in 0..2 {
        let ports = Ports {
            port: free_port()?,
            admin: free_port()?,
        };
        relays.push((ports, free_port()?));
    }
    let (ports0, ports1) = (relays[0].0, relays[1].0);
    let setup = Setup::new(dir.path(), ports0.port)?;
    let mut values = setup.relay_values()?;
    values["replicaCount"] = json!(2);
    values["fleet"] = json!({
        "enabled": true,
        "existingSecret": "hawser-relay-fleet",
        "registry": {"endpoints": [etcd.endpoint()], "prefix": format!("/hawser-{namespace}")},
    });
    let release = Release {
        chart: RELAY,
        name: "hawser-relay",
        namespace: &namespace,
    };
    let rendered = install(&helm, tb, &release, "relay-fleet", &values)?;

    // The fleet Secret's files, as the pods would mount them.
    let fleet = dir.path().join("relay-mounts").join("hawser-relay-fleet");
    std::fs::create_dir_all(&fleet)?;
    let fleet_ca = ca("hawser-charts-fleet-ca")?;
    std::fs::write(fleet.join("ca.crt"), fleet_ca.pem())?;
    let mut running = Vec::new();
    for (i, (ports, peer)) in relays.into_iter().enumerate() {
        let instance = format!("hawser-relay-{i}");
        let (cert, key) = peer_cert(&fleet_ca, &instance)?;
        std::fs::write(fleet.join(format!("{instance}.crt")), cert)?;
        std::fs::write(fleet.join(format!("{instance}.key")), key)?;
        let more = [
            (
                "listen = \"0.0.0.0:9444\"".to_owned(),
                format!("listen = \"127.0.0.1:{peer}\""),
            ),
            (
                format!("advertise = \"{instance}.hawser-relay-peers.{namespace}.svc:9444\""),
                format!("advertise = \"127.0.0.1:{peer}\""),
            ),
            ("/etc/hawser/fleet/".to_owned(), format!("{}/", fleet.display())),
        ];
        running.push(Relay::start(
            dir.path(),
            &rendered,
            &format!("{instance}.toml"),
            ports,
            &more,
        )?);
    }

    let agent_release = format!("hawser-agent-{namespace}");
    let agent = install(
        &helm,
        tb,
        &Release {
            chart: AGENT,
            name: &agent_release,
            namespace: &namespace,
        },
        "agent",
        &setup.agent_values(json!({"connections": 1})),
    )?;
    let agent_admin = free_port()?;
    let agent_process = Agent::start(
        tb,
        dir.path(),
        "agent",
        &agent,
        (&namespace, &agent_release, "hawser-agent-0"),
        agent_admin,
    )?;
    wait_for("the agent's tunnel to relay 0", Duration::from_secs(60), || {
        Ok(matches!(http(agent_admin, "GET", "/readyz", ""), Ok((200, _))).then_some(()))
    })
    .with_context(|| format!("the agent's log: {}", agent_process.log.display()))?;

    tb.bind_role(&namespace, "cluster-admin", "alice")?;
    tb.running_pod(&namespace, "web", &PodSpec::default())?;
    let relay1_url = format!("https://127.0.0.1:{}", ports1.port);
    let alice = caller(dir.path(), &running[1].config, &relay1_url, &setup.pki.ca_file)?;
    // Relay 1 learns of relay 0's tunnel through etcd's watch.
    let got = wait_for("pods listed through relay 1", Duration::from_secs(30), || {
        let out = alice.run(&["get", "pods", "-n", &namespace, "-o", "name"])?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    })?;
    ensure!(got.lines().any(|l| l == "pod/web"), "pods through relay 1: {got}");
    let audit = std::fs::read_to_string(&running[1].log)?;
    ensure!(
        audit.lines().any(|l| l.contains("\"via\":\"hawser-relay-0\"")),
        "relay 1 forwarded nothing via hawser-relay-0: {}",
        running[1].log.display()
    );
    Ok(())
}
