//! Configuration files: TOML, unknown keys refused, validated once at
//! start-up, secrets masked in `Debug`. Relative paths are resolved against
//! the directory of the file that names them. Every option is documented in
//! `docs/configuration.md`.

mod agent;
mod fleet;
pub mod login;
mod relay;
mod telemetry;

use std::path::{Path, PathBuf};

pub use agent::{
    AccessMode, AgentAssertions, AgentConfig, ApiserverConfig, Impersonates, PassthroughConfig, ReconnectConfig,
    RelayEndpoint, Transport,
};
pub use fleet::{EtcdConfig, PeersConfig, RegistryConfig};
pub use login::LoginConfig;
pub use relay::{
    AssertionsConfig, BuiltinIssuerConfig, ClusterConfig, DEMO_AGENT_TOKEN_SHA256, Digests, DrainConfig, LimitsConfig,
    RelayConfig, TlsConfig, valid_cluster_name, valid_instance_name,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
pub use telemetry::{AdminConfig, TelemetryConfig};

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("parsing {path}{at}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where in it, as `:LINE:COLUMN` (1-based; empty when the parser gave no place).
        at: String,
        /// What the parser said.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}{at}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line the message most likely speaks of, as `:LINE` (empty when no one line is).
        at: String,
        /// What is wrong.
        message: String,
    },
}

pub use crate::duration::parse_duration;

/// Reads and parses a TOML file, resolving relative paths and validating.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })?;
    let mut config: T = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        at: place(&text, &e)
            .map(|(line, column)| format!(":{line}:{column}"))
            .unwrap_or_default(),
        message: e.message().trim().replace('\n', " "),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    config.resolve_paths(base);
    config.validate().map_err(|message| ConfigError::Invalid {
        path: path.to_owned(),
        at: locate(&text, &message)
            .map(|line| format!(":{line}"))
            .unwrap_or_default(),
        message,
    })?;
    Ok(config)
}

/// Where a TOML error is: its line and column, counted from 1 (the column in characters).
fn place(text: &str, e: &toml::de::Error) -> Option<(usize, usize)> {
    let start = e.span()?.start.min(text.len());
    let before = text.get(..start)?;
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..].chars().count() + 1;
    Some((line, column))
}

/// The line a validation message most likely speaks of, counted from 1: the one line holding a
/// value it quotes, else the one line setting a key it names (`limits.max_header_bytes` is
/// `max_header_bytes = ...`). A candidate on several lines (a key every `[[clusters]]` has) is
/// no answer: no line is better than a wrong one.
fn locate(text: &str, message: &str) -> Option<usize> {
    let quoted = message
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|q| !q.is_empty())
        .map(|q| format!("\"{q}\""));
    let sets = |key: &str| {
        let key = key.rsplit('.').next().unwrap_or(key).to_owned();
        move |line: &str| {
            line.trim_start()
                .strip_prefix(key.as_str())
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        }
    };
    let keys = message
        .split(|c: char| !(c.is_ascii_lowercase() || c == '_' || c == '.'))
        .map(|w| w.trim_matches('.'))
        .filter(|w| !w.is_empty());
    let only_line = |holds: &dyn Fn(&str) -> bool| {
        let mut lines = text.lines().enumerate().filter(|(_, l)| holds(l));
        match (lines.next(), lines.next()) {
            (Some((i, _)), None) => Some(i + 1),
            _ => None,
        }
    };
    quoted
        .map(|q| only_line(&|l: &str| l.contains(q.as_str())))
        .chain(keys.map(|k| only_line(&sets(k))))
        .flatten()
        .next()
}

/// A configuration that can resolve its paths and check itself.
pub trait Validate {
    /// Makes every relative path relative to `base`.
    fn resolve_paths(&mut self, base: &Path);
    /// Checks the whole configuration once, at start-up.
    fn validate(&self) -> Result<(), String>;
}

/// Resolves `path` against `base` unless it is absolute.
pub(crate) fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

/// Resolves the file paths of an issuer's configuration.
pub(crate) fn resolve_issuer_paths(base: &Path, issuer: &mut crate::auth::IssuerConfig) {
    for path in [
        &mut issuer.jwks_file,
        &mut issuer.public_key_file,
        &mut issuer.jwks_ca_file,
    ]
    .into_iter()
    .flatten()
    {
        resolve(base, path);
    }
}

/// QUIC tunnel settings shared by relay and agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelConfig {
    /// Streams the relay may have open on one tunnel at once (the agent's accept limit).
    pub max_streams_per_tunnel: u32,
    /// Bytes a single stream may have in flight before its reader catches up.
    pub stream_receive_window: u32,
    /// Bytes all streams of one tunnel may have in flight together (also
    /// the send window); unset means unlimited, each stream bounded by its own.
    pub connection_receive_window: Option<u64>,
    /// Seconds between keep-alive packets when the tunnel is quiet.
    pub keep_alive_secs: u64,
    /// A dead peer is noticed at most this many seconds after its last packet (and at least
    /// `idle_timeout_secs - keep_alive_secs`).
    pub idle_timeout_secs: u64,
    /// Kernel buffer asked for the tunnel's UDP socket, each way, in bytes; 0 keeps the OS default.
    pub udp_buffer_bytes: usize,
    /// Relay only: the server id its QUIC connection IDs carry for balancers that route by them
    /// (16 hex digits); unset, it is derived from the relay's instance name. An agent refuses it.
    pub server_id: Option<crate::cid::ServerId>,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            max_streams_per_tunnel: 16_384,
            // As kubectl's own HTTP/2 stream window: 1 MiB held one bulk stream to about
            // 120 MB/s here, 4 MiB to about 210 (docs/benchmarks.md, "Tuning").
            stream_receive_window: 4 * 1024 * 1024,
            // Unlimited: a finite connection window lets a few stalled streams
            // (window / stream window of them) stop every stream on the tunnel.
            connection_receive_window: None,
            keep_alive_secs: 5,
            idle_timeout_secs: 20,
            udp_buffer_bytes: 4 * 1024 * 1024,
            server_id: None,
        }
    }
}

impl TunnelConfig {
    fn validate(&self) -> Result<(), String> {
        if self.max_streams_per_tunnel == 0 {
            return Err("tunnel.max_streams_per_tunnel must be at least 1".into());
        }
        let stream = u64::from(self.stream_receive_window);
        if stream < 16 * 1024 || self.connection_receive_window.is_some_and(|c| c < stream) {
            return Err("tunnel windows: stream_receive_window >= 16384 and connection_receive_window >= it".into());
        }
        if self.keep_alive_secs == 0 || self.idle_timeout_secs <= 2 * self.keep_alive_secs {
            return Err("tunnel.idle_timeout_secs must exceed twice tunnel.keep_alive_secs (> 0)".into());
        }
        Ok(())
    }
}

/// A secret read from configuration; never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Self(value)
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests;
