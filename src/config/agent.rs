//! The agent's configuration file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::relay::valid_cluster_name;
use super::{TunnelConfig, Validate, resolve};
use crate::auth::IssuerConfig;
use crate::tls::Pin;

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
    /// Trust the relay to vouch for callers: assertions it signs, bound to this cluster. Set this
    /// or `issuers`, not both.
    pub assertions: Option<AgentAssertions>,
    /// Token issuers whose callers' own tokens this agent accepts (each audience bound to this
    /// cluster); no relay can then mint an identity here. Set this or `assertions`, not both.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// QUIC tunnel settings.
    #[serde(default)]
    pub tunnel: TunnelConfig,
    /// Where the audit trail goes (one JSON line per request).
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// Reconnect backoff.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// How callers' requests reach the apiserver: impersonation, their own cluster token, or both.
    #[serde(default)]
    pub mode: AccessMode,
    /// How passthrough cluster tokens are checked.
    #[serde(default)]
    pub passthrough: PassthroughConfig,
    /// OpenTelemetry traces and metrics.
    #[serde(default)]
    pub telemetry: super::TelemetryConfig,
    /// The admin listener (`/metrics`).
    #[serde(default)]
    pub admin: super::AdminConfig,
}

/// `[assertions]`: the relay's assertion issuer and where its public key comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentAssertions {
    /// The relay's `[assertions] issuer`.
    pub issuer: String,
    /// JWKS file with the relay's assertion key (pinned: the strongest choice).
    pub jwks_file: Option<PathBuf>,
    /// PEM public key file with the relay's assertion key.
    pub public_key_file: Option<PathBuf>,
    /// HTTPS URL of the relay's assertion JWKS (`https://RELAY/.well-known/hawser/assertion-jwks.json`).
    pub jwks_url: Option<String>,
    /// PEM CA bundle trusted for `jwks_url` instead of the system roots.
    pub jwks_ca_file: Option<PathBuf>,
    /// Accept `system:` users and groups in assertions (off by default).
    #[serde(default)]
    pub allow_system_names: bool,
}

impl AgentConfig {
    /// The issuers this agent's authenticator trusts: the relay's assertions, or `issuers`.
    pub fn caller_issuers(&self) -> Vec<IssuerConfig> {
        match &self.assertions {
            Some(a) => {
                let mut config = IssuerConfig::relay_assertions(a.issuer.clone(), &self.cluster);
                config.jwks_file.clone_from(&a.jwks_file);
                config.public_key_file.clone_from(&a.public_key_file);
                config.jwks_url.clone_from(&a.jwks_url);
                config.jwks_ca_file.clone_from(&a.jwks_ca_file);
                config.allow_system_names = a.allow_system_names;
                vec![config]
            }
            None => self.issuers.clone(),
        }
    }

    /// What the agent impersonates beyond users and groups, as far as its own configuration
    /// tells: uids and extra keys where its `[[issuers]]` map them (with `[assertions]` the relay's
    /// issuers decide, which the agent cannot see), and service accounts where a caller may be
    /// named `system:serviceaccount:...` (`allow_system_names`).
    pub fn impersonates(&self) -> Impersonates {
        Impersonates {
            uids: self.issuers.iter().any(|i| i.uid_claim.is_some()),
            extra_keys: self
                .issuers
                .iter()
                .flat_map(|i| i.extra_claims.keys().cloned())
                .collect(),
            service_accounts: self.caller_issuers().iter().any(|i| i.allow_system_names),
        }
    }

    /// What this agent tells the relay it accepts.
    pub fn accepts(&self) -> crate::proto::Accepts {
        match &self.assertions {
            Some(a) => crate::proto::Accepts::Assertion {
                issuer: a.issuer.clone(),
            },
            None => {
                let mut audiences: Vec<String> = self.issuers.iter().flat_map(|i| i.audiences.clone()).collect();
                audiences.sort();
                audiences.dedup();
                crate::proto::Accepts::CallerToken { audiences }
            }
        }
    }
}

