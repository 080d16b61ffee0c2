//! Identity values: bytes, emptiness, extra keys, groups.

use super::*;

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
                byte: BadByte::Control
            }
        ));
    }
    let mut id = identity();
    id.user = "tab\tinside".to_owned();
    assert!(impersonation_headers(&id).is_ok(), "tab inside a value is allowed");
}

#[test]
fn non_ascii_names_travel_as_utf8() {
    let mut id = identity();
    id.user = "j\u{fc}rgen".to_owned();
    id.groups = vec!["d\u{e9}v".to_owned()];
    let headers = impersonation_headers(&id).expect("carried, not refused");
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_bytes().to_vec())
    };
    assert_eq!(value("impersonate-user").unwrap(), "j\u{fc}rgen".as_bytes());
    assert_eq!(value("impersonate-group").unwrap(), "d\u{e9}v".as_bytes());
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
