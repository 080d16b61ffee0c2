use std::collections::BTreeMap;

use super::*;
use crate::auth::{AuthError, Authenticator, Identity};

fn minter(dir: &tempfile::TempDir) -> AssertionMinter {
    let key = SigningKey::load_or_generate(&dir.path().join("assertion.key"), true).unwrap();
    AssertionMinter::new(key, "https://relay.example/assertions".into(), Duration::from_secs(300))
}

fn caller(exp_in: u64) -> Caller {
    let mut extra = BTreeMap::new();
    extra.insert("example.com/tenant".to_owned(), vec!["t1".to_owned()]);
    Caller {
        identity: Identity {
            user: "oidc:alice".into(),
            uid: Some("u-1".into()),
            groups: vec!["oidc:dev".into()],
            extra,
        },
        issuer: "https://idp.example".into(),
        audiences: vec!["hawser".into()],
        expires_at: unix_now() + exp_in,
    }
}

/// An agent's authenticator for `cluster`, trusting `minter`'s key.
fn agent_auth(minter: &AssertionMinter, cluster: &str) -> Authenticator {
    let mut config = IssuerConfig::relay_assertions(minter.issuer(), cluster);
    config.inline_jwks = Some(minter.jwks().to_string());
    Authenticator::new(vec![config]).unwrap()
}

#[tokio::test]
async fn an_assertion_states_the_identity_to_its_cluster_only() {
    let dir = tempfile::tempdir().unwrap();
    let minter = minter(&dir);
    let alice = caller(3600);
    let assertion = minter.assertion(&alice, [1; 32], "prod").unwrap();
    let seen = agent_auth(&minter, "prod").authenticate(&assertion).await.unwrap();
    assert_eq!(seen, alice.identity, "the identity arrives as the relay mapped it");
    assert_eq!(
        agent_auth(&minter, "staging").authenticate(&assertion).await,
        Err(AuthError::WrongAudience),
        "another cluster's agent refuses it"
    );
}

#[tokio::test]
async fn a_relay_never_takes_an_assertion_as_a_caller_token() {
    let dir = tempfile::tempdir().unwrap();
    let minter = minter(&dir);
    let assertion = minter.assertion(&caller(3600), [1; 32], "prod").unwrap();
    let builtin = crate::auth::BuiltinIssuer::load_or_generate(
        &dir.path().join("issuer.key"),
        "https://relay.example".into(),
        "hawser".into(),
        true,
    )
    .unwrap();
    let callers = Authenticator::new(vec![builtin.issuer_config()]).unwrap();
    assert_eq!(callers.authenticate(&assertion).await, Err(AuthError::UnknownIssuer));
}

#[test]
fn assertions_are_reused_per_token_and_cluster_and_never_outlive_the_caller_token() {
    let dir = tempfile::tempdir().unwrap();
    let minter = minter(&dir);
    let alice = caller(3600);
    let first = minter.assertion(&alice, [1; 32], "prod").unwrap();
    assert_eq!(first, minter.assertion(&alice, [1; 32], "prod").unwrap(), "reused");
    assert_ne!(first, minter.assertion(&alice, [1; 32], "staging").unwrap());
    assert_ne!(first, minter.assertion(&alice, [2; 32], "prod").unwrap());
    let short = caller(60);
    let assertion = minter.assertion(&short, [3; 32], "prod").unwrap();
    let payload = assertion.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["exp"], short.expires_at, "bounded by the caller token's exp");
    assert_eq!(claims["aud"], "hawser:cluster:prod");
    assert_eq!(claims["caller_iss"], "https://idp.example");
}

#[tokio::test]
async fn an_assertion_naming_a_system_user_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let minter = minter(&dir);
    let mut root = caller(3600);
    root.identity.groups = vec!["system:masters".into()];
    let assertion = minter.assertion(&root, [4; 32], "prod").unwrap();
    assert!(matches!(
        agent_auth(&minter, "prod").authenticate(&assertion).await,
        Err(AuthError::ClaimRejected(_))
    ));
}
