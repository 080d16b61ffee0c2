//! `hawser login`, the refresh behind `hawser token --issuer`, and `hawser logout`: a person's
//! own OIDC login, kept per (issuer, client id) in the user's config directory.
//!
//! Design: the credential sent to the relay is the provider's **ID token** (its `aud` is the
//! client id, which the relay's `[[issuers]]` entry lists in `audiences`, as Kubernetes' own
//! OIDC does). OAuth2 itself (PKCE, code exchange, device grant, refresh, revocation) is the
//! `oauth2` crate over our hyper-rustls client; discovery is one GET by hand.
//!
//! Threat model: the stored refresh token is a long-lived secret, so the files are 0600 in
//! 0700 directories, written by rename, and masked in Debug. The client never trusts the ID
//! token for anything that matters: it reads `exp` (when to refresh) and `sub` (to display)
//! without checking the signature, because the relay and the agent verify it. Every provider
//! URL is HTTPS (plain http only on loopback), every fetch bounded in size and time, and every
//! string from the provider is escaped and cut before it reaches a terminal. Concurrent
//! kubectl invocations take an exclusive lock beside the login before refreshing, so a
//! rotating refresh token is spent once.

pub mod browser;
pub mod device;
pub mod discovery;
pub mod http;
pub mod id_token;
pub mod logout;
pub mod oauth;
pub mod refresh;
pub mod relay;
pub mod store;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use crate::config::Secret;

/// How close to its expiry an ID token is refreshed rather than used.
pub const REFRESH_MARGIN_SECS: i64 = 60;

/// Which provider and client a login is for, and how to reach the provider.
#[derive(Debug, Clone)]
pub struct Provider {
    /// The issuer URL, exactly as the provider's discovery document and ID tokens say it.
    pub issuer: String,
    /// The OAuth2 client id (the ID token's audience).
    pub client_id: String,
    /// PEM CA to trust for the provider instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// The client secret, for confidential clients.
    pub client_secret: Option<Secret>,
}

impl Provider {
    /// A provider whose secret, if any, is read from `client_secret_file`.
    pub fn new(
        issuer: String,
        client_id: String,
        ca_file: Option<PathBuf>,
        client_secret_file: Option<&std::path::Path>,
    ) -> Result<Self, LoginError> {
        http::check_url(&issuer, "--issuer")?;
        let client_secret = match client_secret_file {
            Some(path) => Some(Secret::new(
                crate::token_file::read(path).map_err(|e| LoginError::Usage(e.to_string()))?,
            )),
            None => None,
        };
        Ok(Self {
            issuer,
            client_id,
            ca_file,
            client_secret,
        })
    }
}

/// How `hawser login` runs.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    /// Scopes beside `openid offline_access`.
    pub scopes: Vec<String>,
    /// The device grant instead of the browser.
    pub device: bool,
    /// The browser flow's settings.
    pub browser: browser::BrowserOptions,
    /// How long the person has to log in.
    pub timeout: std::time::Duration,
    /// The client secret file, kept (its path) for logout's revocation.
    pub client_secret_file: Option<PathBuf>,
}

/// Logs in to `provider` and stores the login; returns it with the ID token's claims.
pub async fn login(
    store: &store::Store,
    provider: &Provider,
    options: &LoginOptions,
) -> Result<(store::StoredLogin, id_token::Claims), LoginError> {
    let http = http::Http::new(provider.ca_file.as_deref())?;
    let discovery = discovery::discover(&http, &provider.issuer).await?;
    let mut scopes = vec!["openid".to_owned(), "offline_access".to_owned()];
    for scope in &options.scopes {
        if !scopes.contains(scope) {
            scopes.push(scope.clone());
        }
    }
    let flow = async {
        if options.device {
            device::authorize(
                &http,
                provider,
                &discovery,
                &scopes,
                options.timeout,
                tokio::time::sleep,
            )
            .await
        } else {
            browser::authorize(
                &http,
                provider,
                &discovery,
                &scopes,
                &options.browser,
                browser::print_url,
            )
            .await
        }
    };
    let response = tokio::time::timeout(options.timeout, flow)
        .await
        .map_err(|_| LoginError::Flow(format!("no login within {}s (--timeout)", options.timeout.as_secs())))??;
    let (id_token, claims) = oauth::id_token_of(&response)?;
    let login = store::StoredLogin {
        issuer: provider.issuer.clone(),
        client_id: provider.client_id.clone(),
        ca_file: provider
            .ca_file
            .as_deref()
            .map(std::path::absolute)
            .transpose()
            .map_err(|e| LoginError::Usage(format!("--ca-file: {e}")))?,
        client_secret_file: options
            .client_secret_file
            .as_deref()
            .map(std::path::absolute)
            .transpose()
            .map_err(|e| LoginError::Usage(format!("--client-secret-file: {e}")))?,
        token_endpoint: discovery.token_endpoint.clone(),
        revocation_endpoint: discovery.revocation_endpoint.clone(),
        id_token: store::Masked::new(id_token),
        refresh_token: oauth::refresh_token_of(&response).map(store::Masked::new),
        expiry: claims.exp,
    };
    store.save(&login)?;
    Ok((login, claims))
}

/// Why a login, refresh or logout failed; each prints as one line.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The command line or environment is wrong.
    #[error("{0}")]
    Usage(String),
    /// No stored login for this issuer and client.
    #[error(
        "not logged in to {issuer} (client {client_id}): run hawser login --issuer {issuer} --client-id {client_id}"
    )]
    NotLoggedIn {
        /// The issuer.
        issuer: String,
        /// The client id.
        client_id: String,
    },
    /// The provider refused the refresh token (or gave none): a new login is needed.
    #[error(
        "the login to {issuer} has expired ({reason}): run hawser login --issuer {issuer} --client-id {client_id} again"
    )]
    Expired {
        /// The issuer.
        issuer: String,
        /// The client id.
        client_id: String,
        /// Why, escaped.
        reason: String,
    },
    /// The provider could not be asked for a fresh token (down, 5xx, timeout, bad answer).
    #[error("cannot refresh the login to {issuer}: {cause}")]
    RefreshFailed {
        /// The issuer.
        issuer: String,
        /// What went wrong, escaped.
        cause: String,
    },
    /// The provider answered something a login cannot use.
    #[error("{0}")]
    Provider(String),
    /// The login was not completed (refused, timed out, state mismatch).
    #[error("{0}")]
    Flow(String),
    /// A stored login could not be read or written.
    #[error("{path}: {message}")]
    Store {
        /// The file or directory.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] crate::client::ClientError),
}

impl LoginError {
    pub(crate) fn store(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::Store {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// The most characters of a provider's string that reach a terminal.
const MAX_PROVIDER_TEXT: usize = 300;

/// A string from the provider, cut to a bounded length and with control characters escaped, so
/// it cannot break or disguise the line it is printed in.
pub fn provider_text(text: &str) -> String {
    let cut: String = text.chars().take(MAX_PROVIDER_TEXT).collect();
    let mut out = crate::telemetry::escape(&cut).to_string();
    if text.chars().count() > MAX_PROVIDER_TEXT {
        out.push('…');
    }
    out
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `secs` since the epoch as RFC 3339 UTC (`2026-12-01T10:00:00Z`).
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}
