//! The relay's front door: HTTPS (HTTP/1.1 and HTTP/2) for callers (agents that dial this port
//! over TCP are told apart at the TLS door, `door`).
//!
//! `https://RELAY/clusters/NAME/...` is cluster NAME's API, served through the request path's
//! layers (`path`): the caller's token is checked before anything reaches an agent (401), then
//! the access rules (403), then the cluster (404 unknown, 503 offline); the request then rides a
//! new stream to the agent, which checks the token again itself. The fleet report
//! (`/.well-known/hawser/clusters`, for `hawser clusters`) takes the same path up to the access
//! rules, then needs an admin rule (403). Watches and upgraded streams
//! have no relay timeout; any other response the caller does not take within
//! `response_stall_timeout_secs` closes its connection (see `stall`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span};

use super::RelayState;
use super::door::Door;
use super::path::{Peer, RequestPath, bounded, request_path};
use super::refusal::Refusal;
use super::stall::{Delivery, Stalls};
use crate::body::{self, Body, full};
use crate::idle::Activity;

/// Where the relay publishes the public half of its assertion key, for agents to trust.
pub const ASSERTION_JWKS_PATH: &str = "/.well-known/hawser/assertion-jwks.json";

/// HTTP/2 pings find callers that went away without closing (a laptop lid).
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// The caller connections being served (TLS handshakes included), and the signal that drains
/// them.
#[derive(Clone, Default)]
pub struct Connections {
    tasks: TaskTracker,
    drain: CancellationToken,
}

impl Connections {
    /// How many are open.
    pub fn count(&self) -> usize {
        self.tasks.len()
    }

