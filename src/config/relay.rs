//! The relay's configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{TunnelConfig, Validate, resolve};
use crate::auth::{AccessRule, IssuerConfig};
use crate::cid::ServerId;

/// `hawser relay --config FILE`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Name of this relay instance in logs and audit.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// TCP address of the HTTPS front door for callers.
    pub listen: SocketAddr,
    /// UDP address of the QUIC listener for agents; defaults to `listen`.
    pub agent_listen: Option<SocketAddr>,
    /// Serving certificate for both listeners.
    pub tls: TlsConfig,
    /// The relay's own token issuer (`hawser token issue`), if any.
    pub issuer: Option<BuiltinIssuerConfig>,
    /// How the relay vouches for callers to agents of clusters without a `caller_audience`.
    pub assertions: Option<AssertionsConfig>,
    /// External token issuers the relay trusts.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Who may reach which clusters; nobody may without a rule.
    #[serde(default)]
    pub access: Vec<AccessRule>,
    /// `[login]`: the identity provider `hawser login --relay` discovers here.
    #[serde(default)]
    pub login: Option<super::LoginConfig>,
    /// The clusters whose agents may connect.
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// QUIC tunnel settings.
    #[serde(default)]
    pub tunnel: TunnelConfig,
    /// Where the audit trail goes (one JSON line per request).
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// Limits on what callers may hold and send.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Where the map of clusters to relays lives: this relay's memory, or etcd for a fleet.
    #[serde(default)]
    pub registry: super::fleet::RegistryConfig,
    /// The relay-to-relay link of a fleet.
    pub peers: Option<super::fleet::PeersConfig>,
    /// How a relay stops (SIGTERM).
    #[serde(default)]
    pub drain: DrainConfig,
    /// OpenTelemetry traces and metrics.
    #[serde(default)]
    pub telemetry: super::TelemetryConfig,
    /// The admin listener (`/metrics`), never the callers' port.
    #[serde(default)]
    pub admin: super::AdminConfig,
}

/// `[drain]`: what a relay does between SIGTERM and its exit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Seconds the relay keeps accepting callers after SIGTERM while `/readyz` fails, for a
    /// balancer's health checks to take it out (0: it stops accepting at once).
    pub grace_secs: u64,
    /// Seconds, after that, for exchanges in flight to finish and (in a fleet) agents to move
    /// before the rest is closed. 30 by default: 10,000 agents moving off one relay of a fleet
    /// on 2 cores took up to 19 s (docs/benchmarks.md); a drain ends as soon as all is done.
    pub timeout_secs: u64,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            grace_secs: 0,
            timeout_secs: 30,
        }
    }
}

fn default_instance() -> String {
    "relay".to_owned()
}

/// Limits on callers at the front door; every default is documented in docs/configuration.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Exchanges one caller may have in flight at once (watches, exec, port-forward included); 0: no limit.
    pub max_streams_per_caller: usize,
    /// How long a request waits for a free stream on a saturated tunnel before 503, in seconds.
    pub open_stream_timeout_secs: u64,
    /// Largest request head (HTTP/1.1) or header list (HTTP/2), in bytes.
    pub max_header_bytes: usize,
    /// How long a caller has to send a request's headers (slowloris), in seconds.
    pub header_read_timeout_secs: u64,
    /// How long a caller connection may hold no request before it is closed, in seconds.
    pub idle_connection_timeout_secs: u64,
    /// How long a response (other than an admitted watch, follow or upgrade) may wait on the
    /// caller to take it before its connection is closed, in seconds.
    pub response_stall_timeout_secs: u64,
    /// Concurrent HTTP/2 streams per caller connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a caller may reset before the server has accepted them, before GOAWAY (rapid reset).
    pub h2_max_pending_reset_streams: usize,
    /// HTTP/2 streams the server may reset for protocol errors on one connection before GOAWAY.
    pub h2_max_local_error_resets: usize,
    /// Failed authentications per source address per minute (also the burst); 0: no limit.
    pub auth_failures_per_minute: u32,
    /// Refused agent hellos (wrong token, unknown cluster) per source address per minute (also
    /// the burst); past it the source's attempts go unanswered. 0: no limit.
    pub agent_hello_failures_per_minute: u32,
    /// Agent connections from one source address that have finished the QUIC handshake but not
    /// yet their hello; more are closed at once.
    pub agent_unproven_per_source: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_streams_per_caller: 1000,
            open_stream_timeout_secs: 10,
            max_header_bytes: 64 * 1024,
            header_read_timeout_secs: 30,
            idle_connection_timeout_secs: 120,
            response_stall_timeout_secs: 60,
            h2_max_concurrent_streams: 1000,
            h2_max_pending_reset_streams: 20,
            h2_max_local_error_resets: 1024,
            auth_failures_per_minute: 60,
            agent_hello_failures_per_minute: 30,
            agent_unproven_per_source: 64,
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), String> {
        if !(8192..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err("limits.max_header_bytes: between 8192 and 1048576".into());
        }
        if self.header_read_timeout_secs == 0
            || self.open_stream_timeout_secs == 0
            || self.idle_connection_timeout_secs == 0
            || self.response_stall_timeout_secs == 0
        {
            return Err(
                "limits: header_read_timeout_secs, open_stream_timeout_secs, idle_connection_timeout_secs and \
                 response_stall_timeout_secs must be at least 1"
                    .into(),
            );
        }
        if self.agent_unproven_per_source == 0 {
            return Err("limits.agent_unproven_per_source must be at least 1".into());
        }
        if self.h2_max_concurrent_streams == 0
            || self.h2_max_pending_reset_streams == 0
            || self.h2_max_local_error_resets == 0
        {
            return Err("limits: the h2_* limits must be at least 1 (there is no unlimited)".into());
        }
        Ok(())
    }
}

