//! The relay's side of an exchange, in process: memory streams, and a scripted agent side that
//! reads the head and answers as a test says. Milliseconds each, no sockets, no certificates.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};

use super::*;
use crate::audit::{AuditConfig, AuditLog};
use crate::transport::memory::{self, MemRecv, MemSend};
use crate::transport::next_chunk;

fn audit() -> Audit {
    let log = AuditLog::open(&AuditConfig { output: "none".into() }, "relay", "relay-test").unwrap();
    log.begin("r-1", &Method::GET, &"/".parse().unwrap(), &HeaderMap::new())
}

fn sent(target: &str) -> Sent<'static> {
    Sent {
        cluster: "dev",
        target: target.parse().unwrap(),
        request_id: "relay-test-1".into(),
        sampled: Sampled::No(None),
        credential: Credential::Assertion("a.b.c".into()),
        tasks: &TASKS,
        via: None,
        drain: &DRAIN,
        hop_end: None,
    }
}

static DRAIN: std::sync::LazyLock<tokio_util::sync::CancellationToken> =
    std::sync::LazyLock::new(tokio_util::sync::CancellationToken::new);

static TASKS: std::sync::LazyLock<tokio_util::task::TaskTracker> =
    std::sync::LazyLock::new(tokio_util::task::TaskTracker::new);

/// The agent's half of a stream: what the relay sent, and the halves to answer on.
struct AgentSide {
    head: RequestHead,
    body: Vec<u8>,
    send: MemSend,
}

/// Reads the request head and (if the head says so) the body to its end.
async fn agent_reads(send: MemSend, mut recv: MemRecv) -> AgentSide {
    let (payload, first) = wire::read_head(&mut recv, wire::MAX_HEAD).await.unwrap();
    let head = RequestHead::decode(&payload).unwrap();
    let mut body = first.to_vec();
    if head.body {
        while let Some(chunk) = next_chunk(&mut recv).await.unwrap() {
            body.extend_from_slice(&chunk);
        }
    }
    AgentSide { head, body, send }
}

async fn answer(send: &mut MemSend, status: u16, headers: &[(&str, &str)], body: Option<&'static [u8]>) {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let head = ResponseHead {
        status: StatusCode::from_u16(status).unwrap(),
        headers: map,
        body: body.is_some(),
    };
    write_chunk(send, head.encode(wire::MAX_HEAD).unwrap()).await.unwrap();
    if let Some(body) = body {
        write_chunk(send, Bytes::from_static(body)).await.unwrap();
    }
}

fn request(method: Method, body: &'static [u8], headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::from_static(body)));
    *req.method_mut() = method;
    *req.uri_mut() = "/clusters/dev/api/v1/namespaces/default/configmaps".parse().unwrap();
    for (name, value) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    req
}

#[tokio::test]
async fn a_request_and_its_answer_cross_and_the_callers_token_does_not() {
    let ((send, recv), (agent_send, agent_recv)) = memory::bidi(16);
    let agent = tokio::spawn(async move {
        let mut side = agent_reads(agent_send, agent_recv).await;
        answer(&mut side.send, 201, &[("content-length", "2")], Some(b"ok")).await;
        side.send.end();
        (side.head, side.body)
    });
    let req = request(
        Method::POST,
        b"{\"kind\":\"ConfigMap\"}",
        &[
            ("authorization", "Bearer caller-token"),
            ("host", "relay.example"),
            ("connection", "x-secret"),
            ("x-secret", "hop"),
            ("content-type", "application/json"),
        ],
    );
    let audit = audit();
    let (resp, delivery) = exchange(send, recv, req, sent("/api/v1/namespaces/default/configmaps"), &audit)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(delivery, Delivery::Bounded);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    let (head, body) = agent.await.unwrap();
    assert_eq!(head.method, Method::POST);
    assert_eq!(head.target, "/api/v1/namespaces/default/configmaps");
    assert_eq!(head.credential, Credential::Assertion("a.b.c".into()));
    assert_eq!(body, b"{\"kind\":\"ConfigMap\"}");
    for gone in ["authorization", "host", "connection", "x-secret"] {
        assert!(!head.headers.contains_key(gone), "{gone} reached the agent");
    }
    assert_eq!(head.headers["content-type"], "application/json");
}

