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
    for name in HOP_BY_HOP.iter().chain(&["proxy-authorization"]) {
        assert!(headers.get(*name).is_none(), "{name} must be removed");
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
fn cr_lf_nul_in_identity_fields_are_refused() {
    for (bad, byte) in [("a\rb", BadByte::Cr), ("a\nb", BadByte::Lf), ("a\0b", BadByte::Nul)] {
        let mut id = identity();
        id.user = bad.to_owned();
        let field = IdentityField::User;
        assert_eq!(
            expect_identity_error(&id),
            ImpersonationError::IdentityByte { field, index: 1, byte }
        );

        let mut id = identity();
        id.uid = Some(bad.to_owned());
        let field = IdentityField::Uid;
        assert_eq!(
            expect_identity_error(&id),
            ImpersonationError::IdentityByte { field, index: 1, byte }
        );

        let mut id = identity();
        id.groups.push(bad.to_owned());
        let field = IdentityField::Group(2);
        assert_eq!(
            expect_identity_error(&id),
            ImpersonationError::IdentityByte { field, index: 1, byte }
        );

        let mut id = identity();
        id.extra.insert("k".to_owned(), vec!["ok".to_owned(), bad.to_owned()]);
        let field = IdentityField::ExtraValue { key: 1, value: 1 };
        assert_eq!(
            expect_identity_error(&id),
            ImpersonationError::IdentityByte { field, index: 1, byte }
        );

        let mut id = identity();
        id.extra.insert(bad.to_owned(), vec!["v".to_owned()]);
        let field = IdentityField::ExtraKey(0);
        assert_eq!(
            expect_identity_error(&id),
            ImpersonationError::IdentityByte { field, index: 1, byte }
        );
    }
}

#[test]
fn other_control_characters_in_identity_are_refused() {
    for bad in ["a\x01b", "a\x7fb", "a\u{85}b"] {
        let mut id = identity();
        id.user = bad.to_owned();
        assert!(matches!(
            expect_identity_error(&id),
            ImpersonationError::IdentityByte {
                field: IdentityField::User,
                index: 1,
                byte: BadByte::Control | BadByte::NonAscii
            }
        ));
    }
    let mut id = identity();
    id.user = "tab\tinside".to_owned();
    assert!(impersonation_headers(&id).is_ok(), "tab inside a value is allowed");
}

#[test]
fn non_ascii_user_is_refused() {
    let mut id = identity();
    id.user = "j\u{f6}rg".to_owned();
    assert_eq!(
        expect_identity_error(&id),
        ImpersonationError::IdentityByte {
            field: IdentityField::User,
            index: 1,
            byte: BadByte::NonAscii
        }
    );
}

#[test]
fn surrounding_whitespace_is_refused() {
    for bad in [" system:masters", "system:masters ", "\tsystem:masters"] {
        let mut id = identity();
        id.groups = vec![bad.to_owned()];
        assert_eq!(
            expect_identity_error(&id),
            ImpersonationError::SurroundingWhitespace {
                field: IdentityField::Group(0)
            }
        );
    }
}

#[test]
fn empty_user_is_refused() {
    let mut id = identity();
    id.user = String::new();
    assert_eq!(
        expect_identity_error(&id),
        ImpersonationError::EmptyIdentityValue {
            field: IdentityField::User
        }
    );

    let mut headers = map(&[("Authorization", "Bearer caller-token"), ("Impersonate-User", "root")]);
    assert!(apply(&mut headers, &id, AGENT_TOKEN).is_err());
    assert!(headers.get("authorization").is_none(), "no fallback to any credentials");
    assert!(headers.get("impersonate-user").is_none());
}

#[test]
fn empty_uid_group_and_extra_key_are_refused() {
    let mut id = identity();
    id.uid = Some(String::new());
    assert_eq!(
        expect_identity_error(&id),
        ImpersonationError::EmptyIdentityValue {
            field: IdentityField::Uid
        }
    );

    let mut id = identity();
    id.groups = vec!["a".to_owned(), String::new()];
    assert_eq!(
        expect_identity_error(&id),
        ImpersonationError::EmptyIdentityValue {
            field: IdentityField::Group(1)
        }
    );

    let mut id = identity();
    id.extra.insert(String::new(), vec!["v".to_owned()]);
    assert_eq!(
        expect_identity_error(&id),
        ImpersonationError::EmptyIdentityValue {
            field: IdentityField::ExtraKey(0)
        }
    );
}

#[test]
fn extra_keys_with_slash_and_percent_round_trip() {
    assert_eq!(
        encode_extra_key("example.com/scope").as_deref(),
        Ok("example.com%2Fscope")
    );
    assert_eq!(encode_extra_key("100%").as_deref(), Ok("100%25"));
    assert_eq!(encode_extra_key("a b:c").as_deref(), Ok("a%20b%3Ac"));
    let keys = [
        "example.com/scope",
        "authentication.kubernetes.io/credential-id",
        "100%",
        "%2f",
        "a b:c\"d",
        "sp\u{e4}ter",
        "!#$&'*+-.^_`|~",
    ];
    for key in keys {
        let encoded = encode_extra_key(key).expect("encode");
        assert_eq!(decode_extra_key(&encoded).as_deref(), Some(key), "encoded as {encoded}");

        let mut id = identity();
        id.extra = BTreeMap::from([(key.to_owned(), vec!["v".to_owned()])]);
        let built = impersonation_headers(&id).expect("headers");
        let (name, _) = built.last().expect("extra header");
        let suffix = name.as_str().strip_prefix(IMPERSONATE_EXTRA_PREFIX).expect("prefix");
        assert_eq!(decode_extra_key(suffix).as_deref(), Some(key));
    }
}

#[test]
fn decode_extra_key_matches_the_apiserver() {
    assert_eq!(
        decode_extra_key("Example.COM%2fScope").as_deref(),
        Some("example.com/scope")
    );
    // Go's url.PathUnescape fails on a malformed escape and the apiserver keeps the lower-cased raw key.
    assert_eq!(decode_extra_key("A%2Fb%zz").as_deref(), Some("a%2fb%zz"));
    assert_eq!(decode_extra_key("bad%2").as_deref(), Some("bad%2"));
    assert_eq!(decode_extra_key("%ff"), None);
    assert_eq!(decode_extra_key("\u{e9}"), None);
}

#[test]
fn upper_case_extra_key_is_refused() {
    assert_eq!(
        encode_extra_key("example.com/Scope"),
        Err(ImpersonationError::UpperCaseExtraKey {
            field: IdentityField::ExtraKey(0),
            index: 12
        })
    );
    let mut id = identity();
    id.extra.insert("Foo".to_owned(), vec!["v".to_owned()]);
    assert_eq!(
        expect_identity_error(&id),
        ImpersonationError::UpperCaseExtraKey {
            field: IdentityField::ExtraKey(0),
            index: 0
        }
    );
}

#[test]
fn groups_keep_order_and_repeats() {
    let mut id = identity();
    id.groups = ["zeta", "alpha", "zeta", "mid"].map(str::to_owned).to_vec();
    let built = impersonation_headers(&id).expect("headers");
    let groups: Vec<&[u8]> = built
        .iter()
        .filter(|(n, _)| n.as_str() == IMPERSONATE_GROUP)
        .map(|(_, v)| v.as_bytes())
        .collect();
    assert_eq!(groups, [&b"zeta"[..], b"alpha", b"zeta", b"mid"]);

    let mut headers = map(&[("Impersonate-Group", "system:masters")]);
    apply(&mut headers, &id, AGENT_TOKEN).expect("apply");
    assert_eq!(values(&headers, "impersonate-group"), ["zeta", "alpha", "zeta", "mid"]);
}

#[test]
fn headers_come_out_in_documented_order() {
    let built = impersonation_headers(&identity()).expect("headers");
    let names: Vec<&str> = built.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "impersonate-user",
            "impersonate-uid",
            "impersonate-group",
            "impersonate-group",
            "impersonate-extra-example.com%2fscope",
            "impersonate-extra-example.com%2fscope",
        ]
    );
}

