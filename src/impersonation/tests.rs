use std::collections::BTreeMap;

use super::*;

const AGENT_TOKEN: &str = "agent-sa-token";

fn identity() -> Identity {
    Identity {
        user: "alice@example.com".to_owned(),
        uid: Some("uid-1234".to_owned()),
        groups: vec!["dev".to_owned(), "ops".to_owned()],
        extra: BTreeMap::from([(
            "example.com/scope".to_owned(),
            vec!["read".to_owned(), "write".to_owned()],
        )]),
    }
}

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_str(value).expect("test header value"),
        );
    }
    headers
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// Every header name in `headers` with the given lower-case prefix, each once, sorted.
fn names_with_prefix(headers: &HeaderMap, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = headers
        .keys()
        .map(|n| n.as_str().to_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

fn expect_identity_error(identity: &Identity) -> ImpersonationError {
    impersonation_headers(identity).expect_err("identity must be refused")
}

#[test]
fn mixed_case_and_duplicated_impersonation_headers_are_replaced_by_ours() {
    let mut headers = map(&[
        ("Impersonate-User", "system:admin"),
        ("impersonate-user", "root"),
        ("IMPERSONATE-USER", "mallory"),
        ("Impersonate-Group", "system:masters"),
        ("impersonate-GROUP", "system:nodes"),
        ("IMPERSONATE-EXTRA-Foo", "bar"),
        ("Impersonate-Extra-example.com%2Fscope", "admin"),
        ("Impersonate-Uid", "0"),
        ("iMpErSoNaTe-UiD", "1"),
        ("Impersonate-Whatever", "x"),
        ("Accept", "application/json"),
    ]);
    let sanitized = apply(&mut headers, &identity(), AGENT_TOKEN).expect("apply");
    assert!(!sanitized.is_upgrade());

    assert_eq!(values(&headers, "impersonate-user"), ["alice@example.com"]);
    assert_eq!(values(&headers, "impersonate-uid"), ["uid-1234"]);
    assert_eq!(values(&headers, "impersonate-group"), ["dev", "ops"]);
    assert_eq!(
        values(&headers, "impersonate-extra-example.com%2fscope"),
        ["read", "write"]
    );
    assert_eq!(
        names_with_prefix(&headers, "impersonate-"),
        [
            "impersonate-extra-example.com%2fscope",
            "impersonate-group",
            "impersonate-uid",
            "impersonate-user",
        ]
    );
    assert_eq!(values(&headers, "accept"), ["application/json"]);
}

#[test]
fn caller_without_uid_cannot_keep_its_own_uid() {
    let mut headers = map(&[("Impersonate-Uid", "system-uid")]);
    let mut id = identity();
    id.uid = None;
    apply(&mut headers, &id, AGENT_TOKEN).expect("apply");
    assert!(headers.get("impersonate-uid").is_none());
}

#[test]
fn connection_naming_identity_headers_does_not_remove_the_agents() {
    let mut headers = map(&[
        ("Connection", "Impersonate-User, Authorization"),
        (
            "Connection",
            "impersonate-group,  IMPERSONATE-UID ,impersonate-extra-example.com%2fscope",
        ),
        ("Authorization", "Bearer caller-token"),
    ]);
    apply(&mut headers, &identity(), AGENT_TOKEN).expect("apply");
    assert_eq!(values(&headers, "impersonate-user"), ["alice@example.com"]);
    assert_eq!(values(&headers, "impersonate-uid"), ["uid-1234"]);
    assert_eq!(values(&headers, "impersonate-group"), ["dev", "ops"]);
    assert_eq!(
        values(&headers, "impersonate-extra-example.com%2fscope"),
        ["read", "write"]
    );
    assert_eq!(values(&headers, "authorization"), [format!("Bearer {AGENT_TOKEN}")]);
    assert!(headers.get("connection").is_none());
}

#[test]
fn upgrade_survives_as_exactly_one_connection_and_upgrade() {
    let mut headers = map(&[
        ("Connection", "keep-alive"),
        ("Connection", "upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Protocol", "v5.channel.k8s.io"),
    ]);
    let sanitized = apply(&mut headers, &identity(), AGENT_TOKEN).expect("apply");
    assert_eq!(sanitized.upgrade, Some(HeaderValue::from_static("websocket")));
    assert_eq!(values(&headers, "connection"), ["Upgrade"]);
    assert_eq!(values(&headers, "upgrade"), ["websocket"]);
    assert_eq!(values(&headers, "sec-websocket-protocol"), ["v5.channel.k8s.io"]);
}

#[test]
fn upgrade_token_is_case_insensitive_and_found_among_others() {
    let mut headers = map(&[("Connection", " Keep-Alive , UPGRADE "), ("Upgrade", "SPDY/3.1")]);
    let sanitized = sanitize(&mut headers).expect("sanitize");
    assert_eq!(sanitized.upgrade, Some(HeaderValue::from_static("SPDY/3.1")));
    assert!(
        headers.is_empty(),
        "sanitize itself leaves no hop-by-hop header: {headers:?}"
    );
}

#[test]
fn upgrade_header_without_connection_token_is_not_an_upgrade() {
    let mut headers = map(&[("Connection", "keep-alive"), ("Upgrade", "websocket")]);
    let sanitized = apply(&mut headers, &identity(), AGENT_TOKEN).expect("apply");
    assert_eq!(sanitized.upgrade, None);
    assert!(headers.get("upgrade").is_none());
    assert!(headers.get("connection").is_none());
}

#[test]
fn connection_upgrade_without_upgrade_header_is_not_an_upgrade() {
    let mut headers = map(&[("Connection", "Upgrade")]);
    let sanitized = sanitize(&mut headers).expect("sanitize");
    assert_eq!(sanitized.upgrade, None);
}

#[test]
fn two_upgrade_headers_are_refused() {
    let mut headers = map(&[
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Upgrade", "SPDY/3.1"),
    ]);
    assert_eq!(
        sanitize(&mut headers.clone()),
        Err(ImpersonationError::MultipleUpgrade { count: 2 })
    );
    assert_eq!(
        apply(&mut headers, &identity(), AGENT_TOKEN),
        Err(ImpersonationError::MultipleUpgrade { count: 2 })
    );
}

#[test]
fn blank_upgrade_value_is_refused() {
    let mut headers = map(&[("Connection", "Upgrade"), ("Upgrade", "")]);
    assert_eq!(sanitize(&mut headers), Err(ImpersonationError::BlankUpgrade));
}

#[test]
fn x_remote_headers_are_removed() {
    let mut headers = map(&[
        ("X-Remote-User", "system:admin"),
        ("X-Remote-Group", "system:masters"),
        ("X-Remote-Extra-Scopes", "everything"),
        ("x-remote-uid", "0"),
        ("X-Request-Id", "abc"),
    ]);
    apply(&mut headers, &identity(), AGENT_TOKEN).expect("apply");
    assert_eq!(names_with_prefix(&headers, "x-remote-"), Vec::<String>::new());
    assert_eq!(values(&headers, "x-request-id"), ["abc"]);
}

#[test]
fn caller_authorization_is_replaced_by_the_agents() {
    let mut headers = map(&[
        ("Authorization", "Bearer caller-token"),
        ("authorization", "Basic YWRtaW46YWRtaW4="),
        ("Proxy-Authorization", "Basic eDp5"),
    ]);
    apply(&mut headers, &identity(), AGENT_TOKEN).expect("apply");
    assert_eq!(values(&headers, "authorization"), [format!("Bearer {AGENT_TOKEN}")]);
    let auth = headers.get("authorization").expect("authorization");
    assert!(auth.is_sensitive(), "the agent's token must be marked sensitive");
    assert!(headers.get("proxy-authorization").is_none());
}

#[test]
fn invalid_agent_bearer_is_refused_without_echoing_it() {
    for token in ["", "has space", "tab\there", "line\nbreak", "caf\u{e9}"] {
        let mut headers = map(&[("Authorization", "Bearer caller-token")]);
        let err = apply(&mut headers, &identity(), token).expect_err("bad bearer must be refused");
        assert_eq!(err, ImpersonationError::InvalidAgentBearer);
        if !token.is_empty() {
            assert!(!err.to_string().contains(token));
        }
        assert!(
            headers.get("authorization").is_none(),
            "error leaves no credentials behind"
        );
    }
}

#[test]
fn hop_by_hop_headers_are_removed() {
    let mut headers = map(&[
        ("Proxy-Authorization", "Basic eDp5"),
        ("TE", "trailers"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Trailer", "Expires"),
        ("Proxy-Connection", "keep-alive"),
        ("Connection", "close"),
        ("Upgrade", "h2c"),
        ("Content-Type", "application/json"),
    ]);
    apply(&mut headers, &identity(), AGENT_TOKEN).expect("apply");
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(headers.get(name).is_none(), "{name} must be removed");
    }
    assert_eq!(values(&headers, "content-type"), ["application/json"]);
}

#[test]
fn header_named_in_connection_is_removed() {
    let mut headers = map(&[
        ("Connection", "X-Custom, x-other"),
        ("X-Custom", "1"),
        ("X-Other", "2"),
        ("X-Kept", "3"),
    ]);
    apply(&mut headers, &identity(), AGENT_TOKEN).expect("apply");
    assert!(headers.get("x-custom").is_none());
    assert!(headers.get("x-other").is_none());
    assert_eq!(values(&headers, "x-kept"), ["3"]);
}

#[test]
fn caller_header_values_with_nul_cr_or_lf_are_refused() {
    // Safe code cannot put these bytes into a HeaderValue (only an `unsafe` constructor can), so
    // sanitize's check is defence in depth: test the invariant it relies on and the check itself.
    for (raw, byte) in [
        (&b"a\0b"[..], BadByte::Nul),
        (b"a\rb", BadByte::Cr),
        (b"a\nb", BadByte::Lf),
    ] {
        assert!(HeaderValue::from_bytes(raw).is_err(), "http must keep refusing {byte}");
        assert_eq!(line_breaking_byte(raw), Some(byte));
    }
    assert_eq!(line_breaking_byte(b"tab\there obs-text \x80\xff"), None);

    // obs-text and tabs in a caller value are not refused; only the listed bytes are.
    let mut headers = HeaderMap::new();
    headers.append(
        "x-obs",
        HeaderValue::from_bytes(b"caf\xe9\tok").expect("obs-text value"),
    );
    assert_eq!(sanitize(&mut headers), Ok(Sanitized::default()));
    assert_eq!(
        headers.get("x-obs").map(HeaderValue::as_bytes),
        Some(&b"caf\xe9\tok"[..])
    );
}

#[test]
fn passthrough_sets_only_the_cluster_token_whatever_the_caller_sent() {
    let mut headers = map(&[
        ("Authorization", "Bearer relay-jwt"),
        ("Hawser-Cluster-Authorization", "Bearer cluster-token"),
        ("Impersonate-User", "system:admin"),
        ("impersonate-group", "system:masters"),
        ("Impersonate-Uid", "0"),
        ("Impersonate-Extra-Scopes", "all"),
        ("X-Remote-User", "root"),
        ("Connection", "Impersonate-User, Authorization"),
        ("Accept", "application/json"),
    ]);
    apply_passthrough(&mut headers, "cluster-token").expect("apply_passthrough");
    assert_eq!(values(&headers, "authorization"), ["Bearer cluster-token"]);
    assert!(headers.get("authorization").unwrap().is_sensitive());
    assert_eq!(names_with_prefix(&headers, "impersonate-"), Vec::<String>::new());
    assert_eq!(names_with_prefix(&headers, "x-remote-"), Vec::<String>::new());
    assert!(
        headers.get(CLUSTER_AUTHORIZATION).is_none(),
        "the carrier header never leaves the agent"
    );
    assert_eq!(values(&headers, "accept"), ["application/json"]);
}

#[test]
fn passthrough_keeps_an_upgrade_and_refuses_a_bad_token_without_credentials_left() {
    let mut headers = map(&[("Connection", "Upgrade"), ("Upgrade", "websocket")]);
    let sanitized = apply_passthrough(&mut headers, "t").expect("upgrade");
    assert!(sanitized.is_upgrade());
    assert_eq!(values(&headers, "upgrade"), ["websocket"]);
    for token in ["", "two words", "nl\n"] {
        let mut headers = map(&[("Authorization", "Bearer relay-jwt"), ("Impersonate-User", "x")]);
        let err = apply_passthrough(&mut headers, &token.replace("\\n", "\n")).expect_err("bad token");
        assert_eq!(err, ImpersonationError::InvalidClusterBearer);
        assert!(headers.get("authorization").is_none() && headers.get("impersonate-user").is_none());
    }
}

#[test]
fn the_cluster_token_header_is_stripped_in_identity_mode_too() {
    let mut headers = map(&[("hawser-cluster-AUTHORIZATION", "Bearer cluster-token")]);
    apply(&mut headers, &identity(), AGENT_TOKEN).expect("apply");
    assert!(headers.get(CLUSTER_AUTHORIZATION).is_none());
}

#[test]
fn websocket_protocol_bearer_entries_are_removed_and_subprotocols_kept() {
    let caller = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        (
            "Sec-WebSocket-Protocol",
            "v5.channel.k8s.io, base64url.bearer.authorization.k8s.io.ZXZpbA, v4.channel.k8s.io",
        ),
        (
            "sec-websocket-protocol",
            "BASE64URL.Bearer.Authorization.K8S.IO.c3VwZXI",
        ),
        (
            "Sec-WebSocket-Protocol",
            " base64url.bearer.authorization.k8s.io.eA ,channel.k8s.io",
        ),
    ];
    let mut identity_mode = map(&caller);
    apply(&mut identity_mode, &identity(), AGENT_TOKEN).expect("apply");
    let mut passthrough = map(&caller);
    apply_passthrough(&mut passthrough, "cluster-token").expect("apply_passthrough");
    for headers in [&identity_mode, &passthrough] {
        assert_eq!(
            values(headers, "sec-websocket-protocol"),
            ["v5.channel.k8s.io, v4.channel.k8s.io", "channel.k8s.io"]
        );
    }
}

#[test]
fn a_websocket_bearer_that_survives_is_caught_by_the_assertion() {
    let mut headers = map(&[("Sec-WebSocket-Protocol", "base64url.bearer.authorization.k8s.io.ZXZpbA")]);
    let err = apply_with(&mut headers, &identity(), Some(AGENT_TOKEN), |_| {
        Ok(Sanitized::default())
    })
    .expect_err("a surviving WebSocket bearer must be refused");
    assert_eq!(err, ImpersonationError::WebSocketBearer);
    assert!(headers.get("sec-websocket-protocol").is_none(), "scrubbed on error");
}

#[test]
fn an_agent_with_a_client_certificate_sends_no_authorization_and_keeps_none_of_the_callers() {
    let mut headers = map(&[
        ("Authorization", "Bearer caller-relay-token"),
        ("authorization", "Basic eDp5"),
        ("Impersonate-Group", "system:masters"),
    ]);
    apply_as_agent(&mut headers, &identity(), None).expect("apply without a bearer");
    assert!(headers.get("authorization").is_none(), "{headers:?}");
    assert_eq!(values(&headers, "impersonate-user"), ["alice@example.com"]);
    assert_eq!(values(&headers, "impersonate-group"), ["dev", "ops"]);

    // With a token, the same as apply.
    let mut headers = map(&[("Authorization", "Bearer caller-relay-token")]);
    apply_as_agent(&mut headers, &identity(), Some(AGENT_TOKEN)).expect("apply with a bearer");
    assert_eq!(values(&headers, "authorization"), [format!("Bearer {AGENT_TOKEN}")]);
}

mod identity;
mod layers;
