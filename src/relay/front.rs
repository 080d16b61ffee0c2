//! The relay's front door: HTTPS (HTTP/1.1 and HTTP/2) for callers (agents that dial this port
//! over TCP are told apart at the TLS door, `door`).
//!
//! `https://RELAY/clusters/NAME/...` is cluster NAME's API. The caller's
//! token is checked here before anything reaches an agent (401), then the
//! access rules (403), then the cluster (404 unknown, 503 offline). The
//! request then rides a new QUIC stream to the agent, which checks the token
//! again itself. Watches and upgraded streams have no relay timeout; any
//! other response the caller does not take within `response_stall_timeout_secs`
//! closes its connection (see `stall`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tracing::{Instrument, debug, info_span};

use super::RelayState;
use super::clusters::ClusterTable;
use super::door::Door;
use super::idle::Activity;
use super::refusal::Refusal;
use super::stall::{Delivery, Stalls};
use super::stream::Sent;
use crate::audit::Audit;
use crate::auth::Caller;
use crate::body::{self, Body, full};
use crate::proto::{self, Credential};

/// Where the relay publishes the public half of its assertion key, for agents to trust.
pub const ASSERTION_JWKS_PATH: &str = "/.well-known/hawser/assertion-jwks.json";

/// HTTP/2 pings find callers that went away without closing (a laptop lid).
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Accepts caller connections until the listener fails.
/// Every connection is watched by `graceful`, so shutdown can drain them.
pub async fn serve(listener: TcpListener, door: Arc<Door>, state: Arc<RelayState>, graceful: &GracefulShutdown) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors, typically: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // TCP keep-alive finds dead HTTP/1.1 callers holding exec or port-forward streams.
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(60))
                .with_interval(Duration::from_secs(15)),
        );
        let (door, state, watcher) = (door.clone(), state.clone(), graceful.watcher());
        tokio::spawn(
            connection(tcp, peer, door, state, watcher)
                .instrument(info_span!("caller_connection", net.peer.address = %peer)),
        );
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    door: Arc<Door>,
    state: Arc<RelayState>,
    watcher: Watcher,
) {
    // Under TLS, so the stall watch sees what the kernel takes, not what rustls buffers.
    let stalls = Stalls::new();
    // An agent over TCP goes its own way here, and this connection's drain watcher with it.
    let Some(tls) = door.enter(stalls.socket(tcp), peer).await else {
        return;
    };
    let limits = state.limits.clone();
    let activity = Activity::new();
    let service = {
        let (activity, stalls) = (activity.clone(), stalls.clone());
        service_fn(move |req| {
            let (state, stalls, busy, version) = (state.clone(), stalls.clone(), activity.begin(), req.version());
            async move {
                let (resp, delivery) = handle(&state, req, peer).await;
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
    let (first, idle, stall) = (
        Duration::from_secs(limits.header_read_timeout_secs),
        Duration::from_secs(limits.idle_connection_timeout_secs),
        Duration::from_secs(limits.response_stall_timeout_secs),
    );
    tokio::select! {
        result = watcher.watch(conn) => {
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

/// The answer to one request, and whether the caller may take it at its own pace: only a
/// forwarded long-running stream can be unbounded, so nothing the relay answers itself is.
async fn handle(state: &RelayState, req: Request<Incoming>, peer: SocketAddr) -> (Response<Body>, Delivery) {
    let bounded = |resp| (resp, Delivery::Bounded);
    let refused = |e: Refusal| (e.status().into_response(), Delivery::Bounded);
    if req.method() == http::Method::CONNECT {
        return refused(Refusal::Connect);
    }
    let path = req.uri().path();
    if path == "/.well-known/jwks.json" {
        return bounded(match &state.issuer {
            Some(issuer) => json_response(issuer.jwks().to_string()),
            None => return refused(Refusal::NoIssuer),
        });
    }
    if path == ASSERTION_JWKS_PATH {
        return bounded(match &state.minter {
            Some(minter) => json_response(minter.jwks().to_string()),
            None => return refused(Refusal::NoAssertions),
        });
    }
    if path == "/healthz" {
        return bounded(Response::new(full("ok")));
    }
    if !path.starts_with("/clusters/") {
        return refused(Refusal::NotAClusterPath(path.to_owned()));
    }
    let request_id = next_request_id(&state.instance);
    let (audit, routed) = match split_cluster_uri(req.uri()) {
        Ok((cluster, upstream)) => {
            let audit = state.audit.begin(&request_id, req.method(), &upstream, req.headers());
            audit.set(|f| f.cluster = Some(cluster.clone()));
            (audit, Ok((cluster, upstream)))
        }
        Err(e) => (
            state.audit.begin(&request_id, req.method(), req.uri(), req.headers()),
            Err(e),
        ),
    };
    audit.set(|f| f.relay = Some(state.instance.clone()));
    let result = match routed {
        // A path the apiserver would not decode is refused before anything else looks at it.
        Ok((_, upstream)) if crate::request_info::request_info(req.method(), &upstream).is_err() => {
            Err(Refusal::Undecodable)
        }
        Ok((cluster, upstream)) => match state.auth_failures.attempt(peer.ip()) {
            Some(attempt) => {
                let target = Target {
                    cluster,
                    upstream,
                    request_id,
                };
                to_cluster(state, req, target, &audit, attempt, peer.ip()).await
            }
            None => Err(Refusal::SourceThrottled(state.auth_failures.retry_after())),
        },
        Err(e) => Err(e),
    };
    result.unwrap_or_else(|e| {
        let e = e.status();
        audit.status(e.code.as_u16());
        bounded(e.into_response())
    })
}

fn json_response(body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Splits `/clusters/NAME/rest?query` into `NAME` and `/rest?query`.
fn split_cluster_uri(uri: &Uri) -> Result<(String, Uri), Refusal> {
    let rest = uri.path().strip_prefix("/clusters/").unwrap_or_default();
    let (cluster, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if !crate::config::valid_cluster_name(cluster) {
        return Err(Refusal::UnknownCluster(cluster.to_owned()));
    }
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let upstream: Uri = path_and_query.parse().map_err(|_| Refusal::MalformedPath)?;
    Ok((cluster.to_owned(), upstream))
}

/// Where a request goes: its cluster, its path on the apiserver, and its id.
struct Target {
    cluster: String,
    upstream: Uri,
    request_id: String,
}

async fn to_cluster(
    state: &RelayState,
    req: Request<Incoming>,
    target: Target,
    audit: &Audit,
    attempt: super::limits::Attempt<'_>,
    peer: std::net::IpAddr,
) -> Result<(Response<Body>, Delivery), Refusal> {
    let authenticated = match crate::auth::bearer_token(req.headers()) {
        Ok(token) => state
            .auth
            .authenticate_caller(token)
            .await
            .map(|caller| (caller, token.to_owned())),
        Err(e) => Err(e),
    };
    let (caller, token) = match authenticated {
        Ok(authenticated) => {
            // Given back at once: holding it across a slow exchange would let valid requests
            // from one address look like failures to the next caller from there.
            attempt.refund();
            authenticated
        }
        // An issuer that cannot be reached is not the caller's failure.
        Err(e @ crate::auth::AuthError::ProviderUnavailable(_)) => {
            attempt.refund();
            return Err(e.into());
        }
        Err(e) => {
            attempt.failed();
            return Err(e.into());
        }
    };
    audit.set(|f| {
        f.caller = Some(caller.identity.user.clone());
        f.groups = caller.identity.groups.clone();
    });
    // The caller's credential can still fail further on: a token not bound to this cluster here,
    // or a cluster token or caller token the agent refuses (a 401 it marks). Those are charged to
    // the source after the fact.
    let outcome = route(state, req, target, audit, &caller, &token).await;
    let caller_failed = match &outcome {
        Ok((resp, _)) => {
            resp.status() == http::StatusCode::UNAUTHORIZED && resp.headers().contains_key(proto::AUTH_FAILED_HEADER)
        }
        Err(e) => e.is_unauthenticated(),
    };
    if caller_failed {
        state.auth_failures.charge(peer);
    }
    outcome.map(|(mut resp, delivery)| {
        resp.headers_mut().remove(proto::AUTH_FAILED_HEADER);
        (resp, delivery)
    })
}

/// Access rules, the cluster's credential, the caller's slot, then the exchange on a new stream.
async fn route(
    state: &RelayState,
    req: Request<Incoming>,
    target: Target,
    audit: &Audit,
    caller: &Caller,
    token: &str,
) -> Result<(Response<Body>, Delivery), Refusal> {
    let Target {
        cluster,
        upstream: upstream_uri,
        request_id,
    } = target;
    let cluster = cluster.as_str();
    let identity = &caller.identity;
    if !state.access.allows(identity, cluster) {
        return Err(Refusal::Forbidden {
            cluster: cluster.to_owned(),
            user: identity.user.clone(),
        });
    }
    let table = state.clusters.current();
    if !table.knows(cluster) {
        return Err(Refusal::UnknownCluster(cluster.to_owned()));
    }
    let credential = credential_for(state, &table, cluster, caller, token)?;
    let session = state
        .registry
        .pick(cluster)
        .ok_or_else(|| Refusal::Offline(cluster.to_owned()))?;
    let lease = state
        .caller_streams
        .acquire(&identity.user, state.limits.max_streams_per_caller)
        .ok_or_else(|| Refusal::CallerBusy {
            user: identity.user.clone(),
            limit: state.limits.max_streams_per_caller,
        })?;
    audit.hold(lease);
    audit.set(|f| f.agent = Some(session.instance.clone()));
    let span =
        info_span!("stream", request.id = %request_id, cluster = %cluster, user = %identity.user, session = session.id);
    async move {
        // Waits only while the agent's stream limit is reached; bounded so callers get an answer.
        let wait = Duration::from_secs(state.limits.open_stream_timeout_secs);
        let opened = tokio::time::timeout(wait, session.connection.open())
            .await
            .map_err(|_| Refusal::Saturated {
                cluster: cluster.to_owned(),
                wait,
            })?;
        let (send, recv) = opened.map_err(|error| Refusal::Unreachable {
            cluster: cluster.to_owned(),
            error,
        })?;
        let sent = Sent {
            cluster,
            target: upstream_uri,
            request_id,
            credential,
            tasks: &state.tasks,
        };
        super::stream::exchange(send, recv, req, sent, audit).await
    }
    .instrument(span)
    .await
}

/// What `cluster`'s agent gets as the caller's proof: the caller's own token if the cluster takes
/// those and the token is bound to it alone, else an assertion of the relay's bound to it. Either
/// way nothing the agent receives is good at any other cluster.
fn credential_for(
    state: &RelayState,
    table: &ClusterTable,
    cluster: &str,
    caller: &Caller,
    token: &str,
) -> Result<Credential, Refusal> {
    match table.caller_audience(cluster) {
        Some(audience) => {
            if !caller.audiences.iter().any(|a| a == audience) {
                return Err(Refusal::NotForCluster {
                    cluster: cluster.to_owned(),
                    audience: audience.to_owned(),
                });
            }
            if let Some(other) = table.bound_elsewhere(cluster, &caller.audiences) {
                return Err(Refusal::AlsoGoodElsewhere {
                    cluster: cluster.to_owned(),
                    other: other.to_owned(),
                    audience: audience.to_owned(),
                });
            }
            Ok(Credential::CallerToken(token.to_owned()))
        }
        None => {
            // A token minted for a cluster that takes callers' own tokens is good there alone:
            // otherwise what that cluster's agent receives would buy an assertion here.
            if let Some(other) = table.bound_elsewhere(cluster, &caller.audiences) {
                return Err(Refusal::BoundElsewhere {
                    cluster: cluster.to_owned(),
                    other: other.to_owned(),
                });
            }
            let minter = state
                .minter
                .as_ref()
                .ok_or_else(|| Refusal::CannotVouch("this relay has no [assertions] to vouch for callers".into()))?;
            let assertion = minter
                .assertion(caller, crate::auth::token_digest(token), cluster)
                .map_err(|e| Refusal::CannotVouch(format!("cannot vouch for the caller: {e}")))?;
            Ok(Credential::Assertion(assertion.to_string()))
        }
    }
}

/// `{instance}-{random}-{counter}`: the random part, drawn once per process, keeps ids unique
/// across restarts and across replicas that share an instance name or a pid.
fn next_request_id(instance: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| format!("{:016x}", rand::random::<u64>()));
    format!("{instance}-{run}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cluster_and_keeps_query() {
        let (cluster, uri) = split_cluster_uri(&"/clusters/dev/api/v1/pods?watch=1".parse().unwrap()).unwrap();
        assert_eq!(cluster, "dev");
        assert_eq!(uri, "/api/v1/pods?watch=1");
        let (_, root) = split_cluster_uri(&"/clusters/dev".parse().unwrap()).unwrap();
        assert_eq!(root, "/");
        assert!(split_cluster_uri(&"/clusters/Bad_Name/api".parse().unwrap()).is_err());
        assert!(split_cluster_uri(&"/clusters//api".parse().unwrap()).is_err());
    }

    #[test]
    fn request_ids_carry_a_per_process_random_part_and_a_counter() {
        let (a, b) = (next_request_id("relay-0"), next_request_id("relay-0"));
        let parts = |id: &str| id.rsplitn(3, '-').map(str::to_owned).collect::<Vec<_>>();
        let (pa, pb) = (parts(&a), parts(&b));
        assert_ne!(a, b);
        assert_eq!(pa[1], pb[1], "one random part per process");
        assert_eq!(pa[1].len(), 16);
        assert_eq!(pa[2], "relay-0");
        assert!(pb[0].parse::<u64>().unwrap() > pa[0].parse::<u64>().unwrap());
    }
}
