//! The `oauth2` crate, set up for OIDC: the ID token as an extra token field, a client per
//! provider, and its errors as one line. Why `oauth2` and not `openidconnect`: the grants, PKCE
//! and revocation are all a login needs; `openidconnect` would bring a second JOSE stack to
//! verify ID tokens, which the relay and agents verify, not the client.

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    ClientId, ClientSecret, EndpointNotSet, EndpointSet, ErrorResponse, RequestTokenError, StandardRevocableToken,
    StandardTokenResponse, TokenResponse as _, TokenUrl,
};
use serde::{Deserialize, Serialize};

use super::http::HttpFailure;
use super::id_token::{self, Claims};
use super::{LoginError, Provider, provider_text};

/// The ID token that an OIDC token response carries beside the access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdTokenFields {
    /// The ID token (absent in a plain OAuth2 answer, which a login refuses).
    #[serde(default)]
    pub id_token: Option<String>,
}

impl oauth2::ExtraTokenFields for IdTokenFields {}

/// A token response with its ID token.
pub type IdTokenResponse = StandardTokenResponse<IdTokenFields, BasicTokenType>;

/// An OAuth2 client for our token responses, with the token endpoint set.
pub type OidcClient<Auth = EndpointNotSet, Device = EndpointNotSet, Revoke = EndpointNotSet> = oauth2::Client<
    BasicErrorResponse,
    IdTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    Auth,
    Device,
    EndpointNotSet,
    Revoke,
    EndpointSet,
>;

/// The client for `provider` whose token endpoint is `token_endpoint`.
pub fn client(provider: &Provider, token_endpoint: &str) -> Result<OidcClient, LoginError> {
    let token_url = TokenUrl::new(token_endpoint.to_owned())
        .map_err(|e| LoginError::Provider(format!("token endpoint: {}", provider_text(&e.to_string()))))?;
    let client = oauth2::Client::new(ClientId::new(provider.client_id.clone())).set_token_uri(token_url);
    Ok(match &provider.client_secret {
        Some(secret) => client.set_client_secret(ClientSecret::new(secret.expose().to_owned())),
        None => client,
    })
}

/// A token response's ID token and its claims; no ID token is an error.
pub fn id_token_of(response: &IdTokenResponse) -> Result<(String, Claims), LoginError> {
    let token = response.extra_fields().id_token.clone().ok_or_else(|| {
        LoginError::Provider(
            "the provider's token answer has no id_token (is `openid` among the client's allowed scopes?)".into(),
        )
    })?;
    let claims = id_token::claims(&token)?;
    Ok((token, claims))
}

/// The refresh token of a response, if any.
pub fn refresh_token_of(response: &IdTokenResponse) -> Option<String> {
    response.refresh_token().map(|t| t.secret().clone())
}

/// An OAuth2 error answer (any of the crate's error types) as `error[: description]`, escaped
/// and bounded.
pub fn error_text<T: Serialize>(error: &T) -> String {
    let value = serde_json::to_value(error).unwrap_or_default();
    let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str).map(provider_text);
    let code = field("error").unwrap_or_else(|| "unknown error".into());
    match field("error_description") {
        Some(d) => format!("{code}: {d}"),
        None => code,
    }
}

/// Why a request failed, other than an OAuth2 error answer: one escaped line.
pub fn failure_text<T: ErrorResponse>(error: &RequestTokenError<HttpFailure, T>) -> String {
    match error {
        RequestTokenError::ServerResponse(_) => "the provider refused the request".into(),
        RequestTokenError::Request(e) => provider_text(&e.to_string()),
        RequestTokenError::Parse(e, _) => {
            format!(
                "the provider's answer is not OAuth2 JSON: {}",
                provider_text(&e.to_string())
            )
        }
        RequestTokenError::Other(e) => provider_text(e),
    }
}
