//! From verified claims to an identity: registered-claim checks and claim mapping.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use super::{AuthError, IssuerConfig};

/// Leeway granted on `nbf` for clock skew between issuer and us; `exp` gets none.
pub(crate) const NBF_LEEWAY_SECS: u64 = 30;

/// Who the caller is, as the agent will impersonate them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Identity {
    /// Username (prefix applied).
    pub user: String,
    /// Stable user id, if the issuer maps one.
    pub uid: Option<String>,
    /// Groups (prefix applied).
    pub groups: Vec<String>,
    /// Extra attributes: key -> values.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// A caller as the relay knows it after a token passed every check: who, from which issuer, for
/// which audiences, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who the caller is.
    pub identity: Identity,
    /// The `iss` of the token.
    pub issuer: String,
    /// The token's `aud` values.
    pub audiences: Vec<String>,
    /// The token's `exp`, in Unix seconds.
    pub expires_at: u64,
}

/// The `aud` of verified claims as a list (a string or an array of strings).
pub(crate) fn audiences_of(claims: &Map<String, Value>) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// The identity a relay assertion states: `sub`, `groups`, `uid` and `extra` as the relay
/// mapped them (prefixes already applied), held to the same rules as a mapped token.
pub(crate) fn identity_from_assertion(
    claims: &Map<String, Value>,
    config: &IssuerConfig,
) -> Result<Identity, AuthError> {
    let user = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(rejected("an assertion needs a non-empty sub".to_owned())),
    };
    check_value(&user, "username")?;
    check_system(&user, "username", config)?;
    let mut groups = Vec::new();
    for group in strings(claims, "groups")? {
        check_value(&group, "group")?;
        check_system(&group, "group", config)?;
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    let uid = match claims.get("uid") {
        None | Some(Value::Null) => None,
        Some(Value::String(uid)) if !uid.is_empty() => {
            check_value(uid, "uid")?;
            Some(uid.clone())
        }
        _ => return Err(rejected("an assertion's uid must be a non-empty string".to_owned())),
    };
    let mut extra = BTreeMap::new();
    match claims.get("extra") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for key in map.keys() {
                let key_ok = !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/-".contains(&b));
                if !key_ok {
                    return Err(rejected(
                        "an assertion's extra key must be lowercase [a-z0-9._/-]".to_owned(),
                    ));
                }
                let values = strings(map, key)?;
                for value in &values {
                    check_value(value, "extra value")?;
                }
                if !values.is_empty() {
                    extra.insert(key.clone(), values);
                }
            }
        }
        Some(_) => return Err(rejected("an assertion's extra must be an object".to_owned())),
    }
    Ok(Identity {
        user,
        uid,
        groups,
        extra,
    })
}

/// Check `iss`, `aud`, `exp`, `nbf` and `iat` of signature-verified claims at `now` (Unix
/// seconds), and that the token lives no longer than `max_lifetime` seconds.
pub(crate) fn check_registered(
    claims: &Map<String, Value>,
    config: &IssuerConfig,
    now: u64,
    max_lifetime: u64,
) -> Result<(), AuthError> {
    // A one-element array `iss` would pass a looser check; only the exact string is accepted.
    if claims.get("iss").and_then(Value::as_str) != Some(config.issuer.as_str()) {
        return Err(AuthError::UnknownIssuer);
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => config.audiences.contains(aud),
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .any(|a| config.audiences.iter().any(|c| c == a)),
        _ => false,
    };
    if !audience_ok {
        return Err(AuthError::WrongAudience);
    }
    let now = now as f64;
    let leeway = NBF_LEEWAY_SECS as f64;
    // RFC 7519: the current time must be before `exp`; no leeway.
    let exp = match claims.get("exp").and_then(Value::as_f64) {
        Some(exp) if now < exp => exp,
        Some(_) => return Err(AuthError::Expired),
        None => return Err(AuthError::ClaimRejected("exp must be present and numeric".to_owned())),
    };
    let time = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_f64()
            .map(Some)
            .ok_or_else(|| AuthError::ClaimRejected(format!("{name} must be numeric"))),
    };
    if let Some(nbf) = time("nbf")?
        && nbf > now + leeway
    {
        return Err(AuthError::NotYetValid);
    }
    let iat = time("iat")?;
    if iat.is_some_and(|iat| iat > now + leeway) {
        return Err(AuthError::ClaimRejected("iat is in the future".to_owned()));
    }
    // Without `iat`, a token may not be valid for longer than the limit from now on.
    let start = iat.unwrap_or(now);
    if exp - start > max_lifetime as f64 {
        return Err(AuthError::ClaimRejected(format!(
            "the token lives longer than this issuer's max_token_lifetime ({})",
            config.max_token_lifetime
        )));
    }
    Ok(())
}

