//! `hawser cluster add NAME`: onboarding a cluster in two commands. It mints a fresh agent token,
//! prints the relay's `[[clusters]]` entry (the token's SHA-256 only: the relay never stores a
//! token), and writes the agent chart's values (the token among them, for the chart's Secret)
//! and the token on its own, both readable by their owner only; then the one `helm install` to
//! run in the cluster. Nothing is written over unless asked (`--force`): a second run would
//! otherwise replace a token the cluster already uses.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::AccessMode;
use crate::tls::Pin;

/// Why a cluster could not be onboarded.
#[derive(Debug, thiserror::Error)]
pub enum OnboardError {
    /// A name, address or option the relay or chart would refuse.
    #[error("{0}")]
    Invalid(String),
    /// A file that is there already, without `--force`.
    #[error("{} exists: it may hold a token in use; give --force to replace it, or another --out", .0.display())]
    Exists(PathBuf),
    /// The CA file, or writing the output.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// The CA file holds no certificate.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// How the agent trusts the relay: a CA's PEM, or pins of its key.
#[derive(Debug, Clone)]
pub enum RelayTrust {
    /// PEM of the CA(s) that sign the relay's certificate.
    Ca(String),
    /// Pins of the relay's key (`hawser pin`).
    Pins(Vec<Pin>),
}

/// What `hawser cluster add` was told.
#[derive(Debug, Clone)]
pub struct Onboarding {
    /// The cluster's name at the relay, a DNS-1123 label.
    pub cluster: String,
    /// The relay's `host:port` for agents.
    pub relay: String,
    /// The name the relay's certificate must carry, if not the host of `relay`.
    pub server_name: Option<String>,
    /// How the agent trusts the relay.
    pub trust: RelayTrust,
    /// Impersonation, callers' cluster tokens, or both.
    pub mode: AccessMode,
    /// The relay's `[assertions] issuer`.
    pub assertions_issuer: String,
    /// Where the agent fetches the relay's assertion key; none: the relay's well-known URL.
    pub assertions_jwks_url: Option<String>,
    /// The agent chart, as `helm install` names it.
    pub chart: String,
    /// How the relay's entry is written.
    pub entry_format: EntryFormat,
}

/// How the relay's `[[clusters]]` entry is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryFormat {
    /// A TOML table, to append to the relay's config file.
    Toml,
    /// A YAML list item, for the relay chart's `config.clusters`.
    Yaml,
}

/// What onboarding produced: the agent token and the texts to print and write.
pub struct Onboarded {
    /// The fresh agent token (for the chart's Secret; never printed).
    pub token: crate::config::Secret,
    /// The relay's `[[clusters]]` entry.
    pub relay_entry: String,
    /// The agent chart's values (YAML), the token among them.
    pub values: String,
}

impl Onboarding {
    /// Checks the options, mints a token and renders the entry and the values.
    pub fn render(&self) -> Result<Onboarded, OnboardError> {
        let invalid = |m: String| Err(OnboardError::Invalid(m));
        if !crate::config::valid_cluster_name(&self.cluster) {
            return invalid(format!(
                "cluster name {:?}: a DNS-1123 label (1-63 of a-z, 0-9 and '-', starting and ending with a letter or \
                 digit)",
                self.cluster
            ));
        }
        check_relay(&self.relay)?;
        if self.assertions_issuer.trim().is_empty() {
            return invalid("--assertions-issuer: the relay's [assertions] issuer, not empty".into());
        }
        let token = mint_token();
        let digest = crate::relay::token_digest_hex(token.expose());
        let relay_entry = match self.entry_format {
            EntryFormat::Toml => format!(
                "[[clusters]]\nname = \"{}\"\nagent_token_sha256 = \"{digest}\"\n",
                self.cluster
            ),
            EntryFormat::Yaml => format!("- name: \"{}\"\n  agent_token_sha256: \"{digest}\"\n", self.cluster),
        };
        let jwks_url = self
            .assertions_jwks_url
            .clone()
            .unwrap_or_else(|| format!("https://{}/.well-known/hawser/assertion-jwks.json", self.relay));
        if !jwks_url.starts_with("https://") {
            return invalid(format!("--assertions-jwks-url {jwks_url:?}: an https:// URL"));
        }
        let mut values = String::new();
        let q = yaml_string;
        // Infallible: writing to a String.
        let _ = write!(
            values,
            "# hawser-agent chart values written by `hawser cluster add {name}`. Holds the agent token: keep it \
             private.\ncluster: {name}\nmode: {mode}\ntoken:\n  value: {token}\n",
            name = self.cluster,
            mode = mode_name(self.mode),
            token = q(token.expose()),
        );
        if let RelayTrust::Ca(pem) = &self.trust {
            values.push_str("relayCA: |\n");
            for line in pem.trim_end().lines() {
                let _ = writeln!(values, "  {}", line.trim_end());
            }
        }
        let _ = write!(values, "config:\n  relay:\n    address: {}\n", q(&self.relay));
        if let Some(name) = &self.server_name {
            let _ = writeln!(values, "    server_name: {}", q(name));
        }
        if let RelayTrust::Pins(pins) = &self.trust {
            values.push_str("    pinned_key_sha256:\n");
            for pin in pins {
                let _ = writeln!(values, "      - {}", q(&pin.to_string()));
            }
        }
        let _ = write!(
            values,
            "  assertions:\n    issuer: {}\n    jwks_url: {}\n",
            q(&self.assertions_issuer),
            q(&jwks_url)
        );
        Ok(Onboarded {
            token,
            relay_entry,
            values,
        })
    }

