//! `hawser doctor --config agent.toml`: what stands between an agent's configuration and a working
//! tunnel, one line per check — the file, the relay over each transport the agent would use
//! (QUIC, TCP, through its proxy), the relay's certificate or pin, the agent token, the apiserver
//! with the agent's own credential, and its impersonation and TokenReview rights — each `ok` or
//! the cause and the fix ([`report`]). The command exits non-zero if any check failed.
//!
//! # Design and threat model
//!
//! The doctor runs beside a live agent and must not disturb it: the relay keys sessions by agent
//! instance and tunnel, so a second hello under the agent's name would replace its session. The
//! token is therefore checked with a *probe* ([`crate::proto::Hello::probe`]): the relay reads and
//! judges it exactly as a hello (token, names, trust model, and the same per-source failure
//! budget, so a probe is no faster way to guess tokens) and answers with a welcome or the same
//! refusal, but registers nothing and routes nothing to it. A relay that predates probes refuses
//! one as a malformed hello (its `Hello` denies unknown fields): nothing is registered there
//! either, and the doctor says the relay must be upgraded for the check.
//!
//! The relay's certificate is judged by the agent's own verifier, which keeps why it refused one
//! ([`crate::tls::RelayTrust::witnessed_verifier`]), so the line names the cause (not signed by
//! `ca_file`, another name, a key no pin names) rather than a TLS alert. Everything the relay or the apiserver says is escaped as the
//! line is written.

mod apiserver;
mod relay;
pub mod report;

use std::path::Path;

pub use report::{Check, Report, Status};

use crate::config::{self, AgentConfig};

/// Runs every check of the agent configuration at `path`.
pub async fn run(path: &Path) -> Report {
    let mut report = Report::default();
    let config: AgentConfig = match config::load(path) {
        Ok(config) => config,
        Err(e) => {
            report.checks.push(Check::fail(
                "config",
                e.to_string(),
                "correct the file (every option: docs/configuration.md)",
            ));
            let rest = relay::CHECKS.iter().chain(apiserver::CHECKS);
            report
                .checks
                .extend(rest.map(|name| Check::needs(name, "a configuration that loads")));
            return report;
        }
    };
    let (relay, apiserver) = tokio::join!(relay::check(path, &config), apiserver::check(&config));
    report.checks.extend(relay);
    report.checks.extend(apiserver);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_that_does_not_load_fails_once_and_every_other_check_says_what_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "cluster = \"c\"\nbogus = 1\n").unwrap();
        let report = run(&path).await;
        assert_eq!(report.failures(), 1);
        let lines: Vec<String> = report.checks.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 8, "{lines:#?}");
        assert!(
            lines[0].starts_with("FAIL  config: parsing ") && lines[0].contains("bogus"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1..]
                .iter()
                .all(|l| l.starts_with("skip  ") && l.ends_with("skipped: needs a configuration that loads")),
            "{lines:#?}"
        );
    }

    #[tokio::test]
    async fn a_missing_token_file_stops_the_relays_checks_but_not_the_apiservers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let config = r#"
cluster = "c"
token_file = "missing-token"
[relay]
address = "127.0.0.1:9"
pinned_key_sha256 = ["47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="]
[apiserver]
kubeconfig = "missing.kubeconfig"
[assertions]
issuer = "https://relay/assertions"
jwks_file = "assertions.json"
"#;
        std::fs::write(&path, config).unwrap();
        let report = run(&path).await;
        let lines: Vec<String> = report.checks.iter().map(ToString::to_string).collect();
        assert!(
            lines[0].starts_with("FAIL  config: agent token ") && lines[0].contains("missing-token"),
            "{lines:#?}"
        );
        for line in &lines[1..5] {
            assert!(line.ends_with("skipped: needs a usable config"), "{lines:#?}");
        }
        assert!(
            lines[5].starts_with("FAIL  apiserver: ") && lines[5].contains("missing.kubeconfig"),
            "{lines:#?}"
        );
        assert_eq!(report.failures(), 2);
    }
}
