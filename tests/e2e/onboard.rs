//! Onboarding as a user does it: an agent whose apiserver credential is an ordinary client
//! certificate (kubeadm's and most installers' admin kubeconfigs are), and `hawser cluster add`,
//! whose printed entry goes into the relay's config and whose written token and values start an
//! agent that kubectl then reaches.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::support::certs::Pki;
use crate::support::hawser::rbac::CERT_USER;
use crate::support::hawser::{AgentCredential, Extra, Hawser, hawser_bin};
use crate::support::process::{run_with_deadline, wait_for};
use crate::support::{Kubectl, PodSpec, Testbed};
use crate::tunnel::whoami;

/// An onboarding test.
pub type Test = fn(&Testbed) -> Result<()>;

/// Every onboarding test, by name.
pub const TESTS: &[(&str, Test)] = &[
    (
        "a_client_certificate_agent_serves_kubectl_and_never_lends_it_to_passthrough",
        a_client_certificate_agent_serves_kubectl_and_never_lends_it_to_passthrough,
    ),
    (
        "a_certificate_of_another_ca_stops_the_agent_at_start",
        a_certificate_of_another_ca_stops_the_agent_at_start,
    ),
    (
        "cluster_add_onboards_a_cluster_that_kubectl_then_reaches",
        cluster_add_onboards_a_cluster_that_kubectl_then_reaches,
    ),
];

/// The apiserver's own audience (its service-account issuer) in the test bed.
const APISERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

fn a_client_certificate_agent_serves_kubectl_and_never_lends_it_to_passthrough(tb: &Testbed) -> Result<()> {
    let agent = format!("mode = \"both\"\n[passthrough]\naudiences = [\"{APISERVER_AUDIENCE}\"]\n");
    let hawser = Hawser::start_with(
        tb,
        &Extra {
            agent: &agent,
            agent_credential: AgentCredential::ClientCertificate,
            ..Extra::default()
        },
    )?;
    hawser.expect_agent_log(&format!(
        "client certificate {}",
        hawser.dir().join(format!("{CERT_USER}.crt")).display()
    ))?;

    // Impersonated: the caller, not the certificate's user.
    let ns = tb.namespace("cert")?;
    tb.running_pod(&ns, "box", &PodSpec::default())?;
    let admin = hawser.kubeconfig_route("hawser-admin", &[])?;
    let me = whoami(&admin, &[])?;
    ensure!(
        me["username"] == "hawser-admin",
        "whoami through a certificate agent: {me}"
    );
    admin.ok(&["get", "pods", "-n", &ns])?;
    let out = admin.ok(&["exec", "-n", &ns, "box", "--", "echo", "through a client certificate"])?;
    ensure!(out.contains("through a client certificate"), "exec: {out}");

    // `hawser doctor` checks with the same credential: the apiserver names it, both rights pass.
    let mut cmd = Command::new(hawser_bin());
    cmd.arg("doctor").arg("--config").arg(hawser.agent_config());
    let out = run_with_deadline(cmd, None, Duration::from_secs(60))?;
    let report = String::from_utf8(out.stdout)?;
    for (check, text) in [
        ("apiserver", "as client certificate "),
        ("impersonation rights", "may impersonate"),
        ("tokenreview rights", "may create tokenreviews"),
    ] {
        ensure!(
            report
                .lines()
                .any(|l| l.starts_with(&format!("ok    {check}: ")) && l.contains(text)),
            "doctor's {check} line with a client certificate:\n{report}"
        );
    }
    ensure!(out.status.success(), "doctor failed:\n{report}");

    // Passthrough: the cluster token alone. kube-apiserver tries client certificates first, so a
    // connection presenting the agent's would make this caller the agent.
    let token_file = hawser.unique_path("nobody.cluster-token");
    fs::write(&token_file, tb.service_account_token(&ns, "nobody")?)?;
    let with_token = [OsStr::new("--cluster-token-file"), token_file.as_os_str()];
    let (_proxy, kubectl) = hawser.proxy("pt-caller", &["dev"], &with_token)?;
    let me = whoami(&kubectl, &[])?;
    ensure!(
        me["username"] == format!("system:serviceaccount:{ns}:nobody").as_str(),
        "passthrough through a certificate agent is not the token's identity: {me}"
    );
    Ok(())
}

fn a_certificate_of_another_ca_stops_the_agent_at_start(tb: &Testbed) -> Result<()> {
    let hawser = Hawser::start(tb)?;
    let dir = hawser.unique_path("other-ca");
    let (cert, key) = Pki::generate(&dir)?.client_cert(&dir, "stranger", &[])?;
    let kubeconfig = crate::support::hawser::rbac::kubeconfig(
        tb,
        &dir,
        "stranger",
        serde_json::json!({"client-certificate": cert, "client-key": key}),
    )?;
    let text = fs::read_to_string(hawser.agent_config())?;
    let config = hawser.unique_path("stranger-agent.toml");
    let changed: Vec<String> = text
        .lines()
        .map(|l| match l.starts_with("kubeconfig = ") {
            true => format!("kubeconfig = \"{}\"", kubeconfig.display()),
            false => l.replace("instance = \"agent-e2e\"", "instance = \"stranger\""),
        })
        .collect();
    fs::write(&config, changed.join("\n"))?;

    let mut agent = hawser.spawn_agent("stranger", &config)?;
    wait_for("the agent to stop", Duration::from_secs(60), || Ok(agent.exited()))?;
    let log = fs::read_to_string(hawser.dir().join("stranger.log"))?;
    let expected = format!("refused the agent's credential (client certificate {})", cert.display());
    ensure!(
        log.lines()
            .any(|l| l.contains(&expected) && l.contains("--client-ca-file")),
        "the agent's log names no refused certificate:\n{log}"
    );
    Ok(())
}