#[test]
fn assert_only_ours_catches_extras_missing_and_changed() {
    let expected = impersonation_headers(&identity()).expect("headers");
    let mut good = HeaderMap::new();
    for (n, v) in &expected {
        good.append(n.clone(), v.clone());
    }
    good.append("accept", HeaderValue::from_static("*/*"));
    assert_eq!(assert_only_ours(&good, &expected), Ok(()));

    let mut extra = good.clone();
    extra.append("impersonate-extra-foo", HeaderValue::from_static("bar"));
    assert_eq!(
        assert_only_ours(&extra, &expected),
        Err(ImpersonationError::UnexpectedHeader {
            name: HeaderName::from_static("impersonate-extra-foo")
        })
    );

    let mut appended = good.clone();
    appended.append("impersonate-group", HeaderValue::from_static("system:masters"));
    assert_eq!(
        assert_only_ours(&appended, &expected),
        Err(ImpersonationError::MismatchedHeader {
            name: HeaderName::from_static("impersonate-group")
        })
    );

    let mut missing = good.clone();
    missing.remove("impersonate-uid");
    assert_eq!(
        assert_only_ours(&missing, &expected),
        Err(ImpersonationError::MismatchedHeader {
            name: HeaderName::from_static("impersonate-uid")
        })
    );

    for name in ["authorization", "x-remote-user", "transfer-encoding"] {
        let mut stray = good.clone();
        stray.append(HeaderName::from_static(name), HeaderValue::from_static("x"));
        assert_eq!(
            assert_only_ours(&stray, &expected),
            Err(ImpersonationError::UnexpectedHeader {
                name: HeaderName::from_static(name)
            })
        );
    }
}

