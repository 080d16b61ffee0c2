//! What the data path needs of a tunnel's streams: each stream is a pair of halves that move
//! `Bytes` chunks with their own flow control, end with a finish, and can be cut with a code.
//!
//! The framing (`wire`) is written against these traits, not against quinn, so the same code runs
//! over QUIC ([`quic`]), HTTP/2 over TLS over TCP ([`h2`]) and in memory ([`memory`], for tests of the request path in milliseconds).

use std::future::Future;
use std::task::{Context, Poll};

use bytes::Bytes;

pub mod h2;
pub mod memory;
pub mod pipe;
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

    /// Tells the peer to stop sending; dropping the half does the same with code 0. (On HTTP/2,
    /// which has no STOP_SENDING, both are a reset of the whole stream, and a dropped half tells
    /// the peer only once its sending half is dropped too; the framing stops reading only when
    /// the exchange is over either way.)
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

    /// Cuts the stream with `code`: the peer's next read fails with [`StreamError::Reset`]. (On
    /// HTTP/2 the other direction ends with it.)
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

/// A tunnel the relay opens streams on: QUIC, HTTP/2 over TCP, or one in memory (tests).
#[derive(Clone, Debug)]
pub enum Tunnel {
    /// An agent's QUIC connection.
    Quic(quinn::Connection),
    /// An agent's HTTP/2 connection over TLS over TCP.
    H2(h2::H2Tunnel),
    /// An in-memory tunnel.
    Memory(memory::Tunnel),
}

/// The sending half of a stream of any [`Tunnel`].
pub enum AnySend {
    /// QUIC.
    Quic(quinn::SendStream),
    /// HTTP/2.
    H2(h2::H2Send),
    /// In memory.
    Memory(memory::MemSend),
}

/// The receiving half of a stream of any [`Tunnel`].
pub enum AnyRecv {
    /// QUIC.
    Quic(quinn::RecvStream),
    /// HTTP/2.
    H2(h2::H2Recv),
    /// In memory.
    Memory(memory::MemRecv),
    /// QUIC, with bytes already read off the stream that come first (a fleet peer's stream,
    /// whose acknowledgement was read before the exchange).
    Prefixed(Option<Bytes>, quinn::RecvStream),
}

impl Tunnel {
    /// Opens a stream; waits while the agent's stream limit is reached.
    pub async fn open(&self) -> Result<(AnySend, AnyRecv), StreamError> {
        match self {
            Self::Quic(connection) => {
                let (send, recv) = connection
                    .open_bi()
                    .await
                    .map_err(|e| StreamError::Closed(e.to_string()))?;
                Ok((AnySend::Quic(send), AnyRecv::Quic(recv)))
            }
            Self::H2(tunnel) => {
                let (send, recv) = tunnel.open().await?;
                Ok((AnySend::H2(send), AnyRecv::H2(recv)))
            }
            Self::Memory(tunnel) => {
                let (send, recv) = tunnel.open().await?;
                Ok((AnySend::Memory(send), AnyRecv::Memory(recv)))
            }
        }
    }

    /// Closes the tunnel with an application code and reason.
    pub fn close(&self, code: u32, reason: &[u8]) {
        match self {
            Self::Quic(connection) => connection.close(code.into(), reason),
            Self::H2(tunnel) => tunnel.close(code, reason),
            Self::Memory(tunnel) => tunnel.close(code, reason),
        }
    }

    /// `quic`, `tcp` or `memory`, for logs and the fleet's registry.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Quic(_) => "quic",
            Self::H2(_) => "tcp",
            Self::Memory(_) => "memory",
        }
    }

    /// The agent's address.
    pub fn remote_address(&self) -> std::net::SocketAddr {
        match self {
            Self::Quic(connection) => connection.remote_address(),
            Self::H2(tunnel) => tunnel.remote_address(),
            Self::Memory(tunnel) => tunnel.remote_address(),
        }
    }
}

impl SendHalf for AnySend {
    async fn send_chunks<'a>(&'a mut self, chunks: &'a mut [Bytes]) -> Result<(), StreamError> {
        match self {
            Self::Quic(send) => send.send_chunks(chunks).await,
            Self::H2(send) => send.send_chunks(chunks).await,
            Self::Memory(send) => send.send_chunks(chunks).await,
        }
    }

    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        use futures_util::future::Either;
        match self {
            Self::Quic(send) => Either::Left(SendHalf::stopped(send)),
            Self::H2(send) => Either::Right(Either::Left(send.stopped())),
            Self::Memory(send) => Either::Right(Either::Right(SendHalf::stopped(send))),
        }
    }

    fn end(&mut self) {
        match self {
            Self::Quic(send) => send.end(),
            Self::H2(send) => send.end(),
            Self::Memory(send) => send.end(),
        }
    }

    fn cut(&mut self, code: u32) {
        match self {
            Self::Quic(send) => send.cut(code),
            Self::H2(send) => send.cut(code),
            Self::Memory(send) => send.cut(code),
        }
    }
}

impl RecvHalf for AnyRecv {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
        match self {
            Self::Quic(recv) => recv.poll_chunk(cx),
            Self::H2(recv) => recv.poll_chunk(cx),
            Self::Memory(recv) => recv.poll_chunk(cx),
            Self::Prefixed(first, recv) => match first.take() {
                Some(chunk) if !chunk.is_empty() => Poll::Ready(Ok(Some(chunk))),
                _ => recv.poll_chunk(cx),
            },
        }
    }

    fn stop_reading(&mut self, code: u32) {
        match self {
            Self::Quic(recv) => recv.stop_reading(code),
            Self::H2(recv) => recv.stop_reading(code),
            Self::Memory(recv) => recv.stop_reading(code),
            Self::Prefixed(_, recv) => recv.stop_reading(code),
        }
    }
}
