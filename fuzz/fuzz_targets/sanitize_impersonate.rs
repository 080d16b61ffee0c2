//! Fuzzes the agent's header handling in `hawser::impersonation`: `sanitize`, `impersonation_headers`,
//! `apply`, `assert_only_ours`, `encode_extra_key` and `decode_extra_key`.
//!
//! The input is text, so seeds are easy to write (see `fuzz/seeds/sanitize_impersonate/`):
//!
//! ```text
//! Name: value            caller headers, one per line, until the first empty line
//!
//! user=alice             then the caller's identity and the agent's token, one field per line:
//! uid=1234               user=, uid=, group= (repeatable), extra=KEY=VALUE (repeatable;
//! group=dev              "extra=KEY" alone adds the key with no value), bearer=,
//! extra=scopes=read      key= (one more extra key for encode/decode) and suffix= (a raw
//! bearer=agent-token     Impersonate-Extra- suffix for decode_extra_key)
//! ```
//!
//! In every name, value and field, `\n`, `\r`, `\0`, `\t`, `\\` and `\xHH` stand for those bytes,
//! so CR, LF and NUL can reach every field. Identity fields are UTF-8 (invalid bytes become U+FFFD).
//!
//! Properties:
//! - a header value with CR, LF or NUL is refused by `HeaderValue::from_bytes`, the only safe way
//!   to build one, so it never reaches the agent;
//! - `sanitize` either fails with `MultipleUpgrade`/`BlankUpgrade` leaving the map untouched, or
//!   leaves no `impersonate-*`, `x-remote-*`, `authorization`, `proxy-authorization` or hop-by-hop
//!   header and nothing named by `Connection`, keeps every other header with its values in order,
//!   and reports the upgrade exactly when `Connection` has `upgrade` and one `Upgrade` is present;
//! - `impersonation_headers` refuses any identity value with a byte other than tab and printable
//!   ASCII (so CR, LF, NUL), surrounding whitespace, an empty user, uid or group, and an extra key
//!   `encode_extra_key` refuses; it accepts every other identity, and then emits user, uid,
//!   groups and extras in order with values that read back unchanged;
//! - `apply` succeeds exactly when building, the bearer and `sanitize` do; then `assert_only_ours`
//!   passes on the result, the identity-bearing headers are exactly the agent's, other headers are
//!   as `sanitize` left them, and adding back any caller identity header makes the assertion fail;
//!   on error no identity-bearing or hop-by-hop header is left;
//! - `encode_extra_key` refuses exactly empty keys, keys with ASCII upper case and keys with a
//!   control character; what it returns is a valid header-name suffix that `decode_extra_key` turns
//!   back into the key, in any ASCII case.

#![no_main]

use hawser::auth::Identity;
use hawser::impersonation::{
    ImpersonationError, apply, assert_only_ours, decode_extra_key, encode_extra_key, impersonation_headers, sanitize,
};
use http::header::{AUTHORIZATION, CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const EXTRA_PREFIX: &str = "impersonate-extra-";

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);

    let mut original = HeaderMap::new();
    for (name, value) in &input.headers {
        let (name, value) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value));
        if let (Ok(name), Ok(value)) = (name, value) {
            original.append(name, value);
        }
    }
    for (name, value) in &input.headers {
        if has_line_break(name) {
            assert!(
                HeaderName::from_bytes(name).is_err(),
                "a header name with CR, LF or NUL was accepted"
            );
        }
        if has_line_break(value) {
            assert!(
                HeaderValue::from_bytes(value).is_err(),
                "a header value with CR, LF or NUL was accepted"
            );
        }
    }

    let sanitized = check_sanitize(&original);
    let built = check_impersonation_headers(&input.identity);
    check_apply(
        &original,
        &input.identity,
        &input.bearer,
        sanitized.as_ref(),
        built.as_ref(),
    );

    for key in input.identity.extra.keys().chain(&input.keys) {
        check_extra_key(key);
    }
    for suffix in &input.suffixes {
        let decoded = decode_extra_key(suffix);
        if !suffix.is_ascii() {
            assert_eq!(decoded, None, "a non-ASCII suffix decoded");
        }
    }
});

/// The fuzz input, split as the module documentation describes.
#[derive(Debug, Default)]
struct Input {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    identity: Identity,
    bearer: String,
    keys: Vec<String>,
    suffixes: Vec<String>,
}

