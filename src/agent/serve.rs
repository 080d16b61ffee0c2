//! One relay-opened stream = one HTTP exchange with kube-apiserver.
//!
//! Threat model: the relay is not trusted for identity. Each request's token
//! is validated here against the agent's own issuers; every header a caller
//! could use to claim another identity is removed, the impersonation headers
//! are set from the validated token, and the result is checked before it
//! leaves (see `impersonation`). Identity that cannot be expressed means 500,
//! never a request with the agent's own identity. The request goes only to
//! the configured apiserver, whatever its URI says.
//!
//! In passthrough mode (`mode = "passthrough"` or `"both"`) a request that
//! carries a cluster token is forwarded with that token as its only
//! credential, after a TokenReview (see `passthrough`); the caller's relay
//! JWT is still validated here first and never leaves the agent.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tracing::{Instrument, debug};

use crate::telemetry::trace_context::{self, Sampled, request_span};

use super::failure::Failure;
use super::{AgentState, path};
use crate::audit::Audit;
use crate::body::{Body, boxed, empty};
use crate::headers;
use crate::proto;
use crate::transport::{RecvHalf, SendHalf, write_chunk};
use crate::wire::body::{PumpError, RecvBody, send_head_and_body};
use crate::wire::splice::{Side, splice};
use crate::wire::{self, RequestHead, ResponseHead, reset};

/// How long the relay has to send a stream's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one stream: its request head (and body), the apiserver's answer, and an upgrade's bytes.
pub async fn stream<S: SendHalf, R: RecvHalf>(mut send: S, mut recv: R, state: Arc<AgentState>, relay: Arc<str>) {
    let read = tokio::time::timeout(HEADER_TIMEOUT, wire::read_head(&mut recv, wire::MAX_HEAD)).await;
    let decoded = match read {
        Ok(Ok((payload, first))) => RequestHead::decode(&payload).map(|head| (head, first)),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            debug!("stream head timed out");
            send.cut(reset::NO_HEAD);
            return recv.stop_reading(reset::NO_HEAD);
        }
    };
    let (head, first) = match decoded {
        Ok(pair) => pair,
        Err(e) => {
            debug!(error = %e, "bad stream head");
            send.cut(reset::BAD_HEAD);
            return recv.stop_reading(reset::BAD_HEAD);
        }
    };
    // Sampled as the relay decided (the head's trace context), or here if it sent none.
    let sampled = Sampled::decide(trace_context::of_head(&head));
    let span = request_span!(
        sampled,
        "stream",
        request.id = %head.request_id,
        otel.kind = "server",
    );
    if sampled.exported() {
        trace_context::continue_from(&span, trace_context::of_head(&head));
    }
    exchange(head, first, send, recv, &state, &relay, sampled)
        .instrument(span)
        .await;
}

