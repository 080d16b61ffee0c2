//! Impersonation headers for requests leaving the agent for kube-apiserver.
//!
//! # Design
//!
//! The agent forwards every caller request to kube-apiserver with its own service-account token
//! and asks the apiserver to treat the request as the caller's, through the `Impersonate-User`,
//! `Impersonate-Uid`, `Impersonate-Group` and `Impersonate-Extra-<key>` headers. The caller's
//! identity is an [`Identity`] built by another module from a verified token; this module never
//! looks at tokens. The sequence for each outgoing request is "strip, set, then assert" ([`apply`]):
//!
//! 1. **Strip** ([`sanitize`]): remove, whatever their case or number, every header the caller
//!    could use to claim an identity or to confuse the hop to the apiserver: every `impersonate-*`
//!    header, `authorization`, `proxy-authorization`, every `x-remote-*` header (a superset of the
//!    request-header authenticator's `X-Remote-User`, `X-Remote-Group`, `X-Remote-Extra-*`), the
//!    hop-by-hop headers (`connection`, `keep-alive`, `proxy-connection`, `te`, `trailer`,
//!    `transfer-encoding`, `upgrade`) and every header named in a `Connection` value. Names are
//!    matched by lower-cased prefix: one rule per family, never a list of known names. From
//!    `Sec-WebSocket-Protocol` it removes every `base64url.bearer.authorization.k8s.io.` entry:
//!    the apiserver authenticates a WebSocket request by that token too, and the header must stay
//!    for the real subprotocols (`v5.channel.k8s.io`, ...).
//! 2. **Set**: insert the agent's own headers, replacing (never appending to) anything of the same
//!    name, plus `Authorization: Bearer <agent token>` marked sensitive, plus `Connection: Upgrade`
//!    and the caller's single `Upgrade` value when the caller asked for an upgrade (exec, attach and
//!    port-forward need them; [`sanitize`] reports the upgrade so it survives step 1).
//! 3. **Assert** ([`assert_only_ours`]): walk every header and fail unless each identity-bearing or
//!    hop-by-hop header present is exactly one the agent just set, with the same count, values
//!    and order, and every header the agent set is still there.
//!
//! Any failure is an [`ImpersonationError`]; the caller must answer 500 and must not forward. There
//! is no fallback to the agent's own identity, and on error [`apply`] also removes every
//! identity-bearing header (the agent's token included), so even a buggy caller that forwards
//! anyway sends the request without credentials.
//!
//! # Threat model
//!
//! A hostile caller has a valid token for *some* identity and controls everything else in its
//! request: header names in any case, repeated headers, header order, values with obs-text, and
//! `Connection` tokens. It wants the apiserver to see a different user, uid, group or extra, or to
//! have the request sent with the agent's (more privileged) identity. It cannot:
//!
//! - **Inject impersonation headers.** Rancher CVE-2021-31999 and CVE-2021-36776 forwarded
//!   caller-supplied `Impersonate-*` headers alongside the proxy's credentials. Here every
//!   `impersonate-*` name is removed whatever its suffix, and the assertion refuses any survivor.
//! - **Slip through a forgotten name.** kube-oidc-proxy's deny-list removed `Impersonate-User`
//!   and `Impersonate-Group` but forgot `Impersonate-Uid`. Matching is by prefix, and the final
//!   assertion is an allow-list: only the exact headers the agent set may remain.
//! - **Get appended to.** client-go's impersonating round tripper leaves a request alone when it
//!   already carries `Impersonate-User` and *appends* to existing group and extra headers, so a
//!   caller's `Impersonate-Group: system:masters` would be kept. The agent does not imitate it:
//!   it replaces, and the assertion compares full value lists.
//! - **Remove the agent's headers with `Connection`.** Headers named in `Connection` (for example
//!   `Connection: Impersonate-User, Authorization`) are removed during the strip step, before the
//!   agent sets its own, so the trick removes only caller headers.
//! - **Smuggle with control bytes.** Caller header values containing CR, LF or NUL are refused
//!   (defence in depth: `http`'s checked constructors already refuse them, only `unsafe` code
//!   could build such a value; obs-text in other caller headers passes through untouched).
//!   Identity values (user, uid, groups, extra values) may hold no control character but tab and
//!   no leading or trailing whitespace (HTTP parsers trim it, which would change the identity the
//!   apiserver sees, e.g. `" system:masters"`); anything else is refused rather than re-encoded.
//!   Non-ASCII letters travel as UTF-8 bytes, which the apiserver reads back unchanged.
//! - **Alias extra keys.** The apiserver lower-cases an `Impersonate-Extra-` suffix and then
//!   percent-decodes it; client-go percent-encodes every byte that is not an RFC 7230 token byte,
//!   and `%` itself. [`encode_extra_key`] does the same with upper-case hex and refuses keys with
//!   upper-case ASCII letters, which the apiserver would silently fold; every encoded key is checked
//!   to decode back to itself with [`decode_extra_key`].
//!
//! Errors name the header or identity field and the reason, never a value: caller values may be
//! secrets (tokens) or contain bytes that would corrupt logs.