impl Input {
    /// Splits `data`; never fails, anything unrecognised is ignored.
    fn parse(data: &[u8]) -> Input {
        let mut input = Input::default();
        let mut lines = data.split(|&b| b == b'\n');
        for line in lines.by_ref() {
            if line.is_empty() {
                break;
            }
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                let value = &line[colon + 1..];
                let value = value.strip_prefix(b" ").unwrap_or(value);
                input.headers.push((unescape(&line[..colon]), unescape(value)));
            }
        }
        for line in lines {
            let Some(eq) = line.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (field, rest) = (&line[..eq], &line[eq + 1..]);
            let text = |bytes: &[u8]| String::from_utf8_lossy(&unescape(bytes)).into_owned();
            match field {
                b"user" => input.identity.user = text(rest),
                b"uid" => input.identity.uid = Some(text(rest)),
                b"group" => input.identity.groups.push(text(rest)),
                b"extra" => {
                    let (key, value) = match rest.iter().position(|&b| b == b'=') {
                        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                        None => (rest, None),
                    };
                    let values = input.identity.extra.entry(text(key)).or_default();
                    values.extend(value.map(text));
                }
                b"bearer" => input.bearer = text(rest),
                b"key" => input.keys.push(text(rest)),
                b"suffix" => input.suffixes.push(text(rest)),
                _ => {}
            }
        }
        input
    }
}

/// Decodes `\n`, `\r`, `\0`, `\t`, `\\` and `\xHH`; any other backslash stays as it is.
fn unescape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        let (byte, used) = match (b, next) {
            (b'\\', Some(b'n')) => (b'\n', 2),
            (b'\\', Some(b'r')) => (b'\r', 2),
            (b'\\', Some(b'0')) => (0, 2),
            (b'\\', Some(b't')) => (b'\t', 2),
            (b'\\', Some(b'\\')) => (b'\\', 2),
            (b'\\', Some(b'x')) => match bytes.get(i + 2..i + 4).and_then(|h| std::str::from_utf8(h).ok()) {
                Some(hex) => match u8::from_str_radix(hex, 16) {
                    Ok(v) => (v, 4),
                    Err(_) => (b, 1),
                },
                None => (b, 1),
            },
            _ => (b, 1),
        };
        out.push(byte);
        i += used;
    }
    out
}

/// Whether `bytes` holds CR, LF or NUL.
fn has_line_break(bytes: &[u8]) -> bool {
    bytes.iter().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// Whether a caller must never control this header: the model the properties are checked against.
fn controlled(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("impersonate-")
        || name.starts_with("x-remote-")
        || name == "authorization"
        || name == "proxy-authorization"
        || [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ]
        .contains(&name.as_str())
}

/// The lower-cased tokens of every `Connection` value.
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii))
        .filter(|t| !t.is_empty())
        .map(|t| String::from_utf8_lossy(t).to_ascii_lowercase())
        .collect()
}

/// Checks `sanitize` on a copy of `original`; returns the sanitized map and the reported upgrade.
/// Every non-empty `Sec-WebSocket-Protocol` entry, trimmed, in order.
fn websocket_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b',').map(|e| e.trim_ascii().to_vec()))
        .filter(|e| !e.is_empty())
        .map(|e| String::from_utf8_lossy(&e).into_owned())
        .collect()
}

/// Model of an entry the apiserver reads as a bearer token.
fn is_websocket_bearer(entry: &str) -> bool {
    entry
        .to_ascii_lowercase()
        .starts_with("base64url.bearer.authorization.k8s.io.")
}

