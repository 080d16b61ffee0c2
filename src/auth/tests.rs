//! Authenticator tests with static keys (PEM and JWKS files).

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

use super::test_support::*;
use super::*;

fn pem_config(dir: &tempfile::TempDir, pem: &str) -> IssuerConfig {
    let mut config = IssuerConfig::new(ISS, vec![AUD.to_owned()]);
    config.public_key_file = Some(write_file(dir, "keys.pem", pem));
    config
}

fn jwks_config(dir: &tempfile::TempDir, jwks: serde_json::Value) -> IssuerConfig {
    let mut config = IssuerConfig::new(ISS, vec![AUD.to_owned()]);
    config.jwks_file = Some(write_file(dir, "jwks.json", &jwks.to_string()));
    config
}

fn ec_auth(key: &EcKey) -> (Authenticator, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = Authenticator::new(vec![jwks_config(&dir, json!({"keys": [key.jwk()]}))]).expect("config");
    (auth, dir)
}

#[tokio::test]
async fn es256_token_accepted_from_pem() {
    let key = EcKey::new("k1");
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = Authenticator::new(vec![pem_config(&dir, &key.public_pem())]).expect("config");
    let token = key.sign(&with(claims("alice"), json!({"groups": ["dev", "ops"]})));
    let id = auth.authenticate(&token).await.expect("accepted");
    assert_eq!(
        id,
        Identity {
            user: "alice".into(),
            uid: None,
            groups: vec!["dev".into(), "ops".into()],
            extra: Default::default()
        }
    );
    // Without kid the PEM key is tried as well.
    assert!(auth.authenticate(&key.sign_with(None, &claims("alice"))).await.is_ok());
    // PEM keys have no kid: another key's token is an unknown key whatever kid it names.
    let other = EcKey::new("k1");
    assert_eq!(
        auth.authenticate(&other.sign(&claims("alice"))).await,
        Err(AuthError::UnknownKey)
    );
    assert_eq!(
        auth.authenticate(&other.sign_with(None, &claims("alice"))).await,
        Err(AuthError::BadSignature)
    );
}

#[tokio::test]
async fn rsa_tokens_accepted_from_pem_and_jwks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = Authenticator::new(vec![pem_config(&dir, RSA_PUBLIC_PEM)]).expect("config");
    for alg in [Algorithm::RS256, Algorithm::PS256, Algorithm::RS512] {
        let id = auth
            .authenticate(&sign_rsa(alg, None, &claims("bob")))
            .await
            .expect("accepted");
        assert_eq!(id.user, "bob");
    }
    let jwks = json!({"keys": [{"kty": "RSA", "kid": "r1", "alg": "RS256", "n": RSA_N, "e": "AQAB"}]});
    let auth = Authenticator::new(vec![jwks_config(&dir, jwks)]).expect("config");
    assert!(
        auth.authenticate(&sign_rsa(Algorithm::RS256, Some("r1"), &claims("bob")))
            .await
            .is_ok()
    );
    // The JWK is bound to RS256: a PS256 token naming it is refused.
    let ps = sign_rsa(Algorithm::PS256, Some("r1"), &claims("bob"));
    assert_eq!(auth.authenticate(&ps).await, Err(AuthError::AlgorithmNotAllowed));
}

#[tokio::test]
async fn eddsa_token_accepted() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = Authenticator::new(vec![pem_config(&dir, &pair.public_key_pem())]).expect("config");
    let token = sign(
        Algorithm::EdDSA,
        None,
        &claims("erin"),
        &EncodingKey::from_ed_der(&pair.serialize_der()),
    );
    assert_eq!(auth.authenticate(&token).await.expect("accepted").user, "erin");
}

#[tokio::test]
async fn time_claims() {
    let key = EcKey::new("k1");
    let (auth, _dir) = ec_auth(&key);
    let at = |changes| key.sign(&with(claims("a"), changes));
    assert_eq!(
        auth.authenticate(&at(json!({"exp": now() - 1}))).await,
        Err(AuthError::Expired)
    );
    assert!(matches!(
        auth.authenticate(&at(json!({"exp": null}))).await,
        Err(AuthError::ClaimRejected(_))
    ));
    assert_eq!(
        auth.authenticate(&at(json!({"nbf": now() + 120}))).await,
        Err(AuthError::NotYetValid)
    );
    assert!(
        auth.authenticate(&at(json!({"nbf": now() + 10}))).await.is_ok(),
        "nbf leeway"
    );
    assert!(
        auth.authenticate(&at(json!({"iat": null}))).await.is_ok(),
        "iat not required"
    );
}

