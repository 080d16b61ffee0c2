//! The agent's configuration file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::relay::valid_cluster_name;
use super::{TunnelConfig, Validate, resolve};
use crate::auth::IssuerConfig;

/// `hawser agent --config FILE`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Name of this agent instance in logs and audit.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// The cluster this agent serves.
    pub cluster: String,
    /// Where the relay is and how to trust it.
    pub relay: RelayEndpoint,
    /// File holding the cluster's agent token.
    pub token_file: PathBuf,
    /// How to reach kube-apiserver.
    #[serde(default)]
    pub apiserver: ApiserverConfig,
    /// Token issuers whose callers this agent accepts (checked here, not taken from the relay).
    pub issuers: Vec<IssuerConfig>,
    /// QUIC tunnel settings.
    #[serde(default)]
    pub tunnel: TunnelConfig,
    /// Reconnect backoff.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
}

/// The host (pod) name, so replicas of one cluster's agent never share a
/// name and replace each other's sessions on the relay.
fn default_instance() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("agent-{}", std::process::id()))
}

/// The relay's QUIC endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayEndpoint {
    /// `host:port` of the relay's QUIC listener.
    pub address: String,
    /// Name to verify in the relay's certificate; defaults to the host of `address`.
    pub server_name: Option<String>,
    /// PEM CA certificate(s) that sign the relay's certificate. There is no insecure mode.
    pub ca_file: PathBuf,
}

/// How the agent reaches kube-apiserver.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiserverConfig {
    /// A kubeconfig (its current context); without it, the in-cluster service account is used.
    pub kubeconfig: Option<PathBuf>,
}

/// Reconnect backoff: exponential with full jitter, reset after a stable period.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// First backoff ceiling, in milliseconds.
    pub initial_backoff_ms: u64,
    /// Largest backoff ceiling, in milliseconds.
    pub max_backoff_ms: u64,
    /// A tunnel that stayed up this long resets the backoff, in seconds.
    pub stable_after_secs: u64,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            stable_after_secs: 60,
        }
    }
}

impl Validate for AgentConfig {
    fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.relay.ca_file);
        resolve(base, &mut self.token_file);
        if let Some(kubeconfig) = &mut self.apiserver.kubeconfig {
            resolve(base, kubeconfig);
        }
        for issuer in &mut self.issuers {
            super::resolve_issuer_paths(base, issuer);
        }
    }

    fn validate(&self) -> Result<(), String> {
        self.tunnel.validate()?;
        if !valid_cluster_name(&self.cluster) {
            return Err(format!("cluster name {:?}: use 1-63 of a-z, 0-9 and '-'", self.cluster));
        }
        if self.issuers.is_empty() {
            return Err("no [[issuers]]: the agent must validate callers itself".into());
        }
        for issuer in &self.issuers {
            issuer
                .validate()
                .map_err(|e| format!("issuer {}: {e}", issuer.issuer))?;
        }
        let r = &self.reconnect;
        if r.initial_backoff_ms == 0 || r.max_backoff_ms < r.initial_backoff_ms {
            return Err("reconnect: 0 < initial_backoff_ms <= max_backoff_ms".into());
        }
        Ok(())
    }
}