fn check_sanitize(original: &HeaderMap) -> Option<(HeaderMap, Option<HeaderValue>)> {
    let mut headers = original.clone();
    let upgrades: Vec<&HeaderValue> = original.get_all(UPGRADE).iter().collect();
    let tokens = connection_tokens(original);
    let upgrade_requested = tokens.iter().any(|t| t == "upgrade");
    match sanitize(&mut headers) {
        Err(e) => {
            assert!(headers == *original, "a failed sanitize changed the headers");
            match e {
                ImpersonationError::MultipleUpgrade { count } => {
                    assert!(count > 1 && count == upgrades.len(), "wrong MultipleUpgrade count")
                }
                ImpersonationError::BlankUpgrade => assert!(
                    upgrade_requested && upgrades.len() == 1 && upgrades[0].as_bytes().trim_ascii().is_empty(),
                    "BlankUpgrade without a blank requested upgrade"
                ),
                other => panic!("sanitize failed with {other:?} on headers http accepted"),
            }
            None
        }
        Ok(sanitized) => {
            assert!(upgrades.len() <= 1, "sanitize accepted several Upgrade headers");
            for name in headers.keys() {
                assert!(!controlled(name.as_str()), "sanitize left {name}");
                assert!(
                    !tokens.contains(&name.as_str().to_owned()),
                    "sanitize left {name}, named by Connection"
                );
                if name.as_str() == "sec-websocket-protocol" {
                    continue;
                }
                assert!(
                    headers.get_all(name).iter().eq(original.get_all(name).iter()),
                    "sanitize changed the values of {name}"
                );
            }
            let kept = websocket_protocols(&headers);
            assert!(
                kept.iter().all(|e| !is_websocket_bearer(e)),
                "sanitize left a WebSocket bearer token"
            );
            let wanted: Vec<String> = websocket_protocols(original)
                .into_iter()
                .filter(|e| !is_websocket_bearer(e))
                .collect();
            assert!(kept == wanted, "sanitize changed the WebSocket subprotocols");
            for name in original.keys() {
                // Sec-WebSocket-Protocol goes when only bearer entries were in it (checked above).
                if !controlled(name.as_str())
                    && !tokens.contains(&name.as_str().to_owned())
                    && name.as_str() != "sec-websocket-protocol"
                {
                    assert!(headers.contains_key(name), "sanitize removed {name}");
                }
            }
            match &sanitized.upgrade {
                Some(u) => assert!(upgrade_requested && upgrades == [u] && !u.as_bytes().trim_ascii().is_empty()),
                None => assert!(
                    !upgrade_requested || upgrades.is_empty(),
                    "sanitize dropped a requested upgrade"
                ),
            }
            assert_eq!(sanitized.is_upgrade(), sanitized.upgrade.is_some());
            Some((headers, sanitized.upgrade))
        }
    }
}

/// Whether `s` may be an identity value: no control character but tab, no surrounding whitespace.
fn valid_identity_value(s: &str, allow_empty: bool) -> bool {
    if s.is_empty() {
        return allow_empty;
    }
    let bytes = s.as_bytes();
    s.chars().all(|c| c == '\t' || !c.is_control())
        && !b" \t".contains(&bytes[0])
        && !b" \t".contains(&bytes[bytes.len() - 1])
}

/// Checks `impersonation_headers` against the model; returns its headers if the identity is valid.
fn check_impersonation_headers(identity: &Identity) -> Option<Vec<(HeaderName, HeaderValue)>> {
    let result = impersonation_headers(identity);
    let values_ok = valid_identity_value(&identity.user, false)
        && identity.uid.as_deref().is_none_or(|u| valid_identity_value(u, false))
        && identity.groups.iter().all(|g| valid_identity_value(g, false))
        && identity.extra.values().flatten().all(|v| valid_identity_value(v, true));
    let keys_ok = identity.extra.keys().all(|k| encode_extra_key(k).is_ok());
    let any_line_break = std::iter::once(&identity.user)
        .chain(&identity.uid)
        .chain(&identity.groups)
        .chain(identity.extra.values().flatten())
        .chain(identity.extra.keys())
        .any(|s| has_line_break(s.as_bytes()));
    if any_line_break {
        assert!(result.is_err(), "an identity with CR, LF or NUL was accepted");
    }
    if !values_ok || !keys_ok {
        assert!(result.is_err(), "an invalid identity was accepted");
        return None;
    }
    let built = match result {
        Ok(built) => built,
        Err(e) => panic!("a valid identity was refused: {e:?}"),
    };

    // Expected order: user, uid, groups, then each extra key's values.
    let mut expected: Vec<(String, &str)> = vec![("impersonate-user".into(), &identity.user)];
    expected.extend(identity.uid.iter().map(|u| ("impersonate-uid".into(), u.as_str())));
    expected.extend(identity.groups.iter().map(|g| ("impersonate-group".into(), g.as_str())));
    for (key, values) in &identity.extra {
        let name = format!(
            "{EXTRA_PREFIX}{}",
            encode_extra_key(key).expect("checked").to_ascii_lowercase()
        );
        let suffix = &name[EXTRA_PREFIX.len()..];
        assert_eq!(
            decode_extra_key(suffix).as_deref(),
            Some(key.as_str()),
            "extra key does not read back"
        );
        expected.extend(values.iter().map(|v| (name.clone(), v.as_str())));
    }
    assert_eq!(built.len(), expected.len(), "wrong number of impersonation headers");
    for ((name, value), (want_name, want_value)) in built.iter().zip(&expected) {
        assert_eq!(name.as_str(), want_name);
        // Non-ASCII values travel as their UTF-8 bytes (`to_str` reads visible ASCII only).
        assert_eq!(
            value.as_bytes(),
            want_value.as_bytes(),
            "{name} does not read back unchanged"
        );
    }
    Some(built)
}

