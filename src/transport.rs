//! What the data path needs of a tunnel's streams: each stream is a pair of halves that move
//! `Bytes` chunks with their own flow control, end with a finish, and can be cut with a code.
//!
//! The framing (`wire`) is written against these traits, not against quinn, so the same code runs
//! over QUIC ([`quic`]) and in memory ([`memory`], for tests of the request path in milliseconds).

use std::future::Future;
use std::task::{Context, Poll};

use bytes::Bytes;

pub mod memory;
pub mod quic;

/// Why a stream half could not go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The peer cut the stream it was sending, with this code.
    #[error("the peer reset the stream (code {0})")]
    Reset(u64),
    /// The peer stopped reading what we send, with this code.
    #[error("the peer stopped reading (code {0})")]
    Stopped(u64),
    /// The connection under the stream is gone.
    #[error("the tunnel is gone: {0}")]
    Closed(String),
}

/// The receiving half of a stream.
pub trait RecvHalf: Send + Sync + Unpin + 'static {
    /// The next chunk as the transport holds it (no copy), or `None` once the peer finished.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>>;

    /// Tells the peer to stop sending; dropping the half does the same with code 0.
    fn stop_reading(&mut self, code: u32);
}

/// The sending half of a stream.
pub trait SendHalf: Send + Sync + Unpin + 'static {
    /// Sends `chunks` in order, waiting for flow-control credit; the chunks are handed over, not
    /// copied.
    fn send_chunks<'a>(
        &'a mut self,
        chunks: &'a mut [Bytes],
    ) -> impl Future<Output = Result<(), StreamError>> + Send + 'a;

    /// Resolves once the peer stopped reading (or the connection is gone): a sender waiting for
    /// its source learns this way that nobody wants what it would send.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static;

    /// Ends the stream after what was written (the peer reads `None`).
    fn end(&mut self);

    /// Cuts the stream with `code`: the peer's next read fails with [`StreamError::Reset`].
    fn cut(&mut self, code: u32);
}

/// The next chunk of `recv`, or `None` at the end.
pub async fn next_chunk<R: RecvHalf>(recv: &mut R) -> Result<Option<Bytes>, StreamError> {
    std::future::poll_fn(|cx| recv.poll_chunk(cx)).await
}

/// Sends one chunk.
pub async fn write_chunk<S: SendHalf>(send: &mut S, chunk: Bytes) -> Result<(), StreamError> {
    send.send_chunks(&mut [chunk]).await
}
