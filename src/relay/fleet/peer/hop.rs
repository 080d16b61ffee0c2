//! What a forwarded stream begins with, at the relay that holds the agent's tunnel: the preamble
//! naming the cluster, then the request's head. The head is read so that the hop joins the
//! request's trace (a span of its own, continued from the forwarding relay's), and passed on as
//! it came unless the agent is to continue another context: this relay's own span when sampled,
//! or the unsampled trace it started for a head with none (from a relay of an earlier version).
//! An unsampled request's head thus goes on unchanged, not copied; its body and an upgrade's
//! bytes are joined as before.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tracing::Span;

use super::PREAMBLE_VERSION;
use crate::telemetry::trace_context::{self, Sampled, request_span};
use crate::transport::{RecvHalf, StreamError, next_chunk};
use crate::wire::{self, HeadError, RequestHead, reset};

/// A forwarded request's head, read.
pub(super) struct Hop {
    /// What goes to the agent: the head as it came, or re-encoded with another `traceparent`.
    pub head: Bytes,
    /// Bytes after the head that came with it (body or upgraded bytes).
    pub first: Bytes,
    /// This relay's span of the request.
    pub span: Span,
}

/// Why a forwarded stream's head was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum HopError {
    /// Unreadable, undecodable or too large.
    #[error(transparent)]
    Head(#[from] HeadError),
    /// Not complete in time.
    #[error("no request head within {0:?}")]
    Late(Duration),
}

impl HopError {
    /// The code both directions are cut with, as the agent would cut them.
    pub fn code(&self) -> u32 {
        match self {
            Self::Head(_) => reset::BAD_HEAD,
            Self::Late(_) => reset::NO_HEAD,
        }
    }
}

/// Reads the head of a stream forwarded for `cluster` (put on this relay's tunnel `session`)
/// within `wait`, decides whether the request is sampled from its trace context, and makes this
/// relay's span of it.
pub(super) async fn read<R: RecvHalf>(
    recv: &mut R,
    wait: Duration,
    cluster: &str,
    session: u64,
) -> Result<Hop, HopError> {
    let (framed, first) = tokio::time::timeout(wait, wire::read_framed_head(recv, wire::MAX_HEAD))
        .await
        .map_err(|_| HopError::Late(wait))??;
    let head = RequestHead::decode(&framed[4..])?;
    let incoming = trace_context::of_head(&head);
    // As the agent decides: the forwarding relay's flag, or this relay's ratio if it sent none.
    let sampled = Sampled::decide(incoming);
    let span = request_span!(
        sampled,
        "forwarded",
        otel.name = "relay forward",
        otel.kind = "server",
        cluster = %cluster,
        session,
        request.id = %head.request_id,
    );
    if sampled.exported() {
        trace_context::continue_from(&span, incoming);
    }
    let head = passed_on(framed, head, &sampled, &span)?;
    Ok(Hop { head, first, span })
}

/// The head for the agent: `framed` (`head` as it came) unless `sampled` passes on another
/// context than the head's, then `head` re-encoded with that one.
fn passed_on(framed: Bytes, mut head: RequestHead, sampled: &Sampled, span: &Span) -> Result<Bytes, HeadError> {
    match sampled.passed_on(span) {
        Some(own) if own != trace_context::of_head(&head) => {
            head.traceparent = own;
            head.encode(wire::MAX_HEAD)
        }
        _ => Ok(framed),
    }
}

/// Why a peer stream's preamble was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum PreambleError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the stream ended inside its preamble")]
    Ended,
    #[error("preamble version {0}, not {PREAMBLE_VERSION}")]
    Version(u8),
    #[error("the preamble's cluster is not a plain name")]
    Cluster,
    #[error("no preamble in time")]
    Late,
}

