//! `hawser logout`: forget stored logins, revoking each refresh token at the provider first
//! (RFC 7009) on a best-effort basis: a provider that is down must not keep a login on disk.

use oauth2::{RefreshToken, RevocationUrl, StandardRevocableToken};

use super::http::Http;
use super::store::{self, Store, StoredLogin};
use super::{LoginError, Provider, oauth, provider_text};

/// What logging out of one login did.
#[derive(Debug)]
pub struct LoggedOut {
    /// The issuer (or the file, for one that could not be read).
    pub issuer: String,
    /// Why the refresh token could not be revoked, if it could not.
    pub warning: Option<String>,
}

/// Logs out of (`issuer`, `client_id`); `None` if there was no such login.
pub async fn one(store: &Store, issuer: &str, client_id: &str) -> Result<Option<LoggedOut>, LoginError> {
    let Some(login) = store.load(issuer, client_id)? else {
        return Ok(None);
    };
    let warning = revoke(&login).await.err();
    store.remove(issuer, client_id)?;
    Ok(Some(LoggedOut {
        issuer: login.issuer,
        warning,
    }))
}

/// Logs out of every stored login.
pub async fn all(store: &Store) -> Result<Vec<LoggedOut>, LoginError> {
    let mut done = Vec::new();
    for (path, login) in store.all()? {
        let (issuer, warning) = match login {
            Ok(login) => (login.issuer.clone(), revoke(&login).await.err()),
            Err(e) => (path.display().to_string(), Some(format!("not revoked: {e}"))),
        };
        store::remove_file(&path)?;
        done.push(LoggedOut { issuer, warning });
    }
    Ok(done)
}

/// Revokes `login`'s refresh token, if it has one and the provider a revocation endpoint.
async fn revoke(login: &StoredLogin) -> Result<(), String> {
    let (Some(endpoint), Some(token)) = (&login.revocation_endpoint, &login.refresh_token) else {
        return Ok(());
    };
    let fail = |e: String| format!("the refresh token was not revoked at {}: {e}", provider_text(endpoint));
    let provider = Provider::new(
        login.issuer.clone(),
        login.client_id.clone(),
        login.ca_file.clone(),
        login.client_secret_file.as_deref(),
    )
    .map_err(|e| fail(e.to_string()))?;
    let http = Http::new(provider.ca_file.as_deref()).map_err(|e| fail(e.to_string()))?;
    let url = RevocationUrl::new(endpoint.clone()).map_err(|e| fail(e.to_string()))?;
    let client = oauth::client(&provider, &login.token_endpoint)
        .map_err(|e| fail(e.to_string()))?
        .set_revocation_url(url);
    let token = StandardRevocableToken::RefreshToken(RefreshToken::new(token.expose().to_owned()));
    client
        .revoke_token(token)
        .map_err(|e| fail(e.to_string()))?
        .request_async(&http)
        .await
        .map_err(|e| match &e {
            oauth2::RequestTokenError::ServerResponse(answer) => fail(oauth::error_text(answer)),
            _ => fail(oauth::failure_text(&e)),
        })
}