/// Checks `apply` and `assert_only_ours` given what `sanitize` and `impersonation_headers` gave.
fn check_apply(
    original: &HeaderMap,
    identity: &Identity,
    bearer: &str,
    sanitized: Option<&(HeaderMap, Option<HeaderValue>)>,
    built: Option<&Vec<(HeaderName, HeaderValue)>>,
) {
    let mut headers = original.clone();
    let result = apply(&mut headers, identity, bearer);
    let bearer_ok = !bearer.is_empty() && bearer.bytes().all(|b| b.is_ascii_graphic());

    let (Some((stripped, upgrade)), Some(built), true) = (sanitized, built, bearer_ok) else {
        assert!(
            result.is_err(),
            "apply succeeded though sanitize, the identity or the bearer was refused"
        );
        for name in headers.keys() {
            assert!(!controlled(name.as_str()), "a failed apply left {name}");
        }
        return;
    };
    let reported = match result {
        Ok(reported) => reported,
        Err(e) => panic!("apply failed though every step is valid: {e:?}"),
    };
    assert_eq!(&reported.upgrade, upgrade, "apply and sanitize disagree on the upgrade");

    let mut expected = built.clone();
    expected.push((
        AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {bearer}")).expect("valid bearer"),
    ));
    if let Some(u) = upgrade {
        expected.push((CONNECTION, HeaderValue::from_static("Upgrade")));
        expected.push((UPGRADE, u.clone()));
    }
    if let Err(e) = assert_only_ours(&headers, &expected) {
        panic!("assert_only_ours fails after a successful apply: {e:?}");
    }
    assert!(
        headers.get(AUTHORIZATION).expect("set").is_sensitive(),
        "agent token not marked sensitive"
    );

    // Independently of assert_only_ours: controlled headers are exactly ours, in order.
    for name in headers.keys() {
        let ours: Vec<&HeaderValue> = expected.iter().filter(|(n, _)| n == name).map(|(_, v)| v).collect();
        if controlled(name.as_str()) {
            assert!(
                headers.get_all(name).iter().eq(ours),
                "{name} is not exactly the agent's"
            );
        } else {
            assert!(ours.is_empty());
        }
    }
    for name in headers
        .keys()
        .chain(stripped.keys())
        .filter(|n| !controlled(n.as_str()))
    {
        assert!(
            headers.get_all(name).iter().eq(stripped.get_all(name).iter()),
            "apply and sanitize disagree on caller header {name}"
        );
    }

    // Any caller identity header that would survive must make the assertion fail.
    for (name, value) in original.iter().filter(|(n, _)| controlled(n.as_str())).take(4) {
        let mut tampered = headers.clone();
        tampered.append(name.clone(), value.clone());
        assert!(
            assert_only_ours(&tampered, &expected).is_err(),
            "assert_only_ours missed a caller {name}"
        );
    }
}

/// Checks `encode_extra_key` against the model, and the round trip through `decode_extra_key`.
fn check_extra_key(key: &str) {
    let should_refuse =
        key.is_empty() || key.bytes().any(|b| b.is_ascii_uppercase()) || key.chars().any(char::is_control);
    match encode_extra_key(key) {
        Err(_) => assert!(should_refuse, "encode_extra_key refused a valid key"),
        Ok(encoded) => {
            assert!(!should_refuse, "encode_extra_key accepted an invalid key");
            assert!(
                HeaderName::from_bytes(format!("{EXTRA_PREFIX}{encoded}").as_bytes()).is_ok(),
                "encoded key is not a header name"
            );
            let bytes = encoded.as_bytes();
            for (i, &b) in bytes.iter().enumerate() {
                if b == b'%' {
                    let hex = bytes.get(i + 1..i + 3).expect("escape has two digits");
                    assert!(hex.iter().all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)));
                }
            }
            assert_eq!(decode_extra_key(&encoded).as_deref(), Some(key), "round trip");
            assert_eq!(
                decode_extra_key(&encoded.to_ascii_lowercase()).as_deref(),
                Some(key),
                "round trip after lower-casing"
            );
            assert_eq!(
                decode_extra_key(&encoded.to_ascii_uppercase()).as_deref(),
                Some(key),
                "round trip after upper-casing"
            );
        }
    }
}
