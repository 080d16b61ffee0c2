//! Authenticator tests against a JWKS URL served on 127.0.0.1 by a tiny HTTP/1.1 server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::clock::ManualClock;
use super::remote::RefetchPolicy;
use super::test_support::*;
use super::*;

/// Serves one JWKS document (replaceable) and counts requests.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(jwks: Value) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/keys", listener.local_addr().expect("addr"));
        let body = Arc::new(Mutex::new(jwks.to_string()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (Arc::clone(&body), Arc::clone(&hits));
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (body, hits) = (Arc::clone(&b), Arc::clone(&h));
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.ends_with(b"\r\n\r\n") && request.len() < 16 * 1024 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let body = body.lock().expect("body").clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { url, body, hits, task }
    }

    fn set(&self, jwks: Value) {
        *self.body.lock().expect("body") = jwks.to_string();
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn url_config(url: &str) -> IssuerConfig {
    let mut config = IssuerConfig::new(ISS, vec![AUD.to_owned()]);
    config.jwks_url = Some(url.to_owned());
    config
}

fn authenticator(url: &str, clock: Arc<ManualClock>) -> Arc<Authenticator> {
    Arc::new(Authenticator::with_clock(vec![url_config(url)], clock, RefetchPolicy::default()).expect("config"))
}

#[tokio::test]
async fn fetches_once_and_caches() {
    let key = EcKey::new("k1");
    let server = JwksServer::start(json!({"keys": [key.jwk()]})).await;
    let auth = authenticator(&server.url, Arc::new(ManualClock::new()));
    for _ in 0..5 {
        assert_eq!(
            auth.authenticate(&key.sign(&claims("alice")))
                .await
                .expect("accepted")
                .user,
            "alice"
        );
    }
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn random_kid_flood_is_rate_limited() {
    let key = EcKey::new("k1");
    let server = JwksServer::start(json!({"keys": [key.jwk()]})).await;
    let auth = authenticator(&server.url, Arc::new(ManualClock::new()));
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (auth, token) = (
            Arc::clone(&auth),
            key.sign_with(Some(&format!("random-{i}")), &claims("x")),
        );
        flood.spawn(async move { auth.authenticate(&token).await });
    }
    while let Some(result) = flood.join_next().await {
        assert_eq!(result.expect("task"), Err(AuthError::UnknownKey));
    }
    assert!((1..=2).contains(&server.hits()), "fetches: {}", server.hits());
    let before = server.hits();
    assert!(
        auth.authenticate(&key.sign(&claims("x"))).await.is_ok(),
        "known kid still works"
    );
    assert_eq!(server.hits(), before);
}

#[tokio::test]
async fn rotated_key_picked_up_after_rate_limit() {
    let (old, new) = (EcKey::new("old"), EcKey::new("new"));
    let server = JwksServer::start(json!({"keys": [old.jwk()]})).await;
    let clock = Arc::new(ManualClock::new());
    let auth = authenticator(&server.url, Arc::clone(&clock));
    assert!(auth.authenticate(&old.sign(&claims("x"))).await.is_ok());
    assert_eq!(server.hits(), 1);

    server.set(json!({"keys": [old.jwk(), new.jwk()]}));
    clock.advance(Duration::from_secs(5));
    // Within 10 s of the last fetch: no refetch, the new kid is still unknown.
    assert_eq!(
        auth.authenticate(&new.sign(&claims("x"))).await,
        Err(AuthError::UnknownKey)
    );
    assert_eq!(server.hits(), 1);

    clock.advance(Duration::from_secs(6));
    assert_eq!(
        auth.authenticate(&new.sign(&claims("x")))
            .await
            .expect("rotated in")
            .user,
        "x"
    );
    assert_eq!(server.hits(), 2);
    // A rotated key without kid is found by the refetch as well.
    let newest = EcKey::new("newest");
    server.set(json!({"keys": [newest.jwk()]}));
    clock.advance(Duration::from_secs(11));
    assert!(auth.authenticate(&newest.sign_with(None, &claims("x"))).await.is_ok());
    assert_eq!(server.hits(), 3);
    // The old key was removed by the rotation.
    assert_eq!(
        auth.authenticate(&old.sign(&claims("x"))).await,
        Err(AuthError::UnknownKey)
    );
}

#[tokio::test]
async fn unreachable_provider_fails_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/keys", listener.local_addr().expect("addr"));
    drop(listener);
    let clock = Arc::new(ManualClock::new());
    let auth = authenticator(&url, Arc::clone(&clock));
    let key = EcKey::new("k1");
    let result = auth.authenticate(&key.sign(&claims("x"))).await;
    assert!(matches!(result, Err(AuthError::ProviderUnavailable(_))), "{result:?}");
    assert_eq!(
        result.expect_err("refused").status(),
        http::StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn silent_provider_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/keys", listener.local_addr().expect("addr"));
    // Accept connections and never answer.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let policy = RefetchPolicy {
        timeout: Duration::from_millis(200),
        ..RefetchPolicy::default()
    };
    let auth = Authenticator::with_clock(vec![url_config(&url)], Arc::new(ManualClock::new()), policy).expect("config");
    let started = std::time::Instant::now();
    let result = auth.authenticate(&EcKey::new("k1").sign(&claims("x"))).await;
    assert!(
        matches!(&result, Err(AuthError::ProviderUnavailable(m)) if m.contains("timed out")),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    holder.abort();
}

#[tokio::test]
async fn stopped_server_keeps_cached_keys_only() {
    let key = EcKey::new("k1");
    let server = JwksServer::start(json!({"keys": [key.jwk()]})).await;
    let clock = Arc::new(ManualClock::new());
    let auth = authenticator(&server.url, Arc::clone(&clock));
    assert!(auth.authenticate(&key.sign(&claims("x"))).await.is_ok());
    drop(server);
    tokio::task::yield_now().await;
    clock.advance(Duration::from_secs(11));
    assert!(
        auth.authenticate(&key.sign(&claims("x"))).await.is_ok(),
        "cached key still verifies"
    );
    let unknown = EcKey::new("k2").sign(&claims("x"));
    assert!(matches!(
        auth.authenticate(&unknown).await,
        Err(AuthError::ProviderUnavailable(_))
    ));
}

#[tokio::test]
async fn oversized_jwks_refused() {
    let key = EcKey::new("k1");
    let padding = "x".repeat(1024 * 1024);
    let server = JwksServer::start(json!({"keys": [key.jwk()], "padding": padding})).await;
    let auth = authenticator(&server.url, Arc::new(ManualClock::new()));
    let result = auth.authenticate(&key.sign(&claims("x"))).await;
    assert!(
        matches!(&result, Err(AuthError::ProviderUnavailable(m)) if m.contains("reading JWKS")),
        "{result:?}"
    );
    // Just under the limit is fine.
    let small = JwksServer::start(json!({"keys": [key.jwk()], "padding": "x".repeat(1000 * 1024)})).await;
    let auth = authenticator(&small.url, Arc::new(ManualClock::new()));
    assert!(auth.authenticate(&key.sign(&claims("x"))).await.is_ok());
}
