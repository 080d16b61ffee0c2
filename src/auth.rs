//! Caller authentication: JWT validation, identities, and access rules.
//!
//! # Design
//!
//! Every request that reaches a cluster carries a bearer JWT. The relay validates it to decide
//! routing and access ([`AccessRules`]); the agent validates the same token again with its own
//! [`Authenticator`] and never takes the caller's identity from the relay. Both use this module,
//! so they parse and judge a token the same way.
//!
//! A token is judged in a fixed order, and each step only trusts what earlier steps proved:
//!
//! 1. Shape, before any cryptography: compact JWS only (three base64url parts), whole token at
//!    most 16 KiB, header at most 4 KiB, no `crit` extensions, no duplicate JSON members. The
//!    unverified `alg`, `kid` and `iss` are read only to pick an issuer and a key.
//! 2. Algorithm: must be in that issuer's allow-list, which can never hold `none` or an HMAC
//!    algorithm, and must fit the key's type (RSA, P-256, P-384, Ed25519) and the key's own `alg`.
//! 3. Signature, verified by `jsonwebtoken` with the issuer's keys: by `kid` if the token names
//!    one, otherwise each key of the right type. Keys come only from the issuer's configuration;
//!    `jku`, `jwk`, `x5u` and `x5c` headers are ignored.
//! 4. Registered claims: exact `iss`, `aud` containing a configured audience, `exp` required and
//!    checked without leeway, `nbf` with at most 30 s of leeway.
//! 5. Claim rules: each of the issuer's `required_claims` present and matching one of its
//!    patterns (a CI job's `repository`, `ref`), else refused naming the claim, not its value.
//! 6. Identity: username, groups, uid and extras from configured claims, with prefixes; values
//!    with control characters are refused (they would become `Impersonate-*` header values), and
//!    so are `system:` users and groups unless the issuer is explicitly allowed them.
//!
//! A token that passed every step is remembered by its SHA-256 for at most 30 s (never past its
//! `exp`), so the same token on the next request skips the signature check (`verified`).
//!
//! Keys come from a JWKS file, a PEM file or a JWKS URL. A URL's key set is cached; an unknown
//! `kid` causes at most one refetch, concurrent refetches are merged, and refetches are
//! rate-limited per issuer (one per 10 s), so a flood of random `kid`s cannot hammer the identity
//! provider. If the provider cannot be reached and no cached key fits, the token is refused
//! ([`AuthError::ProviderUnavailable`]): the module fails closed.
//!
//! The relay can also be its own issuer ([`BuiltinIssuer`]): an ES256 key kept in a 0600 file,
//! whose public half is trusted in memory through [`BuiltinIssuer::issuer_config`].
//!
//! # Threat model
//!
//! Callers are untrusted, and so is anything a token says until its signature is verified. The
//! attacks considered are:
//!
//! - forged tokens through algorithm confusion (`alg: none`, HMAC keyed with a public key, an RSA
//!   algorithm against an EC key): refused by the allow-list and key-type checks in step 2;
//! - tokens minted for another service (audience) or by another trusted issuer replayed here:
//!   refused by exact `iss` and required `aud`;
//! - expired tokens: no leeway on `exp`;
//! - resource exhaustion: size limits before parsing, a bounded JWKS body (1 MiB, 10 s), a bounded
//!   number of keys tried, and the rate-limited single-flight refetch;
//! - header injection through claims (CR, LF, NUL in a name that becomes an `Impersonate-*`
//!   header) and escalation through `system:masters`-style names: refused in step 5;
//! - unverified e-mail addresses used as usernames: refused when `email_verified` is false;
//! - leaking secrets through logs: errors say what was wrong without echoing the token or claim
//!   values, and key material is masked in `Debug` output.
//!
//! Out of scope: revoking a token before it expires (keep token lifetimes short), transport
//! security (TLS elsewhere), and authorization inside the cluster (Kubernetes RBAC decides, after
//! the agent impersonates the identity produced here).

mod access;
pub mod assertion;
mod authenticator;
mod builtin;
mod claims;
mod clock;
mod config;
mod error;
mod keys;
mod remote;
mod rules;
mod signing;
pub mod token;
mod verified;

#[cfg(test)]
mod jwks_url_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use access::{AccessRule, AccessRules};
pub use authenticator::Authenticator;
pub use builtin::{BuiltinIssuer, IssuerError};
pub use claims::{Caller, Identity};
pub use config::{DEFAULT_MAX_TOKEN_LIFETIME, IssuerConfig};
pub use error::{AuthError, ConfigError, bearer_token};
pub use rules::{ClaimNames, ClaimPatterns, RequiredClaims};
pub use signing::SigningKey;

/// The SHA-256 of a token: what caches remember it by (never the token).
pub fn token_digest(token: &str) -> [u8; 32] {
    verified::digest(token)
}
