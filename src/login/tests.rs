use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::id_token::fake as id_token;
use super::store::{Masked, Store, StoredLogin};
use super::*;

mod browser_flow;
mod fake;
mod logout;

fn provider(issuer: &str) -> Provider {
    Provider::new(issuer.to_owned(), "kubectl".into(), None, None).unwrap()
}

fn stored(issuer: &str, token_endpoint: &str, expiry: i64, refresh: Option<&str>) -> StoredLogin {
    StoredLogin {
        issuer: issuer.to_owned(),
        client_id: "kubectl".into(),
        ca_file: None,
        client_secret_file: None,
        token_endpoint: token_endpoint.to_owned(),
        revocation_endpoint: None,
        id_token: Masked::new(id_token(expiry, "alice")),
        refresh_token: refresh.map(Masked::new),
        expiry,
    }
}

#[tokio::test]
async fn a_token_near_expiry_is_refreshed_and_the_old_refresh_token_kept_when_none_comes_back() {
    let now = unix_now();
    let new_id = id_token(now + 3600, "alice");
    let answer = new_id.clone();
    let idp = fake::start(move |_, _| fake::tokens(&answer, None)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    let token_endpoint = format!("{}/token", idp.url);

    // Two minutes left: used as is, the provider is not asked.
    store
        .save(&stored(&idp.url, &token_endpoint, now + 120, Some("r1")))
        .unwrap();
    let login = refresh::fresh(&store, &provider(&idp.url), now).await.unwrap();
    assert_eq!(login.expiry, now + 120);
    assert_eq!(idp.count("/token"), 0);

    // Thirty seconds left: refreshed with the refresh token.
    store
        .save(&stored(&idp.url, &token_endpoint, now + 30, Some("r1")))
        .unwrap();
    let login = refresh::fresh(&store, &provider(&idp.url), now).await.unwrap();
    assert_eq!(login.id_token.expose(), new_id);
    assert_eq!(login.expiry, now + 3600);
    assert_eq!(
        login.refresh_token,
        Some(Masked::new("r1")),
        "no new refresh token: the old one stays"
    );
    let (_, form) = idp.seen.lock().unwrap()[0].clone();
    assert_eq!(form.get("grant_type").map(String::as_str), Some("refresh_token"));
    assert_eq!(form.get("refresh_token").map(String::as_str), Some("r1"));
    assert_eq!(form.get("client_id").map(String::as_str), Some("kubectl"));
    assert_eq!(
        store.load(&idp.url, "kubectl").unwrap().unwrap(),
        login,
        "the store holds the new token"
    );
}

#[tokio::test]
async fn a_rotated_refresh_token_replaces_the_old_one() {
    let now = unix_now();
    let idp = fake::start(move |_, _| fake::tokens(&id_token(now + 3600, "alice"), Some("r2"))).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    store
        .save(&stored(&idp.url, &format!("{}/token", idp.url), now - 10, Some("r1")))
        .unwrap();
    let login = refresh::fresh(&store, &provider(&idp.url), now).await.unwrap();
    assert_eq!(login.refresh_token, Some(Masked::new("r2")));
    assert_eq!(
        store.load(&idp.url, "kubectl").unwrap().unwrap().refresh_token,
        Some(Masked::new("r2"))
    );
}

#[tokio::test]
async fn a_refused_refresh_says_the_login_expired_and_stores_nothing_new() {
    let now = unix_now();
    let idp = fake::start(|_, _| fake::oauth_error(400, "invalid_grant", "token revoked\n\x1b[31mfake line")).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    let before = stored(&idp.url, &format!("{}/token", idp.url), now - 10, Some("r1"));
    store.save(&before).unwrap();
    let err = refresh::fresh(&store, &provider(&idp.url), now).await.unwrap_err();
    let line = err.to_string();
    assert!(matches!(err, LoginError::Expired { .. }), "{line}");
    assert!(
        line.starts_with(&format!(
            "the login to {} has expired (the provider refused the refresh token: invalid_grant: token revoked\\n\\u{{1b}}[31mfake line): run hawser login --issuer {} --client-id kubectl again",
            idp.url, idp.url
        )),
        "{line}"
    );
    assert!(!line.contains('\n') && !line.contains('\x1b'), "escaped: {line}");
    assert_eq!(
        store.load(&idp.url, "kubectl").unwrap().unwrap(),
        before,
        "nothing new stored"
    );

    // No refresh token at all: expired too, without asking the provider.
    let seen = idp.count("/token");
    store
        .save(&stored(&idp.url, &format!("{}/token", idp.url), now - 10, None))
        .unwrap();
    let err = refresh::fresh(&store, &provider(&idp.url), now).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("has expired (the provider gave no refresh token)"),
        "{err}"
    );
    assert_eq!(idp.count("/token"), seen);
}