use http::header::{AUTHORIZATION, CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};

mod error;
mod identity;
#[cfg(test)]
mod tests;

pub use error::{BadByte, IdentityField, ImpersonationError};
use identity::bearer_value;
pub use identity::{decode_extra_key, encode_extra_key, impersonation_headers};

/// Header name (lower case) for the impersonated user name.
pub const IMPERSONATE_USER: &str = "impersonate-user";
/// Header name (lower case) for the impersonated user's uid.
pub const IMPERSONATE_UID: &str = "impersonate-uid";
/// Header name (lower case) for one impersonated group; repeated once per group.
pub const IMPERSONATE_GROUP: &str = "impersonate-group";
/// Header name prefix (lower case) for impersonated extras; the encoded key follows it.
pub const IMPERSONATE_EXTRA_PREFIX: &str = "impersonate-extra-";

/// Header name (lower case) that carries a caller's own cluster credential in passthrough mode,
/// as `Bearer <token>`, so the relay JWT in `Authorization` never has to reach the cluster.
pub const CLUSTER_AUTHORIZATION: &str = "hawser-cluster-authorization";

/// Header whose entries may carry a bearer token on WebSocket requests (the browser's only way).
const SEC_WEBSOCKET_PROTOCOL: &str = "sec-websocket-protocol";
/// Prefix of a `Sec-WebSocket-Protocol` entry that kube-apiserver reads as a bearer token.
const WEBSOCKET_BEARER_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// Prefix of every impersonation header, matched case-insensitively.
const IMPERSONATE_PREFIX: &str = "impersonate-";
/// Prefix of the apiserver request-header authenticator's headers, matched case-insensitively.
const X_REMOTE_PREFIX: &str = "x-remote-";
/// The caller's identity, as established from a verified token (see [`crate::auth`]).
pub use crate::auth::Identity;

/// What [`sanitize`] removed that the caller must put back: the upgrade request, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sanitized {
    /// The single `Upgrade` value, present only if `Connection` also carried the `upgrade` token.
    pub upgrade: Option<HeaderValue>,
}

impl Sanitized {
    /// Whether the request asked for a protocol upgrade (exec, attach, port-forward).
    pub fn is_upgrade(&self) -> bool {
        self.upgrade.is_some()
    }
}

/// Removes every header a caller must not control and reports whether the request is an upgrade.
///
/// Fails, leaving `headers` untouched, if any value contains CR, LF or NUL, or if there is more
/// than one `Upgrade` header, or if an upgrade is requested with a blank `Upgrade` value.
pub fn sanitize(headers: &mut HeaderMap) -> Result<Sanitized, ImpersonationError> {
    for (name, value) in headers.iter() {
        if let Some(byte) = line_breaking_byte(value.as_bytes()) {
            return Err(ImpersonationError::CallerHeaderByte {
                name: name.clone(),
                byte,
            });
        }
    }

    let mut upgrade_requested = false;
    let mut named_by_connection: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty() {
                continue;
            }
            if token.eq_ignore_ascii_case(b"upgrade") {
                upgrade_requested = true;
            }
            // A token that is not a valid header name cannot name a header in the map.
            if let Ok(name) = HeaderName::from_bytes(token) {
                named_by_connection.push(name);
            }
        }
    }

    let count = headers.get_all(UPGRADE).iter().count();
    if count > 1 {
        return Err(ImpersonationError::MultipleUpgrade { count });
    }
    let upgrade = match headers.get(UPGRADE) {
        Some(value) if upgrade_requested => {
            if value.as_bytes().trim_ascii().is_empty() {
                return Err(ImpersonationError::BlankUpgrade);
            }
            Some(value.clone())
        }
        _ => None,
    };

    for name in &named_by_connection {
        headers.remove(name);
    }
    remove_controlled(headers);
    Ok(Sanitized { upgrade })
}