#[tokio::test]
async fn audience_and_issuer_exact() {
    let key = EcKey::new("k1");
    let (auth, _dir) = ec_auth(&key);
    let at = |changes| key.sign(&with(claims("a"), changes));
    assert_eq!(
        auth.authenticate(&at(json!({"aud": "other"}))).await,
        Err(AuthError::WrongAudience)
    );
    assert_eq!(
        auth.authenticate(&at(json!({"aud": null}))).await,
        Err(AuthError::WrongAudience)
    );
    assert_eq!(
        auth.authenticate(&at(json!({"aud": ["x", "y"]}))).await,
        Err(AuthError::WrongAudience)
    );
    assert!(auth.authenticate(&at(json!({"aud": ["x", AUD]}))).await.is_ok());
    assert_eq!(
        auth.authenticate(&at(json!({"iss": "https://other"}))).await,
        Err(AuthError::UnknownIssuer)
    );
    assert_eq!(
        auth.authenticate(&at(json!({"iss": format!("{ISS}/")}))).await,
        Err(AuthError::UnknownIssuer)
    );
    assert_eq!(
        auth.authenticate(&at(json!({"iss": [ISS]}))).await,
        Err(AuthError::UnknownIssuer)
    );
}

#[tokio::test]
async fn algorithm_confusion_refused() {
    let key = EcKey::new("k1");
    let (auth, _dir) = ec_auth(&key);
    let payload = claims("admin");
    // alg none, with an empty and with a non-empty signature.
    let none = json!({"alg": "none", "typ": "JWT"});
    assert_eq!(
        auth.authenticate(&raw_token(&none, &payload, b"")).await,
        Err(AuthError::Malformed)
    );
    assert_eq!(
        auth.authenticate(&raw_token(&none, &payload, b"x")).await,
        Err(AuthError::AlgorithmNotAllowed)
    );
    // HS256 keyed with the public key, with and without kid.
    let hmac = EncodingKey::from_secret(key.public_pem().as_bytes());
    for kid in [Some("k1"), None] {
        let token = sign(Algorithm::HS256, kid, &payload, &hmac);
        assert_eq!(auth.authenticate(&token).await, Err(AuthError::AlgorithmNotAllowed));
    }
    // ES384 header naming a P-256 key; an RSA-signed token naming the EC key.
    let p384 = EcKey::p384("k1");
    assert_eq!(
        auth.authenticate(&p384.sign(&payload)).await,
        Err(AuthError::AlgorithmNotAllowed)
    );
    let rsa = sign_rsa(Algorithm::RS256, Some("k1"), &payload);
    assert_eq!(auth.authenticate(&rsa).await, Err(AuthError::AlgorithmNotAllowed));
    // An algorithm outside the issuer's allow-list.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = jwks_config(&dir, json!({"keys": [key.jwk()]}));
    config.algorithms = vec!["RS256".into()];
    let auth = Authenticator::new(vec![config]).expect("config");
    assert_eq!(
        auth.authenticate(&key.sign(&payload)).await,
        Err(AuthError::AlgorithmNotAllowed)
    );
}

#[tokio::test]
async fn tampered_and_foreign_signatures_refused() {
    let key = EcKey::new("k1");
    let (auth, _dir) = ec_auth(&key);
    let token = key.sign(&claims("alice"));
    let parts: Vec<&str> = token.split('.').collect();
    let forged_payload = raw_token(&json!({}), &claims("admin"), b"");
    let forged_payload = forged_payload.split('.').nth(1).expect("payload");
    let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(auth.authenticate(&tampered).await, Err(AuthError::BadSignature));
    let impostor = EcKey::new("k1");
    assert_eq!(
        auth.authenticate(&impostor.sign(&claims("alice"))).await,
        Err(AuthError::BadSignature)
    );
    assert_eq!(
        auth.authenticate(&impostor.sign_with(None, &claims("alice"))).await,
        Err(AuthError::BadSignature)
    );
    assert_eq!(
        auth.authenticate(&EcKey::new("k2").sign(&claims("alice"))).await,
        Err(AuthError::UnknownKey)
    );
    assert_eq!(
        auth.authenticate(&"a".repeat(17 * 1024)).await,
        Err(AuthError::Malformed)
    );
    assert_eq!(auth.authenticate("").await, Err(AuthError::Missing));
}

#[tokio::test]
async fn key_chosen_by_kid_or_tried_in_turn() {
    let (a, b) = (EcKey::new("a"), EcKey::new("b"));
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = json!({"keys": [a.jwk(), b.jwk(), {"kty": "RSA", "n": RSA_N, "e": "AQAB"}]});
    let auth = Authenticator::new(vec![jwks_config(&dir, jwks)]).expect("config");
    assert!(auth.authenticate(&b.sign(&claims("x"))).await.is_ok());
    assert!(auth.authenticate(&b.sign_with(None, &claims("x"))).await.is_ok());
    assert!(
        auth.authenticate(&sign_rsa(Algorithm::RS256, None, &claims("x")))
            .await
            .is_ok()
    );
    // The kid names a, but b signed it.
    assert_eq!(
        auth.authenticate(&b.sign_with(Some("a"), &claims("x"))).await,
        Err(AuthError::BadSignature)
    );
}

