//! Verification keys: parsing JWKS and PEM, and matching keys to token algorithms.

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::{Map, Value};

/// Most keys accepted from one JWKS or PEM: bounds the work a token without `kid` can cause.
pub(crate) const MAX_KEYS: usize = 64;

/// Why keys could not be loaded (never contains key material).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct KeyError(pub(crate) String);

/// The type of a public key, which decides the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// RSA, for RS* and PS*.
    Rsa,
    /// EC P-256, for ES256 only.
    P256,
    /// EC P-384, for ES384 only.
    P384,
    /// Ed25519, for EdDSA.
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this type can verify `alg` (an EC curve fixes its algorithm).
    fn fits(self, alg: Algorithm) -> bool {
        match self {
            KeyKind::Rsa => alg.family() == AlgorithmFamily::Rsa,
            KeyKind::P256 => alg == Algorithm::ES256,
            KeyKind::P384 => alg == Algorithm::ES384,
            KeyKind::Ed25519 => alg == Algorithm::EdDSA,
        }
    }

    /// An algorithm to probe the key with.
    fn probe_algorithm(self) -> Algorithm {
        match self {
            KeyKind::Rsa => Algorithm::RS256,
            KeyKind::P256 => Algorithm::ES256,
            KeyKind::P384 => Algorithm::ES384,
            KeyKind::Ed25519 => Algorithm::EdDSA,
        }
    }
}

/// One public key that can verify tokens (`DecodingKey` masks its bytes in `Debug`).
#[derive(Debug, Clone)]
pub(crate) struct VerifyKey {
    /// The key id, if the source named one.
    pub(crate) kid: Option<String>,
    /// The key's type.
    pub(crate) kind: KeyKind,
    /// The one algorithm this key is for, if the JWKS said so.
    pub(crate) alg: Option<Algorithm>,
    /// The key itself.
    pub(crate) key: DecodingKey,
}

impl VerifyKey {
    fn new(kid: Option<String>, kind: KeyKind, alg: Option<Algorithm>, key: DecodingKey) -> Result<Self, KeyError> {
        // Build a verifier once so that an invalid EC point or Ed25519 key fails at load time,
        // not as a confusing signature failure later. RSA keys are only parsed when verifying.
        jsonwebtoken::crypto::verify("", b"", &key, kind.probe_algorithm())
            .map_err(|_| KeyError(format!("{kind:?} key is not a valid public key")))?;
        Ok(Self { kid, kind, alg, key })
    }

    /// Whether this key may verify a token signed with `alg`.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|own| own == alg)
    }
}

/// Parse a JWKS document, skipping keys that are not for signatures or not supported.
pub(crate) fn keys_from_jwks(bytes: &[u8]) -> Result<Vec<VerifyKey>, KeyError> {
    #[derive(serde::Deserialize)]
    struct Jwks {
        keys: Vec<Map<String, Value>>,
    }
    let jwks: Jwks = serde_json::from_slice(bytes).map_err(|e| KeyError(format!("JWKS is not valid: {e}")))?;
    if jwks.keys.len() > MAX_KEYS {
        return Err(KeyError(format!(
            "JWKS holds {} keys, more than {MAX_KEYS}",
            jwks.keys.len()
        )));
    }
    let mut keys = Vec::new();
    for (index, jwk) in jwks.keys.iter().enumerate() {
        match key_from_jwk(jwk) {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => tracing::debug!(index, "skipping JWKS key not meant for signatures"),
            Err(e) => tracing::warn!(index, error = %e, "skipping unusable JWKS key"),
        }
    }
    if keys.is_empty() {
        return Err(KeyError("JWKS holds no usable signature key".to_owned()));
    }
    Ok(keys)
}

