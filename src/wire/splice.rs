//! An upgraded connection (exec, attach, port-forward) spliced onto a tunnel stream.

use std::pin::pin;

use bytes::BytesMut;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use super::reset;
use crate::audit::Audit;
use crate::transport::{RecvHalf, SendHalf, StreamError, next_chunk};

/// Room asked of the allocator per read from the upgraded connection.
const READ_BUFFER: usize = 16 * 1024;

/// Which side of the exchange the upgraded connection is, for the audit's byte counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The caller's connection (at the relay): what it sends is inbound.
    Caller,
    /// The apiserver's connection (at the agent): what it sends is outbound.
    Upstream,
}

/// Copies both ways until both are done. Each direction's end is passed on as a half-close
/// without ending the other (exec's stdin EOF must not cut its stdout); a failure on either
/// ends both, and the stream is reset rather than finished, so the far side never takes a cut
/// for a clean end. Bytes are counted into `audit` as they are read.
pub async fn splice<S: SendHalf, R: RecvHalf>(
    io: Upgraded,
    mut send: S,
    mut recv: R,
    audit: Option<Audit>,
    side: Side,
) {
    let (mut io_read, mut io_write) = tokio::io::split(TokioIo::new(io));
    let count = |n: usize, from_io: bool| {
        if let Some(audit) = &audit {
            if from_io == (side == Side::Caller) {
                audit.add_in(n as u64);
            } else {
                audit.add_out(n as u64);
            }
        }
    };
    let to_stream = async {
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        loop {
            buf.reserve(READ_BUFFER);
            match io_read.read_buf(&mut buf).await {
                Ok(0) => {
                    send.end();
                    return Ok(());
                }
                Ok(n) => {
                    count(n, true);
                    crate::transport::write_chunk(&mut send, buf.split().freeze())
                        .await
                        .map_err(Ended::Stream)?;
                }
                Err(e) => return Err(Ended::Io(e)),
            }
        }
    };
    let from_stream = async {
        loop {
            match next_chunk(&mut recv).await {
                Ok(Some(chunk)) => {
                    count(chunk.len(), false);
                    io_write.write_all(&chunk).await.map_err(Ended::Io)?;
                }
                Ok(None) => {
                    let _ = io_write.shutdown().await;
                    return Ok(());
                }
                Err(e) => return Err(Ended::Stream(e)),
            }
        }
    };
    let (mut sent_all, mut received_all) = (false, false);
    let failed = {
        let (mut to_stream, mut from_stream) = (pin!(to_stream), pin!(from_stream));
        loop {
            tokio::select! {
                done = &mut to_stream, if !sent_all => match done {
                    Ok(()) => sent_all = true,
                    Err(e) => break Some(e),
                },
                done = &mut from_stream, if !received_all => match done {
                    Ok(()) => received_all = true,
                    Err(e) => break Some(e),
                },
            }
            if sent_all && received_all {
                break None;
            }
        }
    };
    match failed {
        None => debug!("upgraded stream closed"),
        Some(e) => {
            if !sent_all {
                send.cut(reset::SOURCE_FAILED);
            }
            recv.stop_reading(reset::CANCELLED);
            debug!(error = %e, "upgraded stream ended with an error");
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("upgraded connection: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Stream(StreamError),
}