/// Map verified claims to an identity following the issuer's claim configuration.
pub(crate) fn identity_from(claims: &Map<String, Value>, config: &IssuerConfig) -> Result<Identity, AuthError> {
    super::rules::check_required(claims, &config.required_claims)?;
    let name = &config.username_claim;
    let username = match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return Err(rejected(format!("username claim {name:?} must be a non-empty string"))),
    };
    if name == "email" {
        match claims.get("email_verified") {
            None | Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => return Err(rejected("email_verified is false".to_owned())),
            Some(_) => return Err(rejected("email_verified must be a boolean".to_owned())),
        }
    }
    let user = format!("{}{username}", config.username_prefix);
    check_value(&user, "username")?;
    check_system(&user, "username", config)?;

    let mut groups = Vec::new();
    for claim in &config.groups_claim.0 {
        for group in strings(claims, claim)? {
            let group = format!("{}{group}", config.groups_prefix);
            check_value(&group, "group")?;
            check_system(&group, "group", config)?;
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
    }

    let uid = match &config.uid_claim {
        None => None,
        Some(claim) => match claims.get(claim) {
            Some(Value::String(uid)) if !uid.is_empty() => {
                check_value(uid, "uid")?;
                Some(uid.clone())
            }
            _ => return Err(rejected(format!("uid claim {claim:?} must be a non-empty string"))),
        },
    };

    let mut extra = BTreeMap::new();
    for (key, claim) in &config.extra_claims {
        let values = strings(claims, claim)?;
        for value in &values {
            check_value(value, "extra value")?;
        }
        if !values.is_empty() {
            extra.insert(key.clone(), values);
        }
    }
    Ok(Identity {
        user,
        uid,
        groups,
        extra,
    })
}

/// A claim holding a string or an array of strings; absent or null means none.
fn strings(claims: &Map<String, Value>, claim: &str) -> Result<Vec<String>, AuthError> {
    let wrong = || {
        rejected(format!(
            "claim {claim:?} must be a non-empty string or an array of them"
        ))
    };
    let one = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(wrong()),
    };
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(one).collect(),
        Some(value) => Ok(vec![one(value)?]),
    }
}

/// Values become `Impersonate-*` header values: no CR, LF, NUL or other control characters.
fn check_value(value: &str, what: &str) -> Result<(), AuthError> {
    if value.chars().any(char::is_control) {
        return Err(rejected(format!("{what} contains a control character")));
    }
    Ok(())
}

/// `system:` names belong to Kubernetes itself; a token may claim them only if allowed.
fn check_system(value: &str, what: &str, config: &IssuerConfig) -> Result<(), AuthError> {
    if !config.allow_system_names && value.starts_with("system:") {
        return Err(rejected(format!("{what} in the reserved system: namespace")));
    }
    Ok(())
}

