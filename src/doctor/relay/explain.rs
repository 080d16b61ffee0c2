//! What each way the relay checks can fail means, and what to change: a cause and a fix per
//! failure, in the words of the agent's configuration.

use std::time::Duration;

use quinn::ConnectionError;
use rustls::CertificateError;

use super::Prober;
use crate::agent::SessionError;
use crate::agent::link::{ProxyError, ProxyFailure};
use crate::config::AgentConfig;
use crate::relay::close_code;
use crate::tunnel::DialError;

/// A relay ignores a source that failed too many hellos, doctor's runs with a bad token included:
/// an ignored attempt looks like a relay that is not there.
const THROTTLED: &str = "or this host's failed hellos (a wrong agent token, here or in earlier \
    doctor runs) passed the relay's limits.agent_hello_failures_per_minute: wait a minute (the relay \
    logs \"agent attempt ignored\")";

/// How the relay's certificate was accepted, as the configuration asks.
pub(super) fn trusted(config: &AgentConfig) -> &'static str {
    match (&config.relay.ca_file, config.relay.pinned_key_sha256.is_empty()) {
        (Some(_), true) => "certificate verified by ca_file",
        (Some(_), false) => "certificate verified by ca_file and its key pinned",
        (None, _) => "its key matches relay.pinned_key_sha256",
    }
}

/// Why the relay could not be reached over QUIC within `deadline`.
pub(super) fn quic(e: &SessionError, prober: &Prober, config: &AgentConfig, deadline: Duration) -> (String, String) {
    let address = prober.dialer.addresses().0;
    if e.quic_unreachable() {
        return (
            format!(
                "no QUIC handshake with {address} over UDP within {} s",
                deadline.as_secs()
            ),
            format!(
                "check relay.address and that the relay listens there; where UDP to it is blocked, use \
                 relay.transport = \"tcp\" (or \"auto\", which falls back to TCP); {THROTTLED}"
            ),
        );
    }
    if let Some(refusal) = prober.refusals.last() {
        return certificate(&refusal, prober, config);
    }
    match e {
        SessionError::Dial(DialError::Handshake(ConnectionError::ConnectionClosed(close)))
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            (
                format!("{address} refused new QUIC connections: the relay is draining"),
                "check again in a moment; behind a balancer another relay takes the agent".into(),
            )
        }
        SessionError::Resolve(..) => (e.to_string(), "check relay.address".into()),
        e => (e.to_string(), "check relay.address and relay.server_name".into()),
    }
}

/// Why the relay could not be reached over TCP, or its TLS handshake failed.
pub(super) fn tcp(e: &SessionError, prober: &Prober, config: &AgentConfig) -> (String, String) {
    if let Some(refusal) = prober.refusals.last() {
        return certificate(&refusal, prober, config);
    }
    match e {
        SessionError::TcpConnect { address, error } => (
            format!("connecting to {address}: {error}"),
            "check relay.tcp_address (unset: relay.address) and that the relay listens there: its callers' port".into(),
        ),
        SessionError::Resolve(..) => (e.to_string(), "check relay.tcp_address (unset: relay.address)".into()),
        SessionError::Tls(error) => (
            format!("TLS handshake: {error}"),
            format!("check that relay.tcp_address is the relay's callers' port (it takes ALPN hawser/1); {THROTTLED}"),
        ),
        e => (e.to_string(), "check relay.tcp_address and relay.server_name".into()),
    }
}