#[tokio::test]
async fn a_reset_before_the_answer_is_a_status_naming_the_cause() {
    for (code, status) in [
        (wire::reset::SHUTDOWN, StatusCode::SERVICE_UNAVAILABLE),
        (wire::reset::BAD_HEAD, StatusCode::BAD_GATEWAY),
        (wire::reset::SOURCE_FAILED, StatusCode::BAD_GATEWAY),
    ] {
        let ((send, recv), (agent_send, agent_recv)) = memory::bidi(16);
        let agent = tokio::spawn(async move {
            let mut side = agent_reads(agent_send, agent_recv).await;
            side.send.cut(code);
        });
        let got = exchange(send, recv, request(Method::GET, b"", &[]), sent("/version"), &audit()).await;
        agent.await.unwrap();
        let e = got.err().map(|e| e.status()).map(|e| (e.code, e.message)).unwrap();
        assert_eq!(e.0, status, "reset code {code}: {}", e.1);
        assert!(e.1.contains(wire::reset::describe(u64::from(code))), "{}", e.1);
        assert!(e.1.contains("cluster \"dev\""), "{}", e.1);
    }
}

#[tokio::test]
async fn an_answer_that_breaks_off_fails_the_body_instead_of_ending_it() {
    let ((send, recv), (agent_send, agent_recv)) = memory::bidi(16);
    tokio::spawn(async move {
        let mut side = agent_reads(agent_send, agent_recv).await;
        answer(&mut side.send, 200, &[], Some(b"{\"items\":[")).await;
        side.send.cut(wire::reset::SOURCE_FAILED);
    });
    let (resp, _) = exchange(
        send,
        recv,
        request(Method::GET, b"", &[]),
        sent("/api/v1/pods"),
        &audit(),
    )
    .await
    .unwrap();
    assert!(
        resp.into_body().collect().await.is_err(),
        "a cut body must not pass for a whole one"
    );
}

#[tokio::test]
async fn a_switch_nobody_asked_for_is_refused() {
    let ((send, recv), (agent_send, agent_recv)) = memory::bidi(16);
    tokio::spawn(async move {
        let mut side = agent_reads(agent_send, agent_recv).await;
        answer(&mut side.send, 101, &[("upgrade", "SPDY/3.1")], None).await;
    });
    let got = exchange(
        send,
        recv,
        request(Method::GET, b"", &[]),
        sent("/api/v1/pods"),
        &audit(),
    )
    .await;
    let e = got.err().unwrap().status();
    assert_eq!(e.code, StatusCode::BAD_GATEWAY);
    assert!(e.message.contains("asked for no upgrade"), "{}", e.message);
}

#[tokio::test]
async fn a_watch_is_the_callers_to_read_at_its_pace_and_leaving_it_stops_the_agent() {
    let ((send, recv), (agent_send, agent_recv)) = memory::bidi(16);
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut side = agent_reads(agent_send, agent_recv).await;
        answer(
            &mut side.send,
            200,
            &[("content-type", "application/json")],
            Some(b"{\"type\":\"ADDED\"}\n"),
        )
        .await;
        // A quiet watch: nothing more to say, until the relay stops reading.
        SendHalf::stopped(&side.send).await;
        let _ = stopped_tx.send(());
    });
    let mut req = request(Method::GET, b"", &[]);
    *req.uri_mut() = "/clusters/dev/api/v1/namespaces/default/pods?watch=true"
        .parse()
        .unwrap();
    let (resp, delivery) = exchange(
        send,
        recv,
        req,
        sent("/api/v1/namespaces/default/pods?watch=true"),
        &audit(),
    )
    .await
    .unwrap();
    assert_eq!(delivery, Delivery::Unbounded, "an accepted watch without a length");
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "{\"type\":\"ADDED\"}\n");
    // The caller goes away: the agent hears it at once, though it has nothing to send.
    drop(body);
    tokio::time::timeout(Duration::from_secs(5), stopped_rx)
        .await
        .expect("the agent side was told the caller left")
        .unwrap();
}