#[tokio::test]
async fn identity_rules_applied() {
    let key = EcKey::new("k1");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = jwks_config(&dir, json!({"keys": [key.jwk()]}));
    config.username_claim = "email".into();
    config.username_prefix = "oidc:".into();
    config.groups_prefix = "oidc:".into();
    let auth = Authenticator::new(vec![config.clone()]).expect("config");
    let at = |changes| key.sign(&with(claims("a"), changes));
    let id = auth
        .authenticate(&at(json!({"email": "a@x", "email_verified": true, "groups": "dev"})))
        .await;
    assert_eq!(
        id.map(|i| (i.user, i.groups)),
        Ok(("oidc:a@x".into(), vec!["oidc:dev".into()]))
    );
    let unverified = at(json!({"email": "a@x", "email_verified": false}));
    assert!(matches!(
        auth.authenticate(&unverified).await,
        Err(AuthError::ClaimRejected(_))
    ));
    let injected = at(json!({"email": "a@x", "groups": ["dev\r\nImpersonate-User: admin"]}));
    assert!(matches!(
        auth.authenticate(&injected).await,
        Err(AuthError::ClaimRejected(_))
    ));
    let nul = at(json!({"email": "a\0@x"}));
    assert!(matches!(
        auth.authenticate(&nul).await,
        Err(AuthError::ClaimRejected(_))
    ));

    config.username_claim = "sub".into();
    config.username_prefix = String::new();
    config.groups_prefix = String::new();
    let auth = Authenticator::new(vec![config.clone()]).expect("config");
    let system_user = key.sign(&claims("system:kube-controller-manager"));
    assert!(matches!(
        auth.authenticate(&system_user).await,
        Err(AuthError::ClaimRejected(_))
    ));
    let system_group = at(json!({"groups": ["dev", "system:masters"]}));
    assert!(matches!(
        auth.authenticate(&system_group).await,
        Err(AuthError::ClaimRejected(_))
    ));
    config.allow_system_names = true;
    let auth = Authenticator::new(vec![config]).expect("config");
    assert_eq!(
        auth.authenticate(&system_group).await.expect("allowed").groups,
        ["dev", "system:masters"]
    );
}

#[tokio::test]
async fn issuer_picks_its_own_keys() {
    let (a, b) = (EcKey::new("a"), EcKey::new("b"));
    let dir = tempfile::tempdir().expect("tempdir");
    let config_a = jwks_config(&dir, json!({"keys": [a.jwk()]}));
    let mut config_a = config_a;
    (config_a.username_prefix, config_a.groups_prefix) = ("a:".into(), "a:".into());
    let mut config_b = IssuerConfig::new("https://b.example", vec![AUD.to_owned()]);
    config_b.jwks_file = Some(write_file(&dir, "b.json", &json!({"keys": [b.jwk()]}).to_string()));
    (config_b.username_prefix, config_b.groups_prefix) = ("b:".into(), "b:".into());
    let auth = Authenticator::new(vec![config_a, config_b]).expect("config");
    let from_b = b.sign(&with(claims("x"), json!({"iss": "https://b.example"})));
    assert!(auth.authenticate(&from_b).await.is_ok());
    // b's key claiming to be issuer a, with a's kid: a's key does not verify it.
    assert_eq!(
        auth.authenticate(&b.sign_with(Some("a"), &claims("x"))).await,
        Err(AuthError::BadSignature)
    );
    assert!(!format!("{auth:?}").contains(&b.jwk()["x"].as_str().expect("x").to_owned()));
}