/// A strip step that forgets everything, standing in for a future bug in `sanitize`.
fn forgetful_strip(_: &mut HeaderMap) -> Result<Sanitized, ImpersonationError> {
    Ok(Sanitized::default())
}

#[test]
fn set_step_replaces_even_when_strip_misses_a_header() {
    let mut headers = map(&[
        ("Impersonate-Group", "system:masters"),
        ("Impersonate-User", "root"),
        ("Authorization", "Bearer caller-token"),
    ]);
    apply_with(&mut headers, &identity(), AGENT_TOKEN, forgetful_strip).expect("set replaces what strip missed");
    assert_eq!(values(&headers, "impersonate-group"), ["dev", "ops"]);
    assert_eq!(values(&headers, "impersonate-user"), ["alice@example.com"]);
    assert_eq!(values(&headers, "authorization"), [format!("Bearer {AGENT_TOKEN}")]);
}

#[test]
fn assert_step_catches_what_strip_missed_and_scrubs() {
    for name in [
        "impersonate-extra-foo",
        "x-remote-user",
        "proxy-authorization",
        "upgrade",
    ] {
        let mut headers = map(&[(name, "x"), ("Accept", "*/*")]);
        let result = apply_with(&mut headers, &identity(), AGENT_TOKEN, forgetful_strip);
        assert_eq!(
            result,
            Err(ImpersonationError::UnexpectedHeader {
                name: HeaderName::from_static(name)
            })
        );
        assert_eq!(names_with_prefix(&headers, "impersonate-"), Vec::<String>::new());
        assert!(
            headers.get("authorization").is_none(),
            "no credentials left after a failed assert"
        );
        assert!(headers.get(name).is_none());
        assert_eq!(values(&headers, "accept"), ["*/*"]);
    }
}