/// The relay's serving certificate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// Generate a self-signed certificate into the two files if they do not exist.
    #[serde(default)]
    pub generate_self_signed: bool,
    /// DNS names and IP addresses of a generated certificate.
    #[serde(default = "default_names")]
    pub self_signed_names: Vec<String>,
}

fn default_names() -> Vec<String> {
    vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
}

/// The relay's own issuer of caller tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltinIssuerConfig {
    /// The `iss` of issued tokens, typically the relay's URL.
    pub issuer: String,
    /// The `aud` of issued tokens.
    pub audience: String,
    /// PKCS#8 PEM ES256 signing key.
    pub signing_key_file: PathBuf,
    /// Generate the signing key if the file does not exist.
    #[serde(default)]
    pub generate: bool,
    /// Prefix put before every username from these tokens (needed beside `[[issuers]]`).
    #[serde(default)]
    pub username_prefix: String,
    /// Prefix put before every group from these tokens (needed beside `[[issuers]]`).
    #[serde(default)]
    pub groups_prefix: String,
    /// Longest lifetime of a token from this issuer, such as `1h` or `7d`.
    #[serde(default = "default_max_token_lifetime")]
    pub max_token_lifetime: String,
}

fn default_max_token_lifetime() -> String {
    crate::auth::DEFAULT_MAX_TOKEN_LIFETIME.to_owned()
}

impl BuiltinIssuerConfig {
    /// The issuer this configures: its key loaded (or generated, with `generate`) and its naming
    /// rules set. The relay's own use.
    pub fn load(&self) -> Result<crate::auth::BuiltinIssuer, crate::auth::IssuerError> {
        self.load_key(self.generate)
    }

    /// Like [`Self::load`], but never generating the key: a key made anywhere but at the relay
    /// would sign tokens no relay accepts (`hawser token issue --config`).
    pub fn load_existing(&self) -> Result<crate::auth::BuiltinIssuer, crate::auth::IssuerError> {
        self.load_key(false)
    }

    fn load_key(&self, generate: bool) -> Result<crate::auth::BuiltinIssuer, crate::auth::IssuerError> {
        let lifetime = super::parse_duration(&self.max_token_lifetime)
            .map_err(|_| crate::auth::IssuerError::InvalidClaim("max_token_lifetime"))?;
        Ok(crate::auth::BuiltinIssuer::load_or_generate(
            &self.signing_key_file,
            self.issuer.clone(),
            self.audience.clone(),
            generate,
        )?
        .with_naming(&self.username_prefix, &self.groups_prefix)
        .with_max_lifetime(lifetime))
    }
}

/// How the relay vouches for callers: `[assertions]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionsConfig {
    /// The `iss` of assertions; agents name it in their `[assertions]`. Must differ from every
    /// callers' issuer.
    pub issuer: String,
    /// PKCS#8 PEM ES256 key that signs assertions; a key of its own (not the TLS key, not the
    /// built-in issuer's).
    pub signing_key_file: PathBuf,
    /// Generate the key if the file does not exist.
    #[serde(default)]
    pub generate: bool,
    /// How long an assertion is valid, such as `5m` (at most `1h`); it is reused while more than
    /// half of it is left.
    #[serde(default = "default_assertion_lifetime")]
    pub lifetime: String,
}

