//! The relay's own token issuer: an ES256 key on disk, tokens, and its public JWKS.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use super::IssuerConfig;
use super::signing::SigningKey;

/// Why a signing key could not be loaded or a token issued.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// The key file does not exist and generating one was not allowed.
    #[error("key file {0:?} does not exist")]
    Missing(PathBuf),
    /// The key file could not be read or written.
    #[error("key file {path:?}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file does not hold a PKCS#8 EC P-256 private key.
    #[error("key file {0:?} is not a PKCS#8 PEM EC P-256 private key")]
    InvalidKey(PathBuf),
    /// The subject, a group, the issuer or the audience is empty or holds control characters.
    #[error("{0} is empty or contains control characters")]
    InvalidClaim(&'static str),
    /// The lifetime is zero or longer than the issuer's `max_token_lifetime`.
    #[error(
        "token lifetime must be between 1 s and the issuer's max_token_lifetime ({0}); raise it in [issuer] for longer tokens"
    )]
    InvalidTtl(String),
    /// Signing failed.
    #[error("signing the token: {0}")]
    Sign(String),
}

/// The relay's own ES256 issuer; the private key never appears in `Debug` output.
#[derive(Debug)]
pub struct BuiltinIssuer {
    issuer: String,
    audience: String,
    username_prefix: String,
    groups_prefix: String,
    max_lifetime: Duration,
    key: SigningKey,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    /// One audience as a string, several as an array.
    aud: serde_json::Value,
    sub: &'a str,
    groups: &'a [String],
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl BuiltinIssuer {
    /// Load the PKCS#8 PEM P-256 key at `key_file`, or create it (mode 0600) if missing and `generate`.
    pub fn load_or_generate(
        key_file: &Path,
        issuer: String,
        audience: String,
        generate: bool,
    ) -> Result<Self, IssuerError> {
        for (what, value) in [("issuer", &issuer), ("audience", &audience)] {
            if value.is_empty() || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(IssuerError::InvalidClaim(what));
            }
        }
        Ok(Self {
            issuer,
            audience,
            username_prefix: String::new(),
            groups_prefix: String::new(),
            max_lifetime: Duration::from_secs(24 * 3600),
            key: SigningKey::load_or_generate(key_file, generate)?,
        })
    }

    /// The same issuer with these prefixes for the names its tokens carry (see [`IssuerConfig`]).
    pub fn with_naming(mut self, username_prefix: &str, groups_prefix: &str) -> Self {
        self.username_prefix = username_prefix.to_owned();
        self.groups_prefix = groups_prefix.to_owned();
        self
    }

