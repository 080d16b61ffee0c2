//! The authenticator: from a bearer token to an [`Identity`], per trusted issuer.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::claims::{Caller, audiences_of, check_registered, identity_from, identity_from_assertion};
use super::clock::{Clock, SystemClock};
use super::keys::{KeyError, VerifyKey, keys_from_jwks, keys_from_pem};
use super::remote::{RefetchPolicy, RemoteKeys};
use super::token::{StrictObject, Unverified, peek};
use super::verified::{KeysSeen, Verified, digest};
use super::{AuthError, Identity};
use super::{ConfigError, IssuerConfig};

/// Largest key file read at start-up.
const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;

/// Validates bearer JWTs from the configured issuers and maps them to identities.
pub struct Authenticator {
    issuers: Vec<Issuer>,
    by_name: HashMap<String, usize>,
    clock: Arc<dyn Clock>,
    verified: Verified,
}

struct Issuer {
    config: IssuerConfig,
    algorithms: Vec<Algorithm>,
    /// `max_token_lifetime` in seconds.
    max_lifetime: u64,
    keys: KeySource,
}

enum KeySource {
    Static(Vec<VerifyKey>),
    Remote(RemoteKeys),
}

/// Result of trying a key set on a token.
enum Attempt {
    Verified(Map<String, Value>),
    /// No key of the set is a candidate (unknown `kid`, or no key of the right type).
    NoKey,
    /// Candidates exist but none verified the signature.
    BadSignature,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<_> = self.issuers.iter().map(|i| &i.config.issuer).collect();
        f.debug_struct("Authenticator")
            .field("issuers", &issuers)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// How many verified tokens are remembered (tests).
    #[cfg(test)]
    pub(crate) fn remembered(&self) -> usize {
        self.verified.len()
    }

    /// Validate the configs and load static keys; JWKS URLs are fetched on first use.
    pub fn new(configs: Vec<IssuerConfig>) -> Result<Self, ConfigError> {
        Self::with_clock(configs, Arc::new(SystemClock::new()), RefetchPolicy::default())
    }

    /// Like [`Authenticator::new`] with a replaceable clock and refetch policy (tests).
    pub(crate) fn with_clock(
        configs: Vec<IssuerConfig>,
        clock: Arc<dyn Clock>,
        policy: RefetchPolicy,
    ) -> Result<Self, ConfigError> {
        if configs.is_empty() {
            return Err(ConfigError::NoIssuers);
        }
        let mut issuers = Vec::with_capacity(configs.len());
        let mut by_name = HashMap::new();
        for config in configs {
            config.validate()?;
            if by_name.insert(config.issuer.clone(), issuers.len()).is_some() {
                return Err(ConfigError::DuplicateIssuer(config.issuer));
            }
            let algorithms = config.parsed_algorithms()?;
            let max_lifetime = config.max_lifetime_secs()?;
            let keys = load_keys(&config, &clock, &policy)?;
            issuers.push(Issuer {
                config,
                algorithms,
                max_lifetime,
                keys,
            });
        }
        refuse_overlapping_names(&issuers)?;
        Ok(Self {
            issuers,
            by_name,
            clock,
            verified: Verified::default(),
        })
    }

    /// Validate `token` and return the caller's identity; see the module doc for the rules.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        self.authenticate_caller(token).await.map(|caller| caller.identity)
    }

    /// Validate `token` and return the caller: identity, issuer, audiences and expiry.
    pub async fn authenticate_caller(&self, token: &str) -> Result<Caller, AuthError> {
        let key = digest(token);
        let current = |keys: KeysSeen| self.issuers.get(keys.issuer).map(Issuer::generation) == Some(keys.generation);
        if let Some(caller) = self.verified.get(&key, current, self.clock.as_ref()) {
            return Ok(caller);
        }
        let unverified = peek(token)?;
        let index = *self.by_name.get(&unverified.iss).ok_or(AuthError::UnknownIssuer)?;
        let issuer = &self.issuers[index];
        let alg = Algorithm::from_str(&unverified.alg).map_err(|_| AuthError::AlgorithmNotAllowed)?;
        if !issuer.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let (claims, generation) = issuer.verify(token, &unverified, alg).await?;
        check_registered(&claims, &issuer.config, self.clock.unix_seconds(), issuer.max_lifetime)?;
        let identity = if issuer.config.assertion {
            identity_from_assertion(&claims, &issuer.config)?
        } else {
            identity_from(&claims, &issuer.config)?
        };
        // check_registered proved exp is there and a number.
        let expires_at = claims.get("exp").and_then(Value::as_f64).unwrap_or_default() as u64;
        let caller = Caller {
            identity,
            issuer: issuer.config.issuer.clone(),
            audiences: audiences_of(&claims),
            expires_at,
        };
        let keys = KeysSeen {
            issuer: index,
            generation,
        };
        self.verified.insert(key, &caller, keys, self.clock.as_ref());
        Ok(caller)
    }
}

/// With several issuers, each must map to names no other can produce: issuer A's names are
/// `A-prefix + claim`, so A and B collide whenever one prefix is a prefix of the other (two empty
/// prefixes included). Kubernetes' structured authentication warns of the same.
fn refuse_overlapping_names(issuers: &[Issuer]) -> Result<(), ConfigError> {
    for (i, a) in issuers.iter().enumerate() {
        for b in &issuers[i + 1..] {
            let (a, b) = (&a.config, &b.config);
            let overlap = |x: &str, y: &str| x.starts_with(y) || y.starts_with(x);
            for (what, x, y) in [
                ("username", &a.username_prefix, &b.username_prefix),
                ("groups", &a.groups_prefix, &b.groups_prefix),
            ] {
                if overlap(x, y) {
                    return Err(ConfigError::OverlappingNames {
                        first: a.issuer.clone(),
                        second: b.issuer.clone(),
                        what,
                    });
                }
            }
        }
    }
    Ok(())
}

