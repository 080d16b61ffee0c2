//! The provider a relay names for logging in: its `[login]`, published at
//! `/.well-known/hawser/login`, so `hawser login --relay` and `--login` need no issuer or
//! client id from the person.

use std::path::Path;

use serde::Deserialize;

use super::LoginError;
use super::http::Http;

/// What a relay publishes. Unknown fields are ignored: a newer relay may say more.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RelayLogin {
    /// The provider's issuer.
    pub issuer: String,
    /// The public client to log in with.
    pub client_id: String,
    /// Scopes beside `openid offline_access`.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// Asks the relay at `relay` (its base URL), trusting `ca_file` for it, which provider to log in to.
pub async fn discover(relay: &str, ca_file: Option<&Path>) -> Result<RelayLogin, LoginError> {
    let url = format!("{}{}", relay.trim_end_matches('/'), crate::config::login::PATH);
    super::http::check_url(&url, "--relay")?;
    let http = Http::new(ca_file)?;
    let answer = http
        .get(&url)
        .await
        .map_err(|e| LoginError::Provider(format!("asking the relay which provider to log in to: {e}")))?;
    parse(relay, answer.status(), answer.body())
}

/// The relay's answer: its `[login]`, or why there is none.
pub fn parse(relay: &str, status: http::StatusCode, body: &[u8]) -> Result<RelayLogin, LoginError> {
    let relay = super::provider_text(relay);
    if status == http::StatusCode::NOT_FOUND {
        return Err(LoginError::Usage(format!(
            "the relay {relay} names no identity provider (no [login] in its config, or a release before \
             it): give --issuer and --client-id"
        )));
    }
    if !status.is_success() {
        return Err(LoginError::Provider(format!(
            "the relay {relay} answered {status} for its login document"
        )));
    }
    let login: RelayLogin = serde_json::from_slice(body).map_err(|e| {
        LoginError::Provider(format!(
            "the relay {relay}'s login document is not valid: {}",
            super::provider_text(&e.to_string())
        ))
    })?;
    super::http::check_url(&login.issuer, "the relay's login issuer")?;
    Ok(login)
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    #[test]
    fn the_document_a_relay_publishes_or_why_not() {
        let body = br#"{"issuer":"https://login.example.com/","client_id":"hawser","scopes":["groups"],"later":1}"#;
        let login = parse("https://relay", StatusCode::OK, body).expect("parses");
        assert_eq!(login.issuer, "https://login.example.com/");
        assert_eq!(login.client_id, "hawser");
        assert_eq!(login.scopes, ["groups"]);

        let missing = parse("https://relay", StatusCode::NOT_FOUND, b"{}").expect_err("no [login]");
        assert!(missing.to_string().contains("--issuer and --client-id"), "{missing}");
        assert!(parse("https://relay", StatusCode::OK, b"{\"issuer\":1}").is_err());
        assert!(parse("https://relay", StatusCode::BAD_GATEWAY, b"").is_err());
        let plain = br#"{"issuer":"http://login.example.com/","client_id":"hawser"}"#;
        let refused = parse("https://relay", StatusCode::OK, plain).expect_err("plain http");
        assert!(refused.to_string().contains("https://"), "{refused}");
    }
}
