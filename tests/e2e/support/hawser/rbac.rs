//! The Kubernetes side of a deployment: the callers' administrator binding, and the agent's
//! service account allowed to impersonate, with a kubeconfig for it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde_json::json;

use super::super::Testbed;

/// The agent's service account.
const AGENT_NAMESPACE: &str = "hawser-system";
const AGENT_SA: &str = "hawser-agent";

/// Makes the callers' user `hawser-admin` a cluster administrator.
pub fn bind_admin(tb: &Testbed) -> Result<()> {
    tb.admin().create_or_exists(&[
        "create",
        "clusterrolebinding",
        "hawser-admin",
        "--clusterrole=cluster-admin",
        "--user=hawser-admin",
    ])
}

/// A service account that may impersonate, and a kubeconfig for it.
pub fn agent_kubeconfig(tb: &Testbed, dir: &Path) -> Result<PathBuf> {
    // Deployments started at once on a fresh test bed would race to create the role (AlreadyExists).
    static SETUP: Mutex<()> = Mutex::new(());
    let _setup = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let admin = tb.admin();
    admin.create_or_exists(&["create", "namespace", AGENT_NAMESPACE])?;
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "hawser-impersonator"},
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
        "hawser-impersonator",
        "--clusterrole=hawser-impersonator",
        &format!("--serviceaccount={AGENT_NAMESPACE}:{AGENT_SA}"),
    ])?;
    service_account_kubeconfig(tb, dir, AGENT_SA)
}

/// A kubeconfig for the apiserver as service account `name` of the agent's
/// namespace (created if needed), its token in a file beside it.
pub fn service_account_kubeconfig(tb: &Testbed, dir: &Path, name: &str) -> Result<PathBuf> {
    let token = tb.service_account_token(AGENT_NAMESPACE, name)?;
    let token_file = dir.join(format!("{name}.apiserver-token"));
    fs::write(&token_file, token)?;
    let kubeconfig = dir.join(format!("{name}.kubeconfig"));
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": {"server": tb.server, "certificate-authority": tb.pki.ca_cert}}],
        "users": [{"name": "agent", "user": {"tokenFile": token_file}}],
        "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": "agent"}}],
        "current-context": "testbed",
    });
    fs::write(&kubeconfig, serde_json::to_vec_pretty(&config)?).context("writing the agent kubeconfig")?;
    Ok(kubeconfig)
}