fn load_keys(config: &IssuerConfig, clock: &Arc<dyn Clock>, policy: &RefetchPolicy) -> Result<KeySource, ConfigError> {
    let keys_error = |e: KeyError| ConfigError::Keys {
        issuer: config.issuer.clone(),
        reason: e.0,
    };
    if let Some(jwks) = &config.inline_jwks {
        return keys_from_jwks(jwks.as_bytes())
            .map(KeySource::Static)
            .map_err(keys_error);
    }
    if let Some(path) = &config.jwks_file {
        return keys_from_jwks(&read_limited(config, path)?)
            .map(KeySource::Static)
            .map_err(keys_error);
    }
    if let Some(path) = &config.public_key_file {
        let text = String::from_utf8(read_limited(config, path)?)
            .map_err(|_| keys_error(KeyError("PEM file is not UTF-8".to_owned())))?;
        return keys_from_pem(&text).map(KeySource::Static).map_err(keys_error);
    }
    RemoteKeys::new(config, Arc::clone(clock), policy.clone()).map(KeySource::Remote)
}

fn read_limited(config: &IssuerConfig, path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let read_error = |source| ConfigError::ReadFile {
        issuer: config.issuer.clone(),
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_KEY_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(ConfigError::Keys {
            issuer: config.issuer.clone(),
            reason: format!("{path:?} is over 1 MiB"),
        });
    }
    Ok(bytes)
}

impl Issuer {
    /// Which key set verifies now: 0 for static keys, the fetch generation for a JWKS URL.
    fn generation(&self) -> u64 {
        match &self.keys {
            KeySource::Static(_) => 0,
            KeySource::Remote(remote) => remote.generation(),
        }
    }

    async fn verify(
        &self,
        token: &str,
        unverified: &Unverified,
        alg: Algorithm,
    ) -> Result<(Map<String, Value>, u64), AuthError> {
        let kid = unverified.kid.as_deref();
        let remote = match &self.keys {
            KeySource::Static(keys) => {
                return match self.try_keys(keys, token, kid, alg)? {
                    Attempt::Verified(claims) => Ok((claims, 0)),
                    Attempt::NoKey => Err(AuthError::UnknownKey),
                    Attempt::BadSignature => Err(AuthError::BadSignature),
                };
            }
            KeySource::Remote(remote) => remote,
        };
        let cached = remote.keys().await.map_err(AuthError::ProviderUnavailable)?;
        let first = match self.try_keys(&cached.keys, token, kid, alg)? {
            Attempt::Verified(claims) => return Ok((claims, cached.generation)),
            // A named key that exists and fails is a bad signature, not a rotation.
            Attempt::BadSignature if kid.is_some() => return Err(AuthError::BadSignature),
            other => other,
        };
        // The issuer may have rotated keys: one (merged, rate-limited) refetch, then judge again.
        let fresh = remote
            .refresh(cached.generation)
            .await
            .map_err(AuthError::ProviderUnavailable)?;
        let second = if fresh.generation == cached.generation {
            first
        } else {
            self.try_keys(&fresh.keys, token, kid, alg)?
        };
        match second {
            Attempt::Verified(claims) => Ok((claims, fresh.generation)),
            Attempt::NoKey => Err(AuthError::UnknownKey),
            Attempt::BadSignature => Err(AuthError::BadSignature),
        }
    }

    /// Try the candidate keys: the ones named by `kid` (keys without a kid, as from PEM, if none
    /// is named so), or every key if the token names none.
    fn try_keys(
        &self,
        keys: &[VerifyKey],
        token: &str,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Attempt, AuthError> {
        let mut named: Vec<&VerifyKey> = keys
            .iter()
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .collect();
        let unnamed_fallback = named.is_empty();
        if unnamed_fallback {
            named = keys.iter().filter(|k| k.kid.is_none()).collect();
        }
        if named.is_empty() {
            return Ok(Attempt::NoKey);
        }
        let candidates: Vec<&VerifyKey> = named.into_iter().filter(|k| k.accepts(alg)).collect();
        if candidates.is_empty() {
            // A key named by kid exists but is of another type or bound to another algorithm.
            let named_exactly = kid.is_some() && !unnamed_fallback;
            return if named_exactly {
                Err(AuthError::AlgorithmNotAllowed)
            } else {
                Ok(Attempt::NoKey)
            };
        }
        let validation = self.validation(alg);
        for key in candidates {
            match jsonwebtoken::decode::<StrictObject>(token, &key.key, &validation) {
                Ok(data) => return Ok(Attempt::Verified(data.claims.0)),
                Err(e) => match e.kind() {
                    // This key did not sign it; another candidate may have.
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidEddsaKey
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidKeyFormat
                    | ErrorKind::Signing(_) => continue,
                    kind => return Err(map_error(kind)),
                },
            }
        }
        // An unknown kid that no kid-less key verifies is an unknown key (and may be a rotation).
        Ok(if unnamed_fallback {
            Attempt::NoKey
        } else {
            Attempt::BadSignature
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        // Time claims are checked afterwards against our clock: exp without leeway, nbf with a bounded one.
        validation.leeway = 0;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&self.config.audiences);
        validation
    }
}

/// Map a `jsonwebtoken` failure that is not about the key to our error.
fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
            AuthError::AlgorithmNotAllowed
        }
        ErrorKind::InvalidIssuer => AuthError::UnknownIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::UnknownIssuer,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::ClaimRejected(format!("{claim} is required")),
        ErrorKind::InvalidClaimFormat(claim) => AuthError::ClaimRejected(format!("{claim} has the wrong type")),
        _ => AuthError::Malformed,
    }
}