/// What the relay's certificate was refused for.
fn certificate(e: &rustls::Error, prober: &Prober, config: &AgentConfig) -> (String, String) {
    let ca_file = config
        .relay
        .ca_file
        .as_ref()
        .map_or_else(String::new, |p| p.display().to_string());
    let server_name = prober.dialer.server_name();
    let rustls::Error::InvalidCertificate(cause) = e else {
        return (
            format!("TLS handshake: {e}"),
            "check relay.ca_file and relay.pinned_key_sha256".into(),
        );
    };
    match cause {
        CertificateError::UnknownIssuer => (
            format!("TLS handshake: the relay's certificate is not signed by ca_file ({ca_file})"),
            "set relay.ca_file to the CA that signs the relay's certificate, or pin the relay's key \
             (relay.pinned_key_sha256; `hawser pin --cert` prints it)"
                .into(),
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => (
            format!("TLS handshake: the relay's certificate does not name {server_name}"),
            "set relay.server_name to a name the relay's certificate holds".into(),
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
            "TLS handshake: the relay's certificate has expired".into(),
            "renew the relay's certificate".into(),
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
            "TLS handshake: the relay's certificate is not valid yet".into(),
            "check the clocks of relay and agent".into(),
        ),
        CertificateError::Other(other) if other.0.downcast_ref::<crate::tls::KeyNotPinned>().is_some() => (
            format!("TLS handshake: {}", other.0),
            "pin the relay's current key (`hawser pin --cert` of its certificate prints it; keep the old pin \
             beside the new while a key rotates), or correct relay.address if this is not your relay"
                .into(),
        ),
        other => (
            format!("TLS handshake: the relay's certificate: {other:?}"),
            "check relay.ca_file and relay.pinned_key_sha256".into(),
        ),
    }
}

/// Why no tunnel came through the proxy.
pub(super) fn proxy(e: &ProxyError, config: &AgentConfig) -> (String, String) {
    let configured = if config.relay.proxy.is_some() {
        "relay.proxy"
    } else {
        "HTTPS_PROXY (or ALL_PROXY; NO_PROXY to bypass it)"
    };
    let fix = match &e.failure {
        ProxyFailure::Connect(_) | ProxyFailure::Timeout => {
            format!("check {configured}: nothing answers there")
        }
        ProxyFailure::Refused { status, .. } if status.as_u16() == 407 => {
            if config.relay.proxy_auth_file.is_some() {
                "the proxy refused the credentials of relay.proxy_auth_file: correct them".to_owned()
            } else {
                "the proxy wants credentials: put user:password in a file named by relay.proxy_auth_file".to_owned()
            }
        }
        ProxyFailure::Refused { target, .. } => {
            format!("the proxy must allow CONNECT to {target} (its access rules, its allowed ports)")
        }
        ProxyFailure::Io(_) | ProxyFailure::Protocol(_) => format!("check that {configured} is an HTTP proxy"),
    };
    (e.to_string(), fix)
}

/// What a refused probe hello means.
pub(super) fn refusal(code: u32, reason: &str, via: &str, config: &AgentConfig) -> (String, String) {
    let cluster = &config.cluster;
    match code {
        close_code::REFUSED => (
            format!("the relay refused cluster {cluster}'s agent token over {via}: {reason}"),
            format!(
                "token_file ({}) must hold the token whose SHA-256 is agent_token_sha256 of the relay's \
                 [[clusters]] entry named {cluster}: check the token, and the cluster's name",
                config.token_file.display()
            ),
        ),
        close_code::MISMATCH => (
            format!("the token is accepted, but not the trust model: {reason}"),
            "make [assertions] issuer (or [[issuers]] audiences) what the relay has for the cluster: its \
             [assertions] issuer (or the cluster's caller_audience); docs/configuration.md, Trust models"
                .into(),
        ),
        close_code::BAD_HELLO if reason.contains("unknown field `probe`") => (
            "the relay predates probes, so it cannot check the token without registering a tunnel; it \
             refused the probe and registered nothing"
                .into(),
            "upgrade the relay; until then the agent's own log says whether its hello is welcomed".into(),
        ),
        close_code::BAD_HELLO if reason.contains("wire version") => (
            format!("the relay refused the hello: {reason}"),
            "relay and agent must be the same release: upgrade the older".into(),
        ),
        close_code::BAD_HELLO => (
            format!("the relay refused the hello: {reason}"),
            "cluster and instance must be plain names (docs/configuration.md)".into(),
        ),
        close_code::SHUTDOWN => (
            format!("the relay is shutting down: {reason}"),
            "check again once it is back".into(),
        ),
        close_code::BUSY => (
            format!("the relay refused: {reason}"),
            "too many connections from this address have not said their hello yet: check again in a moment".into(),
        ),
        code => (
            format!("the relay refused ({code}): {reason}"),
            "the relay's log says why".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AgentConfig {
        toml::from_str(
            r#"
cluster = "alpha"
token_file = "/etc/hawser/agent-token"
[relay]
address = "relay.example:443"
ca_file = "/etc/hawser/relay-ca.pem"
[assertions]
issuer = "https://relay.example/assertions"
jwks_file = "/etc/hawser/assertions.json"
"#,
        )
        .unwrap()
    }

    #[test]
    fn each_refusal_names_its_cause_and_fix() {
        let config = config();
        let (detail, fix) = refusal(
            close_code::REFUSED,
            "unknown cluster or wrong agent token",
            "QUIC",
            &config,
        );
        assert_eq!(
            detail,
            "the relay refused cluster alpha's agent token over QUIC: unknown cluster or wrong agent token"
        );
        assert!(
            fix.contains("/etc/hawser/agent-token") && fix.contains("named alpha"),
            "{fix}"
        );
        let (detail, fix) = refusal(
            close_code::MISMATCH,
            "cluster alpha: this relay sends ...",
            "TCP",
            &config,
        );
        assert!(
            detail.starts_with("the token is accepted, but not the trust model: cluster alpha"),
            "{detail}"
        );
        assert!(fix.contains("[assertions] issuer"), "{fix}");
        // What a relay that predates probes says: its `Hello` denies unknown fields.
        let old = "no readable hello: malformed frame: unknown field `probe`, expected one of `cluster`, `token`";
        let (detail, fix) = refusal(close_code::BAD_HELLO, old, "QUIC", &config);
        assert!(
            detail.contains("predates probes") && detail.contains("registered nothing"),
            "{detail}"
        );
        assert!(fix.starts_with("upgrade the relay"), "{fix}");
        let (_, fix) = refusal(
            close_code::BAD_HELLO,
            "the peer speaks wire version 4; this build speaks 3",
            "QUIC",
            &config,
        );
        assert!(fix.contains("same release"), "{fix}");
        let (detail, _) = refusal(99, "new", "TCP", &config);
        assert_eq!(detail, "the relay refused (99): new");
    }

    #[test]
    fn how_the_relay_was_trusted_follows_the_configuration() {
        let mut config = config();
        assert_eq!(trusted(&config), "certificate verified by ca_file");
        config.relay.pinned_key_sha256 = vec!["47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".parse().unwrap()];
        assert_eq!(trusted(&config), "certificate verified by ca_file and its key pinned");
        config.relay.ca_file = None;
        assert_eq!(trusted(&config), "its key matches relay.pinned_key_sha256");
    }
}