/// Strips caller headers, sets the agent's impersonation and authorization headers, then asserts only those remain.
///
/// Returns what [`sanitize`] reported; when it is an upgrade, `Connection: Upgrade` and the
/// `Upgrade` value are already back in `headers`. On error the request must not be forwarded; every
/// identity-bearing and hop-by-hop header has then been removed, the agent's token included.
pub fn apply(
    headers: &mut HeaderMap,
    identity: &Identity,
    agent_bearer: &str,
) -> Result<Sanitized, ImpersonationError> {
    apply_with(headers, identity, Some(agent_bearer), sanitize)
}

/// [`apply`] for an agent whose bearer token may be absent (it presents a client certificate in
/// the TLS handshake instead): without one, `Authorization` is stripped and none is set.
pub fn apply_as_agent(
    headers: &mut HeaderMap,
    identity: &Identity,
    agent_bearer: Option<&str>,
) -> Result<Sanitized, ImpersonationError> {
    apply_with(headers, identity, agent_bearer, sanitize)
}

/// Passthrough mode: strips caller headers exactly as [`apply`] does, sets only
/// `Authorization: Bearer <cluster token>` (no `Impersonate-*` at all), then asserts.
///
/// The request then reaches the apiserver as the token's own identity, whatever
/// impersonation headers the caller sent. On error nothing identity-bearing is left.
pub fn apply_passthrough(headers: &mut HeaderMap, cluster_bearer: &str) -> Result<Sanitized, ImpersonationError> {
    let result = bearer_value(cluster_bearer)
        .map_err(|_| ImpersonationError::InvalidClusterBearer)
        .and_then(|bearer| strip_set_assert(headers, vec![(AUTHORIZATION, bearer)], sanitize));
    if result.is_err() {
        remove_controlled(headers);
    }
    result
}

/// Fails unless every identity-bearing or hop-by-hop header in `headers` is exactly one of `expected`, and all of `expected` are present.
///
/// For each name, the values in `headers` must equal the values listed for that name in `expected`,
/// in the same order and number.
pub fn assert_only_ours(headers: &HeaderMap, expected: &[(HeaderName, HeaderValue)]) -> Result<(), ImpersonationError> {
    for name in headers.keys() {
        let wanted = values_for(expected, name);
        if wanted.is_empty() {
            if is_controlled(name) {
                return Err(ImpersonationError::UnexpectedHeader { name: name.clone() });
            }
            continue;
        }
        if !headers.get_all(name).iter().eq(wanted.iter().copied()) {
            return Err(ImpersonationError::MismatchedHeader { name: name.clone() });
        }
    }
    for (name, _) in expected {
        if !headers.contains_key(name) {
            return Err(ImpersonationError::MismatchedHeader { name: name.clone() });
        }
    }
    if headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .any(|value| value.as_bytes().split(|&b| b == b',').any(is_websocket_bearer))
    {
        return Err(ImpersonationError::WebSocketBearer);
    }
    Ok(())
}

/// Whether one `Sec-WebSocket-Protocol` entry is a bearer token (prefix matched case-insensitively).
fn is_websocket_bearer(entry: &[u8]) -> bool {
    let entry = entry.trim_ascii();
    entry
        .get(..WEBSOCKET_BEARER_PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(WEBSOCKET_BEARER_PREFIX.as_bytes()))
}