#[tokio::test]
async fn a_provider_down_or_without_an_id_token_cannot_refresh() {
    let now = unix_now();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    let down = fake::start(|_, _| (503, "<html>down</html>".into())).await;
    store
        .save(&stored(&down.url, &format!("{}/token", down.url), now - 10, Some("r1")))
        .unwrap();
    let err = refresh::fresh(&store, &provider(&down.url), now).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot refresh the login to {}: ", down.url)),
        "{err}"
    );
    assert!(err.to_string().contains("503"), "{err}");

    let plain = fake::start(|_, _| (200, r#"{"access_token":"at","token_type":"Bearer"}"#.into())).await;
    store
        .save(&stored(
            &plain.url,
            &format!("{}/token", plain.url),
            now - 10,
            Some("r1"),
        ))
        .unwrap();
    let err = refresh::fresh(&store, &provider(&plain.url), now).await.unwrap_err();
    assert!(err.to_string().contains("no id_token"), "{err}");

    let garbage = fake::start(|_, _| (200, "not json".repeat(1000))).await;
    store
        .save(&stored(
            &garbage.url,
            &format!("{}/token", garbage.url),
            now - 10,
            Some("r1"),
        ))
        .unwrap();
    let err = refresh::fresh(&store, &provider(&garbage.url), now).await.unwrap_err();
    assert!(err.to_string().contains("not OAuth2 JSON"), "{err}");
    assert!(err.to_string().len() < 1000, "bounded: {err}");

    let missing = provider("https://idp.example.com");
    let err = refresh::fresh(&store, &missing, now).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "not logged in to https://idp.example.com (client kubectl): run hawser login --issuer https://idp.example.com --client-id kubectl"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refreshes_spend_a_rotating_refresh_token_once() {
    let now = unix_now();
    // Rotates on every use and refuses a spent token, as a strict provider does.
    let current = Arc::new(Mutex::new(1u32));
    let idp = fake::start(move |_, form| {
        let mut current = current.lock().unwrap();
        if form.get("refresh_token") != Some(&format!("r{current}")) {
            return fake::oauth_error(400, "invalid_grant", "refresh token already used");
        }
        *current += 1;
        fake::tokens(&id_token(now + 3600, "alice"), Some(&format!("r{current}")))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    store
        .save(&stored(&idp.url, &format!("{}/token", idp.url), now - 10, Some("r1")))
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (store, provider) = (Store::at(dir.path()), provider(&idp.url));
        tasks.spawn(async move { refresh::fresh(&store, &provider, now).await });
    }
    while let Some(done) = tasks.join_next().await {
        let login = done.unwrap().unwrap();
        assert_eq!(login.refresh_token, Some(Masked::new("r2")));
    }
    assert_eq!(idp.count("/token"), 1, "one refresh for eight callers");
}

#[tokio::test]
async fn the_proxy_source_caches_until_near_expiry() {
    let now = unix_now();
    let idp = fake::start(move |_, _| fake::tokens(&id_token(now + 3600, "alice"), None)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    store
        .save(&stored(&idp.url, &format!("{}/token", idp.url), now + 30, Some("r1")))
        .unwrap();
    let source = refresh::LoginToken::new(Store::at(dir.path()), provider(&idp.url));
    let first = source.get().await.unwrap();
    assert_eq!(first.expose(), id_token(now + 3600, "alice"));
    assert_eq!(source.get().await.unwrap(), first);
    assert_eq!(idp.count("/token"), 1);
}

#[test]
fn logins_are_0600_in_0700_directories_and_secrets_never_show_in_debug() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path().join("hawser"));
    let login = stored(
        "https://idp.example.com",
        "https://idp.example.com/token",
        1,
        Some("refresh-secret"),
    );
    store.save(&login).unwrap();
    let path = store.path("https://idp.example.com", "kubectl");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&dir.path().join("hawser")), 0o700);
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(name.len() == 64 + 5 && name.ends_with(".json"), "{name}");
    assert_ne!(path, store.path("https://idp.example.com", "other"));
    // Only the login itself in the directory: the temp file was renamed.
    assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    let debug = format!("{login:?}");
    assert!(
        !debug.contains("refresh-secret") && !debug.contains(login.id_token.expose()),
        "{debug}"
    );
    assert!(store.remove("https://idp.example.com", "kubectl").unwrap());
    assert!(!store.remove("https://idp.example.com", "kubectl").unwrap());
}

