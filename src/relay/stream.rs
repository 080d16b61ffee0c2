//! One exchange with an agent on a stream the relay opened: the request head and body out, the
//! response head and body back, an upgrade spliced onto the caller's connection.

use http::header::{AUTHORIZATION, HOST};
use http::{Request, Response, Uri};
use tracing::{Instrument, debug};

use super::refusal::Refusal;
use super::stall::{Delivery, Exchange};
use crate::audit::Audit;
use crate::body::{self, Body, boxed};
use crate::headers;
use crate::proto::Credential;
use crate::telemetry::trace_context::{self, Sampled};
use crate::transport::{RecvHalf, SendHalf, StreamError, write_chunk};
use crate::wire::body::{PumpError, RecvBody, send_body};
use crate::wire::splice::{Side, splice};
use crate::wire::{self, HeadError, RequestHead, ResponseHead};

/// Where a request goes and what rides with it.
pub struct Sent<'a> {
    /// The cluster's name, for messages.
    pub cluster: &'a str,
    /// Path and query on the apiserver.
    pub target: Uri,
    /// The request id.
    pub request_id: String,
    /// Whether the request is traced, and what trace context goes on to the agent.
    pub sampled: Sampled,
    /// The caller's proof, in the form the cluster's agent takes.
    pub credential: Credential,
    /// Owner of the tasks the exchange leaves behind.
    pub tasks: &'a tokio_util::task::TaskTracker,
    /// The fleet relay the stream goes to, if it is forwarded (its loss is a 503 then).
    pub via: Option<&'a str>,
    /// Cancelled when the relay drains: a watch or a followed log then ends cleanly.
    pub drain: &'a tokio_util::sync::CancellationToken,
    /// For a forwarded stream: cancelled when the relay it goes through drains, with the same
    /// effect.
    pub hop_end: Option<tokio_util::sync::CancellationToken>,
}

/// Sends `req` on the stream `(send, recv)` and returns the agent's answer for the caller, and
/// whether the caller may take it at its own pace.
pub async fn exchange<S, R, B>(
    mut send: S,
    mut recv: R,
    req: Request<B>,
    sent: Sent<'_>,
    audit: &Audit,
) -> Result<(Response<Body>, Delivery), Refusal>
where
    S: SendHalf,
    R: RecvHalf,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    let Sent {
        cluster,
        target: upstream_uri,
        request_id,
        sampled,
        credential,
        tasks,
        via,
        drain,
        hop_end,
    } = sent;
    // A forwarded stream whose peer connection is lost: the hop failed, not the agent.
    let peer_lost = |error: &StreamError| {
        via.filter(|_| matches!(error, StreamError::Closed(_)))
            .map(|relay| Refusal::PeerUnreachable {
                cluster: cluster.to_owned(),
                why: format!("relay {relay}: {error}"),
            })
    };
    let mut req = req;
    // Judged on the path the apiserver will see.
    *req.uri_mut() = upstream_uri.clone();
    let exchange = exchange_kind(&req);
    let caller_side = (exchange == Exchange::Upgrade).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    // The caller's token rode the head's credential only if it is bound to this cluster; it
    // never travels as a header. The agent's client sets Host from the apiserver's address.
    parts.headers.remove(AUTHORIZATION);
    parts.headers.remove(HOST);
    // The trace goes on from the relay's span if it is sampled, else as decided where it came in.
    parts.headers.remove(trace_context::TRACEPARENT);
    let traceparent = sampled.passed_on(&tracing::Span::current()).unwrap_or_default();
    // An upgrade request carries no body: after its head come the upgraded bytes.
    let has_body = caller_side.is_none() && !hyper::body::Body::is_end_stream(&body);
    // Copied only for the debug line below, and only when it will be written.
    let shown =
        tracing::enabled!(tracing::Level::DEBUG).then(|| (parts.method.clone(), upstream_uri.path().to_owned()));
    let head = RequestHead {
        request_id,
        credential,
        method: parts.method,
        target: upstream_uri,
        traceparent,
        headers: parts.headers,
        body: has_body,
    }
    .encode(wire::MAX_HEAD)
    .map_err(Refusal::Unsendable)?;
    write_chunk(&mut send, head).await.map_err(|error| {
        peer_lost(&error).unwrap_or_else(|| Refusal::Unreachable {
            cluster: cluster.to_owned(),
            error,
        })
    })?;
    let send = if has_body {
        let body = audit.count(boxed(body), true);
        tasks.spawn(
            async move {
                match send_body(body, &mut send).await {
                    Ok(_) => send.end(),
                    Err(PumpError::Source(e)) => {
                        debug!(error = %e, "the caller's request body broke off");
                        send.cut(wire::reset::SOURCE_FAILED);
                    }
                    Err(PumpError::Sink(e)) => debug!(error = %e, "the agent stopped reading the request body"),
                }
            }
            .in_current_span(),
        );
        None
    } else {
        if caller_side.is_none() {
            send.end();
        }
        Some(send)
    };
    let head = match wire::read_head(&mut recv, wire::MAX_HEAD).await {
        Ok((payload, first)) => ResponseHead::decode(&payload).map(|head| (head, first)),
        Err(e) => Err(e),
    };
    let (head, first) = head.map_err(|e| match e {
        HeadError::Stream(error) => peer_lost(&error).unwrap_or_else(|| no_head(cluster, error)),
        other => Refusal::NoAnswer {
            cluster: cluster.to_owned(),
            why: other.to_string(),
        },
    })?;
    audit.status(head.status.as_u16());
    if let Some((method, path)) = shown {
        debug!(%method, %path, status = head.status.as_u16(), "response head from the agent");
    }
    let has_length = head.headers.contains_key(http::header::CONTENT_LENGTH);
    let delivery = Delivery::of_forwarded(exchange, head.status, has_length);
    if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
        let (Some(caller_side), Some(send)) = (caller_side, send) else {
            return Err(Refusal::UnaskedUpgrade(cluster.to_owned()));
        };
        let audit = audit.clone();
        tasks.spawn(
            async move {
                match caller_side.await {
                    Ok(io) => splice(io, send, recv, Some(audit), Side::Caller).await,
                    Err(e) => debug!(error = %e, "the caller's upgrade did not complete"),
                }
            }
            .in_current_span(),
        );
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = head.status;
        *resp.headers_mut() = head.headers;
        return Ok((resp, delivery));
    }
    if let Some(mut send) = send {
        // A refused upgrade: nothing follows its head.
        send.end();
    }
    let mut headers = head.headers;
    headers::strip_hop_by_hop(&mut headers);
    let body = if head.body {
        let length = headers::content_length(&headers);
        let body = audit.count(boxed(RecvBody::new(first, recv, length)), false);
        if exchange == Exchange::Stream {
            let body = body::end_on(body, drain.clone());
            match hop_end {
                Some(hop_end) => body::end_on(body, hop_end),
                None => body,
            }
        } else {
            body
        }
    } else {
        body::empty()
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.headers_mut() = headers;
    Ok((resp, delivery))
}

