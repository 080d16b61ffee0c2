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
                "correct the file (every option: docs/configuration.md); nothing else can be checked",
            ));
            return report;
        }
    };
    let (relay, apiserver) = tokio::join!(relay::check(path, &config), apiserver::check(&config));
    report.checks.extend(relay);
    report.checks.extend(apiserver);
    report
}
