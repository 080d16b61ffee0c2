//! The browser flow against a fake provider, the test playing the browser.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use sha2::{Digest, Sha256};

use super::super::browser::{self, BrowserOptions};
use super::super::{discovery::Discovery, http::Http, id_token, oauth, unix_now};
use super::{fake, provider};

/// Runs the flow; the ID token carries `nonce`, or the one the login sent when `None`.
/// Returns the outcome, the fake and the authorization URL's query.
async fn run(
    nonce: Option<&str>,
) -> (
    Result<oauth::IdTokenResponse, super::LoginError>,
    fake::Fake,
    HashMap<String, String>,
) {
    let now = unix_now();
    let echoed = Arc::new(Mutex::new(nonce.map(str::to_owned)));
    let answer = echoed.clone();
    let idp = fake::start(move |_, _| {
        let claims = serde_json::json!({"exp": now + 3600, "sub": "alice", "nonce": answer.lock().unwrap().clone()});
        fake::tokens(&id_token::fake_with(&claims), Some("r1"))
    })
    .await;
    let discovery = Discovery {
        issuer: idp.url.clone(),
        authorization_endpoint: Some(format!("{}/auth", idp.url)),
        token_endpoint: format!("{}/token", idp.url),
        device_authorization_endpoint: None,
        revocation_endpoint: None,
    };
    let provider = provider(&idp.url);
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let login = tokio::spawn(async move {
        let options = BrowserOptions {
            callback_port: 0,
            open_browser: false,
        };
        let http = Http::new(None).unwrap();
        let scopes = vec!["openid".to_owned(), "offline_access".to_owned()];
        browser::authorize(&http, &provider, &discovery, &scopes, &options, |url| {
            tx.send(url.to_owned()).unwrap()
        })
        .await
    });
    let url = oauth2::url::Url::parse(&rx.await.unwrap()).unwrap();
    let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
    echoed.lock().unwrap().get_or_insert_with(|| query["nonce"].clone());
    // The browser comes back from the provider with a code.
    let http = Http::new(None).unwrap();
    let callback = format!("{}?code=c1&state={}", query["redirect_uri"], query["state"]);
    assert_eq!(http.get(&callback).await.unwrap().status(), 200);
    (login.await.unwrap(), idp, query)
}

#[tokio::test]
async fn the_browser_flow_sends_pkce_s256_and_exchanges_the_callbacks_code() {
    let (outcome, idp, query) = run(None).await;
    let response = outcome.unwrap();
    let (_, claims) = oauth::id_token_of(&response).unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["client_id"], "kubectl");
    assert_eq!(query["scope"], "openid offline_access");
    assert_eq!(query["code_challenge_method"], "S256");
    assert!(query["redirect_uri"].starts_with("http://127.0.0.1:"), "{query:?}");
    assert!(query["redirect_uri"].ends_with("/callback"), "{query:?}");
    assert!(query["state"].len() >= 16 && query["nonce"].len() >= 16, "{query:?}");
    let (path, form) = idp.seen.lock().unwrap()[0].clone();
    assert_eq!(path, "/token");
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "c1");
    assert_eq!(form["redirect_uri"], query["redirect_uri"]);
    let challenge =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(form["code_verifier"].as_bytes()));
    assert_eq!(
        challenge, query["code_challenge"],
        "the verifier answers the S256 challenge"
    );
}

#[tokio::test]
async fn an_id_token_with_another_logins_nonce_is_refused() {
    let (outcome, _, _) = run(Some("someone-elses")).await;
    let err = outcome.unwrap_err().to_string();
    assert_eq!(err, "the ID token's nonce is not this login's");
}