fn default_assertion_lifetime() -> String {
    "5m".to_owned()
}

impl AssertionsConfig {
    /// The lifetime as a duration (validated at start).
    pub fn lifetime(&self) -> std::time::Duration {
        super::parse_duration(&self.lifetime).unwrap_or(crate::auth::assertion::MAX_LIFETIME)
    }
}

/// A cluster whose agent may register.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name, the first path segment of its URL on the relay.
    pub name: String,
    /// Hex SHA-256 of the cluster's agent token, or a list of them (to stage a rotation); the
    /// tokens themselves are never stored.
    pub agent_token_sha256: Digests,
    /// If set, the cluster's agent gets the caller's own token, which must carry this audience
    /// (and no other cluster's): the agent validates it against its own issuers and the relay
    /// cannot mint an identity there. If unset, the agent gets relay assertions.
    pub caller_audience: Option<String>,
}

/// One hex SHA-256 or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Digests {
    /// One digest.
    One(String),
    /// Several digests; any of their tokens is accepted.
    Many(Vec<String>),
}

impl Digests {
    /// Every digest, as written.
    pub fn all(&self) -> Vec<&str> {
        match self {
            Self::One(one) => vec![one.as_str()],
            Self::Many(many) => many.iter().map(String::as_str).collect(),
        }
    }
}

/// SHA-256 of the demo agent token shipped in `config/agent-token`: public, so it is refused
/// unless the relay listens on loopback only.
pub const DEMO_AGENT_TOKEN_SHA256: &str = "42ee490b296f7afc2032ae124a2d77e4dff20b5c20bfe20f00f72968b77a3b7f";

impl Validate for RelayConfig {
    fn resolve_paths(&mut self, base: &Path) {
        self.audit.resolve(base);
        resolve(base, &mut self.tls.cert_file);
        resolve(base, &mut self.tls.key_file);
        if let Some(issuer) = &mut self.issuer {
            resolve(base, &mut issuer.signing_key_file);
        }
        if let Some(assertions) = &mut self.assertions {
            resolve(base, &mut assertions.signing_key_file);
        }
        for issuer in &mut self.issuers {
            super::resolve_issuer_paths(base, issuer);
        }
        self.registry.resolve_paths(base);
        if let Some(peers) = &mut self.peers {
            peers.resolve_paths(base);
        }
    }

    fn validate(&self) -> Result<(), String> {
        self.tunnel.validate()?;
        self.audit.validate()?;
        self.limits.validate()?;
        self.telemetry.validate()?;
        self.admin.validate(&[self.listen])?;
        if self.drain.timeout_secs == 0 || self.drain.grace_secs > 3600 || self.drain.timeout_secs > 3600 {
            return Err("drain: timeout_secs between 1 and 3600, grace_secs at most 3600".into());
        }
        if self.issuer.is_none() && self.issuers.is_empty() {
            return Err("no token issuer: configure [issuer] or [[issuers]]".into());
        }
        if let Some(issuer) = &self.issuer {
            super::parse_duration(&issuer.max_token_lifetime).map_err(|e| format!("issuer.max_token_lifetime: {e}"))?;
            if [&issuer.username_prefix, &issuer.groups_prefix]
                .iter()
                .any(|p| p.chars().any(char::is_control))
            {
                return Err("issuer: username_prefix and groups_prefix cannot hold control characters".into());
            }
        }
        for issuer in &self.issuers {
            issuer
                .validate()
                .map_err(|e| format!("issuer {}: {e}", issuer.issuer))?;
        }
        crate::auth::AccessRules::new(self.access.clone()).map_err(|e| format!("access rules: {e}"))?;
        if let Some(login) = &self.login {
            login.validate(&self.issuers)?;
        }
        valid_instance_name(&self.instance)
            .then_some(())
            .ok_or("instance: use 1-253 of A-Z, a-z, 0-9, '.', '_' and '-'")?;
        self.validate_assertions()?;
        super::fleet::validate(
            &self.registry,
            self.peers.as_ref(),
            &self.instance,
            self.agent_listen.unwrap_or(self.listen),
        )?;
        self.validate_clusters()
    }
}

