//! Fuzzes the untrusted pre-parsing of caller JWTs, `hawser::auth::token::peek`.
//!
//! Every input is used twice: as the token itself (UTF-8, invalid bytes replaced), and through
//! `arbitrary` as the parts of a token this target builds (header and payload members, signature,
//! and a filler member of up to 17 KiB so the size limits are reached).
//!
//! Properties, for any string:
//! - `peek` returns `Ok` or `Err`, never panics, and gives the same answer twice;
//! - `Err(Missing)` exactly for the empty string;
//! - `Ok` only for at most 16 KiB in three dot-separated parts with a non-empty signature, whose
//!   header and payload are canonical unpadded base64url (re-encoding gives the same text) of JSON
//!   objects, the header at most 4 KiB and without `crit`; and the `alg`, `kid` and `iss` it
//!   returns are what an independent lenient parse of those objects reads.
//!
//! For a built token: `peek` returns exactly the header's `alg` and `kid` and the payload's `iss`,
//! unless the token is over 16 KiB, the header over 4 KiB or the header has `crit`; then it is
//! refused as malformed.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hawser::auth::AuthError;
use hawser::auth::token::{Unverified, peek};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// Largest token `peek` accepts.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest decoded header `peek` accepts.
const MAX_HEADER_BYTES: usize = 4 * 1024;

fuzz_target!(|data: &[u8]| {
    check_any(&String::from_utf8_lossy(data));
    if let Ok(built) = Built::arbitrary(&mut Unstructured::new(data)) {
        built.check();
    }
});

/// Checks the properties that hold for any string.
fn check_any(token: &str) {
    let result = peek(token);
    assert_eq!(peek(token), result, "peek is not deterministic");
    assert_eq!(token.is_empty(), result == Err(AuthError::Missing));
    let Ok(unverified) = result else {
        return;
    };
    assert!(token.len() <= MAX_TOKEN_BYTES, "accepted an oversized token");
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        panic!("accepted a token of {} parts", parts.len());
    };
    assert!(!signature.is_empty(), "accepted an empty signature");
    let (header_bytes, header) = lenient_object(header);
    let (_, payload) = lenient_object(payload);
    assert!(header_bytes <= MAX_HEADER_BYTES, "accepted an oversized header");
    assert!(!header.contains_key("crit"), "accepted a crit header");
    assert_eq!(header.get("alg"), Some(&Value::String(unverified.alg)));
    assert_eq!(header.get("kid"), unverified.kid.map(Value::String).as_ref());
    assert_eq!(payload.get("iss"), Some(&Value::String(unverified.iss)));
}

/// Decodes a part that `peek` accepted, checking that its base64url is canonical; returns its
/// decoded length and its JSON object, parsed leniently.
fn lenient_object(part: &str) -> (usize, Map<String, Value>) {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .expect("accepted a part that is not base64url");
    assert_eq!(URL_SAFE_NO_PAD.encode(&bytes), part, "accepted non-canonical base64url");
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => (bytes.len(), map),
        _ => panic!("accepted a part that is not a JSON object"),
    }
}

/// A token built from arbitrary members.
#[derive(Debug, Arbitrary)]
struct Built {
    alg: String,
    kid: Option<String>,
    iss: String,
    header_extra: Vec<(String, String)>,
    payload_extra: Vec<(String, String)>,
    signature: Vec<u8>,
    /// Length of a filler member, so the size limits are reached whatever the input's length.
    pad: u16,
    /// Whether the filler goes in the header (else the payload).
    pad_header: bool,
}

impl Built {
    /// Builds the token and checks that `peek` reads exactly what was put in, or refuses it for size or `crit`.
    fn check(self) {
        let mut header = Map::new();
        header.insert("alg".into(), Value::String(self.alg));
        if let Some(kid) = self.kid {
            header.insert("kid".into(), Value::String(kid));
        }
        let mut payload = Map::new();
        payload.insert("iss".into(), Value::String(self.iss));
        for (map, extra) in [(&mut header, self.header_extra), (&mut payload, self.payload_extra)] {
            for (k, v) in extra {
                map.entry(k).or_insert(Value::String(v));
            }
        }
        if self.pad > 0 {
            let filler = Value::String("a".repeat(usize::from(self.pad) % (MAX_TOKEN_BYTES + 1024)));
            let map = if self.pad_header { &mut header } else { &mut payload };
            map.entry("pad").or_insert(filler);
        }
        let header_json = serde_json::to_vec(&header).expect("serializes");
        let payload_json = serde_json::to_vec(&payload).expect("serializes");
        let signature = if self.signature.is_empty() {
            b"sig".to_vec()
        } else {
            self.signature
        };
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(&header_json),
            URL_SAFE_NO_PAD.encode(&payload_json),
            URL_SAFE_NO_PAD.encode(&signature)
        );

        let result = peek(&token);
        if token.len() > MAX_TOKEN_BYTES || header_json.len() > MAX_HEADER_BYTES || header.contains_key("crit") {
            assert_eq!(
                result,
                Err(AuthError::Malformed),
                "an oversized or crit token was not refused"
            );
            return;
        }
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let expected = Unverified {
            alg: text(header.get("alg")).expect("alg is a string"),
            kid: text(header.get("kid")),
            iss: text(payload.get("iss")).expect("iss is a string"),
        };
        assert_eq!(result, Ok(expected), "peek misread a well-formed token");
        check_any(&token);
    }
}
