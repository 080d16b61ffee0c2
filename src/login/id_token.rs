//! What the client reads from an ID token: `exp` (when to refresh) and `sub` (to display).
//! The signature is deliberately not checked here: nothing the client decides rests on the
//! token being genuine, and the relay and the agent verify it (issuer, keys, audience) on every
//! request. A forged token would only be refused there.

use base64::Engine;
use serde::Deserialize;

use super::{LoginError, provider_text};

/// The largest ID token accepted (a JWT with many groups is a few KiB).
const MAX_TOKEN: usize = 64 * 1024;

/// The claims read from an ID token's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Subject, for display (`?` if absent).
    pub sub: String,
    /// The nonce, if the provider echoed one.
    pub nonce: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    exp: Option<serde_json::Number>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

/// Decodes `token`'s payload, without verifying it (see the module's doc).
pub fn claims(token: &str) -> Result<Claims, LoginError> {
    let bad = |why: &str| LoginError::Provider(format!("the provider's ID token {why}"));
    if token.len() > MAX_TOKEN {
        return Err(bad("is too large"));
    }
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad("is not a JWT"));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| bad("is not a JWT (payload not base64url)"))?;
    let payload: Payload = serde_json::from_slice(&bytes)
        .map_err(|e| bad(&format!("has no JSON claims: {}", provider_text(&e.to_string()))))?;
    let exp = payload
        .exp
        .and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)))
        .ok_or_else(|| bad("has no exp"))?;
    Ok(Claims {
        exp,
        sub: payload.sub.unwrap_or_else(|| "?".into()),
        nonce: payload.nonce,
    })
}

#[cfg(test)]
pub(crate) fn fake(exp: i64, sub: &str) -> String {
    fake_with(&serde_json::json!({"exp": exp, "sub": sub}))
}

/// An unsigned JWT with these claims, for tests.
#[cfg(test)]
pub(crate) fn fake_with(claims: &serde_json::Value) -> String {
    let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.sig", b64(&serde_json::json!({"alg": "RS256"})), b64(claims))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_exp_and_sub_and_refuses_what_is_not_a_jwt() {
        let c = claims(&fake(1_800_000_000, "alice")).unwrap();
        assert_eq!((c.exp, c.sub.as_str()), (1_800_000_000, "alice"));
        for bad in ["", "a.b", "a.!!!.c", "a.e30.c", "a.b.c.d"] {
            assert!(claims(bad).is_err(), "{bad}");
        }
        assert!(claims(&"a".repeat(MAX_TOKEN + 1)).is_err());
    }
}
