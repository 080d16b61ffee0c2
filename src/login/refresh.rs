//! A fresh ID token from a stored login: used as is while it has more than a minute left,
//! else refreshed with the refresh token under the login's lock, so concurrent kubectl
//! invocations (or a proxy beside them) spend a rotating refresh token once.

use oauth2::{RefreshToken, RequestTokenError};

use super::http::Http;
use super::store::{Masked, Store, StoredLogin};
use super::{LoginError, Provider, REFRESH_MARGIN_SECS, oauth, provider_text};

/// The stored login of `provider`, refreshed first if its ID token expires within
/// [`REFRESH_MARGIN_SECS`] of `now` (seconds since the epoch).
pub async fn fresh(store: &Store, provider: &Provider, now: i64) -> Result<StoredLogin, LoginError> {
    let login = load(store, provider)?;
    if usable(&login, now) {
        return Ok(login);
    }
    let _lock = store.lock(&provider.issuer, &provider.client_id).await?;
    // Another process may have refreshed while we waited: its refresh token is the live one.
    let login = load(store, provider)?;
    if usable(&login, now) {
        return Ok(login);
    }
    let refreshed = refresh(provider, &login).await?;
    store.save(&refreshed)?;
    Ok(refreshed)
}

fn usable(login: &StoredLogin, now: i64) -> bool {
    login.expiry > now.saturating_add(REFRESH_MARGIN_SECS)
}

fn load(store: &Store, provider: &Provider) -> Result<StoredLogin, LoginError> {
    store
        .load(&provider.issuer, &provider.client_id)?
        .ok_or_else(|| LoginError::NotLoggedIn {
            issuer: provider.issuer.clone(),
            client_id: provider.client_id.clone(),
        })
}

/// Exchanges `login`'s refresh token for a new ID token (and maybe a new refresh token).
async fn refresh(provider: &Provider, login: &StoredLogin) -> Result<StoredLogin, LoginError> {
    let expired = |reason: String| LoginError::Expired {
        issuer: provider.issuer.clone(),
        client_id: provider.client_id.clone(),
        reason,
    };
    let failed = |cause: String| LoginError::RefreshFailed {
        issuer: provider.issuer.clone(),
        cause,
    };
    let Some(refresh_token) = &login.refresh_token else {
        return Err(expired("the provider gave no refresh token".into()));
    };
    // What the command line leaves out, the login remembers: the CA and secret it was made with.
    let client_secret = match (&provider.client_secret, &login.client_secret_file) {
        (Some(secret), _) => Some(secret.clone()),
        (None, Some(file)) => Some(crate::config::Secret::new(
            crate::token_file::read(file).map_err(|e| failed(e.to_string()))?,
        )),
        (None, None) => None,
    };
    let provider = Provider {
        ca_file: provider.ca_file.clone().or_else(|| login.ca_file.clone()),
        client_secret,
        ..provider.clone()
    };
    let http = Http::new(provider.ca_file.as_deref())?;
    let client = oauth::client(&provider, &login.token_endpoint)?;
    let token = RefreshToken::new(refresh_token.expose().to_owned());
    let response = client
        .exchange_refresh_token(&token)
        .request_async(&http)
        .await
        .map_err(|e| match &e {
            RequestTokenError::ServerResponse(answer) => expired(format!(
                "the provider refused the refresh token: {}",
                oauth::error_text(answer)
            )),
            _ => failed(oauth::failure_text(&e)),
        })?;
    let (id_token, claims) = oauth::id_token_of(&response).map_err(|e| failed(provider_text(&e.to_string())))?;
    Ok(StoredLogin {
        id_token: Masked::new(id_token),
        // A provider that does not rotate refresh tokens sends none back: the old one stays valid.
        refresh_token: oauth::refresh_token_of(&response)
            .map(Masked::new)
            .or_else(|| login.refresh_token.clone()),
        expiry: claims.exp,
        ..login.clone()
    })
}

/// A login's ID token kept in memory for a long-running process (`hawser proxy`), refreshed
/// through [`fresh`] (and so under the same lock as `hawser token`) near its expiry.
#[derive(Debug)]
pub struct LoginToken {
    store: Store,
    provider: Provider,
    cached: tokio::sync::Mutex<Option<StoredLogin>>,
}

impl LoginToken {
    /// The login of `provider` in `store`; nothing is read until [`LoginToken::get`].
    pub fn new(store: Store, provider: Provider) -> Self {
        Self {
            store,
            provider,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The ID token, refreshed first if it expires within [`REFRESH_MARGIN_SECS`].
    pub async fn get(&self) -> Result<Masked, LoginError> {
        // Held across the refresh: concurrent requests wait for one refresh, not start several.
        let mut cached = self.cached.lock().await;
        let now = super::unix_now();
        if let Some(login) = cached.as_ref()
            && usable(login, now)
        {
            return Ok(login.id_token.clone());
        }
        let login = fresh(&self.store, &self.provider, now).await?;
        let token = login.id_token.clone();
        *cached = Some(login);
        Ok(token)
    }
}
