//! deploy.md's onboarding with Helm, as an operator runs it: the relay chart installed with no
//! cluster, `hawser cluster add` for two clusters, their `--entry yaml` lines into the relay
//! chart's `config.clusters` (`helm upgrade`), their written values.yaml into `helm install` of
//! the agent chart as they are, and kubectl through the relay to both.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;

use super::helm::{AGENT, Helm, RELAY, Release};
use super::install::{alice_token, kubectl_at};
use super::pod::{Agent, Ports, Relay};
use super::{Setup, hawser, work_dir};
use crate::support::net::{free_port, http};
use crate::support::process::wait_for;
use crate::support::{PodSpec, Testbed};

/// The two clusters onboarded; both are the test bed's apiserver, each with its own agent.
const CLUSTERS: [&str; 2] = ["east", "west"];

/// The relay release installed with `config.clusters: []` (a relay run from it is ready);
/// `hawser cluster add` run for each cluster, its stdout indented under `config.clusters` of a
/// second values file (deploy.md's `sed`), and `helm upgrade` with both files; the relay run from
/// what that upgrade installed (rendered as a fleet of two, both relays' configs have both
/// clusters). Each cluster's agent release installed with the values.yaml `cluster add` wrote,
/// untouched (the chart's schema and checks judge it), and run from its rendering as its
/// ServiceAccount; both agents ready, the relay registered each under its cluster, and kubectl
/// lists the namespace's pod through the relay at either cluster, with a token `hawser token
/// issue` signed with the relay's issuer key and a kubeconfig per cluster from `hawser kubeconfig`.
pub fn cluster_add_onboards_two_clusters_with_both_charts(tb: &Testbed) -> Result<()> {
    let (helm, namespace, dir) = (
        Helm::new()?,
        tb.namespace("charts-onboard")?,
        work_dir("charts-onboard")?,
    );
    let (port, admin) = (free_port()?, free_port()?);
    let setup = Setup::new(dir.path(), port)?;
    let relay_name = format!("hawser-relay-{namespace}");
    let relay_release = Release {
        chart: RELAY,
        name: &relay_name,
        namespace: &namespace,
    };
    let mut values = setup.relay_values()?;
    values["config"]["clusters"] = json!([]);
    values["config"]["access"] = json!([{"clusters": ["*"], "groups": ["dev"]}]);
    let relay_values = helm.values_file("relay-values", &values)?;
    let installed = helm.install(&tb.admin_kubeconfig, &relay_release, &relay_values)?;
    // With no cluster yet the relay starts and is ready (deploy.md's step 3 ends there).
    let (first, first_ports) = (
        dir.path().join("installed"),
        Ports {
            port: free_port()?,
            admin: free_port()?,
        },
    );
    fs::create_dir_all(&first)?;
    let _empty = Relay::start(&first, &installed, "relay.toml", first_ports, &[])?;

    // Relay side of each onboarding: the entry, indented under config.clusters.
    let (relay_address, issuer) = (format!("127.0.0.1:{port}"), format!("{}/assertions", setup.relay_url));
    let ca = setup.pki.ca_file.display().to_string();
    let mut clusters_yaml = "config:\n  clusters:\n".to_owned();
    for cluster in CLUSTERS {
        let out = dir.path().join(cluster).display().to_string();
        let entry = hawser(&[
            "cluster",
            "add",
            cluster,
            "--entry",
            "yaml",
            "--relay",
            &relay_address,
            "--server-name",
            "localhost",
            "--ca-file",
            &ca,
            "--assertions-issuer",
            &issuer,
            "--out",
            &out,
        ])?;
        ensure!(
            entry.starts_with(&format!("- name: \"{cluster}\"\n")),
            "cluster add --entry yaml printed: {entry}"
        );
        for line in entry.lines() {
            clusters_yaml.push_str(&format!("  {line}\n"));
        }
    }
    let clusters_file = dir.path().join("clusters.yaml");
    fs::write(&clusters_file, &clusters_yaml)?;
    let relay = helm.upgrade(
        &tb.admin_kubeconfig,
        &relay_release,
        &[&relay_values, &clusters_file.display().to_string()],
    )?;
    let relay_toml = relay.config_file("relay.toml")?;
    ensure!(
        CLUSTERS.iter().all(|c| relay_toml.contains(&format!("name = \"{c}\""))),
        "the upgraded relay config lacks a cluster:\n{relay_toml}"
    );
    // The same files with a fleet of two (deploy.md's step 3 is one): each relay's config has both.
    let fleet = helm.template(
        &relay_release,
        &[&relay_values, &clusters_file.display().to_string()],
        &[
            "replicaCount=2",
            "fleet.enabled=true",
            "fleet.existingSecret=hawser-relay-fleet",
            "fleet.registry.endpoints={https://etcd:2379}",
        ],
    )?;
    let per_relay: Vec<&str> = fleet.one("ConfigMap")?["data"]
        .as_object()
        .context("a ConfigMap without data")?
        .iter()
        .filter(|(key, _)| key.ends_with(".toml"))
        .filter_map(|(_, text)| text.as_str())
        .collect();
    ensure!(
        per_relay.len() == 2
            && per_relay
                .iter()
                .all(|t| CLUSTERS.iter().all(|c| t.contains(&format!("name = \"{c}\"")))),
        "a fleet relay's config lacks a cluster: {per_relay:?}"
    );
    let relay_process = Relay::start(dir.path(), &relay, "relay.toml", Ports { port, admin }, &[])?;

    // Cluster side: the agent chart with the written values file as it is.
    let mut agents = Vec::new();
    for cluster in CLUSTERS {
        let name = format!("hawser-agent-{cluster}-{namespace}");
        let release = Release {
            chart: AGENT,
            name: &name,
            namespace: &namespace,
        };
        let values = dir.path().join(cluster).join("values.yaml");
        let rendered = helm.install(&tb.admin_kubeconfig, &release, &values.display().to_string())?;
        let account = rendered.one("ServiceAccount")?["metadata"]["name"]
            .as_str()
            .context("a ServiceAccount without a name")?
            .to_owned();
        let agent_admin = free_port()?;
        let pod = format!("{name}-0");
        let agent = Agent::start(
            tb,
            dir.path(),
            cluster,
            &rendered,
            (&namespace, &account, &pod),
            agent_admin,
        )?;
        wait_for(
            &format!("cluster {cluster}'s agent to be ready (a tunnel up)"),
            Duration::from_secs(60),
            || Ok(matches!(http(agent_admin, "GET", "/readyz", ""), Ok((200, _))).then_some(())),
        )
        .with_context(|| format!("the agent's log: {}", agent.log.display()))?;
        agents.push(agent);
    }
    let relay_log = fs::read_to_string(&relay_process.log)?;
    for cluster in CLUSTERS {
        ensure!(
            relay_log
                .lines()
                .any(|l| l.contains("agent_registered") && l.contains(&format!("\"cluster\":\"{cluster}\""))),
            "the relay registered no agent of {cluster}: {}",
            relay_process.log.display()
        );
    }

    // kubectl as deploy.md's caller: a token signed with the relay's issuer key, a kubeconfig per
    // cluster.
    tb.bind_role(&namespace, "cluster-admin", "alice")?;
    tb.running_pod(&namespace, "web", &PodSpec::default())?;
    let issuer_key = dir.path().join("issuer.key");
    fs::write(&issuer_key, &setup.issuer_key)?;
    fs::set_permissions(&issuer_key, fs::Permissions::from_mode(0o600))?;
    let token_file = alice_token(
        dir.path(),
        &[
            "--signing-key",
            &issuer_key.display().to_string(),
            "--issuer",
            &setup.relay_url,
            "--audience",
            "hawser",
        ],
    )?;
    for cluster in CLUSTERS {
        let alice = kubectl_at(dir.path(), &setup.relay_url, &setup.pki.ca_file, &token_file, cluster)?;
        let got = alice.ok(&["get", "pods", "-n", &namespace, "-o", "name"])?;
        ensure!(
            got.lines().any(|l| l == "pod/web"),
            "kubectl get pods through the relay at {cluster}: {got}"
        );
    }
    Ok(())
}
