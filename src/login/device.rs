//! The device authorization grant (RFC 8628), for machines without a browser: print the
//! verification URI and user code, then poll the token endpoint, honouring `interval` and
//! `slow_down`, until approval, refusal, `expires_in` or the caller's timeout.

use std::future::Future;
use std::time::Duration;

use oauth2::{
    DeviceAuthorizationUrl, DeviceCodeErrorResponseType, RequestTokenError, Scope, StandardDeviceAuthorizationResponse,
};

use super::discovery::Discovery;
use super::http::Http;
use super::oauth::{self, IdTokenResponse};
use super::{LoginError, Provider, provider_text};

/// The prefix of the line that carries the verification URI and code (scripts and tests parse it).
pub const VISIT_PREFIX: &str = "To log in, visit ";

/// Runs the device flow to a token response within `timeout`; `sleep` waits between polls
/// (tokio's in use, a recorder in tests).
pub async fn authorize<S, SF>(
    http: &Http,
    provider: &Provider,
    discovery: &Discovery,
    scopes: &[String],
    timeout: Duration,
    sleep: S,
) -> Result<IdTokenResponse, LoginError>
where
    S: Fn(Duration) -> SF,
    SF: Future<Output = ()>,
{
    let endpoint = discovery.device_authorization_endpoint.as_deref().ok_or_else(|| {
        LoginError::Provider("the provider has no device_authorization_endpoint: log in without --device".into())
    })?;
    let url = DeviceAuthorizationUrl::new(endpoint.to_owned())
        .map_err(|e| LoginError::Provider(provider_text(&e.to_string())))?;
    let client = oauth::client(provider, &discovery.token_endpoint)?.set_device_authorization_url(url);
    let details: StandardDeviceAuthorizationResponse = client
        .exchange_device_code()
        .add_scopes(scopes.iter().cloned().map(Scope::new))
        .request_async(http)
        .await
        .map_err(|e| match &e {
            RequestTokenError::ServerResponse(answer) => LoginError::Flow(format!(
                "the provider refused the device authorization: {}",
                oauth::error_text(answer)
            )),
            _ => LoginError::Flow(format!("device authorization: {}", oauth::failure_text(&e))),
        })?;
    eprintln!(
        "{VISIT_PREFIX}{} and enter the code {}",
        provider_text(details.verification_uri().as_str()),
        provider_text(details.user_code().secret())
    );
    if let Some(complete) = details.verification_uri_complete() {
        eprintln!("or open {}", provider_text(complete.secret()));
    }
    // The crate stops at the timeout it is given, or at expires_in when given none: give the sooner.
    let deadline = timeout.min(details.expires_in());
    client
        .exchange_device_access_token(&details)
        .request_async(http, sleep, Some(deadline))
        .await
        .map_err(|e| match &e {
            RequestTokenError::ServerResponse(answer) => match answer.error() {
                DeviceCodeErrorResponseType::AccessDenied => {
                    LoginError::Flow("the login was refused at the provider (access_denied)".into())
                }
                DeviceCodeErrorResponseType::ExpiredToken => LoginError::Flow(format!(
                    "the code was not approved in time ({}s): run hawser login --device again",
                    deadline.as_secs()
                )),
                _ => LoginError::Flow(format!(
                    "the provider refused the device login: {}",
                    oauth::error_text(answer)
                )),
            },
            _ => LoginError::Flow(format!("device login: {}", oauth::failure_text(&e))),
        })
}
