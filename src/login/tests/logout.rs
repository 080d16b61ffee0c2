//! `hawser logout`: revocation is attempted, its failure is a warning, the login goes anyway.

use super::super::logout;
use super::super::store::{Masked, Store};
use super::{fake, stored};

#[tokio::test]
async fn logout_revokes_the_refresh_token_and_forgets_the_login_even_when_revocation_fails() {
    let dir = tempfile::tempdir().unwrap();
    // The oauth2 crate revokes over https only, loopback or not.
    let idp = fake::start_tls(|_, _| (200, String::new()), dir.path()).await;
    let down = fake::start(|_, _| (503, String::new())).await;
    let store = Store::at(dir.path());
    let mut revocable = stored(&idp.url, &format!("{}/token", idp.url), 1, Some("r1"));
    revocable.ca_file = Some(dir.path().join("cert.pem"));
    revocable.revocation_endpoint = Some(format!("{}/revoke", idp.url));
    store.save(&revocable).unwrap();
    let mut failing = stored(&down.url, &format!("{}/token", down.url), 1, Some("r2"));
    failing.revocation_endpoint = Some(format!("{}/revoke", down.url));
    store.save(&failing).unwrap();
    let mut plain = stored("https://idp.example.com", "https://idp.example.com/token", 1, None);
    plain.client_id = "other".into();
    store.save(&plain).unwrap();

    let done = logout::one(&store, &idp.url, "kubectl").await.unwrap().unwrap();
    assert_eq!(
        (done.issuer.as_str(), done.warning.as_deref()),
        (idp.url.as_str(), None)
    );
    let (path, form) = idp.seen.lock().unwrap()[0].clone();
    assert_eq!(path, "/revoke");
    assert_eq!(form.get("token").map(String::as_str), Some("r1"));
    assert_eq!(form.get("token_type_hint").map(String::as_str), Some("refresh_token"));
    assert!(store.load(&idp.url, "kubectl").unwrap().is_none());
    assert!(
        logout::one(&store, &idp.url, "kubectl").await.unwrap().is_none(),
        "already gone"
    );

    let mut done = logout::all(&store).await.unwrap();
    done.sort_by(|a, b| a.issuer.cmp(&b.issuer));
    assert_eq!(done.len(), 2);
    let warned = done.iter().find(|d| d.issuer == down.url).unwrap();
    let warning = warned.warning.as_deref().unwrap();
    assert!(warning.starts_with("the refresh token was not revoked at"), "{warning}");
    assert!(
        done.iter()
            .any(|d| d.issuer == "https://idp.example.com" && d.warning.is_none())
    );
    assert!(store.all().unwrap().is_empty(), "every login forgotten");
    assert_eq!(failing.refresh_token, Some(Masked::new("r2")));
}