#[test]
fn errors_never_echo_values() {
    let secret = "s3cr3t-value\r\n";
    let mut id = identity();
    id.user = secret.to_owned();
    let shown = expect_identity_error(&id).to_string();
    assert!(!shown.contains("s3cr3t"), "{shown}");

    let err = ImpersonationError::CallerHeaderByte {
        name: HeaderName::from_static("x-token"),
        byte: BadByte::Nul,
    };
    assert_eq!(
        err.to_string(),
        "request header x-token has a value containing a NUL byte"
    );
}

/// Deterministic xorshift generator, enough for a property-style sweep without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// `s` with each ASCII letter upper-cased at random.
    fn random_case(&mut self, s: &str) -> String {
        s.chars()
            .map(|c| {
                if self.next() & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    }

    /// A random string of header-token bytes, possibly with percent escapes.
    fn token(&mut self) -> String {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~";
        let len = 1 + self.below(12);
        (0..len).map(|_| CHARS[self.below(CHARS.len())] as char).collect()
    }
}

#[test]
fn property_no_foreign_identity_header_survives() {
    const BASES: &[&str] = &[
        "impersonate-user",
        "impersonate-group",
        "impersonate-uid",
        "impersonate-extra-",
        "impersonate-",
        "authorization",
        "proxy-authorization",
        "x-remote-user",
        "x-remote-group",
        "x-remote-extra-",
        "connection",
        "upgrade",
        "te",
        "keep-alive",
        "x-benign-",
    ];
    const VALUES: &[&str] = &[
        "system:masters",
        "root",
        "Bearer caller",
        "upgrade",
        "alice@example.com",
        "dev",
        "",
    ];

    let id = identity();
    let ours = impersonation_headers(&id).expect("headers");
    let agent_auth = format!("Bearer {AGENT_TOKEN}");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut ok, mut refused) = (0, 0);

    for round in 0..2000 {
        let mut headers = HeaderMap::new();
        let count = 1 + rng.below(12);
        for _ in 0..count {
            let base = rng.pick(BASES);
            let mut name = rng.random_case(base);
            if base.ends_with('-') {
                name.push_str(&rng.token());
            }
            let value = if base == "connection" {
                // Name other headers, ours included, in a random case.
                let a = rng.pick(BASES);
                let a = rng.random_case(a);
                let b = rng.pick(BASES);
                let b = rng.random_case(b);
                format!("{a}, {b}")
            } else {
                rng.pick(VALUES).to_owned()
            };
            let name = HeaderName::from_bytes(name.as_bytes()).expect("generated name is a token");
            headers.append(name, HeaderValue::from_str(&value).expect("generated value"));
        }

        let result = apply(&mut headers, &id, AGENT_TOKEN);
        if result.is_ok() {
            ok += 1;
        } else {
            refused += 1;
        }
        for (name, value) in &headers {
            let lower = name.as_str().to_ascii_lowercase();
            if lower.starts_with("impersonate-") {
                assert!(result.is_ok(), "round {round}: {lower} survived a failed apply");
                assert!(
                    ours.iter().any(|(n, v)| n == name && v == value),
                    "round {round}: foreign {lower} survived"
                );
            }
            if lower.starts_with("x-remote-") || lower == "proxy-authorization" {
                panic!("round {round}: {lower} survived");
            }
            if lower == "authorization" {
                assert_eq!(value.as_bytes(), agent_auth.as_bytes(), "round {round}");
            }
        }
        if result.is_ok() {
            for (name, value) in &ours {
                let got: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
                let want: Vec<&HeaderValue> = ours.iter().filter(|(n, _)| n == name).map(|(_, v)| v).collect();
                assert_eq!(got, want, "round {round}: {name} does not hold exactly ours");
                assert!(got.contains(&value));
            }
            assert_eq!(headers.get_all("authorization").iter().count(), 1, "round {round}");
        }
    }
    assert!(
        ok >= 1000,
        "the sweep must mostly exercise successful applies: {ok} ok, {refused} refused"
    );
    assert!(
        refused > 0,
        "the sweep must also hit refusals (repeated or blank Upgrade)"
    );
}