#[test]
fn two_issuers_that_could_name_the_same_user_or_group_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = EcKey::new("k");
    let a = jwks_config(&dir, json!({"keys": [key.jwk()]}));
    let mut b = a.clone();
    b.issuer = "https://b.example".into();
    let with = |user_a: &str, group_a: &str, user_b: &str, group_b: &str| {
        let (mut a, mut b) = (a.clone(), b.clone());
        (a.username_prefix, a.groups_prefix) = (user_a.into(), group_a.into());
        (b.username_prefix, b.groups_prefix) = (user_b.into(), group_b.into());
        Authenticator::new(vec![a, b])
    };
    // The finding: with empty prefixes b's user `x` is a's user `x`, with a's RBAC bindings.
    let err = with("", "", "", "").unwrap_err().to_string();
    assert!(
        err.contains(&a.issuer) && err.contains("https://b.example") && err.contains("username"),
        "{err}"
    );
    assert!(
        matches!(
            with("", "a:", "b:", "b:"),
            Err(ConfigError::OverlappingNames { what: "username", .. })
        ),
        "an empty prefix overlaps every other"
    );
    assert!(
        matches!(
            with("oidc:", "a:", "oidc:ci:", "b:"),
            Err(ConfigError::OverlappingNames { what: "username", .. })
        ),
        "one prefix extending the other"
    );
    assert!(matches!(
        with("a:", "g:", "b:", "g:"),
        Err(ConfigError::OverlappingNames { what: "groups", .. })
    ));
    assert!(with("a:", "a:", "b:", "b:").is_ok());
    let mut alone = a.clone();
    alone.username_prefix.clear();
    assert!(Authenticator::new(vec![alone]).is_ok(), "one issuer needs no prefix");
}

#[test]
fn construction_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(matches!(Authenticator::new(Vec::new()), Err(ConfigError::NoIssuers)));
    let key = EcKey::new("k");
    let config = jwks_config(&dir, json!({"keys": [key.jwk()]}));
    let twice = Authenticator::new(vec![config.clone(), config.clone()]);
    assert!(matches!(twice, Err(ConfigError::DuplicateIssuer(_))));
    let mut missing = config.clone();
    missing.jwks_file = Some(dir.path().join("absent.json"));
    assert!(matches!(
        Authenticator::new(vec![missing]),
        Err(ConfigError::ReadFile { .. })
    ));
    let bad = pem_config(&dir, &key.pair.serialize_pem());
    assert!(matches!(Authenticator::new(vec![bad]), Err(ConfigError::Keys { .. })));
    let mut hmac = config;
    hmac.algorithms = vec!["HS256".into()];
    assert!(matches!(
        Authenticator::new(vec![hmac]),
        Err(ConfigError::Algorithm { .. })
    ));
}

#[tokio::test]
async fn a_validly_signed_payload_that_is_not_utf8_is_refused() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key = EcKey::new("k1");
    let (auth, _dir) = ec_auth(&key);
    let good = serde_json::to_vec(&claims("alice")).expect("claims");
    let text = String::from_utf8(good).expect("utf8");
    // The subject's bytes replaced by a lone 0xff: a signature over it is still valid.
    let payload = text.replace("\"alice\"", "\"al\u{1}ice\"").into_bytes();
    let at = payload.iter().position(|&b| b == 1).expect("marker");
    let mut payload = payload;
    payload[at] = 0xff;
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}).to_string());
    let body = URL_SAFE_NO_PAD.encode(&payload);
    let message = format!("{header}.{body}");
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_ec_der(&key.pair.serialize_der()),
        Algorithm::ES256,
    )
    .expect("sign");
    let result = auth.authenticate(&format!("{message}.{signature}")).await;
    assert!(
        result.is_err() && result != Err(AuthError::BadSignature),
        "a non-UTF-8 claim was accepted or its valid signature refused: {result:?}"
    );
}

#[tokio::test]
async fn a_verified_token_is_remembered_byte_for_byte_and_never_past_exp() {
    use std::time::Duration;

    use super::clock::ManualClock;
    use super::remote::RefetchPolicy;

    let key = EcKey::new("k1");
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = std::sync::Arc::new(ManualClock::new());
    let config = jwks_config(&dir, json!({"keys": [key.jwk()]}));
    let auth = Authenticator::with_clock(vec![config], clock.clone(), RefetchPolicy::default()).expect("config");
    let token = key.sign(&with(claims("a"), json!({"exp": now() + 20})));
    assert_eq!(auth.authenticate(&token).await.expect("valid").user, "a");
    assert_eq!(auth.remembered(), 1, "remembered once verified");
    assert_eq!(auth.authenticate(&token).await.expect("hit").user, "a");

    // One character of the signature changed: not a hit, and refused.
    let mut tampered = token.clone().into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    assert_eq!(auth.authenticate(&tampered).await, Err(AuthError::BadSignature));
    assert_eq!(auth.remembered(), 1, "a refused token is never remembered");

    // At exp the remembered identity is not used: the full check says Expired.
    clock.advance(Duration::from_secs(20));
    assert_eq!(auth.authenticate(&token).await, Err(AuthError::Expired));
    assert_eq!(auth.remembered(), 0);

    // A long-lived token is re-verified after the cache's TTL, then remembered again.
    let long = key.sign(&claims("b"));
    assert!(auth.authenticate(&long).await.is_ok());
    clock.advance(super::verified::TTL);
    assert!(auth.authenticate(&long).await.is_ok());
    assert_eq!(auth.remembered(), 1);
}