/// What the agent impersonates beyond users and groups, so which rights it needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Impersonates {
    /// Uids (`impersonate uids` in `authentication.k8s.io`).
    pub uids: bool,
    /// Extra keys (`impersonate userextras/KEY` each).
    pub extra_keys: Vec<String>,
    /// Service accounts (`impersonate serviceaccounts`, core group), for `system:serviceaccount:`
    /// names.
    pub service_accounts: bool,
}

/// How a caller's request is authorized at the apiserver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// The agent impersonates the caller named by the relay JWT (the default).
    #[default]
    Identity,
    /// The caller must bring a cluster token (`hawser proxy --cluster-token-file`); it is forwarded as is.
    Passthrough,
    /// A request with a cluster token is passed through; one without is impersonated.
    Both,
}

impl AccessMode {
    /// Whether requests carrying a cluster token are accepted.
    pub fn allows_passthrough(self) -> bool {
        matches!(self, Self::Passthrough | Self::Both)
    }

    /// Whether requests without a cluster token are impersonated.
    pub fn allows_identity(self) -> bool {
        matches!(self, Self::Identity | Self::Both)
    }
}

/// How passthrough cluster tokens are checked (a TokenReview before use).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassthroughConfig {
    /// Audiences the token must carry (TokenReview `spec.audiences`); empty means the apiserver's own.
    pub audiences: Vec<String>,
    /// How long a review's answer (accepted or refused) is reused for the same token, in seconds
    /// (0: concurrent identical reviews still share one, nothing is kept after).
    pub cache_secs: u64,
    /// TokenReviews one caller (relay identity) may cause per minute, also the burst; 0: no limit.
    pub reviews_per_caller_per_minute: u32,
}

impl Default for PassthroughConfig {
    fn default() -> Self {
        Self {
            audiences: Vec::new(),
            cache_secs: 10,
            reviews_per_caller_per_minute: 60,
        }
    }
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

/// Where the relay is, how to reach it and how to trust it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayEndpoint {
    /// `host:port` of the relay's QUIC listener.
    pub address: String,
    /// QUIC, TLS over TCP, or QUIC with a fall-back to TCP (the default).
    #[serde(default)]
    pub transport: Transport,
    /// `host:port` of the relay's TCP port (its callers' port); defaults to `address`.
    pub tcp_address: Option<String>,
    /// HTTP proxy for the TCP transport (`http://host:port`), reached with CONNECT; unset, the
    /// `HTTPS_PROXY`/`https_proxy`/`ALL_PROXY` and `NO_PROXY` environment variables decide.
    pub proxy: Option<String>,
    /// File holding `user:password` for the proxy (basic authentication).
    pub proxy_auth_file: Option<PathBuf>,
    /// How long `auto` waits for a QUIC handshake before it uses TCP, in seconds.
    #[serde(default = "default_quic_fallback_secs")]
    pub quic_fallback_secs: u64,
    /// How often `auto`, while on TCP, tries QUIC again, in seconds.
    #[serde(default = "default_quic_probe_secs")]
    pub quic_probe_secs: u64,
    /// Name sent to the relay (SNI) and, with `ca_file`, verified in its
    /// certificate; defaults to the host of `address`.
    pub server_name: Option<String>,
    /// PEM CA certificate(s) that sign the relay's certificate.
    pub ca_file: Option<PathBuf>,
    /// Base64 SHA-256 of the relay certificate's SubjectPublicKeyInfo; any
    /// one of them matches (several stage a key rotation). With `ca_file`
    /// too, both must hold. At least one of the two; there is no insecure mode.
    #[serde(default)]
    pub pinned_key_sha256: Vec<Pin>,
    /// Tunnels to hold, each to a distinct relay of a fleet (through a balancer the agent dials
    /// again until they are distinct); unset: 1, or 2 once a relay says it is one of a fleet.
    pub connections: Option<u8>,
}