/// Removes bearer-token entries from every `Sec-WebSocket-Protocol` value, keeping the others in order.
fn strip_websocket_bearer(headers: &mut HeaderMap) {
    let values: Vec<HeaderValue> = headers.get_all(SEC_WEBSOCKET_PROTOCOL).iter().cloned().collect();
    if !values
        .iter()
        .any(|v| v.as_bytes().split(|&b| b == b',').any(is_websocket_bearer))
    {
        return;
    }
    headers.remove(SEC_WEBSOCKET_PROTOCOL);
    for value in values {
        let kept: Vec<&[u8]> = value
            .as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|entry| !entry.is_empty() && !is_websocket_bearer(entry))
            .collect();
        if kept.is_empty() {
            continue;
        }
        // Entries are slices of a valid header value joined by ", ", so this cannot fail.
        if let Ok(value) = HeaderValue::from_bytes(&kept.join(&b", "[..])) {
            headers.append(SEC_WEBSOCKET_PROTOCOL, value);
        }
    }
}

/// [`apply`] with the strip step passed in, so tests can show that set and assert hold on their own.
fn apply_with(
    headers: &mut HeaderMap,
    identity: &Identity,
    agent_bearer: Option<&str>,
    strip: impl FnOnce(&mut HeaderMap) -> Result<Sanitized, ImpersonationError>,
) -> Result<Sanitized, ImpersonationError> {
    let result = impersonation_headers(identity).and_then(|mut expected| {
        if let Some(bearer) = agent_bearer {
            expected.push((AUTHORIZATION, bearer_value(bearer)?));
        }
        strip_set_assert(headers, expected, strip)
    });
    if result.is_err() {
        remove_controlled(headers);
    }
    result
}

/// Strip with `strip`, set `expected`, then assert; on error [`apply_with`] scrubs the map.
fn strip_set_assert(
    headers: &mut HeaderMap,
    mut expected: Vec<(HeaderName, HeaderValue)>,
    strip: impl FnOnce(&mut HeaderMap) -> Result<Sanitized, ImpersonationError>,
) -> Result<Sanitized, ImpersonationError> {
    let sanitized = strip(headers)?;
    if let Some(upgrade) = &sanitized.upgrade {
        expected.push((CONNECTION, HeaderValue::from_static("Upgrade")));
        expected.push((UPGRADE, upgrade.clone()));
    }

    // Replace, never append to what is there: clear every name first, then add ours in order.
    for (name, _) in &expected {
        headers.remove(name);
    }
    for (name, value) in &expected {
        headers.append(name.clone(), value.clone());
    }

    assert_only_ours(headers, &expected)?;
    Ok(sanitized)
}

/// The values listed for `name` in `expected`, in order.
fn values_for<'a>(expected: &'a [(HeaderName, HeaderValue)], name: &HeaderName) -> Vec<&'a HeaderValue> {
    expected.iter().filter(|(n, _)| n == name).map(|(_, v)| v).collect()
}

/// Removes every identity-bearing and hop-by-hop header.
fn remove_controlled(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers.keys().filter(|name| is_controlled(name)).cloned().collect();
    for name in &doomed {
        headers.remove(name);
    }
    strip_websocket_bearer(headers);
}

/// Whether a caller must never control this header (identity-bearing or hop-by-hop).
fn is_controlled(name: &HeaderName) -> bool {
    let name = name.as_str();
    starts_with_ignore_case(name, IMPERSONATE_PREFIX)
        || starts_with_ignore_case(name, X_REMOTE_PREFIX)
        || name.eq_ignore_ascii_case(AUTHORIZATION.as_str())
        || name.eq_ignore_ascii_case("proxy-authorization")
        || name.eq_ignore_ascii_case(CLUSTER_AUTHORIZATION)
        || crate::headers::is_hop_by_hop(name)
}

/// Case-insensitive ASCII prefix test that cannot panic on any input.
fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// The first CR, LF or NUL in a caller header value, if any.
fn line_breaking_byte(bytes: &[u8]) -> Option<BadByte> {
    bytes.iter().find_map(|&b| match b {
        b'\r' => Some(BadByte::Cr),
        b'\n' => Some(BadByte::Lf),
        0 => Some(BadByte::Nul),
        _ => None,
    })
}
