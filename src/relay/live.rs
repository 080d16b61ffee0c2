//! What a reload changes while the relay runs: its callers' issuers, access rules, limits and
//! the login it publishes.
//!
//! Each request takes one snapshot ([`Current::current`]) at each step that needs it, so a reload
//! never changes the rules under a decision half made; exchanges already admitted keep going
//! (a watch admitted under the old rules is not cut by the new ones). The cluster table
//! (`clusters`) and the audit log (`audit`) are swapped by the same reload, each in its own
//! place.

use std::sync::Arc;

use super::RelayError;
use super::limits::AuthFailures;
use crate::auth::{AccessRules, Authenticator, BuiltinIssuer};
use crate::config::{LimitsConfig, RelayConfig};

/// The reloadable part of the relay's state, replaced whole.
pub(crate) struct Live {
    /// Validates callers' tokens: `[[issuers]]` and the built-in issuer.
    pub auth: Authenticator,
    /// `[[access]]`.
    pub access: AccessRules,
    /// `[issuer]`: its JWKS is served, and it signs `hawser token issue`'s tokens.
    pub issuer: Option<BuiltinIssuer>,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// Failed authentications per source, kept across a reload unless its rate changed.
    pub auth_failures: Arc<AuthFailures>,
    /// `[login]`'s document, served at `/.well-known/hawser/login`.
    pub login: Option<String>,
}

impl Live {
    /// Builds the part from `config`, taking the failed-authentication buckets over from
    /// `before` when their rate is the same.
    pub fn new(config: &RelayConfig, before: Option<&Self>) -> Result<Self, RelayError> {
        let issuer = match &config.issuer {
            Some(c) => Some(c.load().map_err(|e| RelayError::Issuer(e.to_string()))?),
            None => None,
        };
        let mut issuers = config.issuers.clone();
        if let Some(issuer) = &issuer {
            issuers.push(issuer.issuer_config());
        }
        let auth = Authenticator::new(issuers).map_err(|e| RelayError::Auth(e.to_string()))?;
        let access = AccessRules::new(config.access.clone()).map_err(|e| RelayError::Auth(e.to_string()))?;
        let rate = config.limits.auth_failures_per_minute;
        let auth_failures = match before {
            Some(before) if before.limits.auth_failures_per_minute == rate => before.auth_failures.clone(),
            _ => Arc::new(AuthFailures::new(rate)),
        };
        Ok(Self {
            auth,
            access,
            issuer,
            limits: config.limits.clone(),
            auth_failures,
            login: config.login.as_ref().map(crate::config::LoginConfig::document),
        })
    }
}

/// The live part now; swapped whole on a reload.
pub(crate) type Current = crate::reload::Snapshot<Live>;