/// How the agent's tunnel travels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC; TCP when no QUIC handshake completes within `quic_fallback_secs`, and QUIC again
    /// once a probe succeeds.
    #[default]
    Auto,
    /// QUIC only (UDP).
    Quic,
    /// HTTP/2 over TLS over TCP only, through `proxy` if one applies.
    Tcp,
}

fn default_quic_fallback_secs() -> u64 {
    3
}

fn default_quic_probe_secs() -> u64 {
    300
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
        self.audit.resolve(base);
        for path in [&mut self.relay.ca_file, &mut self.relay.proxy_auth_file]
            .into_iter()
            .flatten()
        {
            resolve(base, path);
        }
        resolve(base, &mut self.token_file);
        if let Some(kubeconfig) = &mut self.apiserver.kubeconfig {
            resolve(base, kubeconfig);
        }
        for issuer in &mut self.issuers {
            super::resolve_issuer_paths(base, issuer);
        }
        if let Some(a) = &mut self.assertions {
            for path in [&mut a.jwks_file, &mut a.public_key_file, &mut a.jwks_ca_file]
                .into_iter()
                .flatten()
            {
                resolve(base, path);
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        self.tunnel.validate()?;
        if self.tunnel.server_id.is_some() {
            // Only the relay's connection IDs are routed by a balancer; silently ignoring it
            // would hide a file meant for the relay.
            return Err("tunnel.server_id is a relay setting; remove it from the agent's file".into());
        }
        self.audit.validate()?;
        self.telemetry.validate()?;
        self.admin.validate(&[])?;
        if self.relay.ca_file.is_none() && self.relay.pinned_key_sha256.is_empty() {
            return Err("relay: set ca_file, pinned_key_sha256 or both; there is no insecure mode".into());
        }
        let relay = &self.relay;
        if relay.connections.is_some_and(|n| !(1..=8).contains(&n)) {
            return Err("relay.connections: between 1 and 8".into());
        }
        if relay.quic_fallback_secs == 0 || relay.quic_probe_secs < 10 {
            return Err("relay: quic_fallback_secs must be at least 1 and quic_probe_secs at least 10".into());
        }
        if let Some(proxy) = &relay.proxy {
            // Checked first, so no message below can repeat a password.
            if proxy.contains('@') {
                return Err("relay.proxy: put the proxy's credentials in proxy_auth_file, not in the URL".into());
            }
            let uri: http::Uri = proxy.parse().map_err(|e| format!("relay.proxy {proxy:?}: {e}"))?;
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(format!(
                    "relay.proxy {proxy:?}: use http://host:port (CONNECT is sent to it)"
                ));
            }
        }
        if !valid_cluster_name(&self.cluster) {
            return Err(format!("cluster name {:?}: use 1-63 of a-z, 0-9 and '-'", self.cluster));
        }
        if !super::relay::valid_instance_name(&self.instance) {
            return Err("instance: use 1-253 of A-Z, a-z, 0-9, '.', '_' and '-'".into());
        }
        match (&self.assertions, self.issuers.is_empty()) {
            (None, true) => {
                return Err(
                    "set [assertions] (the relay vouches for callers) or [[issuers]] (callers' own tokens, \
                     bound to this cluster by audience): docs/security.md"
                        .into(),
                );
            }
            (Some(_), false) => {
                return Err("set [assertions] or [[issuers]], not both: one trust model per cluster".into());
            }
            _ => {}
        }
        for issuer in self.caller_issuers() {
            issuer
                .validate()
                .map_err(|e| format!("issuer {}: {e}", issuer.issuer))?;
        }
        if self.passthrough.audiences.iter().any(|a| a.is_empty()) {
            return Err("passthrough.audiences: an audience cannot be empty".into());
        }
        if self.passthrough.cache_secs > 300 {
            return Err("passthrough.cache_secs: at most 300, so a revoked token stops working soon".into());
        }
        let r = &self.reconnect;
        if r.initial_backoff_ms == 0 || r.max_backoff_ms < r.initial_backoff_ms {
            return Err("reconnect: 0 < initial_backoff_ms <= max_backoff_ms".into());
        }
        Ok(())
    }
}
