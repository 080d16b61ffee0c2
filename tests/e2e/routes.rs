//! Routes: how the suite's kubectl reaches the apiserver. The baseline suite
//! runs unchanged over every route; a route only decides which kubeconfig
//! (and so which path and identity) kubectl uses.

use anyhow::Result;

use crate::support::{Kubectl, Testbed};

/// One way for kubectl to reach the cluster.
pub trait Route: Send + Sync {
    /// Name used as the test-name prefix.
    fn name(&self) -> &'static str;
    /// kubectl as a cluster administrator, and the username the apiserver sees for it.
    fn admin(&self, tb: &Testbed) -> Result<(Kubectl, String)>;
    /// kubectl as an identity that may edit `namespace` and nothing else,
    /// and the username the apiserver sees for it.
    fn restricted(&self, tb: &Testbed, namespace: &str) -> Result<(Kubectl, String)>;
}

/// Straight to kube-apiserver: the baseline every other route must match.
pub struct Direct;

impl Route for Direct {
    fn name(&self) -> &'static str {
        "direct"
    }

    fn admin(&self, tb: &Testbed) -> Result<(Kubectl, String)> {
        Ok((tb.admin(), "admin".to_owned()))
    }

    fn restricted(&self, tb: &Testbed, namespace: &str) -> Result<(Kubectl, String)> {
        let token = tb.service_account_token(namespace, "restricted")?;
        let user = format!("system:serviceaccount:{namespace}:restricted");
        // A RoleBinding to cluster-admin: everything in this namespace, nothing elsewhere.
        // (The aggregated edit/admin roles stay empty without a controller-manager.)
        tb.bind_role(namespace, "cluster-admin", &user)?;
        let kubeconfig = tb.token_kubeconfig(&format!("{namespace}-restricted"), &token)?;
        Ok((Kubectl::new(tb.kubectl_bin(), &kubeconfig), user))
    }
}
