//! Untrusted pre-parsing of a compact JWS: shape, size, and the fields that pick issuer and key.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::AuthError;

/// Largest token accepted, checked before any decoding.
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest decoded JOSE header accepted.
pub(crate) const MAX_HEADER_BYTES: usize = 4 * 1024;

/// What the unverified token says about how to verify it. Nothing here is trusted for identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    /// The header's `alg`.
    pub alg: String,
    /// The header's `kid`, if any.
    pub kid: Option<String>,
    /// The payload's `iss`, used only to pick the issuer config.
    pub iss: String,
}

/// Check the token's shape and read `alg`, `kid` and `iss` without trusting them.
///
/// Public only so the fuzz targets (`fuzz/`) can reach it; callers authenticate with [`crate::auth::Authenticator`].
pub fn peek(token: &str) -> Result<Unverified, AuthError> {
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed);
    }
    // Exactly three parts: a JWE (five parts) or a JWS JSON serialization is refused here.
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    if signature.is_empty() {
        return Err(AuthError::Malformed);
    }
    let header = decode_object(header, MAX_HEADER_BYTES)?;
    let payload = decode_object(payload, MAX_TOKEN_BYTES)?;
    // We implement no JWS extensions, so RFC 7515 requires refusing any `crit` header.
    if header.contains_key("crit") {
        return Err(AuthError::Malformed);
    }
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => return Err(AuthError::Malformed),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AuthError::Malformed),
    };
    let iss = match payload.get("iss") {
        Some(Value::String(iss)) => iss.clone(),
        _ => return Err(AuthError::UnknownIssuer),
    };
    Ok(Unverified { alg, kid, iss })
}

/// Decode one base64url (unpadded, canonical) part holding a JSON object.
fn decode_object(part: &str, max_bytes: usize) -> Result<Map<String, Value>, AuthError> {
    // Check the size before decoding: 4 base64 characters carry 3 bytes.
    if part.len() / 4 * 3 > max_bytes {
        return Err(AuthError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| AuthError::Malformed)?;
    if bytes.len() > max_bytes {
        return Err(AuthError::Malformed);
    }
    let StrictObject(map) = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    Ok(map)
}

/// A JSON object whose members must be unique, so no two parsers can read a different claim.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StrictObject(pub(crate) Map<String, Value>);

impl<'de> serde::Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = StrictObject;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object with unique member names")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictObject, A::Error> {
                let mut map = Map::new();
                while let Some((key, value)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom("duplicate member name"));
                    }
                    map.insert(key, value);
                }
                Ok(StrictObject(map))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", b64(header), b64(payload))
    }

    #[test]
    fn reads_alg_kid_iss() {
        let t = token(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#, r#"{"iss":"https://idp"}"#);
        let u = peek(&t).expect("parses");
        assert_eq!(
            u,
            Unverified {
                alg: "ES256".into(),
                kid: Some("k1".into()),
                iss: "https://idp".into()
            }
        );
    }

    #[test]
    fn refuses_bad_shapes() {
        let good_header = r#"{"alg":"ES256"}"#;
        let good_payload = r#"{"iss":"i"}"#;
        assert_eq!(peek(""), Err(AuthError::Missing));
        assert_eq!(peek("a.b"), Err(AuthError::Malformed));
        assert_eq!(peek("a.b.c.d.e"), Err(AuthError::Malformed));
        // Empty signature (as in alg none), padding, standard base64 alphabet.
        assert_eq!(
            peek(&format!("{}.{}.", b64(good_header), b64(good_payload))),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            peek(&format!("{}=.{}.c2ln", b64(good_header), b64(good_payload))),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            peek(&format!("{}+.{}.c2ln", b64(good_header), b64(good_payload))),
            Err(AuthError::Malformed)
        );
        assert_eq!(peek(&token("[1]", good_payload)), Err(AuthError::Malformed));
        assert_eq!(
            peek(&token(r#"{"alg":"ES256","alg":"none"}"#, good_payload)),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            peek(&token(good_header, r#"{"iss":"a","iss":"b"}"#)),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            peek(&token(r#"{"alg":"ES256","crit":["b64"]}"#, good_payload)),
            Err(AuthError::Malformed)
        );
        assert_eq!(peek(&token(r#"{"alg":5}"#, good_payload)), Err(AuthError::Malformed));
        assert_eq!(
            peek(&token(r#"{"alg":"ES256","kid":1}"#, good_payload)),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            peek(&token(good_header, r#"{"iss":["i"]}"#)),
            Err(AuthError::UnknownIssuer)
        );
        assert_eq!(peek(&token(good_header, "{}")), Err(AuthError::UnknownIssuer));
    }

    #[test]
    fn refuses_oversized() {
        let big_header = format!(r#"{{"alg":"ES256","x":"{}"}}"#, "a".repeat(MAX_HEADER_BYTES));
        assert_eq!(peek(&token(&big_header, r#"{"iss":"i"}"#)), Err(AuthError::Malformed));
        let big_payload = format!(r#"{{"iss":"i","x":"{}"}}"#, "a".repeat(MAX_TOKEN_BYTES));
        assert_eq!(
            peek(&token(r#"{"alg":"ES256"}"#, &big_payload)),
            Err(AuthError::Malformed)
        );
    }
}