#[tokio::test]
async fn discovery_refuses_an_issuer_that_is_not_the_one_asked_for() {
    let doc = |issuer: &str| {
        serde_json::json!({"issuer": issuer, "token_endpoint": "https://idp.example.com/token",
            "authorization_endpoint": "https://idp.example.com/auth"})
        .to_string()
    };
    let ok = discovery::parse("https://idp.example.com", doc("https://idp.example.com").as_bytes()).unwrap();
    assert_eq!(ok.token_endpoint, "https://idp.example.com/token");
    let err = discovery::parse("https://idp.example.com", doc("https://idp.example.com/").as_bytes()).unwrap_err();
    assert!(
        err.to_string().contains("says its issuer is https://idp.example.com/"),
        "{err}"
    );
    assert!(discovery::parse("https://idp.example.com", b"[]").is_err());
    let plain = r#"{"issuer": "https://idp.example.com", "token_endpoint": "http://idp.example.com/token"}"#;
    assert!(
        discovery::parse("https://idp.example.com", plain.as_bytes()).is_err(),
        "plain http endpoint"
    );

    // Fetched: the document names another issuer.
    let idp = fake::start(move |_, _| (200, doc("https://evil.example.com"))).await;
    let http = http::Http::new(None).unwrap();
    let err = discovery::discover(&http, &idp.url).await.unwrap_err();
    assert!(err.to_string().contains("evil.example.com"), "{err}");
    assert_eq!(idp.seen.lock().unwrap()[0].0, "/.well-known/openid-configuration");
}

#[test]
fn provider_urls_are_https_or_loopback_http() {
    for good in [
        "https://idp.example.com",
        "http://127.0.0.1:5556/dex",
        "http://[::1]:80",
        "http://localhost:1",
    ] {
        assert!(http::check_url(good, "--issuer").is_ok(), "{good}");
    }
    for bad in [
        "http://idp.example.com",
        "ftp://idp.example.com",
        "idp.example.com",
        "https://",
    ] {
        assert!(http::check_url(bad, "--issuer").is_err(), "{bad}");
    }
}

#[tokio::test]
async fn the_callback_takes_only_this_logins_state() {
    let req = |uri: &str| ::http::Request::get(uri).body(()).unwrap();
    let (status, _, outcome) = browser::callback(&req("/callback?state=other&code=c1"), "s1");
    assert_eq!(status, 400);
    assert!(
        outcome.is_none(),
        "a wrong state neither ends the login nor gives a code"
    );
    let (status, _, outcome) = browser::callback(&req("/callback?code=c1"), "s1");
    assert_eq!(status, 400);
    assert!(outcome.is_none());
    let (status, _, outcome) = browser::callback(&req("/callback?state=s1&code=c1"), "s1");
    assert_eq!(status, 200);
    assert_eq!(outcome.unwrap().unwrap(), "c1");
    let (_, page, outcome) = browser::callback(
        &req("/callback?state=s1&error=access_denied&error_description=%3Cscript%3Ex%3C%2Fscript%3E"),
        "s1",
    );
    assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"), "{page}");
    let err = outcome.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("refused the login: access_denied: <script>x</script>"),
        "{err}"
    );

    // Over HTTP: a stray answer is refused, then this login's ends the wait.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/callback", listener.local_addr().unwrap());
    let waiting = tokio::spawn(async move { browser::wait_for_code(listener, "s1").await });
    let http = http::Http::new(None).unwrap();
    let stray = http.get(&format!("{url}?state=evil&code=c0")).await.unwrap();
    assert_eq!(stray.status(), 400);
    let ours = http.get(&format!("{url}?state=s1&code=c1")).await.unwrap();
    assert_eq!(ours.status(), 200);
    assert_eq!(waiting.await.unwrap().unwrap(), "c1");
}

