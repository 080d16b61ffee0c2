//! Why a caller was not authenticated or a config refused, and extraction of the bearer token.

use std::path::PathBuf;

use http::header::AUTHORIZATION;
use http::{HeaderMap, StatusCode};

/// Why a token was refused. Messages never echo the token or claim values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No bearer token was presented.
    #[error("no bearer token")]
    Missing,
    /// The token or the Authorization header is not well formed.
    #[error("malformed token")]
    Malformed,
    /// The token's issuer is not trusted.
    #[error("token issuer is not trusted")]
    UnknownIssuer,
    /// The token's algorithm is not allowed for its issuer or key.
    #[error("token algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// No key of the issuer matches the token.
    #[error("token signing key is unknown")]
    UnknownKey,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// The token has expired.
    #[error("token has expired")]
    Expired,
    /// The token is not valid yet.
    #[error("token is not valid yet")]
    NotYetValid,
    /// The token is not meant for this audience.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// A claim is missing, has the wrong type, or holds a refused value.
    #[error("token claim rejected: {0}")]
    ClaimRejected(String),
    /// The issuer's keys could not be fetched and no cached key matches.
    #[error("identity provider unavailable: {0}")]
    ProviderUnavailable(String),
}

impl AuthError {
    /// The HTTP status to answer with: 503 when the provider is unreachable, else 401.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::ProviderUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// The token of the single `Authorization: Bearer <token>` header (scheme case-insensitive).
///
/// No header, or a scheme other than Bearer, is [`AuthError::Missing`]; several headers, a
/// non-ASCII value, or an empty or space-containing token is [`AuthError::Malformed`].
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::Missing)?;
    // Two Authorization headers could be read differently by two hops: refuse them.
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() || token.contains(|c: char| c.is_ascii_whitespace()) {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// Why an issuer or access-rule configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No issuer was configured at all.
    #[error("no token issuer is configured")]
    NoIssuers,
    /// The same issuer appears twice.
    #[error("issuer {0:?} is configured twice")]
    DuplicateIssuer(String),
    /// A field is empty or holds characters it must not.
    #[error("issuer {issuer:?}: {field} {problem}")]
    InvalidField {
        /// The issuer concerned.
        issuer: String,
        /// The field concerned.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Not exactly one key source was set.
    #[error("issuer {issuer:?}: set exactly one of jwks_file, public_key_file, jwks_url (found {found})")]
    KeySources {
        /// The issuer concerned.
        issuer: String,
        /// How many key sources were set.
        found: usize,
    },
    /// The JWKS URL is not usable or not secure.
    #[error("issuer {issuer:?}: jwks_url {problem}")]
    JwksUrl {
        /// The issuer concerned.
        issuer: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// An algorithm is refused (`none`, HMAC) or unknown.
    #[error("issuer {issuer:?}: algorithm {alg:?} is not allowed (asymmetric algorithms only)")]
    Algorithm {
        /// The issuer concerned.
        issuer: String,
        /// The refused algorithm name.
        alg: String,
    },
    /// An extra key is not lowercase `[a-z0-9._/-]`.
    #[error("issuer {issuer:?}: extra key {key:?} must be non-empty lowercase [a-z0-9._/-]")]
    ExtraKey {
        /// The issuer concerned.
        issuer: String,
        /// The refused key.
        key: String,
    },
    /// A key, JWKS or CA file could not be read.
    #[error("issuer {issuer:?}: cannot read {path:?}: {source}")]
    ReadFile {
        /// The issuer concerned.
        issuer: String,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Keys or CA certificates could not be parsed or are unusable.
    #[error("issuer {issuer:?}: {reason}")]
    Keys {
        /// The issuer concerned.
        issuer: String,
        /// What is wrong with them.
        reason: String,
    },
    /// Two issuers could map tokens to the same username or group (their prefixes overlap).
    #[error(
        "issuers {first:?} and {second:?} can both produce the same {what}: give each a {what}_prefix \
         that is not a prefix of the other's (such as \"a:\" and \"b:\"), or the users of one get the \
         RBAC bindings of the other's"
    )]
    OverlappingNames {
        /// One issuer.
        first: String,
        /// The other.
        second: String,
        /// `username` or `groups`.
        what: &'static str,
    },
    /// An access rule is empty or holds an empty pattern.
    #[error("access rule {index}: {problem}")]
    AccessRule {
        /// Position of the rule in the list, from 0.
        index: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_str(v).expect("header value"));
        }
        map
    }

    #[test]
    fn extracts_bearer_token() {
        assert_eq!(bearer_token(&headers(&["Bearer abc.def.ghi"])), Ok("abc.def.ghi"));
        assert_eq!(bearer_token(&headers(&["bEaReR  abc"])), Ok("abc"));
    }

    #[test]
    fn refuses_missing_other_scheme_and_ambiguity() {
        assert_eq!(bearer_token(&HeaderMap::new()), Err(AuthError::Missing));
        assert_eq!(bearer_token(&headers(&["Basic dXNlcjpwdw=="])), Err(AuthError::Missing));
        assert_eq!(bearer_token(&headers(&["Bearer"])), Err(AuthError::Malformed));
        assert_eq!(bearer_token(&headers(&["Bearer "])), Err(AuthError::Malformed));
        assert_eq!(bearer_token(&headers(&["Bearer a b"])), Err(AuthError::Malformed));
        assert_eq!(bearer_token(&headers(&["Bearer a\tb"])), Err(AuthError::Malformed));
        assert_eq!(
            bearer_token(&headers(&["Bearer a", "Bearer b"])),
            Err(AuthError::Malformed)
        );
        let mut map = HeaderMap::new();
        map.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff").expect("obs-text"),
        );
        assert_eq!(bearer_token(&map), Err(AuthError::Malformed));
    }

    #[test]
    fn status_codes() {
        assert_eq!(AuthError::Expired.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            AuthError::ProviderUnavailable("down".into()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
