//! The "set" half of impersonation: the headers that say who the caller is, each value checked
//! so that the apiserver reads back exactly the identity the agent validated, and the agent's
//! own bearer value.

use http::{HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use super::{
    BadByte, IMPERSONATE_EXTRA_PREFIX, IMPERSONATE_GROUP, IMPERSONATE_UID, IMPERSONATE_USER, Identity, IdentityField,
    ImpersonationError,
};

/// Bytes client-go escapes in extra keys: everything outside the RFC 7230 token set, plus `%`.
const EXTRA_KEY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'*')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// Builds the impersonation headers for `identity`, in order: user, uid, groups, extras.
pub fn impersonation_headers(identity: &Identity) -> Result<Vec<(HeaderName, HeaderValue)>, ImpersonationError> {
    let extra_values: usize = identity.extra.values().map(Vec::len).sum();
    let mut out = Vec::with_capacity(2 + identity.groups.len() + extra_values);

    out.push((
        HeaderName::from_static(IMPERSONATE_USER),
        identity_value(&identity.user, IdentityField::User, false)?,
    ));
    if let Some(uid) = &identity.uid {
        out.push((
            HeaderName::from_static(IMPERSONATE_UID),
            identity_value(uid, IdentityField::Uid, false)?,
        ));
    }
    for (i, group) in identity.groups.iter().enumerate() {
        out.push((
            HeaderName::from_static(IMPERSONATE_GROUP),
            identity_value(group, IdentityField::Group(i), false)?,
        ));
    }
    for (k, (key, values)) in identity.extra.iter().enumerate() {
        let name = extra_header_name(key, IdentityField::ExtraKey(k))?;
        for (v, value) in values.iter().enumerate() {
            let field = IdentityField::ExtraValue { key: k, value: v };
            out.push((name.clone(), identity_value(value, field, true)?));
        }
    }
    Ok(out)
}

/// Percent-encodes an extra key as client-go does (upper-case hex), refusing keys the apiserver would alter.
///
/// Refuses empty keys, keys with control characters and keys with upper-case ASCII letters.
pub fn encode_extra_key(key: &str) -> Result<String, ImpersonationError> {
    encode_extra_key_as(key, IdentityField::ExtraKey(0))
}

/// Decodes an `Impersonate-Extra-` header suffix as kube-apiserver does: lower-case, then percent-decode.
///
/// Like Go's `url.PathUnescape` fallback in the apiserver, a suffix with a malformed `%` escape is
/// returned lower-cased but otherwise unchanged. Returns `None` for a non-ASCII suffix (no header
/// name can carry one) or when the decoded bytes are not UTF-8.
pub fn decode_extra_key(suffix: &str) -> Option<String> {
    if !suffix.is_ascii() {
        return None;
    }
    let lower = suffix.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || matches!(
                (bytes.get(i + 1), bytes.get(i + 2)),
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit()
            )
    });
    if !well_formed {
        return Some(lower);
    }
    percent_decode_str(&lower).decode_utf8().ok().map(|s| s.into_owned())
}

/// Classifies a character of an identity value: anything but a control character (tab aside) passes.
fn identity_char_problem(c: char) -> Option<BadByte> {
    match c {
        '\r' => Some(BadByte::Cr),
        '\n' => Some(BadByte::Lf),
        '\0' => Some(BadByte::Nul),
        '\t' => None,
        c if c.is_control() => Some(BadByte::Control),
        _ => None,
    }
}

/// Validates an identity value and turns it into a header value that the apiserver reads back
/// unchanged. Non-ASCII names travel as their UTF-8 bytes (obs-text, which Go's HTTP servers
/// keep as they are), so `jürgen` reaches RBAC as `jürgen`.
fn identity_value(s: &str, field: IdentityField, allow_empty: bool) -> Result<HeaderValue, ImpersonationError> {
    if s.is_empty() {
        if allow_empty {
            return Ok(HeaderValue::from_static(""));
        }
        return Err(ImpersonationError::EmptyIdentityValue { field });
    }
    if let Some((index, byte)) = s
        .char_indices()
        .find_map(|(i, c)| identity_char_problem(c).map(|p| (i, p)))
    {
        return Err(ImpersonationError::IdentityByte { field, index, byte });
    }
    if s.trim_ascii() != s {
        return Err(ImpersonationError::SurroundingWhitespace { field });
    }
    HeaderValue::from_bytes(s.as_bytes()).map_err(|_| ImpersonationError::IdentityByte {
        field,
        index: 0,
        byte: BadByte::Control,
    })
}

/// Encodes an extra key for `field`, refusing what the apiserver would not read back unchanged.
fn encode_extra_key_as(key: &str, field: IdentityField) -> Result<String, ImpersonationError> {
    if key.is_empty() {
        return Err(ImpersonationError::EmptyIdentityValue { field });
    }
    if let Some(index) = key.bytes().position(|b| b.is_ascii_uppercase()) {
        return Err(ImpersonationError::UpperCaseExtraKey { field, index });
    }
    if let Some((index, c)) = key.char_indices().find(|(_, c)| c.is_control()) {
        let byte = match c {
            '\r' => BadByte::Cr,
            '\n' => BadByte::Lf,
            '\0' => BadByte::Nul,
            _ => BadByte::Control,
        };
        return Err(ImpersonationError::IdentityByte { field, index, byte });
    }
    Ok(utf8_percent_encode(key, EXTRA_KEY_ESCAPE).to_string())
}

/// Builds the `Impersonate-Extra-` header name for `key` and checks that it decodes back to `key`.
fn extra_header_name(key: &str, field: IdentityField) -> Result<HeaderName, ImpersonationError> {
    let encoded = encode_extra_key_as(key, field)?;
    let name = HeaderName::try_from(format!("{IMPERSONATE_EXTRA_PREFIX}{encoded}"))
        .map_err(|_| ImpersonationError::UnencodableExtraKey { field })?;
    let suffix = name
        .as_str()
        .strip_prefix(IMPERSONATE_EXTRA_PREFIX)
        .ok_or(ImpersonationError::UnencodableExtraKey { field })?;
    if decode_extra_key(suffix).as_deref() != Some(key) {
        return Err(ImpersonationError::UnencodableExtraKey { field });
    }
    Ok(name)
}

/// Builds `Bearer <token>` marked sensitive, refusing tokens that are empty or not printable ASCII without spaces.
pub(super) fn bearer_value(token: &str) -> Result<HeaderValue, ImpersonationError> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ImpersonationError::InvalidAgentBearer);
    }
    let mut value =
        HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| ImpersonationError::InvalidAgentBearer)?;
    value.set_sensitive(true);
    Ok(value)
}
