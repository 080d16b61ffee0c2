//! The innermost step of the relay's request path: the cluster, its credential for the caller,
//! one of its agents' tunnels, a new stream on it, and the exchange (`stream`).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tracing::{Instrument, debug};

use super::RelayState;
use super::clusters::ClusterTable;
use super::fleet::NoPeer;
use super::path::{Authenticated, RequestId, Target, take};
use super::refusal::Refusal;
use super::stream::Sent;
use crate::audit::Audit;
use crate::auth::Caller;
use crate::body::Body;
use crate::proto::Credential;
use crate::step::StepFuture;
use crate::telemetry::metrics::{self, attribute_values};
use crate::telemetry::trace_context::{Sampled, request_span};

attribute_values! {
    /// What became of a request for a cluster whose tunnels this relay does not hold:
    /// `hawser.result` of `hawser.peer.forwards`.
    pub enum Forward: "hawser.result" {
        /// A peer relay took it.
        Forwarded = "forwarded",
        /// No relay holds the cluster (503 offline).
        NoneHolds = "none_holds",
        /// Relays hold it and none answered, or this relay has not read the registry yet (503).
        Unreachable = "unreachable",
    }
}

/// Routes a request to its cluster's agent over a new stream.
#[derive(Clone)]
pub struct Route(pub(super) Arc<RelayState>);

impl tower::Service<Request<Body>> for Route {
    type Response = Response<Body>;
    type Error = Refusal;
    type Future = StepFuture<Response<Body>, Refusal>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(route(self.0.clone(), req))
    }
}

async fn route(state: Arc<RelayState>, mut req: Request<Body>) -> Result<Response<Body>, Refusal> {
    // The last step to need them: taken, not copied.
    let Target { cluster, upstream } = take(&mut req)?;
    let Authenticated { caller, token } = take(&mut req)?;
    let RequestId(request_id) = take(&mut req)?;
    let sampled: Sampled = take(&mut req)?;
    let audit: Audit = take(&mut req)?;
    let table = state.clusters.current();
    if !table.knows(&cluster) {
        return Err(Refusal::UnknownCluster(cluster));
    }
    let credential = credential_for(&state, &table, &cluster, &caller, &token)?;
    let sending = Sending {
        cluster,
        upstream,
        request_id,
        sampled,
        credential,
        audit,
        wait: Duration::from_secs(state.live.current().limits.open_stream_timeout_secs),
    };
    // A GET or HEAD without a body or upgrade can go again as it was: if the tunnel it went on
    // is lost before any answer (an agent closing a duplicate tunnel, a relay losing one), it
    // goes once more on another. Never a request whose body was sent, never after a head.
    let again = replayable(&req).then(|| copy_of(&req));
    match attempt(&state, req, &sending, None).await {
        Err((refusal, failed)) if refusal.lost_tunnel() => match again {
            Some(req) => {
                debug!(cluster = %sending.cluster, error = %refusal, "tunnel lost before the answer; sending the request once more");
                attempt(&state, req, &sending, failed)
                    .await
                    .map_err(|(refusal, _)| refusal)
            }
            None => Err(refusal),
        },
        done => done.map_err(|(refusal, _)| refusal),
    }
}

/// What every attempt at sending a request needs.
struct Sending {
    cluster: String,
    upstream: http::Uri,
    request_id: String,
    sampled: Sampled,
    credential: Credential,
    audit: Audit,
    wait: Duration,
}

/// Whether `req` can be sent again as it was: a GET or HEAD with no body, asking no upgrade.
fn replayable(req: &Request<Body>) -> bool {
    matches!(*req.method(), http::Method::GET | http::Method::HEAD)
        && hyper::body::Body::is_end_stream(req.body())
        && crate::headers::upgrade_protocol(req.headers()).is_none()
}

/// A body-less copy of `req`: all an exchange reads of it.
fn copy_of(req: &Request<Body>) -> Request<Body> {
    let mut copy = Request::new(crate::body::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Sends `req` over a tunnel of this relay (not session `avoid`, whose tunnel just failed) or
/// through a relay that holds one. A refusal comes with the session it was sent on, if local.
async fn attempt(
    state: &Arc<RelayState>,
    req: Request<Body>,
    sending: &Sending,
    avoid: Option<u64>,
) -> Result<Response<Body>, (Refusal, Option<u64>)> {
    let (cluster, wait, audit, sampled) = (sending.cluster.clone(), sending.wait, &sending.audit, &sending.sampled);
    let picked = match avoid {
        Some(id) => state.registry.pick_other(&cluster, id),
        None => state.registry.pick(&cluster),
    };
    let session_id = picked.as_ref().map(|s| s.id);
    let failed = |refusal| (refusal, session_id);
    // This relay's own tunnel first; else, in a fleet, a relay that holds one.
    let (stream, span, via, hop_end) = match picked {
        Some(session) => {
            audit.set(|f| {
                f.agent = Some(session.instance.clone());
                f.via = None;
            });
            // No user here: span fields become trace attributes, which name users only where
            // configured (`telemetry.record_user`, the request span).
            // Kind client, as below: this relay's side of the call to the next hop.
            let span = request_span!(sampled, "stream", otel.kind = "client", cluster = %cluster, session = session.id);
            // Waits only while the agent's stream limit is reached; bounded so callers get an answer.
            let opened = tokio::time::timeout(wait, session.connection.open())
                .await
                .map_err(|_| {
                    failed(Refusal::Saturated {
                        cluster: cluster.clone(),
                        wait,
                    })
                })?;
            let stream = opened.map_err(|error| {
                failed(Refusal::Unreachable {
                    cluster: cluster.clone(),
                    error,
                })
            })?;
            (stream, span, None, None)
        }
        None => {
            let fleet = state
                .fleet
                .as_ref()
                .ok_or_else(|| failed(Refusal::Offline(cluster.clone())))?;
            let forwarded = fleet.forward(&cluster, wait).await;
            let result = match &forwarded {
                Ok(_) => Forward::Forwarded,
                Err(NoPeer::NoneHolds) => Forward::NoneHolds,
                Err(NoPeer::Unreachable(_) | NoPeer::Unread) => Forward::Unreachable,
            };
            metrics::count(&metrics::metrics().forwards, result);
            let forwarded = forwarded.map_err(|no| {
                failed(match no {
                    NoPeer::NoneHolds => Refusal::Offline(cluster.clone()),
                    NoPeer::Unread => Refusal::RegistryUnread(cluster.clone()),
                    NoPeer::Unreachable(errors) => Refusal::PeerUnreachable {
                        cluster: cluster.clone(),
                        why: errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                    },
                })
            })?;
            audit.set(|f| {
                f.agent = None;
                f.via = Some(forwarded.relay.clone());
            });
            // The peer relay's `forwarded` span (kind server) is this one's child, the agent's
            // span that one's.
            let span =
                request_span!(sampled, "stream", otel.kind = "client", cluster = %cluster, via = %forwarded.relay);
            (forwarded.stream, span, Some(forwarded.relay), Some(forwarded.hop_end))
        }
    };
    async move {
        let (send, recv) = stream;
        let sent = Sent {
            cluster: &cluster,
            target: sending.upstream.clone(),
            request_id: sending.request_id.clone(),
            sampled: sampled.clone(),
            credential: sending.credential.clone(),
            tasks: &state.tasks,
            via: via.as_deref(),
            drain: &state.streams_end,
            hop_end,
        };
        let (mut resp, delivery) = super::stream::exchange(send, recv, req, sent, audit)
            .await
            .map_err(failed)?;
        resp.extensions_mut().insert(delivery);
        Ok(resp)
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