/// One JWK: `Ok(None)` for keys deliberately skipped (encryption, HMAC, unknown types).
fn key_from_jwk(jwk: &Map<String, Value>) -> Result<Option<VerifyKey>, KeyError> {
    let text = |name: &str| -> Result<Option<&str>, KeyError> {
        match jwk.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(KeyError(format!("JWK member {name:?} is not a string"))),
        }
    };
    let required = |name: &str| text(name)?.ok_or_else(|| KeyError(format!("JWK lacks {name:?}")));
    if text("use")?.is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    if let Some(ops) = jwk.get("key_ops")
        && !ops.as_array().is_some_and(|ops| ops.iter().any(|op| op == "verify"))
    {
        return Ok(None);
    }
    let alg = match text("alg")? {
        None => None,
        // Encryption or HMAC algorithms mean the key is not for verifying our signatures.
        Some(name) => match Algorithm::from_str(name) {
            Ok(alg) if alg.family() != AlgorithmFamily::Hmac => Some(alg),
            _ => return Ok(None),
        },
    };
    let kid = text("kid")?.map(str::to_owned);
    let (kind, key) = match required("kty")? {
        "RSA" => {
            let key = DecodingKey::from_rsa_components(required("n")?, required("e")?)
                .map_err(|_| KeyError("RSA JWK has invalid base64url".to_owned()))?;
            (KeyKind::Rsa, key)
        }
        "EC" => {
            let (kind, len) = match required("crv")? {
                "P-256" => (KeyKind::P256, 32),
                "P-384" => (KeyKind::P384, 48),
                other => return Err(KeyError(format!("EC curve {other:?} is not supported"))),
            };
            let (x, y) = (coordinate(required("x")?, len)?, coordinate(required("y")?, len)?);
            (kind, DecodingKey::from_ec_der(&[&[0x04][..], &x, &y].concat()))
        }
        "OKP" => {
            if required("crv")? != "Ed25519" {
                return Err(KeyError("OKP curve is not supported".to_owned()));
            }
            (
                KeyKind::Ed25519,
                DecodingKey::from_ed_der(&coordinate(required("x")?, 32)?),
            )
        }
        // "oct" (HMAC secrets) and unknown key types are never used for verification.
        _ => return Ok(None),
    };
    if alg.is_some_and(|alg| !kind.fits(alg)) {
        return Err(KeyError(format!("JWK alg does not fit its {kind:?} key")));
    }
    VerifyKey::new(kid, kind, alg, key).map(Some)
}

/// Decode a fixed-length base64url value (EC coordinate, Ed25519 public key).
fn coordinate(b64: &str, len: usize) -> Result<Vec<u8>, KeyError> {
    match URL_SAFE_NO_PAD.decode(b64) {
        Ok(bytes) if bytes.len() == len => Ok(bytes),
        _ => Err(KeyError(format!("JWK coordinate is not {len} bytes of base64url"))),
    }
}

/// Parse every public key in a PEM text ("PUBLIC KEY" or "RSA PUBLIC KEY" blocks).
pub(crate) fn keys_from_pem(text: &str) -> Result<Vec<VerifyKey>, KeyError> {
    let mut keys = Vec::new();
    let mut block: Option<(String, String)> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) {
            block = Some((label.to_owned(), format!("{line}\n")));
        } else if let Some(label) = line.strip_prefix("-----END ").and_then(|l| l.strip_suffix("-----")) {
            let (begin, mut pem) = block
                .take()
                .ok_or_else(|| KeyError("PEM END without BEGIN".to_owned()))?;
            if begin != label {
                return Err(KeyError("PEM BEGIN and END labels differ".to_owned()));
            }
            pem.push_str(line);
            pem.push('\n');
            keys.push(key_from_pem_block(label, pem.as_bytes())?);
            if keys.len() > MAX_KEYS {
                return Err(KeyError(format!("PEM holds more than {MAX_KEYS} keys")));
            }
        } else if let Some((_, pem)) = block.as_mut() {
            pem.push_str(line);
            pem.push('\n');
        }
    }
    if block.is_some() {
        return Err(KeyError("PEM block is not terminated".to_owned()));
    }
    if keys.is_empty() {
        return Err(KeyError("PEM holds no public key".to_owned()));
    }
    Ok(keys)
}

