//! The charts installed into the real kube-apiserver, and the agent's RBAC shown sufficient:
//! kubectl get, logs and exec through a relay and an agent that run exactly the configs the
//! charts rendered, the agent as the chart's ServiceAccount.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;

use super::helm::{AGENT, Helm, RELAY, Release};
use super::pod::{Agent, Ports, Relay};
use super::{CLUSTER, Setup, hawser, install, work_dir};
use crate::support::binaries::binaries;
use crate::support::net::{free_port, http};
use crate::support::process::wait_for;
use crate::support::{Kubectl, PodSpec, Testbed};

/// Both charts rendered for the test bed and applied (kubectl apply of `helm template`; no
/// controller runs, so the Deployments get no pods); the relay and agent started from the
/// rendered ConfigMaps and Secrets, the agent with a token for the chart's ServiceAccount and no
/// other right; both readiness probes' targets answer 200; then a caller bound to `cluster-admin` in one
/// namespace gets, reads logs and execs there through them, and is refused elsewhere by name.
/// Then `helm upgrade` to mode both grants tokenreviews, and `helm uninstall` removes the role.
pub fn the_agent_charts_rbac_suffices_for_get_logs_and_exec(tb: &Testbed) -> Result<()> {
    let (helm, namespace, dir) = (Helm::new()?, tb.namespace("charts")?, work_dir("charts")?);
    let (port, admin, agent_admin) = (free_port()?, free_port()?, free_port()?);
    let setup = Setup::new(dir.path(), port)?;
    let release = format!("hawser-agent-{namespace}");
    let relay_release = format!("hawser-relay-{namespace}");
    // Installed as helm would: every object accepted by the real apiserver.
    let relay = install(
        &helm,
        tb,
        &Release {
            chart: RELAY,
            name: &relay_release,
            namespace: &namespace,
        },
        "relay",
        &setup.relay_values()?,
    )?;
    let agent_release = Release {
        chart: AGENT,
        name: &release,
        namespace: &namespace,
    };
    let agent = install(&helm, tb, &agent_release, "agent", &setup.agent_values(json!({})))?;
    let admin_kubectl = tb.admin();
    let account = agent.one("ServiceAccount")?["metadata"]["name"]
        .as_str()
        .context("a ServiceAccount without a name")?
        .to_owned();
    admin_kubectl.ok(&[
        "get",
        &format!("clusterrole/{release}"),
        &format!("clusterrolebinding/{release}"),
    ])?;

    let relay_process = Relay::start(dir.path(), &relay, "relay.toml", Ports { port, admin }, &[])?;
    let pod = format!("{release}-5d8f7c6b9-x2k4q");
    let mut agent_process = Agent::start(
        tb,
        dir.path(),
        "agent",
        &agent,
        (&namespace, &account, &pod),
        agent_admin,
    )?;
    agent_process.wait_for_line(&["the agent may impersonate what its issuers map"])?;
    wait_for(
        "the agent to be ready (a tunnel up: /readyz on its admin port)",
        Duration::from_secs(60),
        || Ok(matches!(http(agent_admin, "GET", "/readyz", ""), Ok((200, _))).then_some(())),
    )
    .with_context(|| format!("the agent's log: {}", agent_process.log.display()))?;
    // Its instance is its pod's name (no `instance` in the chart's config), as the relay saw it.
    let relay_log = std::fs::read_to_string(&relay_process.log)?;
    ensure!(
        relay_log
            .lines()
            .any(|l| l.contains("agent_registered") && l.contains(&pod)),
        "the relay registered no agent named after its pod ({pod}): {}",
        relay_process.log.display()
    );

    // A caller through them: alice of dev, bound to cluster-admin in this namespace only.
    tb.bind_role(&namespace, "cluster-admin", "alice")?;
    tb.running_pod(&namespace, "web", &PodSpec::default())?;
    tb.append_log(&namespace, "web", "main", "hello from the charts test\n")?;
    let alice = caller(dir.path(), &relay_process.config, &setup.relay_url, &setup.pki.ca_file)?;
    let got = alice.ok(&["get", "pods", "-n", &namespace, "-o", "name"])?;
    ensure!(
        got.lines().any(|l| l == "pod/web"),
        "kubectl get pods through the charts: {got}"
    );
    let logs = alice.ok(&["logs", "-n", &namespace, "web"])?;
    ensure!(
        logs.contains("hello from the charts test"),
        "kubectl logs through the charts: {logs}"
    );
    let exec = alice.ok(&["exec", "-n", &namespace, "web", "--", "echo", "exec through the charts"])?;
    ensure!(
        exec.trim() == "exec through the charts",
        "kubectl exec through the charts: {exec:?}"
    );
    // As alice, not as the agent: elsewhere her bindings do not reach.
    let refused = alice.run(&["get", "pods", "-n", "default"])?;
    let said = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && said.contains("\"alice\"") && said.contains("forbidden"),
        "alice outside her namespace was not refused as alice: {said}"
    );

    // The release's life goes on as helm users know it: an upgrade to mode both adds the
    // tokenreviews rule (and only then), uninstalling removes the cluster-wide role.
    let role = |what: &str| {
        admin_kubectl
            .ok(&["get", &format!("clusterrole/{release}"), "-o", "json"])
            .context(what.to_owned())
    };
    ensure!(
        !role("the role")?.contains("tokenreviews"),
        "identity mode grants tokenreviews"
    );
    let (kubeconfig, chart) = (&tb.admin_kubeconfig, Helm::chart(AGENT).display().to_string());
    helm.on_cluster(
        kubeconfig,
        &agent_release,
        &["upgrade", &release, &chart, "--reuse-values", "--set", "mode=both"],
    )?;
    ensure!(
        role("the upgraded role")?.contains("tokenreviews"),
        "mode both did not grant tokenreviews"
    );
    helm.on_cluster(kubeconfig, &agent_release, &["uninstall", &release])?;
    let gone = admin_kubectl.run(&["get", &format!("clusterrole/{release}")])?;
    ensure!(
        !gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "helm uninstall left the ClusterRole"
    );
    Ok(())
}

