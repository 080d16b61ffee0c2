//! The header rules of every hop, in one place: hop-by-hop headers, the one `Connection` parser,
//! upgrades, `Content-Length`, and the one URI rebaser. A leaf module.

use http::header::{CONNECTION, HeaderName, HeaderValue, UPGRADE};
use http::{HeaderMap, Uri};

/// Headers that belong to one hop and must not be forwarded (RFC 9110 section 7.6.1, plus the
/// legacy `proxy-connection` and `keep-alive`): the one list every hop uses.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` is a hop-by-hop header, in any case.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Removes hop-by-hop headers (and those named in `Connection`), keeping an
/// upgrade request an upgrade request: `Connection: Upgrade` and the single
/// `Upgrade` header survive when the caller asked for one.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let upgrade = upgrade_protocol(headers);
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(protocol) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(UPGRADE, protocol);
    }
}

/// Why a request's target cannot be put under a base URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RebaseError {
    /// Not a path (an authority, `*`).
    #[error("the request target must be a path, not {0:?}")]
    NotAPath(String),
    /// A `.` or `..` segment (also percent-encoded), or an encoded `/`.
    #[error("the request path has a '.' or '..' segment")]
    DotSegment,
    /// The joined URI does not parse.
    #[error("bad URI: {0}")]
    Invalid(String),
}

/// `base` (scheme, authority and path prefix) joined with `uri`'s path and query: never another
/// host. A dot segment could climb out of the base's path prefix (a gateway routing
/// `/k8s/clusters/NAME/`, or the relay's `/clusters/NAME/`) to another backend or cluster; no
/// Kubernetes path has one, so it is refused.
pub fn rebase(base: &Uri, uri: &Uri) -> Result<Uri, RebaseError> {
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    if !path_and_query.starts_with('/') {
        return Err(RebaseError::NotAPath(path_and_query.to_owned()));
    }
    if uri.path().split('/').any(is_dot_segment) {
        return Err(RebaseError::DotSegment);
    }
    let base_path = base.path().trim_end_matches('/');
    Uri::builder()
        .scheme(base.scheme_str().unwrap_or("https"))
        .authority(base.authority().map_or("", |a| a.as_str()))
        .path_and_query(format!("{base_path}{path_and_query}"))
        .build()
        .map_err(|e| RebaseError::Invalid(e.to_string()))
}

fn is_dot_segment(segment: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
    decoded == "." || decoded == ".." || decoded.contains('/')
}

/// A message's `Content-Length`, if it has exactly one that reads as a number.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok()?.trim().parse().ok(),
        _ => None,
    }
}

/// The `Upgrade` value if the headers ask for exactly one protocol upgrade.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_upgrade = connection_tokens(headers).any(|token| token.eq_ignore_ascii_case("upgrade"));
    let mut protocols = headers.get_all(UPGRADE).iter();
    match (connection_upgrade, protocols.next(), protocols.next()) {
        (true, Some(protocol), None) => Some(protocol.clone()),
        _ => None,
    }
}

/// The tokens of every `Connection` header, trimmed (the one parser of it).
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}