    /// The one command to run against the cluster, with the values file at `values`.
    pub fn helm_install(&self, values: &Path) -> String {
        format!(
            "helm install hawser-agent {} --namespace hawser-system --create-namespace --values {}",
            self.chart,
            values.display()
        )
    }
}

/// Writes the values and the token into `dir` (created if needed), each mode 0600; refuses a file
/// that exists unless `force`. Returns the two paths.
pub fn write(dir: &Path, onboarded: &Onboarded, force: bool) -> Result<[PathBuf; 2], OnboardError> {
    let values = dir.join("values.yaml");
    let token = dir.join("agent-token");
    if !force && let Some(existing) = [&values, &token].into_iter().find(|p| p.exists()) {
        return Err(OnboardError::Exists(existing.clone()));
    }
    std::fs::create_dir_all(dir).map_err(|error| OnboardError::Io {
        path: dir.to_owned(),
        error,
    })?;
    for (path, text) in [
        (&values, &onboarded.values),
        (&token, &format!("{}\n", onboarded.token.expose())),
    ] {
        // Replaced, not truncated in place: a file made earlier with wider permissions stays so.
        if force {
            let _ = std::fs::remove_file(path);
        }
        crate::tls::write_private(path, text.as_bytes())?;
    }
    Ok([values, token])
}

/// Reads a CA file for the values: its PEM, which must hold a certificate.
pub fn read_ca(path: &Path) -> Result<String, OnboardError> {
    let pem = std::fs::read_to_string(path).map_err(|error| OnboardError::Io {
        path: path.to_owned(),
        error,
    })?;
    crate::tls::parse_certs(pem.as_bytes(), &path.display().to_string())?;
    Ok(pem)
}

/// Checks a `host:port`, which must have a port (the agent dials exactly that).
fn check_relay(relay: &str) -> Result<(), OnboardError> {
    let bad = || {
        OnboardError::Invalid(format!(
            "--relay {relay:?}: the relay's host:port for agents (e.g. relay.example.com:443, [2001:db8::1]:443)"
        ))
    };
    let (host, port) = relay.rsplit_once(':').ok_or_else(bad)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    match port.parse::<u16>() {
        Ok(p) if p != 0 && host_ok => Ok(()),
        _ => Err(bad()),
    }
}

/// A fresh agent token: 32 bytes of rand's cryptographically secure generator (seeded by the
/// operating system), base64url.
fn mint_token() -> crate::config::Secret {
    let bytes: [u8; 32] = rand::random();
    crate::config::Secret::new(data_encoding::BASE64URL_NOPAD.encode(&bytes))
}

fn mode_name(mode: AccessMode) -> &'static str {
    match mode {
        AccessMode::Identity => "identity",
        AccessMode::Passthrough => "passthrough",
        AccessMode::Both => "both",
    }
}

/// A YAML double-quoted scalar: JSON's string syntax is YAML's too.
fn yaml_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

#[cfg(test)]
mod tests;
