//! Configuration of one trusted token issuer, and its validation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use jsonwebtoken::Algorithm;
use jsonwebtoken::AlgorithmFamily;
use serde::Deserialize;

use super::ConfigError;
use super::rules::{ClaimNames, RequiredClaims};

/// One trusted token issuer: who signs, for whom, with which keys, and how claims become an identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exact `iss` value the tokens carry (no trailing-slash leniency).
    pub issuer: String,
    /// Accepted audiences; a token's `aud` must contain at least one of them.
    pub audiences: Vec<String>,
    /// JWKS JSON file holding the issuer's public keys.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// PEM file holding one or more public keys (RSA, EC P-256/P-384, Ed25519).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// HTTPS URL of the issuer's JWKS (plain http only for 127.0.0.1, ::1 or localhost).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// PEM CA bundle trusted for `jwks_url` instead of the system roots.
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// Signature algorithms accepted from this issuer (never `none`, never HS*).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Claim holding the username.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// Prefix put before every username.
    #[serde(default)]
    pub username_prefix: String,
    /// Claim(s) holding the groups, each a string or an array of strings: `"groups"`, or a list
    /// such as `["repository", "environment"]`, whose values all become groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: ClaimNames,
    /// Prefix put before every group.
    #[serde(default)]
    pub groups_prefix: String,
    /// Claim holding the user's uid, if any.
    #[serde(default)]
    pub uid_claim: Option<String>,
    /// Extra identity attributes: extra key -> claim name.
    #[serde(default)]
    pub extra_claims: BTreeMap<String, String>,
    /// Claims a token must carry, each matching one of its patterns (`*`, `?`): a CI job's
    /// `repository = "org/repo"`, `ref = ["refs/heads/main", "refs/tags/v*"]`.
    #[serde(default)]
    pub required_claims: RequiredClaims,
    /// Accept `system:` users and groups from this issuer (off by default).
    #[serde(default)]
    pub allow_system_names: bool,
    /// Longest lifetime a token may have (`exp` minus `iat`, or minus now without `iat`), such
    /// as `1h` or `7d`; a longer-lived token is refused even before it expires.
    #[serde(default = "default_max_token_lifetime")]
    pub max_token_lifetime: String,
    /// In-memory JWKS, used by the relay's own issuer; never read from a config file.
    #[serde(skip)]
    pub(crate) inline_jwks: Option<String>,
    /// The tokens are relay assertions (identity already mapped), not callers' tokens.
    #[serde(skip)]
    pub(crate) assertion: bool,
}