/// Why the agent's stream gave no response head, as the caller is told.
fn no_head(cluster: &str, error: StreamError) -> Refusal {
    match error {
        StreamError::Reset(code) if code == u64::from(wire::reset::SHUTDOWN) => Refusal::AgentShutdown {
            cluster: cluster.to_owned(),
            code,
        },
        // The relay it was forwarded to lost the cluster's last tunnel meanwhile.
        StreamError::Reset(code) if code == u64::from(wire::reset::NO_ROUTE) => Refusal::Offline(cluster.to_owned()),
        StreamError::Reset(code) if code == u64::from(wire::reset::TUNNEL_LOST) => Refusal::TunnelLost {
            cluster: cluster.to_owned(),
            why: wire::reset::describe(code).to_owned(),
        },
        StreamError::Closed(why) => Refusal::TunnelLost {
            cluster: cluster.to_owned(),
            why,
        },
        StreamError::Reset(code) => Refusal::NoAnswer {
            cluster: cluster.to_owned(),
            why: wire::reset::describe(code).to_string(),
        },
        other => Refusal::NoAnswer {
            cluster: cluster.to_owned(),
            why: other.to_string(),
        },
    }
}

/// Whether the apiserver will stream the answer to `req`: a watch (as it resolves the request),
/// a followed pod log, or an upgrade.
fn exchange_kind<B>(req: &Request<B>) -> Exchange {
    use crate::request_info::{query_param, request_info};
    if headers::upgrade_protocol(req.headers()).is_some() {
        return Exchange::Upgrade;
    }
    let Ok(info) = request_info(req.method(), req.uri()) else {
        return Exchange::Plain;
    };
    let follows = || {
        info.subresource.as_deref() == Some("log")
            && query_param(req.uri(), "follow")
                .is_some_and(|v| !matches!(v.to_ascii_lowercase().as_str(), "0" | "false"))
    };
    if info.verb == "watch" || follows() {
        Exchange::Stream
    } else {
        Exchange::Plain
    }
}

#[cfg(test)]
mod tests;
