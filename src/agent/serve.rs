//! One relay-opened stream = one HTTP exchange with kube-apiserver.
//!
//! Threat model: the relay is not trusted for identity. Each request's token
//! is validated here against the agent's own issuers; every header a caller
//! could use to claim another identity is removed, the impersonation headers
//! are set from the validated token, and the result is checked before it
//! leaves (see `impersonation`). Identity that cannot be expressed means 500,
//! never a request with the agent's own identity. The request goes only to
//! the configured apiserver, whatever its URI says.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::HOST;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tracing::{Instrument, debug, info_span};

use super::AgentState;
use crate::forward::{self, Body, boxed};
use crate::proto::{self, StreamHeader};
use crate::status::HttpError;
use crate::tunnel::Stream;

/// How long the relay has to send a stream's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one stream: its header, then one HTTP/1.1 exchange (and upgrade).
pub async fn stream(mut stream: Stream, state: Arc<AgentState>) {
    let header: StreamHeader = match tokio::time::timeout(HEADER_TIMEOUT, proto::read_frame(&mut stream)).await {
        Ok(Ok(header)) => header,
        Ok(Err(e)) => return debug!(error = %e, "bad stream header"),
        Err(_) => return debug!("stream header timed out"),
    };
    let span = info_span!("stream", request.id = %header.request_id);
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req).await.unwrap_or_else(HttpError::into_response)) }
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

async fn handle(state: &AgentState, req: Request<Incoming>) -> Result<Response<Body>, HttpError> {
    let token = crate::auth::bearer_token(req.headers())?;
    let identity = state.auth.authenticate(token).await?;
    let agent_token = state
        .apiserver
        .token()
        .map_err(|e| HttpError::internal(format!("the agent has no credential for the apiserver: {e}")))?;

    let mut req = req.map(boxed);
    let long_running = forward::is_long_running(&req);
    crate::impersonation::apply(req.headers_mut(), &identity, &agent_token)
        .map_err(|e| HttpError::internal(format!("cannot express the caller's identity: {e}")))?;
    *req.uri_mut() = state
        .apiserver
        .uri_for(req.uri())
        .map_err(|e| HttpError::bad_request(format!("bad request path: {e}")))?;
    // The client sets Host from the apiserver URI.
    req.headers_mut().remove(HOST);
    let client = state.apiserver.client(long_running);
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let resp = forward::exchange(req, |req| client.request(req))
        .await
        .map_err(|e| HttpError::bad_gateway(format!("the apiserver did not answer: {e}")))?;
    tracing::debug!(%method, %path, long_running, status = resp.status().as_u16(), "response head from the apiserver");
    Ok(resp)
}
