//! OIDC discovery by hand: one GET of `/.well-known/openid-configuration` into a serde struct.
//! The `openidconnect` crate would do this, but it brings a second JOSE stack for ID-token
//! checks this client does not make (the relay and agent verify tokens), so we do not use it.

use serde::Deserialize;

use super::http::{Http, check_url};
use super::{LoginError, provider_text};

/// The parts of a provider's discovery document a login uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    /// Must equal the issuer asked for, exactly.
    pub issuer: String,
    /// Where the browser is sent (authorization code flow).
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    /// Where codes, device codes and refresh tokens are exchanged.
    pub token_endpoint: String,
    /// RFC 8628's device authorization endpoint.
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    /// RFC 7009's revocation endpoint.
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
}

/// The discovery URL of `issuer`.
pub fn url_of(issuer: &str) -> String {
    format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))
}

/// Fetches and checks `issuer`'s discovery document.
pub async fn discover(http: &Http, issuer: &str) -> Result<Discovery, LoginError> {
    let url = url_of(issuer);
    let response = http
        .get(&url)
        .await
        .map_err(|e| LoginError::Provider(format!("discovery: {}", provider_text(&e.to_string()))))?;
    if response.status() != http::StatusCode::OK {
        return Err(LoginError::Provider(format!(
            "discovery: {} answered {}",
            provider_text(&url),
            response.status()
        )));
    }
    parse(issuer, response.body())
}

/// Checks a discovery document's body against the issuer asked for.
pub fn parse(issuer: &str, body: &[u8]) -> Result<Discovery, LoginError> {
    let doc: Discovery = serde_json::from_slice(body).map_err(|e| {
        LoginError::Provider(format!(
            "discovery: the provider's document is not OIDC discovery JSON: {}",
            provider_text(&e.to_string())
        ))
    })?;
    // OIDC Discovery 1.0 §4.3: the document's issuer must be the URL it was fetched for.
    if doc.issuer != issuer {
        return Err(LoginError::Provider(format!(
            "discovery: the provider says its issuer is {}, not {} (they must be equal, trailing slash included)",
            provider_text(&doc.issuer),
            provider_text(issuer)
        )));
    }
    for url in [Some(&doc.token_endpoint), doc.authorization_endpoint.as_ref()]
        .into_iter()
        .chain([
            doc.device_authorization_endpoint.as_ref(),
            doc.revocation_endpoint.as_ref(),
        ])
        .flatten()
    {
        check_url(url, "discovery: endpoint").map_err(|e| LoginError::Provider(e.to_string()))?;
    }
    Ok(doc)
}
