//! Two streams joined end to end: what one side sends the other receives, chunk for chunk (the
//! transport's own `Bytes`, never copied), each direction on its own so a half-close passes
//! through as one. A relay forwarding for a peer joins the peer's stream to an agent's this way.

use std::pin::pin;

use super::{RecvHalf, SendHalf, StreamError, next_chunk};
use crate::wire::reset;

/// Moves `from` into `to` until `from` ends (passed on as an end), is reset (passed on as a
/// reset with the same code), loses its connection (a reset with [`reset::TUNNEL_LOST`]), or
/// `to` stops reading (passed back as a stop).
pub async fn one_way<R: RecvHalf, S: SendHalf>(mut from: R, mut to: S) {
    let stopped = to.stopped();
    let mut stopped = pin!(stopped);
    loop {
        let chunk = tokio::select! {
            chunk = next_chunk(&mut from) => chunk,
            () = &mut stopped => {
                from.stop_reading(reset::CANCELLED);
                return;
            }
        };
        match chunk {
            Ok(Some(chunk)) => {
                if to.send_chunks(&mut [chunk]).await.is_err() {
                    from.stop_reading(reset::CANCELLED);
                    return;
                }
            }
            Ok(None) => {
                to.end();
                return;
            }
            Err(StreamError::Reset(code)) => {
                to.cut(u32::try_from(code).unwrap_or(reset::SOURCE_FAILED));
                return;
            }
            // Not the apiserver's answer breaking off: the far side may send a request again.
            Err(StreamError::Closed(_)) => {
                to.cut(reset::TUNNEL_LOST);
                return;
            }
            Err(_) => {
                to.cut(reset::SOURCE_FAILED);
                return;
            }
        }
    }
}

/// Joins two streams both ways until both directions are done.
pub async fn join<S1, R1, S2, R2>((send_a, recv_a): (S1, R1), (send_b, recv_b): (S2, R2))
where
    S1: SendHalf,
    R1: RecvHalf,
    S2: SendHalf,
    R2: RecvHalf,
{
    tokio::join!(one_way(recv_a, send_b), one_way(recv_b, send_a));
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::transport::memory;
    use crate::transport::write_chunk;

    /// A memory tunnel's two ends of one stream: (opener's halves, acceptor's halves).
    async fn stream_pair() -> ((memory::MemSend, memory::MemRecv), (memory::MemSend, memory::MemRecv)) {
        let (tunnel, mut acceptor) = memory::tunnel(std::net::SocketAddr::from(([127, 0, 0, 1], 1)));
        let opened = tunnel.open().await.expect("open");
        let accepted = acceptor.accept().await.expect("accept");
        (opened, accepted)
    }

    #[tokio::test]
    async fn bytes_ends_and_resets_pass_through_each_way_apart() {
        // caller <-> (a_open | a_accept) <-> pipe <-> (b_open | b_accept) <-> agent
        let ((mut caller_send, mut caller_recv), a_accept) = stream_pair().await;
        let (b_open, (mut agent_send, mut agent_recv)) = stream_pair().await;
        let piped = tokio::spawn(join(a_accept, b_open));

        write_chunk(&mut caller_send, Bytes::from_static(b"request"))
            .await
            .unwrap();
        caller_send.end();
        assert_eq!(next_chunk(&mut agent_recv).await.unwrap().unwrap(), "request");
        // The caller's end arrives as an end, and the other direction still flows.
        assert_eq!(next_chunk(&mut agent_recv).await.unwrap(), None);
        write_chunk(&mut agent_send, Bytes::from_static(b"answer"))
            .await
            .unwrap();
        assert_eq!(next_chunk(&mut caller_recv).await.unwrap().unwrap(), "answer");
        agent_send.cut(reset::SHUTDOWN);
        assert_eq!(
            next_chunk(&mut caller_recv).await,
            Err(StreamError::Reset(u64::from(reset::SHUTDOWN)))
        );
        tokio::time::timeout(std::time::Duration::from_secs(5), piped)
            .await
            .expect("the pipe ends once both directions are done")
            .unwrap();
    }
}