/// The cluster a peer stream is for (its preamble's), and the bytes after the preamble that arrived with it.
pub(super) async fn read_preamble<R: RecvHalf>(recv: &mut R) -> Result<(String, Bytes), PreambleError> {
    // Only a preamble split over chunks is gathered here: at most 257 bytes.
    let mut partial = BytesMut::new();
    loop {
        let chunk = next_chunk(recv).await?.ok_or(PreambleError::Ended)?;
        let whole = if partial.is_empty() {
            // Usually the preamble and the head arrive in one chunk: sliced, not copied.
            chunk
        } else {
            partial.extend_from_slice(&chunk);
            partial.split().freeze()
        };
        if whole.len() >= 2 {
            if whole[0] != PREAMBLE_VERSION {
                return Err(PreambleError::Version(whole[0]));
            }
            let end = 2 + usize::from(whole[1]);
            if whole.len() >= end {
                let cluster = std::str::from_utf8(&whole[2..end])
                    .ok()
                    .filter(|c| crate::config::valid_cluster_name(c))
                    .ok_or(PreambleError::Cluster)?
                    .to_owned();
                return Ok((cluster, whole.slice(end..)));
            }
        }
        partial.extend_from_slice(&whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Credential;
    use crate::transport::SendHalf;
    use crate::transport::memory;
    use crate::transport::write_chunk;

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    fn head(traceparent: &str) -> RequestHead {
        RequestHead {
            request_id: "relay-0-abc-1".into(),
            credential: Credential::Assertion("a.b.c".into()),
            method: http::Method::GET,
            target: "/api/v1/namespaces?limit=1".parse().unwrap(),
            traceparent: traceparent.into(),
            headers: http::HeaderMap::from_iter([(http::header::ACCEPT, "application/json".parse().unwrap())]),
            body: true,
        }
    }

    #[tokio::test]
    async fn a_head_in_one_chunk_goes_on_as_it_came_without_a_copy_and_the_body_after_it() {
        // No subscriber with OpenTelemetry here: this relay's span has no context of its own, so
        // whatever was decided, the head's context is what goes on.
        let mut wire = head(UNSAMPLED).encode(wire::MAX_HEAD).unwrap().to_vec();
        let head_len = wire.len();
        wire.extend_from_slice(b"body");
        let chunk = Bytes::from(wire);
        let mut recv = memory::sent(vec![chunk.clone()]);
        let hop = read(&mut recv, Duration::from_secs(5), "prod", 1).await.unwrap();
        assert_eq!(hop.head, chunk.slice(..head_len));
        assert_eq!(hop.head.as_ptr(), chunk.as_ptr(), "sliced out of the chunk, not copied");
        assert_eq!(&hop.first[..], b"body");
    }

    #[tokio::test]
    async fn a_head_split_anywhere_is_read_whole_and_passed_on_byte_for_byte() {
        let encoded = head(SAMPLED).encode(wire::MAX_HEAD).unwrap();
        let mut wire = encoded.to_vec();
        wire.extend_from_slice(b"xy");
        for cut in 1..wire.len() {
            let mut recv = memory::sent(vec![
                Bytes::copy_from_slice(&wire[..cut]),
                Bytes::copy_from_slice(&wire[cut..]),
            ]);
            let hop = read(&mut recv, Duration::from_secs(5), "prod", 1).await.unwrap();
            assert_eq!(hop.head, encoded, "cut at {cut}");
            // What came with the head, then what is left on the stream.
            let mut after = hop.first.to_vec();
            while let Some(chunk) = crate::transport::next_chunk(&mut recv).await.unwrap() {
                after.extend_from_slice(&chunk);
            }
            assert_eq!(after, b"xy", "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn an_undecodable_late_or_cut_head_is_refused_with_the_agents_codes() {
        // A length prefix, then a payload that is no request head.
        let mut recv = memory::sent(vec![Bytes::from_static(&[0, 0, 0, 2, 2, 0])]);
        let refused = read(&mut recv, Duration::from_secs(5), "prod", 1).await.err().unwrap();
        assert!(
            matches!(refused, HopError::Head(HeadError::WrongKind(_))),
            "{refused:?}"
        );
        assert_eq!(refused.code(), reset::BAD_HEAD);

        // Half a head, and the sender neither finishes nor sends more.
        let (mut send, mut recv) = memory::stream(4);
        write_chunk(&mut send, Bytes::from_static(&[0, 0, 0, 9, 1]))
            .await
            .unwrap();
        let refused = read(&mut recv, Duration::from_millis(50), "prod", 1)
            .await
            .err()
            .unwrap();
        assert!(matches!(refused, HopError::Late(_)), "{refused:?}");
        assert_eq!(refused.code(), reset::NO_HEAD);

        let (mut send, mut recv) = memory::stream(4);
        send.cut(reset::CANCELLED);
        let refused = read(&mut recv, Duration::from_secs(5), "prod", 1).await.err().unwrap();
        assert_eq!(refused.code(), reset::BAD_HEAD, "{refused:?}");
    }

    #[test]
    fn the_head_is_re_encoded_only_when_another_context_goes_on() {
        let span = tracing::info_span!("test");
        let as_it_came = head(UNSAMPLED).encode(wire::MAX_HEAD).unwrap();
        // Unsampled, continuing the head's context: the very bytes.
        let kept = passed_on(
            as_it_came.clone(),
            head(UNSAMPLED),
            &Sampled::No(Some(UNSAMPLED.into())),
            &span,
        )
        .unwrap();
        assert_eq!(kept.as_ptr(), as_it_came.as_ptr());
        // No exporter, no valid context: nothing to pass on, the head as it came.
        let old = head("").encode(wire::MAX_HEAD).unwrap();
        let kept = passed_on(old.clone(), head(""), &Sampled::No(None), &span).unwrap();
        assert_eq!(kept.as_ptr(), old.as_ptr());
        // A head with no context (a relay of an earlier version) and an unsampled trace started
        // here: the agent is told, so it does not sample the request again by its own ratio.
        let told = passed_on(old.clone(), head(""), &Sampled::No(Some(UNSAMPLED.into())), &span).unwrap();
        let decoded = RequestHead::decode(&told[4..]).unwrap();
        assert_eq!(decoded, head(UNSAMPLED), "only the traceparent changed");
    }
}