    /// Closes each connection once it holds no request, but not before its first one (see
    /// `connection`): HTTP/1.1 after its current exchange, HTTP/2 with GOAWAY; then waits until
    /// all have ended.
    pub async fn drain(&self) {
        self.drain.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Accepts caller connections until `stop`; then takes the connections the kernel has already
/// completed (a balancer may have sent a request on them) and closes the listener, so that no
/// connection it accepted for us is reset. Every connection is one of `connections`, so
/// shutdown can drain them.
pub async fn serve(
    listener: TcpListener,
    door: Arc<Door>,
    state: Arc<RelayState>,
    connections: Connections,
    stop: CancellationToken,
) {
    let path = request_path(state.clone());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => {
                while let Some(Ok((tcp, peer))) = listener.accept().now_or_never() {
                    start(tcp, peer, &door, &state, &path, &connections);
                }
                return;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors, typically: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        start(tcp, peer, &door, &state, &path, &connections);
    }
}

/// Serves one accepted caller connection in a task of its own, one of `connections`.
fn start(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    door: &Arc<Door>,
    state: &Arc<RelayState>,
    path: &RequestPath,
    connections: &Connections,
) {
    let _ = tcp.set_nodelay(true);
    // TCP keep-alive finds dead HTTP/1.1 callers holding exec or port-forward streams.
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(15)),
    );
    let (door, state, drain) = (door.clone(), state.clone(), connections.drain.clone());
    connections.tasks.spawn(
        connection(tcp, peer, door, (state, path.clone()), drain)
            .instrument(info_span!("caller_connection", net.peer.address = %peer)),
    );
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    door: Arc<Door>,
    (state, path): (Arc<RelayState>, RequestPath),
    drain: CancellationToken,
) {
    // Under TLS, so the stall watch sees what the kernel takes, not what rustls buffers.
    let stalls = Stalls::new();
    // An agent over TCP goes its own way here (the drain does not wait for it: it has its own).
    let Some(tls) = door.enter(stalls.socket(tcp), peer).await else {
        return;
    };
    let limits = state.live.current().limits.clone();
    let activity = Activity::new();
    let service = {
        let (activity, stalls, drain) = (activity.clone(), stalls.clone(), drain.clone());
        service_fn(move |req: Request<Incoming>| {
            let (state, stalls, busy, version) = (state.clone(), stalls.clone(), activity.begin(), req.version());
            let (path, drain) = (path.clone(), drain.clone());
            async move {
                let req: Request<Body> = req.map(body::boxed);
                let mut resp = handle(&state, path, req, peer).await;
                // The drain closes this connection after this answer: an HTTP/1.1 caller is told
                // so, and does not send its next request on it (an upgrade says `Upgrade`).
                if drain.is_cancelled() && version < Version::HTTP_2 && !resp.headers().contains_key(CONNECTION) {
                    resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                }
                let delivery = resp.extensions_mut().remove().unwrap_or(Delivery::Bounded);
                let watched = |body| stalls.watch(body, delivery, version);
                Ok::<_, Infallible>(resp.map(|body| body::hold_until_done(watched(body), busy)))
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Headers past max_header_bytes get 431 (HTTP/1.1) or a stream error (HTTP/2);
    // the h2 header-list bound also caps CONTINUATION floods.
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(limits.max_header_bytes)
        .header_read_timeout(Duration::from_secs(limits.header_read_timeout_secs));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(limits.h2_max_pending_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_resets)
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    // At the drain a connection closes once it holds no request, but not before its first: one
    // accepted just before the relay stopped accepting may still be in its TLS handshake, or
    // its client slow under load to send its request (kubectl saw EOF when the drain closed it
    // after a fixed second). The first request is answered, then the connection closes (HTTP/1.1
    // `Connection: close`, HTTP/2 GOAWAY); `activity` below and the door's TLS handshake timeout
    // bound the wait for it.
    let served = async {
        tokio::pin!(conn);
        let drained = async {
            drain.cancelled().await;
            activity.first_request().await;
        };
        tokio::select! {
            result = conn.as_mut() => return result,
            () = drained => conn.as_mut().graceful_shutdown(),
        }
        conn.await
    };
    let (first, idle, stall) = (
        Duration::from_secs(limits.header_read_timeout_secs),
        Duration::from_secs(limits.idle_connection_timeout_secs),
        Duration::from_secs(limits.response_stall_timeout_secs),
    );
    tokio::select! {
        result = served => {
            if let Err(e) = result {
                debug!(error = %e, "caller connection ended with an error");
            }
        }
        // Also ends connections stuck before protocol detection or in an endless HTTP/2 HEADERS.
        () = activity.expired(first, idle) => debug!("caller connection closed: no request in flight"),
        // Dropping the connection closes the socket and drops every response on it.
        stalled = stalls.stalled(stall) => debug!(
            waited_ms = u64::try_from(stalled.waited.as_millis()).unwrap_or(u64::MAX),
            responses_waiting = stalled.waiting,
            responses_watched = stalled.watched,
            socket_blocked = stalled.socket,
            "caller connection closed: it took nothing the relay sent within response_stall_timeout_secs"
        ),
    }
}

/// The answer to one request: the relay's own few paths here, every cluster's through `path`.
/// Only a forwarded long-running stream may reach the caller at its own pace (`Delivery`), so
/// nothing the relay answers itself can.
async fn handle(state: &RelayState, path: RequestPath, mut req: Request<Body>, peer: SocketAddr) -> Response<Body> {
    // Refusals before the request path are in `hawser.refusals` too (not in `hawser.requests`:
    // no audit record is opened for them).
    let refused = |e: Refusal| {
        crate::telemetry::metrics::metrics().refused(e.reason());
        bounded(e.status().into_response())
    };
    if req.method() == http::Method::CONNECT {
        return refused(Refusal::Connect);
    }
    match req.uri().path() {
        "/.well-known/jwks.json" => match &state.live.current().issuer {
            Some(issuer) => bounded(json_response(issuer.jwks().to_string())),
            None => refused(Refusal::NoIssuer),
        },
        crate::config::login::PATH => match &state.live.current().login {
            Some(login) => bounded(json_response(login.clone())),
            None => refused(Refusal::NoLogin),
        },
        ASSERTION_JWKS_PATH => match &state.minter {
            Some(minter) => bounded(json_response(minter.jwks().to_string())),
            None => refused(Refusal::NoAssertions),
        },
        "/healthz" => bounded(Response::new(full("ok"))),
        "/readyz" => bounded(match state.unready() {
            None => Response::new(full("ok")),
            Some(why) => {
                let mut resp = Response::new(full(format!("not ready: {why}")));
                *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                resp
            }
        }),
        asked if asked.starts_with("/clusters/") || asked == crate::overview::PATH => {
            req.extensions_mut().insert(Peer(peer));
            // The audit step answers every refusal; nothing else rises this far.
            super::path::send(path, req).await.unwrap_or_else(refused)
        }
        other => refused(Refusal::NotAClusterPath(other.to_owned())),
    }
}

fn json_response(body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
