//! The charts lint, render with default and HA values, and render what the issue asks for:
//! hardened pods, probes on the admin listener, a drain-long grace period, PDBs, spreading, the
//! relay's TCP+UDP load balancer, the agent's least-privilege ClusterRole and egress-only
//! NetworkPolicy; and the TOML they render loads as `hawser relay` / `hawser agent` load it.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::helm::{AGENT, Helm, RELAY, Release, Rendered};
use super::pod::{Ports, Relay};
use crate::support::net::free_port;

/// The HA values file of each chart (relative to the chart, as users would use it).
const HA: &str = "ci/ha-values.yaml";

/// `helm lint --strict` passes both charts with default and HA values; values that would not work
/// are refused (by `helm template`, as `helm install` would; by the schema or the chart's own
/// checks), naming why, and `helm lint` fails on those the schema refuses.
pub fn both_charts_lint_and_refuse_bad_values() -> Result<()> {
    let helm = Helm::new()?;
    for chart in [RELAY, AGENT] {
        for values in [&[][..], &[HA][..]] {
            let out = helm.lint(chart, values, &[])?;
            ensure!(
                out.status.success(),
                "helm lint {chart} {values:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // Each refusal: (chart, --set, what the message must say).
    let refusals = [
        (RELAY, "replicaCount=3", "replicaCount > 1 needs fleet.enabled"),
        (RELAY, "fleet.enabled=true", "fleet.enabled needs tls and keys"),
        (RELAY, "port=443", "port"),
        (RELAY, "config.clusters[0].name=Prod", "pattern"),
        (AGENT, "mode=bogus", "mode"),
        (AGENT, "config.relay.ca_file=/x", "ca_file"),
        (AGENT, "typo=1", "typo"),
    ];
    for (chart, set, says) in refusals {
        let out = helm.template_output(&release(chart), &[], &[set])?;
        let said = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "helm template {chart} --set {set} passed");
        ensure!(
            said.contains(says),
            "helm template {chart} --set {set} did not say {says:?}: {said}"
        );
    }
    let out = helm.lint(AGENT, &[], &["mode=bogus"])?;
    ensure!(!out.status.success(), "helm lint {AGENT} --set mode=bogus passed");
    Ok(())
}

/// Default and HA renders of both charts: what each object must hold; every rendered TOML loads
/// as the binaries load it, and the default relay (a trial: no Secrets) starts and is ready.
pub fn rendered_objects_are_hardened_and_highly_available() -> Result<()> {
    let helm = Helm::new()?;
    let relay = helm.template(&release(RELAY), &[], &[])?;
    let relay_ha = helm.template(&release(RELAY), &[HA], &[])?;
    let agent = helm.template(&release(AGENT), &[], &[])?;
    let agent_ha = helm.template(&release(AGENT), &[HA], &[])?;

    for (what, rendered) in [
        ("relay", &relay),
        ("relay HA", &relay_ha),
        ("agent", &agent),
        ("agent HA", &agent_ha),
    ] {
        hardened(rendered).with_context(|| format!("the {what} chart's pods"))?;
    }

    // Relay, one: a Deployment; drain: preStop 5 s + grace 10 + timeout 30 + 10 s of closing.
    let deployment = relay.one("Deployment")?;
    ensure!(relay.all("StatefulSet").is_empty(), "a single relay is a Deployment");
    ensure!(deployment["spec"]["replicas"] == 1, "one relay by default");
    relay_pod(deployment, 55, "soft")?;
    load_balancer(&relay)?;
    ensure!(
        relay.one("PodDisruptionBudget")?["spec"]["maxUnavailable"] == 1,
        "the relay's PDB"
    );
    ensure!(
        relay.all("ServiceMonitor").is_empty(),
        "no ServiceMonitor unless asked for"
    );

    // Relay fleet: a StatefulSet of 3 on distinct nodes, each relay its own config.
    let set = relay_ha.one("StatefulSet")?;
    ensure!(set["spec"]["replicas"] == 3, "three relays in HA");
    ensure!(
        set["spec"]["serviceName"] == "hawser-relay-peers",
        "the fleet's headless Service"
    );
    relay_pod(set, 60, "hard")?;
    load_balancer(&relay_ha)?;
    ensure!(
        relay_ha.one("PodDisruptionBudget")?["spec"]["maxUnavailable"] == 1,
        "the fleet's PDB"
    );
    let peers = relay_ha.named("Service", "hawser-relay-peers")?;
    ensure!(
        peers["spec"]["clusterIP"] == "None" && peers["spec"]["ports"][0]["protocol"] == "UDP",
        "the peer link's headless Service: {peers}"
    );
    let monitor = relay_ha.one("ServiceMonitor")?;
    ensure!(
        monitor["spec"]["endpoints"][0]["port"] == "admin" && monitor["spec"]["endpoints"][0]["path"] == "/metrics",
        "the ServiceMonitor scrapes the admin port: {monitor}"
    );
    for i in 0..3 {
        let config = relay_ha.config_file(&format!("hawser-relay-{i}.toml"))?;
        for line in [
            format!("instance = \"hawser-relay-{i}\""),
            format!("advertise = \"hawser-relay-{i}.hawser-relay-peers.hawser-system.svc:9444\""),
            format!("cert_file = \"/etc/hawser/fleet/hawser-relay-{i}.crt\""),
        ] {
            ensure!(
                config.lines().any(|l| l == line),
                "relay {i}'s config has no line {line:?}:\n{config}"
            );
        }
    }

    // Agent: two replicas, the rights identity mode needs and no more; egress only where it dials.
    let deployment = agent.one("Deployment")?;
    ensure!(deployment["spec"]["replicas"] == 2, "two agents by default");
    probes(deployment)?;
    ensure!(
        agent.one("PodDisruptionBudget")?["spec"]["maxUnavailable"] == 1,
        "the agent's PDB"
    );
    ensure_rules(
        &agent,
        &[
            "create authorization.k8s.io/selfsubjectaccessreviews",
            "impersonate /users",
            "impersonate /groups",
        ],
    )?;
    network_policy(&agent, &[], &[])?;
    ensure_rules(
        &agent_ha,
        &[
            "create authorization.k8s.io/selfsubjectaccessreviews",
            "impersonate /users",
            "impersonate /groups",
            "impersonate authentication.k8s.io/uids",
            "impersonate authentication.k8s.io/userextras/scopes",
            "create authentication.k8s.io/tokenreviews",
        ],
    )?;
    network_policy(&agent_ha, &["203.0.113.10/32"], &["10.0.0.1/32", "192.168.10.0/24"])?;
    // Passthrough alone impersonates nobody.
    let passthrough = helm.template(&release(AGENT), &[], &["mode=passthrough"])?;
    ensure_rules(
        &passthrough,
        &[
            "create authorization.k8s.io/selfsubjectaccessreviews",
            "create authentication.k8s.io/tokenreviews",
        ],
    )?;

    // The rendered TOML is what the binaries accept.
    let dir = tempfile::tempdir()?;
    valid::<hawser::config::RelayConfig>(dir.path(), "relay.toml", &relay.config_file("relay.toml")?)?;
    for i in 0..3 {
        let file = format!("hawser-relay-{i}.toml");
        valid::<hawser::config::RelayConfig>(dir.path(), &file, &relay_ha.config_file(&file)?)?;
    }
    valid::<hawser::config::AgentConfig>(dir.path(), "agent.toml", &agent.config_file("agent.toml")?)?;

    // Values become TOML as given: strings escaped, big whole numbers as integers (Helm reads
    // numbers as floats), fractions as floats, maps with any keys as inline tables.
    let odd = "we\"ird\\ \u{fc}\n<&>";
    let values = helm.values_file(
        "odd",
        &json!({"config": {
            "issuer": {"username_prefix": odd},
            "limits": {"max_streams_per_caller": 4_194_304, "fraction": 1.5},
            "issuers": [{"issuer": "i", "audiences": ["x", "y"], "extra_claims": {"a/b": "c", "q\"": "d"}}],
        }}),
    )?;
    let text = helm
        .template(&release(RELAY), &[&values], &[])?
        .config_file("relay.toml")?;
    let toml: toml::Table =
        toml::from_str(&text).with_context(|| format!("the rendered TOML does not parse:\n{text}"))?;
    let want = json!({
        "prefix": odd, "streams": 4_194_304, "fraction": 1.5, "audiences": ["x", "y"], "claims": {"a/b": "c", "q\"": "d"},
    });
    let got = json!({
        "prefix": toml["issuer"]["username_prefix"].as_str(),
        "streams": toml["limits"]["max_streams_per_caller"].as_integer(),
        "fraction": toml["limits"]["fraction"].as_float(),
        "audiences": serde_json::to_value(&toml["issuers"][0]["audiences"])?,
        "claims": serde_json::to_value(&toml["issuers"][0]["extra_claims"])?,
    });
    ensure!(
        got == want,
        "values rendered as TOML read back {got}, not {want}:\n{text}"
    );

    // The default relay is a working trial: it makes its certificate and keys in its state
    // volume, and is ready.
    let state = dir.path().join("state");
    let ports = Ports {
        port: free_port()?,
        admin: free_port()?,
    };
    let _trial = Relay::start(
        dir.path(),
        &relay,
        "relay.toml",
        ports,
        &[("/var/lib/hawser/".into(), format!("{}/", state.display()))],
    )?;
    for made in ["tls.crt", "tls.key", "issuer.key", "assertion.key"] {
        ensure!(state.join(made).is_file(), "the trial relay did not make {made}");
    }
    valid::<hawser::config::AgentConfig>(dir.path(), "agent-ha.toml", &agent_ha.config_file("agent.toml")?)?;
    Ok(())
}

/// Every container: non-root, read-only root, no privilege escalation, no capabilities,
/// requests and a memory limit.
fn hardened(rendered: &Rendered) -> Result<()> {
    let workloads: Vec<&Value> = ["Deployment", "StatefulSet"]
        .iter()
        .flat_map(|k| rendered.all(k))
        .collect();
    ensure!(!workloads.is_empty(), "no workload rendered");
    for workload in workloads {
        let pod = &workload["spec"]["template"]["spec"];
        ensure!(
            pod["securityContext"]["runAsNonRoot"] == true,
            "pod not runAsNonRoot: {pod}"
        );
        let containers = pod["containers"].as_array().context("no containers")?;
        for c in containers {
            let sc = &c["securityContext"];
            ensure!(
                sc["readOnlyRootFilesystem"] == true,
                "{}: root filesystem not read-only",
                c["name"]
            );
            ensure!(
                sc["allowPrivilegeEscalation"] == false,
                "{}: privilege escalation allowed",
                c["name"]
            );
            ensure!(
                sc["capabilities"]["drop"] == json!(["ALL"]),
                "{}: capabilities not all dropped",
                c["name"]
            );
            ensure!(
                c["resources"]["requests"]["cpu"].is_string() && c["resources"]["limits"]["memory"].is_string(),
                "{}: no resources: {}",
                c["name"],
                c["resources"]
            );
        }
    }
    Ok(())
}

/// Readiness on the admin listener's `/readyz`, liveness on its `/healthz`.
fn probes(workload: &Value) -> Result<()> {
    let c = &workload["spec"]["template"]["spec"]["containers"][0];
    let admin_port = c["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == "admin"))
        .context("no admin port")?;
    ensure!(admin_port["protocol"] == "TCP", "admin port: {admin_port}");
    ensure!(
        c["readinessProbe"]["httpGet"] == json!({"path": "/readyz", "port": "admin"}),
        "readiness probe: {}",
        c["readinessProbe"]
    );
    ensure!(
        c["livenessProbe"]["httpGet"] == json!({"path": "/healthz", "port": "admin"}),
        "liveness probe: {}",
        c["livenessProbe"]
    );
    Ok(())
}

/// The relay pod: probes, preStop, a grace period covering the drain, anti-affinity.
fn relay_pod(workload: &Value, grace: u64, affinity: &str) -> Result<()> {
    probes(workload)?;
    let pod = &workload["spec"]["template"]["spec"];
    ensure!(
        pod["terminationGracePeriodSeconds"] == grace,
        "terminationGracePeriodSeconds {} (want {grace}: preStop + grace_secs + timeout_secs + 10)",
        pod["terminationGracePeriodSeconds"]
    );
    ensure!(
        pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] == 5,
        "preStop: {}",
        pod["containers"][0]["lifecycle"]
    );
    let anti = &pod["affinity"]["podAntiAffinity"];
    let term = match affinity {
        "hard" => &anti["requiredDuringSchedulingIgnoredDuringExecution"][0],
        _ => &anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"],
    };
    ensure!(
        term["topologyKey"] == "kubernetes.io/hostname",
        "{affinity} anti-affinity over nodes: {anti}"
    );
    Ok(())
}

/// A LoadBalancer Service with the relay's one port on TCP and UDP.
fn load_balancer(rendered: &Rendered) -> Result<()> {
    let service = rendered.named("Service", "hawser-relay")?;
    ensure!(
        service["spec"]["type"] == "LoadBalancer",
        "Service type: {}",
        service["spec"]["type"]
    );
    let ports: Vec<(String, u64)> = service["spec"]["ports"]
        .as_array()
        .context("no ports")?
        .iter()
        .map(|p| {
            (
                p["protocol"].as_str().unwrap_or("").to_owned(),
                p["port"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    ensure!(
        ports == [("TCP".to_owned(), 443), ("UDP".to_owned(), 443)],
        "Service ports: {ports:?}"
    );
    Ok(())
}

/// The ClusterRole's rules as `VERB GROUP/RESOURCE`, each resource on its own; exactly `want`.
pub fn rules(rendered: &Rendered) -> Result<Vec<String>> {
    let mut got = Vec::new();
    for rule in rendered.one("ClusterRole")?["rules"].as_array().context("no rules")? {
        let group = rule["apiGroups"][0].as_str().context("a rule without apiGroups")?;
        for verb in rule["verbs"].as_array().context("a rule without verbs")? {
            for resource in rule["resources"].as_array().context("a rule without resources")? {
                got.push(format!(
                    "{} {group}/{}",
                    verb.as_str().unwrap_or(""),
                    resource.as_str().unwrap_or("")
                ));
            }
        }
    }
    Ok(got)
}

fn ensure_rules(rendered: &Rendered, want: &[&str]) -> Result<()> {
    let mut got = rules(rendered)?;
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    got.sort();
    want.sort();
    ensure!(got == want, "ClusterRole rules {got:?}, want {want:?}");
    Ok(())
}

/// Egress to the relay (its port, UDP and TCP, to `relay` CIDRs or anywhere), the apiserver
/// (443 and 6443, to `apiserver` CIDRs or anywhere) and DNS; nothing else; ingress only to admin.
fn network_policy(rendered: &Rendered, relay: &[&str], apiserver: &[&str]) -> Result<()> {
    let policy = &rendered.one("NetworkPolicy")?["spec"];
    ensure!(
        policy["policyTypes"] == json!(["Ingress", "Egress"]),
        "policyTypes: {}",
        policy["policyTypes"]
    );
    let egress = policy["egress"].as_array().context("no egress")?;
    ensure!(
        egress.len() == 3,
        "egress rules beyond relay, apiserver and DNS: {}",
        policy["egress"]
    );
    let cidrs = |rule: &Value| -> Vec<String> {
        rule["to"]
            .as_array()
            .map(|to| {
                to.iter()
                    .filter_map(|p| p["ipBlock"]["cidr"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let ports = |rule: &Value| -> Vec<String> {
        rule["ports"]
            .as_array()
            .map(|ports| {
                ports
                    .iter()
                    .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default()
    };
    ensure!(
        ports(&egress[0]) == ["443/UDP", "443/TCP"],
        "relay egress ports: {}",
        egress[0]
    );
    ensure!(cidrs(&egress[0]) == relay, "relay egress to: {}", egress[0]);
    ensure!(
        ports(&egress[1]) == ["443/TCP", "6443/TCP"],
        "apiserver egress ports: {}",
        egress[1]
    );
    ensure!(cidrs(&egress[1]) == apiserver, "apiserver egress to: {}", egress[1]);
    ensure!(
        ports(&egress[2]) == ["53/UDP", "53/TCP"],
        "DNS egress ports: {}",
        egress[2]
    );
    ensure!(
        egress[2]["to"][0]["podSelector"]["matchLabels"]["k8s-app"] == "kube-dns",
        "DNS egress to: {}",
        egress[2]
    );
    let ingress = policy["ingress"].as_array().context("no ingress")?;
    ensure!(
        ingress.len() == 1 && ports(&ingress[0]) == ["9090/TCP"],
        "ingress beyond the admin port: {}",
        policy["ingress"]
    );
    Ok(())
}

/// A release of `chart` in hawser-system named after the chart.
fn release(chart: &str) -> Release<'_> {
    Release {
        chart,
        name: chart,
        namespace: "hawser-system",
    }
}

/// Loads `text` as the binary loads its config file (parse, unknown keys, validation).
fn valid<T: serde::de::DeserializeOwned + hawser::config::Validate>(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    fs::write(&path, text)?;
    if let Err(e) = hawser::config::load::<T>(&path) {
        bail!("the chart's {name} does not load: {e}\n{text}");
    }
    Ok(())
}