/// kubectl through the relay as alice (group dev), with a token from the relay's built-in issuer.
pub fn caller(dir: &Path, relay_config: &Path, relay_url: &str, ca: &Path) -> Result<Kubectl> {
    let token_file = alice_token(dir, &["--config", &relay_config.display().to_string()])?;
    kubectl_at(dir, relay_url, ca, &token_file, CLUSTER)
}

/// A token for alice of group dev from `hawser token issue` with `signer` (its options that say
/// how to sign), written to a file of `dir`.
pub fn alice_token(dir: &Path, signer: &[&str]) -> Result<PathBuf> {
    let mut args = vec!["token", "issue"];
    args.extend_from_slice(signer);
    args.extend(["--subject", "alice", "--group", "dev", "--ttl", "1h"]);
    let token_file = dir.join("alice.token");
    std::fs::write(&token_file, hawser(&args)?)?;
    Ok(token_file)
}

/// kubectl to `cluster` through the relay at `relay_url` with the token in `token_file`, from
/// the kubeconfig `hawser kubeconfig` prints.
pub fn kubectl_at(dir: &Path, relay_url: &str, ca: &Path, token_file: &Path, cluster: &str) -> Result<Kubectl> {
    let (ca, token_file) = (ca.display().to_string(), token_file.display().to_string());
    let kubeconfig = hawser(&[
        "kubeconfig",
        "--relay",
        relay_url,
        "--cluster",
        cluster,
        "--ca-file",
        &ca,
        "--token-file",
        &token_file,
    ])?;
    let path = dir.join(format!("{cluster}.kubeconfig"));
    std::fs::write(&path, kubeconfig)?;
    Ok(Kubectl::new(&binaries()?.kubectl, &path))
}
