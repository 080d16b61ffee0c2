//! Routes: how the suite's kubectl reaches the apiserver. The baseline suite
//! runs unchanged over every route; a route only decides which kubectl binary
//! and which kubeconfig (and so which path and identity) kubectl uses.

use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};

use crate::support::binaries::{binaries, kubectl_1_32_version, pinned_kubernetes_version};
use crate::support::hawser::{Extra, Hawser};
use crate::support::process::Background;
use crate::support::proxy::HttpsProxy;
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
    /// The release this route's kubectl reports (`kubectl version --client`).
    fn kubectl_version(&self) -> Result<String> {
        pinned_kubernetes_version()
    }
    /// Baseline tests that cannot hold on this route, by name; they are not registered for it
    /// (docs/testing.md gives each one's reason).
    fn excluded(&self) -> &'static [&'static str] {
        &[]
    }
}

/// The inner route with kubectl 1.32 (`tests/testbed/kubectl-1.32`) in place of the test bed's:
/// same path, same identities, same deployment.
pub struct WithKubectl132 {
    inner: Arc<dyn Route>,
    name: &'static str,
    excluded: &'static [&'static str],
}

impl WithKubectl132 {
    /// `inner` with kubectl 1.32, named `name`, without the baseline tests in `excluded`.
    pub fn new(inner: Arc<dyn Route>, name: &'static str, excluded: &'static [&'static str]) -> Self {
        Self { inner, name, excluded }
    }
}

/// Baseline tests that use `kubectl get --raw`: kubectl before 1.34 builds that URL from the
/// server URL's scheme and host alone (kubernetes #131165), so through a server URL with a path
/// (the relay's `https://relay/clusters/NAME`) the request misses the cluster.
pub const GET_RAW_NEEDS_SERVER_PATH: &[&str] = &["get_raw_reaches_the_apiserver"];

impl Route for WithKubectl132 {
    fn name(&self) -> &'static str {
        self.name
    }

    fn admin(&self, tb: &Testbed) -> Result<(Kubectl, String)> {
        let (kubectl, user) = self.inner.admin(tb)?;
        Ok((kubectl.with_bin(&binaries()?.kubectl_1_32), user))
    }

    fn restricted(&self, tb: &Testbed, namespace: &str) -> Result<(Kubectl, String)> {
        let (kubectl, user) = self.inner.restricted(tb, namespace)?;
        Ok((kubectl.with_bin(&binaries()?.kubectl_1_32), user))
    }

    fn kubectl_version(&self) -> Result<String> {
        kubectl_1_32_version()
    }

    fn excluded(&self) -> &'static [&'static str] {
        self.excluded
    }
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

/// How a deployment's agent reaches its relay.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tunnel {
    /// QUIC (the agent's default, `auto`, finds it).
    #[default]
    Quic,
    /// `transport = "tcp"`: HTTP/2 over TLS over TCP to the relay's caller port.
    Tcp,
    /// `transport = "auto"` with the relay's QUIC port unreachable (a UDP port that swallows
    /// every datagram) and `HTTPS_PROXY` set: it falls back to TCP through a real proxy.
    TcpViaProxy,
}

/// A Hawser deployment that routes share, started on first use.
#[derive(Default)]
pub struct Deployment {
    tunnel: Tunnel,
    hawser: Mutex<Option<Result<Arc<Hawser>, String>>>,
    /// What the deployment needs alive beside it (the proxy, the black hole).
    aids: Mutex<Vec<Box<dyn Send>>>,
}

impl Deployment {
    /// A deployment whose agent reaches its relay over `tunnel`.
    pub fn over(tunnel: Tunnel) -> Self {
        Self {
            tunnel,
            ..Self::default()
        }
    }

    /// The running relay and agent, started on first call.
    pub fn get(&self, tb: &Testbed) -> Result<Arc<Hawser>> {
        let mut slot = self.hawser.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert_with(|| {
            self.start(tb)
                .map(Arc::new)
                .map_err(|e| format!("starting hawser ({:?}): {e:#}", self.tunnel))
        })
        .clone()
        .map_err(anyhow::Error::msg)
    }

    fn start(&self, tb: &Testbed) -> Result<Hawser> {
        match self.tunnel {
            Tunnel::Quic => Hawser::start(tb),
            Tunnel::Tcp => {
                let hawser = Hawser::start_with(
                    tb,
                    &Extra {
                        agent_relay: "address = \"127.0.0.1:{port}\"\ntransport = \"tcp\"",
                        ..Extra::default()
                    },
                )?;
                hawser.expect_agent_log("transport=\"tcp\"")?;
                Ok(hawser)
            }
            Tunnel::TcpViaProxy => {
                let dir = tempfile::tempdir()?;
                let proxy = HttpsProxy::start(dir.path())?;
                // Bound and never read: QUIC handshakes to it go unanswered, as where UDP is blocked.
                let black_hole = std::net::UdpSocket::bind("127.0.0.1:0")?;
                let agent_relay = format!(
                    "address = \"{quic}\"\ntcp_address = \"127.0.0.1:{{port}}\"\ntransport = \"auto\"\n\
                     quic_fallback_secs = 1\nproxy_auth_file = \"{auth}\"",
                    quic = black_hole.local_addr()?,
                    auth = proxy.auth_file.display(),
                );
                let env = [("HTTPS_PROXY", proxy.url.as_str())];
                let hawser = Hawser::start_with(
                    tb,
                    &Extra {
                        agent_relay: &agent_relay,
                        agent_env: &env,
                        ..Extra::default()
                    },
                )?;
                hawser.expect_agent_log("no QUIC handshake with the relay; using TCP")?;
                let relay_port = hawser.relay_port();
                if proxy.tunnels_to(relay_port)? == 0 {
                    bail!("the agent is up, but the proxy opened no tunnel to the relay's port {relay_port}");
                }
                self.aids.lock().unwrap().extend([
                    Box::new(proxy) as Box<dyn Send>,
                    Box::new(black_hole),
                    Box::new(dir),
                ]);
                Ok(hawser)
            }
        }
    }

    /// Stops relay and agent, and what they needed.
    pub fn shutdown(&self) {
        drop(self.hawser.lock().unwrap_or_else(|e| e.into_inner()).take());
        self.aids.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// The username and groups of the namespace-restricted caller for `namespace`.
fn restricted_caller(tb: &Testbed, namespace: &str) -> Result<String> {
    let user = format!("dev-{namespace}");
    tb.bind_role(namespace, "cluster-admin", &user)?;
    Ok(user)
}

/// kubectl → relay → agent → apiserver, with a `hawser kubeconfig` whose user runs `hawser token`;
/// the name says over which tunnel.
pub struct ViaKubeconfig(pub Arc<Deployment>, pub &'static str);

impl Route for ViaKubeconfig {
    fn name(&self) -> &'static str {
        self.1
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
