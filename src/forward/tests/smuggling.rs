//! A caller speaking raw bytes to a hyper front server that forwards with
//! [`exchange`], as the relay and the agent do: what it sends after a refused
//! upgrade, or behind ambiguous framing, must never reach the upstream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::super::*;
use crate::body::full;
use bytes::Bytes;

/// What the upstream saw.
#[derive(Default)]
struct Seen {
    /// Requests, in order.
    requests: Mutex<Vec<Received>>,
    /// Whether an upstream connection read bytes that were not HTTP.
    garbage: AtomicBool,
}

#[derive(Debug)]
struct Received {
    names: Vec<String>,
    path: String,
    body: Bytes,
}

/// The caller's end of a front server that forwards every request with
/// [`exchange`] on a fresh upstream connection answering `status`.
fn front(status: StatusCode, seen: Arc<Seen>) -> DuplexStream {
    let (caller, front_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let seen = seen.clone();
            async move {
                let (client_io, upstream_io) = tokio::io::duplex(64 * 1024);
                tokio::spawn(upstream(status, upstream_io, seen));
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
                    .await
                    .unwrap();
                tokio::spawn(conn.with_upgrades());
                exchange(req.map(boxed), None, &tokio_util::task::TaskTracker::new(), |req| {
                    sender.send_request(req)
                })
                .await
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(front_io), service)
            .with_upgrades()
            .await;
    });
    caller
}

/// An upstream that records each request and answers `status` with a body "refused".
async fn upstream(status: StatusCode, io: DuplexStream, seen: Arc<Seen>) {
    let recorder = seen.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let seen = recorder.clone();
        async move {
            let names = req.headers().keys().map(|k| k.to_string()).collect();
            let path = req.uri().path().to_owned();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            seen.requests.lock().unwrap().push(Received { names, path, body });
            let resp = Response::builder()
                .status(status)
                .header("location", "https://elsewhere.example/")
                .body(full("refused"))
                .unwrap();
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
    if served.is_err() {
        seen.garbage.store(true, Ordering::SeqCst);
    }
}

/// Everything the front sends until it closes (or 2 s pass).
async fn read_rest(caller: &mut DuplexStream, answer: &mut Vec<u8>) {
    let _ = tokio::time::timeout(Duration::from_secs(2), caller.read_to_end(answer)).await;
}

#[tokio::test]
async fn a_refused_upgrade_splices_nothing() {
    // CVE-2018-1002105: bytes after a refused upgrade must never reach the upstream raw.
    let frame = b"\x80\x03\x00\x01\x00\x00\x00\x0asmuggled!!";
    for status in [
        StatusCode::OK,
        StatusCode::FOUND,
        StatusCode::BAD_REQUEST,
        StatusCode::FORBIDDEN,
    ] {
        let seen = Arc::new(Seen::default());
        let mut caller = front(status, seen.clone());
        caller
            .write_all(b"GET /exec HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("refused") {
            let n = caller.read(&mut buf).await.unwrap();
            assert!(n > 0, "{status}: the front closed before answering");
            answer.extend_from_slice(&buf[..n]);
        }
        caller.write_all(frame).await.unwrap();
        // The front answers the bytes (400) and closes, or would have spliced them by now.
        read_rest(&mut caller, &mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {}", status.as_u16())),
            "{status}: {answer}"
        );
        assert_eq!(
            seen.requests.lock().unwrap().len(),
            1,
            "{status}: the upstream saw a second request"
        );
        assert!(
            !seen.garbage.load(Ordering::SeqCst),
            "{status}: raw bytes reached the upstream"
        );
    }
}

#[tokio::test]
async fn content_length_beside_transfer_encoding_leaves_one_framing() {
    let seen = Arc::new(Seen::default());
    let mut caller = front(StatusCode::OK, seen.clone());
    // Read by Content-Length, the body would hide a second request. hyper reads by
    // Transfer-Encoding, drops Content-Length (RFC 9112 section 6.3) and closes the
    // connection after answering, so the bytes after the chunked body go nowhere.
    caller
        .write_all(
            b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 45\r\nTransfer-Encoding: chunked\r\n\r\n\
              0\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    read_rest(&mut caller, &mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    let got = seen.requests.lock().unwrap();
    assert_eq!(got.len(), 1, "{got:?}; the caller got: {answer}");
    assert_eq!(got[0].path, "/first");
    assert!(got[0].body.is_empty());
    assert!(
        !got[0].names.iter().any(|n| n == "content-length"),
        "both framings were forwarded: {:?}",
        got[0].names
    );
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
}