fn default_algorithms() -> Vec<String> {
    [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// The default `max_token_lifetime`: a day, so a leaked token dies within one.
pub const DEFAULT_MAX_TOKEN_LIFETIME: &str = "24h";

fn default_max_token_lifetime() -> String {
    DEFAULT_MAX_TOKEN_LIFETIME.to_owned()
}

fn default_username_claim() -> String {
    "sub".to_owned()
}

fn default_groups_claim() -> ClaimNames {
    ClaimNames(vec!["groups".to_owned()])
}

impl IssuerConfig {
    /// A config for `issuer` and `audiences` with every other field at its default and no key source.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audiences,
            jwks_file: None,
            public_key_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            algorithms: default_algorithms(),
            username_claim: default_username_claim(),
            username_prefix: String::new(),
            groups_claim: default_groups_claim(),
            groups_prefix: String::new(),
            uid_claim: None,
            extra_claims: BTreeMap::new(),
            required_claims: RequiredClaims::new(),
            allow_system_names: false,
            max_token_lifetime: default_max_token_lifetime(),
            inline_jwks: None,
            assertion: false,
        }
    }

    /// Check the whole config; the authenticator refuses to start with an invalid one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let field = |field, problem| ConfigError::InvalidField {
            issuer: self.issuer.clone(),
            field,
            problem,
        };
        if self.issuer.is_empty() {
            return Err(field("issuer", "is empty"));
        }
        if self.issuer.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(field("issuer", "contains whitespace or control characters"));
        }
        if self.audiences.is_empty() {
            return Err(field("audiences", "is empty"));
        }
        if self.audiences.iter().any(String::is_empty) {
            return Err(field("audiences", "contains an empty audience"));
        }
        self.validate_key_source()?;
        self.parsed_algorithms()?;
        self.max_lifetime_secs()?;
        if self.username_claim.is_empty() {
            return Err(field("username_claim", "is empty"));
        }
        if self.groups_claim.0.is_empty() || self.groups_claim.0.iter().any(String::is_empty) {
            return Err(field("groups_claim", "is empty or names an empty claim"));
        }
        for (claim, patterns) in &self.required_claims {
            if claim.is_empty() || patterns.raw.is_empty() {
                return Err(field("required_claims", "names an empty claim or lists no pattern"));
            }
        }
        if self.uid_claim.as_deref() == Some("") {
            return Err(field("uid_claim", "is empty"));
        }
        // Prefixes end up in Impersonate-* header values: no line breaks or NUL.
        for (name, prefix) in [
            ("username_prefix", &self.username_prefix),
            ("groups_prefix", &self.groups_prefix),
        ] {
            if prefix.contains(['\r', '\n', '\0']) {
                return Err(field(name, "contains CR, LF or NUL"));
            }
        }
        for (key, claim) in &self.extra_claims {
            // The apiserver lowercases extra keys from headers, so upper case would be lossy.
            let ok = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/-".contains(&b));
            if !ok {
                return Err(ConfigError::ExtraKey {
                    issuer: self.issuer.clone(),
                    key: key.clone(),
                });
            }
            if claim.is_empty() {
                return Err(field("extra_claims", "maps a key to an empty claim name"));
            }
        }
        Ok(())
    }

    fn validate_key_source(&self) -> Result<(), ConfigError> {
        let found = [
            self.jwks_file.is_some(),
            self.public_key_file.is_some(),
            self.jwks_url.is_some(),
            self.inline_jwks.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count();
        if found != 1 {
            return Err(ConfigError::KeySources {
                issuer: self.issuer.clone(),
                found,
            });
        }
        let url_error = |problem| ConfigError::JwksUrl {
            issuer: self.issuer.clone(),
            problem,
        };
        if self.jwks_ca_file.is_some() && self.jwks_url.is_none() {
            return Err(url_error("is not set, but jwks_ca_file is"));
        }
        if let Some(url) = &self.jwks_url {
            self.jwks_uri_of(url)?;
        }
        Ok(())
    }

    /// Parse and vet the JWKS URL: https, or http to a loopback host only.
    pub(crate) fn jwks_uri_of(&self, url: &str) -> Result<http::Uri, ConfigError> {
        let url_error = |problem| ConfigError::JwksUrl {
            issuer: self.issuer.clone(),
            problem,
        };
        let uri: http::Uri = url.parse().map_err(|_| url_error("is not a valid URL"))?;
        let authority = uri.authority().ok_or_else(|| url_error("has no host"))?;
        // Credentials in the URL would end up in logs and error messages.
        if authority.as_str().contains('@') {
            return Err(url_error("must not contain credentials"));
        }
        match uri.scheme_str() {
            Some("https") => Ok(uri),
            Some("http") if matches!(authority.host(), "127.0.0.1" | "localhost" | "[::1]") => Ok(uri),
            Some("http") => Err(url_error(
                "must use https (plain http only to 127.0.0.1, ::1 or localhost)",
            )),
            _ => Err(url_error("must be an https URL")),
        }
    }

    /// `max_token_lifetime` in seconds.
    pub(crate) fn max_lifetime_secs(&self) -> Result<u64, ConfigError> {
        crate::duration::parse_duration(&self.max_token_lifetime)
            .map(|d| d.as_secs())
            .map_err(|_| ConfigError::InvalidField {
                issuer: self.issuer.clone(),
                field: "max_token_lifetime",
                problem: "is not a duration such as 1h or 7d",
            })
    }

    /// The allow-list as `jsonwebtoken` algorithms, refusing `none`, HMAC and unknown names.
    pub(crate) fn parsed_algorithms(&self) -> Result<Vec<Algorithm>, ConfigError> {
        let refuse = |alg: &str| ConfigError::Algorithm {
            issuer: self.issuer.clone(),
            alg: alg.to_owned(),
        };
        if self.algorithms.is_empty() {
            return Err(ConfigError::InvalidField {
                issuer: self.issuer.clone(),
                field: "algorithms",
                problem: "is empty",
            });
        }
        self.algorithms
            .iter()
            .map(|name| match Algorithm::from_str(name) {
                Ok(alg) if alg.family() != AlgorithmFamily::Hmac => Ok(alg),
                _ => Err(refuse(name)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> IssuerConfig {
        let mut config = IssuerConfig::new("https://idp.example", vec!["hawser".to_owned()]);
        config.jwks_file = Some("/etc/hawser/jwks.json".into());
        config
    }

    #[test]
    fn defaults_from_toml_and_unknown_fields_refused() {
        let config: IssuerConfig =
            toml::from_str("issuer = \"https://idp.example\"\naudiences = [\"a\"]\njwks_file = \"/k.json\"\n")
                .expect("parses");
        assert_eq!(config.username_claim, "sub");
        assert_eq!(config.groups_claim.0, ["groups"]);
        assert!(config.required_claims.is_empty());
        assert!(config.algorithms.iter().any(|a| a == "EdDSA"));
        assert!(!config.allow_system_names);
        config.validate().expect("valid");
        let unknown = "issuer = \"x\"\naudiences = [\"a\"]\njwks_file = \"/k\"\ninline_jwks = \"{}\"\n";
        assert!(toml::from_str::<IssuerConfig>(unknown).is_err());
    }

    #[test]
    fn exactly_one_key_source() {
        let mut config = base();
        config.public_key_file = Some("/k.pem".into());
        assert!(matches!(
            config.validate(),
            Err(ConfigError::KeySources { found: 2, .. })
        ));
        config.jwks_file = None;
        config.public_key_file = None;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::KeySources { found: 0, .. })
        ));
    }

    #[test]
    fn audiences_required() {
        let mut config = base();
        config.audiences.clear();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::InvalidField { field: "audiences", .. })
        ));
    }

    #[test]
    fn jwks_url_must_be_https_unless_loopback() {
        let mut config = base();
        config.jwks_file = None;
        for (url, ok) in [
            ("https://idp.example/keys", true),
            ("http://127.0.0.1:8080/keys", true),
            ("http://localhost/keys", true),
            ("http://[::1]:9/keys", true),
            ("http://idp.example/keys", false),
            ("http://127.0.0.2/keys", false),
            ("ftp://idp.example/keys", false),
            ("https://user:pw@idp.example/keys", false),
            ("/keys", false),
        ] {
            config.jwks_url = Some(url.to_owned());
            assert_eq!(config.validate().is_ok(), ok, "{url}");
        }
        config.jwks_url = None;
        config.jwks_file = Some("/k".into());
        config.jwks_ca_file = Some("/ca.pem".into());
        assert!(matches!(config.validate(), Err(ConfigError::JwksUrl { .. })));
    }

    #[test]
    fn none_and_hmac_refused() {
        for alg in ["none", "HS256", "HS384", "HS512", "RS1", ""] {
            let mut config = base();
            config.algorithms = vec!["ES256".to_owned(), alg.to_owned()];
            assert!(matches!(config.validate(), Err(ConfigError::Algorithm { .. })), "{alg}");
        }
        let mut config = base();
        config.algorithms.clear();
        assert!(config.validate().is_err());
    }

    #[test]
    fn extra_keys_and_prefixes_checked() {
        for (key, ok) in [
            ("example.com/team", true),
            ("a-b_c", true),
            ("Team", false),
            ("", false),
            ("a b", false),
        ] {
            let mut config = base();
            config.extra_claims.insert(key.to_owned(), "claim".to_owned());
            assert_eq!(config.validate().is_ok(), ok, "{key:?}");
        }
        for bad in ["oidc\r:", "oidc\n:", "oidc\0:"] {
            let mut config = base();
            config.username_prefix = bad.to_owned();
            assert!(config.validate().is_err());
            let mut config = base();
            config.groups_prefix = bad.to_owned();
            assert!(config.validate().is_err());
        }
    }
}