async fn exchange<S: SendHalf, R: RecvHalf>(
    head: RequestHead,
    first: bytes::Bytes,
    mut send: S,
    recv: R,
    state: &Arc<AgentState>,
    relay: &str,
    sampled: Sampled,
) {
    let audit = state
        .audit
        .begin(&head.request_id, &head.method, &head.target, &head.headers);
    audit.set(|f| {
        f.cluster = Some(state.cluster.clone());
        f.known_cluster = true;
        f.relay = Some(relay.to_owned());
        f.agent = Some(state.instance.clone());
    });
    audit.trace(tracing::Span::current());
    let upgrade = headers::upgrade_protocol(&head.headers).is_some();
    // An upgrade request has no body: what follows its head is the upgraded bytes, read only
    // once the apiserver has switched protocols.
    let (body, recv) = if head.body && !upgrade {
        let length = headers::content_length(&head.headers);
        (audit.count(boxed(RecvBody::new(first, recv, length)), true), None)
    } else {
        (empty(), Some(recv))
    };
    // The apiserver's spans are children of this one if it is sampled (else it is told not to sample).
    let traceparent = sampled
        .passed_on(&tracing::Span::current())
        .and_then(|t| http::HeaderValue::from_str(&t).ok());
    let mut req = Request::new(body);
    *req.method_mut() = head.method;
    *req.uri_mut() = head.target;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = head.headers;
    match traceparent {
        Some(value) => {
            req.headers_mut().insert(trace_context::TRACEPARENT, value);
        }
        None => {
            req.headers_mut().remove(trace_context::TRACEPARENT);
        }
    }
    req.extensions_mut().insert(head.credential);
    req.extensions_mut().insert(audit.clone());
    match path::send(path::request_path(state), req).await {
        Ok(resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => match recv.filter(|_| upgrade) {
            Some(recv) => switch(resp, send, recv, audit).await,
            None => {
                let e = Failure::UnaskedUpgrade.answer();
                audit.status(e.code.as_u16());
                respond(e.into_response(), &mut send).await;
            }
        },
        Ok(mut resp) => {
            strip_agent_marks(resp.headers_mut());
            respond(resp.map(|body| audit.count(boxed(body), false)), &mut send).await;
        }
        Err(e) => {
            let e = e.answer();
            audit.status(e.code.as_u16());
            respond(e.into_response(), &mut send).await;
        }
    }
}

/// Sends a response head and its body, then finishes the stream; a body that breaks off resets
/// it, so the relay never takes a cut for a complete answer. A relay that stops reading (its
/// caller went away) ends the exchange at once, even while the apiserver sends nothing.
async fn respond<S: SendHalf>(resp: Response<Body>, send: &mut S) {
    let (parts, body) = resp.into_parts();
    let mut headers = parts.headers;
    headers::strip_hop_by_hop(&mut headers);
    let has_body = !hyper::body::Body::is_end_stream(&body);
    let head = ResponseHead {
        status: parts.status,
        headers,
        body: has_body,
    };
    let encoded = match head.encode(wire::MAX_HEAD) {
        Ok(encoded) => encoded,
        Err(e) => {
            debug!(error = %e, "response head cannot be sent");
            return send.cut(reset::SOURCE_FAILED);
        }
    };
    if has_body {
        match send_head_and_body(encoded, body, send).await {
            Ok(_) => {}
            Err(PumpError::Source(e)) => {
                debug!(error = %e, "the apiserver's answer broke off");
                return send.cut(reset::SOURCE_FAILED);
            }
            Err(PumpError::Sink(e)) => return debug!(error = %e, "the relay stopped reading the answer"),
        }
    } else if write_chunk(send, encoded).await.is_err() {
        return;
    }
    send.end();
}

/// Answers `101` and splices the apiserver's upgraded connection onto the stream.
async fn switch<S: SendHalf, R: RecvHalf>(mut resp: Response<Incoming>, mut send: S, recv: R, audit: Audit) {
    let upgraded = hyper::upgrade::on(&mut resp);
    let mut headers = std::mem::take(resp.headers_mut());
    strip_agent_marks(&mut headers);
    let head = ResponseHead {
        status: StatusCode::SWITCHING_PROTOCOLS,
        headers,
        body: false,
    };
    let Ok(encoded) = head.encode(wire::MAX_HEAD) else {
        return send.cut(reset::SOURCE_FAILED);
    };
    if write_chunk(&mut send, encoded).await.is_err() {
        return;
    }
    match upgraded.await {
        Ok(io) => splice(io, send, recv, Some(audit), Side::Upstream).await,
        Err(e) => {
            debug!(error = %e, "the apiserver's upgrade did not complete");
            send.cut(reset::SOURCE_FAILED);
        }
    }
}

/// Removes headers only the agent may set from an apiserver response: an
/// aggregated API server behind the apiserver must not make the relay charge
/// a caller's failed-authentication budget.
fn strip_agent_marks(headers: &mut http::HeaderMap) {
    headers.remove(proto::AUTH_FAILED_HEADER);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apiserver_responses_cannot_claim_a_failed_authentication() {
        let mut headers = http::HeaderMap::new();
        headers.append(proto::AUTH_FAILED_HEADER, "cluster-token".parse().unwrap());
        headers.append("Hawser-Auth-Failed", "cluster-token".parse().unwrap());
        headers.append("content-type", "application/json".parse().unwrap());
        strip_agent_marks(&mut headers);
        assert!(!headers.contains_key(proto::AUTH_FAILED_HEADER));
        assert_eq!(headers.len(), 1);
    }
}