    /// The same issuer, issuing and accepting tokens that live at most `max`.
    pub fn with_max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = max;
        self
    }

    /// Issue an ES256 token for `subject` and `groups`, valid for `ttl` from now.
    pub fn issue(&self, subject: &str, groups: &[String], ttl: Duration) -> Result<String, IssuerError> {
        self.issue_for(std::slice::from_ref(&self.audience), subject, groups, ttl)
    }

    /// Like [`BuiltinIssuer::issue`], for `audiences` instead of the configured one (a token bound
    /// to one cluster's `caller_audience`).
    pub fn issue_for(
        &self,
        audiences: &[String],
        subject: &str,
        groups: &[String],
        ttl: Duration,
    ) -> Result<String, IssuerError> {
        if subject.is_empty() || subject.chars().any(char::is_control) {
            return Err(IssuerError::InvalidClaim("subject"));
        }
        if groups.iter().any(|g| g.is_empty() || g.chars().any(char::is_control)) {
            return Err(IssuerError::InvalidClaim("group"));
        }
        if audiences.is_empty()
            || audiences
                .iter()
                .any(|a| a.is_empty() || a.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err(IssuerError::InvalidClaim("audience"));
        }
        if ttl.as_secs() == 0 || ttl > self.max_lifetime {
            return Err(IssuerError::InvalidTtl(format!("{}s", self.max_lifetime.as_secs())));
        }
        let now = unix_now();
        self.key.sign(&Claims {
            iss: &self.issuer,
            aud: match audiences {
                [one] => serde_json::json!(one),
                many => serde_json::json!(many),
            },
            sub: subject,
            groups,
            iat: now,
            nbf: now,
            exp: now + ttl.as_secs(),
            jti: URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()),
        })
    }

    /// The public key as a JWKS document, to publish or to trust.
    pub fn jwks(&self) -> serde_json::Value {
        self.key.jwks()
    }

    /// An issuer config that trusts this issuer's tokens through an in-memory copy of its key.
    pub fn issuer_config(&self) -> IssuerConfig {
        let mut config = IssuerConfig::new(self.issuer.clone(), vec![self.audience.clone()]);
        config.algorithms = vec!["ES256".to_owned()];
        config.inline_jwks = Some(self.jwks().to_string());
        config.username_prefix.clone_from(&self.username_prefix);
        config.groups_prefix.clone_from(&self.groups_prefix);
        config.max_token_lifetime = format!("{}s", self.max_lifetime.as_secs());
        config
    }

    /// The `iss` of issued tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of issued tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The key id put in every token header.
    pub fn kid(&self) -> &str {
        self.key.kid()
    }

    /// The signing key (the relay compares it with its other keys).
    pub fn key(&self) -> &SigningKey {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authenticator;
    use crate::auth::keys::keys_from_jwks;

    fn issuer(dir: &Path) -> BuiltinIssuer {
        BuiltinIssuer::load_or_generate(
            &dir.join("keys/issuer.pem"),
            "hawser-relay".into(),
            "hawser".into(),
            true,
        )
        .expect("generates")
    }

    #[tokio::test]
    async fn issued_tokens_are_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let issuer = issuer(dir.path());
        let auth = Authenticator::new(vec![issuer.issuer_config()]).expect("config");
        let groups = vec!["dev".to_owned(), "ops".to_owned()];
        let token = issuer.issue("alice", &groups, Duration::from_secs(60)).expect("issues");
        let id = auth.authenticate(&token).await.expect("accepted");
        assert_eq!(id.user, "alice");
        assert_eq!(id.groups, groups);
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.kid.as_deref(), Some(issuer.kid()));
        assert_eq!(issuer.kid().len(), 22, "16 bytes in base64url");
    }

    #[tokio::test]
    async fn key_file_is_private_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = issuer(dir.path());
        let path = dir.path().join("keys/issuer.pem");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("exists").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second =
            BuiltinIssuer::load_or_generate(&path, "hawser-relay".into(), "hawser".into(), false).expect("loads");
        assert_eq!(first.kid(), second.kid());
        let token = second.issue("bob", &[], Duration::from_secs(60)).expect("issues");
        let auth = Authenticator::new(vec![first.issuer_config()]).expect("config");
        assert_eq!(auth.authenticate(&token).await.expect("accepted").user, "bob");
    }

    #[test]
    fn missing_or_wrong_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.pem");
        let err = BuiltinIssuer::load_or_generate(&path, "i".into(), "a".into(), false).expect_err("missing");
        assert!(matches!(err, IssuerError::Missing(_)));
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("p384");
        std::fs::write(&path, p384.serialize_pem()).expect("write");
        let err = BuiltinIssuer::load_or_generate(&path, "i".into(), "a".into(), false).expect_err("p384");
        assert!(matches!(err, IssuerError::InvalidKey(_)));
    }

    #[test]
    fn jwks_round_trips_and_debug_masks_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let issuer = issuer(dir.path());
        let keys = keys_from_jwks(issuer.jwks().to_string().as_bytes()).expect("parses");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some(issuer.kid()));
        let token = issuer.issue("carol", &[], Duration::from_secs(60)).expect("issues");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&["hawser"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &keys[0].key, &validation).expect("verifies");
        assert_eq!(data.claims["sub"], "carol");
        assert!(data.claims["jti"].as_str().is_some_and(|j| j.len() == 22));
        let debug = format!("{issuer:?}");
        let pem = std::fs::read_to_string(dir.path().join("keys/issuer.pem")).expect("read");
        let secret_line = pem.lines().nth(1).expect("pem body");
        assert!(debug.contains("redacted") && !debug.contains(secret_line));
    }

    #[test]
    fn refuses_bad_claims_and_ttl() {
        let dir = tempfile::tempdir().expect("tempdir");
        let issuer = issuer(dir.path());
        let ttl = Duration::from_secs(60);
        assert!(matches!(issuer.issue("", &[], ttl), Err(IssuerError::InvalidClaim(_))));
        assert!(matches!(
            issuer.issue("a\nb", &[], ttl),
            Err(IssuerError::InvalidClaim(_))
        ));
        assert!(matches!(
            issuer.issue("a", &["x\r".into()], ttl),
            Err(IssuerError::InvalidClaim(_))
        ));
        assert!(matches!(
            issuer.issue("a", &[], Duration::from_millis(500)),
            Err(IssuerError::InvalidTtl(_))
        ));
        assert!(
            matches!(
                issuer.issue("a", &[], Duration::from_secs(24 * 3600 + 1)),
                Err(IssuerError::InvalidTtl(_))
            ),
            "a day by default"
        );
        let long = issuer.with_max_lifetime(Duration::from_secs(7 * 86_400));
        assert!(long.issue("a", &[], Duration::from_secs(7 * 86_400)).is_ok());
    }
}
