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

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::HOST;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tracing::{Instrument, debug, info_span};

use super::{AgentState, passthrough};
use crate::audit::Audit;
use crate::forward::{self, Body, boxed};
use crate::proto::{self, Credential, StreamHeader};
use crate::status::HttpError;
use crate::tunnel::Stream;

/// How long the relay has to send a stream's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one stream: its header, then one HTTP/1.1 exchange (and upgrade).
pub async fn stream(mut stream: Stream, state: Arc<AgentState>, relay: Arc<str>) {
    let header: StreamHeader = match tokio::time::timeout(HEADER_TIMEOUT, proto::read_frame(&mut stream)).await {
        Ok(Ok(header)) => header,
        Ok(Err(e)) => return debug!(error = %e, "bad stream header"),
        Err(_) => return debug!("stream header timed out"),
    };
    if !plain_request_id(&header.request_id) {
        return debug!("stream header with a malformed request id");
    }
    let span = info_span!("stream", request.id = %header.request_id);
    let service = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        let credential = header.credential.clone();
        let audit = state
            .audit
            .begin(&header.request_id, req.method(), req.uri(), req.headers());
        audit.set(|f| {
            f.cluster = Some(state.cluster.clone());
            f.relay = Some(relay.to_string());
            f.agent = Some(state.instance.clone());
        });
        async move {
            Ok::<_, Infallible>(handle(&state, req, &credential, &audit).await.unwrap_or_else(|e| {
                audit.status(e.code.as_u16());
                e.into_response()
            }))
        }
    });
    // No keep_alive(false): it would add `Connection: close` to a 101. The
    // relay sends one exchange per stream and finishes the stream after it.
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .instrument(span)
        .await;
    if let Err(e) = served {
        debug!(error = %e, "stream ended with an error");
    }
}

/// Whether a relay-chosen request id is a plain name (it reaches logs and audit lines).
fn plain_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

async fn handle(
    state: &AgentState,
    req: Request<Incoming>,
    credential: &Credential,
    audit: &Audit,
) -> Result<Response<Body>, HttpError> {
    forward::refuse_connect(req.method())?;
    crate::request_info::request_info(req.method(), req.uri()).map_err(|e| HttpError::bad_request(e.to_string()))?;
    // Only the credential in the stream header counts; the request's own `Authorization` is the
    // caller's and is stripped below like every other identity header.
    let token = match (state.takes_assertions, credential) {
        (true, Credential::Assertion(token)) | (false, Credential::CallerToken(token)) => token,
        (true, _) => return Err(HttpError::unauthorized("this agent takes relay assertions only")),
        (false, _) => return Err(HttpError::unauthorized("this agent takes callers' own tokens only")),
    };
    let identity = match state.auth.authenticate(token).await {
        Ok(identity) => identity,
        // A caller's own token refused here is the caller's failure; a relay assertion refused
        // here is not (the caller's token passed at the relay), so only the former is marked.
        Err(e) if !state.takes_assertions && e.status() == http::StatusCode::UNAUTHORIZED => {
            return Err(HttpError::from(e).auth_failed(crate::status::AuthFailure::CallerToken));
        }
        Err(e) => return Err(e.into()),
    };
    audit.set(|f| {
        f.caller = Some(identity.user.clone());
        f.groups = identity.groups.clone();
    });
    let cluster_token = passthrough::cluster_token(req.headers())?;

    let mut req = req.map(boxed);
    let long_running = forward::is_long_running(&req);
    match cluster_token {
        Some(cluster_token) => {
            if !state.mode.allows_passthrough() {
                return Err(HttpError::forbidden(
                    "this cluster does not accept cluster tokens (Hawser-Cluster-Authorization); \
                     its agent runs in identity mode",
                ));
            }
            let reviewed = state
                .reviewer
                .review(&state.apiserver, &identity.user, &cluster_token)
                .await?;
            audit.set(|f| f.cluster_user = Some(reviewed.user.clone()));
            debug!(caller = %identity.user, cluster_user = %reviewed.user, "passthrough");
            crate::impersonation::apply_passthrough(req.headers_mut(), &cluster_token)
                .map_err(|e| HttpError::unauthorized(format!("cannot forward the cluster token: {e}")))?;
        }
        None => {
            if !state.mode.allows_identity() {
                return Err(HttpError::forbidden(
                    "this cluster accepts only callers' own cluster tokens: \
                     run `hawser proxy --cluster-token-file FILE`",
                ));
            }
            let agent_token = state
                .apiserver
                .token()
                .map_err(|e| HttpError::internal(format!("the agent has no credential for the apiserver: {e}")))?;
            crate::impersonation::apply(req.headers_mut(), &identity, &agent_token)
                .map_err(|e| HttpError::internal(format!("cannot express the caller's identity: {e}")))?;
        }
    }
    *req.uri_mut() = state
        .apiserver
        .uri_for(req.uri())
        .map_err(|e| HttpError::bad_request(format!("bad request path: {e}")))?;
    // The client sets Host from the apiserver URI.
    req.headers_mut().remove(HOST);
    let client = state.apiserver.client(long_running);
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let mut resp = forward::exchange(req, Some(audit), |req| client.request(req))
        .await
        .map_err(|e| HttpError::bad_gateway(format!("the apiserver did not answer: {e}")))?;
    strip_agent_marks(resp.headers_mut());
    tracing::debug!(%method, %path, long_running, status = resp.status().as_u16(), "response head from the apiserver");
    Ok(resp)
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
