use http::HeaderMap;
use http::header::{CONNECTION, UPGRADE};

use super::*;
use crate::headers::{RebaseError, rebase, strip_hop_by_hop, upgrade_protocol};
use http::Uri;
use http::header::{HeaderName, HeaderValue};

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

#[test]
fn keeps_a_single_upgrade() {
    let mut h = headers(&[
        ("Connection", "keep-alive, Upgrade"),
        ("Upgrade", "websocket"),
        ("Keep-Alive", "5"),
    ]);
    strip_hop_by_hop(&mut h);
    assert_eq!(h.get(CONNECTION).unwrap(), "Upgrade");
    assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
    assert!(h.get("keep-alive").is_none());
}

#[test]
fn removes_headers_named_in_connection() {
    let mut h = headers(&[
        ("Connection", "X-Secret, close"),
        ("X-Secret", "1"),
        ("Accept", "a"),
        ("TE", "trailers"),
    ]);
    strip_hop_by_hop(&mut h);
    assert!(h.get("x-secret").is_none());
    assert!(h.get(CONNECTION).is_none());
    assert!(h.get("te").is_none());
    assert_eq!(h.get("accept").unwrap(), "a");
}

#[test]
fn upgrade_needs_connection_token_and_exactly_one_protocol() {
    assert!(upgrade_protocol(&headers(&[("Upgrade", "websocket")])).is_none());
    assert!(
        upgrade_protocol(&headers(&[
            ("Connection", "Upgrade"),
            ("Upgrade", "a"),
            ("Upgrade", "b")
        ]))
        .is_none()
    );
    assert_eq!(
        upgrade_protocol(&headers(&[("Connection", "upgrade"), ("Upgrade", "SPDY/3.1")])).unwrap(),
        "SPDY/3.1"
    );
}

#[test]
fn watches_follows_and_upgrades_are_long_running() {
    let req = |uri: &str| Request::builder().uri(uri).body(()).unwrap();
    assert!(is_long_running(&req("/api/v1/pods?watch=true")));
    assert!(is_long_running(&req(
        "/api/v1/namespaces/a/pods/b/log?container=c&follow=true"
    )));
    assert!(!is_long_running(&req("/api/v1/pods?limit=500")));
    assert!(!is_long_running(&req("/api/v1/pods")));
    assert!(is_long_running(&req("/api/v1/watch/namespaces/a/pods")));
    assert!(is_long_running(&req("/api/v1/pods?watch=True")));
    assert!(!is_long_running(&req("/api/v1/pods?watch=false&x=watch")));
    assert!(
        is_long_running(&req("/api/v1/pods?w%61tch=1")),
        "decoded as the apiserver does"
    );
    assert!(is_long_running(&req("/api/v1/namespaces/a/pods/b/log?follow=yes")));
    assert!(is_long_running(&req("/api/v1/w%61tch/pods")));
    let exec = Request::builder()
        .uri("/x")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .body(())
        .unwrap();
    assert!(is_long_running(&exec));
}

/// An upstream HTTP/1.1 server on one end of an in-memory pipe, a hyper
/// client on the other, and `exchange` in between.
async fn through_exchange(
    upstream: impl Fn(Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
    req: Request<Body>,
) -> Response<Body> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let upstream = std::sync::Arc::new(upstream);
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| {
            let upstream = upstream.clone();
            async move { Ok::<_, std::convert::Infallible>(upstream(req)) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service)
            .with_upgrades()
            .await;
    });
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    exchange(req, None, &tokio_util::task::TaskTracker::new(), |req| {
        sender.send_request(req)
    })
    .await
    .unwrap()
}

fn upgrade_request() -> Request<Body> {
    Request::builder()
        .uri("/exec")
        .header("host", "x")
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .body(empty())
        .unwrap()
}

#[tokio::test]
async fn a_switch_keeps_the_upgrade_headers() {
    let resp = through_exchange(
        |_| {
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "Upgrade")
                .header("upgrade", "SPDY/3.1")
                .body(empty())
                .unwrap()
        },
        upgrade_request(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        resp.headers()
            .get(CONNECTION)
            .map(|v| v.to_str().unwrap().to_lowercase())
            .as_deref(),
        Some("upgrade")
    );
    assert_eq!(resp.headers().get(UPGRADE).unwrap(), "SPDY/3.1");
}

#[tokio::test]
async fn an_upstream_redirect_is_passed_back_not_followed() {
    let resp = through_exchange(
        |_| {
            Response::builder()
                .status(StatusCode::FOUND)
                .header("location", "https://elsewhere.example/steal")
                .body(empty())
                .unwrap()
        },
        Request::builder()
            .uri("/api")
            .header("host", "x")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(
        resp.headers().get("location").unwrap(),
        "https://elsewhere.example/steal"
    );
}

#[tokio::test]
async fn upgraded_bytes_are_counted_as_read_so_an_error_keeps_them() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let config = crate::audit::AuditConfig {
        output: path.display().to_string(),
    };
    let log = crate::audit::AuditLog::open(&config, "relay", "r").unwrap();
    let audit = log.begin("id", &http::Method::GET, &"/exec".parse().unwrap(), &HeaderMap::new());
    let (mut peer, io) = tokio::io::duplex(1024);
    let mut caller = Tally::new(io, Some(audit.clone()), true);
    let mut upstream_side = Tally::new(tokio::io::empty(), Some(audit), false);
    peer.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(caller.read(&mut buf).await.unwrap(), 5);
    // The peer vanishes mid-stream: whatever was read stays counted.
    drop(peer);
    assert_eq!(upstream_side.read(&mut buf).await.unwrap(), 0);
    drop((caller, upstream_side));
    log.flush();
    let line: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
    assert_eq!(line["bytes_in"], 5);
    assert_eq!(line["bytes_out"], 0);
}

mod smuggling;

#[test]
fn rebase_keeps_the_base_and_refuses_climbing_out_of_it() {
    let base: Uri = "https://relay.example:8443/prefix/clusters/dev".parse().unwrap();
    let joined = rebase(&base, &"/api/v1/pods?watch=1&labelSelector=a%3Db".parse().unwrap()).unwrap();
    assert_eq!(
        joined,
        "https://relay.example:8443/prefix/clusters/dev/api/v1/pods?watch=1&labelSelector=a%3Db"
    );
    let root: Uri = "https://apiserver:6443/".parse().unwrap();
    assert_eq!(
        rebase(&root, &"/version".parse().unwrap()).unwrap(),
        "https://apiserver:6443/version"
    );
    // Never another host, never out of the prefix (another cluster, another backend).
    for climbing in ["/../prod/api", "/api/./v1", "/%2e%2e/prod", "/%2E./prod", "/api%2Fv1"] {
        assert_eq!(
            rebase(&base, &climbing.parse().unwrap()),
            Err(RebaseError::DotSegment),
            "{climbing}"
        );
    }
    let elsewhere: Uri = "https://elsewhere.example/api".parse().unwrap();
    assert_eq!(
        rebase(&base, &elsewhere).unwrap(),
        "https://relay.example:8443/prefix/clusters/dev/api",
        "only the path and query are taken"
    );
    assert!(matches!(
        rebase(&base, &"*".parse().unwrap()),
        Err(RebaseError::NotAPath(_))
    ));
}
