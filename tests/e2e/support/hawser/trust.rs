//! The trust models an e2e deployment can run (docs/security.md), and the config lines each
//! needs at the relay and at the agent.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use super::super::process::run_with_deadline;
use super::{CLUSTER, hawser_bin};

/// The trust model of a deployment (docs/security.md).
#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The relay vouches with assertions; callers' tokens come from its built-in issuer.
    #[default]
    Assertions,
    /// Callers bring tokens from an issuer whose key the relay never holds, bound to one cluster
    /// by audience ([`EXTERNAL_ISSUER`], [`cluster_audience`]); the agent checks them itself.
    CallerTokens,
}

/// The `iss` of the external issuer in [`Trust::CallerTokens`] deployments.
pub const EXTERNAL_ISSUER: &str = "https://idp.e2e.invalid";

/// The caller audience of `cluster` in [`Trust::CallerTokens`] deployments.
pub fn cluster_audience(cluster: &str) -> String {
    format!("https://relay.e2e.invalid/clusters/{cluster}")
}

/// The relay's callers' issuers and how it vouches for them, for `trust`.
pub(super) fn relay_callers(trust: Trust, relay_url: &str, dir: &Path, prefix: &str) -> Result<String> {
    let prefixes = prefix_lines(prefix);
    Ok(match trust {
        Trust::Assertions => format!(
            r#"[issuer]
issuer = "{relay_url}"
audience = "hawser"
signing_key_file = "issuer.key"
generate = true
{prefixes}[assertions]
issuer = "{relay_url}/assertions"
signing_key_file = "assertion.key"
generate = true
"#
        ),
        Trust::CallerTokens => {
            // The external issuer's key lives beside the test, never in the relay's config.
            let mut cmd = Command::new(hawser_bin());
            cmd.args(["token", "jwks", "--generate", "--signing-key"])
                .arg(dir.join("external.key"));
            let out = run_with_deadline(cmd, None, Duration::from_secs(30))?;
            anyhow::ensure!(
                out.status.success(),
                "hawser token jwks: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            fs::write(dir.join("external-jwks.json"), &out.stdout)?;
            format!(
                r#"[[issuers]]
issuer = "{EXTERNAL_ISSUER}"
audiences = ["{testbed}", "{elsewhere}"]
jwks_file = "external-jwks.json"
{prefixes}"#,
                testbed = cluster_audience(CLUSTER),
                elsewhere = cluster_audience("elsewhere"),
            )
        }
    })
}

/// The `caller_audience` line of `cluster`'s `[[clusters]]` entry, for `trust`.
pub(super) fn audience_line(trust: Trust, cluster: &str) -> String {
    match trust {
        Trust::Assertions => String::new(),
        Trust::CallerTokens => format!("caller_audience = \"{}\"", cluster_audience(cluster)),
    }
}

/// How the agent of `cluster` learns who the caller is, for `trust`.
pub fn agent_callers(trust: Trust, relay_url: &str, cluster: &str, prefix: &str) -> String {
    match trust {
        Trust::Assertions => format!(
            r#"[assertions]
issuer = "{relay_url}/assertions"
jwks_url = "{relay_url}/.well-known/hawser/assertion-jwks.json"
jwks_ca_file = "relay.crt"
"#
        ),
        Trust::CallerTokens => format!(
            r#"[[issuers]]
issuer = "{EXTERNAL_ISSUER}"
audiences = ["{}"]
jwks_file = "external-jwks.json"
{}"#,
            cluster_audience(cluster),
            prefix_lines(prefix),
        ),
    }
}

/// The callers' issuer's prefixes, when a deployment trusts further issuers beside it (a relay
/// refuses two issuers that could produce the same username).
fn prefix_lines(prefix: &str) -> String {
    if prefix.is_empty() {
        return String::new();
    }
    format!("username_prefix = \"{prefix}\"\ngroups_prefix = \"{prefix}\"\n")
}