impl RelayConfig {
    /// The server id the relay's QUIC connection IDs carry: `tunnel.server_id`, or one derived
    /// from `instance`.
    pub fn server_id(&self) -> ServerId {
        self.tunnel
            .server_id
            .unwrap_or_else(|| ServerId::from_instance(&self.instance))
    }

    /// Every audience a callers' issuer of this relay accepts.
    fn caller_audiences(&self) -> Vec<&str> {
        let builtin = self.issuer.iter().map(|i| i.audience.as_str());
        let external = self.issuers.iter().flat_map(|i| i.audiences.iter().map(String::as_str));
        builtin.chain(external).collect()
    }

    fn validate_assertions(&self) -> Result<(), String> {
        let Some(assertions) = &self.assertions else {
            if let Some(cluster) = self.clusters.iter().find(|c| c.caller_audience.is_none()) {
                return Err(format!(
                    "cluster {}: without a caller_audience its agent gets relay assertions; configure [assertions] \
                     (or give the cluster a caller_audience)",
                    cluster.name
                ));
            }
            return Ok(());
        };
        let issuer = &assertions.issuer;
        if issuer.is_empty() || issuer.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("assertions.issuer: empty, or holds whitespace or control characters".into());
        }
        let callers = self
            .issuer
            .iter()
            .map(|i| &i.issuer)
            .chain(self.issuers.iter().map(|i| &i.issuer));
        if let Some(clash) = callers.into_iter().find(|c| *c == issuer) {
            return Err(format!(
                "assertions.issuer {clash:?} is also a callers' issuer: an assertion must never pass as a caller's token"
            ));
        }
        match super::parse_duration(&assertions.lifetime) {
            Ok(d) if d <= crate::auth::assertion::MAX_LIFETIME => Ok(()),
            Ok(_) => Err("assertions.lifetime: at most 1h".into()),
            Err(e) => Err(format!("assertions.lifetime: {e}")),
        }
    }

    fn validate_clusters(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        let mut audiences = std::collections::HashMap::new();
        let loopback_only = self.listen.ip().is_loopback() && self.agent_listen.is_none_or(|a| a.ip().is_loopback());
        for cluster in &self.clusters {
            if !valid_cluster_name(&cluster.name) {
                return Err(format!("cluster name {:?}: use 1-63 of a-z, 0-9 and '-'", cluster.name));
            }
            if !seen.insert(&cluster.name) {
                return Err(format!("cluster {} is listed twice", cluster.name));
            }
            let digests = cluster.agent_token_sha256.all();
            if digests.is_empty() {
                return Err(format!("cluster {}: agent_token_sha256 is empty", cluster.name));
            }
            for hex in digests {
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!(
                        "cluster {}: agent_token_sha256 must be 64 hex digits",
                        cluster.name
                    ));
                }
                if hex.eq_ignore_ascii_case(DEMO_AGENT_TOKEN_SHA256) && !loopback_only {
                    return Err(format!(
                        "cluster {}: agent_token_sha256 is the demo token's, which is public (config/agent-token); \
                         it is accepted only while the relay listens on loopback. Make a token of your own: \
                         head -c 32 /dev/urandom | base64 > agent-token; tr -d '\\n' < agent-token | sha256sum",
                        cluster.name
                    ));
                }
            }
            if let Some(audience) = &cluster.caller_audience {
                if let Some(other) = audiences.insert(audience.as_str(), &cluster.name) {
                    return Err(format!(
                        "clusters {other} and {} share caller_audience {audience:?}: a token for one would be good at the other",
                        cluster.name
                    ));
                }
                if self.issuer.as_ref().is_some_and(|i| &i.audience == audience) {
                    return Err(format!(
                        "cluster {}: caller_audience {audience:?} is the built-in issuer's own audience, so every \
                         token it issues would be bound to this cluster; give the cluster an audience of its own",
                        cluster.name
                    ));
                }
                if !self.caller_audiences().contains(&audience.as_str()) {
                    return Err(format!(
                        "cluster {}: no callers' issuer accepts caller_audience {audience:?}; add it to an issuer's audiences",
                        cluster.name
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether `name` is a valid instance name (relay or agent): a host or pod name.
pub fn valid_instance_name(name: &str) -> bool {
    (1..=253).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Whether `name` is a valid cluster name (a DNS label).
pub fn valid_cluster_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}
