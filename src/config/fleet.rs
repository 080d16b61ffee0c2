//! A relay's place in a fleet: the shared registry (`[registry]`) and the relay-to-relay link
//! (`[peers]`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::resolve;

/// Where the relay keeps the map of which relay holds which cluster's agents.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RegistryConfig {
    /// In this relay's memory: a relay of its own (the embedded default).
    Memory {},
    /// In etcd, shared by every relay of the fleet.
    Etcd(EtcdConfig),
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self::Memory {}
    }
}

/// `[registry] kind = "etcd"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd cluster, such as `https://etcd-0.etcd:2379`.
    pub endpoints: Vec<String>,
    /// Every key the relay writes starts with this (several fleets may share one etcd).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Seconds a relay's entries outlive its last keep-alive (a dead relay's vanish after this).
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_secs: u64,
    /// PEM CA that signs etcd's serving certificate (`https://` endpoints).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, if etcd asks for one (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Seconds to wait for etcd to answer one call.
    #[serde(default = "default_etcd_timeout")]
    pub timeout_secs: u64,
}

fn default_prefix() -> String {
    "/hawser".to_owned()
}

fn default_lease_ttl() -> u64 {
    10
}

fn default_etcd_timeout() -> u64 {
    5
}

/// `[peers]`: how relays of one fleet reach each other (QUIC, mutual TLS from a fleet CA).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersConfig {
    /// UDP address the relay takes forwarded requests on, from other relays only.
    pub listen: SocketAddr,
    /// `host:port` other relays dial to reach this one; defaults to `listen` (which must then
    /// name an address, not 0.0.0.0).
    pub advertise: Option<String>,
    /// PEM CA that signs every relay's peer certificate; nothing else is accepted on the link.
    pub ca_file: PathBuf,
    /// PEM certificate of this relay, naming its `instance` as a DNS name; used both ways.
    pub cert_file: PathBuf,
    /// PEM key of `cert_file`.
    pub key_file: PathBuf,
    /// Seconds between keep-alives on a quiet peer connection.
    #[serde(default = "default_peer_keep_alive")]
    pub keep_alive_secs: u64,
    /// A peer that died is noticed at most this many seconds after its last packet: requests
    /// forwarded to it then fail with 503, and the next dial tries again.
    #[serde(default = "default_peer_idle_timeout")]
    pub idle_timeout_secs: u64,
}

fn default_peer_keep_alive() -> u64 {
    1
}

fn default_peer_idle_timeout() -> u64 {
    4
}

impl PeersConfig {
    /// The address other relays are told to dial.
    pub fn advertised(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.to_string())
    }
}

impl RegistryConfig {
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        if let Self::Etcd(etcd) = self {
            for path in [&mut etcd.ca_file, &mut etcd.cert_file, &mut etcd.key_file]
                .into_iter()
                .flatten()
            {
                resolve(base, path);
            }
        }
    }
}

impl PeersConfig {
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.ca_file);
        resolve(base, &mut self.cert_file);
        resolve(base, &mut self.key_file);
    }
}

/// Checks `[registry]` and `[peers]` together: a shared registry needs the peer link (a relay
/// that cannot forward would route nothing it learns), and the link needs a shared registry.
pub(super) fn validate(
    registry: &RegistryConfig,
    peers: Option<&PeersConfig>,
    instance: &str,
    agent_listen: SocketAddr,
) -> Result<(), String> {
    match (registry, peers) {
        (RegistryConfig::Memory {}, None) => Ok(()),
        (RegistryConfig::Memory {}, Some(_)) => {
            Err("[peers] needs a shared registry: set [registry] kind = \"etcd\" (or remove [peers])".into())
        }
        (RegistryConfig::Etcd(_), None) => Err(
            "[registry] kind = \"etcd\" needs [peers] (listen, ca_file, cert_file, key_file): relays forward to each other"
                .into(),
        ),
        (RegistryConfig::Etcd(etcd), Some(peers)) => {
            etcd.validate()?;
            peers.validate(instance, agent_listen)
        }
    }
}

impl EtcdConfig {
    fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("registry.endpoints: name at least one etcd client URL".into());
        }
        for endpoint in &self.endpoints {
            let uri: http::Uri = endpoint
                .parse()
                .map_err(|e| format!("registry.endpoints: {endpoint:?}: {e}"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
                return Err(format!(
                    "registry.endpoints: {endpoint:?} is not an http:// or https:// URL with a host"
                ));
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') || self.prefix.chars().any(char::is_control) {
            return Err("registry.prefix: starts with '/', does not end with one, no control characters".into());
        }
        if !(3..=3600).contains(&self.lease_ttl_secs) {
            return Err("registry.lease_ttl_secs: between 3 and 3600".into());
        }
        if self.timeout_secs == 0 || self.timeout_secs >= self.lease_ttl_secs {
            return Err("registry.timeout_secs: at least 1 and below lease_ttl_secs".into());
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("registry: cert_file and key_file go together".into());
        }
        Ok(())
    }
}

impl PeersConfig {
    fn validate(&self, instance: &str, agent_listen: SocketAddr) -> Result<(), String> {
        if self.listen == agent_listen
            || (self.listen.port() == agent_listen.port() && self.listen.ip().is_unspecified())
        {
            return Err("peers.listen: a port of its own, not the agents' QUIC listener".into());
        }
        if self.keep_alive_secs == 0 || self.idle_timeout_secs <= 2 * self.keep_alive_secs {
            return Err("peers.idle_timeout_secs must exceed twice peers.keep_alive_secs (> 0)".into());
        }
        if self.advertise.is_none() && self.listen.ip().is_unspecified() {
            return Err(format!(
                "peers.advertise: peers.listen is {}, which other relays cannot dial; set advertise = \"HOST:PORT\"",
                self.listen
            ));
        }
        if let Some(advertise) = &self.advertise {
            let port = advertise.rsplit_once(':').and_then(|(host, port)| {
                (!host.is_empty() && !host.chars().any(|c| c.is_control() || c.is_whitespace()))
                    .then(|| port.parse::<u16>().ok())
                    .flatten()
            });
            if port.is_none_or(|p| p == 0) {
                return Err(format!("peers.advertise: {advertise:?} is not HOST:PORT"));
            }
        }
        // Peers check each other's certificate against the instance name they advertise.
        rustls::pki_types::ServerName::try_from(instance)
            .ok()
            .filter(|name| matches!(name, rustls::pki_types::ServerName::DnsName(_)))
            .ok_or_else(|| {
                format!(
                    "instance {instance:?}: in a fleet it names this relay's peer certificate, so it must be a DNS name"
                )
            })?;
        Ok(())
    }
}
