//! The Helm charts (`helm/hawser-relay`, `helm/hawser-agent`) with a real helm built from its Go
//! module: lint and render (default and HA values), then installed into the real kube-apiserver
//! with the relay and agent running the configs they rendered, kubectl through them, and each
//! rule of the agent's ClusterRole shown needed.

mod fleet;
mod helm;
mod install;
mod onboard;
mod pod;
mod rbac;
mod render;

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

use crate::support::Testbed;
use crate::support::hawser::hawser_bin;
use crate::support::process::run_with_deadline;

/// The cluster's name at the relay in these tests.
const CLUSTER: &str = "charts";

/// A chart test on the shared control plane.
pub type Test = fn(&Testbed) -> Result<()>;
/// A chart test that needs no control plane, or starts its own.
pub type Standalone = fn() -> Result<()>;

/// Tests on the shared control plane, by name.
pub const TESTS: &[(&str, Test)] = &[
    (
        "the_agent_charts_rbac_suffices_for_get_logs_and_exec",
        install::the_agent_charts_rbac_suffices_for_get_logs_and_exec,
    ),
    (
        "the_relay_charts_fleet_routes_through_either_relay",
        fleet::the_relay_charts_fleet_routes_through_either_relay,
    ),
    (
        "cluster_add_onboards_two_clusters_with_both_charts",
        onboard::cluster_add_onboards_two_clusters_with_both_charts,
    ),
];

/// Tests without it, by name.
pub const STANDALONE: &[(&str, Standalone)] = &[
    (
        "both_charts_lint_and_refuse_bad_values",
        render::both_charts_lint_and_refuse_bad_values,
    ),
    (
        "rendered_objects_are_hardened_and_highly_available",
        render::rendered_objects_are_hardened_and_highly_available,
    ),
    (
        "each_rule_of_the_agent_role_is_named_when_missing",
        rbac::each_rule_of_the_agent_role_is_named_when_missing,
    ),
];

/// What a relay and an agent of cluster [`CLUSTER`] share, the relay (or the fleet's first) on
/// 127.0.0.1:`port`: the relay's certificate and signing keys, the agent token.
struct Setup {
    pki: RelayPki,
    relay_url: String,
    port: u16,
    agent_token: String,
    issuer_key: String,
    assertion_key: String,
}

impl Setup {
    fn new(dir: &Path, port: u16) -> Result<Self> {
        Ok(Self {
            pki: relay_pki(dir)?,
            relay_url: format!("https://127.0.0.1:{port}"),
            port,
            agent_token: format!("chart-agent-token-{port}-{}", std::process::id()),
            issuer_key: signing_key()?,
            assertion_key: signing_key()?,
        })
    }

    /// The relay chart's values: certificate and keys as values (so as the chart's Secrets),
    /// group dev may reach the cluster, whose agent token's digest is given.
    fn relay_values(&self) -> Result<serde_json::Value> {
        let url = &self.relay_url;
        Ok(serde_json::json!({
            "tls": {"cert": self.pki.cert, "key": self.pki.key},
            "keys": {"issuerKey": self.issuer_key, "assertionKey": self.assertion_key},
            "config": {
                "issuer": {"issuer": url, "audience": "hawser"},
                "assertions": {"issuer": format!("{url}/assertions")},
                "access": [{"clusters": [CLUSTER], "groups": ["dev"]}],
                "clusters": [{"name": CLUSTER, "agent_token_sha256": hawser::relay::token_digest_hex(&self.agent_token)}],
            },
        }))
    }

    /// The agent chart's values: the token, the relay's CA, its address and assertion key's URL,
    /// `relay` keys besides.
    fn agent_values(&self, relay: serde_json::Value) -> serde_json::Value {
        let url = &self.relay_url;
        let mut values = serde_json::json!({
            "cluster": CLUSTER,
            "token": {"value": self.agent_token},
            "relayCA": self.pki.ca,
            "config": {
                "relay": {"address": format!("127.0.0.1:{}", self.port), "server_name": "localhost"},
                "assertions": {
                    "issuer": format!("{url}/assertions"),
                    "jwks_url": format!("{url}/.well-known/hawser/assertion-jwks.json"),
                },
            },
        });
        if let (Some(table), Some(more)) = (values["config"]["relay"].as_object_mut(), relay.as_object()) {
            table.extend(more.clone());
        }
        values
    }
}

/// The relay's serving certificate, as PEM text for the chart's values and a CA file for callers.
struct RelayPki {
    ca: String,
    ca_file: PathBuf,
    cert: String,
    key: String,
}

/// A CA and a serving certificate for `localhost` and 127.0.0.1 signed by it.
fn relay_pki(dir: &Path) -> Result<RelayPki> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hawser-charts-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    let cert = params.signed_by(&key, &ca)?;
    let ca_file = dir.join("relay-ca.crt");
    fs::write(&ca_file, ca.pem())?;
    Ok(RelayPki {
        ca: ca.pem(),
        ca_file,
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// `helm install` of `release` with `values` (written as the values file `name`) into the test
/// bed's apiserver, as the administrator: what it installed (`helm get manifest`).
fn install(
    helm: &helm::Helm,
    tb: &Testbed,
    release: &helm::Release,
    name: &str,
    values: &serde_json::Value,
) -> Result<helm::Rendered> {
    let values = helm.values_file(name, values)?;
    helm.install(&tb.admin_kubeconfig, release, &values)
}

/// A temp dir for a test's files, kept with `HAWSER_E2E_KEEP=1`.
fn work_dir(name: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("hawser-{name}-"))
        .disable_cleanup(std::env::var_os("HAWSER_E2E_KEEP").is_some())
        .tempdir()?)
}

/// Runs `hawser ARGS`; its stdout, or an error with its stderr.
fn hawser(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(hawser_bin());
    cmd.args(args);
    let out = run_with_deadline(cmd, None, Duration::from_secs(30))?;
    ensure!(
        out.status.success(),
        "hawser {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// A fresh EC P-256 key as PKCS#8 PEM, as the relay's signing keys must be.
fn signing_key() -> Result<String> {
    Ok(KeyPair::generate()?.serialize_pem())
}
