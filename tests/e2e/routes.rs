//! Routes: how the suite's kubectl reaches the apiserver. The baseline suite
//! runs unchanged over every route; a route only decides which kubeconfig
//! (and so which path and identity) kubectl uses.

use std::sync::{Arc, Mutex};

use anyhow::Result;

use crate::support::hawser::Hawser;
use crate::support::process::Background;
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

/// The Hawser deployment the tunnel routes share, started on first use.
#[derive(Default)]
pub struct Deployment {
    hawser: Mutex<Option<Result<Arc<Hawser>, String>>>,
}

impl Deployment {
    /// The running relay and agent, started on first call.
    pub fn get(&self, tb: &Testbed) -> Result<Arc<Hawser>> {
        let mut slot = self.hawser.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert_with(|| {
            Hawser::start(tb)
                .map(Arc::new)
                .map_err(|e| format!("starting hawser: {e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
    }

    /// Stops relay and agent.
    pub fn shutdown(&self) {
        drop(self.hawser.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

/// The username and groups of the namespace-restricted caller for `namespace`.
fn restricted_caller(tb: &Testbed, namespace: &str) -> Result<String> {
    let user = format!("dev-{namespace}");
    tb.bind_role(namespace, "cluster-admin", &user)?;
    Ok(user)
}

/// kubectl → relay → agent → apiserver, with a `hawser kubeconfig` whose user runs `hawser token`.
pub struct ViaKubeconfig(pub Arc<Deployment>);

impl Route for ViaKubeconfig {
    fn name(&self) -> &'static str {
        "kubeconfig"
    }

    fn admin(&self, tb: &Testbed) -> Result<(Kubectl, String)> {
        Ok((
            self.0.get(tb)?.kubeconfig_route("hawser-admin", &[])?,
            "hawser-admin".into(),
        ))
    }

    fn restricted(&self, tb: &Testbed, namespace: &str) -> Result<(Kubectl, String)> {
        let user = restricted_caller(tb, namespace)?;
        Ok((self.0.get(tb)?.kubeconfig_route(&user, &["dev"])?, user))
    }
}

/// kubectl → `hawser proxy` on 127.0.0.1 → relay → agent → apiserver.
pub struct ViaProxy {
    deployment: Arc<Deployment>,
    proxies: Mutex<Vec<Background>>,
}

impl ViaProxy {
    /// A proxy route on the shared deployment.
    pub fn new(deployment: Arc<Deployment>) -> Self {
        Self {
            deployment,
            proxies: Mutex::new(Vec::new()),
        }
    }

    fn proxy_for(&self, tb: &Testbed, subject: &str, groups: &[&str]) -> Result<Kubectl> {
        let (proxy, kubectl) = self.deployment.get(tb)?.proxy(subject, groups, &[])?;
        self.proxies.lock().unwrap().push(proxy);
        Ok(kubectl)
    }
}

impl Route for ViaProxy {
    fn name(&self) -> &'static str {
        "proxy"
    }

    fn admin(&self, tb: &Testbed) -> Result<(Kubectl, String)> {
        Ok((self.proxy_for(tb, "hawser-admin", &[])?, "hawser-admin".into()))
    }

    fn restricted(&self, tb: &Testbed, namespace: &str) -> Result<(Kubectl, String)> {
        let user = restricted_caller(tb, namespace)?;
        Ok((self.proxy_for(tb, &user, &["dev"])?, user))
    }
}
