//! The Kubernetes side of a deployment: the callers' administrator binding, and the agent's
//! credential allowed to impersonate (a service account, or the test bed's `system:monitoring`
//! user), with a kubeconfig for it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde_json::json;

use super::super::Testbed;
use super::super::cluster::MONITORING_USER;

/// The agent's service account.
const AGENT_NAMESPACE: &str = "hawser-system";
const AGENT_SA: &str = "hawser-agent";
/// The ClusterRole with what the agent needs: impersonation, and TokenReviews for passthrough.
const IMPERSONATOR: &str = "hawser-impersonator";

/// Who the agent is to kube-apiserver. Both have the same rights (impersonation, TokenReviews).
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentCredential {
    /// Service account `hawser-system:hawser-agent`: kube-apiserver starts a trace of its own for
    /// each request and links it to the agent's span.
    #[default]
    ServiceAccount,
    /// The test bed's static-token user in `system:monitoring` ([`MONITORING_USER`]):
    /// kube-apiserver continues the agent's trace (docs/observability.md).
    Monitoring,
    /// User [`CERT_USER`], a client certificate of the test bed's CA (no bearer token).
    ClientCertificate,
}

/// The user of [`AgentCredential::ClientCertificate`].
pub const CERT_USER: &str = "hawser-agent-cert";

/// Makes the callers' user `user` (`hawser-admin`, after its issuer's prefix) a cluster
/// administrator.
pub fn bind_admin(tb: &Testbed, user: &str) -> Result<()> {
    // Binding names are DNS subdomains: a prefix's `:` becomes `.`.
    let name = user.replace(':', ".");
    tb.admin().create_or_exists(&[
        "create",
        "clusterrolebinding",
        &name,
        "--clusterrole=cluster-admin",
        &format!("--user={user}"),
    ])
}

/// A kubeconfig for the agent with `credential`, given the rights it needs first.
pub fn agent_kubeconfig_as(tb: &Testbed, dir: &Path, credential: AgentCredential) -> Result<PathBuf> {
    match credential {
        AgentCredential::ServiceAccount => agent_kubeconfig(tb, dir),
        AgentCredential::Monitoring => {
            bind_impersonator(
                tb,
                "hawser-impersonator-monitoring",
                &format!("--user={MONITORING_USER}"),
            )?;
            token_file_kubeconfig(tb, dir, MONITORING_USER, tb.monitoring_token())
        }
        AgentCredential::ClientCertificate => {
            bind_impersonator(tb, "hawser-impersonator-cert", &format!("--user={CERT_USER}"))?;
            let (cert, key) = tb.pki.client_cert(dir, CERT_USER, &[])?;
            kubeconfig(
                tb,
                dir,
                CERT_USER,
                json!({"client-certificate": cert, "client-key": key}),
            )
        }
    }
}

/// A service account that may impersonate, and a kubeconfig for it.
pub fn agent_kubeconfig(tb: &Testbed, dir: &Path) -> Result<PathBuf> {
    tb.admin().create_or_exists(&["create", "namespace", AGENT_NAMESPACE])?;
    bind_impersonator(
        tb,
        IMPERSONATOR,
        &format!("--serviceaccount={AGENT_NAMESPACE}:{AGENT_SA}"),
    )?;
    service_account_kubeconfig(tb, dir, AGENT_SA)
}

/// Creates the impersonator ClusterRole (again, unchanged) and binds it to `subject` (a
/// `kubectl create clusterrolebinding` flag) as `binding`.
fn bind_impersonator(tb: &Testbed, binding: &str, subject: &str) -> Result<()> {
    // Deployments started at once on a fresh test bed would race to create the role (AlreadyExists).
    static SETUP: Mutex<()> = Mutex::new(());
    let _setup = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let admin = tb.admin();
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": IMPERSONATOR},
        "rules": [
            {"apiGroups": [""], "resources": ["users", "groups", "serviceaccounts"], "verbs": ["impersonate"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["uids", "userextras/*"], "verbs": ["impersonate"]},
            // Passthrough mode reviews callers' cluster tokens.
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        ],
    });
    admin.ok_with_stdin(&["apply", "-f", "-"], role.to_string().as_bytes())?;
    admin.create_or_exists(&[
        "create",
        "clusterrolebinding",
        binding,
        &format!("--clusterrole={IMPERSONATOR}"),
        subject,
    ])
}

/// A kubeconfig for the apiserver as service account `name` of the agent's
/// namespace (created if needed), its token in a file beside it.
pub fn service_account_kubeconfig(tb: &Testbed, dir: &Path, name: &str) -> Result<PathBuf> {
    let token = tb.service_account_token(AGENT_NAMESPACE, name)?;
    token_file_kubeconfig(tb, dir, name, &token)
}

/// `NAME.kubeconfig` in `dir` for the apiserver with `token`, kept in `NAME.apiserver-token`
/// beside it (the agent reads a kubeconfig's `tokenFile`).
fn token_file_kubeconfig(tb: &Testbed, dir: &Path, name: &str, token: &str) -> Result<PathBuf> {
    let token_file = dir.join(format!("{name}.apiserver-token"));
    fs::write(&token_file, token)?;
    kubeconfig(tb, dir, name, json!({ "tokenFile": token_file }))
}

/// `NAME.kubeconfig` in `dir` for the apiserver as kubeconfig user `user`.
pub fn kubeconfig(tb: &Testbed, dir: &Path, name: &str, user: serde_json::Value) -> Result<PathBuf> {
    let kubeconfig = dir.join(format!("{name}.kubeconfig"));
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": {"server": tb.server, "certificate-authority": tb.pki.ca_cert}}],
        "users": [{"name": "agent", "user": user}],
        "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": "agent"}}],
        "current-context": "testbed",
    });
    fs::write(&kubeconfig, serde_json::to_vec_pretty(&config)?).context("writing the agent kubeconfig")?;
    Ok(kubeconfig)
}