fn key_from_pem_block(label: &str, pem: &[u8]) -> Result<VerifyKey, KeyError> {
    match label {
        "RSA PUBLIC KEY" => {}
        "PUBLIC KEY" => {
            if let Ok(key) = DecodingKey::from_ec_pem(pem) {
                // The curve follows from the SEC1 point's length (uncompressed or compressed).
                let kind = match key.as_bytes().len() {
                    65 | 33 => KeyKind::P256,
                    97 | 49 => KeyKind::P384,
                    _ => return Err(KeyError("EC public key is not on P-256 or P-384".to_owned())),
                };
                return VerifyKey::new(None, kind, None, key);
            }
            if let Ok(key) = DecodingKey::from_ed_pem(pem) {
                if key.as_bytes().len() != 32 {
                    return Err(KeyError("Ed25519 public key is not 32 bytes".to_owned()));
                }
                return VerifyKey::new(None, KeyKind::Ed25519, None, key);
            }
        }
        // Private keys and certificates do not belong in a public key file.
        other => return Err(KeyError(format!("PEM block {other:?} is not a public key"))),
    }
    let key = DecodingKey::from_rsa_pem(pem).map_err(|_| KeyError("PEM public key is not supported".to_owned()))?;
    VerifyKey::new(None, KeyKind::Rsa, None, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::{EcKey, RSA_N, RSA_PUBLIC_PEM};
    use serde_json::json;

    #[test]
    fn pem_with_several_keys() {
        let (a, b) = (EcKey::new("a"), EcKey::p384("b"));
        let text = format!("comment\n{}{}{}", a.public_pem(), RSA_PUBLIC_PEM, b.public_pem());
        let kinds: Vec<_> = keys_from_pem(&text).expect("parses").iter().map(|k| k.kind).collect();
        assert_eq!(kinds, [KeyKind::P256, KeyKind::Rsa, KeyKind::P384]);
    }

    #[test]
    fn pem_refuses_private_keys_and_garbage() {
        let key = EcKey::new("a");
        assert!(keys_from_pem(&key.pair.serialize_pem()).is_err());
        assert!(keys_from_pem("").is_err());
        assert!(keys_from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err());
        assert!(keys_from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n").is_err());
    }

    #[test]
    fn jwks_skips_non_signature_keys_and_checks_alg_fit() {
        let ec = EcKey::new("ec1");
        let jwks = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "use": "enc", "n": RSA_N, "e": "AQAB", "kid": "enc"},
            {"kty": "RSA", "alg": "RSA-OAEP", "n": RSA_N, "e": "AQAB", "kid": "oaep"},
            ec.jwk(),
            {"kty": "RSA", "alg": "PS256", "n": RSA_N, "e": "AQAB", "kid": "rsa"},
        ]});
        let keys = keys_from_jwks(jwks.to_string().as_bytes()).expect("parses");
        let kids: Vec<_> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, ["ec1", "rsa"]);
        assert!(keys[0].accepts(Algorithm::ES256) && !keys[0].accepts(Algorithm::ES384));
        assert!(keys[1].accepts(Algorithm::PS256) && !keys[1].accepts(Algorithm::RS256));
        assert!(!keys[1].accepts(Algorithm::ES256));
    }

    #[test]
    fn jwks_refuses_invalid_points_and_empty_sets() {
        let bad_point = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}]});
        assert!(keys_from_jwks(bad_point.to_string().as_bytes()).is_err());
        let off_curve = URL_SAFE_NO_PAD.encode([1u8; 32]);
        let not_on_curve = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": off_curve, "y": off_curve}]});
        assert!(keys_from_jwks(not_on_curve.to_string().as_bytes()).is_err());
        assert!(keys_from_jwks(br#"{"keys": []}"#).is_err());
        assert!(keys_from_jwks(b"not json").is_err());
    }
}
