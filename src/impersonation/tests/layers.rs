//! Strip, set and assert each hold on their own; errors stay silent about values.

use super::*;

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
    apply_with(&mut headers, &identity(), Some(AGENT_TOKEN), forgetful_strip).expect("set replaces what strip missed");
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
        let result = apply_with(&mut headers, &identity(), Some(AGENT_TOKEN), forgetful_strip);
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