fn cluster_add_onboards_a_cluster_that_kubectl_then_reaches(tb: &Testbed) -> Result<()> {
    let hawser = Hawser::start(tb)?;
    let out_dir = hawser.unique_path("onboarded");
    let issuer = format!("{}/assertions", hawser.relay_url);
    let add = |force: bool| {
        let mut cmd = Command::new(hawser_bin());
        cmd.args(["cluster", "add", "onboarded", "--relay"])
            .arg(format!("127.0.0.1:{}", hawser.relay_port()))
            .args(["--server-name", "localhost", "--ca-file"])
            .arg(&hawser.relay_ca)
            .args(["--assertions-issuer", &issuer, "--out"])
            .arg(&out_dir);
        if force {
            cmd.arg("--force");
        }
        run_with_deadline(cmd, None, Duration::from_secs(30))
    };
    let out = add(false)?;
    let (entry, said) = (String::from_utf8(out.stdout)?, String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "hawser cluster add: {said}");
    let values_file = out_dir.join("values.yaml");
    let token_file = out_dir.join("agent-token");
    let helm = format!(
        "helm install hawser-agent helm/hawser-agent --namespace hawser-system --create-namespace --values {}",
        values_file.display()
    );
    ensure!(said.contains(&helm), "no helm install command: {said}");
    for file in [&values_file, &token_file] {
        let mode = fs::metadata(file)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "{} has mode {mode:o}", file.display());
    }
    let token = fs::read_to_string(&token_file)?;
    ensure!(
        entry.contains(&hawser::relay::token_digest_hex(token.trim())) && !entry.contains(token.trim()),
        "the entry is not the token's digest alone: {entry}"
    );

    // Run again, the files are kept: the token may be in use.
    let again = add(false)?;
    let stderr = String::from_utf8_lossy(&again.stderr);
    ensure!(
        !again.status.success() && stderr.trim().lines().count() == 1 && stderr.contains("--force"),
        "a second cluster add without --force: {stderr}"
    );
    ensure!(fs::read_to_string(&token_file)? == token, "the token was replaced");

    // Command one: the entry into the relay's config, applied without a restart.
    hawser.rewrite_relay_config(|text| format!("{text}\n{entry}"))?;
    hawser.hup_relay()?;

    // Command two would be helm install; here the agent runs with what the chart would render from
    // the values, the written token as its token_file.
    let values: Value = serde_yaml_ng::from_str(&fs::read_to_string(&values_file)?)?;
    let config = agent_config_from_values(&hawser, &values, &token_file)?;
    let _agent = hawser.spawn_agent("onboarded", &config)?;

    let kubectl = kubectl_for(&hawser, "onboarded")?;
    wait_for(
        "cluster onboarded to answer through the relay",
        Duration::from_secs(60),
        || Ok(kubectl.run(&["get", "--raw=/version"])?.status.success().then_some(())),
    )?;
    let me = whoami(&kubectl, &[])?;
    ensure!(
        me["username"] == "hawser-admin",
        "whoami at the onboarded cluster: {me}"
    );
    Ok(())
}

/// The agent's TOML as the agent chart renders it from `values` (its `_config.tpl`), with the
/// paths a pod would have pointed at this test's files and the deployment's apiserver kubeconfig
/// (a pod uses its service account).
fn agent_config_from_values(hawser: &Hawser, values: &Value, token_file: &Path) -> Result<std::path::PathBuf> {
    let text = |v: &Value| v.as_str().map(str::to_owned).context("a string value");
    let relay = &values["config"]["relay"];
    let assertions = &values["config"]["assertions"];
    let ca_file = hawser.unique_path("onboarded-relay-ca.crt");
    fs::write(&ca_file, text(&values["relayCA"])?)?;
    let kubeconfig = hawser.dir().join("hawser-agent.kubeconfig");
    ensure!(kubeconfig.exists(), "no agent kubeconfig at {}", kubeconfig.display());
    let q = |s: String| Value::from(s).to_string();
    let config = format!(
        "instance = \"onboarded-agent\"\ncluster = {cluster}\nmode = {mode}\ntoken_file = {token}\n\
         [relay]\naddress = {address}\nserver_name = {server_name}\nca_file = {ca}\n\
         [apiserver]\nkubeconfig = {kubeconfig}\n\
         [assertions]\nissuer = {issuer}\njwks_url = {jwks_url}\njwks_ca_file = {ca}\n\
         [reconnect]\ninitial_backoff_ms = 100\nmax_backoff_ms = 1000\n",
        cluster = q(text(&values["cluster"])?),
        mode = q(text(&values["mode"])?),
        token = q(token_file.display().to_string()),
        address = q(text(&relay["address"])?),
        server_name = q(text(&relay["server_name"])?),
        ca = q(ca_file.display().to_string()),
        kubeconfig = q(kubeconfig.display().to_string()),
        issuer = q(text(&assertions["issuer"])?),
        jwks_url = q(text(&assertions["jwks_url"])?),
    );
    ensure!(
        text(&values["token"]["value"])? == fs::read_to_string(token_file)?.trim(),
        "the values' token is not the written one"
    );
    let path = hawser.unique_path("onboarded-agent.toml");
    fs::write(&path, config)?;
    Ok(path)
}

/// kubectl to `cluster` through the relay as `hawser-admin`.
fn kubectl_for(hawser: &Hawser, cluster: &str) -> Result<Kubectl> {
    let token_file = hawser.token_file("hawser-admin", &[])?;
    hawser.kubeconfig_with(&hawser.relay_url, cluster, &token_file, cluster)
}