fn rejected(why: String) -> AuthError {
    AuthError::ClaimRejected(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> IssuerConfig {
        IssuerConfig::new("https://idp", vec!["hawser".to_owned()])
    }

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn registered_claims() {
        let c = config();
        let now = 1_000_000;
        let ok = |extra: Value| {
            let mut claims = map(json!({"iss": "https://idp", "aud": "hawser", "exp": now + 10}));
            claims.extend(map(extra));
            check_registered(&claims, &c, now, 86_400)
        };
        assert_eq!(ok(json!({})), Ok(()));
        assert_eq!(ok(json!({"aud": ["x", "hawser"]})), Ok(()));
        assert_eq!(ok(json!({"exp": now as f64 + 0.5})), Ok(()));
        assert_eq!(ok(json!({"exp": now})), Err(AuthError::Expired));
        assert_eq!(ok(json!({"exp": now - 1})), Err(AuthError::Expired));
        assert!(matches!(ok(json!({"exp": "soon"})), Err(AuthError::ClaimRejected(_))));
        assert_eq!(ok(json!({"nbf": now + 30})), Ok(()));
        assert_eq!(ok(json!({"nbf": now + 31})), Err(AuthError::NotYetValid));
        assert_eq!(ok(json!({"aud": "other"})), Err(AuthError::WrongAudience));
        assert_eq!(ok(json!({"aud": [1, "x"]})), Err(AuthError::WrongAudience));
        assert_eq!(ok(json!({"iss": ["https://idp"]})), Err(AuthError::UnknownIssuer));
        assert_eq!(ok(json!({"iss": "https://idp/"})), Err(AuthError::UnknownIssuer));
        assert_eq!(ok(json!({"iat": now - 100})), Ok(()));
        assert!(matches!(ok(json!({"iat": now + 31})), Err(AuthError::ClaimRejected(_))));
        assert!(matches!(ok(json!({"iat": "then"})), Err(AuthError::ClaimRejected(_))));
    }

    #[test]
    fn lifetime_is_bounded_with_or_without_iat() {
        let c = config();
        let now = 1_000_000;
        let day = 86_400;
        let check = |claims: Value| check_registered(&map(claims), &c, now, day);
        let base = |exp: u64| json!({"iss": "https://idp", "aud": "hawser", "exp": exp});
        let ten_years = now + 10 * 365 * day;
        let too_long = |r: Result<(), AuthError>| matches!(r, Err(AuthError::ClaimRejected(m)) if m.contains("max_token_lifetime"));
        // The finding: a ten-year token was accepted.
        let mut claims = base(ten_years);
        claims["iat"] = json!(now);
        assert!(too_long(check(claims)));
        assert!(too_long(check(base(ten_years))), "without iat, counted from now");
        let mut claims = base(now + 3600);
        claims["iat"] = json!(now - 2 * day);
        assert!(too_long(check(claims)), "issued two days ago for two days and an hour");
        let mut claims = base(now + day);
        claims["iat"] = json!(now);
        assert_eq!(check(claims), Ok(()), "exactly the limit");
        assert_eq!(check(base(now + day)), Ok(()));
    }

    #[test]
    fn maps_claims_with_prefixes() {
        let mut c = config();
        c.username_prefix = "oidc:".into();
        c.groups_prefix = "oidc:".into();
        c.uid_claim = Some("oid".into());
        c.extra_claims.insert("example.com/tenant".into(), "tid".into());
        c.extra_claims.insert("example.com/absent".into(), "nothere".into());
        let claims = map(json!({"sub": "alice", "groups": ["dev", "ops", "dev"], "oid": "u-1", "tid": "t1"}));
        let id = identity_from(&claims, &c).expect("maps");
        assert_eq!(id.user, "oidc:alice");
        assert_eq!(id.groups, ["oidc:dev", "oidc:ops"]);
        assert_eq!(id.uid.as_deref(), Some("u-1"));
        assert_eq!(id.extra.len(), 1);
        assert_eq!(id.extra["example.com/tenant"], ["t1"]);
    }

    #[test]
    fn groups_as_string_or_absent() {
        let c = config();
        assert_eq!(
            identity_from(&map(json!({"sub": "a", "groups": "dev"})), &c)
                .expect("ok")
                .groups,
            ["dev"]
        );
        assert!(
            identity_from(&map(json!({"sub": "a"})), &c)
                .expect("ok")
                .groups
                .is_empty()
        );
        for bad in [json!(5), json!(["a", 1]), json!({"a": 1}), json!([""])] {
            let claims = map(json!({"sub": "a", "groups": bad}));
            assert!(matches!(identity_from(&claims, &c), Err(AuthError::ClaimRejected(_))));
        }
    }

    #[test]
    fn username_must_be_a_string() {
        let c = config();
        for bad in [json!({}), json!({"sub": ""}), json!({"sub": 42}), json!({"sub": ["a"]})] {
            assert!(matches!(identity_from(&map(bad), &c), Err(AuthError::ClaimRejected(_))));
        }
        let mut c = config();
        c.uid_claim = Some("oid".into());
        assert!(identity_from(&map(json!({"sub": "a"})), &c).is_err());
    }

    #[test]
    fn email_verified() {
        let mut c = config();
        c.username_claim = "email".into();
        let id = |v: Value| identity_from(&map(v), &c);
        assert_eq!(
            id(json!({"email": "a@x", "email_verified": true})).expect("ok").user,
            "a@x"
        );
        assert!(id(json!({"email": "a@x"})).is_ok());
        assert!(matches!(
            id(json!({"email": "a@x", "email_verified": false})),
            Err(AuthError::ClaimRejected(_))
        ));
        assert!(id(json!({"email": "a@x", "email_verified": "false"})).is_err());
    }

    #[test]
    fn control_characters_refused_everywhere() {
        let mut c = config();
        c.uid_claim = Some("oid".into());
        c.extra_claims.insert("k".into(), "x".into());
        for bad in ["a\rb", "a\nb", "a\0b", "a\u{7f}"] {
            for (claim, value) in [
                ("sub", json!(bad)),
                ("groups", json!([bad])),
                ("oid", json!(bad)),
                ("x", json!(bad)),
            ] {
                let mut claims = map(json!({"sub": "a", "oid": "u"}));
                claims.insert(claim.into(), value);
                let err = identity_from(&claims, &c).expect_err(claim);
                assert!(matches!(err, AuthError::ClaimRejected(_)));
                assert!(!err.to_string().contains(bad), "error must not echo the value");
            }
        }
    }

    #[test]
    fn system_names() {
        let mut c = config();
        assert!(identity_from(&map(json!({"sub": "system:admin"})), &c).is_err());
        assert!(identity_from(&map(json!({"sub": "a", "groups": "system:masters"})), &c).is_err());
        c.username_prefix = "oidc:".into();
        c.groups_prefix = "oidc:".into();
        assert!(identity_from(&map(json!({"sub": "system:admin", "groups": "system:masters"})), &c).is_ok());
        c.username_prefix = "system:".into();
        assert!(identity_from(&map(json!({"sub": "a"})), &c).is_err());
        c.allow_system_names = true;
        let id = identity_from(&map(json!({"sub": "a", "groups": "system:masters"})), &c).expect("allowed");
        assert_eq!(id.user, "system:a");
    }
}