/// A fake provider for the device grant whose token endpoint answers `polls` in turn.
async fn device_provider(polls: Vec<(u16, String)>) -> (fake::Fake, discovery::Discovery) {
    let polls = Mutex::new(polls.into_iter());
    let idp = fake::start(move |path, _| match path {
        "/device" => (
            200,
            serde_json::json!({"device_code": "dc", "user_code": "ABCD-EFGH",
                "verification_uri": "https://idp.example.com/device", "interval": 1, "expires_in": 600})
            .to_string(),
        ),
        _ => polls
            .lock()
            .unwrap()
            .next()
            .unwrap_or_else(|| fake::oauth_error(400, "expired_token", "")),
    })
    .await;
    let discovery = discovery::Discovery {
        issuer: idp.url.clone(),
        authorization_endpoint: None,
        token_endpoint: format!("{}/token", idp.url),
        device_authorization_endpoint: Some(format!("{}/device", idp.url)),
        revocation_endpoint: None,
    };
    (idp, discovery)
}

#[tokio::test]
async fn the_device_flow_polls_through_pending_and_slow_down_to_a_token() {
    let now = unix_now();
    let (idp, discovery) = device_provider(vec![
        fake::oauth_error(400, "authorization_pending", ""),
        fake::oauth_error(400, "slow_down", ""),
        fake::tokens(&id_token(now + 3600, "alice"), Some("r1")),
    ])
    .await;
    let slept = Arc::new(Mutex::new(Vec::new()));
    let record = slept.clone();
    let sleep = move |d: Duration| {
        record.lock().unwrap().push(d);
        std::future::ready(())
    };
    let http = http::Http::new(None).unwrap();
    let scopes = vec!["openid".to_owned()];
    let response = device::authorize(
        &http,
        &provider(&idp.url),
        &discovery,
        &scopes,
        Duration::from_secs(60),
        sleep,
    )
    .await
    .unwrap();
    let (_, claims) = oauth::id_token_of(&response).unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(oauth::refresh_token_of(&response).as_deref(), Some("r1"));
    // The interval the provider gave, then five seconds more after slow_down (RFC 8628 §3.5).
    assert_eq!(*slept.lock().unwrap(), [Duration::from_secs(1), Duration::from_secs(6)]);
    let seen = idp.seen.lock().unwrap();
    assert_eq!(seen[0].1.get("scope").map(String::as_str), Some("openid"));
    assert_eq!(
        seen[1].1.get("grant_type").map(String::as_str),
        Some("urn:ietf:params:oauth:grant-type:device_code")
    );
}

#[tokio::test]
async fn the_device_flow_ends_on_access_denied_and_on_expiry() {
    let http = http::Http::new(None).unwrap();
    for (error, expected) in [
        ("access_denied", "the login was refused at the provider (access_denied)"),
        (
            "expired_token",
            "the code was not approved in time (60s): run hawser login --device again",
        ),
    ] {
        let (idp, discovery) = device_provider(vec![fake::oauth_error(400, error, "no")]).await;
        let sleep = |_| std::future::ready(());
        let err = device::authorize(
            &http,
            &provider(&idp.url),
            &discovery,
            &[],
            Duration::from_secs(60),
            sleep,
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), expected);
    }
}

#[test]
fn provider_text_is_escaped_and_bounded() {
    assert_eq!(provider_text("a\nb\x1b"), "a\\nb\\u{1b}");
    let long = provider_text(&"x".repeat(10_000));
    assert!(long.chars().count() <= 301, "{}", long.len());
    assert_eq!(rfc3339(1_800_000_000), "2027-01-15T08:00:00Z");
}
